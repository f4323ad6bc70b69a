//! The control plane's TOML configuration: where to keep data, where the admin API
//! listens, its certificate, and the bearer tokens allowed to use it (stored only as
//! SHA-256 hashes). Errors name the key at fault; nothing here opens sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration that could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum CpConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not fit the schema or its values are wrong.
    #[error("{file}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// One API token, by the SHA-256 of its secret (`meridian-cp hash-token` prints it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it, for logs.
    pub name: String,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
}

/// The admin API listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// HTTPS address.
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Tokens allowed to call the API; without any, every call is refused.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// Where edges subscribe to the fleet: QUIC on UDP and its HTTP/2 fallback on TCP,
/// both on `listen`, both with mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// UDP (QUIC) and TCP (HTTP/2) address.
    pub listen: SocketAddr,
    /// PEM certificate chain presented to edges.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle that signs edge client certificates; an edge's id must be a DNS
    /// name in its certificate.
    pub client_ca: PathBuf,
    /// Serve QUIC.
    #[serde(default = "yes")]
    pub quic: bool,
    /// Serve the HTTP/2 fallback.
    #[serde(default = "yes")]
    pub h2: bool,
}

fn yes() -> bool {
    true
}

/// When a provider counts as down for the whole fleet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetHealthConfig {
    /// At least this many connected edges must report it down...
    pub min_edges: u32,
    /// ...and at least this fraction of the connected edges that report on it.
    pub fraction: f64,
}

impl Default for FleetHealthConfig {
    fn default() -> Self {
        FleetHealthConfig {
            min_edges: 2,
            fraction: 0.5,
        }
    }
}

/// A checked control-plane configuration, paths resolved against its directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpConfig {
    /// Where the durable store lives.
    pub data_dir: PathBuf,
    /// The admin API.
    pub admin: AdminConfig,
    /// Push to edges; without it the control plane only stores.
    #[serde(default)]
    pub push: Option<PushConfig>,
    /// Fleet health aggregation.
    #[serde(default)]
    pub fleet_health: FleetHealthConfig,
    /// Metrics and health for scrapers; off without it.
    #[serde(default)]
    pub telemetry: Option<TelemetryConfig>,
}

/// The telemetry listener: `/metrics`, `/healthz`, `/readyz` on plain HTTP. It has
/// no authentication: keep it on loopback or a private network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address, e.g. `127.0.0.1:7071`.
    pub listen: SocketAddr,
}

impl CpConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<CpConfig, CpConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| CpConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(
            &src,
            &path.display().to_string(),
            path.parent().unwrap_or_else(|| Path::new(".")),
        )
    }

    /// Checks a config held in memory; relative paths resolve against `base`.
    pub fn parse(src: &str, file: &str, base: &Path) -> Result<CpConfig, CpConfigError> {
        let invalid = |message: String| CpConfigError::Invalid {
            file: file.to_owned(),
            message,
        };
        let mut cfg: CpConfig = toml::from_str(src).map_err(|e| invalid(e.to_string()))?;
        for (i, t) in cfg.admin.tokens.iter().enumerate() {
            if t.sha256.len() != 64
                || !t
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(invalid(format!(
                    "admin.tokens[{i}].sha256: must be 64 lower-case hex digits"
                )));
            }
        }
        cfg.data_dir = base.join(&cfg.data_dir);
        cfg.admin.cert = base.join(&cfg.admin.cert);
        cfg.admin.key = base.join(&cfg.admin.key);
        if let Some(push) = &mut cfg.push {
            push.cert = base.join(&push.cert);
            push.key = base.join(&push.key);
            push.client_ca = base.join(&push.client_ca);
            if !push.quic && !push.h2 {
                return Err(invalid("push: at least one of `quic` and `h2` must be true".into()));
            }
        }
        let h = &cfg.fleet_health;
        if h.min_edges == 0 {
            return Err(invalid("fleet_health.min_edges: must be at least 1".into()));
        }
        if !(h.fraction > 0.0 && h.fraction <= 1.0) {
            return Err(invalid("fleet_health.fraction: must be in (0, 1]".into()));
        }
        Ok(cfg)
    }
}

/// Lower-case hex SHA-256 of a token, as the config stores it.
pub fn hash_token(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_its_token_hash_is_dev_token() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cp.example.toml");
        let cfg = CpConfig::load(&path).unwrap();
        assert_eq!(cfg.admin.tokens[0].sha256, hash_token("dev-token"));
        assert!(cfg.data_dir.ends_with("data"));
    }

    #[test]
    fn malformed_token_hashes_are_refused_by_key() {
        let src = "data_dir = \"d\"\n[admin]\nlisten = \"127.0.0.1:0\"\ncert = \"c\"\nkey = \"k\"\n\
                   [[admin.tokens]]\nname = \"x\"\nsha256 = \"not-hex\"\n";
        let err = CpConfig::parse(src, "cp.toml", Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("admin.tokens[0].sha256"), "{err}");
    }
}
