//! The targets. Each drives the product's own entry point for its bytes (the filter's request flow, its JWKS
//! fetch and feed poll handlers, the followers' catch-up from shared data, the admin API's body parsers) in
//! the in-memory [`FuzzHost`], so what is fuzzed is what Envoy or the admin API would run on those bytes.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use edgewarden_core::config::Config;
use edgewarden_core::engine::Engine;
use edgewarden_core::feed::snapshot::SnapshotPage;
use edgewarden_core::feed::{FeedUpdate, SyncMark};
use edgewarden_core::jwks::KeySet;
use edgewarden_core::revocation::RevocationSet;
use edgewarden_filter::flow::{self, Outcome};
use edgewarden_filter::headers::HeaderMap;
use edgewarden_filter::host::CallResponse;
use edgewarden_filter::host::Host as _;
use edgewarden_filter::jwks_fetch::{self, Trigger};
use edgewarden_filter::metrics::Metrics;
use edgewarden_filter::revocation_sync;
use edgewarden_filter::revocation_sync::wake::{self, Queues as _};
use edgewarden_filter::state::VmState;
use edgewarden_filter::usage;
use serde_json::{json, Value};

use crate::checksum;
use crate::fixtures::{self, NOW};
use crate::host::FuzzHost;
use crate::seeds;

/// Splits `METHOD\nPATH\nREST` (missing parts are empty).
pub fn request_parts(data: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let rest = parts.next().unwrap_or_default();
    (method, path, rest)
}

/// A 200 answer with `body`.
fn ok(body: &[u8]) -> CallResponse {
    CallResponse {
        status: Some(200),
        body_size: body.len(),
        body: Some(body.to_vec()),
    }
}

fn fixed_feed() -> &'static FeedUpdate {
    static FEED: OnceLock<FeedUpdate> = OnceLock::new();
    FEED.get_or_init(|| {
        FeedUpdate::from_json(fixtures::feed_json().to_string().as_bytes())
            .unwrap_or_else(|e| panic!("fixture feed refused: {e}"))
    })
}

/// A VM of `engine` (id `vm_id`) whose revocation state, if it has a control plane, is synced with the fixture feed.
fn vm_with(engine: Engine, vm_id: u64, synced: bool) -> VmState {
    let vm = VmState::with_identity(engine, Metrics::default(), vm_id, NOW * 1000);
    if synced {
        if let Some(control) = &vm.control {
            control.revocation.borrow_mut().sync(fixed_feed(), NOW);
        }
    }
    vm
}

/// Runs one request through the filter twice (the second one from the token cache); a request that
/// pauses on a key-set fetch gets the fixed remote key set as the answer and is decided again.
fn run_request(host: &mut FuzzHost, vm: &VmState, now: u64) {
    for ctx in [1, 2] {
        if let Outcome::FetchingJwks { .. } = flow::process(host, vm, ctx, true) {
            let token = host.calls.last().map_or(0, |c| c.0);
            let body = fixtures::remote_jwks().to_string();
            if let Some((_, waiters)) =
                jwks_fetch::on_fetch_response(host, vm, token, &ok(body.as_bytes()), now)
            {
                flow::resolve_waiters(host, vm, &waiters, ctx);
            }
            flow::process(host, vm, ctx, false);
        }
    }
}

/// `token`: `METHOD\nPATH\nAUTHORIZATION` through the filter's request flow with the fixed configuration
/// (every key type, scoped, role, method and anonymous rules, forwarded claims, revocations in force).
pub fn token(data: &[u8]) {
    let (method, path, credential) = request_parts(data);
    let vm = vm_with(fixtures::engine().clone(), 1, true);
    let mut host = FuzzHost::at(NOW * 1000);
    host.headers = HeaderMap::from_pairs(&[
        (":method", method),
        (":path", path),
        ("authorization", credential),
        ("x-sub", b"spoofed".as_slice()),
    ]);
    run_request(&mut host, &vm, NOW);
}

/// The engine every generated configuration takes its prepared keys from (`Engine::reusing_keys`): the
/// configurations differ in everything but their issuers' key sources, and preparing the keys is most of what
/// building an engine costs (about 4 ms instrumented, against 35 µs for the rest). Built once, before AFL's
/// fork server starts (`warm_up`), so every input builds its engine along the same path: a cache of whole
/// engines made an input's coverage depend on whether an earlier one had built its engine (AFL++'s stability
/// 70 %).
fn key_donor() -> &'static Engine {
    static DONOR: OnceLock<Engine> = OnceLock::new();
    DONOR.get_or_init(|| {
        let mut engine = Engine::from_json(generated_config(&[0; 8]).to_string().as_bytes())
            .unwrap_or_else(|e| {
                panic!("generated configuration refused ({e}); fix generated_config")
            });
        engine
            .set_remote_jwks(1, fixtures::remote_jwks().to_string().as_bytes())
            .unwrap_or_else(|e| panic!("fixture remote key set refused: {e}"));
        engine
    })
}

