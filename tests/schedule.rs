//! Scheduled slots on the primary: a slot is claimed once, whoever asks, only by the
//! scheduler's leader, and the last one survives a restart.

use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use pgmaint::leader::{release, try_lead};
use pgmaint::schedule::{claim, last_slot};
use pgmaint_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_is_claimed_once_and_only_by_the_leader() {
    let c = Cluster::up("schedule-claims", 1);
    let init = c.write_config("init.toml", "");
    c.run(&init, &["init"]).expect_code(0);
    let slot = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap();
    let lease = Duration::from_secs(30);
    let (first, second) = (c.primary().await, c.primary().await);
    // Two daemons at once: one leads.
    let (x, y) = tokio::join!(
        try_lead(&first, "host-a:1", lease),
        try_lead(&second, "host-b:2", lease)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x != y, "exactly one leads: {x} {y}");
    // `a` is the leader's session from here on, `b` the other's.
    let (a, b, leader, other) = match x {
        true => (first, second, "host-a:1", "host-b:2"),
        false => (second, first, "host-b:2", "host-a:1"),
    };
    // The other cannot claim anything; the leader claims a slot once.
    assert!(claim(&b, "nightly", slot, other).await.unwrap().is_none());
    assert!(claim(&a, "nightly", slot, leader).await.unwrap().is_some());
    assert!(claim(&a, "nightly", slot, leader).await.unwrap().is_none());
    // A restarted daemon (a new holder, once the old one released) does not run it again.
    release(&a, leader).await.unwrap();
    assert!(try_lead(&a, "host-a:3", lease).await.unwrap());
    assert!(claim(&a, "nightly", slot, "host-a:3")
        .await
        .unwrap()
        .is_none());
    // Another task's slot at the same time is its own; the next slot is free.
    assert!(claim(&a, "weekly", slot, "host-a:3")
        .await
        .unwrap()
        .is_some());
    let next = slot + TimeDelta::hours(24);
    assert!(claim(&a, "nightly", next, "host-a:3")
        .await
        .unwrap()
        .is_some());
    let (last, _) = last_slot(&a, "nightly").await.unwrap().unwrap();
    assert_eq!(last, next);
    assert_eq!(last_slot(&a, "never").await.unwrap(), None);
    // A lease that expired is taken over by another daemon.
    assert!(try_lead(&a, "host-a:3", Duration::from_millis(1))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(try_lead(&b, other, lease).await.unwrap());
    assert!(!try_lead(&a, "host-a:3", lease).await.unwrap());
}
