//! Watching: apply library changes within about a second of them landing.
//!
//! Filesystem events are hints, not truth (inotify overflows, network mounts send nothing, a
//! copy is many events): each debounced batch of events becomes a scan of the folders it
//! names, and the scan decides what changed. A full rescan runs on overflow, on any watcher
//! error, and every `full_rescan_interval_ms` as a safety net.
//!
//! The debounce is this loop's own, on the raw watcher's channel: an idle watch sleeps in one
//! blocking receive until an event or the next full rescan, with no periodic tick (a
//! debouncer crate's 125 ms tick woke an idle daemon eight times a second).

use crate::scan::{ScanError, ScanEvent, ScanOptions, ScanReport, scan};
use ferry_store::Store;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet time before a burst of events is acted on; also lets a file being copied settle.
    pub debounce_ms: u64,
    /// Safety rescan period (events can be lost); long, so an idle daemon stays asleep.
    pub full_rescan_interval_ms: u64,
    pub scan: ScanOptions,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce_ms: 500,
            full_rescan_interval_ms: 6 * 3600 * 1000,
            scan: ScanOptions::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Why a scan ran, for the caller's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanCause {
    Start,
    Events,
    Overflow,
    Periodic,
}

/// Scans `roots`, then keeps the index in step with them until `on_scan` breaks.
pub fn watch(
    store: &mut Store,
    roots: &[PathBuf],
    opts: &WatchOptions,
    on_event: &mut dyn FnMut(&ScanEvent),
    on_scan: &mut dyn FnMut(ScanCause, &ScanReport) -> ControlFlow<()>,
) -> Result<(), WatchError> {
    // Canonical paths match the event paths notify reports. A root that cannot be resolved is
    // left to the scan below, which reports it as the caller expects.
    let canonical: Vec<PathBuf> = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect();
    // Watch first, scan second: a photo that lands while the first scan runs, or just after
    // it, is then seen by the watcher instead of being missed until the safety rescan.
    let (tx, rx) = mpsc::channel::<notify::Result<Event>>();
    let mut watcher = notify::recommended_watcher(tx).map_err(|source| WatchError::Watch {
        path: roots.first().cloned().unwrap_or_default(),
        source,
    })?;
    for root in &canonical {
        watcher
            .watch(root, RecursiveMode::Recursive)
            .map_err(|source| WatchError::Watch {
                path: root.clone(),
                source,
            })?;
    }
    let report = scan(store, roots, &opts.scan, on_event)?;
    let roots = canonical;
    if roots.is_empty() {
        return Ok(());
    }
    if on_scan(ScanCause::Start, &report).is_break() {
        return Ok(());
    }
    let period = Duration::from_millis(opts.full_rescan_interval_ms.max(1000));
    let mut next_full = Instant::now() + period;
    let debounce = Duration::from_millis(opts.debounce_ms);
    loop {
        let wait = next_full.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(wait) {
            Ok(r) => Some(r),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        };
        // The batch: every event until the folder has been quiet for the debounce time, but
        // no longer than four of them (a copy that never pauses still gets scanned).
        let periodic = first.is_none();
        let mut batch: Vec<notify::Result<Event>> = first.into_iter().collect();
        let batch_ends = Instant::now() + 4 * debounce;
        if !periodic {
            loop {
                let quiet_for = debounce.min(batch_ends.saturating_duration_since(Instant::now()));
                if quiet_for.is_zero() {
                    break;
                }
                match rx.recv_timeout(quiet_for) {
                    Ok(r) => batch.push(r),
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                }
            }
        }
        let (cause, scopes) = if periodic {
            (ScanCause::Periodic, roots.clone())
        } else if batch.iter().any(|r| match r {
            Ok(e) => e.need_rescan(),
            Err(_) => true,
        }) {
            // A watcher error or a lost event: only a full scan knows what changed.
            (ScanCause::Overflow, roots.clone())
        } else {
            let events: Vec<Event> = batch.into_iter().filter_map(Result::ok).collect();
            let scopes = scopes_for(&roots, changed_paths(&events));
            if scopes.is_empty() {
                continue;
            }
            (ScanCause::Events, scopes)
        };
        if cause != ScanCause::Events {
            next_full = Instant::now() + period;
        }
        let report = match scan(store, &scopes, &opts.scan, on_event) {
            Ok(r) => r,
            // A scope vanished between the event and the scan: rescan what still exists.
            Err(ScanError::RootNotFound(_) | ScanError::RootNotADirectory(_)) => {
                scan(store, &roots, &opts.scan, on_event)?
            }
            Err(e) => return Err(e.into()),
        };
        if on_scan(cause, &report).is_break() {
            return Ok(());
        }
    }
}

/// The paths of events that may change the index. Opening and reading are not changes: the
/// scan itself opens folders and files, so acting on those would rescan forever. A close after
/// writing is kept: it is often the only sign left that a copy has finished.
fn changed_paths(events: &[Event]) -> impl Iterator<Item = &PathBuf> {
    events
        .iter()
        .filter(|e| match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        })
        .flat_map(|e| e.paths.iter())
}

/// The folders to rescan for a set of event paths: each path's nearest existing folder inside
/// a root, with folders inside other chosen folders dropped.
fn scopes_for<'a>(roots: &[PathBuf], paths: impl Iterator<Item = &'a PathBuf>) -> Vec<PathBuf> {
    let mut scopes: Vec<PathBuf> = Vec::new();
    for p in paths {
        let Some(root) = roots.iter().find(|r| p.starts_with(r)) else {
            continue;
        };
        let mut dir: &Path = p;
        // A file's folder; a folder itself; for a deleted path the nearest that still exists.
        loop {
            if dir.is_dir() && (dir != p.as_path() || p.is_dir()) {
                break;
            }
            match dir.parent() {
                Some(parent) if parent.starts_with(root) => dir = parent,
                _ => {
                    dir = root;
                    break;
                }
            }
        }
        scopes.push(dir.to_owned());
    }
    scopes.sort();
    scopes.dedup();
    let mut out: Vec<PathBuf> = Vec::new();
    for s in scopes {
        if !out.iter().any(|o| s.starts_with(o)) {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_collapse_to_nearest_existing_folders() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().to_owned();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::create_dir_all(r.join("c")).unwrap();
        let paths = [
            r.join("a/b/x.jpg"),
            r.join("a/y.jpg"),
            r.join("c"),
            r.join("gone/deeper/z.jpg"),
            PathBuf::from("/elsewhere/q.jpg"),
        ];
        let scopes = scopes_for(std::slice::from_ref(&r), paths.iter());
        // `gone/...` no longer exists: its nearest existing folder is the root, which covers all.
        assert_eq!(scopes, vec![r.clone()]);
        let scopes = scopes_for(std::slice::from_ref(&r), paths[..3].iter());
        assert_eq!(scopes, vec![r.join("a"), r.join("c")]);
    }

    use notify::event::CreateKind;

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn reading_the_library_is_not_a_change() {
        let events = vec![
            event(
                EventKind::Access(AccessKind::Open(AccessMode::Read)),
                "/lib/a.jpg",
            ),
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/lib/a.jpg",
            ),
            event(EventKind::Create(CreateKind::File), "/lib/b.jpg"),
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/lib/c.jpg",
            ),
        ];
        let paths: Vec<_> = changed_paths(&events).collect();
        assert_eq!(
            paths,
            [&PathBuf::from("/lib/b.jpg"), &PathBuf::from("/lib/c.jpg")]
        );
        assert_eq!(changed_paths(&events[..2]).count(), 0);
    }
}
