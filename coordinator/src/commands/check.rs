//! `pgmaint check [--json]`: everything that can be checked without pausing a replica
//! or writing to a server, one line per check (`ok` or `FAIL`, the object, what was
//! found). Exit code 0 when every check passed; 1 when one failed; 3 when the only
//! failures are servers that could not be reached (a blip: try again). Bad config is
//! exit 2 before any check, as for every command.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{Config, Dsn, ReplicaConfig};
use crate::db::{self, ConnectError, Reach};
use crate::error_text::OneLine;
use crate::errors::ErrorClass;
use crate::failover::primary;
use crate::privileges::{self, Missing};
use crate::replica::{self, ReplicaControl};
use crate::schema;
use crate::targets::{self, TaskTarget};

/// One check's outcome.
#[derive(Debug, Serialize)]
pub struct Check {
    /// The object checked: `primary`, `replica r1`, `task t on r1`, `results.dir`, …
    pub name: String,
    /// Passed?
    pub ok: bool,
    /// What was found, or why it failed (naming the grant, table, path at fault).
    pub detail: String,
    /// Failed because a server did not answer (exit code 3 when nothing else failed).
    #[serde(skip)]
    pub unreachable: bool,
}

/// Every check, in order.
#[derive(Default, Serialize)]
struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, name: impl Into<String>, outcome: Result<String, String>) {
        let (ok, detail) = match outcome {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail,
            unreachable: false,
        });
    }

    fn unreachable(&mut self, name: impl Into<String>, detail: String) {
        self.checks.push(Check {
            name: name.into(),
            ok: false,
            detail,
            unreachable: true,
        });
    }

    /// A failed connection: unreachable if the server did not answer.
    fn connect_failed(&mut self, name: &str, e: &ConnectError) {
        match e.1 {
            Reach::NoAnswer => self.unreachable(name, e.0.clone()),
            Reach::TurnedDown => self.add(name, Err(e.0.clone())),
        }
    }
}

/// `pgmaint check`. `config_path` is the file `cfg` was read from.
pub async fn run(cfg: &Config, config_path: &Path, json: bool) -> Result<ExitCode> {
    let mut report = Report::default();
    report.add(
        "config",
        Ok(format!(
            "{} parsed: {} replica(s), {} task(s), {} dump(s)",
            config_path.display(),
            cfg.replicas.len(),
            cfg.tasks.len(),
            cfg.dumps.len()
        )),
    );
    let primary = check_primary(cfg, &mut report).await;
    let mut replicas = Vec::new();
    for r in &cfg.replicas {
        if let Some(control) = check_replica(r, primary.as_ref(), &mut report).await {
            replicas.push(control);
        }
    }
    let columns = check_tasks(cfg, &replicas, &mut report).await;
    if let Some((client, _)) = &primary {
        check_targets(cfg, client, &columns, &mut report).await;
    }
    check_dirs(cfg, &mut report);
    print(&report, json)
}

/// The primary: reachable, not in recovery, pgmaint's schema current, privileges.
async fn check_primary(cfg: &Config, report: &mut Report) -> Option<(Client, Dsn)> {
    let (client, dsn, _) = match primary::connect(cfg, "pgmaint-check").await {
        Ok(found) => found,
        Err(e) => {
            report.connect_failed("primary", &e);
            return None;
        }
    };
    let at = db::describe(&dsn.config);
    match replica::primary_identity(&client, &dsn).await {
        Ok(id) => report.add(
            "primary",
            Ok(format!(
                "{at}: reachable, not in recovery (system {}, timeline {})",
                id.system_identifier, id.timeline
            )),
        ),
        Err(e) => report.add("primary", Err(e.one_line())),
    }
    let version = match schema::require_current(&client).await {
        Ok(()) => Ok(format!(
            "pgmaint's schema is at version {} (current)",
            schema::latest()
        )),
        Err(e) => Err(e.one_line()),
    };
    report.add("primary schema", version);
    let privileges = privileges::on_primary(&client).await;
    report.add(
        "primary privileges",
        granted(
            privileges,
            "write pgmaint's schema and read pg_stat_replication.sync_state",
        ),
    );
    Some((client, dsn))
}

