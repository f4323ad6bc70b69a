//! Network namespaces for the world simulator: one per party (control plane, each
//! edge, each provider, the users of each edge), joined by veth pairs to one bridge in
//! a hub namespace, addresses 10.77.0.0/16. Everything is created with `ip` and
//! removed on drop; names carry the simulator's process id so two runs never collide.
//! Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN).
//!
//! Where namespaces are unavailable, [`Network::loopback`] gives each party its own
//! loopback address (127.77.0.0/16) in the one namespace there is; delay then comes
//! from relays, not from the wire.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (Debian iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A set of namespaces on one bridge, or loopback addresses.
#[derive(Debug)]
pub struct Network {
    prefix: String,
    /// The hub namespace; `None` for a loopback network.
    hub: Option<String>,
    hosts: Vec<Host>,
}

/// One party: its namespace and address.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name (for `ip netns exec`); `None` on a loopback network.
    pub netns: Option<String>,
    /// Its address.
    pub addr: Ipv4Addr,
}

impl Network {
    /// Creates the hub namespace and its bridge.
    pub fn new() -> anyhow::Result<Network> {
        remove_stale();
        let prefix = format!("mw{}", std::process::id());
        let hub = format!("{prefix}-hub");
        ip(&["netns", "add", &hub])?;
        let net = Network {
            prefix,
            hub: Some(hub.clone()),
            hosts: Vec::new(),
        };
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        Ok(net)
    }

    /// Whether namespaces can be made here (root, and `ip netns` works).
    pub fn namespaces_available() -> bool {
        if !nix::unistd::Uid::effective().is_root() {
            return false;
        }
        let probe = format!("mw{}-probe", std::process::id());
        let ok = ip(&["netns", "add", &probe]).is_ok();
        let _ = ip(&["netns", "del", &probe]);
        ok
    }

    /// Parties on loopback addresses 127.77.0.0/16, no namespaces.
    pub fn loopback() -> Network {
        Network {
            prefix: String::new(),
            hub: None,
            hosts: Vec::new(),
        }
    }

    /// Whether this is a loopback network.
    pub fn is_loopback(&self) -> bool {
        self.hub.is_none()
    }

    /// Adds a party: a namespace with one interface on the bridge, or the next
    /// loopback address.
    pub fn add_host(&mut self) -> anyhow::Result<Host> {
        let n = self.hosts.len() + 1;
        anyhow::ensure!(n < 60_000, "too many hosts");
        let Some(hub) = self.hub.clone() else {
            let host = Host {
                netns: None,
                addr: Ipv4Addr::new(127, 77, (n / 250) as u8, (n % 250 + 1) as u8),
            };
            self.hosts.push(host.clone());
            return Ok(host);
        };
        let netns = format!("{}-{n}", self.prefix);
        let addr = Ipv4Addr::new(10, 77, (n / 250) as u8, (n % 250 + 1) as u8);
        ip(&["netns", "add", &netns])?;
        // Registered before the links exist, so a failure below still cleans up.
        self.hosts.push(Host {
            netns: Some(netns.clone()),
            addr,
        });
        let outside = format!("v{}-{n}", std::process::id() % 100_000);
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        ip(&["link", "set", &outside, "netns", &hub])?;
        ip(&["-n", &hub, "link", "set", &outside, "master", "br0", "up"])?;
        ip(&["-n", &netns, "addr", "add", &format!("{addr}/16"), "dev", "eth0"])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        Ok(Host {
            netns: Some(netns),
            addr,
        })
    }

    /// Caps what `host` sends at `rate` (e.g. `100mbit`) with `tc tbf`.
    pub fn cap_bandwidth(&self, host: &Host, rate: &str) -> anyhow::Result<()> {
        let netns = namespace_of(host)?;
        let out = Command::new("ip")
            .args([
                "netns", "exec", netns, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
            ])
            .args(["rate", rate, "burst", "64kbit", "latency", "400ms"])
            .output()
            .context("running tc")?;
        if !out.status.success() {
            bail!(
                "tc tbf {rate} on {netns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Network {
    /// Drops `percent` of what `host` sends, at random (nftables `numgen`).
    pub fn set_loss(&self, host: &Host, percent: u32) -> anyhow::Result<()> {
        let netns = namespace_of(host)?;
        let rule = match percent {
            100.. => "oifname \"eth0\" drop".to_owned(),
            p => format!("oifname \"eth0\" numgen random mod 100 < {p} drop"),
        };
        let script = format!(
            "table inet world_loss\ndelete table inet world_loss\n\
             table inet world_loss {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
             {rule}\n  }}\n}}\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running nft (Debian nftables)")?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(script.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft in {netns}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for h in &self.hosts {
            if let Some(n) = &h.netns {
                let _ = ip(&["netns", "del", n]);
            }
        }
        if let Some(hub) = &self.hub {
            let _ = ip(&["netns", "del", hub]);
        }
    }
}

/// Removes namespaces left by simulators that died without cleaning up (killed):
/// `mwPID-...` whose process is gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix("mw")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn namespace_of(host: &Host) -> anyhow::Result<&str> {
    host.netns
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("{} is on loopback: no namespace to shape", host.addr))
}

/// A command run inside `host`'s namespace (or directly, on loopback).
pub fn command_in(host: &Host, program: &std::path::Path) -> Command {
    match &host.netns {
        Some(n) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", n]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs `iptables-legacy ARGS` inside `host` (the kernel's nft lacks the queue
/// target; the legacy tables have it).
pub fn iptables(host: &Host, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", namespace_of(host)?, "iptables-legacy"])
        .args(args)
        .output()
        .context("running iptables-legacy (Debian iptables)")?;
    if !out.status.success() {
        bail!(
            "iptables-legacy {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a new thread that has entered `host`'s namespace: every socket it
/// opens lives there (and stays there when handed to another thread). On loopback,
/// just a new thread.
pub fn run_in<T: Send + 'static>(host: &Host, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    let path = host.netns.as_ref().map(|n| format!("/run/netns/{n}"));
    std::thread::Builder::new()
        .name(format!("in-{}", host.addr))
        .spawn(move || -> anyhow::Result<T> {
            if let Some(path) = path {
                let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {path}"))?;
            }
            Ok(f())
        })
        .context("starting a thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the thread for {} panicked", host.addr))?
}
