//! One routing decision (origin → policy → selector → target) with 1,000 providers
//! and 200 rules. Target: under 2 µs median, no heap allocation per decision (the
//! allocation count is checked by `tests/decision_alloc.rs`).
//!
//! `cargo bench -p meridian-edge --bench decision`

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tokio::time::Instant;

#[path = "../tests/support/big_fleet.rs"]
mod big_fleet;

fn decision(c: &mut Criterion) {
    let (routing, worst, typical) = big_fleet::big_routing();
    c.bench_function("route: last of 200 rules, 1000 allowed, 1 KiB", |b| {
        b.iter(|| black_box(routing.route(black_box(worst), 1024, None, Instant::now()).unwrap()))
    });
    c.bench_function("route: rule 101 of 200, 20 allowed, 1 KiB", |b| {
        b.iter(|| black_box(routing.route(black_box(typical), 1024, None, Instant::now()).unwrap()))
    });
    c.bench_function("route: last of 200 rules, 1000 allowed, 100 MiB", |b| {
        b.iter(|| {
            black_box(
                routing
                    .route(black_box(worst), 100 << 20, None, Instant::now())
                    .unwrap(),
            )
        })
    });
}

criterion_group!(benches, decision);
criterion_main!(benches);
