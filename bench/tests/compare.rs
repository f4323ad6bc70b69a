//! `meridian-bench compare` runs end to end against real nginx, HAProxy and wrk (a
//! short run; the numbers come from release builds, see bench/README.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

/// The edge binary built beside this package's.
fn edge_bin() -> PathBuf {
    std::path::Path::new(env!("CARGO_BIN_EXE_meridian-bench")).with_file_name("meridian-edge")
}

/// A short run: seconds, not minutes, at low rates over a few connections.
const SHORT: &[&str] = &[
    "--duration",
    "1",
    "--rate-small",
    "200",
    "--rate-large",
    "20",
    "--connections",
    "4",
];

/// Runs `meridian-bench ARGS --out FILE`; returns the report it wrote, and the file.
fn report_of(args: &[&str]) -> (String, tempfile::NamedTempFile) {
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meridian-bench"))
        .args(args)
        .arg("--out")
        .arg(out_file.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    (std::fs::read_to_string(out_file.path()).unwrap(), out_file)
}

/// The trimmed cells of the report's table row for `first` and `second`.
fn row_cells<'a>(report: &'a str, first: &str, second: &str) -> Vec<&'a str> {
    let row = report
        .lines()
        .find(|l| l.starts_with(&format!("| {first} | {second} |")))
        .unwrap_or_else(|| panic!("no row for {first} {second}:\n{report}"));
    row.split('|').map(str::trim).collect()
}

