//! Seconds histograms for the request path: a sample is a bucket search and three
//! relaxed atomic additions.
//!
//! The exporter's histograms keep every sample (with a timestamp, behind an epoch
//! guard) until upkeep folds them into buckets; per request, on a proxy's hot
//! path, that was a measurable share of the edge's CPU. These count into their
//! buckets at once and render as ordinary Prometheus histograms beside the
//! exporter's text, with the same bucket bounds. They must never take a lock on
//! the recording side.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::SECONDS_BUCKETS;

/// One labelled series of a `_seconds` histogram.
#[derive(Debug)]
pub struct SecondsHistogram {
    name: &'static str,
    /// Rendered label pairs, `a="x",b="y"`, already escaped.
    labels: String,
    /// Per bucket (the last is `+Inf`), not cumulative.
    buckets: [AtomicU64; SECONDS_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl SecondsHistogram {
    /// Counts one sample.
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = SECONDS_BUCKETS.partition_point(|&b| b < secs);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

struct Family {
    name: &'static str,
    help: &'static str,
    series: Vec<Arc<SecondsHistogram>>,
}

static FAMILIES: Mutex<Vec<Family>> = Mutex::new(Vec::new());

/// Registers (or finds) the series of `name` with `labels` and returns its handle.
/// `help` describes the family the first time it is seen.
pub fn seconds_histogram(name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Arc<SecondsHistogram> {
    let mut rendered = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            rendered.push(',');
        }
        let _ = write!(rendered, "{k}=\"{}\"", escape(v));
    }
    let mut families = FAMILIES.lock().unwrap_or_else(|p| p.into_inner());
    let family = match families.iter().position(|f| f.name == name) {
        Some(i) => &mut families[i],
        None => {
            families.push(Family {
                name,
                help,
                series: Vec::new(),
            });
            let last = families.len() - 1;
            &mut families[last]
        }
    };
    if let Some(s) = family.series.iter().find(|s| s.labels == rendered) {
        return s.clone();
    }
    let series = Arc::new(SecondsHistogram {
        name,
        labels: rendered,
        buckets: Default::default(),
        sum_nanos: AtomicU64::new(0),
        count: AtomicU64::new(0),
    });
    family.series.push(series.clone());
    series
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Appends every registered histogram to `out` in the Prometheus text format.
pub(crate) fn render_into(out: &mut String) {
    let families = FAMILIES.lock().unwrap_or_else(|p| p.into_inner());
    for f in families.iter().filter(|f| !f.series.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} histogram", f.name);
        for s in &f.series {
            let sep = if s.labels.is_empty() { "" } else { "," };
            let mut cumulative = 0;
            for (i, bound) in SECONDS_BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "{}_bucket{{{}{sep}le=\"{bound}\"}} {cumulative}", s.name, s.labels);
            }
            cumulative += s.buckets[SECONDS_BUCKETS.len()].load(Ordering::Relaxed);
            // Read after the buckets: a sample landing meanwhile shows in the count
            // at worst, never makes a bucket exceed it.
            let count = s.count.load(Ordering::Relaxed).max(cumulative);
            let _ = writeln!(out, "{}_bucket{{{}{sep}le=\"+Inf\"}} {count}", s.name, s.labels);
            let sum = s.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let braces = |l: &str| {
                if l.is_empty() {
                    String::new()
                } else {
                    format!("{{{l}}}")
                }
            };
            let _ = writeln!(out, "{}_sum{} {sum}", s.name, braces(&s.labels));
            let _ = writeln!(out, "{}_count{} {count}", s.name, braces(&s.labels));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_cumulative_buckets_with_sum_and_count() {
        let h = seconds_histogram(
            "meridian_test_fast_seconds",
            "A test histogram.",
            &[("provider", "p\"1"), ("jurisdiction", "DE")],
        );
        let again = seconds_histogram(
            "meridian_test_fast_seconds",
            "ignored",
            &[("provider", "p\"1"), ("jurisdiction", "DE")],
        );
        assert!(Arc::ptr_eq(&h, &again), "one series per label set");
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(2));
        h.record(Duration::from_secs(90));
        let mut text = String::new();
        render_into(&mut text);
        let labels = "provider=\"p\\\"1\",jurisdiction=\"DE\"";
        for line in [
            "# TYPE meridian_test_fast_seconds histogram".to_string(),
            format!("meridian_test_fast_seconds_bucket{{{labels},le=\"0.001\"}} 1"),
            format!("meridian_test_fast_seconds_bucket{{{labels},le=\"0.0025\"}} 2"),
            format!("meridian_test_fast_seconds_bucket{{{labels},le=\"60\"}} 2"),
            format!("meridian_test_fast_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
            format!("meridian_test_fast_seconds_sum{{{labels}}} 90.0025"),
            format!("meridian_test_fast_seconds_count{{{labels}}} 3"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
