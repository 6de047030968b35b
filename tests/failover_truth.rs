//! Failover under faults (issue 18), on a real primary and two real replicas, the
//! primary killed by `pg_ctl stop -m immediate`:
//! - a promotion made by hand (`SELECT pg_promote()`, no pgmaint record) fences the old
//!   primary by its timeline when it returns;
//! - SIGTERM stops a daemon with automatic failover in every state of the watch, the
//!   failover and the wind-down;
//! - after a failover the next scheduled run starts on the new primary at once;
//! - two daemons, the old primary back right after the promotion: nothing applied on
//!   the old primary, nothing applied twice.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgmaint_e2e::*;
use tokio_postgres::Client;

fn kill_primary(c: &Cluster) {
    c.cluster_sh(&["stop", "primary", "--mode", "immediate"]);
}

fn failover(down_after: &str, extra: &str) -> String {
    format!(
        "[limits]\nlease = \"30s\"\n[daemon]\nleader_lease = \"3s\"\n[failover]\nautomatic = true\n\
         primary_down_after = \"{down_after}\"\ncheck_interval = \"1s\"\n{extra}"
    )
}

async fn in_recovery(client: &Client) -> bool {
    scalar(client, "SELECT pg_is_in_recovery()", &[]).await
}

/// SIGTERM: exit 0 within `grace`, and no replica left paused.
async fn terminated_within(c: &Cluster, d: &mut Daemon, grace: Duration, state: &str) {
    let started = Instant::now();
    let status = d.stop("TERM", grace).await.unwrap_or_else(|| {
        panic!(
            "SIGTERM {state}: still running after {grace:?}\n{}",
            d.log()
        )
    });
    assert!(status.success(), "SIGTERM {state}: {status:?}\n{}", d.log());
    eprintln!("SIGTERM {state}: exited 0 in {:?}", started.elapsed());
    for i in [1, 2] {
        if let Ok((r, conn)) =
            tokio_postgres::connect(&c.replica_dsn(i), tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            if in_recovery(&r).await {
                assert_eq!(c.pause_state(i).await, "not paused", "SIGTERM {state}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promotion_by_hand_fences_the_returning_old_primary_by_its_timeline() {
    let c = Cluster::up("truth-by-hand", 2);
    let cfg = c.write_config("hand.toml", &failover("2s", "").replace("listen", "#"));
    c.init_ready(&cfg).await;
    c.wait_caught_up(2).await;
    kill_primary(&c);
    // By hand: no pgmaint record anywhere.
    let r2 = c.replica(2).await;
    r2.batch_execute("SELECT pg_promote()").await.unwrap();
    wait_for("r2 out of recovery", Duration::from_secs(10), || async {
        !in_recovery(&r2).await
    })
    .await;
    assert_eq!(
        count(&r2, "SELECT count(*) FROM pgmaint.promotions").await,
        0
    );
    c.server("start", "primary");
    let old = c.primary().await;
    let before = pgmaint_tables(&old).await;
    // Every command refuses the old primary, names r2 and the line to change.
    let run = c.run(&cfg, &["run"]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    let line = run.error_line().unwrap_or_default().to_string();
    assert!(line.contains("former primary"), "{line}");
    assert!(
        line.contains("replica r2") && line.contains("point primary.dsn at it"),
        "{line}"
    );
    // A daemon completes r2's promotion and works against r2 only.
    let mut d = Daemon::start(&c, &cfg, 1);
    wait_for(
        "r2's promotion recorded",
        Duration::from_secs(20),
        || async { count(&r2, "SELECT count(*) FROM pgmaint.promotions").await == 1 },
    )
    .await;
    wait_for(
        "the daemon leading on r2",
        Duration::from_secs(20),
        || async { count(&r2, "SELECT count(*) FROM pgmaint.leader").await == 1 },
    )
    .await;
    let log = d.log();
    assert!(
        log.contains("promoted by hand or by another pgmaint"),
        "{log}"
    );
    d.terminate().await;
    assert_eq!(pgmaint_tables(&old).await, before, "{}", d.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_failover_daemon_in_every_state() {
    let c = Cluster::up("truth-sigterm", 2);
    let init = c.write_config("init.toml", "");
    c.init_ready(&init).await;
    c.wait_caught_up(2).await;
    let grace = Duration::from_secs(10);
    let body = |down: &str, extra: &str| {
        format!(
            "{}[uploader]\nshutdown_grace = \"5s\"\n{}",
            failover(down, extra),
            sleepy_task("hold", 30.0, "every = \"1s\"\nreplica = \"r1\"")
        )
    };

    // 1. Watching a healthy primary, with a cycle paused on r1.
    let cfg = c.write_config("watching.toml", &body("2s", ""));
    let mut d = Daemon::start(&c, &cfg, 1);
    wait_paused(&c, 1).await;
    terminated_within(&c, &mut d, grace, "while watching, a cycle paused").await;

    // 1b. A replica hung (SIGSTOP): the upload worker's guard asks it before every
    // claim, bounded, so the shutdown does not wait for it (review finding).
    let mut d = Daemon::start(&c, &cfg, 11);
    wait_for("the daemon leading", Duration::from_secs(20), || async {
        count(&c.primary().await, "SELECT count(*) FROM pgmaint.leader").await == 1
    })
    .await;
    signal_server(&c, "r2", "STOP");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = d.stop("TERM", grace).await;
    signal_server(&c, "r2", "CONT");
    let status =
        stopped.unwrap_or_else(|| panic!("SIGTERM with r2 hung: still running\n{}", d.log()));
    assert!(status.success(), "{status:?}\n{}", d.log());

    // 2. A failover lock held elsewhere: the daemon waits for it, and says by whom.
    let r1 = c.replica(1).await;
    r1.batch_execute("SET application_name = 'someone-else-failing-over'")
        .await
        .unwrap();
    // pgmaint's failover lock key, "pgmfailo".
    r1.batch_execute("SELECT pg_advisory_lock(8099562741337517167)")
        .await
        .unwrap();
    kill_primary(&c);
    let cfg = c.write_config("locked.toml", &body("2s", ""));
    sigterm_once_logged(&c, &cfg, 2, "is held by someone-else-failing-over", grace).await;
    drop(r1);

    // 3. During the down check; 4. during the fence hook (nothing promoted). One
    // daemon at a time.
    for (file, down, hook, n, logged) in [
        (
            "checking.toml",
            "20s",
            "",
            3,
            "checking that the primary is down",
        ),
        (
            "fencing.toml",
            "2s",
            "fence_command = 'sleep 30'\n",
            4,
            "running failover.fence_command",
        ),
    ] {
        let cfg = c.write_config(file, &body(down, hook));
        sigterm_once_logged(&c, &cfg, n, logged, grace).await;
    }
    for i in [1, 2] {
        assert!(in_recovery(&c.replica(i).await).await, "nothing promoted");
    }

    // 5. Right after the promotion, in the wind-down and the switch.
    let cfg = c.write_config("promoting.toml", &body("2s", ""));
    sigterm_once_logged(&c, &cfg, 5, "promoted (this daemon)", grace).await;
}

/// Start daemon `n` with `cfg`, wait (up to 30 s) until its log shows `logged` (the
/// state to test), then SIGTERM it: exit 0 within `grace`, no replica left paused.
async fn sigterm_once_logged(
    c: &Cluster,
    cfg: &std::path::Path,
    n: usize,
    logged: &str,
    grace: Duration,
) {
    let mut d = Daemon::start(c, cfg, n);
    wait_for(logged, Duration::from_secs(30), || async {
        d.log().contains(logged)
    })
    .await;
    terminated_within(c, &mut d, grace, logged).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_failover_the_next_run_starts_on_the_new_primary_at_once() {
    let c = Cluster::up("truth-next-run", 2);
    let p = c.primary().await;
    seed_blobs(&p, BLOBS, "bigint", "g", 500).await;
    // A long lease: a run aborted by the failover must not hold anything up for it.
    let body = format!(
        "{}{}",
        failover("2s", ""),
        blobs_task("every = \"1s\"\nreplica = \"r1\"")
    );
    let cfg: PathBuf = c.write_config("next.toml", &body);
    c.init_ready(&cfg).await;
    c.wait_caught_up(2).await;
    let cfg_text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("name = \"r1\"\n", "name = \"r1\"\nfailover_priority = 0\n");
    std::fs::write(&cfg, cfg_text).unwrap();
    let mut d = Daemon::start(&c, &cfg, 1);
    wait_for("a first run", Duration::from_secs(20), || async {
        count(
            &p,
            "SELECT count(*) FROM pgmaint.runs WHERE state = 'succeeded'",
        )
        .await
            >= 1
    })
    .await;
    drop(p);
    kill_primary(&c);
    let crashed = Instant::now();
    let r2 = c.replica(2).await;
    wait_for("a run started on r2", Duration::from_secs(30), || async {
        !in_recovery(&r2).await
            && count(
                &r2,
                "SELECT count(*) FROM pgmaint.runs r
                  WHERE started_at > (SELECT max(promoted_at) FROM pgmaint.promotions)",
            )
            .await
                >= 1
    })
    .await;
    let took = crashed.elapsed();
    // primary_down_after (2 s) + 2 x check_interval (1 s), and a little for the
    // promotion itself and the scheduler's tick.
    assert!(
        took < Duration::from_secs(6),
        "the first run on the new primary started {took:?} after the crash\n{}",
        d.log()
    );
    eprintln!("first run on the new primary {took:?} after the crash");
    d.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_and_a_returning_old_primary_apply_nothing_there_and_nothing_twice() {
    let c = Cluster::up("truth-two-return", 2);
    let p = c.primary().await;
    seed_blobs(&p, BLOBS, "bigint", "g", 500).await;
    p.batch_execute("UPDATE public.blobs SET payload_md5 = 'x' WHERE id IN (5, 7)")
        .await
        .unwrap();
    let body = format!(
        "{}{}",
        failover("2s", ""),
        blobs_task("every = \"1s\"\nreplica = \"r1\"")
    )
    .replace("lease = \"30s\"", "lease = \"3s\"");
    let cfg = c.write_config("two.toml", &body);
    c.init_ready(&cfg).await;
    c.wait_caught_up(2).await;
    let cfg_text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("name = \"r1\"\n", "name = \"r1\"\nfailover_priority = 0\n");
    std::fs::write(&cfg, cfg_text).unwrap();
    let mut daemons = [Daemon::start(&c, &cfg, 1), Daemon::start(&c, &cfg, 2)];
    wait_for("uploads applied", Duration::from_secs(30), || async {
        count(
            &p,
            "SELECT count(*) FROM pgmaint.upload_tasks WHERE state = 'completed'",
        )
        .await
            >= 2
    })
    .await;
    drop(p);
    kill_primary(&c);
    let r2 = c.replica(2).await;
    wait_for("r2 promoted", Duration::from_secs(20), || async {
        !in_recovery(&r2).await
    })
    .await;
    // The old primary is back at once.
    c.server("start", "primary");
    let old = c.primary().await;
    let before = pgmaint_tables(&old).await;
    wait_for("both daemons on r2", Duration::from_secs(30), || async {
        daemons.iter().all(|d| {
            let log = d.log();
            log.contains("promoted (this daemon") || log.contains("failover: followed")
        })
    })
    .await;
    let promoted_at: chrono::DateTime<chrono::Utc> =
        scalar(&r2, "SELECT max(promoted_at) FROM pgmaint.promotions", &[]).await;
    wait_for("uploads applied on r2", Duration::from_secs(30), || async {
        scalar::<i64>(
            &r2,
            "SELECT count(*) FROM pgmaint.upload_tasks WHERE state = 'completed' AND finished_at > $1",
            &[&promoted_at],
        )
        .await
            >= 2
    })
    .await;
    for d in &mut daemons {
        d.terminate().await;
    }
    let logs: Vec<String> = daemons.iter().map(|d| d.log()).collect();
    assert_eq!(
        pgmaint_tables(&old).await,
        before,
        "a pgmaint table changed on the old primary after it came back\n{logs:#?}"
    );
    let twice = "SELECT count(*) FROM (SELECT run_id, row_key FROM pgmaint.integrity_findings
                  GROUP BY 1, 2 HAVING count(*) > 1) dup";
    assert_eq!(count(&r2, twice).await, 0, "{logs:#?}");
    assert_eq!(
        count(&r2, "SELECT count(*) FROM pgmaint.promotions").await,
        1
    );
}

/// Review finding: an unfinished intent was finished by any command, even `status`,
/// and after another replica had been promoted by hand — two primaries on one
/// timeline. Now only `promote` and a daemon with automatic failover send pg_promote
/// again, and not once another server takes writes: the intent is given up.
#[tokio::test(flavor = "multi_thread")]
async fn an_unfinished_intent_is_given_up_once_another_replica_takes_writes() {
    let c = Cluster::up("truth-stale-intent", 2);
    let cfg = c.write_config("stale.toml", "[failover]\nprimary_down_after = \"2s\"\n");
    c.init_ready(&cfg).await;
    c.wait_caught_up(2).await;
    kill_primary(&c);
    let mut child = c
        .pgmaint(&cfg, &["promote", "--replica", "r2"])
        .env("PGMAINT_TEST_KILL_AT", "intent")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = exited_within(&mut child, Duration::from_secs(30))
        .await
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed at its intent");
    let r1 = c.replica(1).await;
    let r2 = c.replica(2).await;
    // Meanwhile the operator promotes r1 by hand.
    r1.batch_execute("SELECT pg_promote()").await.unwrap();
    wait_for("r1 out of recovery", Duration::from_secs(10), || async {
        !in_recovery(&r1).await
    })
    .await;
    // status sends nothing: r2 stays a standby.
    let _ = c.run(&cfg, &["status"]);
    assert!(in_recovery(&r2).await, "status promoted r2");
    // promote gives the intent up instead of making a second primary.
    let run = c.run(&cfg, &["promote"]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    let line = run.error_line().unwrap_or_default().to_string();
    assert!(
        line.contains("replica r1") && line.contains("is given up"),
        "{}",
        run.stderr
    );
    assert!(in_recovery(&r2).await, "promote promoted r2 beside r1");
    let journal = std::fs::read_to_string(c.results_dir().join("promotions.json")).unwrap();
    assert!(journal.contains("\"abandoned\""), "{journal}");
}

/// Review finding: a daemon whose primary was superseded (a replica promoted by hand
/// while the old primary runs on) wrote the end of its run, the slot's outcome and
/// the leader lease's release on the old primary as it wound down. With and without
/// automatic failover, the old primary now keeps them as they were.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_winding_down_from_a_superseded_primary_writes_nothing_there() {
    let c = Cluster::up("truth-wind-down", 2);
    let init = c.write_config("init.toml", "");
    c.init_ready(&init).await;
    c.wait_caught_up(2).await;
    let old = c.primary().await;
    let r2 = c.replica(2).await;
    let body = format!(
        "[limits]\nlease = \"30s\"\n[daemon]\nleader_lease = \"3s\"\n[uploader]\npoll_interval = \"1s\"\n{}",
        sleepy_task("hold", 25.0, "every = \"1s\"\nreplica = \"r1\"")
    );
    let cfg = c.write_config("manual.toml", &body);
    let mut d = Daemon::start(&c, &cfg, 1);
    wait_paused(&c, 1).await;
    // r2 promoted by hand; the old primary runs on.
    r2.batch_execute("SELECT pg_promote()").await.unwrap();
    let status = d.exited(Duration::from_secs(30)).await;
    assert!(
        status.is_some(),
        "the daemon stops: its primary moved\n{}",
        d.log()
    );
    let run: String = scalar(
        &old,
        "SELECT state FROM pgmaint.runs ORDER BY id DESC LIMIT 1",
        &[],
    )
    .await;
    assert_eq!(
        run,
        "running",
        "the run's end was written on the old primary\n{}",
        d.log()
    );
    let slots = "SELECT count(*) FROM pgmaint.task_slots WHERE result IS NOT NULL";
    assert_eq!(count(&old, slots).await, 0, "{}", d.log());
    assert_eq!(
        count(&old, "SELECT count(*) FROM pgmaint.leader").await,
        1,
        "the leader lease was released on the old primary\n{}",
        d.log()
    );
    assert_eq!(c.pause_state(1).await, "not paused");
}

/// A daemon started while the primary is dead, with a `primary.dsn` that lists every
/// server (two of them standbys that answer): it used to refuse to start (exit 3, "no
/// usable primary: … is in recovery"), so no failover came from it. It now starts
/// degraded and fails over (found by the soak).
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_started_with_the_primary_dead_and_every_server_listed_fails_over() {
    let c = Cluster::up("truth-listed-all", 2);
    let init = c.write_config("init.toml", "");
    c.init_ready(&init).await;
    c.wait_caught_up(2).await;
    let all = format!(
        "host=127.0.0.1,127.0.0.1,127.0.0.1 port={},{},{} user=postgres dbname=app",
        c.primary_port(),
        c.replica_port(1),
        c.replica_port(2)
    );
    let cfg = c.write_config("all.toml", &failover("2s", ""));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replacen(&c.primary_dsn(), &all, 1);
    std::fs::write(&cfg, text).unwrap();
    kill_primary(&c);
    let mut d = Daemon::start(&c, &cfg, 1);
    wait_for("a replica promoted", Duration::from_secs(30), || async {
        !in_recovery(&c.replica(1).await).await || !in_recovery(&c.replica(2).await).await
    })
    .await;
    let _ = d.stop("TERM", Duration::from_secs(10)).await;
}
