use std::sync::Arc;

use proptest::prelude::*;

use super::*;

#[tokio::test(start_paused = true)]
async fn peak_ewma_jumps_to_peaks_and_decays_slowly() {
    let mut e = PeakEwma::new(Duration::from_secs(10));
    let t0 = Instant::now();
    e.observe(0.010, t0);
    e.observe(0.200, t0 + Duration::from_secs(1));
    assert_eq!(e.get(), Some(0.200), "a peak is taken at once");
    e.observe(0.010, t0 + Duration::from_secs(2));
    let v = e.get().unwrap();
    assert!(v > 0.15, "one low sample a second later barely moves it: {v}");
    for s in 3..120 {
        e.observe(0.010, t0 + Duration::from_secs(s));
    }
    let v = e.get().unwrap();
    assert!((v - 0.010).abs() < 0.001, "but it does come back: {v}");
}

#[tokio::test(start_paused = true)]
async fn five_failures_eject_with_growing_backoff_and_slow_start() {
    let s = Arc::new(ProviderStats::default());
    let t0 = Instant::now();
    s.observe_rtt(Duration::from_millis(10), t0);
    let normal = s.cost(0, t0).unwrap();
    for _ in 0..4 {
        s.observe_failure(t0);
    }
    assert!(!s.is_ejected(t0));
    s.observe_failure(t0);
    assert!(s.is_ejected(t0));
    assert_eq!(s.cost(0, t0), None);
    let back = t0 + EJECT_BASE;
    assert!(!s.is_ejected(back));
    assert!(s.cost(0, back).unwrap() > 4.0 * normal, "returns slowly");
    assert!((s.cost(0, back + SLOW_START).unwrap() - normal).abs() < 1e-9);
    for _ in 0..5 {
        s.observe_failure(back);
    }
    assert!(s.is_ejected(back + EJECT_BASE), "second ejection lasts twice as long");
    assert!(!s.is_ejected(back + EJECT_BASE * 2));
}

#[tokio::test(start_paused = true)]
async fn an_answer_is_a_round_trip_sample_and_a_success_or_failure() {
    let s = Arc::new(ProviderStats::default());
    let t0 = Instant::now();
    for _ in 0..4 {
        s.observe_answer(Duration::from_millis(30), true, t0);
    }
    assert_eq!(s.estimates().0, Some(0.030));
    // A good answer clears the run of failures: four more do not eject.
    s.observe_answer(Duration::from_millis(30), false, t0);
    for _ in 0..4 {
        s.observe_answer(Duration::from_millis(30), true, t0);
    }
    assert!(!s.is_ejected(t0));
    s.observe_answer(Duration::from_millis(30), true, t0);
    assert!(s.is_ejected(t0), "the fifth 5xx in a row ejects");
}

#[tokio::test(start_paused = true)]
async fn cost_weighs_rtt_against_bandwidth_by_size_and_load() {
    let now = Instant::now();
    let near = Arc::new(ProviderStats::default());
    near.observe_rtt(Duration::from_millis(5), now);
    near.observe_transfer(10_000_000, Duration::from_secs(1), now); // 10 MB/s
    let far = Arc::new(ProviderStats::default());
    far.observe_rtt(Duration::from_millis(50), now);
    far.observe_transfer(100_000_000, Duration::from_secs(1), now); // 100 MB/s
    assert!(near.cost(1024, now) < far.cost(1024, now), "small objects follow RTT");
    assert!(
        near.cost(100 << 20, now) > far.cost(100 << 20, now),
        "large ones follow bandwidth"
    );
    let before = near.cost(1024, now).unwrap();
    let _t = near.begin();
    assert!(near.cost(1024, now).unwrap() > 1.5 * before, "in-flight load costs");
}

#[tokio::test(start_paused = true)]
async fn fleet_verdict_excludes_but_never_overrides_local_failure() {
    let now = Instant::now();
    let p = ProviderStats::default();
    assert!(p.cost(0, now).is_some());
    p.set_fleet_down(true);
    assert!(p.cost(0, now).is_none(), "down for the fleet: not used");
    p.set_fleet_down(false);
    assert!(p.cost(0, now).is_some());
    for _ in 0..EJECT_AFTER {
        p.observe_failure(now);
    }
    p.set_fleet_down(false);
    assert!(
        p.cost(0, now).is_none(),
        "the fleet thinks it is up; this edge saw it fail"
    );
}

