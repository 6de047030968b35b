//! `pgmaint daemon` against real clusters: the schedule, leadership, failures, signals,
//! reload, restart safety.

use std::path::Path;
use std::time::{Duration, Instant};

use pgmaint_e2e::*;

/// Slots of `task` that ended with `result`.
async fn slots(c: &Cluster, task: &str, result: &str) -> i64 {
    let sql = "SELECT count(*) FROM pgmaint.task_slots WHERE task_name = $1 AND result = $2";
    scalar(&c.primary().await, sql, &[&task, &result]).await
}

/// Wait until `task` has `n` slots that ended with `result`.
async fn wait_slots(c: &Cluster, task: &str, result: &str, n: i64, timeout: Duration) {
    wait_for(
        &format!("{n} {result} slots of {task}"),
        timeout,
        || async { slots(c, task, result).await >= n },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tasks_every_3s_run_three_times_each_within_12s_and_the_daemon_uploads_findings() {
    let (c, p) = blobs_cluster("daemon-every", 300).await;
    p.batch_execute("UPDATE public.blobs SET payload_md5 = 'x' WHERE id IN (5, 7)")
        .await
        .unwrap();
    let tasks = format!(
        "{}{}",
        row_checksum_task(
            "sweep-a",
            BLOBS,
            "id",
            "payload",
            "payload_md5",
            "every = \"3s\""
        ),
        row_checksum_task(
            "sweep-b",
            BLOBS,
            "id",
            "payload",
            "payload_md5",
            "every = \"3s\""
        )
    );
    let cfg = c.write_config(
        "daemon.toml",
        &format!("[daemon]\nleader_lease = \"3s\"\n{tasks}"),
    );
    c.init_ready(&cfg).await;
    let started = Instant::now();
    let mut d = Daemon::start(&c, &cfg, 1);
    for task in ["sweep-a", "sweep-b"] {
        let left = Duration::from_secs(12).saturating_sub(started.elapsed());
        wait_slots(&c, task, "succeeded", 3, left).await;
    }
    // The daemon's own worker applied the findings: both rows, still holding.
    wait_for("the findings uploaded", Duration::from_secs(10), || async {
        count(
            &p,
            "SELECT count(*) FROM pgmaint.upload_tasks WHERE state = 'completed'",
        )
        .await
            >= 6
    })
    .await;
    for task in ["sweep-a", "sweep-b"] {
        let keys: Vec<String> = p
            .query(
                "SELECT DISTINCT row_key FROM pgmaint.integrity_findings
                  WHERE task_name = $1 AND still_holds ORDER BY 1",
                &[&task],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(keys, ["5", "7"], "{task}");
    }
    let failed = count(
        &p,
        "SELECT count(*) FROM pgmaint.upload_tasks WHERE state = 'failed'",
    )
    .await;
    assert_eq!(failed, 0, "{}", d.log());
    // SIGTERM: exit 0, replica not paused, leader lease released.
    d.terminate().await;
    assert_eq!(c.pause_state(1).await, "not paused");
    assert_eq!(count(&p, "SELECT count(*) FROM pgmaint.leader").await, 0);
}

/// The holder (`host:pid`) of the scheduler's leader lease, if any.
async fn leader(c: &Cluster) -> Option<String> {
    c.primary()
        .await
        .query_opt(
            "SELECT holder FROM pgmaint.leader WHERE expires_at > now()",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_run_each_slot_once_and_the_survivor_takes_over_after_kill_9() {
    let c = Cluster::up("daemon-two", 1);
    let body = format!(
        "[limits]\nlease = \"3s\"\n[daemon]\nleader_lease = \"3s\"\n{}",
        sleepy_task("tick", 0.2, "every = \"2s\"")
    );
    let cfg = c.write_config("daemon.toml", &body);
    c.init_ready(&cfg).await;
    let started = Instant::now();
    let mut daemons = [Daemon::start(&c, &cfg, 1), Daemon::start(&c, &cfg, 2)];
    wait_for("a leader", Duration::from_secs(10), || async {
        leader(&c).await.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    // kill -9 of the leader: the other takes over once the lease ran out.
    let holder = leader(&c).await.unwrap();
    let i = daemons
        .iter()
        .position(|d| holder.contains(&format!(":{}:", d.pid())))
        .expect("the leader is one of ours");
    signal(daemons[i].pid(), "KILL");
    let killed = Instant::now();
    wait_for(
        "the other daemon to lead",
        Duration::from_secs(10),
        || async { leader(&c).await.is_some_and(|h| h != holder) },
    )
    .await;
    let takeover = killed.elapsed();
    // The lease (3s) from the dead leader's last renewal, plus the survivor's next try (1s).
    assert!(
        takeover < Duration::from_secs(5),
        "took over after {takeover:?}"
    );
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(started.elapsed())).await;
    let survivor = &mut daemons[1 - i];
    survivor.terminate().await;

    // No slot ran twice: one run per claimed slot, each run of one slot.
    let p = c.primary().await;
    let runs = count(
        &p,
        "SELECT count(*) FROM pgmaint.runs WHERE 'tick' = ANY (tasks)",
    )
    .await;
    let slots = count(
        &p,
        "SELECT count(*) FROM pgmaint.task_slots WHERE task_name = 'tick'",
    )
    .await;
    let distinct = count(
        &p,
        "SELECT count(DISTINCT run_id) FROM pgmaint.task_slots WHERE task_name = 'tick'",
    )
    .await;
    let recorded = count(
        &p,
        "SELECT count(run_id) FROM pgmaint.task_slots WHERE task_name = 'tick'",
    )
    .await;
    assert_eq!(distinct, recorded, "a run recorded for two slots");
    // The slot the killed leader was running (if any) has no run recorded.
    assert!(
        runs == slots || runs == slots + 1 || runs + 1 == slots,
        "runs {runs}, slots {slots}"
    );
    // As one daemon would: every 2s over 20s, less the takeover gap.
    assert!((6..=11).contains(&slots), "{slots} slots in 20s every 2s");
    assert_eq!(c.pause_state(1).await, "not paused");
}

/// Start a daemon, kill -9 it while `task` (a sleepy export) is paused mid-scan, keep
/// it down for `down`, restart it: the replica is resumed and the run dropped. The
/// first slot the restarted daemon runs.
async fn kill_during_scan_then_restart(
    c: &Cluster,
    cfg: &Path,
    task: &str,
    down: Duration,
    n: usize,
) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
    let p = c.primary().await;
    let mut d = Daemon::start(c, cfg, n);
    wait_paused(c, 1).await;
    let (first, run): (chrono::DateTime<chrono::Utc>, i64) = {
        let row = p
            .query_one(
                "SELECT s.slot, r.id FROM pgmaint.task_slots s, pgmaint.runs r
                  WHERE s.task_name = $1 AND $1 = ANY (r.tasks) AND r.state = 'running'",
                &[&task],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    d.stop("KILL", Duration::from_secs(5))
        .await
        .expect("killed");
    tokio::time::sleep(down).await;
    assert_eq!(
        c.pause_state(1).await,
        "paused",
        "left paused by the killed daemon"
    );
    let _d = Daemon::start(c, cfg, n + 1);
    assert!(
        wait_until_not_paused(c, 1, Duration::from_secs(15)).await,
        "resumed"
    );
    wait_for("the run dropped", Duration::from_secs(10), || async {
        run_state(c, run).await == "dropped"
    })
    .await;
    let sql = "SELECT slot FROM pgmaint.task_slots WHERE task_name = $1 AND slot > $2 AND result = 'succeeded'";
    wait_for("the next slot", Duration::from_secs(30), || async {
        !p.query(sql, &[&task, &first]).await.unwrap().is_empty()
    })
    .await;
    let next: chrono::DateTime<chrono::Utc> =
        p.query(sql, &[&task, &first]).await.unwrap()[0].get(0);
    (first, next)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_in_a_scan_leaves_nothing_paused_after_restart_and_catches_up_as_told() {
    let c = Cluster::up("daemon-kill", 1);
    // every 10s; down ~16s after the first slot: the slot at +10s was missed (by more
    // than the 5s a slot may be late and still count as on time), the one at +20s not yet.
    let body = |catch_up: &str, task: &str| {
        format!(
            "[limits]\nlease = \"3s\"\n[daemon]\nleader_lease = \"2s\"\ncatch_up = \"{catch_up}\"\n{}",
            sleepy_task(task, 1.5, "every = \"10s\"")
        )
    };
    let one = c.write_config("one.toml", &body("one", "nightly-one"));
    c.init_ready(&one).await;
    let (first, next) =
        kill_during_scan_then_restart(&c, &one, "nightly-one", Duration::from_secs(16), 1).await;
    // catch_up = "one": the missed slot runs once, as soon as the daemon is back.
    assert_eq!((next - first).num_seconds(), 10, "{first} -> {next}");
    let none = c.write_config("none.toml", &body("none", "nightly-none"));
    let (first, next) =
        kill_during_scan_then_restart(&c, &none, "nightly-none", Duration::from_secs(16), 3).await;
    // catch_up = "none": the missed slot is skipped; the next one runs on time.
    assert_eq!((next - first).num_seconds(), 20, "{first} -> {next}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_tasks_never_stop_a_healthy_one_or_their_own_schedule() {
    let c = Cluster::up("daemon-failures", 1);
    let every = "every = \"2s\"";
    // Fails in the scan, on the replica.
    let divides = format!(
        "[[tasks]]\nname = \"divides\"\nkind = \"export\"\n\
         query = \"SELECT 1 / (g - g) AS x FROM generate_series(1, 1) g\"\n{every}\n"
    );
    let addr = free_address();
    let body = format!(
        "[daemon]\nleader_lease = \"3s\"\nlisten = \"{addr}\"\n{}{}{divides}",
        sleepy_task("healthy", 0.1, every),
        // Refused before the pause (no such table): the shared cycle fails as a whole.
        row_checksum_task("no-table", "public.nope", "id", "p", "m", every),
    );
    let cfg = c.write_config("daemon.toml", &body);
    c.init_ready(&cfg).await;
    let mut d = Daemon::start(&c, &cfg, 1);
    wait_slots(&c, "healthy", "succeeded", 3, Duration::from_secs(30)).await;
    wait_slots(&c, "no-table", "failed", 3, Duration::from_secs(30)).await;
    wait_slots(&c, "divides", "failed", 3, Duration::from_secs(30)).await;
    assert_eq!(slots(&c, "healthy", "failed").await, 0, "{}", d.log());
    assert_eq!(slots(&c, "no-table", "succeeded").await, 0);
    // The failure counters rise in /metrics; the healthy task's stays at 0.
    let failures = |m: &prometheus_parse::Scrape, task: &str| {
        value(m, "pgmaint_task_consecutive_failures", Some(("task", task))).unwrap()
    };
    let (m, text) = scrape(addr).await;
    assert!(failures(&m, "no-table") >= 3.0, "{text}");
    assert!(failures(&m, "divides") >= 3.0, "{text}");
    assert_eq!(failures(&m, "healthy"), 0.0, "{text}");
    let before = failures(&m, "no-table");
    wait_for("the counter to rise", Duration::from_secs(20), || async {
        failures(&scrape(addr).await.0, "no-table") > before
    })
    .await;
    let p = c.primary().await;
    let error: String = scalar(
        &p,
        "SELECT error FROM pgmaint.task_slots WHERE task_name = 'divides' AND error IS NOT NULL LIMIT 1",
        &[],
    )
    .await;
    assert!(error.contains("division by zero"), "{error}");
    let error: String = scalar(
        &p,
        "SELECT error FROM pgmaint.task_slots WHERE task_name = 'no-table' AND error IS NOT NULL LIMIT 1",
        &[],
    )
    .await;
    assert!(error.contains("nope"), "{error}");
    d.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_scan_resumes_the_replica_and_exits_0_within_the_grace() {
    let c = Cluster::up("daemon-sigterm", 1);
    let body = format!(
        "[daemon]\nleader_lease = \"3s\"\n[uploader]\nshutdown_grace = \"5s\"\n{}",
        sleepy_task("long", 120.0, "every = \"1h\"")
    );
    let cfg = c.write_config("daemon.toml", &body);
    c.init_ready(&cfg).await;
    let mut d = Daemon::start(&c, &cfg, 1);
    wait_paused(&c, 1).await;
    let run = last_run_id(&c).await;
    let stopping = Instant::now();
    let status = d
        .stop("TERM", Duration::from_secs(20))
        .await
        .expect("exits within the grace");
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(c.pause_state(1).await, "not paused");
    assert_eq!(run_state(&c, run).await, "cancelled");
    assert_eq!(
        count(&c.primary().await, "SELECT count(*) FROM pgmaint.leader").await,
        0
    );
    assert_eq!(
        slots(&c, "long", "failed").await,
        1,
        "the slot's outcome is recorded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_keeps_the_old_config_when_the_new_one_is_broken_and_applies_a_good_one() {
    let c = Cluster::up("daemon-sighup", 1);
    let head = "[daemon]\nleader_lease = \"3s\"\n";
    let a = sleepy_task("a", 0.1, "every = \"2s\"");
    let cfg = c.write_config("daemon.toml", &format!("{head}{a}"));
    c.init_ready(&cfg).await;
    let mut d = Daemon::start(&c, &cfg, 1);
    wait_slots(&c, "a", "succeeded", 1, Duration::from_secs(15)).await;

    c.write_config(
        "daemon.toml",
        &format!("{head}{}", sleepy_task("a", 0.1, "at = \"61 * * * *\"")),
    );
    signal(d.pid(), "HUP");
    wait_for(
        "the reload error logged",
        Duration::from_secs(10),
        || async {
            d.log()
                .contains("config reload failed, keeping the old config")
        },
    )
    .await;
    let line = d
        .log()
        .lines()
        .find(|l| l.contains("config reload failed"))
        .unwrap()
        .to_string();
    assert!(line.contains("tasks[0].at:"), "{line}");
    // Still running on the old schedule.
    let done = slots(&c, "a", "succeeded").await;
    wait_slots(&c, "a", "succeeded", done + 1, Duration::from_secs(15)).await;

    let b = sleepy_task("b", 0.1, "every = \"2s\"");
    c.write_config("daemon.toml", &format!("{head}{a}{b}"));
    signal(d.pid(), "HUP");
    wait_slots(&c, "b", "succeeded", 1, Duration::from_secs(15)).await;
    d.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_schedules_and_a_busy_listen_address_are_one_line_errors_with_exit_2() {
    let c = Cluster::up("daemon-bad-input", 1);
    let cases = [
        (
            "at = \"0 25 * * *\"",
            "tasks[0].at: \"0 25 * * *\" is not a 5-field cron expression",
        ),
        (
            "every = \"1h\"\nat = \"0 * * * *\"",
            "tasks[0].at: give either every",
        ),
    ];
    for (schedule, error) in cases {
        let cfg = c.write_config("bad.toml", &sleepy_task("t", 0.1, schedule));
        let run = c.run(&cfg, &["daemon"]).expect_code(2);
        let line = run.error_line().unwrap_or_default().to_string();
        assert!(line.contains(error), "{}", run.stderr);
    }
    let cfg = c.write_config("tz.toml", "[daemon]\ntimezone = \"Mars/Olympus\"\n");
    let run = c.run(&cfg, &["daemon"]).expect_code(2);
    assert!(
        run.error_line()
            .unwrap()
            .contains("daemon.timezone: \"Mars/Olympus\" is not a known time zone"),
        "{}",
        run.stderr
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = c.write_config("listen.toml", &format!("[daemon]\nlisten = \"{addr}\"\n"));
    c.run(&cfg, &["init"]).expect_code(0);
    let run = c.run(&cfg, &["daemon"]).expect_code(2);
    let line = run.error_line().unwrap().to_string();
    assert!(
        line.contains("daemon.listen") && line.contains(&addr.to_string()),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.starts_with("pgmaint: error"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_the_pause_during_a_scan_and_health_turns_503_when_the_primary_stops() {
    let c = Cluster::up("daemon-metrics", 1);
    let addr = free_address();
    let body = format!(
        "[daemon]\nleader_lease = \"3s\"\nlisten = \"{addr}\"\n{}",
        sleepy_task("scan", 3.0, "every = \"1h\"")
    );
    let cfg = c.write_config("daemon.toml", &body);
    c.init_ready(&cfg).await;
    let mut d = Daemon::start(&c, &cfg, 1);
    wait_paused(&c, 1).await;
    let (m, text) = scrape(addr).await;
    let r1 = Some(("replica", "r1"));
    assert_eq!(value(&m, "pgmaint_replica_paused", r1), Some(1.0), "{text}");
    assert!(
        value(&m, "pgmaint_replica_pause_seconds", r1).unwrap() > 0.0,
        "{text}"
    );
    assert_eq!(
        value(&m, "pgmaint_scheduler_leader", None),
        Some(1.0),
        "{text}"
    );
    wait_slots(&c, "scan", "succeeded", 1, Duration::from_secs(30)).await;
    let (m, text) = scrape(addr).await;
    assert_eq!(value(&m, "pgmaint_replica_paused", r1), Some(0.0), "{text}");
    assert_eq!(
        value(&m, "pgmaint_replica_pause_seconds", r1),
        Some(0.0),
        "{text}"
    );
    let scan = Some(("task", "scan"));
    assert!(value(&m, "pgmaint_task_last_success_timestamp_seconds", scan).unwrap() > 1.7e9);
    assert!(
        value(&m, "pgmaint_task_last_duration_seconds", scan).unwrap() >= 3.0,
        "{text}"
    );
    assert_eq!(
        value(&m, "pgmaint_task_consecutive_failures", scan),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "pgmaint_runs_total", Some(("state", "succeeded"))),
        Some(1.0)
    );
    assert_eq!(http_get(addr, "/health").await.0, "HTTP/1.1 200 OK");

    c.server("stop", "primary");
    // A health check's answer is reused for up to a second (hostile-client hardening).
    wait_for("health 503", Duration::from_secs(5), || async {
        http_get(addr, "/health").await.0 == "HTTP/1.1 503 Service Unavailable"
    })
    .await;
    let (status, body) = http_get(addr, "/health").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert_eq!(body.trim().lines().count(), 1, "{body}");
    c.server("start", "primary");
    wait_for("health back to 200", Duration::from_secs(20), || async {
        http_get(addr, "/health").await.0 == "HTTP/1.1 200 OK"
    })
    .await;
    d.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_dumps_keep_the_newest_and_each_kept_one_restores() {
    let (c, p) = blobs_cluster("daemon-dumps", 500).await;
    let out = c.dir.join("dumps");
    let body = format!(
        "[daemon]\nleader_lease = \"3s\"\n[[dumps]]\nname = \"often\"\nout = \"{}\"\nevery = \"2s\"\nkeep = 2\njobs = 2\n",
        out.display()
    );
    let cfg = c.write_config("daemon.toml", &body);
    c.init_ready(&cfg).await;
    let mut d = Daemon::start(&c, &cfg, 1);
    wait_slots(&c, "often", "succeeded", 4, Duration::from_secs(60)).await;
    d.terminate().await;
    let mut dirs: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 2, "{dirs:?}\n{}", d.log());
    // The two newest of the succeeded runs.
    let newest: Vec<i64> = p
        .query(
            "SELECT id FROM pgmaint.runs WHERE purpose = 'dump' AND state = 'succeeded' ORDER BY id DESC LIMIT 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (i, dir) in dirs.iter().enumerate() {
        assert!(
            newest.iter().any(|id| dir.ends_with(&format!("-run{id}"))),
            "{dir} vs {newest:?}"
        );
        let rows = restored_rows(&c, &p, "blobs", &out.join(dir), &format!("restored{i}")).await;
        assert_eq!(rows, 500);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn daemons_with_separate_results_dirs_each_apply_the_uploads_whose_files_they_hold() {
    let (c, p) = blobs_cluster("daemon-hosts", 200).await;
    p.batch_execute("UPDATE public.blobs SET payload_md5 = 'x' WHERE id = 9")
        .await
        .unwrap();
    let task = blobs_task("every = \"2s\"");
    let config = |host: &str| {
        let dir = c.dir.join(format!("results-{host}"));
        std::fs::create_dir_all(&dir).unwrap();
        let text = c.write_config(
            &format!("{host}.toml"),
            &format!("[daemon]\nleader_lease = \"2s\"\n{task}"),
        );
        // Its own results.dir and host name.
        let body = std::fs::read_to_string(&text).unwrap().replace(
            &format!("dir = \"{}\"\n", c.results_dir().display()),
            &format!("dir = \"{}\"\nhost = \"{host}\"\n", dir.display()),
        );
        std::fs::write(&text, body).unwrap();
        text
    };
    let (a, b) = (config("host-a"), config("host-b"));
    c.init_ready(&a).await;
    let mut first = Daemon::start(&c, &a, 1);
    wait_for("host-a's uploads applied", Duration::from_secs(30), || async {
        count(&p, "SELECT count(*) FROM pgmaint.upload_tasks WHERE host = 'host-a' AND state = 'completed'").await >= 2
    })
    .await;
    let mut second = Daemon::start(&c, &b, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The leader goes: host-b's daemon schedules from now on, into its own results.dir.
    first.terminate().await;
    wait_for("host-b's uploads applied", Duration::from_secs(30), || async {
        count(&p, "SELECT count(*) FROM pgmaint.upload_tasks WHERE host = 'host-b' AND state = 'completed'").await >= 2
    })
    .await;
    second.terminate().await;
    // Every upload applied by the daemon of its host; none failed for a missing file
    // (one host-a queued as its daemon stopped may still wait for it).
    let rows = p
        .query(
            "SELECT host, worker, state, last_error FROM pgmaint.upload_tasks",
            &[],
        )
        .await
        .unwrap();
    for r in &rows {
        let (host, state): (String, String) = (r.get(0), r.get(2));
        let error: Option<String> = r.get(3);
        assert!(
            state == "completed" || (state == "waiting" && host == "host-a"),
            "{host} {state}: {error:?}"
        );
        if state == "completed" {
            let worker: String = r.get(1);
            let pid = if host == "host-a" {
                first.pid()
            } else {
                second.pid()
            };
            assert!(
                worker.contains(&format!(":{pid}/")),
                "{host}'s task applied by {worker}"
            );
        }
    }
}

/// The pause windows (paused_at, resumed_at) of the runs of `task`.
async fn pause_windows(
    p: &tokio_postgres::Client,
    task: &str,
) -> Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    p.query(
        "SELECT paused_at, resumed_at FROM pgmaint.runs
          WHERE $1 = ANY (tasks) AND paused_at IS NOT NULL AND resumed_at IS NOT NULL",
        &[&task],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cycles_run_on_several_replicas_at_once_within_keep_unpaused() {
    let c = Cluster::up("daemon-spread", 2);
    let tasks = format!(
        "{}{}",
        sleepy_task("on-r1", 3.0, "every = \"1h\"\nreplica = \"r1\""),
        sleepy_task("on-r2", 3.0, "every = \"1h\"\nreplica = \"r2\"")
    );
    // Neither replica is a failover candidate: both may be paused at once.
    let never = |cfg: &Path| {
        let text = std::fs::read_to_string(cfg)
            .unwrap()
            .replace("name = \"r1\"\n", "name = \"r1\"\nfailover_priority = 0\n")
            .replace("name = \"r2\"\n", "name = \"r2\"\nfailover_priority = 0\n");
        std::fs::write(cfg, text).unwrap();
    };
    let cfg = c.write_config(
        "spread.toml",
        &format!("[daemon]\nleader_lease = \"3s\"\n{tasks}"),
    );
    never(&cfg);
    c.init_ready(&cfg).await;
    c.wait_caught_up(2).await;
    let mut d = Daemon::start(&c, &cfg, 1);
    for t in ["on-r1", "on-r2"] {
        wait_slots(&c, t, "succeeded", 1, Duration::from_secs(30)).await;
    }
    d.terminate().await;
    let p = c.primary().await;
    let (a, b) = (
        pause_windows(&p, "on-r1").await[0],
        pause_windows(&p, "on-r2").await[0],
    );
    assert!(
        a.0 < b.1 && b.0 < a.1,
        "the two pauses overlap: {a:?} {b:?}"
    );

    // Both failover candidates (keep_unpaused = 1 by default): never both paused.
    let cfg = c.write_config(
        "keep.toml",
        &format!(
            "[daemon]\nleader_lease = \"3s\"\n{}",
            tasks.replace("every = \"1h\"", "every = \"2s\"")
        ),
    );
    let mut d = Daemon::start(&c, &cfg, 2);
    wait_for("runs on both replicas, one at a time", Duration::from_secs(40), || async {
        let sql = "SELECT count(DISTINCT replica) FROM pgmaint.runs WHERE state = 'succeeded' AND started_at > now() - interval '1 hour' AND id > 2";
        count(&p, sql).await == 2
    })
    .await;
    d.terminate().await;
    let mut windows = pause_windows(&p, "on-r1").await;
    let r2 = pause_windows(&p, "on-r2").await;
    windows.retain(|w| w.0 > a.1.max(b.1));
    for w in &windows {
        for v in r2.iter().filter(|v| v.0 > a.1.max(b.1)) {
            assert!(
                w.1 <= v.0 || v.1 <= w.0,
                "r1 {w:?} and r2 {v:?} paused at once"
            );
        }
    }
}

/// Review finding: a task pinned to a replica busy with a long cycle held up every
/// other due task, and a slot that waited more than 5 s for a replica was lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_waiting_for_its_busy_replica_holds_up_nothing_and_keeps_its_slot() {
    let c = Cluster::up("daemon-waiting", 2);
    let head = "[daemon]\nleader_lease = \"3s\"\n";
    let long = sleepy_task("long", 25.0, "every = \"1h\"\nreplica = \"r1\"");
    let never_promoted = |cfg: &Path| {
        let text = std::fs::read_to_string(cfg)
            .unwrap()
            .replace("name = \"r1\"\n", "name = \"r1\"\nfailover_priority = 0\n")
            .replace("name = \"r2\"\n", "name = \"r2\"\nfailover_priority = 0\n");
        std::fs::write(cfg, text).unwrap();
    };
    let cfg = c.write_config("daemon.toml", &format!("{head}{long}"));
    never_promoted(&cfg);
    c.init_ready(&cfg).await;
    c.wait_caught_up(2).await;
    let mut d = Daemon::start(&c, &cfg, 1);
    wait_paused(&c, 1).await;
    // While r1 is busy: a task pinned to it (first in config), and an unpinned one.
    let more = format!(
        "{}{}",
        sleepy_task("pinned", 0.1, "every = \"2s\"\nreplica = \"r1\""),
        sleepy_task("free", 0.1, "every = \"2s\"")
    );
    c.write_config("daemon.toml", &format!("{head}{more}{long}"));
    never_promoted(&cfg);
    signal(d.pid(), "HUP");
    wait_slots(&c, "free", "succeeded", 2, Duration::from_secs(15)).await;
    assert_eq!(
        c.pause_state(1).await,
        "paused",
        "the long scan still holds r1"
    );
    // The pinned task's slot is claimed, and waits for r1.
    let p = c.primary().await;
    let waiting = count(&p, "SELECT count(*) FROM pgmaint.task_slots WHERE task_name = 'pinned' AND finished_at IS NULL").await;
    assert_eq!(waiting, 1, "{}", d.log());
    wait_slots(&c, "pinned", "succeeded", 1, Duration::from_secs(40)).await;
    d.terminate().await;
}
