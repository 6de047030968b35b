//! Scheduled slots on the primary (groundwork for `pgmaint daemon`): a slot is claimed
//! once, whoever asks, and the last one survives a restart.

use chrono::{DurationRound, TimeDelta, Utc};
use pgmaint::schedule::{claim, last_slot};
use pgmaint_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_is_claimed_once_whoever_asks() {
    let c = Cluster::up("schedule-claims", 1);
    let init = c.write_config("init.toml", "");
    c.run(&init, &["init"]).expect_code(0);
    let slot = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap();
    // Two daemons at once: one wins.
    let (a, b) = (c.primary().await, c.primary().await);
    let (x, y) = tokio::join!(
        claim(&a, "nightly", slot, "host-a:1"),
        claim(&b, "nightly", slot, "host-b:2")
    );
    let won = [x.unwrap(), y.unwrap()];
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    // A restarted daemon does not run it again.
    assert!(!claim(&a, "nightly", slot, "host-a:3").await.unwrap());
    // Another task's slot at the same time is its own; the next slot is free.
    assert!(claim(&a, "weekly", slot, "host-a:3").await.unwrap());
    let next = slot + TimeDelta::hours(24);
    assert!(claim(&b, "nightly", next, "host-b:2").await.unwrap());
    let (last, _) = last_slot(&a, "nightly").await.unwrap().unwrap();
    assert_eq!(last, next);
    assert_eq!(last_slot(&a, "never").await.unwrap(), None);
}
