//! Task specs, built from config's fields ([`fields`]); their preparation (catalog
//! checks, before the pause); running them; and their reports.

use std::time::Instant;

use crate::amcheck::{self, AmcheckSpec, PreparedAmcheck};
use crate::export::{self, ExportSpec, PreparedExport};
use crate::file_checksum::{self, FileChecksumSpec, PreparedFileChecksum};
use crate::ident::{display_ident, QualifiedName};
use crate::materialize::{self, MaterializeSpec, PreparedMaterialize};
use crate::row_checksum::{self, PreparedRowChecksum, RowChecksumSpec};
use crate::{ScanContext, ScanError};

pub(crate) mod fields;
mod report;
mod workers;

pub use fields::{FieldError, FieldProblem, TaskFields};
pub use report::{TaskReport, TaskStatus};
pub(crate) use workers::run_workers;

/// What a task does. Each kind has its own spec.
#[derive(Debug, Clone)]
pub enum TaskSpec {
    /// md5 of a content column against a stored checksum column.
    RowChecksum(RowChecksumSpec),
    /// md5 of files under a root directory against a catalog table.
    FileChecksum(FileChecksumSpec),
    /// A query's result, swapped in for (or merged into) a table on the primary.
    Materialize(MaterializeSpec),
    /// amcheck's `bt_index_check` and `verify_heapam`.
    Amcheck(AmcheckSpec),
    /// CSV copies of tables or a query, not uploaded.
    Export(ExportSpec),
}

/// A kind of task: its name in config, the fields it takes, and how its spec is made
/// from them.
struct Kind {
    name: &'static str,
    fields: &'static [&'static str],
    from_fields: fn(&TaskFields) -> Result<TaskSpec, FieldError>,
}

/// The kinds of task, each once: its name in config, its [`TaskSpec`] variant and its
/// spec. Makes [`KINDS`], [`TaskSpec::validate`] and [`TaskSpec::kind`].
macro_rules! task_kinds {
    ($($name:literal => $variant:ident($spec:ty)),+ $(,)?) => {
        const KINDS: &[Kind] = &[$(
            Kind {
                name: $name,
                fields: <$spec>::FIELDS,
                from_fields: |f| <$spec>::from_fields(f).map(TaskSpec::$variant),
            },
        )+];

        impl TaskSpec {
            /// Check what the kind's scan relies on. [`TaskSpec::from_fields`] already
            /// did; this is for a spec built by hand.
            pub fn validate(&self) -> Result<(), FieldError> {
                match self {
                    $(TaskSpec::$variant(s) => s.validate(),)+
                }
            }

            /// The kind's name as written in config.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(TaskSpec::$variant(_) => $name,)+
                }
            }
        }
    };
}

task_kinds! {
    "row_checksum" => RowChecksum(RowChecksumSpec),
    "file_checksum" => FileChecksum(FileChecksumSpec),
    "materialize" => Materialize(MaterializeSpec),
    "amcheck" => Amcheck(AmcheckSpec),
    "export" => Export(ExportSpec),
}

impl TaskSpec {
    /// The spec of a task of kind `kind` from config's fields: the kind must exist and
    /// take every field that is set, and its spec checks the rest.
    pub fn from_fields(kind: &str, fields: &TaskFields) -> Result<TaskSpec, FieldError> {
        let Some(known) = KINDS.iter().find(|k| k.name == kind) else {
            return Err(FieldError {
                field: "kind",
                problem: FieldProblem::UnknownKind {
                    kind: kind.to_string(),
                    known: KINDS.iter().map(|k| k.name).collect(),
                },
            });
        };
        if let Some(extra) = fields.set().into_iter().find(|f| !known.fields.contains(f)) {
            return Err(FieldError {
                field: extra,
                problem: FieldProblem::NotOfKind {
                    kind: known.name,
                    fields: known.fields,
                },
            });
        }
        (known.from_fields)(fields)
    }

    /// How many sessions the task opens on the replica at most, all at once.
    pub fn sessions(&self) -> usize {
        match self {
            TaskSpec::RowChecksum(s) => s.parallelism,
            TaskSpec::Amcheck(s) => s.parallelism,
            _ => 1,
        }
    }
}

