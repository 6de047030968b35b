//! Harness for pgmaint's end-to-end tests: a real throwaway primary and streaming
//! replica(s) per test (`scripts/cluster.sh`), and the built `pgmaint` binary.
//!
//! Each test gets its own cluster, so tests never see each other's rows or pauses and
//! can run in parallel. The cluster is stopped and removed when the [`Cluster`] drops,
//! even if the test panics.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::types::{FromSqlOwned, ToSql};
use tokio_postgres::{Client, NoTls};

/// The table [`seed_blobs`] fills in [`blobs_cluster`], and [`blobs_task`] checks.
pub const BLOBS: &str = "public.blobs";

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `pgmaint` binary: `$PGMAINT_BIN`, else `target/debug/pgmaint` (built by
/// `scripts/test.sh` before the tests run).
pub fn pgmaint_bin() -> PathBuf {
    let bin = std::env::var_os("PGMAINT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/debug/pgmaint"));
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test.sh (or cargo build -p pgmaint) first",
        bin.display()
    );
    bin
}

/// A finished command, with its output as text.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    /// Panic with the output unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    /// Panic with the output unless stdout says `text`.
    pub fn expect_stdout(self, text: &str) -> Run {
        assert!(self.stdout.contains(text), "{}", self.stdout);
        self
    }
    /// Panic with the output unless stderr says `text`.
    pub fn expect_stderr(self, text: &str) -> Run {
        assert!(self.stderr.contains(text), "{}", self.stderr);
        self
    }
    /// A `--json` command's stdout is exactly one JSON document (nothing before or
    /// after it: notes go to stderr), or nothing at all when the command failed before
    /// it had anything to report (its one-line error is on stderr).
    pub fn assert_json_document(&self) -> serde_json::Value {
        if self.stdout.trim().is_empty() && self.code != 0 {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "--json: stdout is not one JSON document ({e}); exit code {}; stdout:\n{}\nstderr:\n{}",
                self.code, self.stdout, self.stderr
            )
        })
    }
    /// The `pgmaint: error: …` line, if any.
    pub fn error_line(&self) -> Option<&str> {
        self.stderr
            .lines()
            .find(|l| l.starts_with("pgmaint: error:"))
    }
}

/// `bash scripts/cluster.sh ARGS… --dir DIR`, to be run.
fn cluster_sh(args: &[&str], dir: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/cluster.sh"))
        .args(args)
        .arg("--dir")
        .arg(dir);
    cmd
}

/// A throwaway primary + replicas, removed on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub env: HashMap<String, String>,
}

impl Cluster {
    /// Start a cluster for test `name` with `replicas` streaming replicas.
    pub fn up(name: &str, replicas: usize) -> Cluster {
        Cluster::up_with(name, replicas, false)
    }

    /// Like [`Cluster::up`], from an initdb of its own rather than the shared template:
    /// its system identifier differs from every other test cluster's.
    pub fn up_fresh(name: &str, replicas: usize) -> Cluster {
        Cluster::up_with(name, replicas, true)
    }

