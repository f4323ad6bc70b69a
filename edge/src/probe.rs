//! Active probes: every provider of the current snapshot is probed every few seconds
//! (with jitter, so edges do not probe in lockstep) with a fresh connection and a
//! `HEAD`, so the selector knows round-trip times and failures before traffic does.
//! Rarely, and within a per-provider byte budget per hour (egress costs money), a
//! timed `GET` of a probe object measures bandwidth.
//!
//! Probes only feed measurements ([`crate::selector::ProviderStats`]); they never
//! route a request. Every failed probe is counted and logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::ProviderId;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::ProbeConfig;
use crate::proxy::Proxy;
use crate::route::RoutedProvider;
use crate::selector::random;

/// Bytes spent on one provider's bandwidth probes in the current hour.
#[derive(Debug, Default)]
struct Budget {
    window: Option<Instant>,
    spent: u64,
    last: Option<Instant>,
}

/// The smallest transfer worth timing.
const MIN_SAMPLE: u64 = 64 * 1024;

/// Probes until drain begins. Each round reads the current snapshot, so providers
/// added or removed by a reload are picked up.
pub async fn run(proxy: Arc<Proxy>, cfg: ProbeConfig, mut drain: watch::Receiver<bool>) {
    let mut budgets: HashMap<ProviderId, Budget> = HashMap::new();
    loop {
        let providers: Vec<Arc<RoutedProvider>> =
            proxy.snapshot().routing.providers().iter().flatten().cloned().collect();
        let round = async {
            futures_util::future::join_all(providers.iter().map(|p| probe_rtt(p.clone(), &cfg))).await;
            if let Some(path) = &cfg.bandwidth_path {
                for p in &providers {
                    probe_bandwidth(p, path, &cfg, budgets.entry(p.spec.id.clone()).or_default()).await;
                }
            }
        };
        tokio::select! {
            _ = round => {}
            _ = drain.wait_for(|d| *d) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(cfg.interval.0)) => {}
            _ = drain.wait_for(|d| *d) => return,
        }
    }
}

async fn probe_rtt(p: Arc<RoutedProvider>, cfg: &ProbeConfig) {
    match p.pool.probe(&cfg.path, cfg.timeout.0).await {
        Ok(rtt) => {
            p.stats.observe_answer(rtt, false, Instant::now());
            p.metrics.probe_rtt.record(rtt.as_secs_f64());
            p.metrics.probe("rtt", true);
            tracing::trace!(provider = %p.spec.id, rtt_ms = rtt.as_secs_f64() * 1e3, "probe");
        }
        Err(e) => {
            p.stats.observe_failure(Instant::now());
            p.metrics.probe("rtt", false);
            tracing::debug!(provider = %p.spec.id, error = %e, "probe failed");
        }
    }
}

/// A timed GET of the probe object, when its interval has passed and the hour's
/// budget allows a useful sample.
async fn probe_bandwidth(p: &RoutedProvider, path: &str, cfg: &ProbeConfig, budget: &mut Budget) {
    let now = Instant::now();
    if budget
        .window
        .is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(3600))
    {
        budget.window = Some(now);
        budget.spent = 0;
    }
    if budget
        .last
        .is_some_and(|l| now.saturating_duration_since(l) < cfg.bandwidth_interval.0)
    {
        return;
    }
    let allowance = cfg
        .bandwidth_max_bytes
        .min(cfg.bandwidth_budget_per_hour.saturating_sub(budget.spent));
    if allowance < MIN_SAMPLE {
        return;
    }
    budget.last = Some(now);
    match p.pool.probe_bandwidth(path, allowance, cfg.timeout.0 * 10).await {
        Ok((bytes, took)) => {
            budget.spent += bytes;
            p.metrics.probe_bytes.increment(bytes);
            p.metrics.probe("bandwidth", true);
            if bytes >= MIN_SAMPLE {
                p.stats.observe_transfer(bytes, took, Instant::now());
                if !took.is_zero() {
                    p.metrics.probe_bandwidth(bytes as f64 / took.as_secs_f64());
                }
            }
            tracing::trace!(provider = %p.spec.id, bytes, secs = took.as_secs_f64(), "bandwidth probe");
        }
        Err(e) => {
            p.metrics.probe("bandwidth", false);
            tracing::debug!(provider = %p.spec.id, error = %e, "bandwidth probe failed");
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
