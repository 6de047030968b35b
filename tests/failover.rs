//! `pgmaint promote` (issue 9) against real clusters of a primary and two streaming
//! replicas: the primary killed with `pg_ctl stop -m immediate`, a replica promoted,
//! the other re-pointed at it; refusals that change nothing; the backlog gate;
//! `pg_promote` returning false; a replica past the switch point (diverged); the old
//! primary coming back and being fenced by every command.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgmaint_e2e::*;
use tokio_postgres::Client;

const BLOBS: &str = "public.blobs";

/// Short enough for tests; promote waits this long before it believes the primary is down.
const FAILOVER: &str = "[failover]\nprimary_down_after = \"2s\"\n";

/// The primary dies: `pg_ctl stop -m immediate`, no shutdown checkpoint, nothing more sent.
fn kill_primary(c: &Cluster) {
    c.cluster_sh(&["stop", "primary", "--mode", "immediate"]);
}

/// A config like [`Cluster::write_config`], with `primary` as primary.dsn and only
/// the replicas numbered in `replicas`.
fn config_with(c: &Cluster, file: &str, primary: &str, replicas: &[usize], body: &str) -> PathBuf {
    let mut text = format!("[primary]\ndsn = \"{primary}\"\n");
    for i in replicas {
        text.push_str(&format!(
            "[[replicas]]\nname = \"r{i}\"\ndsn = \"{}\"\n",
            c.replica_dsn(*i)
        ));
    }
    text.push_str(&format!(
        "[results]\ndir = \"{}\"\n{body}",
        c.results_dir().display()
    ));
    let path = c.dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(client: &Client, sql: &str) -> T {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Wait until replica `i` has received everything the primary has flushed.
async fn wait_received(c: &Cluster, i: usize) {
    let target: String = one(
        &c.primary().await,
        "SELECT pg_current_wal_flush_lsn()::text",
    )
    .await;
    let r = c.replica(i).await;
    wait_for(
        "the replica to receive all WAL",
        Duration::from_secs(30),
        || async {
            r.query_one(
                "SELECT coalesce(pg_last_wal_receive_lsn() >= $1::text::pg_lsn, false)",
                &[&target],
            )
            .await
            .unwrap()
            .get(0)
        },
    )
    .await;
}

/// What promote must never change when it refuses: each replica's recovery state,
/// pause state and primary_conninfo.
async fn servers_state(c: &Cluster, n: usize) -> Vec<(bool, String, String)> {
    let mut out = Vec::new();
    for i in 1..=n {
        let r = c.replica(i).await;
        out.push((
            one(&r, "SELECT pg_is_in_recovery()").await,
            one(&r, "SELECT pg_get_wal_replay_pause_state()").await,
            one(&r, "SHOW primary_conninfo").await,
        ));
    }
    out
}

/// A checksum of pgmaint's tables of record on a server.
async fn tables_checksum(client: &Client) -> String {
    one(
        client,
        "SELECT (SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), '')) FROM pgmaint.runs x)
             || (SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), '')) FROM pgmaint.upload_tasks x)
             || (SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), '')) FROM pgmaint.integrity_findings x)",
    )
    .await
}

/// `count(*), sum(id)` of `table`: every committed row, compared across servers.
async fn rows_of(client: &Client, table: &str) -> (i64, i64) {
    let r = client
        .query_one(
            &format!("SELECT count(*), coalesce(sum(id), 0)::int8 FROM {table}"),
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

fn json_of(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "promote --json: {e}\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        )
    })
}

fn follower<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    named(report, "replicas", name)
}

/// Run `args`: exit `code`, and one error line, which says `want`.
fn refused(c: &Cluster, cfg: &Path, args: &[&str], code: i32, want: &str) {
    let line = only_error(&c.run(cfg, args).expect_code(code));
    assert!(line.contains(want), "{line}");
}

