//! Origin resolution: which jurisdiction's law governs a request's data.
//!
//! Sources are consulted in the configured order (tenant binding, residency header,
//! GeoIP, CIDR table, default) and the first that knows wins; which one decided is
//! recorded.
//! Client claims are untrusted input: the residency header and `X-Forwarded-For`
//! count only when the peer is a trusted hop. This module never looks at bodies and
//! never fails: an origin nobody knows is `None`, for the policy to judge.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use http::header::HeaderName;
use ipnet::IpNet;
use meridian_proto::{Binding, Fleet, Jurisdiction};

use crate::config::{Forwarding, OriginConfig, OriginSource, canonical_ip};
use crate::headers::X_FORWARDED_FOR;

/// A resolved origin and the source that decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The jurisdiction, or `None` when no source knew.
    pub jurisdiction: Option<Jurisdiction>,
    /// Which source decided; `None` with an unknown origin.
    pub source: Option<OriginSource>,
}

impl Origin {
    /// `CN`, or `unknown`.
    pub fn label(&self) -> &str {
        self.jurisdiction.as_ref().map_or("unknown", |j| j.as_str())
    }

    /// `tenant`, `header`, ..., or `none`.
    pub fn source_label(&self) -> &'static str {
        self.source.map_or("none", OriginSource::as_str)
    }
}

/// What the resolver needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Request host, lower case, without port.
    pub host: Option<&'a str>,
    /// Request path.
    pub path: &'a str,
    /// Request headers as received. Read only for trusted peers, whose requests
    /// always have their fields in the map (an untrusted peer's HTTP/1.1 fields may
    /// pass without one, the map then empty).
    pub headers: &'a HeaderMap,
    /// The TCP peer.
    pub peer: IpAddr,
    /// Whether the peer is a trusted hop (the proxy has already decided it for the
    /// forwarding headers; deciding it once keeps the two in agreement).
    pub trusted: bool,
}

/// The origin chain of one config snapshot.
#[derive(Debug)]
pub struct OriginResolver {
    order: Vec<OriginSource>,
    header: HeaderName,
    tenants: Vec<(Binding, Jurisdiction)>,
    /// Most specific first.
    cidrs: Vec<(IpNet, Jurisdiction)>,
    default: Option<Jurisdiction>,
    geoip: Option<Arc<maxminddb::Reader<Vec<u8>>>>,
    forwarding: Forwarding,
}

/// The GeoIP database could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("GeoIP database {path}: {source}")]
pub struct GeoipError {
    /// The file.
    pub path: String,
    /// Why.
    pub source: maxminddb::MaxMindDbError,
}

/// Opens a MaxMind database (read into memory once; lookups take no lock).
pub fn open_geoip(path: &std::path::Path) -> Result<Arc<maxminddb::Reader<Vec<u8>>>, GeoipError> {
    maxminddb::Reader::open_readfile(path)
        .map(Arc::new)
        .map_err(|source| GeoipError {
            path: path.display().to_string(),
            source,
        })
}

impl OriginResolver {
    /// The opened GeoIP database, for a snapshot that keeps it.
    pub fn geoip(&self) -> Option<Arc<maxminddb::Reader<Vec<u8>>>> {
        self.geoip.clone()
    }

