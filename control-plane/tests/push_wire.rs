//! The push protocol on the wire, spoken by hand over real QUIC with mutual TLS: a
//! wire-1 edge (the previous release) is still served, with snapshots only; an edge
//! older than the window, or claiming an id its certificate does not carry, is
//! refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use meridian_proto::wire::{ALPN_QUIC, read_frame};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use serde_json::Value;

/// Everything a wire-1 edge can decode: any other message type fails here.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum V1Message {
    Welcome { wire: u16 },
    Refused { reason: String },
    Snapshot { version: u64, fleet: Value },
}

struct RawEdge {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    _conn: quinn::Connection,
}

impl RawEdge {
    /// Connects with a client certificate for `cert_name` and sends `hello` as is.
    async fn connect(api: &support::Api, cert_name: &str, hello: &str) -> RawEdge {
        let leaf = api.ca.issue(&[cert_name]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(api.ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        tls.alpn_protocols = vec![ALPN_QUIC.to_vec()];
        let config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        ));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = api.handle.push.as_ref().unwrap().quic_addr.unwrap();
        let conn = endpoint.connect_with(config, addr, "localhost").unwrap().await.unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send_raw(&mut send, hello).await;
        RawEdge {
            send,
            recv,
            _conn: conn,
        }
    }

    async fn next(&mut self) -> V1Message {
        let frame = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut self.recv))
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("a frame, not the end of the stream");
        serde_json::from_slice(&frame)
            .unwrap_or_else(|e| panic!("not a wire-1 message ({e}): {}", String::from_utf8_lossy(&frame)))
    }
}

async fn send_raw(send: &mut quinn::SendStream, json: &str) {
    let mut frame = (json.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(json.as_bytes());
    send.write_all(&frame).await.unwrap();
}

#[tokio::test]
async fn a_wire_one_edge_is_served_snapshots_and_its_acks_are_recorded() {
    let api = support::api().await;
    let (_, v) = api
        .call(Method::PUT, "/v1/fleet", Some(support::TOKEN), Some(support::fleet()))
        .await;
    let v1 = v["version"].as_u64().unwrap();
    let mut old = RawEdge::connect(
        &api,
        "old.edge.test",
        r#"{"type":"hello","wire":1,"edge_id":"old.edge.test"}"#,
    )
    .await;
    assert!(matches!(old.next().await, V1Message::Welcome { wire: 1 }));
    let V1Message::Snapshot { version, fleet } = old.next().await else {
        panic!("expected a snapshot")
    };
    assert_eq!(version, v1);
    assert_eq!(fleet["providers"].as_array().unwrap().len(), 3);
    send_raw(&mut old.send, &format!(r#"{{"type":"ack","version":{v1}}}"#)).await;

    // A one-field change: a current edge would get a delta, the old one a snapshot.
    let (status, v) = api
        .call(Method::POST, "/v1/providers/de-1/drain", Some(support::TOKEN), None)
        .await;
    assert_eq!(status, 200);
    let v2 = v["version"].as_u64().unwrap();
    let V1Message::Snapshot { version, fleet } = old.next().await else {
        panic!("expected a snapshot")
    };
    assert_eq!(version, v2);
    assert_eq!(fleet["providers"][1]["state"], "draining");
    send_raw(&mut old.send, &format!(r#"{{"type":"ack","version":{v2}}}"#)).await;

    let edge = loop {
        let (_, e) = api
            .call(Method::GET, "/v1/edges/old.edge.test", Some(support::TOKEN), None)
            .await;
        if e["acked"] == v2 {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (edge["wire"].as_u64(), edge["transport"].as_str()),
        (Some(1), Some("quic"))
    );
    assert_eq!(edge["connected"], true);
}

#[tokio::test]
async fn a_current_edge_gets_a_delta_for_a_small_change() {
    let api = support::api().await;
    api.call(Method::PUT, "/v1/fleet", Some(support::TOKEN), Some(support::fleet()))
        .await;
    let mut edge = RawEdge::connect(
        &api,
        "new.edge.test",
        r#"{"type":"hello","wire":2,"edge_id":"new.edge.test"}"#,
    )
    .await;
    let mut frames = Vec::new();
    for _ in 0..3 {
        let f = read_frame(&mut edge.recv).await.unwrap().unwrap();
        frames.push(serde_json::from_slice::<Value>(&f).unwrap());
    }
    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(frames[1]["type"], "fleet_health");
    assert_eq!(frames[2]["type"], "snapshot");
    let v1 = frames[2]["version"].as_u64().unwrap();
    send_raw(&mut edge.send, &format!(r#"{{"type":"ack","version":{v1}}}"#)).await;
    api.call(Method::POST, "/v1/providers/de-1/drain", Some(support::TOKEN), None)
        .await;
    let f = read_frame(&mut edge.recv).await.unwrap().unwrap();
    let delta: Value = serde_json::from_slice(&f).unwrap();
    assert_eq!(delta["type"], "delta");
    assert_eq!(delta["base"], v1);
    assert_eq!(delta["delta"]["upsert_providers"][0]["id"], "de-1");
    assert!(delta["delta"].get("policy").is_none());
}

#[tokio::test]
async fn edges_outside_the_window_or_with_a_borrowed_id_are_refused() {
    let api = support::api().await;
    let mut ancient = RawEdge::connect(
        &api,
        "a.edge.test",
        r#"{"type":"hello","wire":0,"edge_id":"a.edge.test"}"#,
    )
    .await;
    let V1Message::Refused { reason } = ancient.next().await else {
        panic!("expected a refusal")
    };
    assert!(reason.contains("wire version 0"), "{reason}");

    let mut impostor = RawEdge::connect(
        &api,
        "b.edge.test",
        r#"{"type":"hello","wire":2,"edge_id":"someone-else.test"}"#,
    )
    .await;
    let V1Message::Refused { reason } = impostor.next().await else {
        panic!("expected a refusal")
    };
    assert!(reason.contains("someone-else.test"), "{reason}");
    let (status, _) = api
        .call(Method::GET, "/v1/edges/someone-else.test", Some(support::TOKEN), None)
        .await;
    assert_eq!(status, 404, "a refused edge is never registered");
}
