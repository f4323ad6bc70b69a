//! `meridian-bench dev`: a complete local deployment on fixed loopback addresses:
//! simulated providers (in this process), the real `meridian-cp` binary with the demo
//! fleet loaded through its API, and the real `meridian-edge` binary fed by the
//! control plane's push, with certificates from a throw-away CA.
//!
//! Fixed addresses so documentation and scripts can rely on them: edge HTTP
//! 127.0.0.1:8080, HTTPS 127.0.0.1:8443, admin 127.0.0.1:9901; control plane API
//! 127.0.0.1:7070, push 127.0.0.1:7443 (UDP and TCP); providers on
//! 127.0.0.1:9101-9106. It must never listen beyond loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use meridian_sim::{DelayRelay, SimConfig, SimProvider, Storage, TestCa};

use crate::procs::{Proc, sibling_binary, wait_http};

/// Edge plain HTTP address.
pub const EDGE_HTTP: &str = "127.0.0.1:8080";
/// Edge HTTPS address.
pub const EDGE_HTTPS: &str = "127.0.0.1:8443";
/// Edge admin address.
pub const EDGE_ADMIN: &str = "127.0.0.1:9901";
/// Control-plane admin API address.
pub const CP_ADMIN: &str = "127.0.0.1:7070";
/// Control-plane metrics and health (plain HTTP).
pub const CP_TELEMETRY: &str = "127.0.0.1:7071";
/// Control-plane push address (QUIC on UDP, HTTP/2 on TCP).
pub const CP_PUSH: &str = "127.0.0.1:7443";
/// The dev edge's id (a DNS name in its client certificate).
pub const EDGE_ID: &str = "edge-1.dev.local";
/// The dev control plane's API token.
pub const CP_TOKEN: &str = "dev-token";

/// A provider of the demo fleet.
struct DemoProvider {
    id: &'static str,
    jurisdiction: &'static str,
    /// The documented address: a delay relay in front of the simulated provider.
    addr: &'static str,
    /// One-way network delay on the path, milliseconds.
    delay_ms: u64,
    protocol: &'static str,
    tls: bool,
}

/// Two providers in each of CN, DE and US at different network distances; one of
/// each pair speaks HTTP/2 or TLS so every upstream flavour is exercised.
#[rustfmt::skip]
const FLEET: [DemoProvider; 6] = [
    DemoProvider { id: "cn-sh-1", jurisdiction: "CN", addr: "127.0.0.1:9101", delay_ms: 40, protocol: "http1", tls: false },
    DemoProvider { id: "cn-bj-1", jurisdiction: "CN", addr: "127.0.0.1:9102", delay_ms: 60, protocol: "http2", tls: false },
    DemoProvider { id: "de-fra-1", jurisdiction: "DE", addr: "127.0.0.1:9103", delay_ms: 5, protocol: "http1", tls: false },
    DemoProvider { id: "de-ber-1", jurisdiction: "DE", addr: "127.0.0.1:9104", delay_ms: 12, protocol: "http1", tls: true },
    DemoProvider { id: "us-va-1", jurisdiction: "US", addr: "127.0.0.1:9105", delay_ms: 25, protocol: "http1", tls: false },
    DemoProvider { id: "us-or-1", jurisdiction: "US", addr: "127.0.0.1:9106", delay_ms: 45, protocol: "http2", tls: false },
];

/// EU member states, for the demo policy's `EU` group.
const EU: &str = r#""AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE""#;

/// Options for the dev deployment.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where config, certificates and provider data go.
    pub dir: PathBuf,
    /// Keep objects on disk under `dir` instead of in memory.
    pub disk: bool,
}

