//! The dashboard: a web page on loopback, served by the daemon, that answers "are my photos
//! safe?" at a glance and lets the person grant, limit and revoke consent. It is started on
//! demand through the control socket (`POST /v1/dashboard/login`), which also mints the one-time
//! login URL; the login swaps it for a session cookie kept in memory only.
//!
//! **Security** (docs/control-api.md, issue 22): the Host header must name our loopback address
//! and port (DNS rebinding gets 421); every page needs a session (else 401); a POST needs our
//! Origin (or `null` beside `Sec-Fetch-Site: same-origin`, see `extension_action`),
//! `Sec-Fetch-Site: same-origin` when sent, and the session's CSRF token (else 403);
//! every response carries a strict Content-Security-Policy; every string from the library or an
//! extension is HTML-escaped ([`html::esc`]). Cookies are shared by every port of 127.0.0.1, so
//! another local user's server could be handed our cookie: every request is refused (403) unless
//! the socket it came from belongs to the daemon's own user ([`peer`]). Sessions end after
//! [`SESSION_IDLE`] unused or [`SESSION_MAX`] in all, and a live update stream ends with its
//! session.

pub mod html;
pub mod peer;
pub mod thumbs;
pub mod view;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Form, Query, Request, State, rejection::FormRejection};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::watch;

use crate::backup::Progress;

/// How long a login URL may be used.
pub const LOGIN_TTL: Duration = Duration::from_secs(60);
/// Live updates are sent at most this often: a burst of changes becomes one event.
const COALESCE: Duration = Duration::from_millis(250);
/// Sessions kept at most; the oldest goes first (each needs a `ferry dashboard` to make).
const MAX_SESSIONS: usize = 64;
/// Unused login tokens kept at most.
const MAX_LOGINS: usize = 64;
/// A session unused this long ends (a tab left open with live updates does not count as use).
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// A session ends this long after the login, used or not.
pub const SESSION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// Every response's security headers.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("static/dashboard.css");
const JS: &str = include_str!("static/dashboard.js");

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("cannot start the dashboard's listener on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no random bytes for a token: {0}")]
    Random(String),
}

/// What the dashboard reads and acts on: the daemon's own state.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub state_dir: PathBuf,
    pub extensions_dir: PathBuf,
    pub progress: Arc<Progress>,
    /// Notified after a consent change, as `POST /v1/wake` does.
    pub extensions_changed: Arc<tokio::sync::Notify>,
    pub stop: watch::Receiver<bool>,
    /// The port to listen on; 0: an ephemeral one.
    pub port: u16,
}

/// A 256-bit random token as 64 hex digits.
pub fn random_token() -> Result<String, DashboardError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| DashboardError::Random(e.to_string()))?;
    Ok(ferry_store::library::hex(&b))
}

/// One-time login tokens: each redeemable once, before it expires.
#[derive(Debug, Default)]
pub struct Logins {
    tokens: HashMap<String, Instant>,
}

impl Logins {
    /// Remembers `token` until `now + LOGIN_TTL`.
    pub fn add(&mut self, token: String, now: Instant) {
        self.tokens.retain(|_, exp| *exp > now);
        if self.tokens.len() >= MAX_LOGINS
            && let Some(oldest) = self
                .tokens
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(t, _)| t.clone())
        {
            self.tokens.remove(&oldest);
        }
        self.tokens.insert(token, now + LOGIN_TTL);
    }

    /// Whether `token` was a live login token; it is used up either way.
    pub fn redeem(&mut self, token: &str, now: Instant) -> bool {
        let ok = self.tokens.remove(token).is_some_and(|exp| exp > now);
        self.tokens.retain(|_, exp| *exp > now);
        ok
    }
}

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    created: Instant,
    /// The last page or form that used it (not live updates: they run unattended).
    last_used: Instant,
}

