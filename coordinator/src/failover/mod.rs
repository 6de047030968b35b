//! Failover: everything about promoting a replica when the primary is gone, and about
//! knowing which server is the primary afterwards. Nothing else in the crate decides
//! it; the daemon and `pgmaint promote` are thin callers.
//!
//! - [`promote`]: the promotion as one state machine of recorded, repeatable steps.
//! - [`journal`]: the write-ahead record of each promotion (`results.dir/promotions.json`
//!   and `pgmaint.promotions`), and fencing by it.
//! - [`primary`]: which listed server is the primary, by records and by the servers'
//!   timelines (a newer timeline that descends from another fences it).
//! - [`down`]: is the primary really down. [`candidate`]: which replica to promote.
//! - [`follow`]: re-pointing the other replicas. [`hooks`]: the operator's witness and
//!   fence commands. [`servers`]: what the steps ask the servers.
//! - [`watch`]: the daemon's watch on the primary (`failover.automatic`).
//! - [`report`]: what a failover did, for people and for `--json`.
//!
//! May call: `config`, `db`, `replica` (server identity, pauses), `schema`, `leader`
//! (the holder id), `units`. Called by: `commands` and `daemon`, and `primary` by
//! every command that connects to the primary.

pub mod candidate;
pub mod down;
pub mod follow;
pub mod guard;
pub mod hooks;
pub mod journal;
pub mod primary;
pub mod promote;
pub mod report;
pub mod servers;
pub mod watch;

pub use promote::resume_at_start;
