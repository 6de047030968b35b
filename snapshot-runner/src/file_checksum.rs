//! `file_checksum`: a catalog table on the frozen replica lists files (path relative to
//! a root directory, stored md5, optionally size and ingest time); parallel readers check
//! each file against it.
//!
//! The catalog is read in key order through a portal, a batch at a time, and handed to
//! blocking reader threads through a bounded channel, so memory does not grow with the
//! store. Each reader hashes with sequential reads (and tells the kernel so). A path
//! never leads out of the root: absolute paths and `..` are refused, and a symlink that
//! resolves outside the root is reported, never read.
//!
//! With `files_per_run`, a run checks that many files after the cursor (the last key the
//! previous run checked) and wraps to the start at the end of the catalog, so successive
//! runs cover every file once per sweep.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::catalog::{column, key_order_error, resolve_table, stored_md5_expr};
use crate::findings_scan::{FindingsScan, ScanEnd};
use crate::ident::{quote_ident, QualifiedName};
use crate::md5file::FileMd5;
use crate::progress::Counters;
use crate::results::data_files::CsvFile;
use crate::results::{FileChecksumFindings, FindingsPlan};
use crate::session::or_cancelled;
use crate::task::fields::{
    at_least_one, max_findings_or_default, parallelism_or_default, parallelism_within_cap, required,
};
use crate::task::{FieldError, TaskFields, TaskReport};
use crate::{ScanContext, ScanError};

/// Read size of the file readers. Disk reads are large anyway: with
/// `POSIX_FADV_SEQUENTIAL` the kernel's readahead fetches big sequential chunks whatever
/// the read size. A buffer that stays in the CPU cache between the copy and the hash is
/// what matters here: 64 KiB hashed ~10% faster than 1 MiB in scripts/bench.
const READ_BUF: usize = 64 << 10;

/// Catalog rows handed to the readers at once. Readers still take them one at a time,
/// so the soft deadline and the cursor stay per file.
const JOB_BATCH: usize = 64;

/// What more than `max_findings` findings most likely mean.
const FLOOD_HINT: &str = "is the checksum column right?";

/// Config of a `file_checksum` task. Names are in SQL syntax.
#[derive(Debug, Clone)]
pub struct FileChecksumSpec {
    /// The catalog table listing the files.
    pub table: String,
    /// Key column (orderable): the scan order and the cursor.
    pub key: String,
    /// Column of paths, relative to `root`.
    pub path: String,
    /// Stored md5 column: hex text, 16-byte bytea or uuid.
    pub checksum: String,
    /// Column of file sizes in bytes (integer), if the catalog has one.
    pub size: Option<String>,
    /// The directory the paths are relative to (on the host running pgmaint).
    pub root: PathBuf,
    /// Only check files ingested within this many days (needs `ingested_at`).
    pub age_in_days: Option<u32>,
    /// Column holding the ingest time (timestamp, timestamptz or date).
    pub ingested_at: Option<String>,
    /// Check at most this many files per run, carrying on from the cursor next time.
    pub files_per_run: Option<u64>,
    /// Files read at once, each by its own thread.
    pub parallelism: usize,
    /// More findings than this fail the task (`max_findings`).
    pub max_findings: u64,
}

impl FileChecksumSpec {
    /// The config fields of this kind.
    pub const FIELDS: &'static [&'static str] = &[
        "table",
        "key",
        "path",
        "checksum",
        "size",
        "root",
        "age_in_days",
        "ingested_at",
        "files_per_run",
        "parallelism",
        "max_findings",
    ];

    /// The spec config's fields describe, checked.
    pub fn from_fields(f: &TaskFields) -> Result<Self, FieldError> {
        let spec = FileChecksumSpec {
            table: required("table", &f.table)?,
            key: required("key", &f.key)?,
            path: required("path", &f.path)?,
            checksum: required("checksum", &f.checksum)?,
            size: f.size.clone(),
            root: required("root", &f.root)?,
            age_in_days: f.age_in_days,
            ingested_at: f.ingested_at.clone(),
            files_per_run: f.files_per_run,
            parallelism: parallelism_or_default(f.parallelism),
            max_findings: max_findings_or_default(f.max_findings)?,
        };
        spec.validate()?;
        parallelism_within_cap(f.parallelism)?;
        Ok(spec)
    }

    /// Check what the scan relies on, however the spec was made. (Whether `root` is a
    /// directory is checked when the task is prepared, on the host that reads it.)
    pub fn validate(&self) -> Result<(), FieldError> {
        if !self.root.is_absolute() {
            return Err(FieldError::invalid(
                "root",
                format!("{} must be an absolute path", self.root.display()),
            ));
        }
        match (self.age_in_days, &self.ingested_at) {
            (Some(0), _) => return Err(FieldError::invalid("age_in_days", "must be at least 1")),
            (Some(_), None) => {
                return Err(FieldError::conflict(
                    "age_in_days",
                    "needs ingested_at, the column of ingest times",
                ))
            }
            (None, Some(_)) => {
                return Err(FieldError::conflict("ingested_at", "needs age_in_days"))
            }
            _ => {}
        }
        if let Some(n) = self.files_per_run {
            at_least_one("files_per_run", n)?;
        }
        at_least_one("max_findings", self.max_findings)?;
        at_least_one("parallelism", self.parallelism as u64)
    }
}