impl Session {
    /// When it ends unless used again.
    fn expires(&self) -> Instant {
        (self.last_used + SESSION_IDLE).min(self.created + SESSION_MAX)
    }

    /// Whether it is still live at `now`.
    fn live(&self, now: Instant) -> bool {
        now < self.expires()
    }
}

/// The dashboard's state, shared by the control API (which starts it) and its web handlers.
#[derive(Debug)]
pub struct Dashboard {
    config: DashboardConfig,
    /// The listener's port, once started.
    port: OnceLock<u16>,
    start: tokio::sync::Mutex<()>,
    logins: Mutex<Logins>,
    sessions: Mutex<HashMap<String, Session>>,
    /// Bumped whenever a session is removed, so live update streams look at theirs again.
    sessions_changed: watch::Sender<u64>,
    /// The cookie's name: per state folder, since cookies are not isolated by port.
    cookie: String,
    rate: Arc<Mutex<view::RateMeter>>,
    thumbs: thumbs::Thumbs,
}

/// What `POST /v1/dashboard/login` answers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoginUrl {
    pub url: String,
    pub port: u16,
    pub expires_in_s: u64,
}

impl Dashboard {
    pub fn new(config: DashboardConfig) -> Arc<Dashboard> {
        let id = blake3::hash(config.state_dir.as_os_str().as_encoded_bytes()).to_hex();
        Arc::new(Dashboard {
            cookie: format!("ferry_session_{}", &id[..12]),
            thumbs: thumbs::Thumbs::new(&config.state_dir),
            config,
            port: OnceLock::new(),
            start: tokio::sync::Mutex::new(()),
            logins: Mutex::default(),
            sessions: Mutex::default(),
            sessions_changed: watch::Sender::new(0),
            rate: Arc::default(),
        })
    }

    fn port(&self) -> u16 {
        self.port.get().copied().unwrap_or(0)
    }

    /// Starts the web listener unless it runs, and mints a one-time login URL.
    pub async fn login_url(self: &Arc<Self>) -> Result<LoginUrl, DashboardError> {
        let port = self.ensure_started().await?;
        let token = random_token()?;
        self.logins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(token.clone(), Instant::now());
        Ok(LoginUrl {
            url: format!("http://127.0.0.1:{port}/login?token={token}"),
            port,
            expires_in_s: LOGIN_TTL.as_secs(),
        })
    }

    async fn ensure_started(self: &Arc<Self>) -> Result<u16, DashboardError> {
        let _one = self.start.lock().await;
        if let Some(p) = self.port.get() {
            return Ok(*p);
        }
        let addr = format!("127.0.0.1:{}", self.config.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| DashboardError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| DashboardError::Bind { addr, source })?
            .port();
        let _ = self.port.set(port);
        let mut stop = self.config.stop.clone();
        // With each connection's peer address, for the check of whose socket it is (`guard`).
        let app = router(self.clone()).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "dashboard stopped");
            }
        });
        tracing::info!(port, "dashboard listening on 127.0.0.1");
        Ok(port)
    }

    fn new_session(&self) -> Result<(String, Session), DashboardError> {
        let id = random_token()?;
        let now = Instant::now();
        let s = Session {
            csrf: random_token()?,
            created: now,
            last_used: now,
        };
        let mut all = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, s| s.live(now));
        if all.len() >= MAX_SESSIONS
            && let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
        {
            all.remove(&oldest);
        }
        all.insert(id.clone(), s.clone());
        Ok((id, s))
    }

    /// The request's session if it is live, marked as used now.
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie_value(headers, &self.cookie)?;
        self.session_by_id(&id, Instant::now(), true)
    }

    /// Session `id` if live at `now` (an expired one is removed); `touch` marks it used.
    fn session_by_id(&self, id: &str, now: Instant, touch: bool) -> Option<Session> {
        let mut all = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let s = all.get_mut(id)?;
        if !s.live(now) {
            all.remove(id);
            drop(all);
            self.sessions_changed.send_modify(|n| *n += 1);
            return None;
        }
        if touch {
            s.last_used = now;
        }
        Some(s.clone())
    }

    fn end_session(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        // Live update streams of this session end now.
        self.sessions_changed.send_modify(|n| *n += 1);
    }
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Whether a Host header names us: exactly our loopback address or `localhost`, with our port.
pub fn host_allowed(host: &str, port: u16) -> bool {
    host == format!("127.0.0.1:{port}") || host == format!("localhost:{port}")
}