/// The configuration chosen by the 8 option bytes of `token_generated` (see [`token_generated`]).
pub fn generated_config(o: &[u8; 8]) -> Value {
    let source = match o[0] % 5 {
        0 => json!({"header": "authorization", "prefix": "Bearer "}),
        1 => json!({"header": "x-token"}),
        2 => json!({"header": "authorization", "prefix": "Token "}),
        3 => json!({"cookie": "at"}),
        _ => json!({"query": "access_token"}),
    };
    let bit = |byte: u8, n: u8| byte >> n & 1 == 1;
    let audiences = |v: u8| match v % 4 {
        0 => json!([]),
        1 => json!(["api"]),
        2 => json!(["other"]),
        _ => json!(["api", "other"]),
    };
    let rule_pool = [
        json!({"match": {"prefix": "/public"}, "allow_anonymous": true}),
        json!({"match": {"prefix": "/admin"}, "require_scopes": ["admin"]}),
        json!({"match": {"path": "/api/write", "methods": ["POST", "PUT"]}, "require_scopes": ["write"], "require_roles": ["user"]}),
        json!({"match": {"prefix": "/api"}, "require_any_scopes": ["read", "write"]}),
        json!({"match": {"prefix": "/"}, "require_roles": ["admin", "ops"]}),
        json!({"match": {"path": "/health", "methods": ["GET", "HEAD"]}, "allow_anonymous": true}),
        json!({"match": {"prefix": "/api/v2/"}, "require_scopes": ["read"], "require_any_scopes": ["x", "y"]}),
        json!({"match": {"prefix": "/api/v1", "methods": ["DELETE"]}, "require_roles": ["admin"]}),
    ];
    let rules: Vec<Value> = rule_pool
        .iter()
        .enumerate()
        .filter(|(i, _)| bit(o[4], *i as u8))
        .map(|(_, r)| r.clone())
        .collect();
    let roles_claim = ["roles", "realm_access.roles", "groups"][usize::from(o[5] % 3)];
    let max_token_bytes = [8192, 512, 4096, 16384][usize::from(o[5] >> 2 & 3)];
    let decision_properties = ["each", "one", "none", "each"][usize::from(o[5] >> 4 & 3)];
    let mut config = json!({
        "issuers": [
            {"issuer": fixtures::ISSUER, "audiences": audiences(o[3]), "jwks": fixtures::inline_jwks()},
            {"issuer": fixtures::REMOTE_ISSUER, "audiences": audiences(o[3] >> 2),
             "remote_jwks": {"cluster": "idp", "path": "/jwks"}}
        ],
        "token_source": source,
        "rules": rules,
        "require_exp": bit(o[1], 0),
        "strip_token": bit(o[1], 1),
        "report_only": bit(o[1], 2),
        "clock_skew_seconds": u64::from(o[2] % 31) * 10,
        "roles_claim": roles_claim,
        "max_token_bytes": max_token_bytes,
        "decision_properties": decision_properties,
    });
    if bit(o[1], 3) {
        config["allowed_typ"] = json!(["at+jwt", "application/jwt"]);
    }
    if bit(o[1], 4) {
        config["required_claims"] = json!(["jti", "client_id"]);
    }
    if bit(o[1], 5) {
        config["forward_payload_header"] = json!("x-jwt-payload");
    }
    if bit(o[1], 6) {
        config["forward_claims"] = json!([
            {"claim": "sub", "header": "x-sub"},
            {"claim": "realm_access.roles", "header": "x-realm-roles"},
            {"claim": "aud", "header": "x-aud"},
            {"claim": "exp", "header": "x-exp"}
        ]);
    }
    if bit(o[1], 7) {
        config["cache"] = json!({"max_entries": 2});
    }
    if !bit(o[6], 5) {
        config["control_plane"] =
            json!({"cluster": "cp", "api_key": "ewk_fuzz", "edge_name": "edge-fuzz"});
        config["revocation"] = json!({"on_stale": if bit(o[6], 3) { "allow" } else { "deny" }});
    }
    config
}

