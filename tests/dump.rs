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

/// The `[[dumps]]` entry `nightly` writing into `out`, with `extra` fields.
fn nightly(out: &std::path::Path, extra: &str) -> String {
    format!(
        "[[dumps]]\nname = \"nightly\"\nout = \"{}\"\njobs = 2\nkeep = 2\n{extra}\n",
        out.display()
    )
}

/// `pgmaint dump --name nightly --json`, which must exit with `code`; its summary.
fn dump_named(c: &Cluster, cfg: &std::path::Path, code: i32) -> serde_json::Value {
    run_summary(
        &c.run(cfg, &["dump", "--name", "nightly", "--json"])
            .expect_code(code),
    )
}

/// The names in `dir`, sorted.
fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_dumps_with_keep_2_over_4_dumps_leave_exactly_the_2_newest_and_each_restores() {
    let (c, p) = blobs_cluster("dump-keep", 1_000).await;
    p.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .await
        .unwrap();
    // `out` does not exist yet: the first dump creates it.
    let out = c.dir.join("nightly");
    let cfg = c.ready_config("t.toml", &nightly(&out, "")).await;

    let mut dirs = Vec::new();
    for i in 1..=4 {
        // 10 more notes before each dump: the dump's row count says which dump it is.
        p.execute(
            "INSERT INTO notes SELECT g, 'note' FROM generate_series($1::int * 10 - 9, $1::int * 10) g",
            &[&i],
        )
        .await
        .unwrap();
        c.wait_caught_up(1).await;
        let s = dump_named(&c, &cfg, 0);
        assert_eq!(s["state"], "succeeded");
        let dir = std::path::PathBuf::from(s["results_dir"].as_str().unwrap());
        assert_eq!(dir.parent(), Some(out.as_path()));
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name.ends_with(&format!("Z-run{}", s["run_id"])) && name.len() > 17,
            "{name}"
        );
        assert_eq!(read_manifest(&dir)["run_id"], s["run_id"]);
        dirs.push(name);
        if i == 1 {
            // What an operator keeps next to the dumps, and a directory that only looks
            // like one of pgmaint's: never pgmaint's to remove.
            std::fs::create_dir(out.join("keep-me")).unwrap();
            std::fs::write(out.join("keep-me/file"), "mine").unwrap();
            std::fs::write(out.join("README.txt"), "mine").unwrap();
            std::fs::create_dir(out.join("20200101T000000Z-run1")).unwrap();
        }
    }
    assert_eq!(c.pause_state(1).await, "not paused");

    let mut want = vec![
        "20200101T000000Z-run1".to_string(),
        "README.txt".into(),
        dirs[2].clone(),
        dirs[3].clone(),
        "keep-me".into(),
    ];
    want.sort();
    assert_eq!(names_in(&out), want);
    assert_eq!(
        std::fs::read_to_string(out.join("keep-me/file")).unwrap(),
        "mine"
    );

    assert_eq!(
        restored_rows(&c, &p, "notes", &out.join(&dirs[2]), "third").await,
        30
    );
    assert_eq!(
        restored_rows(&c, &p, "notes", &out.join(&dirs[3]), "fourth").await,
        40
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dump_left_invalid_by_a_failed_run_is_removed_by_the_next_successful_dump() {
    let (c, p) = blobs_cluster("dump-invalid", 1_000).await;
    p.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .await
        .unwrap();
    let out = c.dir.join("nightly");
    let good = c
        .ready_config("good.toml", &nightly(&out, "replica = \"r1\""))
        .await;
    let bad = c.write_config("bad.toml", &nightly(&out, "pg_dump = \"/bin/false\""));

    // Bad usage is refused before anything is leased or paused.
    let r = c.run(&good, &["dump", "--name", "nope"]).expect_code(2);
    assert!(r.error_line().unwrap().contains("--name"), "{}", r.stderr);
    let r = c
        .run(&good, &["dump", "--name", "nightly", "--replica", "r2"])
        .expect_code(2);
    assert!(
        r.error_line().unwrap().contains("pinned to replica r1"),
        "{}",
        r.stderr
    );
    let orphan = c.write_config("orphan.toml", &nightly(&c.dir.join("no/such/parent"), ""));
    let r = c
        .run(&orphan, &["dump", "--name", "nightly"])
        .expect_code(2);
    assert!(
        r.error_line().unwrap().contains("dumps.out"),
        "{}",
        r.stderr
    );

    // A run whose pg_dump fails leaves its directory: pgmaint's, marked, not succeeded.
    let failed = dump_named(&c, &bad, 1);
    assert_eq!(failed["state"], "failed");
    let id = failed["run_id"].as_i64().unwrap();
    let left: Vec<String> = names_in(&out);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(&format!("Z-run{id}")), "{left:?}");
    assert!(out.join(&left[0]).join("pgmaint-dump.json").exists());
    assert_eq!(c.pause_state(1).await, "not paused");

    // The next successful dump removes it, and says so.
    c.wait_caught_up(1).await;
    let r = c
        .run(&good, &["dump", "--name", "nightly", "--json"])
        .expect_code(0);
    let s = run_summary(&r);
    assert!(r.stderr.contains("old dump removed"), "{}", r.stderr);
    let dir = std::path::PathBuf::from(s["results_dir"].as_str().unwrap());
    assert_eq!(
        names_in(&out),
        vec![dir.file_name().unwrap().to_string_lossy().into_owned()]
    );
    assert_eq!(restored_rows(&c, &p, "notes", &dir, "restored").await, 0);
}

/// Issue 19: after `kill -9` of `pgmaint dump`, its pg_dump went on writing a directory
/// with no marker, and `pgmaint recover` called the dead run alive (`run 26
/// (vm:20453) is alive`) until its lease ran out, the replica paused all the while.
/// Now pg_dump dies with pgmaint, and recover resumes the replica at once.
#[tokio::test(flavor = "multi_thread")]
async fn pg_dump_dies_with_a_killed_pgmaint_dump_and_recover_resumes_at_once() {
    let (c, _p) = blobs_cluster("dump-kill9", 100).await;
    let cfg = c
        .ready_config("t.toml", "[limits]\nlease = \"10m\"\n")
        .await;
    let pidfile = c.dir.join("pg_dump.pid");
    let (fake, _) = c.spying_pg_dump(&format!(
        "[ \"$1\" = --version ] || {{ echo $$ > '{}'; exec sleep 300; }}",
        pidfile.display()
    ));
    let out = c.dir.join("killed-dump");
    let mut child = c
        .pgmaint(
            &cfg,
            &[
                "dump",
                "--out",
                out.to_str().unwrap(),
                "--pg-dump",
                fake.to_str().unwrap(),
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "pg_dump started",
        std::time::Duration::from_secs(20),
        || async { std::fs::read_to_string(&pidfile).is_ok_and(|s| !s.trim().is_empty()) },
    )
    .await;
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(c.pause_state(1).await, "paused");
    signal(child.id(), "KILL");
    child.wait().unwrap();
    wait_for(
        "pg_dump gone",
        std::time::Duration::from_secs(5),
        || async { !std::path::Path::new(&format!("/proc/{pid}")).exists() },
    )
    .await;
    let dead = last_run_id(&c).await;
    let rec = c.run(&cfg, &["recover"]).expect_code(0);
    assert!(
        rec.stdout
            .contains(&format!("run {dead} had died (its process")),
        "{}",
        rec.stdout
    );
    assert_eq!(c.pause_state(1).await, "not paused");
}
