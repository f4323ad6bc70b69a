//! Residency routing over real sockets: fail-closed answers, failover that never
//! leaves the allowed set, untrusted residency claims, explanations, and convergence
//! on the fastest compliant provider behind real network delay (a userspace relay on
//! loopback; see ../shared/stack.md: this kernel has no netem).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use meridian_sim::DelayRelay;
use support::*;

/// A fleet: `(id, jurisdiction, address)` providers, tenant `cn.test` -> CN, CN data
/// only in CN, everything else anywhere but CN.
fn fleet_toml(providers: &[(&str, &str, SocketAddr)], extra: &str) -> String {
    let mut s = String::from("[listeners]\nhttp = \"127.0.0.1:0\"\n[runtime]\nworkers = 1\n");
    if !extra.contains("[probes]") {
        // Probes would add requests that these tests count; the probe test turns them on.
        s.push_str("[probes]\nenabled = false\n");
    }
    s.push_str(extra);
    s.push_str(
        "\n[fleet.policy]\nunknown_origin = \"deny\"\n\
         [[fleet.policy.rules]]\nname = \"cn-in-cn\"\norigin = \"CN\"\nallow = [\"CN\"]\n\
         [[fleet.policy.rules]]\nname = \"rest-not-cn\"\norigin = \"*\"\nallow = [\"*\"]\ndeny = [\"CN\"]\n\
         [[fleet.tenants]]\nid = \"cn\"\nhome = \"CN\"\nbindings = [{ host = \"cn.test\" }]\n",
    );
    for (id, j, addr) in providers {
        s.push_str(&format!(
            "[[fleet.providers]]\nid = \"{id}\"\njurisdiction = \"{j}\"\n[fleet.providers.endpoint]\naddress = \"{addr}\"\n"
        ));
    }
    s
}

async fn status_and_text(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let mut s = h1(addr).await;
    let mut req = http::Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = s.send_request(req.body(Body::default()).unwrap()).await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, text(r).await)
}

#[tokio::test]
async fn fails_closed_when_every_compliant_provider_is_down_while_a_non_compliant_one_is_up() {
    let us = provider("us-1").await;
    let (cn1, cn2) = (free_port(), free_port());
    let toml = fleet_toml(
        &[("cn-1", "CN", cn1), ("cn-2", "CN", cn2), ("us-1", "US", us.addr)],
        "[origin]\ndefault = \"US\"\n",
    );
    let e = edge(&toml, Path::new(".")).await;
    let addr = e.http_addr.unwrap();

    // Failures eject the CN providers one after another; until then each request is
    // answered 502 (the provider failed) and afterwards 503 (none available). Never
    // does CN data reach the US provider.
    let mut saw_503 = None;
    for _ in 0..30 {
        let (status, headers, body) = status_and_text(addr, "cn.test", "/obj", &[]).await;
        assert!(status == 502 || status == 503, "{status} {body}");
        if status == 503 {
            saw_503 = Some((headers, body));
            break;
        }
    }
    let (headers, body) = saw_503.expect("ejected providers must turn into 503");
    assert_eq!(headers["retry-after"], "5");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["error"], "no_compliant_provider");
    assert_eq!(doc["origin"], "CN");
    assert!(doc["reason"].as_str().unwrap().contains("2 allowed providers"), "{doc}");
    assert_eq!(us.requests(), 0, "CN data went to the US");

    // Non-CN data is still served.
    let (status, _, _) = status_and_text(addr, "other.test", "/_sim/echo", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(us.requests(), 1);
}

#[tokio::test]
async fn an_origin_the_policy_allows_nowhere_gets_451() {
    let us = provider("us-1").await;
    // No default origin and unknown origins denied.
    let toml = fleet_toml(&[("us-1", "US", us.addr)], "[origin]\norder = [\"tenant\"]\n");
    let e = edge(&toml, Path::new(".")).await;
    let (status, _, body) = status_and_text(e.http_addr.unwrap(), "unbound.test", "/x", &[]).await;
    assert_eq!(status, 451, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["error"], "residency_denied");
    assert_eq!(doc["origin"], "unknown");

    // CN data with no CN provider at all: allowed nowhere, also 451.
    let (status, _, body) = status_and_text(e.http_addr.unwrap(), "cn.test", "/x", &[]).await;
    assert_eq!(status, 451, "{body}");
    assert!(body.contains("\"origin\":\"CN\""), "{body}");
    assert_eq!(us.requests(), 0);
}

