//! HTTP/3 with a real client (the h3 crate over quinn, an implementation independent
//! of the edge's server side): the same routing, limits and answers as TCP, streaming
//! both ways, many streams, 0-RTT policy, Alt-Svc, GOAWAY on drain, no upstream
//! connection left behind by a client that vanishes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Method, Request};
use meridian_sim::SimProvider;
use support::h3::{Client, client_crypto, exchange};
use support::*;

/// An edge in this process with HTTPS and HTTP/3 on free ports, certificates for
/// `a.test`, `extra` TOML appended.
async fn h3_edge(p: &SimProvider, extra: &str) -> (meridian_edge::Edge, Certs) {
    let certs = Certs::new();
    certs.write("a", &["a.test"]);
    let toml = config_toml(
        p.addr,
        true,
        &format!("[[tls.certificates]]\nname = \"a\"\nserver_names = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\n{extra}"),
    )
    .replace("https = \"127.0.0.1:0\"\n", "https = \"127.0.0.1:0\"\nh3 = \"127.0.0.1:0\"\n");
    let e = edge(&toml, certs.path()).await;
    (e, certs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_put_and_alt_svc_through_the_same_routing_path() {
    let p = provider("p1").await;
    let (e, certs) = h3_edge(&p, "").await;
    let h3_addr = e.h3_addr.unwrap();
    let mut c = Client::connect(h3_addr, &certs.ca.cert_pem).await;

    let (status, headers, body) = exchange(&mut c.send, Method::GET, "/_sim/echo", &[], &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["x-sim-provider"], "p1");
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // The provider saw an ordinary request: Host set, our Via added, no body.
    assert_eq!(echoed(&doc, "host"), ["a.test"], "{doc}");
    assert_eq!(echoed(&doc, "via"), ["3 meridian"], "{doc}");
    assert_eq!(doc["body_bytes"], 0, "{doc}");

    // A large PUT streams through and reads back identically.
    let chunks: Vec<Bytes> = (0..128u32)
        .map(|i| Bytes::from(vec![(i % 251) as u8; 64 * 1024]))
        .collect();
    let len = (128 * 64 * 1024).to_string();
    let (status, _, _) = exchange(
        &mut c.send,
        Method::PUT,
        "/bucket/big",
        &[("content-length", &len)],
        &chunks,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, _, body) = exchange(&mut c.send, Method::GET, "/bucket/big", &[], &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, chunks.concat());

    // HTTPS responses advertise HTTP/3 on its port.
    let mut h2 = h2_tls(e.https_addr.unwrap(), "a.test", &certs.ca.cert_pem).await;
    let resp = h2
        .send_request(
            Request::get("https://a.test/_sim/echo")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["alt-svc"],
        format!("h3=\":{}\"; ma=86400", h3_addr.port()).as_str()
    );
    c.conn.close(0u32.into(), b"done");
    c.endpoint.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_on_one_connection_beyond_the_stream_limit() {
    let p = provider("p1").await;
    // At most 16 streams at once: the client's 200 must queue, not fail.
    let (e, certs) = h3_edge(&p, "[limits]\nh3_max_concurrent_streams = 16\n").await;
    let c = Client::connect(e.h3_addr.unwrap(), &certs.ca.cert_pem).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut send = c.send.clone();
        tasks.push(tokio::spawn(async move {
            exchange(&mut send, Method::GET, &format!("/_sim/echo?i={i}"), &[], &[])
                .await
                .map(|(s, _, _)| s)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    assert!(p.requests() >= 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_are_the_same_over_http3() {
    let p = provider("p1").await;
    let (e, certs) = h3_edge(&p, "[forwarding]\ntrusted_hops = [\"127.0.0.0/8\"]\n").await;
    let mut c = Client::connect(e.h3_addr.unwrap(), &certs.ca.cert_pem).await;
    // A policy under which CN data may live nowhere.
    let mut cfg = e.config();
    let fleet = cfg.fleet.as_mut().unwrap();
    fleet.policy.rules = vec![
        serde_json::from_value(serde_json::json!(
            { "name": "de-only", "origin": "DE", "allow": ["DE"] }
        ))
        .unwrap(),
    ];
    let mut e = e;
    e.reload(cfg).unwrap();
    let (status, headers, body) = exchange(
        &mut c.send,
        Method::GET,
        "/_sim/echo",
        &[("x-meridian-residency", "CN")],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, 451);
    assert_eq!(headers["content-type"], "application/json");
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["error"], "residency_denied", "{doc}");
    assert_eq!(p.requests(), 0, "a refused request reached the provider");
    // The same request limits as TCP: a target over max_uri_bytes is refused.
    let long = format!("/{}", "a".repeat(9000));
    let (status, _, _) = exchange(&mut c.send, Method::GET, &long, &[("x-meridian-residency", "DE")], &[])
        .await
        .unwrap();
    assert_eq!(status, 414);
    assert_eq!(p.requests(), 0, "a refused request reached the provider");
    let (status, _, _) = exchange(
        &mut c.send,
        Method::GET,
        "/_sim/echo",
        &[("x-meridian-residency", "DE")],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_response_leaves_no_upstream_connection() {
    let p = provider("p1").await;
    let (e, certs) = h3_edge(&p, "").await;
    let mut c = Client::connect(e.h3_addr.unwrap(), &certs.ca.cert_pem).await;
    // The provider sends half the body, then stalls forever.
    let mut stream = c
        .send
        .send_request(
            Request::get("https://a.test/_sim/stall?bytes=65536&length")
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    stream.finish().await.unwrap();
    let resp = stream.recv_response().await.unwrap();
    assert_eq!(resp.status(), 200);
    let first = stream.recv_data().await.unwrap().unwrap();
    assert!(first.remaining() > 0);
    assert_eq!(p.open_connections(), 1);
    // The client goes away without finishing the exchange.
    c.conn.close(0u32.into(), b"gone");
    drop(stream);
    poll_until(Duration::from_secs(5), || async {
        (p.open_connections() == 0).then_some(())
    })
    .await;
    drop(e);
}

/// A UDP relay to `server` that holds every datagram from the server for `delay`:
/// the client's first flight (ClientHello and 0-RTT data) reaches the server long
/// before the client can complete the handshake.
async fn slow_return_relay(server: SocketAddr, delay: Duration) -> SocketAddr {
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(server).await.unwrap();
    let addr = front.local_addr().unwrap();
    let (client_tx, client_rx) = tokio::sync::watch::channel(None::<SocketAddr>);
    {
        let (front, back) = (front.clone(), back.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                client_tx.send_replace(Some(from));
                let _ = back.send(&buf[..n]).await;
            }
        });
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let (data, front) = (buf[..n].to_vec(), front.clone());
            let to = *client_rx.borrow();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Some(to) = to {
                    let _ = front.send_to(&data, to).await;
                }
            });
        }
    });
    addr
}

/// Connects once to `addr` so that `endpoint` holds a session ticket for `a.test`.
async fn resume_ticket(endpoint: &quinn::Endpoint, addr: SocketAddr) {
    let conn = endpoint.connect(addr, "a.test").unwrap().await.unwrap();
    let mut first = Client::over(endpoint.clone(), conn).await;
    let (status, _, _) = exchange(&mut first.send, Method::GET, "/_sim/echo", &[], &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    first.conn.close(0u32.into(), b"");
    let _ = first.driver.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_is_off_by_default() {
    let p = provider("p1").await;
    let (e, certs) = h3_edge(&p, "").await;
    let addr = e.h3_addr.unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client_crypto(&certs.ca.cert_pem, true));
    resume_ticket(&endpoint, addr).await;
    let connecting = endpoint.connect(addr, "a.test").unwrap();
    let Err(connecting) = connecting.into_0rtt() else {
        panic!("the edge offered early data although zero_rtt is off");
    };
    connecting.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_zero_rtt_on_early_data_serves_safe_methods_only() {
    let p = provider("p1").await;
    let (e, certs) = h3_edge(&p, "[http3]\nzero_rtt = true\n").await;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client_crypto(&certs.ca.cert_pem, true));
    resume_ticket(&endpoint, e.h3_addr.unwrap()).await;

    // Through a relay that holds the edge's answers for 300 ms, requests sent with
    // the ClientHello are certainly early data when the edge reads them.
    let relay = slow_return_relay(e.h3_addr.unwrap(), Duration::from_millis(300)).await;
    let Ok((conn, accepted)) = endpoint.connect(relay, "a.test").unwrap().into_0rtt() else {
        panic!("the edge offered no early data although zero_rtt is on");
    };
    let mut early = Client::over(endpoint.clone(), conn).await;
    let mut send = early.send.clone();
    let get = tokio::spawn(async move { exchange(&mut send, Method::GET, "/_sim/echo", &[], &[]).await });
    let (put_status, _, put_body) = exchange(
        &mut early.send,
        Method::PUT,
        "/bucket/early",
        &[("content-length", "5")],
        &[Bytes::from_static(b"hello")],
    )
    .await
    .unwrap();
    assert!(accepted.await, "the edge refused the early data");
    assert_eq!(put_status, 425, "an unsafe method was served from early data");
    let doc: serde_json::Value = serde_json::from_slice(&put_body).unwrap();
    assert_eq!(doc["error"], "too_early");
    assert!(!p.has_object("/bucket/early"), "an early PUT reached the provider");
    assert_eq!(
        get.await.unwrap().unwrap().0,
        200,
        "a safe method is served from early data"
    );
    // After the handshake, the same PUT is served.
    let (status, _, _) = exchange(
        &mut early.send,
        Method::PUT,
        "/bucket/early",
        &[("content-length", "5")],
        &[Bytes::from_static(b"hello")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(p.has_object("/bucket/early"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_goaway_and_lets_in_flight_streams_finish() {
    let p = provider("p1").await;
    let (e, certs) = h3_edge(&p, "").await;
    let c = Client::connect(e.h3_addr.unwrap(), &certs.ca.cert_pem).await;
    let mut send = c.send.clone();
    let slow = tokio::spawn(async move { exchange(&mut send, Method::GET, "/_sim/delay?ms=500", &[], &[]).await });
    poll_until(Duration::from_secs(5), || async { (p.requests() >= 1).then_some(()) }).await;
    let drained = tokio::spawn(e.shutdown());
    let (status, _, body) = slow.await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "late\n");
    // The client heard GOAWAY: the connection closes without error once idle.
    let ended = tokio::time::timeout(Duration::from_secs(10), c.driver)
        .await
        .unwrap()
        .unwrap();
    assert!(ended.is_h3_no_error(), "connection ended with {ended}");
    assert!(
        tokio::time::timeout(Duration::from_secs(10), drained)
            .await
            .unwrap()
            .unwrap(),
        "drain finished in time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_and_the_connection_cap_holds_new_ones() {
    let p = provider("p1").await;
    let (e, certs) = h3_edge(&p, "[limits]\nidle_timeout = \"300ms\"\nmax_connections = 1\n").await;
    let addr = e.h3_addr.unwrap();
    let mut first = Client::connect(addr, &certs.ca.cert_pem).await;
    // The cap is one connection: a second handshake waits for a slot.
    let ca = certs.ca.cert_pem.clone();
    let second = tokio::spawn(async move { Client::connect(addr, &ca).await });
    for _ in 0..5 {
        let (status, _, _) = exchange(&mut first.send, Method::GET, "/_sim/echo", &[], &[])
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    assert!(
        !second.is_finished(),
        "a second connection was accepted beyond max_connections"
    );
    // Left idle, the first is closed by the edge; then the second gets its slot.
    // (The client's own idle timeout is 30 s; QUIC uses the smaller of the two.)
    tokio::time::timeout(Duration::from_secs(10), first.driver)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(first.conn.close_reason(), Some(quinn::ConnectionError::TimedOut)),
        "idle connection ended with {:?}",
        first.conn.close_reason()
    );
    let mut second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .unwrap()
        .unwrap();
    let (status, _, _) = exchange(&mut second.send, Method::GET, "/_sim/echo", &[], &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_same_certificates_as_https() {
    let p = provider("p1").await;
    let certs = Certs::new();
    let a = certs.write("a", &["a.test"]);
    let b = certs.write("b", &["*.b.test"]);
    let toml = config_toml(
        p.addr,
        true,
        "[[tls.certificates]]\nname = \"a\"\nserver_names = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\n\
         [[tls.certificates]]\nname = \"b\"\nserver_names = [\"*.b.test\"]\ncert = \"b.crt\"\nkey = \"b.key\"\n",
    )
    .replace(
        "https = \"127.0.0.1:0\"\n",
        "https = \"127.0.0.1:0\"\nh3 = \"127.0.0.1:0\"\n",
    );
    let e = edge(&toml, certs.path()).await;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client_crypto(&certs.ca.cert_pem, false));
    for (name, leaf) in [("a.test", &a), ("x.b.test", &b)] {
        let conn = endpoint.connect(e.h3_addr.unwrap(), name).unwrap().await.unwrap();
        let chain = conn
            .peer_identity()
            .unwrap()
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .unwrap();
        let expected = rustls_pki_types::pem::PemObject::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let expected: rustls::pki_types::CertificateDer<'static> = expected;
        assert_eq!(chain[0], expected, "certificate served for {name}");
        conn.close(0u32.into(), b"");
    }
    // A name no certificate covers gets no handshake, as on TCP.
    assert!(endpoint.connect(e.h3_addr.unwrap(), "c.test").unwrap().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_sends_its_body_is_reset_not_held() {
    let p = provider("p1").await;
    let (e, certs) = h3_edge(&p, "[limits]\nheader_read_timeout = \"300ms\"\n").await;
    let mut c = Client::connect(e.h3_addr.unwrap(), &certs.ca.cert_pem).await;
    // No length and no data: the edge cannot know whether a body follows.
    let mut stream = c
        .send
        .send_request(Request::post("https://a.test/bucket/slow").body(()).unwrap())
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), stream.recv_response())
        .await
        .expect("the edge held the stream");
    assert!(answer.is_err(), "expected a reset stream, got {answer:?}");
    assert_eq!(p.requests(), 0, "nothing reached the provider");
    // The connection itself still serves.
    let (status, _, _) = exchange(&mut c.send, Method::GET, "/_sim/echo", &[], &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
}
