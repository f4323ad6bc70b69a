use super::*;

const MIN: &str = r#"
[listeners]
http = "127.0.0.1:8080"

[[providers]]
id = "a"
[providers.endpoint]
address = "127.0.0.1:9000"

[routing]
default_provider = "a"
"#;

fn parse(src: &str) -> Result<EdgeConfig, ConfigError> {
    EdgeConfig::parse(src, "edge.toml", Path::new("/nonexistent"))
}

fn invalid(src: &str) -> (usize, String, String) {
    match parse(src) {
        Err(ConfigError::Invalid {
            line, key, message, ..
        }) => (line, key, message),
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
    assert_eq!(c.routing.default_provider.as_str(), "a");
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
    assert_eq!(line, 14);
}

#[test]
fn bad_durations_name_the_key() {
    let src = format!("{MIN}\n[upstream]\nconnect_timeout = \"3 parsecs\"\n");
    let (line, key, msg) = invalid(&src);
    assert_eq!((line, key.as_str()), (14, "upstream.connect_timeout"));
    assert!(msg.contains("duration") || msg.contains("unit"), "{msg}");
}

#[test]
fn unknown_provider_in_routing_is_refused() {
    let src = MIN.replace("default_provider = \"a\"", "default_provider = \"b\"");
    let (line, key, msg) = invalid(&src);
    assert_eq!((line, key.as_str()), (11, "routing.default_provider"));
    assert!(msg.contains("unknown provider `b`"), "{msg}");
}

#[test]
fn duplicate_provider_ids_are_refused() {
    let src = MIN.replace(
        "[routing]",
        "[[providers]]\nid = \"a\"\n[providers.endpoint]\naddress = \"127.0.0.1:9001\"\n\n[routing]",
    );
    let (_, key, msg) = invalid(&src);
    assert_eq!(key, "providers[1].id");
    assert!(msg.contains("duplicate"), "{msg}");
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
    assert_eq!((line, key.as_str()), (17, "tls.certificates[0].cert"));
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
        .replace("https = ", "# https = ");
    EdgeConfig::parse(&without_tls, "edge.example.toml", path.parent().unwrap()).unwrap();
}
