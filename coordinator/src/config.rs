//! The TOML config file, with environment overrides, validated into [`Config`].
//!
//! Every error names the field at fault (`tasks[1].kind`, `limits.max_pause`, …) in one
//! line, and is a [`UsageError`] (exit code 2).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use snapshot_runner::ident::QualifiedName;
use snapshot_runner::{
    AmcheckSpec, ExportSpec, FileChecksumSpec, MaterializeSpec, RowChecksumSpec, TaskSpec,
};

use crate::units::{parse_bytes, parse_duration};
use crate::UsageError;

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The primary.
    pub primary: Dsn,
    /// Replicas pgmaint may pause.
    pub replicas: Vec<ReplicaConfig>,
    /// Guards of the pause.
    pub limits: Limits,
    /// Where result files go.
    pub results_dir: PathBuf,
    /// Scan settings.
    pub scan: ScanSettings,
    /// Upload worker settings.
    pub uploader: UploaderSettings,
    /// Tasks, in config order.
    pub tasks: Vec<TaskConfig>,
}

/// A connection string and the config field it came from (for error messages).
#[derive(Debug, Clone)]
pub struct Dsn {
    /// Parsed libpq string or URL.
    pub config: tokio_postgres::Config,
    /// `primary.dsn`, `replicas[0].dsn`, or the environment variable.
    pub field: String,
}

/// One replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Name used in runs, leases and results.
    pub name: String,
    /// How to reach it.
    pub dsn: Dsn,
}

/// Limits that guard a pause.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest pause; over it the cycle aborts its scans and resumes.
    pub max_pause: Duration,
    /// Largest receive − replay backlog, in bytes.
    pub max_replay_backlog: u64,
    /// Lease on the primary; renewed every third of it.
    pub lease: Duration,
    /// How long to wait for `pg_get_wal_replay_pause_state()` to reach `paused`.
    pub pause_timeout: Duration,
}

/// How scans run.
#[derive(Debug, Clone)]
pub struct ScanSettings {
    /// `lock_timeout` of every scan session.
    pub lock_timeout: Duration,
    /// Rows per fetch.
    pub batch_rows: i32,
    /// Interval of progress log lines when not on a terminal.
    pub progress_interval: Duration,
}

/// How the upload worker runs.
#[derive(Debug, Clone)]
pub struct UploaderSettings {
    /// Lease of a running upload task.
    pub lease: Duration,
    /// Attempts before a task is failed.
    pub max_attempts: i32,
    /// Concurrent slots of `pgmaint uploader`.
    pub slots: usize,
    /// Poll interval, in case a NOTIFY is missed.
    pub poll_interval: Duration,
    /// `lock_timeout` of an apply.
    pub lock_timeout: Duration,
    /// On SIGTERM/SIGINT, how long a task in hand may take to finish before it is
    /// stopped (rolled back) and released to another worker.
    pub shutdown_grace: Duration,
}

