//! ferry-server: the reference receiving server for Ferry uploads.
//!
//! It speaks the IETF "Resumable Uploads for HTTP" draft (interop versions 3, 5–8, explicit
//! creation, no `104`), tus 1.0 (core, creation, creation-with-upload, creation-defer-length,
//! termination, checksum, expiration) and plain one-request uploads, and stores every finished
//! upload as a content-addressed object (BLAKE3 id, SHA-256 alongside).
//!
//! Data directory layout: `meta.db` (SQLite, WAL), `partial/<upload id>` (uploads in progress,
//! plain files), `blobs/objects/<2 hex>/<blake3 hex>` (finished objects via `object_store`).
//!
//! Embedding: `Server::start(Config::new(dir, "127.0.0.1:0".parse()?)).await?.local_addr()`.

pub mod accounts;
pub mod blobs;
pub mod error;
pub mod http;
pub mod listen;
pub mod meta;
pub mod sf;
pub mod uploads;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use listen::{TlsError, TlsFiles, certificate_sha256};
pub use uploads::Limits;

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The data directory's mode ([`DEFAULT_DATA_MODE`], the owner's alone): it holds a copy
    /// of every upload. Created with it, and set to it at start when it differs.
    pub data_mode: u32,
    pub listen: SocketAddr,
    /// Accept requests without a bearer token (loopback demos only).
    pub open: bool,
    pub limits: Limits,
    /// How often expired uploads are collected.
    pub gc_interval: Duration,
    /// Serve https with this certificate and key; `None`: plain http.
    pub tls: Option<TlsFiles>,
    /// A client must send a request's headers (and finish a TLS handshake) within this long,
    /// or its connection is closed: idle and half-open connections cannot pile up.
    pub header_read_timeout: Duration,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Config {
        Config {
            data_dir: data_dir.into(),
            data_mode: DEFAULT_DATA_MODE,
            listen,
            open: false,
            limits: Limits {
                max_size_bytes: 64 << 30,
                max_append_size_bytes: 64 << 30,
                max_age: Duration::from_secs(24 * 3600),
                body_idle_timeout: Duration::from_secs(60),
            },
            gc_interval: Duration::from_secs(60),
            tls: None,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("metadata database: {0}")]
    Meta(#[from] sqlx::Error),
    #[error("blob store: {0}")]
    Blobs(#[from] blobs::BlobError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The data directory's mode unless told otherwise: its owner's alone (`0700`).
pub const DEFAULT_DATA_MODE: u32 = 0o700;

/// Creates the data directory `dir` (and missing parents) with `mode`, or sets an existing
/// one's mode to `mode`. Returns the old mode when it changed one.
pub fn ensure_data_dir(dir: &Path, mode: u32) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)?;
            std::fs::metadata(dir)?
        }
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    // Set explicitly: the umask may have taken bits `mode` asks for.
    let old = meta.permissions().mode() & 0o7777;
    if old == mode {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    Ok(Some(old))
}

async fn open_engine(config: &Config) -> Result<uploads::Engine, StartError> {
    let dir = &config.data_dir;
    let existed = dir.exists();
    match ensure_data_dir(dir, config.data_mode) {
        Ok(Some(old)) if existed => tracing::warn!(
            "{} permissions of {} from {old:04o} to {:04o}",
            if old & !config.data_mode == 0 {
                "set"
            } else {
                "tightened"
            },
            dir.display(),
            config.data_mode
        ),
        Ok(_) => {}
        Err(e) => return Err(StartError::DataDir(dir.clone(), e)),
    }
    let meta = meta::Meta::open(Some(&dir.join("meta.db"))).await?;
    let blobs = blobs::Blobs::local(&dir.join("blobs"))?;
    uploads::Engine::new(meta, blobs, dir.join("partial"), config.limits.clone())
        .map_err(|e| StartError::DataDir(dir.clone(), e))
}

/// Entry point for embedding the server in-process.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Binds, starts serving and the expiry collector, and returns at once.
    pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
        // TLS files are read first: a bad certificate fails the start before anything is opened.
        let tls = config.tls.as_ref().map(listen::tls_acceptor).transpose()?;
        let engine = open_engine(&config).await?;
        let state = Arc::new(http::AppState {
            engine,
            auth_required: !config.open,
        });
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Listen(config.listen, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen(config.listen, e))?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let app = http::router(state.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let serve = tokio::spawn(listen::serve(
            listener,
            app,
            tls,
            config.header_read_timeout,
            stop_rx,
        ));
        let gc_state = state.clone();
        let gc_interval = config.gc_interval;
        let gc = tokio::spawn(async move {
            // The first collection one interval after start, not at once: an expired upload
            // is refused (410) until then anyway, and a collection racing the first requests
            // would turn that answer into a 404 at random.
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + gc_interval, gc_interval);
            loop {
                tick.tick().await;
                match gc_state
                    .engine
                    .collect_expired(uploads::now_unix_ms())
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(collected = n, "expired uploads removed"),
                    Err(e) => tracing::warn!(error = %e, "expiry collection failed"),
                }
            }
        });
        tracing::info!(%local_addr, scheme, auth = !config.open, "ferry-server listening");
        Ok(ServerHandle {
            local_addr,
            scheme,
            stop: Some(stop_tx),
            serve,
            gc,
            state,
        })
    }
}

/// A running server; dropping it leaves it running until the runtime ends.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    scheme: &'static str,
    stop: Option<oneshot::Sender<()>>,
    serve: JoinHandle<()>,
    gc: JoinHandle<()>,
    state: Arc<http::AppState>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://ADDR` (or `https://ADDR`), for building request URLs.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.local_addr)
    }

    /// Runs one expiry collection as if the clock read `now_unix_ms` (tests use a future time
    /// instead of sleeping). Returns how many uploads were removed.
    pub async fn collect_expired_at(&self, now_unix_ms: i64) -> Result<usize, error::ApiError> {
        self.state.engine.collect_expired(now_unix_ms).await
    }

    /// Stops accepting connections, lets requests in flight finish, closes the database.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.gc.abort();
        let _ = (&mut self.serve).await;
        self.state.engine.meta.close().await;
    }

    /// Waits until the server task ends (it ends only on `shutdown` or a fatal error).
    pub async fn wait(&mut self) {
        let _ = (&mut self.serve).await;
    }
}

/// Creates a device token of the default user in `data_dir` and returns it; only its SHA-256 is
/// stored, so the caller must show it now or never.
pub async fn create_token(data_dir: &Path, name: &str) -> Result<String, StartError> {
    // A new data directory is created private; an existing one keeps its mode (`serve` sets it).
    if !data_dir.exists() {
        ensure_data_dir(data_dir, DEFAULT_DATA_MODE)
            .map_err(|e| StartError::DataDir(data_dir.into(), e))?;
    }
    let meta = meta::Meta::open(Some(&data_dir.join("meta.db"))).await?;
    let (token, hash) = accounts::new_token();
    // The implicit default user's (see `accounts` for tokens of named users).
    meta.add_token(meta::DEFAULT_USER_ID, name, &hash, uploads::now_unix_ms())
        .await?;
    meta.close().await;
    Ok(token)
}
