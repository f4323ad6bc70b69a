//! Child processes for deployments and benchmarks: find sibling binaries, start a
//! benchmark's edge (its config and certificate included), wait for readiness by
//! polling, read CPU time from /proc, stop by PID.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A loopback address with a free TCP port for a child process to listen on.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Writes a new CA (`ca.crt`) and a certificate for `bench.local` signed by it
/// (`edge.crt`, `edge.key`) into `dir`, for a benchmark edge's TLS listeners.
pub fn write_edge_certs(dir: &Path) -> anyhow::Result<()> {
    let ca = meridian_sim::TestCa::new("meridian bench CA")?;
    let leaf = ca.issue(&["bench.local"])?;
    std::fs::write(dir.join("ca.crt"), &ca.cert_pem)?;
    std::fs::write(dir.join("edge.crt"), &leaf.cert_pem)?;
    std::fs::write(dir.join("edge.key"), &leaf.key_pem)?;
    Ok(())
}

/// Writes `dir/file`, the config of a benchmark's edge: `listeners` by kind (`http`,
/// `https`, `h3`, `admin`), the certificate of [`write_edge_certs`] (in `dir`) when
/// `tls`, and `providers` (id, address) in the US, every origin allowed on all of
/// them; no access log; `workers` worker threads (0: the edge's default, one per
/// core). Returns its path.
pub fn write_edge_config(
    dir: &Path,
    file: &str,
    listeners: &[(&str, SocketAddr)],
    tls: bool,
    providers: &[(&str, SocketAddr)],
    workers: u32,
) -> anyhow::Result<PathBuf> {
    use std::fmt::Write as _;
    let mut s = String::from("[listeners]\n");
    for (kind, addr) in listeners {
        let _ = writeln!(s, "{kind} = \"{addr}\"");
    }
    s.push_str("\n[limits]\nmax_connections = 4096\n\n[log]\naccess = false\n\n");
    if workers > 0 {
        let _ = writeln!(s, "[runtime]\nworkers = {workers}\n");
    }
    if tls {
        s.push_str(
            "[tls]\ndefault_certificate = \"bench\"\n[[tls.certificates]]\nname = \"bench\"\n\
             server_names = [\"bench.local\"]\ncert = \"edge.crt\"\nkey = \"edge.key\"\n\n",
        );
    }
    for (id, addr) in providers {
        let _ = writeln!(
            s,
            "[[fleet.providers]]\nid = \"{id}\"\njurisdiction = \"US\"\nmax_connections = 512\n\
             [fleet.providers.endpoint]\naddress = \"{addr}\"\n"
        );
    }
    s.push_str(
        "[fleet.policy]\nunknown_origin = \"US\"\nrules = [{ name = \"any\", origin = \"*\", allow = [\"*\"] }]\n",
    );
    let path = dir.join(file);
    std::fs::write(&path, s).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Starts the edge binary `bin` (`name` in messages) with the config at `cfg`, on
/// the CPUs `cpus` (see [`command_on`]), and returns once its admin listener `admin`
/// reports it ready.
pub async fn start_edge(
    name: &str,
    bin: &Path,
    cfg: &Path,
    admin: SocketAddr,
    cpus: Option<&str>,
) -> anyhow::Result<Proc> {
    let proc_ = Proc::spawn(
        name,
        command_on(bin, cpus)
            .args(["run", "--config"])
            .arg(cfg)
            .env("MERIDIAN_LOG", "warn"),
    )?;
    wait_http(admin, "/readyz", 200, Duration::from_secs(30)).await?;
    Ok(proc_)
}

/// Runs `phase` and returns its result with the CPU-seconds `proc_` (a proxy; none
/// for going direct) used meanwhile (see [`Proc::cpu_seconds`]).
pub async fn cpu_during<T>(
    proc_: Option<&Proc>,
    phase: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Option<f64>)> {
    let before = proc_.map(Proc::cpu_seconds);
    let out = phase.await?;
    Ok((out, proc_.zip(before).map(|(p, c0)| p.cpu_seconds() - c0)))
}

/// A command for `program`, started on the CPUs in `cpus` (a `taskset` list such as
/// `"0"` or `"1-3"`) when given: `taskset` sets the affinity and then executes the
/// program, so the child's PID is the program's and its threads and children inherit
/// the affinity.
pub fn command_on(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(list) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", list]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Moves every thread of this process (and so every process and thread it starts
/// from now on) to the CPUs `cpus`.
pub fn pin_this_process(cpus: &[usize]) -> anyhow::Result<()> {
    use nix::sched::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    }
    let tasks = std::fs::read_dir("/proc/self/task").context("listing this process's threads")?;
    for task in tasks {
        let tid: i32 = task?.file_name().to_string_lossy().parse().context("thread id")?;
        // A thread that exited since the listing is not an error.
        match sched_setaffinity(Pid::from_raw(tid), &set) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("setting the CPUs of thread {tid} to {cpus:?}")),
        }
    }
    Ok(())
}

