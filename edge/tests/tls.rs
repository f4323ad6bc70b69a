//! The HTTPS listener over real TLS: protocol versions, ALPN, certificate choice by
//! SNI, and HTTP/2 limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::Request;
use support::*;

#[tokio::test]
async fn sni_picks_the_matching_certificate_and_unknown_names_fail() {
    let p = provider("p1").await;
    let certs = Certs::new();
    let a = certs.write("a", &["a.test"]);
    let b = certs.write("b", &["*.b.test"]);
    let toml = config_toml(
        p.addr,
        true,
        &tls_tables(&[("a", &["a.test"]), ("b", &["*.b.test"])], None),
    );
    let e = edge(&toml, certs.path()).await;
    let addr = e.https_addr.unwrap();

    assert_eq!(served_cert(addr, "a.test").await, Some(der(&a.cert_pem)));
    assert_eq!(served_cert(addr, "x.b.test").await, Some(der(&b.cert_pem)));
    // A wildcard covers one label only, and an unknown name gets no certificate.
    assert_eq!(served_cert(addr, "y.x.b.test").await, None);
    assert_eq!(served_cert(addr, "c.test").await, None);
}

#[tokio::test]
async fn unknown_sni_gets_the_default_certificate_when_configured() {
    let p = provider("p1").await;
    let certs = Certs::new();
    let a = certs.write("a", &["a.test"]);
    let d = certs.write("fallback", &["fallback.test"]);
    let toml = config_toml(
        p.addr,
        true,
        &tls_tables(
            &[("a", &["a.test"]), ("fallback", &["fallback.test"])],
            Some("fallback"),
        ),
    );
    let e = edge(&toml, certs.path()).await;
    let addr = e.https_addr.unwrap();
    assert_eq!(served_cert(addr, "a.test").await, Some(der(&a.cert_pem)));
    assert_eq!(served_cert(addr, "unknown.test").await, Some(der(&d.cert_pem)));
}

#[tokio::test]
async fn tls12_and_tls13_both_work_and_alpn_selects_the_protocol() {
    let p = provider("p1").await;
    let certs = Certs::new();
    certs.write("a", &["a.test"]);
    let toml = config_toml(p.addr, true, &tls_tables(&[("a", &["a.test"])], None));
    let e = edge(&toml, certs.path()).await;
    let addr = e.https_addr.unwrap();

    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
            let cfg = client_tls(&certs.ca.cert_pem, &[alpn], &[version]);
            let s = tls(addr, "a.test", cfg).await.unwrap();
            let conn = s.get_ref().1;
            assert_eq!(conn.protocol_version(), Some(version.version));
            assert_eq!(conn.alpn_protocol(), Some(alpn));
        }
    }

    // HTTP/1.1 over TLS serves requests too.
    let cfg = client_tls(&certs.ca.cert_pem, &[b"http/1.1"], rustls::ALL_VERSIONS);
    let s = tls(addr, "a.test", cfg).await.unwrap();
    let mut send = h1_on(s).await;
    let r = get_on(&mut send, "a.test", "/_sim/echo").await;
    assert_eq!(r.status(), 200);
    let doc = echo_json(r).await;
    assert_eq!(echoed(&doc, "x-forwarded-proto"), ["https"]);
}

#[tokio::test]
async fn tls_versions_below_1_2_are_refused() {
    // rustls cannot even offer TLS 1.1, so use openssl's client when present.
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        panic!("openssl is required for this test (installed by scripts/test)");
    }
    let p = provider("p1").await;
    let certs = Certs::new();
    certs.write("a", &["a.test"]);
    let toml = config_toml(p.addr, true, &tls_tables(&[("a", &["a.test"])], None));
    let e = edge(&toml, certs.path()).await;
    let addr = e.https_addr.unwrap();
    let run = |flag: &'static str| {
        let connect = addr.to_string();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &connect,
                    "-servername",
                    "a.test",
                    flag,
                    "-cipher",
                    "DEFAULT@SECLEVEL=0",
                ])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
    };
    let old = run("-tls1_1").await.unwrap();
    assert!(!old.status.success(), "TLS 1.1 handshake must fail");
    let ok = run("-tls1_2").await.unwrap();
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(out.contains("TLSv1.2"), "{out}");
}

/// An edge with HTTPS for `a.test` and `limits` (a `[limits]` body), and a raw
/// HTTP/2 connection to it (the h2 crate, so frames can be driven directly).
async fn raw_h2(
    limits: &str,
) -> (
    meridian_sim::SimProvider,
    Certs,
    meridian_edge::Edge,
    h2::client::SendRequest<bytes::Bytes>,
    h2::client::Connection<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, bytes::Bytes>,
) {
    let p = provider("p1").await;
    let certs = Certs::new();
    certs.write("a", &["a.test"]);
    let extra = format!("{}[limits]\n{limits}", tls_tables(&[("a", &["a.test"])], None));
    let e = edge(&config_toml(p.addr, true, &extra), certs.path()).await;
    let cfg = client_tls(&certs.ca.cert_pem, &[b"h2"], rustls::ALL_VERSIONS);
    let s = tls(e.https_addr.unwrap(), "a.test", cfg).await.unwrap();
    let (send, conn) = h2::client::handshake(s).await.unwrap();
    (p, certs, e, send, conn)
}

#[tokio::test]
async fn http2_advertises_the_configured_stream_limit() {
    let (_p, _certs, _e, send, mut conn) = raw_h2("h2_max_concurrent_streams = 7\n").await;
    let mut send = send.ready().await.unwrap();
    let req = Request::get("https://a.test/_sim/echo").body(()).unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::select! {
        r = resp => r.unwrap(),
        c = &mut conn => panic!("connection ended: {c:?}"),
    };
    assert_eq!(resp.status(), 200);
    assert_eq!(conn.max_concurrent_send_streams(), 7);
}

#[tokio::test]
async fn a_rapid_reset_flood_gets_the_connection_closed() {
    let (_p, _certs, _e, send, conn) = raw_h2("h2_max_pending_accept_reset_streams = 10\n").await;
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    // Open streams and cancel them at once, as CVE-2023-44487 does.
    let mut sent = 0;
    for _ in 0..5000 {
        let req = Request::get("https://a.test/_sim/delay?ms=1000").body(()).unwrap();
        let Ok((resp, mut body)) = send.send_request(req, false) else {
            break;
        };
        body.send_reset(h2::Reason::CANCEL);
        drop(resp);
        sent += 1;
        if conn.is_finished() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(sent < 5000, "the edge kept accepting a reset flood");
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("flood must end the connection")
        .unwrap();
    // The client sees the GOAWAY (ENHANCE_YOUR_CALM) or, if it was still writing,
    // the closed socket.
    let err = ended.expect_err("the edge must close the connection");
    assert!(
        err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || err.is_io(),
        "{err}"
    );
}

#[tokio::test]
async fn http2_oversized_header_block_is_431_and_not_forwarded() {
    let (p, _certs, _e, send, conn) = raw_h2("").await;
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let big = "a".repeat(70 * 1024);
    let req = Request::get("https://a.test/_sim/echo")
        .header("x-big", big.as_str())
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(p.requests(), 0);
}
