//! A routing decision allocates nothing on the heap once warm, even with 1,000
//! providers and 200 rules (the shortlist of a large allowed set is rebuilt at most
//! every 250 ms, which is the only allocation, and is excluded by warming up).

#![allow(clippy::unwrap_used)]

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::time::Instant;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[path = "support/big_fleet.rs"]
mod big_fleet;

#[test]
fn a_warm_routing_decision_does_not_allocate() {
    let (routing, worst, typical) = big_fleet::big_routing();
    let now = Instant::now();
    for origin in [worst, typical] {
        // Warm: builds the shortlist for this rule.
        drop(routing.route(origin, 1024, None, now).unwrap());
        let region = Region::new(GLOBAL);
        for _ in 0..10_000 {
            let target = routing.route(origin, 1024, None, now).unwrap();
            assert!(target.decision().candidates > 0);
        }
        let stats = region.change();
        assert_eq!(stats.allocations, 0, "{:?} allocations for 10,000 decisions", stats);
    }
}
