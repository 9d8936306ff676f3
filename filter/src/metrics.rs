//! Envoy stats for the filter, defined once per VM through proxy-wasm metrics.
//! Names are an interface (dashboards and tests read them): `edgewarden.<name>` as defined here, or
//! `edgewarden.<stat_prefix>.<name>` when the configuration names the plugin instance (Envoy keys a plugin metric
//! by its name alone, so two filters defining the same name share one counter and overwrite one gauge).
//! Envoy exposes plugin-defined metrics under the `wasmcustom.` prefix (`wasmcustom.edgewarden.requests_allowed`).

use std::cell::RefCell;

use edgewarden_core::decision::Reason;

/// One countable event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// A request let through because the decision allowed it (valid token or anonymous route).
    Allowed,
    /// A request answered 401/403, by reason.
    Denied(Reason),
    /// A request let through only because `report_only` is on.
    ReportOnlyWouldDeny,
    /// Report-only pass-through, by the reason it would have been denied for.
    ReportOnlyWouldDenyReason(Reason),
    /// A token served from the verified-token cache.
    CacheHit,
    /// A token verified in full (and cached if valid).
    CacheMiss,
    /// A JWKS fetch that installed (or confirmed) a key set.
    JwksFetch,
    /// A JWKS fetch that failed (dispatch error, timeout, non-200, unusable body); the old keys stay.
    JwksFetchFailure,
    /// A JWKS fetch Envoy refused to send (most often: the `remote_jwks.cluster` is not defined in Envoy).
    JwksFetchNotDispatched,
    /// A key-set refetch triggered by a token naming an unknown `kid`.
    JwksRefetch,
    /// An unknown-`kid` refetch refused by `min_refetch_interval_seconds`.
    JwksRefetchRateLimited,
    /// A key set picked up from another worker's fetch through shared data.
    JwksShared,
    /// A revocation feed poll answered 200 or 304 (counted by the one polling VM).
    RevocationPoll,
    /// A revocation feed poll that failed (not dispatched, timeout, error status, unusable body).
    RevocationPollFailure,
    /// A feed answer that changed the revocation state.
    RevocationUpdate,
    /// A token let through while the revocation state was stale, because `on_stale` is `allow`.
    RevocationStaleAllowed,
    /// A wake-up the polling VM put on another VM's queue after a change.
    RevocationWakeSent,
    /// A listed VM whose wake queue the polling VM could not find or fill (that VM waits for its tick).
    RevocationWakeLost,
    /// A wake-up a following VM took from its queue and caught up on.
    RevocationWakeReceived,
    /// A usage batch the admin API accepted.
    UsageReport,
    /// A usage batch that failed to send (kept and retried) or was refused (dropped).
    UsageReportFailure,
    /// Decisions dropped from the usage buffer because it was full (the oldest go first).
    UsageDropped,
}

/// One gauge: a value that goes up and down, set by the VM that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// The feed cursor of the revocation state.
    RevocationCursor,
    /// Seconds since the last successful feed poll (since start-up until the first one).
    RevocationStaleness,
    /// Revoked jtis, subjects and clients held.
    RevocationEntries,
}

/// Gauge names without the `edgewarden.` namespace, in definition order.
const GAUGES: &[(Gauge, &str)] = &[
    (Gauge::RevocationCursor, "revocation_cursor"),
    (Gauge::RevocationStaleness, "revocation_staleness_seconds"),
    (Gauge::RevocationEntries, "revocation_entries"),
];

/// Counter names without the namespace and the per-reason families, in definition order.
const FIXED: &[(Stat, &str)] = &[
    (Stat::Allowed, "requests_allowed"),
    (Stat::ReportOnlyWouldDeny, "report_only_would_deny"),
    (Stat::CacheHit, "cache_hits"),
    (Stat::CacheMiss, "cache_misses"),
    (Stat::JwksFetch, "jwks_fetches"),
    (Stat::JwksFetchFailure, "jwks_fetch_failures"),
    (Stat::JwksFetchNotDispatched, "jwks_fetch_not_dispatched"),
    (Stat::JwksRefetch, "jwks_refetches"),
    (Stat::JwksRefetchRateLimited, "jwks_refetch_rate_limited"),
    (Stat::JwksShared, "jwks_shared_updates"),
    (Stat::RevocationPoll, "revocation_polls"),
    (Stat::RevocationPollFailure, "revocation_poll_failures"),
    (Stat::RevocationUpdate, "revocation_updates"),
    (Stat::RevocationStaleAllowed, "revocation_stale_allowed"),
    (Stat::RevocationWakeSent, "revocation_wakes_sent"),
    (Stat::RevocationWakeLost, "revocation_wakes_lost"),
    (Stat::RevocationWakeReceived, "revocation_wakes_received"),
    (Stat::UsageReport, "usage_reports"),
    (Stat::UsageReportFailure, "usage_report_failures"),
    (Stat::UsageDropped, "usage_dropped"),
];

