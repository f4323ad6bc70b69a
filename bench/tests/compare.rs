//! `meridian-bench compare` runs end to end against real nginx, HAProxy and wrk (a
//! short run; the numbers come from release builds, see bench/README.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

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
    let (report, out_file) = report_of(&[
        "compare",
        "--duration",
        "1",
        "--rate-small",
        "200",
        "--rate-large",
        "20",
        "--connections",
        "4",
        "--rounds",
        "2",
    ]);
    for target in ["direct", "meridian", "nginx", "haproxy"] {
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
            }
        }
    }
    assert!(report.contains("Meridian relative to nginx and HAProxy"));
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
    assert!(report.contains("in\n2 rounds of 1s per target"), "{report}");
    // Two fixed-rate rounds: the per-round CPU ratios list two figures each.
    for other in ["nginx", "haproxy"] {
        let line = report
            .lines()
            .rfind(|l| l.starts_with(&format!("| 1 KiB | {other} |")))
            .unwrap();
        let per = line.split('|').nth(3).unwrap();
        assert_eq!(per.split('/').count(), 2, "{line}");
    }
    // One latency plot per size, a line per target, linked from the report.
    for tag in ["1k", "1m"] {
        let svg_path = out_file.path().with_extension(format!("{tag}.svg"));
        let svg = std::fs::read_to_string(&svg_path).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4, "{svg}");
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
