//! Observability end to end: a real Prometheus server (Debian's) scrapes a real
//! `meridian-edge` and `meridian-cp` under traffic, evaluates the shipped rules
//! (`deploy/prometheus/meridian-rules.yml`), and every expression of the shipped
//! Grafana dashboard and every recorded signal must return data through
//! Prometheus's HTTP API. Faults are then injected (a provider failing, a slow
//! provider, the control plane killed) and the matching alerts must go active.
//! `promtool` checks the rules and both binaries' exposition text. The edge's access
//! log goes to a file, one JSON line per request with the routing decision.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use meridian_bench::procs::{Proc, ensure_installed, poll, sibling_binary, wait_http};
use meridian_cp::client::{Target, call};
use meridian_sim::{Impairments, SimConfig, SimProvider, TestCa};
use nix::sys::signal::{Signal, kill};
use serde_json::{Value, json};

const TOKEN: &str = "test-token";

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// One HTTP/1.1 exchange; returns the status and the body.
async fn exchange(addr: SocketAddr, req: http::Request<Full<Bytes>>) -> Option<(u16, Bytes)> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

/// A request through the edge for data of `origin` (the residency header; loopback
/// is a trusted hop).
async fn through_edge(edge: SocketAddr, method: http::Method, origin: &str, body: &'static [u8]) -> Option<u16> {
    let req = http::Request::builder()
        .method(method)
        .uri("/bucket/object")
        .header("host", "data.test")
        .header("x-meridian-residency", origin)
        .body(Full::new(Bytes::from_static(body)))
        .ok()?;
    exchange(edge, req).await.map(|(s, _)| s)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prometheus {
    addr: SocketAddr,
}

impl Prometheus {
    async fn get(&self, path_and_query: &str) -> Option<Value> {
        let req = http::Request::get(path_and_query)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .ok()?;
        let (status, body) = exchange(self.addr, req).await?;
        (status == 200).then(|| serde_json::from_slice(&body).ok())?
    }

    /// The instant vector of `expr`, when the query succeeds and it is not empty.
    async fn data(&self, expr: &str) -> Option<Vec<Value>> {
        let v = self
            .get(&format!("/api/v1/query?query={}", percent_encode(expr)))
            .await?;
        assert_eq!(v["status"], "success", "query {expr} failed: {v}");
        let result = v["data"]["result"].as_array()?.clone();
        (!result.is_empty()).then_some(result)
    }

    /// Alerts pending or firing, as (name, labels).
    async fn active_alerts(&self) -> Vec<(String, Value)> {
        let Some(v) = self.get("/api/v1/alerts").await else {
            return Vec::new();
        };
        v["data"]["alerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| x["state"] == "pending" || x["state"] == "firing")
                    .map(|x| {
                        (
                            x["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                            x["labels"].clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn wait_alert(&self, name: &str, label: Option<(&str, &str)>) {
        poll(
            Duration::from_secs(90),
            &format!("alert {name} {label:?} to go active"),
            || async {
                self.active_alerts()
                    .await
                    .iter()
                    .any(|(n, labels)| n == name && label.is_none_or(|(k, v)| labels[k] == v))
                    .then_some(())
            },
        )
        .await;
    }
}

/// Every PromQL expression of the shipped dashboard, as Grafana would send it with a
/// one-minute rate window.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy().join("grafana/meridian-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().replace("$__rate_interval", "1m"));
        }
    }
    assert!(out.len() >= 20, "the dashboard lost its panels: {out:?}");
    out
}

fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(ensure_installed("promtool", "prometheus").unwrap())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_every_dashboard_and_alert_signal() {
    let prometheus_bin = ensure_installed("prometheus", "prometheus").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("observability test CA").unwrap();
    let leaf = ca.issue(&["localhost"]).unwrap();
    let client = ca.issue(&["edge-0.test"]).unwrap();
    for (name, text) in [
        ("ca.crt", &ca.cert_pem),
        ("cp.crt", &leaf.cert_pem),
        ("cp.key", &leaf.key_pem),
        ("edge.crt", &client.cert_pem),
        ("edge.key", &client.key_pem),
    ] {
        std::fs::write(d.join(name), text).unwrap();
    }

    // Providers: one in DE, one in FR, each with the bandwidth probes' object.
    let de = SimProvider::start(SimConfig::memory("p-de")).await.unwrap();
    let fr = SimProvider::start(SimConfig::memory("p-fr")).await.unwrap();
    for p in [&de, &fr] {
        meridian_bench::load::store_object(p.addr, "data.test", "/_probe/bw", 128 << 10)
            .await
            .unwrap();
    }

    // Control plane.
    let (api, push, cp_telemetry) = (free_port(), free_port(), free_port());
    let cp_config = d.join("cp.toml");
    std::fs::write(
        &cp_config,
        format!(
            "data_dir = \"cp-data\"\n[admin]\nlisten = \"{api}\"\ncert = \"cp.crt\"\nkey = \"cp.key\"\n\
             [[admin.tokens]]\nname = \"t\"\nsha256 = \"{}\"\n\
             [push]\nlisten = \"{push}\"\ncert = \"cp.crt\"\nkey = \"cp.key\"\nclient_ca = \"ca.crt\"\n\
             [telemetry]\nlisten = \"{cp_telemetry}\"\n",
            meridian_cp::config::hash_token(TOKEN)
        ),
    )
    .unwrap();
    let mut cp = Proc::spawn(
        "meridian-cp",
        Command::new(sibling_binary("meridian-cp").unwrap())
            .args(["serve", "--log-format", "json", "--config"])
            .arg(&cp_config)
            .env("MERIDIAN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("cp.log")).unwrap()),
    )
    .unwrap();
    let target = Target {
        server: format!("https://localhost:{}", api.port()),
        token: TOKEN.into(),
        ca: Some(d.join("ca.crt")),
    };
    // DE data in DE, FR data in FR; any other origin matches no rule: denied.
    let fleet = |extra_rule: bool| {
        let mut rules = vec![
            json!({ "name": "de", "origin": "DE", "allow": ["DE"] }),
            json!({ "name": "fr", "origin": "FR", "allow": ["FR"] }),
        ];
        if extra_rule {
            rules.push(json!({ "name": "it", "origin": "IT", "allow": ["DE", "FR"] }));
        }
        json!({
            "providers": [
                { "id": "p-de", "jurisdiction": "DE", "endpoint": { "address": de.addr.to_string() } },
                { "id": "p-fr", "jurisdiction": "FR", "endpoint": { "address": fr.addr.to_string() } },
            ],
            "policy": { "rules": rules },
        })
    };
    poll(Duration::from_secs(20), "the control plane's API", || async {
        call(&target, http::Method::PUT, "/v1/fleet", Some(fleet(false)))
            .await
            .ok()
    })
    .await;

    // Edge, fed by push, probing, access log to a file.
    let (edge_http, edge_admin) = (free_port(), free_port());
    let edge_config = d.join("edge.toml");
    std::fs::write(
        &edge_config,
        format!(
            "[listeners]\nhttp = \"{edge_http}\"\nadmin = \"{edge_admin}\"\n\
             [probes]\nenabled = true\ninterval = \"200ms\"\ntimeout = \"2s\"\n\
             bandwidth_path = \"/_probe/bw\"\nbandwidth_interval = \"1s\"\nbandwidth_max_bytes = 131072\n\
             [forwarding]\ntrusted_hops = [\"127.0.0.0/8\"]\n\
             [control_plane]\naddress = \"{push}\"\nserver_name = \"localhost\"\nedge_id = \"edge-0.test\"\n\
             ca_file = \"ca.crt\"\ncert_file = \"edge.crt\"\nkey_file = \"edge.key\"\nstate_dir = \"edge-state\"\n\
             reconnect_min = \"50ms\"\nreconnect_max = \"500ms\"\n"
        ),
    )
    .unwrap();
    let access_log = d.join("access.log");
    let mut edge = Proc::spawn(
        "meridian-edge",
        Command::new(sibling_binary("meridian-edge").unwrap())
            .args(["run", "--log-format", "json", "--access-log"])
            .arg(&access_log)
            .arg("--config")
            .arg(&edge_config)
            .env("MERIDIAN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("edge.log")).unwrap()),
    )
    .unwrap();
    wait_http(edge_admin, "/readyz", 200, Duration::from_secs(20))
        .await
        .unwrap();

    wait_http(cp_telemetry, "/readyz", 200, Duration::from_secs(20))
        .await
        .unwrap();
    wait_http(cp_telemetry, "/healthz", 200, Duration::from_secs(1))
        .await
        .unwrap();

    // Prometheus, with the shipped rules, scraping every second.
    let prom_addr = free_port();
    let prom_config = d.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: meridian-edge\n    static_configs:\n      - targets: [\"{edge_admin}\"]\n\
             \x20 - job_name: meridian-control-plane\n    static_configs:\n      - targets: [\"{cp_telemetry}\"]\n",
            deploy().join("prometheus/meridian-rules.yml").display()
        ),
    )
    .unwrap();
    let mut prometheus = Proc::spawn(
        "prometheus",
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!("--storage.tsdb.path={}", d.join("tsdb").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let prom = Prometheus { addr: prom_addr };
    wait_http(prom_addr, "/-/ready", 200, Duration::from_secs(30))
        .await
        .unwrap();

    // Traffic until the end: DE and FR reads, DE writes, a denied origin.
    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = Vec::new();
    for (method, origin, body) in [
        (http::Method::GET, "DE", &b""[..]),
        (http::Method::GET, "FR", &b""[..]),
        (http::Method::PUT, "DE", &b"some bytes to store"[..]),
        (http::Method::GET, "US", &b""[..]),
    ] {
        let stop = stop.clone();
        traffic.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                through_edge(edge_http, method.clone(), origin, body).await;
            }
        }));
    }

    // Both targets scraped.
    poll(Duration::from_secs(30), "both targets up", || async {
        let up = prom.data("up == 1").await?;
        (up.len() == 2).then_some(())
    })
    .await;
    // A policy change, so that push has recent answers to time.
    call(&target, http::Method::PUT, "/v1/fleet", Some(fleet(true)))
        .await
        .unwrap();

    // Faults: p-fr answers 503 to everything (ejected, then FR data has nowhere to
    // go); p-de starts its responses 600 ms late (the latency SLO burns).
    fr.set_impairments(Impairments {
        error_rate: 1.0,
        ..Impairments::default()
    });
    de.set_impairments(Impairments {
        latency_ms: 600,
        ..Impairments::default()
    });

    // Every dashboard expression returns data.
    for expr in dashboard_exprs() {
        poll(
            Duration::from_secs(60),
            &format!("data for dashboard expression {expr}"),
            || prom.data(&expr),
        )
        .await;
    }
    // Every recorded signal returns data; every alert is a threshold on signals.
    let rules = prom.get("/api/v1/rules").await.unwrap();
    let mut records = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let (name, query) = (rule["name"].as_str().unwrap(), rule["query"].as_str().unwrap());
            match rule["type"].as_str().unwrap() {
                "recording" => {
                    records += 1;
                    poll(
                        Duration::from_secs(60),
                        &format!("data for recorded signal {name}"),
                        || prom.data(name),
                    )
                    .await;
                }
                _ => assert!(
                    query.contains("meridian:"),
                    "alert {name} is not built on a recorded signal: {query}"
                ),
            }
        }
    }
    assert!(records >= 10, "rules lost their signals: {rules}");

    // The faults' alerts go active.
    prom.wait_alert("MeridianProviderDown", Some(("provider", "p-fr")))
        .await;
    prom.wait_alert("MeridianNoCompliantProvider", Some(("origin", "FR")))
        .await;
    prom.wait_alert("MeridianHighErrorRatio", None).await;
    prom.wait_alert("MeridianLatencySLOBurnFast", None).await;
    // A healthy provider raises nothing.
    assert!(
        !prom
            .active_alerts()
            .await
            .iter()
            .any(|(n, l)| n == "MeridianProviderDown" && l["provider"] == "p-de"),
        "p-de is slow, not down"
    );

    // promtool accepts the rules and both binaries' exposition text.
    promtool(
        &[
            "check",
            "rules",
            deploy().join("prometheus/meridian-rules.yml").to_str().unwrap(),
        ],
        None,
    );
    promtool(&["check", "config", prom_config.to_str().unwrap()], None);
    promtool(
        &[
            "check",
            "config",
            deploy().join("prometheus/prometheus.yml").to_str().unwrap(),
        ],
        None,
    );
    let edge_text = scrape(edge_admin).await;
    let cp_text = scrape(cp_telemetry).await;
    promtool(&["check", "metrics"], Some(&edge_text));
    promtool(&["check", "metrics"], Some(&cp_text));
    // No label takes a per-client or per-path value.
    assert!(
        !edge_text.contains("/bucket/object") && !edge_text.contains("127.0.0.1"),
        "{edge_text}"
    );
    assert!(!cp_text.contains("edge-0.test"), "{cp_text}");

    // The control plane dies: its scrape fails and the edge notices it is cut off.
    kill(cp.pid(), Signal::SIGKILL).unwrap();
    cp.child.wait().unwrap();
    prom.wait_alert("MeridianControlPlaneDown", None).await;
    prom.wait_alert("MeridianEdgeCutOffFromControlPlane", None).await;

    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.await.unwrap();
    }

    // Every client connection closed: the open-connections gauge is back to zero,
    // and each was counted.
    poll(Duration::from_secs(20), "open connections back to 0", || async {
        let text = scrape(edge_admin).await;
        (sample(&text, "meridian_edge_open_connections{protocol=\"http1\"}") == 0.0).then_some(())
    })
    .await;
    let text = scrape(edge_admin).await;
    assert!(sample(&text, "meridian_edge_connections_total{protocol=\"http1\"}") > 100.0);

    // Each denied request is counted once as fail-closed and once as a 451 answered
    // by the edge (traffic has stopped).
    let edge_text = scrape(edge_admin).await;
    let denied = sample(
        &edge_text,
        "meridian_edge_fail_closed_total{origin=\"US\",reason=\"denied\"}",
    );
    let answered = sample(
        &edge_text,
        "meridian_edge_requests_total{provider=\"none\",jurisdiction=\"none\",origin=\"US\",method=\"read\",status=\"4xx\"}",
    );
    assert!(
        denied > 10.0 && denied == answered,
        "denied {denied}, answered 4xx {answered}"
    );
    // Diagnostics were asked for as JSON: every line is an object, none is an access
    // line, and each binary announced itself.
    for (file, hello) in [("cp.log", "meridian-cp serving"), ("edge.log", "meridian-edge serving")] {
        let text = std::fs::read_to_string(d.join(file)).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{file}: not JSON ({e}): {l}")))
            .collect();
        assert!(lines.iter().any(|l| l["fields"]["message"] == hello), "{file}:\n{text}");
        assert!(
            lines.iter().all(|l| l["target"] != "meridian::access"),
            "{file}:\n{text}"
        );
    }

    // The access log: one JSON line per request with the routing decision, and
    // nothing else.
    let log = std::fs::read_to_string(&access_log).unwrap();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().all(|l| l["target"] == "meridian::access"), "{log}");
    assert!(lines.len() > 20, "{} access-log lines", lines.len());
    let routed = lines
        .iter()
        .find(|l| l["provider"] == "p-de" && l["origin"] == "DE")
        .expect("a routed request in the access log");
    for field in [
        "method",
        "status",
        "origin_source",
        "candidates",
        "jurisdiction",
        "reason",
    ] {
        assert!(!routed[field].is_null(), "access-log line without {field}: {routed}");
    }
    let denied_lines = lines
        .iter()
        .filter(|l| l["origin"] == "US" && l["status"] == 451 && l["provider"] == "none")
        .count();
    assert_eq!(
        denied_lines as f64, denied,
        "denied requests in the access log and in the metrics"
    );

    prometheus.stop(Duration::from_secs(10)).unwrap();
    edge.stop(Duration::from_secs(10)).unwrap();
}

/// The Prometheus text at `addr/metrics`.
async fn scrape(addr: SocketAddr) -> String {
    meridian_bench::procs::scrape_metrics(addr).await.unwrap()
}

/// The value of `series` in `text`, which must hold it.
fn sample(text: &str, series: &str) -> f64 {
    meridian_bench::procs::metric_value(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}