#[tokio::test]
async fn failover_after_a_connect_failure_stays_inside_the_allowed_set() {
    let cn2 = provider("cn-2").await;
    let us = provider("us-1").await;
    let toml = fleet_toml(
        &[
            ("cn-1", "CN", free_port()),
            ("cn-2", "CN", cn2.addr),
            ("us-1", "US", us.addr),
        ],
        "",
    );
    let e = edge(&toml, Path::new(".")).await;
    for _ in 0..20 {
        let (status, headers, body) = status_and_text(e.http_addr.unwrap(), "cn.test", "/_sim/echo", &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-sim-provider"], "cn-2");
    }
    assert_eq!(us.requests(), 0);
}

#[tokio::test]
async fn a_residency_header_counts_only_from_trusted_hops_and_is_never_forwarded() {
    let cn = provider("cn-1").await;
    let us = provider("us-1").await;
    let providers = [("cn-1", "CN", cn.addr), ("us-1", "US", us.addr)];
    let spoof = [("x-meridian-residency", "CN"), ("x-meridian-explain", "1")];

    // Untrusted peer: the claim is ignored (origin falls to the default) and stripped.
    let e = edge(&fleet_toml(&providers, "[origin]\ndefault = \"US\"\n"), Path::new(".")).await;
    let (status, headers, body) = status_and_text(e.http_addr.unwrap(), "x", "/_sim/echo", &spoof).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-sim-provider"], "us-1");
    assert!(
        headers.get("x-meridian-route").is_none(),
        "explanations are for trusted peers only"
    );
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(echoed(&doc, "x-meridian-residency").is_empty());
    assert!(echoed(&doc, "x-meridian-explain").is_empty());

    // Trusted peer: the claim decides, and the decision is explained.
    let trusted = "[origin]\ndefault = \"US\"\n[forwarding]\ntrusted_hops = [\"127.0.0.0/8\"]\n";
    let e = edge(&fleet_toml(&providers, trusted), Path::new(".")).await;
    let (status, headers, body) = status_and_text(e.http_addr.unwrap(), "x", "/_sim/echo", &spoof).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-sim-provider"], "cn-1");
    assert_eq!(
        headers["x-meridian-route"],
        "origin=CN; source=header; provider=cn-1; jurisdiction=CN; candidates=1; reason=only usable candidate"
    );
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        echoed(&doc, "x-meridian-residency").is_empty(),
        "consumed, not forwarded"
    );
}

