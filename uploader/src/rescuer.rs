//! The rescuer: on a session of its own, every interval, it hands back running tasks
//! whose lease expired (their worker died, froze or lost the primary), or fails them
//! when their attempts are used up (see `queue::rescue`). It runs next to the slots, so
//! leases are rescued even while every slot is busy with a long apply.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::queue;
use crate::reconnect::{sleep_unless_stopped, Primary, Reconnect};
use crate::wake::Wake;
use crate::UploadError;

/// Rescues tasks whose lease expired. Start it with [`Rescuer::run`]; get one from
/// [`crate::Worker::rescuer`].
pub struct Rescuer {
    primary: Primary,
    wake: Wake,
    /// Time between two passes.
    interval: Duration,
    reconnect: Reconnect,
    client: Option<Client>,
    /// When the next pass is due (`None`: at once).
    next_pass: Option<Instant>,
}

impl Rescuer {
    pub(crate) fn new(
        primary: Primary,
        wake: Wake,
        interval: Duration,
        reconnect: Reconnect,
    ) -> Self {
        Rescuer {
            primary,
            wake,
            interval,
            reconnect,
            client: None,
            next_pass: None,
        }
    }

    /// Rescue now, then every interval, until `stop` is cancelled. A pass already made
    /// with [`Rescuer::pass`] counts: the next one waits for its interval.
    ///
    /// Fails only when the primary stays unreachable longer than a drain allows
    /// (never for a rescuer of a long-running worker).
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), UploadError> {
        loop {
            if let Some(due) = self.next_pass {
                let wait = due.saturating_duration_since(Instant::now());
                if !sleep_unless_stopped(wait, &stop).await {
                    return Ok(());
                }
            }
            if stop.is_cancelled() {
                return Ok(());
            }
            self.pass(&stop).await?;
        }
    }

    /// One pass: connect if need be (with backoff), then rescue. Returns at once if
    /// `stop` comes while connecting; fails if the primary stays unreachable longer
    /// than a drain allows. A failed rescue is logged, and tried again at the next pass.
    pub async fn pass(&mut self, stop: &CancellationToken) -> Result<(), UploadError> {
        if !self.connected(stop).await? {
            return Ok(());
        }
        self.next_pass = Some(Instant::now() + self.interval);
        let client = self.client.as_ref().expect("connected above");
        match queue::rescue(client).await {
            Ok(r) if r.requeued + r.failed > 0 => {
                tracing::info!(
                    requeued = r.requeued,
                    failed = r.failed,
                    "rescued tasks whose lease expired"
                );
                // `rescue` notifies too; this also reaches the slots while the listener
                // is reconnecting.
                self.wake.wake_all();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "rescue failed");
                if e.is_closed() {
                    self.client = None;
                }
            }
        }
        Ok(())
    }

    /// (Re)connect the rescuer's session if need be, with backoff. False if `stop`
    /// came first.
    async fn connected(&mut self, stop: &CancellationToken) -> Result<bool, UploadError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        while self.client.is_none() {
            let connected = tokio::select! {
                c = self.primary.connect("rescue") => c,
                _ = stop.cancelled() => return Ok(false),
            };
            match connected {
                Ok(c) => {
                    if self.reconnect.succeeded() {
                        tracing::info!("rescuer reconnected to the primary");
                    }
                    self.client = Some(c);
                }
                Err(e) => {
                    let Some(wait) = self.reconnect.failed() else {
                        return Err(e);
                    };
                    tracing::warn!(error = %e, retry_in = ?wait, "rescuer: primary unreachable");
                    if !sleep_unless_stopped(wait, stop).await {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }
}