/// A privilege check's line: what the role may do, or the grants it lacks.
fn granted(found: Result<Missing>, may: &str) -> Result<String, String> {
    match found {
        Ok(m) if m.grants.is_empty() => Ok(format!("role {} may {may}", m.role)),
        Ok(m) => Err(format!("role {} lacks: {}", m.role, m.grants.join("; "))),
        Err(e) => Err(e.one_line()),
    }
}

/// One replica: reachable, in recovery, a standby of the primary, privileges. Its
/// control session, if it could be reached.
async fn check_replica(
    r: &ReplicaConfig,
    primary: Option<&(Client, Dsn)>,
    report: &mut Report,
) -> Option<ReplicaControl> {
    let name = format!("replica {}", r.name);
    let control = match ReplicaControl::connect(r).await {
        Ok(c) => c,
        Err(e) => {
            report.connect_failed(&name, &e);
            return None;
        }
    };
    let at = db::describe(&r.dsn.config);
    let in_recovery = control
        .client()
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await;
    let role = match in_recovery {
        Ok(row) if row.get::<_, bool>(0) => Ok(format!("{at}: reachable, in recovery")),
        Ok(_) => Err(format!(
            "{at} is not in recovery: it is a primary, not a standby (was it promoted?)"
        )),
        Err(e) => Err(anyhow::Error::from(e).one_line()),
    };
    report.add(name.clone(), role);
    if let Some((client, dsn)) = primary {
        let belongs = match control.check_belongs_to(client, dsn).await {
            Ok(id) => Ok(format!(
                "a standby of the primary (system {}, timeline {})",
                id.system_identifier, id.timeline
            )),
            Err(e) => Err(e.one_line()),
        };
        report.add(format!("{name} cluster"), belongs);
    }
    let privileges = privileges::on_replica(control.client()).await;
    report.add(
        format!("{name} privileges"),
        granted(
            privileges,
            "pause, resume and watch replay and read pg_stat_wal_receiver",
        ),
    );
    Some(control)
}

/// Every task against the catalog of each replica it may run on (its pinned one, else
/// any), as the cycle checks it before a pause; read-only. The result columns of each
/// materialize task that passed (what a merge writes).
async fn check_tasks(
    cfg: &Config,
    replicas: &[ReplicaControl],
    report: &mut Report,
) -> HashMap<String, Vec<String>> {
    let mut columns = HashMap::new();
    for t in &cfg.tasks {
        let on = replicas
            .iter()
            .filter(|r| t.replica.as_ref().is_none_or(|p| p == r.name()));
        for r in on {
            let mut ctx = snapshot_runner::ScanContext::new(
                r.config.dsn.config.clone(),
                cfg.results_dir.clone(),
                0,
            );
            ctx.lock_timeout = cfg.scan.lock_timeout;
            let name = format!("task {} on {}", t.name, r.name());
            match snapshot_runner::prepare(&t.name, &t.spec, &ctx).await {
                Ok(p) => {
                    if let Some(c) = p.result_columns() {
                        columns.insert(t.name.clone(), c.to_vec());
                    }
                    report.add(
                        name,
                        Ok(format!(
                            "{} task checked against the replica's catalog",
                            p.kind()
                        )),
                    )
                }
                // The replica went away (or takes no connection now) since it was
                // checked: a blip, as when it cannot be reached at all.
                Err(e) if lost(&e) => report.unreachable(name, e.to_string()),
                Err(e) => report.add(name, Err(e.to_string())),
            }
        }
    }
    columns
}

/// A task check that failed because the replica did not answer (see [`Reach`]).
fn lost(e: &snapshot_runner::ScanError) -> bool {
    match e {
        snapshot_runner::ScanError::Db(d) => Reach::of(&d.cause) == Reach::NoAnswer,
        _ => false,
    }
}

