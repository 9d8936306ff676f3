//! Unit tests of usage aggregation, the buffer bound (oldest first, counted), and the batch lifecycle:
//! sent on the flush interval, removed when accepted, kept when the admin API is down, dropped when refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::sync::Arc;

use edgewarden_core::cache::CacheOutcome;
use edgewarden_core::token::VerifiedToken;
use serde_json::Value;

use super::*;
use crate::test_host::{FakeHost, NOW};

fn reporter(max: usize) -> RefCell<UsageReporter> {
    let cp: ControlPlaneConfig = serde_json::from_value(serde_json::json!(
        {"cluster": "cp", "api_key": "ewk_secret", "edge_name": "edge-1"}
    ))
    .unwrap();
    let usage: UsageConfig = serde_json::from_value(serde_json::json!(
        {"flush_interval_ms": 1000, "max_buffered_events": max}
    ))
    .unwrap();
    RefCell::new(UsageReporter::new(&cp, &usage, NOW * 1000))
}

fn token(jti: Option<&str>, sub: &str, fingerprint: u64) -> Arc<VerifiedToken> {
    Arc::new(VerifiedToken {
        issuer_index: 0,
        iss: "https://issuer.test".into(),
        sub: Some(sub.into()),
        aud: vec![],
        exp: Some(NOW + 60),
        nbf: None,
        iat: Some(NOW - 5),
        jti: jti.map(Into::into),
        client_id: Some("billing".into()),
        scopes: vec![],
        roles: vec![],
        alg: "ES256".into(),
        kid: None,
        typ: None,
        claims: serde_json::Map::new(),
        fingerprint,
        forwarded: Vec::new(),
    })
}

