//! When a task is due: the scheduler's decision, as pure functions (groundwork for
//! `pgmaint daemon`, issue "nightly maintenance as a service").
//!
//! A task runs `every` an interval, measured from the start of its last run, or `at`
//! the times of a 5-field cron expression (croner) in `daemon.timezone`. Each run is
//! claimed for one *slot* (the scheduled time it stands for), so that a restart or a
//! second daemon never runs a slot twice; [`due`] says which slot, if any, to claim
//! now. Slots missed while no daemon ran get one catch-up run ([`CatchUp::One`]) or
//! none ([`CatchUp::None`]).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// When a task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// An interval from the start of the last run.
    Every(Duration),
    /// The times of a cron expression, in a time zone.
    At(Box<Cron>, chrono_tz::Tz),
}

/// What to do about slots missed while no daemon ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Run once for all of them (as systemd's `Persistent=`).
    One,
    /// Skip them: the next slot to come runs.
    None,
}

impl FromStr for CatchUp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "one" => Ok(CatchUp::One),
            "none" => Ok(CatchUp::None),
            other => Err(format!("{other:?} is not one of \"one\", \"none\"")),
        }
    }
}

/// A 5-field cron expression (minute hour day-of-month month day-of-week), as croner
/// reads it (`L`, `#`, `W` included); seconds are not a field here.
pub fn parse_cron(text: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| format!("{text:?} is not a 5-field cron expression: {e}"))
}

/// A time zone by its IANA name (`Europe/Paris`, `UTC`).
pub fn parse_timezone(text: &str) -> Result<chrono_tz::Tz, String> {
    text.parse::<chrono_tz::Tz>().map_err(|_| {
        format!("{text:?} is not a known time zone (an IANA name such as Europe/Paris or UTC)")
    })
}

/// The slot of `schedule` to claim at `now`, if one is due. `last_slot`: the last slot
/// claimed; `last_start`: when its run started. `grace`: how late a slot may be taken
/// and still count as on time rather than missed (a daemon's tick, plus margin).
pub fn due(
    schedule: &Schedule,
    last_slot: Option<DateTime<Utc>>,
    last_start: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    catch_up: CatchUp,
    grace: Duration,
) -> Option<DateTime<Utc>> {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::zero());
    match schedule {
        Schedule::Every(every) => {
            let every = chrono::Duration::from_std(*every).ok()?;
            let Some(start) = last_start.or(last_slot) else {
                // Never ran: now.
                return Some(now);
            };
            let next = start + every;
            if now < next {
                return None;
            }
            // Boundaries passed since the last run: the latest is the slot.
            let passed = (now - start).num_milliseconds() / every.num_milliseconds().max(1);
            let latest = start + every * passed as i32;
            match catch_up {
                CatchUp::One => Some(latest),
                // Missed boundaries are skipped; one on time still runs.
                CatchUp::None if now - latest <= grace => Some(latest),
                CatchUp::None => None,
            }
        }
        Schedule::At(cron, tz) => {
            let local_now = now.with_timezone(tz);
            let latest = cron
                .find_previous_occurrence(&local_now, true)
                .ok()?
                .with_timezone(&Utc);
            if last_slot.is_some_and(|l| l >= latest) {
                return None;
            }
            let on_time = now - latest <= grace;
            match (catch_up, last_slot) {
                _ if on_time => Some(latest),
                // Never ran: a slot long past was not missed, it was before our time.
                (_, None) => None,
                (CatchUp::One, Some(_)) => Some(latest),
                (CatchUp::None, Some(_)) => None,
            }
        }
    }
}

/// Claim `slot` of `task` (a task's or a dump's name) for `holder`, in one statement:
/// only while `holder` leads the scheduler ([`crate::leader`]), only if no run of the
/// task is still running (runs of a task never overlap, even across daemons), and
/// only once (the unique (task, slot) key: neither a restart nor a second daemon runs
/// a slot twice). When it was claimed (the start of its run), if this call claimed it.
pub async fn claim(
    client: &tokio_postgres::Client,
    task: &str,
    slot: DateTime<Utc>,
    holder: &str,
) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    let claimed = client
        .query_opt(
            "INSERT INTO pgmaint.task_slots (task_name, slot, claimed_by)
             SELECT $1, $2, $3
              WHERE EXISTS (SELECT 1 FROM pgmaint.leader
                             WHERE name = $4 AND holder = $3 AND expires_at > now())
                AND NOT EXISTS (SELECT 1 FROM pgmaint.runs
                                 WHERE state = 'running' AND $1 = ANY (tasks))
             ON CONFLICT (task_name, slot) DO NOTHING
             RETURNING claimed_at",
            &[&task, &slot, &holder, &crate::leader::SCHEDULER],
        )
        .await?;
    Ok(claimed.map(|r| r.get(0)))
}

