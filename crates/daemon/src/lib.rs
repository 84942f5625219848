//! ferry-daemon: Ferry's long-lived parts put together for people: the one-command backup
//! ([`backup::run`]), the daemon and its control API, and the paths and configuration they share.
//!
//! **Invariant**: every job state change goes through the job store (one SQLite transaction,
//! committed before it is acted on); this crate only wires the library index, job creation,
//! the transfer engine and the conditions gate together and never decides a job's fate itself.
//!
//! **Boundary**: no protocol or policy logic lives here: uploads are `ferry-transfer`'s, rules
//! are `ferry-core`'s, observing is `ferry-conditions`'s, the receiving server `ferry-server`'s.

pub mod backup;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dashboard;
pub mod extension;
pub mod gate;
pub mod migrate;
pub mod report;
pub mod restore;
pub mod run;
pub mod server;
pub mod tracked;
