//! The request path over real sockets: forwarding, streaming details, header
//! hygiene, pooling and upstream timeouts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn put_get_head_range_delete_through_the_edge() {
    let p = provider("p1").await;
    let e = edge(&config_toml(p.addr, false, ""), std::path::Path::new(".")).await;
    let addr = e.http_addr.unwrap();
    let mut c = h1(addr).await;

    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let put = Request::put("/bucket/obj")
        .header("host", "x")
        .body(Body::from(data.clone()))
        .unwrap();
    let r = c.send_request(put).await.unwrap();
    assert_eq!(r.status(), 200);
    text(r).await;

    let r = get_on(&mut c, "x", "/bucket/obj").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    let got = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(crc32fast::hash(&got), crc32fast::hash(&data));

    let r = c
        .send_request(
            Request::get("/bucket/obj")
                .header("host", "x")
                .header("range", "bytes=10-19")
                .body(Body::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/100000");
    let got = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&got[..], &data[10..20]);

    let r = c
        .send_request(
            Request::head("/bucket/obj")
                .header("host", "x")
                .body(Body::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert!(r.into_body().collect().await.unwrap().to_bytes().is_empty());

    let r = c
        .send_request(
            Request::delete("/bucket/obj")
                .header("host", "x")
                .body(Body::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = get_on(&mut c, "x", "/bucket/obj").await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways_and_via_added() {
    let p = provider("p1").await;
    let e = edge(&config_toml(p.addr, false, ""), std::path::Path::new(".")).await;
    let mut c = h1(e.http_addr.unwrap()).await;
    let req = Request::get("/_sim/echo")
        .header("host", "x")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=1")
        .header("proxy-authorization", "Basic Zm9v")
        .header("upgrade", "h2c")
        .header("x-end-to-end", "kept")
        .body(Body::default())
        .unwrap();
    let r = c.send_request(req).await.unwrap();
    assert_eq!(r.headers()["via"], "1.1 meridian");
    assert!(r.headers().get("connection").is_none() || r.headers()["connection"] == "keep-alive");
    // The provider's own fields pass once each, framing rewritten by this hop.
    assert_eq!(r.headers()["x-sim-provider"], "p1");
    for once in ["date", "content-length", "x-sim-provider", "via"] {
        assert_eq!(r.headers().get_all(once).iter().count(), 1, "{once}: {:?}", r.headers());
    }
    let doc = echo_json(r).await;
    for gone in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(echoed(&doc, gone).is_empty(), "{gone} reached the provider: {doc}");
    }
    assert_eq!(echoed(&doc, "x-end-to-end"), ["kept"]);
    assert_eq!(doc["uri"], "/_sim/echo", "HTTP/1.1 upstream requests use origin-form");
    assert_eq!(echoed(&doc, "via"), ["1.1 meridian"]);
}

#[tokio::test]
async fn forwarding_trail_is_replaced_for_untrusted_and_appended_for_trusted_peers() {
    let p = provider("p1").await;
    let spoof = |c: &mut hyper::client::conn::http1::SendRequest<Body>| {
        c.send_request(
            Request::get("/_sim/echo")
                .header("host", "x")
                .header("x-forwarded-for", "203.0.113.9")
                .header("x-forwarded-proto", "https")
                .header("forwarded", "for=203.0.113.9")
                .body(Body::default())
                .unwrap(),
        )
    };

    let untrusted = edge(&config_toml(p.addr, false, ""), std::path::Path::new(".")).await;
    let mut c = h1(untrusted.http_addr.unwrap()).await;
    let doc = echo_json(spoof(&mut c).await.unwrap()).await;
    assert_eq!(echoed(&doc, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed(&doc, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed(&doc, "forwarded"), ["for=127.0.0.1;proto=http"]);

    let trusted = edge(
        &config_toml(p.addr, false, "[forwarding]\ntrusted_hops = [\"127.0.0.0/8\"]\n"),
        std::path::Path::new("."),
    )
    .await;
    let mut c = h1(trusted.http_addr.unwrap()).await;
    let doc = echo_json(spoof(&mut c).await.unwrap()).await;
    assert_eq!(echoed(&doc, "x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(echoed(&doc, "x-forwarded-proto"), ["https"]);
    assert_eq!(echoed(&doc, "forwarded"), ["for=203.0.113.9, for=127.0.0.1;proto=http"]);
}

#[tokio::test]
async fn chunked_upload_with_trailers_and_response_trailers_pass_through() {
    let p = provider("p1").await;
    let e = edge(&config_toml(p.addr, false, ""), std::path::Path::new(".")).await;
    let mut c = h1(e.http_addr.unwrap()).await;

    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-upload-crc", "1234".parse().unwrap());
    let frames = vec![
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"part one, "))),
        Ok(Frame::data(Bytes::from_static(b"part two"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let (mut s, conn) = {
        let tcp = TcpStream::connect(e.http_addr.unwrap()).await.unwrap();
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap()
    };
    tokio::spawn(conn);
    let req = Request::post("/_sim/echo")
        .header("host", "x")
        .header("trailer", "x-upload-crc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let doc = echo_json(s.send_request(req).await.unwrap()).await;
    assert_eq!(doc["body_bytes"], 18);
    assert_eq!(echoed(&doc, "transfer-encoding"), ["chunked"]);
    let t: Vec<_> = doc["trailers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap(), p[1].as_str().unwrap()))
        .collect();
    assert_eq!(t, [("x-upload-crc", "1234")]);

    let r = c
        .send_request(
            Request::get("/_sim/trailers")
                .header("host", "x")
                .header("te", "trailers")
                .body(Body::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.headers()["transfer-encoding"], "chunked");
    let collected = r.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("response trailers");
    let data = collected.to_bytes();
    assert_eq!(trailers["x-checksum"], crc32fast::hash(&data).to_string());
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let p = provider("p1").await;
    let e = edge(&config_toml(p.addr, false, ""), std::path::Path::new(".")).await;
    let mut tcp = TcpStream::connect(e.http_addr.unwrap()).await.unwrap();
    tcp.write_all(b"PUT /obj HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    // The body is withheld until the edge says 100 Continue.
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 100 Continue"), "{first}");
    tcp.write_all(b"hello").await.unwrap();
    let rest = read_until(&mut tcp, "stored", Duration::from_secs(10)).await;
    assert!(rest.contains("HTTP/1.1 200 OK"), "{rest}");
    assert!(p.has_object("/obj"));
}

#[tokio::test]
async fn upstream_connections_are_reused_and_capped_per_provider() {
    let p = provider("p1").await;
    let extra = "";
    let toml = config_toml(p.addr, false, extra).replace(
        "[fleet.providers.endpoint]",
        "max_connections = 2\n[fleet.providers.endpoint]",
    );
    let e = edge(&toml, std::path::Path::new(".")).await;
    let addr = e.http_addr.unwrap();

    // Sequential requests over different client connections share upstream ones:
    // at most one per worker thread, since each worker keeps its own pool.
    for _ in 0..20 {
        let r = get(addr, "x", "/_sim/echo").await;
        assert_eq!(r.status(), 200);
        text(r).await;
    }
    assert!(
        p.connections_accepted() as usize <= e.workers(),
        "{} upstream connections",
        p.connections_accepted()
    );

    // Twenty concurrent slow requests never open more than the cap.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            let r = get(addr, "x", "/_sim/delay?ms=50").await;
            assert_eq!(r.status(), 200);
            text(r).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(p.peak_connections() <= 2, "peak {}", p.peak_connections());
    assert!(p.connections_accepted() <= 2 + e.workers() as u64);
}

#[tokio::test]
async fn slow_response_head_is_504_and_refused_connect_is_502() {
    let p = provider("p1").await;
    let toml = config_toml(p.addr, false, "[upstream]\nresponse_header_timeout = \"300ms\"\n");
    let e = edge(&toml, std::path::Path::new(".")).await;
    let r = get(e.http_addr.unwrap(), "x", "/_sim/delay?ms=5000").await;
    assert_eq!(r.status(), 504);
    assert!(text(r).await.contains("upstream_timeout"));

    let closed = free_port();
    let e = edge(&config_toml(closed, false, ""), std::path::Path::new(".")).await;
    let r = get(e.http_addr.unwrap(), "x", "/").await;
    assert_eq!(r.status(), 502);
}

#[tokio::test]
async fn tls_provider_that_never_handshakes_is_a_connect_timeout() {
    // A listener that accepts TCP but never speaks TLS.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let (s, _) = silent.accept().await.unwrap();
            conns.push(s);
        }
    });
    let toml = format!(
        "[listeners]\nhttp = \"127.0.0.1:0\"\n[upstream]\nconnect_timeout = \"300ms\"\n\
         [[fleet.providers]]\nid = \"p1\"\njurisdiction = \"DE\"\n[fleet.providers.endpoint]\naddress = \"{addr}\"\nscheme = \"https\"\nsni = \"store.test\"\n\
         [fleet.policy]\nunknown_origin = \"DE\"\nrules = [{{ name = \"any\", origin = \"*\", allow = [\"*\"] }}]\n"
    );
    let e = edge(&toml, std::path::Path::new(".")).await;
    let r = get(e.http_addr.unwrap(), "x", "/").await;
    assert_eq!(r.status(), 504);
    held.abort();
}

#[tokio::test]
async fn a_stalled_response_body_is_aborted_not_cut_short() {
    let p = provider("p1").await;
    let toml = config_toml(p.addr, false, "[upstream]\nbody_idle_timeout = \"300ms\"\n");
    let e = edge(&toml, std::path::Path::new(".")).await;
    let addr = e.http_addr.unwrap();

    // With Content-Length: the client gets fewer bytes than announced and an error.
    let r = get(addr, "x", "/_sim/stall?bytes=1000&length=1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "2000");
    assert!(
        r.into_body().collect().await.is_err(),
        "a short body must not look complete"
    );

    // Chunked: the terminating chunk never comes.
    let (out, closed) = raw(
        addr,
        b"GET /_sim/stall?bytes=1000 HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(closed, "connection must be closed");
    assert!(out.contains("transfer-encoding: chunked"), "{out}");
    assert!(!out.ends_with("0\r\n\r\n"), "stream must not be terminated cleanly");
}

#[tokio::test]
async fn http2_clients_reach_http1_and_http2_providers() {
    let p = provider("p1").await;
    let certs = Certs::new();
    certs.write("edge", &["edge.test"]);
    let tls_tables = "[tls]\n[[tls.certificates]]\nname = \"edge\"\nserver_names = [\"edge.test\"]\ncert = \"edge.crt\"\nkey = \"edge.key\"\n";
    for proto in ["http1", "http2"] {
        let toml = config_toml(p.addr, true, tls_tables).replace(
            "[fleet.providers.endpoint]",
            &format!("protocol = \"{proto}\"\n[fleet.providers.endpoint]"),
        );
        let e = edge(&toml, certs.path()).await;
        let mut c = h2_tls(e.https_addr.unwrap(), "edge.test", &certs.ca.cert_pem).await;
        let r = c
            .send_request(
                Request::post("https://edge.test/_sim/echo")
                    .body(Body::from("abc"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["via"],
            if proto == "http1" { "1.1 meridian" } else { "2 meridian" }
        );
        // An HTTP/1.1 provider's fields reach an HTTP/2 client as a map.
        assert_eq!(r.headers()["x-sim-provider"], "p1", "{proto}: {:?}", r.headers());
        let doc = echo_json(r).await;
        assert_eq!(doc["body_bytes"], 3);
        assert_eq!(doc["version"], if proto == "http1" { "HTTP/1.1" } else { "HTTP/2.0" });
        assert_eq!(echoed(&doc, "via"), ["2 meridian"]);
        assert_eq!(echoed(&doc, "x-forwarded-proto"), ["https"]);
    }
}

#[tokio::test]
async fn http1_fields_reach_either_provider_protocol_once_with_the_trail_and_via() {
    let p = provider("p1").await;
    for proto in ["http1", "http2"] {
        let toml = config_toml(p.addr, false, "").replace(
            "[fleet.providers.endpoint]",
            &format!("protocol = \"{proto}\"\n[fleet.providers.endpoint]"),
        );
        let e = edge(&toml, std::path::Path::new(".")).await;
        let mut c = h1(e.http_addr.unwrap()).await;
        let r = c
            .send_request(
                Request::post("/_sim/echo")
                    .header("host", "x")
                    .header("X-End-To-End", "kept")
                    .header("x-twice", "1")
                    .header("x-twice", "2")
                    .header("content-length", "3")
                    .body(Body::from("abc"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{proto}");
        let doc = echo_json(r).await;
        assert_eq!(doc["body_bytes"], 3, "{proto}: {doc}");
        assert_eq!(echoed(&doc, "x-end-to-end"), ["kept"], "{proto}: {doc}");
        assert_eq!(echoed(&doc, "x-twice"), ["1", "2"], "{proto}: {doc}");
        assert_eq!(echoed(&doc, "x-forwarded-for"), ["127.0.0.1"], "{proto}: {doc}");
        assert_eq!(echoed(&doc, "x-forwarded-proto"), ["http"], "{proto}: {doc}");
        assert_eq!(
            echoed(&doc, "forwarded"),
            ["for=127.0.0.1;proto=http"],
            "{proto}: {doc}"
        );
        assert_eq!(echoed(&doc, "via"), ["1.1 meridian"], "{proto}: {doc}");
        if proto == "http1" {
            assert_eq!(echoed(&doc, "host"), ["x"], "{doc}");
            assert_eq!(echoed(&doc, "content-length"), ["3"], "{doc}");
        } else {
            assert_eq!(doc["version"], "HTTP/2.0", "{doc}");
            assert!(echoed(&doc, "host").is_empty(), "the host travels as :authority: {doc}");
        }
    }
}

#[tokio::test]
async fn an_upload_cut_off_by_the_client_is_not_stored() {
    let p = provider("p1").await;
    let e = edge(&config_toml(p.addr, false, ""), std::path::Path::new(".")).await;
    let mut tcp = TcpStream::connect(e.http_addr.unwrap()).await.unwrap();
    tcp.write_all(b"PUT /partial HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&[b'z'; 10_000]).await.unwrap();
    poll_until(Duration::from_secs(10), || async {
        (p.open_connections() == 1).then_some(())
    })
    .await;
    drop(tcp);
    // The edge aborts the upstream exchange, so the provider's connection closes
    // without a complete body...
    poll_until(Duration::from_secs(10), || async {
        (p.open_connections() == 0).then_some(())
    })
    .await;
    // ...and nothing was committed.
    assert!(!p.has_object("/partial"));
}

#[tokio::test]
async fn tls_providers_are_verified_with_the_configured_ca_sni_and_host_override() {
    let certs = Certs::new();
    let leaf = certs.ca.issue(&["store.test"]).unwrap();
    std::fs::write(certs.path().join("ca.crt"), &certs.ca.cert_pem).unwrap();
    let p = meridian_sim::SimProvider::start(meridian_sim::SimConfig {
        name: "tls".into(),
        addr: "127.0.0.1:0".parse().unwrap(),
        storage: meridian_sim::Storage::Memory,
        tls: Some(leaf),
        objects: None,
    })
    .await
    .unwrap();
    for (proto, version) in [("http1", "HTTP/1.1"), ("http2", "HTTP/2.0")] {
        let toml = format!(
            "[listeners]\nhttp = \"127.0.0.1:0\"\n[upstream]\nca_file = \"ca.crt\"\n\
             [[fleet.providers]]\nid = \"p1\"\njurisdiction = \"DE\"\nprotocol = \"{proto}\"\n[fleet.providers.endpoint]\naddress = \"{}\"\n\
             scheme = \"https\"\nsni = \"store.test\"\nhost = \"objects.internal\"\n\
             [fleet.policy]\nunknown_origin = \"DE\"\nrules = [{{ name = \"any\", origin = \"*\", allow = [\"*\"] }}]\n",
            p.addr
        );
        let e = edge(&toml, certs.path()).await;
        let r = get(e.http_addr.unwrap(), "client.example", "/_sim/echo").await;
        assert_eq!(r.status(), 200, "{proto}");
        let doc = echo_json(r).await;
        assert_eq!(doc["version"], version);
        match proto {
            "http1" => assert_eq!(echoed(&doc, "host"), ["objects.internal"]),
            _ => assert!(
                doc["uri"].as_str().unwrap().starts_with("https://objects.internal/"),
                "{doc}"
            ),
        }
    }

    // The wrong name fails verification: 502, nothing served.
    let toml = format!(
        "[listeners]\nhttp = \"127.0.0.1:0\"\n[upstream]\nca_file = \"ca.crt\"\n\
         [[fleet.providers]]\nid = \"p1\"\njurisdiction = \"DE\"\n[fleet.providers.endpoint]\naddress = \"{}\"\nscheme = \"https\"\nsni = \"other.test\"\n\
         [fleet.policy]\nunknown_origin = \"DE\"\nrules = [{{ name = \"any\", origin = \"*\", allow = [\"*\"] }}]\n",
        p.addr
    );
    let e = edge(&toml, certs.path()).await;
    let r = get(e.http_addr.unwrap(), "x", "/_sim/echo").await;
    assert_eq!(r.status(), 502);

    // Without `ca_file` the system roots decide, and they do not know the test CA:
    // verification is never skipped.
    let toml = toml
        .replace("[upstream]\nca_file = \"ca.crt\"\n", "")
        .replace("other.test", "store.test");
    let e = edge(&toml, certs.path()).await;
    let r = get(e.http_addr.unwrap(), "x", "/_sim/echo").await;
    assert_eq!(r.status(), 502);
}

#[tokio::test]
async fn a_pooled_connection_the_provider_closed_is_not_used_again() {
    // A provider that answers one request per connection, then closes it without
    // saying so (no `Connection: close`), as an idle timeout on its side would.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let head = read_until(&mut s, "\r\n\r\n", Duration::from_secs(10)).await;
                assert!(head.starts_with("GET /"), "{head}");
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                drop(s);
                closed_tx.send(()).unwrap();
            });
        }
    });
    let toml = config_toml(addr, false, "[runtime]\nworkers = 1\n");
    let e = edge(&toml, std::path::Path::new(".")).await;
    let http = e.http_addr.unwrap();
    for i in 0..3 {
        let r = get(http, "x", "/").await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(text(r).await, "ok");
        closed_rx.recv().await.unwrap();
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}
