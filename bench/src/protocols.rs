//! `meridian-bench protocols`: HTTP/3 against HTTP/2 (over TLS) through the same
//! edge, same upstream, same run: closed-loop requests/s, latency at a fixed rate,
//! and the edge's CPU-seconds per 10,000 requests during the fixed-rate phase.
//!
//! Read the results as ratios between the two rows of one run: the machine is shared.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::load::{LoadResult, LoadSpec, Mode, Op, Proto, roots_from_pem, run, store_object};
use crate::procs::{cpu_during, free_addr, sibling_binary, start_edge, write_edge_certs, write_edge_config};

/// What to run.
#[derive(Debug, Clone)]
pub struct ProtocolOptions {
    /// Length of each closed-loop and each fixed-rate phase.
    pub duration: Duration,
    /// Fixed rate (requests/s) for 1 KiB responses.
    pub rate: f64,
    /// Concurrent streams in flight.
    pub streams: usize,
    /// Also write the report here.
    pub out: Option<PathBuf>,
}

/// One protocol's figures for one response size.
#[derive(Debug, Clone)]
pub struct ProtocolRow {
    /// `HTTP/2` or `HTTP/3`.
    pub proto: &'static str,
    /// `1 KiB` or `1 MiB`.
    pub size: &'static str,
    /// Closed-loop requests/s.
    pub rps: f64,
    /// Fixed-rate p50 and p99, ms (1 KiB only).
    pub p50: Option<f64>,
    /// Fixed-rate p99, ms.
    pub p99: Option<f64>,
    /// Failed requests over both phases.
    pub errors: u64,
    /// Edge CPU-seconds per 10,000 requests in the fixed-rate phase.
    pub cpu_per_10k: Option<f64>,
}

/// Runs the comparison and returns the report (markdown).
pub async fn run_protocols(opts: ProtocolOptions) -> anyhow::Result<String> {
    let work = tempfile::tempdir()?;
    let dir = work.path();
    write_edge_certs(dir)?;

    let (_upstream, upstream) = crate::compare::spawn_upstream().await?;
    store_object(upstream, "bench.local", "/obj-1k", 1024).await?;
    store_object(upstream, "bench.local", "/obj-1m", 1 << 20).await?;

    // HTTPS on TCP and HTTP/3 on UDP, the same port number (as Alt-Svc advertises).
    let (tls_addr, admin) = (free_addr()?, free_addr()?);
    let edge_cfg = write_edge_config(
        dir,
        "edge.toml",
        &[("https", tls_addr), ("h3", tls_addr), ("admin", admin)],
        true,
        &[("up", upstream)],
        0,
    )?;
    let edge = start_edge(
        "meridian-edge",
        &sibling_binary("meridian-edge")?,
        &edge_cfg,
        admin,
        None,
    )
    .await?;
    let roots = roots_from_pem(&dir.join("ca.crt"))?;

    let mut rows = Vec::new();
    for (size, path) in [("1 KiB", "/obj-1k"), ("1 MiB", "/obj-1m")] {
        for (name, proto) in [("HTTP/2", Proto::H2), ("HTTP/3", Proto::H3)] {
            let spec = |mode| LoadSpec {
                target: tls_addr,
                host: "bench.local".into(),
                mode,
                proto,
                duration: opts.duration,
                connections: opts.streams,
                ops: vec![Op::get(path, 1)],
                progress: false,
                tls: Some(roots.clone()),
            };
            eprintln!("{size} over {name}: closed loop...");
            let closed = run(&spec(Mode::Closed)).await?;
            let (fixed, cpu) = if size == "1 KiB" {
                eprintln!("{size} over {name}: fixed rate {}/s...", opts.rate);
                let (r, cpu) = cpu_during(Some(&edge), run(&spec(Mode::Open { rate: opts.rate }))).await?;
                let cpu = cpu.filter(|_| r.ok > 0).map(|c| c / r.ok as f64 * 10_000.0);
                (Some(r), cpu)
            } else {
                (None, None)
            };
            rows.push(row(name, size, &closed, fixed.as_ref(), cpu));
        }
    }
    drop(edge);
    let report = render(&rows, &opts);
    if let Some(out) = &opts.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(report)
}

fn row(
    proto: &'static str,
    size: &'static str,
    closed: &LoadResult,
    fixed: Option<&LoadResult>,
    cpu: Option<f64>,
) -> ProtocolRow {
    ProtocolRow {
        proto,
        size,
        rps: closed.rps(),
        p50: fixed.map(|f| f.ms(0.5)),
        p99: fixed.map(|f| f.ms(0.99)),
        errors: closed.errors + fixed.map_or(0, |f| f.errors),
        cpu_per_10k: cpu,
    }
}

/// The markdown report: the table, then HTTP/3 relative to HTTP/2.
pub fn render(rows: &[ProtocolRow], opts: &ProtocolOptions) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "HTTP/3 and HTTP/2 (TLS 1.3) through one edge to one upstream. Closed loop: {} streams in flight for {} s \
         over a few connections. Fixed rate: {}/s for {} s, latency from intended send time (coordinated omission \
         corrected). CPU: edge user+system seconds per 10,000 requests during the fixed-rate phase.\n",
        opts.streams,
        opts.duration.as_secs(),
        opts.rate,
        opts.duration.as_secs()
    );
    let _ = writeln!(
        s,
        "| size | protocol | req/s (closed) | p50 ms | p99 ms | errors | edge CPU-s / 10k req |\n|---|---|---:|---:|---:|---:|---:|"
    );
    let cell = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |x| format!("{x:.digits$}"));
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} | {} |",
            r.size,
            r.proto,
            r.rps,
            cell(r.p50, 2),
            cell(r.p99, 2),
            r.errors,
            cell(r.cpu_per_10k, 3)
        );
    }
    let _ = writeln!(s, "\nHTTP/3 relative to HTTP/2 (same run):\n");
    let _ = writeln!(
        s,
        "| size | req/s ratio | p99 ratio (lower is better) | CPU/req ratio (lower is better) |\n|---|---:|---:|---:|"
    );
    for size in ["1 KiB", "1 MiB"] {
        let find = |p: &str| rows.iter().find(|r| r.size == size && r.proto == p);
        if let (Some(h2), Some(h3)) = (find("HTTP/2"), find("HTTP/3")) {
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                s,
                "| {size} | {} | {} | {} |",
                ratio(Some(h3.rps), Some(h2.rps)),
                ratio(h3.p99, h2.p99),
                ratio(h3.cpu_per_10k, h2.cpu_per_10k)
            );
        }
    }
    s
}
