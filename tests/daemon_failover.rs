//! Automatic failover in `pgmaint daemon` (`failover.automatic = true`), with a real
//! primary killed by `pg_ctl stop -m immediate` and two real replicas.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgmaint_e2e::*;
use tokio_postgres::Client;

/// The primary dies: `pg_ctl stop -m immediate`, no shutdown checkpoint, nothing more sent.
fn kill_primary(c: &Cluster) {
    c.cluster_sh(&["stop", "primary", "--mode", "immediate"]);
}

/// `[limits]`, `[daemon]` and `[failover]` for a quick failover.
fn quick_failover(listen: std::net::SocketAddr) -> String {
    format!(
        "[limits]\nlease = \"3s\"\n[daemon]\nleader_lease = \"3s\"\nlisten = \"{listen}\"\n\
         [failover]\nautomatic = true\nprimary_down_after = \"4s\"\ncheck_interval = \"1s\"\n"
    )
}

async fn in_recovery(c: &Cluster, i: usize) -> bool {
    scalar(&c.replica(i).await, "SELECT pg_is_in_recovery()", &[]).await
}

/// Replica `i` streams from the server on `port`.
async fn streams_from(c: &Cluster, i: usize, port: u16) -> bool {
    let r = c.replica(i).await;
    let row = r
        .query_opt("SELECT status, sender_port FROM pg_stat_wal_receiver", &[])
        .await
        .unwrap();
    row.is_some_and(|r| {
        r.get::<_, String>(0) == "streaming" && r.get::<_, Option<i32>>(1) == Some(port as i32)
    })
}