/// One task.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// Unique name; also the data file name.
    pub name: String,
    /// What it does.
    pub spec: TaskSpec,
    /// Stop cleanly with partial results after this long.
    pub soft_timeout: Option<Duration>,
    /// Scheduling interval for `pgmaint daemon` (parsed and validated now; the
    /// scheduler that reads it is not built yet).
    #[allow(dead_code)]
    pub every: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    primary: Option<RawPrimary>,
    #[serde(default)]
    replicas: Vec<RawReplica>,
    #[serde(default)]
    limits: RawLimits,
    results: Option<RawResults>,
    #[serde(default)]
    scan: RawScan,
    #[serde(default)]
    uploader: RawUploader,
    #[serde(default)]
    tasks: Vec<RawTask>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrimary {
    dsn: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplica {
    name: String,
    dsn: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_pause: Option<String>,
    max_replay_backlog: Option<String>,
    lease: Option<String>,
    pause_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResults {
    dir: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawScan {
    lock_timeout: Option<String>,
    batch_rows: Option<i32>,
    progress_interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUploader {
    lease: Option<String>,
    max_attempts: Option<i32>,
    slots: Option<usize>,
    poll_interval: Option<String>,
    lock_timeout: Option<String>,
    shutdown_grace: Option<String>,
}

/// Every field any kind takes; each kind checks that it got what it needs and nothing
/// it does not understand.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Option<String>,
    kind: Option<String>,
    soft_timeout: Option<String>,
    every: Option<String>,
    table: Option<String>,
    key: Option<String>,
    content: Option<String>,
    checksum: Option<String>,
    parallelism: Option<usize>,
    /// file_checksum: column of paths relative to `root`.
    path: Option<String>,
    /// file_checksum: column of file sizes.
    size: Option<String>,
    /// file_checksum: directory the paths are relative to.
    root: Option<PathBuf>,
    /// file_checksum: only files ingested within this many days.
    age_in_days: Option<u32>,
    /// file_checksum: column of ingest times (with `age_in_days`).
    ingested_at: Option<String>,
    /// file_checksum: files checked per run; a cursor carries on next run.
    files_per_run: Option<u64>,
    /// materialize, export: a query run on the snapshot.
    query: Option<String>,
    /// materialize: the table on the primary the result replaces.
    target: Option<String>,
    /// materialize: merge on these columns instead of swapping.
    merge_key: Option<Vec<String>>,
    /// amcheck, export: tables.
    tables: Option<Vec<String>>,
    /// amcheck: also check that every heap tuple is indexed.
    heapallindexed: Option<bool>,
}

impl RawTask {
    /// The kind-specific fields that are set, by config name.
    fn fields_set(&self) -> Vec<&'static str> {
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
        ];
        set.iter().filter(|(_, on)| *on).map(|(f, _)| *f).collect()
    }
}

/// Task kinds and the kind-specific fields each understands.
const KINDS: &[(&str, &[&str])] = &[
    (
        "row_checksum",
        &["table", "key", "content", "checksum", "parallelism"],
    ),
    (
        "file_checksum",
        &[
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
        ],
    ),
    ("materialize", &["query", "target", "merge_key"]),
    ("amcheck", &["tables", "heapallindexed", "parallelism"]),
    ("export", &["tables", "query"]),
];

/// Where to find the config and what the environment overrides.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `PGMAINT_PRIMARY`: the primary's DSN.
    pub primary: Option<String>,
    /// `PGMAINT_REPLICA`: the DSN of the replica (the first in config, or a lone one).
    pub replica: Option<String>,
}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

fn duration(field: &str, v: &Option<String>, default: Duration) -> Result<Duration, UsageError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|e| usage(format!("{field}: {e}"))),
    }
}

fn parse_dsn(field: &str, text: &str) -> Result<Dsn, UsageError> {
    if let Some(mode) = ["verify-ca", "verify-full"]
        .iter()
        .find(|m| text.contains(*m))
    {
        return Err(usage(format!(
            "{field}: sslmode={mode} is not supported yet (sslmode=require encrypts without verifying the certificate)"
        )));
    }
    let config: tokio_postgres::Config = text
        .parse()
        .map_err(|e| usage(format!("{field}: invalid connection string: {e}")))?;
    Ok(Dsn {
        config,
        field: field.to_string(),
    })
}

