//! The README's start command: `meridian-bench dev` brings up a working deployment on
//! the documented addresses and stops cleanly on Ctrl-C.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
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

#[test]
fn dev_deployment_serves_on_the_documented_addresses_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meridian-bench"))
        .args(["dev", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while curl(&["http://127.0.0.1:9901/readyz"]) != "ready\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "dev deployment not ready"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "dev deployment exited early"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let put = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "hello, meridian",
        "http://127.0.0.1:8080/bucket/hello.txt",
    ]);
    assert_eq!(put, "stored\n");
    assert_eq!(
        curl(&["http://127.0.0.1:8080/bucket/hello.txt"]),
        "hello, meridian"
    );
    assert_eq!(
        curl(&[
            "-H",
            "Range: bytes=7-14",
            "http://127.0.0.1:8080/bucket/hello.txt"
        ]),
        "meridian"
    );
    let b = curl(&[
        "-i",
        "-H",
        "Host: b.demo.local",
        "http://127.0.0.1:8080/_sim/echo",
    ]);
    assert!(b.contains("x-sim-provider: store-b"), "{b}");
    let ca = dir.path().join("certs/ca.crt");
    let tls = curl(&[
        "-i",
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        "tls.demo.local:8443:127.0.0.1",
        "https://tls.demo.local:8443/_sim/echo",
    ]);
    assert!(
        tls.starts_with("HTTP/2 200") && tls.contains("x-sim-provider: store-tls"),
        "{tls}"
    );

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dev deployment did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut banner = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut banner).unwrap();
    assert!(
        banner.contains("curl") && banner.contains("127.0.0.1:8080"),
        "{banner}"
    );
    assert!(
        std::net::TcpStream::connect("127.0.0.1:8080").is_err(),
        "edge still listening after stop"
    );
}
