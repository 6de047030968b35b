//! `pgmaint`: heavy PostgreSQL maintenance on a streaming replica whose WAL replay is
//! paused. See README.md for the config reference.
//!
//! The binary (`main.rs`) parses the command line ([`cli`]) and hands each command to
//! its module in [`commands`]. The cycle (`pause → scan → queue → resume`) is
//! [`cycle::run`]; the replica's replay control is [`replica`]; the run's lease on the
//! primary is [`lease`]; [`abort`] and [`signals`] stop a cycle, which then resumes
//! replay on every path.

pub mod abort;
pub mod cli;
pub mod commands;
pub mod config;
pub mod conninfo;
pub mod cycle;
pub mod daemon;
pub mod db;
pub mod dump;
pub mod dump_dirs;
pub mod error_text;
pub mod errors;
pub mod failover;
pub mod http;
pub mod leader;
pub mod lease;
pub mod metrics;
pub mod pool;
pub mod privileges;
pub mod replica;
pub mod schedule;
pub mod schedule_history;
pub mod schema;
pub mod signals;
pub mod sync_standby;
pub mod targets;
pub mod units;
pub mod watchdog;

pub use errors::UsageError;
