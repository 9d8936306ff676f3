//! Usage reporting: what this VM decided, aggregated and posted to the admin API's `POST /api/v1/usage`.
//! Each decision adds one to a count keyed by token, rule and reason (with up to 32 client addresses per
//! entry); refused requests also leave a sample with address, time and the token's `iat`/`nbf`.
//! Every `usage.flush_interval_ms` the current counts are sealed into a batch and sent from the root context.
//! Recording never makes a request wait: it touches memory only (plus one host call for the client address
//! on an entry's first [`ADDRESS_FIRST`] requests and then on one in [`ADDRESS_EVERY`], while it holds fewer than 32). The buffer holds at most `usage.max_buffered_events` entries and
//! samples across unsent batches; beyond that the oldest go first, and what was dropped is counted and reported.
//! Each post carries the hash of the configuration this edge runs (`x-edgewarden-config-hash`), as feed polls
//! do, and an answer saying the admin API lacks that configuration (`x-edgewarden-config: unknown`) makes the
//! edge post the document, as a poll's answer does ([`crate::revocation_sync::report`]).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::time::Duration;

use edgewarden_core::config::{ControlPlaneConfig, UsageConfig};
use edgewarden_core::decision::{Decision, Reason, Verdict};
use proxy_wasm::types::LogLevel;
use serde::Serialize;

use crate::host::{CallResponse, Host};
use crate::metrics::Stat;
use crate::revocation_sync::report;
use crate::state::Control;

/// Client addresses kept per count entry (what the admin API accepts).
pub const MAX_ADDRESSES: usize = 32;
/// An entry looks at the client address of its first this-many requests in an interval...
pub const ADDRESS_FIRST: u64 = 2;
/// ...then of one in this-many: a token used from many addresses still shows them over its requests, and a hot
/// token costs the host call (a property read, about as dear as the rest of the cached path) only rarely.
/// Measured with a thousand tokens at 26,000 requests/s and one-second reports: looking at the first 16 of each
/// entry's requests added 10 µs per request on average.
pub const ADDRESS_EVERY: u64 = 32;
/// Count entries per batch (the admin API's limit).
pub const MAX_COUNTS_PER_BATCH: usize = 10_000;
/// Failure samples per batch (the admin API's limit); refusals beyond it are counted but not sampled.
pub const MAX_FAILURES_PER_BATCH: usize = 1_000;
/// Longest interval one batch may cover (the admin API's limit).
const MAX_INTERVAL_SECONDS: u64 = 3_600;
/// Bytes of an error answer worth quoting in the log.
pub const MAX_ANSWER_BYTES: usize = 4096;
/// Repeated report failures are logged at most this often; each is counted.
const FAILURE_LOG_INTERVAL_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    token: u64,
    rule: Option<usize>,
    reason: Reason,
}

/// One aggregated count, in the admin API's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountEntry {
    /// The token's `jti`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The token's fingerprint (hex), the admin API's key for tokens without `jti`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_fingerprint: Option<String>,
    /// The token's `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The token's `client_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The matched rule's `prefix` or `path` (`*` for none).
    pub route: String,
    /// The decision reason.
    pub reason: &'static str,
    /// Decisions counted.
    pub count: u64,
    /// Client addresses seen, at most [`MAX_ADDRESSES`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// One refused request, in the admin API's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureSample {
    /// The token's `jti`, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The token's `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The token's `client_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The request path without query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Why it was refused.
    pub reason: &'static str,
    /// The client's address (`unknown` when the host does not tell).
    pub client_address: String,
    /// When (Unix seconds, the edge's clock).
    pub at: u64,
    /// The token's `iat`, when it could be read (clock-skew detection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The token's `nbf`, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

#[derive(Debug)]
struct Batch {
    id: u64,
    interval_start: u64,
    interval_end: u64,
    counts: Vec<CountEntry>,
    failures: Vec<FailureSample>,
}

impl Batch {
    fn events(&self) -> usize {
        self.counts.len() + self.failures.len()
    }

    fn decisions(&self) -> u64 {
        self.counts.iter().map(|c| c.count).sum()
    }
}

#[derive(Serialize)]
struct Report<'a> {
    edge: &'a str,
    interval_start: u64,
    interval_end: u64,
    dropped: u64,
    counts: &'a [CountEntry],
    failures: &'a [FailureSample],
}

#[derive(Debug, Clone, Copy)]
struct Inflight {
    token: u32,
    batch: u64,
    dropped: u64,
}

