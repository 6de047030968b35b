//! The cycle end to end (issue "A first full maintenance cycle…"): pause, scan, queue,
//! resume, upload — against a real primary and a real streaming replica.

use std::time::Duration;

use pgmaint_e2e::*;

/// Plant one of each corruption in a seeded blobs-like table; returns the expected
/// findings as (key text, finding), sorted.
async fn plant(
    p: &tokio_postgres::Client,
    table: &str,
    key_col: &str,
    content: &str,
    checksum: &str,
    keys: [&str; 4],
) -> Vec<(String, String)> {
    let k = |i: usize| keys[i].to_string();
    p.batch_execute(&format!(
        "UPDATE {table} SET {checksum} = md5('tampered') WHERE {key_col}::text IN ('{}', '{}');
         UPDATE {table} SET {checksum} = NULL WHERE {key_col}::text = '{}';
         UPDATE {table} SET {content} = NULL WHERE {key_col}::text = '{}';",
        keys[0], keys[1], keys[2], keys[3]
    ))
    .await
    .unwrap();
    let mut want = vec![
        (k(0), "mismatch".to_string()),
        (k(1), "mismatch".to_string()),
        (k(2), "null_checksum".to_string()),
        (k(3), "null_content".to_string()),
    ];
    want.sort();
    want
}

/// [`plant`] in the seeded `public.blobs`.
async fn plant_blobs(p: &tokio_postgres::Client, keys: [&str; 4]) -> Vec<(String, String)> {
    plant(p, BLOBS, "id", "payload", "payload_md5", keys).await
}

