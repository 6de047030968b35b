//! One module per `pgmaint` command: each takes the loaded config and its arguments,
//! does its work and returns the exit code (or an error, classed in
//! [`crate::errors`]).

pub mod check;
pub mod dump;
pub mod init;
pub mod promote;
pub mod prune;
pub mod recover;
pub mod run;
pub mod status;
pub mod tasks;
pub mod uploader;