/// Equal in time independent of where they differ (the CSRF token).
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn router(d: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login))
        .route("/events", get(events))
        .route("/why", get(why))
        .route("/thumb/{id}", get(thumb))
        .route("/extensions/{action}", post(extension_action))
        .route("/logout", post(logout))
        .route("/static/dashboard.css", get(css))
        .route("/static/dashboard.js", get(js))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(d.clone(), guard))
        .with_state(d)
}

/// Refuses a connection from another user's socket (cookies are shared by every port of
/// 127.0.0.1) and any Host but ours (DNS rebinding), and puts the security headers on every
/// answer.
async fn guard(State(d): State<Arc<Dashboard>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let ours = SocketAddr::from(([127, 0, 0, 1], d.port()));
    // Fails closed: a peer that cannot be found (no /proc, another network namespace) is refused.
    let same_user = peer.is_some_and(|p| {
        peer::socket_uid(p, ours).is_some_and(|uid| Some(uid) == peer::effective_uid())
    });
    let host_ok = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| host_allowed(h, d.port()));
    let mut resp = if !same_user {
        page(
            StatusCode::FORBIDDEN,
            "Another user's dashboard",
            "<p>Refused: this dashboard belongs to another user of this computer; only the user who runs the Ferry daemon may open it.</p>",
        )
    } else if host_ok {
        next.run(req).await
    } else {
        page(
            StatusCode::MISDIRECTED_REQUEST,
            "Wrong address",
            "<p>This dashboard answers only at its loopback address. Run <code>ferry dashboard</code> to open it.</p>",
        )
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// A whole HTML page; `body` is markup (callers escape what goes in it).
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    (status, Html(html::document(title, body))).into_response()
}

fn no_session() -> Response {
    page(
        StatusCode::UNAUTHORIZED,
        "Not signed in",
        "<p>This browser has no dashboard session (or it ended when the daemon restarted). To open the dashboard, run `ferry dashboard` again.</p>",
    )
}

fn forbidden(why: &str) -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Refused",
        &format!(
            "<p>Refused: {}. Nothing was changed. <a href=\"/\">Back to the dashboard</a></p>",
            html::esc(why)
        ),
    )
}

