//! Envoy stats for the filter, defined once per VM through proxy-wasm metrics.
//! Names are an interface (dashboards and tests read them): `edgewarden.<name>` as defined here;
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

/// Gauge names, in definition order.
const GAUGES: &[(Gauge, &str)] = &[
    (Gauge::RevocationCursor, "edgewarden.revocation_cursor"),
    (
        Gauge::RevocationStaleness,
        "edgewarden.revocation_staleness_seconds",
    ),
    (Gauge::RevocationEntries, "edgewarden.revocation_entries"),
];

/// Counter names without the per-reason families, in definition order.
const FIXED: &[(Stat, &str)] = &[
    (Stat::Allowed, "edgewarden.requests_allowed"),
    (
        Stat::ReportOnlyWouldDeny,
        "edgewarden.report_only_would_deny",
    ),
    (Stat::CacheHit, "edgewarden.cache_hits"),
    (Stat::CacheMiss, "edgewarden.cache_misses"),
    (Stat::JwksFetch, "edgewarden.jwks_fetches"),
    (Stat::JwksFetchFailure, "edgewarden.jwks_fetch_failures"),
    (Stat::JwksRefetch, "edgewarden.jwks_refetches"),
    (
        Stat::JwksRefetchRateLimited,
        "edgewarden.jwks_refetch_rate_limited",
    ),
    (Stat::JwksShared, "edgewarden.jwks_shared_updates"),
    (Stat::RevocationPoll, "edgewarden.revocation_polls"),
    (
        Stat::RevocationPollFailure,
        "edgewarden.revocation_poll_failures",
    ),
    (Stat::RevocationUpdate, "edgewarden.revocation_updates"),
    (
        Stat::RevocationStaleAllowed,
        "edgewarden.revocation_stale_allowed",
    ),
    (Stat::UsageReport, "edgewarden.usage_reports"),
    (Stat::UsageReportFailure, "edgewarden.usage_report_failures"),
    (Stat::UsageDropped, "edgewarden.usage_dropped"),
];

/// The name of a gauge as defined (without Envoy's `wasmcustom.` prefix).
pub fn gauge_name(gauge: Gauge) -> &'static str {
    GAUGES
        .iter()
        .find(|(g, _)| *g == gauge)
        .map_or("edgewarden.unknown_gauge", |(_, n)| n)
}

/// Reasons that can deny a request (everything in `Reason::ALL` except the two allowing ones).
pub fn denial_reasons() -> impl Iterator<Item = Reason> {
    Reason::ALL
        .iter()
        .copied()
        .filter(|r| !matches!(r, Reason::Allowed | Reason::Anonymous))
}

/// Every metric name the filter defines, in definition order (documentation and tests use this).
pub fn all_names() -> Vec<String> {
    let mut names: Vec<String> = FIXED.iter().map(|(_, n)| (*n).to_string()).collect();
    names.extend(denial_reasons().map(|r| format!("edgewarden.requests_denied.{}", r.as_str())));
    names.extend(
        denial_reasons().map(|r| format!("edgewarden.report_only_would_deny.{}", r.as_str())),
    );
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
    /// (proxy-wasm `define_metric` with the counter and gauge types in the filter).
    pub fn define(
        mut define: impl FnMut(&str) -> Option<u32>,
        mut define_gauge: impl FnMut(&str) -> Option<u32>,
    ) -> Metrics {
        let mut m = Metrics::default();
        for (gauge, name) in GAUGES {
            if let Some(id) = define_gauge(name) {
                m.gauges.push((*gauge, id));
            }
        }
        for (stat, name) in FIXED {
            if let Some(id) = define(name) {
                m.fixed.push((*stat, id));
            }
        }
        for r in denial_reasons() {
            if let Some(id) = define(&format!("edgewarden.requests_denied.{}", r.as_str())) {
                m.denied.push((r, id));
            }
            if let Some(id) = define(&format!("edgewarden.report_only_would_deny.{}", r.as_str())) {
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
    fn readme_documents_every_counter_and_reason() {
        let readme = include_str!("../README.md");
        for name in FIXED
            .iter()
            .map(|(_, n)| n)
            .chain(GAUGES.iter().map(|(_, n)| n))
        {
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
