//! The upload queue and the uploader worker, against a real primary.
//!
//! Runs, result files and manifests are made directly by the tests (a valid run row
//! in `pgmaint.runs`, files with correct MD5s), so a test can queue hundreds of tasks
//! in a moment; the cycle that produces them for real is covered by `tests/cycle.rs`.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pgmaint_e2e::*;
use serde_json::{json, Value};
use tokio_postgres::types::FromSqlOwned;
use tokio_postgres::Client;
use uploader::UploadRequest;

/// A cluster (primary only: the uploader never touches a replica), its config, and
/// a connection to the primary.
struct Fx {
    c: Cluster,
    cfg: PathBuf,
    p: Client,
}

/// [`setup`], with a table `table` ([`Fx::id_v_table`]) and a merge of `rows` rows into
/// it queued ([`Fx::queue_load`]): the fixture and that upload task.
async fn setup_load(name: &str, uploader_toml: &str, table: &str, rows: i64) -> (Fx, i64) {
    let fx = setup(name, uploader_toml).await;
    fx.id_v_table(table).await;
    let id = fx.queue_load(table, 0, rows).await;
    (fx, id)
}

/// [`setup`], then `sql` run on the primary (the tables a test applies to).
async fn setup_with(name: &str, uploader_toml: &str, sql: &str) -> Fx {
    let fx = setup(name, uploader_toml).await;
    fx.sql(sql).await;
    fx
}

async fn setup(name: &str, uploader_toml: &str) -> Fx {
    let c = Cluster::up(name, 0);
    // Config needs a replica entry; the uploader never connects to it.
    let body = format!(
        "[[replicas]]\nname = \"r1\"\ndsn = \"{}\"\n[uploader]\n{uploader_toml}\n",
        c.primary_dsn()
    );
    let cfg = c.write_config("uploader.toml", &body);
    c.run(&cfg, &["init"]).expect_code(0);
    let p = c.primary().await;
    Fx { c, cfg, p }
}

/// `[uploader]` settings of the tests with a long-running uploader blocked on a lock
/// (its lock waits outlast the test, and it polls often), then `more`.
fn blockable(more: &str) -> String {
    format!("lock_timeout = \"60s\"\npoll_interval = \"500ms\"\n{more}")
}

/// `uploader.max_attempts` when the config leaves it out.
const MAX_ATTEMPTS: i32 = 5;

/// One result file of a fake run.
struct FileSpec {
    task: String,
    kind: &'static str,
    csv: String,
    params: Value,
}

fn csv_columns(csv: &str) -> Vec<String> {
    csv.lines()
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect()
}

