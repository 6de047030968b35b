//! Fencing former primaries.
//!
//! After `pgmaint promote`, the old primary may come back and accept writes: a second
//! writer. pgmaint never treats it as the primary again. Each promotion is recorded on
//! the new primary (`pgmaint.promotions`, which replicates to every standby) and in a
//! small state file on the pgmaint host (`results.dir/promotions.json`), which it reads
//! even when the new primary is out of reach. A server of the same system on an older
//! timeline than a recorded promotion is a former primary: [`fenced_by`] says which
//! promotion fences it.

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
    /// When.
    pub promoted_at: DateTime<Utc>,
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

/// Add `p` to the state file (written to a temporary file, then renamed into place).
pub fn record_local(results_dir: &Path, p: &Promotion) -> Result<()> {
    let mut all = read_local(results_dir)?;
    all.push(p.clone());
    std::fs::create_dir_all(results_dir)
        .with_context(|| format!("creating {}", results_dir.display()))?;
    let path = state_file(results_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&all)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Record `p` in `pgmaint.promotions` on the new primary.
pub async fn record_on(primary: &Client, p: &Promotion) -> Result<()> {
    primary
        .execute(
            "INSERT INTO pgmaint.promotions (replica, system_identifier, old_timeline, new_timeline, switch_lsn,
                                             old_primary, forced, promoted_at)
             VALUES ($1, $2, $3, $4, $5::text::pg_lsn, $6, $7, $8)",
            &[
                &p.replica,
                &p.system_identifier,
                &p.old_timeline,
                &p.new_timeline,
                &p.switch_lsn,
                &p.old_primary,
                &p.forced,
                &p.promoted_at,
            ],
        )
        .await
        .context("recording the promotion in pgmaint.promotions")?;
    Ok(())
}

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
        .filter(|p| p.system_identifier == system_identifier && p.new_timeline > timeline)
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
        }
    }

    #[test]
    fn a_server_behind_a_recorded_promotion_is_fenced() {
        let all = [p(7, 1, 2), p(7, 2, 3), p(8, 1, 2)];
        assert_eq!(fenced_by(&all, 7, 1).map(|x| x.new_timeline), Some(3));
        assert_eq!(fenced_by(&all, 7, 2).map(|x| x.new_timeline), Some(3));
        assert_eq!(fenced_by(&all, 7, 3), None);
        assert_eq!(fenced_by(&all, 9, 1), None);
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
