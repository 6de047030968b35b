//! Output machines can trust, and `pgmaint prune` (issue 12, items 6 and 8): `--json`
//! stays one JSON document after a recovery of a dead run (its note goes to stderr),
//! the system identifier is a string, `--log debug` shows the cycle's steps, and prune
//! removes old runs with their directories but never the latest successful run of a
//! task, a run whose upload waits, or a directory that is not provably pgmaint's.

use std::time::Duration;

use pgmaint_e2e::*;

/// `run --json --log debug`: the summary is the whole stdout, the steps are on stderr,
/// the system identifier is the primary's, as a string. Then a run killed in its pause:
/// once its lease expired, `status --json` recovers it in passing and its stdout is
/// still one JSON document (it printed the note before it, once), the note on stderr.
#[tokio::test(flavor = "multi_thread")]
async fn json_stays_one_document_after_a_recovery_and_debug_logs_show_the_cycle() {
    let (c, p) = blobs_cluster("output-recovery", 100_000).await;
    let slow = slow_blobs_config(&c, "slow.toml", "lease = \"2s\"");
    let fast = c.write_config(
        "fast.toml",
        &format!("[limits]\nlease = \"2s\"\n{}", blobs_task("")),
    );
    c.run(&fast, &["init"]).expect_code(0);
    c.wait_caught_up(1).await;

    let run = c
        .run(&fast, &["--log", "debug", "run", "--json"])
        .expect_code(0);
    let summary = run.assert_json_document();
    let system: String = scalar(
        &p,
        "SELECT (pg_control_system()).system_identifier::text",
        &[],
    )
    .await;
    assert_eq!(summary["snapshot"]["system_identifier"], system.as_str());
    let manifest = manifest(&c.results_dir(), summary["run_id"].as_i64().unwrap());
    assert_eq!(manifest["snapshot"]["system_identifier"], system.as_str());
    let mut at = 0;
    for step in [
        "run started",
        "pause requested",
        "replay paused",
        "task started",
        "task finished",
        "uploads queued",
        "replay resumed",
    ] {
        let found = run.stderr[at..]
            .find(step)
            .unwrap_or_else(|| panic!("no {step:?} after the steps before it:\n{}", run.stderr));
        at += found;
    }
    // Without --log debug, the debug steps are not shown.
    let quiet = c.run(&fast, &["run", "--json"]).expect_code(0);
    assert!(
        !quiet.stderr.contains("pause requested"),
        "{}",
        quiet.stderr
    );

    // A run killed in its pause.
    let dead = run_killed_in_its_pause(&c, &slow).await;
    wait_for(
        "the dead run's lease to expire",
        Duration::from_secs(30),
        || async {
            scalar::<bool>(
                &c.primary().await,
                "SELECT coalesce(bool_and(expires_at < now()), true) FROM pgmaint.replica_leases",
                &[],
            )
            .await
        },
    )
    .await;
    let status = c.run(&fast, &["status", "--json"]).expect_code(0);
    let doc = status.assert_json_document();
    assert!(
        status.stderr.contains(&format!("run {dead} had died")),
        "{}",
        status.stderr
    );
    assert_eq!(c.pause_state(1).await, "not paused");
    assert_eq!(run_state(&c, dead).await, "dropped");
    assert!(doc["replicas"].is_array(), "{doc:#}");
}

