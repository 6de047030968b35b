//! Checking a result file against its manifest, and applying it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use md5::{Digest, Md5};
use snapshot_runner::results::{ApplyPlan, PlanError};
use snapshot_runner::{DataFile, ResultManifest};
use tokio::io::AsyncReadExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

use crate::queue::Claimed;
use crate::RunState;
use crate::UploadError;

/// What an apply needs besides its transaction.
pub(crate) struct Ctx<'a> {
    pub task: &'a Claimed,
    pub results_dir: &'a Path,
    /// `lock_timeout` of the transaction, also the base of the lock retry backoff.
    pub lock_timeout: Duration,
}

/// What an apply did.
pub(crate) struct Applied {
    /// Rows loaded (or findings inserted).
    pub rows: i64,
    /// When a swap took its ACCESS EXCLUSIVE lock on the target (held until commit).
    pub exclusive_since: Option<Instant>,
    /// A swap renamed the old table away: drop it once committed.
    pub drop_after: bool,
    /// Kept in the completed task's `last_error`: why nothing was applied (superseded).
    pub note: Option<String>,
}

impl Applied {
    /// Nothing applied, for the reason `note`; the task completes with 0 rows.
    pub(crate) fn skipped(note: String) -> Self {
        Applied {
            rows: 0,
            exclusive_since: None,
            drop_after: false,
            note: Some(note),
        }
    }
}

/// Apply a claimed task in `tx`: read its plan back from the queued row (here, once; a
/// row this version cannot read is rejected), check its run and file ([`check`]), and
/// apply the file the way the plan says.
pub(crate) async fn apply_task(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
) -> Result<Applied, UploadError> {
    let task = ctx.task;
    let plan = ApplyPlan::from_queued(&task.kind, &task.params).map_err(|e| match e {
        PlanError::UnknownKind(kind) => UploadError::Rejected(format!(
            "upload task {}: unknown apply kind {kind:?}",
            task.id
        )),
        PlanError::Params(why) => rejected(task, why),
    })?;
    let checked = check(tx, task, ctx.results_dir).await?;
    match &plan {
        ApplyPlan::Findings(p) => crate::findings::findings(tx, ctx, &checked, p).await,
        ApplyPlan::Swap(p) => crate::swap::swap(tx, ctx, &checked, p).await,
        ApplyPlan::Merge(p) => crate::merge::merge(tx, ctx, &checked, p).await,
    }
}

/// Lock waits are bounded by `lock_timeout`; a statement that times out on a lock is
/// retried this many times (inside a savepoint, so the work before it is kept).
const LOCK_TRIES: u32 = 5;

/// Run `sql` (no parameters) in a savepoint, retrying when it times out waiting for a
/// lock. After the last try the lock error is returned (and the task retried later).
pub(crate) async fn execute_retrying_locks(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
    sql: &str,
    what: &str,
) -> Result<u64, UploadError> {
    retrying_locks(tx, ctx, what, || tx.execute(sql, &[])).await
}

/// Run `sql` with `params` in a savepoint, retrying lock time-outs like
/// [`execute_retrying_locks`]; its rows.
pub(crate) async fn query_retrying_locks(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    what: &str,
) -> Result<Vec<Row>, UploadError> {
    retrying_locks(tx, ctx, what, || tx.query(sql, params)).await
}

async fn retrying_locks<T, F, Fut>(
    tx: &Transaction<'_>,
    ctx: &Ctx<'_>,
    what: &str,
    mut op: F,
) -> Result<T, UploadError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    for attempt in 1..=LOCK_TRIES {
        tx.batch_execute("SAVEPOINT pgmaint_lock")
            .await
            .map_err(UploadError::db(what))?;
        match op().await {
            Ok(n) => {
                tx.batch_execute("RELEASE SAVEPOINT pgmaint_lock")
                    .await
                    .map_err(UploadError::db(what))?;
                return Ok(n);
            }
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) && attempt < LOCK_TRIES => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT pgmaint_lock")
                    .await
                    .map_err(UploadError::db(what))?;
                let wait = Duration::from_millis(50 * 2u64.pow(attempt))
                    .min(ctx.lock_timeout)
                    .mul_f64(0.5 + rand::random::<f64>());
                tracing::info!(
                    upload_task_id = ctx.task.id,
                    attempt,
                    ?wait,
                    "{what}: lock_timeout; retrying"
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(UploadError::db(what)(e)),
        }
    }
    unreachable!("the last try returns")
}