/// The namespace of every metric name.
pub const NAMESPACE: &str = "edgewarden";

/// The full name of metric `short` for a plugin instance: `edgewarden.<short>`, or
/// `edgewarden.<stat_prefix>.<short>` with a `stat_prefix`.
pub fn full_name(stat_prefix: Option<&str>, short: &str) -> String {
    match stat_prefix {
        Some(p) => format!("{NAMESPACE}.{p}.{short}"),
        None => format!("{NAMESPACE}.{short}"),
    }
}

/// The short name of a gauge (without the namespace and any `stat_prefix`).
pub fn gauge_name(gauge: Gauge) -> &'static str {
    GAUGES
        .iter()
        .find(|(g, _)| *g == gauge)
        .map_or("unknown_gauge", |(_, n)| n)
}

/// Reasons that can deny a request (everything in `Reason::ALL` except the two allowing ones).
pub fn denial_reasons() -> impl Iterator<Item = Reason> {
    Reason::ALL
        .iter()
        .copied()
        .filter(|r| !matches!(r, Reason::Allowed | Reason::Anonymous))
}

/// Every metric name the filter defines without `stat_prefix`, in definition order (documentation and tests use this).
pub fn all_names() -> Vec<String> {
    short_names().iter().map(|n| full_name(None, n)).collect()
}

/// Every metric's short name: counters, the per-reason families, then gauges.
fn short_names() -> Vec<String> {
    let mut names: Vec<String> = FIXED.iter().map(|(_, n)| (*n).to_string()).collect();
    names.extend(denial_reasons().map(|r| format!("requests_denied.{}", r.as_str())));
    names.extend(denial_reasons().map(|r| format!("report_only_would_deny.{}", r.as_str())));
    names.extend(GAUGES.iter().map(|(_, n)| (*n).to_string()));
    names
}

/// Host metric ids, one per [`Stat`]; a metric the host refused to define is simply not counted.
/// Counts are summed in memory and handed to the host on the root context's timer ([`Metrics::flush`]): two
/// host calls fewer on every request, for stats that lag by at most one tick.
#[derive(Debug, Default)]
pub struct Metrics {
    fixed: Vec<(Stat, u32)>,
    denied: Vec<(Reason, u32)>,
    report_only: Vec<(Reason, u32)>,
    gauges: Vec<(Gauge, u32)>,
    tally: RefCell<Vec<(u32, u64)>>,
}

impl Metrics {
    /// Defines every counter through `define` and every gauge through `define_gauge`
    /// (proxy-wasm `define_metric` with the counter and gauge types in the filter), named for the plugin
    /// instance `stat_prefix` (see [`full_name`]). Runs once per VM at configure time: requests only look ids up.
    pub fn define(
        stat_prefix: Option<&str>,
        mut define: impl FnMut(&str) -> Option<u32>,
        mut define_gauge: impl FnMut(&str) -> Option<u32>,
    ) -> Metrics {
        let name = |short: &str| full_name(stat_prefix, short);
        let mut m = Metrics::default();
        for (gauge, short) in GAUGES {
            if let Some(id) = define_gauge(&name(short)) {
                m.gauges.push((*gauge, id));
            }
        }
        for (stat, short) in FIXED {
            if let Some(id) = define(&name(short)) {
                m.fixed.push((*stat, id));
            }
        }
        for r in denial_reasons() {
            if let Some(id) = define(&name(&format!("requests_denied.{}", r.as_str()))) {
                m.denied.push((r, id));
            }
            if let Some(id) = define(&name(&format!("report_only_would_deny.{}", r.as_str()))) {
                m.report_only.push((r, id));
            }
        }
        m
    }

    /// Adds `n` to a counter in memory.
    pub fn add(&self, stat: Stat, n: u64) {
        let Some(id) = self.id(stat) else {
            return;
        };
        let mut tally = self.tally.borrow_mut();
        match tally.iter_mut().find(|(i, _)| *i == id) {
            Some(entry) => entry.1 = entry.1.saturating_add(n),
            None => tally.push((id, n)),
        }
    }

