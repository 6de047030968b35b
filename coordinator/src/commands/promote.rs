//! `pgmaint promote [--replica NAME] [--force] [--json]`: failover, when the primary
//! is down. The promotion itself is [`crate::failover::promote`].

use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::failover::promote::failover;
use crate::failover::report::finish;

/// `pgmaint promote [--replica NAME] [--force] [--json]`.
pub async fn run(cfg: &Config, by_hand: Option<&str>, force: bool, json: bool) -> Result<ExitCode> {
    let stop = crate::signals::finish_on_signals("pgmaint promote");
    let report = failover(
        cfg,
        by_hand,
        force,
        &stop,
        None,
        &crate::leader::daemon_holder(),
    )
    .await?;
    finish(&report, json)
}
