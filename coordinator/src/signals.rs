//! Signals. A paused replica must never be abandoned by a signal: SIGINT, SIGTERM and
//! SIGHUP (a dropped terminal or ssh session) only ask the work in hand to stop.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::abort::{Abort, AbortReason};

/// Call `on(name, count)` for every SIGINT and SIGTERM (and SIGHUP with `hangup`),
/// `count` being how many have arrived so far.
fn on_signals(hangup: bool, mut on: impl FnMut(&'static str, u32) + Send + 'static) {
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = hangup.then(|| signal(SignalKind::hangup()).expect("SIGHUP handler"));
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            };
            seen += 1;
            on(name, seen);
        }
    });
}

/// SIGINT/SIGTERM/SIGHUP abort the cycle, which then resumes replay; they never kill
/// the process outright while a replica may be paused.
pub fn abort_on_signals(abort: Abort) {
    on_signals(true, move |name, _| {
        abort.trigger(AbortReason::Signal(name))
    });
}

/// For work that must not stop half-way (a failover): the first SIGINT/SIGTERM only
/// cancels the returned token (checked where stopping is still safe), a second one
/// exits at once.
pub fn finish_on_signals(what: &'static str) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    on_signals(false, move |name, seen| {
        if seen == 1 {
            tracing::warn!(
                signal = name,
                "{what}: stopping where that is safe; a second signal exits at once"
            );
            cancel.cancel();
        } else {
            tracing::warn!(signal = name, "second signal: exiting now");
            std::thread::sleep(Duration::from_millis(10));
            std::process::exit(130);
        }
    });
    token
}

/// First SIGTERM/SIGINT: stop claiming, finish (or release) the tasks in hand, exit.
/// A second one exits at once; leases then expire and the rescuer hands the tasks on.
pub fn shut_down_on_signals(shutdown: CancellationToken) {
    on_signals(false, move |name, seen| {
        if seen == 1 {
            tracing::info!(signal = name, "shutting down: finishing the tasks in hand");
            shutdown.cancel();
        } else {
            tracing::warn!(signal = name, "second signal: exiting now");
            std::thread::sleep(Duration::from_millis(10));
            std::process::exit(130);
        }
    });
}

/// `pgmaint daemon`: SIGTERM/SIGINT cancel `shutdown` (scheduling stops, the cycles in
/// flight are aborted and resume their replicas, the uploader finishes within its
/// grace); later ones only say so, since exiting at once could leave a replica paused.
/// SIGHUP asks for a config reload.
pub fn daemon_signals(shutdown: CancellationToken, reload: std::sync::Arc<tokio::sync::Notify>) {
    on_signals(true, move |name, _| {
        if name == "SIGHUP" {
            tracing::info!("SIGHUP: reloading the config");
            reload.notify_one();
        } else if shutdown.is_cancelled() {
            tracing::warn!(
                signal = name,
                "already shutting down: cycles in flight are resuming their replicas"
            );
        } else {
            tracing::info!(signal = name, "shutting down");
            shutdown.cancel();
        }
    });
}
