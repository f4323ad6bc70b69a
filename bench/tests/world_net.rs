//! The world simulator's network: namespaces on a bridge, and delay applied to
//! packets on the wire, handshakes included. Needs root, iproute2 and Debian's
//! iptables (installed by scripts/test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_bench::world::{delay, netns};

#[test]
fn delay_applies_to_the_handshake_and_every_packet_and_changes_while_running() {
    let mut net = netns::Network::new().unwrap();
    let a = net.add_host().unwrap();
    let b = net.add_host().unwrap();
    let delays: delay::Delays = Arc::new(Mutex::new(HashMap::from([(b.addr, Duration::from_millis(20))])));
    let _holder = delay::start(vec![(a.clone(), delays.clone())]).unwrap();

    let listener = netns::run_in(&b, || std::net::TcpListener::bind("0.0.0.0:7000").unwrap()).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let target = std::net::SocketAddr::from((b.addr, 7000));
    let measure = move || {
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(target).unwrap();
        let connect = t.elapsed();
        s.set_nodelay(true).unwrap();
        let t = Instant::now();
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        (connect, t.elapsed())
    };
    let (connect, rtt) = netns::run_in(&a, measure).unwrap();
    // SYN out and SYN-ACK in are each held 20 ms; so are the request and the answer.
    assert!(
        connect >= Duration::from_millis(40),
        "handshake not delayed: {connect:?}"
    );
    assert!(rtt >= Duration::from_millis(40), "round trip not delayed: {rtt:?}");
    assert!(rtt < Duration::from_millis(400), "far more than the delay: {rtt:?}");

    delays.lock().unwrap().insert(b.addr, Duration::from_millis(60));
    let (connect, rtt) = netns::run_in(&a, measure).unwrap();
    assert!(
        connect >= Duration::from_millis(120) && rtt >= Duration::from_millis(120),
        "{connect:?} {rtt:?}"
    );
}

#[test]
fn loss_drops_what_a_host_sends() {
    let mut net = netns::Network::new().unwrap();
    let a = net.add_host().unwrap();
    let b = net.add_host().unwrap();
    let listener = netns::run_in(&b, || std::net::TcpListener::bind("0.0.0.0:7001").unwrap()).unwrap();
    std::thread::spawn(move || for _ in listener.incoming() {});
    let target = std::net::SocketAddr::from((b.addr, 7001));
    let connect = move || std::net::TcpStream::connect_timeout(&target, Duration::from_millis(500)).is_ok();
    assert!(netns::run_in(&a, connect).unwrap(), "reachable without loss");
    net.set_loss(&b, 100).unwrap();
    assert!(
        !netns::run_in(&a, connect).unwrap(),
        "everything b sends is lost: no SYN-ACK"
    );
    net.set_loss(&b, 0).unwrap();
    assert!(netns::run_in(&a, connect).unwrap(), "reachable again");
}

#[test]
fn namespaces_left_by_a_killed_simulator_are_removed() {
    // A name in the simulator's pattern whose process cannot exist (above pid_max).
    let stale = "mw4294967-1";
    let out = std::process::Command::new("ip")
        .args(["netns", "add", stale])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _net = netns::Network::new().unwrap();
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!list.lines().any(|l| l.starts_with(stale)), "{list}");
}