    fn up_with(name: &str, replicas: usize, fresh: bool) -> Cluster {
        let dir = repo().join("target/e2e").join(name);
        // A leftover from an aborted earlier run of the same test.
        let _ = cluster_sh(&["down"], &dir).output();
        let out = cluster_sh(&["up", "--replicas", &replicas.to_string()], &dir)
            .env("PGMAINT_CLUSTER_FRESH", if fresh { "1" } else { "0" })
            .output()
            .expect("run scripts/cluster.sh");
        assert!(
            out.status.success(),
            "cluster.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("cluster.env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Cluster { dir, env }
    }

    pub fn primary_port(&self) -> u16 {
        self.env["PRIMARY_PORT"].parse().unwrap()
    }
    /// Port of replica `i` (1-based).
    pub fn replica_port(&self, i: usize) -> u16 {
        self.env[&format!("R{i}_PORT")].parse().unwrap()
    }
    pub fn primary_dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=app",
            self.primary_port()
        )
    }
    pub fn replica_dsn(&self, i: usize) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=app",
            self.replica_port(i)
        )
    }
    pub fn results_dir(&self) -> PathBuf {
        PathBuf::from(&self.env["RESULTS_DIR"])
    }

    pub async fn primary(&self) -> Client {
        connect(&self.primary_dsn()).await
    }
    pub async fn replica(&self, i: usize) -> Client {
        connect(&self.replica_dsn(i)).await
    }

    /// Write a config file: the cluster's primary, replicas and results dir, then `body`
    /// (`[limits]`, `[[tasks]]`, …). Returns its path.
    pub fn write_config(&self, file: &str, body: &str) -> PathBuf {
        let n: usize = self.env["REPLICAS"].parse().unwrap();
        let mut text = format!("[primary]\ndsn = \"{}\"\n", self.primary_dsn());
        for i in 1..=n {
            text.push_str(&format!(
                "[[replicas]]\nname = \"r{i}\"\ndsn = \"{}\"\n",
                self.replica_dsn(i)
            ));
        }
        text.push_str(&format!(
            "[results]\ndir = \"{}\"\n",
            self.results_dir().display()
        ));
        text.push_str(body);
        let path = self.dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A `pgmaint` command with `--config`.
    pub fn pgmaint(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(pgmaint_bin());
        cmd.args(args)
            .env("PGMAINT_CONFIG", config)
            .env_remove("PGMAINT_PRIMARY")
            .env_remove("PGMAINT_REPLICA");
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Run `pgmaint args…` to completion. With `--json`, stdout must be one JSON
    /// document ([`Run::assert_json_document`]).
    pub fn run(&self, config: &Path, args: &[&str]) -> Run {
        let run = Run::from(self.pgmaint(config, args).output().expect("run pgmaint"));
        if args.contains(&"--json") {
            run.assert_json_document();
        }
        run
    }

    /// [`Cluster::run`] with an environment of its own: `remove` unset, then `set` set.
    pub fn run_with_env(
        &self,
        config: &Path,
        args: &[&str],
        remove: &[&str],
        set: &[(&str, &std::ffi::OsStr)],
    ) -> Run {
        let mut cmd = self.pgmaint(config, args);
        for v in remove {
            cmd.env_remove(v);
        }
        cmd.envs(set.iter().copied());
        let run = Run::from(cmd.output().expect("run pgmaint"));
        if args.contains(&"--json") {
            run.assert_json_document();
        }
        run
    }

    /// A pg_dump for `--pg-dump` that runs `record` (shell, its output going to the
    /// log file returned) and then the real pg_dump with the same arguments.
    pub fn spying_pg_dump(&self, record: &str) -> (PathBuf, PathBuf) {
        let log = self.dir.join("pg_dump.log");
        let script = self.dir.join("pg_dump");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n{{ {record}; }} > '{}'\nexec '{}/pg_dump' \"$@\"\n",
                log.display(),
                self.env["PG_BIN"]
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        (script, log)
    }

    /// `scripts/cluster.sh ACTION NAME` (start, stop, restart).
    pub fn server(&self, action: &str, name: &str) {
        self.cluster_sh(&[action, name]);
    }

    /// `scripts/cluster.sh ARGS… --dir <cluster>`, which must succeed.
    pub fn cluster_sh(&self, args: &[&str]) {
        let out = cluster_sh(args, &self.dir).output().unwrap();
        assert!(
            out.status.success(),
            "cluster.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pause replica `i` by hand (as an operator, or PostgreSQL itself, would) and wait
    /// until it is paused.
    pub async fn pause_by_hand(&self, i: usize) {
        self.replica(i)
            .await
            .execute("SELECT pg_wal_replay_pause()", &[])
            .await
            .unwrap();
        wait_paused(self, i).await;
    }

    /// `pg_get_wal_replay_pause_state()` of replica `i`.
    pub async fn pause_state(&self, i: usize) -> String {
        let r = self.replica(i).await;
        scalar(&r, "SELECT pg_get_wal_replay_pause_state()", &[]).await
    }

    /// [`Cluster::write_config`], then [`Cluster::init_ready`] with it. Returns its path.
    pub async fn ready_config(&self, file: &str, body: &str) -> PathBuf {
        let config = self.write_config(file, body);
        self.init_ready(&config).await;
        config
    }

    /// `pgmaint init` with `config`, then [`Cluster::wait_caught_up`] for replica 1.
    pub async fn init_ready(&self, config: &Path) {
        self.run(config, &["init"]).expect_code(0);
        self.wait_caught_up(1).await;
    }

    /// Wait until replica `i` has replayed everything the primary has written so far.
    pub async fn wait_caught_up(&self, i: usize) {
        let p = self.primary().await;
        let target: String = scalar(&p, "SELECT pg_current_wal_lsn()::text", &[]).await;
        let replica = self.replica(i).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sql = "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn";
            if scalar::<bool>(&replica, sql, &[&target]).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica r{i} did not catch up to {target}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = cluster_sh(&["down"], &self.dir).output();
    }
}

/// Connect and drive the connection in the background.
pub async fn connect(dsn: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {dsn}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The first column of the one row `sql` returns.
pub async fn scalar<T: FromSqlOwned>(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> T {
    client.query_one(sql, params).await.unwrap().get(0)
}

/// The first two columns of the one row `sql` returns.
pub async fn pair<A: FromSqlOwned, B: FromSqlOwned>(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> (A, B) {
    let row = client.query_one(sql, params).await.unwrap();
    (row.get(0), row.get(1))
}

/// The first two columns of every row `sql` returns.
pub async fn pair_rows<A: FromSqlOwned, B: FromSqlOwned>(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Vec<(A, B)> {
    let rows = client.query(sql, params).await.unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// The `bigint` that `sql` (a `count(*)` or the like, without parameters) returns.
pub async fn count(client: &Client, sql: &str) -> i64 {
    scalar(client, sql, &[]).await
}

/// Poll `check` every 50 ms until it returns true, or panic after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// MD5 hex of `data`.
pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

/// Create `table` (SQL, already quoted) with `n` rows of bytea content and a correct
/// md5 column: `(id <key_type>, payload bytea, payload_md5 text)`. `key_expr` turns the
/// series value `g` into a key (e.g. `g` or `md5(g::text)::uuid`).
pub async fn seed_blobs(client: &Client, table: &str, key_type: &str, key_expr: &str, n: i64) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id {key_type} PRIMARY KEY, payload bytea, payload_md5 text);
             INSERT INTO {table}
             SELECT {key_expr}, p, md5(p)
               FROM (SELECT g, convert_to(repeat(md5(g::text), 1 + g % 7), 'UTF8') AS p
                       FROM generate_series(1, {n}) g) s;"
        ))
        .await
        .unwrap();
}

/// `[[tasks]]` TOML for a row_checksum task.
pub fn row_checksum_task(
    name: &str,
    table: &str,
    key: &str,
    content: &str,
    checksum: &str,
    extra: &str,
) -> String {
    format!(
        "[[tasks]]\nname = \"{name}\"\nkind = \"row_checksum\"\ntable = '{table}'\nkey = '{key}'\n\
         content = '{content}'\nchecksum = '{checksum}'\n{extra}\n"
    )
}

/// The row_checksum task over the table [`seed_blobs`] makes as `public.blobs`.
pub fn blobs_task(extra: &str) -> String {
    row_checksum_task("blobs", BLOBS, "id", "payload", "payload_md5", extra)
}

/// The entry of task `name` in `summary["tasks"]` (a `run --json` summary, or a
/// manifest).
pub fn task_entry<'a>(summary: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    named(summary, "tasks", name)
}

/// The entry whose `name` is `name` in the array `doc[list]`.
pub fn named<'a>(doc: &'a serde_json::Value, list: &str, name: &str) -> &'a serde_json::Value {
    doc[list]
        .as_array()
        .unwrap_or_else(|| panic!("no array {list} in {doc:#}"))
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list} of {doc:#}"))
}

/// Parse `pgmaint run --json` output (printed on success and on a failed cycle alike).
pub fn run_summary(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "run --json printed no summary ({e}); stdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        )
    })
}

