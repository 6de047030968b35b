//! The promotion journal, and fencing former primaries by it.
//!
//! Written ahead: before `pg_promote`, the intent (which replica, by whom, from which
//! timeline) goes into `results.dir/promotions.json` — written to a temporary file,
//! fsync'd, renamed into place, and the directory fsync'd — and every later step is
//! recorded there before the next one is taken ([`Step`]). A pgmaint killed anywhere
//! finds the unfinished entry when it starts again ([`unfinished`]) and completes it;
//! it never starts a second promotion meanwhile.
//!
//! Once the candidate is out of recovery, the promotion is also recorded on it
//! (`pgmaint.promotions`, which replicates to every standby that follows it). The
//! standbys themselves are read-only, so the intent can only live in the file; a
//! promotion this host never recorded (another host's pgmaint, or by hand) is found
//! from the servers' timelines instead (see [`super::primary`]).
//!
//! A server of the same system on an older timeline than a recorded promotion is a
//! former primary: [`fenced_by`] says which promotion fences it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// One promotion pgmaint performed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The replica promoted (its config name).
    pub replica: String,
    /// The cluster's system identifier (a string in JSON: it exceeds 2^53).
    #[serde(with = "i64_as_string")]
    pub system_identifier: i64,
    /// The timeline the old primary was on.
    pub old_timeline: i32,
    /// The new primary's timeline.
    pub new_timeline: i32,
    /// Where the new timeline branched off the old one.
    pub switch_lsn: String,
    /// The former primary, `host:port` as configured, if known.
    pub old_primary: Option<String>,
    /// Promoted with `--force` (over the backlog gate).
    pub forced: bool,
    /// When (for an intent: when it was decided).
    pub promoted_at: DateTime<Utc>,
    /// How far it got. Entries written before the journal had steps are done.
    #[serde(default = "Step::done")]
    pub step: Step,
    /// Who promoted it: `host:pid` (and the daemon's random suffix), if known.
    #[serde(default)]
    pub by: Option<String>,
    /// The replica's `host:port`, as configured when it was chosen: found by it when
    /// the config no longer lists it under that name.
    #[serde(default)]
    pub address: Option<String>,
}

/// The steps of a promotion, in the order they are recorded. Each is written before
/// the action that follows it, so a restart knows where to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Decided, the followers about to be re-pointed at `replica`; `pg_promote` not
    /// sent yet. `new_timeline` and `switch_lsn` are not known yet (0 and empty).
    Intent,
    /// `pg_promote` is about to be sent to `replica` (it may have been).
    Promoting,
    /// `replica` is out of recovery: `new_timeline` and `switch_lsn` are its own. Not
    /// yet recorded on it, its followers not yet re-pointed.
    Promoted,
    /// Recorded on the new primary, runs dropped, followers re-pointed.
    Done,
    /// Given up: no configured server is the replica any more, so it cannot be
    /// finished here (had it been promoted, its newer timeline still fences the old
    /// primary).
    Abandoned,
}

impl Step {
    fn done() -> Step {
        Step::Done
    }

    /// Does this entry fence the old timeline (the replica is known to be promoted)?
    pub fn promoted(self) -> bool {
        matches!(self, Step::Promoted | Step::Done)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Intent => "intent",
            Step::Promoting => "promoting",
            Step::Promoted => "promoted",
            Step::Done => "done",
            Step::Abandoned => "abandoned",
        })
    }
}

impl Promotion {
    /// The same promotion: one decision (replica and time) of one system, or, once
    /// promoted, the same replica (by name or address) to the same new timeline.
    pub fn same(&self, other: &Promotion) -> bool {
        let replica = self.replica == other.replica
            || (self.address.is_some() && self.address == other.address);
        self.system_identifier == other.system_identifier
            && ((self.replica == other.replica && self.promoted_at == other.promoted_at)
                || (replica && self.new_timeline > 0 && self.new_timeline == other.new_timeline))
    }

    /// An unfinished entry that `done` (promoted or done) finishes: the same system
    /// and replica, reached by another path (a restart, the servers' timelines).
    fn finished_by(&self, done: &Promotion) -> bool {
        matches!(self.step, Step::Intent | Step::Promoting | Step::Promoted)
            && done.step.promoted()
            && done.new_timeline > 0
            && self.system_identifier == done.system_identifier
            && (self.replica == done.replica
                || (self.address.is_some() && self.address == done.address))
    }
}

mod i64_as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The state file under `results.dir`.
pub fn state_file(results_dir: &Path) -> PathBuf {
    results_dir.join("promotions.json")
}