/// Count rows on a server.
async fn rows(client: &Client, sql: &str) -> i64 {
    count(client, sql).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_promotes_r2_when_the_primary_dies_mid_scan_and_goes_on_against_it() {
    let c = Cluster::up("auto-failover", 2);
    let p = c.primary().await;
    seed_blobs(&p, BLOBS, "bigint", "g", 2_000).await;
    p.batch_execute("UPDATE public.blobs SET payload_md5 = 'x' WHERE id IN (5, 7)")
        .await
        .unwrap();
    let addr = free_address();
    // r1 scans (never promoted), r2 is the failover candidate.
    let fenced = c.dir.join("fenced");
    let fence = format!(
        "fence_command = 'echo \"$PGMAINT_OLD_PRIMARY_PORT $PGMAINT_NEW_PRIMARY $PGMAINT_NEW_PRIMARY_PORT\" > {}'\n",
        fenced.display()
    );
    let body = format!(
        "{}{fence}{}{}",
        quick_failover(addr),
        blobs_task("every = \"3s\"\nreplica = \"r1\""),
        sleepy_task("hold", 2.0, "every = \"3s\"\nreplica = \"r1\"")
    );
    let cfg: PathBuf = c.write_config("auto.toml", &body);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("name = \"r1\"\n", "name = \"r1\"\nfailover_priority = 0\n");
    std::fs::write(&cfg, text).unwrap();
    c.init_ready(&cfg).await;
    c.wait_caught_up(2).await;
    let mut d = Daemon::start(&c, &cfg, 1);
    wait_for("a first scheduled run", Duration::from_secs(30), || async {
        rows(&p, "SELECT count(*) FROM pgmaint.task_slots WHERE task_name = 'blobs' AND result = 'succeeded'").await >= 1
    })
    .await;
    wait_paused(&c, 1).await;
    drop(p);
    kill_primary(&c);
    let killed = Instant::now();

    // r2 promoted within primary_down_after + 10 s.
    wait_for("r2 promoted", Duration::from_secs(14), || async {
        !in_recovery(&c, 2).await
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(14), "{took:?}");
    assert!(in_recovery(&c, 1).await, "only r2 is promoted");
    // failover.fence_command ran first, told of the old primary and the candidate.
    let told = std::fs::read_to_string(&fenced).unwrap();
    assert_eq!(
        told.trim(),
        format!("{} r2 {}", c.primary_port(), c.replica_port(2))
    );
    // r1 follows r2.
    let r2_port = c.replica_port(2);
    wait_for("r1 following r2", Duration::from_secs(30), || async {
        streams_from(&c, 1, r2_port).await
    })
    .await;
    // The next scheduled run succeeds against r2, and its uploads are applied there.
    let r2 = c.replica(2).await;
    wait_for(
        "the promotion recorded on r2",
        Duration::from_secs(10),
        || async { rows(&r2, "SELECT count(*) FROM pgmaint.promotions").await == 1 },
    )
    .await;
    let promoted_at: chrono::DateTime<chrono::Utc> =
        scalar(&r2, "SELECT max(promoted_at) FROM pgmaint.promotions", &[]).await;
    let sql = "SELECT count(*) FROM pgmaint.task_slots WHERE task_name = 'blobs' AND result = 'succeeded' AND claimed_at > $1";
    wait_for(
        "a scheduled run after the failover",
        Duration::from_secs(40),
        || async { scalar::<i64>(&r2, sql, &[&promoted_at]).await >= 1 },
    )
    .await;
    let sql =
        "SELECT count(*) FROM pgmaint.upload_tasks WHERE state = 'completed' AND created_at > $1";
    wait_for(
        "its upload applied on r2",
        Duration::from_secs(30),
        || async { scalar::<i64>(&r2, sql, &[&promoted_at]).await >= 1 },
    )
    .await;
    let findings = "SELECT count(DISTINCT row_key) FROM pgmaint.integrity_findings f JOIN pgmaint.runs r ON r.id = f.run_id
                     WHERE r.started_at > $1 AND f.still_holds";
    assert_eq!(scalar::<i64>(&r2, findings, &[&promoted_at]).await, 2);
    let failed = "SELECT count(*) FROM pgmaint.upload_tasks WHERE state = 'failed'";
    assert_eq!(rows(&r2, failed).await, 0, "{}", d.log());

    let (m, text) = scrape(addr).await;
    assert_eq!(
        value(&m, "pgmaint_failovers_total", Some(("result", "promoted"))),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&m, "pgmaint_primary_up", None), Some(1.0), "{text}");
    assert!(
        value(&m, "pgmaint_failover_seconds", None).unwrap() < 14.0,
        "{text}"
    );
    let log = d.log();
    assert!(log.contains("failover: replica r2 promoted"), "{log}");
    // `pgmaint status` against the new primary shows the failover.
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        &format!("port={} ", c.primary_port()),
        &format!("port={r2_port} "),
        1,
    );
    let on_r2 = c.dir.join("on-r2.toml");
    std::fs::write(&on_r2, text).unwrap();
    let status = c.run(&on_r2, &["status", "--json"]).expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(doc["last_failover"]["replica"], "r2", "{doc:#}");
    assert_eq!(doc["last_failover"]["new_timeline"], 2);
    // The old primary comes back (unrewound, on timeline 1): fenced, never used again.
    c.server("start", "primary");
    let old = c.primary().await;
    let slots_on_old = "SELECT count(*) FROM pgmaint.task_slots";
    let before = rows(&old, slots_on_old).await;
    let done = rows(
        &r2,
        "SELECT count(*) FROM pgmaint.task_slots WHERE result = 'succeeded'",
    )
    .await;
    wait_for(
        "two more runs against r2",
        Duration::from_secs(30),
        || async {
            rows(
                &r2,
                "SELECT count(*) FROM pgmaint.task_slots WHERE result = 'succeeded'",
            )
            .await
                >= done + 2
        },
    )
    .await;
    assert_eq!(
        rows(&old, slots_on_old).await,
        before,
        "nothing scheduled on the old primary"
    );
    // A daemon started with the old config (primary.dsn names the old primary) finds
    // r2 promoted by its timeline and goes on with it, never with the old primary.
    let second = c.dir.join("second.toml");
    std::fs::write(
        &second,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("listen = ", "# listen = "),
    )
    .unwrap();
    let mut again = Daemon::start(&c, &second, 2);
    wait_for(
        "the second daemon on r2",
        Duration::from_secs(20),
        || async {
            again
                .log()
                .contains(&format!("primary=127.0.0.1:{r2_port}"))
        },
    )
    .await;
    again.terminate().await;
    let log = again.log();
    assert!(log.contains("is a former primary"), "{log}");
    assert_eq!(
        rows(&old, slots_on_old).await,
        before,
        "nothing scheduled on the old primary"
    );
    d.terminate().await;
    assert_eq!(c.pause_state(1).await, "not paused");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_promote_exactly_one_replica_and_the_other_follows() {
    let c = Cluster::up("auto-failover-two", 2);
    let body = quick_failover(free_address()).replace("listen = ", "# listen = ");
    let cfg = c.write_config("auto.toml", &body);
    c.init_ready(&cfg).await;
    c.wait_caught_up(2).await;
    let mut daemons = [Daemon::start(&c, &cfg, 1), Daemon::start(&c, &cfg, 2)];
    wait_for("a leader", Duration::from_secs(10), || async {
        rows(&c.primary().await, "SELECT count(*) FROM pgmaint.leader").await == 1
    })
    .await;
    kill_primary(&c);
    wait_for("a replica promoted", Duration::from_secs(20), || async {
        !in_recovery(&c, 1).await || !in_recovery(&c, 2).await
    })
    .await;
    wait_for("both daemons switched", Duration::from_secs(40), || async {
        daemons.iter().all(|d| {
            let log = d.log();
            log.contains("failover: followed") || log.contains("promoted (this daemon)")
        })
    })
    .await;
    let promoted: Vec<bool> = vec![!in_recovery(&c, 1).await, !in_recovery(&c, 2).await];
    assert_eq!(promoted.iter().filter(|p| **p).count(), 1, "{promoted:?}");
    let logs: Vec<String> = daemons.iter().map(|d| d.log()).collect();
    let promoters = logs
        .iter()
        .filter(|l| l.contains("promoted (this daemon)"))
        .count();
    let followers = logs
        .iter()
        .filter(|l| l.contains("failover: followed"))
        .count();
    assert_eq!((promoters, followers), (1, 1), "{logs:#?}");
    for d in &mut daemons {
        d.terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_only_pgmaint_cannot_reach_is_not_failed_over() {
    let c = Cluster::up("auto-failover-blip", 2);
    let init = c.write_config("init.toml", "");
    c.init_ready(&init).await;
    c.wait_caught_up(2).await;
    let addr = free_address();
    let closed = free_address().port();
    let cfg = c.write_config("wrong-port.toml", &quick_failover(addr));
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        &format!("port={}", c.primary_port()),
        &format!("port={closed}"),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let mut d = Daemon::start(&c, &cfg, 1);
    let line = no_failover(&c, &mut d, addr, "no failover:", "refused").await;
    assert!(line.contains("still hears from a primary"), "{line}");
}

/// The daemon logs `logged` (the line is returned), counts the attempt in
/// `pgmaint_failovers_total{result}`, shows the primary down, promotes nothing, and
/// stops cleanly.
async fn no_failover(
    c: &Cluster,
    d: &mut Daemon,
    addr: std::net::SocketAddr,
    logged: &str,
    result: &str,
) -> String {
    wait_for(logged, Duration::from_secs(30), || async {
        d.log().contains(logged)
    })
    .await;
    let (m, text) = scrape(addr).await;
    let failovers = |r: &str| value(&m, "pgmaint_failovers_total", Some(("result", r)));
    assert!(failovers(result).unwrap() >= 1.0, "{text}");
    assert_eq!(failovers("promoted"), Some(0.0), "{text}");
    assert_eq!(value(&m, "pgmaint_primary_up", None), Some(0.0), "{text}");
    assert!(
        in_recovery(c, 1).await && in_recovery(c, 2).await,
        "{}",
        d.log()
    );
    d.terminate().await;
    d.log()
        .lines()
        .find(|l| l.contains(logged))
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_witness_that_sees_the_primary_or_a_failing_fence_stops_the_failover() {
    let c = Cluster::up("auto-failover-hooks", 2);
    let init = c.write_config("init.toml", "");
    c.init_ready(&init).await;
    c.wait_caught_up(2).await;
    kill_primary(&c);
    let cases = [
        (
            "witness_command = 'exit 0'\n",
            "failover.witness_command says the primary is alive",
            "refused",
        ),
        (
            "fence_command = 'echo no fencing today; exit 3'\n",
            "failover aborted: failover.fence_command exited 3",
            "fence_failed",
        ),
    ];
    for (i, (hook, logged, result)) in cases.into_iter().enumerate() {
        let addr = free_address();
        let cfg = c.write_config(
            &format!("hook{i}.toml"),
            &format!("{}{hook}", quick_failover(addr)),
        );
        let mut d = Daemon::start(&c, &cfg, i);
        no_failover(&c, &mut d, addr, logged, result).await;
    }
}