/// Task names become file names and appear in SQL values only as bound parameters.
fn valid_task_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Config {
    /// Read and validate a config file, then apply the environment overrides.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, UsageError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("config {}: {e}", path.display())))?;
        Self::parse(&text, overrides)
            .map_err(|e| usage(format!("config {}: {}", path.display(), e.0)))
    }

    /// Validate config text.
    pub fn parse(text: &str, overrides: &Overrides) -> Result<Config, UsageError> {
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let msg = e.inner().message().trim().replace('\n', "; ");
            if path == "." || path.is_empty() {
                let line = e
                    .inner()
                    .span()
                    .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
                usage(match line {
                    Some(l) => format!("line {l}: {msg}"),
                    None => msg,
                })
            } else {
                usage(format!("{path}: {msg}"))
            }
        })?;

        let primary = match (&overrides.primary, &raw.primary) {
            (Some(dsn), _) => parse_dsn("PGMAINT_PRIMARY", dsn)?,
            (None, Some(p)) => parse_dsn("primary.dsn", &p.dsn)?,
            (None, None) => return Err(usage("primary.dsn: missing (or set PGMAINT_PRIMARY)")),
        };

        let mut replicas = Vec::new();
        for (i, r) in raw.replicas.iter().enumerate() {
            let field = format!("replicas[{i}]");
            if r.name.is_empty() || !valid_task_name(&r.name) {
                return Err(usage(format!(
                    "{field}.name: {:?} is not a valid name (letters, digits, - _ .)",
                    r.name
                )));
            }
            if replicas.iter().any(|x: &ReplicaConfig| x.name == r.name) {
                return Err(usage(format!(
                    "{field}.name: duplicate replica name {:?}",
                    r.name
                )));
            }
            let dsn = match (&overrides.replica, i) {
                (Some(d), 0) => parse_dsn("PGMAINT_REPLICA", d)?,
                _ => parse_dsn(&format!("{field}.dsn"), &r.dsn)?,
            };
            replicas.push(ReplicaConfig {
                name: r.name.clone(),
                dsn,
            });
        }
        if replicas.is_empty() {
            match &overrides.replica {
                Some(d) => replicas.push(ReplicaConfig { name: "replica".into(), dsn: parse_dsn("PGMAINT_REPLICA", d)? }),
                None => return Err(usage("replicas: at least one [[replicas]] entry is required (or set PGMAINT_REPLICA)")),
            }
        }

        let l = &raw.limits;
        let limits = Limits {
            max_pause: duration(
                "limits.max_pause",
                &l.max_pause,
                Duration::from_secs(2 * 3600),
            )?,
            max_replay_backlog: match &l.max_replay_backlog {
                None => 8 << 30,
                Some(s) => {
                    parse_bytes(s).map_err(|e| usage(format!("limits.max_replay_backlog: {e}")))?
                }
            },
            lease: duration("limits.lease", &l.lease, Duration::from_secs(60))?,
            pause_timeout: duration(
                "limits.pause_timeout",
                &l.pause_timeout,
                Duration::from_secs(60),
            )?,
        };
        if limits.lease < Duration::from_secs(1) {
            return Err(usage("limits.lease: must be at least 1s"));
        }
        if limits.max_pause.is_zero() {
            return Err(usage("limits.max_pause: must be more than zero"));
        }

        let results_dir = raw
            .results
            .map(|r| r.dir)
            .ok_or_else(|| usage("results.dir: missing"))?;
        if !results_dir.is_absolute() {
            return Err(usage(format!(
                "results.dir: {} must be an absolute path",
                results_dir.display()
            )));
        }

        let s = &raw.scan;
        let scan = ScanSettings {
            lock_timeout: duration("scan.lock_timeout", &s.lock_timeout, Duration::from_secs(5))?,
            batch_rows: match s.batch_rows {
                Some(n) if n < 1 => return Err(usage("scan.batch_rows: must be at least 1")),
                Some(n) => n,
                None => 2000,
            },
            progress_interval: duration(
                "scan.progress_interval",
                &s.progress_interval,
                Duration::from_secs(10),
            )?,
        };

        let u = &raw.uploader;
        let uploader = UploaderSettings {
            lease: duration("uploader.lease", &u.lease, Duration::from_secs(60))?,
            max_attempts: match u.max_attempts {
                Some(n) if n < 1 => return Err(usage("uploader.max_attempts: must be at least 1")),
                Some(n) => n,
                None => 5,
            },
            slots: match u.slots {
                Some(0) => return Err(usage("uploader.slots: must be at least 1")),
                Some(n) => n,
                None => 2,
            },
            poll_interval: duration(
                "uploader.poll_interval",
                &u.poll_interval,
                Duration::from_secs(5),
            )?,
            lock_timeout: duration(
                "uploader.lock_timeout",
                &u.lock_timeout,
                Duration::from_secs(5),
            )?,
            shutdown_grace: duration(
                "uploader.shutdown_grace",
                &u.shutdown_grace,
                Duration::from_secs(30),
            )?,
        };
        if uploader.lease < Duration::from_secs(1) {
            return Err(usage(
                "uploader.lease: must be at least 1s (it is renewed every third of it)",
            ));
        }
        if uploader.poll_interval.is_zero() {
            return Err(usage("uploader.poll_interval: must be more than zero"));
        }
        if uploader.lock_timeout.is_zero() {
            return Err(usage(
                "uploader.lock_timeout: must be more than zero (0 would wait for locks forever)",
            ));
        }

        let mut tasks: Vec<TaskConfig> = Vec::new();
        for (i, t) in raw.tasks.iter().enumerate() {
            let task = parse_task(i, t)?;
            if tasks.iter().any(|x| x.name == task.name) {
                return Err(usage(format!(
                    "tasks[{i}].name: duplicate task name {:?}",
                    task.name
                )));
            }
            tasks.push(task);
        }
        check_shared_targets(&tasks)?;

        Ok(Config {
            primary,
            replicas,
            limits,
            results_dir,
            scan,
            uploader,
            tasks,
        })
    }

    /// The replica called `name`, or the first one.
    pub fn replica(&self, name: Option<&str>) -> Result<&ReplicaConfig, UsageError> {
        match name {
            None => Ok(&self.replicas[0]),
            Some(n) => self.replicas.iter().find(|r| r.name == n).ok_or_else(|| {
                let known: Vec<&str> = self.replicas.iter().map(|r| r.name.as_str()).collect();
                usage(format!(
                    "--replica: no replica named {n:?} in config (known: {})",
                    known.join(", ")
                ))
            }),
        }
    }

    /// The tasks named in `names`, in the order given; all tasks if `names` is empty.
    pub fn select_tasks(&self, names: &[String]) -> Result<Vec<&TaskConfig>, UsageError> {
        if names.is_empty() {
            if self.tasks.is_empty() {
                return Err(usage("tasks: no [[tasks]] in config"));
            }
            return Ok(self.tasks.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.tasks.iter().find(|t| &t.name == n).ok_or_else(|| {
                    let known: Vec<&str> = self.tasks.iter().map(|t| t.name.as_str()).collect();
                    usage(format!(
                        "--task: no task named {n:?} in config (known: {})",
                        known.join(", ")
                    ))
                })
            })
            .collect()
    }
}

