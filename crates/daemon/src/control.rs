//! The daemon's control API: HTTP/1.1 + JSON on a Unix socket (mode 0600) in the runtime
//! folder, for the `ferry` commands. Documented in docs/control-api.md. Also the client side:
//! a minimal blocking HTTP/1.1 client over the socket (one request per connection), so the
//! CLI needs no async runtime to ask.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ferry_core::job::JobState;
use ferry_store::{JobFilter, JobStore, Store};
use serde::Deserialize;
use tokio::sync::watch;

use crate::backup::Progress;
use crate::report;

/// The socket's file name in the runtime folder.
pub const SOCKET_NAME: &str = "control.sock";

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct ControlState {
    pub db_path: PathBuf,
    pub progress: Arc<Progress>,
    pub stop: watch::Sender<bool>,
    pub started_ms: i64,
    pub folders: Vec<PathBuf>,
    /// Notified by `POST /v1/wake` (`ferry extensions enable/disable` after a consent change).
    pub extensions_changed: Arc<tokio::sync::Notify>,
    /// The person's extensions folder (for the extensions' call records in the status).
    pub extensions_dir: PathBuf,
    /// The web dashboard, started by `POST /v1/dashboard/login`.
    pub dashboard: Arc<crate::dashboard::Dashboard>,
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

/// The page cache of a report's connection.
const REPORT_PAGE_CACHE_KIB: u32 = 2048;

/// Runs `f` on a fresh read connection off the async threads.
async fn with_store<T: serde::Serialize + Send + 'static>(
    s: &ControlState,
    f: impl FnOnce(&Store) -> Result<T, report::ReportError> + Send + 'static,
) -> Response {
    let path = s.db_path.clone();
    let r = tokio::task::spawn_blocking(move || {
        let store = Store::open(&path).map_err(report::ReportError::from)?;
        // A report pages through every job and resource: small pages suffice.
        store
            .set_page_cache_kib(REPORT_PAGE_CACHE_KIB)
            .map_err(report::ReportError::from)?;
        let r = f(&store);
        drop(store);
        // What the report read is freed now; give it back rather than keep it resident in an
        // otherwise idle daemon.
        crate::release_free_memory();
        r
    })
    .await;
    match r {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e @ report::ReportError::NoSuchAsset(_))) => {
            problem(StatusCode::NOT_FOUND, e.to_string())
        }
        Ok(Err(e)) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn status(State(s): State<ControlState>) -> Response {
    let decision = s.progress.decision();
    let daemon = serde_json::json!({
        "pid": std::process::id(),
        "started_ms": s.started_ms,
        "folders": s.folders.iter().map(|f| ferry_core::path_text::display(f)).collect::<Vec<_>>(),
        "server_url": s.progress.server_url(),
        "progress": s.progress.snapshot(),
    });
    let state_dir = s.db_path.parent().map(Path::to_owned).unwrap_or_default();
    let extensions_dir = s.extensions_dir.clone();
    with_store(&s, move |store| {
        let mut st = report::status(store, decision, crate::backup::now_ms())?;
        st.daemon = Some(daemon);
        st.extension_calls = report::extension_calls(&state_dir, &extensions_dir);
        Ok(st)
    })
    .await
}

async fn why(State(s): State<ControlState>, UrlPath(asset): UrlPath<String>) -> Response {
    let decision = s.progress.decision();
    with_store(&s, move |store| {
        report::why(store, &asset, decision, crate::backup::now_ms())
    })
    .await
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    state: Option<String>,
    extension: Option<String>,
    limit: Option<usize>,
}

async fn jobs(State(s): State<ControlState>, Query(q): Query<JobsQuery>) -> Response {
    let state = match q.state.as_deref().map(JobState::from_name) {
        None => None,
        Some(Some(st)) => Some(st),
        Some(None) => return problem(StatusCode::BAD_REQUEST, "unknown job state"),
    };
    with_store(&s, move |store| {
        Ok(store
            .jobs(&JobFilter {
                state,
                extension: q.extension,
                limit: q.limit.unwrap_or(0),
                ..JobFilter::default()
            })?
            .into_iter()
            .map(ferry_core::Job::redacted)
            .collect::<Vec<_>>())
    })
    .await
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn history(State(s): State<ControlState>, Query(q): Query<HistoryQuery>) -> Response {
    with_store(&s, move |store| {
        Ok(report::history(
            store,
            q.limit.unwrap_or(100),
            q.offset.unwrap_or(0),
        )?)
    })
    .await
}

/// Consent or the installed extensions changed: the host looks again now.
async fn wake(State(s): State<ControlState>) -> Response {
    s.extensions_changed.notify_one();
    axum::Json(serde_json::json!({ "woken": true })).into_response()
}

/// Starts the dashboard's web listener if it is not running and mints a one-time login URL.
async fn dashboard_login(State(s): State<ControlState>) -> Response {
    match s.dashboard.login_url().await {
        Ok(u) => axum::Json(u).into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn stop(State(s): State<ControlState>) -> Response {
    let _ = s.stop.send(true);
    axum::Json(serde_json::json!({ "stopping": true })).into_response()
}

pub fn router(state: ControlState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/why/{asset}", get(why))
        .route("/v1/jobs", get(jobs))
        .route("/v1/history", get(history))
        .route("/v1/stop", post(stop))
        .route("/v1/wake", post(wake))
        .route("/v1/dashboard/login", post(dashboard_login))
        .with_state(state)
}

/// Binds the socket (replacing a stale one), mode 0600 in a 0700 folder.
pub fn bind(runtime_dir: &Path) -> std::io::Result<tokio::net::UnixListener> {
    crate::config::prepare_private_dir(runtime_dir)?;
    let path = runtime_dir.join(SOCKET_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens there (no socket, or a stale one).
    #[error("no daemon is running (no answer on {0})")]
    NotRunning(PathBuf),
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon answered something that is not HTTP")]
    BadAnswer,
}

/// One request to the daemon; returns the status code and the body.
pub fn request(
    socket: &Path,
    method: &str,
    path_and_query: &str,
) -> Result<(u16, String), ClientError> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning(socket.to_owned()));
        }
        Err(e) => return Err(e.into()),
    };
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path_and_query} HTTP/1.1\r\nHost: ferry\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(ClientError::BadAnswer)?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(ClientError::BadAnswer)?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// Undoes HTTP/1.1 chunked framing; stops at the last chunk or at anything malformed.
fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&s[..eol]);
        let size = size.split(';').next().unwrap_or("").trim();
        let Ok(n) = usize::from_str_radix(size, 16) else {
            break;
        };
        let rest = &s[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}