#[tokio::test]
async fn fields_for_the_edge_alone_are_never_forwarded_each_on_its_own() {
    let us = provider("us-1").await;
    let e = edge(
        &fleet_toml(&[("us-1", "US", us.addr)], "[origin]\ndefault = \"US\"\n"),
        Path::new("."),
    )
    .await;
    // One at a time: the edge looks for these in one pass over the names, and a
    // request carrying just one of them must still lose it.
    for (name, value) in [
        ("x-meridian-residency", "CN"),
        ("x-meridian-explain", "1"),
        ("x-meridian-size-hint", "4096"),
        ("expect", "100-continue"),
        ("connection", "x-private"),
    ] {
        let (status, _, body) = status_and_text(e.http_addr.unwrap(), "x", "/_sim/echo", &[(name, value)]).await;
        assert_eq!(status, 200, "{name}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(echoed(&doc, name).is_empty(), "{name} was forwarded: {doc}");
        assert_eq!(echoed(&doc, "x-forwarded-for"), ["127.0.0.1"], "{doc}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_on_the_fastest_compliant_provider_and_moves_away_when_it_degrades() {
    let (near, far, cn) = (
        provider("de-near").await,
        provider("de-far").await,
        provider("cn-1").await,
    );
    let near_path = DelayRelay::start(near.addr, Duration::from_millis(2)).await.unwrap();
    let far_path = DelayRelay::start(far.addr, Duration::from_millis(25)).await.unwrap();
    let toml = fleet_toml(
        &[
            ("de-near", "DE", near_path.addr),
            ("de-far", "DE", far_path.addr),
            ("cn-1", "CN", cn.addr),
        ],
        "[origin]\ndefault = \"DE\"\n",
    );
    let e = edge(&toml, Path::new(".")).await;
    let addr = e.http_addr.unwrap();
    let served_by = |h: &http::HeaderMap| h["x-sim-provider"].to_str().unwrap().to_owned();

    // Converges: after a few requests nearly everything goes to the nearer one.
    for _ in 0..10 {
        status_and_text(addr, "x", "/_sim/echo", &[]).await;
    }
    let mut near_count = 0;
    for _ in 0..20 {
        let (_, h, _) = status_and_text(addr, "x", "/_sim/echo", &[]).await;
        near_count += usize::from(served_by(&h) == "de-near");
    }
    assert!(near_count >= 18, "only {near_count}/20 went to the nearest provider");

    // The near path degrades: within 5 s traffic moves to the other compliant one.
    near_path.set_delay(Duration::from_millis(80));
    let start = tokio::time::Instant::now();
    let mut streak = 0;
    while streak < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still on the degraded provider after 5 s"
        );
        let (_, h, _) = status_and_text(addr, "x", "/_sim/echo", &[]).await;
        streak = if served_by(&h) == "de-far" { streak + 1 } else { 0 };
    }
    assert_eq!(cn.requests(), 0, "DE-origin data never went to CN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_objects_follow_rtt_and_large_ones_follow_bandwidth() {
    let (near, wide) = (provider("de-near").await, provider("de-wide").await);
    // Near but narrow (2 ms, 4 MB/s) against far but wide (30 ms, uncapped).
    let near_path = DelayRelay::with_rate(near.addr, Duration::from_millis(2), Some(4_000_000))
        .await
        .unwrap();
    let wide_path = DelayRelay::start(wide.addr, Duration::from_millis(30)).await.unwrap();
    const BIG: usize = 2 << 20;
    for p in [&near, &wide] {
        let mut c = h1(p.addr).await;
        let put = http::Request::put("/big")
            .header("host", "x")
            .body(Body::from(vec![7u8; BIG]))
            .unwrap();
        assert_eq!(c.send_request(put).await.unwrap().status(), 200);
    }
    let toml = fleet_toml(
        &[("de-near", "DE", near_path.addr), ("de-wide", "DE", wide_path.addr)],
        "[origin]\ndefault = \"DE\"\n[forwarding]\ntrusted_hops = [\"127.0.0.0/8\"]\n",
    );
    let e = edge(&toml, Path::new(".")).await;
    let addr = e.http_addr.unwrap();
    let size = BIG.to_string();
    let large = [("x-meridian-size-hint", size.as_str()), ("x-meridian-explain", "1")];
    let served_by = |h: &http::HeaderMap| h["x-sim-provider"].to_str().unwrap().to_owned();

    // Learn both paths: small requests measure RTT, large transfers bandwidth.
    for _ in 0..6 {
        status_and_text(addr, "x", "/_sim/echo", &[]).await;
    }
    for _ in 0..3 {
        let (status, _, body) = status_and_text(addr, "x", "/big", &large).await;
        assert_eq!((status, body.len()), (200, BIG));
    }
    // Without a size hint too: the size of `/big` has been learned from its responses.
    let learned = [("x-meridian-explain", "1")];
    for _ in 0..4 {
        let (_, h, body) = status_and_text(addr, "x", "/big", &learned).await;
        assert_eq!(body.len(), BIG);
        assert_eq!(
            served_by(&h),
            "de-wide",
            "large objects go to the higher-bandwidth provider"
        );
        let route = h["x-meridian-route"].to_str().unwrap();
        assert!(route.ends_with("reason=lowest estimated completion time"), "{route}");
    }
    for _ in 0..6 {
        let (_, h, _) = status_and_text(addr, "x", "/_sim/echo", &[]).await;
        assert_eq!(served_by(&h), "de-near", "small requests go to the lower-RTT provider");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_measure_providers_before_any_traffic() {
    let (near, far) = (provider("de-near").await, provider("de-far").await);
    let near_path = DelayRelay::start(near.addr, Duration::from_millis(2)).await.unwrap();
    let far_path = DelayRelay::start(far.addr, Duration::from_millis(30)).await.unwrap();
    let dead = free_port();
    let toml = fleet_toml(
        &[
            ("de-near", "DE", near_path.addr),
            ("de-far", "DE", far_path.addr),
            ("de-dead", "DE", dead),
        ],
        "[origin]\ndefault = \"DE\"\n[forwarding]\ntrusted_hops = [\"127.0.0.0/8\"]\n\
         [probes]\ninterval = \"50ms\"\ntimeout = \"500ms\"\npath = \"/_sim/echo\"\n",
    );
    let e = edge(&toml, Path::new(".")).await;
    // No request has been sent; wait until each live provider has been probed a few
    // times (probing the dead one fails, which must not disturb the rest).
    poll_until(Duration::from_secs(10), || async {
        (near.requests() >= 6 && far.requests() >= 6).then_some(())
    })
    .await;

    let (status, h, _) = status_and_text(e.http_addr.unwrap(), "x", "/_sim/echo", &[("x-meridian-explain", "1")]).await;
    assert_eq!(status, 200);
    let route = h["x-meridian-route"].to_str().unwrap();
    assert!(
        route.contains("provider=de-near") && route.ends_with("reason=lowest estimated completion time"),
        "the very first request already knows which provider is nearest: {route}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_probes_stay_within_their_budget_and_steer_large_objects() {
    let (near, wide) = (provider("de-near").await, provider("de-wide").await);
    let near_path = DelayRelay::with_rate(near.addr, Duration::from_millis(2), Some(4_000_000))
        .await
        .unwrap();
    let wide_path = DelayRelay::start(wide.addr, Duration::from_millis(30)).await.unwrap();
    for p in [&near, &wide] {
        let mut c = h1(p.addr).await;
        let put = http::Request::put("/probe-object")
            .header("host", "x")
            .body(Body::from(vec![1u8; 512 * 1024]))
            .unwrap();
        assert_eq!(c.send_request(put).await.unwrap().status(), 200);
    }
    // 256 KiB per probe, 1 MiB per provider per hour: four probes each, then no more.
    let toml = fleet_toml(
        &[("de-near", "DE", near_path.addr), ("de-wide", "DE", wide_path.addr)],
        "[origin]\ndefault = \"DE\"\n[forwarding]\ntrusted_hops = [\"127.0.0.0/8\"]\n\
         [probes]\ninterval = \"50ms\"\ntimeout = \"1s\"\nbandwidth_path = \"/probe-object\"\n\
         bandwidth_interval = \"100ms\"\nbandwidth_max_bytes = 262144\nbandwidth_budget_per_hour = 1048576\n",
    );
    let e = edge(&toml, Path::new(".")).await;
    poll_until(Duration::from_secs(20), || async {
        (near.gets("/probe-object") >= 3 && wide.gets("/probe-object") >= 3).then_some(())
    })
    .await;
    // Many more bandwidth intervals pass (counted in RTT probe rounds): the budget
    // stops the probes at four at most (the last one reads what is left of it).
    let near = &near;
    let rounds = |n: u64| {
        let start = near.requests();
        poll_until(Duration::from_secs(10), move || async move {
            (near.requests() >= start + n).then_some(())
        })
    };
    rounds(10).await;
    let spent = (near.gets("/probe-object"), wide.gets("/probe-object"));
    rounds(10).await;
    assert_eq!(
        (near.gets("/probe-object"), wide.gets("/probe-object")),
        spent,
        "probes went on past the budget"
    );
    assert!(spent.0 <= 4 && spent.1 <= 4, "{spent:?}");

    // Before any traffic, a large object already goes to the wide provider and a
    // small one to the near provider.
    let size = (2u64 << 20).to_string();
    let (_, h, _) = status_and_text(
        e.http_addr.unwrap(),
        "x",
        "/_sim/echo",
        &[("x-meridian-size-hint", size.as_str()), ("x-meridian-explain", "1")],
    )
    .await;
    let route = h["x-meridian-route"].to_str().unwrap();
    assert!(
        route.contains("provider=de-wide") && route.ends_with("lowest estimated completion time"),
        "{route}"
    );
    let (_, h, _) = status_and_text(e.http_addr.unwrap(), "x", "/_sim/echo", &[("x-meridian-explain", "1")]).await;
    let route = h["x-meridian-route"].to_str().unwrap();
    assert!(route.contains("provider=de-near"), "{route}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedged_gets_take_the_first_answer_and_stay_inside_the_allowed_set() {
    let (a, b, cn) = (provider("de-a").await, provider("de-b").await, provider("cn-1").await);
    let a_path = DelayRelay::start(a.addr, Duration::from_millis(2)).await.unwrap();
    let b_path = DelayRelay::start(b.addr, Duration::from_millis(15)).await.unwrap();
    // The CN provider is the nearest of all (no relay) but never allowed for DE data.
    let toml = fleet_toml(
        &[
            ("de-a", "DE", a_path.addr),
            ("de-b", "DE", b_path.addr),
            ("cn-1", "CN", cn.addr),
        ],
        "[origin]\ndefault = \"DE\"\n\
         [hedging]\nenabled = true\npercentile = 0.9\nmin_delay = \"20ms\"\nmax_delay = \"200ms\"\n",
    );
    let e = edge(&toml, Path::new(".")).await;
    let addr = e.http_addr.unwrap();
    for _ in 0..20 {
        let (status, _, _) = status_and_text(addr, "x", "/_sim/echo", &[]).await;
        assert_eq!(status, 200);
    }
    let (_, h, _) = status_and_text(addr, "x", "/_sim/echo", &[]).await;
    assert_eq!(h["x-sim-provider"], "de-a", "the nearer provider is the first choice");

    // The first choice turns slow: the hedge to the next-best allowed one answers.
    a.set_head_delay(Duration::from_secs(3));
    let (status, h, _) = status_and_text(addr, "x", "/_sim/echo", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(h["x-sim-provider"], "de-b", "the hedge should have won");
    assert_eq!(cn.requests(), 0, "hedging never leaves the allowed set");
}
