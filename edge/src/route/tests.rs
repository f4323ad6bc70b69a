use std::time::Duration;

use meridian_proto::{Endpoint, Fleet, Group, Policy, Protocol, ProviderSpec, Rule, Scheme, UnknownOrigin};
use proptest::prelude::*;

use super::*;
use crate::config::{Forwarding, OriginConfig, OriginSource, UpstreamConfig};

const CODES: [&str; 5] = ["CN", "DE", "FR", "US", "JP"];

#[derive(Debug, Clone)]
enum Event {
    /// A failure seen by provider `i` (five in a row eject it).
    Failure(usize),
    /// A success.
    Success(usize),
    /// A round-trip sample in milliseconds.
    Rtt(usize, u64),
    /// Time passes, in seconds.
    Wait(u64),
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0..8usize).prop_map(Event::Failure),
        (0..8usize).prop_map(Event::Success),
        (0..8usize, 1..200u64).prop_map(|(i, ms)| Event::Rtt(i, ms)),
        (0..60u64).prop_map(Event::Wait),
    ]
}

fn j(s: &str) -> Jurisdiction {
    s.parse().unwrap()
}

fn place() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        prop::sample::select(&CODES[..]).prop_map(str::to_string),
        Just("group:EU".to_string()),
        (0..8usize).prop_map(|i| format!("provider:p{i}")),
    ]
}

fn arb_fleet() -> impl Strategy<Value = Fleet> {
    let state = prop_oneof![
        4 => Just(ProviderState::Active),
        1 => Just(ProviderState::Draining),
        1 => Just(ProviderState::Disabled),
    ];
    let providers = prop::collection::vec((prop::sample::select(&CODES[..]), state), 8);
    let rules = prop::collection::vec(
        (
            prop_oneof![
                Just("*".to_string()),
                Just("group:EU".to_string()),
                prop::sample::select(&CODES[..]).prop_map(str::to_string)
            ],
            prop::collection::vec(place(), 1..3),
            prop::collection::vec(place(), 0..2),
        ),
        1..4,
    );
    (providers, rules, any::<bool>()).prop_map(|(ps, rs, unknown_us)| Fleet {
        groups: vec![Group {
            name: "EU".into(),
            members: vec![j("DE"), j("FR")],
        }],
        providers: ps
            .into_iter()
            .enumerate()
            .map(|(i, (c, state))| ProviderSpec {
                id: ProviderId(format!("p{i}")),
                jurisdiction: j(c),
                operator: None,
                site: None,
                coordinates: None,
                tags: vec![],
                weight: 100,
                endpoint: Endpoint {
                    address: format!("127.0.0.1:{}", 20000 + i),
                    scheme: Scheme::Http,
                    sni: None,
                    host: None,
                },
                protocol: Protocol::Http1,
                max_connections: 4,
                state,
            })
            .collect(),
        policy: Policy {
            rules: rs
                .into_iter()
                .enumerate()
                .map(|(i, (o, a, d))| Rule {
                    name: format!("r{i}"),
                    origin: o.parse().unwrap(),
                    allow: a.iter().map(|p| p.parse().unwrap()).collect(),
                    deny: d.iter().map(|p| p.parse().unwrap()).collect(),
                    require_tags: vec![],
                })
                .collect(),
            unknown_origin: if unknown_us {
                UnknownOrigin::As(j("US"))
            } else {
                UnknownOrigin::Deny
            },
        },
        tenants: vec![],
    })
}

fn routing_for(fleet: &Fleet) -> Routing {
    let roots = Arc::new(rustls::RootCertStore::empty());
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let upstream = UpstreamConfig::default();
    let providers = fleet
        .providers
        .iter()
        .map(|spec| {
            (spec.state != ProviderState::Disabled).then(|| {
                let pool = Arc::new(ProviderPool::new(spec, &upstream, &roots, &crypto, 1).unwrap());
                Arc::new(RoutedProvider {
                    spec: spec.clone(),
                    pool,
                    stats: Arc::new(ProviderStats::default()),
                    metrics: Arc::new(crate::record::ProviderMetrics::new(spec)),
                })
            })
        })
        .collect();
    let forwarding = Forwarding {
        trusted_hops: vec![],
        via: "m".into(),
    };
    let origin = OriginResolver::new(&OriginConfig::default(), fleet, &forwarding, None);
    Routing::new(origin, CompiledPolicy::compile(fleet), providers)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The residency invariant end to end: whatever the fleet, policy, health history
    /// and origin, a chosen provider is always one the policy allows, and a fail-closed
    /// answer comes exactly when no allowed provider is usable.
    #[test]
    fn routing_never_leaves_the_allowed_set_and_fails_closed_exactly_when_it_must(
        fleet in arb_fleet(),
        events in prop::collection::vec(arb_event(), 0..40),
        origin in prop::option::of(prop::sample::select(&CODES[..])),
        bytes in prop_oneof![Just(0u64), Just(1u64 << 30)],
    ) {
        prop_assert!(fleet.validate().is_ok());
        let routing = routing_for(&fleet);
        let mut now = Instant::now();
        for e in &events {
            let stats = |i: usize| routing.providers()[i].as_ref().map(|p| p.stats.clone());
            match *e {
                Event::Failure(i) => if let Some(s) = stats(i) { s.observe_failure(now) },
                Event::Success(i) => if let Some(s) = stats(i) { s.observe_success() },
                Event::Rtt(i, ms) => if let Some(s) = stats(i) { s.observe_rtt(Duration::from_millis(ms), now) },
                Event::Wait(s) => now += Duration::from_secs(s),
            }
        }
        let origin = Origin { jurisdiction: origin.map(j), source: origin.map(|_| OriginSource::Header) };

        // The oracle: the policy (itself property-tested against a reference reading
        // in meridian-proto) and the providers' own state.
        let compiled = CompiledPolicy::compile(&fleet);
        let allowed: Vec<usize> = match compiled.evaluate(origin.jurisdiction) {
            Verdict::Allowed { providers, .. } => providers.iter().collect(),
            Verdict::Denied => vec![],
        };
        let usable: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|&i| {
                let p = routing.providers()[i].as_ref().unwrap();
                p.spec.state == ProviderState::Active && !p.stats.is_ejected(now)
            })
            .collect();

        match routing.route(origin, bytes, None, now) {
            Ok(t) => {
                prop_assert!(usable.contains(&t.index()), "chose {} outside usable {:?}", t.index(), usable);
                prop_assert_eq!(t.jurisdiction(), fleet.providers[t.index()].jurisdiction);
            }
            Err(RouteError::Denied { .. }) => prop_assert!(allowed.is_empty(), "denied with allowed {:?}", allowed),
            Err(RouteError::NoCompliant { candidates, .. }) => {
                prop_assert!(usable.is_empty(), "refused with usable {:?}", usable);
                prop_assert_eq!(candidates, allowed.len());
            }
        }
        // A retry that excludes the first choice stays inside the usable set too.
        if let Ok(first) = routing.route(origin, bytes, None, now) {
            match routing.route(origin, bytes, Some(first.index()), now) {
                Ok(t) => prop_assert!(usable.contains(&t.index()) && t.index() != first.index()),
                Err(_) => prop_assert!(usable.len() == 1),
            }
        }
    }
}
