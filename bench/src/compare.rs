//! `meridian-bench compare`: the edge (one build or several, e.g. plain and
//! profile-guided) against nginx, HAProxy and going direct, same upstream, same run,
//! same machine.
//!
//! For each response size, in rounds, it measures closed-loop requests/s (wrk), latency
//! at a fixed request rate (open loop, coordinated-omission corrected), and the proxy
//! process's CPU-seconds per 10,000 requests in both phases; it writes a markdown
//! table and, with `--out`, one SVG latency-distribution plot per size. Results are
//! meant to be read as ratios between columns of one run: the machine is shared, so
//! each ratio also comes round by round with a 95 % interval,
//! and `--pin` can keep the proxies on a CPU of their own. nginx, HAProxy and wrk are
//! installed from Debian's packages when missing.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

use crate::load::{LoadSpec, fixed_rate};
use crate::procs::{
    Proc, command_on, cpu_during, cpus_allowed, cpus_of_this_process, ensure_installed, free_addr, pin_this_process,
    sibling_binary, start_edge, wait_http, write_edge_config,
};

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
    /// Rounds per size, each running every target once closed loop and then once at
    /// the fixed rate.
    pub rounds: usize,
    /// The response sizes to measure, in this order.
    pub sizes: Vec<Size>,
    /// Edge builds to measure, by name (e.g. a plain and a profile-guided build, side
    /// by side in one run); empty: `meridian`, the `meridian-edge` built beside this
    /// binary.
    pub edges: Vec<(String, PathBuf)>,
    /// Also write the report here.
    pub out: Option<PathBuf>,
    /// Give the proxies the first CPU this process may use (CPU 0 on most machines)
    /// to themselves, one worker each, and run the load generator, the provider and
    /// wrk on the other CPUs (as a deployment keeps the provider and the clients off
    /// the proxy's cores); otherwise everything shares every CPU and each proxy runs
    /// one worker per CPU.
    pub pin: bool,
}

/// A response size `compare` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    /// 1 KiB responses, at `rate_small`: the proxies' per-request work.
    #[value(name = "1k")]
    Small,
    /// 1 MiB responses, at `rate_large`: moving bytes.
    #[value(name = "1m")]
    Large,
}

impl Size {
    /// As the report's rows name it.
    pub fn label(self) -> &'static str {
        match self {
            Size::Small => "1 KiB",
            Size::Large => "1 MiB",
        }
    }

    /// The object fetched.
    fn path(self) -> &'static str {
        match self {
            Size::Small => "/obj-1k",
            Size::Large => "/obj-1m",
        }
    }

    /// The plot file's tag (`REPORT.1k.svg`).
    fn tag(self) -> &'static str {
        match self {
            Size::Small => "1k",
            Size::Large => "1m",
        }
    }

    /// The fixed rate `opts` sets for this size.
    fn rate(self, opts: &CompareOptions) -> f64 {
        match self {
            Size::Small => opts.rate_small,
            Size::Large => opts.rate_large,
        }
    }
}

/// One measured cell.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// `direct`, an edge build's name (`meridian` unless `--edge` names others),
    /// `nginx` or `haproxy`.
    pub target: String,
    /// `1 KiB` or `1 MiB`.
    pub size: String,
    /// Closed-loop requests per second, the mean over the rounds.
    pub rps: f64,
    /// The same, round by round.
    pub rps_rounds: Vec<f64>,
    /// Proxy CPU-seconds per 10,000 requests in the closed-loop phases, over all
    /// rounds (none for direct): the proxy's cost per request under full load, where
    /// requests share its wake-ups, beside the fixed rate's, where each pays for its own.
    pub closed_cpu_per_10k: Option<f64>,
    /// The same, round by round.
    pub closed_cpu_rounds: Vec<f64>,
    /// Fixed-rate p50, ms.
    pub p50: f64,
    /// Fixed-rate p99, ms.
    pub p99: f64,
    /// Fixed-rate p99.9, ms.
    pub p999: f64,
    /// Requests that failed, in either phase (closed loop: what wrk counts as non-2xx
    /// or 3xx answers and socket errors), so that a proxy cannot look fast by failing.
    pub errors: u64,
    /// Proxy CPU-seconds per 10,000 requests in the fixed-rate phases, over all
    /// rounds (none for direct).
    pub cpu_per_10k: Option<f64>,
    /// The same, round by round.
    pub cpu_rounds: Vec<f64>,
    /// Fixed-rate p99 (ms) round by round.
    pub p99_rounds: Vec<f64>,
    /// Fixed-rate latency quantiles (quantile, ms), for the plots.
    pub distribution: Vec<(f64, f64)>,
}

