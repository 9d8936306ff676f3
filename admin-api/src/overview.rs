//! `GET /api/v1/overview?range=1h|24h|7d`: the figures the dashboard's overview shows at a glance, in one
//! call: tokens issued, revoked and expired in the range and active now, decisions in the range by reason,
//! open anomalies by severity and edges by sync state.
//! Every figure is an indexed count or a sum over the hourly decision rollup (`usage_hourly`, which the
//! usage ingestion writer adds to in the transaction that stores the counts, and a trigger on delete from
//! `usage_counts` lowers as retention removes them), so the answer stays fast with millions of tokens and
//! usage rows.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use edgewarden_api_types::{
    DecisionTotals, EdgeCounts, Overview, ReasonCount, SeverityCounts, TokenCounts,
};
use serde::Deserialize;
use sqlx::Row as _;

use crate::auth::{Principal, Role};
use crate::db::{now, Db};
use crate::edges::{SILENT_AFTER_SECONDS, STALE_AFTER_SECONDS};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Query};
use crate::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/overview", get(overview))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverviewQuery {
    range: Option<String>,
}

/// The length of a `range` parameter in seconds.
fn range_seconds(range: Option<&str>) -> ApiResult<i64> {
    match range.unwrap_or("24h") {
        "1h" => Ok(3_600),
        "24h" => Ok(86_400),
        "7d" => Ok(7 * 86_400),
        other => Err(ApiError::field(
            "range",
            format!("range: {other:?} is not one of 1h, 24h, 7d"),
        )),
    }
}

async fn overview(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<OverviewQuery>,
) -> ApiResult<Json<Overview>> {
    principal.require(&[Role::Admin, Role::Auditor], "read the overview")?;
    let range = range_seconds(q.range.as_deref())?;
    let now = now();
    let since = now - range;
    let (tokens, decisions, open_anomalies, edges) = tokio::try_join!(
        token_counts(&state.db, since, now),
        decision_totals(&state.db, since, now),
        open_anomalies(&state.db),
        edge_counts(&state),
    )?;
    Ok(Json(Overview {
        now,
        range_seconds: range,
        tokens,
        decisions,
        open_anomalies,
        edges,
    }))
}

async fn count<const N: usize>(
    db: &Db,
    sql: &'static str,
    binds: [i64; N],
) -> Result<i64, sqlx::Error> {
    let mut query = sqlx::query_scalar::<_, i64>(sql);
    for b in binds {
        query = query.bind(b);
    }
    query.fetch_one(&db.pool).await
}

/// Token counts; each is one range over an index (`tokens_issued`, `tokens_revoked`, `tokens_unrevoked_expiry`).
async fn token_counts(db: &Db, since: i64, now: i64) -> Result<TokenCounts, sqlx::Error> {
    let (issued_in_range, active, revoked_in_range, expired_in_range) = tokio::try_join!(
        count(db, "SELECT COUNT(*) FROM tokens WHERE issued_at > $1", [since]),
        count(db, "SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL AND expires_at > $1", [now]),
        count(db, "SELECT COUNT(*) FROM tokens WHERE revoked_at IS NOT NULL AND revoked_at > $1", [since]),
        count(
            db,
            "SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL AND expires_at > $1 AND expires_at <= $2",
            [since, now],
        ),
    )?;
    Ok(TokenCounts {
        issued_in_range,
        active,
        revoked_in_range,
        expired_in_range,
    })
}

/// Where the decision sum reads from: whole hours `[hours_from, hours_to)` from `usage_hourly`, the
/// minutes before and after them from `usage_counts`. Returns `(minutes_from, hours_from, hours_to, until)`.
fn decision_spans(since: i64, now: i64) -> (i64, i64, i64, i64) {
    // The minute bucket holding `since` is counted whole, as the time series does.
    let minutes_from = since - since.rem_euclid(60);
    let until = now + 1;
    let hours_from = minutes_from + (3_600 - minutes_from.rem_euclid(3_600)) % 3_600;
    let hours_to = until - until.rem_euclid(3_600);
    if hours_from < hours_to {
        (minutes_from, hours_from, hours_to, until)
    } else {
        // No whole hour inside the range: every minute comes from `usage_counts`.
        (minutes_from, until, until, until)
    }
}