/// A swap replaces the whole target, so it must be the only task writing it: another
/// task's rows would be wiped by every swap, and the older-snapshot check of a swap
/// would hold back on that task's newer snapshots. Several merges may share a target
/// (each task's rows are its own). Names are compared as the catalog spells them
/// (`t`, `public.t` and `"public"."t"` are one table); a name that does not parse is
/// reported when the task runs.
fn check_shared_targets(tasks: &[TaskConfig]) -> Result<(), UsageError> {
    let writes = |t: &TaskConfig| match &t.spec {
        TaskSpec::Materialize(m) => QualifiedName::parse(&m.target).ok().map(|target| {
            (
                target,
                if m.merge_key.is_some() {
                    "merge"
                } else {
                    "swap"
                },
            )
        }),
        _ => None,
    };
    for (i, task) in tasks.iter().enumerate() {
        let Some((target, kind)) = writes(task) else {
            continue;
        };
        for earlier in &tasks[..i] {
            match writes(earlier) {
                Some((t, k)) if t == target && (k == "swap" || kind == "swap") => {
                    return Err(usage(format!(
                        "tasks[{i}].target: {target} is written by task {:?} ({k}) and task {:?} ({kind}); a swap \
                         replaces the whole table, so only merges (merge_key) may share a target",
                        earlier.name, task.name
                    )))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn parse_task(i: usize, t: &RawTask) -> Result<TaskConfig, UsageError> {
    let at = |f: &str| format!("tasks[{i}].{f}");
    let name = t
        .name
        .clone()
        .ok_or_else(|| usage(format!("{}: missing", at("name"))))?;
    if !valid_task_name(&name) {
        return Err(usage(format!(
            "{}: {name:?} is not a valid task name (1-63 letters, digits, - _ .; it names the data file)",
            at("name")
        )));
    }
    let kind = t
        .kind
        .clone()
        .ok_or_else(|| usage(format!("{}: missing (task {name:?})", at("kind"))))?;
    let need = |field: &str, v: &Option<String>| -> Result<String, UsageError> {
        v.clone().ok_or_else(|| {
            usage(format!(
                "{}: missing (task {name:?}, kind {kind})",
                at(field)
            ))
        })
    };
    let known = KINDS.iter().find(|(k, _)| *k == kind).ok_or_else(|| {
        let names: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
        usage(format!(
            "{}: unknown kind {kind:?} (task {name:?}; known kinds: {})",
            at("kind"),
            names.join(", ")
        ))
    })?;
    if let Some(extra) = t.fields_set().into_iter().find(|f| !known.1.contains(f)) {
        return Err(usage(format!(
            "{}: not a field of kind {kind} (task {name:?}; its fields: {})",
            at(extra),
            known.1.join(", ")
        )));
    }
    let parallelism = || -> Result<usize, UsageError> {
        match t.parallelism {
            Some(0) => Err(usage(format!("{}: must be at least 1", at("parallelism")))),
            Some(n) if n > 256 => Err(usage(format!("{}: at most 256", at("parallelism")))),
            Some(n) => Ok(n),
            None => Ok(std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)),
        }
    };
    let spec = match kind.as_str() {
        "row_checksum" => TaskSpec::RowChecksum(RowChecksumSpec {
            table: need("table", &t.table)?,
            key: need("key", &t.key)?,
            content: need("content", &t.content)?,
            checksum: need("checksum", &t.checksum)?,
            parallelism: parallelism()?,
        }),
        "file_checksum" => TaskSpec::FileChecksum(FileChecksumSpec {
            table: need("table", &t.table)?,
            key: need("key", &t.key)?,
            path: need("path", &t.path)?,
            checksum: need("checksum", &t.checksum)?,
            size: t.size.clone(),
            root: match &t.root {
                None => {
                    return Err(usage(format!(
                        "{}: missing (task {name:?}, kind {kind})",
                        at("root")
                    )))
                }
                Some(r) if !r.is_absolute() => {
                    return Err(usage(format!(
                        "{}: {} must be an absolute path",
                        at("root"),
                        r.display()
                    )))
                }
                Some(r) => r.clone(),
            },
            age_in_days: match (t.age_in_days, &t.ingested_at) {
                (Some(0), _) => {
                    return Err(usage(format!("{}: must be at least 1", at("age_in_days"))))
                }
                (Some(_), None) => {
                    return Err(usage(format!(
                        "{}: needs ingested_at, the column of ingest times (task {name:?})",
                        at("age_in_days")
                    )))
                }
                (None, Some(_)) => {
                    return Err(usage(format!(
                        "{}: needs age_in_days (task {name:?})",
                        at("ingested_at")
                    )))
                }
                (days, _) => days,
            },
            ingested_at: t.ingested_at.clone(),
            files_per_run: match t.files_per_run {
                Some(0) => {
                    return Err(usage(format!(
                        "{}: must be at least 1",
                        at("files_per_run")
                    )))
                }
                n => n,
            },
            parallelism: parallelism()?,
        }),
        "materialize" => TaskSpec::Materialize(MaterializeSpec {
            query: need("query", &t.query)?,
            target: need("target", &t.target)?,
            merge_key: match &t.merge_key {
                Some(k) if k.is_empty() => {
                    return Err(usage(format!(
                        "{}: list at least one column",
                        at("merge_key")
                    )))
                }
                k => k.clone(),
            },
        }),
        "amcheck" => TaskSpec::Amcheck(AmcheckSpec {
            tables: match &t.tables {
                Some(v) if v.is_empty() => {
                    return Err(usage(format!(
                        "{}: empty list (leave it out to check every table)",
                        at("tables")
                    )))
                }
                v => v.clone(),
            },
            heapallindexed: t.heapallindexed.unwrap_or(false),
            parallelism: parallelism()?,
        }),
        "export" => match (&t.tables, &t.query) {
            (Some(_), Some(_)) => {
                return Err(usage(format!(
                    "{}: give either tables or query, not both (task {name:?})",
                    at("query")
                )))
            }
            (None, None) => {
                return Err(usage(format!(
                    "{}: missing, or give a query (task {name:?}, kind {kind})",
                    at("tables")
                )))
            }
            (Some(v), None) if v.is_empty() => {
                return Err(usage(format!("{}: empty list", at("tables"))))
            }
            (tables, query) => TaskSpec::Export(ExportSpec {
                tables: tables.clone().unwrap_or_default(),
                query: query.clone(),
            }),
        },
        _ => unreachable!("checked against KINDS above"),
    };
    Ok(TaskConfig {
        soft_timeout: t
            .soft_timeout
            .as_ref()
            .map(|s| parse_duration(s).map_err(|e| usage(format!("{}: {e}", at("soft_timeout")))))
            .transpose()?,
        every: t
            .every
            .as_ref()
            .map(|s| parse_duration(s).map_err(|e| usage(format!("{}: {e}", at("every")))))
            .transpose()?,
        name,
        spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[primary]
dsn = "host=127.0.0.1 port=55432 user=postgres dbname=app"
[[replicas]]
name = "r1"
dsn  = "postgres://postgres@127.0.0.1:55433/app"
[limits]
max_pause = "2h"
max_replay_backlog = "8GB"
lease = "60s"
[results]
dir = "/var/lib/pgmaint/results"
[[tasks]]
name = "blob-integrity"
kind = "row_checksum"
table = "public.blobs"
key = "id"
content = "payload"
checksum = "payload_md5"
soft_timeout = "00:30:00"
every = "24h"
"#;

    fn err(text: &str) -> String {
        Config::parse(text, &Overrides::default()).unwrap_err().0
    }

    #[test]
    fn the_design_example_parses() {
        let c = Config::parse(GOOD, &Overrides::default()).unwrap();
        assert_eq!(c.limits.max_replay_backlog, 8 << 30);
        assert_eq!(c.tasks[0].soft_timeout, Some(Duration::from_secs(1800)));
        assert_eq!(c.replicas[0].dsn.config.get_ports(), &[55433]);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            err(&GOOD.replace("kind = \"row_checksum\"", "kind = \"nope\""))
                .starts_with("tasks[0].kind: unknown kind \"nope\"")
        );
        assert!(
            err(&GOOD.replace("max_pause = \"2h\"", "max_pause = \"2x\""))
                .starts_with("limits.max_pause: bad duration")
        );
        assert!(err(&GOOD.replace("checksum = \"payload_md5\"\n", ""))
            .starts_with("tasks[0].checksum: missing"));
        assert!(err(&GOOD.replace(
            "dsn = \"host=127.0.0.1 port=55432 user=postgres dbname=app\"\n",
            ""
        ))
        .contains("primary: missing field `dsn`"));
        assert!(
            err(&GOOD.replace("lease = \"60s\"", "lease = \"60s\"\nleese = 1"))
                .starts_with("limits.leese: unknown field `leese`")
        );
        assert!(
            err(&GOOD.replace("name = \"blob-integrity\"", "name = \"../x\""))
                .starts_with("tasks[0].name:")
        );
        assert!(err(&GOOD.replace("port=55432", "port=notaport"))
            .starts_with("primary.dsn: invalid connection string"));
        assert!(
            err(&GOOD.replace("dbname=app\"", "dbname=app sslmode=verify-full\""))
                .starts_with("primary.dsn: sslmode=verify-full is not supported yet")
        );
        for e in [err("garbage = ["), err(&GOOD.replace("kind", "knd"))] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    const BASE: &str = r#"
[primary]
dsn = "host=127.0.0.1"
[[replicas]]
name = "r1"
dsn  = "host=127.0.0.1 port=55433"
[results]
dir = "/tmp/r"
"#;

    fn with_task(task: &str) -> Result<Config, String> {
        Config::parse(
            &format!("{BASE}[[tasks]]\nname = \"t\"\n{task}"),
            &Overrides::default(),
        )
        .map_err(|e| e.0)
    }

    const FILES: &str = "kind = \"file_checksum\"\ntable = \"files\"\nkey = \"id\"\npath = \"path\"\nchecksum = \"md5\"\nroot = \"/srv/store\"\n";

    #[test]
    fn file_checksum_fields() {
        let c = with_task(&format!("{FILES}size = \"bytes\"\nage_in_days = 7\ningested_at = \"created\"\nfiles_per_run = 1000\nparallelism = 3\n")).unwrap();
        let TaskSpec::FileChecksum(s) = &c.tasks[0].spec else {
            panic!("kind")
        };
        assert_eq!(
            (s.age_in_days, s.files_per_run, s.parallelism),
            (Some(7), Some(1000), 3)
        );
        assert_eq!(
            (s.size.as_deref(), s.ingested_at.as_deref()),
            (Some("bytes"), Some("created"))
        );
        assert_eq!(
            with_task(&FILES.replace("root = \"/srv/store\"\n", "")).unwrap_err(),
            "tasks[0].root: missing (task \"t\", kind file_checksum)"
        );
        assert!(with_task(&FILES.replace("/srv/store", "store"))
            .unwrap_err()
            .starts_with("tasks[0].root: store must be an absolute path"));
        assert!(with_task(&format!("{FILES}age_in_days = 3\n"))
            .unwrap_err()
            .starts_with("tasks[0].age_in_days: needs ingested_at"));
        assert!(with_task(&format!("{FILES}ingested_at = \"c\"\n"))
            .unwrap_err()
            .starts_with("tasks[0].ingested_at: needs age_in_days"));
        assert!(with_task(&format!("{FILES}files_per_run = 0\n"))
            .unwrap_err()
            .starts_with("tasks[0].files_per_run: must be at least 1"));
        assert!(with_task(&format!("{FILES}content = \"x\"\n"))
            .unwrap_err()
            .starts_with("tasks[0].content: not a field of kind file_checksum"));
        assert!(with_task(&FILES.replace("path = \"path\"\n", ""))
            .unwrap_err()
            .starts_with("tasks[0].path: missing"));
    }

    #[test]
    fn materialize_amcheck_export_fields() {
        let c = with_task("kind = \"materialize\"\nquery = \"SELECT 1 AS x\"\ntarget = \"public.t\"\nmerge_key = [\"x\"]\n").unwrap();
        let TaskSpec::Materialize(s) = &c.tasks[0].spec else {
            panic!("kind")
        };
        assert_eq!(
            (s.target.as_str(), s.merge_key.clone()),
            ("public.t", Some(vec!["x".to_string()]))
        );
        assert!(with_task("kind = \"materialize\"\nquery = \"SELECT 1\"\n")
            .unwrap_err()
            .starts_with("tasks[0].target: missing"));
        assert!(with_task(
            "kind = \"materialize\"\nquery = \"q\"\ntarget = \"t\"\nmerge_key = []\n"
        )
        .unwrap_err()
        .starts_with("tasks[0].merge_key:"));

        let c = with_task("kind = \"amcheck\"\nheapallindexed = true\n").unwrap();
        let TaskSpec::Amcheck(s) = &c.tasks[0].spec else {
            panic!("kind")
        };
        assert!(s.heapallindexed && s.tables.is_none());
        assert!(with_task("kind = \"amcheck\"\ntables = []\n")
            .unwrap_err()
            .starts_with("tasks[0].tables: empty list"));
        assert!(with_task("kind = \"amcheck\"\ntable = \"x\"\n")
            .unwrap_err()
            .starts_with("tasks[0].table: not a field of kind amcheck"));

        let c = with_task("kind = \"export\"\ntables = [\"a\", \"s.b\"]\n").unwrap();
        let TaskSpec::Export(s) = &c.tasks[0].spec else {
            panic!("kind")
        };
        assert_eq!((s.tables.len(), s.query.is_none()), (2, true));
        assert!(with_task("kind = \"export\"\n")
            .unwrap_err()
            .starts_with("tasks[0].tables: missing"));
        assert!(
            with_task("kind = \"export\"\ntables = [\"a\"]\nquery = \"q\"\n")
                .unwrap_err()
                .starts_with("tasks[0].query: give either")
        );
        let e = with_task("kind = \"nope\"\n").unwrap_err();
        assert!(
            e.contains("known kinds: row_checksum, file_checksum, materialize, amcheck, export"),
            "{e}"
        );
    }

    #[test]
    fn a_swap_target_shared_with_another_task_is_a_config_error() {
        let task = |name: &str, target: &str, merge: bool| {
            format!(
                "[[tasks]]\nname = \"{name}\"\nkind = \"materialize\"\nquery = \"SELECT 1 AS id\"\ntarget = '{target}'\n{}",
                if merge { "merge_key = [\"id\"]\n" } else { "" }
            )
        };
        let parse = |tasks: &[String]| {
            Config::parse(&format!("{BASE}{}", tasks.concat()), &Overrides::default())
                .map_err(|e| e.0)
        };
        // Merges of several tasks into one target are fine, and so are swaps into
        // different targets.
        let c = parse(&[
            task("us", "public.sales", true),
            task("eu", "sales", true),
            task("all", "public.totals", false),
            task("other", "\"Totals\"", false),
        ])
        .unwrap();
        assert_eq!(c.tasks.len(), 4);
        assert_eq!(
            parse(&[
                task("us", "public.sales", true),
                task("eu", "sales", true),
                task("all", "\"public\".\"sales\"", false),
            ])
            .unwrap_err(),
            "tasks[2].target: public.sales is written by task \"us\" (merge) and task \"all\" (swap); a swap \
             replaces the whole table, so only merges (merge_key) may share a target"
        );
        assert_eq!(
            parse(&[task("a", "s.t", false), task("b", "S.T", false)]).unwrap_err(),
            "tasks[1].target: s.t is written by task \"a\" (swap) and task \"b\" (swap); a swap \
             replaces the whole table, so only merges (merge_key) may share a target"
        );
        assert!(parse(&[task("a", "s.t", false), task("b", "s.t", true)])
            .unwrap_err()
            .starts_with(
                "tasks[1].target: s.t is written by task \"a\" (swap) and task \"b\" (merge);"
            ));
    }

    #[test]
    fn environment_overrides_the_dsns() {
        let o = Overrides {
            primary: Some("host=10.0.0.1".into()),
            replica: Some("host=10.0.0.2".into()),
        };
        let c = Config::parse(GOOD, &o).unwrap();
        assert_eq!(c.primary.field, "PGMAINT_PRIMARY");
        assert_eq!(c.replicas[0].dsn.field, "PGMAINT_REPLICA");
    }
}
