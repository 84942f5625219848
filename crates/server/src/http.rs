//! The HTTP surface: routes, protocol detection and header parsing for the IETF draft, tus 1.0
//! and plain uploads, all funnelled into `uploads::Engine`.
//!
//! Which protocol a request speaks is decided by its headers alone: `Tus-Resumable` → tus;
//! `Upload-Draft-Interop-Version`, `Upload-Complete` or `Upload-Incomplete` → the draft; neither,
//! on `POST`/`PUT /v1/uploads` → a plain one-request upload. The API is described in
//! `openapi.yaml` beside this crate's `Cargo.toml`.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::meta::{DEFAULT_USER_ID, NewReceipt, ObjectRow, ReceiptAdded, UploadRow};
use crate::sf::{self, ReprDigests};
use crate::uploads::{Append, ChunkCheck, Created, Engine, Outcome, scoped_key, valid_object_id};

pub const UPLOADS_PATH: &str = "/v1/uploads";
const TUS_EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration";
const MAX_METADATA_BYTES: usize = 8 << 10;
const MAX_METADATA_KEYS: usize = 32;
const MAX_CHECK_HASHES: usize = 10_000;
/// Objects in one page of `GET /v1/objects`: by default, and at most.
const LIST_DEFAULT_LIMIT: usize = 100;
const LIST_MAX_LIMIT: usize = 1000;
/// Receipts per object in a listing (newest first); `/receipts` answers up to 1000.
const LIST_RECEIPTS_PER_OBJECT: usize = 100;
/// Receipts one `POST /v1/objects/receipts` may add (one transaction, one commit).
pub const MAX_RECEIPT_BATCH: usize = 1000;
/// A batch of receipts is at most this long: 1000 items of full metadata (8 KiB each, base64
/// counted) fit.
const MAX_RECEIPT_BATCH_BYTES: usize = 12 << 20;

#[derive(Debug)]
pub struct AppState {
    pub engine: Engine,
    /// False only with `--open`: every request is accepted without a token.
    pub auth_required: bool,
}

/// Who is asking: the user the request's token belongs to (with `--open`, the default user).
/// Every read, listing and dedup answer is scoped to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: i64,
}

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route(UPLOADS_PATH, post(create).put(create).options(options))
        .route(
            "/v1/uploads/{id}",
            get(not_allowed)
                .head(head_upload)
                .patch(patch_upload)
                .delete(delete_upload)
                .options(options),
        )
        .route("/v1/objects", get(list_objects))
        .route("/v1/objects/check", post(check_objects))
        .route("/v1/objects/receipts", post(add_receipts))
        .route("/v1/objects/{id}", get(get_object))
        .route(
            "/v1/objects/{id}/receipts",
            get(object_receipts).post(add_receipt),
        )
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        // Upload bodies are streamed to disk and bounded by the upload limits, not buffered.
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(api)
        .with_state(state)
}

/// Finds the caller's user from its bearer token, in the database on every request: a token
/// revoked (by `ferry-server token revoke`, another process) is refused from its next request.
async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let mut caller = Caller {
        user_id: DEFAULT_USER_ID,
    };
    if state.auth_required {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or(ApiError::Unauthorized)?;
        let hash = hex(&Sha256::digest(token.as_bytes()));
        caller.user_id = state
            .engine
            .meta
            .token_user(&hash)
            .await?
            .ok_or(ApiError::Unauthorized)?;
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tus,
    /// The draft, with its interop version (3, 5, 6, 7 or 8).
    Ietf(u8),
    Plain,
}

fn text<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ApiError::BadRequest(format!("{name} is not visible ASCII"))),
    }
}

fn detect(h: &HeaderMap, plain_allowed: bool) -> Result<Proto, ApiError> {
    if let Some(v) = text(h, "tus-resumable")? {
        return if v == "1.0.0" {
            Ok(Proto::Tus)
        } else {
            Err(ApiError::UnsupportedTusVersion)
        };
    }
    if let Some(v) = text(h, "upload-draft-interop-version")? {
        return match v {
            "3" => Ok(Proto::Ietf(3)),
            "5" => Ok(Proto::Ietf(5)),
            "6" => Ok(Proto::Ietf(6)),
            "7" => Ok(Proto::Ietf(7)),
            "8" => Ok(Proto::Ietf(8)),
            other => Err(ApiError::UnknownInteropVersion(
                other.chars().take(20).collect(),
            )),
        };
    }
    if h.contains_key("upload-incomplete") {
        return Ok(Proto::Ietf(3));
    }
    if h.contains_key("upload-complete") || !plain_allowed {
        return Ok(Proto::Ietf(8));
    }
    Ok(Proto::Plain)
}

fn bad_field(name: &str, e: sf::SfError) -> ApiError {
    ApiError::BadRequest(format!("{name}: {e}"))
}

