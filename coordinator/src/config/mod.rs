//! The TOML config file, with environment overrides, validated into [`Config`].
//!
//! Every error names the field at fault (`tasks[1].kind`, `limits.max_pause`, …) in one
//! line, and is a [`UsageError`] (exit code 2).
//!
//! One module per part of the file: [`dsn`] (`[primary]`, `[[replicas]]`), [`limits`]
//! (`[limits]`), [`settings`] (`[scan]`, `[uploader]`) and [`tasks`] (`[[tasks]]`);
//! `[results]` is one field, read here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use snapshot_runner::ResultsMode;

use crate::units::parse_duration;
use crate::UsageError;

pub mod daemon;
pub mod dsn;
pub mod dumps;
pub mod failover;
pub mod libpq;
pub mod limits;
pub mod settings;
pub mod tasks;

pub use daemon::DaemonSettings;
pub use dsn::{Dsn, ReplicaConfig};
pub use dumps::DumpConfig;
pub use failover::FailoverSettings;
pub use limits::Limits;
pub use settings::{ScanSettings, UploaderSettings};
pub use tasks::TaskConfig;

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
    /// `results.shared`: results.dir is on storage every daemon's host reads, so any
    /// upload worker may apply any task. Default false.
    pub results_shared: bool,
    /// `results.host`: the name of this host's results.dir in the upload queue (a
    /// worker claims only tasks of its host). Default: the machine's host name.
    pub results_host: String,
    /// `results.mode`: the mode of result files (directories pgmaint creates for them
    /// get the matching execute bits). Default 0600 (directories 0700).
    pub results_mode: ResultsMode,
    /// Scan settings.
    pub scan: ScanSettings,
    /// Upload worker settings.
    pub uploader: UploaderSettings,
    /// Tasks, in config order.
    pub tasks: Vec<TaskConfig>,
    /// Failover (`pgmaint promote`).
    pub failover: FailoverSettings,
    /// `[daemon]`.
    pub daemon: DaemonSettings,
    /// `[[dumps]]`, in config order.
    pub dumps: Vec<DumpConfig>,
}

/// Where to find the config and what the environment overrides.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `PGMAINT_PRIMARY`: the primary's DSN.
    pub primary: Option<String>,
    /// `PGMAINT_REPLICA`: the DSN of the replica (the first in config, or a lone one).
    pub replica: Option<String>,
}

/// The file as written: each part checked by its own module.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    primary: Option<dsn::RawPrimary>,
    #[serde(default)]
    replicas: Vec<dsn::RawReplica>,
    #[serde(default)]
    limits: limits::RawLimits,
    results: Option<RawResults>,
    #[serde(default)]
    scan: settings::RawScan,
    #[serde(default)]
    uploader: settings::RawUploader,
    #[serde(default)]
    tasks: Vec<tasks::RawTask>,
    #[serde(default)]
    failover: failover::RawFailover,
    #[serde(default)]
    daemon: daemon::RawDaemon,
    #[serde(default)]
    dumps: Vec<dumps::RawDump>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResults {
    dir: PathBuf,
    #[serde(default)]
    shared: bool,
    host: Option<String>,
    mode: Option<String>,
}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Duration field `field`: `default` when not set.
fn duration(field: &str, v: &Option<String>, default: Duration) -> Result<Duration, UsageError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|e| usage(format!("{field}: {e}"))),
    }
}