async fn not_found() -> Response {
    page(StatusCode::NOT_FOUND, "Not found", "<p>No such page.</p>")
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        CSS.to_owned(),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS.to_owned(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

/// Swaps a one-time token for a session cookie, then sends the browser to `/` so the token
/// leaves the address bar.
async fn login(State(d): State<Arc<Dashboard>>, Query(q): Query<LoginQuery>) -> Response {
    let ok = q.token.is_some_and(|t| {
        d.logins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .redeem(&t, Instant::now())
    });
    if !ok {
        return page(
            StatusCode::UNAUTHORIZED,
            "Login link used or expired",
            "<p>This login link was already used, has expired (it lasts 60 seconds), or is wrong. For a new one, run `ferry dashboard` again.</p>",
        );
    }
    let (id, _) = match d.new_session() {
        Ok(s) => s,
        Err(e) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                &format!("<p>{}</p>", html::esc(&e.to_string())),
            );
        }
    };
    let cookie = format!(
        "{}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        d.cookie,
        SESSION_MAX.as_secs()
    );
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn index(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let Some(session) = d.session(&headers) else {
        return no_session();
    };
    let cfg = d.config.clone();
    let rate = d.rate.clone();
    match tokio::task::spawn_blocking(move || view::View::load(&cfg, &rate)).await {
        Ok(Ok(v)) => (StatusCode::OK, Html(html::dashboard(&v, &session.csrf))).into_response(),
        Ok(Err(e)) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error",
            &format!(
                "<p>Cannot read Ferry's state: {}</p>",
                html::esc(&e.to_string())
            ),
        ),
        Err(e) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error",
            &format!("<p>{}</p>", html::esc(&e.to_string())),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct WhyQuery {
    asset: Option<String>,
}

/// `ferry why ASSET` as a page.
async fn why(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(q): Query<WhyQuery>,
) -> Response {
    if d.session(&headers).is_none() {
        return no_session();
    }
    let Some(asset) = q.asset else {
        return page(
            StatusCode::BAD_REQUEST,
            "Which photo?",
            "<p>No asset named. <a href=\"/\">Back to the dashboard</a></p>",
        );
    };
    let db = d.config.state_dir.join("ferry.db");
    let decision = d.config.progress.decision();
    let r = tokio::task::spawn_blocking(move || {
        let store = ferry_store::Store::open(&db)?;
        crate::report::why(&store, &asset, decision, crate::backup::now_ms())
    })
    .await;
    match r {
        Ok(Ok(w)) => (StatusCode::OK, Html(html::why_page(&w))).into_response(),
        Ok(Err(e @ crate::report::ReportError::NoSuchAsset(_))) => page(
            StatusCode::NOT_FOUND,
            "No such photo",
            &format!(
                "<p>{}</p><p><a href=\"/\">Back to the dashboard</a></p>",
                html::esc(&e.to_string())
            ),
        ),
        Ok(Err(e)) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error",
            &format!("<p>{}</p>", html::esc(&e.to_string())),
        ),
        Err(e) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error",
            &format!("<p>{}</p>", html::esc(&e.to_string())),
        ),
    }
}

/// How long a browser may keep a thumbnail: its URL names the content hash (`?v=`), so a
/// changed file gets a new URL.
const THUMB_MAX_AGE: &str = "private, max-age=86400";
/// The placeholder may become a thumbnail (a tool installed, a file back): kept briefly.
const PLACEHOLDER_MAX_AGE: &str = "private, max-age=60";

/// A small picture of resource `id`, found in the index (never a path from the request):
/// JPEG, or the SVG placeholder where none can be made. 404 for an id the index does not hold.
async fn thumb(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if d.session(&headers).is_none() {
        return no_session();
    }
    let db = d.config.state_dir.join("ferry.db");
    let found =
        tokio::task::spawn_blocking(move || ferry_store::Store::open(&db)?.resource(&id)).await;
    let src = match found {
        Ok(Ok(Some(r))) => thumbs::Source {
            path: r.path,
            blake3: r.blake3,
            resource_type: r.resource_type,
        },
        Ok(Ok(None)) => return not_found().await,
        Ok(Err(e)) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                &format!("<p>{}</p>", html::esc(&e.to_string())),
            );
        }
        Err(e) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                &format!("<p>{}</p>", html::esc(&e.to_string())),
            );
        }
    };
    match d.thumbs.get(src).await {
        thumbs::Thumb::Jpeg(bytes) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, THUMB_MAX_AGE),
            ],
            bytes,
        )
            .into_response(),
        thumbs::Thumb::Placeholder => (
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CACHE_CONTROL, PLACEHOLDER_MAX_AGE),
            ],
            thumbs::PLACEHOLDER_SVG,
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    csrf: Option<String>,
    id: Option<String>,
    /// Limit: one folder a line (root-relative, or a path inside a library root).
    folders: Option<String>,
}

/// Why a POST may not act.
#[derive(Debug)]
enum Refused {
    NoSession,
    Forbidden(&'static str),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::NoSession => no_session(),
            Refused::Forbidden(why) => forbidden(why),
        }
    }
}