/// tus numbers are plain non-negative decimal integers.
fn tus_u64(h: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(v) = text(h, name)? else {
        return Ok(None);
    };
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest(format!(
            "{name} must be a non-negative integer"
        )));
    }
    v.parse()
        .map(Some)
        .map_err(|_| ApiError::BadRequest(format!("{name} is out of range")))
}

fn sf_u64(h: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    text(h, name)?
        .map(|v| sf::parse_non_negative_integer(v).map_err(|e| bad_field(name, e)))
        .transpose()
}

/// Whether this draft request finishes the upload. Draft-01 (version 3) says the opposite with
/// `Upload-Incomplete`, whose absence means complete.
fn ietf_complete(h: &HeaderMap, version: u8) -> Result<bool, ApiError> {
    if version == 3 {
        return match text(h, "upload-incomplete")? {
            None => Ok(true),
            Some(v) => sf::parse_boolean(v)
                .map(|b| !b)
                .map_err(|e| bad_field("Upload-Incomplete", e)),
        };
    }
    match text(h, "upload-complete")? {
        None => Err(ApiError::BadRequest("Upload-Complete is required".into())),
        Some(v) => sf::parse_boolean(v).map_err(|e| bad_field("Upload-Complete", e)),
    }
}

fn media_type(h: &HeaderMap) -> Result<Option<String>, ApiError> {
    Ok(text(h, "content-type")?.map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }))
}

/// The request's tus-style metadata (`Upload-Metadata`, else `Ferry-Metadata`) as a JSON object
/// of strings, and the raw field.
fn metadata(h: &HeaderMap) -> Result<(String, Option<String>), ApiError> {
    let raw = match (text(h, "upload-metadata")?, text(h, "ferry-metadata")?) {
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => return Ok(("{}".into(), None)),
    };
    Ok((parse_metadata(raw)?, Some(raw.to_string())))
}

/// Parses tus-style metadata (`key base64,key2 base64`) into a JSON object of strings. Public
/// so the fuzz target can reach it: it reads bytes straight from the network.
pub fn parse_metadata(raw: &str) -> Result<String, ApiError> {
    if raw.len() > MAX_METADATA_BYTES {
        return Err(ApiError::BadRequest(format!(
            "metadata over {MAX_METADATA_BYTES} bytes"
        )));
    }
    let mut map = serde_json::Map::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = match pair.split_once(' ') {
            Some((k, v)) => (k, v.trim()),
            None => (pair, ""),
        };
        if key.is_empty() || key.len() > 64 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::BadRequest(format!(
                "metadata key {key:?} is not a short ASCII token"
            )));
        }
        let bytes = STANDARD.decode(value).map_err(|_| {
            ApiError::BadRequest(format!("metadata value of {key:?} is not base64"))
        })?;
        let value = String::from_utf8(bytes)
            .map_err(|_| ApiError::BadRequest(format!("metadata value of {key:?} is not UTF-8")))?;
        if map.insert(key.to_string(), value.into()).is_some() {
            return Err(ApiError::BadRequest(format!(
                "metadata key {key:?} repeated"
            )));
        }
        if map.len() > MAX_METADATA_KEYS {
            return Err(ApiError::BadRequest(format!(
                "more than {MAX_METADATA_KEYS} metadata keys"
            )));
        }
    }
    Ok(serde_json::Value::Object(map).to_string())
}

/// Metadata given as a JSON object of strings (the receipts batch), checked by the very rules
/// of the header form: it is written in that form and parsed by [`parse_metadata`], so what
/// one form accepts the other does, and both store the same `metadata_json`.
fn metadata_from_map(map: &std::collections::BTreeMap<String, String>) -> Result<String, ApiError> {
    let mut raw = String::new();
    for (key, value) in map {
        // The header form separates pairs with `,` and key from value with a space.
        if key.contains(',') || key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::BadRequest(format!(
                "metadata key {:?} is not a short ASCII token",
                key.chars().take(64).collect::<String>()
            )));
        }
        if !raw.is_empty() {
            raw.push(',');
        }
        raw.push_str(key);
        raw.push(' ');
        raw.push_str(&STANDARD.encode(value.as_bytes()));
        if raw.len() > MAX_METADATA_BYTES {
            break;
        }
    }
    parse_metadata(&raw)
}

fn digest(h: &HeaderMap, name: &str) -> Result<Option<[u8; 32]>, ApiError> {
    text(h, name)?
        .map(|v| sf::sha256_from_digest_field(v).map_err(|e| bad_field(name, e)))
        .transpose()
        .map(Option::flatten)
}

