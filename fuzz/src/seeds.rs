//! The seed corpora, made from the same material as the unit tests (the fixture keys, the engine tests' token
//! shapes, the feed and shared-state tests' answers, the configurations in the READMEs and Envoy configs, the
//! admin API tests' bodies). `cargo run --bin fuzz-seeds` (through `cargo xtask fuzz --seeds`) writes them to
//! `fuzz/corpus/<target>/seed-*`; the corpus also keeps what the fuzzer found worth keeping.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use jwt_compact::alg::{Ed25519, Es256, Hs256, Hs256Key, Rsa, RsaPrivateKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use serde_json::{json, Value};

use crate::fixtures::{self, NOW};
use crate::host::FuzzHost;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn jwk(name: &str) -> JsonWebKey<'static> {
    serde_json::from_value(fixtures::private_keys()[name].clone())
        .unwrap_or_else(|e| panic!("fixture key {name}: {e}"))
}

/// Signs `header.payload` (raw JSON texts) with the fixture key and algorithm named by `alg`
/// (`RS256`/`PS256` with `key`, `ES256` with `key`, `EdDSA`, `HS256`, anything else unsigned).
pub fn sign_raw(header: &str, payload: &str, alg: &str, key: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let message = input.as_bytes();
    let signature = match alg {
        "RS256" | "PS256" => {
            let key = RsaPrivateKey::try_from(&jwk(key)).unwrap_or_else(|e| panic!("{e}"));
            let rsa = if alg == "RS256" {
                Rsa::rs256()
            } else {
                Rsa::ps256()
            };
            rsa.sign(&key, message).as_bytes().to_vec()
        }
        "ES256" => {
            let key = <Es256 as Algorithm>::SigningKey::try_from(&jwk(key))
                .unwrap_or_else(|e| panic!("{e}"));
            Es256.sign(&key, message).as_bytes().to_vec()
        }
        "EdDSA" => {
            let key = <Ed25519 as Algorithm>::SigningKey::try_from(&jwk("ed25519"))
                .unwrap_or_else(|e| panic!("{e}"));
            Ed25519.sign(&key, message).as_bytes().to_vec()
        }
        "HS256" => Hs256
            .sign(&Hs256Key::new(fixtures::HMAC_SECRET), message)
            .as_bytes()
            .to_vec(),
        _ => Vec::new(),
    };
    format!("{input}.{}", b64(&signature))
}

/// An ES256 token over `claims` with fixture key `key` named `kid`.
pub fn sign_es256(key: &str, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "ES256", "kid": kid, "typ": "at+jwt"});
    sign_raw(&header.to_string(), &claims.to_string(), "ES256", key)
}

