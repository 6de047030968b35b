//! What the scheduled slots of each task and dump came to: the history `pgmaint status`
//! shows and `/metrics` exports, read from `pgmaint.task_slots` on the primary, and
//! when each will next be due ([`next_slot`]).
//!
//! A slot row is written when a daemon claims it and completed (`finished_at`,
//! `result`, …) when its run ends. A row with no result is a run still going, or one
//! whose daemon died in it: it is the *last slot* but counts neither as a success nor
//! as a failure.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::schedule::Schedule;

/// The history of one task's (or dump's) slots.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlotHistory {
    /// The task or dump name (`task_slots.task_name`).
    pub task: String,
    /// The newest slot claimed.
    pub last_slot: DateTime<Utc>,
    /// When it was claimed: the start of its run.
    pub last_claimed_at: DateTime<Utc>,
    /// `succeeded` or `failed`; `None` while it runs (or when its daemon died in it).
    pub last_result: Option<String>,
    /// The error of the newest finished slot, if it failed.
    pub last_error: Option<String>,
    /// When the newest succeeded slot finished.
    pub last_success_at: Option<DateTime<Utc>>,
    /// How long the newest finished slot took.
    pub last_duration_seconds: Option<f64>,
    /// What the newest finished slot found.
    pub last_findings: Option<i64>,
    /// Failed slots since the newest succeeded one (finished slots only).
    pub consecutive_failures: i64,
}

/// One index probe per name and part (all by the `(task_name, slot)` key), so the cost
/// does not grow with the years of slots kept.
const HISTORY_SQL: &str = "
SELECT n.name, l.slot, l.claimed_at, l.result, f.error, ok.at, f.duration_seconds, f.findings,
       fails.n
  FROM unnest($1::text[]) AS n(name)
  JOIN LATERAL (SELECT slot, claimed_at, result FROM pgmaint.task_slots
                 WHERE task_name = n.name ORDER BY slot DESC LIMIT 1) l ON true
  LEFT JOIN LATERAL (SELECT error, duration_seconds, findings FROM pgmaint.task_slots
                      WHERE task_name = n.name AND result IS NOT NULL
                      ORDER BY slot DESC LIMIT 1) f ON true
  LEFT JOIN LATERAL (SELECT slot, coalesce(finished_at, claimed_at) AS at FROM pgmaint.task_slots
                      WHERE task_name = n.name AND result = 'succeeded'
                      ORDER BY slot DESC LIMIT 1) ok ON true
  CROSS JOIN LATERAL (SELECT count(*) AS n FROM pgmaint.task_slots
                       WHERE task_name = n.name AND result = 'failed'
                         AND slot > coalesce(ok.slot, '-infinity')) fails";

/// The slot history of each of `names` that has a slot, by name, in one query.
pub async fn read(
    primary: &Client,
    names: &[String],
) -> Result<BTreeMap<String, SlotHistory>, tokio_postgres::Error> {
    let rows = primary.query(HISTORY_SQL, &[&names]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let h = SlotHistory {
                task: r.get(0),
                last_slot: r.get(1),
                last_claimed_at: r.get(2),
                last_result: r.get(3),
                last_error: r.get(4),
                last_success_at: r.get(5),
                last_duration_seconds: r.get(6),
                last_findings: r.get(7),
                consecutive_failures: r.get(8),
            };
            (h.task.clone(), h)
        })
        .collect())
}

/// When `schedule` is next due, given its last slot and the start of that slot's run:
/// for `every`, the last start plus the interval (in the past when it is overdue), or
/// `now` if it never ran; for `at`, the cron expression's first time after both `now`
/// and the last slot, in its time zone. `None` if the expression has no next time.
pub fn next_slot(
    schedule: &Schedule,
    last_slot: Option<DateTime<Utc>>,
    last_start: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match schedule {
        Schedule::Every(every) => {
            let every = chrono::Duration::from_std(*every).ok()?;
            match last_start.or(last_slot) {
                Some(start) => start.checked_add_signed(every),
                None => Some(now),
            }
        }
        Schedule::At(cron, tz) => {
            let from = last_slot.map_or(now, |l| l.max(now)).with_timezone(tz);
            cron.find_next_occurrence(&from, false)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        }
    }
}