/// The CPUs this process may run on, in ascending order.
pub fn cpus_of_this_process() -> anyhow::Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(Pid::from_raw(0)).context("reading this process's CPUs")?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// The CPUs process `pid` may run on, as `/proc/PID/status` lists them.
pub fn cpus_allowed(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// A binary built beside the running one (same target directory; a test binary in
/// `deps/` looks one level up).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating this executable")?;
    let mut path = me.with_file_name(name);
    if !path.is_file() && me.parent().is_some_and(|d| d.ends_with("deps")) {
        if let Some(up) = me.parent().and_then(|d| d.parent()) {
            path = up.join(name);
        }
    }
    if !path.is_file() {
        bail!(
            "{} not found beside {}; build the workspace first (cargo build --workspace --bins)",
            name,
            me.display()
        );
    }
    Ok(path)
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// What it is, for messages.
    pub name: String,
}

impl Proc {
    /// Spawns `cmd`, labelled `name`.
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Proc> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            child,
            name: name.to_owned(),
        })
    }

    /// The child's PID.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Asks the child to stop and waits up to `limit`; kills it after that.
    pub fn stop(&mut self, limit: Duration) -> anyhow::Result<Option<i32>> {
        if self.child.try_wait()?.is_none() {
            let _ = kill(self.pid(), Signal::SIGTERM);
            let deadline = std::time::Instant::now() + limit;
            while self.child.try_wait()?.is_none() {
                if std::time::Instant::now() >= deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(self.child.wait()?.code())
    }

    /// User + system CPU seconds of the child and its own children (nginx workers).
    pub fn cpu_seconds(&self) -> f64 {
        let pid = self.child.id();
        let mut total = cpu_of(pid);
        for child in children_of(pid) {
            total += cpu_of(child);
        }
        total
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(5));
    }
}

fn clock_ticks() -> f64 {
    // CLK_TCK is 100 on every Linux this runs on; sysconf would need unsafe or libc.
    100.0
}

fn cpu_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which may contain spaces, close with ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(14) + ticks(15)) / clock_ticks()
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.split_whitespace().nth(1).map(str::to_owned))
                })
                .flatten()
                .and_then(|pp| pp.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// Polls `f` every 20 ms until it returns `Some`, and panics naming `what` after
/// `limit`: for tests that wait for a state they can observe.
pub async fn poll<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET http://addr{path}` until it answers `want`, at most `limit`.
pub async fn wait_http(addr: SocketAddr, path: &str, want: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(status) = status_of(addr, path).await {
            if status == want {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("http://{addr}{path} did not answer {want} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An HTTP/1.1 client connection to `addr` (TCP_NODELAY), driven by a spawned task.
pub async fn h1_client<B>(addr: SocketAddr) -> anyhow::Result<hyper::client::conn::http1::SendRequest<B>>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn status_of(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    use http_body_util::Empty;
    let mut send = h1_client(addr).await?;
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())?;
    Ok(send.send_request(req).await?.status().as_u16())
}

/// The Prometheus text a process serves at `addr/metrics`.
pub async fn scrape_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    use http_body_util::{BodyExt, Empty};
    let mut send = h1_client(addr).await?;
    let req = http::Request::get("/metrics")
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = send.send_request(req).await?;
    anyhow::ensure!(resp.status() == 200, "{addr}/metrics answered {}", resp.status());
    Ok(String::from_utf8(
        resp.into_body().collect().await?.to_bytes().to_vec(),
    )?)
}

/// The value of the exposition-text sample whose series (name and labels, as
/// rendered) is `series`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// The binary, installing its Debian package first when it is missing (as root).
pub fn ensure_installed(bin: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Ok(p) = which(bin) {
        return Ok(p);
    }
    eprintln!("{bin} not found; installing Debian's {package}...");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        // The package lists may be missing on a fresh machine.
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        anyhow::ensure!(status.success(), "apt-get install {package} failed");
    }
    which(bin).with_context(|| format!("{package} installed but {bin} not found"))
}

/// The path of a system binary.
pub fn which(name: &str) -> anyhow::Result<PathBuf> {
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
