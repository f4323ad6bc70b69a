//! The README's start command: `meridian-bench dev` brings up a working deployment on
//! the documented addresses, routes by residency, and stops cleanly on Ctrl-C.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed by scripts/test");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops the deployment even when an assertion fails, so no process outlives the test.
struct Deployment(Child);

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGINT);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while matches!(self.0.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn dev_deployment_serves_on_the_documented_addresses_and_stops_on_ctrl_c() {
    assert!(
        std::net::TcpStream::connect("127.0.0.1:9901").is_err(),
        "something already listens on the dev admin port"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Deployment(
        Command::new(env!("CARGO_BIN_EXE_meridian-bench"))
            .args(["dev", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while curl(&["http://127.0.0.1:9901/readyz"]) != "ready\n" {
        assert!(std::time::Instant::now() < deadline, "dev deployment not ready");
        assert!(dev.0.try_wait().unwrap().is_none(), "dev deployment exited early");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A CN tenant's object is stored in and served from CN only.
    let cn = ["-H", "Host: cn.demo.local", "-H", "x-meridian-explain: 1"];
    let put = curl(
        &[
            &cn[..],
            &[
                "-i",
                "-X",
                "PUT",
                "--data-binary",
                "hello, meridian",
                "http://127.0.0.1:8080/bucket/hello.txt",
            ],
        ]
        .concat(),
    );
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    let route = header(&put, "x-meridian-route").unwrap();
    assert!(
        route.starts_with("origin=CN; source=tenant; provider=cn-") && route.contains("jurisdiction=CN; candidates=2"),
        "{route}"
    );
    let get = curl(&[&cn[..], &["-i", "http://127.0.0.1:8080/bucket/hello.txt"]].concat());
    assert!(
        get.ends_with("hello, meridian") && header(&get, "x-sim-provider").unwrap().starts_with("cn-"),
        "{get}"
    );
    let range = curl(
        &[
            &cn[..],
            &["-H", "Range: bytes=7-14", "http://127.0.0.1:8080/bucket/hello.txt"],
        ]
        .concat(),
    );
    assert_eq!(range, "meridian");

    // EU data stays in the EU, and settles on the nearer EU provider (5 ms away
    // rather than 12 ms); other data goes anywhere but CN. The edge learns the gap from
    // real round trips, and a loaded machine can delay one of them enough to swing a
    // single choice, so this polls for the settled state (ten EU requests in a row on
    // de-fra-1 within sixty; a coin toss between the two would pass about one time in
    // forty) instead of expecting every late request to land there.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (mut in_a_row, mut sent) = (0, 0);
    while in_a_row < 10 {
        assert!(
            std::time::Instant::now() < deadline && sent < 60,
            "EU requests did not settle on the nearest EU provider: {in_a_row} in a row after {sent}"
        );
        let eu = curl(&["-i", "-H", "Host: eu.demo.local", "http://127.0.0.1:8080/_sim/echo"]);
        let served = header(&eu, "x-sim-provider").unwrap();
        assert!(served.starts_with("de-"), "{eu}");
        in_a_row = if served == "de-fra-1" { in_a_row + 1 } else { 0 };
        sent += 1;
        let us = curl(&["-i", "-H", "Host: us.demo.local", "http://127.0.0.1:8080/_sim/echo"]);
        assert!(!header(&us, "x-sim-provider").unwrap().starts_with("cn-"), "{us}");
    }
    // Loopback is a trusted hop, so the residency header counts.
    let fr = curl(&[
        "-i",
        "-H",
        "x-meridian-residency: FR",
        "-H",
        "x-meridian-explain: 1",
        "http://127.0.0.1:8080/_sim/echo",
    ]);
    assert!(
        header(&fr, "x-meridian-route")
            .unwrap()
            .starts_with("origin=FR; source=header"),
        "{fr}"
    );

    let ca = dir.path().join("certs/ca.crt");
    let tls = curl(&[
        "-i",
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        "us.demo.local:8443:127.0.0.1",
        "https://us.demo.local:8443/_sim/echo",
    ]);
    assert!(tls.starts_with("HTTP/2 200"), "{tls}");
    assert_eq!(header(&tls, "alt-svc"), Some("h3=\":8443\"; ma=86400"), "{tls}");

    // HTTP/3 on UDP 8443, with the load generator the banner suggests.
    let h3 = Command::new(env!("CARGO_BIN_EXE_meridian-bench"))
        .args(["load", "--h3", "--ca"])
        .arg(&ca)
        .args([
            "--host",
            "us.demo.local",
            "--target",
            "127.0.0.1:8443",
            "--get",
            "/_sim/echo",
            "--rate",
            "50",
            "--duration",
            "1",
            "--quiet",
            "--json",
            "-",
        ])
        .output()
        .unwrap();
    assert!(h3.status.success(), "{}", String::from_utf8_lossy(&h3.stderr));
    let h3: serde_json::Value = serde_json::from_slice(&h3.stdout).unwrap();
    assert!(h3["ok"].as_u64().unwrap() >= 40, "{h3}");
    assert_eq!(h3["errors"], 0, "{h3}");
    // Both binaries serve Prometheus metrics.
    assert!(curl(&["http://127.0.0.1:9901/metrics"]).contains("meridian_edge_requests_total"));
    assert!(curl(&["http://127.0.0.1:7071/metrics"]).contains("meridian_cp_edges_connected"));

    // The edge's fleet came by push from the control plane, which knows the edge
    // runs its version.
    let status = curl(&["http://127.0.0.1:9901/statusz"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["fleet_source"], "push", "{status}");
    assert_eq!(status["control_plane"]["transport"], "quic", "{status}");
    let ca_s = ca.to_str().unwrap();
    let edges = curl(&[
        "--cacert",
        ca_s,
        "-H",
        "Authorization: Bearer dev-token",
        "https://127.0.0.1:7070/v1/edges",
    ]);
    let edges: serde_json::Value = serde_json::from_str(&edges).unwrap();
    assert_eq!(edges["edges"][0]["edge_id"], "edge-1.dev.local", "{edges}");
    assert_eq!(edges["edges"][0]["acked"], status["fleet_version"], "{edges}");

    // The control plane holds the same fleet behind its authenticated API.
    let dry = curl(&[
        "--cacert",
        ca_s,
        "-H",
        "Authorization: Bearer dev-token",
        "-d",
        r#"{"origin":"CN"}"#,
        "https://127.0.0.1:7070/v1/dry-run",
    ]);
    assert!(
        dry.contains("\"rule\":\"cn-in-cn\"") && dry.contains("cn-sh-1"),
        "{dry}"
    );
    let anonymous = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
        ca_s,
        "https://127.0.0.1:7070/v1/fleet",
    ]);
    assert_eq!(anonymous, "401");

    kill(Pid::from_raw(dev.0.id() as i32), Signal::SIGINT).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = dev.0.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "dev deployment did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut banner = String::new();
    std::io::Read::read_to_string(dev.0.stdout.as_mut().unwrap(), &mut banner).unwrap();
    assert!(banner.contains("curl") && banner.contains("127.0.0.1:8080"), "{banner}");
    assert!(
        std::net::TcpStream::connect("127.0.0.1:8080").is_err(),
        "edge still listening after stop"
    );
    assert!(
        std::net::TcpStream::connect("127.0.0.1:7070").is_err(),
        "control plane still listening after stop"
    );
}