    /// Builds the chain from checked config; `geoip` is the opened `origin.geoip_db`.
    pub fn new(
        cfg: &OriginConfig,
        fleet: &Fleet,
        forwarding: &Forwarding,
        geoip: Option<Arc<maxminddb::Reader<Vec<u8>>>>,
    ) -> Self {
        let mut cidrs: Vec<(IpNet, Jurisdiction)> = cfg.cidrs.iter().map(|c| (c.cidr.0, c.jurisdiction)).collect();
        cidrs.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        OriginResolver {
            order: cfg.order.clone(),
            header: HeaderName::from_bytes(cfg.header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-meridian-residency")),
            tenants: fleet
                .tenants
                .iter()
                .flat_map(|t| t.bindings.iter().map(|b| (b.clone(), t.home)))
                .collect(),
            cidrs,
            default: cfg.default,
            geoip,
            forwarding: forwarding.clone(),
        }
    }

    /// The residency header, which is stripped from every forwarded request.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Runs the chain for one request.
    pub fn resolve(&self, req: RequestFacts<'_>) -> Origin {
        let trusted = req.trusted;
        for source in &self.order {
            let found = match source {
                OriginSource::Tenant => self
                    .tenants
                    .iter()
                    .find(|(b, _)| b.matches(req.host, req.path))
                    .map(|(_, home)| *home),
                OriginSource::Header if trusted => req
                    .headers
                    .get(&self.header)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<Jurisdiction>().ok()),
                OriginSource::Header => None,
                OriginSource::Geoip => self.geoip.as_ref().and_then(|db| {
                    let client = self.client_address(req.headers, req.peer, trusted);
                    let found = db.lookup(client).ok()?;
                    let iso: Option<&str> = found.decode_path(&maxminddb::path!["country", "iso_code"]).ok()?;
                    iso?.parse().ok()
                }),
                OriginSource::Cidr => {
                    let client = self.client_address(req.headers, req.peer, trusted);
                    self.cidrs
                        .iter()
                        .find(|(net, _)| net.contains(&client))
                        .map(|(_, j)| *j)
                }
                OriginSource::Default => self.default,
            };
            if let Some(j) = found {
                return Origin {
                    jurisdiction: Some(j),
                    source: Some(*source),
                };
            }
        }
        Origin {
            jurisdiction: None,
            source: None,
        }
    }

    /// The client's address: the peer, or from a trusted peer the nearest address in
    /// `X-Forwarded-For` that is not itself a trusted hop.
    pub fn client_address(&self, headers: &HeaderMap, peer: IpAddr, trusted: bool) -> IpAddr {
        let peer = canonical_ip(peer);
        if !trusted {
            return peer;
        }
        let mut hops: Vec<IpAddr> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .map(canonical_ip)
            .collect();
        let leftmost = hops.first().copied();
        while let Some(ip) = hops.pop() {
            if !self.forwarding.is_trusted(ip) {
                return ip;
            }
        }
        leftmost.unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cidr as CidrBlock, CidrEntry};
    use http::HeaderValue;
    use std::path::Path;

    fn j(s: &str) -> Jurisdiction {
        s.parse().unwrap()
    }

    fn resolver(order: &[OriginSource], default: Option<&str>) -> OriginResolver {
        let fleet: Fleet = toml::from_str(
            r#"
            [[tenants]]
            id = "acme"
            home = "CN"
            bindings = [{ host = "cn.demo.local" }, { path_prefix = "/cn/" }]
            [policy]
            rules = [{ name = "any", origin = "*", allow = ["*"] }]
            "#,
        )
        .unwrap();
        let cfg = OriginConfig {
            order: order.to_vec(),
            header: "x-meridian-residency".into(),
            geoip_db: None,
            cidrs: vec![
                CidrEntry {
                    cidr: CidrBlock("10.0.0.0/8".parse().unwrap()),
                    jurisdiction: j("DE"),
                },
                CidrEntry {
                    cidr: CidrBlock("10.1.0.0/16".parse().unwrap()),
                    jurisdiction: j("FR"),
                },
            ],
            default: default.map(j),
        };
        let fwd = Forwarding {
            trusted_hops: vec!["127.0.0.0/8".parse().unwrap()],
            via: "m".into(),
        };
        let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/geoip-test.mmdb");
        OriginResolver::new(&cfg, &fleet, &fwd, Some(open_geoip(&db).unwrap()))
    }

