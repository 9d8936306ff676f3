//! Who this edge is and what it runs, told to the admin API on every feed poll: the Envoy instance (a random
//! id the first VM of the process makes and keeps in shared data, so every worker VM of one Envoy sends the
//! same; plus Envoy's node id) and the hash of its configuration with secrets left out
//! (`edgewarden_core::config::redacted_config`). When a poll's answer says the admin API lacks that
//! configuration (`x-edgewarden-config: unknown`), the poller posts the redacted document once.
//! Everything here runs on polls and their answers, never on a request; a malformed answer is logged and
//! changes nothing.

use std::time::Duration;

use edgewarden_core::config::{config_hash, redacted_config};
use proxy_wasm::types::LogLevel;

use crate::host::{CallResponse, Host};
use crate::state::Control;

/// Shared-data key of the Envoy instance id (one per process and VM id, whatever the plugin configuration).
pub const INSTANCE_KEY: &str = "edgewarden.instance";
/// Request header naming the Envoy instance.
pub const INSTANCE_HEADER: &str = "x-edgewarden-instance";
/// Request header carrying Envoy's node id.
pub const NODE_HEADER: &str = "x-edgewarden-node";
/// Request header carrying the configuration hash.
pub const CONFIG_HASH_HEADER: &str = "x-edgewarden-config-hash";
/// Answer header by which the admin API asks for the configuration (`unknown`).
pub const CONFIG_HINT_HEADER: &str = "x-edgewarden-config";
/// The shortest time between two uploads of the configuration, so an admin API that keeps refusing it (or
/// keeps answering `unknown`) costs one small post per half minute at most.
pub const UPLOAD_INTERVAL_MS: u64 = 30_000;
/// Largest answer to an upload the poller reads (an error message).
pub const MAX_UPLOAD_ANSWER_BYTES: usize = 4096;

/// The configuration this edge reports and the state of its upload.
#[derive(Debug, Clone)]
pub struct ConfigReport {
    /// Lower-case hex SHA-256 of `document`.
    pub hash: String,
    /// The redacted configuration, as hashed and as posted.
    document: Vec<u8>,
    /// Envoy's node id, when it has one that fits in a header.
    node: Option<String>,
    /// Where the document is posted, beside the feed path.
    path: String,
    /// The upload in flight.
    inflight: Option<u32>,
    /// No upload before this time.
    next_upload_ms: u64,
    /// When a malformed hint was last logged.
    last_hint_log_ms: Option<u64>,
}

impl ConfigReport {
    /// The report of a plugin configuration (the bytes Envoy handed the filter); `None` if they are not one JSON
    /// object (they parsed as a configuration, so that does not happen). `node` is Envoy's node id.
    pub fn new(config: &[u8], node: Option<&[u8]>, feed_path: &str) -> Option<ConfigReport> {
        let document = redacted_config(config)?;
        let node = node
            .and_then(|n| std::str::from_utf8(n).ok())
            .map(str::trim)
            .filter(|n| {
                !n.is_empty() && n.len() <= 200 && n.bytes().all(|b| (0x20..0x7f).contains(&b))
            })
            .map(str::to_owned);
        let path = match feed_path.strip_suffix("/revocations/feed") {
            Some(base) => format!("{base}/edges/config"),
            None => "/api/v1/edges/config".to_string(),
        };
        Some(ConfigReport {
            hash: config_hash(&document),
            document,
            node,
            path,
            inflight: None,
            next_upload_ms: 0,
            last_hint_log_ms: None,
        })
    }

    /// Whether `token` is this VM's upload in flight.
    pub fn owns(&self, token: u32) -> bool {
        self.inflight == Some(token)
    }
}

