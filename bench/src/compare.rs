//! `meridian-bench compare`: the edge against nginx and against going direct, same
//! upstream, same run, same machine.
//!
//! For each response size it measures closed-loop requests/s (wrk), latency at a
//! fixed request rate (open loop, coordinated-omission corrected), and the proxy
//! process's CPU-seconds per 10,000 requests during the fixed-rate phase. Results are
//! meant to be read as ratios between columns of one run: the machine is shared.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::load::{LoadSpec, fixed_rate};
use crate::procs::{Proc, sibling_binary, wait_http};

/// What to run.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Length of each closed-loop and each fixed-rate phase.
    pub duration: Duration,
    /// Fixed rate for 1 KiB responses (requests/s).
    pub rate_small: f64,
    /// Fixed rate for 1 MiB responses (requests/s).
    pub rate_large: f64,
    /// Connections used by wrk and by the fixed-rate generator.
    pub connections: usize,
    /// Also write the report here.
    pub out: Option<PathBuf>,
}

/// One measured cell.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// `direct`, `meridian` or `nginx`.
    pub target: String,
    /// `1 KiB` or `1 MiB`.
    pub size: String,
    /// Closed-loop requests per second.
    pub rps: f64,
    /// Fixed-rate p50, ms.
    pub p50: f64,
    /// Fixed-rate p99, ms.
    pub p99: f64,
    /// Fixed-rate p99.9, ms.
    pub p999: f64,
    /// Requests that failed during the fixed-rate phase.
    pub errors: u64,
    /// Proxy CPU-seconds per 10,000 requests (none for direct).
    pub cpu_per_10k: Option<f64>,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Runs the comparison and returns the report (markdown).
pub async fn run(opts: CompareOptions) -> anyhow::Result<String> {
    let nginx = which("nginx").context("nginx is required: apt-get install nginx-light (scripts/test installs it)")?;
    let wrk = which("wrk").context("wrk is required: apt-get install wrk (scripts/test installs it)")?;
    let work = tempfile_dir()?;

    let upstream = free_addr()?;
    let me = std::env::current_exe()?;
    let _upstream = Proc::spawn(
        "upstream",
        Command::new(&me).args(["upstream", "--addr", &upstream.to_string()]),
    )?;
    wait_http(upstream, "/_sim/delay?ms=0", 200, Duration::from_secs(20)).await?;
    put(upstream, "/obj-1k", vec![b'k'; 1024]).await?;
    put(upstream, "/obj-1m", vec![b'm'; 1 << 20]).await?;

    let (edge_addr, admin) = (free_addr()?, free_addr()?);
    let edge_cfg = work.join("edge.toml");
    std::fs::write(
        &edge_cfg,
        format!(
            "[listeners]\nhttp = \"{edge_addr}\"\nadmin = \"{admin}\"\n\n[limits]\nmax_connections = 4096\n\n\
             [log]\naccess = false\n\n\
             [[fleet.providers]]\nid = \"up\"\njurisdiction = \"US\"\nmax_connections = 512\n\
             [fleet.providers.endpoint]\naddress = \"{upstream}\"\n\n\
             [fleet.policy]\nunknown_origin = \"US\"\nrules = [{{ name = \"any\", origin = \"*\", allow = [\"*\"] }}]\n"
        ),
    )?;
    let edge_bin = sibling_binary("meridian-edge")?;
    let edge = Proc::spawn(
        "meridian-edge",
        Command::new(&edge_bin)
            .args(["run", "--config"])
            .arg(&edge_cfg)
            .env("MERIDIAN_LOG", "warn"),
    )?;
    wait_http(admin, "/readyz", 200, Duration::from_secs(20)).await?;

    let nginx_addr = free_addr()?;
    let nginx_conf = work.join("nginx.conf");
    std::fs::write(&nginx_conf, nginx_config(&work, nginx_addr, upstream))?;
    let nginx_proc = Proc::spawn(
        "nginx",
        Command::new(&nginx)
            .arg("-p")
            .arg(&work)
            .arg("-c")
            .arg(&nginx_conf)
            .arg("-e")
            .arg(work.join("error.log")),
    )?;
    wait_http(nginx_addr, "/obj-1k", 200, Duration::from_secs(20)).await?;

    let targets: [(&str, SocketAddr, Option<&Proc>); 3] = [
        ("direct", upstream, None),
        ("meridian", edge_addr, Some(&edge)),
        ("nginx", nginx_addr, Some(&nginx_proc)),
    ];
    let sizes = [
        ("1 KiB", "/obj-1k", opts.rate_small),
        ("1 MiB", "/obj-1m", opts.rate_large),
    ];
    let mut rows = Vec::new();
    for (size, path, rate) in sizes {
        for (name, addr, proc_) in targets {
            eprintln!("{size} via {name}: closed loop...");
            let rps = wrk_rps(&wrk, addr, path, opts.connections, opts.duration)?;
            eprintln!("{size} via {name}: fixed rate {rate}/s...");
            let cpu0 = proc_.map(Proc::cpu_seconds);
            let res = fixed_rate(&LoadSpec::fixed_rate_get(
                addr,
                path,
                rate,
                opts.duration,
                opts.connections,
            ))
            .await?;
            let cpu = match (proc_, cpu0) {
                (Some(p), Some(c0)) if res.ok > 0 => Some((p.cpu_seconds() - c0) / res.ok as f64 * 10_000.0),
                _ => None,
            };
            rows.push(Row {
                target: name.into(),
                size: size.into(),
                rps,
                p50: res.ms(0.50),
                p99: res.ms(0.99),
                p999: res.ms(0.999),
                errors: res.errors,
                cpu_per_10k: cpu,
            });
        }
    }
    drop(nginx_proc);
    drop(edge);
    let report = render(&rows, &opts);
    if let Some(out) = &opts.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(report)
}