/// Whether a POST may act: a session (else 401), then where it comes from (403), then the
/// session's CSRF token (403). Checked before anything changes.
fn post_allowed(
    d: &Dashboard,
    headers: &HeaderMap,
    form: &Result<Form<ActionForm>, FormRejection>,
) -> Result<String, Refused> {
    let Some(id) = cookie_value(headers, &d.cookie) else {
        return Err(Refused::NoSession);
    };
    let Some(session) = d.session_by_id(&id, Instant::now(), true) else {
        return Err(Refused::NoSession);
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok());
    let site = headers.get("sec-fetch-site").map(|s| s.as_bytes());
    if site.is_some_and(|s| s != b"same-origin") {
        return Err(Refused::Forbidden(
            "the request came from another site (Sec-Fetch-Site)",
        ));
    }
    // Our pages say `Referrer-Policy: no-referrer`, and under that policy a browser sends
    // `Origin: null` even on a form posted from our own page (Fetch, "serializing a request
    // origin"; seen in Chromium). `null` passes only beside `Sec-Fetch-Site: same-origin`,
    // which the browser sets and no page can forge; a client that sends neither is refused.
    let ours = format!("http://{host}");
    let origin_ok = origin == Some(ours.as_str())
        || (origin == Some("null") && site == Some(b"same-origin".as_slice()));
    if !origin_ok {
        return Err(Refused::Forbidden(
            "the request did not come from this dashboard (Origin)",
        ));
    }
    let csrf = form.as_ref().ok().and_then(|f| f.csrf.as_deref());
    if !csrf.is_some_and(|t| same_secret(t, &session.csrf)) {
        return Err(Refused::Forbidden("the form's token is missing or wrong"));
    }
    Ok(id)
}

/// Ends this browser's session (the cookie is forgotten too); `ferry dashboard` makes a new one.
async fn logout(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let id = match post_allowed(&d, &headers, &form) {
        Ok(id) => id,
        Err(refused) => return refused.into_response(),
    };
    d.end_session(&id);
    let mut resp = page(
        StatusCode::OK,
        "Signed out",
        "<p>Signed out. To open the dashboard again, run `ferry dashboard`.</p>",
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        d.cookie
    )) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// Grant, limit or revoke, from a form; nothing changes unless [`post_allowed`].
async fn extension_action(
    State(d): State<Arc<Dashboard>>,
    axum::extract::Path(action): axum::extract::Path<String>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    if let Err(refused) = post_allowed(&d, &headers, &form) {
        return refused.into_response();
    }
    let Ok(Form(form)) = form else {
        return forbidden("the form is missing its token");
    };
    let Some(id) = form.id else {
        return page(
            StatusCode::BAD_REQUEST,
            "Which extension?",
            "<p>The form named no extension.</p>",
        );
    };
    let folders: Vec<String> = form
        .folders
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let act = match action.as_str() {
        // A disabled card's grant form may name folders: a grant of only those.
        "grant" if !folders.is_empty() => view::Action::GrantFolders(folders),
        "grant" => view::Action::Grant,
        "limit" => view::Action::Limit(folders),
        "revoke" => view::Action::Revoke,
        _ => return not_found().await,
    };
    let cfg = d.config.clone();
    let result = tokio::task::spawn_blocking(move || view::act(&cfg, &id, act)).await;
    match result {
        Ok(Ok(())) => {
            // The host looks again now, and live pages update.
            d.config.extensions_changed.notify_one();
            d.config.progress.tally.bump();
            (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response()
        }
        Ok(Err(e)) => page(
            StatusCode::BAD_REQUEST,
            "Not changed",
            &format!(
                "<p>{}</p><p><a href=\"/\">Back to the dashboard</a></p>",
                html::esc(&e.to_string())
            ),
        ),
        Err(e) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error",
            &format!("<p>{}</p>", html::esc(&e.to_string())),
        ),
    }
}