/// The one error line, and only one.
fn only_error(run: &Run) -> String {
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("pgmaint: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    lines[0].to_string()
}

/// Bad input and a live primary: each refused with one line and its documented exit
/// code, and nothing changes on any server.
#[tokio::test(flavor = "multi_thread")]
async fn promote_refuses_a_live_primary_and_bad_input_and_changes_nothing() {
    let c = Cluster::up("failover-refusals", 2);
    let init = c.write_config("init.toml", "");
    c.run(&init, &["init"]).expect_code(0);
    c.wait_caught_up(1).await;
    c.wait_caught_up(2).await;
    let gone = closed_port();
    let cfg = c.write_config(
        "t.toml",
        &format!(
            "{FAILOVER}\
             [[replicas]]\nname = \"r0\"\ndsn = \"{}\"\nfailover_priority = 0\n\
             [[replicas]]\nname = \"p\"\ndsn = \"{}\"\n\
             [[replicas]]\nname = \"gone\"\ndsn = \"host=127.0.0.1 port={gone} user=postgres dbname=app\"\n",
            c.replica_dsn(1),
            c.primary_dsn()
        ),
    );
    let before = servers_state(&c, 2).await;

    // The primary is up: exit 1, the evidence named, and at once.
    let run = c.run(&cfg, &["promote", "--json"]).expect_code(1);
    let line = only_error(&run);
    assert!(
        line.contains("the primary is up, not promoting (nothing changed)"),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "127.0.0.1:{} accepts connections: a primary on timeline 1",
            c.primary_port()
        )),
        "{line}"
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);

    // primary.dsn pointing elsewhere: the replicas still hear from the primary.
    let blind = config_with(
        &c,
        "blind.toml",
        &format!("host=127.0.0.1 port={gone} user=postgres dbname=app"),
        &[1, 2],
        FAILOVER,
    );
    let run = c.run(&blind, &["promote"]).expect_code(1);
    let line = only_error(&run);
    assert!(
        line.contains("a replica still hears from a primary"),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "replica r1's WAL receiver is streaming from 127.0.0.1:{}",
            c.primary_port()
        )),
        "{line}"
    );

    // Bad input: unknown replica and failover_priority = 0 are the operator's (exit 2);
    // a server not in recovery, or unreachable, is a state (exit 1).
    refused(
        &c,
        &cfg,
        &["promote", "--replica", "r9"],
        2,
        "--replica: no replica named \"r9\"",
    );
    refused(
        &c,
        &cfg,
        &["promote", "--replica", "r0"],
        2,
        "replica r0 has failover_priority = 0",
    );
    refused(
        &c,
        &cfg,
        &["promote", "--replica", "p"],
        1,
        "replica p cannot be promoted: it is not in recovery",
    );
    let line = only_error(
        &c.run(&cfg, &["promote", "--replica", "gone"])
            .expect_code(1),
    );
    assert!(
        line.contains("replica gone cannot be promoted: it is unreachable"),
        "{line}"
    );

    // Another promote in progress (it holds the failover lock on a replica).
    let other = c.replica(1).await;
    assert!(
        one::<bool>(
            &other,
            "SELECT pg_try_advisory_lock(x'70676d6661696c6f'::int8)"
        )
        .await
    );
    refused(
        &c,
        &cfg,
        &["promote"],
        1,
        "the failover lock on replica r1 is held by a session (pid",
    );
    drop(other);

    // Nothing changed anywhere.
    assert_eq!(servers_state(&c, 2).await, before);
    let p = c.primary().await;
    assert!(!one::<bool>(&p, "SELECT pg_is_in_recovery()").await);
    assert_eq!(
        one::<i64>(&p, "SELECT count(*) FROM pgmaint.promotions").await,
        0
    );
    assert!(!c.results_dir().join("promotions.json").exists());
}

