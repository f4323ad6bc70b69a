//! A simulated provider's impairments, set in process and over HTTP, change what
//! clients see at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use meridian_sim::{Impairments, SimConfig, SimProvider};

async fn provider() -> SimProvider {
    SimProvider::start(SimConfig::memory("p")).await.unwrap()
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn client(p: &SimProvider) -> Sender {
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn call(send: &mut Sender, method: &str, path: &str, body: &[u8]) -> (u16, hyper::body::Incoming) {
    send.ready().await.unwrap();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "p")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    (resp.status().as_u16(), resp.into_body())
}

#[tokio::test]
async fn errors_latency_and_bandwidth_apply_at_once() {
    let p = provider().await;
    let mut c = client(&p).await;
    let object = vec![7u8; 256 << 10];
    assert_eq!(call(&mut c, "PUT", "/o", &object).await.0, 200);

    p.set_impairments(Impairments {
        error_rate: 1.0,
        ..Default::default()
    });
    assert_eq!(call(&mut c, "GET", "/o", b"").await.0, 503);

    p.set_impairments(Impairments {
        latency_ms: 150,
        bandwidth_bps: 1 << 20,
        ..Default::default()
    });
    let t = Instant::now();
    let (status, body) = call(&mut c, "GET", "/o", b"").await;
    assert!(t.elapsed() >= Duration::from_millis(150), "latency not applied");
    assert_eq!(status, 200);
    assert_eq!(body.collect().await.unwrap().to_bytes().len(), object.len());
    // 256 KiB at 1 MiB/s: at least a quarter of a second after the head.
    assert!(
        t.elapsed() >= Duration::from_millis(150 + 240),
        "bandwidth cap not applied: {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_stalled_body_stops_halfway_and_the_control_endpoint_sets_impairments() {
    let p = provider().await;
    let mut c = client(&p).await;
    assert_eq!(call(&mut c, "PUT", "/o", &vec![1u8; 64 << 10]).await.0, 200);
    let (status, body) = call(&mut c, "PUT", "/_sim/impair", br#"{"stall_rate": 1.0}"#).await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(doc["stall_rate"], 1.0);
    assert_eq!(p.impairments().stall_rate, 1.0);

    let (status, mut body) = call(&mut c, "GET", "/o", b"").await;
    assert_eq!(status, 200);
    let mut got = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(300), body.frame()).await {
            Ok(Some(f)) => got += f.unwrap().into_data().map_or(0, |d| d.len()),
            Ok(None) => panic!("the body finished instead of stalling"),
            Err(_) => break,
        }
    }
    assert_eq!(got, 32 << 10, "stalls after half");

    let mut c = client(&p).await;
    let (status, _) = call(&mut c, "PUT", "/_sim/impair", br#"{"error_rate": 2}"#).await;
    assert_eq!(status, 400, "fractions above 1 are refused");
    assert_eq!(p.impairments().stall_rate, 1.0, "a refused change changes nothing");
}