/// `token_generated`: 8 option bytes choose a configuration over the fixed keys (token source, rules,
/// audiences, typ, required and forwarded claims, roles claim, token size limit, cache size, leeway,
/// revocations and their staleness, the clock), then `METHOD\nPATH\nCREDENTIAL` is decided with it; the
/// credential goes where the chosen token source reads it.
pub fn token_generated(data: &[u8]) {
    let mut o = [0u8; 8];
    let split = data.len().min(8);
    o[..split].copy_from_slice(&data[..split]);
    let (method, path, credential) = request_parts(&data[split..]);
    let config =
        Config::from_json(generated_config(&o).to_string().as_bytes()).unwrap_or_else(|e| {
            panic!("generated configuration {o:?} is refused ({e}); fix generated_config")
        });
    let engine = Engine::reusing_keys(config, key_donor()).unwrap_or_else(|e| {
        panic!("generated configuration {o:?} is refused ({e}); fix generated_config")
    });
    let now = NOW.saturating_add_signed(i64::from(o[7] as i8) * 97);
    let vm = vm_with(engine, 1, !(o[6] >> 4 & 1 == 1));
    if let Some(control) = &vm.control {
        let mut revocation = control.revocation.borrow_mut();
        let mut revoke = Vec::new();
        if o[6] & 1 == 1 {
            revoke.push(json!({"jti": "jti-1", "exp": NOW + 3600}));
        }
        let subjects: Vec<Value> = (o[6] & 2 == 2)
            .then(|| json!({"subject": "alice", "revoked_at": NOW, "expires_at": NOW + 86400}))
            .into_iter()
            .collect();
        let clients: Vec<Value> = (o[6] & 4 == 4)
            .then(|| json!({"client_id": "cli-1", "revoked_at": NOW, "expires_at": NOW + 86400}))
            .into_iter()
            .collect();
        if !revoke.is_empty() || !subjects.is_empty() || !clients.is_empty() {
            let delta = json!({"cursor": 8, "full": false, "now": NOW, "revoked_jtis": revoke,
                               "revoked_subjects": subjects, "revoked_clients": clients});
            revocation
                .sync_json(delta.to_string().as_bytes(), NOW)
                .unwrap_or_else(|e| panic!("generated delta refused: {e}"));
        }
    }
    let mut host = FuzzHost::at(now * 1000);
    let path = String::from_utf8_lossy(path).into_owned();
    let mut pairs: Vec<(&str, Vec<u8>)> = vec![(":method", method.to_vec())];
    match o[0] % 5 {
        0 | 2 => pairs.push(("authorization", credential.to_vec())),
        1 => pairs.push(("x-token", credential.to_vec())),
        3 => {
            let mut cookie = b"theme=dark; at=".to_vec();
            cookie.extend_from_slice(credential);
            pairs.push(("cookie", cookie));
        }
        _ => {}
    }
    let full_path = if o[0] % 5 == 4 {
        format!(
            "{path}?access_token={}",
            String::from_utf8_lossy(credential)
        )
    } else {
        path
    };
    pairs.push((":path", full_path.into_bytes()));
    host.headers = HeaderMap::from_pairs(&pairs);
    run_request(&mut host, &vm, now);
}

/// A token valid for the fixed configuration (ES256, `ec-1`), signed once per process.
fn fixture_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| seeds::sign_es256("ec", "ec-1", &fixtures::claims()))
}

/// `config`: plugin-configuration JSON as Envoy hands it over. A configuration the engine accepts builds the
/// VM state the filter would run, decides a few requests with it (token in a header, a cookie and the query),
/// and runs one poller tick and one usage tick when it has a control plane.
pub fn config(data: &[u8]) {
    let Ok(engine) = Engine::from_json(data) else {
        return;
    };
    let vm = vm_with(engine, 1, false);
    let mut host = FuzzHost::at(NOW * 1000);
    let bearer = format!("Bearer {}", fixture_token());
    let cookie = format!("session={}; at={}", fixture_token(), fixture_token());
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/public/x?access_token=abc"),
        ("POST", "/api/write"),
        ("GET", "/api/../admin/./x"),
        ("DELETE", "/a%2Fb//c"),
    ] {
        let with_query = format!(
            "{path}{}access_token={}",
            if path.contains('?') { "&" } else { "?" },
            fixture_token()
        );
        host.headers = HeaderMap::from_pairs(&[
            (":method", method),
            (":path", with_query.as_str()),
            ("authorization", bearer.as_str()),
            ("cookie", cookie.as_str()),
            ("x-token", fixture_token()),
        ]);
        run_request(&mut host, &vm, NOW);
    }
    if let Some(control) = &vm.control {
        revocation_sync::on_tick(&mut host, control, NOW * 1000);
        usage::on_tick(&mut host, &control.usage, NOW * 1000 + 60_000);
    }
}