/// A task whose configuration has been checked against the replica's catalog.
pub struct PreparedTask {
    /// Task name from config.
    pub name: String,
    kind: &'static str,
    inner: Prepared,
}

enum Prepared {
    RowChecksum(PreparedRowChecksum),
    FileChecksum(PreparedFileChecksum),
    Materialize(PreparedMaterialize),
    Amcheck(PreparedAmcheck),
    Export(PreparedExport),
}

/// Check a task against the replica's catalog: tables and columns exist and have
/// usable types. Run this before pausing, so a typo never costs a pause.
pub async fn prepare(
    name: &str,
    spec: &TaskSpec,
    ctx: &ScanContext,
) -> Result<PreparedTask, ScanError> {
    let misconfigured =
        |e: FieldError| prefix_config(name, spec.kind(), ScanError::Config(e.to_string()));
    spec.validate().map_err(misconfigured)?;
    let client = ctx.connect().await?;
    // The tables config names, before the kind's checks read them.
    check_privileges(&client, false, &named_tables(spec))
        .await
        .map_err(|e| prefix_config(name, spec.kind(), e))?;
    let inner = match spec {
        TaskSpec::RowChecksum(s) => row_checksum::prepare(&client, s)
            .await
            .map(Prepared::RowChecksum),
        TaskSpec::FileChecksum(s) => file_checksum::prepare(&client, s)
            .await
            .map(Prepared::FileChecksum),
        TaskSpec::Materialize(s) => materialize::prepare(&client, s)
            .await
            .map(Prepared::Materialize),
        TaskSpec::Amcheck(s) => amcheck::prepare(&client, s).await.map(Prepared::Amcheck),
        TaskSpec::Export(s) => export::prepare(&client, name, s)
            .await
            .map(Prepared::Export),
    }
    .map_err(|e| prefix_config(name, spec.kind(), denied_as_config(e)))?;
    let task = PreparedTask {
        name: name.to_string(),
        kind: spec.kind(),
        inner,
    };
    let amcheck = matches!(task.inner, Prepared::Amcheck(_));
    let read: Vec<QualifiedName> = task
        .relations()
        .into_iter()
        .map(|(schema, name)| QualifiedName { schema, name })
        .collect();
    check_privileges(&client, amcheck, &read)
        .await
        .map_err(|e| prefix_config(name, spec.kind(), e))?;
    Ok(task)
}

/// A permission error met while checking a task (EXPLAIN checks the query's
/// privileges) is the role's grants at fault, as the other checks say: a refusal
/// naming what to grant, not a failed run.
const READ_HINT: &str =
    "GRANT SELECT on every relation the task reads to pgmaint's role, or GRANT pg_read_all_data to it";

const RLS_HINT: &str =
    "pgmaint reads every row or none: give pgmaint's role BYPASSRLS (ALTER ROLE … BYPASSRLS) \
     or make it the table's owner, or scan with a role that has them";

fn denied_as_config(e: ScanError) -> ScanError {
    match &e {
        ScanError::Db(d)
            if d.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            // Scan sessions run with row_security off (as pg_dump): a table whose
            // policies would hide rows is refused rather than read in part.
            let hint = if e.to_string().contains("row-level security") {
                RLS_HINT
            } else {
                READ_HINT
            };
            ScanError::Config(format!("{e} ({hint})"))
        }
        // A query the replica rejects (EXPLAIN checks its privileges).
        ScanError::Config(m) if m.contains("permission denied") => {
            ScanError::Config(format!("{m} ({READ_HINT})"))
        }
        _ => e,
    }
}

