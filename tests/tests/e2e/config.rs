//! A bad plugin configuration: the filter refuses to start, logs a message naming the field,
//! and Envoy refuses the configuration instead of serving without the filter.

use edgewarden_e2e::start_expecting_refusal;
use serde_json::json;

use crate::{base_config, config_with};

async fn assert_refused_naming(config: serde_json::Value, field: &str) {
    let refused = start_expecting_refusal(config).await;
    assert!(!refused.status.success(), "envoy exited with success");
    assert!(
        refused.log.contains(field),
        "envoy's log does not name `{field}`:\n{}",
        refused.log
    );
}

#[tokio::test]
async fn misspelled_key_is_refused_naming_it() {
    let mut config = base_config();
    config["clock_skew_secs"] = json!(30);
    assert_refused_naming(config, "clock_skew_secs").await;
}

#[tokio::test]
async fn remote_jwks_without_cluster_is_refused_naming_the_field() {
    let mut config = base_config();
    config["issuers"][0]["remote_jwks"] = json!({"path": "/jwks.json"});
    assert_refused_naming(config, "issuers[0].remote_jwks").await;
}

#[tokio::test]
async fn rule_with_both_prefix_and_path_is_refused_naming_the_rule() {
    let config = config_with(
        "rules",
        json!([{"match": {"prefix": "/a", "path": "/a/b"}, "allow_anonymous": true}]),
    );
    assert_refused_naming(config, "rules[0].match").await;
}