/// Runs the deployment until Ctrl-C (or SIGTERM), then stops everything.
pub async fn run(opts: DevOptions) -> anyhow::Result<()> {
    let dir = &opts.dir;
    std::fs::create_dir_all(dir.join("certs")).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let ca = TestCa::new("Meridian dev CA")?;
    let edge_leaf = ca.issue(&["localhost", "*.demo.local", "127.0.0.1"])?;
    let store_leaf = ca.issue(&["store.demo.local", "127.0.0.1"])?;
    write(&dir.join("certs/ca.crt"), &ca.cert_pem)?;
    write(&dir.join("certs/edge.crt"), &edge_leaf.cert_pem)?;
    write(&dir.join("certs/edge.key"), &edge_leaf.key_pem)?;

    let mut providers = Vec::new();
    // Replicas, as the storage platform would place them: CN providers hold copies
    // of one another's objects, and so do the DE and US ones, so a GET finds what a
    // PUT stored whichever allowed provider serves it.
    let mut replicas: std::collections::HashMap<bool, std::sync::Arc<meridian_sim::Objects>> = Default::default();
    for p in &FLEET {
        let objects = replicas.entry(p.jurisdiction == "CN").or_default().clone();
        let storage = if opts.disk {
            Storage::Disk(dir.join("data").join(p.id))
        } else {
            Storage::Memory
        };
        let sim = SimProvider::start(SimConfig {
            name: p.id.into(),
            addr: "127.0.0.1:0".parse()?,
            storage,
            tls: p.tls.then(|| store_leaf.clone()),
            objects: Some(objects),
        })
        .await
        .with_context(|| format!("starting simulated provider {}", p.id))?;
        // The edge reaches each provider through a relay that adds its network
        // distance, so probes and traffic both see it.
        let relay = DelayRelay::bind(p.addr.parse()?, sim.addr, Duration::from_millis(p.delay_ms), None)
            .await
            .with_context(|| format!("starting the delay relay for {} on {}", p.id, p.addr))?;
        providers.push((sim, relay));
    }

    // The control plane, with its embedded store; the demo fleet goes in through its
    // API and reaches the edge by push.
    let cp_leaf = ca.issue(&["localhost", "127.0.0.1"])?;
    let edge_client = ca.issue(&[EDGE_ID])?;
    write(&dir.join("certs/cp.crt"), &cp_leaf.cert_pem)?;
    write(&dir.join("certs/cp.key"), &cp_leaf.key_pem)?;
    write(&dir.join("certs/edge-client.crt"), &edge_client.cert_pem)?;
    write(&dir.join("certs/edge-client.key"), &edge_client.key_pem)?;
    let cp_config = dir.join("cp.toml");
    write(&cp_config, &cp_config_toml())?;
    let fleet_file = dir.join("fleet.toml");
    write(&fleet_file, &fleet_toml())?;
    let config = dir.join("edge.toml");
    write(&config, &edge_config())?;
    let mut cp = Proc::spawn(
        "meridian-cp",
        Command::new(sibling_binary("meridian-cp")?)
            .arg("serve")
            .arg("--config")
            .arg(&cp_config),
    )?;
    let fleet = meridian_cp::client::read_fleet(&fleet_file).map_err(anyhow::Error::msg)?;
    let target = meridian_cp::client::Target {
        server: format!("https://{CP_ADMIN}"),
        token: CP_TOKEN.into(),
        ca: Some(dir.join("certs/ca.crt")),
    };
    let loaded = load_fleet(&target, &fleet).await;
    if let Err(e) = loaded {
        let code = cp.stop(Duration::from_secs(5))?;
        anyhow::bail!("the control plane did not take the demo fleet (exit code {code:?}): {e:#}");
    }
    let edge_bin = sibling_binary("meridian-edge")?;
    let mut edge = Proc::spawn(
        "meridian-edge",
        Command::new(&edge_bin).arg("run").arg("--config").arg(&config),
    )?;
    let ready = tokio::select! {
        r = wait_http(EDGE_ADMIN.parse()?, "/readyz", 200, Duration::from_secs(30)) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = ready {
        let code = edge.stop(Duration::from_secs(5))?;
        let _ = cp.stop(Duration::from_secs(5));
        anyhow::bail!("the edge did not become ready, i.e. got no fleet by push (exit code {code:?}): {e}");
    }
    print_banner(&dir);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let exited = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break None,
            _ = term.recv() => break None,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some(status) = edge.child.try_wait()? {
                    break Some(status);
                }
            }
        }
    };
    eprintln!("\nstopping the dev deployment...");
    let code = edge.stop(Duration::from_secs(35))?;
    let _ = cp.stop(Duration::from_secs(5));
    drop(providers);
    if let Some(status) = exited {
        anyhow::bail!("meridian-edge exited on its own ({status})");
    }
    eprintln!("edge exited with {code:?}; providers stopped");
    Ok(())
}