async fn findings_on_primary(c: &Cluster, run_id: i64) -> Vec<(String, String)> {
    let rows = c
        .primary()
        .await
        .query(
            "SELECT row_key, finding FROM pgmaint.integrity_findings WHERE run_id = $1 ORDER BY 1, 2",
            &[&run_id],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Planted corruptions are found exactly, reach pgmaint.integrity_findings once, and a
/// second uploader run inserts nothing twice.
#[tokio::test(flavor = "multi_thread")]
async fn finds_planted_corruptions_exactly_and_uploads_them_once() {
    let (c, p) = blobs_cluster("cycle-exact", 20_000).await;
    let want = plant_blobs(&p, ["17", "5000", "777", "19999"]).await;
    let cfg = c
        .ready_config("t.toml", &blobs_task("parallelism = 3"))
        .await;

    let run = c.run(&cfg, &["run", "--json"]).expect_code(0);
    let s = run_summary(&run);
    let id = s["run_id"].as_i64().unwrap();
    assert_eq!(s["state"], "succeeded");
    assert_eq!(s["tasks"][0]["rows_scanned"], 20_000);
    assert_eq!(run_findings(&c, id, "blobs"), want);
    assert_eq!(c.pause_state(1).await, "not paused");

    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    assert_eq!(findings_on_primary(&c, id).await, want);
    let sql =
        "SELECT DISTINCT snapshot_lsn::text FROM pgmaint.integrity_findings WHERE run_id = $1";
    let lsn: String = scalar(&p, sql, &[&id]).await;
    assert_eq!(lsn, s["snapshot"]["lsn"].as_str().unwrap());
    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    assert_eq!(
        findings_on_primary(&c, id).await.len(),
        want.len(),
        "nothing inserted twice"
    );
}

/// Same with a uuid key, and with a mixed-case quoted schema, table and columns.
#[tokio::test(flavor = "multi_thread")]
async fn uuid_keys_and_quoted_mixed_case_names() {
    let c = Cluster::up("cycle-quoted", 1);
    let p = c.primary().await;
    seed_blobs(&p, "public.ublobs", "uuid", "md5(g::text)::uuid", 5_000).await;
    let mut keys = Vec::new();
    for g in [3, 1000, 2500, 4999] {
        keys.push(scalar::<String>(&p, "SELECT md5($1::int::text)::uuid::text", &[&g]).await);
    }
    let want_u = plant(
        &p,
        "public.ublobs",
        "id",
        "payload",
        "payload_md5",
        [&keys[0], &keys[1], &keys[2], &keys[3]],
    )
    .await;

    p.batch_execute(
        r#"CREATE SCHEMA "Sales";
           CREATE TABLE "Sales"."Order Items" ("Item Id" text PRIMARY KEY, "Body" bytea, "Body MD5" text);
           INSERT INTO "Sales"."Order Items"
             SELECT 'item-' || g, convert_to('body ' || g, 'UTF8'), md5(convert_to('body ' || g, 'UTF8'))
               FROM generate_series(1, 3000) g;"#,
    )
    .await
    .unwrap();
    let want_q = plant(
        &p,
        r#""Sales"."Order Items""#,
        r#""Item Id""#,
        r#""Body""#,
        r#""Body MD5""#,
        ["item-1", "item-2999", "item-500", "item-42"],
    )
    .await;

    let tasks = row_checksum_task(
        "uuids",
        "public.ublobs",
        "id",
        "payload",
        "payload_md5",
        "parallelism = 2",
    ) + &row_checksum_task(
        "sales",
        r#""Sales"."Order Items""#,
        r#""Item Id""#,
        r#""Body""#,
        r#""Body MD5""#,
        "parallelism = 2",
    );
    let cfg = c.ready_config("t.toml", &tasks).await;
    let s = run_ok(&c, &cfg, &[]);
    let id = s["run_id"].as_i64().unwrap();
    assert_eq!(run_findings(&c, id, "uuids"), want_u);
    assert_eq!(run_findings(&c, id, "sales"), want_q);

    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    let all = findings_on_primary(&c, id).await;
    let mut want: Vec<_> = want_u.into_iter().chain(want_q).collect();
    want.sort();
    assert_eq!(all, want);
    let rels: Vec<String> = p
        .query(
            "SELECT DISTINCT relation FROM pgmaint.integrity_findings ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rels,
        vec![
            r#""Sales"."Order Items""#.to_string(),
            "public.ublobs".to_string()
        ]
    );
}

/// Rows written on the primary during the scan are not in the results; the manifest's
/// LSN is the replica's replay LSN during the scan; afterwards replay resumes and the
/// replica catches up.
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_isolation() {
    let (c, p) = blobs_cluster("cycle-isolation", 30_000).await;
    let want = plant_blobs(&p, ["1", "2", "3", "4"]).await;
    let cfg = slow_blobs_config(&c, "t.toml", "");
    c.init_ready(&cfg).await;

    let child = spawn_paused(&c, &cfg, &["run", "--json"]).await;
    let r = c.replica(1).await;
    let lsn_during: String = scalar(&r, "SELECT pg_last_wal_replay_lsn()::text", &[]).await;
    // Corrupt more rows and add corrupt rows, on the primary, while the scan runs.
    p.batch_execute(
        "UPDATE blobs SET payload_md5 = 'x' WHERE id BETWEEN 100 AND 110;
         INSERT INTO blobs VALUES (100001, 'new', 'wrong'), (100002, NULL, NULL);",
    )
    .await
    .unwrap();
    // Those writes really landed during the pause: the replica is still paused where it was.
    let still: (String, String) = pair(
        &r,
        "SELECT pg_get_wal_replay_pause_state(), pg_last_wal_replay_lsn()::text",
        &[],
    )
    .await;
    assert_eq!(
        still,
        ("paused".to_string(), lsn_during.clone()),
        "scan must still be running: make it slower"
    );

    let s = run_summary(&finish(child).expect_code(0));
    let id = s["run_id"].as_i64().unwrap();
    assert_eq!(run_findings(&c, id, "blobs"), want);
    assert_eq!(
        manifest(&c.results_dir(), id)["snapshot"]["lsn"]
            .as_str()
            .unwrap(),
        lsn_during
    );
    assert_eq!(s["tasks"][0]["rows_scanned"], 30_000);

    assert_eq!(c.pause_state(1).await, "not paused");
    c.wait_caught_up(1).await;
    assert_eq!(
        count(&r, "SELECT count(*) FROM blobs WHERE id > 100000").await,
        2,
        "the replica caught up with the writes made during the pause"
    );
}

/// A task naming a missing table or column: clear error, exit 2, replica not paused.
#[tokio::test(flavor = "multi_thread")]
async fn missing_table_or_column_fails_clearly_and_leaves_replay_running() {
    let (c, _p) = blobs_cluster("cycle-missing", 100).await;
    for (file, task, needle) in [
        (
            "t1.toml",
            row_checksum_task("t", "public.nope", "id", "payload", "payload_md5", ""),
            "public.nope does not exist",
        ),
        (
            "t2.toml",
            row_checksum_task("t", BLOBS, "id", "payload", "md5sum", ""),
            r#"column "md5sum" does not exist"#,
        ),
    ] {
        let cfg = c.write_config(file, &task);
        c.run(&cfg, &["init"]).expect_code(0);
        let run = c.run(&cfg, &["run"]).expect_code(2);
        let line = run.error_line().expect("an error line");
        assert!(
            line.contains(needle) && line.contains("task \"t\""),
            "{line}"
        );
        assert_eq!(c.pause_state(1).await, "not paused");
        let id = last_run_id(&c).await;
        assert_eq!(run_state(&c, id).await, "failed");
    }
}

/// SIGINT, SIGTERM or SIGHUP (the operator's ssh session dropped) during a scan:
/// replay resumed, run cancelled, nothing queued.
#[tokio::test(flavor = "multi_thread")]
async fn signals_during_a_scan_resume_replay_and_queue_nothing() {
    let (c, _p) = blobs_cluster("cycle-signals", 100_000).await;
    let cfg = slow_blobs_config(&c, "t.toml", "");
    c.run(&cfg, &["init"]).expect_code(0);
    for sig in ["INT", "TERM", "HUP"] {
        c.wait_caught_up(1).await;
        let child = spawn_paused(&c, &cfg, &["run"]).await;
        signal(child.id(), sig);
        finish(child).expect_code(1);
        assert_eq!(c.pause_state(1).await, "not paused", "after SIG{sig}");
        let id = last_run_id(&c).await;
        assert_eq!(run_state(&c, id).await, "cancelled");
        assert_eq!(uploads_of_run(&c, id).await, 0);
        let sessions = count(
            &c.replica(1).await,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgmaint-scan-%'",
        )
        .await;
        assert_eq!(sessions, 0, "scan sessions closed");
    }
}

/// kill -9 of the coordinator during a scan: the replica stays paused until the lease
/// expires; then `pgmaint recover` resumes it and marks the run dropped. The next
/// `pgmaint run` does the same by itself, and so does any other command (`uploader`).
#[tokio::test(flavor = "multi_thread")]
async fn killed_coordinator_is_recovered_after_its_lease_expires() {
    let (c, _p) = blobs_cluster("cycle-kill9", 100_000).await;
    let slow = slow_blobs_config(&c, "slow.toml", "lease = \"2s\"");
    let fast = c.write_config(
        "fast.toml",
        &format!("[limits]\nlease = \"2s\"\n{}", blobs_task("")),
    );
    c.run(&slow, &["init"]).expect_code(0);

    for recover_with in ["recover", "run", "uploader"] {
        let dead = run_killed_in_its_pause(&c, &slow).await;
        assert_eq!(
            c.pause_state(1).await,
            "paused",
            "nobody resumes before a command looks"
        );
        if recover_with == "recover" {
            // A run of this host whose process is gone is dead at once (issue 19):
            // recover does not wait for its lease.
            let early = c.run(&slow, &["recover"]).expect_code(0);
            assert!(
                early
                    .stdout
                    .contains(&format!("run {dead} had died (its process")),
                "{}",
                early.stdout
            );
            assert_eq!(c.pause_state(1).await, "not paused");
            assert_eq!(run_state(&c, dead).await, "dropped");
            continue;
        }
        // A run of another host is left to its lease while that is valid.
        c.primary()
            .await
            .execute(
                "UPDATE pgmaint.replica_leases SET holder = 'elsewhere:1'",
                &[],
            )
            .await
            .unwrap();
        let early = c.run(&slow, &["recover"]).expect_code(0);
        assert!(early.stdout.contains("is alive"), "{}", early.stdout);
        assert_eq!(c.pause_state(1).await, "paused");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let args: &[&str] = if recover_with == "uploader" {
            &["uploader", "--once"]
        } else {
            &[recover_with]
        };
        let out = c.run(&fast, args).expect_code(0);
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(said.contains(&format!("run {dead} had died")), "{said}");
        assert_eq!(c.pause_state(1).await, "not paused");
        assert_eq!(run_state(&c, dead).await, "dropped");
        assert_eq!(uploads_of_run(&c, dead).await, 0);
        if recover_with == "run" {
            assert_eq!(run_state(&c, last_run_id(&c).await).await, "succeeded");
        }
    }
}

/// A replica already paused by someone else is refused and stays paused.
#[tokio::test(flavor = "multi_thread")]
async fn replica_paused_by_someone_else_is_refused_and_left_paused() {
    let (c, _p) = blobs_cluster("cycle-foreign-pause", 100).await;
    let cfg = c.ready_config("t.toml", &blobs_task("")).await;
    c.pause_by_hand(1).await;
    let run = c.run(&cfg, &["run"]).expect_code(1);
    assert!(
        run.error_line()
            .unwrap()
            .contains("already 'paused' by someone else"),
        "{}",
        run.stderr
    );
    assert_eq!(c.pause_state(1).await, "paused");
    // And a recover does not touch it either: the pause is not pgmaint's.
    c.run(&cfg, &["recover"]).expect_code(0);
    assert_eq!(c.pause_state(1).await, "paused");
}

/// A replica restarted during the scan (its pause silently lost) makes the run invalid;
/// nothing from it is uploaded.
#[tokio::test(flavor = "multi_thread")]
async fn replica_restart_during_scan_invalidates_the_run() {
    let (c, p, cfg, child) = paused_run("cycle-restart", 100_000, "", &["run", "--json"]).await;
    p.execute("INSERT INTO blobs VALUES (200000, 'x', 'y')", &[])
        .await
        .unwrap();
    c.server("restart", "r1");
    let s = run_summary(&finish(child).expect_code(1));
    let id = s["run_id"].as_i64().unwrap();
    assert_ended(&s, "invalid", "restarted");
    assert_eq!(run_state(&c, id).await, "invalid");
    assert_eq!(uploads_of_run(&c, id).await, 0);
    assert_eq!(manifest(&c.results_dir(), id)["valid"], false);
    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    assert_eq!(
        count(&p, "SELECT count(*) FROM pgmaint.integrity_findings").await,
        0
    );
    assert_eq!(c.pause_state(1).await, "not paused");
}

/// A result file changed after the run is refused by the uploader; nothing inserted.
#[tokio::test(flavor = "multi_thread")]
async fn tampered_result_file_is_refused() {
    let (c, p) = blobs_cluster("cycle-tamper", 1000).await;
    plant_blobs(&p, ["1", "2", "3", "4"]).await;
    let cfg = c.ready_config("t.toml", &blobs_task("")).await;
    let s = run_ok(&c, &cfg, &[]);
    let id = s["run_id"].as_i64().unwrap();
    let file = c.results_dir().join(format!("{id}/blobs.csv"));
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("mismatch", "mismatcH")).unwrap(); // same size, other bytes
    c.run(&cfg, &["uploader", "--once"])
        .expect_code(1)
        .expect_stderr("differs from the manifest");
    assert_eq!(
        count(&p, "SELECT count(*) FROM pgmaint.integrity_findings").await,
        0
    );
    let sql = "SELECT state FROM pgmaint.upload_tasks WHERE run_id = $1";
    assert_eq!(scalar::<String>(&p, sql, &[&id]).await, "failed");
}

/// `init` is idempotent, records the version, and refuses a newer schema.
#[tokio::test(flavor = "multi_thread")]
async fn init_is_idempotent_and_refuses_a_newer_schema() {
    let c = Cluster::up("cycle-init", 1);
    let cfg = c.write_config("t.toml", "");
    assert!(c
        .run(&cfg, &["init"])
        .expect_code(0)
        .stdout
        .contains("migrated from version 0"));
    assert!(c
        .run(&cfg, &["init"])
        .expect_code(0)
        .stdout
        .contains("up to date"));
    let p = c.primary().await;
    let v: i32 = scalar(
        &p,
        "SELECT max(version) FROM pgmaint.schema_migrations",
        &[],
    )
    .await;
    assert!(v >= 1);
    p.execute(
        "INSERT INTO pgmaint.schema_migrations (version, name) VALUES (999, 'future')",
        &[],
    )
    .await
    .unwrap();
    let run = c.run(&cfg, &["init"]);
    assert_ne!(run.code, 0);
    assert!(
        run.error_line()
            .unwrap()
            .contains("version 999, newer than this pgmaint knows"),
        "{}",
        run.stderr
    );
    let st = c.run(&cfg, &["status"]);
    assert_ne!(st.code, 0, "other commands refuse it too");
}

/// Bad config: exit 2 and one line naming the field; a primary that cannot be reached
/// is exit 3, also one line naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn bad_config_exits_2_naming_the_field() {
    let dir = repo().join("target/e2e/bad-config");
    std::fs::create_dir_all(&dir).unwrap();
    let base =
        "[primary]\ndsn = \"host=127.0.0.1 port=1 user=postgres dbname=app connect_timeout=2\"\n\
                [[replicas]]\nname = \"r1\"\ndsn = \"host=127.0.0.1 port=1 user=postgres\"\n\
                [results]\ndir = \"/tmp/pgmaint-bad-config\"\n";
    let task = "[[tasks]]\nname = \"t\"\nkind = \"row_checksum\"\ntable = \"blobs\"\nkey = \"id\"\ncontent = \"c\"\nchecksum = \"m\"\n";
    let cases = [
        (
            "missing field",
            base.replace("[results]\ndir = \"/tmp/pgmaint-bad-config\"\n", ""),
            "results.dir: missing",
        ),
        (
            "missing task field",
            format!("{base}{}", task.replace("key = \"id\"\n", "")),
            "tasks[0].key: missing",
        ),
        (
            "unknown kind",
            format!("{base}{}", task.replace("row_checksum", "row_chksum")),
            "tasks[0].kind: unknown kind \"row_chksum\"",
        ),
        (
            "bad duration",
            format!("{base}[limits]\nmax_pause = \"2 hours\"\n"),
            "limits.max_pause: bad duration \"2 hours\"",
        ),
        (
            "bad size",
            format!("{base}[limits]\nmax_replay_backlog = \"8 gigs\"\n"),
            "limits.max_replay_backlog: bad size",
        ),
        (
            "unreachable dsn",
            format!("{base}{task}"),
            "primary.dsn: cannot connect (host=127.0.0.1 port=1",
        ),
    ];
    for (what, text, needle) in cases {
        let code = if what == "unreachable dsn" { 3 } else { 2 };
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(pgmaint_bin())
            .args(["run"])
            .env("PGMAINT_CONFIG", &path)
            .env_remove("PGMAINT_PRIMARY")
            .env_remove("PGMAINT_REPLICA")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{what}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: one line: {stderr}");
        assert!(lines[0].contains(needle), "{what}: {stderr}");
    }
}