/// Read a run's manifest.
pub fn manifest(results_dir: &Path, run_id: i64) -> serde_json::Value {
    read_manifest(&results_dir.join(run_id.to_string()))
}

/// The data rows of a findings CSV as (row_key, finding), sorted.
pub fn findings_in_csv(path: &Path) -> Vec<(String, String)> {
    let mut reader =
        csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rows: Vec<(String, String)> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[1].to_string(), r[2].to_string())
        })
        .collect();
    rows.sort();
    rows
}

/// The findings of task `task` of run `id`, from its CSV in the cluster's results
/// directory ([`findings_in_csv`]).
pub fn run_findings(c: &Cluster, id: i64, task: &str) -> Vec<(String, String)> {
    findings_in_csv(&c.results_dir().join(format!("{id}/{task}.csv")))
}

/// Wait until replica `i` reports `paused`.
pub async fn wait_paused(c: &Cluster, i: usize) {
    wait_for("the replica to pause", Duration::from_secs(60), || async {
        c.pause_state(i).await == "paused"
    })
    .await;
}

/// Column `column` of run `id`'s row in `pgmaint.runs` on the primary.
pub async fn run_column<T: FromSqlOwned>(c: &Cluster, id: i64, column: &str) -> T {
    let sql = format!("SELECT {column} FROM pgmaint.runs WHERE id = $1");
    scalar(&c.primary().await, &sql, &[&id]).await
}

