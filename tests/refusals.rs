//! What a cycle must refuse before it pauses anything (issue "Defects found under
//! hostile input and faults"): a synchronous standby whose pause would freeze the
//! primary, a replica of another cluster, work that cannot succeed on the replica.

use std::time::{Duration, Instant};

use pgmaint_e2e::*;

/// `ALTER SYSTEM SET name = 'value'`, then reload.
async fn alter_system(client: &tokio_postgres::Client, name: &str, value: &str) {
    client
        .batch_execute(&format!(
            "ALTER SYSTEM SET {name} = '{}'",
            value.replace('\'', "''")
        ))
        .await
        .unwrap();
    client
        .execute("SELECT pg_reload_conf()", &[])
        .await
        .unwrap();
}

/// A [`blobs_cluster`] of `n` rows whose primary also has a table `writes`, for
/// [`timed_write`].
async fn cluster_with_writes(name: &str, n: i64) -> (Cluster, tokio_postgres::Client) {
    let (c, p) = blobs_cluster(name, n).await;
    p.batch_execute("CREATE TABLE writes (at timestamptz DEFAULT now())")
        .await
        .unwrap();
    (c, p)
}

/// Commit a row into `writes` through `client`; it must commit within `limit` (else
/// panic, saying `blocked`). How long it took.
async fn timed_write(client: &tokio_postgres::Client, limit: Duration, blocked: &str) -> Duration {
    let t = Instant::now();
    tokio::time::timeout(
        limit,
        client.execute("INSERT INTO writes DEFAULT VALUES", &[]),
    )
    .await
    .expect(blocked)
    .unwrap();
    t.elapsed()
}

/// Set the primary's `synchronous_standby_names` and wait until it has taken effect
/// (`pg_stat_replication.sync_state` of `standby` is one of `states`).
async fn set_sync_standbys(c: &Cluster, names: &str, standby: &str, states: &[&str]) {
    let p = c.primary().await;
    alter_system(&p, "synchronous_standby_names", names).await;
    let states: Vec<String> = states.iter().map(|s| s.to_string()).collect();
    wait_for(
        &format!("sync_state of {standby:?} in {states:?} under {names}"),
        Duration::from_secs(20),
        || async {
            let state: Option<String> = c
                .primary()
                .await
                .query_opt(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1",
                    &[&standby],
                )
                .await
                .unwrap()
                .map(|r| r.get(0));
            state.is_some_and(|s| states.contains(&s))
        },
    )
    .await;
}

