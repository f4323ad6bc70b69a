//! The admin API over real HTTPS: authentication, validation that names the field,
//! monotonic versions, provider writes, drain, dry-run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::{Method, StatusCode};
use serde_json::json;
use support::*;

#[tokio::test]
async fn nothing_happens_without_a_valid_token() {
    let api = api().await;
    for (method, path, body) in [
        (Method::GET, "/v1/fleet", None),
        (Method::PUT, "/v1/fleet", Some(fleet())),
        (Method::POST, "/v1/providers/cn-1/drain", None),
    ] {
        for token in [None, Some("wrong")] {
            let (status, doc) = api.call(method.clone(), path, token, body.clone()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} {token:?}");
            assert_eq!(doc["error"], "unauthorized");
        }
    }
    let (_, doc) = api.call(Method::GET, "/v1/fleet", Some(TOKEN), None).await;
    assert_eq!(doc["version"], 0, "the refused PUT stored nothing");
}

#[tokio::test]
async fn mutations_are_validated_and_bump_a_monotonic_version() {
    let api = api().await;
    let t = Some(TOKEN);
    let mut bad = fleet();
    bad["policy"]["rules"][1]["allow"] = json!(["group:EEA"]);
    let (status, doc) = api.call(Method::PUT, "/v1/fleet", t, Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(doc["error"], "invalid_fleet");
    assert_eq!(doc["path"], "policy.rules[1].allow[0]");

    let (status, doc) = api.call(Method::PUT, "/v1/fleet", t, Some(fleet())).await;
    assert_eq!((status, doc["version"].clone()), (StatusCode::OK, json!(1)));

    let provider = json!({ "id": "fr-1", "jurisdiction": "FR", "endpoint": { "address": "10.0.0.4:443" } });
    let (status, doc) = api.call(Method::PUT, "/v1/providers/fr-1", t, Some(provider)).await;
    assert_eq!((status, doc["version"].clone()), (StatusCode::OK, json!(2)));
    let (status, doc) = api.call(Method::GET, "/v1/providers/fr-1", t, None).await;
    assert_eq!(
        (status, doc["data"]["jurisdiction"].clone()),
        (StatusCode::OK, json!("FR"))
    );

    // Deleting a provider a rule names is refused, and names the rule.
    let mut pinned = fleet();
    pinned["policy"]["rules"][0]["allow"] = json!(["provider:cn-1"]);
    let (_, doc) = api.call(Method::PUT, "/v1/fleet", t, Some(pinned)).await;
    assert_eq!(doc["version"], 3);
    let (status, doc) = api.call(Method::DELETE, "/v1/providers/cn-1", t, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(doc["path"], "policy.rules[0].allow[0]");

    let (status, doc) = api.call(Method::POST, "/v1/providers/de-1/drain", t, None).await;
    assert_eq!((status, doc["version"].clone()), (StatusCode::OK, json!(4)));
    let (_, doc) = api.call(Method::GET, "/v1/providers/de-1", t, None).await;
    assert_eq!(doc["data"]["state"], "draining");
    let (status, _) = api.call(Method::POST, "/v1/providers/nope/drain", t, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, doc) = api.call(Method::GET, "/v1/fleet", t, None).await;
    assert_eq!(doc["version"], 4);
}

#[tokio::test]
async fn dry_run_answers_where_an_origin_may_go() {
    let api = api().await;
    let t = Some(TOKEN);
    api.call(Method::PUT, "/v1/fleet", t, Some(fleet())).await;
    api.call(Method::POST, "/v1/providers/us-1/drain", t, None).await;
    let (status, doc) = api
        .call(Method::POST, "/v1/dry-run", t, Some(json!({ "origin": "CN" })))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (doc["rule"].clone(), doc["allowed"].clone()),
        (json!("cn-in-cn"), json!(["cn-1"]))
    );
    let (_, doc) = api
        .call(Method::POST, "/v1/dry-run", t, Some(json!({ "origin": "BR" })))
        .await;
    assert_eq!(doc["allowed"], json!(["de-1", "us-1"]));
    assert_eq!(
        doc["eligible"],
        json!(["de-1"]),
        "draining providers take no new requests"
    );
    let (_, doc) = api.call(Method::POST, "/v1/dry-run", t, Some(json!({}))).await;
    assert_eq!(doc["denied"], true, "unknown origins are denied by default");
    let (status, _) = api
        .call(Method::POST, "/v1/dry-run", t, Some(json!({ "origin": "UK" })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn groups_tenants_and_policy_have_their_own_endpoints() {
    let api = api().await;
    let t = Some(TOKEN);
    api.call(Method::PUT, "/v1/fleet", t, Some(fleet())).await;
    let eea = json!({ "name": "EEA", "members": ["DE", "FR", "NO"] });
    let (status, doc) = api.call(Method::PUT, "/v1/groups/EEA", t, Some(eea)).await;
    assert_eq!((status, doc["version"].clone()), (StatusCode::OK, json!(2)));
    let tenant = json!({ "id": "acme", "home": "DE", "bindings": [{ "host": "acme.test" }] });
    let (status, _) = api.call(Method::PUT, "/v1/tenants/acme", t, Some(tenant)).await;
    assert_eq!(status, StatusCode::OK);
    let clash = json!({ "id": "other", "home": "US", "bindings": [{ "host": "acme.test" }] });
    let (status, doc) = api.call(Method::PUT, "/v1/tenants/other", t, Some(clash)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(doc["path"], "tenants[1].bindings[0]");

    let mut policy = fleet()["policy"].clone();
    policy["rules"][1]["origin"] = json!("group:EEA");
    let (status, _) = api.call(Method::PUT, "/v1/policy", t, Some(policy)).await;
    assert_eq!(status, StatusCode::OK);
    // The group is in use now: removing it is refused with the rule that names it.
    let (status, doc) = api.call(Method::DELETE, "/v1/groups/EEA", t, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(doc["path"], "policy.rules[1].origin");
    let (_, doc) = api
        .call(Method::POST, "/v1/dry-run", t, Some(json!({ "origin": "NO" })))
        .await;
    assert_eq!(doc["rule"], "eu-in-eu");

    let (_, doc) = api.call(Method::GET, "/v1/groups/EEA", t, None).await;
    assert_eq!(doc["data"]["members"], json!(["DE", "FR", "NO"]));
    let (_, doc) = api.call(Method::GET, "/v1/tenants/acme", t, None).await;
    assert_eq!(doc["data"]["home"], "DE");
    let (status, _) = api.call(Method::GET, "/v1/tenants/nobody", t, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, doc) = api.call(Method::GET, "/v1/jurisdictions", t, None).await;
    let de = doc["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["code"] == "DE")
        .unwrap();
    assert_eq!(de["groups"], json!(["EU", "EEA"]));
    assert_eq!(de["providers"], json!(["de-1"]));
    assert_eq!(de["tenants"], json!(["acme"]));
    // A dry run for an edge nobody has heard of is an error, not a guess.
    let (status, doc) = api
        .call(
            Method::POST,
            "/v1/dry-run",
            t,
            Some(json!({ "origin": "DE", "edge": "ghost.test" })),
        )
        .await;
    assert_eq!(
        (status, doc["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_edge"))
    );
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let api = api().await;
    let (status, doc) = api.call(Method::GET, "/v1/openapi.json", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/fleet",
        "/v1/providers/{id}",
        "/v1/providers/{id}/drain",
        "/v1/tenants/{id}",
        "/v1/dry-run",
        "/v1/policy",
        "/v1/edges",
        "/v1/edges/{id}",
        "/v1/jurisdictions",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
}