/// State of run `id` on the primary.
pub async fn run_state(c: &Cluster, id: i64) -> String {
    run_column(c, id, "state").await
}

/// The newest run's id on the primary.
pub async fn last_run_id(c: &Cluster) -> i64 {
    scalar(&c.primary().await, "SELECT max(id) FROM pgmaint.runs", &[]).await
}

/// Upload tasks queued for run `id`.
pub async fn uploads_of_run(c: &Cluster, id: i64) -> i64 {
    let sql = "SELECT count(*) FROM pgmaint.upload_tasks WHERE run_id = $1";
    scalar(&c.primary().await, sql, &[&id]).await
}

/// Send a signal to a process.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Run `pgmaint run --json [extra…]` and parse its summary ([`run_summary`]).
pub fn run_json(c: &Cluster, config: &Path, extra: &[&str]) -> (Run, serde_json::Value) {
    let mut args = vec!["run", "--json"];
    args.extend_from_slice(extra);
    let run = c.run(config, &args);
    let json = run_summary(&run);
    (run, json)
}

/// [`run_json`], which must exit 0: the summary.
pub fn run_ok(c: &Cluster, config: &Path, extra: &[&str]) -> serde_json::Value {
    let (run, json) = run_json(c, config, extra);
    run.expect_code(0);
    json
}

