//! Runs a scenario: builds the namespaces and the delays between them, starts the
//! real `meridian-cp`, `meridian-edge` and simulated providers inside them, sends the
//! users' load, plays the events, and judges the result against the policy and an
//! oracle that knows the true delays.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use meridian_proto::{CompiledPolicy, Fleet, Policy, Verdict};
use meridian_sim::{Impairments, TestCa};

use super::delay::{self, Delays};
use super::netns::{self, Host, Network};
use super::report::{self, Judged};
use super::scenario::{Action, EventKind, Scenario};
use super::users::{self, Record};
use crate::procs::{Proc, ensure_installed, sibling_binary};

const PROVIDER_PORT: u16 = 9000;
const EDGE_PORT: u16 = 8080;
const EDGE_ADMIN: u16 = 9901;
const CP_ADMIN: u16 = 7070;
const CP_PUSH: u16 = 7443;
const TOKEN: &str = "world-token";
/// Longest the simulator waits for every edge to run a changed policy.
const ROLLOUT_WAIT: Duration = Duration::from_secs(30);
/// Probe object size (bandwidth probes read it).
const PROBE_OBJECT: u64 = 256 << 10;

/// How parties are separated and delayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// Namespaces when they can be made here, loopback otherwise.
    Auto,
    /// Network namespaces, delay on the wire (NFQUEUE), `tc tbf`, nftables loss.
    Namespaces,
    /// Loopback addresses and delay relays: handshakes are not delayed, bandwidth
    /// caps are the providers' own, loss is not simulated.
    Loopback,
}

/// Options.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    /// The scenario file.
    pub scenario: PathBuf,
    /// Seconds of probing before the users start.
    pub warmup: Duration,
    /// Where to write every request as CSV, if anywhere.
    pub records: Option<PathBuf>,
    /// Namespaces or loopback.
    pub network: NetworkMode,
}

/// Runs `f`'s future on a fresh runtime inside `host`'s namespace.
fn in_ns<T, F, Fut>(host: &Host, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    netns::run_in(host, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(f()))
    })?
}

struct ProviderProc {
    host: Host,
    proc: Option<Proc>,
    dir: PathBuf,
}

