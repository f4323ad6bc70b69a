//! Shared fixtures for the control plane's tests: an admin API on real TLS.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use meridian_cp::config::{CpConfig, hash_token};
use meridian_cp::server::{ControlPlane, start};
use meridian_sim::TestCa;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

pub const TOKEN: &str = "dev-token";

pub struct Api {
    pub handle: ControlPlane,
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
}

pub async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cp test CA").unwrap();
    let leaf = ca.issue(&["localhost"]).unwrap();
    std::fs::write(dir.path().join("admin.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("admin.key"), &leaf.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem).unwrap();
    let toml = format!(
        "data_dir = \"data\"\n[admin]\nlisten = \"127.0.0.1:0\"\ncert = \"admin.crt\"\nkey = \"admin.key\"\n\
         [[admin.tokens]]\nname = \"dev\"\nsha256 = \"{}\"\n\
         [push]\nlisten = \"127.0.0.1:0\"\ncert = \"admin.crt\"\nkey = \"admin.key\"\nclient_ca = \"ca.crt\"\n",
        hash_token(TOKEN)
    );
    let cfg = CpConfig::parse(&toml, "cp.toml", dir.path()).unwrap();
    let handle = start(&cfg).await.unwrap();
    Api { handle, ca, dir }
}

impl Api {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca.cert_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(self.handle.api.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path).header("host", "localhost");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map_or(Bytes::new(), |b| Bytes::from(b.to_string()));
        let resp = send.send_request(req.body(Full::new(body)).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// A fleet in CN, DE and US: CN data stays in CN, EU data in the EU, the rest
/// anywhere but CN.
pub fn fleet() -> Value {
    json!({
        "groups": [{ "name": "EU", "members": ["DE", "FR"] }],
        "providers": [
            { "id": "cn-1", "jurisdiction": "CN", "endpoint": { "address": "10.0.0.1:443" } },
            { "id": "de-1", "jurisdiction": "DE", "endpoint": { "address": "10.0.0.2:443" } },
            { "id": "us-1", "jurisdiction": "US", "endpoint": { "address": "10.0.0.3:443" } }
        ],
        "policy": { "rules": [
            { "name": "cn-in-cn", "origin": "CN", "allow": ["CN"] },
            { "name": "eu-in-eu", "origin": "group:EU", "allow": ["group:EU"] },
            { "name": "rest", "origin": "*", "allow": ["*"], "deny": ["CN"] }
        ] }
    })
}