pub(crate) fn rejected(task: &Claimed, why: impl std::fmt::Display) -> UploadError {
    UploadError::Rejected(format!(
        "upload task {} (run {}, task {}): {why}",
        task.id, task.run_id, task.task_name
    ))
}

/// Resolve `rel` under `root`, refusing anything that lands outside it (absolute paths,
/// `..`, symlinks pointing out).
fn inside(task: &Claimed, root: &Path, rel: &str, what: &str) -> Result<PathBuf, UploadError> {
    let root = root
        .canonicalize()
        .map_err(|e| rejected(task, format!("results.dir {}: {e}", root.display())))?;
    let path = root.join(rel);
    let canon = match path.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(rejected(
                task,
                format!("{what} {} is missing", path.display()),
            ))
        }
        Err(e) => return Err(rejected(task, format!("{what} {}: {e}", path.display()))),
    };
    if !canon.starts_with(&root) {
        return Err(rejected(
            task,
            format!("{what} {rel:?} is outside results.dir {}", root.display()),
        ));
    }
    Ok(canon)
}

/// What the manifest says of the task's file, once the run and paths are checked.
pub(crate) struct Checked {
    pub path: PathBuf,
    pub expected: DataFile,
    /// MD5 and size the coordinator recorded in the queue (tasks queued since
    /// migration 3): the file must match these too, whatever the manifest says.
    pub recorded: Option<(String, u64)>,
    pub snapshot_lsn: String,
}

/// Check the run (valid, in the database and in the manifest) and the paths, and read
/// what the manifest promises about the data file.
pub(crate) async fn check(
    tx: &Transaction<'_>,
    task: &Claimed,
    results_dir: &Path,
) -> Result<Checked, UploadError> {
    let run = tx
        .query_opt(
            "SELECT state, snapshot_lsn::text FROM pgmaint.runs WHERE id = $1",
            &[&task.run_id],
        )
        .await
        .map_err(UploadError::db("reading the run"))?
        .ok_or_else(|| rejected(task, "its run does not exist"))?;
    let (state, lsn): (String, Option<String>) = (run.get(0), run.get(1));
    if RunState::parse(&state) != Some(RunState::Succeeded) {
        return Err(rejected(
            task,
            format!("its run is {state}, not a valid completed run"),
        ));
    }
    if let Some(why) = past_a_switch_point(tx, task).await? {
        return Err(rejected(task, why));
    }
    let manifest_path = inside(task, results_dir, &task.manifest, "manifest")?;
    let data_path = inside(task, results_dir, &task.file, "data file")?;
    let manifest = ResultManifest::read(&manifest_path)
        .map_err(|e| rejected(task, format!("manifest: {e}")))?;
    if manifest.run_id != task.run_id
        || !manifest.valid
        || Some(&manifest.snapshot.lsn) != lsn.as_ref()
    {
        return Err(rejected(
            task,
            "the manifest is not that of a valid run with this id and snapshot",
        ));
    }
    let entry = manifest
        .task(&task.task_name)
        .and_then(|t| t.file.clone())
        .ok_or_else(|| rejected(task, "the manifest lists no data file for this task"))?;
    if data_path.file_name().and_then(|n| n.to_str()) != Some(entry.name.as_str())
        || data_path.parent() != manifest_path.parent()
    {
        return Err(rejected(
            task,
            "the data file is not the one the manifest lists",
        ));
    }
    // The manifest lives beside the file, so whoever can rewrite one can rewrite the
    // other: the queue row on the primary is the reference.
    let recorded = match (&task.file_md5, task.file_size) {
        (Some(md5), Some(size)) => {
            let size = u64::try_from(size)
                .map_err(|_| rejected(task, format!("recorded file size {size} is negative")))?;
            if !md5.eq_ignore_ascii_case(&entry.md5) || size != entry.size {
                return Err(rejected(
                    task,
                    format!(
                        "the manifest's md5 {} and size {} of data file {} differ from those recorded when the task \
                         was queued (md5 {md5}, size {size}): file and manifest rewritten since",
                        entry.md5, entry.size, entry.name
                    ),
                ));
            }
            Some((md5.to_ascii_lowercase(), size))
        }
        (None, None) => {
            tracing::debug!(
                upload_task_id = task.id,
                "queued before file_md5/file_size were recorded: checked against the manifest only"
            );
            None
        }
        _ => {
            return Err(rejected(
                task,
                "the queue records only one of file_md5 and file_size",
            ))
        }
    };
    Ok(Checked {
        path: data_path,
        expected: entry,
        recorded,
        snapshot_lsn: manifest.snapshot.lsn,
    })
}

