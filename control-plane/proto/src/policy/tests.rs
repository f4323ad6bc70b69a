use proptest::prelude::*;

use super::*;
use crate::fleet::{Binding, Group, Tenant};
use crate::{Endpoint, Protocol, ProviderSpec, Scheme};

fn j(s: &str) -> Jurisdiction {
    s.parse().unwrap()
}

fn provider(id: &str, juris: &str, tags: &[&str], state: ProviderState) -> ProviderSpec {
    ProviderSpec {
        id: ProviderId(id.into()),
        jurisdiction: j(juris),
        operator: None,
        site: None,
        coordinates: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        weight: 100,
        endpoint: Endpoint {
            address: "127.0.0.1:1".into(),
            scheme: Scheme::Http,
            sni: None,
            host: None,
        },
        protocol: Protocol::Http1,
        max_connections: 8,
        state,
    }
}

fn rule(name: &str, origin: &str, allow: &[&str], deny: &[&str], tags: &[&str]) -> Rule {
    Rule {
        name: name.into(),
        origin: origin.parse().unwrap(),
        allow: allow.iter().map(|p| p.parse().unwrap()).collect(),
        deny: deny.iter().map(|p| p.parse().unwrap()).collect(),
        require_tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

/// The demo platform: CN data stays in CN, EU data in EU member states, the rest
/// anywhere but CN.
pub(crate) fn demo() -> Fleet {
    Fleet {
        groups: vec![Group {
            name: "EU".into(),
            members: ["DE", "FR", "NL", "IE"].iter().map(|c| j(c)).collect(),
        }],
        providers: vec![
            provider("cn-1", "CN", &[], ProviderState::Active),
            provider("cn-2", "CN", &[], ProviderState::Active),
            provider("de-1", "DE", &[], ProviderState::Active),
            provider("fr-1", "FR", &["keys-offshore"], ProviderState::Active),
            provider("us-1", "US", &[], ProviderState::Active),
            provider("us-2", "US", &["keys-offshore"], ProviderState::Disabled),
        ],
        policy: Policy {
            rules: vec![
                rule("cn-in-cn", "CN", &["CN"], &[], &[]),
                rule("eu-in-eu", "group:EU", &["group:EU"], &[], &[]),
                rule("rest-not-cn", "*", &["*"], &["CN"], &[]),
            ],
            unknown_origin: UnknownOrigin::Deny,
        },
        tenants: vec![Tenant {
            id: "acme-cn".into(),
            home: j("CN"),
            bindings: vec![Binding {
                host: Some("cn.demo.local".into()),
                path_prefix: None,
            }],
        }],
    }
}

fn ids(fleet: &Fleet, v: Verdict<'_>) -> Vec<String> {
    match v {
        Verdict::Allowed { providers, .. } => providers.iter().map(|i| fleet.providers[i].id.to_string()).collect(),
        Verdict::Denied => vec!["DENIED".into()],
    }
}

#[test]
fn first_match_decides_and_deny_and_state_filter() {
    let f = demo();
    f.validate().unwrap();
    let p = CompiledPolicy::compile(&f);
    assert_eq!(ids(&f, p.evaluate(Some(j("CN")))), ["cn-1", "cn-2"]);
    assert_eq!(ids(&f, p.evaluate(Some(j("DE")))), ["de-1", "fr-1"]);
    assert_eq!(ids(&f, p.evaluate(Some(j("IE")))), ["de-1", "fr-1"]);
    // us-2 is disabled: in no allowed set.
    assert_eq!(ids(&f, p.evaluate(Some(j("BR")))), ["de-1", "fr-1", "us-1"]);
    assert_eq!(ids(&f, p.evaluate(None)), ["DENIED"]);
    let Verdict::Allowed { rule, .. } = p.evaluate(Some(j("FR"))) else {
        panic!()
    };
    assert_eq!(p.rule_name(rule), "eu-in-eu");
}

#[test]
fn unknown_origin_can_stand_in_for_a_jurisdiction() {
    let mut f = demo();
    f.policy.unknown_origin = UnknownOrigin::As(j("US"));
    let p = CompiledPolicy::compile(&f);
    assert_eq!(ids(&f, p.evaluate(None)), ["de-1", "fr-1", "us-1"]);
}

#[test]
fn no_matching_rule_is_a_denial_and_tags_are_required() {
    let mut f = demo();
    f.policy.rules = vec![rule("eu-offshore", "group:EU", &["group:EU"], &[], &["keys-offshore"])];
    let p = CompiledPolicy::compile(&f);
    assert_eq!(ids(&f, p.evaluate(Some(j("DE")))), ["fr-1"]);
    assert_eq!(ids(&f, p.evaluate(Some(j("US")))), ["DENIED"]);
}

#[test]
fn places_and_origins_parse_and_print() {
    for s in ["*", "CN", "group:EU", "provider:cn-1"] {
        assert_eq!(s.parse::<Place>().unwrap().to_string(), s);
    }
    assert!("provider:x".parse::<OriginMatch>().is_err());
    assert!("UK".parse::<Place>().is_err());
    assert!("group:".parse::<Place>().is_err());
    assert_eq!("deny".parse::<UnknownOrigin>().unwrap(), UnknownOrigin::Deny);
    assert_eq!("US".parse::<UnknownOrigin>().unwrap(), UnknownOrigin::As(j("US")));
}

#[test]
fn validation_names_the_offending_field() {
    type Mutation = Box<dyn Fn(&mut Fleet)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|f| f.policy.rules[1].origin = "group:EEA".parse().unwrap()),
            "policy.rules[1].origin",
        ),
        (
            Box::new(|f| f.policy.rules[2].deny.push("provider:nope".parse().unwrap())),
            "policy.rules[2].deny[1]",
        ),
        (Box::new(|f| f.policy.rules[0].allow.clear()), "policy.rules[0].allow"),
        (Box::new(|f| f.policy.rules.clear()), "policy.rules"),
        (
            Box::new(|f| f.policy.rules[2].name = "cn-in-cn".into()),
            "policy.rules[2].name",
        ),
        (
            Box::new(|f| f.providers[3].id = ProviderId("cn-1".into())),
            "providers[3].id",
        ),
        (
            Box::new(|f| f.providers[0].endpoint.address = "nohost".into()),
            "providers[0].endpoint.address",
        ),
        (Box::new(|f| f.groups[0].members.clear()), "groups[0].members"),
        (
            Box::new(|f| {
                f.tenants.push(Tenant {
                    id: "other".into(),
                    home: j("DE"),
                    bindings: vec![Binding {
                        host: Some("cn.demo.local".into()),
                        path_prefix: Some("/x".into()),
                    }],
                })
            }),
            "tenants[1].bindings[0]",
        ),
        (
            Box::new(|f| {
                f.tenants[0].bindings.push(Binding {
                    host: None,
                    path_prefix: Some("x".into()),
                })
            }),
            "tenants[0].bindings[1].path_prefix",
        ),
    ];
    for (mutate, path) in cases {
        let mut f = demo();
        mutate(&mut f);
        let e = f.validate().expect_err(path);
        assert_eq!(e.path, path, "{e}");
    }
}