/// How a claimed slot's run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotOutcome {
    /// The run that ran it, if one was recorded.
    pub run_id: Option<i64>,
    /// The task did its job.
    pub succeeded: bool,
    /// Why not, in one line.
    pub error: Option<String>,
    /// Findings of the run (integrity tasks).
    pub findings: Option<i64>,
    /// How long the task took.
    pub seconds: f64,
}

/// Record how `slot` of `task` ended.
pub async fn record(
    client: &tokio_postgres::Client,
    task: &str,
    slot: DateTime<Utc>,
    outcome: &SlotOutcome,
) -> Result<(), tokio_postgres::Error> {
    let result = if outcome.succeeded {
        "succeeded"
    } else {
        "failed"
    };
    client
        .execute(
            "UPDATE pgmaint.task_slots
                SET finished_at = now(), result = $3, error = $4, findings = $5,
                    duration_seconds = $6, run_id = $7
              WHERE task_name = $1 AND slot = $2",
            &[
                &task,
                &slot,
                &result,
                &outcome.error,
                &outcome.findings,
                &outcome.seconds,
                &outcome.run_id,
            ],
        )
        .await?;
    Ok(())
}

/// The last slot claimed for `task`, and when it was claimed (the start of its run).
pub async fn last_slot(
    client: &tokio_postgres::Client,
    task: &str,
) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT slot, claimed_at FROM pgmaint.task_slots WHERE task_name = $1 ORDER BY slot DESC LIMIT 1",
            &[&task],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn every_counts_from_the_start_of_the_last_run() {
        let every = Schedule::Every(Duration::from_secs(3600));
        let now = t("2026-11-30T10:00:00Z");
        // Never ran: now.
        assert_eq!(due(&every, None, None, now, CatchUp::One, GRACE), Some(now));
        // Ran at 9:30: not before 10:30.
        let ran = Some(t("2026-11-30T09:30:00Z"));
        assert_eq!(due(&every, ran, ran, now, CatchUp::One, GRACE), None);
        let at = t("2026-11-30T10:30:00Z");
        assert_eq!(due(&every, ran, ran, at, CatchUp::One, GRACE), Some(at));
        // Down from 9:30 to 13:10: one catch-up run for 12:30, or none.
        let late = t("2026-11-30T13:10:00Z");
        assert_eq!(
            due(&every, ran, ran, late, CatchUp::One, GRACE),
            Some(t("2026-11-30T12:30:00Z"))
        );
        assert_eq!(due(&every, ran, ran, late, CatchUp::None, GRACE), None);
        // ... and with none, the next boundary runs on time.
        let next = t("2026-11-30T13:30:20Z");
        assert_eq!(
            due(&every, ran, ran, next, CatchUp::None, GRACE),
            Some(t("2026-11-30T13:30:00Z"))
        );
    }

    #[test]
    fn at_runs_each_cron_slot_once_in_its_time_zone() {
        let tz = parse_timezone("Europe/Paris").unwrap();
        // 02:30 Paris time = 01:30 UTC in winter.
        let nightly = Schedule::At(Box::new(parse_cron("30 2 * * *").unwrap()), tz);
        let slot = t("2026-11-30T01:30:00Z");
        let on_time = t("2026-11-30T01:30:05Z");
        assert_eq!(
            due(&nightly, None, None, on_time, CatchUp::One, GRACE),
            Some(slot)
        );
        // Claimed: not again.
        assert_eq!(
            due(
                &nightly,
                Some(slot),
                Some(on_time),
                t("2026-11-30T01:31:00Z"),
                CatchUp::One,
                GRACE
            ),
            None
        );
        // Down over two slots: one catch-up run, for the latest; or none.
        let yesterday = Some(t("2026-11-28T01:30:00Z"));
        let later = t("2026-11-30T09:00:00Z");
        assert_eq!(
            due(&nightly, yesterday, yesterday, later, CatchUp::One, GRACE),
            Some(slot)
        );
        assert_eq!(
            due(&nightly, yesterday, yesterday, later, CatchUp::None, GRACE),
            None
        );
        // A first start long after a slot does not run it.
        assert_eq!(due(&nightly, None, None, later, CatchUp::One, GRACE), None);
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        assert!(parse_cron("0 2 * *")
            .unwrap_err()
            .contains("is not a 5-field cron expression"));
        assert!(
            parse_cron("0 0 2 * * *").is_err(),
            "seconds are not a field"
        );
        assert!(parse_cron("61 2 * * *").is_err());
        assert!(parse_cron("0 2 L * *").is_ok());
        assert_eq!(
            parse_timezone("Mars/Olympus").unwrap_err(),
            "\"Mars/Olympus\" is not a known time zone (an IANA name such as Europe/Paris or UTC)"
        );
        assert_eq!("one".parse::<CatchUp>(), Ok(CatchUp::One));
        assert!("all".parse::<CatchUp>().is_err());
    }
}
