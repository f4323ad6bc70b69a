//! The world simulator's report: residency violations, completion times next to the
//! oracle's, reaction to each event, and what probing cost.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::scenario::{Action, EventKind, Scenario};
use super::users::Record;

/// Every request, judged.
#[derive(Debug, Default)]
pub struct Judged {
    /// Answered 200, with the oracle's completion time (seconds) for the same request.
    pub ok: Vec<(Record, f64)>,
    /// Failed, or not 200.
    pub failed: Vec<Record>,
    /// Served by a provider the policy did not allow (at the start or the end).
    pub violations: Vec<Record>,
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Mean completion of Meridian over the oracle's, all requests that succeeded.
pub fn ratio(j: &Judged) -> f64 {
    let m: Vec<f64> = j.ok.iter().map(|(r, _)| r.took.as_secs_f64()).collect();
    let o: Vec<f64> = j.ok.iter().map(|(_, o)| *o).collect();
    mean(&m) / mean(&o).max(1e-9)
}

/// The report as markdown.
pub fn render(
    s: &Scenario,
    file: &Path,
    j: &Judged,
    notes: &[(usize, String)],
    probe: (u64, u64),
    warmup: Duration,
    network: &str,
) -> String {
    let mut out = String::new();
    let ms = |x: f64| x * 1e3;
    let _ = writeln!(out, "# World: {}\n", s.name);
    let _ = writeln!(
        out,
        "Scenario `{}`, {} s of load after {} s of probing. One-way delay = great-circle distance / {} km/ms + \
         {} ms. Network: {network}. Real `meridian-cp`, `meridian-edge` and simulated providers.\n",
        file.display(),
        s.duration.0.as_secs(),
        warmup.as_secs(),
        s.km_per_ms,
        s.overhead_ms
    );
    let _ = writeln!(
        out,
        "| one-way delay (ms) | {} |",
        s.providers
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|---|{}", "---:|".repeat(s.providers.len()));
    for e in &s.edges {
        let cells: Vec<String> = s
            .providers
            .iter()
            .map(|p| format!("{:.1}", s.one_way(e.at, p.at).as_secs_f64() * 1e3))
            .collect();
        let _ = writeln!(out, "| edge {} | {} |", e.name, cells.join(" | "));
    }
    let total = j.ok.len() + j.failed.len();
    let m: Vec<f64> = j.ok.iter().map(|(r, _)| r.took.as_secs_f64()).collect();
    let o: Vec<f64> = j.ok.iter().map(|(_, o)| *o).collect();
    let _ = writeln!(out, "\n## Result\n");
    let _ = writeln!(out, "| measure | Meridian | oracle |");
    let _ = writeln!(out, "|---|---:|---:|");
    let _ = writeln!(
        out,
        "| requests (200 / failed) | {} / {} | |",
        j.ok.len(),
        j.failed.len()
    );
    let _ = writeln!(out, "| **residency violations** | **{}** | 0 |", j.violations.len());
    let _ = writeln!(
        out,
        "| mean completion | {:.1} ms | {:.1} ms |",
        ms(mean(&m)),
        ms(mean(&o))
    );
    let _ = writeln!(
        out,
        "| p99 completion | {:.1} ms | {:.1} ms |",
        ms(quantile(m.clone(), 0.99)),
        ms(quantile(o.clone(), 0.99))
    );
    let _ = writeln!(
        out,
        "| mean / oracle | {:.3} (target ≤ 1.10: {}) | |",
        ratio(j),
        if ratio(j) <= 1.10 { "met" } else { "**missed**" }
    );
    let _ = writeln!(
        out,
        "| probes | {} requests, {:.1} KiB of probe bodies ({:.2} % of {} requests) | |",
        probe.0,
        probe.1 as f64 / 1024.0,
        probe.0 as f64 / total.max(1) as f64 * 100.0,
        total
    );

    if !j.failed.is_empty() {
        let mut failed: Vec<&Record> = j.failed.iter().collect();
        failed.sort_by_key(|r| r.start);
        let shown: Vec<String> = failed
            .iter()
            .take(20)
            .map(|r| {
                format!(
                    "{} at {:.2} s ({}, {} ms)",
                    s.users[r.group].name,
                    r.start.as_secs_f64(),
                    if r.status == 0 {
                        "no answer".to_owned()
                    } else {
                        r.status.to_string()
                    },
                    r.took.as_millis()
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "\nFailed requests (start time, status, time taken): {}",
            shown.join("; ")
        );
    }
    let _ = writeln!(out, "\n## By user group\n");
    let _ = writeln!(
        out,
        "| users | origin | edge | requests | mean ms | oracle mean ms | p99 ms | served by |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---|");
    for (gi, u) in s.users.iter().enumerate() {
        let mine: Vec<&(Record, f64)> = j.ok.iter().filter(|(r, _)| r.group == gi).collect();
        let m: Vec<f64> = mine.iter().map(|(r, _)| r.took.as_secs_f64()).collect();
        let o: Vec<f64> = mine.iter().map(|(_, o)| *o).collect();
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for (r, _) in &mine {
            *by.entry(r.provider.as_deref().unwrap_or("?")).or_default() += 1;
        }
        let share: Vec<String> = by
            .iter()
            .map(|(p, n)| format!("{p} {:.0} %", *n as f64 / mine.len().max(1) as f64 * 100.0))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} |",
            u.name,
            u.origin,
            u.edge,
            mine.len(),
            ms(mean(&m)),
            ms(mean(&o)),
            ms(quantile(m.clone(), 0.99)),
            share.join(", ")
        );
    }

    if !s.events.is_empty() {
        let _ = writeln!(out, "\n## Events\n");
        let _ = writeln!(out, "| at | event | reaction |");
        let _ = writeln!(out, "|---:|---|---|");
        for (i, e) in s.events.iter().enumerate() {
            let at = e.at.0;
            // Reactions are judged until the next event about the same provider.
            let until = |provider: &str| {
                s.events
                    .iter()
                    .filter(|x| x.at.0 > at)
                    .filter(|x| match &x.what {
                        EventKind::Impair { provider: p, .. } | EventKind::Provider { provider: p, .. } => {
                            p == provider
                        }
                        _ => false,
                    })
                    .map(|x| x.at.0)
                    .min()
                    .unwrap_or(s.duration.0)
            };
            let (what, reaction) = match &e.what {
                EventKind::Impair { provider, impair } if *impair == meridian_sim::Impairments::default() => {
                    (format!("{provider} recovers"), first_use(j, provider, at))
                }
                EventKind::Impair { provider, impair } => (
                    format!(
                        "{provider} impaired {}",
                        serde_json::to_string(impair).unwrap_or_default()
                    ),
                    last_use(j, provider, at, until(provider)),
                ),
                EventKind::Provider {
                    provider,
                    action: Action::Kill,
                } => (format!("{provider} dies"), last_use(j, provider, at, until(provider))),
                EventKind::Provider {
                    provider,
                    action: Action::Start,
                } => (format!("{provider} comes back"), first_use(j, provider, at)),
                EventKind::ControlPlane {
                    control_plane: Action::Kill,
                } => {
                    let failed = j.failed.iter().filter(|r| r.start >= at).count();
                    (
                        "control plane killed".into(),
                        format!("{failed} requests failed from then to the end"),
                    )
                }
                EventKind::ControlPlane {
                    control_plane: Action::Start,
                } => (
                    "control plane restarted".into(),
                    notes
                        .iter()
                        .find(|(k, _)| *k == i)
                        .map_or_else(String::new, |(_, n)| n.clone()),
                ),
                EventKind::Policy { .. } => {
                    let rollout = notes.iter().find(|(k, _)| *k == i).map(|(_, n)| n.as_str());
                    let reaction = policy_reaction(s, j, at);
                    (
                        "policy changed".into(),
                        rollout.map_or_else(|| reaction.clone(), |n| format!("{n}; {reaction}")),
                    )
                }
            };
            let _ = writeln!(out, "| {:.0} s | {what} | {reaction} |", at.as_secs_f64());
        }
    }
    out
}

/// Between `at` and `until`, when `provider` last served a request that started
/// after the event although the oracle would have chosen another, and how many
/// requests failed: how long the edges took to stop using it where it was wrong.
/// (A slowed provider can still be the right choice for some sizes.)
fn last_use(j: &Judged, provider: &str, at: Duration, until: Duration) -> String {
    let window = |r: &&Record| r.start >= at && r.start < until;
    let last =
        j.ok.iter()
            .filter(|(r, oracle)| *oracle < r.took.as_secs_f64() - 1e-6)
            .map(|(r, _)| r)
            .filter(window)
            .filter(|r| r.provider.as_deref() == Some(provider))
            .map(|r| r.start + r.took)
            .max();
    let failed = j.failed.iter().filter(window).count();
    match last {
        Some(t) => format!(
            "last request it served where another was better ended {:.0} ms after; {failed} failed",
            (t - at).as_secs_f64() * 1e3
        ),
        None => format!("no request it served after the event had a better choice; {failed} failed"),
    }
}

/// After `at`, when `provider` first served again.
fn first_use(j: &Judged, provider: &str, at: Duration) -> String {
    let first =
        j.ok.iter()
            .map(|(r, _)| r)
            .filter(|r| r.start >= at && r.provider.as_deref() == Some(provider))
            .map(|r| r.start)
            .min();
    match first {
        Some(t) => format!("served again {:.0} ms after", (t - at).as_secs_f64() * 1e3),
        None => "not used again (another provider stayed better)".into(),
    }
}

/// After a policy change: when the last request served against the new policy
/// started.
fn policy_reaction(s: &Scenario, j: &Judged, at: Duration) -> String {
    let new_policy = s.events.iter().find_map(|e| match &e.what {
        EventKind::Policy { policy } if e.at.0 == at => Some(policy.clone()),
        _ => None,
    });
    let Some(policy) = new_policy else {
        return String::new();
    };
    let mut fleet = s.fleet_with(|_| "127.0.0.1:1".into());
    fleet.policy = policy;
    let compiled = meridian_proto::CompiledPolicy::compile(&fleet);
    let last =
        j.ok.iter()
            .map(|(r, _)| r)
            .filter(|r| r.start >= at)
            .filter(|r| {
                let origin = s.users[r.group].origin;
                let allowed: Vec<usize> = match compiled.evaluate(Some(origin)) {
                    meridian_proto::Verdict::Denied => Vec::new(),
                    meridian_proto::Verdict::Allowed { providers, .. } => providers.iter().collect(),
                };
                let pi = r
                    .provider
                    .as_ref()
                    .and_then(|id| s.providers.iter().position(|p| p.id == *id));
                pi.is_none_or(|p| !allowed.contains(&p))
            })
            .map(|r| r.start)
            .max();
    match last {
        Some(t) => format!(
            "last request routed by the old policy started {:.0} ms after",
            (t - at).as_secs_f64() * 1e3
        ),
        None => "every request after it followed the new policy".into(),
    }
}
