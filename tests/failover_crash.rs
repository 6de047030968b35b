//! Crash points of a promotion (issue 18): the promoting pgmaint — the daemon, and
//! `pgmaint promote` — is killed with SIGKILL at each step of the state machine
//! (`PGMAINT_TEST_KILL_AT`), the old primary is started again at once, then a daemon
//! is started. Each case runs on a real primary and two real replicas; the primary
//! dies by `pg_ctl stop -m immediate`.
//!
//! After a kill once `pg_promote` may have been sent (`pg_promote`, `promoted`,
//! `recorded`, `followers`), within `primary_down_after` + 15 s:
//! - exactly one replica is out of recovery and exactly one promotion is recorded;
//! - the other replica streams from the new primary, on its timeline;
//! - the old primary is fenced: no pgmaint table on it changes after it came back;
//! - the upload queued before the failover is applied exactly once, on the new primary.
//!
//! After a kill before `pg_promote` (`intent`, `repointed`), with the old primary back:
//! nothing was promoted, so the intent is given up (the primary is not down any more),
//! the other replica follows the old primary again, and the upload is applied exactly
//! once, there.
//!
//! A kill before the intent changes nothing on any server (the intent is the first
//! change), so it is not a crash point of its own.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgmaint_e2e::*;
use tokio_postgres::Client;

const PRIMARY_DOWN_AFTER: Duration = Duration::from_secs(2);

/// Who is killed.
#[derive(Clone, Copy, Debug)]
enum Promoter {
    Daemon,
    Promote,
}

fn failover_section() -> String {
    format!(
        "[limits]\nlease = \"3s\"\n[daemon]\nleader_lease = \"3s\"\n[failover]\nautomatic = true\n\
         primary_down_after = \"{}s\"\ncheck_interval = \"1s\"\n",
        PRIMARY_DOWN_AFTER.as_secs()
    )
}

async fn in_recovery(client: &Client) -> bool {
    scalar(client, "SELECT pg_is_in_recovery()", &[]).await
}

/// Replica `i` streams from the server on `port`, on timeline `tli` or later.
async fn streams_from(c: &Cluster, i: usize, port: u16, tli: i32) -> bool {
    let Ok(r) = tokio_postgres::connect(&c.replica_dsn(i), tokio_postgres::NoTls).await else {
        return false;
    };
    tokio::spawn(r.1);
    let row =
        r.0.query_opt(
            "SELECT status, sender_port, received_tli FROM pg_stat_wal_receiver",
            &[],
        )
        .await
        .ok()
        .flatten();
    row.is_some_and(|r| {
        r.get::<_, String>(0) == "streaming"
            && r.get::<_, Option<i32>>(1) == Some(port as i32)
            && r.get::<_, Option<i32>>(2).is_some_and(|t| t >= tli)
    })
}

/// A cluster with an upload queued on the primary (a row_checksum run with 2
/// findings, not yet applied) that both replicas have received. The run's id.
async fn queued_upload(c: &Cluster) -> (PathBuf, i64) {
    let p = c.primary().await;
    seed_blobs(&p, BLOBS, "bigint", "g", 500).await;
    p.batch_execute("UPDATE public.blobs SET payload_md5 = 'x' WHERE id IN (5, 7)")
        .await
        .unwrap();
    let body = format!("{}{}", failover_section(), blobs_task(""));
    let cfg = c.write_config("crash.toml", &body);
    c.init_ready(&cfg).await;
    c.wait_caught_up(1).await;
    let summary = run_ok(c, &cfg, &["--task", "blobs"]);
    let run_id = summary["run_id"].as_i64().unwrap();
    assert_eq!(uploads_of_run(c, run_id).await, 1);
    c.wait_caught_up(1).await;
    c.wait_caught_up(2).await;
    (cfg, run_id)
}