/// The whole-upload digests a request promises in `Repr-Digest` (none when it sends none).
fn repr(h: &HeaderMap) -> Result<ReprDigests, ApiError> {
    Ok(text(h, "repr-digest")?
        .map(|v| sf::repr_digests(v).map_err(|e| bad_field("repr-digest", e)))
        .transpose()?
        .unwrap_or_default())
}

fn tus_checksum(h: &HeaderMap) -> Result<Option<ChunkCheck>, ApiError> {
    let Some(v) = text(h, "upload-checksum")? else {
        return Ok(None);
    };
    let (alg, b64) = v.split_once(' ').ok_or_else(|| {
        ApiError::BadRequest("Upload-Checksum must be `<algorithm> <base64>`".into())
    })?;
    let bytes = STANDARD
        .decode(b64.trim())
        .map_err(|_| ApiError::BadRequest("Upload-Checksum value is not base64".into()))?;
    let wrong = || ApiError::BadRequest(format!("Upload-Checksum {alg} has the wrong length"));
    Ok(Some(match alg {
        "sha1" => ChunkCheck::TusSha1(bytes.try_into().map_err(|_| wrong())?),
        "sha256" => ChunkCheck::TusSha256(bytes.try_into().map_err(|_| wrong())?),
        "md5" => ChunkCheck::TusMd5(bytes.try_into().map_err(|_| wrong())?),
        other => {
            return Err(ApiError::BadRequest(format!(
                "Upload-Checksum algorithm {:?} not supported (sha1, sha256, md5)",
                other.chars().take(20).collect::<String>()
            )));
        }
    }))
}

fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

fn set(h: &mut HeaderMap, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        h.insert(HeaderName::from_static(name), v);
    }
}

fn upload_limit(e: &Engine) -> String {
    format!(
        "max-size={}, max-append-size={}, max-age={}",
        e.limits.max_size_bytes,
        e.limits.max_append_size_bytes,
        e.limits.max_age.as_secs()
    )
}

