//! ferry-server: the reference receiving server for Ferry uploads.
//!
//! It speaks the IETF "Resumable Uploads for HTTP" draft (interop versions 3, 5–8, explicit
//! creation, no `104`), tus 1.0 (core, creation, creation-with-upload, creation-defer-length,
//! termination, checksum, expiration) and plain one-request uploads, and stores every finished
//! upload as a content-addressed object (BLAKE3 id, SHA-256 alongside).
//!
//! Data directory layout: `meta.db` (SQLite, WAL), `partial/<upload id>` (uploads in progress,
//! plain files), `blobs/objects/<2 hex>/<blake3 hex>` (finished objects via `object_store`).
//! To scale out, the metadata can live in PostgreSQL ([`Config::database`]) and the objects in
//! an S3 bucket ([`Config::store`]); with an S3 store, unfinished uploads live in the bucket
//! too (`uploads/remote.rs`), so any instance continues any upload.
//!
//! Embedding: `Server::start(Config::new(dir, "127.0.0.1:0".parse()?)).await?.local_addr()`.

pub mod accounts;
pub mod backend;
pub mod blobs;
pub mod error;
mod failpoint;
pub mod http;
pub mod listen;
pub mod meta;
pub mod sf;
pub mod uploads;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use backend::{DatabaseUrl, StoreUrl, UrlError};
pub use listen::{TlsError, TlsFiles, certificate_sha256};
pub use uploads::Limits;

#[derive(Clone)]
pub struct Config {
    /// Unfinished uploads' partial files, and by default the metadata and the objects.
    pub data_dir: PathBuf,
    /// The metadata database: `sqlite:PATH` or `postgres://…` (see [`DatabaseUrl`]);
    /// `None`: `meta.db` in the data directory.
    pub database: Option<String>,
    /// Where finished objects go: `file:DIR` or `s3://BUCKET[/PREFIX]` (see [`StoreUrl`]);
    /// `None`: `blobs` in the data directory.
    pub store: Option<String>,
    /// The `AWS_*` settings an `s3://` store is configured from; `None`: this process's
    /// environment (what `ferry-server serve` uses). Lets an embedding program, or a test,
    /// configure a store without changing its environment.
    pub store_env: Option<BTreeMap<String, String>>,
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
            database: None,
            store: None,
            store_env: None,
            data_mode: DEFAULT_DATA_MODE,
            listen,
            open: false,
            limits: Limits {
                max_size_bytes: 64 << 30,
                max_append_size_bytes: 64 << 30,
                max_age: Duration::from_secs(24 * 3600),
                body_idle_timeout: Duration::from_secs(60),
                lease_ttl: Duration::from_secs(30),
            },
            gc_interval: Duration::from_secs(60),
            tls: None,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// A `Config` as it may be logged: the database URL without its password, and the names of
/// the store settings without their values (they hold the secret key).
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field(
                "database",
                &self.database.as_deref().map(backend::redact_url),
            )
            .field("store", &self.store)
            .field(
                "store_env",
                &self
                    .store_env
                    .as_ref()
                    .map(|e| e.keys().collect::<Vec<_>>()),
            )
            .field("data_mode", &self.data_mode)
            .field("listen", &self.listen)
            .field("open", &self.open)
            .field("limits", &self.limits)
            .field("gc_interval", &self.gc_interval)
            .field("tls", &self.tls)
            .field("header_read_timeout", &self.header_read_timeout)
            .finish()
    }
}