pub(crate) struct PreparedFileChecksum {
    pub(crate) table: QualifiedName,
    key: String,
    key_type: String,
    /// `key::text, path::text, stored md5, size` (the select list).
    select: String,
    /// `ingested >= now() - …` filter, if age_in_days is set.
    age_filter: Option<(String, i32)>,
    /// Canonical root.
    root: PathBuf,
    files_per_run: Option<u64>,
    parallelism: usize,
    max_findings: u64,
    estimated_rows: u64,
}

pub(crate) async fn prepare(
    client: &Client,
    spec: &FileChecksumSpec,
) -> Result<PreparedFileChecksum, ScanError> {
    let root = spec
        .root
        .canonicalize()
        .map_err(|e| ScanError::Config(format!("root: {}: {e}", spec.root.display())))?;
    if !root.is_dir() {
        return Err(ScanError::Config(format!(
            "root: {} is not a directory",
            spec.root.display()
        )));
    }

    let (oid, table, estimated_rows) = resolve_table(client, &spec.table).await?;
    let key = column(client, oid, "key", &spec.key, &table).await?;
    let path = column(client, oid, "path", &spec.path, &table).await?;
    if path.category != "S" {
        return Err(path.wrong_type("path", "file_checksum", "text"));
    }
    let checksum = column(client, oid, "checksum", &spec.checksum, &table).await?;
    let stored = stored_md5_expr(&checksum, "file_checksum")?;
    let size = match &spec.size {
        None => "NULL::int8".to_string(),
        Some(s) => {
            let c = column(client, oid, "size", s, &table).await?;
            if !matches!(c.type_name.as_str(), "int2" | "int4" | "int8" | "numeric") {
                return Err(c.wrong_type("size", "file_checksum", "an integer"));
            }
            format!("{}::int8", quote_ident(&c.name))
        }
    };
    let age_filter = match (&spec.ingested_at, spec.age_in_days) {
        (Some(col), Some(days)) => {
            let c = column(client, oid, "ingested_at", col, &table).await?;
            if c.category != "D" {
                let needs = "a timestamp or date";
                return Err(c.wrong_type("ingested_at", "file_checksum", needs));
            }
            let days = i32::try_from(days)
                .map_err(|_| ScanError::Config("age_in_days: too large".into()))?;
            Some((quote_ident(&c.name), days))
        }
        _ => None,
    };
    let k = quote_ident(&key.name);
    let prepared = PreparedFileChecksum {
        table,
        select: format!(
            "{k}::text, {}::text, {stored}, {size}",
            quote_ident(&path.name)
        ),
        key: k,
        key_type: key.type_sql,
        age_filter,
        root,
        files_per_run: spec.files_per_run,
        parallelism: spec.parallelism,
        max_findings: spec.max_findings,
        estimated_rows,
    };
    // Plan the real query once: proves the key is orderable and the cursor cast works.
    let (sql, _) = prepared.pass_query(Pass::After);
    let context = format!("checking the catalog query on {}", prepared.table);
    client
        .prepare(&sql)
        .await
        .map_err(key_order_error(&prepared.key_type, context))?;
    Ok(prepared)
}

/// Which part of the key range a catalog query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Everything (no cursor).
    All,
    /// Keys after the cursor.
    After,
    /// Keys up to and including the cursor (the wrap-around).
    UpTo,
}

