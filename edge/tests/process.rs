//! The real `meridian-edge` binary: config checking, SIGHUP reload, graceful drain on
//! SIGTERM, and memory while streaming 1 GiB each way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use meridian_sim::{SimConfig, SimProvider, Storage};
use nix::sys::signal::Signal;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_meridian-edge");

fn write_config(dir: &Path, toml: &str) -> std::path::PathBuf {
    let path = dir.join("edge.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A config on fixed free ports so the process can be found from outside.
fn process_config(
    provider: std::net::SocketAddr,
    https: bool,
    extra: &str,
) -> (String, std::net::SocketAddr, std::net::SocketAddr, std::net::SocketAddr) {
    let (http, tls, admin) = (free_port(), free_port(), free_port());
    let mut toml = config_toml(provider, https, extra)
        .replace("http = \"127.0.0.1:0\"", &format!("http = \"{http}\""))
        .replace("admin = \"127.0.0.1:0\"", &format!("admin = \"{admin}\""));
    if https {
        toml = toml.replace("https = \"127.0.0.1:0\"", &format!("https = \"{tls}\""));
    }
    (toml, http, tls, admin)
}

#[test]
fn check_config_accepts_good_files_and_names_the_bad_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), &config_toml("127.0.0.1:9".parse().unwrap(), false, ""));
    let out = Command::new(BIN).arg("check-config").arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        config_toml("127.0.0.1:9".parse().unwrap(), false, "[limits]\nidle_timeout = 5\n"),
    )
    .unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.idle_timeout") && err.contains("line 18"), "{err}");

    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("run") && help.contains("check-config"), "{help}");
}

#[tokio::test]
async fn sighup_reloads_certificates_without_dropping_connections_and_refuses_bad_ones() {
    let p = provider("p1").await;
    let certs = Certs::new();
    let first = certs.write("a", &["a.test"]);
    let (toml, _, https, admin) = process_config(p.addr, true, &tls_tables(&[("a", &["a.test"])], None));
    let config = write_config(certs.path(), &toml);
    let log = certs.path().join("edge.log");
    let edge = EdgeProcess::start_logged(config, admin, &log).await;
    assert_eq!(served_cert(https, "a.test").await, Some(der(&first.cert_pem)));

    // An open keep-alive connection from before the reload.
    let cfg = client_tls(&certs.ca.cert_pem, &[b"http/1.1"], rustls::ALL_VERSIONS);
    let s = tls(https, "a.test", cfg).await.unwrap();
    let mut old = h1_on(s).await;
    let r = get_on(&mut old, "a.test", "/_sim/echo").await;
    assert_eq!(r.status(), 200);
    text(r).await;

    let second = certs.write("a", &["a.test"]);
    edge.signal(Signal::SIGHUP);
    poll_until(Duration::from_secs(10), || async {
        (served_cert(https, "a.test").await == Some(der(&second.cert_pem))).then_some(())
    })
    .await;
    let r = get_on(&mut old, "a.test", "/_sim/echo").await;
    assert_eq!(r.status(), 200, "connection from before the reload still serves");
    text(r).await;

    // A broken certificate is refused and the running one stays.
    std::fs::write(certs.path().join("a.crt"), "not a certificate").unwrap();
    edge.signal(Signal::SIGHUP);
    poll_until(Duration::from_secs(10), || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("reload refused")
            .then_some(())
    })
    .await;
    assert_eq!(served_cert(https, "a.test").await, Some(der(&second.cert_pem)));
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let p = provider("p1").await;
    let dir = tempfile::tempdir().unwrap();
    let (toml, http, _, admin) = process_config(p.addr, false, "[shutdown]\ndrain_timeout = \"20s\"\n");
    let edge = EdgeProcess::start(write_config(dir.path(), &toml), admin).await;

    let slow = tokio::spawn(async move {
        let r = get(http, "x", "/_sim/delay?ms=1500").await;
        (r.status(), text(r).await)
    });
    poll_until(Duration::from_secs(10), || async { (p.requests() >= 1).then_some(()) }).await;
    edge.signal(Signal::SIGTERM);
    // Readiness drops at once, so load balancers stop sending...
    poll_until(Duration::from_secs(10), || async {
        (admin_status(admin, "/readyz").await == Some(503)).then_some(())
    })
    .await;
    // ...new connections are refused once the listener is closed...
    poll_until(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(http).await.is_err().then_some(())
    })
    .await;
    // ...while the request already in flight completes.
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "late\n");
    let exit = edge.wait(Duration::from_secs(20)).await;
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn sigint_exits_zero_even_when_the_drain_deadline_passes() {
    let p = provider("p1").await;
    let dir = tempfile::tempdir().unwrap();
    let (toml, http, _, admin) = process_config(p.addr, false, "[shutdown]\ndrain_timeout = \"200ms\"\n");
    let edge = EdgeProcess::start(write_config(dir.path(), &toml), admin).await;
    let mut stuck = tokio::net::TcpStream::connect(http).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stuck, b"GET /_sim/delay?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    poll_until(Duration::from_secs(10), || async { (p.requests() >= 1).then_some(()) }).await;
    edge.signal(Signal::SIGINT);
    let exit = edge.wait(Duration::from_secs(20)).await;
    assert_eq!(exit.code(), Some(0));
    let (_, closed) = read_until_close(&mut stuck, Duration::from_secs(10)).await;
    assert!(closed, "the edge's exit closes what was still open");
}

