//! Storage providers: where an edge may send a request, and how to talk to it.
//!
//! A provider here is pure description (address, protocol, TLS identity, limits). It
//! never opens a connection; the edge's upstream pool turns it into one.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Jurisdiction;

/// A provider's stable identifier, unique in a fleet (for example `cn-sh-1`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProviderId(pub String);

impl ProviderId {
    /// The identifier as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The HTTP version an edge speaks to a provider. Fixed per provider rather than
/// negotiated, because a pool must know before connecting whether it multiplexes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive: one request in flight per connection.
    #[default]
    Http1,
    /// HTTP/2 (ALPN `h2` over TLS, prior knowledge over cleartext).
    Http2,
}

/// Whether the connection to a provider is encrypted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Cleartext TCP.
    #[default]
    Http,
    /// TLS (rustls), verified against system roots or a configured CA.
    Https,
}

/// Administrative state of a provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderState {
    /// Takes new requests.
    #[default]
    Active,
    /// Finishes what it has, takes nothing new.
    Draining,
    /// Takes nothing.
    Disabled,
}

/// Where and how to reach a provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `host:port` to connect to. A host name is resolved at connect time.
    pub address: String,
    /// Cleartext or TLS.
    #[serde(default)]
    pub scheme: Scheme,
    /// TLS server name to send and verify; defaults to the host part of `address`.
    #[serde(default)]
    pub sni: Option<String>,
    /// `Host` (or `:authority`) to present; by default the client's own is passed on.
    #[serde(default)]
    pub host: Option<String>,
}

impl Endpoint {
    /// The host part of `address`, without port or IPv6 brackets.
    pub fn host_part(&self) -> &str {
        let addr = self.address.as_str();
        let host = match addr.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => addr,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The TLS server name: the configured SNI, else the host part of the address.
    pub fn server_name(&self) -> &str {
        self.sni.as_deref().unwrap_or_else(|| self.host_part())
    }
}

/// A point on Earth, in degrees.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coordinates {
    /// Latitude, -90 to 90.
    pub lat: f64,
    /// Longitude, -180 to 180.
    pub lon: f64,
}

/// A storage provider as the fleet model describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Unique identifier.
    pub id: ProviderId,
    /// Where its data centre is, legally: the jurisdiction whose law governs data
    /// stored there.
    pub jurisdiction: Jurisdiction,
    /// The company running it.
    #[serde(default)]
    pub operator: Option<String>,
    /// The data centre or region name.
    #[serde(default)]
    pub site: Option<String>,
    /// Where it is physically.
    #[serde(default)]
    pub coordinates: Option<Coordinates>,
    /// Properties that policies can require, e.g. `keys-offshore`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Relative share among otherwise equal providers.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// How to reach it.
    pub endpoint: Endpoint,
    /// HTTP version spoken to it.
    #[serde(default)]
    pub protocol: Protocol,
    /// Most connections an edge keeps open to it at once; further requests wait for
    /// one. An edge splits it evenly across its worker threads (at least one each).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Administrative state.
    #[serde(default)]
    pub state: ProviderState,
}

fn default_max_connections() -> u32 {
    256
}

fn default_weight() -> u32 {
    100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str) -> Endpoint {
        Endpoint {
            address: address.into(),
            scheme: Scheme::Http,
            sni: None,
            host: None,
        }
    }

    #[test]
    fn host_part_strips_port_and_brackets() {
        assert_eq!(endpoint("store.example:443").host_part(), "store.example");
        assert_eq!(endpoint("[::1]:8080").host_part(), "::1");
        assert_eq!(endpoint("127.0.0.1:1").host_part(), "127.0.0.1");
        assert_eq!(endpoint("store.example").host_part(), "store.example");
    }

    #[test]
    fn sni_overrides_address_host() {
        let mut e = endpoint("10.0.0.1:443");
        assert_eq!(e.server_name(), "10.0.0.1");
        e.sni = Some("objects.example".into());
        assert_eq!(e.server_name(), "objects.example");
    }

    #[test]
    fn spec_defaults_and_rejects_unknown_fields() {
        let spec: ProviderSpec =
            toml::from_str("id = \"a\"\njurisdiction = \"DE\"\n[endpoint]\naddress = \"127.0.0.1:9000\"\n").unwrap();
        assert_eq!(spec.protocol, Protocol::Http1);
        assert_eq!(spec.max_connections, 256);
        assert_eq!(spec.state, ProviderState::Active);
        assert_eq!(spec.weight, 100);
        assert_eq!(spec.jurisdiction.as_str(), "DE");
        let err = toml::from_str::<ProviderSpec>(
            "id = \"a\"\njurisdiction = \"DE\"\nbogus = 1\n[endpoint]\naddress = \"x:1\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