/// The same config, with the daemon's upload worker off: the killed promoter applies
/// nothing, so the upload waits for the daemon started after it.
fn without_uploader(c: &Cluster, cfg: &std::path::Path) -> PathBuf {
    let text = std::fs::read_to_string(cfg)
        .unwrap()
        .replace("[daemon]\n", "[daemon]\nuploader = false\n");
    let path = c.dir.join("killed.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Kill the primary, let the promoter run until it kills itself at `step`; then start
/// the old primary again at once. The time of the primary's death.
async fn crash_at(c: &Cluster, cfg: &std::path::Path, who: Promoter, step: &str) -> Instant {
    let killed_cfg = without_uploader(c, cfg);
    let env = [("PGMAINT_TEST_KILL_AT", step)];
    let mut daemon = match who {
        Promoter::Daemon => Some(Daemon::start_with_env(c, &killed_cfg, 0, &env)),
        Promoter::Promote => None,
    };
    if daemon.is_some() {
        let p = c.primary().await;
        wait_for("the daemon to lead", Duration::from_secs(15), || async {
            count(&p, "SELECT count(*) FROM pgmaint.leader").await == 1
        })
        .await;
    }
    c.cluster_sh(&["stop", "primary", "--mode", "immediate"]);
    let died = Instant::now();
    let status = match (who, daemon.as_mut()) {
        (Promoter::Daemon, Some(d)) => d.exited(Duration::from_secs(30)).await,
        _ => {
            let mut child = c
                .pgmaint(&killed_cfg, &["promote"])
                .envs(env)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            exited_within(&mut child, Duration::from_secs(30)).await
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let status = status.unwrap_or_else(|| panic!("the {who:?} did not reach step {step}"));
    assert_eq!(
        status.signal(),
        Some(9),
        "the {who:?} was to kill itself at {step}: {status:?}\n{}",
        daemon.as_ref().map(|d| d.log()).unwrap_or_default()
    );
    c.server("start", "primary");
    died
}

/// The outcome every kill at or past the intent must come to.
async fn one_promotion_and_the_old_primary_fenced(who: Promoter, step: &str) {
    let c = Cluster::up(&format!("crash-{who:?}-{step}").to_lowercase(), 2);
    let (cfg, run_id) = queued_upload(&c).await;
    let died = crash_at(&c, &cfg, who, step).await;
    let old = c.primary().await;
    let old_tables = pgmaint_tables(&old).await;
    let mut d = Daemon::start(&c, &cfg, 1);

    // Exactly one replica promoted, exactly one promotion recorded.
    let deadline = PRIMARY_DOWN_AFTER + Duration::from_secs(15);
    let mut new = None;
    wait_for("one replica promoted and recorded", deadline, || async {
        for i in [1, 2] {
            let r = c.replica(i).await;
            if !in_recovery(&r).await
                && count(&r, "SELECT count(*) FROM pgmaint.promotions").await >= 1
            {
                return true;
            }
        }
        false
    })
    .await;
    for i in [1, 2] {
        if !in_recovery(&c.replica(i).await).await {
            assert!(
                new.is_none(),
                "both replicas are out of recovery\n{}",
                d.log()
            );
            new = Some(i);
        }
    }
    let new = new.unwrap();
    let other = 3 - new;
    let n = c.replica(new).await;
    assert_eq!(
        count(&n, "SELECT count(*) FROM pgmaint.promotions").await,
        1,
        "{}",
        d.log()
    );
    let tli: i32 = scalar(&n, "SELECT new_timeline FROM pgmaint.promotions", &[]).await;
    // The other replica follows it, on its timeline.
    wait_for(
        "the other replica to follow the new primary",
        deadline.saturating_sub(died.elapsed()) + Duration::from_secs(1),
        || async { streams_from(&c, other, c.replica_port(new), tli).await },
    )
    .await;
    // The upload is applied exactly once, on the new primary.
    let applied =
        "SELECT count(*) FROM pgmaint.upload_tasks WHERE run_id = $1 AND state = 'completed'";
    wait_for(
        "the upload applied on the new primary",
        deadline,
        || async { scalar::<i64>(&n, applied, &[&run_id]).await == 1 },
    )
    .await;
    let findings = "SELECT count(*) FROM pgmaint.integrity_findings WHERE run_id = $1";
    assert_eq!(
        scalar::<i64>(&n, findings, &[&run_id]).await,
        2,
        "{}",
        d.log()
    );
    // The daemon goes on with the new primary and leaves the old one alone.
    wait_for(
        "the daemon leading on the new primary",
        deadline,
        || async { count(&n, "SELECT count(*) FROM pgmaint.leader").await == 1 },
    )
    .await;
    d.terminate().await;
    assert_eq!(
        pgmaint_tables(&old).await,
        old_tables,
        "a pgmaint table changed on the old primary after it came back\n{}",
        d.log()
    );
    let log = d.log();
    assert!(
        log.contains("promoted (this daemon, resumed after a restart")
            || log.contains("finished the unfinished promotion"),
        "the daemon says it finished its own promotion:\n{log}"
    );
}

/// The outcome of a kill before `pg_promote` was sent, the old primary back at once.
async fn no_promotion_and_the_old_primary_goes_on(who: Promoter, step: &str) {
    let c = Cluster::up(&format!("crash-{who:?}-{step}").to_lowercase(), 2);
    let (cfg, run_id) = queued_upload(&c).await;
    crash_at(&c, &cfg, who, step).await;
    let mut d = Daemon::start(&c, &cfg, 1);
    let p = c.primary().await;
    let applied =
        "SELECT count(*) FROM pgmaint.upload_tasks WHERE run_id = $1 AND state = 'completed'";
    let deadline = PRIMARY_DOWN_AFTER + Duration::from_secs(15);
    wait_for(
        "the upload applied on the old primary",
        deadline,
        || async { scalar::<i64>(&p, applied, &[&run_id]).await == 1 },
    )
    .await;
    let findings = "SELECT count(*) FROM pgmaint.integrity_findings WHERE run_id = $1";
    assert_eq!(
        scalar::<i64>(&p, findings, &[&run_id]).await,
        2,
        "{}",
        d.log()
    );
    for i in [1, 2] {
        assert!(in_recovery(&c.replica(i).await).await, "{}", d.log());
    }
    wait_for(
        "both replicas following the old primary",
        deadline,
        || async {
            streams_from(&c, 1, c.primary_port(), 1).await
                && streams_from(&c, 2, c.primary_port(), 1).await
        },
    )
    .await;
    assert_eq!(
        count(&p, "SELECT count(*) FROM pgmaint.promotions").await,
        0
    );
    let journal = std::fs::read_to_string(c.results_dir().join("promotions.json")).unwrap();
    assert!(journal.contains("\"abandoned\""), "{journal}");
    assert!(d.log().contains("is given up"), "{}", d.log());
    d.terminate().await;
    for i in [1, 2] {
        assert_eq!(c.pause_state(i).await, "not paused");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_after_writing_its_intent_promotes_nothing_once_the_primary_is_back() {
    no_promotion_and_the_old_primary_goes_on(Promoter::Daemon, "intent").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_right_after_pg_promote_is_finished_by_the_next_one() {
    one_promotion_and_the_old_primary_fenced(Promoter::Daemon, "pg_promote").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_after_recording_the_promotion_locally_is_finished_by_the_next_one() {
    one_promotion_and_the_old_primary_fenced(Promoter::Daemon, "promoted").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_after_recording_on_the_new_primary_is_finished_by_the_next_one() {
    one_promotion_and_the_old_primary_fenced(Promoter::Daemon, "recorded").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_after_its_followers_follow_is_finished_by_the_next_one() {
    one_promotion_and_the_old_primary_fenced(Promoter::Daemon, "followers").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgmaint_promote_killed_after_writing_its_intent_promotes_nothing_once_the_primary_is_back()
{
    no_promotion_and_the_old_primary_goes_on(Promoter::Promote, "intent").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgmaint_promote_killed_right_after_pg_promote_is_finished_by_a_daemon() {
    one_promotion_and_the_old_primary_fenced(Promoter::Promote, "pg_promote").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgmaint_promote_killed_after_recording_the_promotion_locally_is_finished_by_a_daemon() {
    one_promotion_and_the_old_primary_fenced(Promoter::Promote, "promoted").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgmaint_promote_killed_after_recording_on_the_new_primary_is_finished_by_a_daemon() {
    one_promotion_and_the_old_primary_fenced(Promoter::Promote, "recorded").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgmaint_promote_killed_after_its_followers_follow_is_finished_by_a_daemon() {
    one_promotion_and_the_old_primary_fenced(Promoter::Promote, "followers").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_after_re_pointing_the_others_promotes_nothing_once_the_primary_is_back() {
    no_promotion_and_the_old_primary_goes_on(Promoter::Daemon, "repointed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgmaint_promote_killed_after_re_pointing_the_others_promotes_nothing_once_the_primary_is_back(
) {
    no_promotion_and_the_old_primary_goes_on(Promoter::Promote, "repointed").await;
}