    /// Hands every sum counted since the last flush to `increment` (host id, amount) and starts over.
    pub fn flush(&self, mut increment: impl FnMut(u32, u64)) {
        // Taken out first: `increment` is a host call, and no borrow is held across one.
        let sums = std::mem::take(&mut *self.tally.borrow_mut());
        for (id, n) in sums {
            increment(id, n);
        }
    }

    /// The host id of a gauge, if it was defined.
    pub fn gauge_id(&self, gauge: Gauge) -> Option<u32> {
        self.gauges
            .iter()
            .find(|(g, _)| *g == gauge)
            .map(|(_, id)| *id)
    }

    /// The host id of a counter, if it was defined.
    pub fn id(&self, stat: Stat) -> Option<u32> {
        let find = |list: &[(Reason, u32)], reason: Reason| {
            list.iter().find(|(r, _)| *r == reason).map(|(_, id)| *id)
        };
        match stat {
            Stat::Denied(r) => find(&self.denied, r),
            Stat::ReportOnlyWouldDenyReason(r) => find(&self.report_only, r),
            other => self
                .fixed
                .iter()
                .find(|(s, _)| *s == other)
                .map(|(_, id)| *id),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Metrics whose counters the host numbers 1, 2, 3, ... (no gauges).
    fn numbered() -> Metrics {
        let mut next = 0u32;
        Metrics::define(
            None,
            |_| {
                next += 1;
                Some(next)
            },
            |_| None,
        )
    }

    #[test]
    fn every_denial_reason_gets_its_own_counter() {
        let m = numbered();
        let mut ids: Vec<u32> = denial_reasons()
            .filter_map(|r| m.id(Stat::Denied(r)))
            .collect();
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count);
        assert_eq!(count, Reason::ALL.len() - 2);
        assert!(m.id(Stat::Denied(Reason::Allowed)).is_none());
        assert!(all_names().contains(&"edgewarden.requests_denied.expired".to_string()));
        assert!(all_names().contains(&"edgewarden.cache_hits".to_string()));
    }

    #[test]
    fn counts_are_summed_until_a_flush_hands_them_over() {
        let m = numbered();
        m.add(Stat::Allowed, 1);
        m.add(Stat::Allowed, 2);
        m.add(Stat::Denied(Reason::Expired), 1);
        let mut handed = Vec::new();
        m.flush(|id, n| handed.push((id, n)));
        handed.sort_unstable();
        let allowed = m.id(Stat::Allowed).unwrap();
        let expired = m.id(Stat::Denied(Reason::Expired)).unwrap();
        let mut expected = vec![(allowed, 3), (expired, 1)];
        expected.sort_unstable();
        assert_eq!(handed, expected);
        let mut again = Vec::new();
        m.flush(|id, n| again.push((id, n)));
        assert!(again.is_empty());
    }

    #[test]
    fn a_stat_prefix_names_every_metric_of_the_instance_and_none_keeps_the_plain_names() {
        let mut plain = Vec::new();
        let mut gauges = Vec::new();
        Metrics::define(
            None,
            |n| {
                plain.push(n.to_string());
                None
            },
            |n| {
                gauges.push(n.to_string());
                None
            },
        );
        let mut all: Vec<String> = gauges.into_iter().chain(plain).collect();
        let mut expected = all_names();
        all.sort();
        expected.sort();
        assert_eq!(all, expected);
        assert!(all.contains(&"edgewarden.revocation_staleness_seconds".to_string()));

        let named = RefCell::new(Vec::new());
        Metrics::define(
            Some("public"),
            |n| {
                named.borrow_mut().push(n.to_string());
                Some(1)
            },
            |n| {
                named.borrow_mut().push(n.to_string());
                Some(2)
            },
        );
        let named = named.into_inner();
        assert_eq!(named.len(), all.len());
        assert!(
            named.iter().all(|n| n.starts_with("edgewarden.public.")),
            "{named:?}"
        );
        for short in short_names() {
            assert!(
                named.contains(&format!("edgewarden.public.{short}")),
                "{short}"
            );
        }
    }

    #[test]
    fn readme_documents_every_counter_and_reason() {
        let readme = include_str!("../README.md");
        for short in FIXED
            .iter()
            .map(|(_, n)| n)
            .chain(GAUGES.iter().map(|(_, n)| n))
        {
            let name = full_name(None, short);
            assert!(
                readme.contains(&format!("`{name}`")),
                "README.md lacks {name}"
            );
        }
        for r in denial_reasons() {
            assert!(
                readme.contains(&format!("`{}`", r.as_str())),
                "README.md lacks reason {}",
                r.as_str()
            );
        }
    }
}
