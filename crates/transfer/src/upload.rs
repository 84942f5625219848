//! One job's upload over HTTP: plain, tus 1.0 or the IETF draft, resumed from the server's
//! offset, verified against the job's pinned hash.
//!
//! The steps of one attempt ([`Uploader::upload`]):
//! 1. Preflight (cached `OPTIONS`) → protocol and limits; a session already holding an upload
//!    URL keeps its protocol.
//! 2. Pre-pass: hash the file; it must still match the pinned BLAKE3 (else `resource_changed`).
//!    Skipped when a session's recorded stamp still matches, and when the server asks for a
//!    BLAKE3 `Repr-Digest` (ferry-server): the pinned hash is promised at creation and the
//!    server refuses other bytes (`Ferry-Problem: upload-discarded`; the file is read then,
//!    to tell a change from damage on the way). For a draft upload of several chunks the
//!    pre-pass runs while the first chunks are sent and is awaited before the last one, which
//!    carries the `Repr-Digest`; otherwise it ends before anything is sent.
//! 3. Resume: `HEAD` the upload URL for the offset (an expired upload starts over).
//! 4. Append chunks of at most the server's `max-append-size` and the configured cap, saving
//!    the acknowledged offset after each. Before the final chunk the file's stamp is checked
//!    again, so a file changed mid-upload is never completed.
//! 5. Check the server's receipt (`ferry-blake3`, `repr-digest`, `ferry-size-bytes`,
//!    `Upload-Offset`) against ours: a success that disagrees is `BadResponse`.
//!
//! Every network answer is classified into a [`Failure`] here, once; the retry decision is
//! `ferry_core::retry`'s.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ferry_core::job::ContentHash;
use ferry_core::retry::Failure;
use ferry_core::{Destination, Method};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use uuid::Uuid;

use crate::bandwidth::Bandwidth;
use crate::preflight::{self, Capabilities, PreflightCache, Protocol};
use crate::session::{SessionStoreError, UploadSession, UploadSessionStore};
use crate::source::{self, FileStamp, Prepass, SourceError, StreamProbe};

/// The draft interop version Ferry speaks (draft -09 onwards).
pub const IETF_INTEROP_VERSION: &str = "8";
/// Most bytes of a response body read (error bodies are for logs only).
const MAX_RESPONSE_BODY_BYTES: usize = 64 << 10;
/// Offset re-synchronisations (409) tolerated within one attempt before giving up on it.
const MAX_OFFSET_RESYNCS: u32 = 3;

#[derive(Debug, Clone)]
pub struct TransferConfig {
    pub connect_timeout: Duration,
    /// A request that makes no progress (no body block taken, no answer) this long is cut.
    pub idle_timeout: Duration,
    /// Largest append, whatever the server allows (the last chunk may be shorter).
    pub chunk_cap_bytes: u64,
    /// Use this protocol when the server speaks it (tests, or a known-better server).
    pub prefer: Option<Protocol>,
    /// Redirects followed per request, and only within the destination's origin.
    pub max_redirects: usize,
    pub preflight_ttl: Duration,
    /// Idle connections kept per host for reuse.
    pub pool_max_idle_per_host: usize,
    /// Upload bandwidth cap over all transfers of this uploader; `None`: unlimited.
    pub max_bytes_per_s: Option<u64>,
    /// Certificates trusted beside the built-in roots (a self-hosted server with its own CA).
    pub extra_root_certs: Vec<reqwest::Certificate>,
    /// TLS for particular origins: a self-hosted server's CA file or pinned certificate
    /// applies to requests to its origin (scheme, host, port) only; every other destination
    /// is verified against the platform's roots (and `extra_root_certs`).
    pub origin_tls: Vec<OriginTls>,
}

/// The TLS trust of one origin (only its scheme, host and port count).
#[derive(Debug, Clone)]
pub struct OriginTls {
    pub origin: Url,
    pub tls: ferry_tls::ServerTls,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            chunk_cap_bytes: 64 << 20,
            prefer: None,
            max_redirects: 3,
            preflight_ttl: Duration::from_secs(3600),
            pool_max_idle_per_host: 8,
            max_bytes_per_s: None,
            extra_root_certs: Vec::new(),
            origin_tls: Vec::new(),
        }
    }
}

/// What one upload job asks for.
#[derive(Debug, Clone)]
pub struct UploadJob<'a> {
    pub job_id: Uuid,
    pub destination: &'a Destination,
    pub metadata: &'a BTreeMap<String, String>,
    pub source_path: &'a Path,
    pub pinned_blake3: ContentHash,
}

/// A finished upload, as the server confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub protocol: Protocol,
    pub status: u16,
    /// The final answer's headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub size_bytes: u64,
}

/// One failed attempt: the classified failure, and whatever answer arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{failure:?}: {detail}")]
pub struct UploadFailure {
    pub failure: Failure,
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub detail: String,
}

impl UploadFailure {
    fn new(failure: Failure, detail: impl Into<String>) -> UploadFailure {
        UploadFailure {
            failure,
            status: None,
            headers: Vec::new(),
            detail: detail.into(),
        }
    }