/// The promotions recorded on this host (none if the file does not exist).
pub fn read_local(results_dir: &Path) -> Result<Vec<Promotion>> {
    let path = state_file(results_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Record `p` in the state file: it replaces the entry of the same promotion
/// ([`Promotion::same`]), or is added; unfinished entries it finishes
/// ([`Promotion::finished_by`]) take its step. Durable when this returns: the new
/// file is fsync'd, renamed into place, and the directory fsync'd. One writer at a
/// time (an flock on `promotions.lock` beside it), each with a temporary file of its
/// own.
pub fn record_local(results_dir: &Path, p: &Promotion) -> Result<()> {
    std::fs::create_dir_all(results_dir)
        .with_context(|| format!("creating {}", results_dir.display()))?;
    let _lock = FileLock::take(&results_dir.join("promotions.lock"))?;
    let mut all = read_local(results_dir)?;
    match all.iter_mut().rev().find(|q| q.same(p)) {
        Some(q) => *q = p.clone(),
        None => all.push(p.clone()),
    }
    for q in all.iter_mut().filter(|q| q.finished_by(p)) {
        q.step = p.step;
        q.old_timeline = p.old_timeline;
        q.new_timeline = p.new_timeline;
        q.switch_lsn = p.switch_lsn.clone();
    }
    let path = state_file(results_dir);
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&all)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(results_dir)?.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// An exclusive flock, released when dropped.
struct FileLock(std::fs::File);

impl FileLock {
    fn take(path: &Path) -> Result<FileLock> {
        use std::os::unix::io::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock(2) on a descriptor this struct owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::unix::io::AsRawFd;
        // SAFETY: as in take.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// The promotion recorded on this host that is not finished (an intent, or promoted
/// but not yet completed), if any: the newest.
pub fn unfinished(results_dir: &Path) -> Result<Option<Promotion>> {
    Ok(read_local(results_dir)?
        .into_iter()
        .rev()
        .find(|p| matches!(p.step, Step::Intent | Step::Promoting | Step::Promoted)))
}

/// Record `p` in `pgmaint.promotions` on the new primary, once: a promotion of the same
/// system to the same timeline recorded already (by an earlier attempt, or another
/// pgmaint) is kept. When it was recorded, by the new primary's clock (the clock its
/// runs are stamped with).
pub async fn record_on(primary: &mut Client, p: &Promotion) -> Result<DateTime<Utc>> {
    let tx = primary.transaction().await?;
    // One recorder at a time (two pgmaints completing the same promotion).
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RECORD_LOCK])
        .await
        .context("locking pgmaint.promotions")?;
    let at: Option<DateTime<Utc>> = tx
        .query_opt(
            "SELECT promoted_at FROM pgmaint.promotions WHERE system_identifier = $1 AND new_timeline = $2
              ORDER BY id LIMIT 1",
            &[&p.system_identifier, &p.new_timeline],
        )
        .await
        .context("reading pgmaint.promotions")?
        .map(|r| r.get(0));
    if let Some(at) = at {
        tx.commit().await?;
        return Ok(at);
    }
    let at: DateTime<Utc> = tx
        .query_one(
            "INSERT INTO pgmaint.promotions (replica, system_identifier, old_timeline, new_timeline, switch_lsn,
                                             old_primary, forced, promoted_at)
             VALUES ($1, $2, $3, $4, $5::text::pg_lsn, $6, $7, now())
             RETURNING promoted_at",
            &[
                &p.replica,
                &p.system_identifier,
                &p.old_timeline,
                &p.new_timeline,
                &p.switch_lsn,
                &p.old_primary,
                &p.forced,
            ],
        )
        .await
        .context("recording the promotion in pgmaint.promotions")?
        .get(0);
    tx.commit()
        .await
        .context("recording the promotion in pgmaint.promotions")?;
    Ok(at)
}

/// The advisory lock key that serialises recording promotions ("pgmrecrd").
const RECORD_LOCK: i64 = 0x7067_6d72_6563_7264;

/// The promotions recorded on `server` (empty before migration 6 or on a server
/// without pgmaint's schema).
pub async fn read_on(server: &Client) -> Vec<Promotion> {
    let rows = server
        .query(
            "SELECT replica, system_identifier, old_timeline, new_timeline, switch_lsn::text, old_primary, forced,
                    promoted_at
               FROM pgmaint.promotions ORDER BY id",
            &[],
        )
        .await
        .unwrap_or_default();
    rows.iter()
        .map(|r| Promotion {
            replica: r.get(0),
            system_identifier: r.get(1),
            old_timeline: r.get(2),
            new_timeline: r.get(3),
            switch_lsn: r.get(4),
            old_primary: r.get(5),
            forced: r.get(6),
            promoted_at: r.get(7),
            step: Step::Done,
            by: None,
            address: None,
        })
        .collect()
}

/// The promotion that fences a server of system `system_identifier` on `timeline`,
/// if any: one of the same system to a newer timeline.
pub fn fenced_by(
    promotions: &[Promotion],
    system_identifier: i64,
    timeline: i32,
) -> Option<&Promotion> {
    promotions
        .iter()
        .filter(|p| {
            p.step.promoted()
                && p.system_identifier == system_identifier
                && p.new_timeline > timeline
        })
        .max_by_key(|p| p.new_timeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(sys: i64, old: i32, new: i32) -> Promotion {
        Promotion {
            replica: "r2".into(),
            system_identifier: sys,
            old_timeline: old,
            new_timeline: new,
            switch_lsn: "0/5000198".into(),
            old_primary: Some("127.0.0.1:55432".into()),
            forced: false,
            promoted_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            step: Step::Done,
            by: None,
            address: None,
        }
    }

    #[test]
    fn a_server_behind_a_recorded_promotion_is_fenced() {
        let all = [p(7, 1, 2), p(7, 2, 3), p(8, 1, 2)];
        assert_eq!(fenced_by(&all, 7, 1).map(|x| x.new_timeline), Some(3));
        assert_eq!(fenced_by(&all, 7, 2).map(|x| x.new_timeline), Some(3));
        assert_eq!(fenced_by(&all, 7, 3), None);
        assert_eq!(fenced_by(&all, 9, 1), None);
        // An intent fences nothing: the replica may never have been promoted.
        let mut intent = p(7, 3, 0);
        intent.step = Step::Intent;
        assert_eq!(fenced_by(&[intent], 7, 3), None);
    }

    #[test]
    fn each_step_replaces_the_entry_of_its_promotion_and_survives_a_reread() {
        let dir = std::env::temp_dir().join(format!("pgmaint-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut e = p(7, 1, 0);
        e.step = Step::Intent;
        e.switch_lsn = String::new();
        record_local(&dir, &e).unwrap();
        assert_eq!(unfinished(&dir).unwrap(), Some(e.clone()));
        e.step = Step::Promoted;
        e.new_timeline = 2;
        e.old_timeline = 3; // learnt from the history file: not part of the key
        record_local(&dir, &e).unwrap();
        assert_eq!(read_local(&dir).unwrap().len(), 1);
        assert_eq!(unfinished(&dir).unwrap().unwrap().step, Step::Promoted);
        e.step = Step::Done;
        record_local(&dir, &e).unwrap();
        assert_eq!(unfinished(&dir).unwrap(), None);
        // The same promotion found again later (a new decision time): one entry still.
        let mut again = e.clone();
        again.promoted_at += chrono::Duration::seconds(5);
        record_local(&dir, &again).unwrap();
        assert_eq!(read_local(&dir).unwrap().len(), 1);
        // An intent finished by another path (a new decision time, found from the
        // servers) is closed with it.
        let mut stale = e.clone();
        stale.promoted_at += chrono::Duration::seconds(60);
        stale.step = Step::Intent;
        stale.new_timeline = 0;
        stale.replica = "r1".into();
        record_local(&dir, &stale).unwrap();
        let mut found = stale.clone();
        found.promoted_at += chrono::Duration::seconds(5);
        found.step = Step::Done;
        found.new_timeline = 3;
        record_local(&dir, &found).unwrap();
        assert_eq!(unfinished(&dir).unwrap(), None, "{:?}", read_local(&dir));
        // A file from before the journal had steps: its entries are done.
        let old = r#"[{"replica":"r2","system_identifier":"7","old_timeline":1,"new_timeline":2,
                       "switch_lsn":"0/5000198","old_primary":null,"forced":false,
                       "promoted_at":"2027-01-15T08:00:00Z"}]"#;
        std::fs::write(state_file(&dir), old).unwrap();
        assert_eq!(read_local(&dir).unwrap()[0].step, Step::Done);
        assert_eq!(unfinished(&dir).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_state_file_round_trips_with_identifiers_as_strings() {
        let dir = std::env::temp_dir().join(format!("pgmaint-fence-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(read_local(&dir).unwrap().is_empty());
        let big = p(7_713_751_089_979_086_011, 1, 2);
        record_local(&dir, &big).unwrap();
        record_local(&dir, &p(7, 2, 3)).unwrap();
        let text = std::fs::read_to_string(state_file(&dir)).unwrap();
        assert!(text.contains("\"7713751089979086011\""), "{text}");
        assert_eq!(read_local(&dir).unwrap(), vec![big, p(7, 2, 3)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
