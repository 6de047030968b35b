//! A task's fields as config writes them, and what can be wrong with one.
//!
//! Each kind's spec builds itself from [`TaskFields`] (`RowChecksumSpec::from_fields`,
//! …) and says which field is at fault and how ([`FieldError`]); config adds where
//! the field is (`tasks[2].key`) and which task it belongs to.

use std::path::PathBuf;

/// The kind-specific fields of a `[[tasks]]` entry, as config writes them: names in
/// SQL syntax, nothing checked yet. Which of them a kind takes is its spec's
/// `FIELDS`.
#[derive(Debug, Clone, Default)]
pub struct TaskFields {
    /// The table (`row_checksum`) or the catalog of files (`file_checksum`).
    pub table: Option<String>,
    /// Key column.
    pub key: Option<String>,
    /// `row_checksum`: content column.
    pub content: Option<String>,
    /// Stored md5 column.
    pub checksum: Option<String>,
    /// Sessions or reader threads of one task.
    pub parallelism: Option<usize>,
    /// `file_checksum`: column of paths relative to `root`.
    pub path: Option<String>,
    /// `file_checksum`: column of file sizes.
    pub size: Option<String>,
    /// `file_checksum`: the directory the paths are relative to.
    pub root: Option<PathBuf>,
    /// `file_checksum`: only files ingested within this many days.
    pub age_in_days: Option<u32>,
    /// `file_checksum`: column of ingest times (with `age_in_days`).
    pub ingested_at: Option<String>,
    /// `file_checksum`: files checked per run; a cursor carries on next run.
    pub files_per_run: Option<u64>,
    /// `materialize`, `export`: a query run on the snapshot.
    pub query: Option<String>,
    /// `materialize`: the table on the primary the result replaces.
    pub target: Option<String>,
    /// `materialize`: merge on these columns instead of swapping.
    pub merge_key: Option<Vec<String>>,
    /// `amcheck`, `export`: tables.
    pub tables: Option<Vec<String>>,
    /// `amcheck`: also check that every heap tuple is indexed.
    pub heapallindexed: Option<bool>,
    /// Findings kinds: more findings than this fail the task, and nothing is uploaded.
    pub max_findings: Option<u64>,
}

impl TaskFields {
    /// The fields that are set, by config name.
    pub fn set(&self) -> Vec<&'static str> {
        let set = [
            ("table", self.table.is_some()),
            ("key", self.key.is_some()),
            ("content", self.content.is_some()),
            ("checksum", self.checksum.is_some()),
            ("parallelism", self.parallelism.is_some()),
            ("path", self.path.is_some()),
            ("size", self.size.is_some()),
            ("root", self.root.is_some()),
            ("age_in_days", self.age_in_days.is_some()),
            ("ingested_at", self.ingested_at.is_some()),
            ("files_per_run", self.files_per_run.is_some()),
            ("query", self.query.is_some()),
            ("target", self.target.is_some()),
            ("merge_key", self.merge_key.is_some()),
            ("tables", self.tables.is_some()),
            ("heapallindexed", self.heapallindexed.is_some()),
            ("max_findings", self.max_findings.is_some()),
        ];
        set.iter().filter(|(_, on)| *on).map(|(f, _)| *f).collect()
    }
}

/// A task field that is missing or wrong: which one (its config name), and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's config name (`key`, `tables`, …; `kind` for the kind itself).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: FieldProblem,
}

/// What is wrong with a task field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldProblem {
    /// The kind needs it and it is not set; `or` is what may be given instead.
    Missing {
        /// The alternative, e.g. "give a query".
        or: Option<&'static str>,
    },
    /// Its value cannot be used (the text says why).
    Invalid(String),
    /// It does not go with the task's other fields (the text says why).
    Conflict(String),
    /// The kind itself is unknown.
    UnknownKind {
        /// The kind asked for.
        kind: String,
        /// The kinds there are.
        known: Vec<&'static str>,
    },
    /// The kind does not take this field.
    NotOfKind {
        /// The task's kind.
        kind: &'static str,
        /// The fields it takes.
        fields: &'static [&'static str],
    },
}

impl FieldError {
    pub(crate) fn missing(field: &'static str) -> Self {
        FieldError {
            field,
            problem: FieldProblem::Missing { or: None },
        }
    }

    pub(crate) fn invalid(field: &'static str, why: impl Into<String>) -> Self {
        FieldError {
            field,
            problem: FieldProblem::Invalid(why.into()),
        }
    }

    pub(crate) fn conflict(field: &'static str, why: impl Into<String>) -> Self {
        FieldError {
            field,
            problem: FieldProblem::Conflict(why.into()),
        }
    }
}

/// `field: problem`, without where the field is (config says that).
impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let field = self.field;
        match &self.problem {
            FieldProblem::Missing { or: None } => write!(f, "{field}: missing"),
            FieldProblem::Missing { or: Some(or) } => write!(f, "{field}: missing, or {or}"),
            FieldProblem::Invalid(why) | FieldProblem::Conflict(why) => {
                write!(f, "{field}: {why}")
            }
            FieldProblem::UnknownKind { kind, known } => write!(
                f,
                "{field}: unknown kind {kind:?} (known kinds: {})",
                known.join(", ")
            ),
            FieldProblem::NotOfKind { kind, fields } => write!(
                f,
                "{field}: not a field of kind {kind} (its fields: {})",
                fields.join(", ")
            ),
        }
    }
}

impl std::error::Error for FieldError {}

/// A field the kind cannot do without.
pub(crate) fn required<T: Clone>(field: &'static str, value: &Option<T>) -> Result<T, FieldError> {
    value.clone().ok_or_else(|| FieldError::missing(field))
}

/// The most sessions (or reader threads) config may give one task.
const MAX_PARALLELISM: usize = 256;

/// `parallelism` as config sets it, or one per CPU. The cap applies to what config
/// asks for, not to the default.
pub(crate) fn parallelism_or_default(set: Option<usize>) -> usize {
    set.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    })
}

/// Config asks for no more than [`MAX_PARALLELISM`].
pub(crate) fn parallelism_within_cap(set: Option<usize>) -> Result<(), FieldError> {
    match set {
        Some(n) if n > MAX_PARALLELISM => Err(FieldError::invalid(
            "parallelism",
            format!("at most {MAX_PARALLELISM}"),
        )),
        _ => Ok(()),
    }
}

/// `max_findings` as config sets it (at least 1), or the default.
pub(crate) fn max_findings_or_default(set: Option<u64>) -> Result<u64, FieldError> {
    match set {
        Some(n) => at_least_one("max_findings", n).map(|()| n),
        None => Ok(crate::findings_scan::DEFAULT_MAX_FINDINGS),
    }
}

/// A count that must be at least 1 (`parallelism`, `files_per_run`, …).
pub(crate) fn at_least_one(field: &'static str, n: u64) -> Result<(), FieldError> {
    if n == 0 {
        return Err(FieldError::invalid(field, "must be at least 1"));
    }
    Ok(())
}
