//! The filter's counters as Envoy's admin `/stats` lists them (plugin metrics carry the `wasmcustom.` prefix):
//! allowed, denied per reason, and verified-token cache hits and misses.

use edgewarden_e2e::{Stack, TestKey, TokenBuilder};

use crate::base_config;

#[tokio::test]
async fn stats_count_decisions_and_cache_use() {
    let stack = Stack::start(base_config()).await;
    let token = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    for _ in 0..3 {
        let r = stack.get_with_token("/read", &token).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let expired = TokenBuilder::new(TestKey::Es256A)
        .claim("iat", edgewarden_e2e::now() - 7200)
        .expires_in(-3600)
        .sign();
    assert_eq!(
        stack
            .get_with_token("/read", &expired)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(stack.get("/read").send().await.unwrap().status(), 401);

    let stats = stack.stats().await;
    assert!(
        stats.contains("wasmcustom.edgewarden.requests_allowed"),
        "no edgewarden counters in /stats:\n{stats}"
    );
    assert_eq!(stack.filter_counter("requests_allowed").await, 3);
    assert_eq!(stack.filter_counter("requests_denied.expired").await, 1);
    assert_eq!(
        stack.filter_counter("requests_denied.missing_token").await,
        1
    );
    // The same token three times: verified once, then served from the cache.
    assert!(stack.filter_counter("cache_hits").await >= 2);
    assert!(stack.filter_counter("cache_misses").await >= 1);
}