/// Runs the scenario and returns the report (markdown).
pub fn run(opts: &WorldOptions) -> anyhow::Result<String> {
    let scenario = Scenario::load(&opts.scenario)?;
    let namespaces = match opts.network {
        NetworkMode::Namespaces => true,
        NetworkMode::Loopback => false,
        NetworkMode::Auto => Network::namespaces_available(),
    };
    let mut net = if namespaces {
        anyhow::ensure!(
            nix::unistd::Uid::effective().is_root(),
            "network namespaces need root; use --network loopback"
        );
        ensure_installed("iptables-legacy", "iptables")?;
        if scenario.providers.iter().any(|p| p.loss_percent > 0) {
            ensure_installed("nft", "nftables")?;
        }
        Network::new()?
    } else {
        Network::loopback()
    };
    let work = tempfile::tempdir()?;
    let dir = work.path();
    let lab = net.add_host()?;
    let cp_host = net.add_host()?;
    let edge_hosts: Vec<Host> = scenario
        .edges
        .iter()
        .map(|_| net.add_host())
        .collect::<Result<_, _>>()?;
    let provider_hosts: Vec<Host> = scenario
        .providers
        .iter()
        .map(|_| net.add_host())
        .collect::<Result<_, _>>()?;
    let user_hosts: Vec<Host> = scenario
        .users
        .iter()
        .map(|_| net.add_host())
        .collect::<Result<_, _>>()?;
    if !net.is_loopback() {
        for (p, host) in scenario.providers.iter().zip(&provider_hosts) {
            if let Some(rate) = &p.bandwidth {
                net.cap_bandwidth(host, rate)?;
            }
            if p.loss_percent > 0 {
                net.set_loss(host, p.loss_percent)?;
            }
        }
    }

    // Every packet to or from an edge is held for the one-way delay to its peer: the
    // users, the providers and the control plane all reach the world through edges.
    let mut holders = Vec::new();
    let mut one_way: HashMap<(usize, usize), Duration> = HashMap::new();
    for (ei, (edge, host)) in scenario.edges.iter().zip(&edge_hosts).enumerate() {
        let mut map = HashMap::new();
        map.insert(cp_host.addr, scenario.one_way(edge.at, scenario.control_plane.at));
        for (pi, (p, ph)) in scenario.providers.iter().zip(&provider_hosts).enumerate() {
            let d = scenario.one_way(edge.at, p.at);
            one_way.insert((ei, pi), d);
            map.insert(ph.addr, d);
        }
        for (u, uh) in scenario.users.iter().zip(&user_hosts) {
            if u.edge == edge.name {
                map.insert(uh.addr, scenario.one_way(u.at, edge.at));
            }
        }
        holders.push((host.clone(), Arc::new(Mutex::new(map)) as Delays));
    }
    // On loopback, relays stand in front of providers (delay by which edge
    // connects, told apart by the edges' source addresses) and of edges (one per
    // user group, connecting from the group's address so the edge knows its origin).
    let relay_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut relays = Vec::new();
    let mut provider_front: Vec<SocketAddr> = provider_hosts
        .iter()
        .map(|h| SocketAddr::from((h.addr, PROVIDER_PORT)))
        .collect();
    let mut user_front: Vec<Option<SocketAddr>> = vec![None; scenario.users.len()];
    let _delay = if net.is_loopback() {
        for (pi, ph) in provider_hosts.iter().enumerate() {
            let front = net.add_host()?;
            let by_edge: HashMap<std::net::IpAddr, Duration> = edge_hosts
                .iter()
                .enumerate()
                .map(|(ei, eh)| (std::net::IpAddr::V4(eh.addr), one_way[&(ei, pi)]))
                .collect();
            let listen = SocketAddr::from((front.addr, PROVIDER_PORT));
            relays.push(relay_rt.block_on(meridian_sim::DelayRelay::bind_per_peer(
                listen,
                SocketAddr::from((ph.addr, PROVIDER_PORT)),
                Arc::new(Mutex::new(by_edge)),
                Duration::ZERO,
                None,
            ))?);
            provider_front[pi] = listen;
        }
        for (gi, (u, uh)) in scenario.users.iter().zip(&user_hosts).enumerate() {
            let ei = scenario.edges.iter().position(|e| e.name == u.edge).unwrap_or(0);
            let front = net.add_host()?;
            let listen = SocketAddr::from((front.addr, EDGE_PORT));
            relays.push(relay_rt.block_on(meridian_sim::DelayRelay::bind_per_peer(
                listen,
                SocketAddr::from((edge_hosts[ei].addr, EDGE_PORT)),
                Arc::new(Mutex::new(HashMap::new())),
                scenario.one_way(u.at, scenario.edges[ei].at),
                Some(std::net::IpAddr::V4(uh.addr)),
            ))?);
            user_front[gi] = Some(listen);
        }
        None
    } else {
        Some(delay::start(holders)?)
    };

    // Certificates: the control plane by IP, each edge by its id.
    let ca = TestCa::new("world CA")?;
    let cp_leaf = ca.issue(&[&cp_host.addr.to_string()])?;
    std::fs::write(dir.join("ca.crt"), &ca.cert_pem)?;
    std::fs::write(dir.join("cp.crt"), &cp_leaf.cert_pem)?;
    std::fs::write(dir.join("cp.key"), &cp_leaf.key_pem)?;

    // Providers, on disk so a killed one comes back with its objects.
    let bench = sibling_binary("meridian-bench")?;
    let mut providers: Vec<ProviderProc> = Vec::new();
    for (p, host) in scenario.providers.iter().zip(&provider_hosts) {
        let pdir = dir.join(format!("provider-{}", p.id));
        let mut pp = ProviderProc {
            host: host.clone(),
            proc: None,
            dir: pdir,
        };
        start_provider(&bench, &mut pp, &p.id)?;
        providers.push(pp);
    }
    let sizes: Vec<u64> = {
        let mut v: Vec<u64> = scenario
            .users
            .iter()
            .flat_map(|u| u.objects.iter())
            .map(|o| {
                let (size, _) = crate::load::parse_weighted(o).map_err(anyhow::Error::msg)?;
                crate::load::parse_bytes(&size).map_err(anyhow::Error::msg)
            })
            .collect::<anyhow::Result<_>>()?;
        v.sort_unstable();
        v.dedup();
        v
    };
    let targets: Vec<SocketAddr> = provider_hosts
        .iter()
        .map(|h| SocketAddr::from((h.addr, PROVIDER_PORT)))
        .collect();
    {
        let (targets, sizes) = (targets.clone(), sizes.clone());
        in_ns(&lab, move || async move {
            for t in &targets {
                wait_ok(*t, "/_sim/stats").await?;
                for s in &sizes {
                    crate::load::store_object(*t, "world.test", &format!("/world/obj-{s}"), *s).await?;
                }
                crate::load::store_object(*t, "world.test", "/_probe/bw", PROBE_OBJECT).await?;
            }
            Ok(())
        })?;
    }

    // The control plane, with the fleet loaded through its API.
    let cp_bin = sibling_binary("meridian-cp")?;
    let cp_config = dir.join("cp.toml");
    std::fs::write(
        &cp_config,
        format!(
            "data_dir = \"cp-data\"\n[admin]\nlisten = \"{a}:{CP_ADMIN}\"\ncert = \"cp.crt\"\nkey = \"cp.key\"\n\
             [[admin.tokens]]\nname = \"world\"\nsha256 = \"{}\"\n\
             [push]\nlisten = \"{a}:{CP_PUSH}\"\ncert = \"cp.crt\"\nkey = \"cp.key\"\nclient_ca = \"ca.crt\"\n\
             [fleet_health]\nmin_edges = 1\nfraction = 0.5\n",
            meridian_cp::config::hash_token(TOKEN),
            a = cp_host.addr
        ),
    )?;
    let start_cp = || -> anyhow::Result<Proc> {
        Proc::spawn(
            "meridian-cp",
            netns::command_in(&cp_host, &cp_bin)
                .args(["serve", "--config"])
                .arg(&cp_config)
                .env("MERIDIAN_LOG", "warn"),
        )
    };
    let mut cp = Some(start_cp()?);
    let target = meridian_cp::client::Target {
        server: format!("https://{}:{CP_ADMIN}", cp_host.addr),
        token: TOKEN.into(),
        ca: Some(dir.join("ca.crt")),
    };
    let fleet = scenario.fleet_with(|p| {
        let i = scenario.providers.iter().position(|x| x.id == p.id).unwrap_or(0);
        provider_front[i].to_string()
    });
    {
        let (target, fleet) = (target.clone(), fleet.clone());
        in_ns(&lab, move || async move {
            let body = serde_json::to_value(&fleet)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                match meridian_cp::client::call(&target, http::Method::PUT, "/v1/fleet", Some(body.clone())).await {
                    Ok(_) => return Ok(()),
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(error = %e, "control plane not up yet");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        })?;
    }

    // Edges, fed by push, origin by the users' addresses.
    let edge_bin = sibling_binary("meridian-edge")?;
    let mut edges = Vec::new();
    for (edge, host) in scenario.edges.iter().zip(&edge_hosts) {
        let id = format!("{}.edge.world", edge.name);
        let leaf = ca.issue(&[&id])?;
        std::fs::write(dir.join(format!("{id}.crt")), &leaf.cert_pem)?;
        std::fs::write(dir.join(format!("{id}.key")), &leaf.key_pem)?;
        let mut cidrs = String::new();
        for (u, uh) in scenario.users.iter().zip(&user_hosts) {
            if u.edge == edge.name {
                cidrs.push_str(&format!(
                    "[[origin.cidrs]]\ncidr = \"{}/32\"\njurisdiction = \"{}\"\n",
                    uh.addr, u.origin
                ));
            }
        }
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "[listeners]\nhttp = \"{a}:{EDGE_PORT}\"\nadmin = \"{a}:{EDGE_ADMIN}\"\n\
                 [log]\naccess = false\n\
                 [probes]\nenabled = true\ninterval = \"1s\"\ntimeout = \"2s\"\npath = \"/_probe/rtt\"\n\
                 bandwidth_path = \"/_probe/bw\"\nbandwidth_interval = \"10s\"\nbandwidth_max_bytes = {PROBE_OBJECT}\n\
                 [origin]\norder = [\"cidr\"]\n{cidrs}\
                 [control_plane]\naddress = \"{cp}:{CP_PUSH}\"\nedge_id = \"{id}\"\nca_file = \"ca.crt\"\n\
                 cert_file = \"{id}.crt\"\nkey_file = \"{id}.key\"\nstate_dir = \"{id}-state\"\n\
                 reconnect_max = \"2s\"\n{source}",
                a = host.addr,
                cp = cp_host.addr,
                source = if net.is_loopback() {
                    format!("[upstream]\nsource_address = \"{}\"\n", host.addr)
                } else {
                    String::new()
                },
            ),
        )?;
        edges.push(Proc::spawn(
            &id,
            netns::command_in(host, &edge_bin)
                .args(["run", "--config"])
                .arg(&config)
                .env("MERIDIAN_LOG", "warn")
                .stdout(std::process::Stdio::null()),
        )?);
    }
    let admins: Vec<SocketAddr> = edge_hosts
        .iter()
        .map(|h| SocketAddr::from((h.addr, EDGE_ADMIN)))
        .collect();
    {
        let admins = admins.clone();
        in_ns(&lab, move || async move {
            for a in admins {
                crate::procs::wait_http(a, "/readyz", 200, Duration::from_secs(60)).await?;
            }
            Ok(())
        })?;
    }
    // Let probes learn the network before anyone asks.
    std::thread::sleep(opts.warmup);

    // Users and events, on one clock.
    let t0 = Instant::now() + Duration::from_millis(200);
    let mut user_threads = Vec::new();
    for (gi, (u, uh)) in scenario.users.iter().zip(&user_hosts).enumerate() {
        let ei = scenario.edges.iter().position(|e| e.name == u.edge).unwrap_or(0);
        let load = users::Load {
            group: gi,
            edge: user_front[gi].unwrap_or(SocketAddr::from((edge_hosts[ei].addr, EDGE_PORT))),
            rate: u.rate,
            sizes: u
                .objects
                .iter()
                .map(|o| {
                    let (size, w) = crate::load::parse_weighted(o).map_err(anyhow::Error::msg)?;
                    Ok((crate::load::parse_bytes(&size).map_err(anyhow::Error::msg)?, w))
                })
                .collect::<anyhow::Result<_>>()?,
            duration: scenario.duration.0,
            connections: ((u.rate / 5.0).ceil() as usize).clamp(4, 64),
        };
        let uh = uh.clone();
        user_threads.push(std::thread::spawn(move || {
            netns::run_in(&uh, move || users::run(load, t0))
        }));
    }
    // On loopback there is no tc: a provider's uplink cap is its own.
    let own_cap = |pi: usize| -> u64 {
        if net.is_loopback() {
            scenario.providers[pi]
                .bandwidth
                .as_deref()
                .and_then(rate_bps)
                .map_or(0, |b| b as u64)
        } else {
            0
        }
    };
    for (pi, t) in targets.iter().enumerate() {
        if own_cap(pi) > 0 {
            let (t, body) = (
                *t,
                serde_json::to_vec(&Impairments {
                    bandwidth_bps: own_cap(pi),
                    ..Default::default()
                })?,
            );
            in_ns(&lab, move || async move { put_json(t, "/_sim/impair", body).await })?;
        }
    }
    let mut events: Vec<_> = scenario.events.iter().enumerate().collect();
    events.sort_by_key(|e| e.1.at.0);
    let mut notes: Vec<(usize, String)> = Vec::new();
    let mut rollouts: Vec<Rollout> = Vec::new();
    for (i, e) in events {
        let due = t0 + e.at.0;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match &e.what {
            EventKind::Impair { provider, impair } => {
                let pi = scenario.providers.iter().position(|p| p.id == *provider).unwrap_or(0);
                let mut impair = *impair;
                if impair.bandwidth_bps == 0 {
                    impair.bandwidth_bps = own_cap(pi);
                }
                let (t, body) = (targets[pi], serde_json::to_vec(&impair)?);
                in_ns(&lab, move || async move { put_json(t, "/_sim/impair", body).await })?;
            }
            EventKind::Provider { provider, action } => {
                let pi = scenario.providers.iter().position(|p| p.id == *provider).unwrap_or(0);
                match action {
                    Action::Kill => kill(providers[pi].proc.take()),
                    Action::Start => {
                        start_provider(&bench, &mut providers[pi], provider)?;
                        let t = targets[pi];
                        let cap = serde_json::to_vec(&Impairments {
                            bandwidth_bps: own_cap(pi),
                            ..Default::default()
                        })?;
                        in_ns(&lab, move || async move {
                            wait_ok(t, "/_sim/stats").await?;
                            put_json(t, "/_sim/impair", cap).await
                        })?;
                    }
                }
            }
            EventKind::ControlPlane { control_plane } => match control_plane {
                Action::Kill => kill(cp.take()),
                Action::Start => {
                    let started = Instant::now();
                    cp = Some(start_cp()?);
                    let (target, n) = (target.clone(), scenario.edges.len());
                    in_ns(&lab, move || async move {
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                        loop {
                            if let Ok(v) =
                                meridian_cp::client::call(&target, http::Method::GET, "/v1/edges", None).await
                            {
                                let connected = v["edges"]
                                    .as_array()
                                    .map_or(0, |a| a.iter().filter(|e| e["connected"] == true).count());
                                if connected == n {
                                    return Ok(());
                                }
                            }
                            anyhow::ensure!(tokio::time::Instant::now() < deadline, "edges did not resubscribe");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    })?;
                    notes.push((
                        i,
                        format!(
                            "all edges subscribed again {:.0} ms after the restart",
                            started.elapsed().as_secs_f64() * 1e3
                        ),
                    ));
                }
            },
            EventKind::Policy { policy } => {
                let (target, body) = (target.clone(), serde_json::to_value(policy)?);
                let admins = admins.clone();
                let sent = t0.elapsed();
                let applied = in_ns(&lab, move || async move {
                    let v = meridian_cp::client::call(&target, http::Method::PUT, "/v1/policy", Some(body)).await?;
                    let version = v["version"]
                        .as_u64()
                        .ok_or_else(|| anyhow::anyhow!("PUT /v1/policy answered without a version: {v}"))?;
                    running_since(&admins, version, t0).await
                })?;
                notes.push((i, rollout_note(&scenario, sent, &applied)));
                rollouts.push(Rollout {
                    sent,
                    applied,
                    policy: policy.clone(),
                });
            }
        }
    }
    let mut records: Vec<Record> = Vec::new();
    for t in user_threads {
        let r = t.join().map_err(|_| anyhow::anyhow!("a user thread panicked"))???;
        records.extend(r);
    }
    let probe = {
        let targets = targets.clone();
        in_ns(&lab, move || async move {
            let mut requests = 0u64;
            let mut bytes = 0u64;
            for t in targets {
                if let Ok(v) = get_json(t, "/_sim/stats").await {
                    requests += v["probe_requests"].as_u64().unwrap_or(0);
                    bytes += v["probe_bytes"].as_u64().unwrap_or(0);
                }
            }
            Ok((requests, bytes))
        })?
    };
    for e in edges {
        drop(e);
    }
    drop(cp);
    drop(providers);

    drop(relays);
    drop(relay_rt);
    let judged = judge(&scenario, &fleet, &one_way, &rollouts, &records);
    if let Some(path) = &opts.records {
        std::fs::write(path, records_csv(&scenario, &judged)).with_context(|| format!("writing {}", path.display()))?;
    }
    let network = if net.is_loopback() {
        "loopback addresses with delay relays (namespaces were unavailable or not chosen): the relays delay \
         data but not TCP handshakes, so a probe's connect sees no delay; provider bandwidth caps are the \
         providers' own; packet loss is not simulated; the edge-control plane path has no delay"
    } else {
        "one Linux network namespace per party on a bridge; delay applied to packets on the wire by an NFQUEUE \
         holder in each edge's namespace (handshakes included); provider uplinks capped with `tc tbf` and loss \
         from nftables where the scenario says so"
    };
    Ok(report::render(
        &scenario,
        &opts.scenario,
        &judged,
        &notes,
        probe,
        opts.warmup,
        network,
    ))
}