#[test]
fn compare_produces_a_full_report() {
    // Two edge builds side by side (here the same binary twice, as a plain and a
    // profile-guided build would be): each gets its rows and its ratios.
    let edge = edge_bin();
    let first = format!("meridian={}", edge.display());
    let second = format!("second={}", edge.display());
    let (report, out_file) = report_of(
        &[
            &["compare", "--edge", &first, "--edge", &second, "--rounds", "2"],
            SHORT,
        ]
        .concat(),
    );
    for target in ["direct", "meridian", "second", "nginx", "haproxy"] {
        for size in ["1 KiB", "1 MiB"] {
            let cells = row_cells(&report, size, target);
            let row = cells.join(" | ");
            let rps: f64 = cells[3].parse().unwrap();
            assert!(rps > 0.0, "{row}");
            assert_eq!(cells[7], "0", "errors in {row}");
            if target != "direct" {
                // Measured (a number, not "-"); a one-second run may use less CPU
                // than one clock tick, so zero is possible here.
                let cpu: f64 = cells[8].parse().unwrap_or_else(|_| panic!("no CPU figure in {row}"));
                assert!(cpu >= 0.0, "{row}");
                let closed: f64 = cells[9]
                    .parse()
                    .unwrap_or_else(|_| panic!("no closed-loop CPU figure in {row}"));
                assert!(closed >= 0.0, "{row}");
            } else {
                assert_eq!(cells[9], "-", "no proxy, no CPU: {row}");
            }
        }
    }
    assert!(report.contains("Meridian relative to nginx and HAProxy"));
    // Each build is named with what its binary says it is.
    let version = String::from_utf8(Command::new(&edge).arg("--version").output().unwrap().stdout).unwrap();
    for name in ["meridian", "second"] {
        let line = format!("- {name}: `{}` ({})", edge.display(), version.trim());
        assert!(report.contains(&line), "{line}\n{report}");
    }
    // Every proxy does the edge's header work, so CPU per request compares one job.
    let added = |target: &str| {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("| {target} |")))
            .unwrap_or_else(|| panic!("no header-work row for {target}:\n{report}"));
        let cells: Vec<String> = line.split('|').map(|c| c.trim().to_owned()).collect();
        (cells[2].clone(), cells[3].clone())
    };
    let (edge_request, edge_response) = added("meridian");
    assert_eq!(added("second"), (edge_request.clone(), edge_response.clone()));
    for field in ["forwarded", "via", "x-forwarded-for", "x-forwarded-proto"] {
        assert!(edge_request.split(", ").any(|f| f == field), "{edge_request}");
    }
    assert!(edge_response.split(", ").any(|f| f == "via"), "{edge_response}");
    for other in ["nginx", "haproxy"] {
        let (request, response) = added(other);
        assert_eq!(request, edge_request, "{other}:\n{report}");
        // nginx also adds `Server` and `Connection: keep-alive`, which it cannot
        // be told not to: at least the edge's work, never less.
        for field in edge_response.split(", ") {
            assert!(
                response.split(", ").any(|f| f == field),
                "{other} lacks {field}:\n{report}"
            );
        }
    }
    assert!(report.contains("| 1 KiB | haproxy |"), "{report}");
    // Not pinned: every process listed, each allowed the same CPUs as this test.
    assert!(report.contains("Not pinned:"), "{report}");
    let mine = cpus_of_this_process();
    for who in [
        "load generator, provider, wrk",
        "meridian",
        "second",
        "nginx",
        "haproxy",
    ] {
        assert!(
            report.contains(&format!("- {who}: {mine}\n")),
            "{who} on {mine}:\n{report}"
        );
    }
    assert!(
        report.contains("2 rounds; each runs every target once closed loop (wrk -t1 -c4, 1s)"),
        "{report}"
    );
    // Ratios for each edge against each other proxy; two rounds, so the round-by-round
    // rows (fixed-rate CPU and p99, closed-loop CPU and req/s) list two figures each,
    // with an interval when both are ratios.
    for edge in ["meridian", "second"] {
        for other in ["nginx", "haproxy"] {
            let prefix = format!("| 1 KiB | {edge} | {other} |");
            let rows: Vec<&str> = report.lines().filter(|l| l.starts_with(&prefix)).collect();
            assert_eq!(rows.len(), 5, "{prefix}\n{report}");
            let ratios: Vec<&str> = rows[0].split('|').map(str::trim).collect();
            for (i, what) in [(4, "req/s"), (5, "p99"), (7, "closed-loop CPU")] {
                let ratio: f64 = ratios[i]
                    .parse()
                    .unwrap_or_else(|_| panic!("no {what} ratio in {}", rows[0]));
                assert!(ratio > 0.0, "{}", rows[0]);
            }
            let measures = ["CPU/req: ", "p99: ", "CPU/req closed: ", "req/s closed: "];
            for (row, what) in rows[1..].iter().zip(measures) {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let per = cells[4].strip_prefix(what).unwrap_or_else(|| panic!("{what} in {row}"));
                assert_eq!(per.split(" / ").count(), 2, "{row}");
                // A one-second round may use less CPU than a clock tick: no ratio for
                // it ("-"), and with one ratio left no interval either.
                if per.split(" / ").any(|r| r == "-") {
                    assert!(what.starts_with("CPU/req"), "only CPU can be under a tick: {row}");
                    assert_eq!((cells[5], cells[6]), ("-", "-"), "{row}");
                    continue;
                }
                let (mean, interval) = cells[5].split_once(" (").unwrap_or_else(|| panic!("interval in {row}"));
                let mean: f64 = mean.parse().unwrap();
                let (low, high) = interval.trim_end_matches(')').split_once(" to ").unwrap();
                let (low, high): (f64, f64) = (low.parse().unwrap(), high.parse().unwrap());
                assert!(0.0 <= low && low <= mean && mean <= high, "{row}");
                assert!(["lower", "level", "higher"].contains(&cells[6]), "{row}");
            }
        }
    }
    // One latency plot per size, a line per target, linked from the report.
    for tag in ["1k", "1m"] {
        let svg_path = out_file.path().with_extension(format!("{tag}.svg"));
        let svg = std::fs::read_to_string(&svg_path).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 5, "{svg}");
        let name = svg_path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(report.contains(&name), "the report links {name}");
        let _ = std::fs::remove_file(svg_path);
    }
}

#[test]
fn protocols_compares_http3_with_http2_through_the_edge() {
    let (report, _out) = report_of(&["protocols", "--duration", "1", "--rate", "100", "--streams", "4"]);
    for size in ["1 KiB", "1 MiB"] {
        for proto in ["HTTP/2", "HTTP/3"] {
            let cells = row_cells(&report, size, proto);
            let row = cells.join(" | ");
            let rps: f64 = cells[3].parse().unwrap();
            assert!(rps > 0.0, "{row}");
            assert_eq!(cells[6], "0", "errors in {row}");
            if size == "1 KiB" {
                let p99: f64 = cells[5].parse().unwrap_or_else(|_| panic!("no p99 in {row}"));
                assert!(p99 > 0.0, "{row}");
            }
        }
    }
    assert!(report.contains("HTTP/3 relative to HTTP/2"), "{report}");
}