fn expires_http(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// What the client records as stored: the object id and the digests the server computed.
fn object_headers(h: &mut HeaderMap, o: &ObjectRow) {
    set(h, "ferry-object-id", &o.id);
    set(h, "ferry-blake3", &o.id);
    set(h, "ferry-size-bytes", o.size_bytes);
    if let Some(b) = unhex(&o.sha256_hex) {
        set(
            h,
            "repr-digest",
            format!("sha-256={}", sf::serialize_bytes(&b)),
        );
    }
}

fn location(h: &mut HeaderMap, id: &str) {
    set(h, "location", format!("{UPLOADS_PATH}/{id}"));
}

fn complete_field(h: &mut HeaderMap, version: u8, complete: bool) {
    if version == 3 {
        set(h, "upload-incomplete", sf::serialize_boolean(!complete));
    } else {
        set(h, "upload-complete", sf::serialize_boolean(complete));
    }
}

async fn not_allowed() -> ApiError {
    ApiError::BadRequest("GET on an upload is not supported; use HEAD".into())
}

async fn options(State(s): State<Arc<AppState>>) -> Response {
    // 200, not 204: PhotoKit-style preflights look for `200` + `Upload-Limit`.
    let mut res = StatusCode::OK.into_response();
    let h = res.headers_mut();
    set(h, "tus-resumable", "1.0.0");
    set(h, "tus-version", "1.0.0");
    set(h, "tus-extension", TUS_EXTENSIONS);
    set(h, "tus-max-size", s.engine.limits.max_size_bytes);
    set(h, "tus-checksum-algorithm", "sha1,sha256,md5");
    set(h, "accept-patch", "application/partial-upload");
    set(h, "upload-limit", upload_limit(&s.engine));
    // RFC 9530: the digests this server wants with an upload, BLAKE3 first. It checks either
    // before an upload becomes an object, so a client that knows the BLAKE3 already (Ferry's
    // jobs pin it) need not hash the file again to send it.
    set(h, "want-repr-digest", "blake3=9, sha-256=5");
    set(h, "allow", "OPTIONS, POST, PUT, HEAD, PATCH, DELETE");
    res
}

async fn create(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    method: Method,
    h: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let e = &s.engine;
    let user = caller.user_id;
    match detect(&h, true)? {
        Proto::Tus => {
            if method != Method::POST {
                return Err(ApiError::BadRequest("tus creation uses POST".into()));
            }
            let length = tus_u64(&h, "upload-length")?;
            let deferred = match text(&h, "upload-defer-length")? {
                None => false,
                Some("1") => true,
                Some(_) => {
                    return Err(ApiError::BadRequest("Upload-Defer-Length must be 1".into()));
                }
            };
            if length.is_some() == deferred {
                return Err(ApiError::BadRequest(
                    "send exactly one of Upload-Length and Upload-Defer-Length: 1".into(),
                ));
            }
            let with_body = match media_type(&h)?.as_deref() {
                Some("application/offset+octet-stream") => true,
                _ if has_body(&h) => {
                    return Err(ApiError::UnsupportedMediaType(
                        "creation-with-upload needs Content-Type: application/offset+octet-stream"
                            .into(),
                    ));
                }
                _ => false,
            };
            let check = tus_checksum(&h)?;
            let (meta_json, meta_raw) = metadata(&h)?;
            let (row, fresh) = match e
                .create(
                    user,
                    "tus",
                    length,
                    meta_json,
                    meta_raw,
                    repr(&h)?,
                    key(&h)?,
                )
                .await?
            {
                Created::New(row, fresh) => (row, fresh),
                Created::Existing(row) => return existing(e, user, Proto::Tus, row, body).await,
            };
            let outcome = if with_body || length == Some(0) {
                let append = Append {
                    offset_bytes: 0,
                    complete: false,
                    length_bytes: None,
                    check,
                    ietf: false,
                    repr: ReprDigests::default(),
                };
                Some(
                    e.append_created(row.clone(), fresh, user, append, body)
                        .await?,
                )
            } else {
                None
            };
            let mut res = StatusCode::CREATED.into_response();
            let hm = res.headers_mut();
            set(hm, "tus-resumable", "1.0.0");
            location(hm, &row.id);
            match outcome {
                Some(Outcome::Complete(r, o)) => {
                    set(hm, "upload-offset", r.offset_bytes);
                    object_headers(hm, &o);
                }
                Some(Outcome::Progress(r)) => {
                    set(hm, "upload-offset", r.offset_bytes);
                    set(hm, "upload-expires", expires_http(r.expires_unix_ms));
                }
                None => set(hm, "upload-expires", expires_http(row.expires_unix_ms)),
            }
            Ok(res)
        }
        Proto::Ietf(v) => {
            let complete = ietf_complete(&h, v)?;
            let length = sf_u64(&h, "upload-length")?;
            let (meta_json, meta_raw) = metadata(&h)?;
            let check = digest(&h, "content-digest")?.map(ChunkCheck::ContentDigestSha256);
            let (row, fresh) = match e
                .create(
                    user,
                    "ietf",
                    length,
                    meta_json,
                    meta_raw,
                    repr(&h)?,
                    key(&h)?,
                )
                .await?
            {
                Created::New(row, fresh) => (row, fresh),
                Created::Existing(row) => {
                    return existing(e, user, Proto::Ietf(v), row, body).await;
                }
            };
            let append = Append {
                offset_bytes: 0,
                complete,
                length_bytes: None,
                check,
                ietf: true,
                repr: ReprDigests::default(),
            };
            let id = row.id.clone();
            let outcome = e.append_created(row, fresh, user, append, body).await?;
            let mut res = StatusCode::CREATED.into_response();
            let hm = res.headers_mut();
            location(hm, &id);
            ietf_outcome_headers(hm, e, v, &outcome);
            Ok(res)
        }
        Proto::Plain => {
            let (meta_json, meta_raw) = metadata(&h)?;
            let check = digest(&h, "content-digest")?.map(ChunkCheck::ContentDigestSha256);
            let length = tus_u64(&h, "content-length")?;
            let (row, fresh) = match e
                .create(
                    user,
                    "plain",
                    length,
                    meta_json,
                    meta_raw,
                    repr(&h)?,
                    key(&h)?,
                )
                .await?
            {
                Created::New(row, fresh) => (row, fresh),
                Created::Existing(row) => {
                    return existing(e, user, Proto::Plain, row, body).await;
                }
            };
            let append = Append {
                offset_bytes: 0,
                complete: true,
                length_bytes: None,
                check,
                ietf: true,
                repr: ReprDigests::default(),
            };
            let id = row.id.clone();
            let outcome = e.append_created(row, fresh, user, append, body).await?;
            let mut res = StatusCode::CREATED.into_response();
            let hm = res.headers_mut();
            location(hm, &id);
            if let Outcome::Complete(_, o) = &outcome {
                object_headers(hm, o);
            }
            Ok(res)
        }
    }
}

/// The creation's `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header: an sf-string;
/// a bare token is taken as it is), scoped to the request's credentials.
fn key(h: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = text(h, "idempotency-key")? else {
        return Ok(None);
    };
    let v = v.trim();
    let inner = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v);
    let printable = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
    if inner.is_empty() || inner.len() > 255 || !inner.bytes().all(printable) {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be a string of 1 to 255 printable ASCII characters".into(),
        ));
    }
    let auth = h.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    Ok(Some(scoped_key(auth, inner)))
}