fn decision(reason: Reason, token: Option<Arc<VerifiedToken>>) -> Decision {
    Decision {
        verdict: if reason.is_allowed() {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
        status: reason.status(),
        reason,
        description: "".into(),
        required_scope: None,
        token,
        rule: Some(0),
        cache: CacheOutcome::Bypass,
        refetch_jwks: None,
    }
}

fn record(r: &RefCell<UsageReporter>, d: &Decision, address: &str) -> u64 {
    let mut asked = || Some(address.to_string());
    r.borrow_mut()
        .record(d, "/api", "/api/orders", NOW, &mut asked)
}

/// Runs a flush at `now_ms` and returns the body posted, if any.
fn flush(host: &mut FakeHost, r: &RefCell<UsageReporter>) -> Option<Value> {
    let before = host.calls.len();
    let now = host.now_ms;
    on_tick(host, r, now);
    (host.calls.len() > before)
        .then(|| serde_json::from_slice(host.calls.last()?.body.as_deref()?).ok())
        .flatten()
}

fn answer(host: &mut FakeHost, r: &RefCell<UsageReporter>, status: Option<u16>) {
    let token = host.calls.last().unwrap().token;
    let resp = CallResponse {
        status,
        body: None,
        body_size: 0,
    };
    let now = host.now_ms;
    assert!(on_report_response(host, r, token, &resp, now));
}

#[test]
fn decisions_are_counted_per_token_rule_and_reason_with_addresses_and_failure_samples() {
    let r = reporter(100);
    let alice = token(Some("j-alice"), "alice", 1);
    let anon = token(None, "bob", 0xabc);
    for addr in ["10.0.0.1", "10.0.0.2", "10.0.0.1"] {
        record(
            &r,
            &decision(Reason::Allowed, Some(Arc::clone(&alice))),
            addr,
        );
    }
    record(
        &r,
        &decision(Reason::Expired, Some(Arc::clone(&alice))),
        "10.0.0.9",
    );
    record(&r, &decision(Reason::Allowed, Some(anon)), "10.0.0.3");
    record(&r, &decision(Reason::Malformed, None), "10.0.0.4");
    let mut host = FakeHost::new();
    assert!(flush(&mut host, &r).is_none(), "not before the interval");
    host.advance_ms(1000);
    let body = flush(&mut host, &r).expect("a batch");
    let call = host.calls.last().unwrap();
    assert_eq!(call.header(":method"), Some("POST"));
    assert_eq!(call.header(":path"), Some("/api/v1/usage"));
    assert_eq!(call.header("authorization"), Some("Bearer ewk_secret"));
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(body["edge"], "edge-1");
    assert_eq!(body["dropped"], 0);
    let counts = body["counts"].as_array().unwrap();
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert_eq!(
        counts[0],
        serde_json::json!({"jti": "j-alice", "subject": "alice", "client_id": "billing", "route": "/api",
                           "reason": "allowed", "count": 3, "addresses": ["10.0.0.1", "10.0.0.2"]})
    );
    assert_eq!(counts[1]["reason"], "expired");
    assert_eq!(counts[2]["token_fingerprint"], "0000000000000abc");
    assert!(counts[2].get("jti").is_none(), "absent, not null or empty");
    assert!(counts[3].get("subject").is_none());
    let failures = body["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2);
    assert_eq!(
        failures[0],
        serde_json::json!({"jti": "j-alice", "subject": "alice", "client_id": "billing", "route": "/api/orders",
                           "reason": "expired", "client_address": "10.0.0.9", "at": NOW, "iat": NOW - 5})
    );
    assert!(body["interval_start"].as_u64().unwrap() <= body["interval_end"].as_u64().unwrap());
}

#[test]
fn an_entry_stops_asking_for_addresses_once_it_holds_the_maximum() {
    let r = reporter(100);
    let t = token(Some("j"), "alice", 1);
    // Enough requests, each from a new address, for the entry to fill up; the next one would be sampled.
    let requests = ADDRESS_EVERY * (MAX_ADDRESSES as u64 + 1);
    for i in 0..requests {
        let address = format!("10.0.{}.{}", i / 256, i % 256);
        record(
            &r,
            &decision(Reason::Allowed, Some(Arc::clone(&t))),
            &address,
        );
    }
    let mut asked = 0;
    let mut lookup = || {
        asked += 1;
        Some("10.9.9.9".to_string())
    };
    let d = decision(Reason::Allowed, Some(t));
    r.borrow_mut().record(&d, "/api", "/api", NOW, &mut lookup);
    assert_eq!(
        asked, 0,
        "no host call on the hot path once the entry is full"
    );
}

#[test]
fn a_hot_entry_looks_up_the_address_on_its_first_requests_then_rarely() {
    let r = reporter(100);
    let d = decision(Reason::Allowed, Some(token(Some("hot"), "alice", 1)));
    let mut asked = 0;
    for _ in 0..(ADDRESS_EVERY * 4) {
        let mut lookup = || {
            asked += 1;
            Some("10.0.0.1".to_string())
        };
        r.borrow_mut().record(&d, "/api", "/api", NOW, &mut lookup);
    }
    assert_eq!(asked, ADDRESS_FIRST + 3);
}

#[test]
fn accepted_batches_leave_the_buffer_and_a_backlog_drains_one_per_answer() {
    let r = reporter(100);
    let mut host = FakeHost::new();
    record(
        &r,
        &decision(Reason::Allowed, Some(token(Some("a"), "a", 1))),
        "10.0.0.1",
    );
    host.advance_ms(1000);
    flush(&mut host, &r).expect("first batch");
    answer(&mut host, &r, None);
    assert_eq!(host.counted(Stat::UsageReportFailure), 1);
    assert_eq!(r.borrow().pending(), 1, "kept for the next flush");
    record(
        &r,
        &decision(Reason::Allowed, Some(token(Some("b"), "b", 2))),
        "10.0.0.1",
    );
    host.advance_ms(1000);
    let retried = flush(&mut host, &r).expect("retry");
    assert_eq!(retried["counts"][0]["jti"], "a", "oldest batch first");
    assert_eq!(r.borrow().pending(), 2);
    answer(&mut host, &r, Some(202));
    // The second batch goes out at once, without waiting for the next interval.
    let next: Value =
        serde_json::from_slice(host.calls.last().unwrap().body.as_deref().unwrap()).unwrap();
    assert_eq!(next["counts"][0]["jti"], "b");
    answer(&mut host, &r, Some(202));
    assert_eq!(host.counted(Stat::UsageReport), 2);
    assert_eq!(r.borrow().pending(), 0);
    assert_eq!(r.borrow().buffered(), 0);
}

#[test]
fn a_full_buffer_drops_the_oldest_entries_counts_them_and_reports_the_number() {
    let r = reporter(3);
    let mut host = FakeHost::new();
    // Three distinct allowed entries fill the buffer; the admin API is down.
    for i in 0..3 {
        record(
            &r,
            &decision(
                Reason::Allowed,
                Some(token(Some(&format!("old{i}")), "a", i + 1)),
            ),
            "10.0.0.1",
        );
    }
    host.advance_ms(1000);
    flush(&mut host, &r).expect("sent");
    answer(&mut host, &r, Some(503));
    // Two more: the oldest batch loses entries to make room.
    let mut dropped = 0;
    for i in 0..2 {
        for _ in 0..5 {
            dropped += record(
                &r,
                &decision(
                    Reason::Allowed,
                    Some(token(Some(&format!("new{i}")), "a", 100 + i)),
                ),
                "10.0.0.1",
            );
        }
    }
    assert_eq!(dropped, 2, "two old entries of one decision each");
    assert_eq!(r.borrow().dropped(), 2);
    assert!(r.borrow().buffered() <= 3);
    host.advance_ms(1000);
    let body = flush(&mut host, &r).expect("retry of what is left of the oldest batch");
    assert_eq!(body["dropped"], 2);
    assert_eq!(body["counts"].as_array().unwrap().len(), 1);
    answer(&mut host, &r, Some(202));
    assert_eq!(r.borrow().dropped(), 0, "reported, so no longer owed");
    let body: Value =
        serde_json::from_slice(host.calls.last().unwrap().body.as_deref().unwrap()).unwrap();
    assert_eq!(body["counts"][0]["count"], 5);
    assert_eq!(body["counts"][1]["count"], 5);
}

#[test]
fn a_batch_the_admin_api_refuses_is_dropped_counted_and_logged() {
    let r = reporter(100);
    let mut host = FakeHost::new();
    for _ in 0..4 {
        record(
            &r,
            &decision(Reason::Allowed, Some(token(Some("a"), "a", 1))),
            "10.0.0.1",
        );
    }
    host.advance_ms(1000);
    flush(&mut host, &r).expect("sent");
    let token = host.calls.last().unwrap().token;
    let resp = CallResponse {
        status: Some(400),
        body: Some(
            br#"{"error": {"code": "invalid_request", "field": "counts[0].route"}}"#.to_vec(),
        ),
        body_size: 60,
    };
    let now = host.now_ms;
    assert!(on_report_response(&mut host, &r, token, &resp, now));
    assert_eq!(r.borrow().pending(), 0);
    assert_eq!(host.counted(Stat::UsageDropped), 4);
    assert!(host
        .logs
        .borrow()
        .iter()
        .any(|(_, m)| m.contains("counts[0].route")));
    assert!(
        !on_report_response(&mut host, &r, token, &resp, now),
        "answered once"
    );
}

#[test]
fn refusals_beyond_the_sample_limit_are_counted_but_not_sampled() {
    let r = reporter(100_000);
    for _ in 0..(MAX_FAILURES_PER_BATCH + 10) {
        record(&r, &decision(Reason::Malformed, None), "10.0.0.1");
    }
    let mut host = FakeHost::new();
    host.advance_ms(1000);
    let body = flush(&mut host, &r).unwrap();
    assert_eq!(
        body["failures"].as_array().unwrap().len(),
        MAX_FAILURES_PER_BATCH
    );
    assert_eq!(
        body["counts"][0]["count"],
        MAX_FAILURES_PER_BATCH as u64 + 10
    );
}

/// A VM with a control plane whose configuration report is set as the root context sets it: on the
/// feed poller and, its hash, on the usage reporter.
fn reporting_vm() -> crate::state::VmState {
    let config = serde_json::json!({
        "issuers": [{"issuer": "https://issuer.test", "jwks": {"keys": [
            {"kty": "oct", "kid": "hs", "alg": "HS256", "k": "aG1hYy1rZXktdGhhdC1pcy1sb25nLWVub3VnaC0zMi1ieXRlcw"},
        ]}}],
        "control_plane": {"cluster": "cp", "api_key": "ewk_secret", "edge_name": "edge-1"},
        "usage": {"flush_interval_ms": 1000},
    })
    .to_string()
    .into_bytes();
    let engine = edgewarden_core::engine::Engine::from_json(&config).unwrap();
    let vm = crate::state::VmState::with_identity(
        engine,
        crate::metrics::Metrics::default(),
        7,
        NOW * 1000,
    );
    let report = report::ConfigReport::new(&config, None, "/api/v1/revocations/feed").unwrap();
    let control = vm.control.as_ref().unwrap();
    control
        .usage
        .borrow_mut()
        .set_config_hash(Some(report.hash.clone()));
    control.sync.borrow_mut().set_report(Some(report));
    vm
}

#[test]
fn every_usage_post_carries_the_configuration_hash() {
    let r = reporter(100);
    record(&r, &decision(Reason::Allowed, None), "10.0.0.1");
    let mut host = FakeHost::new();
    host.advance_ms(1000);
    flush(&mut host, &r).expect("a batch");
    assert_eq!(
        host.calls
            .last()
            .unwrap()
            .header("x-edgewarden-config-hash"),
        None,
        "no configuration reported, no hash"
    );
    answer(&mut host, &r, Some(202));

    let hash = "ab".repeat(32);
    r.borrow_mut().set_config_hash(Some(hash.clone()));
    record(&r, &decision(Reason::Allowed, None), "10.0.0.1");
    host.advance_ms(1000);
    flush(&mut host, &r).expect("a batch");
    assert_eq!(
        host.calls
            .last()
            .unwrap()
            .header("x-edgewarden-config-hash"),
        Some(hash.as_str())
    );
}

#[test]
fn a_usage_answer_asking_for_the_configuration_gets_it_posted_once() {
    let vm = reporting_vm();
    let control = vm.control.as_ref().unwrap();
    let hash = control.sync.borrow().report().unwrap().hash.clone();
    let mut host = FakeHost::new();
    record(&control.usage, &decision(Reason::Allowed, None), "10.0.0.1");
    host.advance_ms(1000);
    flush(&mut host, &control.usage).expect("a batch");
    let post = host.calls.last().unwrap().clone();
    assert_eq!(post.header(":path"), Some("/api/v1/usage"));
    assert_eq!(post.header("x-edgewarden-config-hash"), Some(hash.as_str()));
    let uploads = |host: &FakeHost| {
        host.calls
            .iter()
            .filter(|c| c.header(":path") == Some("/api/v1/edges/config"))
            .count()
    };
    let accepted = CallResponse {
        status: Some(202),
        body: None,
        body_size: 0,
    };
    let now = host.now_ms;
    assert!(
        !on_report_answer(
            &mut host,
            control,
            post.token + 100,
            &accepted,
            Some(b"unknown"),
            now
        ),
        "not our post"
    );
    assert_eq!(uploads(&host), 0);
    assert!(on_report_answer(
        &mut host,
        control,
        post.token,
        &accepted,
        Some(b"unknown"),
        now
    ));
    assert_eq!(control.usage.borrow().pending(), 0, "the batch is accepted");
    let upload = host.last_call("/api/v1/edges/config").unwrap().clone();
    assert_eq!(upload.header(":method"), Some("POST"));
    assert_eq!(upload.header("x-edgewarden-edge"), Some("edge-1"));
    assert_eq!(
        upload.header("x-edgewarden-config-hash"),
        Some(hash.as_str())
    );
    let body = String::from_utf8(upload.body.clone().unwrap()).unwrap();
    assert!(
        !body.contains("ewk_secret") && !body.contains("aG1hYy1rZXk"),
        "{body}"
    );
    assert!(control.sync.borrow().owns_upload(upload.token));

    // The next usage answer asks again while the upload is out: nothing more is sent; without the hint,
    // nothing is sent either.
    record(&control.usage, &decision(Reason::Allowed, None), "10.0.0.1");
    host.advance_ms(1000);
    flush(&mut host, &control.usage).expect("a batch");
    let next = host.calls.last().unwrap().token;
    let now = host.now_ms;
    assert!(on_report_answer(
        &mut host,
        control,
        next,
        &accepted,
        Some(b"unknown"),
        now
    ));
    assert_eq!(uploads(&host), 1);
    record(&control.usage, &decision(Reason::Allowed, None), "10.0.0.1");
    host.advance_ms(report::UPLOAD_INTERVAL_MS);
    flush(&mut host, &control.usage).expect("a batch");
    let last = host.calls.last().unwrap().token;
    let now = host.now_ms;
    assert!(on_report_answer(
        &mut host, control, last, &accepted, None, now
    ));
    assert_eq!(uploads(&host), 1);
}
