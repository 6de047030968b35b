//! What the operator is told when a run ends badly (issue "Defects found under hostile
//! input and faults", point 10): the right exit code, each message once, a valid run
//! kept through a primary restart, a run's history as it really ended.

use std::time::Duration;

use pgmaint_e2e::*;

/// Rows arrive slowly and small: PostgreSQL sends nothing (not even COPY's header,
/// which waits in its 8 kB send buffer) for seconds.
const TRICKLE: &str = "SELECT g, pg_sleep(0.005) AS s FROM generate_series(1, 4000) g";

/// Bugs: `tasks list --limit=-1` exited 1 with a server error; a materialize cut by its
/// soft_timeout exited 0 as "succeeded" with nothing uploaded, saying so only in the
/// manifest; an export cut before its first rows left a 0-byte CSV, without the header
/// the README promises; a signal's error said "cancelled by SIGTERM: cancelled by SIGTERM".
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_hears_of_partial_results_and_bad_usage_once() {
    let (c, p) = blobs_cluster("outcomes-told", 30_000).await;
    // The materialize target exists on the primary: run refuses a missing one before the pause.
    p.batch_execute("CREATE TABLE public.out (g int, s text)")
        .await
        .unwrap();
    let init = c.ready_config("init.toml", "").await;

    let run = c
        .run(&init, &["tasks", "list", "--limit=-1"])
        .expect_code(2);
    assert!(run.stderr.contains("--limit"), "{}", run.stderr);

    let cfg = c.write_config(
        "partial.toml",
        &format!(
            "[[tasks]]\nname = \"m\"\nkind = \"materialize\"\nquery = \"{TRICKLE}\"\ntarget = \"public.out\"\n\
             soft_timeout = \"1s\"\n\
             [[tasks]]\nname = \"e\"\nkind = \"export\"\nquery = \"{TRICKLE}\"\nsoft_timeout = \"1s\"\n"
        ),
    );
    let (run, s) = run_json(&c, &cfg, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let line = run.error_line().unwrap();
    assert!(
        line.contains("task m uploaded nothing: soft_timeout reached before the query finished"),
        "{line}"
    );
    assert!(
        !line.contains("task e"),
        "a partial export is still an export: {line}"
    );
    assert_eq!(s["queued"].as_array().unwrap().len(), 0);
    let dir = c
        .results_dir()
        .join(s["run_id"].as_i64().unwrap().to_string());
    for file in ["m.csv", "e.csv"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(text.starts_with("g,s\n"), "{file}: {text:?}");
    }

    // One signal, said once.
    let slow = slow_blobs_config(&c, "slow.toml", "");
    let child = spawn_paused(&c, &slow, &["run"]).await;
    signal(child.id(), "TERM");
    let out = finish(child).expect_code(1);
    let line = out.error_line().unwrap();
    assert_eq!(line.matches("cancelled by SIGTERM").count(), 1, "{line}");
    assert_eq!(c.pause_state(1).await, "not paused");
}

/// Bug: a primary restarted near the end of a run made the run fail with a bare
/// "connection closed": a valid snapshot, scanned and verified, thrown away. The
/// queue commit reconnects and goes through; the findings are uploaded.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_restart_during_a_run_does_not_discard_the_run() {
    let (c, p) = blobs_cluster("outcomes-primary-restart", 30_000).await;
    p.batch_execute("UPDATE public.blobs SET payload_md5 = md5('x') WHERE id = 29999")
        .await
        .unwrap();
    let cfg = slow_blobs_config(&c, "slow.toml", "");
    c.init_ready(&cfg).await;
    let mut child = spawn_paused(&c, &cfg, &["run", "--json"]).await;
    c.server("restart", "primary");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the scan ended before the primary restarted: make it slower"
    );
    let s = run_summary(&finish(child).expect_code(0));
    assert_eq!(s["state"], "succeeded");
    assert_eq!(s["queued"].as_array().unwrap().len(), 1);
    assert_eq!(c.pause_state(1).await, "not paused");
    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    let found: Vec<String> = c
        .primary()
        .await
        .query("SELECT row_key FROM pgmaint.integrity_findings", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(found, vec!["29999".to_string()]);
}

/// Bug: when the primary stalled, the run gave up its lease, resumed replay itself and
/// could not record that; the next command then marked it "lease expired: coordinator
/// died or hung". The run keeps its outcome in its results directory, and the command
/// that recovers the lease records how it really ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_resumed_during_a_primary_stall_is_recorded_as_it_ended() {
    let limits = "lease = \"4s\"";
    let (c, _p, cfg, child) = paused_run("outcomes-primary-stall", 100_000, limits, &["run"]).await;
    let id = last_run_id(&c).await;
    signal_server(&c, "primary", "STOP");
    let resumed = wait_until_not_paused(&c, 1, Duration::from_secs(40)).await;
    // The run gives up on the frozen primary and exits; only then does it come back.
    let out = finish(child);
    signal_server(&c, "primary", "CONT");
    let stderr = &out.stderr;
    assert!(resumed, "replica still paused\n{stderr}");
    assert_eq!(out.code, 1, "{stderr}");
    assert!(stderr.contains("outcome.json"), "{stderr}");

    let said = c.run(&cfg, &["recover"]).expect_code(0);
    assert!(
        said.stdout
            .contains(&format!("run {id} had ended (aborted)")),
        "{}",
        said.stdout
    );
    let row = c
        .primary()
        .await
        .query_one(
            "SELECT state, error, resumed_at IS NOT NULL FROM pgmaint.runs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (state, error, resumed_at): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(state, "aborted", "{error}");
    assert!(error.contains("lease on the primary lost"), "{error}");
    assert!(!error.contains("died or hung"), "{error}");
    assert!(resumed_at);
    assert_eq!(c.pause_state(1).await, "not paused");
}

/// A replica resumed behind pgmaint's back (Patroni 2.1+ resumes paused replicas unless
/// the cluster is in maintenance mode): the run is invalid, uploads nothing, and says
/// who resumed replay.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_resumed_by_another_process_invalidates_the_run_and_says_so() {
    let args = ["run", "--json"];
    let (c, _p, _cfg, child) = paused_run("outcomes-foreign-resume", 100_000, "", &args).await;
    c.replica(1)
        .await
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    let s = run_summary(&finish(child));
    assert_ended(
        &s,
        "invalid",
        "replay was resumed by another process during the pause",
    );
    assert_eq!(uploads_of_run(&c, s["run_id"].as_i64().unwrap()).await, 0);
}
