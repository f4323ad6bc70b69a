//! `meridian-bench push-scale`: many lightweight edge clients (the edge's own push
//! client, sharing one QUIC endpoint) subscribed to one real `meridian-cp` process.
//! Measures the time from an admin API change to each edge's ACK, and the control
//! plane's resident memory per connected edge.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use meridian_edge::config::{ControlPlaneConfig, HumanDuration, PushTransport};
use meridian_edge::push::{self, Connector, FleetSink, PushStatus, Settings};
use meridian_proto::wire::{Observation, Running};
use meridian_proto::{Fleet, ProviderId};
use meridian_sim::TestCa;
use serde_json::json;
use tokio::sync::watch;

use crate::procs::{Proc, sibling_binary};

/// Options.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Edge clients.
    pub edges: usize,
    /// API changes to time.
    pub changes: usize,
    /// `quic` or `h2`.
    pub transport: PushTransport,
}

/// One client's record: the last version applied and when.
#[derive(Default)]
struct Applied(Mutex<Option<(u64, Instant)>>);

impl FleetSink for Applied {
    fn apply(&self, running: Running, _fleet: &Fleet) -> Result<(), String> {
        // The ACK leaves right after this returns.
        if let Ok(mut a) = self.0.lock() {
            *a = Some((running.version, Instant::now()));
        }
        Ok(())
    }
    fn fleet_health(&self, _down: &[ProviderId]) {}
    fn observations(&self) -> Vec<Observation> {
        Vec::new()
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Runs the benchmark and returns a markdown report.
pub async fn run(opts: ScaleOptions) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ca = TestCa::new("push-scale CA")?;
    let server = ca.issue(&["localhost", "127.0.0.1"])?;
    // One wildcard certificate vouches for every simulated edge's id.
    let client = ca.issue(&["*.scale.test"])?;
    for (name, text) in [
        ("ca.crt", &ca.cert_pem),
        ("cp.crt", &server.cert_pem),
        ("cp.key", &server.key_pem),
        ("edge.crt", &client.cert_pem),
        ("edge.key", &client.key_pem),
    ] {
        std::fs::write(d.join(name), text)?;
    }
    let free =
        || -> anyhow::Result<std::net::SocketAddr> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?) };
    let (admin, push_addr) = (free()?, free()?);
    std::fs::write(
        d.join("cp.toml"),
        format!(
            "data_dir = \"data\"\n[admin]\nlisten = \"{admin}\"\ncert = \"cp.crt\"\nkey = \"cp.key\"\n\
             [[admin.tokens]]\nname = \"bench\"\nsha256 = \"{}\"\n\
             [push]\nlisten = \"{push_addr}\"\ncert = \"cp.crt\"\nkey = \"cp.key\"\nclient_ca = \"ca.crt\"\n",
            meridian_cp::config::hash_token("bench")
        ),
    )?;
    let cp = Proc::spawn(
        "meridian-cp",
        Command::new(sibling_binary("meridian-cp")?)
            .args(["serve", "--config"])
            .arg(d.join("cp.toml"))
            .env("MERIDIAN_LOG", "warn")
            .stdout(Stdio::null()),
    )?;
    let target = meridian_cp::client::Target {
        server: format!("https://localhost:{}", admin.port()),
        token: "bench".into(),
        ca: Some(d.join("ca.crt")),
    };
    let put = |tenants: usize| {
        let target = target.clone();
        async move {
            let fleet = fleet(tenants);
            meridian_cp::client::call(&target, http::Method::PUT, "/v1/fleet", Some(fleet)).await
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        match put(20).await {
            Ok(v) => break v["version"].as_u64().context("no version")?,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "control plane not up yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let cp_pid = cp.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(cp_pid)?;

    let cfg = ControlPlaneConfig {
        address: push_addr.to_string(),
        server_name: Some("localhost".into()),
        edge_id: "x.scale.test".into(),
        ca_file: d.join("ca.crt"),
        cert_file: d.join("edge.crt"),
        key_file: d.join("edge.key"),
        state_dir: d.join("unused"),
        transport: opts.transport,
        quic_timeout: HumanDuration(Duration::from_secs(5)),
        reconnect_min: HumanDuration(Duration::from_millis(100)),
        reconnect_max: HumanDuration(Duration::from_secs(2)),
        report_interval: HumanDuration(Duration::from_secs(3600)),
    };
    let endpoint = meridian_edge::push::transport::client_endpoint("127.0.0.1:0".parse()?)?;
    let connector =
        Arc::new(Connector::new(&cfg, Arc::new(rustls::crypto::ring::default_provider()))?.with_endpoint(endpoint));
    let (stop_tx, stop) = watch::channel(false);
    let mut sinks = Vec::with_capacity(opts.edges);
    let mut clients = Vec::with_capacity(opts.edges);
    let connect_start = Instant::now();
    for i in 0..opts.edges {
        let sink = Arc::new(Applied::default());
        sinks.push(sink.clone());
        let settings = Settings {
            edge_id: format!("e{i}.scale.test"),
            state_dir: None,
            reconnect_min: cfg.reconnect_min.0,
            reconnect_max: cfg.reconnect_max.0,
            report_interval: cfg.report_interval.0,
            wire: meridian_proto::wire::WIRE_VERSION,
        };
        clients.push(tokio::spawn(push::run(
            connector.clone(),
            settings,
            sink,
            Arc::new(PushStatus::default()),
            None,
            stop.clone(),
        )));
    }
    let all_at = |version: u64| {
        sinks
            .iter()
            .all(|s| s.0.lock().is_ok_and(|a| a.is_some_and(|(v, _)| v >= version)))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !all_at(first) {
        anyhow::ensure!(Instant::now() < deadline, "not every edge subscribed within 120 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let subscribed_in = connect_start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(cp_pid)?;

    let mut latencies = Vec::with_capacity(opts.edges * opts.changes);
    let mut last = Vec::with_capacity(opts.changes);
    for k in 0..opts.changes {
        let t0 = Instant::now();
        let v = put(21 + k).await?["version"].as_u64().context("no version")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !all_at(v) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "version {v} did not reach every edge within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut slowest = Duration::ZERO;
        for s in &sinks {
            if let Ok(Some((_, at))) = s.0.lock().map(|a| *a) {
                let d = at.saturating_duration_since(t0);
                slowest = slowest.max(d);
                latencies.push(d);
            }
        }
        last.push(slowest);
    }
    // Clients leave before the control plane stops.
    let _ = stop_tx.send(true);
    for c in clients {
        let _ = c.await;
    }
    latencies.sort();
    last.sort();
    let per_edge = (rss_after.saturating_sub(rss_before)) as f64 / opts.edges as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let report = format!(
        "| measure | value |\n|---|---|\n\
         | edges subscribed ({:?}) | {} (all ACKed the first version in {:.0} ms) |\n\
         | API changes timed | {} |\n\
         | API call to ACK, p50 | {:.1} ms |\n\
         | API call to ACK, p99 | {:.1} ms |\n\
         | API call to last ACK of a change, median / worst | {:.1} ms / {:.1} ms |\n\
         | control-plane RSS before / after subscribing | {} KiB / {} KiB |\n\
         | control-plane memory per connected edge | {:.1} KiB |\n\
         | target p99 under 1 s | {} |\n\
         | target under 64 KiB per edge | {} |\n",
        opts.transport,
        opts.edges,
        ms(subscribed_in),
        opts.changes,
        ms(quantile(&latencies, 0.5)),
        ms(quantile(&latencies, 0.99)),
        ms(quantile(&last, 0.5)),
        ms(quantile(&last, 1.0)),
        rss_before,
        rss_after,
        per_edge,
        if quantile(&latencies, 0.99) < Duration::from_secs(1) {
            "met"
        } else {
            "**missed**"
        },
        if per_edge < 64.0 { "met" } else { "**missed**" },
    );
    drop(cp);
    Ok(report)
}

/// A small fleet with `tenants` tenants; each change adds one.
fn fleet(tenants: usize) -> serde_json::Value {
    let tenants: Vec<_> = (0..tenants)
        .map(|i| json!({ "id": format!("t{i}"), "home": "DE", "bindings": [{ "host": format!("t{i}.example") }] }))
        .collect();
    json!({
        "providers": [
            { "id": "de-1", "jurisdiction": "DE", "endpoint": { "address": "127.0.0.1:9" } },
            { "id": "us-1", "jurisdiction": "US", "endpoint": { "address": "127.0.0.1:9" } }
        ],
        "policy": { "rules": [ { "name": "any", "origin": "*", "allow": ["*"] } ] },
        "tenants": tenants,
    })
}
