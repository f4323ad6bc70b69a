//! `meridian-bench train`: the workload a profile-guided build of the edge learns
//! from (`scripts/build-pgo`). It runs the given edge binary (built to write a
//! profile) over everything it serves in production: small and large GETs and
//! uploads, HTTP/1.1 in clear and over TLS, HTTP/2, HTTP/3, new connections and
//! kept-alive ones, two providers to choose between, and requests it must refuse.
//! Then it stops the edge with SIGTERM, so that the edge writes its profile as it
//! exits, and checks that it exited 0.
//!
//! The mix is production's shape, not one benchmark's: a build trained only on
//! `compare`'s 1 KiB GETs would lay out that path well and the rest badly. A phase
//! with errors fails the run: it would teach the build an error path as the common
//! one.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::load::{LoadSpec, Mode, Op, Proto, roots_from_pem, run, store_object};
use crate::procs::{free_addr, start_edge, write_edge_certs, write_edge_config};

/// What to run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The edge binary to drive.
    pub edge: PathBuf,
    /// Length of each load phase.
    pub duration: Duration,
}

/// Requests of each refused kind sent in the refusal phase.
const REFUSED_EACH: usize = 200;

/// Runs the workload; returns a summary (markdown), one line per phase.
pub async fn run_training(opts: TrainOptions) -> anyhow::Result<String> {
    let work = tempfile::tempdir()?;
    let dir = work.path();
    write_edge_certs(dir)?;

    let (_up_a, up_a) = crate::compare::spawn_upstream().await?;
    let (_up_b, up_b) = crate::compare::spawn_upstream().await?;
    for up in [up_a, up_b] {
        for (path, size) in [("/obj-1k", 1024), ("/obj-64k", 64 << 10), ("/obj-1m", 1 << 20)] {
            store_object(up, "bench.local", path, size).await?;
        }
    }

    let (http, tls, admin) = (free_addr()?, free_addr()?, free_addr()?);
    let edge_cfg = write_edge_config(
        dir,
        "edge.toml",
        &[("http", http), ("https", tls), ("h3", tls), ("admin", admin)],
        true,
        &[("us-a", up_a), ("us-b", up_b)],
        0,
    )?;
    let mut edge = start_edge("meridian-edge", &opts.edge, &edge_cfg, admin, None).await?;
    let roots = roots_from_pem(&dir.join("ca.crt"))?;

    let small = || vec![Op::get("/obj-1k", 1)];
    let mix = || {
        vec![
            Op::get("/obj-1k", 12),
            Op::get("/obj-64k", 4),
            Op::get("/obj-1m", 1),
            Op::put(4 << 10, 4),
            Op::put(256 << 10, 1),
        ]
    };
    let spec = |proto, over_tls: bool, mode, ops, connections| LoadSpec {
        target: if over_tls { tls } else { http },
        host: "bench.local".into(),
        mode,
        proto,
        duration: opts.duration,
        connections,
        ops,
        progress: false,
        tls: over_tls.then(|| roots.clone()),
    };
    let open = |rate| Mode::Open { rate };
    let phases = [
        (
            "HTTP/1.1, 1 KiB GETs",
            spec(Proto::H1, false, open(2000.0), small(), 32),
        ),
        ("HTTP/1.1, mix", spec(Proto::H1, false, open(400.0), mix(), 32)),
        (
            "HTTP/1.1, mix, closed loop",
            spec(Proto::H1, false, Mode::Closed, mix(), 16),
        ),
        ("HTTP/1.1 over TLS, mix", spec(Proto::H1, true, open(400.0), mix(), 32)),
        ("HTTP/2, 1 KiB GETs", spec(Proto::H2, true, open(1000.0), small(), 32)),
        ("HTTP/2, mix", spec(Proto::H2, true, open(400.0), mix(), 32)),
        ("HTTP/3, mix", spec(Proto::H3, true, open(400.0), mix(), 32)),
    ];
    let mut report = String::from("| phase | ok | errors | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|\n");
    for (label, spec) in phases {
        eprintln!("{label}...");
        let res = run(&spec).await.with_context(|| format!("phase {label}"))?;
        let _ = writeln!(
            report,
            "| {label} | {} | {} | {:.2} | {:.2} |",
            res.ok,
            res.errors,
            res.ms(0.5),
            res.ms(0.99)
        );
        ensure!(
            res.errors == 0 && res.ok > 0,
            "phase {label}: {} ok, {} errors",
            res.ok,
            res.errors
        );
    }

    eprintln!("refused requests...");
    let long_uri = format!("/{}", "u".repeat(16 << 10));
    let refused: [(&str, String, &str); 2] = [
        (
            "ambiguous framing",
            "POST /obj-1k HTTP/1.1\r\nHost: bench.local\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                .into(),
            "HTTP/1.1 400",
        ),
        (
            "request target too long",
            format!("GET {long_uri} HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n"),
            "HTTP/1.1 414",
        ),
    ];
    for (label, request, want) in &refused {
        for _ in 0..REFUSED_EACH {
            let status = one_exchange(http, request).await?;
            if !status.starts_with(want) {
                bail!("{label}: expected {want}, got {status:?}");
            }
        }
        let _ = writeln!(report, "| refused: {label} | {REFUSED_EACH} | 0 | - | - |");
    }

    // SIGTERM: the edge drains and exits, writing its profile on the way out.
    match edge.stop(Duration::from_secs(60))? {
        Some(0) => {}
        other => bail!("the edge exited with {other:?}, not 0: its profile may be missing"),
    }
    Ok(report)
}

/// Sends `request` on a new connection; returns the response's status line.
async fn one_exchange(addr: SocketAddr, request: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    // Both refusals end the connection, so reading to its end is bounded.
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .context("waiting for a refusal")??;
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or("").to_owned())
}
