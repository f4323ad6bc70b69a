//! The operator CLI's side of the admin API: one HTTPS request per command, the
//! server verified against the system roots or a given CA, the token sent as a
//! bearer. Prints the JSON answer; fails on any non-2xx with the server's message.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;

/// A CLI call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL is not `https://host:port`.
    #[error("server `{0}` must look like https://host:port")]
    BadServer(String),
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Transport(String),
    /// The server refused the call.
    #[error("{status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's JSON answer.
        body: Value,
    },
}

/// Where and as whom to call the API.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https://host:port`.
    pub server: String,
    /// Bearer token.
    pub token: String,
    /// CA bundle to verify the server; the system roots when absent.
    pub ca: Option<std::path::PathBuf>,
}

fn transport(e: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(e.to_string())
}

/// Sends one request and returns the JSON answer of a 2xx.
pub async fn call(target: &Target, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
    let authority = target
        .server
        .strip_prefix("https://")
        .map(|a| a.trim_end_matches('/'))
        .filter(|a| a.contains(':'))
        .ok_or_else(|| ClientError::BadServer(target.server.clone()))?;
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_matches(['[', ']']);
    let mut roots = rustls::RootCertStore::empty();
    match &target.ca {
        Some(ca) => {
            for c in CertificateDer::pem_file_iter(ca).map_err(transport)? {
                roots.add(c.map_err(transport)?).map_err(transport)?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(transport)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(authority).await.map_err(transport)?;
    let name = ServerName::try_from(host.to_owned()).map_err(transport)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(transport)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(transport)?;
    tokio::spawn(conn);
    let body = body.map_or(Bytes::new(), |b| Bytes::from(b.to_string()));
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("authorization", format!("Bearer {}", target.token))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(transport)?;
    let resp = send.send_request(req).await.map_err(transport)?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(transport)?.to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(ClientError::Refused {
            status: status.as_u16(),
            body: value,
        });
    }
    Ok(value)
}

/// Reads a fleet file (TOML, or JSON when it ends in `.json`) and checks it locally
/// with the shared validation before anything is sent.
pub fn read_fleet(path: &Path) -> Result<meridian_proto::Fleet, String> {
    let src = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let fleet: meridian_proto::Fleet = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&src).map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        toml::from_str(&src).map_err(|e| format!("{}: {e}", path.display()))?
    };
    fleet.validate().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(fleet)
}