/// A run recorded as succeeded on the primary, its files and manifest under
/// results.dir, and its upload tasks queued by the queue's own `enqueue` (chained in
/// order, with the files' MD5 and size).
/// Returns (run id, task ids).
async fn fake_run(fx: &Fx, files: &[FileSpec]) -> (i64, Vec<i64>) {
    let row = fx
        .p
        .query_one(
            "INSERT INTO pgmaint.runs (replica, state, holder, snapshot_lsn, timeline, system_identifier, finished_at)
             VALUES ('r1', 'succeeded', 'e2e', pg_current_wal_lsn(), 1, 1, now()) RETURNING id, snapshot_lsn::text",
            &[],
        )
        .await
        .unwrap();
    let (run_id, lsn): (i64, String) = (row.get(0), row.get(1));
    let dir = fx.c.results_dir().join(run_id.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let mut tasks = Vec::new();
    for f in files {
        let name = format!("{}.csv", f.task);
        std::fs::write(dir.join(&name), &f.csv).unwrap();
        tasks.push(json!({
            "name": f.task, "kind": "materialize", "status": "completed",
            "rows_scanned": f.csv.lines().count() - 1, "findings": 0,
            "file": { "name": name, "columns": csv_columns(&f.csv), "rows": f.csv.lines().count() - 1,
                      "size": f.csv.len(), "md5": md5_hex(f.csv.as_bytes()) }
        }));
    }
    let manifest = json!({
        "run_id": run_id, "replica": "r1",
        "snapshot": { "lsn": lsn, "timeline": 1, "system_identifier": 1, "postmaster_start": "2026-01-01T00:00:00Z" },
        "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z",
        "valid": true, "tasks": tasks,
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let uploads: Vec<UploadRequest> = files
        .iter()
        .map(|f| UploadRequest {
            task_name: f.task.clone(),
            plan: uploader::ApplyPlan::from_queued(f.kind, &f.params)
                .unwrap_or_else(|e| panic!("apply plan {} {}: {e}", f.kind, f.params)),
            file: format!("{run_id}/{}.csv", f.task),
            manifest: format!("{run_id}/manifest.json"),
            file_md5: md5_hex(f.csv.as_bytes()),
            file_size: f.csv.len() as i64,
            // Any test worker reads the fixture's results.dir.
            host: uploader::ResultsHost::Shared,
        })
        .collect();
    let mut queue = fx.c.primary().await;
    let tx = queue.transaction().await.unwrap();
    let ids = uploader::enqueue(&tx, run_id, &uploads, MAX_ATTEMPTS)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (run_id, ids)
}

/// A merge file: rows keyed by `key` upserted into `target`.
fn merge_file_by(task: &str, target: &str, key: &[&str], csv: impl Into<String>) -> FileSpec {
    FileSpec {
        task: task.into(),
        kind: "merge",
        csv: csv.into(),
        params: json!({ "target": target, "key": key }),
    }
}

/// A merge file keyed by `id`.
fn merge_file(task: &str, target: &str, csv: impl Into<String>) -> FileSpec {
    merge_file_by(task, target, &["id"], csv)
}

/// A swap file: its rows replace `target`'s.
fn swap_file(task: &str, target: &str, csv: impl Into<String>) -> FileSpec {
    FileSpec {
        task: task.into(),
        kind: "swap",
        csv: csv.into(),
        params: json!({ "target": target }),
    }
}

/// A findings file, with the params its task queued.
fn findings_file(task: &str, csv: impl Into<String>, params: Value) -> FileSpec {
    FileSpec {
        task: task.into(),
        kind: "findings",
        csv: csv.into(),
        params,
    }
}

/// Merge files of `tasks` (queued in that order) into `target`: ten [`rows_csv`] rows
/// each, ids from `first` on.
fn merge_chain(target: &str, tasks: &[&str], first: i64) -> Vec<FileSpec> {
    (first..)
        .step_by(10)
        .zip(tasks)
        .map(|(from, task)| merge_file(task, target, rows_csv(from, from + 10)))
        .collect()
}

/// `CREATE TABLE name (id bigint PRIMARY KEY, v text)`: a target for [`rows_csv`].
fn id_v_table(name: &str) -> String {
    format!("CREATE TABLE {name} (id bigint PRIMARY KEY, v text)")
}

/// `id,v` rows `from..to`.
fn rows_csv(from: i64, to: i64) -> String {
    let mut s = String::from("id,v\n");
    for i in from..to {
        s.push_str(&format!("{i},value {i}\n"));
    }
    s
}

impl Fx {
    /// `pgmaint args…` with the fixture's config, to completion.
    fn pgmaint(&self, args: &[&str]) -> Run {
        self.c.run(&self.cfg, args)
    }

    /// `pgmaint uploader --once`: apply what is due, then exit.
    fn drain(&self) -> Run {
        self.pgmaint(&["uploader", "--once"])
    }

    /// Run `sql` (any number of statements) on the primary.
    async fn sql(&self, sql: &str) {
        self.p.batch_execute(sql).await.unwrap();
    }

    /// Create [`id_v_table`] `name`.
    async fn id_v_table(&self, name: &str) {
        self.sql(&id_v_table(name)).await;
    }

    /// The bigint `sql` returns on the primary ([`count`]).
    async fn count(&self, sql: &str) -> i64 {
        count(&self.p, sql).await
    }

    /// `SELECT count(*) FROM from` on the primary (`from`: a table, and any `WHERE …`).
    async fn rows(&self, from: &str) -> i64 {
        self.count(&format!("SELECT count(*) FROM {from}")).await
    }

    /// `columns` of upload task `id`.
    async fn task_row(&self, id: i64, columns: &str) -> tokio_postgres::Row {
        let sql = format!("SELECT {columns} FROM pgmaint.upload_tasks WHERE id = $1");
        self.p.query_one(&sql, &[&id]).await.unwrap()
    }

    /// `column` of upload task `id`.
    async fn task<T: FromSqlOwned>(&self, id: i64, column: &str) -> T {
        self.task_row(id, column).await.get(0)
    }

    /// Two columns, `columns`, of upload task `id`.
    async fn task_pair<A: FromSqlOwned, B: FromSqlOwned>(&self, id: i64, columns: &str) -> (A, B) {
        let sql = format!("SELECT {columns} FROM pgmaint.upload_tasks WHERE id = $1");
        pair(&self.p, &sql, &[&id]).await
    }

    /// How upload task `id` stands: its state, attempts and last error ("" if none).
    async fn outcome(&self, id: i64) -> (String, i32, String) {
        let r = self.task_row(id, "state, attempts, last_error").await;
        let error: Option<String> = r.get(2);
        (r.get(0), r.get(1), error.unwrap_or_default())
    }

    /// [`Fx::drain`], which must exit 0 saying `said`.
    fn drain_saying(&self, said: &str) -> Run {
        self.drain().expect_code(0).expect_stdout(said)
    }

    /// [`Fx::drain`], which must exit 0 and leave upload task `id` completed.
    async fn apply(&self, id: i64) {
        self.drain().expect_code(0);
        assert_eq!(self.state(id).await, "completed");
    }

    /// Assert that upload task `id` failed for good after `attempts` attempts, its error
    /// saying each of `says`.
    async fn assert_failed(&self, id: i64, attempts: i32, says: &[&str]) {
        let (state, tried, e) = self.outcome(id).await;
        assert_eq!((state.as_str(), tried), ("failed", attempts), "{e}");
        assert!(says.iter().all(|s| e.contains(s)), "{e}");
    }

    /// `pgmaint tasks retry id`, which must be refused with exit 1, its error line
    /// saying each of `says`.
    fn assert_retry_refused(&self, id: i64, says: &[&str]) {
        let out = self
            .pgmaint(&["tasks", "retry", &id.to_string()])
            .expect_code(1);
        let line = out.error_line().unwrap_or_default();
        assert!(says.iter().all(|s| line.contains(s)), "{}", out.stderr);
    }

    /// The state of upload task `id`.
    async fn state(&self, id: i64) -> String {
        self.task(id, "state").await
    }

    /// The last error of upload task `id` ("" if none).
    async fn last_error(&self, id: i64) -> String {
        self.task::<Option<String>>(id, "last_error")
            .await
            .unwrap_or_default()
    }

    /// Wait (for `what`, at most `secs` seconds) until upload task `id` is in `state`.
    async fn wait_state(&self, what: &str, id: i64, state: &str, secs: u64) {
        let timeout = Duration::from_secs(secs);
        wait_for(what, timeout, || async { self.state(id).await == state }).await;
    }

    /// Wait (for `what`, at most `secs` seconds) until `SELECT count(*) FROM from`
    /// ([`Fx::rows`]) is `n`.
    async fn wait_rows(&self, what: &str, from: &str, n: i64, secs: u64) {
        let timeout = Duration::from_secs(secs);
        wait_for(what, timeout, || async { self.rows(from).await == n }).await;
    }

    /// Wait (for `what`) until the lease on upload task `id` has expired.
    async fn wait_lease_expired(&self, what: &str, id: i64) {
        let expired = format!("pgmaint.upload_tasks WHERE id = {id} AND lease_expires_at < now()");
        self.wait_rows(what, &expired, 1, 10).await;
    }

    /// Wait (for `what`, at most `secs` seconds) until `n` uploader sessions wait on a
    /// lock.
    async fn wait_blocked_applies(&self, what: &str, n: i64, secs: u64) {
        self.wait_rows(what, BLOCKED_APPLIES, n, secs).await;
    }

    /// `pg_notify` on the uploader's channel, as queueing an upload does.
    async fn notify(&self) {
        self.p
            .execute("SELECT pg_notify('pgmaint_upload', 'test')", &[])
            .await
            .unwrap();
    }

    /// A run of one file ([`fake_run`]): its upload task.
    async fn queue(&self, file: FileSpec) -> i64 {
        fake_run(self, &[file]).await.1[0]
    }

    /// Queue a merge (task `load`) of [`rows_csv`] `from..to` into `public.table`: its
    /// upload task.
    async fn queue_load(&self, table: &str, from: i64, to: i64) -> i64 {
        self.queue(merge_file(
            "load",
            &format!("public.{table}"),
            rows_csv(from, to),
        ))
        .await
    }

    /// Change a result file of run `run` after its manifest was written: `from`
    /// replaced by `to`.
    fn tamper(&self, run: i64, file: &str, from: &str, to: &str) {
        let path = self.c.results_dir().join(run.to_string()).join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace(from, to)).unwrap();
    }

    /// `SET set` (SQL) on the upload tasks whose `column` is `value`.
    async fn set_tasks(&self, set: &str, column: &str, value: i64) {
        let sql = format!("UPDATE pgmaint.upload_tasks SET {set} WHERE {column} = $1");
        self.p.execute(&sql, &[&value]).await.unwrap();
    }

    /// Apply what is due with run `older`'s tasks held back (the first drain saying
    /// `first_said`), then those: a newer snapshot applied before an older one. The
    /// second drain says `said`.
    async fn apply_newer_first(&self, older: i64, first_said: &str, said: &str) {
        self.hold_run(older).await;
        self.drain_saying(first_said);
        self.release_run(older).await;
        self.drain_saying(said);
    }

    /// Hold the upload tasks of run `run` back for an hour.
    async fn hold_run(&self, run: i64) {
        self.set_tasks("not_before = now() + interval '1 hour'", "run_id", run)
            .await;
    }

    /// Make the upload tasks of run `run` due now.
    async fn release_run(&self, run: i64) {
        self.set_tasks("not_before = now()", "run_id", run).await;
    }

    /// Relations a swap left behind (`pgmaint_swap…`).
    async fn swap_leftovers(&self) -> i64 {
        self.rows("pg_class WHERE relname LIKE 'pgmaint_swap%'")
            .await
    }

    /// SIGTERM to a long-running uploader (logging under `tag`): it must exit 0.
    async fn stop(&self, child: &mut Child, tag: &str) {
        self.stop_all(&mut [(child, tag)]).await;
    }

    /// SIGTERM to each long-running uploader (child, log tag), then each must exit 0.
    async fn stop_all(&self, uploaders: &mut [(&mut Child, &str)]) {
        for (child, _) in uploaders.iter() {
            signal(child.id(), "TERM");
        }
        for (child, tag) in uploaders.iter_mut() {
            self.exits_ok(child, tag, 20).await;
        }
    }

    /// Wait up to `secs` seconds for an uploader (logging under `tag`) to exit: it must
    /// exit 0.
    async fn exits_ok(&self, child: &mut Child, tag: &str, secs: u64) {
        assert_eq!(
            wait_exit(child, Duration::from_secs(secs)).await,
            0,
            "uploader {tag}: {}",
            uploader_log(self, tag)
        );
    }
}

/// A long-running `pgmaint uploader`, logging to a file in the cluster dir.
fn spawn_uploader(fx: &Fx, tag: &str, args: &[&str]) -> Child {
    let log = std::fs::File::create(fx.c.dir.join(format!("uploader-{tag}.log"))).unwrap();
    let mut all = vec!["uploader"];
    all.extend_from_slice(args);
    fx.c.pgmaint(&fx.cfg, &all)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn pgmaint uploader")
}

fn uploader_log(fx: &Fx, tag: &str) -> String {
    std::fs::read_to_string(fx.c.dir.join(format!("uploader-{tag}.log"))).unwrap_or_default()
}

/// A long-running `pgmaint uploader --slots 2` (logging under `tag`), once its LISTEN
/// session is up (the one row of `listener`, a [`Fx::rows`] FROM clause) and its first
/// (empty) claim is past: from now on only a NOTIFY wakes it before its next poll.
async fn listening_uploader(fx: &Fx, tag: &str, listener: &str) -> Child {
    let uploader = spawn_uploader(fx, tag, &["--slots", "2"]);
    fx.wait_rows("the uploader to LISTEN", listener, 1, 10)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    uploader
}

/// Wait for a child to exit; its exit code.
async fn wait_exit(child: &mut Child, timeout: Duration) -> i32 {
    match exited_within(child, timeout).await {
        Some(status) => status.code().unwrap_or(-1),
        None => {
            let _ = child.kill();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
    }
}

/// Uploader sessions waiting on a lock ([`Fx::rows`]).
const BLOCKED_APPLIES: &str = "pg_stat_activity
  WHERE application_name LIKE 'pgmaint-uploader-%' AND wait_event_type = 'Lock'";

/// Wait until an uploader backend waits on a lock (its apply is blocked).
async fn wait_apply_blocked(fx: &Fx) {
    wait_for(
        "an uploader apply to block on a lock",
        Duration::from_secs(20),
        || async { fx.rows(BLOCKED_APPLIES).await > 0 },
    )
    .await;
}

/// How a test's session blocks an uploader's apply into a table: in an open
/// transaction, until it commits.
#[derive(Clone, Copy)]
enum Blocker {
    /// It has read the table: a swap builds its staging table, then waits for its
    /// exclusive lock.
    Reader,
    /// It holds the table IN SHARE MODE: a merge loads its rows, then its INSERT waits.
    ShareLock,
}

impl Blocker {
    /// A session on the primary blocking applies into `table`.
    async fn on(self, fx: &Fx, table: &str) -> Client {
        let sql = match self {
            Blocker::Reader => format!("SELECT count(*) FROM {table}"),
            Blocker::ShareLock => format!("LOCK TABLE {table} IN SHARE MODE"),
        };
        let session = fx.c.primary().await;
        session
            .batch_execute(&format!("BEGIN; {sql}"))
            .await
            .unwrap();
        session
    }

    /// A blocking session on `table`, then `pgmaint uploader --slots 1 [extra…]`
    /// (logging under `tag`) started, once its apply into `table` waits on a lock.
    /// Returns the session (its COMMIT lets the apply go on) and the uploader.
    async fn block(self, fx: &Fx, table: &str, tag: &str, extra: &[&str]) -> (Client, Child) {
        let session = self.on(fx, table).await;
        let mut args = vec!["--slots", "1"];
        args.extend_from_slice(extra);
        let uploader = spawn_uploader(fx, tag, &args);
        wait_apply_blocked(fx).await;
        (session, uploader)
    }
}

/// A target for merges whose BEFORE INSERT trigger logs every row an apply proposes
/// (even one that then conflicts): a task applied twice would log its rows twice.
async fn audited_target(p: &Client, table: &str) {
    p.batch_execute(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, v text);
         CREATE TABLE {table}_audit (id bigint, txid bigint DEFAULT txid_current());
         CREATE FUNCTION {table}_log() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO {table}_audit (id) VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER log BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_log();"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_uploaders_apply_1000_tasks_exactly_once() {
    let toml = "lease = \"10s\"\npoll_interval = \"500ms\"";
    let fx = setup("up_exactly_once", toml).await;
    audited_target(&fx.p, "applied").await;
    // One target per run: uploads of different runs are not ordered, and a merge into
    // a target that a newer run has already written is superseded (not applied). Each
    // run's target inherits from `applied` (to count them all) and logs like it.
    fx.sql("DO $$ BEGIN FOR r IN 0..99 LOOP
             EXECUTE format('CREATE TABLE %I (PRIMARY KEY (id)) INHERITS (applied)', 'applied_' || r);
             EXECUTE format('CREATE TRIGGER log BEFORE INSERT ON %I FOR EACH ROW EXECUTE FUNCTION applied_log()',
                            'applied_' || r);
         END LOOP; END $$").await;
    // 100 runs of 10 chained tasks, 3 rows each: 1,000 tasks, 3,000 rows.
    let mut next = 0i64;
    for r in 0..100 {
        let files: Vec<FileSpec> = (0..10)
            .map(|t| {
                let f = merge_file(
                    &format!("t{t}"),
                    &format!("public.applied_{r}"),
                    rows_csv(next, next + 3),
                );
                next += 3;
                f
            })
            .collect();
        fake_run(&fx, &files).await;
    }
    let started = Instant::now();
    let mut a = spawn_uploader(&fx, "a", &["--slots", "2"]);
    let mut b = spawn_uploader(&fx, "b", &["--slots", "2"]);
    let completed = "pgmaint.upload_tasks WHERE state = 'completed'";
    fx.wait_rows("1,000 tasks completed", completed, 1000, 120)
        .await;
    let secs = started.elapsed().as_secs_f64();
    fx.stop_all(&mut [(&mut a, "a"), (&mut b, "b")]).await;

    assert_eq!(fx.rows("applied").await, 3000);
    // Every row was proposed exactly once by a committed apply: no task applied twice.
    assert_eq!(fx.rows("applied_audit").await, 3000);
    assert_eq!(
        fx.count("SELECT count(DISTINCT id) FROM applied_audit")
            .await,
        3000
    );
    // One transaction per task.
    assert_eq!(
        fx.count("SELECT count(DISTINCT txid) FROM applied_audit")
            .await,
        1000
    );
    assert_eq!(
        fx.count("SELECT sum(rows_applied)::int8 FROM pgmaint.upload_tasks")
            .await,
        3000
    );
    // Both processes did work.
    assert_eq!(
        fx.count("SELECT count(DISTINCT split_part(worker, '/', 1)) FROM pgmaint.upload_tasks")
            .await,
        2,
        "both uploaders should have applied tasks"
    );
    eprintln!("1,000 tasks applied by 2 uploaders x 2 slots in {secs:.1}s");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_uploader_leaves_no_partial_rows_and_task_is_rescued() {
    let (fx, id) = setup_load("up_kill9", &blockable("lease = \"2s\""), "k", 5000).await;
    // Hold a lock that the merge's INSERT conflicts with: the apply COPYs its 5,000
    // rows into its load table, then blocks.
    let (holder, mut w) = Blocker::ShareLock.block(&fx, "k", "killed", &[]).await;
    assert_eq!(fx.state(id).await, "running");
    let killed_worker: String = fx.task(id, "worker").await;
    w.kill().unwrap(); // SIGKILL
    w.wait().unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    // The orphaned backend finishes its statement, finds its client gone and rolls back.
    let uploaders = "pg_stat_activity WHERE application_name LIKE 'pgmaint-uploader-%'";
    fx.wait_rows("the killed uploader's sessions to end", uploaders, 0, 20)
        .await;
    assert_eq!(fx.rows("k").await, 0, "no partial rows");

    // Once the lease has expired, another worker rescues the task and completes it.
    fx.wait_lease_expired("the lease to expire", id).await;
    fx.drain_saying("1 task(s) applied (5000 rows)");
    assert_eq!(fx.rows("k").await, 5000);
    let row = fx.task_row(id, "state, attempts, worker").await;
    assert_eq!(row.get::<_, String>(0), "completed");
    assert_eq!(row.get::<_, i32>(1), 2, "the killed attempt counts");
    assert_ne!(
        row.get::<_, String>(2),
        killed_worker,
        "completed by another worker"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn uploader_reconnects_after_primary_restart_and_finishes() {
    let (fx, id) = setup_load("up_restart", &blockable("lease = \"5s\""), "rs", 2000).await;
    // The lock holder stays until the restart ends it.
    let (_holder, mut w) = Blocker::ShareLock.block(&fx, "rs", "restart", &[]).await;
    assert_eq!(fx.state(id).await, "running");

    fx.c.server("restart", "primary"); // ends the lock holder and the apply alike
    let fx = Fx {
        p: fx.c.primary().await,
        ..fx
    };
    let after = "the task to complete after the restart";
    fx.wait_state(after, id, "completed", 60).await;
    assert_eq!(fx.rows("rs").await, 2000);
    assert!(w.try_wait().unwrap().is_none(), "the worker carried on");
    fx.stop(&mut w, "restart").await;
    assert!(
        uploader_log(&fx, "restart").contains("reconnected to the primary"),
        "{}",
        uploader_log(&fx, "restart")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prerequisites_are_respected() {
    let fx = setup_with("up_prereq", "poll_interval = \"500ms\"", &id_v_table("pr")).await;
    // Run 1: three chained tasks. Run 2: its first task is tampered with, so the two
    // after it can never run. Run 3: one task not due for an hour.
    let (_, good) = fake_run(&fx, &merge_chain("public.pr", &["a1", "a2", "a3"], 0)).await;
    let (run2, bad) = fake_run(&fx, &merge_chain("public.pr", &["b1", "b2", "b3"], 100)).await;
    fx.tamper(run2, "b1.csv", "value 105", "value 666");
    let (_, later) = fake_run(&fx, &[merge_file("c1", "public.pr", rows_csv(200, 210))]).await;
    let hour = "not_before = now() + interval '1 hour'";
    fx.set_tasks(hour, "id", later[0]).await;

    let out = fx.pgmaint(&["uploader", "--once", "--slots", "4"]);
    assert_eq!(out.code, 1, "a task failed: exit 1; {}", out.stderr);

    // Run 1: in order, each started only after its prerequisite completed.
    let rows = fx
        .p
        .query("SELECT state, started_at, finished_at FROM pgmaint.upload_tasks WHERE id = ANY($1) ORDER BY id", &[&good])
        .await
        .unwrap();
    for r in &rows {
        assert_eq!(r.get::<_, String>(0), "completed");
    }
    for w in rows.windows(2) {
        let prev_done: chrono_free::Ts = w[0].get(2);
        let next_start: chrono_free::Ts = w[1].get(1);
        assert!(
            next_start.0 >= prev_done.0,
            "a task started before its prerequisite completed"
        );
    }
    // Run 2: the first failed for good, the rest were dropped, nothing applied.
    assert_eq!(fx.state(bad[0]).await, "failed");
    assert_eq!(fx.state(bad[1]).await, "dropped");
    assert_eq!(fx.state(bad[2]).await, "dropped");
    assert_eq!(fx.rows("pr WHERE id >= 100").await, 0);
    assert_eq!(fx.rows("pr").await, 30);
    // Run 3: not due yet.
    assert_eq!(fx.state(later[0]).await, "waiting");

    // The operator's view: list, show, retry, cancel.
    let list = fx
        .pgmaint(&["tasks", "list", "--run", &run2.to_string(), "--json"])
        .expect_code(0);
    let list: Value = serde_json::from_str(&list.stdout).unwrap();
    let states: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["dropped", "dropped", "failed"]);
    let table = fx
        .pgmaint(&["tasks", "list", "--state", "failed"])
        .expect_code(0);
    assert!(
        table
            .stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains(" b1 ") && l.contains(" failed ")),
        "{}",
        table.stdout
    );
    assert_eq!(table.stdout.lines().count(), 2, "{}", table.stdout);
    let show = fx
        .pgmaint(&["tasks", "show", &bad[0].to_string()])
        .expect_code(0);
    assert!(
        show.stdout.contains("differs from the manifest"),
        "{}",
        show.stdout
    );
    let show = fx
        .pgmaint(&["tasks", "show", &bad[1].to_string()])
        .expect_code(0);
    assert!(
        show.stdout
            .contains(&format!("prerequisite task {} will never complete", bad[0])),
        "{}",
        show.stdout
    );
    let retry = fx
        .pgmaint(&["tasks", "retry", &bad[0].to_string(), "--json"])
        .expect_code(0);
    let retry: Value = serde_json::from_str(&retry.stdout).unwrap();
    assert_eq!(retry["requeued"], json!(bad));
    assert_eq!(fx.state(bad[2]).await, "waiting");
    let again = fx.pgmaint(&["tasks", "retry", &good[0].to_string()]);
    assert_eq!(again.code, 2, "retrying a completed task is refused");
    assert!(
        again.error_line().unwrap().contains("is completed"),
        "{}",
        again.stderr
    );
    fx.pgmaint(&["tasks", "cancel", &later[0].to_string()])
        .expect_code(0);
    assert_eq!(fx.state(later[0]).await, "cancelled");
}

/// Timestamps without pulling chrono into the test crate: microseconds since 2000.
mod chrono_free {
    use tokio_postgres::types::{FromSql, Type};
    pub struct Ts(pub i64);
    impl<'a> FromSql<'a> for Ts {
        fn from_sql(
            _: &Type,
            raw: &'a [u8],
        ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            Ok(Ts(i64::from_be_bytes(raw.try_into()?)))
        }
        fn accepts(ty: &Type) -> bool {
            *ty == Type::TIMESTAMPTZ
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finding_fixed_after_the_snapshot_is_marked_resolved() {
    let fx = setup("up_confirm", "").await;
    seed_blobs(&fx.p, "public.blobs", "uuid", "md5(g::text)::uuid", 100).await;
    // Three corrupt rows at the "snapshot".
    fx.sql("UPDATE blobs SET payload_md5 = 'bad' WHERE id IN (md5('1')::uuid, md5('2')::uuid, md5('3')::uuid)").await;
    let key = |g: i32| format!("{:x}", md5_uuid(g));
    let mut csv = String::from("relation,row_key,finding,detail\n");
    for g in 1..=3 {
        csv.push_str(&format!(
            "public.blobs,{},mismatch,stored=bad computed=x\n",
            key(g)
        ));
    }
    let params = json!({ "relation": "public.blobs", "check": "row_checksum", "schema": "public", "table": "blobs",
                         "key": "id", "content": "payload", "checksum": "payload_md5" });
    let other =
        "relation,row_key,finding,detail\nfiles,a/b.bin,checksum_mismatch,stored=1 computed=2\n"
            .to_string();
    let (run, _) = fake_run(
        &fx,
        &[
            findings_file("blob-integrity", csv, params),
            findings_file(
                "files",
                other,
                json!({ "relation": "files", "check": "file_checksum" }),
            ),
        ],
    )
    .await;
    // After the snapshot: row 2 is repaired, row 3 deleted; row 1 is still corrupt.
    fx.sql(
        "UPDATE blobs SET payload_md5 = md5(payload) WHERE id = md5('2')::uuid;
         DELETE FROM blobs WHERE id = md5('3')::uuid;",
    )
    .await;
    fx.drain().expect_code(0);
    let rows = fx
        .p
        .query(
            "SELECT row_key, still_holds FROM pgmaint.integrity_findings WHERE run_id = $1 AND relation = 'public.blobs'",
            &[&run],
        )
        .await
        .unwrap();
    let holds = |g: i32| {
        rows.iter()
            .find(|r| r.get::<_, String>(0) == key(g))
            .map(|r| r.get::<_, Option<bool>>(1))
    };
    assert_eq!(holds(1), Some(Some(true)), "still corrupt");
    assert_eq!(
        holds(2),
        Some(Some(false)),
        "fixed after the snapshot: resolved"
    );
    assert_eq!(
        holds(3),
        Some(Some(false)),
        "deleted after the snapshot: resolved"
    );
    let sql = "SELECT still_holds FROM pgmaint.integrity_findings WHERE run_id = $1 AND relation = 'files'";
    let other: Option<bool> = scalar(&fx.p, sql, &[&run]).await;
    assert_eq!(other, None, "no re-check for file_checksum findings");
}

/// A flood of findings (a wrong checksum column flags every row), some of whose rows
/// were fixed or deleted on the primary since the snapshot: each finding's still_holds
/// is right, writers to the checked table go on while the apply transaction is open
/// (it only reads that table), and an uploader killed mid-apply leaves nothing behind:
/// the rescued apply records each finding exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_findings_is_rechecked_by_key_exactly_once_without_blocking_writers() {
    const N: i64 = 3000;
    let fx = setup("up_flood", &blockable("lease = \"2s\"")).await;
    seed_blobs(&fx.p, "public.flood", "bigint", "g", N).await;
    // At the snapshot, every row's stored checksum is wrong.
    fx.sql("UPDATE flood SET payload_md5 = md5('wrong')").await;
    let mut csv = String::from("relation,row_key,finding,detail\n");
    for g in 1..=N {
        csv.push_str(&format!("public.flood,{g},mismatch,stored=x computed=y\n"));
    }
    // A repeat (kept once), an empty key of a bigint key (it names no row: unknown),
    // and a finding of another relation (not re-checked).
    csv.push_str("public.flood,17,mismatch,repeat\n");
    csv.push_str("public.flood,\"\",mismatch,empty key\n");
    csv.push_str("public.other,1,mismatch,other relation\n");
    let params = json!({ "relation": "public.flood", "check": "row_checksum", "schema": "public", "table": "flood",
                         "key": "id", "content": "payload", "checksum": "payload_md5" });
    let (run, ids) = fake_run(&fx, &[findings_file("flood", csv, params)]).await;
    let id = ids[0];
    // Since the snapshot: rows 1-100 repaired, 101-150 deleted.
    fx.sql(
        "UPDATE flood SET payload_md5 = md5(payload) WHERE id <= 100;
         DELETE FROM flood WHERE id BETWEEN 101 AND 150;",
    )
    .await;

    // Hold the apply mid-INSERT: an open transaction has inserted one of its findings,
    // so the uploader's INSERT waits on it (the unique index) once it has read the
    // checked table and inserted the rows before.
    let holder = fx.c.primary().await;
    holder
        .batch_execute(&format!(
            "BEGIN; INSERT INTO pgmaint.integrity_findings (run_id, task_name, snapshot_lsn, relation, row_key, finding)
                    VALUES ({run}, 'flood', '0/0', 'public.flood', '{N}', 'mismatch')"
        ))
        .await
        .unwrap();
    let mut w = spawn_uploader(&fx, "flood", &["--slots", "1"]);
    wait_apply_blocked(&fx).await;
    let reading = "pg_locks k JOIN pg_stat_activity a ON a.pid = k.pid
        WHERE a.application_name LIKE 'pgmaint-uploader-%' AND k.relation = 'public.flood'::regclass
          AND k.mode = 'AccessShareLock' AND k.granted";
    assert_eq!(
        fx.rows(reading).await,
        1,
        "the apply transaction reads the checked table"
    );
    // A writer to the checked table is not blocked while the apply transaction is
    // open: its statements finish within its 1 s lock_timeout. Rows 161-170 are
    // repaired and row 171 deleted now, during the apply.
    let writer = fx.c.primary().await;
    let t0 = Instant::now();
    writer
        .batch_execute(&format!(
            "SET lock_timeout = '1s';
             UPDATE flood SET payload_md5 = md5(payload) WHERE id BETWEEN 161 AND 170;
             DELETE FROM flood WHERE id = 171;
             INSERT INTO flood VALUES ({}, 'new', md5('new'));",
            N + 1
        ))
        .await
        .expect("writes to the checked table during the apply");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "writes took {:?}",
        t0.elapsed()
    );
    assert_eq!(fx.state(id).await, "running", "the apply is still open");

    // Kill the uploader mid-apply: its transaction rolls back, nothing is recorded.
    w.kill().unwrap(); // SIGKILL
    w.wait().unwrap();
    holder.batch_execute("ROLLBACK").await.unwrap();
    let uploaders = "pg_stat_activity WHERE application_name LIKE 'pgmaint-uploader-%'";
    fx.wait_rows("the killed uploader's sessions to end", uploaders, 0, 20)
        .await;
    let recorded = format!("pgmaint.integrity_findings WHERE run_id = {run}");
    assert_eq!(fx.rows(&recorded).await, 0, "no partial findings");

    // Rescued, the apply records each finding once (the repeat dropped), re-checked
    // against the table as it is now.
    fx.wait_lease_expired("the lease to expire", id).await;
    let out = fx
        .drain_saying(&format!("1 task(s) applied ({} rows)", N + 2))
        .expect_stderr("1 finding(s) repeat a (relation, row_key, finding)");
    assert_eq!(
        fx.task::<i32>(id, "attempts").await,
        2,
        "the killed attempt counts"
    );
    assert_eq!(fx.rows(&recorded).await, N + 2);
    let distinct = format!(
        "SELECT count(DISTINCT (relation, row_key, finding)) FROM pgmaint.integrity_findings WHERE run_id = {run}"
    );
    assert_eq!(fx.count(&distinct).await, N + 2, "no finding twice");
    let rows = fx
        .p
        .query(
            "SELECT relation, row_key, still_holds FROM pgmaint.integrity_findings WHERE run_id = $1",
            &[&run],
        )
        .await
        .unwrap();
    let mut wrong = Vec::new();
    for r in &rows {
        let (relation, key, holds): (String, Option<String>, Option<bool>) =
            (r.get(0), r.get(1), r.get(2));
        let want = match (relation.as_str(), key.as_deref()) {
            ("public.other", _) => None,
            (_, Some("")) => None,
            (_, Some(k)) => {
                let g: i64 = k.parse().unwrap();
                Some(!(g <= 150 || (161..=171).contains(&g)))
            }
            (_, None) => unreachable!("no NULL key in the file"),
        };
        if holds != want {
            wrong.push((relation, key, holds, want));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong still_holds: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    // The log's tally: of the re-checked relation's findings inserted, 2,839 still
    // hold, 161 were fixed or deleted, the empty key's is unknown.
    assert!(
        out.stderr.contains("confirmed=2839 resolved=161 unknown=1"),
        "{}",
        out.stderr
    );
}

/// The uuid `md5(g::text)::uuid`, as the text `uuid::text` prints.
fn md5_uuid(g: i32) -> UuidText {
    UuidText(md5_hex(g.to_string().as_bytes()))
}
struct UuidText(String);
impl std::fmt::LowerHex for UuidText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = &self.0;
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_escaping_and_invalid_uploads_are_rejected() {
    let fx = setup_with("up_reject", "", &id_v_table("rj")).await;
    // 1. Tampered: one byte changed after the manifest was written.
    let (r1, t1) = fake_run(&fx, &[merge_file("m", "public.rj", rows_csv(0, 10))]).await;
    fx.tamper(r1, "m.csv", "value 3", "value 4");
    // 2. A path that escapes results.dir (to a copy of a valid file, MD5 and all).
    let (r2, t2) = fake_run(&fx, &[merge_file("m", "public.rj", rows_csv(10, 20))]).await;
    let outside = fx.c.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(
        fx.c.results_dir().join(r2.to_string()).join("m.csv"),
        outside.join("m.csv"),
    )
    .unwrap();
    let escape = format!("{r2}/../../outside/m.csv");
    fx.p.execute(
        "UPDATE pgmaint.upload_tasks SET file = $2 WHERE id = $1",
        &[&t2[0], &escape],
    )
    .await
    .unwrap();
    // 3. A run marked invalid (its snapshot moved).
    let (r3, t3) = fake_run(&fx, &[merge_file("m", "public.rj", rows_csv(20, 30))]).await;
    let invalid = "UPDATE pgmaint.runs SET state = 'invalid' WHERE id = $1";
    fx.p.execute(invalid, &[&r3]).await.unwrap();

    fx.drain().expect_code(1).expect_stdout("0 task(s) applied");
    assert_eq!(fx.rows("rj").await, 0, "nothing applied");
    let (s1, _, e1) = fx.outcome(t1[0]).await;
    assert_eq!(s1, "failed");
    assert!(e1.contains("differs from the manifest"), "{e1}");
    let (s2, _, e2) = fx.outcome(t2[0]).await;
    assert_eq!(s2, "failed");
    assert!(e2.contains("outside results.dir"), "{e2}");
    let (s3, _, e3) = fx.outcome(t3[0]).await;
    assert_eq!(s3, "failed");
    assert!(e3.contains("its run is invalid"), "{e3}");
    for e in [e1, e2, e3] {
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

/// What an operator sees of a table: `\d` (columns, indexes, constraints) and `\dp`.
async fn describe(p: &Client, table: &str) -> Vec<String> {
    let rows = p
        .query(
            "SELECT 'col ' || attname || ' ' || format_type(atttypid, atttypmod) || ' ' || attnotnull
                    || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' ' || coalesce(col_description(a.attrelid, a.attnum), '')
               FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
             UNION ALL
             SELECT 'index ' || pg_get_indexdef(indexrelid) || ' ' || coalesce(obj_description(indexrelid, 'pg_class'), '')
               FROM pg_index WHERE indrelid = $1::text::regclass
             UNION ALL
             SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::text::regclass
             UNION ALL
             SELECT 'acl ' || coalesce(relacl::text, 'default') || ' owner ' || pg_get_userbyid(relowner)
                    || ' comment ' || coalesce(obj_description(oid, 'pg_class'), '')
               FROM pg_class WHERE oid = $1::text::regclass
             UNION ALL
             SELECT 'stat ' || stxname || ' ' || pg_get_statisticsobjdef(oid) FROM pg_statistic_ext WHERE stxrelid = $1::text::regclass
             UNION ALL
             SELECT 'colacl ' || attname || ' ' || attacl::text FROM pg_attribute
              WHERE attrelid = $1::text::regclass AND attacl IS NOT NULL
             ORDER BY 1",
            &[&table],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn swap_replaces_contents_and_keeps_indexes_grants_comment() {
    let fx = setup_with("up_swap", "", "CREATE ROLE reader; CREATE ROLE app_owner;
         CREATE TABLE public.citation_counts (
             doc_id bigint PRIMARY KEY, cites integer NOT NULL DEFAULT 0 CHECK (cites >= 0), label text);
         CREATE UNIQUE INDEX citation_counts_label ON citation_counts (lower(label)) WHERE label IS NOT NULL;
         CREATE INDEX citation_counts_cites ON citation_counts (cites DESC);
         COMMENT ON TABLE citation_counts IS 'citations per document';
         COMMENT ON COLUMN citation_counts.cites IS 'how many';
         COMMENT ON INDEX citation_counts_cites IS 'for top-N';
         CREATE STATISTICS citation_counts_stats (dependencies) ON cites, label FROM citation_counts;
         ALTER TABLE citation_counts OWNER TO app_owner;
         GRANT SELECT ON citation_counts TO reader;
         GRANT UPDATE (label) ON citation_counts TO reader;
         INSERT INTO citation_counts SELECT g, g, 'old ' || g FROM generate_series(1, 50) g;").await;
    let before = describe(&fx.p, "public.citation_counts").await;
    let mut csv = String::from("doc_id,cites,label\n");
    for g in 1..=200 {
        csv.push_str(&format!("{g},{},new {g}\n", g * 2));
    }
    csv.push_str("201,0,\n"); // NULL label
    let (run, ids) = fake_run(&fx, &[swap_file("cites", "public.citation_counts", csv)]).await;
    fx.drain()
        .expect_code(0)
        .expect_stderr("swap: exclusive lock held");
    assert_eq!(fx.state(ids[0]).await, "completed");
    assert_eq!(fx.rows("citation_counts").await, 201);
    assert_eq!(fx.rows("citation_counts WHERE label LIKE 'old%'").await, 0);
    assert_eq!(fx.rows("citation_counts WHERE label IS NULL").await, 1);
    assert_eq!(
        describe(&fx.p, "public.citation_counts").await,
        before,
        "\\d and \\dp look the same"
    );
    let m = fx.p.query_one("SELECT run_id, rows, snapshot_lsn = (SELECT snapshot_lsn FROM pgmaint.runs WHERE id = $1) FROM pgmaint.materializations WHERE target = 'public.citation_counts'", &[&run]).await.unwrap();
    assert_eq!(
        (m.get::<_, i64>(0), m.get::<_, i64>(1), m.get::<_, bool>(2)),
        (run, 201, true)
    );
    assert_eq!(
        fx.rows("pg_class WHERE relname LIKE 'pgmaint_swap_%'")
            .await,
        0,
        "no staging left"
    );

    // A view on the target: the swap refuses, naming it, and changes nothing.
    fx.sql("CREATE VIEW top_cited AS SELECT * FROM citation_counts WHERE cites > 100")
        .await;
    let (_, ids) = fake_run(
        &fx,
        &[swap_file(
            "cites",
            "public.citation_counts",
            "doc_id,cites,label\n1,1,x\n",
        )],
    )
    .await;
    fx.drain().expect_code(1);
    let (state, _, e) = fx.outcome(ids[0]).await;
    assert_eq!(state, "failed");
    assert!(e.contains("view top_cited depends on it"), "{e}");
    assert_eq!(fx.rows("citation_counts").await, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_running_apply() {
    let (fx, id) = setup_load("up_cancel", &blockable("lease = \"3s\""), "cn", 100).await;
    let (holder, mut w) = Blocker::ShareLock.block(&fx, "cn", "cancel", &[]).await;
    let out = fx
        .pgmaint(&["tasks", "cancel", &id.to_string()])
        .expect_code(0);
    assert!(out.stdout.contains("cancel requested"), "{}", out.stdout);
    fx.wait_state("the task to be cancelled", id, "cancelled", 15)
        .await;
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(fx.rows("cn").await, 0);
    fx.stop(&mut w, "cancel").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_wakes_an_idle_uploader() {
    // Polling every minute: only the NOTIFY can make the task run within seconds.
    let fx = setup_with("up_notify", "poll_interval = \"60s\"", &id_v_table("nt")).await;
    let listener = "pg_stat_activity WHERE application_name = 'pgmaint-uploader-listen'";
    let mut w = listening_uploader(&fx, "notify", listener).await;
    let id = fx.queue_load("nt", 0, 10).await;
    fx.notify().await;
    let woke = Instant::now();
    fx.wait_state("the notified task to complete", id, "completed", 10)
        .await;
    assert!(woke.elapsed() < Duration::from_secs(5));
    assert_eq!(fx.rows("nt").await, 10);
    fx.stop(&mut w, "notify").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_updates_changed_rows_inserts_new_ones_and_leaves_the_rest() {
    let fx = setup_with("up_merge", "", "CREATE TABLE \"Totals\" (\"Day\" int, region text, amount numeric, note text, PRIMARY KEY (\"Day\", region));
         INSERT INTO \"Totals\" SELECT d, 'eu', d * 10, 'kept' FROM generate_series(1, 10) d;").await;
    let xmin_of = |d: i32| {
        let p = &fx.p;
        async move {
            p.query_one(
                "SELECT xmin::text FROM \"Totals\" WHERE \"Day\" = $1 AND region = 'eu'",
                &[&d],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
        }
    };
    let (x1, x6) = (xmin_of(1).await, xmin_of(6).await);
    // Days 5..=10 again (6 unchanged, the others changed), 11..=12 new; no `note` column.
    let mut csv = String::from("Day,region,amount\n");
    for d in 5..=12 {
        let amount = if d == 6 { d * 10 } else { d * 100 };
        csv.push_str(&format!("{d},eu,{amount}\n"));
    }
    let id = fx
        .queue(merge_file_by(
            "totals",
            "\"Totals\"",
            &["Day", "region"],
            csv,
        ))
        .await;
    fx.apply(id).await;
    assert_eq!(fx.rows("\"Totals\"").await, 12);
    assert_eq!(
        fx.rows("\"Totals\" WHERE amount = \"Day\" * 100").await,
        7,
        "5, 7..=12"
    );
    assert_eq!(
        fx.rows("\"Totals\" WHERE note = 'kept'").await,
        10,
        "columns not in the file are kept"
    );
    assert_eq!(xmin_of(1).await, x1, "a row not in the file is untouched");
    assert_eq!(xmin_of(6).await, x6, "an unchanged row is not rewritten");

    // No unique key on the merge key: refused with a message naming table and columns.
    let id = fx
        .queue(merge_file_by(
            "totals",
            "\"Totals\"",
            &["Day"],
            "Day,region,amount\n1,eu,1\n",
        ))
        .await;
    fx.drain().expect_code(1);
    let e: String = fx.task(id, "last_error").await;
    assert!(
        e.contains(
            "merge target public.\"Totals\": no primary key or unique index on exactly (\"Day\")"
        ),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_lease_expired_cannot_complete_its_task() {
    let tables =
        "CREATE TABLE fz (id bigint PRIMARY KEY, v text); INSERT INTO fz VALUES (0, 'old')";
    let fx = setup_with("up_fenced", &blockable("lease = \"1s\""), tables).await;
    let id = fx
        .queue(swap_file("fz", "public.fz", rows_csv(1, 101)))
        .await;
    // Worker A's swap blocks on LOCK TABLE behind a reader; then A freezes (SIGSTOP),
    // so its heartbeats stop and its lease expires.
    let (reader, mut a) = Blocker::Reader.block(&fx, "fz", "a", &[]).await;
    let a_worker: String = fx.task(id, "worker").await;
    signal(a.id(), "STOP");
    fx.wait_lease_expired("A's lease to expire", id).await;
    // Worker B rescues the task and applies it too; it queues for the lock behind A.
    let mut b = spawn_uploader(&fx, "b", &["--once"]);
    wait_for("B to claim the task", Duration::from_secs(10), || async {
        fx.count(&format!(
            "SELECT count(*) FROM pgmaint.upload_tasks WHERE id = {} AND attempts = 2",
            id
        ))
        .await
            == 1
    })
    .await;
    wait_for(
        "B to wait for the lock too",
        Duration::from_secs(10),
        || async {
            fx.rows("pg_locks WHERE NOT granted AND relation = 'fz'::regclass")
                .await
                == 2
        },
    )
    .await;
    reader.batch_execute("COMMIT").await.unwrap(); // A's backend gets the lock first
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(a.id(), "CONT"); // A wakes up with an expired lease: it must not complete
    fx.exits_ok(&mut b, "b", 30).await;
    let r = fx.task_row(id, "state, worker, attempts").await;
    assert_eq!(r.get::<_, String>(0), "completed");
    assert_ne!(
        r.get::<_, String>(1),
        a_worker,
        "completed by B, not by the fenced A"
    );
    assert_eq!(fx.rows("fz").await, 100);
    assert_eq!(fx.rows("fz WHERE id = 0").await, 0);
    assert_eq!(fx.swap_leftovers().await, 0);
    fx.stop(&mut a, "a").await;
    let log = uploader_log(&fx, "a");
    assert!(
        log.contains("lease lost before completion") || log.contains("lease on upload task"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_keep_a_long_apply_alive() {
    let (fx, id) = setup_load("up_heartbeat", &blockable("lease = \"1s\""), "hb", 100).await;
    let (holder, mut w) = Blocker::ShareLock.block(&fx, "hb", "hb", &[]).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // three leases long
    assert_eq!(fx.state(id).await, "running");
    holder.batch_execute("COMMIT").await.unwrap();
    fx.wait_state("the task to complete", id, "completed", 10)
        .await;
    let attempts: i32 = fx.task(id, "attempts").await;
    assert_eq!(attempts, 1, "never rescued while its worker was alive");
    assert_eq!(fx.rows("hb").await, 100);
    fx.stop(&mut w, "hb").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_timeouts_are_retried_with_backoff_until_attempts_run_out() {
    let (fx, id) = setup_load("up_backoff", "lock_timeout = \"100ms\"", "bo", 10).await;
    fx.set_tasks("max_attempts = 2", "id", id).await;
    let holder = Blocker::ShareLock.on(&fx, "bo").await;

    // Attempt 1: the lock waits time out (retried inside the apply, then given up):
    // back to waiting, due only after a backoff.
    fx.drain_saying("0 failed, 1 to retry");
    let backoff = "extract(epoch FROM not_before - now())::float8";
    let r = fx
        .task_row(id, &format!("state, attempts, last_error, {backoff}"))
        .await;
    assert_eq!(
        (r.get::<_, String>(0).as_str(), r.get::<_, i32>(1)),
        ("waiting", 1)
    );
    assert!(
        r.get::<_, String>(2).contains("lock timeout"),
        "{}",
        r.get::<_, String>(2)
    );
    let wait: f64 = r.get(3);
    assert!(
        wait > 0.2 && wait <= 1.5,
        "backoff of attempt 1 is 1s +-50%: {wait}"
    );
    // Not due yet: a drain right now leaves it alone.
    fx.drain_saying("0 task(s) applied");

    // Attempt 2, the last: failed for good, nothing applied.
    tokio::time::sleep(Duration::from_secs_f64(wait + 0.1)).await;
    fx.drain().expect_code(1);
    let (state, attempts): (String, i32) = fx.task_pair(id, "state, attempts").await;
    assert_eq!((state.as_str(), attempts), ("failed", 2));
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(fx.rows("bo").await, 0);

    // An operator retries it once the table is free: applied.
    fx.pgmaint(&["tasks", "retry", &id.to_string()])
        .expect_code(0);
    fx.apply(id).await;
    assert_eq!(fx.rows("bo").await, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn swap_keeps_serial_and_identity_sequences_going() {
    let fx = setup_with("up_swap_seq", "", "CREATE TABLE s1 (id serial PRIMARY KEY, n bigint GENERATED BY DEFAULT AS IDENTITY, v text);
         INSERT INTO s1 (v) SELECT 'old' FROM generate_series(1, 5);").await;
    let csv = "id,n,v\n1,101,new\n2,102,new\n".to_string();
    let id = fx.queue(swap_file("s1", "public.s1", csv)).await;
    fx.apply(id).await;
    // The serial sequence survived the old table, and the identity carries on at 6.
    let app: (i32, i64) = pair(
        &fx.p,
        "INSERT INTO s1 (v) VALUES ('app') RETURNING id, n",
        &[],
    )
    .await;
    assert_eq!(app, (6, 6));
    assert_eq!(fx.rows("s1").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_task_in_hand_or_releases_it() {
    let grace = blockable("shutdown_grace = \"1s\"");
    let fx = setup_with("up_sigterm", &grace, &id_v_table("st")).await;

    // 1. The task in hand finishes within the grace period: applied, then exit 0.
    let first = fx.queue_load("st", 0, 10).await;
    let (holder, mut w) = Blocker::ShareLock.block(&fx, "st", "finish", &[]).await;
    signal(w.id(), "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    fx.exits_ok(&mut w, "finish", 20).await;
    assert_eq!(fx.state(first).await, "completed");
    assert_eq!(fx.rows("st").await, 10);

    // 2. It does not finish in time: rolled back and released (the attempt does not
    //    count), then exit 0; the next worker applies it.
    let second = fx.queue_load("st", 10, 20).await;
    let (holder, mut w) = Blocker::ShareLock.block(&fx, "st", "release", &[]).await;
    fx.stop(&mut w, "release").await;
    let r = fx.task_row(second, "state, attempts, worker").await;
    assert_eq!(
        (
            r.get::<_, String>(0).as_str(),
            r.get::<_, i32>(1),
            r.get::<_, Option<String>>(2)
        ),
        ("waiting", 0, None)
    );
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(fx.rows("st").await, 10);
    fx.apply(second).await;
    assert_eq!(fx.rows("st").await, 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_the_target_cannot_take_fails_at_once_naming_the_problem() {
    let tables = "CREATE TABLE bd (id bigint PRIMARY KEY, n integer NOT NULL, v text)";
    let fx = setup_with("up_baddata", "", tables).await;
    // Not a number in an integer column; a column the target lacks.
    let bad = fx
        .queue(merge_file("load", "public.bd", "id,n,v\n1,x,a\n"))
        .await;
    let missing = fx
        .queue(merge_file("load", "public.bd", "id,w\n1,a\n"))
        .await;
    let notnull = fx.queue(swap_file("s", "public.bd", "id,v\n1,a\n")).await;
    fx.drain().expect_code(1);
    let syntax = "invalid input syntax for type integer";
    fx.assert_failed(bad, 1, &[syntax, "22P02"]).await;
    let no_such_column =
        "merge target public.bd: column(s) \"w\" of the result file do not exist on the primary";
    fx.assert_failed(missing, 1, &[no_such_column]).await;
    let null = "null value in column \"n\"";
    fx.assert_failed(notnull, 1, &[null, "23502"]).await;
    assert_eq!(fx.rows("bd").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rescuer_fails_a_task_whose_attempts_are_used_up_and_drops_its_dependents() {
    let fx = setup_with(
        "up_rescue_fail",
        "lease = \"1s\"\nlock_timeout = \"60s\"",
        &id_v_table("rf"),
    )
    .await;
    let (_, ids) = fake_run(&fx, &merge_chain("public.rf", &["a", "b"], 0)).await;
    fx.set_tasks("max_attempts = 1", "id", ids[0]).await;
    let (holder, mut w) = Blocker::ShareLock.block(&fx, "rf", "killed", &[]).await;
    w.kill().unwrap();
    w.wait().unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    fx.wait_lease_expired("the lease to expire", ids[0]).await;
    fx.drain().expect_code(0);
    let (state, _, e) = fx.outcome(ids[0]).await;
    assert_eq!(state, "failed");
    assert!(e.contains("lease expired"), "{e}");
    assert_eq!(fx.state(ids[1]).await, "dropped");
    assert_eq!(fx.rows("rf").await, 0);
}

/// With `sslmode=require`, every uploader session is encrypted: the slots, the LISTEN
/// connection (only a NOTIFY can wake the worker in time here) and cancel requests.
/// The server refuses the role in plaintext, so one plaintext session would fail.
#[tokio::test(flavor = "multi_thread")]
async fn long_running_uploader_over_tls() {
    let toml = "poll_interval = \"60s\"\nlease = \"2s\"\nlock_timeout = \"60s\"";
    let fx = setup("up_tls", toml).await;
    enable_tls(&fx.c).await;
    let cfg = tls_config(&fx.c, &fx.cfg, "require");
    let fx = Fx { cfg, ..fx };
    fx.id_v_table("tl").await;
    let mut w = spawn_uploader(&fx, "tls", &["--slots", "2"]);
    wait_for("the uploader to LISTEN", Duration::from_secs(10), || async {
        fx.rows("pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name = 'pgmaint-uploader-listen'").await
            == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = fx.queue_load("tl", 0, 10).await;
    fx.p.execute("SELECT pg_notify('pgmaint_upload', 'test')", &[])
        .await
        .unwrap();
    fx.wait_state("the notified task to complete", id, "completed", 10)
        .await;
    // A cancel of a running apply goes through a (TLS) cancel request. The lock comes
    // first: queueing notifies, and the uploader would apply the task before it.
    let holder = Blocker::ShareLock.on(&fx, "tl").await;
    let id = fx.queue_load("tl", 10, 20).await;
    fx.p.execute("SELECT pg_notify('pgmaint_upload', 'test')", &[])
        .await
        .unwrap();
    wait_apply_blocked(&fx).await;
    fx.pgmaint(&["tasks", "cancel", &id.to_string()])
        .expect_code(0);
    fx.wait_state("the task to be cancelled", id, "cancelled", 10)
        .await;
    fx.wait_blocked_applies("the blocked statement to be cancelled", 0, 10)
        .await;
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(fx.rows("tl").await, 10);
    assert_eq!(
        fx.rows("pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE NOT s.ssl AND a.application_name LIKE 'pgmaint-uploader%'").await,
        0
    );
    fx.stop(&mut w, "tls").await;
}

/// The same, through a real cycle: the row_checksum scan's own params drive the
/// re-check, for each kind of finding (mismatch, NULL checksum, NULL content).
#[tokio::test(flavor = "multi_thread")]
async fn findings_of_a_real_cycle_are_rechecked_on_the_primary() {
    let (c, p) = blobs_cluster("up_confirm_cycle", 500).await;
    p.batch_execute(
        "UPDATE blobs SET payload_md5 = md5('tampered') WHERE id IN (10, 20);
         UPDATE blobs SET payload_md5 = NULL WHERE id IN (30, 35);
         UPDATE blobs SET payload = NULL WHERE id IN (40, 45);",
    )
    .await
    .unwrap();
    let cfg = c
        .ready_config("t.toml", &blobs_task("parallelism = 2"))
        .await;
    let s = run_ok(&c, &cfg, &[]);
    let run = s["run_id"].as_i64().unwrap();
    // After the snapshot: one of each kind is repaired, and one mismatch deleted.
    p.batch_execute(
        "UPDATE blobs SET payload_md5 = md5(payload) WHERE id IN (10, 30);
         UPDATE blobs SET payload = convert_to('x', 'UTF8'), payload_md5 = md5('x') WHERE id = 40;
         DELETE FROM blobs WHERE id = 20;",
    )
    .await
    .unwrap();
    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    let rows = p
        .query("SELECT row_key, finding, still_holds FROM pgmaint.integrity_findings WHERE run_id = $1 ORDER BY row_key::int", &[&run])
        .await
        .unwrap();
    let got: Vec<(String, String, Option<bool>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(String, String, Option<bool>)> = [
        ("10", "mismatch", false),
        ("20", "mismatch", false),
        ("30", "null_checksum", false),
        ("35", "null_checksum", true),
        ("40", "null_content", false),
        ("45", "null_content", true),
    ]
    .iter()
    .map(|(k, f, h)| (k.to_string(), f.to_string(), Some(*h)))
    .collect();
    assert_eq!(got, want);
}

/// The snapshot LSN of run `id`, as text.
async fn run_lsn(p: &Client, id: i64) -> String {
    p.query_one(
        "SELECT snapshot_lsn::text FROM pgmaint.runs WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap()
    .get(0)
}

/// (run_id, snapshot LSN) that `pgmaint.materializations` records for `target`.
async fn materialized(p: &Client, target: &str) -> (i64, String) {
    let r = p
        .query_one(
            "SELECT run_id, snapshot_lsn::text FROM pgmaint.materializations WHERE target = $1",
            &[&target],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// Two runs of the same swap and merge, applied newest first (the uploader was down,
/// or the older one was retried after a backoff): the older one must not overwrite the
/// newer content, nor the LSN `pgmaint.materializations` records.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_snapshot_never_overwrites_a_newer_one() {
    let tables =
        "CREATE TABLE sw (id bigint PRIMARY KEY, v text); INSERT INTO sw VALUES (0, 'original');
         CREATE TABLE mg (id bigint PRIMARY KEY, v text);";
    let fx = setup_with("up_superseded", "", tables).await;
    let files = |tag: &str, ids: &[i64]| {
        let mut csv = String::from("id,v\n");
        for i in ids {
            csv.push_str(&format!("{i},{tag}\n"));
        }
        vec![
            swap_file("sw", "public.sw", csv.clone()),
            merge_file("mg", "public.mg", csv),
        ]
    };
    let (old_run, old_ids) = fake_run(&fx, &files("old", &[1, 2, 3])).await;
    let (new_run, new_ids) = fake_run(&fx, &files("new", &[1, 2])).await;
    let (old_lsn, new_lsn) = (run_lsn(&fx.p, old_run).await, run_lsn(&fx.p, new_run).await);
    let newer: bool =
        fx.p.query_one(
            "SELECT $1::text::pg_lsn > $2::text::pg_lsn",
            &[&new_lsn, &old_lsn],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        newer,
        "run {new_run} ({new_lsn}) is newer than run {old_run} ({old_lsn})"
    );

    // The newer run first.
    // The newer run first, then the older one.
    let superseded = "2 task(s) applied (0 rows; 2 superseded by a newer snapshot)";
    fx.apply_newer_first(old_run, "2 task(s) applied", superseded)
        .await;

    for id in old_ids {
        let r = fx.task_row(id, "state, rows_applied, last_error").await;
        let e: String = r.get::<_, Option<String>>(2).unwrap_or_default();
        assert_eq!(r.get::<_, String>(0), "completed", "{e}");
        assert_eq!(r.get::<_, Option<i64>>(1), Some(0), "{e}");
        assert!(
            e.contains(&format!("superseded by run {new_run} at LSN {new_lsn}")),
            "{e}"
        );
    }
    for id in new_ids {
        assert_eq!(fx.state(id).await, "completed");
    }
    // The newer content stays: the swap's rows and the merge's alone.
    let content = |table: &'static str| {
        let p = &fx.p;
        async move {
            p.query(&format!("SELECT id, v FROM {table} ORDER BY id"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
                .collect::<Vec<_>>()
        }
    };
    let want = vec![(1, "new".to_string()), (2, "new".to_string())];
    assert_eq!(content("sw").await, want);
    assert_eq!(content("mg").await, want);
    for target in ["public.sw", "public.mg"] {
        assert_eq!(
            materialized(&fx.p, target).await,
            (new_run, new_lsn.clone()),
            "{target}"
        );
    }
    assert_eq!(fx.swap_leftovers().await, 0, "no staging left");
}

/// The same race with both applies in flight: the newer run's swap holds the target's
/// materializations row while it waits for its exclusive lock; the older run's swap,
/// already past its early check (nothing was materialized yet), builds its staging
/// table, then waits on that row, sees the newer snapshot once it commits, and
/// completes without applying (its staging table rolled back).
#[tokio::test(flavor = "multi_thread")]
async fn an_older_swap_racing_a_newer_one_is_superseded() {
    let tables =
        "CREATE TABLE sr (id bigint PRIMARY KEY, v text); INSERT INTO sr VALUES (0, 'original')";
    let fx = setup_with("up_superseded_race", &blockable("lease = \"10s\""), tables).await;
    let swap = |csv: String| swap_file("sr", "public.sr", csv);
    let (old_run, old_ids) = fake_run(&fx, &[swap("id,v\n1,old\n2,old\n".into())]).await;
    let (new_run, new_ids) = fake_run(&fx, &[swap("id,v\n1,new\n".into())]).await;
    let new_lsn = run_lsn(&fx.p, new_run).await;
    fx.hold_run(old_run).await;
    // A reader holds the target: the newer swap blocks on LOCK TABLE.
    let (reader, mut a) = Blocker::Reader.block(&fx, "sr", "new", &[]).await;
    // The older one, on another uploader: it blocks on the materializations row.
    fx.release_run(old_run).await;
    let mut b = spawn_uploader(&fx, "old", &["--slots", "1"]);
    fx.wait_blocked_applies("both applies to wait on a lock", 2, 20)
        .await;
    assert_eq!(fx.state(old_ids[0]).await, "running");
    reader.batch_execute("COMMIT").await.unwrap();
    wait_for(
        "both tasks to complete",
        Duration::from_secs(20),
        || async {
            fx.state(old_ids[0]).await == "completed" && fx.state(new_ids[0]).await == "completed"
        },
    )
    .await;
    for (w, tag) in [(&mut a, "new"), (&mut b, "old")] {
        signal(w.id(), "TERM");
        assert_eq!(
            wait_exit(w, Duration::from_secs(20)).await,
            0,
            "{}",
            uploader_log(&fx, tag)
        );
    }
    let e: String = fx.task(old_ids[0], "last_error").await;
    assert!(e.contains(&format!("superseded by run {new_run}")), "{e}");
    assert_eq!(fx.rows("sr WHERE v = 'new'").await, 1);
    assert_eq!(fx.rows("sr").await, 1);
    assert_eq!(materialized(&fx.p, "public.sr").await, (new_run, new_lsn));
    assert_eq!(fx.swap_leftovers().await, 0, "no staging left");
}

/// An index built on the target (or a view created on it) while the swap's staging
/// table was built and it waited for its exclusive lock: the swap must not commit a
/// table without that index (or leave the view on the old table). The attempt is
/// rolled back and retried against the table as it now is.
#[tokio::test(flavor = "multi_thread")]
async fn an_index_created_while_a_swap_waits_for_its_lock_is_kept() {
    let tables =
        "CREATE TABLE ix (id bigint PRIMARY KEY, v text); INSERT INTO ix VALUES (0, 'old')";
    let fx = setup_with("up_swap_race", "lock_timeout = \"60s\"", tables).await;
    let id = fx
        .queue(swap_file("ix", "public.ix", rows_csv(1, 101)))
        .await;
    // The test holds the target; the swap builds its staging table, then waits.
    let (holder, mut once) = Blocker::Reader.block(&fx, "ix", "race", &["--once"]).await;
    // Meanwhile an index is built on the target (the holder already holds a lock on
    // it, so it does not queue behind the swap's request).
    holder
        .batch_execute("CREATE INDEX ix_v ON ix (v); COMMIT")
        .await
        .unwrap();
    fx.exits_ok(&mut once, "race", 30).await;
    let r = fx.task_row(id, "state, last_error").await;
    let e: String = r.get::<_, Option<String>>(1).unwrap_or_default();
    assert_eq!(
        r.get::<_, String>(0),
        "waiting",
        "retried, not completed: {e}"
    );
    assert!(
        e.contains("changed during the apply") && e.contains("ix_v"),
        "{e}"
    );
    assert_eq!(fx.rows("ix").await, 1, "nothing applied yet");
    // The retry swaps, and the new table has the index.
    fx.set_tasks("not_before = now()", "id", id).await;
    fx.apply(id).await;
    assert_eq!(fx.rows("ix").await, 100);
    assert_eq!(
        fx.rows(
            "pg_indexes WHERE schemaname = 'public' AND tablename = 'ix' AND indexname = 'ix_v'"
        )
        .await,
        1,
        "the index built during the first attempt is on the new table"
    );

    // A view created while the next swap waits: never left on the old table.
    let id = fx
        .queue(swap_file("ix", "public.ix", rows_csv(1, 51)))
        .await;
    let (holder, mut once) = Blocker::Reader
        .block(&fx, "ix", "race-view", &["--once"])
        .await;
    holder
        .batch_execute("CREATE VIEW ix_view AS SELECT * FROM ix; COMMIT")
        .await
        .unwrap();
    fx.exits_ok(&mut once, "race-view", 30).await;
    let e: String = fx.last_error(id).await;
    assert_eq!(fx.state(id).await, "waiting", "{e}");
    assert!(e.contains("view ix_view depends on it"), "{e}");
    assert_eq!(fx.rows("ix_view").await, 100);
    assert_eq!(fx.swap_leftovers().await, 0, "no staging or old table left");
}

/// Whoever can write results.dir can rewrite a data file and its manifest so that they
/// agree. The queue row on the primary keeps the MD5 and size the coordinator wrote:
/// the upload is refused and nothing is applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_file_rewritten_with_its_manifest_is_refused() {
    let (c, p) = cluster_with(
        "up_rewritten",
        "CREATE TABLE src (id int PRIMARY KEY, v text);
         INSERT INTO src SELECT g, 'v' || g FROM generate_series(1, 20) g;
         CREATE TABLE dst (id int PRIMARY KEY, v text);
         INSERT INTO dst VALUES (0, 'before');",
    )
    .await;
    let cfg = c
        .ready_config(
            "rw.toml",
            "[[tasks]]\nname = \"dst\"\nkind = \"materialize\"\n\
             query = \"SELECT id, v FROM src\"\ntarget = \"public.dst\"\n",
        )
        .await;
    let s = run_ok(&c, &cfg, &[]);
    let run_id = s["run_id"].as_i64().unwrap();
    let dir = c.results_dir().join(run_id.to_string());
    let mut manifest = read_manifest(&dir);
    let name = task_entry(&manifest, "dst")["file"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let data = std::fs::read_to_string(dir.join(&name)).unwrap();
    let forged = data.replace(",v7\n", ",forged\n");
    assert_ne!(forged, data);
    std::fs::write(dir.join(&name), &forged).unwrap();
    for task in manifest["tasks"].as_array_mut().unwrap() {
        if task["name"] == "dst" {
            task["file"]["md5"] = json!(md5_hex(forged.as_bytes()));
            task["file"]["size"] = json!(forged.len());
        }
    }
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();

    c.run(&cfg, &["uploader", "--once"])
        .expect_code(1)
        .expect_stdout("0 task(s) applied");
    let sql = "SELECT state, last_error FROM pgmaint.upload_tasks WHERE run_id = $1";
    let (state, e): (String, Option<String>) = pair(&p, sql, &[&run_id]).await;
    let e = e.unwrap_or_default();
    assert_eq!(state, "failed", "{e}");
    assert!(
        e.contains("differ from those recorded when the task was queued"),
        "{e}"
    );
    let rows: Vec<(i32, String)> = pair_rows(&p, "SELECT id, v FROM dst ORDER BY id", &[]).await;
    assert_eq!(rows, vec![(0, "before".to_string())], "nothing applied");
}

/// A NULL in a merge key matches no row (`t.k = l.k`), so every run would insert that
/// row again: the file is refused, naming the column.
#[tokio::test(flavor = "multi_thread")]
async fn a_merge_file_with_a_null_key_is_refused() {
    let tables = "CREATE TABLE nk (k text UNIQUE, v text); INSERT INTO nk VALUES ('a', 'old')";
    let fx = setup_with("up_merge_null_key", "", tables).await;
    let file = || merge_file_by("nk", "public.nk", &["k"], "k,v\na,new\n,orphan\n");
    let (first, second) = (fx.queue(file()).await, fx.queue(file()).await);
    fx.drain().expect_code(1);
    for id in [first, second] {
        fx.assert_failed(id, 1, &["key column \"k\" is NULL in 1 row(s)"])
            .await;
    }
    let rows: Vec<(Option<String>, String)> =
        pair_rows(&fx.p, "SELECT k, v FROM nk ORDER BY k", &[]).await;
    assert_eq!(rows, vec![(Some("a".to_string()), "old".to_string())]);
}

/// Every upload task's state, attempts, not_before, last error and finished_at.
async fn queue_snapshot(p: &Client) -> Vec<(i64, String, i32, String, String, String)> {
    p.query(
        "SELECT id, state, attempts, not_before::text, coalesce(last_error, ''), coalesce(finished_at::text, '')
           FROM pgmaint.upload_tasks ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
    .collect()
}

/// The `key=N` field of the first log line containing `message`, if any.
fn log_field(log: &str, message: &str, key: &str) -> Option<i64> {
    let line = log.lines().find(|l| l.contains(message))?;
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_null_key_and_an_empty_key_stay_distinct_findings_end_to_end() {
    // A unique text key holding NULL, '' and 'a'; every row's stored md5 is wrong.
    let (c, p) = cluster_with(
        "up_null_empty_key",
        "CREATE TABLE tk (k text UNIQUE, payload bytea, payload_md5 text);
         INSERT INTO tk VALUES (NULL, '\\x01', md5('x')), ('', '\\x02', md5('x')), ('a', '\\x03', md5('x'));",
    )
    .await;
    let task = row_checksum_task("keys", "public.tk", "k", "payload", "payload_md5", "");
    let cfg = c.ready_config("t.toml", &task).await;
    let s = run_ok(&c, &cfg, &[]);
    let run = s["run_id"].as_i64().unwrap();
    let m = manifest(&c.results_dir(), run);
    let t = task_entry(&m, "keys");
    assert_eq!(t["findings"].as_u64(), Some(3), "{m}");
    assert_eq!(t["file"]["rows"].as_u64(), Some(3), "{m}");

    // After the snapshot the '' row is repaired; the NULL and 'a' rows stay corrupt.
    p.batch_execute("UPDATE tk SET payload_md5 = md5(payload) WHERE k = ''")
        .await
        .unwrap();
    let up = c.run(&cfg, &["uploader", "--once"]).expect_code(0);

    let rows: Vec<(Option<String>, String, Option<bool>)> = p
        .query(
            "SELECT row_key, finding, still_holds FROM pgmaint.integrity_findings
              WHERE run_id = $1 ORDER BY row_key NULLS FIRST",
            &[&run],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(Option<String>, String, Option<bool>)> = vec![
        (None, "mismatch".into(), Some(true)),
        (Some(String::new()), "mismatch".into(), Some(false)),
        (Some("a".into()), "mismatch".into(), Some(true)),
    ];
    assert_eq!(rows, want, "uploader stderr:\n{}", up.stderr);

    // What the uploader reports counts the findings it inserted, no more.
    let confirmed = log_field(
        &up.stderr,
        "findings re-checked on the primary",
        "confirmed",
    );
    let resolved = log_field(&up.stderr, "findings re-checked on the primary", "resolved");
    assert_eq!(
        (confirmed, resolved),
        (Some(2), Some(1)),
        "uploader stderr:\n{}",
        up.stderr
    );
    let sql = "SELECT rows_applied FROM pgmaint.upload_tasks WHERE run_id = $1";
    let rows_applied: i64 = scalar(&p, sql, &[&run]).await;
    assert_eq!(rows_applied, 3);
    assert!(
        up.stdout.contains("1 task(s) applied (3 rows"),
        "{}",
        up.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retrying_a_task_whose_prerequisite_failed_is_refused_naming_the_prerequisite() {
    let fx = setup("up_retry_blocked", "").await;
    // The first merge's target does not exist yet: it fails for good, the second and
    // third are dropped.
    let (_, ids) = fake_run(
        &fx,
        &merge_chain("public.later", &["first", "second", "third"], 0),
    )
    .await;
    let (first, second, third) = (ids[0], ids[1], ids[2]);
    fx.drain().expect_code(1);
    assert_eq!(fx.state(first).await, "failed");
    assert_eq!(fx.state(second).await, "dropped");
    assert_eq!(fx.state(third).await, "dropped");
    let before = queue_snapshot(&fx.p).await;

    // Retrying the dependent alone would leave it waiting forever: refused, nothing changed.
    let retry_first = format!("retry task {first} first");
    let failed = format!("upload task {first} (run");
    fx.assert_retry_refused(second, &[&failed, "task first)", "is failed", &retry_first]);
    // Two steps down the chain: the dropped prerequisite, and the failed task behind it.
    let dropped = format!("prerequisite upload task {second} (run");
    let because = "is dropped because upload task";
    fx.assert_retry_refused(
        third,
        &[&dropped, because, "task first) is failed", &retry_first],
    );
    assert_eq!(
        queue_snapshot(&fx.p).await,
        before,
        "a refused retry changes nothing"
    );

    // Once the cause is fixed, retrying the prerequisite brings both back.
    fx.id_v_table("later").await;
    let retry = fx
        .pgmaint(&["tasks", "retry", &first.to_string(), "--json"])
        .expect_code(0);
    let retry: Value = serde_json::from_str(&retry.stdout).unwrap();
    assert_eq!(retry["requeued"], json!([first, second, third]));
    fx.drain().expect_code(0);
    for id in [first, second, third] {
        assert_eq!(fx.state(id).await, "completed");
    }
    assert_eq!(fx.rows("later").await, 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn migration_5_keeps_recorded_findings_and_makes_null_keys_distinct_from_empty_ones() {
    let c = Cluster::up("up_migrate_null_key", 0);
    let cfg = c.write_config(
        "t.toml",
        &format!(
            "[[replicas]]\nname = \"r1\"\ndsn = \"{}\"\n",
            c.primary_dsn()
        ),
    );
    let p = c.primary().await;
    // A primary at schema version 3, with findings already recorded.
    p.batch_execute(
        "CREATE SCHEMA pgmaint;
         CREATE TABLE pgmaint.schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
                                                  applied_at timestamptz NOT NULL DEFAULT now());",
    )
    .await
    .unwrap();
    for sql in [
        include_str!("../sql/0001_initial.sql"),
        include_str!("../sql/0002_upload_queue.sql"),
        include_str!("../sql/0003_expected_file.sql"),
    ] {
        p.batch_execute(sql).await.unwrap();
    }
    p.batch_execute(
        "INSERT INTO pgmaint.schema_migrations (version, name) VALUES (1, 'initial'), (2, 'upload_queue'), (3, 'expected_file');
         INSERT INTO pgmaint.runs (replica, state, holder, snapshot_lsn) VALUES ('r1', 'succeeded', 'e2e', '0/1');
         INSERT INTO pgmaint.integrity_findings (run_id, task_name, snapshot_lsn, relation, row_key, finding, detail)
         VALUES (1, 't', '0/1', 'public.x', '', 'mismatch', 'old empty'),
                (1, 't', '0/1', 'public.x', 'k', 'mismatch', 'old k');",
    )
    .await
    .unwrap();

    c.run(&cfg, &["init"]).expect_code(0);
    let kept: Vec<(Option<String>, String)> = pair_rows(
        &p,
        "SELECT row_key, detail FROM pgmaint.integrity_findings ORDER BY id",
        &[],
    )
    .await;
    assert_eq!(
        kept,
        vec![
            (Some(String::new()), "old empty".to_string()),
            (Some("k".to_string()), "old k".to_string())
        ]
    );
    // The uploader's insert: a NULL key is new beside '', then a repeat of either is not.
    let insert = |key: Option<&'static str>| {
        let p = &p;
        async move {
            p.execute(
                "INSERT INTO pgmaint.integrity_findings (run_id, task_name, snapshot_lsn, relation, row_key, finding)
                 VALUES (1, 't', '0/1', 'public.x', $1, 'mismatch')
                 ON CONFLICT (run_id, task_name, relation, (row_key IS NULL), coalesce(row_key, ''), finding) DO NOTHING",
                &[&key],
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(insert(None).await, 1, "a NULL key is not the empty key");
    assert_eq!(insert(None).await, 0, "NULL keys are equal to each other");
    assert_eq!(insert(Some("")).await, 0);
    assert_eq!(insert(Some("k")).await, 0);
    let old_constraints: i64 = p
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'pgmaint.integrity_findings'::regclass AND contype = 'u'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(old_constraints, 0, "the old unique constraint is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_recheck_counts_only_the_findings_inserted_and_a_repeat_is_reported() {
    let tables = "CREATE TABLE rc (k text PRIMARY KEY, payload bytea, payload_md5 text);
         INSERT INTO rc VALUES ('a', '\\x01', md5('x')), ('b', '\\x02', md5('\\x02'::bytea));";
    let fx = setup_with("up_recheck_counts", "", tables).await;
    // 'a' twice (the second is a repeat), 'b' fixed since the snapshot.
    let csv = "relation,row_key,finding,detail\n\
               \"public.rc\",\"a\",\"mismatch\",\"first\"\n\
               \"public.rc\",\"a\",\"mismatch\",\"again\"\n\
               \"public.rc\",\"b\",\"mismatch\",\"fixed since\"\n"
        .to_string();
    let params = json!({ "relation": "public.rc", "check": "row_checksum", "schema": "public", "table": "rc",
                         "key": "k", "content": "payload", "checksum": "payload_md5" });
    let (run, ids) = fake_run(&fx, &[findings_file("rc", csv, params)]).await;
    let up = fx.drain().expect_code(0);
    let inserted = fx
        .count(&format!(
            "SELECT count(*) FROM pgmaint.integrity_findings WHERE run_id = {run}"
        ))
        .await;
    assert_eq!(inserted, 2);
    let msg = "findings re-checked on the primary";
    assert_eq!(
        (
            log_field(&up.stderr, msg, "confirmed"),
            log_field(&up.stderr, msg, "resolved")
        ),
        (Some(1), Some(1)),
        "{}",
        up.stderr
    );
    assert!(
        up.stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains("1 finding(s) repeat")),
        "{}",
        up.stderr
    );
    let rows_applied: i64 = fx.task(ids[0], "rows_applied").await;
    assert_eq!(rows_applied, inserted);
}

/// The names of the tables in the database that look like pgmaint's swapped-out
/// tables (`schema.name`), sorted.
async fn swap_old_tables(p: &Client) -> Vec<String> {
    p.query(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND c.relname LIKE 'pgmaint\\_swap\\_old\\_%' ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// pgmaint drops only the tables it renamed away itself. A user's tables named like
/// them (`pgmaint_swap_old_…`, in any schema) survive any number of swaps. A table a
/// swap left behind (the worker died, or the drop failed, after the commit) is still
/// dropped by a later swap; but not once someone renamed it, nor a user's table
/// created under its name.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_table_named_like_a_swap_leftover_survives_swaps() {
    let tables = "CREATE TABLE sw (id bigint PRIMARY KEY, v text);
         CREATE TABLE other (id bigint PRIMARY KEY, v text);
         CREATE SCHEMA keep;
         CREATE TABLE public.pgmaint_swap_old_important (id int, v text);
         INSERT INTO public.pgmaint_swap_old_important VALUES (1, 'precious');
         CREATE TABLE keep.pgmaint_swap_old_1 (id int);
         INSERT INTO keep.pgmaint_swap_old_1 VALUES (1);";
    let fx = setup_with("up_swap_old_user", "", tables).await;
    let users = vec![
        "keep.pgmaint_swap_old_1".to_string(),
        "public.pgmaint_swap_old_important".to_string(),
    ];
    for round in 0..3 {
        let id = fx
            .queue(swap_file(
                "sw",
                "public.sw",
                format!("id,v\n1,round {round}\n"),
            ))
            .await;
        fx.apply(id).await;
        assert_eq!(
            swap_old_tables(&fx.p).await,
            users,
            "after swap {round}: only the user's tables are left"
        );
    }
    assert_eq!(
        fx.rows("public.pgmaint_swap_old_important WHERE v = 'precious'")
            .await,
        1
    );
    assert_eq!(fx.rows("keep.pgmaint_swap_old_1").await, 1);

    // The drop after the commit fails (as if the worker had died before it): the
    // swapped-out table is left behind.
    fx.sql("CREATE FUNCTION keep_swapped_out() RETURNS event_trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects()
                       WHERE object_type = 'table' AND object_name LIKE 'pgmaint\\_swap\\_old\\_%') THEN
             RAISE EXCEPTION 'test: swapped-out tables are kept';
           END IF;
         END $$;
         CREATE EVENT TRIGGER keep_swapped_out ON sql_drop EXECUTE FUNCTION keep_swapped_out();").await;
    let (_, left) = fake_run(&fx, &[swap_file("sw", "public.sw", "id,v\n1,left\n")]).await;
    // The drop was attempted and failed.
    fx.drain().expect_code(0).expect_stderr("could not drop");
    assert_eq!(fx.state(left[0]).await, "completed");
    let leftover = format!("public.pgmaint_swap_old_{}", left[0]);
    // A second one, which its user then renames to keep it, and whose name a new user
    // table takes.
    let (_, renamed) = fake_run(&fx, &[swap_file("sw", "public.sw", "id,v\n1,renamed\n")]).await;
    fx.apply(renamed[0]).await;
    let taken = format!("public.pgmaint_swap_old_{}", renamed[0]);
    let mut want = users.clone();
    want.extend([leftover.clone(), taken.clone()]);
    want.sort();
    assert_eq!(swap_old_tables(&fx.p).await, want);
    fx.p.batch_execute(&format!(
        "ALTER TABLE {taken} RENAME TO kept_copy;
         CREATE TABLE {taken} (id int); INSERT INTO {taken} VALUES (7);
         ALTER EVENT TRIGGER keep_swapped_out DISABLE;"
    ))
    .await
    .unwrap();

    // The next swap, of another target, cleans up pgmaint's own leftover only.
    let (_, next) = fake_run(&fx, &[swap_file("other", "public.other", "id,v\n1,x\n")]).await;
    fx.apply(next[0]).await;
    let mut want = users.clone();
    want.push(taken.clone());
    want.sort();
    assert_eq!(
        swap_old_tables(&fx.p).await,
        want,
        "{leftover} dropped; the user's tables kept"
    );
    assert_eq!(
        fx.count(&format!("SELECT count(*) FROM {taken} WHERE id = 7"))
            .await,
        1
    );
    assert_eq!(fx.rows("kept_copy").await, 1);
    assert_eq!(
        fx.rows("public.pgmaint_swap_old_important WHERE v = 'precious'")
            .await,
        1
    );
    assert_eq!(fx.rows("sw WHERE v = 'renamed'").await, 1);
}

/// Two tasks merge different rows into one target. The newer snapshot of one task
/// must not make the other task's older upload "superseded": each task's rows are
/// its own. Within one task, an older snapshot is still superseded by a newer one.
/// A swap shares its target with no other task: a config error at start-up.
#[tokio::test(flavor = "multi_thread")]
async fn two_merge_tasks_into_one_target_both_apply_in_any_order() {
    let fx = setup_with("up_merge_two_tasks", "", &id_v_table("sales_summary")).await;
    let file = |task: &str, ids: std::ops::Range<i64>, tag: &str| {
        let mut csv = String::from("id,v\n");
        for i in ids {
            csv.push_str(&format!("{i},{task} {tag}\n"));
        }
        merge_file(task, "public.sales_summary", csv)
    };
    let content = || {
        let sql = "SELECT v, count(*) FROM sales_summary GROUP BY v ORDER BY v";
        pair_rows::<String, i64>(&fx.p, sql, &[])
    };
    // Three rows with `a`, three with `b`.
    let three_each = |a: &str, b: &str| vec![(a.to_string(), 3), (b.to_string(), 3)];

    // `us` (older snapshot), then `eu` (newer); `us` waits (as after a lock time-out)
    // while `eu` applies; then `us` is retried.
    let (us_run, us_ids) = fake_run(&fx, &[file("us", 1..4, "1")]).await;
    let (eu_run, eu_ids) = fake_run(&fx, &[file("eu", 101..104, "1")]).await;
    fx.hold_run(us_run).await;
    fx.drain_saying("1 task(s) applied (3 rows)");
    assert_eq!(fx.state(eu_ids[0]).await, "completed");
    fx.release_run(us_run).await;
    // `us` applies after `eu`.
    fx.drain_saying("1 task(s) applied (3 rows)");
    let r = fx
        .task_row(us_ids[0], "state, rows_applied, last_error")
        .await;
    let e: Option<String> = r.get(2);
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, Option<i64>>(1)),
        ("completed".to_string(), Some(3)),
        "{e:?}"
    );
    assert_eq!(e, None, "not superseded");
    assert_eq!(content().await, three_each("eu 1", "us 1"));
    let recorded: Vec<(String, i64)> = pair_rows(
        &fx.p,
        "SELECT task_name, run_id FROM pgmaint.materializations
              WHERE target = 'public.sales_summary' ORDER BY task_name",
        &[],
    )
    .await;
    assert_eq!(
        recorded,
        vec![("eu".to_string(), eu_run), ("us".to_string(), us_run)]
    );

    // The other order: `eu` older, `us` newer, `us` applied first.
    let (eu2, _) = fake_run(&fx, &[file("eu", 101..104, "2")]).await;
    let (us2, _) = fake_run(&fx, &[file("us", 1..4, "2")]).await;
    fx.apply_newer_first(eu2, "", "1 task(s) applied (3 rows)")
        .await;
    assert_eq!(content().await, three_each("eu 2", "us 2"));
    let _ = us2;

    // Within one task, an older snapshot applied after a newer one is still superseded.
    let (us3, us3_ids) = fake_run(&fx, &[file("us", 1..4, "3")]).await;
    let (us4, _) = fake_run(&fx, &[file("us", 1..4, "4")]).await;
    let superseded = "1 task(s) applied (0 rows; 1 superseded by a newer snapshot)";
    fx.apply_newer_first(us3, "", superseded).await;
    let e: String = fx.task(us3_ids[0], "last_error").await;
    assert!(e.contains(&format!("superseded by run {us4}")), "{e}");
    assert_eq!(content().await, three_each("eu 2", "us 4"));

    // A swap into a target that other tasks write: refused at start-up, naming it.
    let task = |name: &str, merge: bool| {
        format!(
            "[[tasks]]\nname = \"{name}\"\nkind = \"materialize\"\nquery = \"SELECT 1 AS id\"\n\
             target = \"public.sales_summary\"\n{}",
            if merge { "merge_key = [\"id\"]\n" } else { "" }
        )
    };
    let cfg = fx.c.write_config(
        "shared-target.toml",
        &format!(
            "[[replicas]]\nname = \"r1\"\ndsn = \"{}\"\n{}{}{}",
            fx.c.primary_dsn(),
            task("us", true),
            task("eu", true),
            task("all", false)
        ),
    );
    let out = fx.c.run(&cfg, &["uploader", "--once"]).expect_code(2);
    let line = out.error_line().unwrap_or_default().to_string();
    assert!(
        line.contains("tasks[2].target: public.sales_summary is written by task \"us\" (merge) and task \"all\" (swap)"),
        "{}",
        out.stderr
    );
}

/// The merge's change check must work for types without an equality operator (json,
/// xml, point, arrays of composites holding json) as well as for ordinary ones: the
/// first apply inserts, the second updates what changed and leaves unchanged rows
/// unwritten.
#[tokio::test(flavor = "multi_thread")]
async fn a_merge_handles_json_xml_point_and_custom_array_columns() {
    let fx = setup_with("up_merge_types", "", "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TYPE pair AS (a int, j json);
         CREATE TABLE odd (id bigint PRIMARY KEY, j json, x xml, p point, moods mood[], pairs pair[], f float8);").await;
    let header = "id,j,x,p,moods,pairs,f\n";
    let first = format!(
        "{header}\
         1,\"{{\"\"a\"\": 1}}\",<a>1</a>,\"(1,2)\",\"{{sad,ok}}\",\"{{\"\"(1,{{}})\"\"}}\",0.1\n\
         2,\"{{\"\"a\"\": 2}}\",<a>2</a>,\"(2,2)\",\"{{ok}}\",\"{{\"\"(2,{{}})\"\"}}\",0.2\n\
         3,\"[1, 2]\",<b/>,\"(3,2)\",\"{{happy}}\",{{}},0.3\n\
         4,,,,,,\n"
    );
    let id = fx.queue(merge_file("odd", "public.odd", first)).await;
    let out = fx.drain();
    let e: Option<String> = fx.task(id, "last_error").await;
    assert_eq!(out.code, 0, "{e:?}\n{}", out.stderr);
    assert_eq!(fx.state(id).await, "completed");
    assert_eq!(fx.rows("odd").await, 4);
    let rows = || {
        let p = &fx.p;
        async move {
            p.query(
                "SELECT id, xmin::text, concat_ws(' | ', j::text, x::text, p::text, moods::text, pairs::text, f::text)
                   FROM odd ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, String>(2)))
            .collect::<Vec<_>>()
        }
    };
    let before = rows().await;
    assert_eq!(
        before[0].2,
        "{\"a\": 1} | <a>1</a> | (1,2) | {sad,ok} | {\"(1,{})\"} | 0.1"
    );

    // Row 1 unchanged; 2: json; 3: only the float, by its last bit (which a server
    // printing floats with 15 digits would not show); 4: from NULLs to values; 5 new.
    fx.sql("ALTER DATABASE app SET extra_float_digits = 0")
        .await;
    let second = format!(
        "{header}\
         1,\"{{\"\"a\"\": 1}}\",<a>1</a>,\"(1,2)\",\"{{sad,ok}}\",\"{{\"\"(1,{{}})\"\"}}\",0.1\n\
         2,\"{{\"\"a\"\": 20}}\",<a>2</a>,\"(2,2)\",\"{{ok}}\",\"{{\"\"(2,{{}})\"\"}}\",0.2\n\
         3,\"[1, 2]\",<b/>,\"(3,2)\",\"{{happy}}\",{{}},0.30000000000000004\n\
         4,{{}},<d/>,\"(4,4)\",\"{{sad,happy}}\",\"{{\"\"(4,\\\"\"[4]\\\"\")\"\"}}\",4\n\
         5,null,<e/>,\"(5,5)\",{{}},{{}},5\n"
    );
    let id = fx.queue(merge_file("odd", "public.odd", second)).await;
    fx.apply(id).await;
    let after = rows().await;
    assert_eq!(after.len(), 5);
    assert_eq!(after[0], before[0], "an unchanged row is not rewritten");
    let values: Vec<&str> = after.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(
        values,
        vec![
            "{\"a\": 1} | <a>1</a> | (1,2) | {sad,ok} | {\"(1,{})\"} | 0.1",
            "{\"a\": 20} | <a>2</a> | (2,2) | {ok} | {\"(2,{})\"} | 0.2",
            "[1, 2] | <b/> | (3,2) | {happy} | {} | 0.30000000000000004",
            "{} | <d/> | (4,4) | {sad,happy} | {\"(4,[4])\"} | 4",
            "null | <e/> | (5,5) | {} | {} | 5",
        ]
    );
    for i in 1..4 {
        assert_ne!(after[i].1, before[i].1, "row {} was updated", after[i].0);
    }
}

/// What an operator sees of the identity sequence of `idt.id`: its name, grants,
/// owner, comment and options.
async fn identity_sequence(p: &Client) -> String {
    p.query_one(
        "SELECT concat_ws(' | ', c.oid::regclass::text, c.relacl::text, pg_get_userbyid(c.relowner),
                          obj_description(c.oid, 'pg_class'), s.seqtypid::regtype::text, s.seqstart, s.seqincrement,
                          s.seqmax, s.seqmin, s.seqcache, s.seqcycle)
           FROM pg_class c JOIN pg_sequence s ON s.seqrelid = c.oid
          WHERE c.oid = pg_get_serial_sequence('idt', 'id')::regclass",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// A swap keeps the target's identity sequence as users know it: `idt_id_seq` keeps
/// its name, grants, owner, comment and options, `pg_get_serial_sequence` returns it,
/// and it carries on from its position. A view reading that sequence (it would be left
/// on the old one) makes the swap refuse, naming it.
#[tokio::test(flavor = "multi_thread")]
async fn a_swap_keeps_the_identity_sequence_name_grants_comment_and_position() {
    let fx = setup_with("up_swap_identity", "", "CREATE ROLE seq_reader; CREATE ROLE idt_owner;
         CREATE TABLE idt (id bigint GENERATED BY DEFAULT AS IDENTITY (MAXVALUE 1000000 CACHE 1) PRIMARY KEY, v text);
         ALTER TABLE idt OWNER TO idt_owner;
         INSERT INTO idt (v) SELECT 'old' FROM generate_series(1, 47);
         GRANT USAGE, SELECT ON SEQUENCE idt_id_seq TO seq_reader;
         COMMENT ON SEQUENCE idt_id_seq IS 'ids of idt';
         -- New sequences (the staging table's) get a grant the old one does not have.
         ALTER DEFAULT PRIVILEGES GRANT UPDATE ON SEQUENCES TO PUBLIC;").await;
    let before = identity_sequence(&fx.p).await;
    assert!(before.starts_with("idt_id_seq | "), "{before}");
    for round in 0..2 {
        // The sequence stood at 47 (47 rows inserted); each round inserts one more.
        let next = 48 + round;
        let mut csv = String::from("id,v\n");
        for i in 1..=40 {
            csv.push_str(&format!("{i},new {round}\n"));
        }
        let (_, ids) = fake_run(&fx, &[swap_file("idt", "public.idt", csv)]).await;
        fx.apply(ids[0]).await;
        assert_eq!(
            identity_sequence(&fx.p).await,
            before,
            "after swap {round}: name, grants, owner, comment and options as before"
        );
        assert_eq!(
            fx.count("SELECT last_value FROM idt_id_seq").await,
            next - 1,
            "after swap {round}"
        );
        let serial: String =
            fx.p.query_one("SELECT pg_get_serial_sequence('idt', 'id')", &[])
                .await
                .unwrap()
                .get(0);
        assert_eq!(serial, "public.idt_id_seq");
        let id: i64 =
            fx.p.query_one("INSERT INTO idt (v) VALUES ('app') RETURNING id", &[])
                .await
                .unwrap()
                .get(0);
        assert_eq!(id, next, "after swap {round}: no collision");
        assert_eq!(fx.swap_leftovers().await, 0, "nothing left of the swap");
    }
    let reader = fx.c.primary().await;
    reader
        .batch_execute("SET ROLE seq_reader; SELECT last_value FROM idt_id_seq; RESET ROLE")
        .await
        .unwrap();

    // A view reads the sequence: the swap refuses, naming it, and changes nothing.
    fx.sql("CREATE VIEW idt_position AS SELECT last_value FROM idt_id_seq")
        .await;
    let (_, ids) = fake_run(&fx, &[swap_file("idt", "public.idt", "id,v\n1,refused\n")]).await;
    fx.drain().expect_code(1);
    let r = fx.task_row(ids[0], "state, last_error").await;
    let e: String = r.get::<_, Option<String>>(1).unwrap_or_default();
    assert_eq!(r.get::<_, String>(0), "failed", "{e}");
    assert!(
        e.contains("view idt_position depends on its identity sequence idt_id_seq"),
        "{e}"
    );
    assert_eq!(fx.rows("idt WHERE v = 'refused'").await, 0);
    assert_eq!(identity_sequence(&fx.p).await, before);
}
