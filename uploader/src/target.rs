//! The table a swap or merge writes: named in the task's plan (SQL syntax, from
//! config), resolved and checked against the primary's catalog.

use snapshot_runner::ident::{quote_ident, QualifiedName};
use tokio_postgres::Transaction;

use crate::apply::{query_retrying_locks, rejected, Ctx};
use crate::queue::Claimed;
use crate::UploadError;

/// A target table found on the primary.
pub(crate) struct Target {
    pub oid: u32,
    pub name: QualifiedName,
    /// Owner role name.
    pub owner: String,
    /// `p` permanent, `u` unlogged.
    pub persistence: String,
}

impl Target {
    /// For a database error while `doing` something to this target: "`doing` <name>".
    pub(crate) fn db_error(
        &self,
        doing: &str,
    ) -> impl FnOnce(tokio_postgres::Error) -> UploadError {
        UploadError::db(format!("{doing} {}", self.name))
    }

    /// For a database error in `step` of a swap of this target: "swap of <name>: `step`".
    pub(crate) fn swap_error(
        &self,
        step: &str,
    ) -> impl FnOnce(tokio_postgres::Error) -> UploadError {
        UploadError::db(format!("swap of {}: {step}", self.name))
    }
}

/// Find the target on the primary: an ordinary table, or a clear error naming it.
pub(crate) async fn resolve(
    tx: &Transaction<'_>,
    task: &Claimed,
    name: QualifiedName,
) -> Result<Target, UploadError> {
    let row = tx
        .query_opt(
            "SELECT c.oid, c.relkind::text, pg_get_userbyid(c.relowner)::text, c.relpersistence::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&name.schema, &name.name],
        )
        .await
        .map_err(UploadError::db(format!("looking up {name}")))?;
    let Some(row) = row else {
        return Err(UploadError::Target(format!(
            "{} target {name} does not exist on the primary (create it first; upload task {})",
            task.kind, task.id
        )));
    };
    let relkind: String = row.get(1);
    if relkind != "r" {
        return Err(UploadError::Target(format!(
            "{} target {name} is not an ordinary table (relkind {relkind}; upload task {})",
            task.kind, task.id
        )));
    }
    Ok(Target {
        oid: row.get(0),
        name,
        owner: row.get(2),
        persistence: row.get(3),
    })
}