/// What the live region shows, as JSON, or `None` when the state cannot be read.
fn live_payload(cfg: &DashboardConfig, rate: &Mutex<view::RateMeter>) -> Option<String> {
    let v = view::View::load(cfg, rate).ok()?;
    serde_json::to_string(&serde_json::json!({
        "verdict": v.verdict,
        "tone": v.tone,
        "progress": v.progress_line,
        "conditions": v.conditions,
        // Markup, escaped as on the page: the lists, the history, the sparkline, the library's
        // size and what is observed are replaced whole, so they never disagree with the
        // verdict above them.
        "library": html::library(&v),
        "observed": html::observed(&v),
        "lists": html::lists(&v),
        "history": html::history(&v),
        "sparkline": html::sparkline(&v.hourly),
    }))
    .ok()
}

struct EventsState {
    d: Arc<Dashboard>,
    /// The session the stream was opened with: it ends when that session does.
    session: String,
    sessions_changed: watch::Receiver<u64>,
    cfg: DashboardConfig,
    rate: Arc<Mutex<view::RateMeter>>,
    revision: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    last: Option<String>,
    next_id: u64,
}

/// Server-Sent Events: the current state at once (which is all a reconnect with
/// `Last-Event-ID` needs, since each event carries the whole state), then one event per change,
/// at most one per [`COALESCE`]. Nothing runs while nothing changes: it waits on the daemon's
/// revision counter.
///
/// The session is looked at again on each turn, and a sign-out or an expiry wakes the loop, so
/// live updates end with the session. Watching does not count as use of the session.
async fn events(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let Some(session) = cookie_value(&headers, &d.cookie)
        .filter(|id| d.session_by_id(id, Instant::now(), false).is_some())
    else {
        return no_session();
    };
    let mut revision = d.config.progress.tally.revision.subscribe();
    revision.borrow_and_update();
    let mut sessions_changed = d.sessions_changed.subscribe();
    sessions_changed.borrow_and_update();
    let state = EventsState {
        d: d.clone(),
        session,
        sessions_changed,
        cfg: d.config.clone(),
        rate: d.rate.clone(),
        revision,
        stop: d.config.stop.clone(),
        last: None,
        next_id: 1,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            // Ends with the session (`?`: the stream's end).
            let session = st.d.session_by_id(&st.session, Instant::now(), false)?;
            if st.last.is_some() {
                tokio::select! {
                    r = st.revision.changed() => if r.is_err() { return None },
                    _ = st.stop.wait_for(|s| *s) => return None,
                    // A session was removed: is it ours? (Looked at on the next turn.)
                    r = st.sessions_changed.changed() => {
                        if r.is_err() { return None }
                        continue;
                    }
                    _ = tokio::time::sleep_until(session.expires().into()) => continue,
                }
                // Let a burst of changes settle into one event.
                tokio::time::sleep(COALESCE).await;
                st.revision.borrow_and_update();
                st.d.session_by_id(&st.session, Instant::now(), false)?;
            }
            if *st.stop.borrow() {
                return None;
            }
            let cfg = st.cfg.clone();
            let rate = st.rate.clone();
            let payload = tokio::task::spawn_blocking(move || live_payload(&cfg, &rate))
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| "{}".to_owned());
            if st.last.as_ref() == Some(&payload) {
                continue;
            }
            let event = Event::default()
                .id(st.next_id.to_string())
                .data(payload.clone());
            st.next_id += 1;
            st.last = Some(payload);
            return Some((Ok::<_, std::convert::Infallible>(event), st));
        }
    });
    Sse::new(stream).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_token_works_once_and_not_after_it_expired() {
        let mut l = Logins::default();
        let t0 = Instant::now();
        l.add("a".into(), t0);
        l.add("b".into(), t0);
        assert!(!l.redeem("c", t0), "an unknown token");
        assert!(l.redeem("a", t0 + Duration::from_secs(59)));
        assert!(!l.redeem("a", t0 + Duration::from_secs(59)), "used up");
        assert!(!l.redeem("b", t0 + LOGIN_TTL), "expired");
    }

    #[test]
    fn a_dashboard_session_ends_when_idle_12_hours_or_7_days_after_login() {
        let t0 = Instant::now();
        let h = |n: u64| Duration::from_secs(n * 3600);
        let mut s = Session {
            csrf: String::new(),
            created: t0,
            last_used: t0,
        };
        assert!(s.live(t0));
        assert!(s.live(t0 + h(12) - Duration::from_secs(1)));
        assert!(!s.live(t0 + h(12)), "12 hours unused");
        // Used every 11 hours it lives on, but never past 7 days from the login.
        let mut t = t0;
        while t + h(11) < t0 + h(7 * 24) {
            t += h(11);
            assert!(s.live(t), "{:?}", t - t0);
            s.last_used = t;
        }
        assert_eq!(s.expires(), t0 + SESSION_MAX);
        assert!(s.live(t0 + SESSION_MAX - Duration::from_secs(1)));
        assert!(!s.live(t0 + SESSION_MAX), "7 days after the login");
    }

    #[test]
    fn an_expired_dashboard_session_is_removed_and_its_streams_told() {
        let (_stop_tx, stop) = watch::channel(false);
        let d = Dashboard::new(DashboardConfig {
            state_dir: PathBuf::from("/nonexistent"),
            extensions_dir: PathBuf::from("/nonexistent"),
            progress: Arc::default(),
            extensions_changed: Arc::default(),
            stop,
            port: 0,
        });
        let (id, s) = d.new_session().unwrap();
        let mut changed = d.sessions_changed.subscribe();
        let later = s.created + SESSION_IDLE - Duration::from_secs(1);
        assert!(d.session_by_id(&id, later, false).is_some());
        assert!(
            d.session_by_id(&id, s.created + SESSION_IDLE, false)
                .is_none(),
            "watching did not count as use"
        );
        assert!(changed.has_changed().unwrap(), "streams are woken");
        changed.borrow_and_update();
        assert!(
            d.session_by_id(&id, s.created, true).is_none(),
            "gone for good"
        );
        let (id, s) = d.new_session().unwrap();
        let used = s.created + SESSION_IDLE - Duration::from_secs(1);
        assert!(d.session_by_id(&id, used, true).is_some());
        assert!(
            d.session_by_id(&id, s.created + SESSION_IDLE, false)
                .is_some(),
            "a use moves the idle limit"
        );
        d.end_session(&id);
        assert!(changed.has_changed().unwrap(), "a sign-out wakes streams");
        assert!(d.session_by_id(&id, s.created, false).is_none());
    }

    #[test]
    fn only_our_loopback_host_and_port_are_allowed() {
        assert!(host_allowed("127.0.0.1:8123", 8123));
        assert!(host_allowed("localhost:8123", 8123));
        for h in [
            "127.0.0.1:8124",
            "evil.test:8123",
            "127.0.0.1",
            "localhost",
            "127.0.0.1:8123.evil.test",
            "[::1]:8123",
            "LOCALHOST:8123x",
        ] {
            assert!(!host_allowed(h, 8123), "{h}");
        }
    }

    #[test]
    fn tokens_are_256_random_bits_and_secrets_compare_whole() {
        let a = random_token().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, random_token().unwrap());
        assert!(same_secret(&a, &a.clone()));
        assert!(!same_secret(&a, &a[..63]));
        assert!(!same_secret(&a, &format!("{}x", &a[..63])));
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("ferry_session_x2=no; ferry_session_x=yes"),
        );
        assert_eq!(cookie_value(&h, "ferry_session_x").as_deref(), Some("yes"));
        assert_eq!(cookie_value(&h, "other"), None);
    }
}
