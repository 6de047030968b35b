//! `pgmaint dump`: a consistent pg_dump of the paused replica, against a real primary
//! and streaming replica.

use std::process::Command;

use pgmaint_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn dump_of_the_paused_replica_restores_and_is_described_by_its_manifest() {
    let (c, p) = blobs_cluster("dump", 20_000).await;
    p.batch_execute(
        "CREATE TABLE notes (id int PRIMARY KEY, body text);
         INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 500) g;",
    )
    .await
    .unwrap();
    let cfg = c.ready_config("t.toml", "").await;

    let out = c.dir.join("dump1");
    let s = run_summary(
        &c.run(
            &cfg,
            &[
                "dump",
                "--out",
                out.to_str().unwrap(),
                "--jobs",
                "2",
                "--json",
            ],
        )
        .expect_code(0),
    );
    assert_eq!(s["state"], "succeeded");
    assert_eq!(c.pause_state(1).await, "not paused");
    let id = s["run_id"].as_i64().unwrap();
    let purpose: String = run_column(&c, id, "purpose").await;
    assert_eq!(purpose, "dump");

    // The manifest next to pg_dump's files: the snapshot, and the MD5 of every file.
    let m = read_manifest(&out);
    assert_eq!(m["valid"], true);
    assert_eq!(m["snapshot"]["lsn"], s["snapshot"]["lsn"]);
    let files = m["tasks"][0]["files"].as_array().unwrap();
    assert!(files.iter().any(|f| f["name"] == "toc.dat"), "{files:?}");
    assert_files_as_listed(&out, files);

    // It restores, with every row.
    p.execute("CREATE DATABASE restored", &[]).await.unwrap();
    let restore = Command::new(format!("{}/pg_restore", c.env["PG_BIN"]))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &c.primary_port().to_string(),
            "-U",
            "postgres",
            "-d",
            "restored",
            "-j",
            "2",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let r = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=restored",
        c.primary_port()
    ))
    .await;
    let counts: (i64, i64) = pair(
        &r,
        "SELECT (SELECT count(*) FROM blobs), (SELECT count(*) FROM notes)",
        &[],
    )
    .await;
    assert_eq!(counts, (20_000, 500));

    // A non-empty --out is refused before anything is paused.
    let again = c
        .run(&cfg, &["dump", "--out", out.to_str().unwrap()])
        .expect_code(2);
    assert!(
        again.error_line().unwrap().contains("--out:"),
        "{}",
        again.stderr
    );
    assert_eq!(c.pause_state(1).await, "not paused");
}

/// If replayed WAL holds an AccessExclusiveLock when replay pauses, a query on that
/// relation would wait forever. pgmaint sees the startup process's lock, resumes, and
/// pauses again later, once the lock is gone. (A dump reads every relation, and nothing
/// before the pause, so the lock is met exactly at the pause point.)
#[tokio::test(flavor = "multi_thread")]
async fn replayed_access_exclusive_lock_at_the_pause_point_is_waited_out() {
    let (c, _p) = blobs_cluster("dump-startup-lock", 1_000).await;
    let cfg = c.ready_config("t.toml", "").await;

    let locker = c.primary().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE blobs IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let r = c.replica(1).await;
    wait_for(
        "the replica's startup process to hold the lock",
        std::time::Duration::from_secs(20),
        || async {
            count(
                &r,
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                  WHERE a.backend_type = 'startup' AND l.mode = 'AccessExclusiveLock'
                    AND l.relation = 'public.blobs'::regclass",
            )
            .await
                > 0
        },
    )
    .await;

    let out_dir = c.dir.join("dump-after-lock");
    let child = spawn_piped(
        &c,
        &cfg,
        &["dump", "--out", out_dir.to_str().unwrap(), "--json"],
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    locker.batch_execute("COMMIT").await.unwrap();
    let out = finish(child).expect_code(0);
    assert!(
        out.stderr
            .contains("AccessExclusiveLock at the pause point"),
        "it saw the lock and retried: {}",
        out.stderr
    );
    let s = run_summary(&out);
    assert_eq!(s["state"], "succeeded");
    assert_eq!(c.pause_state(1).await, "not paused");
}
