//! `materialize`: run a query on the frozen snapshot and stream its result into a CSV
//! file that the uploader swaps in for a table on the primary (or merges into it).

use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::Client;

use crate::copy::{check_query, copy_to_file, CheckedQuery, CopyEnd};
use crate::ident::parse_ident;
use crate::progress::{Counters, ProgressReporter};
use crate::results::data_files::RawFile;
use crate::results::{ApplyPlan, MergePlan, SwapPlan, TargetTable};
use crate::task::fields::required;
use crate::task::{FieldError, TaskFields, TaskReport, TaskStatus};
use crate::{ScanContext, ScanError};

/// Config of a `materialize` task.
#[derive(Debug, Clone)]
pub struct MaterializeSpec {
    /// The query, run on the snapshot. Its result columns name the target's columns.
    pub query: String,
    /// The table on the primary that the result replaces (SQL syntax, `schema.table`).
    pub target: String,
    /// If set, the result is merged into the target on these columns (upsert) instead
    /// of replacing it.
    pub merge_key: Option<Vec<String>>,
}

impl MaterializeSpec {
    /// The config fields of this kind.
    pub const FIELDS: &'static [&'static str] = &["query", "target", "merge_key"];

    /// The spec config's fields describe, checked.
    pub fn from_fields(f: &TaskFields) -> Result<Self, FieldError> {
        let spec = MaterializeSpec {
            query: required("query", &f.query)?,
            target: required("target", &f.target)?,
            merge_key: f.merge_key.clone(),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Check what the scan relies on, however the spec was made. (The target is a
    /// table on the primary; its name is checked when the task is prepared.)
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.merge_key.as_ref().is_some_and(Vec::is_empty) {
            return Err(FieldError::invalid("merge_key", "list at least one column"));
        }
        Ok(())
    }
}

pub(crate) struct PreparedMaterialize {
    pub(crate) query: CheckedQuery,
    /// The target as written in config: the uploader resolves it on the primary.
    target: TargetTable,
    merge_key: Option<Vec<String>>,
}

impl PreparedMaterialize {
    pub(crate) fn relations(&self) -> Vec<(String, String)> {
        self.query
            .relations
            .iter()
            .map(|r| (r.schema.clone(), r.name.clone()))
            .collect()
    }
}

pub(crate) async fn prepare(
    client: &Client,
    spec: &MaterializeSpec,
) -> Result<PreparedMaterialize, ScanError> {
    // The target lives on the primary; here we only check that it is a table name.
    let target =
        TargetTable::parse(&spec.target).map_err(|e| ScanError::Config(format!("target: {e}")))?;
    let query = check_query(client, "query", &spec.query).await?;
    let merge_key = match &spec.merge_key {
        None => None,
        Some(cols) => {
            let mut key = Vec::new();
            for c in cols {
                let name =
                    parse_ident(c).map_err(|e| ScanError::Config(format!("merge_key: {e}")))?;
                if !query.columns.contains(&name) {
                    return Err(ScanError::Config(format!(
                        "merge_key: column {name:?} is not in the query's result (columns: {})",
                        query.columns.join(", ")
                    )));
                }
                key.push(name);
            }
            Some(key)
        }
    };
    Ok(PreparedMaterialize {
        query,
        target,
        merge_key,
    })
}

pub(crate) async fn run(
    name: &str,
    p: &PreparedMaterialize,
    ctx: &ScanContext,
    deadline: Option<Instant>,
    report: &mut TaskReport,
) -> Result<(), ScanError> {
    let mut file = RawFile::create(
        &ctx.run_dir,
        &format!("{name}.csv"),
        p.query.columns.clone(),
        ctx.results_mode,
    )?;
    let counters = Arc::new(Counters::default());
    let progress = ProgressReporter::start(ctx.progress, name, "rows", None, counters.clone());
    let (mut client, cancel_token) = ctx.session().await?;
    let tx = crate::session::snapshot_transaction(&mut client)
        .await
        .map_err(ScanError::db("starting the materialize transaction"))?;
    let stop = ctx.cancel.child_token();
    let end = copy_to_file(
        &tx,
        &cancel_token,
        &p.query.copy_sql(),
        &mut file,
        &counters,
        deadline,
        &stop,
    )
    .await;
    progress.finish().await;
    report.take_counters(&counters);
    let end = end?;
    report.file = Some(file.finish()?);
    if end == CopyEnd::Deadline {
        // A partial result must never replace the target: keep the file, upload nothing.
        report.status = TaskStatus::Partial;
        report.error = Some(
            "soft_timeout reached before the query finished: partial result kept, not uploaded"
                .into(),
        );
        return Ok(());
    }
    let target = p.target.clone();
    report.apply = Some(match &p.merge_key {
        None => ApplyPlan::Swap(SwapPlan { target }),
        Some(key) => ApplyPlan::Merge(MergePlan {
            target,
            key: key.clone(),
        }),
    });
    Ok(())
}