/// The acceptance scenario: a run paused on r1, r2 unpaused and caught up, the primary
/// killed. r2 is promoted with every committed row; the run on r1 ends without
/// uploading and r1 is not left paused; r1 streams from r2; results queued before the
/// failover are applied on r2 through a multi-host DSN that lists the old primary
/// first, except one computed past the switch point. Then the old primary comes back:
/// every command refuses it or skips it, and its tables stay as they were.
#[tokio::test(flavor = "multi_thread")]
async fn failover_with_a_run_paused_on_r1_promotes_r2_and_fences_the_old_primary() {
    let c = Cluster::up("failover-main", 2);
    let p = c.primary().await;
    seed_blobs(&p, BLOBS, "bigint", "g", 100_000).await;
    p.batch_execute("UPDATE public.blobs SET payload_md5 = 'x' WHERE id IN (5, 7)")
        .await
        .unwrap();
    let quick = c.write_config("quick.toml", &format!("{FAILOVER}{}", blobs_task("")));
    c.run(&quick, &["init"]).expect_code(0);
    c.wait_caught_up(1).await;
    c.wait_caught_up(2).await;

    // Two runs queued and left un-uploaded before the failover.
    let (_, q1) = run_json(&c, &quick, &["--replica", "r1"]);
    let (_, q2) = run_json(&c, &quick, &["--replica", "r2"]);
    assert_eq!(q1["state"], "succeeded", "{q1:#}");
    assert_eq!(q2["state"], "succeeded", "{q2:#}");
    let (q1, q2) = (
        q1["run_id"].as_i64().unwrap(),
        q2["run_id"].as_i64().unwrap(),
    );

    // A slow run paused on r1.
    let slow = slow_blobs_config(&c, "slow.toml", "lease = \"10s\"");
    let child = spawn_piped(&c, &slow, &["run", "--replica", "r1"]);
    wait_paused(&c, 1).await;
    let slow_run = last_run_id(&c).await;

    // Rows committed on the primary; both replicas received them, r2 replayed them.
    p.batch_execute(
        "CREATE TABLE t (id bigint PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 5000)",
    )
    .await
    .unwrap();
    let committed = rows_of(&p, "t").await;
    c.wait_caught_up(2).await;
    wait_received(&c, 1).await;
    let old_tables = tables_checksum(&p).await;
    drop(p);
    kill_primary(&c);

    // Promote: r2 (as much WAL as r1, and unpaused).
    let cfg = c.write_config("t.toml", FAILOVER);
    let run = c.run(&cfg, &["promote", "--json"]).expect_code(0);
    let report = json_of(&run);
    assert_eq!(report["new_primary"], "r2", "{report:#}");
    assert_eq!(report["timeline"], 2);
    assert_eq!(report["old_timeline"], 1);
    assert_eq!(
        report["switch_lsn_source"],
        "the new timeline's history file"
    );
    assert!(report["system_identifier"].is_string());
    assert_eq!(
        report["old_primary"][0],
        format!("127.0.0.1:{}", c.primary_port())
    );
    assert_eq!(report["pg_promote_returned"], true);
    assert!(report["seconds"]["down_check"].as_f64().unwrap() >= 2.0);
    let r1 = follower(&report, "r1");
    assert_eq!(r1["state"], "following", "{report:#}");
    let dropped = report["dropped_runs"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "{report:#}");
    assert_eq!(dropped[0]["run_id"], slow_run);

    // r2 is the primary, with every committed row.
    let r2 = c.replica(2).await;
    assert!(!one::<bool>(&r2, "SELECT pg_is_in_recovery()").await);
    assert_eq!(rows_of(&r2, "t").await, committed);
    let promoted: (String, i32, i32) = {
        let row = r2
            .query_one(
                "SELECT replica, old_timeline, new_timeline FROM pgmaint.promotions",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(promoted, ("r2".to_string(), 1, 2));
    assert!(c.results_dir().join("promotions.json").exists());

    // The run on r1 ends without uploading, r1 is not left paused.
    let out = child.wait_with_output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: String = r2
        .query_one("SELECT state FROM pgmaint.runs WHERE id = $1", &[&slow_run])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "dropped");
    let uploads: i64 = r2
        .query_one(
            "SELECT count(*) FROM pgmaint.upload_tasks WHERE run_id = $1",
            &[&slow_run],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(uploads, 0);
    assert_eq!(
        one::<i64>(&r2, "SELECT count(*) FROM pgmaint.replica_leases").await,
        0
    );
    assert_eq!(c.pause_state(1).await, "not paused");

    // r1 streams from r2, on timeline 2, with its slot.
    let rr1 = c.replica(1).await;
    let (status, tli, port): (String, i32, i32) = {
        let row = rr1
            .query_one(
                "SELECT status, received_tli, sender_port FROM pg_stat_wal_receiver",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(
        (status.as_str(), tli, port as u16),
        ("streaming", 2, c.replica_port(2))
    );
    assert_eq!(
        one::<i64>(
            &r2,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'r1' AND active"
        )
        .await,
        1
    );

    // A run queued before the failover whose snapshot lies past the switch point (none
    // can be made by pgmaint itself: its queue commit comes after its snapshot, so it
    // is simulated) is refused; the other one is applied on r2, through a DSN that
    // lists the dead old primary first.
    let switch = report["switch_lsn"].as_str().unwrap().to_string();
    r2.execute(
        "UPDATE pgmaint.runs SET snapshot_lsn = $2::text::pg_lsn + 16 WHERE id = $1",
        &[&q2, &switch],
    )
    .await
    .unwrap();
    let past: String = r2
        .query_one(
            "SELECT snapshot_lsn::text FROM pgmaint.runs WHERE id = $1",
            &[&q2],
        )
        .await
        .unwrap()
        .get(0);
    let manifest_path = c.results_dir().join(q2.to_string()).join("manifest.json");
    let mut m = read_manifest(manifest_path.parent().unwrap());
    m["snapshot"]["lsn"] = past.clone().into();
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let multi = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=app",
        c.primary_port(),
        c.replica_port(2)
    );
    let multi_cfg = config_with(&c, "multi.toml", &multi, &[1], &blobs_task(""));
    // Exit 1: one of the tasks it took failed for good.
    let up = c.run(&multi_cfg, &["uploader", "--once"]).expect_code(1);
    assert!(
        up.stdout.contains("1 task(s) applied") && up.stdout.contains("1 failed"),
        "{}",
        up.stdout
    );
    let states: Vec<(i64, String, Option<String>)> = r2
        .query(
            "SELECT run_id, state, last_error FROM pgmaint.upload_tasks WHERE run_id IN ($1, $2) ORDER BY run_id",
            &[&q1, &q2],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(states.len(), 2, "{states:?}");
    assert_eq!(
        (states[0].0, states[0].1.as_str()),
        (q1, "completed"),
        "{states:?}"
    );
    assert_eq!(
        (states[1].0, states[1].1.as_str()),
        (q2, "failed"),
        "{states:?}"
    );
    let why = states[1].2.as_deref().unwrap();
    assert!(
        why.contains("computed from history that no longer exists"),
        "{why}"
    );
    assert!(why.contains(&format!("lies past {switch}")), "{why}");
    let findings: i64 = r2
        .query_one(
            "SELECT count(*) FROM pgmaint.integrity_findings WHERE run_id = $1",
            &[&q1],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(findings, 2);

    // The old primary comes back, as a primary on timeline 1.
    c.server("start", "primary");
    let old = c.primary().await;
    assert!(!one::<bool>(&old, "SELECT pg_is_in_recovery()").await);
    assert_eq!(tables_checksum(&old).await, old_tables);
    let old_at = format!("127.0.0.1:{}", c.primary_port());

    // Listed first in a multi-host DSN: skipped, every command works on r2.
    for args in [
        &["status"][..],
        &["tasks", "list"],
        &["uploader", "--once"],
        &["run", "--replica", "r1"],
    ] {
        let run = c.run(&multi_cfg, args);
        assert_eq!(run.code, 0, "{args:?}: {}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("skipping a former primary"),
            "{args:?}: {}",
            run.stderr
        );
    }
    // The only server of primary.dsn: refused, naming it.
    let only_old = config_with(&c, "old.toml", &c.primary_dsn(), &[1], &blobs_task(""));
    for args in [
        &["status"][..],
        &["tasks", "list"],
        &["uploader", "--once"],
        &["run", "--replica", "r1"],
    ] {
        let run = c.run(&only_old, args).expect_code(2);
        let line = only_error(&run);
        assert!(
            line.contains(&format!("{old_at} is a former primary on timeline 1, fenced: replica r2 was promoted to timeline 2")),
            "{args:?}: {line}"
        );
    }
    assert_eq!(tables_checksum(&old).await, old_tables);
}

/// A paused candidate with more unreplayed WAL than failover.max_replay_backlog:
/// refused without --force (nothing changed); with --force it is promoted after
/// replaying, nothing lost. Its replay is held back by a standby query (a lock
/// conflict, max_standby_*_delay = -1), so `pg_promote(true, 1)` returns false while
/// the promotion goes on: pgmaint waits it out without a second promote.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_candidate_over_the_backlog_limit_needs_force_and_a_slow_promotion_is_waited_out()
{
    let c = Cluster::up("failover-backlog", 2);
    let init = c.write_config("init.toml", "");
    c.run(&init, &["init"]).expect_code(0);
    let p = c.primary().await;
    p.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, v text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 10) g")
        .await
        .unwrap();
    c.wait_caught_up(1).await;
    c.wait_caught_up(2).await;

    let r2 = c.replica(2).await;
    for sql in [
        "ALTER SYSTEM SET max_standby_streaming_delay = -1",
        "ALTER SYSTEM SET max_standby_archive_delay = -1",
        "SELECT pg_reload_conf()",
        "SELECT pg_wal_replay_pause()",
    ] {
        r2.batch_execute(sql).await.unwrap();
    }
    wait_paused(&c, 2).await;
    // A standby session holding a lock on t: replaying the ALTER TABLE below waits for it.
    let (holder, conn) = tokio_postgres::connect(&c.replica_dsn(2), tokio_postgres::NoTls)
        .await
        .unwrap();
    let holder_conn = tokio::spawn(conn);
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM t")
        .await
        .unwrap();

    p.batch_execute(
        "ALTER TABLE t ADD COLUMN w int;
         INSERT INTO t SELECT g, repeat(md5(g::text), 8) FROM generate_series(11, 20000) g",
    )
    .await
    .unwrap();
    let committed = rows_of(&p, "t").await;
    wait_received(&c, 1).await;
    wait_received(&c, 2).await;
    drop(p);
    kill_primary(&c);

    let cfg = c.write_config(
        "t.toml",
        &format!("{FAILOVER}max_replay_backlog = \"64kB\"\n"),
    );
    let before = servers_state(&c, 2).await;
    let run = c.run(&cfg, &["promote", "--replica", "r2"]).expect_code(1);
    let line = only_error(&run);
    for want in [
        "replica r2 has ",
        "of WAL received but not replayed (replay paused), over failover.max_replay_backlog (64.0 kB)",
        "replaying it takes about",
        "an assumed replay rate",
        "--force",
        "(nothing changed)",
    ] {
        assert!(line.contains(want), "{want:?} in {line}");
    }
    assert_eq!(servers_state(&c, 2).await, before);

    // --force, with pg_promote's wait cut to 1 s.
    let mut child = c
        .pgmaint(&cfg, &["promote", "--replica", "r2", "--force", "--json"])
        .env("PGMAINT_TEST_PROMOTE_WAIT", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let saw_false = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.contains("pg_promote(true, 1) returned false") => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    assert!(saw_false, "pg_promote never returned false");
    assert!(
        one::<bool>(&r2, "SELECT pg_is_in_recovery()").await,
        "promoted while replay was held back?"
    );
    // Let replay go on: the promotion completes.
    holder.batch_execute("COMMIT").await.unwrap();
    drop(holder);
    let _ = holder_conn.await;
    let out = child.wait_with_output().unwrap();
    let stderr = reader.join().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
    .expect_code(0);
    let report = json_of(&run);
    assert_eq!(report["new_primary"], "r2");
    assert_eq!(report["forced"], true);
    assert_eq!(report["resumed_pause"], true);
    assert_eq!(report["pg_promote_returned"], false);
    assert_eq!(
        run.stderr.matches("SELECT pg_promote(true").count(),
        1,
        "{}",
        run.stderr
    );
    assert!(report["warnings"][0]
        .as_str()
        .unwrap()
        .starts_with("--force: replica r2 has "));
    assert_eq!(follower(&report, "r1")["state"], "following", "{report:#}");
    let r2 = c.replica(2).await;
    assert!(!one::<bool>(&r2, "SELECT pg_is_in_recovery()").await);
    assert_eq!(rows_of(&r2, "t").await, committed);
    assert!(
        one::<bool>(&r2, "SELECT forced FROM pgmaint.promotions").await,
        "recorded as forced"
    );
}

/// r2 stopped early, r1 received more; the primary dies and r2 is promoted by hand:
/// pgmaint warns that r1's extra WAL is lost, reports r1 diverged with the pg_rewind
/// command (and creates no slot for it), and later runs refuse r1.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_past_the_switch_point_is_reported_diverged_and_refused_by_runs() {
    let c = Cluster::up("failover-diverged", 2);
    let init = c.write_config("init.toml", "");
    c.run(&init, &["init"]).expect_code(0);
    let p = c.primary().await;
    seed_blobs(&p, BLOBS, "bigint", "g", 100).await;
    c.wait_caught_up(2).await;
    c.cluster_sh(&["stop", "r2"]);
    p.batch_execute(
        "CREATE TABLE t (id bigint PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 5000)",
    )
    .await
    .unwrap();
    c.wait_caught_up(1).await;
    drop(p);
    kill_primary(&c);
    c.server("start", "r2");

    let cfg = c.write_config("t.toml", &format!("{FAILOVER}follow_timeout = \"5s\"\n"));
    let run = c
        .run(&cfg, &["promote", "--replica", "r2", "--json"])
        .expect_code(0);
    let report = json_of(&run);
    assert_eq!(report["new_primary"], "r2");
    let warning = report["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("replica r1 received ")
            && warning.ends_with("more WAL than r2: promoting r2 loses it"),
        "{warning}"
    );
    let r1 = follower(&report, "r1");
    assert_eq!(r1["state"], "diverged", "{report:#}");
    let data_dir: String = one(&c.replica(1).await, "SHOW data_directory").await;
    let cmd = r1["pg_rewind"].as_str().unwrap();
    assert!(
        cmd.starts_with(&format!(
            "pg_rewind --target-pgdata='{data_dir}' --source-server='"
        )),
        "{cmd}"
    );
    assert!(
        cmd.contains(&format!("host=127.0.0.1 port={}'", c.replica_port(2))),
        "{cmd}"
    );
    assert!(
        r1["detail"]
            .as_str()
            .unwrap()
            .contains("past the switch point"),
        "{r1}"
    );
    let r2 = c.replica(2).await;
    assert_eq!(
        one::<i64>(&r2, "SELECT count(*) FROM pg_replication_slots").await,
        0,
        "no slot for a diverged replica"
    );

    // Later runs refuse r1: it is on timeline 1, the primary on timeline 2.
    let after = config_with(&c, "after.toml", &c.replica_dsn(2), &[1], &blobs_task(""));
    let run = c.run(&after, &["run", "--replica", "r1"]).expect_code(2);
    let line = only_error(&run);
    assert!(
        line.contains("replica r1")
            && line.contains("is on timeline 1 but the primary")
            && line.contains("timeline 2"),
        "{line}"
    );
    // And it is really stuck: not streaming from r2.
    let status: Option<String> = one(
        &c.replica(1).await,
        "SELECT (SELECT status FROM pg_stat_wal_receiver)",
    )
    .await;
    assert_ne!(status.as_deref(), Some("streaming"));
}

/// Review finding: a replica already promoted outside pgmaint (by hand, another tool,
/// a promote that timed out) was not counted as a primary, and `pgmaint promote`
/// promoted a second one on the same timeline: two writers no fence could tell apart.
/// Now promote refuses and changes nothing; and a `primary.dsn` that lists both
/// writers gets neither chosen.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_promoted_outside_pgmaint_stops_a_second_promotion() {
    let c = Cluster::up("failover-outside", 2);
    let init = c.write_config("init.toml", "");
    c.run(&init, &["init"]).expect_code(0);
    c.wait_caught_up(1).await;
    c.wait_caught_up(2).await;
    kill_primary(&c);
    // r1 down for now (it will not follow r2).
    c.cluster_sh(&["stop", "r1"]);
    // r2 promoted by hand: no pgmaint record of it. pgmaint promote completes that
    // promotion (records it), never promotes a second replica.
    c.replica(2)
        .await
        .execute("SELECT pg_promote(true, 60)", &[])
        .await
        .unwrap();
    let cfg = c.write_config("t.toml", FAILOVER);
    let run = c.run(&cfg, &["promote"]).expect_code(0);
    assert!(
        run.stdout.contains("completed the promotion of replica r2")
            && run
                .stdout
                .contains("promoted by hand or by another pgmaint"),
        "{}",
        run.stdout
    );
    let recorded: i64 = one(
        &c.replica(2).await,
        "SELECT count(*) FROM pgmaint.promotions",
    )
    .await;
    assert_eq!(recorded, 1);
    // r1 back, still a standby of the dead primary, on timeline 1.
    c.server("start", "r1");
    let in_recovery: bool = one(&c.replica(1).await, "SELECT pg_is_in_recovery()").await;
    assert!(in_recovery, "r1 was promoted beside r2");

    // r1 promoted by hand too: two writers on timeline 2, which no timeline settles.
    c.replica(1)
        .await
        .execute("SELECT pg_promote(true, 60)", &[])
        .await
        .unwrap();
    let run = c.run(&cfg, &["promote"]).expect_code(1);
    let line = only_error(&run);
    assert!(
        line.contains("replica r1 is already a primary") && line.contains("nothing changed"),
        "{line}"
    );
    // Both writers listed: pgmaint chooses neither.
    let both = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=app",
        c.replica_port(1),
        c.replica_port(2)
    );
    let split = config_with(&c, "split.toml", &both, &[1], "");
    let run = c.run(&split, &["tasks", "list"]).expect_code(2);
    assert!(
        run.error_line()
            .unwrap()
            .contains("more than one server takes writes"),
        "{}",
        run.stderr
    );
}