/// Every materialize target against the primary's catalog (with the query's result
/// columns, when the task check found them).
async fn check_targets(
    cfg: &Config,
    primary: &Client,
    columns: &HashMap<String, Vec<String>>,
    report: &mut Report,
) {
    for t in cfg.tasks.iter().filter_map(TaskTarget::of) {
        let t = t
            .clone()
            .with_columns(columns.get(&t.task).map(Vec::as_slice));
        let outcome = match targets::check(primary, &t).await {
            Ok(found) => found,
            Err(e) => Err(e.one_line()),
        };
        report.add(format!("target {} (task {})", t.table, t.task), outcome);
    }
}

/// `results.dir` and every `[[dumps]].out`: writable (or creatable).
fn check_dirs(cfg: &Config, report: &mut Report) {
    report.add(
        format!("results.dir {}", cfg.results_dir.display()),
        writable(&cfg.results_dir),
    );
    for d in &cfg.dumps {
        report.add(
            format!("dumps[{}].out {}", d.name, d.out.display()),
            writable(&d.out),
        );
    }
}

/// Can pgmaint write in `dir`, or create it? A temporary file is created and removed
/// in it, or in its nearest existing ancestor when it does not exist yet.
pub fn writable(dir: &Path) -> Result<String, String> {
    let Some(existing) = dir.ancestors().find(|a| a.symlink_metadata().is_ok()) else {
        return Err(format!("{}: no part of the path exists", dir.display()));
    };
    if !existing.is_dir() {
        return Err(format!(
            "{} is not a directory, so {} cannot be created",
            existing.display(),
            dir.display()
        ));
    }
    let probe = existing.join(format!(".pgmaint-check-{}", std::process::id()));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    if let Err(e) = created {
        return Err(format!("cannot write in {}: {e}", existing.display()));
    }
    if let Err(e) = std::fs::remove_file(&probe) {
        return Err(format!("cannot remove {}: {e}", probe.display()));
    }
    Ok(if existing == dir {
        "writable".to_string()
    } else {
        format!("does not exist yet; {} is writable", existing.display())
    })
}

/// Print the report; the exit code.
fn print(report: &Report, json: bool) -> Result<ExitCode> {
    use std::io::Write;
    let failed: Vec<&Check> = report.checks.iter().filter(|c| !c.ok).collect();
    let text = if json {
        let doc = serde_json::json!({ "ok": failed.is_empty(), "checks": report.checks });
        format!("{}\n", serde_json::to_string_pretty(&doc)?)
    } else {
        report
            .checks
            .iter()
            .map(|c| {
                let mark = if c.ok { "ok  " } else { "FAIL" };
                format!("{mark} {}: {}\n", c.name, c.detail)
            })
            .collect()
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    // Unreachable only when nothing else failed: trying again cannot fix the rest.
    let class = if failed.iter().all(|c| c.unreachable) {
        ErrorClass::Unreachable
    } else {
        ErrorClass::Runtime
    };
    let names: Vec<&str> = failed.iter().map(|c| c.name.as_str()).collect();
    Err(class.error(format!(
        "check: {} of {} checks failed: {}",
        failed.len(),
        report.checks.len(),
        names.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_check_that_finds_no_replica_is_unreachable() {
        // A port nobody listens on: the replica went away after its own check.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut dsn = tokio_postgres::Config::new();
        dsn.host("127.0.0.1")
            .port(port)
            .user("postgres")
            .dbname("app");
        let ctx = snapshot_runner::ScanContext::new(dsn.into(), std::env::temp_dir(), 0);
        let spec = snapshot_runner::TaskSpec::Amcheck(snapshot_runner::AmcheckSpec {
            tables: None,
            heapallindexed: false,
            parallelism: 1,
            max_findings: 100_000,
        });
        let e = snapshot_runner::prepare("t", &spec, &ctx)
            .await
            .err()
            .expect("nothing listens");
        assert!(lost(&e), "{e}");
    }

    #[test]
    fn a_directory_under_a_regular_file_is_not_writable() {
        let base = std::env::temp_dir().join(format!("pgmaint-check-test-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        assert_eq!(writable(&base), Ok("writable".into()));
        let later = base.join("a/b");
        assert!(writable(&later).unwrap().contains("does not exist yet"));
        let file = base.join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = writable(&file.join("results")).unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
        assert_eq!(
            std::fs::read_dir(&base).unwrap().count(),
            1,
            "probe removed"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