/// With `sslmode=require` in the DSNs, every pgmaint session is encrypted (libpq's
/// `require`: encrypted, certificate not verified), and the cycle works as usual. The
/// servers refuse the role pgmaint uses here without TLS, so a single plaintext session
/// anywhere (control, scans, watchdog, lease, uploader) would fail the test.
#[tokio::test(flavor = "multi_thread")]
async fn tls_sslmode_require() {
    let (c, p) = blobs_cluster("cycle-tls", 2_000).await;
    enable_tls(&c).await;
    let want = plant_blobs(&p, ["10", "20", "30", "40"]).await;
    let cfg = c.write_config("t.toml", &blobs_task("parallelism = 2"));
    let (require, disable) = (
        tls_config(&c, &cfg, "require"),
        tls_config(&c, &cfg, "disable"),
    );
    // The servers really refuse this role in plaintext.
    let refused = c.run(&disable, &["init"]).expect_code(2);
    assert!(
        refused
            .error_line()
            .unwrap()
            .contains("primary.dsn: cannot connect"),
        "{}",
        refused.stderr
    );

    c.init_ready(&require).await;
    let s = run_ok(&c, &require, &[]);
    let id = s["run_id"].as_i64().unwrap();
    assert_eq!(run_findings(&c, id, "blobs"), want);
    c.run(&require, &["uploader", "--once"])
        .expect_code(0)
        .expect_stdout("1 task(s) applied");
    c.run(&require, &["status"]).expect_code(0);
    let sql = "SELECT count(*) FROM pgmaint.integrity_findings WHERE run_id = $1";
    assert_eq!(scalar::<i64>(&p, sql, &[&id]).await, 4);
}

