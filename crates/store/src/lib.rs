//! Ferry's durable state: one SQLite database (WAL, `synchronous=FULL`) in the state directory.
//!
//! Every change is one SQLite transaction, committed before the caller acts on it, so a
//! `kill -9` at any moment leaves the previous or the next consistent state, never a mix.

mod db;
pub mod extensions;
pub mod jobs;
pub mod library;
pub mod migration;
pub mod private;
mod schema;
pub mod upload_sessions;

pub use db::{Store, StoreError};
pub use jobs::{JobCounts, JobFilter, JobStore, JobStoreError, MemoryJobStore, new_job_id};
