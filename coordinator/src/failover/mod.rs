//! Failover: everything about promoting a replica when the primary is gone.

pub mod candidate;
pub mod hooks;
pub mod journal;
pub mod primary;
pub mod promote;
pub mod servers;
pub mod watch;