/// Prune: an old run goes with its directory, its upload tasks and findings; the latest
/// successful run of the task stays even when old; a run whose upload waits stays; a
/// directory that is not a run's stays; --dry-run lists and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn prune_removes_old_runs_but_never_the_latest_a_waiting_upload_or_a_foreign_directory() {
    let (c, p) = blobs_cluster("output-prune", 200).await;
    // Two corrupt rows: every run has findings.
    p.batch_execute("UPDATE blobs SET payload_md5 = 'bad' WHERE id IN (3, 7)")
        .await
        .unwrap();
    let cfg = c.ready_config("t.toml", &blobs_task("")).await;
    // The same task, its results on another host: its upload waits for that host.
    let other = c.write_config(
        "other.toml",
        &format!("host = \"elsewhere\"\n{}", blobs_task("")),
    );

    let old = run_ok(&c, &cfg, &[])["run_id"].as_i64().unwrap();
    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    c.wait_caught_up(1).await;
    let waiting = run_ok(&c, &other, &[])["run_id"].as_i64().unwrap();
    c.wait_caught_up(1).await;
    let latest = run_ok(&c, &cfg, &[])["run_id"].as_i64().unwrap();
    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    let states = |id: i64| {
        let c = &c;
        async move {
            let sql = "SELECT string_agg(state, ',') FROM pgmaint.upload_tasks WHERE run_id = $1";
            scalar::<Option<String>>(&c.primary().await, sql, &[&id]).await
        }
    };
    assert_eq!(states(old).await.as_deref(), Some("completed"));
    assert_eq!(states(waiting).await.as_deref(), Some("waiting"));
    assert_eq!(states(latest).await.as_deref(), Some("completed"));
    let findings = |id: i64| {
        let c = &c;
        async move {
            let sql = "SELECT count(*) FROM pgmaint.integrity_findings WHERE run_id = $1";
            scalar::<i64>(&c.primary().await, sql, &[&id]).await
        }
    };
    assert_eq!(findings(old).await, 2);

    // All three ended 40 days ago.
    p.execute(
        "UPDATE pgmaint.runs SET started_at = now() - interval '40 days',
                finished_at = now() - interval '40 days' + interval '1 minute'",
        &[],
    )
    .await
    .unwrap();
    // Things in results.dir that are not pgmaint's runs.
    let results = c.results_dir();
    for foreign in ["notes", "999999"] {
        std::fs::create_dir_all(results.join(foreign)).unwrap();
        std::fs::write(results.join(foreign).join("keep.txt"), "mine").unwrap();
    }
    let dir = |id: i64| results.join(id.to_string());
    // A run that failed before its pause (no snapshot) whose id names a directory of
    // another run of that id (a schema recreated, its results.dir kept): its manifest
    // names the id and replica, but it is not this run's.
    let reused: i64 = scalar(
        &p,
        "INSERT INTO pgmaint.runs (replica, state, holder, tasks, started_at, finished_at)
         SELECT replica, 'failed', holder, tasks, now() - interval '40 days',
                now() - interval '40 days' FROM pgmaint.runs WHERE id = $1 RETURNING id",
        &[&old],
    )
    .await;
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir(old).join("manifest.json")).unwrap())
            .unwrap();
    manifest["run_id"] = reused.into();
    std::fs::create_dir_all(dir(reused)).unwrap();
    std::fs::write(dir(reused).join("manifest.json"), manifest.to_string()).unwrap();
    let records = || {
        let c = &c;
        async move {
            let sql = "SELECT array_agg(id ORDER BY id) FROM pgmaint.runs";
            scalar::<Vec<i64>>(&c.primary().await, sql, &[]).await
        }
    };
    let before = records().await;

    // Younger than the cut-off: nothing goes.
    let young = c
        .run(&cfg, &["prune", "--older-than", "100d"])
        .expect_code(0);
    assert!(
        young.stdout.starts_with("prune: 0 run(s)"),
        "{}",
        young.stdout
    );

    // --dry-run: lists the old run, changes nothing.
    let dry = c
        .run(
            &cfg,
            &["prune", "--older-than", "30d", "--dry-run", "--json"],
        )
        .expect_code(0);
    let doc = dry.assert_json_document();
    assert_eq!(doc["dry_run"], true);
    let removed: Vec<i64> = doc["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_i64().unwrap())
        .collect();
    assert_eq!(removed, vec![old], "{doc:#}");
    assert_eq!(doc["removed"][0]["findings"], 2);
    assert_eq!(doc["removed"][0]["directory"], dir(old).to_str().unwrap());
    let reason = |id: i64| {
        doc["kept"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["run_id"] == id)
            .unwrap_or_else(|| panic!("run {id} not kept: {doc:#}"))["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason(waiting).contains("waiting"), "{}", reason(waiting));
    assert!(
        reason(reused).contains(&format!("its manifest.json is not run {reused}'s")),
        "{}",
        reason(reused)
    );
    assert!(
        reason(latest).contains("latest successful run"),
        "{}",
        reason(latest)
    );
    assert_eq!(
        doc["kept_directories"][0]["path"],
        results.join("999999").to_str().unwrap()
    );
    assert_eq!(records().await, before);
    assert!(dir(old).join("manifest.json").exists());
    assert_eq!(findings(old).await, 2);

    // For real: one line for the run removed, then the summary.
    let pruned = c
        .run(&cfg, &["prune", "--older-than", "30d"])
        .expect_code(0);
    let lines: Vec<&str> = pruned.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", pruned.stdout);
    assert!(
        lines[0].starts_with(&format!("removed run {old} (succeeded")),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("prune: 1 run(s) and 1 result directory(ies) removed"),
        "{}",
        lines[1]
    );
    assert!(!dir(old).exists());
    assert_eq!(findings(old).await, 0);
    assert_eq!(states(old).await, None);
    let after = records().await;
    assert!(!after.contains(&old) && after.contains(&waiting) && after.contains(&latest));
    for kept in [waiting, latest] {
        assert!(
            dir(kept).join("manifest.json").exists(),
            "run {kept}'s directory"
        );
    }
    for foreign in ["notes", "999999"] {
        assert!(results.join(foreign).join("keep.txt").exists(), "{foreign}");
    }
    assert!(
        dir(reused).join("manifest.json").exists(),
        "the other run's directory"
    );
    assert!(after.contains(&reused));
    // The latest run's findings are still the current ones.
    let current: i64 = scalar(
        &p,
        "SELECT count(*) FROM pgmaint.current_findings WHERE run_id = $1",
        &[&latest],
    )
    .await;
    assert_eq!(current, 2);
    // Nothing more to do.
    let again = c
        .run(&cfg, &["prune", "--older-than", "30d"])
        .expect_code(0);
    assert!(
        again.stdout.starts_with("prune: 0 run(s)"),
        "{}",
        again.stdout
    );
    // One prune at a time: while another holds prune's lock, a second one refuses.
    let other = c.primary().await;
    let key: i64 = 0x7067_6d5f_7072_756e;
    assert!(scalar::<bool>(&other, "SELECT pg_try_advisory_lock($1)", &[&key]).await);
    let busy = c
        .run(&cfg, &["prune", "--older-than", "30d"])
        .expect_code(1);
    assert!(
        busy.error_line()
            .unwrap()
            .contains("another pgmaint prune is running"),
        "{}",
        busy.stderr
    );
    assert!(busy.stdout.is_empty(), "{}", busy.stdout);
}