/// Bug: the standby's application_name was parsed out of `pg_stat_wal_receiver.conninfo`
/// with `[^ ]+`, so `my standby` read as `my`, the synchronous standby went unrecognised
/// and was paused under `synchronous_commit = remote_apply`: every commit on the
/// primary blocked (pgmaint's own too) until the lease was lost. Every form of
/// `synchronous_standby_names` must be recognised, and the primary's commits must never
/// wait while pgmaint refuses.
#[tokio::test(flavor = "multi_thread")]
async fn sync_standby_with_spaced_name_is_refused() {
    let (c, p) = cluster_with_writes("refuse-sync-standby", 2_000).await;
    let cfg = c.write_config("t.toml", &blobs_task(""));
    c.run(&cfg, &["init"]).expect_code(0);
    // The standby connects as 'my standby'.
    let r = c.replica(1).await;
    let conninfo: String = scalar(&r, "SHOW primary_conninfo", &[]).await;
    alter_system(
        &r,
        "primary_conninfo",
        &format!("{conninfo} application_name='my standby'"),
    )
    .await;
    wait_for("the standby to reconnect as 'my standby'", Duration::from_secs(20), || async {
        c.primary()
            .await
            .query_opt(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = 'my standby' AND state = 'streaming'",
                &[],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    alter_system(&p, "synchronous_commit", "remote_apply").await;

    for (names, states) in [
        ("\"my standby\"", &["sync"][..]),
        ("FIRST 1 (\"my standby\", other)", &["sync"][..]),
        ("ANY 1 (other, \"my standby\")", &["quorum"][..]),
        ("*", &["sync"][..]),
        // Next in line: becomes synchronous the moment the other one goes away.
        (
            "FIRST 1 (other, \"my standby\")",
            &["sync", "potential"][..],
        ),
    ] {
        set_sync_standbys(&c, names, "my standby", states).await;
        c.wait_caught_up(1).await;
        // Commits on the primary, timed, while pgmaint runs and refuses.
        let mut child = spawn_piped(&c, &cfg, &["run"]);
        let mut slowest = Duration::ZERO;
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            let took = timed_write(
                &p,
                Duration::from_secs(5),
                "an INSERT on the primary blocked while pgmaint ran",
            )
            .await;
            slowest = slowest.max(took);
            assert!(
                started.elapsed() < Duration::from_secs(50),
                "pgmaint run did not end"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = finish(child);
        let stderr = &out.stderr;
        assert_eq!(out.code, 1, "{names}: {stderr}");
        assert!(
            stderr.contains("synchronous standby") && stderr.contains("my standby"),
            "{names}: {stderr}"
        );
        assert!(
            slowest < Duration::from_secs(1),
            "{names}: an INSERT took {slowest:?}"
        );
        assert_eq!(c.pause_state(1).await, "not paused", "{names}");
    }

    // An asynchronous standby beside a synchronous one is still pgmaint's to pause.
    alter_system(&p, "synchronous_standby_names", "").await;
    set_sync_standbys(&c, "", "my standby", &["async"]).await;
    c.run(&cfg, &["run"]).expect_code(0);
    assert_eq!(c.pause_state(1).await, "not paused");
}

/// A config (in `c`'s directory) naming any primary and replica r1, with the blobs task.
fn pair_config(c: &Cluster, file: &str, primary: &str, replica: &str) -> std::path::PathBuf {
    let cfg = c.dir.join(file);
    let text = format!(
        "[primary]\ndsn = \"{primary}\"\n[[replicas]]\nname = \"r1\"\ndsn = \"{replica}\"\n\
         [results]\ndir = \"{}\"\n{}",
        c.results_dir().display(),
        blobs_task("")
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Bug: pgmaint never compared the replica with the primary. A replica DSN pointing at
/// a standby of another cluster ran, and its rows were swapped into the primary. Now
/// a replica of another cluster (system identifier), or of another history (timeline),
/// is refused before anything is recorded or paused: exit 2, naming both servers.
#[tokio::test(flavor = "multi_thread")]
async fn replica_of_another_cluster_or_timeline_is_refused_before_the_lease() {
    let a = Cluster::up("refuse-other-cluster-a", 2);
    let b = Cluster::up_fresh("refuse-other-cluster-b", 1);
    seed_blobs(&a.primary().await, BLOBS, "bigint", "g", 100).await;
    seed_blobs(&b.primary().await, BLOBS, "bigint", "g", 100).await;
    b.wait_caught_up(1).await;
    let init = a.write_config("init.toml", "");
    a.run(&init, &["init"]).expect_code(0);
    // a's primary, b's replica.
    let cfg = pair_config(&a, "mixed.toml", &a.primary_dsn(), &b.replica_dsn(1));
    for args in [&["run"][..], &["dump", "--out"][..]] {
        let mut args = args.to_vec();
        let out = a.dir.join("dump-out");
        let out = out.to_str().unwrap();
        if args[0] == "dump" {
            args.push(out);
        }
        let run = a.run(&cfg, &args).expect_code(2);
        let line = run.error_line().unwrap();
        assert!(
            line.contains("is not a standby of the primary")
                && line.contains(&format!("port={}", a.primary_port()))
                && line.contains(&format!("port={}", b.replica_port(1))),
            "{line}"
        );
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    let runs = count(&a.primary().await, "SELECT count(*) FROM pgmaint.runs").await;
    assert_eq!(runs, 0, "a run was recorded for a foreign replica");
    assert_eq!(b.pause_state(1).await, "not paused");

    // Same cluster, other history: r2 promoted is a primary on timeline 2; r1 still
    // streams timeline 1 from the old primary.
    let r2 = a.replica(2).await;
    r2.execute("SELECT pg_promote(true, 60)", &[])
        .await
        .unwrap();
    let cfg = pair_config(&a, "timeline.toml", &a.replica_dsn(2), &a.replica_dsn(1));
    let run = a.run(&cfg, &["run"]).expect_code(2);
    let line = run.error_line().unwrap();
    assert!(
        line.contains("is on timeline 1 but the primary") && line.contains("is on timeline 2"),
        "{line}"
    );
    assert_eq!(a.pause_state(1).await, "not paused");
    let promoted_runs = count(&r2, "SELECT count(*) FROM pgmaint.runs").await;
    assert_eq!(promoted_runs, 0);
}

/// A run's pause-time (task-visible) state: was a pause ever requested for it?
async fn pause_was_requested(c: &Cluster, run_id: i64) -> bool {
    run_column(c, run_id, "pause_requested_at IS NOT NULL").await
}

/// Bug: scan errors read "streaming COPY from the replica: db error" (and, with
/// parallelism = 200, "connecting to the replica: db error"), in the output, in
/// pgmaint.runs.error and in manifest.json. The server's message and SQLSTATE must
/// show; and what can be known before the pause (a query that writes, more sessions
/// than the replica has, two tasks writing one file) must be refused before it.
#[tokio::test(flavor = "multi_thread")]
async fn scan_errors_name_the_servers_message_and_doomed_tasks_never_pause() {
    let (c, p) = blobs_cluster("refuse-doomed-tasks", 1_000).await;
    // The materialize target exists on the primary: run refuses a missing one before the pause.
    p.batch_execute("CREATE TABLE public.out (g int, x int)")
        .await
        .unwrap();
    c.ready_config("init.toml", "").await;
    let materialize = |name: &str, query: &str| {
        format!(
            "[[tasks]]\nname = \"{name}\"\nkind = \"materialize\"\nquery = \"{query}\"\ntarget = \"public.out\"\n"
        )
    };

    // A failure only the scan can meet: the server's words reach every record of it.
    let cfg = c.write_config(
        "fails.toml",
        &materialize(
            "div",
            "SELECT g, 1 / (g - 500) AS x FROM generate_series(1, 1000) g",
        ),
    );
    let (run, summary) = run_json(&c, &cfg, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let id = summary["run_id"].as_i64().unwrap();
    let want = "division by zero (SQLSTATE 22012)";
    assert!(run.stderr.contains(want), "{}", run.stderr);
    let recorded: String = run_column(&c, id, "error").await;
    assert!(recorded.contains(want), "{recorded}");
    let m = manifest(&c.results_dir(), id);
    let task_error = m["tasks"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(task_error.contains(want), "{m}");
    assert!(!recorded.contains("db error") && !task_error.contains("db error"));
    assert_eq!(c.pause_state(1).await, "not paused");

    // Refused before any pause, exit 2, naming the task and what is wrong.
    let cases = [
        (
            materialize("locks", "SELECT id FROM public.blobs FOR UPDATE"),
            "query: the query locks rows",
        ),
        (
            materialize(
                "writes",
                "WITH d AS (DELETE FROM public.blobs RETURNING id) SELECT id FROM d",
            ),
            "query: the query writes (DELETE on blobs)",
        ),
        (blobs_task("parallelism = 200"), "parallelism = 200"),
        (
            format!(
                "[[tasks]]\nname = \"x\"\nkind = \"export\"\ntables = [\"public.blobs\"]\n{}",
                row_checksum_task("x.public.blobs", BLOBS, "id", "payload", "payload_md5", "")
            ),
            "tasks \"x\" and \"x.public.blobs\" would both write x.public.blobs.csv",
        ),
    ];
    for (i, (tasks, want)) in cases.iter().enumerate() {
        let cfg = c.write_config(&format!("doomed{i}.toml"), tasks);
        let run = c.run(&cfg, &["run"]);
        assert_eq!(run.code, 2, "{want}: {}", run.stderr);
        let line = run.error_line().unwrap();
        assert!(line.contains(want), "{line}");
        assert!(
            !pause_was_requested(&c, last_run_id(&c).await).await,
            "{want}"
        );
        assert_eq!(c.pause_state(1).await, "not paused");
    }
}

/// Review finding: `remote_apply` set in an application's own session (`SET
/// synchronous_commit = remote_apply`, common for read-your-writes) cannot be seen
/// before the pause; a paused synchronous standby then held those commits until
/// `limits.max_pause`. The watchdog watches the primary: commits waiting for this
/// replica make it give the pause up and resume, within seconds.
#[tokio::test(flavor = "multi_thread")]
async fn commits_waiting_for_a_paused_sync_standby_end_the_pause() {
    let (c, _p) = cluster_with_writes("refuse-sync-during-pause", 100_000).await;
    let cfg = slow_blobs_config(&c, "slow.toml", "");
    c.run(&cfg, &["init"]).expect_code(0);
    // r1 synchronous; the server default stays `on` (flush): pausing r1 blocks nothing
    // until a session asks for remote_apply.
    set_sync_standbys(&c, "r1", "r1", &["sync"]).await;
    c.wait_caught_up(1).await;
    let child = spawn_paused(&c, &cfg, &["run", "--json"]).await;
    let app = c.primary().await;
    app.batch_execute("SET synchronous_commit = remote_apply")
        .await
        .unwrap();
    let waited = timed_write(
        &app,
        Duration::from_secs(20),
        "the remote_apply commit still waits for the paused standby",
    )
    .await;
    let s = run_summary(&finish(child).expect_code(1));
    assert_ended(
        &s,
        "aborted",
        "wait for a synchronous standby, and replica r1 may be it",
    );
    assert!(
        waited < Duration::from_secs(10),
        "the commit waited {waited:?}"
    );
    assert_eq!(c.pause_state(1).await, "not paused");
    assert_eq!(uploads_of_run(&c, s["run_id"].as_i64().unwrap()).await, 0);
}