    fn from_answer(failure: Failure, a: &Answer, detail: impl Into<String>) -> UploadFailure {
        UploadFailure {
            failure,
            status: Some(a.status.as_u16()),
            headers: lower_headers(&a.headers),
            detail: detail.into(),
        }
    }
}

impl From<SourceError> for UploadFailure {
    fn from(e: SourceError) -> UploadFailure {
        let failure = match e {
            SourceError::Missing(_) | SourceError::Unreadable(_) => Failure::ResourceMissing,
            SourceError::Changed(_) => Failure::ResourceChanged,
        };
        UploadFailure::new(failure, e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The attempt failed; the engine asks the retry policy what next.
    #[error(transparent)]
    Failed(#[from] UploadFailure),
    /// The session could not be saved: progress would not survive a crash, so stop.
    #[error(transparent)]
    Session(#[from] SessionStoreError),
    /// The engine is stopping: the request in flight was finished and its progress saved; no
    /// further one was sent. Not a failure: the next run resumes from the saved offset.
    #[error("stopped after the request in flight")]
    Stopped,
}

/// An HTTP answer with its (bounded) body already read.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
}

impl Answer {
    fn text(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }

    fn offset(&self) -> Option<u64> {
        let v = self.text("upload-offset")?;
        if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()
    }
}

pub fn lower_headers(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// `Retry-After` as delay-seconds or an HTTP date, in ms from now.
fn retry_after_ms(h: &HeaderMap) -> Option<u64> {
    let v = h.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(s.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// The failure a non-success final answer stands for.
fn classify_status(a: &Answer) -> Failure {
    let status = a.status.as_u16();
    match status {
        300..=399 => Failure::RedirectRefused,
        423 => Failure::Locked,
        _ => Failure::Http {
            status,
            retry_after_ms: retry_after_ms(&a.headers),
        },
    }
}

fn classify_reqwest(e: &reqwest::Error) -> Failure {
    // A request that cannot even be built (a scheme the client cannot speak) never will be.
    if e.is_redirect() || e.is_builder() {
        return Failure::RedirectRefused;
    }
    if e.is_timeout() {
        return Failure::TimedOut;
    }
    if e.is_connect() {
        return Failure::ConnectFailed;
    }
    // A response hyper could not parse is the server's fault, not the network's.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && h.is_parse()
        {
            return Failure::BadResponse;
        }
        source = s.source();
    }
    Failure::ConnectionLost
}

fn sha256_field(d: &[u8; 32]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(d))
}

/// tus-style metadata (`key base64,key base64`), also sent as `Ferry-Metadata` to plain and
/// draft endpoints. Keys that the format cannot carry are left out.
fn metadata_field(m: &BTreeMap<String, String>) -> Option<String> {
    let parts: Vec<String> = m
        .iter()
        .filter(|(k, _)| {
            !k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_graphic() && b != b',')
        })
        .map(|(k, v)| format!("{k} {}", STANDARD.encode(v.as_bytes())))
        .collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// What a failed request's log and job detail say: reqwest's words, and for a refused
/// certificate why it was refused.
fn request_detail(e: &reqwest::Error) -> String {
    match ferry_tls::CertificateProblem::find(e) {
        Some(p) => format!("{e}: the server's certificate is not trusted: {p}"),
        None => e.to_string(),
    }
}

/// Sends uploads; one per process is enough (it pools connections per host).
#[derive(Debug)]
pub struct Uploader {
    client: reqwest::Client,
    /// The clients of [`TransferConfig::origin_tls`], by origin.
    origin_clients: Vec<(Url, reqwest::Client)>,
    config: TransferConfig,
    preflight: PreflightCache,
    /// The cap over every transfer: the configured one, lowered by [`Uploader::set_policy_cap`].
    bandwidth: Arc<Bandwidth>,
    /// Set while the engine drains: no new request is sent (see [`Uploader::set_stopping`]).
    stopping: AtomicBool,
}

impl Uploader {
    pub fn new(config: TransferConfig) -> Result<Uploader, reqwest::Error> {
        let max_redirects = config.max_redirects;
        let policy = move || {
            reqwest::redirect::Policy::custom(move |attempt| {
                let Some(first) = attempt.previous().first() else {
                    return attempt.follow();
                };
                if attempt.previous().len() > max_redirects {
                    return attempt.error("too many redirects");
                }
                if !same_origin(first, attempt.url()) {
                    return attempt.error("redirect outside the destination's origin");
                }
                attempt.follow()
            })
        };
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(config.connect_timeout)
                .pool_max_idle_per_host(config.pool_max_idle_per_host)
                .redirect(policy())
        };
        let mut default = builder();
        for cert in &config.extra_root_certs {
            default = default.add_root_certificate(cert.clone());
        }
        let client = default.build()?;
        let origin_clients = config
            .origin_tls
            .iter()
            .map(|o| {
                let c = builder()
                    .tls_backend_preconfigured(o.tls.rustls_config())
                    .build()?;
                Ok((o.origin.clone(), c))
            })
            .collect::<Result<Vec<_>, reqwest::Error>>()?;
        Ok(Uploader {
            client,
            origin_clients,
            preflight: PreflightCache::new(config.preflight_ttl),
            bandwidth: Arc::new(Bandwidth::new(config.max_bytes_per_s)),
            config,
            stopping: AtomicBool::new(false),
        })
    }

    /// A further cap from the device's policy (`None`: only the configured one holds); it
    /// applies from the next block of every transfer.
    pub fn set_policy_cap(&self, bytes_per_s: Option<u64>) {
        let rate = match (self.config.max_bytes_per_s, bytes_per_s) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.bandwidth.set_rate(rate);
    }

    pub fn config(&self) -> &TransferConfig {
        &self.config
    }

    /// While set, uploads finish the request in flight (its progress saved) and then end with
    /// [`UploadError::Stopped`] instead of sending the next chunk.
    pub fn set_stopping(&self, stopping: bool) {
        self.stopping.store(stopping, Ordering::SeqCst);
    }

    fn check_stopping(&self) -> Result<(), UploadError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(UploadError::Stopped);
        }
        Ok(())
    }

    /// Sends one request and reads its answer, cutting it when it makes no progress for the
    /// idle timeout (a stalled server never hangs the engine).
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        probe: Arc<StreamProbe>,
    ) -> Result<Answer, UploadFailure> {
        probe.touch();
        let idle = self.config.idle_timeout;
        let probe2 = probe.clone();
        let exchange = async move {
            let mut resp = req.send().await?;
            probe2.touch();
            let status = resp.status();
            let headers = resp.headers().clone();
            let mut read = 0usize;
            while let Some(chunk) = resp.chunk().await? {
                probe2.touch();
                read += chunk.len();
                if read > MAX_RESPONSE_BODY_BYTES {
                    break;
                }
            }
            Ok::<Answer, reqwest::Error>(Answer { status, headers })
        };
        tokio::pin!(exchange);
        let tick = (idle / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        loop {
            tokio::select! {
                r = &mut exchange => {
                    return match r {
                        Ok(a) => Ok(a),
                        Err(e) => {
                            if let Some(se) = probe.take_error() {
                                return Err(se.into());
                            }
                            Err(UploadFailure::new(classify_reqwest(&e), request_detail(&e)))
                        }
                    };
                }
                _ = tokio::time::sleep(tick) => {
                    if probe.idle_for() >= idle {
                        return Err(UploadFailure::new(
                            Failure::TimedOut,
                            format!("no progress for {} ms", idle.as_millis()),
                        ));
                    }
                }
            }
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: &Url,
        job: &UploadJob<'_>,
    ) -> reqwest::RequestBuilder {
        let client = self
            .origin_clients
            .iter()
            .find(|(origin, _)| same_origin(origin, url))
            .map_or(&self.client, |(_, c)| c);
        let mut b = client.request(method, url.clone());
        for (n, v) in &job.destination.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                b = b.header(n, v);
            }
        }
        b
    }

