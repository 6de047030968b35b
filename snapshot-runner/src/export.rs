//! `export`: consistent CSV copies of tables (one file each) or of one query, all from
//! the same frozen snapshot. Exports are for people and other systems; nothing of them
//! is uploaded to the primary.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::Client;

use crate::copy::{check_query, copy_to_file, CopyEnd};
use crate::ident::QualifiedName;
use crate::progress::{Counters, ProgressReporter};
use crate::results::data_files::RawFile;
use crate::task::{FieldError, FieldProblem, TaskFields, TaskReport, TaskStatus};
use crate::{ScanContext, ScanError};

/// Config of an `export` task: `tables` or `query`, not both.
#[derive(Debug, Clone)]
pub struct ExportSpec {
    /// Tables (SQL syntax); one CSV file each, named `<task>.<schema>.<table>.csv`.
    pub tables: Vec<String>,
    /// A query; one CSV file named `<task>.csv`.
    pub query: Option<String>,
}

impl ExportSpec {
    /// The config fields of this kind.
    pub const FIELDS: &'static [&'static str] = &["tables", "query"];

    /// The spec config's fields describe, checked. (`tables = []` is told apart from
    /// no tables here; a spec cannot tell.)
    pub fn from_fields(f: &TaskFields) -> Result<Self, FieldError> {
        match (&f.tables, &f.query) {
            (Some(_), Some(_)) => Err(both_tables_and_query()),
            (Some(tables), None) if tables.is_empty() => {
                Err(FieldError::invalid("tables", "empty list"))
            }
            (tables, query) => {
                let spec = ExportSpec {
                    tables: tables.clone().unwrap_or_default(),
                    query: query.clone(),
                };
                spec.validate()?;
                Ok(spec)
            }
        }
    }

    /// Check what the scan relies on, however the spec was made: tables or a query,
    /// not both.
    pub fn validate(&self) -> Result<(), FieldError> {
        match (&self.query, self.tables.is_empty()) {
            (Some(_), false) => Err(both_tables_and_query()),
            (None, true) => Err(FieldError {
                field: "tables",
                problem: FieldProblem::Missing {
                    or: Some("give a query"),
                },
            }),
            _ => Ok(()),
        }
    }
}

fn both_tables_and_query() -> FieldError {
    FieldError::conflict("query", "give either tables or query, not both")
}

struct ExportItem {
    file_name: String,
    copy_sql: String,
    columns: Vec<String>,
}

pub(crate) struct PreparedExport {
    items: Vec<ExportItem>,
    relations: Vec<QualifiedName>,
    estimated_rows: Option<u64>,
}

impl PreparedExport {
    pub(crate) fn file_names(&self) -> Vec<String> {
        self.items.iter().map(|i| i.file_name.clone()).collect()
    }

    pub(crate) fn relations(&self) -> Vec<(String, String)> {
        self.relations
            .iter()
            .map(|r| (r.schema.clone(), r.name.clone()))
            .collect()
    }
}

/// A file-name-safe form of a name: letters, digits, `_` and `-` kept, the rest `_`.
fn file_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(crate) async fn prepare(
    client: &Client,
    task: &str,
    spec: &ExportSpec,
) -> Result<PreparedExport, ScanError> {
    if let Some(q) = &spec.query {
        let query = check_query(client, "query", q).await?;
        return Ok(PreparedExport {
            items: vec![ExportItem {
                file_name: format!("{task}.csv"),
                copy_sql: query.copy_sql(),
                columns: query.columns.clone(),
            }],
            relations: query.relations,
            estimated_rows: None,
        });
    }
    let mut items = Vec::new();
    let mut relations = Vec::new();
    let mut names = BTreeSet::new();
    let mut estimate = 0u64;
    for (i, text) in spec.tables.iter().enumerate() {
        let field = format!("tables[{i}]");
        let table =
            QualifiedName::parse(text).map_err(|e| ScanError::Config(format!("{field}: {e}")))?;
        let row = client
            .query_opt(
                "SELECT c.oid, greatest(c.reltuples, 0)::float8
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'm', 'v', 'f')",
                &[&table.schema, &table.name],
            )
            .await
            .map_err(ScanError::db("reading the catalog"))?
            .ok_or_else(|| ScanError::Config(format!("{field}: {table} does not exist on the replica")))?;
        let oid: u32 = row.get(0);
        estimate += row.get::<_, f64>(1) as u64;
        let columns: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute
                  WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&oid],
            )
            .await
            .map_err(ScanError::db("reading the catalog"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut file_name = format!(
            "{task}.{}.{}.csv",
            file_part(&table.schema),
            file_part(&table.name)
        );
        if !names.insert(file_name.clone()) {
            // Two names that differ only in characters a file name cannot carry.
            file_name = format!(
                "{task}.{}.{}.{i}.csv",
                file_part(&table.schema),
                file_part(&table.name)
            );
            names.insert(file_name.clone());
        }
        items.push(ExportItem {
            file_name,
            copy_sql: format!(
                "COPY (SELECT * FROM {}) TO STDOUT (FORMAT csv, HEADER true)",
                table.quoted()
            ),
            columns,
        });
        relations.push(table);
    }
    Ok(PreparedExport {
        items,
        relations,
        estimated_rows: Some(estimate),
    })
}

pub(crate) async fn run(
    name: &str,
    p: &PreparedExport,
    ctx: &ScanContext,
    deadline: Option<Instant>,
    report: &mut TaskReport,
) -> Result<(), ScanError> {
    let counters = Arc::new(Counters::default());
    let progress = ProgressReporter::start(
        ctx.progress,
        name,
        "rows",
        p.estimated_rows,
        counters.clone(),
    );
    let result = export_all(p, ctx, deadline, &counters, report).await;
    progress.finish().await;
    report.take_counters(&counters);
    result
}

async fn export_all(
    p: &PreparedExport,
    ctx: &ScanContext,
    deadline: Option<Instant>,
    counters: &Arc<Counters>,
    report: &mut TaskReport,
) -> Result<(), ScanError> {
    let (mut client, cancel_token) = ctx.session().await?;
    // One transaction for all files: on a paused replica every statement sees the same
    // state anyway, and this keeps the export consistent should it ever run unpaused.
    let tx = crate::session::snapshot_transaction(&mut client)
        .await
        .map_err(ScanError::db("starting the export transaction"))?;
    let stop = ctx.cancel.child_token();
    for item in &p.items {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            report.status = TaskStatus::Partial;
            break;
        }
        let mut file = RawFile::create(
            &ctx.run_dir,
            &item.file_name,
            item.columns.clone(),
            ctx.results_mode,
        )?;
        let end = copy_to_file(
            &tx,
            &cancel_token,
            &item.copy_sql,
            &mut file,
            counters,
            deadline,
            &stop,
        )
        .await?;
        report.files.push(file.finish()?);
        if end == CopyEnd::Deadline {
            report.status = TaskStatus::Partial;
            break;
        }
    }
    if report.status == TaskStatus::Partial {
        report.error = Some(format!(
            "soft_timeout reached: {} of {} file(s) written, the last one possibly cut short",
            report.files.len(),
            p.items.len()
        ));
    }
    Ok(())
}