/// The answer to a creation whose idempotency key names an upload that exists: that upload, as
/// the first creation would have been answered had its answer arrived (finished: the object;
/// not yet: where to resume). The body is read to its end and dropped, so the client, still
/// sending, gets to read the answer.
async fn existing(
    e: &Engine,
    user_id: i64,
    proto: Proto,
    row: UploadRow,
    body: Body,
) -> Result<Response, ApiError> {
    use futures_util::StreamExt as _;
    let mut stream = body.into_data_stream();
    loop {
        match tokio::time::timeout(e.limits.body_idle_timeout, stream.next()).await {
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(err))) => return Err(ApiError::BodyInterrupted(err.to_string())),
            Ok(None) => break,
            Err(_) => return Err(ApiError::Timeout),
        }
    }
    let row = if row.object_id.is_some() {
        row
    } else {
        e.get_settled(&row.id, user_id).await?
    };
    let outcome = match &row.object_id {
        Some(o) => {
            let object = e.meta.object(o).await?.ok_or(ApiError::Gone)?;
            Outcome::Complete(row.clone(), object)
        }
        None => Outcome::Progress(row.clone()),
    };
    let mut res = StatusCode::CREATED.into_response();
    let hm = res.headers_mut();
    location(hm, &row.id);
    match proto {
        Proto::Tus => {
            set(hm, "tus-resumable", "1.0.0");
            set(hm, "upload-offset", row.offset_bytes);
            match &outcome {
                Outcome::Complete(_, o) => object_headers(hm, o),
                Outcome::Progress(r) => set(hm, "upload-expires", expires_http(r.expires_unix_ms)),
            }
        }
        Proto::Ietf(v) => ietf_outcome_headers(hm, e, v, &outcome),
        Proto::Plain => {
            if let Outcome::Complete(_, o) = &outcome {
                object_headers(hm, o);
            }
        }
    }
    Ok(res)
}

fn ietf_outcome_headers(hm: &mut HeaderMap, e: &Engine, version: u8, outcome: &Outcome) {
    match outcome {
        Outcome::Complete(r, o) => {
            set(hm, "upload-offset", r.offset_bytes);
            complete_field(hm, version, true);
            object_headers(hm, o);
        }
        Outcome::Progress(r) => {
            set(hm, "upload-offset", r.offset_bytes);
            complete_field(hm, version, false);
            set(hm, "upload-limit", upload_limit(e));
        }
    }
}

async fn head_upload(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let proto = detect(&h, false)?;
    let row: UploadRow = s.engine.get_settled(&id, caller.user_id).await?;
    let object = match &row.object_id {
        Some(o) => s.engine.meta.object(o).await?,
        None => None,
    };
    let mut res = match proto {
        Proto::Tus => StatusCode::OK.into_response(),
        _ => StatusCode::NO_CONTENT.into_response(),
    };
    let hm = res.headers_mut();
    set(hm, "cache-control", "no-store");
    set(hm, "upload-offset", row.offset_bytes);
    match row.length_bytes {
        Some(l) => set(hm, "upload-length", l),
        None if proto == Proto::Tus => set(hm, "upload-defer-length", "1"),
        None => {}
    }
    match proto {
        Proto::Tus => {
            set(hm, "tus-resumable", "1.0.0");
            if let Some(m) = &row.metadata_raw {
                set(hm, "upload-metadata", m);
            }
            if row.object_id.is_none() {
                set(hm, "upload-expires", expires_http(row.expires_unix_ms));
            }
        }
        Proto::Ietf(v) => {
            complete_field(hm, v, row.object_id.is_some());
            set(hm, "upload-limit", upload_limit(&s.engine));
        }
        Proto::Plain => {}
    }
    if let Some(o) = &object {
        object_headers(hm, o);
    }
    Ok(res)
}

