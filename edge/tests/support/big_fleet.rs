//! A fleet at the scale of the decision benchmark: 1,000 providers in 50
//! jurisdictions and 200 first-match rules, with measured providers. Shared by the
//! criterion benchmark and the allocation test.

use std::sync::Arc;
use std::time::Duration;

use meridian_edge::config::{Forwarding, OriginConfig, OriginSource, UpstreamConfig};
use meridian_edge::origin::{Origin, OriginResolver};
use meridian_edge::route::{RoutedProvider, Routing};
use meridian_edge::selector::ProviderStats;
use meridian_edge::upstream::ProviderPool;
use meridian_proto::{CompiledPolicy, Fleet, Jurisdiction};

/// `(routing, origin matching the last rule (1,000 allowed), origin matching rule 100 (20 allowed))`.
pub(crate) fn big_routing() -> (Routing, Origin, Origin) {
    let codes: Vec<Jurisdiction> = Jurisdiction::all().collect();
    let us: Jurisdiction = "US".parse().unwrap();
    let homes: Vec<Jurisdiction> = codes.iter().copied().filter(|j| *j != us).take(50).collect();
    let mut toml = String::new();
    for i in 0..1000 {
        toml.push_str(&format!(
            "[[providers]]\nid = \"p{i}\"\njurisdiction = \"{}\"\n[providers.endpoint]\naddress = \"127.0.0.1:{}\"\n",
            homes[i % 50],
            10000 + i
        ));
    }
    toml.push_str("[policy]\n");
    let rule_origins: Vec<Jurisdiction> = codes.iter().copied().filter(|j| *j != us).take(199).collect();
    for (k, o) in rule_origins.iter().enumerate() {
        toml.push_str(&format!(
            "[[policy.rules]]\nname = \"r{k}\"\norigin = \"{o}\"\nallow = [\"{}\"]\n",
            homes[k % 50]
        ));
    }
    toml.push_str("[[policy.rules]]\nname = \"rest\"\norigin = \"*\"\nallow = [\"*\"]\n");
    let fleet: Fleet = toml::from_str(&toml).unwrap();
    fleet.validate().unwrap();

    let roots = Arc::new(rustls::RootCertStore::empty());
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let upstream = UpstreamConfig::default();
    let providers = fleet
        .providers
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let stats = Arc::new(ProviderStats::default());
            let now = tokio::time::Instant::now();
            stats.observe_rtt(Duration::from_micros(1000 + (i as u64 * 7919) % 90_000), now);
            stats.observe_transfer(
                10_000_000 + (i as u64 * 104_729) % 90_000_000,
                Duration::from_secs(1),
                now,
            );
            let pool = Arc::new(ProviderPool::new(spec, &upstream, &roots, &crypto, 2).unwrap());
            Some(Arc::new(RoutedProvider {
                spec: spec.clone(),
                pool,
                stats,
                metrics: Arc::new(meridian_edge::record::ProviderMetrics::new(spec)),
            }))
        })
        .collect();
    let forwarding = Forwarding {
        trusted_hops: Vec::new(),
        via: "m".into(),
    };
    let origin = OriginResolver::new(&OriginConfig::default(), &fleet, &forwarding, None);
    let routing = Routing::new(origin, CompiledPolicy::compile(&fleet), providers);
    let worst = Origin {
        jurisdiction: Some(us),
        source: Some(OriginSource::Default),
    };
    let typical = Origin {
        jurisdiction: Some(rule_origins[100]),
        source: Some(OriginSource::Tenant),
    };
    (routing, worst, typical)
}