/// Why a server (or a `user`/`token` command) could not start. Nothing is left half-started:
/// the server listens only once the database and the store have both answered.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("database URL {0}")]
    DatabaseUrl(UrlError),
    #[error("store URL {0}")]
    StoreUrl(UrlError),
    /// Opening or migrating the database failed (`url` and `detail` hold no password).
    #[error("metadata database {url}: {detail}")]
    Database { url: String, detail: String },
    #[error("metadata database: {0}")]
    Meta(#[from] sqlx::Error),
    #[error("object store {url}: bucket {bucket:?} does not exist ({detail})")]
    StoreBucketMissing {
        url: String,
        bucket: String,
        detail: String,
    },
    #[error(
        "object store {url}: access denied; check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and \
         the bucket's policy ({detail})"
    )]
    StoreDenied { url: String, detail: String },
    #[error("object store {url}: unreachable; check AWS_ENDPOINT_URL ({detail})")]
    StoreUnreachable { url: String, detail: String },
    #[error("object store {url}: {detail}")]
    Store { url: String, detail: String },
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

async fn open_engine(
    config: &Config,
    database: &DatabaseUrl,
    store: &StoreUrl,
) -> Result<uploads::Engine, StartError> {
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
    // The store first: its probe opens nothing that would need closing when it fails.
    let blobs = store.open(config.store_env.as_ref()).await?;
    let meta = database.open().await?;
    let engine = uploads::Engine::new(meta, blobs, dir.join("partial"), config.limits.clone())
        .map_err(|e| StartError::DataDir(dir.clone(), e))?;
    if let Some(key) = engine.instance_key() {
        // Other instances see this one alive while it holds this lock (see `meta.rs`).
        engine.meta.hold_instance_lock(key).await?;
    }
    // Other instances ask this one to stop an append when a newer request for its upload
    // reached them (see `Engine::append`).
    let in_flight = engine.in_flight();
    engine
        .meta
        .listen_for_stops(move |id| uploads::request_stop(&in_flight, id))
        .await?;
    Ok(engine)
}

/// Entry point for embedding the server in-process.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Binds, starts serving and the expiry collector, and returns at once.
    pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
        // The URLs and TLS files are read first: a typo or a bad certificate fails the start
        // before anything is opened.
        let database = backend::database_url(&config.data_dir, config.database.as_deref())?;
        let store = backend::store_url(&config.data_dir, config.store.as_deref())?;
        let tls = config.tls.as_ref().map(listen::tls_acceptor).transpose()?;
        let engine = open_engine(&config, &database, &store).await?;
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
        tracing::info!(%local_addr, scheme, auth = !config.open, %database, %store, "ferry-server listening");
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

    /// How many store intents the metadata holds (see `uploads/remote.rs`): zero once every
    /// unfinished upload's leftovers are collected.
    pub async fn intent_count(&self) -> Result<i64, error::ApiError> {
        Ok(self.state.engine.meta.intent_count().await?)
    }

    /// Bytes received so far by the append running on upload `id`, when the store is remote
    /// (a local store's partial file shows it). For tests that must know a body arrived.
    pub fn bytes_in_flight(&self, id: &str) -> Option<u64> {
        self.state.engine.bytes_in_flight(id)
    }

    /// Every object id the store holds (see [`blobs::Blobs::object_ids`]).
    pub async fn stored_object_ids(&self) -> Result<Vec<String>, error::ApiError> {
        Ok(self.state.engine.blobs.object_ids().await?)
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
    create_token_in(data_dir, None, name).await
}

/// [`create_token`] in the metadata database `database` (see [`Config::database`]).
pub async fn create_token_in(
    data_dir: &Path,
    database: Option<&str>,
    name: &str,
) -> Result<String, StartError> {
    let database = backend::database_url(data_dir, database)?;
    // A new data directory is created private; an existing one keeps its mode (`serve` sets it).
    if !data_dir.exists() {
        ensure_data_dir(data_dir, DEFAULT_DATA_MODE)
            .map_err(|e| StartError::DataDir(data_dir.into(), e))?;
    }
    let meta = database.open().await?;
    let (token, hash) = accounts::new_token();
    // The implicit default user's (see `accounts` for tokens of named users).
    meta.add_token(meta::DEFAULT_USER_ID, name, &hash, uploads::now_unix_ms())
        .await?;
    meta.close().await;
    Ok(token)
}