/// A schedule as the operator wrote it: `every 24h`, `at "30 2 * * *" Europe/Paris`;
/// `by hand` when there is none.
pub fn describe(schedule: Option<&Schedule>) -> String {
    match schedule {
        None => "by hand".to_string(),
        Some(Schedule::Every(d)) => format!("every {}", compact_duration(*d)),
        Some(Schedule::At(cron, tz)) => format!("at {:?} {}", cron.as_str(), tz.name()),
    }
}

/// `1d2h`, `30m`, `1m30s`, `500ms`.
pub fn compact_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let parts = [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let mut rest = secs;
    let mut out = String::new();
    for (unit, name) in parts {
        if rest >= unit {
            out.push_str(&format!("{}{name}", rest / unit));
            rest %= unit;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{parse_cron, parse_timezone};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_slot_follows_the_last_start_or_the_cron_times() {
        let hourly = Schedule::Every(Duration::from_secs(3600));
        let paris = parse_timezone("Europe/Paris").unwrap();
        // 02:30 Paris = 01:30 UTC in winter.
        let nightly = Schedule::At(Box::new(parse_cron("30 2 * * *").unwrap()), paris);
        let now = t("2026-11-30T10:00:00Z");
        let some = |s: &str| Some(t(s));
        type Time = Option<DateTime<Utc>>;
        // (what, schedule, last slot, last start, next slot)
        #[rustfmt::skip]
        let table: &[(&str, &Schedule, Time, Time, Time)] = &[
            ("every, never ran: now", &hourly, None, None, Some(now)),
            ("every: last start + interval", &hourly, some("2026-11-30T09:30:00Z"), some("2026-11-30T09:30:05Z"), some("2026-11-30T10:30:05Z")),
            ("every, overdue: in the past", &hourly, some("2026-11-30T07:00:00Z"), some("2026-11-30T07:00:01Z"), some("2026-11-30T08:00:01Z")),
            ("every, slot without start", &hourly, some("2026-11-30T09:45:00Z"), None, some("2026-11-30T10:45:00Z")),
            ("at, never ran: the next cron time", &nightly, None, None, some("2026-12-01T01:30:00Z")),
            ("at, ran last night: tonight", &nightly, some("2026-11-30T01:30:00Z"), some("2026-11-30T01:30:02Z"), some("2026-12-01T01:30:00Z")),
            ("at, a slot ahead of now (clock skew): the one after it", &nightly, some("2026-12-01T01:30:00Z"), None, some("2026-12-02T01:30:00Z")),
        ];
        for (what, schedule, last_slot, last_start, want) in table {
            assert_eq!(
                next_slot(schedule, *last_slot, *last_start, now),
                *want,
                "{what}"
            );
        }
        // Summer time: 02:30 Paris = 00:30 UTC.
        let june = t("2026-06-15T12:00:00Z");
        assert_eq!(
            next_slot(&nightly, None, None, june),
            Some(t("2026-06-16T00:30:00Z"))
        );
    }

    #[test]
    fn schedules_are_described_as_written() {
        assert_eq!(describe(None), "by hand");
        assert_eq!(
            describe(Some(&Schedule::Every(Duration::from_secs(86400)))),
            "every 1d"
        );
        assert_eq!(
            describe(Some(&Schedule::Every(Duration::from_secs(5400)))),
            "every 1h30m"
        );
        let tz = parse_timezone("Europe/Paris").unwrap();
        let at = Schedule::At(Box::new(parse_cron("30 2 * * *").unwrap()), tz);
        assert_eq!(describe(Some(&at)), "at \"30 2 * * *\" Europe/Paris");
    }
}