    async fn capabilities(
        &self,
        url: &Url,
        job: &UploadJob<'_>,
    ) -> Result<Capabilities, UploadFailure> {
        let key = PreflightCache::key(url);
        if let Some(c) = self.preflight.get(&key) {
            return Ok(c);
        }
        let a = self
            .send(
                self.request(reqwest::Method::OPTIONS, url, job),
                StreamProbe::new(),
            )
            .await?;
        let status = a.status.as_u16();
        // A server in trouble says nothing about what it speaks: retry later, cache nothing.
        if status == 408 || status == 429 || status >= 500 && status != 501 {
            return Err(UploadFailure::from_answer(
                classify_status(&a),
                &a,
                "preflight refused",
            ));
        }
        let caps = preflight::parse_capabilities(status, &a.headers)
            .map_err(|e| UploadFailure::from_answer(Failure::BadResponse, &a, e.to_string()))?;
        self.preflight.put(key, caps.clone());
        Ok(caps)
    }

    /// Runs one attempt of `job`, advancing and saving `session` as the server acknowledges.
    pub async fn upload(
        &self,
        job: &UploadJob<'_>,
        session: &mut UploadSession,
        sessions: &dyn UploadSessionStore,
    ) -> Result<Delivered, UploadError> {
        let result = self.attempt(job, session, sessions).await;
        if let Err(UploadError::Failed(f)) = &result
            && f.failure == Failure::ResourceChanged
        {
            if let Some(u) = session.upload_url.take() {
                // The bytes on the server can never become this job's: drop them now rather
                // than leave them to expire.
                self.terminate(job, session.protocol, &u).await;
            }
            session.restart();
            session.prepass = None;
            sessions.save(session)?;
        }
        result
    }