#[test]
fn training_drives_every_protocol_and_stops_the_edge_cleanly() {
    // What `scripts/build-pgo` runs against its instrumented edge, here against the
    // plain one: every phase answers without an error, the refusals are refused,
    // and the edge exits 0 on SIGTERM (else `train` fails: no profile is written).
    let out = Command::new(env!("CARGO_BIN_EXE_meridian-bench"))
        .args(["train", "--duration", "1", "--edge"])
        .arg(edge_bin())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phases = [
        "HTTP/1.1, 1 KiB GETs",
        "HTTP/1.1, mix",
        "HTTP/1.1, mix, closed loop",
        "HTTP/1.1 over TLS, mix",
        "HTTP/2, 1 KiB GETs",
        "HTTP/2, mix",
        "HTTP/3, mix",
        "refused: ambiguous framing",
        "refused: request target too long",
    ];
    for phase in phases {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {phase} |")))
            .unwrap_or_else(|| panic!("no row for {phase}:\n{stdout}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let ok: u64 = cells[2].parse().unwrap();
        assert!(ok > 0, "{row}");
        assert_eq!(cells[3], "0", "errors in {row}");
    }
}

/// This process's CPUs, as `/proc/self/status` lists them.
fn cpus_of_this_process() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(|v| v.trim().to_owned()))
        .unwrap()
}

#[test]
fn compare_pinned_gives_the_proxies_one_cpu_and_the_rest_the_others() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        // --pin refuses a one-CPU machine with a clear error; shown instead of run.
        let out = Command::new(env!("CARGO_BIN_EXE_meridian-bench"))
            .args(["compare", "--pin", "--duration", "1", "--rounds", "1"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--pin needs at least two CPUs"));
        return;
    }
    // The proxies get the first CPU this test may use, the load generator the others.
    let mine = cpus_of_this_process();
    let first = mine.split([',', '-']).next().unwrap().to_owned();
    // 1 KiB only (`--sizes 1k`): the size that measures the proxies' own work.
    let (report, out_file) = report_of(&[&["compare", "--pin", "--rounds", "1", "--sizes", "1k"], SHORT].concat());
    assert!(report.contains("Pinned (`--pin`)"), "{report}");
    assert!(
        report.contains(
            "1 round; each runs every target once closed loop (wrk -t1 -c4, 1s) and then once at a fixed rate\n\
             (200/s (1 KiB) over 4 connections, 1s)"
        ),
        "{report}"
    );
    assert!(!report.contains("| 1 MiB |"), "a 1 MiB row in a 1 KiB run:\n{report}");
    assert!(out_file.path().with_extension("1k.svg").exists());
    assert!(!out_file.path().with_extension("1m.svg").exists());
    // The kernel's own account of each process's CPUs, read back by the command.
    for proxy in ["meridian", "nginx", "haproxy"] {
        assert!(
            report.contains(&format!("- {proxy}: {first}\n")),
            "{proxy} on CPU {first}:\n{report}"
        );
    }
    let rest = report
        .lines()
        .find_map(|l| l.strip_prefix("- load generator, provider, wrk: "))
        .unwrap_or_else(|| panic!("no placement line for the load generator:\n{report}"));
    assert!(
        !rest.split([',', '-']).any(|c| c == first),
        "the load generator left CPU {first}: {rest}"
    );
    for target in ["direct", "meridian", "nginx", "haproxy"] {
        let cells = row_cells(&report, "1 KiB", target);
        assert_eq!(cells[7], "0", "errors in {}", cells.join(" | "));
    }
}

#[test]
fn compare_refuses_a_size_named_twice_or_unknown() {
    let run = |sizes: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_meridian-bench"))
            .args(["compare", "--sizes", sizes])
            .output()
            .unwrap();
        assert!(!out.status.success(), "--sizes {sizes} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let twice = run("1k,1m,1k");
    assert!(twice.contains("--sizes names 1k twice"), "{twice}");
    let unknown = run("1k,4k");
    assert!(
        unknown.contains("invalid value '4k'") && unknown.contains("1m"),
        "{unknown}"
    );
}