    fn facts<'a>(host: Option<&'a str>, path: &'a str, h: &'a HeaderMap, peer: &str) -> RequestFacts<'a> {
        let peer: IpAddr = peer.parse().unwrap();
        // The resolver's trusted hops in these tests are 127.0.0.0/8.
        RequestFacts {
            host,
            path,
            headers: h,
            peer,
            trusted: peer.is_loopback(),
        }
    }

    use OriginSource::*;

    #[test]
    fn first_source_that_knows_wins_and_is_recorded() {
        let r = resolver(&[Tenant, Header, Cidr, Default], Some("US"));
        let mut h = HeaderMap::new();
        h.insert("x-meridian-residency", HeaderValue::from_static("JP"));
        let o = r.resolve(facts(Some("cn.demo.local"), "/x", &h, "127.0.0.1"));
        assert_eq!((o.label(), o.source_label()), ("CN", "tenant"));
        let o = r.resolve(facts(Some("other"), "/cn/obj", &h, "127.0.0.1"));
        assert_eq!((o.label(), o.source_label()), ("CN", "tenant"));
        let o = r.resolve(facts(Some("other"), "/x", &h, "127.0.0.1"));
        assert_eq!((o.label(), o.source_label()), ("JP", "header"));
        let o = r.resolve(facts(Some("other"), "/x", &HeaderMap::new(), "10.1.2.3"));
        assert_eq!((o.label(), o.source_label()), ("FR", "cidr"), "most specific CIDR wins");
        let o = r.resolve(facts(Some("other"), "/x", &HeaderMap::new(), "192.0.2.1"));
        assert_eq!((o.label(), o.source_label()), ("US", "default"));
    }

    #[test]
    fn untrusted_peers_cannot_claim_a_residency_or_a_client_address() {
        let r = resolver(&[Header, Cidr], None);
        let mut h = HeaderMap::new();
        h.insert("x-meridian-residency", HeaderValue::from_static("CN"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.1.0.9"));
        let o = r.resolve(facts(None, "/", &h, "192.0.2.1"));
        assert_eq!((o.label(), o.source_label()), ("unknown", "none"));
        // From a trusted hop both count.
        let o = r.resolve(facts(None, "/", &h, "127.0.0.1"));
        assert_eq!((o.label(), o.source_label()), ("CN", "header"));
        let r = resolver(&[Cidr], None);
        let o = r.resolve(facts(None, "/", &h, "127.0.0.1"));
        assert_eq!((o.label(), o.source_label()), ("FR", "cidr"));
    }

    #[test]
    fn geoip_finds_the_country_of_the_client_address() {
        let r = resolver(&[Geoip, Default], Some("US"));
        let none = HeaderMap::new();
        for (peer, want) in [("203.0.113.7", "CN"), ("198.51.100.1", "BR"), ("2001:db8::1", "FR")] {
            let o = r.resolve(facts(None, "/", &none, peer));
            assert_eq!((o.label(), o.source_label()), (want, "geoip"), "{peer}");
        }
        let o = r.resolve(facts(None, "/", &none, "192.0.2.200"));
        assert_eq!((o.label(), o.source_label()), ("JP", "geoip"));
        // Not in the database: the next source decides.
        let o = r.resolve(facts(None, "/", &none, "8.8.8.8"));
        assert_eq!((o.label(), o.source_label()), ("US", "default"));
        // Behind a trusted hop, the forwarded client address is looked up.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        let o = r.resolve(facts(None, "/", &h, "127.0.0.1"));
        assert_eq!(o.label(), "CN");
        let o = r.resolve(facts(None, "/", &h, "192.0.2.1"));
        assert_eq!(o.label(), "JP", "an untrusted peer's X-Forwarded-For is ignored");
    }

    #[test]
    fn client_address_skips_trusted_hops_from_the_right() {
        let r = resolver(&[Cidr], None);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 10.9.9.9, 127.0.0.5"),
        );
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(r.client_address(&h, peer, true), "10.9.9.9".parse::<IpAddr>().unwrap());
        assert_eq!(r.client_address(&h, peer, false), peer);
    }
}