/// The `manifest.json` of run directory `dir`.
pub fn read_manifest(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The rows of a CSV result file, without its header.
pub fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    csv::Reader::from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

/// The data directory of server `name` (`primary`, `r1`, …) of cluster `c`.
pub fn server_data_dir(c: &Cluster, name: &str) -> PathBuf {
    PathBuf::from(&c.env["DATA"]).join(name)
}

/// Overwrite block `block` (8 kB pages) of relation file `relpath` (as given by
/// `pg_relation_filepath`) in server `name`'s data directory with zeros. The server
/// must be stopped.
pub fn zero_block(c: &Cluster, name: &str, relpath: &str, block: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let path = server_data_dir(c, name).join(relpath);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.seek(SeekFrom::Start(block * 8192)).unwrap();
    f.write_all(&[0u8; 8192]).unwrap();
    f.sync_all().unwrap();
}

/// Turn on TLS on every server of the cluster with a fresh self-signed certificate, and
/// create role `pgmaint_tls`, which the servers accept only over TLS.
pub async fn enable_tls(c: &Cluster) {
    let n: usize = c.env["REPLICAS"].parse().unwrap();
    let data = PathBuf::from(&c.env["DATA"]);
    let run_as = c.env["RUN_AS"].clone();
    let servers = std::iter::once("primary".to_string()).chain((1..=n).map(|i| format!("r{i}")));
    for name in servers {
        let dir = data.join(&name);
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=pgmaint-test",
            ])
            .arg("-keyout")
            .arg(dir.join("server.key"))
            .arg("-out")
            .arg(dir.join("server.crt"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl req");
        for f in ["server.key", "server.crt"] {
            let p = dir.join(f);
            Command::new("chown").arg(&run_as).arg(&p).status().unwrap();
            Command::new("chmod").arg("600").arg(&p).status().unwrap();
        }
        // ALTER SYSTEM on the primary does not reach a replica's own config: write each.
        let conf = dir.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
        text.push_str("\nssl = on\n");
        std::fs::write(&conf, text).unwrap();
    }
    let p = c.primary().await;
    p.batch_execute("DO $$ BEGIN CREATE ROLE pgmaint_tls SUPERUSER LOGIN; EXCEPTION WHEN duplicate_object THEN END $$")
        .await
        .unwrap();
    // Role `pgmaint_tls` may log in only over TLS (the first matching line wins).
    prepend_hba(c, "hostnossl all pgmaint_tls 127.0.0.1/32 reject").await;
}

/// Put `line` first in every server's `pg_hba.conf` (the first matching line wins),
/// then reload every server (the config too).
pub async fn prepend_hba(c: &Cluster, line: &str) {
    let n: usize = c.env["REPLICAS"].parse().unwrap();
    let data = PathBuf::from(&c.env["DATA"]);
    for name in std::iter::once("primary".to_string()).chain((1..=n).map(|i| format!("r{i}"))) {
        let hba = data.join(name).join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("{line}\n{text}")).unwrap();
    }
    c.primary()
        .await
        .execute("SELECT pg_reload_conf()", &[])
        .await
        .unwrap();
    for i in 1..=n {
        c.replica(i)
            .await
            .execute("SELECT pg_reload_conf()", &[])
            .await
            .unwrap();
    }
}

/// A copy of config `config` (`<sslmode>.toml` in the cluster's directory) whose DSNs
/// connect as role `pgmaint_tls` ([`enable_tls`]) with `sslmode`. Returns its path.
pub fn tls_config(c: &Cluster, config: &Path, sslmode: &str) -> PathBuf {
    let text = std::fs::read_to_string(config).unwrap();
    let path = c.dir.join(format!("{sslmode}.toml"));
    std::fs::write(
        &path,
        text.replace(
            "user=postgres dbname=app\"",
            &format!("user=pgmaint_tls dbname=app sslmode={sslmode}\""),
        ),
    )
    .unwrap();
    path
}

