use super::*;

const MIN: &str = r#"
[listeners]
http = "127.0.0.1:8080"

[[fleet.providers]]
id = "a"
jurisdiction = "DE"
[fleet.providers.endpoint]
address = "127.0.0.1:9000"

[fleet.policy]
rules = [{ name = "any", origin = "*", allow = ["*"] }]
"#;

fn parse(src: &str) -> Result<EdgeConfig, ConfigError> {
    EdgeConfig::parse(src, "edge.toml", Path::new("/nonexistent"))
}

fn invalid(src: &str) -> (usize, String, String) {
    match parse(src) {
        Err(ConfigError::Invalid { line, key, message, .. }) => (line, key, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn minimal_config_gets_sane_defaults() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.limits.max_header_bytes, 64 * 1024);
    assert_eq!(c.limits.header_read_timeout.0, Duration::from_secs(10));
    assert_eq!(c.upstream.connect_timeout.0, Duration::from_secs(3));
    assert_eq!(c.forwarding.via, "meridian");
    assert_eq!(c.fleet.as_ref().unwrap().providers[0].id.as_str(), "a");
    assert_eq!(c.origin.header, "x-meridian-residency");
    assert!(c.log.access);
}

#[test]
fn type_errors_name_key_and_line() {
    let src = MIN.replace(
        "http = \"127.0.0.1:8080\"",
        "http = \"127.0.0.1:8080\"\nadmin = \"not an address\"",
    );
    let (line, key, msg) = invalid(&src);
    assert_eq!((line, key.as_str()), (4, "listeners.admin"), "{msg}");
}

#[test]
fn unknown_keys_are_refused_with_their_path() {
    let src = format!("{MIN}\n[limits]\nmax_conections = 5\n");
    let (line, key, msg) = invalid(&src);
    assert_eq!(key, "limits.max_conections", "{msg}");
    assert!(msg.contains("unknown field"), "{msg}");
    assert_eq!(line, 15);
}

#[test]
fn bad_durations_name_the_key() {
    let src = format!("{MIN}\n[upstream]\nconnect_timeout = \"3 parsecs\"\n");
    let (line, key, msg) = invalid(&src);
    assert_eq!((line, key.as_str()), (15, "upstream.connect_timeout"));
    assert!(msg.contains("duration") || msg.contains("unit"), "{msg}");
}

#[test]
fn fleet_errors_are_checked_by_the_shared_validation_with_key_and_line() {
    let src = MIN.replace(r#"allow = ["*"] }]"#, r#"allow = ["provider:b"] }]"#);
    let (line, key, msg) = invalid(&src);
    assert_eq!((line, key.as_str()), (12, "fleet.policy.rules[0].allow[0]"));
    assert!(msg.contains("unknown provider `b`"), "{msg}");

    let src = MIN.replace(
        "[fleet.policy]",
        "[[fleet.providers]]\nid = \"a\"\njurisdiction = \"FR\"\n[fleet.providers.endpoint]\naddress = \"127.0.0.1:9001\"\n\n[fleet.policy]",
    );
    let (line, key, msg) = invalid(&src);
    assert_eq!((line, key.as_str()), (12, "fleet.providers[1].id"));
    assert!(msg.contains("duplicate"), "{msg}");

    let src = MIN.replace("jurisdiction = \"DE\"", "jurisdiction = \"UK\"");
    let (line, key, msg) = invalid(&src);
    assert_eq!((line, key.as_str()), (7, "fleet.providers[0].jurisdiction"));
    assert!(msg.contains("ISO 3166"), "{msg}");
}

#[test]
fn origin_settings_are_checked() {
    let src = format!("{MIN}\n[origin]\norder = [\"tenant\", \"tenant\"]\n");
    let (_, key, _) = invalid(&src);
    assert_eq!(key, "origin.order");
    let src = format!("{MIN}\n[origin]\nheader = \"bad header\"\n");
    let (line, key, _) = invalid(&src);
    assert_eq!((line, key.as_str()), (15, "origin.header"));
    let src = format!("{MIN}\n[origin]\norder = [\"geo\"]\n");
    let (_, key, _) = invalid(&src);
    assert_eq!(key, "origin.order[0]");
    let src = format!("{MIN}\n[origin]\ngeoip_db = \"missing.mmdb\"\n");
    let (line, key, msg) = invalid(&src);
    assert_eq!((line, key.as_str()), (15, "origin.geoip_db"));
    assert!(msg.contains("missing.mmdb"), "{msg}");
}

#[test]
fn https_without_certificates_is_refused() {
    let src = MIN.replace("http = \"127.0.0.1:8080\"", "https = \"127.0.0.1:8443\"");
    let (line, key, _) = invalid(&src);
    assert_eq!((line, key.as_str()), (3, "listeners.https"));
}

#[test]
fn missing_certificate_files_are_named() {
    let src = format!(
        "{MIN}\n[tls]\n[[tls.certificates]]\nname = \"x\"\nserver_names = [\"x.test\"]\ncert = \"x.crt\"\nkey = \"x.key\"\n"
    );
    let (line, key, msg) = invalid(&src);
    assert_eq!((line, key.as_str()), (18, "tls.certificates[0].cert"));
    assert!(msg.contains("x.crt"), "{msg}");
}

#[test]
fn zero_limits_are_refused() {
    let src = format!("{MIN}\n[limits]\nmax_connections = 0\n");
    let (_, key, _) = invalid(&src);
    assert_eq!(key, "limits.max_connections");
}

#[test]
fn trusted_hops_accept_cidrs_and_addresses() {
    let src = format!("{MIN}\n[forwarding]\ntrusted_hops = [\"10.0.0.0/8\", \"::1\"]\n");
    let c = parse(&src).unwrap();
    assert!(c.forwarding.is_trusted("10.2.3.4".parse().unwrap()));
    assert!(c.forwarding.is_trusted("::1".parse().unwrap()));
    assert!(c.forwarding.is_trusted("::ffff:10.0.0.1".parse().unwrap()));
    assert!(!c.forwarding.is_trusted("11.0.0.1".parse().unwrap()));
    let bad = format!("{MIN}\n[forwarding]\ntrusted_hops = [\"10.0.0.0/33\"]\n");
    let (_, key, _) = invalid(&bad);
    assert_eq!(key, "forwarding.trusted_hops[0]");
}

#[test]
fn example_config_in_deploy_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/edge.example.toml");
    let src = std::fs::read_to_string(&path).unwrap();
    // Certificates are referenced relative to the file; check everything else.
    let without_tls = src
        .split("\n[tls]")
        .next()
        .unwrap()
        .replace("https = ", "# https = ")
        .replace("h3 = ", "# h3 = ");
    let cfg = EdgeConfig::parse(&without_tls, "edge.example.toml", path.parent().unwrap()).unwrap();
    assert!(!cfg.http3.zero_rtt, "0-RTT must stay off in the example");
}

#[test]
fn an_http3_listener_needs_certificates_and_names_its_key() {
    let (line, key, message) = invalid(&MIN.replace("http = ", "h3 = "));
    assert_eq!((line, key.as_str()), (3, "listeners.h3"), "{message}");
    assert!(message.contains("[[tls.certificates]]"), "{message}");
    let err = parse(&format!("{MIN}\n[http3]\nzero_rtt = \"yes\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("zero_rtt"), "{err}");
    assert!(!parse(MIN).unwrap().http3.zero_rtt, "0-RTT is off by default");
}