impl PreparedFileChecksum {
    /// SQL of one pass; `$1` is the cursor (if the pass uses it), then the age window in
    /// days, then the LIMIT (if files_per_run is set), in that order.
    fn pass_query(&self, pass: Pass) -> (String, Vec<&'static str>) {
        let (k, t) = (&self.key, &self.key_type);
        let mut filters = vec![format!("{k} IS NOT NULL")];
        let mut params = Vec::new();
        match pass {
            Pass::All => {}
            Pass::After => {
                params.push("cursor");
                filters.push(format!("{k} > ${}::text::{t}", params.len()));
            }
            Pass::UpTo => {
                params.push("cursor");
                filters.push(format!("{k} <= ${}::text::{t}", params.len()));
            }
        }
        if let Some((col, _)) = &self.age_filter {
            params.push("days");
            filters.push(format!(
                "{col} >= now() - make_interval(days => ${}::int4)",
                params.len()
            ));
        }
        let mut sql =
            // ORDER BY the qualified column: a bare name would match the `key::text` output
            // column first, and sort as text (1, 10, 2, …).
            format!(
                "SELECT {} FROM {} AS catalog WHERE {} ORDER BY catalog.{k}",
                self.select,
                self.table.quoted(),
                filters.join(" AND ")
            );
        if self.files_per_run.is_some() {
            params.push("limit");
            sql.push_str(&format!(" LIMIT ${}::int8", params.len()));
        }
        (sql, params)
    }
}

/// One catalog row, handed to a reader thread.
struct Job {
    key: String,
    path: Option<String>,
    stored: Option<String>,
    size: Option<i64>,
}

pub(crate) async fn run(
    name: &str,
    p: &PreparedFileChecksum,
    ctx: &ScanContext,
    deadline: Option<Instant>,
    cursor: Option<&str>,
    report: &mut TaskReport,
) -> Result<(), ScanError> {
    let total = match p.files_per_run {
        Some(n) => n.min(p.estimated_rows.max(1)),
        None => p.estimated_rows,
    };
    let limit = (p.max_findings, FLOOD_HINT);
    let scan = FindingsScan::start(ctx, name, "files", Some(total), limit)?;
    let relation = p.table.to_string();
    let (jobs, rx) = tokio::sync::mpsc::channel::<Vec<Job>>(p.parallelism * 2);
    let queue = Arc::new(Mutex::new(JobQueue {
        rx,
        pending: std::collections::VecDeque::new(),
        deadline,
        last_taken: None,
        skipped: false,
    }));
    let readers = spawn_readers(p, &scan, &queue, &relation);
    let dispatched = dispatch(p, ctx, deadline, cursor, &jobs, &scan.stop).await;
    drop(jobs);
    let reader_error = join_readers(readers, &p.root).await;
    let ended = match (dispatched, reader_error) {
        (Err(ScanError::Cancelled), Some(e)) | (Ok(_), Some(e)) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(_), None) if scan.stop.is_cancelled() => Err(ScanError::Cancelled),
        (Ok(Dispatched { cut_short }), None) => {
            if cut_short || queue.lock().expect("job lock").skipped {
                Ok(ScanEnd::CutShort {
                    note: Some(format!("soft_timeout reached after {} files", scan.items())),
                })
            } else {
                Ok(ScanEnd::Complete)
            }
        }
    };
    let plan = FindingsPlan::FileChecksum(FileChecksumFindings {
        relation,
        schema: p.table.schema.clone(),
        table: p.table.name.clone(),
        root: p.root.display().to_string(),
    });
    scan.finish(report, ended, plan).await?;
    // Files are taken in key order and every file taken has been checked, so the last
    // key taken is where the next run carries on.
    if p.files_per_run.is_some() {
        report.cursor = queue
            .lock()
            .expect("job lock")
            .last_taken
            .clone()
            .or_else(|| cursor.map(str::to_string));
    }
    Ok(())
}

