//! The states of pgmaint's rows on the primary: an upload task's (`pgmaint.upload_tasks.state`)
//! and a run's (`pgmaint.runs.state`).
//!
//! `waiting` → `running` → `completed`, or back to `waiting` (retry with backoff), or
//! `failed` (permanent error, attempts used up), `cancelled` (operator), `dropped` (a
//! prerequisite ended failed, cancelled or dropped). The text forms are the column's
//! `CHECK (state IN (…))` list in `sql/0001_initial.sql`; a unit test keeps them equal.

use std::fmt;
use std::str::FromStr;

use bytes::BytesMut;
use postgres_types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use serde::Serialize;

/// The state of an upload task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    /// Queued: claimed once due and its prerequisites completed.
    Waiting,
    /// Claimed by a worker, which holds a lease on it.
    Running,
    /// Applied (or superseded by a newer snapshot: nothing to apply).
    Completed,
    /// Failed for good: a permanent error, or its attempts used up.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
    /// Never to run: a prerequisite ended failed, cancelled or dropped.
    Dropped,
}

impl UploadState {
    /// Every state, in the order of the table's `CHECK` list.
    pub const ALL: [UploadState; 6] = [
        UploadState::Waiting,
        UploadState::Running,
        UploadState::Completed,
        UploadState::Failed,
        UploadState::Cancelled,
        UploadState::Dropped,
    ];

    /// The states a task never leaves by itself: its dependents can never run, and
    /// only an operator's retry brings it back.
    pub const DEAD_END: [UploadState; 3] = [
        UploadState::Failed,
        UploadState::Cancelled,
        UploadState::Dropped,
    ];

    /// The text stored in `pgmaint.upload_tasks.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Waiting => "waiting",
            UploadState::Running => "running",
            UploadState::Completed => "completed",
            UploadState::Failed => "failed",
            UploadState::Cancelled => "cancelled",
            UploadState::Dropped => "dropped",
        }
    }

    /// True for a state the task never leaves by itself (see [`UploadState::DEAD_END`]).
    pub fn is_dead_end(self) -> bool {
        UploadState::DEAD_END.contains(&self)
    }
}

impl fmt::Display for UploadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`: tables align states with `{:<10}`.
        f.pad(self.as_str())
    }
}

/// A text that names no upload task state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownUploadState(pub String);

impl fmt::Display for UnknownUploadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<&str> = UploadState::ALL.iter().map(|s| s.as_str()).collect();
        write!(
            f,
            "unknown state {:?} (known: {})",
            self.0,
            known.join(", ")
        )
    }
}

impl std::error::Error for UnknownUploadState {}

impl FromStr for UploadState {
    type Err = UnknownUploadState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UploadState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownUploadState(s.to_string()))
    }
}

/// Read from the `text` column.
impl<'a> FromSql<'a> for UploadState {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(<&str as FromSql>::from_sql(ty, raw)?.parse()?)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}

/// Bound as text.
impl ToSql for UploadState {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.as_str().to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// The state of a run (`pgmaint.runs.state`): written by the coordinator, read by the
/// uploader, which applies only the results of a `succeeded` run.
/// A run's state. The text forms are those of the `CHECK` list of `pgmaint.runs.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Holds its replica's lease and works.
    Running,
    /// A valid snapshot; its uploads were queued.
    Succeeded,
    /// An error stopped it.
    Failed,
    /// A signal stopped it.
    Cancelled,
    /// A limit or a lost lease stopped it.
    Aborted,
    /// Its snapshot did not hold (the replica restarted, replay moved): results discarded.
    Invalid,
    /// Its lease expired while it ran: a later command closed it.
    Dropped,
}

impl RunState {
    /// Every state, in the order of the `CHECK` list.
    pub const ALL: [RunState; 7] = [
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
        RunState::Aborted,
        RunState::Invalid,
        RunState::Dropped,
    ];

    /// The text form, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::Aborted => "aborted",
            RunState::Invalid => "invalid",
            RunState::Dropped => "dropped",
        }
    }

    /// The state stored as `text`, if it is one.
    pub fn parse(text: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Assert that `ours` are, in order, the states the schema allows in `table`.
    fn assert_the_schemas_states<'a>(table: &str, ours: impl IntoIterator<Item = &'a str>) {
        let ours: Vec<String> = ours.into_iter().map(str::to_string).collect();
        assert_eq!(ours, states_allowed_by_the_schema(table));
    }

    /// The quoted words of the `CHECK (state IN (…))` list of `table`.
    fn states_allowed_by_the_schema(table: &str) -> Vec<String> {
        let sql = include_str!("../../sql/0001_initial.sql");
        let table = &sql[sql
            .find(&format!("CREATE TABLE {table} ("))
            .unwrap_or_else(|| panic!("{table} in 0001_initial.sql"))..];
        let table = &table[..table.find(");").expect("end of CREATE TABLE")];
        let check = "CHECK (state IN (";
        let list = &table[table.find(check).expect("the state CHECK") + check.len()..];
        let list = &list[..list.find(')').expect("end of the state list")];
        list.split(',')
            .map(|s| s.trim().trim_matches('\'').to_string())
            .collect()
    }

    #[test]
    fn run_states_are_the_schemas() {
        assert_the_schemas_states("pgmaint.runs", RunState::ALL.map(RunState::as_str));
        for s in RunState::ALL {
            assert_eq!(RunState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }

    #[test]
    fn text_forms_are_the_schemas_check_list() {
        let ours = UploadState::ALL.map(UploadState::as_str);
        assert_the_schemas_states("pgmaint.upload_tasks", ours);
    }

    #[test]
    fn every_state_round_trips_through_its_text() {
        for s in UploadState::ALL {
            assert_eq!(s.as_str().parse::<UploadState>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::from(s.as_str())
            );
        }
    }

    #[test]
    fn an_unknown_state_is_refused_naming_the_known_ones() {
        assert_eq!(
            "done".parse::<UploadState>().unwrap_err().to_string(),
            "unknown state \"done\" (known: waiting, running, completed, failed, cancelled, dropped)"
        );
    }

    #[test]
    fn display_pads_like_a_string() {
        assert_eq!(format!("[{:<10}]", UploadState::Failed), "[failed    ]");
    }

    #[test]
    fn dead_ends_are_failed_cancelled_dropped() {
        let dead: Vec<_> = UploadState::ALL
            .into_iter()
            .filter(|s| s.is_dead_end())
            .collect();
        assert_eq!(
            dead,
            [
                UploadState::Failed,
                UploadState::Cancelled,
                UploadState::Dropped
            ]
        );
    }
}