const GIB: u64 = 1 << 30;
const CHUNK: usize = 64 * 1024;

/// 1 GiB of varied data as a stream of 64 KiB frames, and its CRC-32.
fn gigabyte() -> (
    impl futures_util::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>>,
    u32,
) {
    let blocks: Vec<Bytes> = (0..61u32)
        .map(|b| {
            Bytes::from(
                (0..CHUNK as u32)
                    .map(|i| (i.wrapping_mul(2654435761) ^ b.wrapping_mul(40503)) as u8)
                    .collect::<Vec<u8>>(),
            )
        })
        .collect();
    let count = (GIB / CHUNK as u64) as usize;
    let order = move |i: usize| (i * 31 + 7) % 61;
    let mut h = crc32fast::Hasher::new();
    for i in 0..count {
        h.update(&blocks[order(i)]);
    }
    let crc = h.finalize();
    let stream = futures_util::stream::iter((0..count).map(move |i| Ok(Frame::data(blocks[order(i)].clone()))));
    (stream, crc)
}

/// A provider storing objects on disk (1 GiB does not belong in memory).
async fn disk_provider(dir: &Path) -> SimProvider {
    SimProvider::start(SimConfig {
        name: "disk".into(),
        addr: "127.0.0.1:0".parse().unwrap(),
        storage: Storage::Disk(dir.to_owned()),
        tls: None,
        objects: None,
    })
    .await
    .unwrap()
}

/// The edge's peak RSS after streaming 1 GiB each way stayed under 64 MiB.
fn assert_streamed_within_64_mib(edge: &EdgeProcess, protocol: &str) {
    let peak = edge.peak_rss();
    eprintln!(
        "edge peak RSS after 1 GiB up + 1 GiB down over {protocol}: {:.1} MiB",
        peak as f64 / (1 << 20) as f64
    );
    assert!(peak < 64 << 20, "edge peak RSS {peak} bytes exceeds 64 MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_up_and_down_streams_intact_within_64_mib_of_edge_memory() {
    let store = tempfile::tempdir().unwrap();
    let p = disk_provider(store.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let (toml, http, _, admin) = process_config(p.addr, false, "");
    let edge = EdgeProcess::start(write_config(dir.path(), &toml), admin).await;

    let (stream, crc) = gigabyte();
    let mut c = h1(http).await;
    let put = Request::put("/big/object")
        .header("host", "x")
        .header("content-length", GIB.to_string())
        .body(StreamBody::new(stream))
        .unwrap();
    let (mut send, conn) = {
        let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap()
    };
    tokio::spawn(conn);
    let r = send.send_request(put).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["etag"],
        format!("\"{crc:08x}\""),
        "provider stored different bytes"
    );
    text(r).await;

    let r = get_on(&mut c, "x", "/big/object").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], GIB.to_string());
    let mut body = r.into_body();
    let mut h = crc32fast::Hasher::new();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            n += d.len() as u64;
            h.update(&d);
        }
    }
    assert_eq!(n, GIB);
    assert_eq!(h.finalize(), crc, "downloaded bytes differ");

    assert_streamed_within_64_mib(&edge, "HTTP/1.1");
}

