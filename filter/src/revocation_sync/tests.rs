//! Unit tests of the poller lease, the feed poll and its answers, and followers catching up through shared
//! data, with several VM states over one recording host (its siblings share the shared data).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use edgewarden_core::engine::Engine;
use edgewarden_core::revocation::RevocationView;
use proxy_wasm::types::LogLevel;
use serde_json::{json, Value};

use super::*;
use crate::host::CallResponse;
use crate::metrics::Metrics;
use crate::state::VmState;
use crate::test_host::{FakeHost, NOW};

/// Any valid key: these tests never verify a token.
pub(crate) fn ed25519_jwk() -> Value {
    use base64::Engine as _;
    let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]));
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.pk.as_ref());
    json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"})
}

fn vm(id: u64, revocation: Value) -> VmState {
    let config = json!({
        "issuers": [{"issuer": "https://issuer.test", "jwks": {"keys": [ed25519_jwk()]}}],
        "control_plane": {"cluster": "cp", "api_key": "ewk_secret", "edge_name": "edge-1"},
        "revocation": revocation,
    });
    let engine = Engine::from_json(config.to_string().as_bytes()).unwrap();
    json_feed_only(VmState::with_identity(
        engine,
        Metrics::default(),
        id,
        NOW * 1000,
    ))
}

/// A VM that syncs through the JSON feed alone, as against an admin API without the edge snapshot (most
/// tests here are about the feed; the snapshot's own tests use [`vm_with_snapshot`]).
fn json_feed_only(vm: VmState) -> VmState {
    control(&vm).sync.borrow_mut().snapshot_path = None;
    vm
}

fn control(vm: &VmState) -> &Control {
    vm.control.as_ref().unwrap()
}

fn feed(cursor: u64, full: bool, jtis: &[&str]) -> Vec<u8> {
    let jtis: Vec<Value> = jtis
        .iter()
        .map(|j| json!({"jti": j, "exp": NOW + 3600}))
        .collect();
    json!({"cursor": cursor, "full": full, "now": NOW, "revoked_jtis": jtis,
           "revoked_subjects": [], "revoked_clients": []})
    .to_string()
    .into_bytes()
}

fn ok(body: Vec<u8>) -> CallResponse {
    CallResponse {
        status: Some(200),
        body_size: body.len(),
        body: Some(body),
    }
}

fn status(code: Option<u16>) -> CallResponse {
    CallResponse {
        status: code,
        body: None,
        body_size: 0,
    }
}

fn revoked(vm: &VmState, jti: &str) -> bool {
    control(vm)
        .revocation
        .borrow()
        .set()
        .jti_expiry(jti)
        .is_some()
}

/// One timer step of `vm` at the host's current time.
fn tick(host: &mut FakeHost, vm: &VmState) {
    let now = host.now_ms;
    on_tick(host, control(vm), now);
}

/// Answers the poll `vm` has in flight.
fn answer(host: &mut FakeHost, vm: &VmState, resp: &CallResponse) {
    let token = host.calls.last().unwrap().token;
    let now = host.now_ms;
    assert!(on_poll_response(host, control(vm), token, resp, now));
}

#[test]
fn first_vm_takes_the_lease_and_polls_at_once_without_waiting() {
    let a = vm(11, json!({}));
    let b = vm(22, json!({}));
    let mut host_a = FakeHost::new();
    let mut host_b = host_a.sibling();
    tick(&mut host_a, &a);
    tick(&mut host_b, &b);
    assert_eq!(control(&a).sync.borrow().role(), Role::Poller);
    assert_eq!(control(&b).sync.borrow().role(), Role::Follower);
    assert!(host_b.calls.is_empty(), "followers never poll");
    let call = &host_a.calls[0];
    assert_eq!(call.cluster, "cp");
    assert_eq!(
        call.header(":path"),
        Some("/api/v1/revocations/feed?since=0&limit=25000")
    );
    assert_eq!(call.header("authorization"), Some("Bearer ewk_secret"));
    assert_eq!(call.header("x-edgewarden-edge"), Some("edge-1"));
    assert_eq!(call.header("if-none-match"), None, "nothing to compare yet");
    // Unsynced: a stale state until the first answer, whatever the VM.
    let now = host_b.now();
    assert!(control(&b).revocation.borrow().stale(now).is_some());
}

#[test]
fn poll_answers_reach_every_follower_within_a_tick() {
    let a = vm(11, json!({}));
    let b = vm(22, json!({}));
    let mut host_a = FakeHost::new();
    let mut host_b = host_a.sibling();
    tick(&mut host_a, &a);
    tick(&mut host_b, &b);
    answer(&mut host_a, &a, &ok(feed(1, true, &["j1"])));
    assert!(revoked(&a, "j1"));
    // Something changed: the next poll goes out at once, held by the admin API.
    let call = host_a.calls.last().unwrap();
    assert_eq!(
        call.header(":path"),
        Some("/api/v1/revocations/feed?since=1&limit=25000&wait=20")
    );
    assert_eq!(call.header("if-none-match"), Some("\"c1\""));
    assert_eq!(call.timeout, Duration::from_millis(22_000));

    host_b.advance_ms(100);
    tick(&mut host_b, &b);
    assert!(revoked(&b, "j1"), "follower loaded the snapshot");
    assert!(control(&b).revocation.borrow().stale(NOW).is_none());

    answer(&mut host_a, &a, &ok(feed(2, false, &["j2"])));
    tick(&mut host_b, &b);
    assert!(revoked(&b, "j1") && revoked(&b, "j2"), "delta applied");
    assert_eq!(
        control(&b).sync.borrow().seq(),
        control(&a).sync.borrow().seq()
    );
    assert_eq!(host_a.counted(Stat::RevocationPoll), 2);
    assert_eq!(host_a.counted(Stat::RevocationUpdate), 2);
    assert_eq!(host_a.gauge_value("edgewarden.revocation_cursor"), Some(2));
    assert_eq!(host_a.gauge_value("edgewarden.revocation_entries"), Some(2));
}

