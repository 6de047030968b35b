//! `pgmaint uploader`: the upload worker on the primary.

use std::process::ExitCode;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use std::time::Duration;

use crate::config::{Config, Dsn};
use crate::failover::primary::{self, Found};
use crate::{db, schema, signals, UsageError};

/// `pgmaint uploader [--once] [--slots N]`. `listed`: `primary.dsn` as configured
/// (`cfg.primary` is the one server in use).
pub async fn run(cfg: &Config, listed: &Dsn, once: bool, slots: Option<usize>) -> Result<ExitCode> {
    let primary = db::connect_at_start(&cfg.primary, "pgmaint").await?;
    schema::require_current(&primary).await?;
    drop(primary);
    if slots == Some(0) {
        anyhow::bail!(UsageError("--slots: must be at least 1".into()));
    }
    let worker = worker(cfg, slots);
    let mut moved = None;
    let stats = if once {
        worker.drain().await?
    } else {
        let shutdown = CancellationToken::new();
        signals::shut_down_on_signals(shutdown.clone());
        tracing::info!(
            slots = worker.slots,
            worker = worker.id(),
            host = %worker.host,
            "uploader started"
        );
        let watch = tokio::spawn(watch_the_primary(
            cfg.clone(),
            listed.clone(),
            shutdown.clone(),
        ));
        let stats = worker.run(shutdown).await?;
        watch.abort();
        moved = watch.await.ok().flatten();
        stats
    };
    let superseded = match stats.superseded {
        0 => String::new(),
        n => format!("; {n} superseded by a newer snapshot"),
    };
    println!(
        "uploader: {} task(s) applied ({} rows{superseded}), {} failed, {} to retry, {} cancelled",
        stats.completed, stats.rows, stats.failed, stats.retried, stats.cancelled
    );
    if once {
        if let Some(line) = waiting_elsewhere(cfg, &worker.host).await {
            println!("{line}");
        }
    }
    if let Some(why) = moved {
        anyhow::bail!("{why}: stopped; start `pgmaint uploader` again to follow the primary");
    }
    Ok(if once && stats.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The upload worker of `cfg` (`pgmaint uploader`, `pgmaint daemon`), with `slots`
/// or `uploader.slots`; it claims the tasks of its host (`results.host`), or any
/// with `results.shared`.
pub(crate) fn worker(cfg: &Config, slots: Option<usize>) -> uploader::Worker {
    let mut worker = uploader::Worker::new(cfg.primary.config.clone(), cfg.results_dir.clone());
    worker.lease = cfg.uploader.lease;
    worker.lock_timeout = cfg.uploader.lock_timeout;
    worker.poll_interval = cfg.uploader.poll_interval;
    worker.shutdown_grace = cfg.uploader.shutdown_grace;
    worker.host = cfg.upload_host();
    worker.slots = slots.unwrap_or(cfg.uploader.slots);
    worker.guard = Some(std::sync::Arc::new(
        crate::failover::guard::TimelineGuard::new(cfg),
    ));
    worker
}

/// After a drain: the one line saying how many tasks wait for other hosts (whose
/// results.dir holds their files), if any. Counting is best effort: a failure is
/// logged, the drain's outcome stands.
async fn waiting_elsewhere(cfg: &Config, host: &uploader::ResultsHost) -> Option<String> {
    let counted = async {
        let client = db::connect(&cfg.primary, "pgmaint").await?;
        anyhow::Ok(uploader::waiting_for_other_hosts(&client, host).await?)
    };
    let hosts = match counted.await {
        Ok(h) if h.is_empty() => return None,
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "could not count the tasks waiting for other hosts");
            return None;
        }
    };
    let total: i64 = hosts.iter().map(|(_, n)| n).sum();
    let each: Vec<String> = hosts.iter().map(|(h, n)| format!("{h} ({n})")).collect();
    Some(format!(
        "uploader: {total} task(s) wait for other hosts, whose uploaders apply them: {}; \
         `pgmaint tasks retry ID --on-host HOST` hands one over",
        each.join(", ")
    ))
}

/// The worker keeps to the server it started on. Should another become the primary (a
/// failover), or that one be fenced, stop it: a returning former primary must never
/// get an upload. Why, once it stopped it.
pub(crate) async fn watch_the_primary(
    cfg: Config,
    listed: Dsn,
    shutdown: CancellationToken,
) -> Option<String> {
    let in_use = primary::address(&cfg.primary);
    let mut survey_cfg = cfg.clone();
    survey_cfg.primary = listed;
    let every = cfg.uploader.poll_interval.max(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(every) => {}
        }
        let surveyed = tokio::select! {
            _ = shutdown.cancelled() => return None,
            s = primary::survey(&survey_cfg, "pgmaint-uploader-watch") => s,
        };
        let why = match surveyed {
            Err(e) => Some(e.0),
            Ok((survey, _)) => match survey.chosen {
                Some(i) if primary::address(&survey.servers[i].0) == in_use => None,
                Some(i) => Some(format!(
                    "the primary is now {} (a failover?), not {in_use}",
                    primary::address(&survey.servers[i].0)
                )),
                // The primary down (or between roles): the worker waits and retries,
                // unless what it uses is now a fenced former primary.
                None => survey
                    .servers
                    .iter()
                    .find(|(d, f)| primary::address(d) == in_use && matches!(f, Found::Fenced(..)))
                    .map(|_| format!("{in_use} is a former primary now (fenced)")),
            },
        };
        if let Some(why) = why {
            tracing::error!("{why}: stopping the uploader");
            shutdown.cancel();
            return Some(why);
        }
    }
}