/// limits.max_pause bounds the pause even when the primary freezes mid-run (every call
/// to it hangs): the cycle aborts, gives its work a short grace, and resumes replay
/// while the primary is still frozen.
#[tokio::test(flavor = "multi_thread")]
async fn max_pause_holds_even_when_the_primary_freezes() {
    let limits = "max_pause = \"8s\"";
    let (c, _p, _cfg, child) = paused_run("cycle-frozen-primary", 5_000, limits, &["run"]).await;
    signal_server(&c, "primary", "STOP");
    let frozen = std::time::Instant::now();
    // The scan (replica only) ends well within max_pause; the calls to the frozen
    // primary around it hang. 8 s max_pause + 10 s grace + the time-outs of the calls on
    // the way out, with margin.
    let r = wait_until_not_paused(&c, 1, Duration::from_secs(40)).await;
    let waited = frozen.elapsed();
    signal_server(&c, "primary", "CONT");
    let out = finish(child);
    assert!(
        r,
        "replica still paused {waited:?} after the primary froze\n{}",
        out.stderr
    );
    assert_ne!(out.code, 0, "{}", out.stderr);
}

/// limits.max_replay_backlog: WAL keeps streaming into the paused replica; once more
/// than the limit waits to be replayed, the cycle aborts, resumes replay and uploads
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn replay_backlog_over_the_limit_aborts_the_cycle() {
    let limits = "max_replay_backlog = \"1MB\"";
    let args = ["run", "--json"];
    let (c, p, _cfg, child) = paused_run("cycle-backlog", 30_000, limits, &args).await;
    // A few MB of WAL on the primary, streamed to the paused replica.
    p.batch_execute("CREATE TABLE wal_filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 20000) g")
        .await
        .unwrap();
    let s = run_summary(&finish(child).expect_code(1));
    assert_ended(&s, "aborted", "limits.max_replay_backlog");
    let id = s["run_id"].as_i64().unwrap();
    assert_eq!(uploads_of_run(&c, id).await, 0);
    assert_eq!(c.pause_state(1).await, "not paused");
    c.wait_caught_up(1).await;
}

/// When the terminal is gone (stderr a dead pipe, as after a hangup), logging must not
/// take the process down before it resumes: a signal still aborts the cycle cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_stderr_does_not_stop_the_resume() {
    let (c, _p) = blobs_cluster("cycle-dead-stderr", 100_000).await;
    let cfg = slow_blobs_config(&c, "t.toml", "");
    c.init_ready(&cfg).await;
    let mut child = spawn_piped(&c, &cfg, &["run"]);
    // Close our end of its stderr: every log line it writes from now on fails (EPIPE).
    drop(child.stderr.take());
    wait_paused(&c, 1).await;
    signal(child.id(), "INT");
    assert!(
        exited_within(&mut child, Duration::from_secs(30))
            .await
            .is_some(),
        "pgmaint did not stop after SIGINT"
    );
    assert_eq!(c.pause_state(1).await, "not paused");
    assert_eq!(run_state(&c, last_run_id(&c).await).await, "cancelled");
}
