//! An HTTP/3 client for tests: the h3 crate over quinn, independent of the edge's
//! server side.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::{Method, Request, StatusCode};

use super::client_tls;

pub type Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// A client TLS config for HTTP/3 trusting `ca_pem`; early data when `zero_rtt`.
pub fn client_crypto(ca_pem: &str, zero_rtt: bool) -> quinn::ClientConfig {
    let mut tls = (*client_tls(ca_pem, &[b"h3"], &[&rustls::version::TLS13])).clone();
    tls.enable_early_data = zero_rtt;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

pub struct Client {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: Send,
    pub driver: tokio::task::JoinHandle<h3::error::ConnectionError>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, ca_pem: &str) -> Client {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client_crypto(ca_pem, false));
        let conn = endpoint.connect(addr, "a.test").unwrap().await.unwrap();
        Client::over(endpoint, conn).await
    }

    pub async fn over(endpoint: quinn::Endpoint, conn: quinn::Connection) -> Client {
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await.unwrap();
        let driver = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        Client {
            endpoint,
            conn,
            send,
            driver,
        }
    }
}

/// Sends `method path` with `body` (none when empty); returns status, headers, body.
pub async fn exchange(
    send: &mut Send,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[Bytes],
) -> Result<(StatusCode, http::HeaderMap, Bytes), h3::error::StreamError> {
    let mut req = Request::builder().method(method).uri(format!("https://a.test{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut stream = send.send_request(req.body(()).unwrap()).await?;
    for chunk in body {
        stream.send_data(chunk.clone()).await?;
    }
    stream.finish().await?;
    let resp = stream.recv_response().await?;
    let mut out = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        out.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    Ok((resp.status(), resp.headers().clone(), Bytes::from(out)))
}