/// Before the pause: may the scan role do what the task does on the replica? SELECT on
/// every relation it reads (on the table, or some column of it: column grants are the
/// operator's choice, and the scan names a column it cannot read), or, for amcheck,
/// EXECUTE on `bt_index_check` and `verify_heapam`. A refusal names the grant.
async fn check_privileges(
    client: &tokio_postgres::Client,
    amcheck: bool,
    relations: &[QualifiedName],
) -> Result<(), ScanError> {
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(ScanError::db("reading the scan role"))?
        .get(0);
    let who = display_ident(&role);
    if amcheck {
        let lacking: Vec<String> = client
            .query(
                "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_extension e ON e.extnamespace = p.pronamespace
                  WHERE e.extname = 'amcheck'
                    AND ((p.proname = 'bt_index_check' AND p.pronargs = 2) OR p.proname = 'verify_heapam')
                    AND NOT has_function_privilege(p.oid, 'EXECUTE')
                  ORDER BY 1",
                &[],
            )
            .await
            .map_err(ScanError::db("reading the privileges on amcheck's functions"))?
            .iter()
            .map(|r| format!("GRANT EXECUTE ON FUNCTION {} TO {who}", r.get::<_, String>(0)))
            .collect();
        if !lacking.is_empty() {
            return Err(ScanError::Config(format!(
                "role {who} may not run amcheck: {}",
                lacking.join("; ")
            )));
        }
        return Ok(());
    }
    let mut lacking = Vec::new();
    for q in relations {
        // A relation that does not exist passes here: the kind's checks name it.
        let readable: bool = client
            .query_one(
                "SELECT coalesce(has_table_privilege(c.oid, 'SELECT') OR has_any_column_privilege(c.oid, 'SELECT'), true)
                   FROM (SELECT 1) one LEFT JOIN pg_class c ON c.oid = to_regclass($1)",
                &[&q.quoted()],
            )
            .await
            .map_err(ScanError::db("reading the privileges on the task's relations"))?
            .get(0);
        if !readable {
            let line = format!("GRANT SELECT ON TABLE {q} TO {who}");
            if !lacking.contains(&line) {
                lacking.push(line);
            }
        }
    }
    if lacking.is_empty() {
        return Ok(());
    }
    Err(ScanError::Config(format!(
        "role {who} may not read what the task scans: {} (or GRANT pg_read_all_data TO {who})",
        lacking.join("; ")
    )))
}

/// The tables a spec names, before its checks (a name that does not parse is left to
/// them).
fn named_tables(spec: &TaskSpec) -> Vec<QualifiedName> {
    let names: Vec<&String> = match spec {
        TaskSpec::RowChecksum(s) => vec![&s.table],
        TaskSpec::FileChecksum(s) => vec![&s.table],
        TaskSpec::Export(s) => s.tables.iter().collect(),
        TaskSpec::Materialize(_) | TaskSpec::Amcheck(_) => Vec::new(),
    };
    names
        .into_iter()
        .filter_map(|n| QualifiedName::parse(n).ok())
        .collect()
}

fn prefix_config(task: &str, kind: &str, e: ScanError) -> ScanError {
    match e {
        ScanError::Config(msg) => ScanError::Config(format!("task {task:?} ({kind}): {msg}")),
        other => other,
    }
}

impl PreparedTask {
    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The data files the task writes into the run directory.
    pub fn file_names(&self) -> Vec<String> {
        match &self.inner {
            Prepared::Export(p) => p.file_names(),
            _ => vec![format!("{}.csv", self.name)],
        }
    }

    /// The relations this task reads, as `(schema, name)`, so the coordinator can check
    /// that the replayed WAL holds no AccessExclusiveLock on them at the pause point.
    pub fn relations(&self) -> Vec<(String, String)> {
        match &self.inner {
            Prepared::RowChecksum(p) => std::iter::once(&p.table)
                .chain(&p.partitions)
                .map(|t| (t.schema.clone(), t.name.clone()))
                .collect(),
            Prepared::FileChecksum(p) => vec![(p.table.schema.clone(), p.table.name.clone())],
            Prepared::Materialize(p) => p.relations(),
            Prepared::Amcheck(p) => p.relations(),
            Prepared::Export(p) => p.relations(),
        }
    }

    /// The query's result columns, for a `materialize` task (what a merge writes).
    pub fn result_columns(&self) -> Option<&[String]> {
        match &self.inner {
            Prepared::Materialize(p) => Some(&p.query.columns),
            _ => None,
        }
    }