fn start_provider(bench: &Path, pp: &mut ProviderProc, id: &str) -> anyhow::Result<()> {
    pp.proc = Some(Proc::spawn(
        id,
        netns::command_in(&pp.host, bench)
            .args([
                "upstream",
                "--addr",
                &format!("{}:{PROVIDER_PORT}", pp.host.addr),
                "--name",
                id,
                "--dir",
            ])
            .arg(&pp.dir),
    )?);
    Ok(())
}

fn kill(p: Option<Proc>) {
    if let Some(mut p) = p {
        let _ = nix::sys::signal::kill(p.pid(), nix::sys::signal::Signal::SIGKILL);
        let _ = p.child.wait();
    }
}

async fn wait_ok(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    crate::procs::wait_http(addr, path, 200, Duration::from_secs(30)).await
}

async fn put_json(addr: SocketAddr, path: &str, body: Vec<u8>) -> anyhow::Result<()> {
    use http_body_util::{BodyExt, Full};
    let mut send = crate::procs::h1_client(addr).await?;
    let req = http::Request::put(path)
        .header("host", "world.test")
        .body(Full::new(bytes::Bytes::from(body)))?;
    let resp = send.send_request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "PUT {path}: {}", resp.status());
    resp.into_body().collect().await?;
    Ok(())
}

async fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    use http_body_util::{BodyExt, Empty};
    let mut send = crate::procs::h1_client(addr).await?;
    let req = http::Request::get(path)
        .header("host", "world.test")
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = send.send_request(req).await?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

/// Every judged request, in start order, as CSV.
fn records_csv(s: &Scenario, j: &Judged) -> String {
    use std::fmt::Write as _;
    let mut rows: Vec<(&Record, Option<f64>)> = j.ok.iter().map(|(r, o)| (r, Some(*o))).collect();
    rows.extend(j.failed.iter().map(|r| (r, None)));
    rows.sort_by_key(|(r, _)| r.start);
    let mut out = String::from("group,start_ms,took_ms,status,provider,size,oracle_ms\n");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (r, oracle) in rows {
        let _ = writeln!(
            out,
            "{},{:.1},{:.1},{},{},{},{}",
            s.users[r.group].name.replace(',', " "),
            ms(r.start),
            ms(r.took),
            r.status,
            r.provider.as_deref().unwrap_or(""),
            r.size,
            oracle.map_or_else(String::new, |o| format!("{:.1}", o * 1e3)),
        );
    }
    out
}

/// A policy change as the fleet lived it: when the simulator sent it to the control
/// plane, and when each edge was first seen running it (`None`: never, within the
/// wait). Between the two, an edge may route by either policy; before and after,
/// only by the one it runs.
struct Rollout {
    sent: Duration,
    applied: Vec<Option<Duration>>,
    policy: Policy,
}

