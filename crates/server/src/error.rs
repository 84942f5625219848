//! Every way a request can fail, and the one place that turns each into an HTTP answer.
//!
//! Handlers return `ApiError`; `IntoResponse` picks the status, the protocol headers a client
//! needs to recover (`Upload-Offset` on a 409, `Tus-Version` on a 412, `WWW-Authenticate` on a
//! 401) and an `application/problem+json` body naming the draft's problem type where one exists.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const PROBLEM_BASE: &str = "https://iana.org/assignments/http-problem-types#";
/// The problem type of a refusal for quota (`Ferry-Problem: quota-exceeded` says the same).
pub const QUOTA_EXCEEDED_TYPE: &str = "urn:ferry:problem:quota-exceeded";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("Tus-Resumable version not supported; this server speaks 1.0.0")]
    UnsupportedTusVersion,
    #[error("Upload-Draft-Interop-Version {0:?} not supported; supported: 3, 5, 6, 7, 8")]
    UnknownInteropVersion(String),
    #[error("no such upload or object")]
    NotFound,
    /// A `Range` that starts at or past the object's end: 416 with `Content-Range: bytes */N`.
    #[error("range not satisfiable: the object has {size_bytes} bytes")]
    RangeNotSatisfiable { size_bytes: u64 },
    #[error("upload expired or was cancelled")]
    Gone,
    #[error("Upload-Offset {provided} does not match the upload's offset {expected}")]
    OffsetMismatch { expected: u64, provided: u64 },
    #[error("upload is already complete")]
    Completed,
    #[error("inconsistent upload length: {0}")]
    InconsistentLength(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("too large: {0}")]
    TooLarge(String),
    /// The object would not fit the user's quota (at creation, for a declared length, and at
    /// completion): 413 with `Ferry-Problem: quota-exceeded`.
    #[error(
        "quota exceeded: {used_bytes} of {quota_bytes} bytes used; this upload needs {needed_bytes} more"
    )]
    QuotaExceeded {
        used_bytes: u64,
        quota_bytes: u64,
        needed_bytes: u64,
    },
    #[error("another request is appending to this upload")]
    Locked { ietf: bool },
    #[error("Upload-Checksum does not match the received chunk; the chunk was discarded")]
    ChecksumMismatch,
    #[error("digest mismatch: {0}")]
    DigestMismatch(String),
    /// The completed bytes do not hash to the promised `Repr-Digest`: the upload was dropped
    /// whole (answered with `Ferry-Problem: upload-discarded`, so a client starts over, or
    /// finds its file changed, without asking).
    #[error("digest mismatch: {0}")]
    UploadDiscarded(String),
    /// An `Idempotency-Key` seen before with another request shape (protocol, length,
    /// digests): 422, as draft-ietf-httpapi-idempotency-key-header says.
    #[error("Idempotency-Key was already used for a different upload")]
    IdempotencyKeyReused,
    /// Another request with the same `Idempotency-Key` is being handled: 409, try again.
    #[error("a request with this Idempotency-Key is still in progress")]
    IdempotencyConflict,
    #[error("request body stopped: {0}")]
    BodyInterrupted(String),
    #[error("request body idle for too long")]
    Timeout,
    /// The server's disk (blobs, partial files or metadata) is full: nothing was lost, the
    /// request may be repeated once there is room (507, retried by clients as a server error).
    #[error("insufficient storage: {0}")]
    InsufficientStorage(String),
    /// A store the server needs (the database, the object store) could not be reached or
    /// timed out: nothing was recorded, the request may be repeated (503, `Retry-After`).
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_)
            | ApiError::UnknownInteropVersion(_)
            | ApiError::Completed
            | ApiError::InconsistentLength(_)
            | ApiError::DigestMismatch(_)
            | ApiError::UploadDiscarded(_)
            | ApiError::BodyInterrupted(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedTusVersion => StatusCode::PRECONDITION_FAILED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Gone => StatusCode::GONE,
            ApiError::OffsetMismatch { .. }
            | ApiError::Locked { ietf: true }
            | ApiError::IdempotencyConflict => StatusCode::CONFLICT,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Locked { ietf: false } => StatusCode::LOCKED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge(_) | ApiError::QuotaExceeded { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // tus checksum extension: "460 Checksum Mismatch".
            ApiError::ChecksumMismatch => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem_type(&self) -> Option<&'static str> {
        match self {
            ApiError::OffsetMismatch { .. } => Some("mismatching-upload-offset"),
            ApiError::Completed => Some("completed-upload"),
            ApiError::InconsistentLength(_) => Some("inconsistent-upload-length"),
            _ => None,
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull {
            return ApiError::InsufficientStorage(format!("i/o: {e}"));
        }
        ApiError::Internal(format!("i/o: {e}"))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::meta::is_storage_full(&e) {
            return ApiError::InsufficientStorage(format!("metadata store: {e}"));
        }
        // The connection failed, or the database gave up on the write: the request may simply
        // be repeated (a connection lost during COMMIT may have committed it; every write is
        // safe to repeat: an append then meets its new offset, a receipt its twin).
        if crate::meta::is_unreachable(&e) {
            return ApiError::Unavailable(format!("metadata store: {e}"));
        }
        ApiError::Internal(format!("metadata store: {e}"))
    }
}

impl From<object_store::Error> for ApiError {
    fn from(e: object_store::Error) -> Self {
        if crate::backend::unreachable(&e) {
            return ApiError::Unavailable(format!("blob store: {e}"));
        }
        ApiError::Internal(format!("blob store: {e}"))
    }
}

impl From<crate::blobs::BlobError> for ApiError {
    fn from(e: crate::blobs::BlobError) -> Self {
        match e {
            crate::blobs::BlobError::Io(io) => io.into(),
            crate::blobs::BlobError::Store(s) => s.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, %status, "request refused");
        }
        let mut body = serde_json::json!({
            "status": status.as_u16(),
            "title": status.canonical_reason().unwrap_or("error"),
            "detail": self.to_string(),
        });
        if let Some(t) = self.problem_type() {
            body["type"] = format!("{PROBLEM_BASE}{t}").into();
        }
        if let ApiError::OffsetMismatch { expected, provided } = self {
            body["expected-offset"] = expected.into();
            body["provided-offset"] = provided.into();
        }
        if let ApiError::QuotaExceeded {
            used_bytes,
            quota_bytes,
            needed_bytes,
        } = self
        {
            body["type"] = QUOTA_EXCEEDED_TYPE.into();
            // RFC 9110's name for 413.
            body["title"] = "Content Too Large".into();
            body["used-bytes"] = used_bytes.into();
            body["quota-bytes"] = quota_bytes.into();
            body["needed-bytes"] = needed_bytes.into();
        }
        let mut res = (status, body.to_string()).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        h.insert("tus-resumable", HeaderValue::from_static("1.0.0"));
        match self {
            ApiError::Unauthorized => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"ferry\""),
                );
            }
            ApiError::UnsupportedTusVersion => {
                h.insert("tus-version", HeaderValue::from_static("1.0.0"));
            }
            ApiError::Unavailable(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::OffsetMismatch { expected, .. } => {
                h.insert("upload-offset", HeaderValue::from(expected));
            }
            ApiError::UploadDiscarded(_) => {
                h.insert(
                    "ferry-problem",
                    HeaderValue::from_static("upload-discarded"),
                );
            }
            ApiError::QuotaExceeded { .. } => {
                h.insert("ferry-problem", HeaderValue::from_static("quota-exceeded"));
            }
            ApiError::RangeNotSatisfiable { size_bytes } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size_bytes}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        res
    }
}