fn nginx_config(work: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let w = work.display();
    // Same shape as the edge: keep-alive to the upstream, streaming (no buffering to
    // disk), no access log, one worker per core.
    format!(
        "daemon off;\nworker_processes auto;\npid {w}/nginx.pid;\nerror_log {w}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {w}/body;\n  proxy_temp_path {w}/proxy;\n\
         fastcgi_temp_path {w}/fastcgi;\n  uwsgi_temp_path {w}/uwsgi;\n  scgi_temp_path {w}/scgi;\n\
         upstream up {{ server {upstream}; keepalive 512; }}\n\
         server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://up;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n\
         proxy_request_buffering off;\n    }}\n  }}\n}}\n"
    )
}

async fn put(addr: SocketAddr, path: &str, data: Vec<u8>) -> anyhow::Result<()> {
    let mut send = crate::procs::h1_client(addr).await?;
    let req = http::Request::put(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::from(data)))?;
    let resp = send.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("PUT {path} answered {}", resp.status());
    }
    resp.into_body().collect().await?;
    Ok(())
}

fn wrk_rps(wrk: &Path, addr: SocketAddr, path: &str, connections: usize, d: Duration) -> anyhow::Result<f64> {
    let out = Command::new(wrk)
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{}s", d.as_secs().max(1)),
        ])
        .arg(format!("http://{addr}{path}"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:").map(|v| v.trim().parse::<f64>()))
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?
        .context("parsing wrk's Requests/sec")
}

fn which(name: &str) -> anyhow::Result<PathBuf> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
        "/sbin",
        "/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} not found")
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("meridian-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The report as markdown: one table, plus the ratios the targets are judged by.
pub fn render(rows: &[Row], opts: &CompareOptions) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Closed loop: wrk -t1 -c{c}, {d}s. Fixed rate: {rs}/s (1 KiB) and {rl}/s (1 MiB) for {d}s over {c} connections,\n\
         latency from intended send time (coordinated omission corrected). CPU: proxy process user+system seconds per\n\
         10,000 requests during the fixed-rate phase.\n",
        c = opts.connections,
        d = opts.duration.as_secs(),
        rs = opts.rate_small,
        rl = opts.rate_large
    );
    let _ = writeln!(
        s,
        "| size | target | req/s (closed) | p50 ms | p99 ms | p99.9 ms | errors | CPU-s / 10k req |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let cpu = r.cpu_per_10k.map_or("-".to_owned(), |c| format!("{c:.3}"));
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
            r.size, r.target, r.rps, r.p50, r.p99, r.p999, r.errors, cpu
        );
    }
    let _ = writeln!(s, "\nMeridian relative to nginx (same run):\n");
    let _ = writeln!(
        s,
        "| size | req/s ratio | p99 ratio (lower is better) | CPU/req ratio (lower is better) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for size in ["1 KiB", "1 MiB"] {
        let find = |t: &str| rows.iter().find(|r| r.size == size && r.target == t);
        if let (Some(m), Some(n)) = (find("meridian"), find("nginx")) {
            let cpu = match (m.cpu_per_10k, n.cpu_per_10k) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {size} | {:.2} | {:.2} | {cpu} |",
                m.rps / n.rps.max(1e-9),
                m.p99 / n.p99.max(1e-9)
            );
        }
    }
    s
}
