//! `ferry daemon`: the long-lived process. It watches the configured folders, runs every
//! installed and enabled extension when it has work and the conditions allow, sends their
//! jobs ([`crate::run`], the loop `ferry backup` uses too), and serves the control API on a
//! Unix socket. One daemon per state folder (a lock file), and SIGTERM/SIGINT or
//! `POST /v1/stop` end it cleanly.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::backup::{self, BackupError, Progress, Target};
use crate::control::{self, ControlState};
use crate::extension::{self, BundledConsent};
use crate::run::RunOptions;

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub folders: Vec<PathBuf>,
    /// The person's extensions folder.
    pub extensions_dir: PathBuf,
    /// The bundled extension's server, when one is configured (`--to`, `[server]`). `None`:
    /// the built-in server, unless another extension is enabled (then the bundled one does
    /// not run: the person backs up through their own extensions).
    pub target: Option<Target>,
    pub policy: Option<ferry_core::Policy>,
    pub observer: ferry_conditions::ObserverConfig,
    pub max_concurrent: usize,
    /// The dashboard's loopback port; 0: an ephemeral one, chosen when it starts.
    pub dashboard_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon holds the state folder's lock; there is nothing to do.
    #[error("another ferry daemon already runs on {0} (see `ferry status`)")]
    AlreadyRunning(PathBuf),
    #[error(
        "no folders to back up: add them to the configuration ([library] folders = [\"~/Pictures\"], see `ferry config path`) or pass --folder"
    )]
    NoFolders,
    #[error("cannot take the lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the control socket in {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Backup(#[from] BackupError),
}

/// The lock file: held (flock) for the daemon's lifetime; released by the kernel on any exit,
/// `kill -9` included, so a crash never leaves a stale lock.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    pub fn take(state_dir: &std::path::Path) -> Result<StateLock, DaemonError> {
        let path = state_dir.join("daemon.lock");
        let err = |source| DaemonError::Lock {
            path: path.clone(),
            source,
        };
        crate::config::prepare_state_dir(state_dir).map_err(err)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(ferry_store::private::FILE_MODE)
            .open(&path)
            .map_err(err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DaemonError::AlreadyRunning(state_dir.to_owned()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
        }
        // The pid, for people; the lock is what counts.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(StateLock { _file: file })
    }
}

/// Whether an extension other than the bundled one is installed and enabled.
fn other_extension_enabled(opts: &DaemonOptions) -> Result<bool, DaemonError> {
    let store = ferry_store::Store::open(&opts.state_dir.join("ferry.db")).map_err(|e| {
        BackupError::State {
            dir: opts.state_dir.clone(),
            detail: e.to_string(),
        }
    })?;
    let config = ferry_host::HostConfig::new(opts.extensions_dir.clone(), opts.state_dir.clone());
    let (installed, _) = ferry_host::manifest::load_dirs(&config.manifest_dirs());
    let consents = store.consents().map_err(BackupError::from)?;
    Ok(consents.iter().any(|c| {
        c.is_enabled() && c.id != extension::EXTENSION && installed.iter().any(|m| m.id == c.id)
    }))
}

/// Runs the daemon until `stop` turns true (the caller wires signals to it).
pub async fn run(
    opts: DaemonOptions,
    progress: Arc<Progress>,
    stop: watch::Sender<bool>,
) -> Result<(), DaemonError> {
    if opts.folders.is_empty() {
        return Err(DaemonError::NoFolders);
    }
    let _lock = StateLock::take(&opts.state_dir)?;
    // Create or upgrade the database before anyone else opens it (the control API's readers).
    ferry_store::Store::open(&opts.state_dir.join("ferry.db")).map_err(|e| BackupError::State {
        dir: opts.state_dir.clone(),
        detail: e.to_string(),
    })?;
    let bundled = match &opts.target {
        Some(t) => Some(t.clone()),
        None if other_extension_enabled(&opts)? => {
            tracing::info!(
                "no server configured and other extensions are enabled: the bundled extension does not run"
            );
            None
        }
        None => Some(Target::Embedded),
    };
    let extensions_changed = Arc::new(tokio::sync::Notify::new());
    let listener = control::bind(&opts.runtime_dir).map_err(|source| DaemonError::Socket {
        path: opts.runtime_dir.clone(),
        source,
    })?;
    let state = ControlState {
        db_path: opts.state_dir.join("ferry.db"),
        progress: progress.clone(),
        stop: stop.clone(),
        started_ms: backup::now_ms(),
        folders: opts.folders.clone(),
        extensions_changed: extensions_changed.clone(),
        extensions_dir: opts.extensions_dir.clone(),
        dashboard: crate::dashboard::Dashboard::new(crate::dashboard::DashboardConfig {
            state_dir: opts.state_dir.clone(),
            extensions_dir: opts.extensions_dir.clone(),
            progress: progress.clone(),
            extensions_changed: extensions_changed.clone(),
            stop: stop.subscribe(),
            port: opts.dashboard_port,
        }),
    };
    let mut serve_stop = stop.subscribe();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = serve_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, control::router(state))
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "control API stopped");
        }
    });
    tracing::info!(folders = ?opts.folders, "ferry daemon running");
    let result = crate::run::run(
        RunOptions {
            dirs: opts.folders.clone(),
            state_dir: opts.state_dir.clone(),
            extensions_dir: opts.extensions_dir.clone(),
            bundled: bundled.map(|t| (t, BundledConsent::UnlessRevoked)),
            only_bundled: false,
            policy: opts.policy.clone(),
            observer: opts.observer.clone(),
            max_concurrent: opts.max_concurrent,
            watch: true,
            extensions_changed,
        },
        progress,
        stop.subscribe(),
    )
    .await;
    let _ = stop.send(true);
    let _ = server.await;
    let _ = std::fs::remove_file(opts.runtime_dir.join(control::SOCKET_NAME));
    match result {
        Ok(summary) => {
            tracing::info!(
                verified = summary.verified,
                resources = summary.resources,
                "ferry daemon stopped"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
