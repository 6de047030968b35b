//! Reaching the primary again after it went away (restart, failover, network): the
//! wait between attempts doubles, with jitter so that many workers do not come back in
//! lockstep, and a drain gives up once the primary has been unreachable too long. The
//! listener, the rescuer and every slot each keep their own.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::UploadError;

/// The primary, as the uploader's parts connect to it. Each session is named
/// `pgmaint-uploader-<role>`: operators (and the tests) tell them apart in
/// `pg_stat_activity`.
#[derive(Clone)]
pub(crate) struct Primary(snapshot_runner::connection::Config);

impl Primary {
    pub(crate) fn new(config: snapshot_runner::connection::Config) -> Self {
        Primary(config)
    }

    /// The connection settings of a session in `role`.
    pub(crate) fn config(&self, role: &str) -> snapshot_runner::connection::Config {
        let mut config = self.0.clone();
        config.application_name(format!("pgmaint-uploader-{role}"));
        config
    }

    /// The token that cancels the statement running on `client`, a session of this
    /// primary (with its TLS settings).
    pub(crate) fn cancel_token(&self, client: &Client) -> snapshot_runner::connection::CancelToken {
        self.0.cancel_token(client)
    }

    /// A session in `role` (with the keepalives and time-outs of every pgmaint session).
    pub(crate) async fn connect(&self, role: &str) -> Result<Client, UploadError> {
        snapshot_runner::connection::connect(&self.config(role))
            .await
            .map_err(UploadError::db("connecting to the primary"))
    }
}

/// How long to wait before the next attempt: doubling, capped, with jitter.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);

    pub(crate) fn new(max: Duration) -> Self {
        Backoff {
            next: Self::FIRST,
            max,
        }
    }

    pub(crate) fn wait(&mut self) -> Duration {
        let d = self.next.mul_f64(0.5 + rand::random::<f64>());
        self.next = (self.next * 2).min(self.max);
        d.min(self.max)
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// One part's attempts to reach the primary: its backoff, and since when the primary
/// has been unreachable.
pub(crate) struct Reconnect {
    pub(crate) backoff: Backoff,
    unreachable_since: Option<Instant>,
    /// `None`: keep trying for as long as it takes.
    give_up_after: Option<Duration>,
}

impl Reconnect {
    pub(crate) fn new(max_wait: Duration, give_up_after: Option<Duration>) -> Self {
        Reconnect {
            backoff: Backoff::new(max_wait),
            unreachable_since: None,
            give_up_after,
        }
    }

    /// An attempt succeeded. True if the primary had been unreachable before it (worth
    /// telling the operator).
    pub(crate) fn succeeded(&mut self) -> bool {
        self.backoff.reset();
        self.unreachable_since.take().is_some()
    }

    /// An attempt failed: how long to wait before the next one, or `None` to give up.
    pub(crate) fn failed(&mut self) -> Option<Duration> {
        let since = *self.unreachable_since.get_or_insert_with(Instant::now);
        if self
            .give_up_after
            .is_some_and(|limit| since.elapsed() >= limit)
        {
            return None;
        }
        Some(self.backoff.wait())
    }
}

/// Sleep for `wait`, unless `stop` comes first. False if it did.
pub(crate) async fn sleep_unless_stopped(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stop.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_and_starts_over_on_reset() {
        let mut b = Backoff::new(Duration::from_secs(1));
        let mut base = Duration::from_millis(200);
        for _ in 0..6 {
            let w = b.wait();
            assert!(
                w >= base.mul_f64(0.5) && w <= Duration::from_secs(1),
                "{w:?}"
            );
            base = (base * 2).min(Duration::from_secs(1));
        }
        b.reset();
        assert!(b.wait() <= Duration::from_millis(300));
    }

    #[test]
    fn a_drain_gives_up_only_after_its_limit() {
        let mut r = Reconnect::new(Duration::from_millis(10), Some(Duration::from_millis(50)));
        assert!(r.failed().is_some(), "the first failure starts the clock");
        std::thread::sleep(Duration::from_millis(60));
        assert!(r.failed().is_none());
        assert!(r.succeeded(), "it had been unreachable");
        assert!(!r.succeeded());
    }

    #[test]
    fn a_long_running_part_never_gives_up() {
        let mut r = Reconnect::new(Duration::from_millis(10), None);
        r.failed();
        std::thread::sleep(Duration::from_millis(20));
        assert!(r.failed().is_some());
    }
}
