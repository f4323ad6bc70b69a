//! `upstream.source_address`: provider connections leave from the configured local
//! address (a multi-homed edge choosing its egress).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::IpAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn provider_connections_leave_from_the_configured_address() {
    // A bare provider that answers with the address it saw.
    let provider = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = provider.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, peer) = provider.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = peer.ip().to_string();
                let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let toml = support::config_toml(addr, false, "[upstream]\nsource_address = \"127.0.0.7\"\n");
    let edge = support::edge(&toml, dir.path()).await;
    let resp = support::get(edge.http_addr.unwrap(), "x.test", "/").await;
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let seen: IpAddr = std::str::from_utf8(&body).unwrap().parse().unwrap();
    assert_eq!(seen, "127.0.0.7".parse::<IpAddr>().unwrap());
}