/// Reader threads: blocking reads with big buffers, fed through a bounded channel.
fn spawn_readers(
    p: &PreparedFileChecksum,
    scan: &FindingsScan,
    queue: &Arc<Mutex<JobQueue>>,
    relation: &str,
) -> Vec<tokio::task::JoinHandle<Result<(), ScanError>>> {
    (0..p.parallelism)
        .map(|_| {
            let (queue, sink, counters, stop, root, relation, limit) = (
                queue.clone(),
                scan.sink.clone(),
                scan.counters.clone(),
                scan.stop.clone(),
                p.root.clone(),
                relation.to_string(),
                scan.limit(),
            );
            tokio::task::spawn_blocking(move || {
                let read = reader(&queue, &sink, &counters, &stop, &root, &relation, limit);
                if read.is_err() {
                    // The dispatcher waits for room in the job queue: without readers
                    // it would wait until the run's max_pause (the root gone, the
                    // findings file unwritable). Stop the task; its error is this one.
                    stop.cancel();
                }
                read
            })
        })
        .collect()
}

/// Wait for every reader; the first error one of them met, if any.
async fn join_readers(
    readers: Vec<tokio::task::JoinHandle<Result<(), ScanError>>>,
    root: &Path,
) -> Option<ScanError> {
    let mut reader_error = None;
    for r in readers {
        match r.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => reader_error = reader_error.or(Some(e)),
            Err(join) => {
                reader_error = reader_error.or(Some(ScanError::Io {
                    path: root.to_path_buf(),
                    cause: io::Error::other(format!("file reader panicked: {join}")),
                }))
            }
        }
    }
    reader_error
}

struct Dispatched {
    cut_short: bool,
}

/// The readers' side of the job channel. Taking a job and checking the soft deadline
/// happen under one lock, so the files checked are always a prefix of the key order,
/// however the readers interleave: the cursor never skips a file.
struct JobQueue {
    /// Jobs come in batches ([`JOB_BATCH`]): a hand-over per file cost more than a
    /// small file's check.
    rx: tokio::sync::mpsc::Receiver<Vec<Job>>,
    /// The rest of the batch received last, taken one job at a time.
    pending: std::collections::VecDeque<Job>,
    deadline: Option<Instant>,
    /// Key of the last job taken to be checked.
    last_taken: Option<String>,
    /// A job was dropped because the soft deadline had passed.
    skipped: bool,
}

impl JobQueue {
    /// The next job to check, or `None` when the channel is closed. Past the deadline,
    /// queued jobs are drained unchecked.
    fn take(queue: &Mutex<JobQueue>) -> Option<Job> {
        let mut q = queue.lock().expect("job lock");
        loop {
            let Some(job) = q.pending.pop_front() else {
                let batch = q.rx.blocking_recv()?;
                q.pending.extend(batch);
                continue;
            };
            if q.deadline.is_some_and(|d| Instant::now() >= d) {
                q.skipped = true;
                continue;
            }
            q.last_taken = Some(job.key.clone());
            return Some(job);
        }
    }
}

/// Read the catalog in key order and queue each row for the readers. With a cursor and
/// `files_per_run`, read the keys after the cursor, then wrap to the start.
async fn dispatch(
    p: &PreparedFileChecksum,
    ctx: &ScanContext,
    deadline: Option<Instant>,
    cursor: Option<&str>,
    jobs: &tokio::sync::mpsc::Sender<Vec<Job>>,
    stop: &CancellationToken,
) -> Result<Dispatched, ScanError> {
    let (mut client, cancel_token) = ctx.session().await?;
    let context = || format!("reading the catalog {}", p.table);
    let tx = crate::session::snapshot_transaction(&mut client)
        .await
        .map_err(ScanError::db(context()))?;
    let passes: &[Pass] = match (cursor, p.files_per_run) {
        (Some(_), Some(_)) => &[Pass::After, Pass::UpTo],
        _ => &[Pass::All],
    };
    let mut done = Dispatched { cut_short: false };
    let mut count: u64 = 0;
    for &pass in passes {
        let remaining = p.files_per_run.map(|n| n - count);
        if remaining == Some(0) {
            break;
        }
        let (sql, names) = p.pass_query(pass);
        let days = p.age_filter.as_ref().map(|a| a.1);
        let limit = remaining.map(|n| n as i64);
        let cursor_text = cursor.map(str::to_string);
        let params: Vec<&(dyn ToSql + Sync)> = names
            .iter()
            .map(|n| -> &(dyn ToSql + Sync) {
                match *n {
                    "cursor" => &cursor_text,
                    "days" => &days,
                    _ => &limit,
                }
            })
            .collect();
        let stmt = tx.prepare(&sql).await.map_err(ScanError::db(context()))?;
        let portal = tx.bind(&stmt, &params).await.map_err(|e| match e.code() {
            Some(&tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION) => ScanError::Config(format!(
                "stored cursor {:?} is not a valid key; DELETE FROM pgmaint.task_cursors for this task to start over",
                cursor.unwrap_or("")
            )),
            _ => ScanError::db(context())(e),
        })?;
        loop {
            let batch = tx.query_portal(&portal, ctx.batch_rows);
            let rows = or_cancelled(batch, stop, &cancel_token)
                .await?
                .map_err(ScanError::db(context()))?;
            let n = rows.len();
            let mut batch = Vec::with_capacity(JOB_BATCH);
            for row in rows {
                // Checked per file: the rest of the batch is simply not dispatched, and
                // the cursor stays at the last file that was.
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    done.cut_short = true;
                    return Ok(done);
                }
                batch.push(Job {
                    key: row.get(0),
                    path: row.get(1),
                    stored: row.get(2),
                    size: row.get(3),
                });
                count += 1;
                if batch.len() == JOB_BATCH && !send(jobs, &mut batch, stop).await? {
                    return Ok(done);
                }
            }
            // The rest now: the readers need not wait for the next round trip.
            if !batch.is_empty() && !send(jobs, &mut batch, stop).await? {
                return Ok(done);
            }
            if n < ctx.batch_rows as usize {
                break;
            }
        }
    }
    Ok(done)
}

