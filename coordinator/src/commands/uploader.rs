//! `pgmaint uploader`: the upload worker on the primary.

use std::process::ExitCode;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::{db, schema, signals, UsageError};

/// `pgmaint uploader [--once] [--slots N]`.
pub async fn run(cfg: &Config, once: bool, slots: Option<usize>) -> Result<ExitCode> {
    let primary = db::connect_at_start(&cfg.primary, "pgmaint").await?;
    schema::require_current(&primary).await?;
    drop(primary);
    let mut worker = uploader::Worker::new(cfg.primary.config.clone(), cfg.results_dir.clone());
    worker.lease = cfg.uploader.lease;
    worker.lock_timeout = cfg.uploader.lock_timeout;
    worker.poll_interval = cfg.uploader.poll_interval;
    worker.shutdown_grace = cfg.uploader.shutdown_grace;
    worker.slots = match slots {
        Some(0) => anyhow::bail!(UsageError("--slots: must be at least 1".into())),
        Some(n) => n,
        None => cfg.uploader.slots,
    };
    let stats = if once {
        worker.drain().await?
    } else {
        let shutdown = CancellationToken::new();
        signals::shut_down_on_signals(shutdown.clone());
        tracing::info!(
            slots = worker.slots,
            worker = worker.id(),
            "uploader started"
        );
        worker.run(shutdown).await?
    };
    let superseded = match stats.superseded {
        0 => String::new(),
        n => format!("; {n} superseded by a newer snapshot"),
    };
    println!(
        "uploader: {} task(s) applied ({} rows{superseded}), {} failed, {} to retry, {} cancelled",
        stats.completed, stats.rows, stats.failed, stats.retried, stats.cancelled
    );
    Ok(if once && stats.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
