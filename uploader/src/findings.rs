//! `findings`: insert a findings file into `pgmaint.integrity_findings`, re-checking on
//! the primary, in the same statement, the rows that `row_checksum` findings name (see
//! [`crate::confirm`]).

use snapshot_runner::results::{FindingsPlan, RowRecheck};
use snapshot_runner::FINDINGS_COLUMNS;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Transaction;

use crate::apply::{copy_checked, query_retrying_locks, rejected, Applied, Checked, Ctx};
use crate::confirm::{self, Recheck};
use crate::UploadError;

/// Apply a findings file (`checked`): COPY into a temporary table, then insert what
/// is new with its re-check, in one `INSERT … SELECT` joined to the checked table.
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
    let recheck = match recheck_of(ctx, plan) {
        Some(r) => confirm::recheck_sql(tx, task, r)
            .await?
            .map(|sql| (r.relation.clone(), sql)),
        None => None,
    };
    let tally = insert(tx, ctx, checked, recheck.as_ref()).await?;
    if let Some((relation, _)) = &recheck {
        let Tally {
            confirmed,
            resolved,
            unknown,
            ..
        } = tally;
        // Counts of the findings inserted by this apply: confirmed + resolved + unknown.
        tracing::info!(upload_task_id = task.id, %relation, confirmed, resolved, unknown, "findings re-checked on the primary");
    }
    let inserted = tally.inserted;
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

/// What the INSERTs did: findings inserted, and of those the re-check's outcome
/// (findings of the re-checked relation only).
#[derive(Default)]
struct Tally {
    inserted: u64,
    confirmed: i64,
    resolved: i64,
    unknown: i64,
}

/// The conflict target: the unique index of migration 5, under which NULL keys are
/// equal to each other and distinct from ''.
const ON_CONFLICT: &str =
    "ON CONFLICT (run_id, task_name, relation, (row_key IS NULL), coalesce(row_key, ''), finding) DO NOTHING";

/// `INSERT` of the findings of the load table (`l`) that `filter` selects, with
/// `still_holds` given by `holds` over `l` and what `join` adds, then `on_conflict`;
/// a row of counts ([`Tally`]). `$4` is the re-checked relation (NULL: none).
fn insert_sql(holds: &str, join: &str, filter: &str, on_conflict: &str) -> String {
    format!(
        "WITH ins AS (
           INSERT INTO pgmaint.integrity_findings
                  (run_id, task_name, snapshot_lsn, relation, row_key, finding, detail, still_holds)
           SELECT $1, $2, $3::text::pg_lsn, l.relation, l.row_key, l.finding, l.detail, {holds}
             FROM pgmaint_findings_load l {join}
            WHERE {filter}
           {on_conflict}
           RETURNING relation = $4 AS rechecked, still_holds)
         SELECT count(*),
                count(*) FILTER (WHERE rechecked AND still_holds),
                count(*) FILTER (WHERE rechecked AND NOT still_holds),
                count(*) FILTER (WHERE rechecked AND still_holds IS NULL)
           FROM ins"
    )
}

/// Insert the findings of the load table, with their re-check when there is one.
///
/// Findings whose key is not NULL go in one statement, a plain INSERT: with `ON
/// CONFLICT` each row cost two probes of the unique index, and a 1M-finding insert
/// about 1.3x the server's CPU time (2x without the foreign key check; see
/// scripts/bench/RESULTS-uploader.md). The run's task has no
/// finding recorded yet (its apply commits them with its completion, or not at all),
/// so only a file that repeats a finding makes it fail on the unique index: it is
/// then rolled back to its savepoint and done again with `ON CONFLICT DO NOTHING`,
/// which keeps each finding once. Findings whose key is NULL (several rows with a
/// NULL key give repeats) always go with `ON CONFLICT`, in a second statement: they
/// are few.
async fn insert(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
    checked: &Checked,
    recheck: Option<&(String, Recheck)>,
) -> Result<Tally, UploadError> {
    let task = ctx.task;
    let relation: Option<&str> = recheck.map(|(r, _)| r.as_str());
    let params: [&(dyn ToSql + Sync); 4] = [
        &task.run_id,
        &task.task_name,
        &checked.snapshot_lsn,
        &relation,
    ];
    let (holds, join, holds_null_key) = match recheck {
        Some((_, r)) => (r.holds.as_str(), r.join.as_str(), r.holds_null_key.as_str()),
        None => ("NULL::boolean", "", "NULL::boolean"),
    };
    let what = "inserting findings";
    let keyed = "l.row_key IS NOT NULL";
    let mut tally = Tally::default();
    let mut add = |row: &tokio_postgres::Row| {
        tally.inserted += row.get::<_, i64>(0) as u64;
        tally.confirmed += row.get::<_, i64>(1);
        tally.resolved += row.get::<_, i64>(2);
        tally.unknown += row.get::<_, i64>(3);
    };
    tx.batch_execute("SAVEPOINT pgmaint_findings")
        .await
        .map_err(UploadError::db(what))?;
    let plain = insert_sql(holds, join, keyed, "");
    match query_retrying_locks(tx, ctx, &plain, &params, what).await {
        Ok(rows) => {
            tx.batch_execute("RELEASE SAVEPOINT pgmaint_findings")
                .await
                .map_err(UploadError::db(what))?;
            add(&one(rows));
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tracing::info!(
                upload_task_id = task.id,
                "a finding of the file is a repeat: inserting again, keeping each finding once"
            );
            tx.batch_execute(
                "ROLLBACK TO SAVEPOINT pgmaint_findings; RELEASE SAVEPOINT pgmaint_findings",
            )
            .await
            .map_err(UploadError::db(what))?;
            let once = insert_sql(holds, join, keyed, ON_CONFLICT);
            add(&one(
                query_retrying_locks(tx, ctx, &once, &params, what).await?
            ));
        }
        Err(e) => return Err(e),
    }
    let null_keys = insert_sql(holds_null_key, "", "l.row_key IS NULL", ON_CONFLICT);
    add(&one(query_retrying_locks(
        tx, ctx, &null_keys, &params, what,
    )
    .await?));
    Ok(tally)
}

/// The one row of an aggregate.
fn one(mut rows: Vec<tokio_postgres::Row>) -> tokio_postgres::Row {
    rows.pop().expect("an aggregate returns one row")
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