/// The aggregation and the unsent batches of one VM.
pub struct UsageReporter {
    cluster: String,
    authority: String,
    authorization: String,
    edge_name: String,
    path: String,
    /// The hash of the configuration this edge reports (`report::ConfigReport`), sent with every post.
    config_hash: Option<String>,
    flush_interval_ms: u64,
    max_events: usize,
    timeout_ms: u64,
    index: HashMap<Key, usize, BuildHasherDefault<DefaultHasher>>,
    counts: Vec<CountEntry>,
    failures: Vec<FailureSample>,
    interval_start: Option<u64>,
    pending: VecDeque<Batch>,
    /// Entries and samples held, current and pending.
    buffered: usize,
    /// Decisions dropped and not yet reported.
    dropped: u64,
    next_batch: u64,
    inflight: Option<Inflight>,
    next_flush_ms: u64,
    last_failure_log_ms: Option<u64>,
}

impl std::fmt::Debug for UsageReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The authorization header carries the edge's API key: never print it.
        f.debug_struct("UsageReporter")
            .field("cluster", &self.cluster)
            .field("edge_name", &self.edge_name)
            .field("buffered", &self.buffered)
            .field("pending", &self.pending.len())
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl UsageReporter {
    /// An empty reporter whose first flush is one interval after `now_ms`.
    pub fn new(cp: &ControlPlaneConfig, usage: &UsageConfig, now_ms: u64) -> UsageReporter {
        UsageReporter {
            cluster: cp.cluster.clone(),
            authority: cp.authority().into_owned(),
            authorization: format!("Bearer {}", cp.api_key),
            edge_name: cp.edge_name.clone(),
            path: usage.path.clone(),
            config_hash: None,
            flush_interval_ms: usage.flush_interval_ms,
            max_events: usage.max_buffered_events,
            timeout_ms: cp.timeout_ms,
            index: HashMap::default(),
            counts: Vec::new(),
            failures: Vec::new(),
            interval_start: None,
            pending: VecDeque::new(),
            buffered: 0,
            dropped: 0,
            next_batch: 1,
            inflight: None,
            next_flush_ms: now_ms.saturating_add(usage.flush_interval_ms),
            last_failure_log_ms: None,
        }
    }

    /// Sets the hash of the configuration this edge reports; every later post carries it.
    pub fn set_config_hash(&mut self, hash: Option<String>) {
        self.config_hash = hash;
    }

    /// Entries and samples held (current and unsent).
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Batches sealed and not yet accepted.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Decisions dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether `token` is this reporter's post in flight.
    pub fn owns(&self, token: u32) -> bool {
        self.inflight.is_some_and(|f| f.token == token)
    }

    /// Counts one decision on the request to `path` (without query), matched to `route`. `address` is asked
    /// only when the entry still collects addresses or the request is sampled. Returns the decisions dropped
    /// to make room (for the `usage_dropped` stat).
    pub fn record(
        &mut self,
        decision: &Decision,
        route: &str,
        path: &str,
        now: u64,
        address: &mut dyn FnMut() -> Option<String>,
    ) -> u64 {
        if self
            .interval_start
            .is_some_and(|start| now.saturating_sub(start) >= MAX_INTERVAL_SECONDS)
        {
            self.seal(now);
        }
        self.interval_start.get_or_insert(now);
        let token = decision.token.as_deref();
        let key = Key {
            token: token.map_or(0, |t| t.fingerprint),
            rule: decision.rule,
            reason: decision.reason,
        };
        let refused = decision.verdict == Verdict::Deny;
        let mut dropped = 0;
        let mut seen_address: Option<Option<String>> = None;
        let mut lookup = |cached: &mut Option<Option<String>>| -> Option<String> {
            cached.get_or_insert_with(&mut *address).clone()
        };
        match self.index.get(&key).copied() {
            Some(i) => {
                let wants_address = self.counts.get(i).is_some_and(|e| {
                    e.addresses.len() < MAX_ADDRESSES
                        && (e.count < ADDRESS_FIRST || e.count % ADDRESS_EVERY == 0)
                });
                let addr = if wants_address {
                    lookup(&mut seen_address)
                } else {
                    None
                };
                if let Some(entry) = self.counts.get_mut(i) {
                    entry.count = entry.count.saturating_add(1);
                    if let Some(a) = addr {
                        if !entry.addresses.contains(&a) {
                            entry.addresses.push(a);
                        }
                    }
                }
            }
            None => {
                dropped += self.make_room(now);
                if self.counts.len() >= MAX_COUNTS_PER_BATCH {
                    self.seal(now);
                    self.interval_start = Some(now);
                }
                let addresses = lookup(&mut seen_address).into_iter().collect();
                self.index.insert(key, self.counts.len());
                self.counts.push(CountEntry {
                    jti: token.and_then(|t| t.jti.clone()),
                    token_fingerprint: token
                        .filter(|t| t.jti.is_none())
                        .map(|t| format!("{:016x}", t.fingerprint)),
                    subject: token.and_then(|t| t.sub.clone()),
                    client_id: token.and_then(|t| t.client_id.clone()),
                    route: route.to_string(),
                    reason: decision.reason.as_str(),
                    count: 1,
                    addresses,
                });
                self.buffered += 1;
            }
        }
        if refused && self.failures.len() < MAX_FAILURES_PER_BATCH {
            dropped += self.make_room(now);
            self.failures.push(FailureSample {
                jti: token.and_then(|t| t.jti.clone()),
                subject: token.and_then(|t| t.sub.clone()),
                client_id: token.and_then(|t| t.client_id.clone()),
                route: Some(path.chars().take(1024).collect()),
                reason: decision.reason.as_str(),
                client_address: lookup(&mut seen_address).unwrap_or_else(|| "unknown".to_string()),
                at: now,
                iat: token.and_then(|t| t.iat),
                nbf: token.and_then(|t| t.nbf),
            });
            self.buffered += 1;
        }
        dropped
    }

    /// Frees one slot when the buffer is full, taking from the oldest unsent batch (samples before counts);
    /// returns the decisions whose counts were dropped.
    fn make_room(&mut self, now: u64) -> u64 {
        let mut dropped = 0;
        while self.buffered >= self.max_events {
            if self.pending.is_empty() {
                if self.counts.is_empty() && self.failures.is_empty() {
                    break;
                }
                self.seal(now);
                self.interval_start = Some(now);
            }
            let Some(oldest) = self.pending.front_mut() else {
                break;
            };
            if oldest.failures.pop().is_some() {
                self.buffered -= 1;
            } else if let Some(entry) = oldest.counts.pop() {
                self.buffered -= 1;
                dropped += entry.count;
            }
            if oldest.events() == 0 {
                self.pending.pop_front();
            }
        }
        self.dropped = self.dropped.saturating_add(dropped);
        dropped
    }

    /// Closes the current interval into a pending batch (nothing when it is empty).
    fn seal(&mut self, now: u64) {
        let Some(start) = self.interval_start.take() else {
            return;
        };
        if self.counts.is_empty() && self.failures.is_empty() {
            return;
        }
        self.index.clear();
        let id = self.next_batch;
        self.next_batch += 1;
        self.pending.push_back(Batch {
            id,
            interval_start: start,
            interval_end: now.max(start),
            counts: std::mem::take(&mut self.counts),
            failures: std::mem::take(&mut self.failures),
        });
    }
}