/// The fixed engine before any remote key set arrived.
fn engine_without_remote_keys() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::from_json(fixtures::config_json().to_string().as_bytes())
            .unwrap_or_else(|e| panic!("the fixed fuzz configuration is refused: {e}"))
    })
}

/// A token of the remote issuer (ES256, `ec-2`).
fn remote_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let mut claims = fixtures::claims();
        claims["iss"] = json!(fixtures::REMOTE_ISSUER);
        seeds::sign_es256("ec_b", "ec-2", &claims)
    })
}

/// `jwks`: a key-set document. Parsed as a remote set (symmetric keys refused) and as an inline one, every key
/// it yields verifies a few signatures; then the filter's own path: a key-set fetch answered with these bytes,
/// a token of that issuer decided with what was installed, and a second VM picking the set up from shared data.
pub fn jwks(data: &[u8]) {
    for allow_symmetric in [false, true] {
        if let Ok(set) = KeySet::from_jwks_json(data, allow_symmetric) {
            std::hint::black_box((set.digest(), set.kids(), set.skipped(), set.len()));
            for key in set.keys() {
                for signature in [&[0u8; 64][..], &[0xff; 256][..], &[1; 32][..], &[]] {
                    std::hint::black_box(key.verify(b"eyJhbGciOiJub25lIn0.e30", signature));
                }
            }
        }
    }
    let vm = vm_with(engine_without_remote_keys().clone(), 1, true);
    let mut host = FuzzHost::at(NOW * 1000);
    if jwks_fetch::start_fetch(&mut host, &vm, 1, 1, Trigger::UnknownKid, NOW).is_err() {
        return;
    }
    let token = host.calls.last().map_or(0, |c| c.0);
    jwks_fetch::on_fetch_response(&mut host, &vm, token, &ok(data), NOW);
    let bearer = format!("Bearer {}", remote_token());
    host.headers = HeaderMap::from_pairs(&[
        (":method", "GET"),
        (":path", "/api/x"),
        ("authorization", bearer.as_str()),
    ]);
    flow::process(&mut host, &vm, 2, false);
    let other = vm_with(engine_without_remote_keys().clone(), 2, true);
    jwks_fetch::sync_from_shared(&mut host, &other, 1, NOW);
    flow::process(&mut host, &other, 3, false);
}

/// `feed`: a revocation feed answer body. Core's parser, and its binary encoding read back (an answer that
/// parses must encode into a record that decodes: asserted); then the filter's own path: the polling VM gets
/// it as the answer to its poll (twice if it asks for a next page), and a second VM catches up from what the
/// poller published and decides a request with that state.
pub fn feed(data: &[u8]) {
    if let Ok(update) = FeedUpdate::from_json(data) {
        let record = update.to_bytes(3);
        if let Err(e) = FeedUpdate::from_bytes(&record) {
            panic!("a parsed feed answer encodes into a record its own decoder refuses: {e}");
        }
    }
    let poller = vm_with(fixtures::engine().clone(), 1, false);
    let follower = vm_with(fixtures::engine().clone(), 2, false);
    let (Some(pc), Some(fc)) = (&poller.control, &follower.control) else {
        panic!("the fixed configuration has no control plane");
    };
    let mut host = FuzzHost::at(NOW * 1000);
    let now_ms = host.now_ms;
    revocation_sync::on_tick(&mut host, pc, now_ms);
    decline_snapshot(&mut host, pc);
    for _ in 0..2 {
        let Some(&(token, _, _)) = host.calls.last() else {
            break;
        };
        let calls = host.calls.len();
        let now_ms = host.now_ms;
        revocation_sync::on_poll_response(&mut host, pc, token, &ok(data), now_ms);
        if host.calls.len() == calls {
            break;
        }
    }
    host.now_ms += 100;
    let now_ms = host.now_ms;
    revocation_sync::on_tick(&mut host, fc, now_ms);
    let bearer = format!("Bearer {}", fixture_token());
    host.headers = HeaderMap::from_pairs(&[
        (":method", "GET"),
        (":path", "/api/x"),
        ("authorization", bearer.as_str()),
    ]);
    flow::process(&mut host, &follower, 1, false);
    flow::process(&mut host, &poller, 2, false);
}

