//! `findings`: insert a findings file into `pgmaint.integrity_findings`, then re-check
//! on the primary the rows that `row_checksum` findings name (see [`crate::confirm`]).

use snapshot_runner::results::{FindingsPlan, RowRecheck};
use snapshot_runner::FINDINGS_COLUMNS;
use tokio_postgres::types::ToSql;
use tokio_postgres::Transaction;

use crate::apply::{copy_checked, rejected, Applied, Checked, Ctx};
use crate::confirm::{confirm, Inserted};
use crate::UploadError;

/// Apply a findings file (`checked`): COPY into a temporary table, insert what is new,
/// then re-check the findings that can be.
pub(crate) async fn findings(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
    checked: &Checked,
    plan: &FindingsPlan,
) -> Result<Applied, UploadError> {
    let task = ctx.task;
    if checked.expected.columns != FINDINGS_COLUMNS {
        return Err(rejected(
            task,
            format!(
                "not a findings file (columns {:?})",
                checked.expected.columns
            ),
        ));
    }
    let loaded = load(tx, ctx, checked).await?;
    let inserted = match recheck_of(ctx, plan) {
        Some(recheck) => insert_and_confirm(tx, ctx, checked, recheck).await?,
        None => tx
            .execute(INSERT, &insert_params(ctx, checked))
            .await
            .map_err(UploadError::db("inserting findings"))?,
    };
    if inserted < loaded {
        // Only a finding the file repeats (same relation, key and kind) is not
        // inserted: say so rather than lose it quietly.
        tracing::warn!(
            upload_task_id = task.id,
            loaded,
            inserted,
            "{} finding(s) repeat a (relation, row_key, finding) already recorded for this run and task: kept once",
            loaded - inserted
        );
    }
    // Small loads: DELETE (the dead rows are pruned on the next access). Large ones:
    // TRUNCATE, so the session's table does not stay big.
    let clear = if loaded > 10_000 {
        "TRUNCATE pgmaint_findings_load"
    } else {
        "DELETE FROM pgmaint_findings_load"
    };
    tx.batch_execute(clear)
        .await
        .map_err(UploadError::db("emptying the load table"))?;
    Ok(Applied {
        rows: inserted as i64,
        exclusive_since: None,
        drop_after: false,
        note: None,
    })
}

/// The conflict target is the unique index of migration 5, under which NULL keys are
/// equal to each other and distinct from ''.
const INSERT: &str = "INSERT INTO pgmaint.integrity_findings (run_id, task_name, snapshot_lsn, relation, row_key, finding, detail)
             SELECT $1, $2, $3::text::pg_lsn, relation, row_key, finding, detail FROM pgmaint_findings_load
             ON CONFLICT (run_id, task_name, relation, (row_key IS NULL), coalesce(row_key, ''), finding) DO NOTHING";

fn insert_params<'a>(ctx: &'a Ctx<'_>, checked: &'a Checked) -> [&'a (dyn ToSql + Sync); 3] {
    [&ctx.task.run_id, &ctx.task.task_name, &checked.snapshot_lsn]
}

/// COPY the file into the session's load table; the rows loaded.
async fn load(tx: &Transaction<'_>, ctx: &Ctx<'_>, checked: &Checked) -> Result<u64, UploadError> {
    // One load table per apply session, not per task: creating and dropping a temp
    // table writes the catalogs and took 20-40 ms with 4 slots (most of a small task).
    // It is emptied at the start (a rolled-back apply may have left rows) and the end.
    tx.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS pgmaint_findings_load (relation text, row_key text, finding text, detail text);
         DELETE FROM pgmaint_findings_load;",
    )
    .await
    .map_err(UploadError::db("preparing the load table"))?;
    copy_checked(
        tx,
        ctx.task,
        "COPY pgmaint_findings_load (relation, row_key, finding, detail) FROM STDIN (FORMAT csv, HEADER true)",
        checked,
    )
    .await
}

/// How to re-check the findings of this plan, if they can be.
fn recheck_of<'p>(ctx: &Ctx<'_>, plan: &'p FindingsPlan) -> Option<&'p RowRecheck> {
    if let FindingsPlan::Unrecognized(params) = plan {
        // A row_checksum task queued without all of its re-check params: its findings
        // are applied all the same, but nobody would otherwise know why they stay
        // unconfirmed.
        if params.get("check").and_then(|c| c.as_str()) == Some("row_checksum") {
            tracing::warn!(
                upload_task_id = ctx.task.id,
                "row_checksum findings without the params to re-check them; still_holds left unknown"
            );
        }
    }
    plan.recheck()
}

/// Insert the new findings and re-check exactly those on the primary; how many.
async fn insert_and_confirm(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
    checked: &Checked,
    recheck: &RowRecheck,
) -> Result<u64, UploadError> {
    let rows = tx
        .query(
            &format!("{INSERT} RETURNING id, relation, row_key, finding"),
            &insert_params(ctx, checked),
        )
        .await
        .map_err(UploadError::db("inserting findings"))?;
    let inserted: Vec<Inserted> = rows
        .iter()
        .map(|r| Inserted {
            id: r.get(0),
            relation: r.get(1),
            row_key: r.get(2),
            finding: r.get(3),
        })
        .collect();
    confirm(tx, ctx.task, recheck, &inserted).await?;
    Ok(inserted.len() as u64)
}