/// Quantiles plotted.
const PLOTTED: [f64; 10] = [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0];

/// Runs the comparison and returns the report (markdown).
pub async fn run(opts: CompareOptions) -> anyhow::Result<String> {
    if opts.sizes.is_empty() {
        bail!("--sizes: name at least one of 1k, 1m");
    }
    if let Some(dup) = opts
        .sizes
        .iter()
        .enumerate()
        .find_map(|(i, s)| opts.sizes[..i].contains(s).then_some(s))
    {
        bail!("--sizes names {} twice", dup.tag());
    }
    let nginx = ensure_installed("nginx", "nginx-light")?;
    let wrk = ensure_installed("wrk", "wrk")?;
    let haproxy = ensure_installed("haproxy", "haproxy")?;
    let work = tempfile_dir()?;
    // Before anything starts, so the provider and wrk inherit the other CPUs.
    let proxy_cpu = if opts.pin {
        let allowed = cpus_of_this_process()?;
        let [first, rest @ ..] = allowed.as_slice() else {
            bail!("--pin: this process may run on no CPU");
        };
        if rest.is_empty() {
            bail!(
                "--pin needs at least two CPUs (one for the proxies, one for the rest); this process may use only CPU {first}"
            );
        }
        pin_this_process(rest)?;
        Some(first.to_string())
    } else {
        None
    };
    let proxy_cpus = proxy_cpu.as_deref();
    let workers = if opts.pin { 1 } else { 0 };

    let (_upstream, upstream) = spawn_upstream().await?;
    put(upstream, "/obj-1k", vec![b'k'; 1024]).await?;
    put(upstream, "/obj-1m", vec![b'm'; 1 << 20]).await?;

    let edge_bins = match opts.edges.as_slice() {
        [] => vec![("meridian".to_owned(), sibling_binary("meridian-edge")?)],
        given => given.to_vec(),
    };
    let mut names = BTreeSet::new();
    if let Some((dup, _)) = edge_bins.iter().find(|(name, _)| !names.insert(name.as_str())) {
        bail!("two edges named `{dup}`: each needs its own name for its rows");
    }
    let mut edges = Vec::new();
    for (name, bin) in &edge_bins {
        edges.push((
            name.as_str(),
            spawn_edge(&work, name, bin, upstream, proxy_cpus, workers).await?,
        ));
    }

    let nginx_addr = free_addr()?;
    let nginx_conf = work.join("nginx.conf");
    std::fs::write(&nginx_conf, nginx_config(&work, nginx_addr, upstream, workers))?;
    let nginx_proc = Proc::spawn(
        "nginx",
        command_on(&nginx, proxy_cpus)
            .arg("-p")
            .arg(&work)
            .arg("-c")
            .arg(&nginx_conf)
            .arg("-e")
            .arg(work.join("error.log")),
    )?;
    wait_http(nginx_addr, "/obj-1k", 200, Duration::from_secs(20)).await?;

    let haproxy_addr = free_addr()?;
    let haproxy_cfg = work.join("haproxy.cfg");
    std::fs::write(&haproxy_cfg, haproxy_config(haproxy_addr, upstream, workers))?;
    let haproxy_proc = Proc::spawn(
        "haproxy",
        command_on(&haproxy, proxy_cpus).arg("-db").arg("-f").arg(&haproxy_cfg),
    )?;
    wait_http(haproxy_addr, "/obj-1k", 200, Duration::from_secs(20)).await?;

    // Where each process may run, read back from the kernel rather than assumed.
    let mut placement = vec![(
        "load generator, provider, wrk".to_owned(),
        cpus_allowed(std::process::id()),
    )];
    for (name, e) in &edges {
        placement.push(((*name).to_owned(), cpus_allowed(e.proc_.pid().as_raw() as u32)));
    }
    for (name, p) in [("nginx", &nginx_proc), ("haproxy", &haproxy_proc)] {
        placement.push((name.to_owned(), cpus_allowed(p.pid().as_raw() as u32)));
    }

    // Before any load: what each proxy adds to a request and a response, so the CPU
    // columns are seen to compare the same job.
    let direct = fields_seen(upstream).await?;
    let mut targets: Vec<(&str, SocketAddr, Option<&Proc>)> = vec![("direct", upstream, None)];
    targets.extend(edges.iter().map(|(name, e)| (*name, e.addr, Some(&e.proc_))));
    targets.push(("nginx", nginx_addr, Some(&nginx_proc)));
    targets.push(("haproxy", haproxy_addr, Some(&haproxy_proc)));
    let mut work = Vec::new();
    for &(name, addr, _) in &targets[1..] {
        work.push((name, fields_seen(addr).await?.added_to(&direct)));
    }
    let mut rows = Vec::new();
    for &sz in &opts.sizes {
        let (size, path, rate) = (sz.label(), sz.path(), sz.rate(&opts));
        let mut cells: Vec<Cell> = targets.iter().map(|&(name, _, _)| Cell::new(name)).collect();
        for round in 0..opts.rounds.max(1) {
            let progress = |name: &str, phase: &str| {
                eprintln!("{size} via {name}: {phase}, round {} of {}...", round + 1, opts.rounds);
            };
            // Rotated, so no target is always first or always last in a phase.
            for i in round_order(round, targets.len()) {
                let (name, addr, proc_) = targets[i];
                progress(name, "closed loop");
                let (closed, cpu) = cpu_during(proc_, async {
                    wrk_closed(&wrk, addr, path, opts.connections, opts.duration)
                })
                .await?;
                cells[i].add_closed(closed, cpu);
            }
            for i in round_order(round, targets.len()) {
                let (name, addr, proc_) = targets[i];
                progress(name, &format!("fixed rate {rate}/s"));
                let spec = LoadSpec::fixed_rate_get(addr, path, rate, opts.duration, opts.connections);
                let (res, cpu) = cpu_during(proc_, fixed_rate(&spec)).await?;
                cells[i].add(res, cpu)?;
            }
        }
        rows.extend(cells.into_iter().map(|c| c.row(size)));
    }
    drop(targets);
    drop(haproxy_proc);
    drop(nginx_proc);
    let builds: Vec<(&str, String)> = edges.iter().map(|(name, e)| (*name, e.build.clone())).collect();
    drop(edges);
    let mut report = render(&rows, &builds, &placement, &work, &opts);
    if let Some(out) = &opts.out {
        for sz in &opts.sizes {
            let (size, tag) = (sz.label(), sz.tag());
            let svg_path = out.with_extension(format!("{tag}.svg"));
            let title = format!("Latency at a fixed rate, {size} responses (open loop, CO-corrected)");
            std::fs::write(&svg_path, plot(&title, &rows, size))
                .with_context(|| format!("writing {}", svg_path.display()))?;
            if let Some(name) = svg_path.file_name() {
                let _ = writeln!(report, "\n![{title}]({})", name.to_string_lossy());
            }
        }
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(report)
}

/// The targets' order in each phase of round `round`: rotated by one per round, so
/// over `n` rounds each of `n` targets runs once in every position (a target that
/// runs right after another, or first after a pause, is not always the same one).
fn round_order(round: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (k + round) % n)
}