    /// Run the task against the (paused) replica. Never fails as a whole: errors are
    /// reported in the [`TaskReport`]. `soft_deadline` stops the task cleanly after the
    /// batch in flight, with partial results. `cursor` is where the previous valid run
    /// of this task stopped (the coordinator keeps it on the primary).
    pub async fn run(
        &self,
        ctx: &ScanContext,
        soft_deadline: Option<Instant>,
        cursor: Option<&str>,
    ) -> TaskReport {
        let started = Instant::now();
        let mut report = TaskReport::new(&self.name, self.kind());
        let result = match &self.inner {
            Prepared::RowChecksum(p) => {
                report.relation = Some(p.table.to_string());
                row_checksum::run(&self.name, p, ctx, soft_deadline, &mut report).await
            }
            Prepared::FileChecksum(p) => {
                report.relation = Some(p.table.to_string());
                file_checksum::run(&self.name, p, ctx, soft_deadline, cursor, &mut report).await
            }
            Prepared::Materialize(p) => {
                materialize::run(&self.name, p, ctx, soft_deadline, &mut report).await
            }
            Prepared::Amcheck(p) => {
                amcheck::run(&self.name, p, ctx, soft_deadline, &mut report).await
            }
            Prepared::Export(p) => {
                export::run(&self.name, p, ctx, soft_deadline, &mut report).await
            }
        };
        report.elapsed = started.elapsed();
        match result {
            Ok(()) => {}
            Err(ScanError::Cancelled) => report.status = TaskStatus::Cancelled,
            Err(e) => {
                report.status = TaskStatus::Failed;
                report.error = Some(e.to_string());
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> TaskFields {
        TaskFields {
            table: Some("blobs".into()),
            key: Some("id".into()),
            content: Some("payload".into()),
            checksum: Some("payload_md5".into()),
            ..TaskFields::default()
        }
    }

    #[test]
    fn a_spec_names_the_field_at_fault() {
        let err = |kind: &str, f: TaskFields| TaskSpec::from_fields(kind, &f).unwrap_err();
        assert!(TaskSpec::from_fields("row_checksum", &fields()).is_ok());
        let e = err(
            "row_checksum",
            TaskFields {
                key: None,
                ..fields()
            },
        );
        assert_eq!((e.field, e.to_string().as_str()), ("key", "key: missing"));
        let e = err(
            "row_checksum",
            TaskFields {
                parallelism: Some(0),
                ..fields()
            },
        );
        assert_eq!(e.to_string(), "parallelism: must be at least 1");
        let e = err(
            "amcheck",
            TaskFields {
                table: Some("t".into()),
                ..TaskFields::default()
            },
        );
        assert_eq!(
            e.to_string(),
            "table: not a field of kind amcheck (its fields: tables, heapallindexed, parallelism, max_findings)"
        );
        let e = err(
            "row_checksum",
            TaskFields {
                max_findings: Some(0),
                ..fields()
            },
        );
        assert_eq!(e.to_string(), "max_findings: must be at least 1");
        let e = err(
            "materialize",
            TaskFields {
                query: Some("SELECT 1".into()),
                target: Some("t".into()),
                max_findings: Some(5),
                ..TaskFields::default()
            },
        );
        assert_eq!(e.field, "max_findings", "{e}");
        match TaskSpec::from_fields("row_checksum", &fields()).unwrap() {
            TaskSpec::RowChecksum(s) => assert_eq!(s.max_findings, 100_000),
            other => panic!("{other:?}"),
        }
        let e = err(
            "export",
            TaskFields {
                tables: Some(vec!["a".into()]),
                query: Some("q".into()),
                ..TaskFields::default()
            },
        );
        assert_eq!(
            e,
            FieldError::conflict("query", "give either tables or query, not both")
        );
        assert_eq!(
            err("export", TaskFields::default()).to_string(),
            "tables: missing, or give a query"
        );
        assert!(err("nope", fields())
            .to_string()
            .starts_with("kind: unknown kind \"nope\" (known kinds: row_checksum,"));
    }

    #[test]
    fn a_spec_built_by_hand_is_checked_as_config_would_check_it() {
        let spec = TaskSpec::FileChecksum(FileChecksumSpec {
            table: "files".into(),
            key: "id".into(),
            path: "path".into(),
            checksum: "md5".into(),
            size: None,
            root: "/srv".into(),
            age_in_days: Some(3),
            ingested_at: None,
            files_per_run: None,
            parallelism: 2,
            max_findings: 10,
        });
        assert_eq!(
            spec.validate().unwrap_err().to_string(),
            "age_in_days: needs ingested_at, the column of ingest times"
        );
    }
}
