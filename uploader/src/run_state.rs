//! The state of a run (`pgmaint.runs.state`): written by the coordinator, read by the
//! uploader, which applies only the results of a `succeeded` run.

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

/// The quoted values of the `CHECK (column IN (...))` list of `column` in the
/// `CREATE TABLE table` statement of `sql`: for tests that hold Rust states to the
/// schema's.
#[doc(hidden)]
pub fn check_list(sql: &str, table: &str, column: &str) -> Vec<String> {
    let start = sql
        .find(&format!("CREATE TABLE {table} ("))
        .unwrap_or_else(|| panic!("CREATE TABLE {table} not found"));
    let body = &sql[start..];
    let check = body
        .find(&format!("CHECK ({column} IN ("))
        .unwrap_or_else(|| panic!("CHECK ({column} IN …) not found in {table}"));
    let list = &body[check..];
    let list = &list[list.find("IN (").unwrap() + 4..list.find("))").unwrap()];
    list.split(',')
        .map(|v| v.trim().trim_matches('\'').to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_states_are_the_schemas() {
        let sql = include_str!("../../sql/0001_initial.sql");
        let want = check_list(sql, "pgmaint.runs", "state");
        let have: Vec<String> = RunState::ALL
            .iter()
            .map(|s| s.as_str().to_string())
            .collect();
        assert_eq!(have, want);
        for s in RunState::ALL {
            assert_eq!(RunState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }
}
