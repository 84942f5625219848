//! ferry-daemon: Ferry's long-lived parts put together for people: the one-command backup
//! ([`backup::run`]), the daemon and its control API, and the paths and configuration they share.
//!
//! **Invariant**: every job state change goes through the job store (one SQLite transaction,
//! committed before it is acted on); this crate only wires the library index, job creation,
//! the transfer engine and the conditions gate together and never decides a job's fate itself.
//!
//! **Boundary**: no protocol or policy logic lives here: uploads are `ferry-transfer`'s, rules
//! are `ferry-core`'s, observing is `ferry-conditions`'s, the receiving server `ferry-server`'s.

/// Caps glibc's malloc at two arenas. By default it makes up to eight per core, one per busy
/// thread, and memory freed in one is not reused by another: with the tokio workers, the
/// extension host and the built-in server all allocating, `ferry backup` of 20,000 small
/// files peaked at 161 MB resident against 79 MB with two arenas (and ran no slower). Called
/// first thing in `main`, before any thread exists. A person's own setting
/// (`MALLOC_ARENA_MAX`, `GLIBC_TUNABLES`) is left to rule.
pub fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var_os("GLIBC_TUNABLES").is_some()
    {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and changes only the allocator's tuning.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands the memory glibc keeps free back to the system (`malloc_trim`): after a daemon's
/// pass over a large library its caches are released, and without this the freed pages would
/// stay in the process's resident size.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes an integer and only returns free pages to the system.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

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