#[test]
fn bindings_overlap_only_when_a_request_could_match_both() {
    let b = |h: Option<&str>, p: Option<&str>| Binding {
        host: h.map(Into::into),
        path_prefix: p.map(Into::into),
    };
    assert!(b(Some("a"), None).overlaps(&b(Some("a"), Some("/x"))));
    assert!(!b(Some("a"), None).overlaps(&b(Some("b"), None)));
    assert!(!b(None, Some("/a/")).overlaps(&b(None, Some("/b/"))));
    assert!(b(None, Some("/a")).overlaps(&b(None, Some("/a/b"))));
    assert!(b(None, Some("/a")).overlaps(&b(Some("h"), None)));
}

const CODES: [&str; 6] = ["CN", "DE", "FR", "US", "BR", "JP"];

fn arb_place() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        prop::sample::select(&CODES[..]).prop_map(str::to_string),
        Just("group:EU".to_string()),
        (0..8usize).prop_map(|i| format!("provider:p{i}")),
    ]
}

fn arb_fleet() -> impl Strategy<Value = Fleet> {
    let providers = prop::collection::vec(
        (
            prop::sample::select(&CODES[..]),
            any::<bool>(),
            prop_oneof![
                Just(ProviderState::Active),
                Just(ProviderState::Draining),
                Just(ProviderState::Disabled)
            ],
        ),
        8,
    );
    let rules = prop::collection::vec(
        (
            prop_oneof![
                Just("*".to_string()),
                Just("group:EU".to_string()),
                prop::sample::select(&CODES[..]).prop_map(str::to_string)
            ],
            prop::collection::vec(arb_place(), 1..3),
            prop::collection::vec(arb_place(), 0..2),
            any::<bool>(),
        ),
        1..5,
    );
    (providers, rules, any::<bool>()).prop_map(|(ps, rs, unknown_us)| {
        let mut f = demo();
        f.providers = ps
            .into_iter()
            .enumerate()
            .map(|(i, (c, tagged, state))| provider(&format!("p{i}"), c, if tagged { &["t"] } else { &[] }, state))
            .collect();
        f.groups[0].members = vec![j("DE"), j("FR")];
        f.policy.rules = rs
            .into_iter()
            .enumerate()
            .map(|(i, (o, a, d, tag))| {
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                let d: Vec<&str> = d.iter().map(String::as_str).collect();
                rule(&format!("r{i}"), &o, &a, &d, if tag { &["t"] } else { &[] })
            })
            .collect();
        f.policy.unknown_origin = if unknown_us {
            UnknownOrigin::As(j("US"))
        } else {
            UnknownOrigin::Deny
        };
        f.tenants.clear();
        f
    })
}