#[tokio::test]
async fn the_access_log_is_a_json_line_per_request_with_the_routing_decision() {
    let p = provider("p1").await;
    let dir = tempfile::tempdir().unwrap();
    let (toml, http, _, admin) = process_config(p.addr, false, "");
    let access = dir.path().join("access.log");
    let _edge = EdgeProcess::start_with_access_log(write_config(dir.path(), &toml), admin, &access).await;
    let r = get(http, "x", "/_sim/echo").await;
    assert_eq!(r.status(), 200);
    let line = poll_until(Duration::from_secs(10), || async {
        std::fs::read_to_string(&access)
            .ok()?
            .lines()
            .find(|l| l.contains("\"provider\""))
            .map(str::to_owned)
    })
    .await;
    let doc: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(doc["target"], "meridian::access");
    assert_eq!(doc["method"], "GET");
    assert_eq!(doc["protocol"], "HTTP/1.1");
    assert_eq!(doc["status"], 200);
    // No source knew the origin; the policy's `unknown_origin = "DE"` stood in.
    assert_eq!(doc["origin"], "unknown");
    assert_eq!(doc["origin_source"], "none");
    assert_eq!(doc["candidates"], 1);
    assert_eq!(doc["provider"], "p1");
    assert_eq!(doc["jurisdiction"], "DE");
    assert!(doc["reason"].as_str().is_some_and(|r| !r.is_empty()), "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_up_and_down_over_http3_streams_intact_within_64_mib_of_edge_memory() {
    use futures_util::StreamExt;
    let store = tempfile::tempdir().unwrap();
    let p = disk_provider(store.path()).await;
    let certs = Certs::new();
    certs.write("a", &["a.test"]);
    let h3 = free_port();
    let (toml, _, _, admin) = process_config(
        p.addr,
        true,
        "[[tls.certificates]]\nname = \"a\"\nserver_names = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\n",
    );
    let toml = toml.replace("[listeners]\n", &format!("[listeners]\nh3 = \"{h3}\"\n"));
    let edge = EdgeProcess::start(write_config(certs.path(), &toml), admin).await;
    let mut c = support::h3::Client::connect(h3, &certs.ca.cert_pem).await;

    let (stream, crc) = gigabyte();
    let mut put = c
        .send
        .send_request(
            Request::put("https://a.test/big/object")
                .header("content-length", GIB.to_string())
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    while let Some(frame) = stream.next().await {
        put.send_data(frame.unwrap().into_data().unwrap()).await.unwrap();
    }
    put.finish().await.unwrap();
    let r = put.recv_response().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["etag"],
        format!("\"{crc:08x}\""),
        "provider stored different bytes"
    );
    while put.recv_data().await.unwrap().is_some() {}

    let mut get = c
        .send
        .send_request(Request::get("https://a.test/big/object").body(()).unwrap())
        .await
        .unwrap();
    get.finish().await.unwrap();
    let r = get.recv_response().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], GIB.to_string());
    let mut h = crc32fast::Hasher::new();
    let mut n = 0u64;
    while let Some(mut chunk) = get.recv_data().await.unwrap() {
        use bytes::Buf;
        let d = chunk.copy_to_bytes(chunk.remaining());
        n += d.len() as u64;
        h.update(&d);
    }
    assert_eq!(n, GIB);
    assert_eq!(h.finalize(), crc, "downloaded bytes differ");

    assert_streamed_within_64_mib(&edge, "HTTP/3");
}

#[tokio::test]
async fn sighup_reopens_the_access_log_file_after_rotation() {
    let p = provider("p1").await;
    let dir = tempfile::tempdir().unwrap();
    let (toml, http, _, admin) = process_config(p.addr, false, "");
    let access = dir.path().join("access.log");
    let edge = EdgeProcess::start_with_access_file(write_config(dir.path(), &toml), admin, &access).await;
    let lines = |path: &Path| std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0);
    assert_eq!(get(http, "x", "/_sim/echo").await.status(), 200);
    poll_until(Duration::from_secs(10), || async {
        (lines(&access) == 1).then_some(())
    })
    .await;

    // Rotation moves the file away; until SIGHUP the edge keeps writing to it.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&access, &rotated).unwrap();
    assert_eq!(get(http, "x", "/_sim/echo").await.status(), 200);
    poll_until(Duration::from_secs(10), || async {
        (lines(&rotated) == 2).then_some(())
    })
    .await;
    edge.signal(Signal::SIGHUP);
    // Once the signal is handled, lines go to a new file at the configured path.
    poll_until(Duration::from_secs(10), || async {
        assert_eq!(get(http, "x", "/_sim/echo").await.status(), 200);
        (lines(&access) >= 1).then_some(())
    })
    .await;
    let new = std::fs::read_to_string(&access).unwrap();
    let doc: serde_json::Value = serde_json::from_str(new.lines().next().unwrap()).unwrap();
    assert_eq!(doc["provider"], "p1");
    let old_lines = lines(&rotated);
    assert!(old_lines >= 2, "the rotated file keeps its lines");
    // Nothing more reaches the rotated file.
    assert_eq!(get(http, "x", "/_sim/echo").await.status(), 200);
    poll_until(Duration::from_secs(10), || async {
        (lines(&access) >= 2).then_some(())
    })
    .await;
    assert_eq!(lines(&rotated), old_lines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_requests_are_in_the_same_access_log() {
    let p = provider("p1").await;
    let certs = Certs::new();
    certs.write("a", &["a.test"]);
    let h3 = free_port();
    let (toml, _, _, admin) = process_config(
        p.addr,
        true,
        "[[tls.certificates]]\nname = \"a\"\nserver_names = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\n",
    );
    let toml = toml.replace("[listeners]\n", &format!("[listeners]\nh3 = \"{h3}\"\n"));
    let access = certs.path().join("access.log");
    let _edge = EdgeProcess::start_with_access_file(write_config(certs.path(), &toml), admin, &access).await;
    let mut c = support::h3::Client::connect(h3, &certs.ca.cert_pem).await;
    let (status, _, _) = support::h3::exchange(&mut c.send, http::Method::GET, "/_sim/echo", &[], &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let line = poll_until(Duration::from_secs(10), || async {
        std::fs::read_to_string(&access).ok()?.lines().next().map(str::to_owned)
    })
    .await;
    let doc: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(doc["protocol"], "HTTP/3", "{doc}");
    assert_eq!(doc["method"], "GET");
    assert_eq!(doc["status"], 200);
    assert_eq!(doc["provider"], "p1");
    assert_eq!(doc["jurisdiction"], "DE");
    assert!(doc["reason"].as_str().is_some_and(|r| !r.is_empty()), "{doc}");
}