/// One target at one size, accumulated over the rounds.
#[derive(Default)]
struct Cell {
    target: String,
    rps_rounds: Vec<f64>,
    errors: u64,
    latency_us: Option<hdrhistogram::Histogram<u64>>,
    p99_rounds: Vec<f64>,
    /// The proxy's CPU in the closed-loop phases.
    closed_cpu: CpuTally,
    /// The proxy's CPU in the fixed-rate phases.
    fixed_cpu: CpuTally,
}

/// A proxy's CPU over the rounds of one phase, per 10,000 requests.
#[derive(Default)]
struct CpuTally {
    seconds: Option<f64>,
    requests: u64,
    rounds: Vec<f64>,
}

impl CpuTally {
    /// A round: `seconds` of CPU (none for direct) over `requests`.
    fn add(&mut self, seconds: Option<f64>, requests: u64) {
        self.requests += requests;
        if let Some(c) = seconds {
            *self.seconds.get_or_insert(0.0) += c;
            if requests > 0 {
                self.rounds.push(c / requests as f64 * 10_000.0);
            }
        }
    }

    /// Over all rounds.
    fn per_10k(&self) -> Option<f64> {
        self.seconds
            .filter(|_| self.requests > 0)
            .map(|c| c / self.requests as f64 * 10_000.0)
    }
}

impl Cell {
    fn new(target: &str) -> Self {
        Cell {
            target: target.to_owned(),
            ..Cell::default()
        }
    }

    fn add_closed(&mut self, closed: Closed, cpu_seconds: Option<f64>) {
        self.rps_rounds.push(closed.rps);
        self.errors += closed.errors;
        self.closed_cpu.add(cpu_seconds, closed.requests);
    }