/// Waits for the control plane's API (bounded) and stores the fleet through it.
async fn load_fleet(target: &meridian_cp::client::Target, fleet: &meridian_proto::Fleet) -> anyhow::Result<()> {
    let body = serde_json::to_value(fleet)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match meridian_cp::client::call(target, http::Method::PUT, "/v1/fleet", Some(body.clone())).await {
            Ok(_) => return Ok(()),
            Err(meridian_cp::client::ClientError::Transport(e)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "control plane not up yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn cp_config_toml() -> String {
    format!(
        "# Written by `meridian-bench dev`; regenerated on every start.\n\
         data_dir = \"cp-data\"\n\n\
         [admin]\nlisten = \"{CP_ADMIN}\"\ncert = \"certs/cp.crt\"\nkey = \"certs/cp.key\"\n\
         [[admin.tokens]]\nname = \"dev\"\nsha256 = \"{}\"\n\n\
         [push]\nlisten = \"{CP_PUSH}\"\ncert = \"certs/cp.crt\"\nkey = \"certs/cp.key\"\nclient_ca = \"certs/ca.crt\"\n\n\
         # One edge: a provider is down for the fleet when that edge sees it down.\n\
         [fleet_health]\nmin_edges = 1\n\n\
         # /metrics, /healthz, /readyz for Prometheus (no authentication: loopback only).\n\
         [telemetry]\nlisten = \"{CP_TELEMETRY}\"\n",
        meridian_cp::config::hash_token(CP_TOKEN)
    )
}

fn edge_config() -> String {
    format!(
        "# Written by `meridian-bench dev`; regenerated on every start.\n\
         # HTTP/3 on UDP, the same address as HTTPS on TCP (advertised by Alt-Svc).\n\
         [listeners]\nhttp = \"{EDGE_HTTP}\"\nhttps = \"{EDGE_HTTPS}\"\nh3 = \"{EDGE_HTTPS}\"\nadmin = \"{EDGE_ADMIN}\"\n\n\
         [upstream]\nca_file = \"certs/ca.crt\"\n\n\
         [forwarding]\ntrusted_hops = [\"127.0.0.0/8\", \"::1\"]\n\n\
         [shutdown]\ndrain_timeout = \"5s\"\n\n\
         [tls]\ndefault_certificate = \"dev\"\n[[tls.certificates]]\nname = \"dev\"\n\
         server_names = [\"localhost\", \"*.demo.local\"]\ncert = \"certs/edge.crt\"\nkey = \"certs/edge.key\"\n\n\
         # Origins: tenant binding, then the residency header (loopback is trusted), then US.\n\
         [origin]\ndefault = \"US\"\n\n\
         # The fleet comes from the control plane; the last one it sent is kept in\n\
         # state_dir and used if the edge restarts while the control plane is away.\n\
         [control_plane]\naddress = \"{CP_PUSH}\"\nserver_name = \"localhost\"\nedge_id = \"{EDGE_ID}\"\n\
         ca_file = \"certs/ca.crt\"\ncert_file = \"certs/edge-client.crt\"\nkey_file = \"certs/edge-client.key\"\n\
         state_dir = \"edge-state\"\nreconnect_max = \"5s\"\n"
    )
}

/// The demo fleet, as an operator would keep it and `meridian-cp apply` it.
fn fleet_toml() -> String {
    let mut s = format!(
        "# Written by `meridian-bench dev`: the demo fleet, loaded into the control plane.\n\
         [[groups]]\nname = \"EU\"\nmembers = [{EU}]\n\n\
         # CN data stays in CN, EU data in EU member states, other data anywhere but CN.\n\
         [policy]\nunknown_origin = \"deny\"\n\
         [[policy.rules]]\nname = \"cn-in-cn\"\norigin = \"CN\"\nallow = [\"CN\"]\n\
         [[policy.rules]]\nname = \"eu-in-eu\"\norigin = \"group:EU\"\nallow = [\"group:EU\"]\n\
         [[policy.rules]]\nname = \"rest-not-cn\"\norigin = \"*\"\nallow = [\"*\"]\ndeny = [\"CN\"]\n\n\
         [[tenants]]\nid = \"demo-cn\"\nhome = \"CN\"\nbindings = [{{ host = \"cn.demo.local\" }}]\n\
         [[tenants]]\nid = \"demo-eu\"\nhome = \"DE\"\nbindings = [{{ host = \"eu.demo.local\" }}]\n\
         [[tenants]]\nid = \"demo-us\"\nhome = \"US\"\nbindings = [{{ host = \"us.demo.local\" }}]\n\n"
    );
    for p in &FLEET {
        s.push_str(&format!(
            "[[providers]]\nid = \"{}\"\njurisdiction = \"{}\"\nprotocol = \"{}\"\n[providers.endpoint]\naddress = \"{}\"\n",
            p.id, p.jurisdiction, p.protocol, p.addr
        ));
        if p.tls {
            s.push_str("scheme = \"https\"\nsni = \"store.demo.local\"\n");
        }
        s.push('\n');
    }
    s
}

fn print_banner(dir: &Path) {
    let ca = dir.join("certs/ca.crt");
    let ca = ca.display();
    println!(
        "\nMeridian dev deployment is up.\n\n\
         edge      http://{EDGE_HTTP}   https://{EDGE_HTTPS} (TCP) and HTTP/3 on UDP {EDGE_HTTPS}   admin http://{EDGE_ADMIN}\n\
         providers cn-sh-1 :9101 (40 ms), cn-bj-1 :9102 (60 ms, HTTP/2) in CN; de-fra-1 :9103 (5 ms),\n\
         \x20         de-ber-1 :9104 (12 ms, TLS) in DE; us-va-1 :9105 (25 ms), us-or-1 :9106 (45 ms, HTTP/2) in US\n\
         \x20         (one-way network delay, added on the path by relays)\n\
         tenants   cn.demo.local -> CN, eu.demo.local -> DE, us.demo.local -> US; policy: CN data stays in CN,\n\
         \x20         EU data in the EU, other data anywhere but CN\n\
         config    {}  (fleet by push from the control plane; {}/fleet.toml is what was applied)\n\n\
         Try (x-meridian-explain: 1 shows the routing decision; loopback is a trusted hop):\n\
         \x20 curl -si -H 'Host: cn.demo.local' -H 'x-meridian-explain: 1' -X PUT --data-binary 'hello' http://{EDGE_HTTP}/bucket/hello.txt\n\
         \x20 curl -si -H 'Host: cn.demo.local' -H 'x-meridian-explain: 1' http://{EDGE_HTTP}/bucket/hello.txt\n\
         \x20 curl -si -H 'Host: eu.demo.local' -H 'x-meridian-explain: 1' http://{EDGE_HTTP}/_sim/echo\n\
         \x20 curl -si -H 'x-meridian-residency: FR' -H 'x-meridian-explain: 1' http://{EDGE_HTTP}/_sim/echo\n\
         \x20 curl -si --http2 --cacert {ca} --resolve us.demo.local:8443:127.0.0.1 -H 'x-meridian-explain: 1' https://us.demo.local:8443/_sim/echo\n\
         \x20 curl -si http://{EDGE_ADMIN}/readyz\n\
         \x20 ./target/debug/meridian-bench load --h3 --ca {ca} --host us.demo.local --target {EDGE_HTTPS} --get /_sim/echo --duration 3\n\n\
         Control plane: API https://{CP_ADMIN} (token dev-token), push {CP_PUSH} (QUIC, HTTP/2 fallback):\n\
         \x20 export MERIDIAN_TOKEN=dev-token MERIDIAN_CA={ca}\n\
         \x20 ./target/debug/meridian-cp edge status\n\
         \x20 ./target/debug/meridian-cp dry-run CN --edge {EDGE_ID}\n\
         \x20 ./target/debug/meridian-cp drain de-fra-1     # the edge stops using it within a second\n\
         \x20 curl -s http://{EDGE_ADMIN}/statusz\n\n\
         Metrics (Prometheus text): http://{EDGE_ADMIN}/metrics (edge), http://{CP_TELEMETRY}/metrics (control plane);\n\
         \x20 deploy/prometheus/ has a scrape config, alert rules and a Grafana dashboard for them.\n\n\
         Every response names the provider that served it in x-sim-provider. Ctrl-C stops everything.",
        dir.join("edge.toml").display(),
        dir.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_configs_and_fleet_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("certs")).unwrap();
        for f in ["ca.crt", "edge.crt", "edge.key", "edge-client.crt", "edge-client.key"] {
            std::fs::write(dir.path().join("certs").join(f), "x").unwrap();
        }
        let cfg = meridian_edge::EdgeConfig::parse(&edge_config(), "edge.toml", dir.path()).unwrap();
        assert!(cfg.fleet.is_none(), "the dev edge is fed by push");
        assert_eq!(cfg.control_plane.unwrap().edge_id, EDGE_ID);
        assert_eq!(cfg.listeners.http, Some(EDGE_HTTP.parse().unwrap()));
        std::fs::write(dir.path().join("fleet.toml"), fleet_toml()).unwrap();
        let fleet = meridian_cp::client::read_fleet(&dir.path().join("fleet.toml")).unwrap();
        assert_eq!((fleet.providers.len(), fleet.tenants.len()), (6, 3));
        let cp = meridian_cp::config::CpConfig::parse(&cp_config_toml(), "cp.toml", dir.path()).unwrap();
        assert_eq!(cp.push.unwrap().listen, CP_PUSH.parse().unwrap());
    }
}