#[test]
fn follower_far_behind_catches_up_from_the_snapshot() {
    let a = vm(11, json!({}));
    let b = vm(22, json!({}));
    let mut host_a = FakeHost::new();
    let mut host_b = host_a.sibling();
    tick(&mut host_a, &a);
    answer(&mut host_a, &a, &ok(feed(1, true, &[])));
    // More deltas than the ring holds while the follower sleeps.
    let names: Vec<String> = (0..(RING + 10)).map(|i| format!("j{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        answer(&mut host_a, &a, &ok(feed(i as u64 + 2, false, &[name])));
    }
    tick(&mut host_b, &b);
    for name in &names {
        assert!(revoked(&b, name), "{name}");
    }
    assert_eq!(
        control(&b).sync.borrow().seq(),
        control(&a).sync.borrow().seq()
    );
}

#[test]
fn not_modified_counts_as_a_sync_and_an_immediate_empty_answer_keeps_the_interval() {
    let a = vm(11, json!({"poll_interval_ms": 1000}));
    let mut host = FakeHost::new();
    tick(&mut host, &a);
    answer(&mut host, &a, &ok(feed(3, true, &[])));
    let polls = host.calls.len();
    host.advance_ms(30_000);
    answer(&mut host, &a, &status(Some(304)));
    let now = host.now();
    assert_eq!(control(&a).revocation.borrow().staleness(now), Some(0));
    // The held poll ran its course: the next one goes out at once.
    assert_eq!(host.calls.len(), polls + 1);
    // An answer that came back at once with nothing new waits for the poll interval.
    host.advance_ms(10);
    answer(&mut host, &a, &status(Some(304)));
    assert_eq!(host.calls.len(), polls + 1);
    host.advance_ms(500);
    tick(&mut host, &a);
    assert_eq!(host.calls.len(), polls + 1);
    host.advance_ms(600);
    tick(&mut host, &a);
    assert_eq!(host.calls.len(), polls + 2);
}

#[test]
fn failed_polls_keep_the_state_back_off_and_go_stale_after_the_maximum() {
    let a = vm(
        11,
        json!({"poll_interval_ms": 200, "max_staleness_seconds": 5}),
    );
    let mut host = FakeHost::new();
    tick(&mut host, &a);
    answer(&mut host, &a, &ok(feed(1, true, &["j1"])));
    // The long poll is held for at most a third of the staleness bound.
    assert_eq!(
        host.calls.last().unwrap().header(":path"),
        Some("/api/v1/revocations/feed?since=1&limit=25000&wait=1")
    );
    for problem in [
        status(None),
        status(Some(503)),
        ok(b"{not json".to_vec()),
        status(Some(401)),
    ] {
        host.advance_ms(100);
        answer(&mut host, &a, &problem);
        assert!(revoked(&a, "j1"), "the last state stays");
        // Back off, and never hold a poll while failing.
        host.advance_ms(MAX_BACKOFF_MS);
        tick(&mut host, &a);
        assert!(!host
            .calls
            .last()
            .unwrap()
            .header(":path")
            .unwrap()
            .contains("wait"));
    }
    assert_eq!(host.counted(Stat::RevocationPollFailure), 4);
    let warnings: Vec<String> = host
        .logs
        .borrow()
        .iter()
        .filter(|(l, _)| *l == LogLevel::Warn)
        .map(|(_, m)| m.clone())
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "repeated failures are logged once: {warnings:?}"
    );
    assert!(warnings[0].contains("no response"), "{}", warnings[0]);
    assert!(!warnings[0].contains("ewk_secret"));
    let now = host.now();
    let stale = control(&a).revocation.borrow().stale(now);
    assert!(
        stale.as_deref().is_some_and(|s| s.contains("(max 5s)")),
        "{stale:?}"
    );
}

#[test]
fn refused_credentials_are_logged_with_what_to_fix() {
    let a = vm(11, json!({}));
    let mut host = FakeHost::new();
    tick(&mut host, &a);
    answer(&mut host, &a, &status(Some(403)));
    let logs = host.logs.borrow();
    assert!(
        logs.iter()
            .any(|(_, m)| m.contains("control_plane.api_key") && m.contains("edge key")),
        "{logs:?}"
    );
}

#[test]
fn lease_moves_to_another_vm_when_the_poller_stops_renewing() {
    let a = vm(11, json!({}));
    let b = vm(22, json!({}));
    let mut host_a = FakeHost::new();
    let mut host_b = host_a.sibling();
    tick(&mut host_a, &a);
    answer(&mut host_a, &a, &ok(feed(4, true, &["j1"])));
    tick(&mut host_b, &b);
    assert_eq!(control(&b).sync.borrow().role(), Role::Follower);
    // A goes quiet (its VM was torn down); within the lease B keeps following.
    host_b.advance_ms(LEASE_MS - 1);
    tick(&mut host_b, &b);
    assert!(host_b.calls.is_empty());
    host_b.advance_ms(2);
    tick(&mut host_b, &b);
    assert_eq!(control(&b).sync.borrow().role(), Role::Poller);
    let call = host_b.calls.last().expect("the new poller polls");
    assert!(
        call.header(":path").unwrap().contains("since=4"),
        "{call:?}"
    );
    // A wakes up, sees the lease taken, and follows; its late answer is not published.
    host_a.now_ms = host_b.now_ms;
    tick(&mut host_a, &a);
    assert_eq!(control(&a).sync.borrow().role(), Role::Follower);
    let seq = control(&b).sync.borrow().seq();
    answer(&mut host_a, &a, &ok(feed(9, true, &[])));
    assert_eq!(control(&b).sync.borrow().seq(), seq);
    assert!(revoked(&a, "j1"));
}

