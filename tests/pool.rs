//! The pool of replicas (issue "A pool of replicas, and failover promotion…"): which
//! replica a cycle pauses, with failover in mind.

use std::time::Duration;

use pgmaint_e2e::*;

const BLOBS: &str = "public.blobs";

/// Which replicas are paused now.
async fn paused(c: &Cluster) -> Vec<usize> {
    let mut out = Vec::new();
    for i in 1..=2 {
        if c.pause_state(i).await == "paused" {
            out.push(i);
        }
    }
    out
}

/// With r1 and r2 both failover candidates, two runs without --replica never pause
/// both: the second is refused while the first holds one (limits.keep_unpaused, default
/// 1 with two candidates). With r1 at failover_priority = 0, runs go to r1. A task
/// pinned to a replica runs there; --replica against the pin is bad usage.
#[tokio::test(flavor = "multi_thread")]
async fn the_pool_never_pauses_every_failover_candidate() {
    let c = Cluster::up("pool-two-candidates", 2);
    seed_blobs(&c.primary().await, BLOBS, "bigint", "g", 100_000).await;
    let slow = slow_blobs_config(&c, "slow.toml", "");
    let fast = c.write_config("fast.toml", &blobs_task(""));
    c.run(&fast, &["init"]).expect_code(0);
    c.wait_caught_up(1).await;
    c.wait_caught_up(2).await;

    let first = spawn_piped(&c, &slow, &["run", "--json"]);
    wait_for("one replica paused", Duration::from_secs(30), || async {
        paused(&c).await.len() == 1
    })
    .await;
    let held = paused(&c).await[0];
    let second = c.run(&fast, &["run"]).expect_code(1);
    let line = second.error_line().unwrap();
    assert!(
        line.contains("no replica can be paused now") && line.contains("limits.keep_unpaused = 1"),
        "{line}"
    );
    assert_eq!(
        paused(&c).await,
        vec![held],
        "the second run paused the other candidate"
    );
    // status: each replica's role, priority, pause state and holder, LSNs and upstream.
    let st = c.run(&fast, &["status", "--json"]).expect_code(0);
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let primary = format!("127.0.0.1:{}", c.primary_port());
    assert_eq!(st["primaries"][0]["address"], primary.as_str());
    assert_eq!(st["primaries"][0]["role"], "primary (in use)");
    for r in st["replicas"].as_array().unwrap() {
        let i: usize = r["name"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(r["role"], "standby", "{r}");
        assert_eq!(r["failover_priority"], 1);
        assert_eq!(r["state"]["upstream"], primary.as_str());
        assert!(r["state"]["receive_lsn"].is_string() && r["state"]["replay_lsn"].is_string());
        if i == held {
            assert_eq!(r["state"]["pause_state"], "paused");
            assert!(r["paused_by"].as_str().unwrap().starts_with("run "), "{r}");
        } else {
            assert_eq!(r["state"]["pause_state"], "not paused");
            assert!(r["paused_by"].is_null());
        }
    }
    let out = first.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["replica"], format!("r{held}"));

    // r1 never promoted: scans go there, whatever its backlog, and pausing it costs no
    // candidate.
    let body = blobs_task("");
    let text = std::fs::read_to_string(&fast).unwrap().replacen(
        "name = \"r1\"\n",
        "name = \"r1\"\nfailover_priority = 0\n",
        1,
    );
    let scan_r1 = c.dir.join("r1-scans.toml");
    std::fs::write(&scan_r1, &text).unwrap();
    for _ in 0..2 {
        let (run, s) = run_json(&c, &scan_r1, &[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(s["replica"], "r1");
    }
    assert!(paused(&c).await.is_empty());

    // A task pinned to r2 runs on r2; --replica r1 against the pin is refused.
    let pinned = c.write_config(
        "pinned.toml",
        &body.replacen("kind =", "replica = \"r2\"\nkind =", 1),
    );
    let (run, s) = run_json(&c, &pinned, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(s["replica"], "r2");
    let bad = c.run(&pinned, &["run", "--replica", "r1"]).expect_code(2);
    assert!(
        bad.error_line()
            .unwrap()
            .contains("is pinned to replica r2"),
        "{}",
        bad.stderr
    );
}

/// Review finding: limits.keep_unpaused held only for the pool's own choice. With r2
/// paused by someone else, `pgmaint run --replica r1` paused r1 too: no failover
/// candidate left unpaused. It is refused now, whoever chose the replica.
#[tokio::test(flavor = "multi_thread")]
async fn keep_unpaused_holds_for_a_replica_chosen_by_hand() {
    let c = Cluster::up("pool-by-hand", 2);
    seed_blobs(&c.primary().await, BLOBS, "bigint", "g", 1_000).await;
    let cfg = c.write_config("t.toml", &blobs_task(""));
    c.run(&cfg, &["init"]).expect_code(0);
    c.wait_caught_up(1).await;
    c.wait_caught_up(2).await;
    c.pause_by_hand(2).await;
    let run = c.run(&cfg, &["run", "--replica", "r1"]).expect_code(1);
    let line = run.error_line().unwrap();
    assert!(
        line.contains("pausing it would leave 0 other failover candidate(s) ready")
            && line.contains("r2: paused"),
        "{line}"
    );
    assert_eq!(c.pause_state(1).await, "not paused");
    // With r2 resumed, r1 may go.
    c.replica(2)
        .await
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    c.run(&cfg, &["run", "--replica", "r1"]).expect_code(0);
}