/// Check that every column of the result file exists on the target and can be
/// written (not generated). Returns the column list, quoted, for COPY and INSERT.
pub(crate) async fn check_columns(
    tx: &Transaction<'_>,
    task: &Claimed,
    t: &Target,
    columns: &[String],
) -> Result<String, UploadError> {
    let rows = tx
        .query(
            "SELECT attname::text, attgenerated::text FROM pg_attribute
              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            &[&t.oid],
        )
        .await
        .map_err(t.db_error("reading the columns of"))?;
    let have: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    // The file's columns `which` picks out (given its `attgenerated`, or `None` if the
    // target lacks it), quoted: refused, saying they `are`.
    let refuse = |which: fn(Option<&str>) -> bool, are: &str| {
        let picked: Vec<String> = columns
            .iter()
            .filter(|c| which(have.iter().find(|(n, _)| n == *c).map(|(_, g)| g.as_str())))
            .map(|c| quote_ident(c))
            .collect();
        if picked.is_empty() {
            return Ok(());
        }
        Err(UploadError::Target(format!(
            "{} target {}: column(s) {} {are} (upload task {})",
            task.kind,
            t.name,
            picked.join(", "),
            task.id
        )))
    };
    refuse(
        |generated| generated.is_none(),
        "of the result file do not exist on the primary",
    )?;
    refuse(
        |generated| generated.is_some_and(|g| !g.is_empty()),
        "are generated and cannot be loaded",
    )?;
    if columns.is_empty() {
        return Err(rejected(task, "the result file has no columns"));
    }
    Ok(columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Whose snapshots an apply must not go back behind.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A swap replaces the whole table: a newer snapshot put into the target by any
    /// task supersedes it (config allows no other task to write a swap's target).
    Target,
    /// A merge writes its own task's rows only: only a newer snapshot of the same task
    /// supersedes it. Another task merging other rows into the same target is
    /// independent, whichever of their snapshots is newer.
    Task,
}

/// Has another run already put a snapshot at least as new as `snapshot_lsn` into the
/// target (for `Scope::Task`: from this task)? Then this task must not apply: uploads
/// of different runs are not ordered (runs 5 and 6 both queued while the uploader was
/// down, or run 5's apply retried after a backoff), and the one that commits last
/// would otherwise win. Returns the note to record on the task.
///
/// With `lock`, the `pgmaint.materializations` rows in scope are locked until the apply
/// commits (this task's row inserted first with its values if there is none, so a
/// first materialization is serialised too): a concurrent apply of the same task into
/// the same target then waits here and decides after this one has committed. Without,
/// it is a plain read that lets an apply skip its work early; the locked check decides.
pub(crate) async fn superseded(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
    t: &Target,
    snapshot_lsn: &str,
    scope: Scope,
    lock: bool,
) -> Result<Option<String>, UploadError> {
    let task = ctx.task;
    let target = t.name.to_string();
    let what = format!("reading the materialization of {}", t.name);
    let whole_target = scope == Scope::Target;
    // Newest first.
    let select = "SELECT run_id, snapshot_lsn::text, snapshot_lsn >= $2::text::pg_lsn
                    FROM pgmaint.materializations
                   WHERE target = $1 AND (task_name = $3 OR $4)
                   ORDER BY snapshot_lsn DESC";
    let rows = if lock {
        let inserted = query_retrying_locks(
            tx,
            ctx,
            "INSERT INTO pgmaint.materializations (target, run_id, task_name, snapshot_lsn, rows)
             VALUES ($1, $2, $3, $4::text::pg_lsn, 0)
             ON CONFLICT (target, task_name) DO NOTHING RETURNING run_id",
            &[&target, &task.run_id, &task.task_name, &snapshot_lsn],
            &what,
        )
        .await?;
        if !inserted.is_empty() && !whole_target {
            return Ok(None);
        }
        query_retrying_locks(
            tx,
            ctx,
            &format!("{select} FOR UPDATE"),
            &[&target, &snapshot_lsn, &task.task_name, &whole_target],
            &what,
        )
        .await?
    } else {
        tx.query(
            select,
            &[&target, &snapshot_lsn, &task.task_name, &whole_target],
        )
        .await
        .map_err(UploadError::db(what))?
    };
    // The same run may write one target from several tasks (chained in order).
    let newer = rows.iter().find(|r| {
        let (run_id, not_older): (i64, bool) = (r.get(0), r.get(2));
        run_id != task.run_id && not_older
    });
    let Some(row) = newer else {
        return Ok(None);
    };
    let (run_id, lsn): (i64, String) = (row.get(0), row.get(1));
    let note = if whole_target {
        format!(
            "superseded by run {run_id} at LSN {lsn}: {} already reflects a snapshot at least as new as this \
             run's ({snapshot_lsn}); nothing applied",
            t.name
        )
    } else {
        format!(
            "superseded by run {run_id} at LSN {lsn}: {} already holds task {}'s rows from a snapshot at least \
             as new as this run's ({snapshot_lsn}); nothing applied",
            t.name, task.task_name
        )
    };
    tracing::warn!(upload_task_id = task.id, run_id = task.run_id, target = %t.name, newer_run_id = run_id, newer_lsn = %lsn,
                   lsn = %snapshot_lsn, "{note}");
    Ok(Some(note))
}

/// Record which snapshot of this task the target now reflects.
pub(crate) async fn record_materialization(
    tx: &Transaction<'_>,
    task: &Claimed,
    t: &Target,
    snapshot_lsn: &str,
    rows: i64,
) -> Result<(), UploadError> {
    tx.execute(
        "INSERT INTO pgmaint.materializations (target, run_id, task_name, snapshot_lsn, rows)
         VALUES ($1, $2, $3, $4::text::pg_lsn, $5)
         ON CONFLICT (target, task_name) DO UPDATE SET run_id = $2, snapshot_lsn = $4::text::pg_lsn,
                                                      rows = $5, swapped_at = now()",
        &[
            &t.name.to_string(),
            &task.run_id,
            &task.task_name,
            &snapshot_lsn,
            &rows,
        ],
    )
    .await
    .map_err(t.db_error("recording the materialization of"))?;
    Ok(())
}