    fn add(&mut self, res: crate::load::LoadResult, cpu_seconds: Option<f64>) -> anyhow::Result<()> {
        self.errors += res.errors;
        self.fixed_cpu.add(cpu_seconds, res.ok);
        self.p99_rounds
            .push(res.latency_us.value_at_quantile(0.99) as f64 / 1000.0);
        match &mut self.latency_us {
            Some(h) => h.add(&res.latency_us).context("merging latency histograms")?,
            None => self.latency_us = Some(res.latency_us),
        }
        Ok(())
    }

    fn row(self, size: &str) -> Row {
        let ms = |q: f64| {
            self.latency_us
                .as_ref()
                .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        Row {
            size: size.into(),
            rps: self.rps_rounds.iter().sum::<f64>() / self.rps_rounds.len().max(1) as f64,
            closed_cpu_per_10k: self.closed_cpu.per_10k(),
            p50: ms(0.50),
            p99: ms(0.99),
            p999: ms(0.999),
            errors: self.errors,
            cpu_per_10k: self.fixed_cpu.per_10k(),
            distribution: PLOTTED.iter().map(|&q| (q, ms(q))).collect(),
            target: self.target,
            rps_rounds: self.rps_rounds,
            closed_cpu_rounds: self.closed_cpu.rounds,
            cpu_rounds: self.fixed_cpu.rounds,
            p99_rounds: self.p99_rounds,
        }
    }
}

/// An edge under comparison.
struct RunningEdge {
    proc_: Proc,
    addr: SocketAddr,
    /// The binary and what its `--version` says, for the report.
    build: String,
}

/// Starts the edge binary `bin` as `name`, in front of `upstream`, with the
/// configuration every edge in the comparison gets; returns once it is ready.
async fn spawn_edge(
    work: &Path,
    name: &str,
    bin: &Path,
    upstream: SocketAddr,
    cpus: Option<&str>,
    workers: u32,
) -> anyhow::Result<RunningEdge> {
    let version = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    let build = format!(
        "`{}` ({})",
        bin.display(),
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let (addr, admin) = (free_addr()?, free_addr()?);
    let cfg = write_edge_config(
        work,
        &format!("edge-{name}.toml"),
        &[("http", addr), ("admin", admin)],
        false,
        &[("up", upstream)],
        workers,
    )?;
    let proc_ = start_edge(name, bin, &cfg, admin, cpus).await?;
    Ok(RunningEdge { proc_, addr, build })
}

/// A simulated provider as its own process (`meridian-bench upstream`) on a free
/// loopback port, answering once this returns.
pub(crate) async fn spawn_upstream() -> anyhow::Result<(Proc, SocketAddr)> {
    let addr = free_addr()?;
    let proc_ = Proc::spawn(
        "upstream",
        Command::new(std::env::current_exe()?).args(["upstream", "--addr", &addr.to_string()]),
    )?;
    wait_http(addr, "/_sim/delay?ms=0", 200, Duration::from_secs(20)).await?;
    Ok((proc_, addr))
}

/// nginx's configuration; `workers` 0 means one per core.
fn nginx_config(work: &Path, listen: SocketAddr, upstream: SocketAddr, workers: u32) -> String {
    let w = work.display();
    let workers = match workers {
        0 => "auto".to_owned(),
        n => n.to_string(),
    };
    // Same shape and the same header work as the edge: keep-alive to the upstream,
    // streaming (no buffering to disk), no access log, one worker per core; the
    // client's `Host` passed on, the forwarding trail replaced (an untrusted client)
    // and `Via` added both ways.
    format!(
        "daemon off;\nworker_processes {workers};\npid {w}/nginx.pid;\nerror_log {w}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {w}/body;\n  proxy_temp_path {w}/proxy;\n\
         fastcgi_temp_path {w}/fastcgi;\n  uwsgi_temp_path {w}/uwsgi;\n  scgi_temp_path {w}/scgi;\n\
         upstream up {{ server {upstream}; keepalive 512; }}\n\
         server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://up;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n\
         proxy_request_buffering off;\n      proxy_set_header Host $http_host;\n\
         proxy_set_header X-Forwarded-For $remote_addr;\n      proxy_set_header X-Forwarded-Proto $scheme;\n\
         proxy_set_header Forwarded \"for=$remote_addr;proto=$scheme\";\n\
         proxy_set_header Via \"1.1 nginx\";\n      add_header Via \"1.1 nginx\" always;\n    }}\n  }}\n}}\n"
    )
}

/// HAProxy's configuration; `workers` 0 means one thread per core.
fn haproxy_config(listen: SocketAddr, upstream: SocketAddr, workers: u32) -> String {
    // Same shape and header work as the edge and nginx: keep-alive and connection
    // reuse to the upstream, one thread per core, no logging, the forwarding trail
    // replaced and `Via` added both ways.
    format!(
        "global\n  maxconn 8192\n  nbthread {threads}\n\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         option http-keep-alive\n  http-reuse always\n\n\
         frontend f\n  bind {listen}\n  default_backend b\n\
         \x20 http-request set-header X-Forwarded-For %[src]\n\
         \x20 http-request set-header X-Forwarded-Proto http\n\
         \x20 http-request set-header Forwarded \"for=%[src];proto=http\"\n\
         \x20 http-request add-header Via \"1.1 haproxy\"\n\
         \x20 http-response add-header Via \"1.1 haproxy\"\n\n\
         backend b\n  server up {upstream} maxconn 512\n",
        threads = match workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        }
    )
}

/// A latency-distribution plot: latency (ms, log scale) by quantile ("nines", log
/// scale), one line per target.
pub fn plot(title: &str, rows: &[Row], size: &str) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 420.0, 70.0, 150.0, 40.0, 50.0);
    let series: Vec<&Row> = rows.iter().filter(|r| r.size == size).collect();
    let nines = |q: f64| -> f64 { (1.0 / (1.0 - q.min(0.99999))).log10() };
    let x_max = nines(1.0);
    let values = series
        .iter()
        .flat_map(|r| r.distribution.iter().map(|d| d.1.max(0.001)));
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo > hi { (0.01, 1.0) } else { (lo, hi) };
    let (y_lo, y_hi) = (lo.log10().floor(), hi.log10().ceil().max(lo.log10().floor() + 1.0));
    let px = |q: f64| left + nines(q) / x_max * (w - left - right);
    let py = |ms: f64| top + (1.0 - (ms.max(0.001).log10() - y_lo) / (y_hi - y_lo)) * (h - top - bottom);
    let colours = ["#555555", "#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\">{title}</text>\n"
    );
    let mut decade = y_lo;
    while decade <= y_hi {
        let ms = 10f64.powf(decade);
        let y = py(ms);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#dddddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{ms} ms</text>",
            w - right,
            left - 6.0,
            y + 4.0
        );
        decade += 1.0;
    }
    for (q, label) in [
        (0.5, "p50"),
        (0.9, "p90"),
        (0.99, "p99"),
        (0.999, "p99.9"),
        (0.9999, "p99.99"),
        (1.0, "max"),
    ] {
        let x = px(q);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#dddddd\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            h - bottom,
            h - bottom + 18.0
        );
    }
    for (i, r) in series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let points: Vec<String> = r
            .distribution
            .iter()
            .map(|&(q, ms)| format!("{:.1},{:.1}", px(q), py(ms)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>",
            points.join(" "),
            w - right + 12.0,
            top + 18.0 * (i as f64 + 1.0),
            r.target
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Header field names seen on one exchange: the request as the upstream received it
/// (`/_sim/echo` reports it) and the response as the client received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    /// Fields of the request at the upstream.
    pub request: BTreeSet<String>,
    /// Fields of the response at the client.
    pub response: BTreeSet<String>,
}

impl Fields {
    /// The fields present here and not in `direct`.
    pub fn added_to(&self, direct: &Fields) -> Fields {
        Fields {
            request: self.request.difference(&direct.request).cloned().collect(),
            response: self.response.difference(&direct.response).cloned().collect(),
        }
    }
}

async fn fields_seen(addr: SocketAddr) -> anyhow::Result<Fields> {
    let mut send = crate::procs::h1_client(addr).await?;
    let req = http::Request::get("/_sim/echo")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    let response = resp.headers().keys().map(|k| k.as_str().to_owned()).collect();
    let body = resp.into_body().collect().await?.to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body).context("parsing /_sim/echo")?;
    let request = doc["headers"]
        .as_array()
        .context("/_sim/echo has no headers")?
        .iter()
        .filter_map(|pair| pair[0].as_str().map(str::to_owned))
        .collect();
    Ok(Fields { request, response })
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

/// What one closed-loop `wrk` phase did.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Closed {
    /// Requests per second, as wrk reports it.
    rps: f64,
    /// Requests completed.
    requests: u64,
    /// Answers other than 2xx and 3xx, and connect, read, write and timeout errors.
    errors: u64,
}