#[test]
fn unusable_shared_records_leave_the_follower_unsynced_rather_than_wrong() {
    let a = vm(11, json!({}));
    let b = vm(22, json!({}));
    let mut host_a = FakeHost::new();
    let mut host_b = host_a.sibling();
    tick(&mut host_a, &a);
    answer(&mut host_a, &a, &ok(feed(1, true, &["j1"])));
    let snapshot_key = control(&a).sync.borrow().keys.snapshot.clone();
    host_a.set_shared(&snapshot_key, b"garbage that is not a record");
    tick(&mut host_b, &b);
    assert!(!revoked(&b, "j1"));
    assert_eq!(control(&b).revocation.borrow().last_sync(), None);
    assert!(control(&b).revocation.borrow().stale(NOW).is_some());
}

#[test]
fn a_vm_shutting_down_hands_the_lease_to_the_next_one_at_once() {
    let a = vm(11, json!({}));
    let b = vm(22, json!({}));
    let mut host_a = FakeHost::new();
    let mut host_b = host_a.sibling();
    tick(&mut host_a, &a);
    release(&mut host_a, control(&a));
    host_b.advance_ms(100);
    tick(&mut host_b, &b);
    assert_eq!(control(&b).sync.borrow().role(), Role::Poller);
    assert_eq!(host_b.calls.len(), 1, "polls at once, not after the lease");
    // Releasing a lease held by someone else changes nothing.
    release(&mut host_a, control(&a));
    tick(&mut host_b, &b);
    assert_eq!(control(&b).sync.borrow().role(), Role::Poller);
}

/// A feed page: `feed()` plus a continuation.
fn page(cursor: u64, full: bool, jtis: &[&str], next: Option<&str>) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&feed(cursor, full, jtis)).unwrap();
    if let Some(next) = next {
        body["next"] = json!(next);
    }
    body.to_string().into_bytes()
}

#[test]
fn a_paged_snapshot_is_assembled_aside_and_replaces_the_state_at_its_last_page() {
    let a = vm(11, json!({}));
    let b = vm(22, json!({}));
    let mut host_a = FakeHost::new();
    let mut host_b = host_a.sibling();
    tick(&mut host_a, &a);
    answer(&mut host_a, &a, &ok(feed(3, true, &["j-old"])));
    // The admin API lost track of cursor 3 (a restore): a new full listing, in two pages.
    answer(&mut host_a, &a, &ok(page(7, true, &["j1"], Some("p/2+"))));
    assert!(
        revoked(&a, "j-old") && !revoked(&a, "j1"),
        "half a snapshot is never enforced"
    );
    let call = host_a.calls.last().unwrap();
    assert_eq!(
        call.header(":path"),
        Some("/api/v1/revocations/feed?since=3&limit=25000&after=p%2F2%2B")
    );
    assert_eq!(call.header("if-none-match"), None);
    answer(&mut host_a, &a, &ok(page(7, true, &["j2"], None)));
    assert!(revoked(&a, "j1") && revoked(&a, "j2") && !revoked(&a, "j-old"));
    assert_eq!(control(&a).revocation.borrow().set().cursor(), 7);
    tick(&mut host_b, &b);
    assert!(revoked(&b, "j1") && revoked(&b, "j2") && !revoked(&b, "j-old"));
}

#[test]
fn a_paged_delta_is_merged_page_by_page_and_moves_the_cursor_at_its_end() {
    let a = vm(11, json!({}));
    let b = vm(22, json!({}));
    let mut host_a = FakeHost::new();
    let mut host_b = host_a.sibling();
    tick(&mut host_a, &a);
    answer(&mut host_a, &a, &ok(feed(1, true, &[])));
    answer(&mut host_a, &a, &ok(page(5, false, &["j3"], Some("n1"))));
    assert!(revoked(&a, "j3"), "revoking early is safe");
    assert_eq!(control(&a).revocation.borrow().set().cursor(), 1);
    tick(&mut host_b, &b);
    assert!(revoked(&b, "j3"));
    answer(&mut host_a, &a, &ok(page(5, false, &["j4"], None)));
    assert_eq!(control(&a).revocation.borrow().set().cursor(), 5);
    tick(&mut host_b, &b);
    assert!(revoked(&b, "j4"));
    assert_eq!(control(&b).revocation.borrow().set().cursor(), 5);
}

#[test]
fn a_listing_cut_short_starts_over_and_keeps_the_last_full_state() {
    let a = vm(11, json!({}));
    let mut host = FakeHost::new();
    tick(&mut host, &a);
    answer(&mut host, &a, &ok(page(2, true, &["j1"], Some("n1"))));
    answer(&mut host, &a, &status(None));
    assert!(!revoked(&a, "j1"));
    assert_eq!(control(&a).revocation.borrow().last_sync(), None);
    host.advance_ms(MAX_BACKOFF_MS);
    tick(&mut host, &a);
    let path = host.calls.last().unwrap().header(":path").unwrap();
    assert_eq!(path, "/api/v1/revocations/feed?since=0&limit=25000");
}