async fn patch_upload(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let e = &s.engine;
    match detect(&h, false)? {
        Proto::Tus => {
            if media_type(&h)?.as_deref() != Some("application/offset+octet-stream") {
                return Err(ApiError::UnsupportedMediaType(
                    "tus PATCH needs Content-Type: application/offset+octet-stream".into(),
                ));
            }
            let offset = tus_u64(&h, "upload-offset")?
                .ok_or_else(|| ApiError::BadRequest("Upload-Offset is required".into()))?;
            let append = Append {
                offset_bytes: offset,
                complete: false,
                length_bytes: tus_u64(&h, "upload-length")?,
                check: tus_checksum(&h)?,
                ietf: false,
                repr: ReprDigests::default(),
            };
            let outcome = e.append(&id, caller.user_id, append, body).await?;
            let mut res = StatusCode::NO_CONTENT.into_response();
            let hm = res.headers_mut();
            set(hm, "tus-resumable", "1.0.0");
            match &outcome {
                Outcome::Complete(r, o) => {
                    set(hm, "upload-offset", r.offset_bytes);
                    object_headers(hm, o);
                }
                Outcome::Progress(r) => {
                    set(hm, "upload-offset", r.offset_bytes);
                    set(hm, "upload-expires", expires_http(r.expires_unix_ms));
                }
            }
            Ok(res)
        }
        Proto::Ietf(v) => {
            // Versions 7 and 8 name the append media type; older drafts (and tus-js-client's
            // ietf-draft-03 mode) send none or the tus one.
            let media = media_type(&h)?;
            if v >= 7 && media.as_deref() != Some("application/partial-upload") {
                return Err(ApiError::UnsupportedMediaType(
                    "draft PATCH needs Content-Type: application/partial-upload".into(),
                ));
            }
            let offset = sf_u64(&h, "upload-offset")?
                .ok_or_else(|| ApiError::BadRequest("Upload-Offset is required".into()))?;
            let append = Append {
                offset_bytes: offset,
                complete: ietf_complete(&h, v)?,
                length_bytes: sf_u64(&h, "upload-length")?,
                check: digest(&h, "content-digest")?.map(ChunkCheck::ContentDigestSha256),
                ietf: true,
                // A client still hashing when it created the upload sends the digest with a
                // later append (in practice the last).
                repr: repr(&h)?,
            };
            let outcome = e.append(&id, caller.user_id, append, body).await?;
            let status = match &outcome {
                Outcome::Complete(..) => StatusCode::OK,
                Outcome::Progress(_) => StatusCode::NO_CONTENT,
            };
            let mut res = status.into_response();
            ietf_outcome_headers(res.headers_mut(), e, v, &outcome);
            Ok(res)
        }
        // `detect(.., false)` never yields `Plain`.
        Proto::Plain => Err(ApiError::BadRequest(
            "not a resumable upload request".into(),
        )),
    }
}

async fn delete_upload(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let proto = detect(&h, false)?;
    s.engine
        .delete(&id, caller.user_id, proto != Proto::Tus)
        .await?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    if proto == Proto::Tus {
        set(res.headers_mut(), "tus-resumable", "1.0.0");
    }
    Ok(res)
}

#[derive(Debug, serde::Deserialize)]
struct CheckRequest {
    #[serde(default)]
    blake3: Vec<String>,
    #[serde(default)]
    sha256: Vec<String>,
}

/// `POST /v1/objects/check`: which of these content hashes the caller's user already stored.
async fn check_objects(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(body, 4 << 20)
        .await
        .map_err(|_| ApiError::TooLarge("check request over 4 MiB".into()))?;
    let req: CheckRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!("check request is not the expected JSON: {e}"))
    })?;
    if req.blake3.len() + req.sha256.len() > MAX_CHECK_HASHES {
        return Err(ApiError::TooLarge(format!(
            "more than {MAX_CHECK_HASHES} hashes"
        )));
    }
    let norm = |v: Vec<String>| -> Result<Vec<String>, ApiError> {
        v.into_iter()
            .map(|x| {
                let x = x.to_ascii_lowercase();
                if valid_object_id(&x) {
                    Ok(x)
                } else {
                    Err(ApiError::BadRequest("hashes are 64 hex digits".into()))
                }
            })
            .collect()
    };
    let (b, s2) = s
        .engine
        .meta
        .objects_present(caller.user_id, &norm(req.blake3)?, &norm(req.sha256)?)
        .await?;
    let out = serde_json::json!({ "blake3": b, "sha256": s2 });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        out.to_string(),
    )
        .into_response())
}