/// A name of a task or replica. Task names become file names and appear in SQL values
/// only as bound parameters.
fn valid_name(name: &str) -> bool {
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

    /// Validate config text, part by part in file order; the first error is reported.
    pub fn parse(text: &str, overrides: &Overrides) -> Result<Config, UsageError> {
        let raw = deserialize(text)?;
        let primary = dsn::primary(&raw.primary, overrides)?;
        let replicas = dsn::replicas(&raw.replicas, overrides)?;
        let limits = Limits::from_raw(&raw.limits)?;
        let (results_dir, results_shared, results_host, results_mode) = results(raw.results)?;
        let scan = ScanSettings::from_raw(&raw.scan)?;
        let uploader = UploaderSettings::from_raw(&raw.uploader)?;
        // Before tasks and dumps: their `at` is read in daemon.timezone.
        let daemon = DaemonSettings::from_raw(&raw.daemon)?;
        let config = Config {
            tasks: tasks::parse_tasks(&raw.tasks, daemon.timezone)?,
            failover: FailoverSettings::from_raw(&raw.failover)?,
            dumps: dumps::parse_dumps(&raw.dumps, daemon.timezone)?,
            primary,
            replicas,
            limits,
            results_dir,
            results_shared,
            results_host,
            results_mode,
            scan,
            uploader,
            daemon,
        };
        config.check_pins()?;
        config.check_dump_names()?;
        Ok(config)
    }

    /// A dump's name is not a task's too: both name slots in pgmaint.task_slots.
    fn check_dump_names(&self) -> Result<(), UsageError> {
        for (i, d) in self.dumps.iter().enumerate() {
            if self.tasks.iter().any(|t| t.name == d.name) {
                return Err(usage(format!(
                    "dumps[{i}].name: {:?} is also a task's name; dumps and tasks need different names",
                    d.name
                )));
            }
        }
        Ok(())
    }

    /// The dump called `name`.
    pub fn dump(&self, name: &str) -> Result<&DumpConfig, UsageError> {
        self.dumps.iter().find(|d| d.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.dumps.iter().map(|d| d.name.as_str()).collect();
            usage(format!(
                "--name: no dump named {name:?} in config (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }

    /// `tasks[].replica` names a replica of the config.
    fn check_pins(&self) -> Result<(), UsageError> {
        let pins = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("tasks[{i}]"), &t.replica));
        let dump_pins = self
            .dumps
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("dumps[{i}]"), &d.replica));
        for (at, pin) in pins.chain(dump_pins) {
            if let Some(r) = pin {
                if !self.replicas.iter().any(|x| &x.name == r) {
                    let known: Vec<&str> = self.replicas.iter().map(|r| r.name.as_str()).collect();
                    return Err(usage(format!(
                        "{at}.replica: no replica named {r:?} in config (known: {})",
                        known.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// `limits.keep_unpaused`, or its default: one failover candidate kept unpaused
    /// when there are two or more.
    pub fn keep_unpaused(&self) -> usize {
        self.limits.keep_unpaused.unwrap_or_else(|| {
            let priorities: Vec<u32> = self.replicas.iter().map(|r| r.failover_priority).collect();
            crate::pool::default_keep_unpaused(&priorities)
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

/// The TOML text into [`RawConfig`]: a syntax error names its line, an unknown or
/// mistyped field its path.
fn deserialize(text: &str) -> Result<RawConfig, UsageError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
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
    })
}

/// `[results]`: `dir` (an absolute path), `shared`, `host` (default: the machine's
/// host name) and `mode` (default 0600).
fn results(raw: Option<RawResults>) -> Result<(PathBuf, bool, String, ResultsMode), UsageError> {
    let raw = raw.ok_or_else(|| usage("results.dir: missing"))?;
    if !raw.dir.is_absolute() {
        return Err(usage(format!(
            "results.dir: {} must be an absolute path",
            raw.dir.display()
        )));
    }
    let host = match raw.host {
        Some(h) if h.trim().is_empty() => return Err(usage("results.host: empty")),
        // `pgmaint tasks retry --on-host any` means "any worker" (a NULL host).
        Some(h) if h == ANY_HOST => {
            return Err(usage(format!(
                "results.host: \"{ANY_HOST}\" is reserved (tasks retry --on-host {ANY_HOST} means any host); \
                 for storage every host reads, set results.shared = true"
            )))
        }
        Some(h) => h,
        None => host_name(),
    };
    let mode = match &raw.mode {
        None => ResultsMode::PRIVATE,
        Some(m) => results_mode(m)?,
    };
    Ok((raw.dir, raw.shared, host, mode))
}

/// `results.mode`: an octal string (`"0640"`, `"640"`), one of [`ResultsMode::ALLOWED`].
fn results_mode(text: &str) -> Result<ResultsMode, UsageError> {
    const ALLOWED: &str = "allowed: \"0600\" (the default) or \"0640\" (the group may read)";
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let bits = match u32::from_str_radix(digits, 8) {
        Ok(b) if (3..=4).contains(&digits.len()) && !digits.starts_with('+') => b,
        _ => {
            return Err(usage(format!(
                "results.mode: {text:?} is not an octal file mode; {ALLOWED}"
            )))
        }
    };
    if bits & 0o007 != 0 {
        return Err(usage(format!(
            "results.mode: {bits:04o} gives other users access (results hold table contents); {ALLOWED}"
        )));
    }
    ResultsMode::from_bits(bits).ok_or_else(|| {
        usage(format!(
            "results.mode: {bits:04o} is not allowed; {ALLOWED}"
        ))
    })
}

/// `--on-host any`: the host name that stands for "any worker" (shared storage).
pub const ANY_HOST: &str = "any";

impl Config {
    /// Where this config's result files can be read: its `results.host`, or shared
    /// storage with `results.shared = true`. Recorded on the upload tasks it queues,
    /// and the tasks its upload worker claims.
    pub fn upload_host(&self) -> uploader::ResultsHost {
        if self.results_shared {
            uploader::ResultsHost::Shared
        } else {
            uploader::ResultsHost::Named(self.results_host.clone())
        }
    }
}

/// The machine's host name (`/proc/sys/kernel/hostname`, then `$HOSTNAME`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshot_runner::TaskSpec;

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
        assert!(err(&GOOD.replace(
            "dbname=app\"",
            "dbname=app sslmode=verify-full sslrootcert=/nonexistent\""
        ))
        .starts_with(
            "primary.dsn: sslrootcert: root certificate file \"/nonexistent\" does not exist"
        ));
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
    fn schedules_daemon_and_dumps() {
        let c = Config::parse(
            &format!(
                "{BASE}[daemon]\ntimezone = \"Europe/Paris\"\ncatch_up = \"none\"\nlisten = \"127.0.0.1:9187\"\n\
                 [[tasks]]\nname = \"t\"\nkind = \"amcheck\"\nat = \"30 2 * * *\"\n\
                 [[dumps]]\nname = \"nightly\"\nout = \"/srv/dumps\"\nevery = \"1d\"\nkeep = 2\n"
            ),
            &Overrides::default(),
        )
        .unwrap();
        assert!(
            matches!(&c.tasks[0].schedule, Some(crate::schedule::Schedule::At(_, tz)) if tz.name() == "Europe/Paris")
        );
        assert_eq!(c.daemon.catch_up, crate::schedule::CatchUp::None);
        assert_eq!(c.daemon.listen.unwrap().port(), 9187);
        assert_eq!((c.dumps[0].keep, c.dumps[0].jobs), (2, 2));
        assert!(c.daemon.uploader && !c.results_shared && !c.results_host.is_empty());

        assert_eq!(
            with_task("kind = \"amcheck\"\nevery = \"1h\"\nat = \"0 * * * *\"\n").unwrap_err(),
            "tasks[0].at: give either every (an interval) or at (a cron expression), not both"
        );
        assert_eq!(
            with_task("kind = \"amcheck\"\nat = \"0 0 31 2 *\"\n").unwrap_err(),
            "tasks[0].at: \"0 0 31 2 *\" never comes (no such date)"
        );
        assert!(with_task("kind = \"amcheck\"\nat = \"0 25 * * *\"\n")
            .unwrap_err()
            .starts_with("tasks[0].at: \"0 25 * * *\" is not a 5-field cron expression"));
        let daemon = |d: &str| {
            Config::parse(&format!("{BASE}[daemon]\n{d}\n"), &Overrides::default()).map_err(|e| e.0)
        };
        assert!(daemon("timezone = \"Mars/Olympus\"")
            .unwrap_err()
            .starts_with("daemon.timezone: \"Mars/Olympus\" is not a known time zone"));
        assert!(daemon("listen = \"localhost\"")
            .unwrap_err()
            .starts_with("daemon.listen:"));
        assert!(daemon("catch_up = \"all\"")
            .unwrap_err()
            .starts_with("daemon.catch_up:"));
        let dump = |d: &str| {
            Config::parse(
                &format!("{BASE}[[dumps]]\nname = \"d\"\n{d}\n"),
                &Overrides::default(),
            )
            .map_err(|e| e.0)
        };
        assert_eq!(
            dump("out = \"rel\"").unwrap_err(),
            "dumps[0].out: rel must be an absolute path"
        );
        assert!(dump("out = \"/x\"\nkeep = 0")
            .unwrap_err()
            .starts_with("dumps[0].keep: must be at least 1"));
        assert!(dump("out = \"/x\"\nreplica = \"r9\"")
            .unwrap_err()
            .starts_with("dumps[0].replica: no replica named \"r9\""));
    }

    #[test]
    fn results_host_names_where_uploads_are_read() {
        let results = |extra: &str| {
            GOOD.replace(
                "dir = \"/var/lib/pgmaint/results\"\n",
                &format!("dir = \"/var/lib/pgmaint/results\"\n{extra}\n"),
            )
        };
        let c = Config::parse(&results("host = \"host-a\""), &Overrides::default()).unwrap();
        assert_eq!(
            c.upload_host(),
            uploader::ResultsHost::Named("host-a".into())
        );
        let c = Config::parse(&results("shared = true"), &Overrides::default()).unwrap();
        assert_eq!(c.upload_host(), uploader::ResultsHost::Shared);
        assert_eq!(
            err(&results("host = \"any\"")),
            "results.host: \"any\" is reserved (tasks retry --on-host any means any host); \
             for storage every host reads, set results.shared = true"
        );
    }

    #[test]
    fn results_mode_is_private_unless_relaxed_for_the_group() {
        let with_mode = |m: &str| {
            GOOD.replace(
                "dir = \"/var/lib/pgmaint/results\"\n",
                &format!("dir = \"/var/lib/pgmaint/results\"\nmode = {m}\n"),
            )
        };
        let c = Config::parse(GOOD, &Overrides::default()).unwrap();
        assert_eq!(c.results_mode, ResultsMode::PRIVATE);
        for m in ["\"0640\"", "\"640\"", "\"0o640\""] {
            let c = Config::parse(&with_mode(m), &Overrides::default()).unwrap();
            assert_eq!(c.results_mode, ResultsMode::GROUP_READ, "{m}");
        }
        let allowed = "allowed: \"0600\" (the default) or \"0640\" (the group may read)";
        assert_eq!(
            err(&with_mode("\"0644\"")),
            format!("results.mode: 0644 gives other users access (results hold table contents); {allowed}")
        );
        assert!(err(&with_mode("\"0606\"")).starts_with("results.mode: 0606 gives other users"));
        assert_eq!(
            err(&with_mode("\"0660\"")),
            format!("results.mode: 0660 is not allowed; {allowed}")
        );
        assert!(err(&with_mode("\"0700\"")).starts_with("results.mode: 0700 is not allowed"));
        for bad in ["\"rw-r-----\"", "\"0689\"", "\"\"", "\"06400\"", "\"+640\""] {
            assert!(
                err(&with_mode(bad)).starts_with("results.mode: ")
                    && err(&with_mode(bad)).contains("is not an octal file mode"),
                "{bad}: {}",
                err(&with_mode(bad))
            );
        }
        // A TOML number is not a mode string (0640 is no valid TOML integer; 640 is decimal).
        assert!(err(&with_mode("640")).starts_with("results.mode: invalid type"));
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