/// SplitMix64's finaliser: spreads the bits so nearby inputs give unrelated ids.
fn mix(mut z: u64) -> u64 {
    z ^= 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn valid_instance(bytes: &[u8]) -> Option<String> {
    (bytes.len() == 16 && bytes.iter().all(u8::is_ascii_hexdigit))
        .then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// This Envoy's instance id: the one in shared data, or a new one made from this VM's identity (unique among
/// the VMs of the process) and the clock and stored there for the others. Read on every poll, so VMs that
/// raced to make one at start agree from the next poll on.
pub fn instance_id(host: &mut dyn Host, vm_id: u64, now_ms: u64) -> String {
    if let Some(id) = host
        .get_shared(INSTANCE_KEY)
        .and_then(|(bytes, _)| valid_instance(&bytes))
    {
        return id;
    }
    let id = format!("{:016x}", mix(vm_id ^ mix(now_ms)));
    host.set_shared(INSTANCE_KEY, id.as_bytes());
    host.get_shared(INSTANCE_KEY)
        .and_then(|(bytes, _)| valid_instance(&bytes))
        .unwrap_or(id)
}

/// The headers a feed poll carries about this edge: instance, node and configuration hash.
pub fn poll_headers(
    host: &mut dyn Host,
    control: &Control,
    now_ms: u64,
) -> Vec<(&'static str, String)> {
    let (vm_id, report) = {
        let sync = control.sync.borrow();
        (
            sync.vm_id,
            sync.report
                .as_ref()
                .map(|r| (r.hash.clone(), r.node.clone())),
        )
    };
    let mut headers = vec![(INSTANCE_HEADER, instance_id(host, vm_id, now_ms))];
    if let Some((hash, node)) = report {
        headers.push((CONFIG_HASH_HEADER, hash));
        if let Some(node) = node {
            headers.push((NODE_HEADER, node));
        }
    }
    headers
}

/// Reads the admin API's hint on a feed poll's or usage report's answer (`hint` is the raw
/// `x-edgewarden-config` value, if any) and posts the configuration when it is `unknown` and no upload
/// is in flight or was made too recently.
pub fn on_poll_hint(host: &mut dyn Host, control: &Control, hint: Option<&[u8]>, now_ms: u64) {
    let Some(hint) = hint else {
        return;
    };
    let wanted = std::str::from_utf8(hint)
        .ok()
        .map(str::trim)
        .filter(|h| h.eq_ignore_ascii_case("unknown"));
    if wanted.is_none() {
        let log = {
            let mut sync = control.sync.borrow_mut();
            match sync.report.as_mut() {
                Some(report)
                    if report
                        .last_hint_log_ms
                        .is_none_or(|at| now_ms.saturating_sub(at) >= UPLOAD_INTERVAL_MS) =>
                {
                    report.last_hint_log_ms = Some(now_ms);
                    true
                }
                _ => false,
            }
        };
        if log {
            let shown: String = String::from_utf8_lossy(hint)
                .chars()
                .take(40)
                .filter(|c| !c.is_control())
                .collect();
            host.log(
                LogLevel::Warn,
                &format!(
                    "edgewarden: the admin API's {CONFIG_HINT_HEADER} header on a feed or usage answer is {shown:?}, expected \"unknown\"; ignored (is the admin API newer than this filter?)"
                ),
            );
        }
        return;
    }
    upload(host, control, now_ms);
}

/// Posts the redacted configuration to the admin API, if due.
fn upload(host: &mut dyn Host, control: &Control, now_ms: u64) {
    let (cluster, headers, body, timeout) = {
        let sync = control.sync.borrow();
        let Some(report) = sync.report.as_ref() else {
            return;
        };
        if report.inflight.is_some() || now_ms < report.next_upload_ms {
            return;
        }
        let headers = vec![
            (":method", "POST".to_string()),
            (":path", report.path.clone()),
            (":authority", sync.authority.clone()),
            ("authorization", sync.authorization.clone()),
            ("content-type", "application/json".to_string()),
            ("x-edgewarden-edge", sync.edge_name.clone()),
            (CONFIG_HASH_HEADER, report.hash.clone()),
        ];
        (
            sync.cluster.clone(),
            headers,
            report.document.clone(),
            Duration::from_millis(sync.timeout_ms),
        )
    };
    let instance = {
        let vm_id = control.sync.borrow().vm_id;
        instance_id(host, vm_id, now_ms)
    };
    let mut headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    headers.push((INSTANCE_HEADER, instance.as_str()));
    let dispatched = host.dispatch(&cluster, &headers, Some(&body), timeout);
    let mut sync = control.sync.borrow_mut();
    let Some(report) = sync.report.as_mut() else {
        return;
    };
    report.next_upload_ms = now_ms.saturating_add(UPLOAD_INTERVAL_MS);
    match dispatched {
        Ok(token) => report.inflight = Some(token),
        Err(e) => {
            drop(sync);
            host.log(
                LogLevel::Warn,
                &format!(
                    "edgewarden: configuration report not dispatched ({e}): is cluster `{cluster}` defined in Envoy?"
                ),
            );
        }
    }
}

/// Handles the answer to this VM's upload; false if `token` was not ours.
pub fn on_upload_response(
    host: &mut dyn Host,
    control: &Control,
    token: u32,
    resp: &CallResponse,
) -> bool {
    let hash = {
        let mut sync = control.sync.borrow_mut();
        let Some(report) = sync.report.as_mut().filter(|r| r.owns(token)) else {
            return false;
        };
        report.inflight = None;
        report.hash.clone()
    };
    match resp.status {
        Some(200..=299) => host.log(
            LogLevel::Info,
            &format!("edgewarden: reported this edge's configuration ({hash}) to the admin API"),
        ),
        status => {
            let what = status.map_or_else(
                || "no response (timeout, reset or no healthy upstream)".to_string(),
                |s| format!("status {s}"),
            );
            let said: String = resp
                .body
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .chars()
                .take(300)
                .filter(|c| !c.is_control())
                .collect();
            host.log(
                LogLevel::Warn,
                &format!(
                    "edgewarden: the admin API did not take this edge's configuration ({hash}): {what} {said}; retried when a poll asks again, at most every {} s",
                    UPLOAD_INTERVAL_MS / 1000
                ),
            );
        }
    }
    true
}