/// The reporter's tick: at each flush interval, seal the current counts and send the oldest unsent batch.
pub fn on_tick(host: &mut dyn Host, reporter: &std::cell::RefCell<UsageReporter>, now_ms: u64) {
    {
        let mut r = reporter.borrow_mut();
        if now_ms < r.next_flush_ms {
            return;
        }
        r.next_flush_ms = now_ms.saturating_add(r.flush_interval_ms);
        r.seal(now_ms / 1000);
    }
    send_next(host, reporter, now_ms);
}

/// Posts the oldest unsent batch unless one is in flight.
fn send_next(host: &mut dyn Host, reporter: &std::cell::RefCell<UsageReporter>, now_ms: u64) {
    let (cluster, headers, body, batch, dropped, timeout) = {
        let r = reporter.borrow();
        if r.inflight.is_some() {
            return;
        }
        let Some(batch) = r.pending.front() else {
            return;
        };
        let report = Report {
            edge: &r.edge_name,
            interval_start: batch.interval_start,
            interval_end: batch.interval_end,
            dropped: r.dropped,
            counts: &batch.counts,
            failures: &batch.failures,
        };
        let body = match serde_json::to_vec(&report) {
            Ok(body) => body,
            Err(e) => {
                host.log(
                    LogLevel::Error,
                    &format!("edgewarden: usage report not encoded: {e}"),
                );
                return;
            }
        };
        let mut headers = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), r.path.clone()),
            (":authority".to_string(), r.authority.clone()),
            ("authorization".to_string(), r.authorization.clone()),
            ("content-type".to_string(), "application/json".to_string()),
            ("x-edgewarden-edge".to_string(), r.edge_name.clone()),
        ];
        if let Some(hash) = &r.config_hash {
            headers.push((report::CONFIG_HASH_HEADER.to_string(), hash.clone()));
        }
        (
            r.cluster.clone(),
            headers,
            body,
            batch.id,
            r.dropped,
            Duration::from_millis(r.timeout_ms),
        )
    };
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    match host.dispatch(&cluster, &headers, Some(&body), timeout) {
        Ok(token) => {
            reporter.borrow_mut().inflight = Some(Inflight {
                token,
                batch,
                dropped,
            });
        }
        Err(e) => report_failed(
            host,
            reporter,
            now_ms,
            &format!("not dispatched ({e}): is cluster `{cluster}` defined in Envoy?"),
        ),
    }
}