/// `GET`/`HEAD /v1/objects/{id}`: the stored bytes (HEAD: size and digests only) of an object
/// the caller's user owns (any other is 404, stored or not). GET honours one
/// `Range: bytes=…`: 206 with `Content-Range`, or 416 when it starts past the end.
async fn get_object(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    method: Method,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    if !valid_object_id(&id) {
        return Err(ApiError::NotFound);
    }
    // The SQL row is written after the blob is durable: no row, no object, whatever the store holds.
    let o = s
        .engine
        .meta
        .owned_object(caller.user_id, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    // Content-addressed: the bytes behind this tag never change.
    let etag = format!("\"{}\"", o.id);
    let range = if method == Method::GET {
        requested_range(&h, &etag, o.size_bytes)?
    } else {
        None
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let r = s
            .engine
            .blobs
            .stream_range(&id, range.clone())
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .ok_or(ApiError::NotFound)?;
        Body::from_stream(r)
    };
    let mut res = Response::new(body);
    let hm = res.headers_mut();
    set(hm, "content-type", "application/octet-stream");
    set(hm, "accept-ranges", "bytes");
    set(hm, "etag", &etag);
    match &range {
        Some(r) => {
            set(hm, "content-length", r.end - r.start);
            set(
                hm,
                "content-range",
                format!("bytes {}-{}/{}", r.start, r.end - 1, o.size_bytes),
            );
        }
        None => set(hm, "content-length", o.size_bytes),
    }
    object_headers(hm, &o);
    if range.is_some() {
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(res)
}

/// The bytes a GET asks for with `Range`: one `bytes=START-`, `bytes=START-END` or
/// `bytes=-SUFFIX`, kept inside the object. `None` (the whole object, 200) for no `Range`,
/// another unit, several ranges or a malformed one, and when `If-Range` is not this object's
/// ETag — RFC 9110 lets a server ignore those. Starting at or past the end: 416.
fn requested_range(
    h: &HeaderMap,
    etag: &str,
    size_bytes: u64,
) -> Result<Option<std::ops::Range<u64>>, ApiError> {
    let Some(value) = h.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if let Some(cond) = h.get(header::IF_RANGE)
        && cond.to_str().ok().map(str::trim) != Some(etag)
    {
        return Ok(None);
    }
    let value = value.trim();
    let Some(spec) = value
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| value[6..].trim())
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(None);
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let unsatisfiable = ApiError::RangeNotSatisfiable { size_bytes };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, true) => Ok(None),
        (true, false) => {
            let Some(suffix) = number(last) else {
                return Ok(None);
            };
            if suffix == 0 || size_bytes == 0 {
                return Err(unsatisfiable);
            }
            Ok(Some(size_bytes - suffix.min(size_bytes)..size_bytes))
        }
        (false, open_ended) => {
            let Some(start) = number(first) else {
                return Ok(None);
            };
            let end = if open_ended {
                size_bytes
            } else {
                match number(last) {
                    Some(l) if l >= start => l.saturating_add(1).min(size_bytes),
                    _ => return Ok(None),
                }
            };
            if start >= size_bytes {
                return Err(unsatisfiable);
            }
            Ok(Some(start..end))
        }
    }
}

/// A receipt's metadata, read back as the map of strings it was stored as: a
/// `serde_json::Value` would give serde_json's private key `$serde_json::private::RawValue` a
/// meaning (found by fuzzing server_fields).
fn receipt_json(r: &crate::meta::Receipt) -> serde_json::Value {
    let metadata =
        serde_json::from_str::<std::collections::BTreeMap<String, String>>(&r.metadata_json)
            .unwrap_or_default();
    serde_json::json!({
        "upload_id": r.upload_id,
        "received_ms": r.received_unix_ms,
        "metadata": metadata,
    })
}

fn json_response(v: &serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// `GET /v1/objects/{id}/receipts`: the caller's user's uploads that produced an object it
/// owns, oldest first, with their metadata.
async fn object_receipts(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !valid_object_id(&id) {
        return Err(ApiError::NotFound);
    }
    let meta = &s.engine.meta;
    meta.owned_object(caller.user_id, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let receipts: Vec<serde_json::Value> = meta
        .receipts(caller.user_id, &id)
        .await?
        .iter()
        .map(receipt_json)
        .collect();
    Ok(json_response(&serde_json::json!({ "receipts": receipts })))
}

/// A receipt as answered when it is added: the receipt and whether it is new.
fn added_json(added: &ReceiptAdded) -> (StatusCode, Option<serde_json::Value>) {
    match added {
        ReceiptAdded::Created(r) => (StatusCode::CREATED, Some(receipt_json(r))),
        ReceiptAdded::Existing(r) => (StatusCode::OK, Some(receipt_json(r))),
        ReceiptAdded::NotOwned => (StatusCode::NOT_FOUND, None),
    }
}

/// `POST /v1/objects/{id}/receipts`: records that the caller's user holds this object at
/// another place too — the metadata of one more copy of the same bytes (a second path, another
/// device, a rename) — without uploading them again. The metadata travels as an upload's does
/// (`Ferry-Metadata` or `Upload-Metadata`, tus format) and is required. 201 with the new
/// receipt; 200 with the one the user already has with exactly this metadata (so repeating the
/// request is harmless and needs no idempotency key); 404 for an object the user does not hold,
/// whoever else does (checked after the metadata, so a 400 says nothing about the object).
async fn add_receipt(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let (metadata_json, metadata_raw) = metadata(&h)?;
    if metadata_raw.is_none() || metadata_json == "{}" {
        return Err(ApiError::BadRequest(
            "a receipt needs its metadata in Ferry-Metadata or Upload-Metadata".into(),
        ));
    }
    if !valid_object_id(&id) {
        return Err(ApiError::NotFound);
    }
    let item = NewReceipt {
        object_id: id,
        metadata_json,
        metadata_raw,
    };
    let added = s
        .engine
        .meta
        .add_receipts(caller.user_id, &[item], crate::uploads::now_unix_ms())
        .await?;
    let (status, receipt) = added
        .first()
        .map(added_json)
        .unwrap_or((StatusCode::NOT_FOUND, None));
    let Some(receipt) = receipt else {
        return Err(ApiError::NotFound);
    };
    let mut res = json_response(&receipt);
    *res.status_mut() = status;
    Ok(res)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptsRequest {
    receipts: Vec<ReceiptItem>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptItem {
    object_id: String,
    metadata: std::collections::BTreeMap<String, String>,
}

/// `POST /v1/objects/receipts`: [`add_receipt`] for up to 1000 objects in one request and one
/// commit (a client that found a whole page of its library already stored records it at the
/// cost of one). A malformed item refuses the whole request (400, nothing written); otherwise
/// each item is answered in order with the status the single route would give it (201, 200 or
/// 404), and the receipt for the first two.
async fn add_receipts(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_RECEIPT_BATCH_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge("receipts request over 12 MiB".into()))?;
    let req: ReceiptsRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!("receipts request is not the expected JSON: {e}"))
    })?;
    if req.receipts.len() > MAX_RECEIPT_BATCH {
        return Err(ApiError::TooLarge(format!(
            "more than {MAX_RECEIPT_BATCH} receipts"
        )));
    }
    let mut items = Vec::with_capacity(req.receipts.len());
    for (i, r) in req.receipts.into_iter().enumerate() {
        let object_id = r.object_id.to_ascii_lowercase();
        if !valid_object_id(&object_id) {
            return Err(ApiError::BadRequest(format!(
                "receipts[{i}]: object_id is not 64 hex digits"
            )));
        }
        if r.metadata.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "receipts[{i}]: a receipt needs metadata"
            )));
        }
        let metadata_json = metadata_from_map(&r.metadata).map_err(|e| match e {
            ApiError::BadRequest(d) => ApiError::BadRequest(format!("receipts[{i}]: {d}")),
            other => other,
        })?;
        items.push(NewReceipt {
            object_id,
            metadata_json,
            metadata_raw: None,
        });
    }
    let added = s
        .engine
        .meta
        .add_receipts(caller.user_id, &items, crate::uploads::now_unix_ms())
        .await?;
    let answers: Vec<serde_json::Value> = items
        .iter()
        .zip(&added)
        .map(|(item, a)| {
            let (status, receipt) = added_json(a);
            let mut v = serde_json::json!({
                "object_id": item.object_id,
                "status": status.as_u16(),
            });
            if let Some(r) = receipt {
                v["receipt"] = r;
            }
            v
        })
        .collect();
    Ok(json_response(&serde_json::json!({ "receipts": answers })))
}

