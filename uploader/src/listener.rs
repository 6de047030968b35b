//! The listener: one session on the primary that LISTENs on the queue's channel and
//! wakes the slots on every notification. `enqueue`, `retry` and the rescuer notify, so
//! a new task is claimed within moments instead of at the next poll.
//!
//! A notification sent while the listener is disconnected is lost. It therefore wakes
//! the slots after every (re)connect, and the slots poll anyway.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

use crate::queue;
use crate::reconnect::{sleep_unless_stopped, Backoff, Primary};
use crate::wake::Wake;

/// Listens for new work and wakes the slots. Start it with [`Listener::run`]; get one
/// from [`crate::Worker::listener`].
pub struct Listener {
    primary: Primary,
    wake: Wake,
    reconnect_max: Duration,
}

impl Listener {
    pub(crate) fn new(primary: Primary, wake: Wake, reconnect_max: Duration) -> Self {
        Listener {
            primary,
            wake,
            reconnect_max,
        }
    }

    /// Listen until `stop` is cancelled, reconnecting (with backoff) whenever the
    /// session is lost.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(self.reconnect_max);
        loop {
            let config = self.primary.config("listen");
            let connected = tokio::select! {
                c = snapshot_runner::connection::connect_raw(&config) => c,
                _ = stop.cancelled() => return,
            };
            match connected {
                Ok((client, conn)) => {
                    if !self.listen(client, conn, &mut backoff, &stop).await {
                        return;
                    }
                    tracing::debug!("lost the LISTEN connection; reconnecting");
                }
                Err(e) => tracing::debug!(error = %e, "LISTEN connection failed"),
            }
            if !sleep_unless_stopped(backoff.wait(), &stop).await {
                return;
            }
        }
    }

    /// LISTEN on `client` and wake the slots on every notification, until the
    /// session is lost (true) or `stop` comes (false).
    async fn listen<S, T>(
        &self,
        client: Client,
        mut conn: tokio_postgres::Connection<S, T>,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> bool
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Notifications arrive on the connection, which must be polled to drive the
        // client too: a task does both and forwards each notification.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => {
                        let _ = tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        let listening = client
            .batch_execute(&format!("LISTEN {}", queue::CHANNEL))
            .await
            .is_ok();
        if listening {
            backoff.reset();
            self.wake.wake_all();
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(()) => self.wake.wake_all(),
                        None => break,
                    },
                    _ = stop.cancelled() => {
                        driver.abort();
                        return false;
                    }
                }
            }
        }
        driver.abort();
        true
    }
}