fn wrk_closed(wrk: &Path, addr: SocketAddr, path: &str, connections: usize, d: Duration) -> anyhow::Result<Closed> {
    let out = Command::new(wrk)
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{}s", d.as_secs().max(1)),
        ])
        .arg(format!("http://{addr}{path}"))
        .output()
        .context("running wrk")?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// Reads `N requests in Ts, ...` and `Requests/sec: R` from wrk's report.
fn parse_wrk(text: &str) -> anyhow::Result<Closed> {
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:").map(|v| v.trim().parse::<f64>()))
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?
        .context("parsing wrk's Requests/sec")?;
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.parse::<u64>()))
        .with_context(|| format!("no request count in wrk output:\n{text}"))?
        .context("parsing wrk's request count")?;
    // Both lines appear only when there was such an error.
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>().context("parsing wrk's non-2xx count")?;
        } else if let Some(list) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 2, write 0, timeout 1`
            for kind in list.split(',') {
                let n = kind.split_whitespace().nth(1).unwrap_or_default();
                errors += n
                    .parse::<u64>()
                    .with_context(|| format!("parsing wrk's socket errors: {line}"))?;
            }
        }
    }
    Ok(Closed { rps, requests, errors })
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("meridian-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The report as markdown: one table, plus the ratios the targets are judged by.
/// `builds` names each edge measured and says which binary it was.
/// `placement` lists the CPUs each process may run on.
pub fn render(
    rows: &[Row],
    builds: &[(&str, String)],
    placement: &[(String, String)],
    work: &[(&str, Fields)],
    opts: &CompareOptions,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Edge builds measured:\n");
    for (name, build) in builds {
        let _ = writeln!(s, "- {name}: {build}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{}\n",
        if opts.pin {
            "Pinned (`--pin`): the proxies have one CPU to themselves, one worker each; the load generator, the \
             provider and wrk run on the other CPUs. CPUs each process may run on:"
        } else {
            "Not pinned: every process may run on every CPU, and each proxy runs one worker per CPU. CPUs each \
             process may run on:"
        }
    );
    for (who, cpus) in placement {
        let _ = writeln!(s, "- {who}: {cpus}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{n} round{plural}; each runs every target once closed loop (wrk -t1 -c{c}, {d}s) and then once at a fixed rate\n\
         ({rates} over {c} connections, {d}s), each phase in a rotated order. Latency from intended send time\n\
         (coordinated omission corrected), over all rounds. CPU: proxy process user+system seconds per 10,000\n\
         requests, over all rounds: at the fixed rate, where each request pays for waking the proxy, and closed\n\
         loop, where requests share its wake-ups. req/s (closed): the mean over the rounds.\n",
        c = opts.connections,
        d = opts.duration.as_secs(),
        n = opts.rounds,
        plural = if opts.rounds == 1 { "" } else { "s" },
        rates = opts
            .sizes
            .iter()
            .map(|sz| format!("{}/s ({})", sz.rate(opts), sz.label()))
            .collect::<Vec<_>>()
            .join(" and "),
    );
    let _ = writeln!(
        s,
        "Header work: the fields each proxy adds, against going direct (the same job for all three):\n"
    );
    let _ = writeln!(s, "| target | added to the request | added to the response |");
    let _ = writeln!(s, "|---|---|---|");
    for (name, added) in work {
        let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
        let _ = writeln!(s, "| {name} | {} | {} |", list(&added.request), list(&added.response));
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| size | target | req/s (closed) | p50 ms | p99 ms | p99.9 ms | errors | CPU-s / 10k req | CPU-s / 10k req (closed) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let figure = |c: Option<f64>| c.map_or("-".to_owned(), |c| format!("{c:.3}"));
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            r.size,
            r.target,
            r.rps,
            r.p50,
            r.p99,
            r.p999,
            r.errors,
            figure(r.cpu_per_10k),
            figure(r.closed_cpu_per_10k)
        );
    }
    let _ = writeln!(s, "\nMeridian relative to nginx and HAProxy (same run):\n");
    let _ = writeln!(
        s,
        "| size | edge | vs | req/s ratio | p99 ratio (lower is better) | CPU/req ratio (lower is better) | CPU/req ratio, closed loop |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|");
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    for (size, edge, other, m, n) in edge_against_rivals(rows, builds) {
        let _ = writeln!(
            s,
            "| {size} | {edge} | {other} | {:.2} | {:.2} | {} | {} |",
            m.rps / n.rps.max(1e-9),
            m.p99 / n.p99.max(1e-9),
            ratio(m.cpu_per_10k, n.cpu_per_10k),
            ratio(m.closed_cpu_per_10k, n.closed_cpu_per_10k)
        );
    }
    let _ = writeln!(
        s,
        "\nRound by round: each round runs every target once, so a round's ratio pairs figures taken\n\
         close together in time. The interval is a 95 % confidence interval of the geometric mean of those\n\
         paired ratios (Student's t over the rounds): \"lower\" or \"higher\" when it lies wholly on one side of\n\
         1, \"level\" when this machine's noise cannot tell the two apart.\n"
    );
    let _ = writeln!(
        s,
        "| size | edge | vs | per round | geometric mean (95 % interval) | reading |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    type Figures = fn(&Row) -> &[f64];
    let measures: [(&str, Figures); 4] = [
        ("CPU/req", |r| &r.cpu_rounds),
        ("p99", |r| &r.p99_rounds),
        ("CPU/req closed", |r| &r.closed_cpu_rounds),
        ("req/s closed", |r| &r.rps_rounds),
    ];
    for (what, figures) in measures {
        for (size, edge, other, m, n) in edge_against_rivals(rows, builds) {
            // A round whose figure is zero (CPU under one clock tick in a short run)
            // gives no ratio: shown as "-", left out of the interval.
            let per_round: Vec<Option<f64>> = figures(m)
                .iter()
                .zip(figures(n))
                .map(|(a, b)| (*a > 0.0 && *b > 0.0).then(|| a / b))
                .collect();
            let per: Vec<String> = per_round
                .iter()
                .map(|r| r.map_or("-".to_owned(), |r| format!("{r:.2}")))
                .collect();
            let ratios: Vec<f64> = per_round.into_iter().flatten().collect();
            let (mean, reading) = match RatioInterval::of(&ratios) {
                Some(i) => (format!("{:.3} ({:.3} to {:.3})", i.mean, i.low, i.high), i.reading()),
                None => ("-".to_owned(), "-"),
            };
            let _ = writeln!(
                s,
                "| {size} | {edge} | {other} | {what}: {} | {mean} | {reading} |",
                per.join(" / ")
            );
        }
    }
    s
}

/// Each edge build's rows beside nginx's and HAProxy's, size by size, in report order:
/// (size, edge, rival, edge's row, rival's row).
fn edge_against_rivals<'a>(
    rows: &'a [Row],
    builds: &'a [(&'a str, String)],
) -> impl Iterator<Item = (&'static str, &'a str, &'static str, &'a Row, &'a Row)> {
    let find = move |size: &str, target: &str| rows.iter().find(|r| r.size == size && r.target == target);
    ["1 KiB", "1 MiB"].into_iter().flat_map(move |size| {
        builds.iter().flat_map(move |(edge, _)| {
            ["nginx", "haproxy"]
                .into_iter()
                .filter_map(move |other| Some((size, *edge, other, find(size, edge)?, find(size, other)?)))
        })
    })
}

/// Where the geometric mean of paired per-round ratios lies, with a 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioInterval {
    /// Geometric mean of the per-round ratios.
    pub mean: f64,
    /// Lower end of the 95 % interval.
    pub low: f64,
    /// Upper end of the 95 % interval.
    pub high: f64,
}

impl RatioInterval {
    /// None below two rounds (no spread to judge by) or for a non-positive ratio.
    pub fn of(ratios: &[f64]) -> Option<RatioInterval> {
        let n = ratios.len();
        if n < 2 || !ratios.iter().all(|r| r.is_finite() && *r > 0.0) {
            return None;
        }
        // Ratios are compared on a log scale, so 0.5 and 2.0 are equally far from 1.
        let logs: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
        let mean = logs.iter().sum::<f64>() / n as f64;
        let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let half = t_975(n - 1) * (var / n as f64).sqrt();
        Some(RatioInterval {
            mean: mean.exp(),
            low: (mean - half).exp(),
            high: (mean + half).exp(),
        })
    }

    /// "lower" or "higher" when the interval lies wholly on one side of 1, else "level".
    pub fn reading(&self) -> &'static str {
        if self.high < 1.0 {
            "lower"
        } else if self.low > 1.0 {
            "higher"
        } else {
            "level"
        }
    }
}

/// Student's t, two-sided 95 %, for `df` degrees of freedom (`--rounds` is at most 20).
fn t_975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    T.get(df.saturating_sub(1)).copied().unwrap_or(1.960)
}

#[cfg(test)]
mod tests {
    use super::{Closed, RatioInterval, parse_wrk, round_order};

    #[test]
    fn wrk_report_gives_its_rate_and_request_count() {
        // wrk 4.2's report, as Debian's package prints it.
        let text = "Running 1s test @ http://127.0.0.1:19041/obj-1k\n  1 threads and 4 connections\n  \
                    Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency    68.82us   26.17us 755.00us   92.70%\n    \
                    Req/Sec    55.30k     1.33k   56.95k    70.00%\n  55044 requests in 1.00s, 64.54MB read\n\
                    Requests/sec:  55011.40\nTransfer/sec:     64.51MB\n";
        assert_eq!(
            parse_wrk(text).unwrap(),
            Closed {
                rps: 55011.40,
                requests: 55044,
                errors: 0
            }
        );
        // Failures are counted, so a proxy cannot look fast by failing.
        let failing = text.replace(
            "64.54MB read\n",
            "64.54MB read\n  Socket errors: connect 1, read 2, write 0, timeout 3\n  Non-2xx or 3xx responses: 40\n",
        );
        assert_eq!(parse_wrk(&failing).unwrap().errors, 46);
        let no_count = text.replace("55044 requests in", "requests:");
        let e = parse_wrk(&no_count).unwrap_err().to_string();
        assert!(e.contains("no request count in wrk output"), "{e}");
        let no_rate = text.replace("Requests/sec:", "Rate:");
        assert!(parse_wrk(&no_rate).unwrap_err().to_string().contains("no Requests/sec"));
    }

    #[test]
    fn four_rounds_put_each_of_four_targets_once_in_every_position() {
        let orders: Vec<Vec<usize>> = (0..4).map(|r| round_order(r, 4).collect()).collect();
        for position in 0..4 {
            let mut seen: Vec<usize> = orders.iter().map(|o| o[position]).collect();
            seen.sort_unstable();
            assert_eq!(seen, [0, 1, 2, 3], "position {position}: {orders:?}");
        }
        for o in &orders {
            let mut each = o.clone();
            each.sort_unstable();
            assert_eq!(each, [0, 1, 2, 3], "every target once per round: {o:?}");
        }
    }

    #[test]
    fn ratio_interval_reads_lower_level_and_higher() {
        // Identical rounds: no spread, the interval is the point.
        let same = RatioInterval::of(&[0.9, 0.9, 0.9]).unwrap();
        assert!((same.mean - 0.9).abs() < 1e-12 && (same.low - 0.9).abs() < 1e-12 && (same.high - 0.9).abs() < 1e-12);
        assert_eq!(same.reading(), "lower");
        // Symmetric on a log scale about 1: mean 1, interval straddles it.
        let even = RatioInterval::of(&[0.8, 1.25, 0.8, 1.25]).unwrap();
        assert!((even.mean - 1.0).abs() < 1e-12, "{even:?}");
        assert!((even.low * even.high - 1.0).abs() < 1e-9, "{even:?}");
        assert_eq!(even.reading(), "level");
        // Two rounds 1.10 and 1.20: t(1) = 12.706 makes the interval wide, so level;
        // sixteen rounds alternating between them make it narrow, so higher.
        assert_eq!(RatioInterval::of(&[1.1, 1.2]).unwrap().reading(), "level");
        let many: Vec<f64> = (0..16).map(|i| if i % 2 == 0 { 1.1 } else { 1.2 }).collect();
        let i = RatioInterval::of(&many).unwrap();
        assert_eq!(i.reading(), "higher", "{i:?}");
        // Hand-computed: logs of 1.1 and 1.2, sd over 16 rounds, t(15) = 2.131.
        let (a, b) = (1.1f64.ln(), 1.2f64.ln());
        let m = (a + b) / 2.0;
        let sd = (((a - m).powi(2) + (b - m).powi(2)) * 8.0 / 15.0).sqrt();
        assert!((i.low - (m - 2.131 * sd / 4.0).exp()).abs() < 1e-12, "{i:?}");
        // Too few rounds, or a figure that cannot be a ratio.
        assert_eq!(RatioInterval::of(&[1.0]), None);
        assert_eq!(RatioInterval::of(&[1.0, 0.0]), None);
        assert_eq!(RatioInterval::of(&[1.0, f64::NAN]), None);
    }
}