/// Answers a cold poller's edge snapshot request with 404, as an admin API without the endpoint would: the
/// poller then asks the JSON feed at once, which is what `feed` fuzzes.
fn decline_snapshot(host: &mut FuzzHost, control: &edgewarden_filter::state::Control) {
    let Some(&(token, _, _)) = host.calls.last() else {
        return;
    };
    let not_found = CallResponse {
        status: Some(404),
        body_size: 0,
        body: None,
    };
    let now_ms = host.now_ms;
    revocation_sync::on_poll_response(host, control, token, &not_found, now_ms);
}

/// `snapshot`: one page of the edge snapshot (`GET /api/v1/revocations/snapshot`) as the admin API answers a
/// cold poller. The first byte is a mode: bit 0 clear means the page's checksum is recomputed first (so
/// mutations reach the parser behind it). The page goes through core's parser and loader (a page that parses
/// loads at most the entries it announces: asserted), then answers a real poller's snapshot request, up to
/// three times (its page 0 and the pages it asks for next); a page refused leaves the poller unsynced
/// (asserted), and a follower then catches up and decides a request.
pub fn snapshot(data: &[u8]) {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(checksum::check_against_core);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut page = rest.to_vec();
    if mode & 1 == 0 {
        checksum::fix_snapshot(&mut page);
    }
    let parsed = SnapshotPage::parse(&page);
    if let Ok(parsed) = &parsed {
        let mut set = parsed.new_set();
        parsed.apply_to(&mut set);
        assert!(
            set.jti_count() <= parsed.counts.jtis as usize
                && set.subject_count() <= parsed.counts.subjects as usize
                && set.client_count() <= parsed.counts.clients as usize,
            "a page loaded more entries than it announces"
        );
    }
    let poller = vm_with(fixtures::engine().clone(), 1, false);
    let follower = vm_with(fixtures::engine().clone(), 2, false);
    let (Some(pc), Some(fc)) = (&poller.control, &follower.control) else {
        panic!("the fixed configuration has no control plane");
    };
    let mut host = FuzzHost::at(NOW * 1000);
    let now_ms = host.now_ms;
    revocation_sync::on_tick(&mut host, pc, now_ms);
    for _ in 0..3 {
        let Some(&(token, _, _)) = host.calls.last() else {
            break;
        };
        let calls = host.calls.len();
        let now_ms = host.now_ms;
        revocation_sync::on_poll_response(&mut host, pc, token, &ok(&page), now_ms);
        if host.calls.len() == calls {
            break;
        }
    }
    if parsed.is_err() {
        assert!(
            pc.revocation.borrow().last_sync().is_none(),
            "a refused snapshot page synced the poller"
        );
    }
    host.now_ms += 100;
    let now_ms = host.now_ms;
    revocation_sync::on_tick(&mut host, fc, now_ms);
    let bearer = format!("Bearer {}", fixture_token());
    host.headers = HeaderMap::from_pairs(&[
        (":method", "GET"),
        (":path", "/api/x"),
        ("authorization", bearer.as_str()),
    ]);
    flow::process(&mut host, &follower, 1, false);
    flow::process(&mut host, &poller, 2, false);
}

/// `feed_binary`: one binary revocation record as VMs hand them over in shared data. The first byte is a mode:
/// bit 0 clear means the record's checksum is recomputed first (so mutations reach the decoder behind it).
/// The record goes through every decoder: a snapshot, an update, a delta applied to a synced state, a mark.
/// A snapshot that decodes must encode into one that decodes to the same state (asserted).
pub fn feed_binary(data: &[u8]) {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(checksum::check_against_core);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut record = rest.to_vec();
    if mode & 1 == 0 {
        checksum::fix(&mut record);
    }
    if let Ok(set) = RevocationSet::from_bytes(&record) {
        let again = RevocationSet::from_bytes(&set.to_bytes()).unwrap_or_else(|e| {
            panic!("a decoded snapshot re-encodes into a record its decoder refuses: {e}")
        });
        assert_eq!(
            (again.len(), again.cursor(), again.feed_now()),
            (set.len(), set.cursor(), set.feed_now()),
            "a snapshot changed through encode and decode"
        );
    }
    std::hint::black_box(FeedUpdate::from_bytes(&record).ok());
    let mut state = RevocationSet::new();
    state.apply(fixed_feed());
    let before = state.len();
    if state.apply_bytes(&record).is_err() {
        assert_eq!(state.len(), before, "a refused record changed the state");
    }
    std::hint::black_box(SyncMark::from_bytes(&record).ok());
}