fn with(changes: Value) -> Value {
    let mut c = fixtures::claims();
    for (k, v) in changes.as_object().into_iter().flatten() {
        if v.is_null() {
            c.as_object_mut().map(|o| o.remove(k));
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// Tokens in the shapes the engine tests use: every algorithm, the claim and time edge cases, header
/// hardening cases (alg none, HS256 with an RSA kid, crit, jku, duplicate keys), revoked identities.
pub fn tokens() -> Vec<(&'static str, String)> {
    let h = |alg: &str, kid: &str| json!({"alg": alg, "kid": kid, "typ": "at+jwt"}).to_string();
    let c = fixtures::claims().to_string();
    vec![
        (
            "rs256",
            sign_raw(&h("RS256", "rsa-1"), &c, "RS256", "rsa2048"),
        ),
        (
            "ps256",
            sign_raw(&h("PS256", "rsa-2"), &c, "PS256", "rsa2048_b"),
        ),
        ("es256", sign_raw(&h("ES256", "ec-1"), &c, "ES256", "ec")),
        ("eddsa", sign_raw(&h("EdDSA", "ed-1"), &c, "EdDSA", "")),
        ("hs256", sign_raw(&h("HS256", "hs-1"), &c, "HS256", "")),
        (
            "no-kid",
            sign_raw(&json!({"alg": "ES256"}).to_string(), &c, "ES256", "ec"),
        ),
        (
            "alg-none",
            sign_raw(&json!({"alg": "none"}).to_string(), &c, "none", ""),
        ),
        (
            "hs-with-rsa-kid",
            sign_raw(&h("HS256", "rsa-1"), &c, "HS256", ""),
        ),
        (
            "crit",
            sign_raw(
                &json!({"alg": "ES256", "kid": "ec-1", "crit": ["exp"]}).to_string(),
                &c,
                "ES256",
                "ec",
            ),
        ),
        (
            "jku",
            sign_raw(
                &json!({"alg": "ES256", "kid": "ec-1", "jku": "https://evil"}).to_string(),
                &c,
                "ES256",
                "ec",
            ),
        ),
        (
            "duplicate-claim",
            sign_raw(
                &h("ES256", "ec-1"),
                r#"{"iss":"https://issuer.test","sub":"a","sub":"b","aud":"api","exp":1700003600}"#,
                "ES256",
                "ec",
            ),
        ),
        (
            "expired",
            sign_es256("ec", "ec-1", &with(json!({"exp": NOW - 120}))),
        ),
        (
            "not-yet",
            sign_es256("ec", "ec-1", &with(json!({"nbf": NOW + 600}))),
        ),
        (
            "future-iat",
            sign_es256("ec", "ec-1", &with(json!({"iat": NOW + 600}))),
        ),
        (
            "no-exp",
            sign_es256("ec", "ec-1", &with(json!({"exp": null}))),
        ),
        (
            "float-exp",
            sign_es256("ec", "ec-1", &with(json!({"exp": 1.7e9}))),
        ),
        (
            "aud-list",
            sign_es256("ec", "ec-1", &with(json!({"aud": ["x", "api"]}))),
        ),
        (
            "wrong-aud",
            sign_es256("ec", "ec-1", &with(json!({"aud": "nope"}))),
        ),
        (
            "scope-admin",
            sign_es256(
                "ec",
                "ec-1",
                &with(json!({"scope": "admin read", "roles": ["ops"]})),
            ),
        ),
        (
            "scp-list",
            sign_es256("ec", "ec-1", &with(json!({"scope": null, "scp": ["read"]}))),
        ),
        (
            "realm-roles",
            sign_es256(
                "ec",
                "ec-1",
                &with(json!({"realm_access": {"roles": ["admin"]}, "groups": ["ops"]})),
            ),
        ),
        (
            "revoked-jti",
            sign_es256("ec", "ec-1", &with(json!({"jti": "revoked-jti"}))),
        ),
        (
            "revoked-sub",
            sign_es256("ec", "ec-1", &with(json!({"sub": "mallory"}))),
        ),
        (
            "revoked-client",
            sign_es256("ec", "ec-1", &with(json!({"client_id": "cli-revoked"}))),
        ),
        (
            "remote",
            sign_es256(
                "ec_b",
                "ec-2",
                &with(json!({"iss": fixtures::REMOTE_ISSUER})),
            ),
        ),
        (
            "remote-unknown-kid",
            sign_es256(
                "ec_b",
                "ec-9",
                &with(json!({"iss": fixtures::REMOTE_ISSUER})),
            ),
        ),
        (
            "wrong-iss",
            sign_es256("ec", "ec-1", &with(json!({"iss": "https://other"}))),
        ),
        (
            "bad-signature",
            format!("{}AAAA", sign_es256("ec", "ec-1", &fixtures::claims())),
        ),
        (
            "typ-jwt",
            sign_raw(
                &json!({"alg": "ES256", "kid": "ec-1", "typ": "JWT"}).to_string(),
                &c,
                "ES256",
                "ec",
            ),
        ),
    ]
}

/// The requests the token seeds are sent as: method and path pairs that hit every fixed rule.
const REQUESTS: [(&str, &str); 5] = [
    ("GET", "/api/read"),
    ("POST", "/api/write"),
    ("GET", "/admin/users"),
    ("GET", "/public/x"),
    ("PUT", "/other/../api/write"),
];

/// Runs a real poller through a full answer and two deltas on a [`FuzzHost`] and returns the shared data it
/// published (lease, mark, snapshot and parts, deltas).
pub fn published_state() -> BTreeMap<String, Vec<u8>> {
    use edgewarden_filter::host::CallResponse;
    use edgewarden_filter::metrics::Metrics;
    use edgewarden_filter::revocation_sync;
    use edgewarden_filter::state::VmState;

    let vm = VmState::with_identity(
        fixtures::engine().clone(),
        Metrics::default(),
        1,
        NOW * 1000,
    );
    let Some(control) = &vm.control else {
        panic!("the fixed configuration has no control plane");
    };
    let mut host = FuzzHost::at(NOW * 1000);
    let answers = [
        // The cold poller asks for the edge snapshot first: a page of it (the JSON answers after are deltas).
        Value::Null,
        fixtures::feed_json(),
        json!({"cursor": 9, "full": false, "now": NOW, "revoked_jtis": [{"jti": "late", "exp": NOW + 60}],
               "revoked_subjects": [], "revoked_clients": []}),
        json!({"cursor": 10, "full": false, "now": NOW, "revoked_jtis": [],
               "revoked_subjects": [{"subject": "eve", "iss": fixtures::ISSUER, "revoked_at": NOW, "expires_at": NOW + 60}],
               "revoked_clients": []}),
    ];
    let now_ms = host.now_ms;
    revocation_sync::on_tick(&mut host, control, now_ms);
    for answer in answers {
        let Some(&(token, _, _)) = host.calls.last() else {
            break;
        };
        let body = if answer.is_null() {
            snapshot_pages().swap_remove(0)
        } else {
            answer.to_string().into_bytes()
        };
        let resp = CallResponse {
            status: Some(200),
            body_size: body.len(),
            body: Some(body),
        };
        let now_ms = host.now_ms;
        revocation_sync::on_poll_response(&mut host, control, token, &resp, now_ms);
        host.now_ms += 100;
        let now_ms = host.now_ms;
        revocation_sync::on_tick(&mut host, control, now_ms);
    }
    let shared = host.shared.borrow();
    shared
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect()
}

/// The fixed feed's state as one edge snapshot page (cursor 7), as the admin API would build it.
pub fn snapshot_pages() -> Vec<Vec<u8>> {
    let mut builder = edgewarden_core::feed::snapshot::SnapshotBuilder::new();
    for jti in ["revoked-1", "revoked-2", "old"] {
        builder.jti(Some(fixtures::ISSUER), jti, NOW + 3600);
    }
    builder.jti(None, "any-issuer", NOW + 60);
    builder.principal(
        true,
        Some(fixtures::ISSUER),
        "mallory",
        edgewarden_core::revocation::PrincipalRevocation {
            revoked_at: NOW - 10,
            expires_at: NOW + 3600,
        },
    );
    builder.principal(
        false,
        None,
        "leaky-client",
        edgewarden_core::revocation::PrincipalRevocation {
            revoked_at: NOW - 10,
            expires_at: NOW + 3600,
        },
    );
    builder.finish(7, NOW, 1 << 20)
}

/// A snapshot of a few dozen jtis in pages of five.
fn paged_snapshot() -> Vec<Vec<u8>> {
    let mut builder = edgewarden_core::feed::snapshot::SnapshotBuilder::new();
    for i in 0..30 {
        builder.jti(Some(fixtures::ISSUER), &format!("jti-{i}"), NOW + 600);
    }
    builder.finish(30, NOW, 5 * 12)
}

/// Every seed, by target: `(target, name, bytes)`.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, name.to_string(), bytes));
    };
    let tokens = tokens();
    for (i, (name, token)) in tokens.iter().enumerate() {
        let (method, path) = REQUESTS[i % REQUESTS.len()];
        add(
            "token",
            name,
            format!("{method}\n{path}\nBearer {token}").into_bytes(),
        );
    }
    for (method, path, credential) in [
        ("GET", "/public/x", ""),
        ("GET", "/api/x", "Basic YWxpY2U6c2VjcmV0"),
        ("GET", "/api/x", "Bearer "),
        ("GET", "/api/x", "bearer a.b.c"),
        ("GET", "/api/x?x=1#f", "Bearer \u{fffd}.\u{0}.x"),
    ] {
        add(
            "token",
            &format!("plain-{method}-{}", credential.len()),
            format!("{method}\n{path}\n{credential}").into_bytes(),
        );
    }
    // token_generated: option bytes, then the request; one seed per token source and a few configurations.
    for (i, (name, token)) in tokens.iter().enumerate() {
        let (method, path) = REQUESTS[i % REQUESTS.len()];
        let source = (i % 5) as u8;
        let credential = match source {
            0 => format!("Bearer {token}"),
            2 => format!("Token {token}"),
            _ => token.clone(),
        };
        let options = [
            source,
            (i as u8).wrapping_mul(37),
            (i as u8) % 31,
            (i as u8) % 16,
            0b1111_1111 >> (i % 8),
            (i as u8) % 12,
            (i as u8) % 8,
            0,
        ];
        let mut bytes = options.to_vec();
        bytes.extend_from_slice(format!("{method}\n{path}\n{credential}").as_bytes());
        add("token_generated", name, bytes);
    }
    // config: the fixed configuration, the README's and demo's shapes, and the core tests' edge cases.
    let configs = [
        fixtures::config_json(),
        json!({"issuers": [{"issuer": "https://issuer.example", "audiences": ["api"],
                            "remote_jwks": {"cluster": "issuer_jwks", "path": "/.well-known/jwks.json"}}],
               "rules": [{"match": {"prefix": "/public"}, "allow_anonymous": true},
                         {"match": {"prefix": "/api/admin"}, "require_scopes": ["admin"]}]}),
        json!({"issuers": [{"issuer": fixtures::ISSUER, "jwks": fixtures::inline_jwks()}],
               "token_source": {"cookie": "session"}, "allowed_typ": ["at+jwt"], "required_claims": ["jti"],
               "require_exp": true, "clock_skew_seconds": 30, "roles_claim": "realm_access.roles",
               "max_token_bytes": 4096, "report_only": true, "realm": "edge", "stat_prefix": "one",
               "cache": {"max_entries": 10, "max_ttl_seconds": 60}}),
        json!({"issuers": [{"issuer": fixtures::ISSUER, "jwks": fixtures::inline_jwks()}],
               "token_source": {"query": "access_token"},
               "control_plane": {"cluster": "cp", "api_key": "ewk_x", "edge_name": "e", "authority": "admin.example:8080",
                                 "timeout_ms": 500, "snapshot_timeout_ms": 5000},
               "revocation": {"poll_interval_ms": 200, "max_staleness_seconds": 30, "on_stale": "allow",
                              "feed_path": "/feed", "long_poll_seconds": 5},
               "usage": {"flush_interval_ms": 1000, "max_buffered_events": 10, "path": "/usage"}}),
        json!({"issuers": [{"issuer": fixtures::ISSUER, "jwks": {"keys": [fixtures::public_jwk("rsa1024_public", Some("RS256"))]}}]}),
        json!({"issuers": [{"issuer": fixtures::ISSUER, "jwks": {"keys": [fixtures::public_jwk("ec384_public", None)]}}]}),
        json!({"issuers": []}),
        json!({"issuers": [{"issuer": "a", "jwks": {"keys": []}, "unknown": 1}]}),
    ];
    for (i, c) in configs.iter().enumerate() {
        add(
            "config",
            &format!("config-{i}"),
            serde_json::to_vec_pretty(c).unwrap_or_default(),
        );
    }
    // jwks: the remote set, every fixture key alone, and the key-hygiene cases of the jwks tests.
    let mut sets = vec![fixtures::remote_jwks(), fixtures::inline_jwks()];
    for name in [
        "rsa2048",
        "rsa2048_b",
        "rsa1024_public",
        "ec",
        "ec_b",
        "ec384_public",
        "ed25519",
    ] {
        sets.push(json!({"keys": [fixtures::public_jwk(name, None)]}));
    }
    let mut private = fixtures::private_keys()["ec_b"].clone();
    private["kid"] = json!("ec-2");
    sets.push(json!({"keys": [private]}));
    let mut enc = fixtures::public_jwk("rsa2048", None);
    enc["use"] = json!("enc");
    sets.push(json!({"keys": [enc, fixtures::public_jwk("ec_b", Some("ES256"))]}));
    sets.push(json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "bad"}]}));
    sets.push(
        json!({"keys": [fixtures::public_jwk("ec_b", None), fixtures::public_jwk("ec_b", None)]}),
    );
    for (i, s) in sets.iter().enumerate() {
        add("jwks", &format!("jwks-{i}"), s.to_string().into_bytes());
    }
    // feed: the fixture answer, paged answers, deltas, the feed tests' refusals.
    let feeds = [
        fixtures::feed_json(),
        json!({"cursor": 12, "full": true, "now": NOW, "revoked_jtis": [{"jti": "a", "exp": NOW + 10}],
               "revoked_subjects": [], "revoked_clients": [], "next": "MTI6anRpOmE", "total": {"jtis": 2, "subjects": 0, "clients": 0}}),
        json!({"cursor": 13, "full": false, "now": NOW, "revoked_jtis": [{"jti": "b", "exp": NOW + 10, "iss": fixtures::ISSUER}],
               "revoked_subjects": [{"subject": "s", "revoked_at": NOW, "expires_at": NOW + 5}], "revoked_clients": [], "next": "x"}),
        json!({"cursor": 0, "full": false, "now": 0, "revoked_jtis": [], "revoked_subjects": [], "revoked_clients": []}),
        json!({"cursor": 1, "full": true, "now": NOW, "revoked_jtis": [{"jti": "", "exp": 1}], "revoked_subjects": [], "revoked_clients": []}),
    ];
    for (i, f) in feeds.iter().enumerate() {
        add("feed", &format!("feed-{i}"), f.to_string().into_bytes());
    }
    add("feed", "positional", br#"{"cursor":1,"full":true,"now":1,"revoked_jtis":[["a",1]],"revoked_subjects":[],"revoked_clients":[]}"#.to_vec());
    // feed_binary: mode byte 0 (checksum recomputed) in front of real records.
    let update =
        edgewarden_core::feed::FeedUpdate::from_json(fixtures::feed_json().to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    let mut set = edgewarden_core::revocation::RevocationSet::new();
    set.apply(&update);
    let mark = edgewarden_core::feed::SyncMark {
        cursor: 7,
        last_sync: Some(NOW),
        seq: 3,
        snapshot_seq: 2,
    };
    for (name, record) in [
        ("snapshot", set.to_bytes()),
        ("delta", update.to_bytes(7)),
        (
            "empty",
            edgewarden_core::revocation::RevocationSet::new().to_bytes(),
        ),
        ("mark", mark.to_bytes().to_vec()),
    ] {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&record);
        add("feed_binary", name, bytes);
    }
    // snapshot: mode byte 0 (checksum recomputed) in front of real pages: one page, the first and last of a
    // paged snapshot, and an empty state.
    let pages = snapshot_pages();
    let empty = edgewarden_core::feed::snapshot::SnapshotBuilder::new().finish(4, NOW, 1 << 20);
    for (name, page) in [("whole", pages.first()), ("empty", empty.first())]
        .into_iter()
        .chain(
            paged_snapshot()
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let name: &'static str = if i == 0 { "paged-first" } else { "paged-next" };
                    (name, Some(p))
                })
                .take(2),
        )
    {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(page.map(Vec::as_slice).unwrap_or_default());
        add("snapshot", name, bytes);
    }
    // shared_state: what a real poller published, whole and in parts.
    let published = published_state();
    add(
        "shared_state",
        "published",
        crate::encode_shared(&published),
    );
    for (i, key) in published.keys().enumerate() {
        let mut some = published.clone();
        some.remove(key);
        add(
            "shared_state",
            &format!("without-{i}"),
            crate::encode_shared(&some),
        );
    }
    // shared_state: a wake registry listing the poller, this follower with an entry about to lapse, and a
    // VM gone.
    let mut listed = published.clone();
    listed.insert(
        crate::shared_key(crate::WAKERS_SLOT),
        edgewarden_filter::revocation_sync::wake::encode_registry(&[
            (1, NOW * 1000 + 30_000),
            (2, NOW * 1000 + 1_000),
            (7, NOW * 1000 - 1),
        ]),
    );
    add("shared_state", "wakers", crate::encode_shared(&listed));
    // headers: serialised maps like Envoy's, with the filter's header cases.
    let token = &tokens[2].1;
    let bearer = format!("Bearer {token}");
    let maps: Vec<Vec<(&str, &[u8])>> = vec![
        vec![
            (":method", b"GET"),
            (":path", b"/api/read"),
            (":authority", b"edge"),
            ("authorization", bearer.as_bytes()),
        ],
        vec![
            (":method", b"POST"),
            (":path", b"/api/write?x=1"),
            ("authorization", b"Basic abc"),
            ("x-sub", b"spoof"),
        ],
        vec![
            (":path", b"/public"),
            ("cookie", b"a=1"),
            ("cookie", b"b=2"),
            ("x-evil", b"caf\xe9\xff"),
        ],
        vec![],
    ];
    for (i, m) in maps.iter().enumerate() {
        add(
            "headers",
            &format!("map-{i}"),
            edgewarden_filter::headers::serialize(m),
        );
    }
    // admin: one body per selector, shaped like the admin API tests' requests.
    let bodies: [(u8, Value); 10] = [
        (
            0,
            json!({"edge": "edge-1", "interval_start": NOW, "interval_end": NOW + 10, "dropped": 0,
                   "counts": [{"jti": "j1", "subject": "alice", "client_id": "billing", "route": "/api", "reason": "allowed", "count": 3, "addresses": ["10.0.0.1"]}],
                   "failures": [{"jti": null, "subject": null, "client_id": null, "route": "/api", "reason": "expired", "client_address": "10.0.0.2", "at": NOW, "iat": NOW - 100, "nbf": null}]}),
        ),
        (
            1,
            json!({"client_id": "billing", "name": "Billing", "allowed_scopes": ["read"], "allowed_roles": ["user"], "audiences": ["demo-api"], "max_lifetime_seconds": 3600}),
        ),
        (
            2,
            json!({"subject": "alice", "client_id": "billing", "scopes": ["read"], "roles": [], "audience": ["a", "b"], "ttl_seconds": 60, "refresh": true}),
        ),
        (
            3,
            json!({"jti": "j1", "subject": "alice", "reason": "quick start", "issuer": "https://issuer.test", "expires_at": NOW, "token": tokens[0].1}),
        ),
        (
            4,
            json!({"role": "edge", "name": "ops", "edges": ["edge-1"]}),
        ),
        (
            5,
            json!({"url": "https://user:pass@hooks.example/x?token=1", "kinds": ["token.*"], "description": "d"}),
        ),
        (
            6,
            json!({"issuer": "https://idp.example", "jwks_uri": "https://idp.example/jwks", "jwks": fixtures::remote_jwks(), "max_token_lifetime_seconds": 3600}),
        ),
        (
            7,
            json!({"username": "admin", "password": "correct horse battery"}),
        ),
        (
            8,
            json!({"current_password": "a", "new_password": "correct horse battery"}),
        ),
        (9, json!({"state": "acknowledged"})),
    ];
    for (which, body) in bodies {
        let mut bytes = vec![which];
        bytes.extend_from_slice(body.to_string().as_bytes());
        add("admin", &format!("body-{which}"), bytes);
    }
    let mut continuation = vec![10u8];
    continuation.extend_from_slice(
        b64(format!(
            "12:jti@{}:{}value",
            fixtures::ISSUER.len(),
            fixtures::ISSUER
        )
        .as_bytes())
        .as_bytes(),
    );
    add("admin", "continuation", continuation);
    add(
        "admin",
        "form",
        b"\x0bgrant_type=client_credentials&scope=read+write&client_id=billing".to_vec(),
    );
    add(
        "admin",
        "headers",
        b"\x0cBearer ewk_abc\nedgewarden_session=abc; other=1\n[\"edge-1\"]".to_vec(),
    );
    out
}

