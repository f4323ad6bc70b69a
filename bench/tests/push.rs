//! Push with real processes: the `meridian-cp` binary, three `meridian-edge`
//! binaries subscribed to it over QUIC (or HTTP/2), and simulated providers on
//! loopback. Routing is observed from outside, by which provider answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meridian_bench::procs::{Proc, poll, sibling_binary, wait_http};
use meridian_cp::client::{Target, call};
use meridian_sim::{SimConfig, SimProvider, TestCa};
use nix::sys::signal::{Signal, kill};
use serde_json::{Value, json};

const TOKEN: &str = "test-token";

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

struct EdgeProc {
    proc: Proc,
    id: String,
    http: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
}

struct Cluster {
    dir: tempfile::TempDir,
    ca: TestCa,
    /// `p-de` (DE) and `p-fr` (FR).
    providers: Vec<SimProvider>,
    cp: Option<Proc>,
    cp_config: PathBuf,
    /// The control plane's `/metrics` listener.
    cp_telemetry: SocketAddr,
    target: Target,
    edges: Vec<EdgeProc>,
}

/// Options for a cluster.
#[derive(Clone, Copy)]
struct Opts {
    edges: usize,
    quic: bool,
    /// Edges (by index) that probe their providers every 100 ms.
    probing: usize,
}

impl Cluster {
    async fn start(opts: Opts) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("push test CA").unwrap();
        let leaf = ca.issue(&["localhost", "127.0.0.1"]).unwrap();
        write(dir.path(), "ca.crt", &ca.cert_pem);
        write(dir.path(), "cp.crt", &leaf.cert_pem);
        write(dir.path(), "cp.key", &leaf.key_pem);
        let mut providers = Vec::new();
        for name in ["p-de", "p-fr"] {
            providers.push(SimProvider::start(SimConfig::memory(name)).await.unwrap());
        }
        let admin = free_port();
        let push = free_port();
        let cp_telemetry = free_port();
        let cp_config = dir.path().join("cp.toml");
        std::fs::write(
            &cp_config,
            format!(
                "data_dir = \"cp-data\"\n[admin]\nlisten = \"{admin}\"\ncert = \"cp.crt\"\nkey = \"cp.key\"\n\
                 [[admin.tokens]]\nname = \"t\"\nsha256 = \"{}\"\n\
                 [push]\nlisten = \"{push}\"\ncert = \"cp.crt\"\nkey = \"cp.key\"\nclient_ca = \"ca.crt\"\nquic = {}\n\
                 [fleet_health]\nmin_edges = 2\nfraction = 0.5\n[telemetry]\nlisten = \"{cp_telemetry}\"\n",
                meridian_cp::config::hash_token(TOKEN),
                opts.quic
            ),
        )
        .unwrap();
        let target = Target {
            server: format!("https://localhost:{}", admin.port()),
            token: TOKEN.into(),
            ca: Some(dir.path().join("ca.crt")),
        };
        let mut c = Cluster {
            dir,
            ca,
            providers,
            cp: None,
            cp_config,
            cp_telemetry,
            target,
            edges: Vec::new(),
        };
        c.start_cp().await;
        c.put_fleet(&["DE"], "draining").await;
        for i in 0..opts.edges {
            let id = format!("edge-{i}.test");
            let client = c.ca.issue(&[&id]).unwrap();
            write(c.dir.path(), &format!("{id}.crt"), &client.cert_pem);
            write(c.dir.path(), &format!("{id}.key"), &client.key_pem);
            let (http, admin) = (free_port(), free_port());
            let probes = if i < opts.probing {
                "[probes]\nenabled = true\ninterval = \"100ms\"\ntimeout = \"300ms\"\n"
            } else {
                "[probes]\nenabled = false\n"
            };
            let config = c.dir.path().join(format!("{id}.toml"));
            std::fs::write(
                &config,
                format!(
                    "{probes}[listeners]\nhttp = \"{http}\"\nadmin = \"{admin}\"\n[origin]\ndefault = \"DE\"\n\
                     [forwarding]\ntrusted_hops = [\"127.0.0.0/8\"]\n\
                     [control_plane]\naddress = \"{push}\"\nserver_name = \"localhost\"\nedge_id = \"{id}\"\n\
                     ca_file = \"ca.crt\"\ncert_file = \"{id}.crt\"\nkey_file = \"{id}.key\"\nstate_dir = \"{id}-state\"\n\
                     quic_timeout = \"500ms\"\nreconnect_min = \"50ms\"\nreconnect_max = \"500ms\"\nreport_interval = \"100ms\"\n"
                ),
            )
            .unwrap();
            let proc = spawn_edge(&config, &id);
            c.edges.push(EdgeProc {
                proc,
                id,
                http,
                admin,
                config,
            });
        }
        for e in &c.edges {
            wait_http(e.admin, "/readyz", 200, Duration::from_secs(20))
                .await
                .unwrap();
        }
        c
    }

    async fn start_cp(&mut self) {
        let proc = Proc::spawn(
            "meridian-cp",
            Command::new(sibling_binary("meridian-cp").unwrap())
                .args(["serve", "--config"])
                .arg(&self.cp_config)
                .env("MERIDIAN_LOG", "warn")
                .stdout(Stdio::null()),
        )
        .unwrap();
        self.cp = Some(proc);
        poll(Duration::from_secs(20), "the control plane's API", || async {
            call(&self.target, http::Method::GET, "/v1/edges", None).await.ok()
        })
        .await;
    }

    fn kill_cp(&mut self) {
        let mut cp = self.cp.take().unwrap();
        kill(cp.pid(), Signal::SIGKILL).unwrap();
        cp.child.wait().unwrap();
    }

    /// The fleet: `p-de` and `p-fr`, the policy allowing `allow` for every origin;
    /// `p-fr` in state `fr_state`.
    fn fleet(&self, allow: &[&str], fr_state: &str) -> Value {
        json!({
            "providers": [
                { "id": "p-de", "jurisdiction": "DE", "endpoint": { "address": self.providers[0].addr.to_string() } },
                { "id": "p-fr", "jurisdiction": "FR", "state": fr_state,
                  "endpoint": { "address": self.providers[1].addr.to_string() } },
            ],
            "policy": { "rules": [ { "name": "all", "origin": "*", "allow": allow } ] },
        })
    }

    /// Three edges over QUIC, no probes.
    async fn three() -> Cluster {
        Cluster::start(Opts {
            edges: 3,
            quic: true,
            probing: 0,
        })
        .await
    }

    /// Replaces the fleet (see [`Cluster::fleet`]); returns the new version.
    async fn put_fleet(&self, allow: &[&str], fr_state: &str) -> u64 {
        let answer = self
            .api(http::Method::PUT, "/v1/fleet", Some(self.fleet(allow, fr_state)))
            .await;
        answer["version"].as_u64().unwrap()
    }

    async fn api(&self, method: http::Method, path: &str, body: Option<Value>) -> Value {
        call(&self.target, method, path, body).await.unwrap()
    }

    async fn edges_status(&self) -> Value {
        self.api(http::Method::GET, "/v1/edges", None).await
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn spawn_edge(config: &Path, id: &str) -> Proc {
    Proc::spawn(
        id,
        Command::new(sibling_binary("meridian-edge").unwrap())
            .args(["run", "--config"])
            .arg(config)
            .env("MERIDIAN_LOG", "warn")
            .stdout(Stdio::null()),
    )
    .unwrap()
}

/// Which provider serves a GET through `edge` (None when the edge refuses).
async fn served_by(edge: SocketAddr) -> Option<String> {
    let resp = get(edge, "/_sim/echo").await?;
    (resp.0 == 200).then_some(resp.1)?
}

/// Status and `x-sim-provider` of a GET through the edge.
async fn get(edge: SocketAddr, path: &str) -> Option<(u16, Option<String>)> {
    let tcp = tokio::net::TcpStream::connect(edge).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "data.test")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    let provider = resp
        .headers()
        .get("x-sim-provider")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = resp.status().as_u16();
    http_body_util::BodyExt::collect(resp.into_body()).await.ok()?;
    Some((status, provider))
}