/// The highest slot [`shared_key`] names (slots 11 to 74 are the delta ring).
pub const LAST_SHARED_SLOT: u8 = 76;

/// The slot of the Envoy instance id.
const INSTANCE_SLOT: u8 = 75;

/// The slot of the registry of VMs to wake after a change.
pub const WAKERS_SLOT: u8 = 76;

/// The shared-data keys the filter uses for the fixed control plane (`cp`, default feed path); checked
/// against what a real poller writes by [`check_shared_keys`].
pub fn shared_key(slot: u8) -> String {
    let base = "edgewarden.revocation|cp|/api/v1/revocations/feed|";
    match slot {
        0 => format!("{base}lease"),
        1 => format!("{base}mark"),
        2 => format!("{base}snapshot"),
        3..=10 => format!("{base}snapshot.part.{}", slot - 3),
        // The Envoy instance id the first VM of a process publishes for every VM to report.
        INSTANCE_SLOT => "edgewarden.instance".to_string(),
        // The VMs listed to be woken on their shared queues after the poller publishes.
        WAKERS_SLOT => format!("{base}wakers"),
        _ => format!(
            "{base}delta.{}",
            u64::from(slot - 11) % revocation_sync::RING
        ),
    }
}

/// Panics unless a real poller's publications land under the keys [`shared_key`] names (a renamed key would
/// leave `shared_state` fuzzing values nobody reads).
pub fn check_shared_keys() {
    let shared = seeds::published_state();
    for key in shared.keys() {
        let known = (0..=LAST_SHARED_SLOT).any(|slot| shared_key(slot) == *key);
        assert!(
            known,
            "the poller writes shared key {key} that fuzz/src/targets.rs::shared_key does not name"
        );
    }
    assert!(
        shared.contains_key(&shared_key(1)),
        "the poller published no mark under {}",
        shared_key(1)
    );
}

/// Parses `shared_state` input into shared data: records of `[slot][len u16 le][value]`; slot bit 7 set
/// means "recompute the checksum of the record after the 8-byte sequence number" (parts and deltas).
pub fn shared_entries(data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut rest = data;
    while let [slot, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (value, next) = tail.split_at(len);
        let mut value = value.to_vec();
        let index = slot & 0x7f;
        if slot & 0x80 != 0 && index >= 3 && value.len() > 8 {
            checksum::fix(&mut value[8..]);
        }
        out.insert(shared_key(index), value);
        rest = next;
    }
    out
}

/// Encodes shared data in the `shared_state` input format (the seeds use it).
pub fn encode_shared(entries: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in entries {
        let Some(slot) = (0..=LAST_SHARED_SLOT).find(|s| shared_key(*s) == *key) else {
            continue;
        };
        out.push(slot);
        out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_le_bytes());
        out.extend_from_slice(&value[..value.len().min(usize::from(u16::MAX))]);
    }
    out
}

/// `shared_state`: the proxy-wasm shared data another worker VM wrote (lease, mark, snapshot manifest and
/// parts, delta ring), as described by [`shared_entries`]. A follower VM runs two timer ticks on it (catching
/// up, or taking the lease over and republishing), lists itself in the wake registry and takes a wake-up
/// ([`wake_registry`]), decides a request with the state it ended with, and hands the lease back and leaves
/// the registry as a VM that shuts down does.
pub fn shared_state(data: &[u8]) {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(check_shared_keys);
    let mut host = FuzzHost::at(NOW * 1000);
    for (key, value) in shared_entries(data) {
        host.shared.borrow_mut().insert(key, (value, 1));
    }
    let vm = vm_with(fixtures::engine().clone(), VM_ID, false);
    let Some(control) = &vm.control else {
        panic!("the fixed configuration has no control plane");
    };
    let now_ms = host.now_ms;
    revocation_sync::on_tick(&mut host, control, now_ms);
    host.now_ms += 100;
    let now_ms = host.now_ms;
    revocation_sync::on_tick(&mut host, control, now_ms);
    wake_registry(&mut host, control);
    let bearer = format!("Bearer {}", fixture_token());
    host.headers = HeaderMap::from_pairs(&[
        (":method", "GET"),
        (":path", "/api/x"),
        ("authorization", bearer.as_str()),
    ]);
    flow::process(&mut host, &vm, 1, false);
    revocation_sync::release(&mut host, control);
    wake::unregister(&mut host, control);
    if let Some((bytes, _)) = host.get_shared(&shared_key(WAKERS_SLOT)) {
        assert!(
            wake::decode_registry(&bytes)
                .iter()
                .all(|&(id, _)| id != VM_ID),
            "a VM shutting down is still listed to be woken"
        );
    }
}

