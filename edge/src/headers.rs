//! Header hygiene between hops: hop-by-hop fields removed in both directions, the
//! forwarding trail (`Forwarded`, `X-Forwarded-*`) kept only from trusted hops, and
//! `Via` added.
//!
//! A client's claims about its own path are untrusted input: from an untrusted peer
//! they are replaced, never extended. This module must never read or alter anything
//! that is end-to-end (bodies, `Trailer`, content headers).

use std::net::IpAddr;

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::codec::{DecodeError, RawFields, push_field, recycle};

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop fields of RFC 9110 section 7.6.1, plus the legacy `Proxy-Connection`
/// and `Keep-Alive`. `Trailer` is end-to-end and stays.
fn fixed_hop_by_hop() -> [&'static HeaderName; 8] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
    ]
}

/// Whether `name` is one of the fixed hop-by-hop fields (not counting those a
/// `Connection` field names).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    fixed_hop_by_hop().contains(&name)
}

/// Whether `name`, as received and in any case, is one of the fixed hop-by-hop fields.
pub fn is_hop_by_hop_name(name: &[u8]) -> bool {
    // By length first: most names are ruled out without comparing a byte.
    let candidates: &[&[u8]] = match name.len() {
        2 => &[b"te"],
        7 => &[b"upgrade"],
        10 => &[b"connection", b"keep-alive"],
        16 => &[b"proxy-connection"],
        17 => &[b"transfer-encoding"],
        18 => &[b"proxy-authenticate"],
        19 => &[b"proxy-authorization"],
        _ => return false,
    };
    candidates.iter().any(|c| c.eq_ignore_ascii_case(name))
}

/// Whether `name` (any case) is `Via` or a forwarding field: ones this edge merges
/// with or replaces.
pub fn is_trail(name: &[u8]) -> bool {
    [&header::VIA, &X_FORWARDED_FOR, &X_FORWARDED_PROTO, &header::FORWARDED]
        .into_iter()
        .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// Removes hop-by-hop fields, including every field that `Connection` names.
/// Returns whether the sender accepts trailers (`TE: trailers`), which the next hop
/// must be told again since `TE` itself is hop-by-hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // One pass over the fields finds whether there is anything to do: most
    // messages carry no hop-by-hop field, and a scan is cheaper than eight lookups.
    if !headers.keys().any(is_hop_by_hop) {
        return false;
    }
    let mut trailers = false;
    for te in headers.get_all(header::TE) {
        if let Ok(v) = te.to_str() {
            trailers |= v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"));
        }
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in fixed_hop_by_hop() {
        headers.remove(name);
    }
    trailers
}

/// The forwarding elements this edge adds for one client, formatted once per
/// connection rather than per request.
#[derive(Clone, Debug)]
pub struct Trail {
    /// The client's address (IPv4-mapped IPv6 shown as IPv4).
    pub peer: IpAddr,
    proto: &'static str,
    /// `X-Forwarded-For` element: the address.
    for_value: HeaderValue,
    /// `Forwarded` element (RFC 7239: IPv6 bracketed and quoted).
    forwarded: HeaderValue,
}

impl Trail {
    /// The trail for a client at `peer` that came over `proto` (`http` or `https`).
    pub fn new(peer: IpAddr, proto: &'static str) -> Self {
        let forwarded = match peer {
            IpAddr::V4(ip) => format!("for={ip};proto={proto}"),
            IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={proto}"),
        };
        let value = |s: String| HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Trail {
            peer,
            proto,
            for_value: value(peer.to_string()),
            forwarded: value(forwarded),
        }
    }
}

/// How the client reached the edge, for the forwarding trail.
#[derive(Clone, Copy, Debug)]
pub struct Hop<'a> {
    /// The client's trail elements.
    pub trail: &'a Trail,
    /// Whether the peer is a configured trusted hop.
    pub trusted: bool,
}

/// Writes `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` for the next hop:
/// appended to a trusted peer's trail, replacing an untrusted peer's.
pub fn set_forwarding(headers: &mut HeaderMap, hop: Hop<'_>) {
    let trail = hop.trail;
    append_or_replace(headers, &X_FORWARDED_FOR, &trail.for_value, hop.trusted);
    if !(hop.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(trail.proto));
    }
    append_or_replace(headers, &header::FORWARDED, &trail.forwarded, hop.trusted);
}

fn append_or_replace(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue, append: bool) {
    if !append || !headers.contains_key(name) {
        headers.insert(name.clone(), value.clone());
        return;
    }
    let mut combined = Vec::with_capacity(64 + value.len());
    for v in headers.get_all(name) {
        let s = v.as_bytes().trim_ascii();
        if !s.is_empty() {
            combined.extend_from_slice(s);
            combined.extend_from_slice(b", ");
        }
    }
    combined.extend_from_slice(value.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&combined) {
        headers.insert(name.clone(), v);
    }
}

