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
