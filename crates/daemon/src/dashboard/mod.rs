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
//! extension is HTML-escaped ([`html::esc`]).

pub mod html;
pub mod view;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Query, Request, State, rejection::FormRejection};
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
    /// The cookie's name: per state folder, since cookies are not isolated by port.
    cookie: String,
    rate: Arc<Mutex<view::RateMeter>>,
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
            config,
            port: OnceLock::new(),
            start: tokio::sync::Mutex::new(()),
            logins: Mutex::default(),
            sessions: Mutex::default(),
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
        let app = router(self.clone());
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
        let s = Session {
            csrf: random_token()?,
            created: Instant::now(),
        };
        let mut all = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
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

    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie_value(headers, &self.cookie)?;
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id.as_str())
            .cloned()
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
        .route("/extensions/{action}", post(extension_action))
        .route("/logout", post(logout))
        .route("/static/dashboard.css", get(css))
        .route("/static/dashboard.js", get(js))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(d.clone(), guard))
        .with_state(d)
}

/// Refuses any Host but ours (DNS rebinding), and puts the security headers on every answer.
async fn guard(State(d): State<Arc<Dashboard>>, req: Request, next: Next) -> Response {
    let host_ok = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| host_allowed(h, d.port()));
    let mut resp = if host_ok {
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
    let cookie = format!("{}={id}; HttpOnly; SameSite=Strict; Path=/", d.cookie);
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
    let Some(session) = d.session(headers) else {
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
    d.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
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
    let act = match action.as_str() {
        "grant" => view::Action::Grant,
        "limit" => view::Action::Limit(
            form.folders
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
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
    }))
    .ok()
}

struct EventsState {
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
async fn events(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if d.session(&headers).is_none() {
        return no_session();
    }
    let mut revision = d.config.progress.tally.revision.subscribe();
    revision.borrow_and_update();
    let state = EventsState {
        cfg: d.config.clone(),
        rate: d.rate.clone(),
        revision,
        stop: d.config.stop.clone(),
        last: None,
        next_id: 1,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.last.is_some() {
                tokio::select! {
                    r = st.revision.changed() => if r.is_err() { return None },
                    _ = st.stop.wait_for(|s| *s) => return None,
                }
                // Let a burst of changes settle into one event.
                tokio::time::sleep(COALESCE).await;
                st.revision.borrow_and_update();
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