/// The VM id of the `shared_state` follower.
const VM_ID: u64 = 2;

/// Shared queues for [`wake_registry`]: every name resolves (each other VM listed has registered its
/// queue), and what is enqueued where is recorded.
#[derive(Default)]
struct FuzzQueues {
    ids: HashMap<String, u32>,
    queued: HashMap<u32, Vec<Vec<u8>>>,
}

impl wake::Queues for FuzzQueues {
    fn register(&mut self, name: &str) -> Option<u32> {
        self.resolve(name)
    }
    fn resolve(&mut self, name: &str) -> Option<u32> {
        let next = self.ids.len() as u32 + 1;
        Some(*self.ids.entry(name.to_string()).or_insert(next))
    }
    fn enqueue(&mut self, queue: u32, value: &[u8]) -> bool {
        self.queued.entry(queue).or_default().push(value.to_vec());
        true
    }
    fn dequeue(&mut self, queue: u32) -> Option<Vec<u8>> {
        self.queued.get_mut(&queue)?.pop()
    }
}

/// The wake registry another VM wrote (slot [`WAKERS_SLOT`]): this VM lists itself with a fresh entry
/// within the bound, wakes no queue of its own, takes only its own queue's `on_queue_ready`.
fn wake_registry(host: &mut FuzzHost, control: &edgewarden_filter::state::Control) {
    let now = host.now_ms;
    let mut queues = FuzzQueues::default();
    wake::keep_registered(host, &mut queues, control, now);
    let Some((bytes, _)) = host.get_shared(&shared_key(WAKERS_SLOT)) else {
        panic!("the VM did not list itself to be woken");
    };
    let entries = wake::decode_registry(&bytes);
    assert!(
        entries.len() <= wake::MAX_ENTRIES
            && entries
                .iter()
                .any(|&(id, expires)| id == VM_ID
                    && expires.saturating_sub(now) > wake::ENTRY_MS / 2),
        "after registering, the registry does not list this VM with a fresh entry: {entries:?}"
    );
    let Some(&own) = queues.ids.values().next() else {
        panic!("the VM registered no queue");
    };
    wake::wake_followers(host, &mut queues, control, now);
    assert!(
        !queues.queued.contains_key(&own),
        "the VM woke its own queue"
    );
    queues.enqueue(own, &1u64.to_le_bytes());
    assert!(wake::on_queue_ready(host, &mut queues, control, own));
    assert!(!wake::on_queue_ready(
        host,
        &mut queues,
        control,
        own + 1000
    ));
}

/// `headers`: the request-header buffer as Envoy serialises it (`proxy_get_header_map_pairs`, the buffer the
/// first of the filter's two `unsafe` calls takes over). Whatever pairs are read must serialise and read back identically
/// (asserted); then the filter decides the request those headers describe.
pub fn headers(data: &[u8]) {
    let map = HeaderMap::from_serialized(data.to_vec());
    let pairs: Vec<(String, String)> = map
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(pairs.len(), map.len());
    let again = HeaderMap::from_pairs(&pairs);
    let reread: Vec<(String, String)> = again
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        reread, pairs,
        "header pairs changed through serialise and read"
    );
    for name in [
        ":path",
        ":method",
        "authorization",
        "AUTHORIZATION",
        "cookie",
        "x-sub",
    ] {
        std::hint::black_box(map.get(name));
    }
    let vm = vm_with(fixtures::engine().clone(), 1, true);
    let mut host = FuzzHost::at(NOW * 1000);
    host.headers = map;
    run_request(&mut host, &vm, NOW);
}