/// A direct reading of the policy's meaning, to check the compiled form against.
fn reference(f: &Fleet, origin: Option<Jurisdiction>) -> Option<Vec<usize>> {
    let o = origin.or(match f.policy.unknown_origin {
        UnknownOrigin::As(j) => Some(j),
        UnknownOrigin::Deny => None,
    })?;
    let in_group = |g: &str, c: Jurisdiction| f.groups.iter().any(|x| x.name == g && x.members.contains(&c));
    let has = |pl: &Place, p: &ProviderSpec| match pl {
        Place::Any => true,
        Place::Country(c) => p.jurisdiction == *c,
        Place::Group(g) => in_group(g, p.jurisdiction),
        Place::Provider(id) => p.id == *id,
    };
    let r = f.policy.rules.iter().find(|r| match &r.origin {
        OriginMatch::Any => true,
        OriginMatch::Country(c) => *c == o,
        OriginMatch::Group(g) => in_group(g, o),
    })?;
    Some(
        f.providers
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                r.allow.iter().any(|pl| has(pl, p))
                    && !r.deny.iter().any(|pl| has(pl, p))
                    && r.require_tags.iter().all(|t| p.tags.contains(t))
                    && p.state != ProviderState::Disabled
            })
            .map(|(i, _)| i)
            .collect(),
    )
}

proptest! {
    #[test]
    fn compiled_policy_agrees_with_its_meaning(f in arb_fleet(), origin in prop::option::of(prop::sample::select(&CODES[..]))) {
        prop_assert!(f.validate().is_ok(), "{:?}", f.validate());
        let origin = origin.map(j);
        let compiled = CompiledPolicy::compile(&f);
        let got = match compiled.evaluate(origin) {
            Verdict::Allowed { providers, .. } => Some(providers.iter().collect::<Vec<_>>()),
            Verdict::Denied => None,
        };
        prop_assert_eq!(got, reference(&f, origin));
    }
}