    async fn attempt(
        &self,
        job: &UploadJob<'_>,
        session: &mut UploadSession,
        sessions: &dyn UploadSessionStore,
    ) -> Result<Delivered, UploadError> {
        self.check_stopping()?;
        let url = Url::parse(&job.destination.url).map_err(|e| {
            UploadFailure::new(Failure::RedirectRefused, format!("destination URL: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UploadFailure::new(Failure::RedirectRefused, "not an http(s) URL").into());
        }

        // 1. Protocol.
        let caps = self.capabilities(&url, job).await?;
        let protocol = match (session.protocol, &session.upload_url) {
            (Some(p), Some(_)) => p,
            _ => preflight::choose(&caps, self.config.prefer),
        };
        // A server that checks the pinned BLAKE3 itself (it asks for it, and the protocol can
        // carry it) refuses any bytes that are not the job's: the file is not read twice.
        let server_checks = caps.wants_blake3 && protocol != Protocol::Tus;

        // 2. Pre-pass (skipped when the file's stamp is the one recorded, or the server
        //    checks), started here and awaited below, or before the last chunk (see
        //    `Uploader::sha256`).
        let (stamp, digest, pending) = match session.prepass {
            Some(p) if source::check_stamp(job.source_path, &p.stamp).is_ok() => {
                (p.stamp, std::sync::OnceLock::from(p.sha256), None)
            }
            _ if server_checks => {
                let stamp = source::stamp(job.source_path).map_err(UploadFailure::from)?;
                (stamp, std::sync::OnceLock::new(), None)
            }
            _ => {
                let stamp = source::stamp(job.source_path).map_err(UploadFailure::from)?;
                let path = job.source_path.to_owned();
                let pinned = job.pinned_blake3;
                let task = tokio::task::spawn_blocking(move || source::prepass(&path, &pinned));
                (stamp, std::sync::OnceLock::new(), Some(task))
            }
        };
        let size = stamp.size_bytes;
        let max_size = match protocol {
            Protocol::Ietf => caps.ietf.and_then(|l| l.max_size_bytes),
            Protocol::Tus => caps.tus.as_ref().and_then(|t| t.max_size_bytes),
            Protocol::Plain => None,
        };
        if max_size.is_some_and(|m| size > m) {
            return Err(UploadFailure::new(
                Failure::Http {
                    status: 413,
                    retry_after_ms: None,
                },
                format!("{size} bytes exceed the server's max-size"),
            )
            .into());
        }
        let mut chunk = self.config.chunk_cap_bytes.max(1);
        if protocol == Protocol::Ietf
            && let Some(m) = caps.ietf.and_then(|l| l.max_append_size_bytes)
        {
            chunk = chunk.min(m);
        }
        let ctx = Ctx {
            job,
            url,
            stamp,
            digest,
            pending: std::sync::Mutex::new(pending),
            chunk_bytes: chunk,
            caps,
            server_checks,
        };
        // Only the draft can send the digest with the last of several chunks; everything else
        // needs it in the first request.
        let digest_later = server_checks || protocol == Protocol::Ietf && size > chunk;
        if !digest_later {
            self.sha256(&ctx, session, sessions).await?;
        }
        // The pre-pass may have taken a while: a stop meanwhile sends nothing.
        self.check_stopping()?;
        match protocol {
            Protocol::Plain => self.plain(&ctx).await,
            Protocol::Tus | Protocol::Ietf => {
                self.resumable(&ctx, protocol, session, sessions).await
            }
        }
    }

    /// The file's SHA-256, from the pre-pass: awaited (once) if it still runs. A file whose
    /// stamp moved since the upload began counts as changed, whatever the hash says.
    async fn sha256(
        &self,
        ctx: &Ctx<'_>,
        session: &mut UploadSession,
        sessions: &dyn UploadSessionStore,
    ) -> Result<[u8; 32], UploadError> {
        if let Some(d) = ctx.digest.get() {
            return Ok(*d);
        }
        let task = ctx.pending.lock().ok().and_then(|mut t| t.take());
        let Some(task) = task else {
            return Err(UploadFailure::from(SourceError::Unreadable(
                "the pre-pass ended without a result".into(),
            ))
            .into());
        };
        let p = task
            .await
            .map_err(|e| UploadFailure::from(SourceError::Unreadable(format!("hash task: {e}"))))?
            .map_err(UploadFailure::from)?;
        if p.stamp != ctx.stamp {
            return Err(UploadFailure::from(SourceError::Changed(format!(
                "{} changed while it was being sent",
                ctx.job.source_path.display()
            )))
            .into());
        }
        session.prepass = Some(p);
        sessions.save(session)?;
        let _ = ctx.digest.set(p.sha256);
        Ok(p.sha256)
    }

    /// Checks a completing answer against what we know: the SHA-256 is awaited first unless
    /// the server checked the pinned BLAKE3 itself (then the receipt's SHA-256 is recorded as
    /// the server computed it).
    async fn receipt(
        &self,
        ctx: &Ctx<'_>,
        session: &mut UploadSession,
        sessions: &dyn UploadSessionStore,
        a: &Answer,
    ) -> Result<(), UploadError> {
        let sha256 = if ctx.server_checks {
            if a.text("ferry-blake3").is_none() {
                // It asked for the BLAKE3 but does not say what it stored: read the file once
                // more, as the pre-pass would have, before calling the job done.
                self.source_unchanged(ctx).await?;
            }
            ctx.digest.get().copied()
        } else {
            Some(self.sha256(ctx, session, sessions).await?)
        };
        self.verify(ctx, a, sha256.as_ref())?;
        Ok(())
    }

    /// The file still matches the job's pinned hash, and its stamp is the one this attempt
    /// began with.
    async fn source_unchanged(&self, ctx: &Ctx<'_>) -> Result<Prepass, UploadFailure> {
        let path = ctx.job.source_path.to_owned();
        let pinned = ctx.job.pinned_blake3;
        let p = tokio::task::spawn_blocking(move || source::prepass(&path, &pinned))
            .await
            .map_err(|e| SourceError::Unreadable(format!("hash task: {e}")))??;
        if p.stamp != ctx.stamp {
            return Err(SourceError::Changed(format!(
                "{} changed while it was being sent",
                ctx.job.source_path.display()
            ))
            .into());
        }
        Ok(p)
    }

    /// The `Repr-Digest` to promise: the pinned BLAKE3 to a server that checks it, the SHA-256
    /// once known. `None` while neither is.
    fn repr_field(ctx: &Ctx<'_>) -> Option<String> {
        let mut parts = Vec::new();
        if ctx.server_checks {
            parts.push(format!(
                "blake3=:{}:",
                STANDARD.encode(ctx.job.pinned_blake3.0)
            ));
        }
        if let Some(d) = ctx.digest.get() {
            parts.push(sha256_field(d));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// The server dropped an upload whose bytes broke the promised digest
    /// (`Ferry-Problem: upload-discarded`): the file changed (the job fails
    /// `resource_changed`) or the bytes were damaged on the way (retried from zero). Reading
    /// the file once more tells which.
    async fn discarded(&self, ctx: &Ctx<'_>, a: &Answer) -> UploadError {
        match self.source_unchanged(ctx).await {
            Err(f) => f.into(),
            Ok(_) => UploadFailure::from_answer(
                Failure::BadResponse,
                a,
                "the server's bytes did not match the file, which still matches the job: \
                 damaged on the way, sent again",
            )
            .into(),
        }
    }

    async fn terminate(&self, job: &UploadJob<'_>, protocol: Option<Protocol>, upload_url: &str) {
        let Ok(u) = Url::parse(upload_url) else {
            return;
        };
        let protocol = protocol.unwrap_or(Protocol::Ietf);
        // A HEAD first lets an append the server is still settling (the cut that ended the
        // last attempt) finish, so the DELETE is not refused as "locked".
        let head = self.proto_headers(self.request(reqwest::Method::HEAD, &u, job), protocol);
        let _ = self.send(head, StreamProbe::new()).await;
        let delete = self.proto_headers(self.request(reqwest::Method::DELETE, &u, job), protocol);
        if let Err(e) = self.send(delete, StreamProbe::new()).await {
            tracing::debug!(upload = %u, error = %e, "could not terminate a stale upload; it will expire");
        }
    }

    fn verify(
        &self,
        ctx: &Ctx<'_>,
        a: &Answer,
        sha256: Option<&[u8; 32]>,
    ) -> Result<(), UploadFailure> {
        let size = ctx.stamp.size_bytes;
        let bad = |why: String| UploadFailure::from_answer(Failure::BadResponse, a, why);
        if let Some(b3) = a.text("ferry-blake3")
            && !b3.eq_ignore_ascii_case(&ctx.job.pinned_blake3.to_hex())
        {
            return Err(bad(format!("server stored BLAKE3 {b3}, not ours")));
        }
        if let (Some(rd), Some(sha256)) = (a.text("repr-digest"), sha256)
            && rd.contains("sha-256=")
            && !rd.contains(&sha256_field(sha256)["sha-256=".len()..])
        {
            return Err(bad(format!("server's Repr-Digest {rd} is not ours")));
        }
        if let Some(n) = a.text("ferry-size-bytes")
            && n.parse::<u64>().ok() != Some(size)
        {
            return Err(bad(format!("server stored {n} bytes, not {size}")));
        }
        if a.headers.contains_key("upload-offset") && a.offset() != Some(size) {
            return Err(bad(format!(
                "success at offset {:?}, not {size}",
                a.text("upload-offset")
            )));
        }
        Ok(())
    }

    fn delivered(&self, protocol: Protocol, ctx: &Ctx<'_>, a: &Answer) -> Delivered {
        Delivered {
            protocol,
            status: a.status.as_u16(),
            headers: lower_headers(&a.headers),
            size_bytes: ctx.stamp.size_bytes,
        }
    }

    /// A body of `len` bytes from `offset`; the stamp is checked first when it is the last.
    fn body(
        &self,
        ctx: &Ctx<'_>,
        offset: u64,
        len: u64,
        probe: &Arc<StreamProbe>,
    ) -> Result<reqwest::Body, UploadFailure> {
        if offset + len == ctx.stamp.size_bytes {
            source::check_stamp(ctx.job.source_path, &ctx.stamp)?;
        }
        Ok(source::range_body(
            ctx.job.source_path,
            offset,
            len,
            probe.clone(),
            // Uncapped bodies skip the bucket (and read in whole blocks).
            self.bandwidth.rate().map(|_| self.bandwidth.clone()),
        ))
    }

    async fn plain(&self, ctx: &Ctx<'_>) -> Result<Delivered, UploadError> {
        let size = ctx.stamp.size_bytes;
        let method = match ctx.job.destination.method {
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
        };
        let a = self
            .send_keyed(|with_key| {
                let method = method.clone();
                async move {
                    let probe = StreamProbe::new();
                    let mut b = self
                        .request(method, &ctx.url, ctx.job)
                        .header(reqwest::header::CONTENT_LENGTH, size);
                    if with_key {
                        b = b.header("idempotency-key", idempotency_key(ctx, Protocol::Plain));
                    }
                    if let Some(d) = Self::repr_field(ctx) {
                        b = b.header("repr-digest", d);
                    }
                    if let Some(m) = metadata_field(ctx.job.metadata) {
                        b = b.header("ferry-metadata", m);
                    }
                    Ok((b.body(self.body(ctx, 0, size, &probe)?), probe))
                }
            })
            .await?;
        if is_discarded(&a) {
            return Err(self.discarded(ctx, &a).await);
        }
        if !a.status.is_success() {
            return Err(
                UploadFailure::from_answer(classify_status(&a), &a, "upload refused").into(),
            );
        }
        self.verify(ctx, &a, ctx.digest.get())?;
        Ok(self.delivered(Protocol::Plain, ctx, &a))
    }

    fn proto_headers(
        &self,
        b: reqwest::RequestBuilder,
        protocol: Protocol,
    ) -> reqwest::RequestBuilder {
        match protocol {
            Protocol::Tus => b.header("tus-resumable", "1.0.0"),
            _ => b.header("upload-draft-interop-version", IETF_INTEROP_VERSION),
        }
    }

    /// Creates the upload on the server; for a file that fits in one chunk the creation carries
    /// the whole body (a cut then costs at most that chunk).
    async fn create(
        &self,
        ctx: &Ctx<'_>,
        protocol: Protocol,
        session: &mut UploadSession,
        sessions: &dyn UploadSessionStore,
    ) -> Result<Option<Delivered>, UploadError> {
        let size = ctx.stamp.size_bytes;
        let with_body = size <= ctx.chunk_bytes
            && match protocol {
                Protocol::Tus => ctx
                    .caps
                    .tus
                    .as_ref()
                    .is_some_and(|t| t.has("creation-with-upload")),
                _ => true,
            };
        let method = match (protocol, ctx.job.destination.method) {
            (Protocol::Tus, _) | (_, Method::Post) => reqwest::Method::POST,
            (_, Method::Put) => reqwest::Method::PUT,
            (_, Method::Patch) => reqwest::Method::PATCH,
        };
        let a = self
            .send_keyed(|with_key| {
                self.creation(ctx, protocol, method.clone(), with_body, with_key)
            })
            .await?;
        if is_discarded(&a) {
            return Err(self.discarded(ctx, &a).await);
        }
        if !a.status.is_success() {
            return Err(
                UploadFailure::from_answer(classify_status(&a), &a, "creation refused").into(),
            );
        }
        let location = a
            .text("location")
            .ok_or_else(|| UploadFailure::from_answer(Failure::BadResponse, &a, "no Location"))?;
        let upload_url = ctx.url.join(location).map_err(|e| {
            UploadFailure::from_answer(Failure::BadResponse, &a, format!("Location: {e}"))
        })?;
        if !same_origin(&upload_url, &ctx.url) {
            return Err(UploadFailure::from_answer(
                Failure::RedirectRefused,
                &a,
                format!("upload URL {upload_url} outside the destination's origin"),
            )
            .into());
        }
        session.protocol = Some(protocol);
        session.upload_url = Some(upload_url.to_string());
        // Done or part-way: the body went through, or the idempotency key named an upload a
        // killed run made (finished, or where to resume).
        let done = match protocol {
            Protocol::Tus => a.offset() == Some(size),
            _ => a.text("upload-complete") == Some("?1"),
        };
        if done {
            self.receipt(ctx, session, sessions, &a).await?;
            return Ok(Some(self.delivered(protocol, ctx, &a)));
        }
        session.offset_bytes = a.offset().filter(|o| *o <= size).unwrap_or(0);
        sessions.save(session)?;
        Ok(None)
    }

    /// Sends a creation built with the job's `Idempotency-Key`, and once more without it when
    /// the server answers `422`: the key names an upload of another shape (made under another
    /// protocol, or before the server asked for BLAKE3), so this one is made afresh. At worst
    /// the server keeps an unfinished upload until it expires.
    async fn send_keyed<F, Fut>(&self, build: F) -> Result<Answer, UploadError>
    where
        F: Fn(bool) -> Fut,
        Fut: std::future::Future<
                Output = Result<(reqwest::RequestBuilder, Arc<StreamProbe>), UploadError>,
            >,
    {
        let (b, probe) = build(true).await?;
        let a = self.send(b, probe).await?;
        if a.status != StatusCode::UNPROCESSABLE_ENTITY {
            return Ok(a);
        }
        let (b, probe) = build(false).await?;
        Ok(self.send(b, probe).await?)
    }

    /// The creation request, with the job's `Idempotency-Key` or without it.
    async fn creation(
        &self,
        ctx: &Ctx<'_>,
        protocol: Protocol,
        method: reqwest::Method,
        with_body: bool,
        with_key: bool,
    ) -> Result<(reqwest::RequestBuilder, Arc<StreamProbe>), UploadError> {
        let size = ctx.stamp.size_bytes;
        let mut b = self
            .proto_headers(self.request(method, &ctx.url, ctx.job), protocol)
            .header("upload-length", size);
        if with_key {
            b = b.header("idempotency-key", idempotency_key(ctx, protocol));
        }
        // Still hashing (a draft upload of several chunks): the last chunk carries it.
        if let Some(d) = Self::repr_field(ctx) {
            b = b.header("repr-digest", d);
        }
        if let Some(m) = metadata_field(ctx.job.metadata) {
            let name = if protocol == Protocol::Tus {
                "upload-metadata"
            } else {
                "ferry-metadata"
            };
            b = b.header(name, m);
        }
        if protocol == Protocol::Ietf {
            b = b.header("upload-complete", if with_body { "?1" } else { "?0" });
        }
        let probe = StreamProbe::new();
        let b = if with_body {
            let mut b = b.header(reqwest::header::CONTENT_LENGTH, size);
            if protocol == Protocol::Tus {
                b = b.header("content-type", "application/offset+octet-stream");
                b = self.tus_checksum(ctx, b, 0, size).await?;
            }
            b.body(self.body(ctx, 0, size, &probe)?)
        } else {
            b.header(reqwest::header::CONTENT_LENGTH, 0)
        };
        Ok((b, probe))
    }

    async fn tus_checksum(
        &self,
        ctx: &Ctx<'_>,
        b: reqwest::RequestBuilder,
        offset: u64,
        len: u64,
    ) -> Result<reqwest::RequestBuilder, UploadFailure> {
        if !ctx.caps.tus.as_ref().is_some_and(|t| t.checksum_sha256()) {
            return Ok(b);
        }
        let path = ctx.job.source_path.to_owned();
        let d = tokio::task::spawn_blocking(move || source::range_sha256(&path, offset, len))
            .await
            .map_err(|e| {
                UploadFailure::from(SourceError::Unreadable(format!("hash task: {e}")))
            })??;
        Ok(b.header("upload-checksum", format!("sha256 {}", STANDARD.encode(d))))
    }

    /// Asks the server where the upload stands. `Ok(None)`: the upload is gone (expired,
    /// collected), start over.
    async fn head(
        &self,
        ctx: &Ctx<'_>,
        protocol: Protocol,
        upload_url: &Url,
    ) -> Result<Option<(u64, bool, Answer)>, UploadFailure> {
        let b = self.proto_headers(
            self.request(reqwest::Method::HEAD, upload_url, ctx.job),
            protocol,
        );
        let a = self.send(b, StreamProbe::new()).await?;
        let status = a.status.as_u16();
        if status == 404 || status == 410 {
            return Ok(None);
        }
        if !a.status.is_success() {
            return Err(UploadFailure::from_answer(
                classify_status(&a),
                &a,
                "HEAD refused",
            ));
        }
        let size = ctx.stamp.size_bytes;
        let offset = a.offset().filter(|o| *o <= size).ok_or_else(|| {
            UploadFailure::from_answer(
                Failure::BadResponse,
                &a,
                "HEAD without a usable Upload-Offset",
            )
        })?;
        let complete = match protocol {
            // tus has no completion flag: all bytes acknowledged is complete.
            Protocol::Tus => offset == size,
            _ => a.text("upload-complete") == Some("?1"),
        };
        Ok(Some((offset, complete, a)))
    }

    async fn resumable(
        &self,
        ctx: &Ctx<'_>,
        protocol: Protocol,
        session: &mut UploadSession,
        sessions: &dyn UploadSessionStore,
    ) -> Result<Delivered, UploadError> {
        let size = ctx.stamp.size_bytes;
        let mut restarts = 0u32;
        let mut resyncs = 0u32;
        // Whether a refused append has already been checked against a HEAD (see below).
        let mut refusal_checked = false;
        // Whether the offset in `session` must be confirmed by HEAD before appending.
        let mut confirm = session.upload_url.is_some();
        loop {
            // Every acknowledged chunk was saved at the end of the last turn: a stop here
            // loses nothing and cuts nothing.
            self.check_stopping()?;
            let Some(upload_url) = session.upload_url.clone() else {
                if let Some(d) = self.create(ctx, protocol, session, sessions).await? {
                    return Ok(d);
                }
                continue;
            };
            let upload_url = Url::parse(&upload_url).map_err(|e| {
                UploadFailure::new(Failure::BadResponse, format!("stored upload URL: {e}"))
            })?;
            if confirm {
                match self.head(ctx, protocol, &upload_url).await? {
                    None => {
                        restarts += 1;
                        if restarts > 1 {
                            return Err(UploadFailure::new(
                                Failure::BadResponse,
                                "upload vanished twice",
                            )
                            .into());
                        }
                        session.restart();
                        sessions.save(session)?;
                        continue;
                    }
                    Some((_, true, a)) => {
                        self.receipt(ctx, session, sessions, &a).await?;
                        return Ok(self.delivered(protocol, ctx, &a));
                    }
                    Some((offset, false, _)) => {
                        if offset != session.offset_bytes {
                            session.offset_bytes = offset;
                            sessions.save(session)?;
                        }
                    }
                }
                confirm = false;
            }
            let offset = session.offset_bytes;
            let len = (size - offset).min(ctx.chunk_bytes);
            let last = offset + len == size;
            let probe = StreamProbe::new();
            let mut b = self
                .proto_headers(
                    self.request(reqwest::Method::PATCH, &upload_url, ctx.job),
                    protocol,
                )
                .header("upload-offset", offset)
                .header(reqwest::header::CONTENT_LENGTH, len);
            b = match protocol {
                Protocol::Tus => {
                    let b = b.header("content-type", "application/offset+octet-stream");
                    self.tus_checksum(ctx, b, offset, len).await?
                }
                _ => {
                    let mut b = b
                        .header("content-type", "application/partial-upload")
                        .header("upload-complete", if last { "?1" } else { "?0" });
                    if last {
                        // The request that completes the upload carries the digest the
                        // server checks before it makes the object (awaited here when the
                        // pre-pass ran beside the first chunks).
                        if !ctx.server_checks {
                            self.sha256(ctx, session, sessions).await?;
                        }
                        if let Some(d) = Self::repr_field(ctx) {
                            b = b.header("repr-digest", d);
                        }
                    }
                    b
                }
            };
            let b = b.body(self.body(ctx, offset, len, &probe)?);
            let a = self.send(b, probe).await?;
            if is_discarded(&a) {
                // The upload is gone on the server: whatever comes next starts from zero.
                session.restart();
                sessions.save(session)?;
                return Err(self.discarded(ctx, &a).await);
            }
            let status = a.status.as_u16();
            if status == 409 {
                // The server's offset is not ours (a cut append it kept part of): ask, go on.
                resyncs += 1;
                if resyncs > MAX_OFFSET_RESYNCS {
                    return Err(UploadFailure::from_answer(
                        Failure::OffsetMismatch,
                        &a,
                        "offset keeps disagreeing",
                    )
                    .into());
                }
                confirm = true;
                continue;
            }
            if status == 404 || status == 410 {
                confirm = true;
                continue;
            }
            if status == 400 && !refusal_checked {
                // The draft's answer to an append after completion ("completed-upload"). After
                // a kill the last process's final append may have completed the upload on the
                // server after our HEAD: ask once more; a complete upload is verified and
                // delivered like any other, anything else fails as the 400 it was.
                refusal_checked = true;
                confirm = true;
                continue;
            }
            if status == 460 {
                // tus checksum mismatch: the file changed under us, or the bytes were damaged.
                source::check_stamp(ctx.job.source_path, &ctx.stamp)
                    .map_err(UploadFailure::from)?;
                return Err(UploadFailure::from_answer(
                    Failure::BadResponse,
                    &a,
                    "chunk checksum mismatch",
                )
                .into());
            }
            if !a.status.is_success() {
                return Err(
                    UploadFailure::from_answer(classify_status(&a), &a, "append refused").into(),
                );
            }
            // An append must move the offset forward, within what it carried (an empty final append,
            // after a cut that delivered every byte, only completes).
            let new_offset = a
                .offset()
                .filter(|o| (*o > offset || len == 0) && *o <= offset + len);
            let Some(new_offset) = new_offset else {
                return Err(UploadFailure::from_answer(
                    Failure::BadResponse,
                    &a,
                    format!(
                        "append answered offset {:?} after {offset}+{len}",
                        a.text("upload-offset")
                    ),
                )
                .into());
            };
            session.offset_bytes = new_offset;
            if new_offset == size {
                let complete = match protocol {
                    Protocol::Tus => true,
                    _ => a.text("upload-complete") == Some("?1"),
                };
                if !complete {
                    return Err(UploadFailure::from_answer(
                        Failure::BadResponse,
                        &a,
                        "all bytes sent but upload not complete",
                    )
                    .into());
                }
                self.receipt(ctx, session, sessions, &a).await?;
                return Ok(self.delivered(protocol, ctx, &a));
            }
            sessions.save(session)?;
        }
    }
}

/// What every step of one attempt needs.
#[derive(Debug)]
struct Ctx<'a> {
    job: &'a UploadJob<'a>,
    url: Url,
    /// The file when this attempt began: its size, and what the last chunk is checked against.
    stamp: FileStamp,
    /// The file's SHA-256 once the pre-pass has ended.
    digest: std::sync::OnceLock<[u8; 32]>,
    /// The pre-pass, while it still runs beside the first chunks.
    pending: std::sync::Mutex<Option<tokio::task::JoinHandle<Result<Prepass, SourceError>>>>,
    chunk_bytes: u64,
    caps: Capabilities,
    /// The server checks the pinned BLAKE3 promised in `Repr-Digest` (no pre-pass here).
    server_checks: bool,
}

/// The job's creations all carry its id (draft-ietf-httpapi-idempotency-key-header): a creation
/// repeated after a kill -9 that lost its answer gets the same upload back from a server that
/// honours it (ferry-server), not a second one.
fn idempotency_key(ctx: &Ctx<'_>, protocol: Protocol) -> String {
    format!("\"{}-{}\"", ctx.job.job_id, protocol.as_str())
}

/// The server's answer that it dropped the upload because its bytes broke the promised digest.
fn is_discarded(a: &Answer) -> bool {
    a.status == StatusCode::BAD_REQUEST && a.text("ferry-problem") == Some("upload-discarded")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after_ms(&h), Some(7000));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after_ms(&h), Some(0));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after_ms(&h), None);
    }

    #[test]
    fn metadata_field_skips_unusable_keys() {
        let mut m = BTreeMap::new();
        m.insert("asset_id".to_string(), "A1".to_string());
        m.insert("bad,key".to_string(), "x".to_string());
        m.insert("file name".to_string(), "x".to_string());
        assert_eq!(metadata_field(&m).as_deref(), Some("asset_id QTE="));
        assert_eq!(metadata_field(&BTreeMap::new()), None);
    }
}
