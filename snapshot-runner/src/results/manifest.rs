//! `manifest.json`: what a run produced, stamped with the snapshot it read.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::results::mode::ResultsMode;
use crate::ScanError;

/// Manifest file name inside a run directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The frozen state a run read: where replay stood while it was paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// `pg_last_wal_replay_lsn()` while paused, e.g. `0/3000148`.
    pub lsn: String,
    /// Timeline of the replica's last restartpoint.
    pub timeline: i32,
    /// `pg_control_system().system_identifier`: which cluster this is. A string in
    /// JSON (it exceeds 2^53, which JSON readers such as JavaScript's cannot hold
    /// exactly); a number is still read, for manifests written before.
    #[serde(with = "i64_as_string")]
    pub system_identifier: i64,
    /// `pg_postmaster_start_time()`: a restart silently ends a pause.
    pub postmaster_start: DateTime<Utc>,
}

/// A 64-bit integer as a JSON string; reads a string or a number.
pub mod i64_as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Write `v` as a string.
    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    /// Read a string of digits, or a number.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(i64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(n),
            Either::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// One data file, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// File name inside the run directory.
    pub name: String,
    /// CSV header.
    pub columns: Vec<String>,
    /// Data rows (header excluded).
    pub rows: u64,
    /// Size in bytes.
    pub size: u64,
    /// MD5 of the whole file, lower-case hex.
    pub md5: String,
    /// The snapshot the file was read from (`pg_last_wal_replay_lsn()` while paused).
    /// Filled in from the run's snapshot when the manifest is written, so a file copied
    /// away with its manifest entry still says which state it shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_lsn: Option<String>,
}

/// One task's entry in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestTask {
    /// Task name from config.
    pub name: String,
    /// Task kind (`row_checksum`, …).
    pub kind: String,
    /// `completed`, `partial`, `failed` or `cancelled`.
    pub status: String,
    /// Rows (or files) examined.
    pub rows_scanned: u64,
    /// Findings reported.
    pub findings: u64,
    /// The relation the findings speak of, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<String>,
    /// The data file, if the task wrote one. Single-file tasks (the ones the uploader
    /// applies) use this.
    pub file: Option<DataFile>,
    /// The data files of a multi-file task (`export`: one per table), in the order
    /// written. Every file is from the run's snapshot (`snapshot.lsn`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<DataFile>,
    /// Error text of a failed task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything a run wrote, and the snapshot it is from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultManifest {
    /// Run id (row in `pgmaint.runs` on the primary).
    pub run_id: i64,
    /// Replica name from config.
    pub replica: String,
    /// The snapshot every task read.
    pub snapshot: SnapshotInfo,
    /// When the pause was confirmed.
    pub started_at: DateTime<Utc>,
    /// When the scans ended.
    pub finished_at: DateTime<Utc>,
    /// False when the snapshot moved during the run: such results are never uploaded.
    pub valid: bool,
    /// The tasks, in run order.
    pub tasks: Vec<ManifestTask>,
}

impl ResultManifest {
    /// Write `dir/manifest.json` atomically (temp file of `mode`, fsync, rename).
    /// Every data file is stamped with the run's snapshot LSN.
    pub fn write(&self, dir: &Path, mode: ResultsMode) -> Result<(), ScanError> {
        let tmp = dir.join(".manifest.json.tmp");
        let path = dir.join(MANIFEST_FILE);
        let mut stamped = self.clone();
        for t in &mut stamped.tasks {
            for f in t.file.iter_mut().chain(t.files.iter_mut()) {
                f.snapshot_lsn
                    .get_or_insert_with(|| self.snapshot.lsn.clone());
            }
        }
        let body = serde_json::to_vec_pretty(&stamped).expect("manifest serializes");
        mode.write(&tmp, &body).map_err(ScanError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(ScanError::io(&path))?;
        Ok(())
    }

    /// Read and parse a manifest file.
    pub fn read(path: &Path) -> Result<Self, ScanError> {
        let body = std::fs::read(path).map_err(ScanError::io(path))?;
        serde_json::from_slice(&body).map_err(|e| ScanError::Io {
            path: path.to_path_buf(),
            cause: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// The entry of task `name`.
    pub fn task(&self, name: &str) -> Option<&ManifestTask> {
        self.tasks.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_identifier_is_a_string_in_json_and_read_back_from_either() {
        let snap = SnapshotInfo {
            lsn: "0/3000148".into(),
            timeline: 1,
            system_identifier: 7_711_034_890_591_087_637,
            postmaster_start: "2026-01-01T00:00:00Z".parse().unwrap(),
        };
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["system_identifier"], "7711034890591087637");
        assert_eq!(serde_json::from_value::<SnapshotInfo>(json).unwrap(), snap);
        let old = r#"{"lsn":"0/1","timeline":1,"system_identifier":1,"postmaster_start":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(
            serde_json::from_str::<SnapshotInfo>(old)
                .unwrap()
                .system_identifier,
            1
        );
    }
}