#[test]
fn choose_picks_among_near_best_only() {
    let cands = [(0, Some(1.0)), (1, Some(1.1)), (2, Some(5.0)), (3, None)];
    for _ in 0..200 {
        let (i, reason) = choose(&cands, random).unwrap();
        assert!(i == 0 || i == 1, "{i}");
        assert_eq!(reason, Reason::PowerOfTwo);
    }
    assert_eq!(choose(&[(7, Some(2.0)), (8, None)], random), Some((7, Reason::Only)));
    assert_eq!(
        choose(&[(7, Some(2.0)), (8, Some(9.0))], random),
        Some((7, Reason::Best))
    );
    assert_eq!(choose(&[(7, None)], random), None);
    assert_eq!(choose(&[], random), None);
}

#[test]
fn power_of_two_spreads_load_over_equal_candidates() {
    let cands = [(0, Some(1.0)), (1, Some(1.0)), (2, Some(1.0))];
    let mut counts = [0; 3];
    for _ in 0..3000 {
        counts[choose(&cands, random).unwrap().0] += 1;
    }
    assert!(counts.iter().all(|&c| c > 500), "{counts:?}");
}

#[test]
fn sizes_are_learned_per_host_and_first_path_segment() {
    let t = SizeTable::default();
    assert_eq!(t.expected("a.test", "/videos/x.mp4"), 0);
    t.learn("a.test", "/videos/x.mp4", 8 << 20);
    assert_eq!(t.expected("a.test", "/videos/other.mp4"), 8 << 20, "same bucket");
    assert_eq!(t.expected("b.test", "/videos/x.mp4"), 0, "other host");
    t.learn("a.test", "/videos/y", 0);
    assert_eq!(t.expected("a.test", "/videos/z"), 6 << 20, "a moving average");
}

#[test]
fn an_object_seen_before_is_expected_at_its_own_size() {
    let t = SizeTable::default();
    t.learn("a.test", "/b/movie.mp4", 900 << 20);
    t.learn("a.test", "/b/thumb.jpg", 16 << 10);
    assert_eq!(t.expected("a.test", "/b/movie.mp4"), 900 << 20);
    assert_eq!(t.expected("a.test", "/b/thumb.jpg"), 16 << 10);
    assert_eq!(
        t.expected("a.test", "/b/thumb.jpg?x=1"),
        t.expected("a.test", "/b/new"),
        "unseen: the route's average"
    );
    assert_eq!(t.expected("b.test", "/b/thumb.jpg"), 0, "another host's object");
    t.learn("a.test", "/b/empty", 0);
    assert_eq!(
        t.expected("a.test", "/b/empty"),
        0,
        "an empty object is known to be empty"
    );
    t.learn("a.test", "/b/thumb.jpg", 32 << 10);
    assert_eq!(t.expected("a.test", "/b/thumb.jpg"), 32 << 10, "the latest size");
}

#[test]
fn latency_quantiles_follow_the_samples() {
    let t = LatencyTracker::default();
    assert_eq!(t.quantile(0.95, 10), None, "too few samples");
    for _ in 0..95 {
        t.record(Duration::from_millis(2));
    }
    for _ in 0..5 {
        t.record(Duration::from_millis(200));
    }
    let p50 = t.quantile(0.5, 10).unwrap();
    let p99 = t.quantile(0.99, 10).unwrap();
    assert!(
        p50 >= Duration::from_millis(2) && p50 < Duration::from_millis(3),
        "{p50:?}"
    );
    assert!(
        p99 >= Duration::from_millis(200) && p99 < Duration::from_millis(300),
        "{p99:?}"
    );
}

proptest! {
    #[test]
    fn choice_is_always_a_usable_candidate(costs in prop::collection::vec(prop::option::of(0.0001f64..10.0), 0..20), seed in any::<u64>()) {
        let cands: Vec<Candidate> = costs.iter().copied().enumerate().collect();
        let mut x = seed | 1;
        let rng = move || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
        match choose(&cands, rng) {
            Some((i, _)) => prop_assert!(cands[i].1.is_some()),
            None => prop_assert!(cands.iter().all(|c| c.1.is_none())),
        }
    }
}