/// `admin`: a request body for the admin API. The first byte picks the body (usage batch, client, issuance,
/// revocation, API key, webhook, trusted issuer, login, password change, anomaly triage, a feed continuation,
/// an OAuth form, credential headers); the rest goes through the admin API's own parser for it
/// (`extract::parse_json`, `parse_form`, `Continuation::decode`, `auth::bearer`/`cookie`) and the checks it
/// applies before any database is touched, and every refusal is rendered as the JSON error answer.
#[cfg(feature = "admin")]
pub fn admin(data: &[u8]) {
    use axum::response::IntoResponse;
    use edgewarden_admin::error::ApiError;
    use edgewarden_admin::extract::{check_identifier, parse_form, parse_json};
    use edgewarden_admin::{auth, clients, revocations, usage as admin_usage, webhooks};
    use edgewarden_api_types as api;

    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(body);
    let ids = |field: &str, values: &[&str]| -> Result<(), ApiError> {
        values
            .iter()
            .try_for_each(|v| check_identifier(field, v, 256))
    };
    let scopes = |values: &[String]| values.iter().all(|s| clients::valid_scope_token(s));
    let result: Result<(), ApiError> = match which % 13 {
        0 => parse_json::<admin_usage::UsageBatch>(body).and_then(|b| {
            ids("edge", &[&b.edge])?;
            for c in &b.counts {
                let fields = [
                    c.jti.as_deref(),
                    c.subject.as_deref(),
                    c.client_id.as_deref(),
                ];
                ids(
                    "counts",
                    &fields.iter().flatten().copied().collect::<Vec<_>>(),
                )?;
                ids("route", &[&c.route])?;
            }
            for f in &b.failures {
                ids("reason", &[&f.reason])?;
            }
            Ok(())
        }),
        1 => parse_json::<api::NewClientRequest>(body).and_then(|c| {
            ids("client_id", &[&c.client_id])?;
            std::hint::black_box(scopes(&c.allowed_scopes) && scopes(&c.allowed_roles));
            Ok(())
        }),
        2 => parse_json::<api::IssueRequest>(body).and_then(|r| {
            ids("subject", &[&r.subject, &r.client_id])?;
            std::hint::black_box(scopes(&r.scopes) && scopes(&r.roles));
            Ok(())
        }),
        3 => parse_json::<api::RevokeRequest>(body).map(|r| {
            if let Some(token) = &r.token {
                std::hint::black_box(fixtures::engine().verify(token, NOW).is_ok());
            }
            for v in [&r.jti, &r.subject, &r.client_id, &r.issuer, &r.reason]
                .into_iter()
                .flatten()
            {
                std::hint::black_box(check_identifier("value", v, 512).is_ok());
            }
        }),
        4 => parse_json::<api::NewApiKeyRequest>(body).and_then(|k| {
            let edges: Vec<&str> = k.edges.iter().map(String::as_str).collect();
            ids("edges", &edges)
        }),
        5 => parse_json::<api::NewWebhookRequest>(body).map(|w| {
            std::hint::black_box(webhooks::redacted_url(&w.url));
        }),
        6 => parse_json::<api::NewIssuerRequest>(body).map(|i| {
            if let Some(jwks) = &i.jwks {
                std::hint::black_box(KeySet::from_jwks_value(jwks, false).is_ok());
            }
            if let Some(uri) = &i.jwks_uri {
                std::hint::black_box(webhooks::redacted_url(uri));
            }
        }),
        7 => parse_json::<api::LoginRequest>(body).and_then(|l| ids("username", &[&l.username])),
        8 => parse_json::<api::PasswordChange>(body)
            .and_then(|p| auth::check_password("new_password", &p.new_password)),
        9 => parse_json::<api::AnomalyUpdate>(body).map(|_| ()),
        10 => revocations::Continuation::decode(&text).map(|c| {
            let again = revocations::Continuation::decode(&c.encode()).unwrap_or_else(|e| {
                panic!("a continuation does not decode from its own encoding: {e:?}")
            });
            assert_eq!(again, c, "a continuation changed through encode and decode");
        }),
        11 => parse_form::<BTreeMap<String, String>>(body).map(|_| ()),
        _ => {
            let mut headers = axum::http::HeaderMap::new();
            for (i, line) in body.split(|b| *b == b'\n').enumerate() {
                if let Ok(value) = axum::http::HeaderValue::from_bytes(line) {
                    let name = if i % 2 == 0 {
                        "authorization"
                    } else {
                        "cookie"
                    };
                    headers.append(name, value);
                }
            }
            std::hint::black_box(auth::cookie(&headers, "edgewarden_session"));
            std::hint::black_box(auth::parse_edges(Some(text.to_string())).ok());
            auth::bearer(&headers).map(|_| ())
        }
    };
    if let Err(e) = result {
        std::hint::black_box((e.status_code(), e.code()));
        std::hint::black_box(e.into_response());
    }
}