/// Decisions per reason in the range: at most a few thousand rollup rows plus up to two hours of minutes.
async fn decision_totals(db: &Db, since: i64, now: i64) -> Result<DecisionTotals, sqlx::Error> {
    let (minutes_from, hours_from, hours_to, until) = decision_spans(since, now);
    let rows = sqlx::query(
        "SELECT reason, CAST(SUM(n) AS BIGINT) AS n FROM ( \
           SELECT reason, count AS n FROM usage_hourly WHERE hour >= $2 AND hour < $3 \
           UNION ALL SELECT reason, count AS n FROM usage_counts WHERE bucket >= $1 AND bucket < $2 \
           UNION ALL SELECT reason, count AS n FROM usage_counts WHERE bucket >= $3 AND bucket < $4 \
         ) AS d GROUP BY reason",
    )
    .bind(minutes_from)
    .bind(hours_from)
    .bind(hours_to)
    .bind(until)
    .fetch_all(&db.pool)
    .await?;
    let mut totals = DecisionTotals::default();
    for row in rows {
        let reason: String = row.try_get("reason")?;
        let n: i64 = row.try_get("n")?;
        if n == 0 {
            continue;
        }
        // The decisions an edge lets through: a valid token, or none on a route that allows anonymous use.
        if reason == "allowed" || reason == "anonymous" {
            totals.allowed += n;
        } else {
            totals.denied += n;
            totals
                .denied_by_reason
                .push(ReasonCount { reason, count: n });
        }
    }
    totals
        .denied_by_reason
        .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    Ok(totals)
}

async fn open_anomalies(db: &Db) -> Result<SeverityCounts, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT severity, COUNT(*) AS n FROM anomalies WHERE state = 'open' GROUP BY severity",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut counts = SeverityCounts::default();
    for row in rows {
        let n: i64 = row.try_get("n")?;
        match row.try_get::<String, _>("severity")?.as_str() {
            "high" => counts.high += n,
            "medium" => counts.medium += n,
            _ => counts.low += n,
        }
    }
    Ok(counts)
}

/// Edges by the staleness of their last feed poll (see [`STALE_AFTER_SECONDS`]).
async fn edge_counts(state: &AppState) -> Result<EdgeCounts, sqlx::Error> {
    let mut counts = EdgeCounts::default();
    for edge in crate::edges::all(state).await? {
        counts.total += 1;
        match edge.staleness_seconds {
            Some(s) if s <= STALE_AFTER_SECONDS => counts.in_sync += 1,
            Some(s) if s <= SILENT_AFTER_SECONDS => counts.stale += 1,
            _ => counts.silent += 1,
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_spans_cover_the_range_once() {
        // (since, now) -> (minutes_from, hours_from, hours_to, until)
        for (since, now, want) in [
            // A day: whole hours between two partial ones.
            (3_690, 90_030, (3_660, 7_200, 90_000, 90_031)),
            // The minute holding `since` is whole, and so is the hour it starts.
            (3_630, 90_030, (3_600, 3_600, 90_000, 90_031)),
            // An hour that straddles an hour boundary: minutes only.
            (3_690, 7_290, (3_660, 7_291, 7_291, 7_291)),
        ] {
            assert_eq!(decision_spans(since, now), want, "since {since}, now {now}");
        }
    }

    #[test]
    fn ranges_are_1h_24h_7d() {
        assert_eq!(range_seconds(None).unwrap(), 86_400);
        assert_eq!(range_seconds(Some("1h")).unwrap(), 3_600);
        assert_eq!(range_seconds(Some("7d")).unwrap(), 604_800);
        assert!(range_seconds(Some("30d")).is_err());
    }
}