/// Hand `batch` to the readers (leaving it empty); `false` if every reader is gone (one
/// of them failed, and reports why).
async fn send(
    jobs: &tokio::sync::mpsc::Sender<Vec<Job>>,
    batch: &mut Vec<Job>,
    stop: &CancellationToken,
) -> Result<bool, ScanError> {
    let full = std::mem::replace(batch, Vec::with_capacity(JOB_BATCH));
    tokio::select! {
        sent = jobs.send(full) => Ok(sent.is_ok()),
        _ = stop.cancelled() => Err(ScanError::Cancelled),
    }
}

/// A reader thread: check files until the channel closes.
fn reader(
    queue: &Mutex<JobQueue>,
    sink: &Mutex<CsvFile>,
    counters: &Counters,
    stop: &CancellationToken,
    root: &Path,
    relation: &str,
    limit: (u64, &'static str),
) -> Result<(), ScanError> {
    let mut buf = vec![0u8; READ_BUF];
    let mut hasher = FileMd5::new();
    // The root, opened once: each file is opened beneath it in one system call.
    let root_dir = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
        .open(root)
        .map_err(ScanError::io(root))?;
    let mut reading = Reading {
        root,
        root_dir: &root_dir,
        buf: &mut buf,
        hasher: &mut hasher,
        counters,
        stop,
    };
    loop {
        let Some(job) = JobQueue::take(queue) else {
            return Ok(());
        };
        if stop.is_cancelled() {
            return Ok(());
        }
        let outcome = reading.check_file(&job);
        if let Some((finding, detail)) = outcome {
            if finding == "cancelled" {
                return Ok(());
            }
            crate::findings_scan::admit(counters, stop, limit.0, limit.1)?;
            sink.lock().expect("sink lock").write([
                relation,
                job.key.as_str(),
                finding,
                detail.as_str(),
            ])?;
        }
        counters.items.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where a catalog path leads, if it stays inside the root.
enum Resolved {
    Inside(PathBuf),
    Outside(String),
    Missing(String),
    Unreadable(String),
}

/// What the text of `rel` alone says against it, if anything.
fn resolve_lexically(rel: &str) -> Option<Resolved> {
    let relp = Path::new(rel);
    if rel.is_empty() {
        return Some(Resolved::Missing("empty path".into()));
    }
    if rel.contains('\0') {
        return Some(Resolved::Outside("path contains a NUL byte".into()));
    }
    if relp.is_absolute() {
        return Some(Resolved::Outside("absolute path".into()));
    }
    if relp.components().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::Prefix(_) | Component::RootDir
        )
    }) {
        return Some(Resolved::Outside("path contains '..'".into()));
    }
    None
}

