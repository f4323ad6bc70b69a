//! Active probes: every provider of the current snapshot is probed every few seconds
//! (with jitter, so edges do not probe in lockstep) with a fresh connection and a
//! `HEAD`, so the selector knows round-trip times and failures before traffic does.
//!
//! Probes only feed measurements ([`crate::selector::ProviderStats`]); they never
//! route a request. Every failed probe is counted and logged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::ProbeConfig;
use crate::proxy::Proxy;
use crate::route::RoutedProvider;
use crate::selector::random;

/// Probes until drain begins. Each round reads the current snapshot, so providers
/// added or removed by a reload are picked up.
pub async fn run(proxy: Arc<Proxy>, cfg: ProbeConfig, mut drain: watch::Receiver<bool>) {
    loop {
        let providers: Vec<Arc<RoutedProvider>> =
            proxy.snapshot().routing.providers().iter().flatten().cloned().collect();
        let round = providers.iter().map(|p| probe_one(p.clone(), &cfg));
        tokio::select! {
            _ = futures_util::future::join_all(round) => {}
            _ = drain.wait_for(|d| *d) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(cfg.interval.0)) => {}
            _ = drain.wait_for(|d| *d) => return,
        }
    }
}

async fn probe_one(p: Arc<RoutedProvider>, cfg: &ProbeConfig) {
    match p.pool.probe(&cfg.path, cfg.timeout.0).await {
        Ok(rtt) => {
            p.stats.observe_rtt(rtt, Instant::now());
            p.stats.observe_success();
            tracing::trace!(provider = %p.spec.id, rtt_ms = rtt.as_secs_f64() * 1e3, "probe");
        }
        Err(e) => {
            p.stats.observe_failure(Instant::now());
            tracing::debug!(provider = %p.spec.id, error = %e, "probe failed");
        }
    }
}

/// `interval` ± 20 %.
fn jittered(interval: Duration) -> Duration {
    let unit = (random() % 1000) as f64 / 1000.0;
    interval.mul_f64(0.8 + 0.4 * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let base = Duration::from_secs(5);
        for _ in 0..1000 {
            let d = jittered(base);
            assert!(d >= base.mul_f64(0.8) && d <= base.mul_f64(1.2), "{d:?}");
        }
    }
}