async fn admin_json(admin: SocketAddr, path: &str) -> Value {
    let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// Waits until every edge is served by `provider`; returns the time it took.
async fn all_served_by(c: &Cluster, provider: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    for e in &c.edges {
        poll(limit, &format!("{} to route to {provider}", e.id), || async {
            (served_by(e.http).await.as_deref() == Some(provider)).then_some(())
        })
        .await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_reaches_three_edges_and_changes_routing_within_a_second() {
    let c = Cluster::three().await;
    all_served_by(&c, "p-de", Duration::from_secs(5)).await;
    let v = c.put_fleet(&["FR"], "active").await;
    let took = all_served_by(&c, "p-fr", Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(1),
        "routing changed on all edges after {took:?}"
    );

    // The control plane knows each edge runs it, over QUIC; so does `edge status`.
    let status = poll(Duration::from_secs(5), "three ACKs", || async {
        let s = c.edges_status().await;
        let edges = s["edges"].as_array().unwrap().clone();
        (edges.len() == 3 && edges.iter().all(|e| e["acked"] == v)).then_some(s)
    })
    .await;
    for e in status["edges"].as_array().unwrap() {
        assert_eq!(
            (e["connected"].as_bool(), e["transport"].as_str()),
            (Some(true), Some("quic"))
        );
        assert!(e["nack"].is_null());
    }
    let out = Command::new(sibling_binary("meridian-cp").unwrap())
        .args(["edge", "status", "--server", &c.target.server, "--token", TOKEN, "--ca"])
        .arg(c.dir.path().join("ca.crt"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["edges"].as_array().unwrap().len(), 3);

    // Each edge says where its fleet came from.
    let s = admin_json(c.edges[0].admin, "/statusz").await;
    assert_eq!(
        (s["fleet_source"].as_str(), s["fleet_version"].as_u64()),
        (Some("push"), Some(v))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_keep_serving_without_the_control_plane_and_resync_when_it_returns() {
    let mut c = Cluster::three().await;
    all_served_by(&c, "p-de", Duration::from_secs(5)).await;
    c.kill_cp();
    for _ in 0..3 {
        for e in &c.edges {
            assert_eq!(
                served_by(e.http).await.as_deref(),
                Some("p-de"),
                "{} stopped serving",
                e.id
            );
        }
    }
    for e in &c.edges {
        poll(Duration::from_secs(15), "the edge to notice", || async {
            (admin_json(e.admin, "/statusz").await["control_plane"]["connected"] == false).then_some(())
        })
        .await;
        assert_eq!(served_by(e.http).await.as_deref(), Some("p-de"));
    }
    c.start_cp().await;
    c.put_fleet(&["FR"], "active").await;
    all_served_by(&c, "p-fr", Duration::from_secs(10)).await;
    let s = c.edges_status().await;
    assert!(s["edges"].as_array().unwrap().iter().all(|e| e["connected"] == true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_an_edge_refuses_is_nacked_and_the_previous_one_keeps_serving() {
    let c = Cluster::three().await;
    all_served_by(&c, "p-de", Duration::from_secs(5)).await;
    // Valid for the control plane; the edges cannot build a TLS client for a server
    // name that is not a DNS name, so they refuse the whole version.
    let mut fleet = c.fleet(&["FR"], "active");
    fleet["providers"][1]["endpoint"]["scheme"] = json!("https");
    fleet["providers"][1]["endpoint"]["sni"] = json!("not a dns name");
    let v = c.api(http::Method::PUT, "/v1/fleet", Some(fleet)).await["version"]
        .as_u64()
        .unwrap();
    let s = poll(Duration::from_secs(5), "three NACKs", || async {
        let s = c.edges_status().await;
        s["edges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["nack"]["version"] == v)
            .then_some(s)
    })
    .await;
    for e in s["edges"].as_array().unwrap() {
        let reason = e["nack"]["reason"].as_str().unwrap();
        assert!(reason.contains("p-fr") && reason.contains("server name"), "{reason}");
        assert_ne!(e["version"], v);
    }
    for e in &c.edges {
        assert_eq!(
            served_by(e.http).await.as_deref(),
            Some("p-de"),
            "{} half-applied",
            e.id
        );
        // Each edge counts its refusal; the control plane counts every edge's.
        let text = scrape(e.admin).await;
        assert_eq!(
            sample(&text, "meridian_edge_config_versions_total{result=\"nack\"}"),
            1.0,
            "{text}"
        );
    }
    let text = scrape(c.cp_telemetry).await;
    assert_eq!(
        sample(&text, "meridian_cp_edge_answers_total{result=\"nack\"}"),
        3.0,
        "{text}"
    );
    assert_eq!(sample(&text, "meridian_cp_edges_refusing"), 3.0, "{text}");
    // The next good version is taken, and clears the NACK.
    let v2 = c.put_fleet(&["FR"], "active").await;
    all_served_by(&c, "p-fr", Duration::from_secs(5)).await;
    poll(Duration::from_secs(5), "ACKs of the good version", || async {
        let s = c.edges_status().await;
        s["edges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["acked"] == v2 && e["nack"].is_null())
            .then_some(())
    })
    .await;
    assert_eq!(sample(&scrape(c.cp_telemetry).await, "meridian_cp_edges_refusing"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_restarted_while_the_control_plane_is_down_serves_its_persisted_snapshot() {
    let mut c = Cluster::start(Opts {
        edges: 1,
        quic: true,
        probing: 0,
    })
    .await;
    let v = c.put_fleet(&["FR"], "active").await;
    all_served_by(&c, "p-fr", Duration::from_secs(5)).await;
    c.kill_cp();
    let mut e = c.edges.pop().unwrap();
    e.proc.stop(Duration::from_secs(10)).unwrap();
    e.proc = spawn_edge(&e.config, &e.id);
    wait_http(e.admin, "/readyz", 200, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(served_by(e.http).await.as_deref(), Some("p-fr"));
    let s = admin_json(e.admin, "/statusz").await;
    assert_eq!(s["fleet_source"], "persisted");
    assert_eq!(s["fleet_version"], v);
    assert_eq!(s["control_plane"]["connected"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_provider_gets_no_new_requests_within_a_second_and_in_flight_ones_finish() {
    let c = Cluster::three().await;
    // Both allowed; p-fr starts drained, so p-de takes everything.
    c.put_fleet(&["DE", "FR"], "draining").await;
    all_served_by(&c, "p-de", Duration::from_secs(5)).await;
    // A slow request in flight on p-de while it is drained.
    c.providers[0].set_head_delay(Duration::from_millis(1500));
    let seen = c.providers[0].requests();
    let slow = tokio::spawn(get(c.edges[0].http, "/_sim/echo"));
    poll(Duration::from_secs(5), "the slow request to reach p-de", || async {
        (c.providers[0].requests() > seen).then_some(())
    })
    .await;
    c.api(http::Method::POST, "/v1/providers/p-fr/undrain", None).await;
    let started = Instant::now();
    let v = c.api(http::Method::POST, "/v1/providers/p-de/drain", None).await["version"]
        .as_u64()
        .unwrap();
    c.providers[0].set_head_delay(Duration::ZERO);
    // Between the undrain and the drain both were usable: an edge serving from p-fr
    // proves nothing yet. Every edge having applied the drain does.
    poll(Duration::from_secs(5), "every edge to apply the drain", || async {
        let s = c.edges_status().await;
        s["edges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["acked"].as_u64() >= Some(v))
            .then_some(())
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the drain reached every edge after {took:?}"
    );
    let before = c.providers[0].requests();
    for _ in 0..5 {
        for e in &c.edges {
            assert_eq!(served_by(e.http).await.as_deref(), Some("p-fr"));
        }
    }
    assert_eq!(c.providers[0].requests(), before, "a drained provider got new requests");
    let (status, provider) = slow.await.unwrap().unwrap();
    assert_eq!(
        (status, provider.as_deref()),
        (200, Some("p-de")),
        "the in-flight request finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quic_edges_fall_back_to_http2_by_themselves() {
    let c = Cluster::start(Opts {
        edges: 1,
        quic: false,
        probing: 0,
    })
    .await;
    let s = c.edges_status().await;
    assert_eq!(s["edges"][0]["transport"], "h2");
    c.put_fleet(&["FR"], "active").await;
    all_served_by(&c, "p-fr", Duration::from_secs(5)).await;
    let s = admin_json(c.edges[0].admin, "/statusz").await;
    assert_eq!(s["control_plane"]["transport"], "h2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_at_a_quorum_of_edges_is_down_for_the_whole_fleet() {
    // Edges 0 and 1 probe; edge 2 does not, so only the fleet can tell it.
    let mut c = Cluster::start(Opts {
        edges: 3,
        quic: true,
        probing: 2,
    })
    .await;
    c.put_fleet(&["DE", "FR"], "active").await;
    let dead = c.providers.remove(0);
    drop(dead);
    let s = poll(Duration::from_secs(10), "p-de down for the fleet", || async {
        let s = c.edges_status().await;
        (s["fleet_down"] == json!(["p-de"])).then_some(s)
    })
    .await;
    assert_eq!(s["edges"].as_array().unwrap().len(), 3);
    // Edge 2 never saw p-de fail, yet follows the fleet's verdict.
    let quiet = &c.edges[2];
    poll(Duration::from_secs(5), "edge 2 to hear the verdict", || async {
        (admin_json(quiet.admin, "/statusz").await["fleet_down"] == json!(["p-de"])).then_some(())
    })
    .await;
    let dry = c
        .api(
            http::Method::POST,
            "/v1/dry-run",
            Some(json!({ "origin": "DE", "edge": quiet.id })),
        )
        .await;
    assert_eq!(dry["eligible"], json!(["p-fr"]));
    assert_eq!(dry["chosen"], "p-fr");
    // Its requests go straight to p-fr.
    for _ in 0..5 {
        assert_eq!(served_by(quiet.http).await.as_deref(), Some("p-fr"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scale_benchmark_runs_and_every_edge_acks_every_change() {
    let report = meridian_bench::push_scale::run(meridian_bench::push_scale::ScaleOptions {
        edges: 20,
        changes: 2,
        transport: meridian_edge::config::PushTransport::Quic,
    })
    .await
    .unwrap();
    assert!(report.contains("| edges subscribed (Quic) | 20 "), "{report}");
    assert!(report.contains("| API changes timed | 2 |"), "{report}");
    assert!(report.contains("| target p99 under 1 s | "), "{report}");
}

/// The Prometheus text at `addr/metrics`.
async fn scrape(addr: SocketAddr) -> String {
    meridian_bench::procs::scrape_metrics(addr).await.unwrap()
}

/// The value of `series` in `text`, which must hold it.
fn sample(text: &str, series: &str) -> f64 {
    meridian_bench::procs::metric_value(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}