/// Why the task's run was computed from history that no longer exists, if it was: its
/// snapshot lies past the switch point of a promotion away from the run's timeline
/// (`pgmaint promote` records each one in `pgmaint.promotions` on the new primary).
/// WAL past that point on the old timeline is not part of the new primary's history.
async fn past_a_switch_point(
    tx: &Transaction<'_>,
    task: &Claimed,
) -> Result<Option<String>, UploadError> {
    let row = tx
        .query_opt(
            "SELECT r.snapshot_lsn::text, r.timeline, p.replica, p.old_timeline, p.new_timeline,
                    p.switch_lsn::text, p.promoted_at::text
               FROM pgmaint.runs r
               JOIN pgmaint.promotions p
                 ON p.system_identifier = r.system_identifier
                AND p.old_timeline >= r.timeline
                AND p.switch_lsn < r.snapshot_lsn
              WHERE r.id = $1
              ORDER BY p.switch_lsn
              LIMIT 1",
            &[&task.run_id],
        )
        .await
        .map_err(UploadError::db("reading the promotions"))?;
    Ok(row.map(|r| {
        let (lsn, tli): (String, i32) = (r.get(0), r.get(1));
        let (replica, old, new): (String, i32, i32) = (r.get(2), r.get(3), r.get(4));
        let (switch, at): (String, String) = (r.get(5), r.get(6));
        format!(
            "computed from history that no longer exists (its snapshot LSN {lsn} on timeline {tli} lies past \
             {switch}, where timeline {new} branched off timeline {old} when replica {replica} was promoted at {at})"
        )
    }))
}

/// Stream `path` into an open `COPY … FROM STDIN`, hashing as it goes, and fail before
/// the COPY ends if the bytes differ from the manifest or from what the queue recorded.
/// Checking while loading (not before) leaves no window for the file to change between
/// check and load.
pub(crate) async fn copy_checked(
    tx: &Transaction<'_>,
    task: &Claimed,
    copy_sql: &str,
    checked: &Checked,
) -> Result<u64, UploadError> {
    let sink = tx
        .copy_in(copy_sql)
        .await
        .map_err(UploadError::db("starting COPY"))?;
    futures_util::pin_mut!(sink);
    let io = |e| UploadError::Io {
        path: checked.path.clone(),
        source: e,
    };
    let mut file = tokio::fs::File::open(&checked.path).await.map_err(io)?;
    let mut hasher = Md5::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        if size > checked.expected.size || checked.recorded.as_ref().is_some_and(|(_, s)| size > *s)
        {
            break;
        }
        sink.send(bytes::Bytes::copy_from_slice(&buf[..n]))
            .await
            .map_err(UploadError::db("COPY"))?;
    }
    let md5 = hex::encode(hasher.finalize());
    if size != checked.expected.size || md5 != checked.expected.md5 {
        // Dropping the sink aborts the COPY; the caller's transaction rolls back.
        return Err(rejected(
            task,
            format!(
                "data file {} differs from the manifest (size {size} vs {}, md5 {md5} vs {})",
                checked.path.display(),
                checked.expected.size,
                checked.expected.md5
            ),
        ));
    }
    if let Some((want_md5, want_size)) = &checked.recorded {
        if size != *want_size || md5 != *want_md5 {
            return Err(rejected(
                task,
                format!(
                    "data file {} differs from what was recorded when the task was queued \
                     (size {size} vs {want_size}, md5 {md5} vs {want_md5})",
                    checked.path.display()
                ),
            ));
        }
    }
    sink.as_mut()
        .finish()
        .await
        .map_err(UploadError::db("COPY"))
}