/// Handles the admin API's answer to a usage post; false if `token` was not ours.
pub fn on_report_response(
    host: &mut dyn Host,
    reporter: &std::cell::RefCell<UsageReporter>,
    token: u32,
    resp: &CallResponse,
    now_ms: u64,
) -> bool {
    let inflight = {
        let mut r = reporter.borrow_mut();
        if !r.owns(token) {
            return false;
        }
        r.inflight.take()
    };
    let Some(inflight) = inflight else {
        return false;
    };
    match resp.status {
        Some(200..=299) => {
            host.count(Stat::UsageReport);
            {
                let mut r = reporter.borrow_mut();
                r.dropped = r.dropped.saturating_sub(inflight.dropped);
                r.last_failure_log_ms = None;
                if let Some(pos) = r.pending.iter().position(|b| b.id == inflight.batch) {
                    if let Some(batch) = r.pending.remove(pos) {
                        r.buffered = r.buffered.saturating_sub(batch.events());
                    }
                }
            }
            // A backlog left by an outage drains one batch per answer.
            send_next(host, reporter, now_ms);
        }
        Some(status @ (400 | 413 | 422)) => {
            // The admin API will never take this batch: drop it (counted) rather than retry it forever.
            let lost = {
                let mut r = reporter.borrow_mut();
                let lost = match r.pending.iter().position(|b| b.id == inflight.batch) {
                    Some(pos) => r.pending.remove(pos).map_or(0, |batch| {
                        r.buffered = r.buffered.saturating_sub(batch.events());
                        batch.decisions()
                    }),
                    None => 0,
                };
                r.dropped = r.dropped.saturating_add(lost);
                lost
            };
            host.count(Stat::UsageReportFailure);
            host.count_n(Stat::UsageDropped, lost);
            let answer = resp
                .body
                .as_deref()
                .map(|b| {
                    String::from_utf8_lossy(b)
                        .chars()
                        .take(500)
                        .collect::<String>()
                })
                .unwrap_or_default();
            host.log(
                LogLevel::Error,
                &format!(
                    "edgewarden: usage report refused with status {status}, dropping {lost} decisions: {answer}"
                ),
            );
        }
        Some(status) => report_failed(host, reporter, now_ms, &format!("status {status}")),
        None => report_failed(
            host,
            reporter,
            now_ms,
            "no response (timeout, reset or no healthy upstream)",
        ),
    }
    true
}

/// Handles the admin API's answer to a usage post ([`on_report_response`]) and its configuration hint
/// (`hint`: the raw `x-edgewarden-config` value, if any): `unknown` posts the configuration as a poll's
/// answer does, through the same upload and its rate limit. False if `token` was not ours.
pub fn on_report_answer(
    host: &mut dyn Host,
    control: &Control,
    token: u32,
    resp: &CallResponse,
    hint: Option<&[u8]>,
    now_ms: u64,
) -> bool {
    if !on_report_response(host, &control.usage, token, resp, now_ms) {
        return false;
    }
    report::on_poll_hint(host, control, hint, now_ms);
    true
}

/// Counts a failed post; the batch stays for the next flush. Logged at most every [`FAILURE_LOG_INTERVAL_MS`].
fn report_failed(
    host: &mut dyn Host,
    reporter: &std::cell::RefCell<UsageReporter>,
    now_ms: u64,
    problem: &str,
) {
    host.count(Stat::UsageReportFailure);
    let (log, cluster, pending, buffered) = {
        let mut r = reporter.borrow_mut();
        let log = r
            .last_failure_log_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= FAILURE_LOG_INTERVAL_MS);
        if log {
            r.last_failure_log_ms = Some(now_ms);
        }
        (log, r.cluster.clone(), r.pending.len(), r.buffered)
    };
    if log {
        host.log(
            LogLevel::Warn,
            &format!(
                "edgewarden: usage report via cluster {cluster} failed: {problem}; keeping {pending} batches ({buffered} entries) for the next flush"
            ),
        );
    }
}

#[cfg(test)]
mod tests;
