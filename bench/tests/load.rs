//! The load generator against a real simulated provider: the mix is sent as asked,
//! both protocols and both modes work, and open-loop latency is charged for the
//! requests a slow server delayed (coordinated-omission correction).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use meridian_bench::load::{self, LoadSpec, Mode, Op, Proto};
use meridian_sim::{Impairments, SimConfig, SimProvider};

async fn provider() -> SimProvider {
    SimProvider::start(SimConfig::memory("p")).await.unwrap()
}

fn spec(p: &SimProvider, mode: Mode, proto: Proto, ops: Vec<Op>, connections: usize) -> LoadSpec {
    LoadSpec {
        target: p.addr,
        host: "p".into(),
        mode,
        proto,
        duration: Duration::from_secs(1),
        connections,
        ops,
        progress: false,
        tls: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_over_both_protocols_and_both_modes() {
    let p = provider().await;
    load::store_object(p.addr, "p", "/small", 1024).await.unwrap();
    load::store_object(p.addr, "p", "/large", 64 << 10).await.unwrap();
    let ops = || vec![Op::get("/small", 3), Op::get("/large", 1), Op::put(4096, 1)];
    for proto in [Proto::H1, Proto::H2] {
        let r = load::run(&spec(&p, Mode::Open { rate: 200.0 }, proto, ops(), 4))
            .await
            .unwrap();
        assert_eq!((r.ok, r.errors), (200, 0), "{proto:?}: {}", r.summary());
        let counts: Vec<u64> = r.ops.iter().map(|o| o.ok).collect();
        assert!(counts[0] > counts[1] && counts[0] > counts[2], "{counts:?}");
        // GET bodies, plus the short acknowledgements of the PUTs.
        let gets = counts[0] * 1024 + counts[1] * (64 << 10);
        assert!(
            r.bytes_in >= gets && r.bytes_in - gets <= counts[2] * 256,
            "{proto:?}: {}",
            r.bytes_in
        );
        assert_eq!(r.bytes_out, counts[2] * 4096);
        let closed = load::run(&spec(&p, Mode::Closed, proto, ops(), 4)).await.unwrap();
        assert!(closed.ok > 0 && closed.errors == 0, "{}", closed.summary());
        let json = closed.to_json();
        assert_eq!(json["mode"], "closed");
        assert_eq!(json["ok"], closed.ok);
        assert_eq!(json["ops"].as_array().unwrap().len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_includes_the_wait_a_slow_server_caused() {
    let p = provider().await;
    // 100 ms per request on one connection at 20/s: request i is due at 50 i ms but
    // done at about 100 (i + 1) ms, so it is charged about 50 i + 100 ms.
    p.set_impairments(Impairments {
        latency_ms: 100,
        ..Default::default()
    });
    let r = load::run(&spec(
        &p,
        Mode::Open { rate: 20.0 },
        Proto::H1,
        vec![Op::get("/_sim/echo", 1)],
        1,
    ))
    .await
    .unwrap();
    assert_eq!(r.ok, 20);
    assert!(
        r.ms(0.5) >= 500.0,
        "median {} ms: the queueing was not charged",
        r.ms(0.5)
    );
    assert!(r.ms(0.99) >= 1000.0, "p99 {} ms", r.ms(0.99));
}

/// Runs `meridian-bench load ARGS` against `p` at 50 GETs/s of a stored 1 KiB object;
/// returns stdout and stderr.
async fn cli(p: &SimProvider, args: &[&str]) -> (String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_meridian-bench"));
    cmd.args(["load", "--target", &p.addr.to_string(), "--host", "p"])
        .args(["--object", "1KiB", "--rate", "50", "--connections", "2"])
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_shows_progress_on_long_runs_only_and_writes_json() {
    let p = provider().await;
    // A progress line (every 5 s when stderr is not a terminal) names the run's length.
    let is_progress = |l: &str| l.starts_with('[') && l.contains("/6 s") && l.contains(" requests ");
    let (long, quiet, short) = tokio::join!(
        cli(&p, &["--duration", "6"]),
        cli(&p, &["--duration", "6", "--quiet"]),
        cli(&p, &["--duration", "1", "--json", "-"]),
    );
    assert!(long.1.lines().any(is_progress), "no progress line:\n{}", long.1);
    assert!(
        !quiet.1.lines().any(is_progress),
        "--quiet showed progress:\n{}",
        quiet.1
    );
    assert!(!short.1.contains(" requests "), "progress on a 1 s run:\n{}", short.1);
    // The human summary, and with `--json -` the result as JSON instead.
    assert!(long.0.contains("p99"), "{}", long.0);
    let json: serde_json::Value = serde_json::from_str(&short.0).unwrap_or_else(|e| panic!("{e}:\n{}", short.0));
    assert!(json["ok"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["errors"], 0, "{json}");
}
