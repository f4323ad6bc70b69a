//! Request safety over raw sockets: limits, smuggling-shaped framing, slow clients,
//! idle connections and the connection cap. Every refused request must also never
//! reach the provider.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn oversized_header_block_is_431_and_long_uri_is_414() {
    let p = provider("p1").await;
    let e = edge(&config_toml(p.addr, false, ""), Path::new(".")).await;
    let addr = e.http_addr.unwrap();

    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024));
    let (out, closed) = raw(addr, big.as_bytes(), LIMIT).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert!(closed);

    // Just under the default 64 KiB passes.
    let ok = format!(
        "GET /_sim/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(60 * 1024)
    );
    let (out, _) = raw(addr, ok.as_bytes(), LIMIT).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{}", &out[..out.len().min(200)]);

    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(9000));
    let (out, closed) = raw(addr, long.as_bytes(), LIMIT).await;
    assert!(out.starts_with("HTTP/1.1 414"), "{out}");
    assert!(closed);
    assert_eq!(p.requests(), 1, "only the valid request reached the provider");
}

#[tokio::test]
async fn ambiguous_framing_gets_400_closes_and_is_never_forwarded() {
    let p = provider("p1").await;
    let e = edge(&config_toml(p.addr, false, ""), Path::new(".")).await;
    let addr = e.http_addr.unwrap();
    let cases: [&[u8]; 10] = [
        b"POST /_sim/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /_sim/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST /_sim/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /_sim/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"POST /_sim/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /_sim/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /_sim/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"GET /_sim/echo HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET /_sim/echo HTTP/1.1\r\nHost: x\r\nX-Bare: a\rb\r\n\r\n",
        b"GET /_sim/echo HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n",
    ];
    for raw_req in cases {
        // A second, valid request pipelined behind must not be served either.
        let mut bytes = raw_req.to_vec();
        bytes.extend_from_slice(b"GET /_sim/echo HTTP/1.1\r\nHost: x\r\n\r\n");
        let (out, closed) = raw(addr, &bytes, LIMIT).await;
        let shown = String::from_utf8_lossy(raw_req);
        assert!(out.starts_with("HTTP/1.1 400"), "{shown:?} -> {out}");
        assert_eq!(
            out.matches("HTTP/1.1").count(),
            1,
            "{shown:?}: exactly one answer, then close: {out}"
        );
        assert!(closed, "{shown:?}: connection must close");
    }
    assert_eq!(p.requests(), 0, "no refused request reached the provider");
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off() {
    let p = provider("p1").await;
    let toml = config_toml(
        p.addr,
        false,
        "[limits]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"60s\"\n",
    );
    let e = edge(&toml, Path::new(".")).await;
    let mut tcp = TcpStream::connect(e.http_addr.unwrap()).await.unwrap();
    let start = tokio::time::Instant::now();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Keep dribbling header lines: progress does not reset the header clock. Writes
    // start failing once the edge has closed the connection.
    for _ in 0..100 {
        if tcp.write_all(b"X-A: b\r\n").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (out, closed) = read_until_close(&mut tcp, LIMIT).await;
    assert!(closed, "slowloris connection must be closed");
    assert!(out.is_empty(), "{out}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(p.requests(), 0);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_but_busy_ones_are_not() {
    let p = provider("p1").await;
    let toml = config_toml(
        p.addr,
        false,
        "[limits]\nidle_timeout = \"400ms\"\nheader_read_timeout = \"5s\"\n",
    );
    let e = edge(&toml, Path::new(".")).await;
    let addr = e.http_addr.unwrap();

    // A request slower than the idle timeout still completes.
    let r = get(addr, "x", "/_sim/delay?ms=800").await;
    assert_eq!(r.status(), 200);

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /_sim/echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut tcp, "\"trailers\"", LIMIT).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let start = tokio::time::Instant::now();
    let (_, closed) = read_until_close(&mut tcp, LIMIT).await;
    assert!(closed, "idle connection must be closed");
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let p = provider("p1").await;
    let toml = config_toml(p.addr, false, "[limits]\nmax_connections = 2\n");
    let e = edge(&toml, Path::new(".")).await;
    let addr = e.http_addr.unwrap();

    let mut a = h1(addr).await;
    let mut b = h1(addr).await;
    for c in [&mut a, &mut b] {
        let r = c
            .send_request(
                http::Request::get("/_sim/echo")
                    .header("host", "x")
                    .body(Body::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        text(r).await;
    }
    // The third connection is not served while two are open...
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /_sim/echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let early = read_until(&mut third, "HTTP/1.1", Duration::from_millis(300)).await;
    assert!(early.is_empty(), "served beyond the limit: {early}");
    // ...and is served as soon as one closes.
    drop(a);
    let later = read_until(&mut third, "HTTP/1.1 200", LIMIT).await;
    assert!(later.contains("HTTP/1.1 200"), "{later}");
}

#[tokio::test]
async fn connect_method_is_refused() {
    let p = provider("p1").await;
    let e = edge(&config_toml(p.addr, false, ""), Path::new(".")).await;
    let mut tcp = TcpStream::connect(e.http_addr.unwrap()).await.unwrap();
    tcp.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut tcp, "method_not_allowed", LIMIT).await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert_eq!(p.requests(), 0);
}

#[tokio::test]
async fn pipelined_and_http10_requests_follow_keep_alive_rules() {
    let p = provider("p1").await;
    let e = edge(&config_toml(p.addr, false, ""), Path::new(".")).await;
    let addr = e.http_addr.unwrap();

    // Two requests in one write: answered in order on the one connection, which
    // closes after the second because it asked to.
    let (out, closed) = raw(
        addr,
        b"GET /_sim/echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /_sim/echo?n=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        LIMIT,
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    let (first, second) = (out.find("n=1").unwrap(), out.find("n=2").unwrap());
    assert!(first < second, "{out}");
    assert!(closed);

    // HTTP/1.0 closes unless it asks for keep-alive; with it, the connection serves on.
    let (out, closed) = raw(addr, b"GET /_sim/echo HTTP/1.0\r\nHost: x\r\n\r\n", LIMIT).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("connection: close"), "{out}");
    assert!(closed);
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    for n in 0..2 {
        tcp.write_all(b"GET /_sim/echo HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let out = read_until(&mut tcp, "\"trailers\"", LIMIT).await;
        assert!(out.starts_with("HTTP/1.1 200"), "request {n}: {out}");
        assert!(out.to_ascii_lowercase().contains("connection: keep-alive"), "{out}");
    }

    // An HTTP/1.0 client cannot read chunked coding: a response of unknown length
    // goes out close-delimited, whole.
    let (out, closed) = raw(addr, b"GET /_sim/trailers HTTP/1.0\r\nHost: x\r\n\r\n", LIMIT).await;
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("\r\ndate: "), "{head}");
    // The provider's own `Date` is passed on, never doubled.
    assert_eq!(head.matches("\r\ndate: ").count(), 1, "{head}");
    assert!(closed);
    assert_eq!(body, "hello, trailers");

    // Not HTTP at all: 400, then closed.
    let (out, closed) = raw(addr, b"NOT HTTP\r\n\r\n", LIMIT).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(closed);
    assert_eq!(p.requests(), 6, "the 400 reached no provider");
}

#[tokio::test]
async fn a_body_the_edge_did_not_read_is_never_taken_for_the_next_request() {
    // The provider is down, so the edge answers before reading the upload. The
    // upload's bytes form a request: it must not be served.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = edge(&config_toml(gone, false, ""), Path::new(".")).await;
    let inner = b"GET /_sim/echo HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut req = format!(
        "PUT /obj HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        inner.len()
    )
    .into_bytes();
    req.extend_from_slice(inner);
    let (out, closed) = raw(e.http_addr.unwrap(), &req, LIMIT).await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "exactly one answer: {out}");
    assert!(out.to_ascii_lowercase().contains("connection: close"), "{out}");
    assert!(closed);
}

