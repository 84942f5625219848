//! Indexing a folder tree as a photo library: scan, classify, group, read metadata, watch.
//!
//! The index itself (assets, resources, change history) lives in `ferry-store`; this crate
//! decides what goes in it.

pub mod classify;
pub mod failpoint;
pub mod group;
pub mod metadata;
pub mod scan;

pub use scan::{Issue, IssueReason, ScanError, ScanEvent, ScanOptions, ScanReport, scan};
pub mod watch;

pub use watch::{ScanCause, WatchError, WatchOptions, watch};