/// Resolve `rel` under the canonical `root` without ever leaving it.
fn resolve(root: &Path, rel: &str) -> Resolved {
    if let Some(r) = resolve_lexically(rel) {
        return r;
    }
    let full = root.join(Path::new(rel));
    match full.canonicalize() {
        Ok(canon) if canon.starts_with(root) => Resolved::Inside(canon),
        Ok(canon) => Resolved::Outside(format!(
            "resolves to {} (a symlink leads out of the root)",
            canon.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => Resolved::Missing(format!(
                "dangling symlink to {}",
                std::fs::read_link(&full)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            )),
            _ => Resolved::Missing("no such file".into()),
        },
        Err(e) => Resolved::Unreadable(e.to_string()),
    }
}

/// What a reader thread checks files with.
struct Reading<'a> {
    /// The canonical root.
    root: &'a Path,
    /// The root, opened (`O_PATH`).
    root_dir: &'a File,
    buf: &'a mut [u8],
    /// Reused from file to file (a new MD5 context per file costs more than a small
    /// file's hashing).
    hasher: &'a mut FileMd5,
    counters: &'a Counters,
    stop: &'a CancellationToken,
}

impl Reading<'_> {
    /// Check one file. `None`: it matches. A finding otherwise (`"cancelled"` if the run
    /// was cancelled mid-file).
    fn check_file(&mut self, job: &Job) -> Option<(&'static str, String)> {
        let Some(rel) = job.path.as_deref() else {
            return Some(("missing", "path is NULL".into()));
        };
        let file = match self.open(rel) {
            Ok(f) => f,
            Err(finding) => return Some(finding),
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => return Some(("unreadable", format!("{rel}: {e}"))),
        };
        if !meta.is_file() {
            return Some(("unreadable", format!("{rel}: not a regular file")));
        }
        if let Some(expected) = job.size {
            if meta.len() as i64 != expected {
                return Some((
                    "size_differs",
                    format!("stored={expected} actual={}", meta.len()),
                ));
            }
        }
        let hashed = self.md5_of(file, meta.len());
        let Some(stored) = job.stored.as_deref() else {
            return match hashed {
                Ok(Some(m)) => Some(("null_checksum", format!("computed={m}"))),
                Ok(None) => Some(("cancelled", String::new())),
                Err(e) => Some(("unreadable", format!("{rel}: {e}"))),
            };
        };
        match hashed {
            Ok(Some(computed)) if computed == stored => None,
            Ok(Some(computed)) => {
                Some(("mismatch", format!("stored={stored} computed={computed}")))
            }
            Ok(None) => Some(("cancelled", String::new())),
            Err(e) => Some(("unreadable", format!("{rel}: {e}"))),
        }
    }

    /// Open catalog path `rel` for reading, never leaving the root; the finding if it
    /// cannot be.
    ///
    /// The common case costs one system call: `openat2` beneath the root's descriptor
    /// (`RESOLVE_BENEATH`: the kernel refuses any step out of it, symlinks included).
    /// Whatever it refuses or fails takes the slow path (resolve every component, then
    /// open the canonical path), which says why in the words it always did; so does a
    /// kernel without `openat2` (before 5.6).
    fn open(&self, rel: &str) -> Result<File, (&'static str, String)> {
        if let Some(outside) = lexically_outside(rel) {
            return Err(outside);
        }
        if let Some(file) = open_beneath(self.root_dir, rel) {
            return Ok(file);
        }
        let path = match resolve(self.root, rel) {
            Resolved::Inside(p) => p,
            Resolved::Outside(why) => return Err(("path_outside_root", format!("{rel}: {why}"))),
            Resolved::Missing(why) => return Err(("missing", format!("{rel}: {why}"))),
            Resolved::Unreadable(why) => return Err(("unreadable", format!("{rel}: {why}"))),
        };
        // The canonical path has no symlinks left; O_NOFOLLOW refuses one swapped in since.
        // O_NONBLOCK: opening a FIFO (or a device) must not hang the reader, and with it the
        // pause; regular files ignore the flag.
        match File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(("missing", format!("{rel}: no such file")))
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err((
                "path_outside_root",
                format!("{rel}: became a symlink while checking"),
            )),
            Err(e) => Err(("unreadable", format!("{rel}: {e}"))),
        }
    }

    /// MD5 of a file of `len` bytes (at the time of `fstat`), read front to back; `None`
    /// if cancelled mid-way.
    fn md5_of(&mut self, mut file: File, len: u64) -> io::Result<Option<String>> {
        // Tell the kernel we read front to back, so that it reads ahead more
        // aggressively; a file that one read takes whole gains nothing from it.
        if len > self.buf.len() as u64 {
            use std::os::fd::AsRawFd;
            // SAFETY: the descriptor is open for the duration of the call.
            unsafe {
                libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
            }
        }
        self.hasher.restart();
        loop {
            if self.stop.is_cancelled() {
                return Ok(None);
            }
            let n = match file.read(self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.hasher.update(&self.buf[..n]);
            self.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(Some(self.hasher.hex()))
    }
}

/// The finding about a path that leaves the root by its text alone (absolute, `..`, a
/// NUL byte) or names nothing (empty).
fn lexically_outside(rel: &str) -> Option<(&'static str, String)> {
    let why = match resolve_lexically(rel) {
        None => return None,
        Some(Resolved::Outside(why)) => ("path_outside_root", why),
        Some(Resolved::Missing(why)) => ("missing", why),
        Some(Resolved::Unreadable(why)) => ("unreadable", why),
        Some(Resolved::Inside(_)) => return None,
    };
    Some((why.0, format!("{rel}: {}", why.1)))
}

/// `rel` opened read-only beneath `root_dir` by `openat2(RESOLVE_BENEATH |
/// RESOLVE_NO_MAGICLINKS)`, following symlinks only while they stay beneath it; `None`
/// on any failure (the caller's slow path says why).
fn open_beneath(root_dir: &File, rel: &str) -> Option<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let path = std::ffi::CString::new(rel).ok()?;
    // SAFETY: open_how is plain data; zeroed is its documented "no options" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the path is NUL-terminated, `how` lives across the call and its size is
    // passed; the returned descriptor, if any, is owned by the File made from it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor that nothing else owns.
    Some(unsafe { File::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_leave_the_root() {
        let base = std::env::temp_dir().join(format!("pgmaint-fc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/a"), b"x").unwrap();
        std::fs::write(base.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(base.join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("d/a", root.join("in")).unwrap();
        std::os::unix::fs::symlink(&base, root.join("up")).unwrap();
        let root = root.canonicalize().unwrap();
        assert!(matches!(resolve(&root, "d/a"), Resolved::Inside(_)));
        assert!(matches!(resolve(&root, "in"), Resolved::Inside(_)));
        assert!(matches!(resolve(&root, "./d/a"), Resolved::Inside(_)));
        assert!(matches!(resolve(&root, "out"), Resolved::Outside(_)));
        assert!(matches!(resolve(&root, "up/secret"), Resolved::Outside(_)));
        assert!(matches!(resolve(&root, "../secret"), Resolved::Outside(_)));
        assert!(matches!(
            resolve(&root, "d/../../secret"),
            Resolved::Outside(_)
        ));
        assert!(matches!(
            resolve(&root, "/etc/passwd"),
            Resolved::Outside(_)
        ));
        assert!(matches!(resolve(&root, "nope"), Resolved::Missing(_)));

        // Opening takes the one-call path where it can, and says what the slow path
        // says where it cannot: the same findings either way.
        std::os::unix::fs::symlink(root.join("d/a"), root.join("abs_in")).unwrap();
        let root_dir = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
            .open(&root)
            .unwrap();
        let (mut buf, mut hasher) = (vec![0u8; 16], FileMd5::new());
        let (counters, stop) = (Counters::default(), CancellationToken::new());
        let reading = Reading {
            root: &root,
            root_dir: &root_dir,
            buf: &mut buf,
            hasher: &mut hasher,
            counters: &counters,
            stop: &stop,
        };
        for inside in ["d/a", "in", "./d/a", "abs_in"] {
            assert!(reading.open(inside).is_ok(), "{inside}");
        }
        let kind = |rel: &str| reading.open(rel).err().map(|(k, d)| (k, d.contains(rel)));
        for outside in ["out", "up/secret", "../secret", "/etc/passwd"] {
            assert_eq!(
                kind(outside),
                Some(("path_outside_root", true)),
                "{outside}"
            );
        }
        assert_eq!(kind("nope"), Some(("missing", true)));
        assert_eq!(
            reading.open("nope").unwrap_err().1,
            "nope: no such file".to_string()
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
