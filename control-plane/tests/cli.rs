//! The operator CLI (`meridian-cp apply|get|drain|undrain|dry-run`) against a real
//! admin API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::*;

fn cli(api: &Api, args: &[&str]) -> (bool, String, String) {
    let ca = api.dir.path().join("ca.crt");
    std::fs::write(&ca, &api.ca.cert_pem).unwrap();
    let server = format!("https://localhost:{}", api.handle.api.addr.port());
    let out = Command::new(env!("CARGO_BIN_EXE_meridian-cp"))
        .args(args)
        .args(["--server", &server, "--ca"])
        .arg(&ca)
        .env("MERIDIAN_TOKEN", TOKEN)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_drain_and_dry_run_from_the_command_line() {
    let api = api().await;
    let file = api.dir.path().join("fleet.json");
    std::fs::write(&file, fleet().to_string()).unwrap();
    let (ok, out, err) = cli(&api, &["apply", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("\"version\": 1"), "{out}");

    // A file that fails the shared validation is refused before anything is sent.
    let mut bad = fleet();
    bad["policy"]["rules"] = serde_json::json!([]);
    std::fs::write(&file, bad.to_string()).unwrap();
    let (ok, _, err) = cli(&api, &["apply", file.to_str().unwrap()]);
    assert!(!ok && err.contains("policy.rules"), "{err}");

    let (ok, out, err) = cli(&api, &["drain", "de-1"]);
    assert!(ok && out.contains("\"version\": 2"), "{out}{err}");
    let (ok, out, _) = cli(&api, &["get", "providers"]);
    assert!(ok && out.contains("\"draining\""), "{out}");
    let (ok, out, _) = cli(&api, &["dry-run", "CN"]);
    assert!(ok && out.contains("cn-in-cn"), "{out}");
    let (ok, _, err) = cli(&api, &["drain", "nope"]);
    assert!(!ok && err.contains("404"), "{err}");

    // Every operator subcommand explains itself and how it reaches the API.
    for args in [
        &["apply", "--help"][..],
        &["get", "--help"],
        &["drain", "--help"],
        &["undrain", "--help"],
        &["dry-run", "--help"],
        &["edge", "status", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_meridian-cp"))
            .args(args)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && help.contains("--server")
                && help.contains("--token")
                && help.contains("MERIDIAN_TOKEN"),
            "{args:?}: {help}"
        );
    }
}