/// Send `sig` (STOP, CONT) to a server's postmaster and all its backends: a frozen
/// server that accepts nothing and answers nothing.
pub fn signal_server(c: &Cluster, name: &str, sig: &str) {
    let pid_file = PathBuf::from(&c.env["DATA"])
        .join(name)
        .join("postmaster.pid");
    let pm = std::fs::read_to_string(pid_file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    Command::new("pkill")
        .args([&format!("-{sig}"), "-P", &pm])
        .status()
        .unwrap();
    Command::new("kill")
        .args([&format!("-{sig}"), &pm])
        .status()
        .unwrap();
}

/// A config whose one task checksums `public.blobs` one row per round trip in one
/// session: a scan slow enough for a test to act while it runs. `limits` holds
/// `[limits]` lines (may be empty).
pub fn slow_blobs_config(c: &Cluster, file: &str, limits: &str) -> PathBuf {
    let task = blobs_task("parallelism = 1");
    c.write_config(
        file,
        &format!("[limits]\n{limits}\n[scan]\nbatch_rows = 1\n{task}"),
    )
}

/// A run caught in its pause: a [`blobs_cluster`] of `n` rows, its
/// [`slow_blobs_config`] (`slow.toml`, with `limits`) initialised, and `pgmaint args…`
/// started with it ([`spawn_paused`]).
pub async fn paused_run(
    name: &str,
    n: i64,
    limits: &str,
    args: &[&str],
) -> (Cluster, Client, PathBuf, Child) {
    let (c, p) = blobs_cluster(name, n).await;
    let cfg = slow_blobs_config(&c, "slow.toml", limits);
    c.init_ready(&cfg).await;
    let child = spawn_paused(&c, &cfg, args).await;
    (c, p, cfg, child)
}

/// Assert that the run a `run --json` summary describes ended in `state`, its error
/// saying `error`.
pub fn assert_ended(summary: &serde_json::Value, state: &str, error: &str) {
    assert_eq!(summary["state"], state);
    assert!(
        summary["error"].as_str().unwrap().contains(error),
        "{}",
        summary["error"]
    );
}

/// Assert that every file a manifest lists (`files`, each with `name`, `md5` and
/// `size`) is in `dir` with that MD5 and size.
pub fn assert_files_as_listed(dir: &Path, files: &[serde_json::Value]) {
    for f in files {
        let bytes = std::fs::read(dir.join(f["name"].as_str().unwrap())).unwrap();
        assert_eq!(md5_hex(&bytes), f["md5"].as_str().unwrap());
        assert_eq!(bytes.len() as u64, f["size"].as_u64().unwrap());
    }
}

/// The pids of the children [`spawn_piped`] started with `--json`: [`finish`] checks
/// that their stdout is one JSON document.
static JSON_CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Start `pgmaint args…` in the background, its output piped.
pub fn spawn_piped(c: &Cluster, config: &Path, args: &[&str]) -> Child {
    let child = c
        .pgmaint(config, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if args.contains(&"--json") {
        JSON_CHILDREN.lock().unwrap().push(child.id());
    }
    child
}

/// A `pgmaint run` of `config` killed (SIGKILL) in its pause on replica 1, which it
/// leaves paused under a lease still valid; its run id.
pub async fn run_killed_in_its_pause(c: &Cluster, config: &Path) -> i64 {
    c.wait_caught_up(1).await;
    let mut child = c
        .pgmaint(config, &["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_paused(c, 1).await;
    let dead = last_run_id(c).await;
    signal(child.id(), "KILL");
    child.wait().unwrap();
    dead
}

/// [`spawn_piped`], then wait until replica 1 is paused: a run caught in its pause.
pub async fn spawn_paused(c: &Cluster, config: &Path, args: &[&str]) -> Child {
    let child = spawn_piped(c, config, args);
    wait_paused(c, 1).await;
    child
}

/// Wait for a child started by [`spawn_piped`] to end; what it printed and its exit code.
pub fn finish(child: Child) -> Run {
    let pid = child.id();
    let run = Run::from(child.wait_with_output().unwrap());
    let mut json = JSON_CHILDREN.lock().unwrap();
    if let Some(i) = json.iter().position(|p| *p == pid) {
        json.swap_remove(i);
        drop(json);
        run.assert_json_document();
    }
    run
}

/// Poll `child` every 50 ms until it exits: its status, or `None` if it still runs
/// after `timeout`.
pub async fn exited_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll replica `i` every 100 ms until it is not paused: whether it got there within
/// `timeout`.
pub async fn wait_until_not_paused(c: &Cluster, i: usize, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if c.pause_state(i).await == "not paused" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A cluster with one replica whose primary has run `sql`, and a connection to that
/// primary.
pub async fn cluster_with(name: &str, sql: &str) -> (Cluster, Client) {
    let c = Cluster::up(name, 1);
    let p = c.primary().await;
    p.batch_execute(sql).await.unwrap();
    (c, p)
}

/// A cluster with one replica, `public.blobs` on its primary seeded by [`seed_blobs`]
/// with `n` rows keyed `1..=n` (bigint), and a connection to that primary.
pub async fn blobs_cluster(name: &str, n: i64) -> (Cluster, Client) {
    let c = Cluster::up(name, 1);
    let p = c.primary().await;
    seed_blobs(&p, BLOBS, "bigint", "g", n).await;
    (c, p)
}

/// `GET path` on pgmaint's HTTP endpoint at `addr`: the status line and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the sample `name{labels}` (written as on the wire) in the Prometheus
/// text `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// `pg_restore` of `dir` into a new database `db` on the primary; the rows of `table`
/// there.
pub async fn restored_rows(
    c: &Cluster,
    p: &Client,
    table: &str,
    dir: &std::path::Path,
    db: &str,
) -> i64 {
    p.execute(&format!("CREATE DATABASE {db}"), &[])
        .await
        .unwrap();
    let restore = Command::new(format!("{}/pg_restore", c.env["PG_BIN"]))
        .args(["-h", "127.0.0.1", "-p", &c.primary_port().to_string()])
        .args(["-U", "postgres", "-d", db, "-j", "2"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        restore.status.success(),
        "{}: {}",
        dir.display(),
        String::from_utf8_lossy(&restore.stderr)
    );
    let r = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        c.primary_port()
    ))
    .await;
    count(&r, &format!("SELECT count(*) FROM {table}")).await
}

/// A daemon process, stopped (SIGKILL) if the test ends without stopping it.
pub struct Daemon {
    child: Option<Child>,
    pid: u32,
    log: std::path::PathBuf,
}

impl Daemon {
    /// Start `pgmaint daemon` with `config`; its stderr goes to `<config>.<n>.log`.
    pub fn start(c: &Cluster, config: &Path, n: usize) -> Daemon {
        Daemon::start_with_env(c, config, n, &[])
    }
    /// [`Daemon::start`], with these environment variables set.
    pub fn start_with_env(c: &Cluster, config: &Path, n: usize, env: &[(&str, &str)]) -> Daemon {
        let log = config.with_extension(format!("{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = c
            .pgmaint(config, &["daemon"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon {
            pid: child.id(),
            child: Some(child),
            log,
        }
    }
    pub fn pid(&self) -> u32 {
        self.pid
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Wait (at most `timeout`) for the daemon to exit by itself; its status.
    pub async fn exited(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = exited_within(self.child.as_mut()?, timeout).await;
        if status.is_some() {
            self.child = None;
        }
        status
    }
    /// SIGTERM: the daemon must exit 0 within 30 s.
    pub async fn terminate(&mut self) {
        let status = self
            .stop("TERM", Duration::from_secs(30))
            .await
            .expect("the daemon exits within 30 s of SIGTERM");
        assert!(status.success(), "{status:?}\n{}", self.log());
    }
    /// Send `sig`; the exit status if it exits within `timeout`.
    pub async fn stop(&mut self, sig: &str, timeout: Duration) -> Option<std::process::ExitStatus> {
        signal(self.pid(), sig);
        let status = exited_within(self.child.as_mut().unwrap(), timeout).await;
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon log {}:\n{}", self.log.display(), self.log());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An export task whose query sleeps `secs` on the replica: a scan of known length.
pub fn sleepy_task(name: &str, secs: f64, extra: &str) -> String {
    format!(
        "[[tasks]]\nname = \"{name}\"\nkind = \"export\"\nquery = \"SELECT pg_sleep({secs}) AS slept\"\n{extra}\n"
    )
}

/// A loopback address free now, for `daemon.listen`.
pub fn free_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `/metrics`, parsed as Prometheus text; with the raw text.
pub async fn scrape(addr: std::net::SocketAddr) -> (prometheus_parse::Scrape, String) {
    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{text}");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    (
        prometheus_parse::Scrape::parse(lines).expect("Prometheus text"),
        text,
    )
}

/// The value of `name{label="value"}` in a scrape.
pub fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// A digest of every table of pgmaint's schema on a server: a change to any row
/// changes it (to check that nothing was written on a former primary).
pub async fn pgmaint_tables(client: &Client) -> String {
    let tables: Vec<String> = client
        .query(
            "SELECT quote_ident(relname) FROM pg_class
              WHERE relnamespace = 'pgmaint'::regnamespace AND relkind = 'r' ORDER BY relname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut all = String::new();
    for t in tables {
        let digest: Option<String> = scalar(
            client,
            &format!("SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM pgmaint.{t} x"),
            &[],
        )
        .await;
        all.push_str(&format!("{t}={} ", digest.unwrap_or_default()));
    }
    all
}