/// Writes every seed (as [`all`] makes them) to `<target>/seed-<name>` under `dir`, replacing older seeds
/// of the same name, except one that differs from the new seed only in the signature that ends it: PS256
/// and the Ed25519 signer put fresh randomness in every signature, and the signature on disk is as good, so
/// the corpus stays as it is committed.
pub fn write_all(seeds: &[(&'static str, String, Vec<u8>)], dir: &Path) -> std::io::Result<usize> {
    for (target, name, bytes) in seeds {
        let folder = dir.join(target);
        std::fs::create_dir_all(&folder)?;
        let path = folder.join(format!("seed-{name}"));
        if std::fs::read(&path).is_ok_and(|old| differs_only_in_signature(&old, bytes)) {
            continue;
        }
        std::fs::write(path, bytes)?;
    }
    Ok(seeds.len())
}

/// True when `old` and `new` are the same up to their last `.`, and what follows it in each is a Base64url
/// text of the same length (a JWS signature; a JSON or other text ending after a `.` is never one).
fn differs_only_in_signature(old: &[u8], new: &[u8]) -> bool {
    matches!((signed_head(old), signed_head(new)), (Some(a), Some(b)) if a == b)
}

/// What a text ending in a JWS signature holds before it, and the signature's length.
fn signed_head(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let dot = bytes.iter().rposition(|&b| b == b'.')?;
    let (head, tail) = bytes.split_at(dot + 1);
    let signature = !tail.is_empty()
        && tail
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    signature.then_some((head, tail.len()))
}