#[test]
fn followers_load_a_large_snapshot_part_by_part() {
    let a = vm(11, json!({}));
    let b = vm(22, json!({}));
    let mut host_a = FakeHost::new();
    let mut host_b = host_a.sibling();
    tick(&mut host_a, &a);
    let names: Vec<String> = (0..(PART_JTIS * 2 + 5)).map(|i| format!("j{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    answer(&mut host_a, &a, &ok(feed(9, true, &refs)));
    let part_keys = host_a
        .shared
        .borrow()
        .keys()
        .filter(|k| k.contains(".part."))
        .count();
    assert_eq!(part_keys, 4, "principals, then three parts of jtis");
    let largest = host_a
        .shared
        .borrow()
        .values()
        .map(|(v, _)| v.len())
        .max()
        .unwrap();
    assert!(
        largest < 1_100_000,
        "no shared value holds the whole state: {largest}"
    );
    tick(&mut host_b, &b);
    for name in [&names[0], &names[PART_JTIS], &names[PART_JTIS * 2 + 4]] {
        assert!(revoked(&b, name), "{name}");
    }
    assert_eq!(
        control(&b).revocation.borrow().set().jti_count(),
        names.len()
    );
}

/// A VM whose control plane is reached through `cluster`, optionally with an `authority` and a `stat_prefix`.
fn vm_via(id: u64, cluster: &str, authority: Option<&str>, stat_prefix: Option<&str>) -> VmState {
    let mut config = json!({
        "issuers": [{"issuer": "https://issuer.test", "jwks": {"keys": [ed25519_jwk()]}}],
        "control_plane": {"cluster": cluster, "api_key": "ewk_secret", "edge_name": "edge-1"},
    });
    if let Some(a) = authority {
        config["control_plane"]["authority"] = json!(a);
    }
    if let Some(p) = stat_prefix {
        config["stat_prefix"] = json!(p);
    }
    let engine = Engine::from_json(config.to_string().as_bytes()).unwrap();
    json_feed_only(VmState::with_identity(
        engine,
        Metrics::default(),
        id,
        NOW * 1000,
    ))
}

#[test]
fn feed_polls_send_a_host_name_as_authority_never_an_istio_cluster_name() {
    let cases = [
        ("cp", None, "cp"),
        (
            "outbound|8080||edgewarden-admin.edgewarden.svc.cluster.local",
            None,
            "edgewarden-admin.edgewarden.svc.cluster.local:8080",
        ),
        (
            "outbound|80||edgewarden-admin.edgewarden.svc.cluster.local",
            None,
            "edgewarden-admin.edgewarden.svc.cluster.local",
        ),
        (
            "outbound|8080||edgewarden-admin.edgewarden.svc.cluster.local",
            Some("admin.example.com"),
            "admin.example.com",
        ),
    ];
    for (cluster, authority, expected) in cases {
        let vm = vm_via(11, cluster, authority, None);
        let mut host = FakeHost::new();
        tick(&mut host, &vm);
        let call = host.calls.last().unwrap();
        assert_eq!(call.cluster, cluster);
        assert_eq!(call.header(":authority"), Some(expected), "{cluster}");
    }
}

#[test]
fn named_plugin_instances_on_one_feed_each_elect_their_own_poller() {
    // Two filters in one Envoy reading the same feed: without names they share one poller (one VM polls for
    // both); with a stat_prefix each has its own, so each sets its own gauges.
    let a = vm_via(11, "cp", None, Some("public"));
    let b = vm_via(22, "cp", None, Some("internal"));
    let mut host_a = FakeHost::new();
    let mut host_b = host_a.sibling();
    tick(&mut host_a, &a);
    tick(&mut host_b, &b);
    assert_eq!(control(&a).sync.borrow().role(), Role::Poller);
    assert_eq!(control(&b).sync.borrow().role(), Role::Poller);

    let plain_a = vm_via(33, "cp", None, None);
    let plain_b = vm_via(44, "cp", None, None);
    tick(&mut host_a, &plain_a);
    tick(&mut host_b, &plain_b);
    assert_eq!(control(&plain_a).sync.borrow().role(), Role::Poller);
    assert_eq!(control(&plain_b).sync.borrow().role(), Role::Follower);
}

/// A VM whose poller reports its configuration, as the root context sets it up, with Envoy node `node`.
fn reporting_vm(id: u64, leeway: u64) -> (VmState, Vec<u8>) {
    let config = json!({
        "issuers": [{"issuer": "https://issuer.test", "jwks": {"keys": [
            ed25519_jwk(),
            {"kty": "oct", "kid": "hs", "alg": "HS256", "k": "aG1hYy1rZXktdGhhdC1pcy1sb25nLWVub3VnaC0zMi1ieXRlcw"},
        ]}}],
        "clock_skew_seconds": leeway,
        "control_plane": {"cluster": "cp", "api_key": "ewk_secret", "edge_name": "edge-1"},
    })
    .to_string()
    .into_bytes();
    let engine = Engine::from_json(&config).unwrap();
    let vm = json_feed_only(VmState::with_identity(
        engine,
        Metrics::default(),
        id,
        NOW * 1000,
    ));
    let report = report::ConfigReport::new(&config, Some(b"node-a"), "/api/v1/revocations/feed");
    assert!(report.is_some());
    control(&vm).sync.borrow_mut().set_report(report);
    (vm, config)
}

#[test]
fn every_vm_of_one_envoy_sends_the_same_instance_id_and_the_configuration_hash() {
    let (a, _) = reporting_vm(11, 60);
    let (b, _) = reporting_vm(22, 60);
    let mut host_a = FakeHost::new();
    let mut host_b = host_a.sibling();
    tick(&mut host_a, &a);
    let first = host_a.calls[0].clone();
    let instance = first.header("x-edgewarden-instance").unwrap().to_owned();
    assert_eq!(instance.len(), 16);
    assert!(instance.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(first.header("x-edgewarden-node"), Some("node-a"));
    let hash = control(&a).sync.borrow().report().unwrap().hash.clone();
    assert_eq!(
        first.header("x-edgewarden-config-hash"),
        Some(hash.as_str())
    );
    // The other VM takes the lease over and polls with the same instance id (shared data), same hash.
    release(&mut host_a, control(&a));
    host_b.advance_ms(100);
    tick(&mut host_b, &b);
    let second = host_b.calls.last().unwrap();
    assert_eq!(
        second.header("x-edgewarden-instance"),
        Some(instance.as_str())
    );
    assert_eq!(
        second.header("x-edgewarden-config-hash"),
        Some(hash.as_str())
    );
    // Another configuration, another hash.
    let (c, _) = reporting_vm(33, 5);
    assert_ne!(control(&c).sync.borrow().report().unwrap().hash, hash);
}

#[test]
fn an_unknown_configuration_is_posted_once_without_its_secrets() {
    let (a, config) = reporting_vm(11, 60);
    let mut host = FakeHost::new();
    tick(&mut host, &a);
    let poll = host.calls.last().unwrap().token;
    let now = host.now_ms;
    assert!(on_poll_response(
        &mut host,
        control(&a),
        poll,
        &ok(feed(1, true, &[])),
        now
    ));
    report::on_poll_hint(&mut host, control(&a), Some(b"unknown"), now);
    let upload = host.last_call("/api/v1/edges/config").unwrap().clone();
    assert_eq!(upload.header(":method"), Some("POST"));
    assert_eq!(upload.header("authorization"), Some("Bearer ewk_secret"));
    assert_eq!(upload.header("x-edgewarden-edge"), Some("edge-1"));
    assert_eq!(upload.header("content-type"), Some("application/json"));
    let body = upload.body.clone().unwrap();
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(
        !text.contains("ewk_secret") && !text.contains("aG1hYy1rZXk"),
        "{text}"
    );
    assert_eq!(
        upload.header("x-edgewarden-config-hash"),
        Some(edgewarden_core::config::config_hash(&body).as_str())
    );
    let doc: Value = serde_json::from_slice(&body).unwrap();
    let original: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(doc["clock_skew_seconds"], original["clock_skew_seconds"]);
    assert_eq!(doc["control_plane"]["api_key"], "<redacted>");
    assert!(control(&a).sync.borrow().owns_upload(upload.token));

    // Asked again while the upload is out, or soon after it failed: nothing more is sent.
    let uploads = |host: &FakeHost| {
        host.calls
            .iter()
            .filter(|c| c.header(":path") == Some("/api/v1/edges/config"))
            .count()
    };
    report::on_poll_hint(&mut host, control(&a), Some(b"unknown"), now + 10);
    assert_eq!(uploads(&host), 1);
    assert!(report::on_upload_response(
        &mut host,
        control(&a),
        upload.token,
        &status(Some(503))
    ));
    assert!(host
        .logs
        .borrow()
        .iter()
        .any(|(level, line)| *level == LogLevel::Warn
            && line.contains("did not take this edge's configuration")
            && line.contains("status 503")));
    report::on_poll_hint(&mut host, control(&a), Some(b"unknown"), now + 1_000);
    assert_eq!(uploads(&host), 1, "retried only after the upload interval");
    report::on_poll_hint(
        &mut host,
        control(&a),
        Some(b"unknown"),
        now + report::UPLOAD_INTERVAL_MS,
    );
    assert_eq!(uploads(&host), 2);
    let token = host.calls.last().unwrap().token;
    assert!(report::on_upload_response(
        &mut host,
        control(&a),
        token,
        &ok(b"{}".to_vec())
    ));
    assert!(
        !report::on_upload_response(&mut host, control(&a), token, &ok(Vec::new())),
        "answered once"
    );
}

#[test]
fn a_malformed_configuration_hint_is_logged_and_ignored() {
    let (a, _) = reporting_vm(11, 60);
    let mut host = FakeHost::new();
    tick(&mut host, &a);
    let calls = host.calls.len();
    let now = host.now_ms;
    for hint in [&b"\xff\xfe"[..], b"maybe", b""] {
        report::on_poll_hint(&mut host, control(&a), Some(hint), now);
    }
    report::on_poll_hint(&mut host, control(&a), None, now);
    assert_eq!(
        host.calls.len(),
        calls,
        "no upload on a hint that is not `unknown`"
    );
    let warned: Vec<String> = host
        .logs
        .borrow()
        .iter()
        .filter(|(level, line)| *level == LogLevel::Warn && line.contains("x-edgewarden-config"))
        .map(|(_, line)| line.clone())
        .collect();
    assert_eq!(warned.len(), 1, "logged once per interval: {warned:?}");
    // A VM without a report (no configuration to report) ignores hints too.
    let plain = vm(22, json!({}));
    report::on_poll_hint(&mut host, control(&plain), Some(b"unknown"), now);
    assert_eq!(host.calls.len(), calls);
}

/// Found by the `shared_state` fuzz target: a shared mark at sequence number u64::MAX made the VM taking the
/// lease over overflow computing the next one (a panic with overflow checks, a wrap to 0 without).
#[test]
fn a_mark_at_the_last_sequence_number_does_not_overflow_a_take_over() {
    let a = vm(11, json!({}));
    let mut host = FakeHost::new();
    let mark = SyncMark {
        cursor: 0,
        last_sync: None,
        seq: u64::MAX,
        snapshot_seq: u64::MAX,
    };
    let key = control(&a).sync.borrow().keys.mark.clone();
    host.set_shared(&key, &mark.to_bytes());
    tick(&mut host, &a);
    assert_eq!(control(&a).sync.borrow().role(), Role::Poller);
    assert_eq!(control(&a).sync.borrow().seq(), u64::MAX);
}

/// The host's shared queues as one Envoy holds them for every VM of a plugin: names to ids, the values queued,
/// and the `on_queue_ready` calls the host owes, in order.
#[derive(Default)]
struct QueueWorld {
    names: std::collections::HashMap<String, u32>,
    values: std::collections::HashMap<u32, std::collections::VecDeque<Vec<u8>>>,
    ready: Vec<u32>,
}

/// One VM's view of the [`QueueWorld`].
#[derive(Clone, Default)]
struct FakeQueues(std::rc::Rc<std::cell::RefCell<QueueWorld>>);

impl wake::Queues for FakeQueues {
    fn register(&mut self, name: &str) -> Option<u32> {
        let mut world = self.0.borrow_mut();
        let next = world.names.len() as u32 + 1;
        let id = *world.names.entry(name.to_string()).or_insert(next);
        world.values.entry(id).or_default();
        Some(id)
    }
    fn resolve(&mut self, name: &str) -> Option<u32> {
        self.0.borrow().names.get(name).copied()
    }
    fn enqueue(&mut self, queue: u32, value: &[u8]) -> bool {
        let mut world = self.0.borrow_mut();
        let Some(values) = world.values.get_mut(&queue) else {
            return false;
        };
        values.push_back(value.to_vec());
        world.ready.push(queue);
        true
    }
    fn dequeue(&mut self, queue: u32) -> Option<Vec<u8>> {
        self.0.borrow_mut().values.get_mut(&queue)?.pop_front()
    }
}

impl FakeQueues {
    /// Forgets every queue, as proxy-wasm does when the last VM of a VM id goes.
    fn forget_all(&self) {
        let mut world = self.0.borrow_mut();
        world.names.clear();
        world.values.clear();
    }

    /// Takes the `on_queue_ready` calls owed so far.
    fn take_ready(&self) -> Vec<u32> {
        std::mem::take(&mut self.0.borrow_mut().ready)
    }
}

/// One timer step as the root context runs it with a control plane: sync, wake registration, wake-ups.
fn tick_waking(host: &mut FakeHost, queues: &mut FakeQueues, vm: &VmState) {
    let now = host.now_ms;
    on_tick(host, control(vm), now);
    wake::keep_registered(host, queues, control(vm), now);
    wake::wake_followers(host, queues, control(vm), now);
}

/// Answers `vm`'s poll and wakes the followers, as the root context does.
fn answer_waking(host: &mut FakeHost, queues: &mut FakeQueues, vm: &VmState, resp: &CallResponse) {
    answer(host, vm, resp);
    let now = host.now_ms;
    wake::wake_followers(host, queues, control(vm), now);
}

/// Delivers the owed `on_queue_ready` calls to whichever VM owns each queue; how many VMs took one.
fn deliver(queues: &mut FakeQueues, vms: &mut [(&mut FakeHost, &VmState)]) -> usize {
    let mut taken = 0;
    for queue in queues.take_ready() {
        for (host, vm) in vms.iter_mut() {
            if wake::on_queue_ready(*host, queues, control(vm), queue) {
                taken += 1;
            }
        }
    }
    taken
}

#[test]
fn a_published_change_wakes_every_follower_at_once_without_a_tick() {
    let (a, b, c) = (vm(11, json!({})), vm(22, json!({})), vm(33, json!({})));
    let mut host_a = FakeHost::new();
    let (mut host_b, mut host_c) = (host_a.sibling(), host_a.sibling());
    let mut queues = FakeQueues::default();
    tick_waking(&mut host_a, &mut queues, &a);
    tick_waking(&mut host_b, &mut queues, &b);
    tick_waking(&mut host_c, &mut queues, &c);
    assert_eq!(control(&a).sync.borrow().role(), Role::Poller);
    answer_waking(&mut host_a, &mut queues, &a, &ok(feed(1, true, &["j1"])));
    // No tick of b or c runs from here on: only the wake-ups bring them the changes.
    assert!(!revoked(&b, "j1") && !revoked(&c, "j1"));
    let woken = deliver(
        &mut queues,
        &mut [(&mut host_a, &a), (&mut host_b, &b), (&mut host_c, &c)],
    );
    assert_eq!(
        woken, 2,
        "one wake-up for each follower, none for the poller"
    );
    assert_eq!(host_a.counted(Stat::RevocationWakeSent), 2);
    assert_eq!(host_a.counted(Stat::RevocationWakeLost), 0);
    assert_eq!(host_b.counted(Stat::RevocationWakeReceived), 1);
    assert!(revoked(&b, "j1") && revoked(&c, "j1"));
    assert!(control(&b).revocation.borrow().stale(NOW).is_none());

    answer_waking(&mut host_a, &mut queues, &a, &ok(feed(2, false, &["j2"])));
    deliver(
        &mut queues,
        &mut [(&mut host_a, &a), (&mut host_b, &b), (&mut host_c, &c)],
    );
    assert!(revoked(&b, "j2") && revoked(&c, "j2"), "delta applied");
    assert_eq!(
        control(&c).sync.borrow().seq(),
        control(&a).sync.borrow().seq()
    );
    // The answer that changed nothing wakes no one; nor does a second call for the same change.
    answer_waking(&mut host_a, &mut queues, &a, &status(Some(304)));
    let now = host_a.now_ms;
    wake::wake_followers(&mut host_a, &mut queues, control(&a), now);
    assert!(queues.take_ready().is_empty());
    // The wake-ups were drained.
    assert!(queues.0.borrow().values.values().all(|v| v.is_empty()));
}

#[test]
fn a_vm_shutting_down_or_lapsed_is_no_longer_woken_and_a_dropped_one_lists_itself_again() {
    let (a, b, c) = (vm(11, json!({})), vm(22, json!({})), vm(33, json!({})));
    let mut host_a = FakeHost::new();
    let (mut host_b, mut host_c) = (host_a.sibling(), host_a.sibling());
    let mut queues = FakeQueues::default();
    tick_waking(&mut host_a, &mut queues, &a);
    tick_waking(&mut host_b, &mut queues, &b);
    tick_waking(&mut host_c, &mut queues, &c);
    release(&mut host_c, control(&c));
    answer_waking(&mut host_a, &mut queues, &a, &ok(feed(1, true, &["j1"])));
    let c_queue = control(&c).sync.borrow().wake_queue;
    let ready = queues.take_ready();
    assert_eq!(ready.len(), 1, "only b: {ready:?}");
    assert!(!ready.contains(&c_queue.unwrap()));

    // b stops renewing (its VM hangs): once its entry lapses it is not woken either.
    host_a.advance_ms(wake::ENTRY_MS + 1);
    tick_waking(&mut host_a, &mut queues, &a);
    answer_waking(&mut host_a, &mut queues, &a, &ok(feed(2, false, &["j2"])));
    assert!(queues.take_ready().is_empty());

    // A registry lost to a concurrent write (or unusable) is rebuilt by each VM's next tick.
    let key = control(&a).sync.borrow().keys.wakers.clone();
    host_a.set_shared(&key, b"not a registry");
    host_b.now_ms = host_a.now_ms;
    tick_waking(&mut host_b, &mut queues, &b);
    let listed = wake::decode_registry(&host_b.get_shared(&key).unwrap().0);
    assert_eq!(listed.iter().map(|e| e.0).collect::<Vec<_>>(), vec![22]);
    answer_waking(&mut host_a, &mut queues, &a, &ok(feed(3, false, &["j3"])));
    deliver(&mut queues, &mut [(&mut host_a, &a), (&mut host_b, &b)]);
    assert!(revoked(&b, "j3"));
}

#[test]
fn a_queue_the_host_forgot_is_registered_again_when_the_entry_is_renewed() {
    let (a, b) = (vm(11, json!({})), vm(22, json!({})));
    let mut host_a = FakeHost::new();
    let mut host_b = host_a.sibling();
    let mut queues = FakeQueues::default();
    tick_waking(&mut host_a, &mut queues, &a);
    tick_waking(&mut host_b, &mut queues, &b);
    queues.forget_all();
    answer_waking(&mut host_a, &mut queues, &a, &ok(feed(1, true, &["j1"])));
    assert!(queues.take_ready().is_empty());
    assert_eq!(
        host_a.counted(Stat::RevocationWakeLost),
        1,
        "a listed VM whose queue is gone is counted"
    );

    // Half an entry's life later b renews its entry, and its queue with it: it is woken again.
    host_a.advance_ms(wake::ENTRY_MS / 2 + 1);
    host_b.now_ms = host_a.now_ms;
    tick_waking(&mut host_a, &mut queues, &a);
    tick_waking(&mut host_b, &mut queues, &b);
    answer_waking(&mut host_a, &mut queues, &a, &ok(feed(2, false, &["j2"])));
    let woken = deliver(&mut queues, &mut [(&mut host_a, &a), (&mut host_b, &b)]);
    assert_eq!(woken, 1);
    assert!(revoked(&b, "j2"));
}

#[test]
fn the_wake_registry_reads_only_whole_records() {
    assert!(wake::decode_registry(b"").is_empty());
    assert!(wake::decode_registry(&[0; 17]).is_empty());
    assert!(wake::decode_registry(&vec![0; 16 * (wake::MAX_ENTRIES + 1)]).is_empty());
    let entries = vec![(1, 2), (u64::MAX, 0)];
    assert_eq!(
        wake::decode_registry(&wake::encode_registry(&entries)),
        entries
    );
}

/// A VM that loads the edge snapshot on a cold start, as against today's admin API.
fn vm_with_snapshot(id: u64) -> VmState {
    let v = vm(id, json!({}));
    control(&v).sync.borrow_mut().snapshot_path = snapshot_path("/api/v1/revocations/feed");
    v
}

/// The edge snapshot of `jtis` (unscoped, unexpired) at `cursor`, in pages of about `per_page` jtis.
fn snapshot_pages(cursor: u64, jtis: &[&str], per_page: usize) -> Vec<Vec<u8>> {
    let mut builder = edgewarden_core::feed::snapshot::SnapshotBuilder::new();
    for jti in jtis {
        builder.jti(None, jti, NOW + 3600);
    }
    builder.finish(cursor, NOW, per_page * 12)
}

fn last_path(host: &FakeHost) -> String {
    host.calls
        .last()
        .unwrap()
        .header(":path")
        .unwrap()
        .to_string()
}

fn warnings(host: &FakeHost) -> Vec<String> {
    host.logs
        .borrow()
        .iter()
        .filter(|(l, _)| *l == LogLevel::Warn)
        .map(|(_, m)| m.clone())
        .collect()
}

#[test]
fn snapshot_path_sits_beside_the_feed_or_is_not_used() {
    assert_eq!(
        snapshot_path("/api/v1/revocations/feed").as_deref(),
        Some("/api/v1/revocations/snapshot")
    );
    assert_eq!(
        snapshot_path("/cp/api/v1/revocations/feed").as_deref(),
        Some("/cp/api/v1/revocations/snapshot")
    );
    assert_eq!(snapshot_path("/custom/feed"), None);
    assert_eq!(snapshot_path("/x?y=/revocations/feed"), None);
}

#[test]
fn a_cold_start_loads_the_snapshot_page_by_page_then_follows_the_feed_from_its_cursor() {
    let a = vm_with_snapshot(11);
    let b = vm_with_snapshot(22);
    let mut host_a = FakeHost::new();
    let mut host_b = host_a.sibling();
    tick(&mut host_a, &a);
    assert_eq!(last_path(&host_a), "/api/v1/revocations/snapshot");
    let call = host_a.calls.last().unwrap();
    assert_eq!(call.header("accept"), Some(SNAPSHOT_CONTENT_TYPE));
    assert_eq!(call.header("authorization"), Some("Bearer ewk_secret"));
    let jtis: Vec<String> = (0..10).map(|i| format!("j{i}")).collect();
    let names: Vec<&str> = jtis.iter().map(String::as_str).collect();
    let pages = snapshot_pages(7, &names, 4);
    assert_eq!(pages.len(), 3);
    let id = SnapshotPage::parse(&pages[0]).unwrap().id;
    answer(&mut host_a, &a, &ok(pages[0].clone()));
    // Assembled aside: nothing is enforced (or published) from a part of the snapshot.
    assert!(!revoked(&a, "j0") && !revoked(&a, "j9"));
    assert!(control(&a).revocation.borrow().last_sync().is_none());
    assert_eq!(
        last_path(&host_a),
        format!("/api/v1/revocations/snapshot?page=1&id={id:016x}&cursor=7&now={NOW}")
    );
    answer(&mut host_a, &a, &ok(pages[1].clone()));
    answer(&mut host_a, &a, &ok(pages[2].clone()));
    assert!(names.iter().all(|j| revoked(&a, j)));
    assert_eq!(control(&a).revocation.borrow().set().cursor(), 7);
    assert!(control(&a).revocation.borrow().last_sync().is_some());
    // Deltas continue from the snapshot's cursor through the JSON feed.
    assert!(
        last_path(&host_a).starts_with("/api/v1/revocations/feed?since=7&limit=25000"),
        "{}",
        last_path(&host_a)
    );
    tick(&mut host_b, &b);
    assert!(
        names.iter().all(|j| revoked(&b, j)),
        "published to followers"
    );
    assert!(warnings(&host_a).is_empty(), "{:?}", warnings(&host_a));
}

#[test]
fn a_refused_snapshot_page_keeps_the_state_unsynced_and_starts_over() {
    let pages = snapshot_pages(3, &["j1", "j2", "j3"], 2);
    let mut bad_checksum = pages[0].clone();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] ^= 1;
    let mut bad_version = pages[0].clone();
    bad_version[4] = 9;
    let truncated = pages[0][..pages[0].len() - 5].to_vec();
    let other = snapshot_pages(3, &["k1", "k2", "k3"], 2);
    for (name, first, second, expect) in [
        ("checksum", bad_checksum, None, "checksum"),
        ("version", bad_version, None, "version 9"),
        ("truncated", truncated, None, "bytes but its header"),
        (
            "other snapshot",
            pages[0].clone(),
            Some(other[1].clone()),
            "does not follow",
        ),
        ("JSON", feed(3, true, &["j1"]), None, "magic"),
    ] {
        let a = vm_with_snapshot(11);
        let mut host = FakeHost::new();
        tick(&mut host, &a);
        answer(&mut host, &a, &ok(first));
        if let Some(second) = second {
            answer(&mut host, &a, &ok(second));
        }
        assert!(!revoked(&a, "j1"), "{name}: nothing applied");
        let now = host.now();
        assert!(
            control(&a).revocation.borrow().stale(now).is_some(),
            "{name}: still unsynced, so fail-closed"
        );
        let warned = warnings(&host);
        assert!(
            warned.len() == 1 && warned[0].contains(expect) && warned[0].contains("refused"),
            "{name}: {warned:?}"
        );
        assert_eq!(host.counted(Stat::RevocationPollFailure), 1, "{name}");
        host.advance_ms(MAX_BACKOFF_MS);
        tick(&mut host, &a);
        assert_eq!(
            last_path(&host),
            "/api/v1/revocations/snapshot",
            "{name}: starts over"
        );
        for page in &pages {
            answer(&mut host, &a, &ok(page.clone()));
        }
        assert!(revoked(&a, "j1") && revoked(&a, "j3"), "{name}: then loads");
    }
}

#[test]
fn an_admin_api_without_the_snapshot_keeps_the_edge_on_the_json_feed() {
    let a = vm_with_snapshot(11);
    let mut host = FakeHost::new();
    tick(&mut host, &a);
    answer(&mut host, &a, &status(Some(404)));
    assert_eq!(
        last_path(&host),
        "/api/v1/revocations/feed?since=0&limit=25000",
        "asked the feed at once"
    );
    assert_eq!(host.counted(Stat::RevocationPollFailure), 0);
    answer(&mut host, &a, &ok(feed(2, true, &["j1"])));
    assert!(revoked(&a, "j1"));
}

#[test]
fn an_empty_snapshot_at_cursor_zero_counts_as_synced() {
    let a = vm_with_snapshot(11);
    let mut host = FakeHost::new();
    tick(&mut host, &a);
    answer(&mut host, &a, &ok(snapshot_pages(0, &[], 10)[0].clone()));
    assert!(control(&a).revocation.borrow().last_sync().is_some());
    assert!(last_path(&host).starts_with("/api/v1/revocations/feed?since=0"));
}
