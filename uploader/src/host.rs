//! Which host can read an upload task's files.
//!
//! Daemons on several hosts do not share a disk by default: each writes its runs under
//! its own `results.dir`, and only a worker on that host can apply them. So every task
//! records the host whose `results.dir` holds its files (`pgmaint.upload_tasks.host`),
//! and a worker claims only tasks of its own host, plus tasks queued on shared storage
//! (NULL host). A worker whose `results.dir` is shared storage claims any task.

use std::fmt;

/// Where result files can be read: the `host` of an upload task, and the tasks a
/// worker claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultsHost {
    /// `results.dir` is shared storage (`results.shared = true`): every host reads it.
    /// A task queued so has a NULL host and any worker claims it; a worker so claims
    /// every task.
    Shared,
    /// Only this host (its `results.host`) reads the files. A worker so claims the
    /// tasks of this host and those with a NULL host.
    Named(String),
}

impl ResultsHost {
    /// The value of the `host` column: NULL for [`ResultsHost::Shared`].
    pub fn column(&self) -> Option<&str> {
        match self {
            ResultsHost::Shared => None,
            ResultsHost::Named(h) => Some(h),
        }
    }

    /// From the `host` column.
    pub fn from_column(host: Option<String>) -> Self {
        host.map_or(ResultsHost::Shared, ResultsHost::Named)
    }
}

impl fmt::Display for ResultsHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResultsHost::Shared => f.write_str("any host (shared results.dir)"),
            ResultsHost::Named(h) => write!(f, "host {h}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_storage_is_a_null_host() {
        assert_eq!(ResultsHost::Shared.column(), None);
        assert_eq!(ResultsHost::Named("a".into()).column(), Some("a"));
        assert_eq!(ResultsHost::from_column(None), ResultsHost::Shared);
        assert_eq!(
            ResultsHost::from_column(Some("b".into())),
            ResultsHost::Named("b".into())
        );
    }
}