/// A request's fields passed through as received: the client's, from an untrusted
/// peer and holding nothing this edge drops, merges or reads, followed when written
/// by what this edge adds (the forwarding trail, `Via`). The request's header map
/// holds what routing sets (`Host`, which replaces the client's).
///
/// It spares a request on the common path a header map built only to be written
/// out again; anything else goes through the map.
#[derive(Debug)]
pub struct Passed<'a> {
    /// The client's fields.
    pub fields: RawFields,
    /// The client's trail elements.
    pub trail: &'a Trail,
    /// This edge's `Via` element.
    pub via: &'a HeaderValue,
}

impl Passed<'_> {
    /// Writes the fields that follow the map's: the client's but `Host`, the trail,
    /// `Via`.
    pub fn write(&self, out: &mut Vec<u8>) {
        for (name, value) in self.fields.iter() {
            if !name.eq_ignore_ascii_case(b"host") {
                push_field(out, name, value);
            }
        }
        push_field(
            out,
            X_FORWARDED_FOR.as_str().as_bytes(),
            self.trail.for_value.as_bytes(),
        );
        push_field(out, X_FORWARDED_PROTO.as_str().as_bytes(), self.trail.proto.as_bytes());
        push_field(
            out,
            header::FORWARDED.as_str().as_bytes(),
            self.trail.forwarded.as_bytes(),
        );
        push_field(out, header::VIA.as_str().as_bytes(), self.via.as_bytes());
    }

    /// The same fields added to `headers` instead, for a protocol that needs a map.
    pub fn merge_into(&self, headers: &mut HeaderMap) -> Result<(), DecodeError> {
        let client = self.fields.to_map(0)?;
        for (name, value) in &client {
            if name != header::HOST {
                headers.append(name.clone(), value.clone());
            }
        }
        recycle(client);
        set_forwarding(
            headers,
            Hop {
                trail: self.trail,
                trusted: false,
            },
        );
        headers.append(header::VIA, self.via.clone());
        Ok(())
    }
}

/// The `Via` element this edge adds for each protocol version, built once per
/// config snapshot so the common case (no incoming `Via`) costs no allocation.
#[derive(Debug, Clone)]
pub struct ViaValues {
    v10: HeaderValue,
    v11: HeaderValue,
    v2: HeaderValue,
    v3: HeaderValue,
}

impl ViaValues {
    /// Elements for `pseudonym` (already checked to be a token).
    pub fn new(pseudonym: &str) -> Self {
        let make = |p: &str| {
            HeaderValue::from_str(&format!("{p} {pseudonym}"))
                .unwrap_or_else(|_| HeaderValue::from_static("1.1 meridian"))
        };
        ViaValues {
            v10: make("1.0"),
            v11: make("1.1"),
            v2: make("2"),
            v3: make("3"),
        }
    }

    /// The element for a message received as `version`.
    pub fn for_version(&self, version: Version) -> &HeaderValue {
        match version {
            Version::HTTP_10 | Version::HTTP_09 => &self.v10,
            Version::HTTP_2 => &self.v2,
            Version::HTTP_3 => &self.v3,
            _ => &self.v11,
        }
    }
}

/// Appends this edge to `Via` (RFC 9110 section 7.6.3) for a message received as
/// `version`.
pub fn add_via(headers: &mut HeaderMap, version: Version, via: &ViaValues) {
    let element = via.for_version(version);
    if !headers.contains_key(header::VIA) {
        headers.insert(header::VIA, element.clone());
        return;
    }
    let mut value = Vec::with_capacity(64);
    for v in headers.get_all(header::VIA) {
        value.extend_from_slice(v.as_bytes());
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(element.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        headers.insert(header::VIA, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_go() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("te", "trailers, deflate"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("trailer", "x-checksum"),
            ("x-end-to-end", "kept"),
        ]);
        assert!(strip_hop_by_hop(&mut h));
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["trailer", "x-end-to-end"]);
    }

    #[test]
    fn names_as_received_are_judged_like_header_names() {
        for name in fixed_hop_by_hop() {
            assert!(is_hop_by_hop_name(name.as_str().as_bytes()), "{name}");
            assert!(
                is_hop_by_hop_name(name.as_str().to_ascii_uppercase().as_bytes()),
                "{name}"
            );
        }
        for other in ["host", "trailer", "content-length", "x-te", "tee", "proxy-connections"] {
            assert!(!is_hop_by_hop_name(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn untrusted_trail_is_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let trail = Trail::new("10.1.2.3".parse().unwrap(), "http");
        set_forwarding(
            &mut h,
            Hop {
                trail: &trail,
                trusted: false,
            },
        );
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["forwarded"], "for=10.1.2.3;proto=http");
    }

    #[test]
    fn trusted_trail_is_appended_and_ipv6_quoted() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.1.1.1"),
        ]);
        let trail = Trail::new("::1".parse().unwrap(), "http");
        set_forwarding(
            &mut h,
            Hop {
                trail: &trail,
                trusted: true,
            },
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, ::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["forwarded"], "for=1.1.1.1, for=\"[::1]\";proto=http");
    }

    #[test]
    fn via_appends_per_version() {
        let mut h = map(&[("via", "1.1 cache")]);
        add_via(&mut h, Version::HTTP_2, &ViaValues::new("meridian"));
        assert_eq!(h["via"], "1.1 cache, 2 meridian");
    }
}