/// `GET /v1/objects?after=CURSOR&limit=N`: the caller's user's objects in the order the user
/// first stored them, `limit` (default 100, at most 1000) per page, each with its newest
/// receipts. `next_after` is the cursor of the next page (`null`: none yet). The cursor is the
/// position of the page's last object in the user's own sequence, which objects stored later
/// always extend: a client paging while uploads complete never skips or repeats one.
async fn list_objects(
    State(s): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let mut after: i64 = 0;
    let mut limit = LIST_DEFAULT_LIMIT;
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "after" if value.is_empty() => {}
            "after" => {
                after = value
                    .parse::<i64>()
                    .ok()
                    .filter(|a| *a >= 0)
                    .ok_or_else(|| {
                        ApiError::BadRequest("after is not a cursor this server gave".into())
                    })?;
            }
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=LIST_MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit must be a number from 1 to {LIST_MAX_LIMIT}"
                        ))
                    })?;
            }
            _ => {}
        }
    }
    let meta = &s.engine.meta;
    // One more than asked: whether a next page exists, without a second query.
    let mut page = meta.list_objects(caller.user_id, after, limit + 1).await?;
    let more = page.len() > limit;
    page.truncate(limit);
    let ids: Vec<String> = page.iter().map(|o| o.object.id.clone()).collect();
    let mut receipts: std::collections::HashMap<String, Vec<serde_json::Value>> =
        std::collections::HashMap::new();
    for (object_id, r) in meta
        .receipts_of(caller.user_id, &ids, LIST_RECEIPTS_PER_OBJECT)
        .await?
    {
        receipts
            .entry(object_id)
            .or_default()
            .push(receipt_json(&r));
    }
    let objects: Vec<serde_json::Value> = page
        .iter()
        .map(|o| {
            serde_json::json!({
                "id": o.object.id,
                "size_bytes": o.object.size_bytes,
                "sha256": o.object.sha256_hex,
                "stored_ms": o.first_stored_ms,
                "receipts": receipts.remove(&o.object.id).unwrap_or_default(),
            })
        })
        .collect();
    let next_after = match page.last() {
        Some(last) if more => serde_json::Value::from(last.seq.to_string()),
        _ => serde_json::Value::Null,
    };
    Ok(json_response(&serde_json::json!({
        "objects": objects,
        "next_after": next_after,
    })))
}