/// Polls every edge's `/statusz` until it runs fleet `version` or later; returns when
/// each was first seen doing so, from `t0`. The poll's own delay only widens the
/// window in which either policy is accepted, by a few milliseconds.
async fn running_since(admins: &[SocketAddr], version: u64, t0: Instant) -> anyhow::Result<Vec<Option<Duration>>> {
    let deadline = tokio::time::Instant::now() + ROLLOUT_WAIT;
    let mut applied = vec![None; admins.len()];
    while applied.iter().any(Option::is_none) && tokio::time::Instant::now() < deadline {
        for (seen, admin) in applied.iter_mut().zip(admins) {
            if seen.is_none() {
                let running = get_json(*admin, "/statusz")
                    .await
                    .ok()
                    .and_then(|v| v["fleet_version"].as_u64());
                if running.is_some_and(|r| r >= version) {
                    *seen = Some(t0.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(applied)
}

/// `every edge ran it within 41 ms (slowest: virginia)`, or which never did.
fn rollout_note(s: &Scenario, sent: Duration, applied: &[Option<Duration>]) -> String {
    let never: Vec<&str> = s
        .edges
        .iter()
        .zip(applied)
        .filter(|(_, a)| a.is_none())
        .map(|(e, _)| e.name.as_str())
        .collect();
    if !never.is_empty() {
        return format!("never ran by {} within {ROLLOUT_WAIT:?}", never.join(", "));
    }
    let slowest = s
        .edges
        .iter()
        .zip(applied)
        .filter_map(|(e, a)| a.map(|a| (e, a)))
        .max_by_key(|(_, a)| *a);
    match slowest {
        Some((e, a)) => format!(
            "every edge ran it within {:.0} ms (slowest: {})",
            a.saturating_sub(sent).as_secs_f64() * 1e3,
            e.name
        ),
        None => String::new(),
    }
}

/// The policies edge `ei` may have routed by at some moment in `[from, to]`: the
/// scenario's first one until the edge ran the next, each change from when it was
/// sent until the edge ran the one after it.
fn policies_during<'a>(
    s: &'a Scenario,
    rollouts: &'a [Rollout],
    ei: usize,
    from: Duration,
    to: Duration,
) -> Vec<&'a Policy> {
    let mut out = Vec::new();
    let mut since = Duration::ZERO;
    let mut policy = &s.fleet.policy;
    for r in rollouts {
        let until = r.applied.get(ei).copied().flatten().unwrap_or(Duration::MAX);
        if since <= to && until > from {
            out.push(policy);
        }
        since = r.sent;
        policy = &r.policy;
    }
    if since <= to {
        out.push(policy);
    }
    out
}

/// What held at one moment, for the judge.
#[derive(Clone)]
struct State {
    policy: Policy,
    down: Vec<bool>,
    impair: Vec<Impairments>,
}

/// Applies the events up to `t`.
fn state_at(s: &Scenario, t: Duration) -> State {
    let mut st = State {
        policy: s.fleet.policy.clone(),
        down: vec![false; s.providers.len()],
        impair: vec![Impairments::default(); s.providers.len()],
    };
    let mut events: Vec<_> = s.events.iter().collect();
    events.sort_by_key(|e| e.at.0);
    for e in events.into_iter().filter(|e| e.at.0 <= t) {
        match &e.what {
            EventKind::Impair { provider, impair } => {
                if let Some(i) = s.providers.iter().position(|p| p.id == *provider) {
                    st.impair[i] = *impair;
                }
            }
            EventKind::Provider { provider, action } => {
                if let Some(i) = s.providers.iter().position(|p| p.id == *provider) {
                    st.down[i] = *action == Action::Kill;
                }
            }
            EventKind::Policy { policy } => st.policy = policy.clone(),
            EventKind::ControlPlane { .. } => {}
        }
    }
    st
}

/// Provider indices the policy allows for `origin`.
fn allowed(fleet: &Fleet, policy: &Policy, origin: meridian_proto::Jurisdiction) -> Vec<usize> {
    let mut f = fleet.clone();
    f.policy = policy.clone();
    match CompiledPolicy::compile(&f).evaluate(Some(origin)) {
        Verdict::Denied => Vec::new(),
        Verdict::Allowed { providers, .. } => providers.iter().collect(),
    }
}

/// Round trips to deliver `size` bytes on a connection starting from the initial
/// congestion window (10 segments), doubling each round.
fn rounds(size: u64) -> f64 {
    let (mut window, mut sent, mut r) = (10.0 * 1448.0, 0.0, 1.0);
    while sent + window < size as f64 {
        sent += window;
        window *= 2.0;
        r += 1.0;
    }
    r
}

/// Bytes per second of a `tc` rate such as `100mbit`; `None` when unparsable.
fn rate_bps(rate: &str) -> Option<f64> {
    let r = rate.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = r.strip_suffix("gbit") {
        (n, 1e9 / 8.0)
    } else if let Some(n) = r.strip_suffix("mbit") {
        (n, 1e6 / 8.0)
    } else if let Some(n) = r.strip_suffix("kbit") {
        (n, 1e3 / 8.0)
    } else {
        (r.as_str(), 1.0)
    };
    num.trim().parse::<f64>().ok().map(|n| n * mult)
}

/// Judges every request: residency, and the oracle's completion time for it.
fn judge(
    s: &Scenario,
    fleet: &Fleet,
    one_way: &HashMap<(usize, usize), Duration>,
    rollouts: &[Rollout],
    records: &[Record],
) -> Judged {
    let mut judged = Judged::default();
    for r in records {
        let user = &s.users[r.group];
        let ei = s.edges.iter().position(|e| e.name == user.edge).unwrap_or(0);
        let start = state_at(s, r.start);
        let served = r
            .provider
            .as_ref()
            .and_then(|id| s.providers.iter().position(|p| p.id == *id));
        if r.status != 200 {
            judged.failed.push(r.clone());
            continue;
        }
        let Some(pi) = served else {
            judged.failed.push(r.clone());
            continue;
        };
        // A violation is a provider no policy the edge ran while the request was in
        // flight allows; a change reaches edges over the network, and the report
        // says how long it took.
        let compliant = policies_during(s, rollouts, ei, r.start, r.start + r.took)
            .into_iter()
            .any(|p| allowed(fleet, p, user.origin).contains(&pi));
        if !compliant {
            judged.violations.push(r.clone());
        }
        let ok_start = allowed(fleet, &start.policy, user.origin);
        // The oracle changes only the choice: the same request, the same user-edge
        // path, the provider that the true delays make best.
        let cost = |p: usize| -> f64 {
            let rtt = 2.0 * one_way.get(&(ei, p)).map_or(0.0, Duration::as_secs_f64);
            let bw = s.providers[p].bandwidth.as_deref().and_then(rate_bps);
            rounds(r.size) * rtt + start.impair[p].latency_ms as f64 / 1e3 + bw.map_or(0.0, |b| r.size as f64 / b)
        };
        let best = ok_start
            .iter()
            .copied()
            .filter(|&p| !start.down[p] && start.impair[p].error_rate < 0.5)
            .map(cost)
            .fold(f64::INFINITY, f64::min);
        let took = r.took.as_secs_f64();
        let oracle = if best.is_finite() {
            (took - (cost(pi) - best).max(0.0)).max(0.0)
        } else {
            took
        };
        judged.ok.push((r.clone(), oracle));
    }
    judged
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIO: &str = include_str!("../../tests/tiny-world.toml");

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn record(start: f64, took: f64, provider: &str) -> Record {
        Record {
            group: 0,
            start: secs(start),
            took: secs(took),
            status: 200,
            provider: Some(provider.into()),
            size: 4096,
        }
    }

    /// EU data (`eu` users, at `fra`) restricted to Germany at 5 s; `fra` runs it
    /// from 5.05 s, `iad` never.
    fn world() -> (Scenario, Fleet, Vec<Rollout>) {
        let s: Scenario = toml::from_str(SCENARIO).unwrap();
        let fleet = s.fleet_with(|_| "127.0.0.1:1".into());
        let mut policy = s.fleet.policy.clone();
        policy.rules[0].allow = vec!["DE".parse().unwrap()];
        let rollouts = vec![Rollout {
            sent: secs(5.0),
            applied: vec![Some(secs(5.05)), None],
            policy,
        }];
        (s, fleet, rollouts)
    }

    #[test]
    fn a_violation_is_a_provider_no_policy_the_edge_ran_allows() {
        let (s, fleet, rollouts) = world();
        let one_way = HashMap::new();
        let records = [
            // Before the change: France allowed.
            record(1.0, 0.02, "fr-1"),
            // Sent but not yet running at the edge: either policy.
            record(5.01, 0.02, "fr-1"),
            // The edge runs the new policy: France is a violation.
            record(5.06, 0.02, "fr-1"),
            record(6.0, 0.02, "de-1"),
        ];
        let judged = judge(&s, &fleet, &one_way, &rollouts, &records);
        let starts: Vec<Duration> = judged.violations.iter().map(|r| r.start).collect();
        assert_eq!(starts, vec![secs(5.06)]);
        assert_eq!(judged.ok.len(), 4);
    }

    #[test]
    fn an_edge_never_seen_running_a_change_may_still_route_by_the_old_policy() {
        let (s, _, rollouts) = world();
        assert_eq!(policies_during(&s, &rollouts, 1, secs(9.0), secs(9.1)).len(), 2);
        assert_eq!(policies_during(&s, &rollouts, 0, secs(9.0), secs(9.1)).len(), 1);
        assert_eq!(policies_during(&s, &rollouts, 0, secs(1.0), secs(1.1)).len(), 1);
        // A request in flight across the change may have been routed by either.
        assert_eq!(policies_during(&s, &rollouts, 0, secs(4.9), secs(5.2)).len(), 2);
    }
}
