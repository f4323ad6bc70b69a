//! `kill -9` while the control plane is committing changes loses no acknowledged one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use meridian_cp::store::Store;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn an_acknowledged_change_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meridian-cp"))
        .args(["store-exercise", "--count", "100000", "--data"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = 0u64;
    // Kill it mid-stream, while it is writing.
    while acked < 50 {
        let line = lines.next().expect("writer ended early").unwrap();
        acked = line.strip_prefix("acked ").unwrap().parse().unwrap();
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    // Whatever it printed before dying was acknowledged too.
    for line in lines.map_while(Result::ok) {
        if let Some(v) = line.strip_prefix("acked ") {
            acked = v.parse().unwrap();
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the writer must have been killed, not finished");

    let store = Store::open(dir.path()).unwrap();
    let (version, fleet) = store.current().unwrap().expect("committed versions survive");
    assert!(
        version >= acked,
        "acknowledged version {acked} lost; store has {version}"
    );
    assert_eq!(
        fleet.tenants.len() as u64,
        version,
        "the stored document is the one of its version"
    );
    fleet.validate().unwrap();
}
