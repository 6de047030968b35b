//! `pgmaint init`: apply pgmaint's schema migrations to the primary.

use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::{db, schema};

/// `pgmaint init`: idempotent.
pub async fn run(cfg: &Config) -> Result<ExitCode> {
    let mut primary = db::connect_at_start(&cfg.primary, "pgmaint").await?;
    let (before, after) = schema::init(&mut primary).await?;
    if before == after {
        println!("pgmaint schema is up to date (version {after})");
    } else {
        println!("pgmaint schema migrated from version {before} to {after}");
    }
    Ok(ExitCode::SUCCESS)
}
