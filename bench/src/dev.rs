//! `meridian-bench dev`: a complete local deployment on fixed loopback addresses:
//! simulated providers (in this process) and the real `meridian-edge` binary as a
//! child, with certificates from a throw-away CA.
//!
//! Fixed addresses so documentation and scripts can rely on them: edge HTTP
//! 127.0.0.1:8080, HTTPS 127.0.0.1:8443, admin 127.0.0.1:9901; providers on
//! 127.0.0.1:9101-9103. It must never listen beyond loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use meridian_sim::{SimConfig, SimProvider, Storage, TestCa};

use crate::procs::{Proc, sibling_binary, wait_http};

/// Edge plain HTTP address.
pub const EDGE_HTTP: &str = "127.0.0.1:8080";
/// Edge HTTPS address.
pub const EDGE_HTTPS: &str = "127.0.0.1:8443";
/// Edge admin address.
pub const EDGE_ADMIN: &str = "127.0.0.1:9901";

/// A provider of the demo fleet.
struct DemoProvider {
    id: &'static str,
    addr: &'static str,
    protocol: &'static str,
    tls: bool,
    host: &'static str,
}

const FLEET: [DemoProvider; 3] = [
    DemoProvider {
        id: "store-a",
        addr: "127.0.0.1:9101",
        protocol: "http1",
        tls: false,
        host: "a.demo.local",
    },
    DemoProvider {
        id: "store-b",
        addr: "127.0.0.1:9102",
        protocol: "http2",
        tls: false,
        host: "b.demo.local",
    },
    DemoProvider {
        id: "store-tls",
        addr: "127.0.0.1:9103",
        protocol: "http1",
        tls: true,
        host: "tls.demo.local",
    },
];

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
    std::fs::create_dir_all(dir.join("certs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let ca = TestCa::new("Meridian dev CA")?;
    let edge_leaf = ca.issue(&["localhost", "*.demo.local", "127.0.0.1"])?;
    let store_leaf = ca.issue(&["store.demo.local", "127.0.0.1"])?;
    write(&dir.join("certs/ca.crt"), &ca.cert_pem)?;
    write(&dir.join("certs/edge.crt"), &edge_leaf.cert_pem)?;
    write(&dir.join("certs/edge.key"), &edge_leaf.key_pem)?;

    let mut providers = Vec::new();
    for p in &FLEET {
        let storage = if opts.disk {
            Storage::Disk(dir.join("data").join(p.id))
        } else {
            Storage::Memory
        };
        let sim = SimProvider::start(SimConfig {
            name: p.id.into(),
            addr: p.addr.parse()?,
            storage,
            tls: p.tls.then(|| store_leaf.clone()),
        })
        .await
        .with_context(|| format!("starting simulated provider {} on {}", p.id, p.addr))?;
        providers.push(sim);
    }

    let config = dir.join("edge.toml");
    write(&config, &edge_config())?;
    let edge_bin = sibling_binary("meridian-edge")?;
    let mut edge = Proc::spawn(
        "meridian-edge",
        Command::new(&edge_bin)
            .arg("run")
            .arg("--config")
            .arg(&config),
    )?;
    let ready = tokio::select! {
        r = wait_http(EDGE_ADMIN.parse()?, "/readyz", 200, Duration::from_secs(30)) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = ready {
        let code = edge.stop(Duration::from_secs(5))?;
        anyhow::bail!("the edge did not become ready (exit code {code:?}): {e}");
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
    drop(providers);
    if let Some(status) = exited {
        anyhow::bail!("meridian-edge exited on its own ({status})");
    }
    eprintln!("edge exited with {code:?}; providers stopped");
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn edge_config() -> String {
    let mut s = format!(
        "# Written by `meridian-bench dev`; regenerated on every start.\n\
         [listeners]\nhttp = \"{EDGE_HTTP}\"\nhttps = \"{EDGE_HTTPS}\"\nadmin = \"{EDGE_ADMIN}\"\n\n\
         [upstream]\nca_file = \"certs/ca.crt\"\n\n\
         [forwarding]\ntrusted_hops = [\"127.0.0.0/8\", \"::1\"]\n\n\
         [shutdown]\ndrain_timeout = \"5s\"\n\n\
         [tls]\ndefault_certificate = \"dev\"\n[[tls.certificates]]\nname = \"dev\"\n\
         server_names = [\"localhost\", \"*.demo.local\"]\ncert = \"certs/edge.crt\"\nkey = \"certs/edge.key\"\n\n"
    );
    for p in &FLEET {
        s.push_str(&format!(
            "[[providers]]\nid = \"{}\"\nprotocol = \"{}\"\n[providers.endpoint]\naddress = \"{}\"\n",
            p.id, p.protocol, p.addr
        ));
        if p.tls {
            s.push_str("scheme = \"https\"\nsni = \"store.demo.local\"\n");
        }
        s.push('\n');
    }
    s.push_str("[routing]\ndefault_provider = \"store-a\"\n");
    for p in &FLEET {
        s.push_str(&format!(
            "[[routing.hosts]]\nhost = \"{}\"\nprovider = \"{}\"\n",
            p.host, p.id
        ));
    }
    s
}

fn print_banner(dir: &Path) {
    let ca = dir.join("certs/ca.crt");
    let ca = ca.display();
    println!(
        "\nMeridian dev deployment is up.\n\n\
         edge      http://{EDGE_HTTP}   https://{EDGE_HTTPS}   admin http://{EDGE_ADMIN}\n\
         providers store-a 127.0.0.1:9101 (HTTP/1.1)   store-b 127.0.0.1:9102 (HTTP/2)   store-tls 127.0.0.1:9103 (TLS)\n\
         config    {}\n\n\
         Try:\n\
         \x20 curl -si http://{EDGE_ADMIN}/readyz\n\
         \x20 curl -si -X PUT --data-binary 'hello, meridian' http://{EDGE_HTTP}/bucket/hello.txt\n\
         \x20 curl -si http://{EDGE_HTTP}/bucket/hello.txt\n\
         \x20 curl -si -H 'Range: bytes=0-4' http://{EDGE_HTTP}/bucket/hello.txt\n\
         \x20 curl -si -H 'Host: b.demo.local' http://{EDGE_HTTP}/_sim/echo        # routed to store-b over HTTP/2\n\
         \x20 curl -si --http2 --cacert {ca} --resolve tls.demo.local:8443:127.0.0.1 https://tls.demo.local:8443/_sim/echo\n\
         \x20 head -c 100M /dev/urandom > /tmp/big && curl -s -T /tmp/big http://{EDGE_HTTP}/bucket/big && curl -s http://{EDGE_HTTP}/bucket/big | cmp - /tmp/big && echo intact\n\n\
         Every response names the provider that served it in x-sim-provider. Ctrl-C stops everything.",
        dir.join("edge.toml").display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_edge_config_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("certs")).unwrap();
        for f in ["ca.crt", "edge.crt", "edge.key"] {
            std::fs::write(dir.path().join("certs").join(f), "x").unwrap();
        }
        let cfg =
            meridian_edge::EdgeConfig::parse(&edge_config(), "edge.toml", dir.path()).unwrap();
        assert_eq!(cfg.providers.len(), 3);
        assert_eq!(cfg.routing.hosts.len(), 3);
        assert_eq!(cfg.listeners.http, Some(EDGE_HTTP.parse().unwrap()));
    }
}