#[tokio::test]
async fn requests_with_many_fields_are_served_up_to_the_limit() {
    let p = provider("p1").await;
    let e = edge(
        &config_toml(p.addr, false, "[limits]\nmax_headers = 60\n"),
        Path::new("."),
    )
    .await;
    let addr = e.http_addr.unwrap();
    for (fields, want) in [(50, "HTTP/1.1 200"), (61, "HTTP/1.1 431")] {
        let mut req = String::from("GET /_sim/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for i in 2..fields {
            req.push_str(&format!("X-F{i}: v{i}\r\n"));
        }
        req.push_str("\r\n");
        let (out, closed) = raw(addr, req.as_bytes(), LIMIT).await;
        assert!(out.starts_with(want), "{fields} fields: {}", &out[..out.len().min(200)]);
        assert!(closed);
        if want.ends_with("200") {
            assert!(out.contains("x-f49"), "every field forwarded");
        }
    }
}

#[tokio::test]
async fn a_client_that_leaves_while_its_provider_works_cancels_the_exchange() {
    let p = provider("p1").await;
    let e = edge(&config_toml(p.addr, false, ""), Path::new(".")).await;
    let mut tcp = TcpStream::connect(e.http_addr.unwrap()).await.unwrap();
    tcp.write_all(b"GET /_sim/delay?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    poll_until(LIMIT, || async { (p.open_connections() == 1).then_some(()) }).await;
    drop(tcp);
    // The provider would answer in a minute; the edge lets go of it at once.
    poll_until(LIMIT, || async { (p.open_connections() == 0).then_some(()) }).await;
}

#[tokio::test]
async fn request_targets_must_have_a_form_http_allows() {
    let p = provider("p1").await;
    let e = edge(&config_toml(p.addr, false, ""), Path::new(".")).await;
    let addr = e.http_addr.unwrap();
    for bad in [
        &b"GET other.example:80 HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET relative/path HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let (out, closed) = raw(addr, bad, LIMIT).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{:?} -> {out}",
            String::from_utf8_lossy(bad)
        );
        assert!(closed);
    }
    // Absolute form is every server's to accept; its authority names the host.
    let (out, _) = raw(
        addr,
        b"GET http://x/_sim/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        LIMIT,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(p.requests(), 1, "only the well-formed target reached the provider");

    // `Expect: 100-continue` from an HTTP/1.0 client gets no interim answer.
    let (out, _) = raw(
        addr,
        b"PUT /obj HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        LIMIT,
    )
    .await;
    assert!(!out.contains("100 Continue"), "{out}");
    assert!(out.starts_with("HTTP/1.1 2"), "{out}");
}
