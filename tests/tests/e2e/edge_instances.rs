//! Edges counted per Envoy and each edge's configuration known to the admin API (issues 10 and 12):
//! two real Envoys polling under one `edge_name` with different configurations show up as two instances
//! with their own cursor and a different configuration hash, the admin API holds both documents, and
//! neither carries the edge's API key or an inline HMAC key.

use std::time::Duration;

use edgewarden_e2e::{
    eventually, AdminApi, Stack, AUDIENCE, CONTROL_PLANE_CLUSTER, EDGE_NAME, JWKS_PATH,
};
use serde_json::{json, Value};

/// An inline HMAC key (base64url of 40 bytes) the second edge verifies with; it must never leave it.
const HMAC_K: &str = "ZWRnZS1pbnN0YW5jZXMtaG1hYy1rZXktdGhhdC1uZXZlci1sZWF2ZXM";
/// How long two fresh Envoys may take to poll, be asked for their configuration and post it.
const REPORTED: Duration = Duration::from_secs(30);

/// An edge's configuration: the admin API as issuer and control plane, with `leeway`; `hmac` adds a
/// second issuer verified with an inline HMAC key.
fn config(admin: &AdminApi, leeway: u64, hmac: bool) -> Value {
    let mut issuers = vec![json!({
        "issuer": admin.issuer(),
        "audiences": [AUDIENCE],
        "remote_jwks": {"cluster": CONTROL_PLANE_CLUSTER, "path": JWKS_PATH},
    })];
    if hmac {
        issuers.push(json!({
            "issuer": "https://hmac.example",
            "jwks": {"keys": [{"kty": "oct", "kid": "hs-1", "alg": "HS256", "k": HMAC_K}]},
        }));
    }
    json!({
        "issuers": issuers,
        "clock_skew_seconds": leeway,
        "control_plane": {"cluster": CONTROL_PLANE_CLUSTER, "api_key": admin.edge_key, "edge_name": EDGE_NAME},
        "revocation": {"poll_interval_ms": 200, "long_poll_seconds": 2},
        "rules": [{"match": {"prefix": "/public"}, "allow_anonymous": true}],
    })
}

#[tokio::test]
async fn two_envoys_under_one_edge_name_are_two_instances_with_their_own_configuration() {
    let admin = AdminApi::start().await;
    let (first, second) = tokio::join!(
        Stack::start_with_control_plane(config(&admin, 60, false), admin.addr),
        Stack::start_with_control_plane(config(&admin, 5, true), admin.addr),
    );

    let (edge, _) = eventually(
        "two instances of the edge, each with a configuration the admin API holds",
        REPORTED,
        || async {
            let edge = admin
                .edge(EDGE_NAME)
                .await
                .ok_or("the edge is not listed")?;
            let instances = edge["instances"].as_array().cloned().unwrap_or_default();
            let known = instances
                .iter()
                .filter(|i| {
                    i["config_known"] == true
                        && i["instance"].as_str().is_some_and(|s| s.len() == 16)
                })
                .count();
            if instances.len() == 2 && known == 2 {
                Ok(edge)
            } else {
                Err(format!("{edge}"))
            }
        },
    )
    .await;
    let instances = edge["instances"].as_array().unwrap();
    assert_ne!(instances[0]["instance"], instances[1]["instance"], "{edge}");
    assert_ne!(
        instances[0]["config_hash"], instances[1]["config_hash"],
        "{edge}"
    );
    assert_eq!(edge["configs_differ"], true, "{edge}");
    for instance in instances {
        assert!(instance["last_poll"].is_i64(), "{instance}");
        assert!(instance["feed_cursor"].is_i64(), "{instance}");
        assert!(
            instance["staleness_seconds"]
                .as_i64()
                .is_some_and(|s| s < 30),
            "{instance}"
        );
    }

    let mut leeways = Vec::new();
    for instance in instances {
        let hash = instance["config_hash"].as_str().unwrap();
        let served = admin
            .get(&format!("/api/v1/edges/configs/{hash}"))
            .await
            .expect(200, "read an edge's configuration");
        let text = served.body["document"].to_string();
        assert!(
            !text.contains(&admin.edge_key) && !text.contains(HMAC_K),
            "a secret left the edge: {text}"
        );
        let document = &served.body["document"];
        assert_eq!(document["control_plane"]["api_key"], "<redacted>", "{text}");
        assert_eq!(document["control_plane"]["edge_name"], EDGE_NAME);
        if let Some(hmac) = document["issuers"].get(1) {
            assert_eq!(hmac["jwks"]["keys"][0]["k"], "<redacted>", "{text}");
            assert_eq!(hmac["jwks"]["keys"][0]["kid"], "hs-1");
        }
        leeways.push(document["clock_skew_seconds"].as_u64().unwrap());
    }
    leeways.sort_unstable();
    assert_eq!(leeways, vec![5, 60], "each instance's own configuration");
    // Neither the edges' logs nor the admin API's carry the key material either.
    for log in [first.envoy_log(), second.envoy_log(), admin.log()] {
        assert!(!log.contains(HMAC_K) && !log.contains(&admin.edge_key));
    }
    for stack in [&first, &second] {
        let log = stack.envoy_log();
        assert!(
            !log.contains("did not take this edge's configuration")
                && !log.contains("x-edgewarden-config header"),
            "the configuration report went wrong: {log}"
        );
    }
}
