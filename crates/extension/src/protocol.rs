//! The extension protocol, versions 1 and 2: the one definition of every message Ferry and an
//! extension exchange. Version 2 adds only the migration calls (export, import, their status);
//! a version 1 extension sees exactly what it always saw. `docs/protocol.md` describes the same thing for authors in other languages; a test
//! there keeps the examples in step with these types.
//!
//! Framing: JSON-RPC 2.0, one UTF-8 JSON message per line (`\n`), over the extension's stdin
//! (Ferry → extension) and stdout (extension → Ferry). stderr is the extension's log. No line
//! may exceed [`MAX_MESSAGE_BYTES`] in either direction.
//!
//! Who calls whom:
//! - Ferry → extension requests: [`INITIALIZE`] (once, first), [`PROCESS_JOBS`] (one or more
//!   times per launch, never two at once). Notification: [`WILL_TERMINATE`]. Ferry closes the
//!   extension's stdin when it has nothing more to ask; the extension then exits.
//! - Extension → Ferry requests (only while a `process_jobs` call is outstanding): the
//!   `library.*`, `jobs.*` and `kv.*` methods below. Request ids of the two directions are
//!   independent.
//! - Version 2 only (an extension whose manifest declares it, and that answered `initialize`
//!   with 2): Ferry → extension [`MIGRATION_PREFLIGHT`], [`MIGRATION_EXPORT`],
//!   [`MIGRATION_IMPORT`] (each the one call of its launch); extension → Ferry
//!   [`ARCHIVE_APPEND`] (while `migration.export` is open) and [`MIGRATION_CLEAR_STATUS`].

use std::collections::{BTreeMap, BTreeSet};

use ferry_core::job::{Action, Job, Rejection, TransactionError, TxItem};
use ferry_core::resource::{ResourceMetadata, ResourceType};
use ferry_core::{ContentHash, DestinationError, Method, UrlBase};
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// The base protocol version: what every extension speaks, and what Ferry offers an extension
/// whose manifest does not ask for more. (A version 1 build of the SDK refuses any other.)
pub const PROTOCOL_VERSION: u32 = 1;
/// The version that adds migration (export / import). Offered only to an extension whose
/// manifest declares `protocol_version = 2` or lists the `export` / `import` capability.
pub const MIGRATION_PROTOCOL_VERSION: u32 = 2;
/// The newest version this crate speaks.
pub const LATEST_PROTOCOL_VERSION: u32 = MIGRATION_PROTOCOL_VERSION;

/// The longest line either side may write, newline excluded. A longer line is a protocol
/// violation: Ferry stops an extension that writes one.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// How many lines that are not JSON, or not JSON-RPC 2.0 messages, Ferry answers in one launch
/// (`parse_error` / `invalid_request`, see [`FrameError::answer`]); the next one stops the
/// extension as a protocol violation. Enough for a stray `print`, not for a flood.
pub const MAX_BAD_LINES: u32 = 16;

/// The most items one page of a `library.*` or `jobs.fetch` answer carries.
pub const MAX_PAGE_ITEMS: u32 = 1000;
/// The most asset ids one page of `library.changes` carries.
pub const MAX_CHANGES_PAGE_ITEMS: u32 = 10_000;

/// Key-value store limits, per extension.
pub const MAX_KV_KEY_BYTES: usize = 256;
pub const MAX_KV_VALUE_BYTES: usize = 64 * 1024;
pub const MAX_KV_TOTAL_BYTES: usize = 64 * 1024 * 1024;

// ---- Ferry → extension -------------------------------------------------------------------

/// Request, first message of every launch.
pub const INITIALIZE: &str = "initialize";
/// Request: do your work now.
pub const PROCESS_JOBS: &str = "process_jobs";
/// Notification: the call's time is nearly up (or conditions turned); answer `process_jobs`
/// within `grace_ms`.
pub const WILL_TERMINATE: &str = "will_terminate";

/// Version 2, request: how much would you export? (no params) → [`MigrationPreflightResult`].
pub const MIGRATION_PREFLIGHT: &str = "migration.preflight";
/// Version 2, request: export your data folder now, with [`ARCHIVE_APPEND`] per file; answer
/// `{}` when every file is appended.
pub const MIGRATION_EXPORT: &str = "migration.export";
/// Version 2, request: take what you want from `dir` ([`MigrationImportParams`]); answer `{}`.
pub const MIGRATION_IMPORT: &str = "migration.import";

// ---- extension → Ferry -------------------------------------------------------------------

pub const LIBRARY_CURRENT_TOKEN: &str = "library.current_token";
pub const LIBRARY_CHANGES: &str = "library.changes";
pub const LIBRARY_ASSETS: &str = "library.assets";
pub const LIBRARY_LIST_ASSETS: &str = "library.list_assets";
pub const JOBS_FETCH: &str = "jobs.fetch";
pub const JOBS_TRANSACTION: &str = "jobs.transaction";
pub const JOBS_LIMIT: &str = "jobs.limit";
pub const KV_GET: &str = "kv.get";
pub const KV_SET: &str = "kv.set";
pub const KV_LIST: &str = "kv.list";
/// Many keys in one call (at most [`MAX_PAGE_ITEMS`]).
pub const KV_GET_MANY: &str = "kv.get_many";
/// Many writes in one commit, all or none (at most [`MAX_PAGE_ITEMS`]).
pub const KV_SET_MANY: &str = "kv.set_many";

/// Version 2: copy one file of the extension's data folder into the export (only while
/// `migration.export` is open). The answer comes once the copy is durable.
pub const ARCHIVE_APPEND: &str = "archive.append";
/// Version 2: forget the recorded import status (the `migration` field of `initialize`).
pub const MIGRATION_CLEAR_STATUS: &str = "migration.clear_status";

/// The version 2 methods an extension may call. Kept apart from [`HOST_METHODS`] so a version
/// 1 extension is gated exactly as before: to it these names are unknown (`method_not_found`).
pub const MIGRATION_HOST_METHODS: [&str; 2] = [ARCHIVE_APPEND, MIGRATION_CLEAR_STATUS];

/// Every version 1 method an extension may call, for hosts that validate names up front
/// (version 2 adds [`MIGRATION_HOST_METHODS`]).
pub const HOST_METHODS: [&str; 12] = [
    LIBRARY_CURRENT_TOKEN,
    LIBRARY_CHANGES,
    LIBRARY_ASSETS,
    LIBRARY_LIST_ASSETS,
    JOBS_FETCH,
    JOBS_TRANSACTION,
    JOBS_LIMIT,
    KV_GET,
    KV_SET,
    KV_LIST,
    KV_GET_MANY,
    KV_SET_MANY,
];

// ---- JSON-RPC envelope -------------------------------------------------------------------

/// A JSON-RPC id: Ferry uses numbers; an extension may use numbers or strings.
///
/// `Null` is only ever the id of an error answer to a line whose id could not be read (not
/// JSON, or not a valid request): JSON-RPC 2.0 answers those with `"id": null`. A request
/// written with `"id": null` is read as a notification, as before.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Number(i64),
    String(String),
    Null,
}

/// Any one line, before it is known what it is. Parse with [`Message::parse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawMessage {
    pub jsonrpc: String,
    /// `None`: no `id` member; `Some(Id::Null)`: `"id": null`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_id"
    )]
    pub id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

/// One message, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request {
        id: Id,
        method: String,
        params: serde_json::Value,
    },
    Notification {
        method: String,
        params: serde_json::Value,
    },
    Response {
        id: Id,
        result: Result<serde_json::Value, RpcError>,
    },
}

/// A present `id` member: `null` is [`Id::Null`] (an absent one stays `None`, by `default`).
fn present_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Id>, D::Error> {
    Ok(Some(Option::<Id>::deserialize(d)?.unwrap_or(Id::Null)))
}

/// Why a line is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("line of {0} bytes is over the limit of {MAX_MESSAGE_BYTES}")]
    TooLong(usize),
    /// Not JSON at all (JSON-RPC's "Parse error").
    #[error("not JSON: {0}")]
    Parse(String),
    /// JSON, but not a valid JSON-RPC 2.0 message (JSON-RPC's "Invalid Request"). `id` is
    /// what an answer carries: the line's own id when it reads as a request gone wrong (it
    /// has a `method`, or neither `result` nor `error`) and its id is a number or a string;
    /// else [`Id::Null`] (a broken answer's id names one of the other side's requests).
    #[error("not a JSON-RPC 2.0 message: {reason}")]
    Invalid { reason: String, id: Id },
}

impl FrameError {
    /// The JSON-RPC error to answer with, where an answer is possible.
    pub fn to_rpc(&self) -> RpcError {
        match self {
            FrameError::TooLong(_) => RpcError::new(ErrorCode::TooLarge, self.to_string()),
            FrameError::Parse(_) => RpcError::new(ErrorCode::ParseError, self.to_string()),
            FrameError::Invalid { .. } => {
                RpcError::new(ErrorCode::InvalidRequest, self.to_string())
            }
        }
    }

    /// The answer JSON-RPC 2.0 asks for: `parse_error` with `"id": null` to a line that is
    /// not JSON, `invalid_request` with the id described at [`FrameError::Invalid`] to one
    /// that is not a valid message. `None` for a line over the limit: that one is never
    /// answered (Ferry stops an extension that writes one).
    pub fn answer(&self) -> Option<Message> {
        let id = match self {
            FrameError::TooLong(_) => return None,
            FrameError::Parse(_) => Id::Null,
            FrameError::Invalid { id, .. } => id.clone(),
        };
        Some(Message::Response {
            id,
            result: Err(self.to_rpc()),
        })
    }

    fn invalid(reason: impl Into<String>, id: Id) -> FrameError {
        FrameError::Invalid {
            reason: cut_reason(reason.into()),
            id,
        }
    }
}

/// Longest reason a [`FrameError`] keeps: serde quotes the strings it refuses, and an answer
/// quoting a whole line back could be over the limit itself.
const MAX_REASON_BYTES: usize = 256;

fn cut_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

/// The id to answer an invalid message with (see [`FrameError::Invalid`]).
fn answer_id(id: Option<Id>, has_method: bool, has_result_or_error: bool) -> Id {
    if !has_method && has_result_or_error {
        return Id::Null;
    }
    id.unwrap_or(Id::Null)
}

impl Message {
    /// Parses one line (without its newline): a JSON object with `"jsonrpc": "2.0"` and a
    /// `method` (a request with an `id`, else a notification) or an `id` with exactly one of
    /// `result` / `error` (an answer; only an error answer may have `"id": null`).
    pub fn parse(line: &[u8]) -> Result<Message, FrameError> {
        if line.len() > MAX_MESSAGE_BYTES {
            return Err(FrameError::TooLong(line.len()));
        }
        let raw: RawMessage = match serde_json::from_slice(line) {
            // serde would read an array as the struct's fields in order: not a message.
            Ok(raw) if line.trim_ascii_start().starts_with(b"{") => raw,
            Ok(_) => {
                return Err(FrameError::invalid("a message is a JSON object", Id::Null));
            }
            // Valid JSON of the wrong shape (a missing `jsonrpc`, an id that is an object,
            // not an object at all, ...).
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                let value = serde_json::from_slice::<serde_json::Value>(line).ok();
                let obj = value.as_ref().and_then(|v| v.as_object());
                let id = match obj {
                    Some(o) => answer_id(
                        o.get("id").and_then(|v| match v {
                            serde_json::Value::Number(_) | serde_json::Value::String(_) => {
                                Id::deserialize(v).ok()
                            }
                            _ => None,
                        }),
                        o.contains_key("method"),
                        o.contains_key("result") || o.contains_key("error"),
                    ),
                    None => Id::Null,
                };
                return Err(FrameError::invalid(e.to_string(), id));
            }
            Err(e) => return Err(FrameError::Parse(cut_reason(e.to_string()))),
        };
        let has_method = raw.method.is_some();
        let has_outcome = raw.result.is_some() || raw.error.is_some();
        let invalid = |reason: &str, id: Option<Id>| {
            FrameError::invalid(reason, answer_id(id, has_method, has_outcome))
        };
        if raw.jsonrpc != "2.0" {
            return Err(invalid("jsonrpc must be \"2.0\"", raw.id));
        }
        match (raw.id, raw.method, raw.result, raw.error) {
            // `"id": null` on a request: read as a notification, as it always was.
            (Some(Id::Null) | None, Some(method), None, None) => Ok(Message::Notification {
                method,
                params: raw.params.unwrap_or(serde_json::Value::Null),
            }),
            (Some(id), Some(method), None, None) => Ok(Message::Request {
                id,
                method,
                params: raw.params.unwrap_or(serde_json::Value::Null),
            }),
            (Some(Id::Null), None, Some(_), None) => {
                Err(invalid("only an error answer may have a null id", None))
            }
            (Some(id), None, Some(result), None) => Ok(Message::Response {
                id,
                result: Ok(result),
            }),
            (Some(id), None, None, Some(error)) => Ok(Message::Response {
                id,
                result: Err(error),
            }),
            (id, _, _, _) => Err(invalid(
                "a message has a method (request, notification) or an id and exactly one of \
                 result/error (an answer)",
                id,
            )),
        }
    }

    /// The message as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let raw = match self {
            Message::Request { id, method, params } => RawMessage {
                jsonrpc: "2.0".into(),
                id: Some(id.clone()),
                method: Some(method.clone()),
                params: Some(params.clone()),
                result: None,
                error: None,
            },
            Message::Notification { method, params } => RawMessage {
                jsonrpc: "2.0".into(),
                id: None,
                method: Some(method.clone()),
                params: Some(params.clone()),
                result: None,
                error: None,
            },
            Message::Response { id, result } => RawMessage {
                jsonrpc: "2.0".into(),
                id: Some(id.clone()),
                method: None,
                params: None,
                result: result.as_ref().ok().cloned(),
                error: result.as_ref().err().cloned(),
            },
        };
        // Serialising plain data with string keys cannot fail.
        let mut line = serde_json::to_vec(&raw).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// A JSON-RPC error object. Ferry's errors always carry `data.code`, a stable snake_case name
/// to branch on (the numeric code groups them; the message is for people).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// The error codes of the protocol: JSON-RPC's own, then Ferry's (-32001 …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    Internal,
    /// `library.changes`: the token is older than the kept history; resynchronise with
    /// `library.list_assets` from the current token.
    ChangeTokenExpired,
    /// `library.changes`: not a token of this library.
    InvalidToken,
    /// `jobs.transaction` refused as a whole; `data.reason` names the rule
    /// (`limit_exceeded`, `wrong_state`, `bad_destination`, `unknown_resource`, …) and
    /// `data.index` the first offending item.
    TransactionRejected,
    /// Too many calls; `data.retry_after_ms` says when to try again.
    RateLimited,
    /// A message or a value over its limit.
    TooLarge,
    /// The call came when none is allowed (outside `process_jobs`, after `will_terminate`'s
    /// grace, or the extension was disabled).
    NotNow,
    /// The key-value store is full.
    StorageFull,
    /// Ferry could not answer now (its store is busy or failing); try again later.
    Unavailable,
    /// `archive.append`: `path` is not a regular file inside the extension's data folder
    /// (outside it, through a symbolic link, or missing).
    OutsideDataFolder,
    /// `archive.append`: `path_in_archive` is absolute, empty, has a `.`, `..` or empty
    /// component or a NUL, or clashes with a path already appended.
    BadArchivePath,
    /// The migration was cancelled: stop, answer, and exit when stdin closes.
    Cancelled,
    /// `archive.append`: the export is far over the size the extension announced in
    /// `migration.preflight`; its data is left out.
    ExportTooLarge,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::ParseError,
        ErrorCode::InvalidRequest,
        ErrorCode::MethodNotFound,
        ErrorCode::InvalidParams,
        ErrorCode::Internal,
        ErrorCode::ChangeTokenExpired,
        ErrorCode::InvalidToken,
        ErrorCode::TransactionRejected,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::NotNow,
        ErrorCode::StorageFull,
        ErrorCode::Unavailable,
        ErrorCode::OutsideDataFolder,
        ErrorCode::BadArchivePath,
        ErrorCode::Cancelled,
        ErrorCode::ExportTooLarge,
    ];

    pub fn number(self) -> i64 {
        match self {
            ErrorCode::ParseError => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::MethodNotFound => -32601,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::Internal => -32603,
            ErrorCode::ChangeTokenExpired => -32001,
            ErrorCode::InvalidToken => -32002,
            ErrorCode::TransactionRejected => -32003,
            ErrorCode::RateLimited => -32004,
            ErrorCode::TooLarge => -32005,
            ErrorCode::NotNow => -32006,
            ErrorCode::StorageFull => -32007,
            ErrorCode::Unavailable => -32008,
            ErrorCode::OutsideDataFolder => -32009,
            ErrorCode::BadArchivePath => -32010,
            ErrorCode::Cancelled => -32011,
            ErrorCode::ExportTooLarge => -32012,
        }
    }

    /// The stable name carried in `data.code`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::ParseError => "parse_error",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::MethodNotFound => "method_not_found",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::Internal => "internal_error",
            ErrorCode::ChangeTokenExpired => "change_token_expired",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TransactionRejected => "transaction_rejected",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotNow => "not_now",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::OutsideDataFolder => "outside_data_folder",
            ErrorCode::BadArchivePath => "bad_archive_path",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::ExportTooLarge => "export_too_large",
        }
    }

    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether trying the same call again later can succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
        )
    }
}

impl RpcError {
    /// An error with `data: {"code": name}`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RpcError {
        RpcError::with_data(code, message, serde_json::Map::new())
    }

    /// An error whose `data` holds `code` plus the given fields.
    pub fn with_data(
        code: ErrorCode,
        message: impl Into<String>,
        mut data: serde_json::Map<String, serde_json::Value>,
    ) -> RpcError {
        data.insert("code".into(), code.name().into());
        RpcError {
            code: code.number(),
            message: message.into(),
            data: Some(serde_json::Value::Object(data)),
        }
    }

    /// The Ferry error code, from `data.code` or else the number.
    pub fn kind(&self) -> Option<ErrorCode> {
        self.data
            .as_ref()
            .and_then(|d| d.get("code"))
            .and_then(|c| c.as_str())
            .and_then(ErrorCode::from_name)
            .or_else(|| ErrorCode::ALL.into_iter().find(|c| c.number() == self.code))
    }

    /// A string field of `data` (e.g. `reason` of a rejected transaction).
    pub fn data_str(&self, field: &str) -> Option<&str> {
        self.data.as_ref()?.get(field)?.as_str()
    }

    /// An integer field of `data` (e.g. `index`, `retry_after_ms`).
    pub fn data_u64(&self, field: &str) -> Option<u64> {
        self.data.as_ref()?.get(field)?.as_u64()
    }
}

// ---- initialize -----------------------------------------------------------------------------

/// What the extension may see: the whole library, or these folders (relative to the library
/// root, `/`-separated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    Library,
    Folders { folders: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitializeParams {
    pub protocol_version: u32,
    pub extension_id: String,
    /// Ferry's version, for logs.
    pub ferry_version: String,
    /// The manifest's `[config]` table, as JSON (empty object if none).
    #[serde(default)]
    pub config: serde_json::Value,
    pub scope: Scope,
    pub destination_bases: Vec<UrlBase>,
    pub job_limit: u32,
    /// Version 2 only: what Ferry knows of this extension's migration (absent when there is
    /// nothing to say, and always absent for a version 1 extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationInfo>,
}

impl InitializeParams {
    /// The recorded outcome of the last import into this extension, until it is cleared.
    pub fn import_status(&self) -> Option<&ImportStatus> {
        self.migration.as_ref()?.import_status.as_ref()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitializeResult {
    /// The version the extension speaks: at most the one offered (1 or 2). Ferry stops one
    /// that answers another.
    pub protocol_version: u32,
}

// ---- migration (version 2) ------------------------------------------------------------------

/// The `migration` field of `initialize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_status: Option<ImportStatus>,
}

/// Where imported data came from: the exporting extension and its data version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct ImportSource {
    pub extension: String,
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportState {
    /// The extension answered `migration.import` with `{}`.
    Success,
    /// It did not (error, crash, timeout): Ferry wiped its data folder and key-value store.
    Failure,
}

/// How the last import into this extension ended, kept until `migration.clear_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportStatus {
    pub status: ImportState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub source: ImportSource,
}

/// The answer to `migration.preflight`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationPreflightResult {
    /// About how many bytes `migration.export` will append. Ferry refuses an export that goes
    /// far over it (twice this plus 64 MiB).
    pub size_estimate_bytes: u64,
    /// The format version of the data, passed to the importing side as `source.version`.
    pub data_version: String,
    /// Whether the data gains from compression in transit.
    pub compressible: bool,
}

/// `migration.export` params.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MigrationExportParams {
    /// When set, how long the export may take in all; Ferry stops a silent one sooner (no
    /// `archive.append` for a while).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_budget_ms: Option<u64>,
}

/// `archive.append` params: the file at `path` (inside the data folder) goes into the
/// archive as `path_in_archive` (`/`-separated, relative, kept byte for byte).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveAppendParams {
    pub path: String,
    pub path_in_archive: String,
}

/// `archive.append` answer: the bytes copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveAppendResult {
    pub size: u64,
}

/// `migration.import` params: `dir` holds the exported files at their `path_in_archive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationImportParams {
    pub dir: String,
    pub source: ImportSource,
}

// ---- process_jobs ---------------------------------------------------------------------------

/// Why Ferry is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallReason {
    /// First call since the extension was enabled (or Ferry's state was reset).
    FirstRun,
    /// The library changed since the extension's last `completed`.
    LibraryChanged,
    /// Jobs finished and wait to be acknowledged.
    JobsFinished,
    /// Failed jobs may be retried.
    RetryAvailable,
    /// The extension answered `processing` last time.
    Continue,
    /// After a `failure` answer, once its backoff ended.
    AfterFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessJobsParams {
    pub reasons: Vec<CallReason>,
    /// Milliseconds left in this call's time budget when it was sent.
    pub time_budget_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    /// Up to date: call again when the library changes or jobs finish.
    Completed,
    /// More to do: call again soon.
    Processing,
    /// Something went wrong: back off before calling again.
    Failure,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessJobsResult {
    pub status: ProcessStatus,
    /// For the user's status display and logs (≤ 1 KiB kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

// ---- will_terminate -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminateReason {
    TimeBudget,
    /// Conditions turned (network lost, power low, user active, ...).
    Conditions,
    /// The user disabled the extension.
    Disabled,
    /// Ferry is shutting down.
    Shutdown,
    /// Version 2: a `migration.export` appended nothing for too long.
    MigrationIdle,
    /// Version 2: the person cancelled the migration.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillTerminateParams {
    pub reason: TerminateReason,
    /// How long Ferry waits for the open call's answer before stopping the process.
    pub grace_ms: u64,
}

// ---- library.* ------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResult {
    pub token: String,
}

/// `library.changes`: asset ids changed after `since` up to `until`, merged (an asset inserted
/// then updated shows once, as inserted; inserted then deleted not at all), sorted by asset id,
/// paged by `offset`. The first call omits `until`; Ferry fixes it to the current token and
/// returns it; later pages pass it back so the range stays the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesParams {
    pub since: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(default)]
    pub offset: u64,
    /// At most [`MAX_CHANGES_PAGE_ITEMS`]; default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Inserted,
    Updated,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetChange {
    pub asset_id: String,
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesResult {
    /// The end of the range: store it as the new token once every page is handled.
    pub until: String,
    pub changes: Vec<AssetChange>,
    /// Pass as `offset` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u64>,
}

/// One resource as an extension sees it: no path (an extension never opens library files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceView {
    pub id: String,
    pub asset_id: String,
    pub resource_type: ResourceType,
    /// The file's name without its folder, for display: UTF-8 as it is, other bytes escaped
    /// as `\xNN` and `\` as `\\` (see `ferry_core::path_text`).
    pub file_name: String,
    /// The name's exact bytes in standard base64, present only when the name is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name_bytes: Option<String>,
    /// The file's path relative to its library root (`Trips/2024/IMG_0001.JPG`), escaped as
    /// `file_name` is; what a backup needs to put the file back where it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_path: Option<String>,
    /// Its exact bytes in base64, only when the path is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_path_bytes: Option<String>,
    /// The name of the library root folder the file is under (`Pictures`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    /// The file's modification time, in ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_ms: Option<i64>,
    pub size_bytes: u64,
    pub content_type: String,
    /// BLAKE3, the hash a job pins.
    pub content_hash: ContentHash,
    #[serde(default)]
    pub metadata: ResourceMetadata,
}

impl ResourceView {
    /// `file_name` and `file_name_bytes` for a file at `path`.
    pub fn name_of(path: &std::path::Path) -> (String, Option<String>) {
        use std::os::unix::ffi::OsStrExt;
        let raw = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        (
            ferry_core::path_text::escape_bytes(raw),
            ferry_core::path_text::lossless(raw),
        )
    }

    /// `relative_path`, `relative_path_bytes` and `library` for a file at `path` under the
    /// deepest of `roots` that holds it (all `None` outside every root).
    pub fn placement(
        path: &std::path::Path,
        roots: &[std::path::PathBuf],
    ) -> (Option<String>, Option<String>, Option<String>) {
        use std::os::unix::ffi::OsStrExt;
        let Some(root) = roots
            .iter()
            .filter(|r| path.starts_with(r))
            .max_by_key(|r| r.as_os_str().len())
        else {
            return (None, None, None);
        };
        let rel = path
            .strip_prefix(root)
            .unwrap_or(path)
            .as_os_str()
            .as_bytes();
        let library = root
            .file_name()
            .map(|n| ferry_core::path_text::escape_bytes(n.as_bytes()));
        (
            Some(ferry_core::path_text::escape_bytes(rel)),
            ferry_core::path_text::lossless(rel),
            library,
        )
    }

    /// The file name's exact bytes (from `file_name_bytes` when present).
    pub fn file_name_raw(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        ferry_core::path_text::from_json(&self.file_name, self.file_name_bytes.as_deref())
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .unwrap_or_else(|_| self.file_name.as_bytes().to_vec())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssetView {
    pub id: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub resources: Vec<ResourceView>,
}

/// `library.assets`: these assets (≤ [`MAX_PAGE_ITEMS`] ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetsParams {
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssetsResult {
    pub assets: Vec<AssetView>,
    /// Ids that do not exist for this extension (deleted, or outside its scope: the two are
    /// indistinguishable by design).
    pub missing: Vec<String>,
}

/// `library.list_assets`: every asset in scope, by ascending id, after `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAssetsParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most [`MAX_PAGE_ITEMS`]; default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListAssetsResult {
    pub assets: Vec<AssetView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

// ---- jobs.* ---------------------------------------------------------------------------------

/// `jobs.fetch`: the extension's jobs in this action's set (SPEC.md), by ascending id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchParams {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Uuid>,
    /// At most [`MAX_PAGE_ITEMS`]; default [`MAX_PAGE_ITEMS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResult {
    pub jobs: Vec<Job>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<Uuid>,
}

/// `jobs.transaction`: applied whole or not at all (≤ 1000 items). A create names a
/// `resource_id` the extension can see and pins its `content_hash`; a job id is a UUID the
/// extension mints (v7 recommended) so that a call cut short can be checked and repeated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionParams {
    pub items: Vec<TxItem>,
}

/// `jobs.transaction` params as a host reads them.
///
/// A destination whose `method` is a string other than `POST`, `PUT` or `PATCH` breaks a
/// destination rule, not the shape of the params: the item is read with `POST` in its place
/// and listed in `bad_methods`, so that the host refuses it as `transaction_rejected` /
/// `bad_destination` at its index, like any other broken destination rule. Anything else
/// malformed (a method that is not a string, a bad id, a missing field, ...) is an `Err`:
/// `invalid_params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRequest {
    /// Every item, in order. Those named in `bad_methods` carry `POST` in place of the
    /// method they asked for: never commit a request whose `bad_methods` is not empty.
    pub items: Vec<TxItem>,
    /// One rejection (`bad_destination`) per item whose method Ferry cannot send with, by
    /// ascending index.
    pub bad_methods: Vec<TransactionError>,
}

/// Longest method name quoted back in a rejection.
const MAX_QUOTED_METHOD_BYTES: usize = 64;

impl TransactionRequest {
    /// Reads the params (`null` reads as `{}`, which lacks `items`). The error is the message
    /// for `invalid_params` (cut short: serde quotes what it refuses).
    pub fn parse(params: serde_json::Value) -> Result<TransactionRequest, String> {
        #[derive(Deserialize)]
        struct Items {
            items: Vec<serde_json::Value>,
        }
        let params = if params.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            params
        };
        let raw: Items = serde_json::from_value(params).map_err(|e| cut_reason(e.to_string()))?;
        let mut items = Vec::with_capacity(raw.items.len());
        let mut bad_methods = Vec::new();
        for (index, mut value) in raw.items.into_iter().enumerate() {
            let item = match TxItem::deserialize(&value) {
                Ok(item) => item,
                Err(first) => {
                    let Some(method) = replace_unsendable_method(&mut value) else {
                        return Err(cut_reason(format!("items[{index}]: {first}")));
                    };
                    // With a sendable method in its place, the item must read; if it still
                    // does not, its other fault is what the extension must fix.
                    let item = TxItem::deserialize(&value)
                        .map_err(|e| cut_reason(format!("items[{index}]: {e}")))?;
                    bad_methods.push(TransactionError {
                        index,
                        job: item.job_id(),
                        reason: Rejection::Destination(DestinationError::Method(method)),
                    });
                    item
                }
            };
            items.push(item);
        }
        Ok(TransactionRequest { items, bad_methods })
    }
}

/// If the item's `destination.method` is a string that is not a [`Method`], puts `POST` in its
/// place and returns the name asked for (cut to [`MAX_QUOTED_METHOD_BYTES`]).
fn replace_unsendable_method(item: &mut serde_json::Value) -> Option<String> {
    let slot = item.get_mut("destination")?.get_mut("method")?;
    let name = slot.as_str()?;
    if Method::deserialize(&*slot).is_ok() {
        return None;
    }
    let mut cut = name.len().min(MAX_QUOTED_METHOD_BYTES);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let name = name[..cut].to_owned();
    *slot = serde_json::Value::String(Method::Post.as_str().into());
    Some(name)
}

/// The first offending item of a transaction when a host refuses some items itself, before
/// the job rules (an out-of-scope resource or job, a method it cannot send with): the job
/// rules still win for an item before the first refused one. `refused` holds the refused
/// indices; `plan` applies the job rules ([`ferry_core::job::plan_transaction`] against the
/// store, writing nothing) to the other items, in order. Returns the job rules' rejection,
/// with its index in `items`, if it names an item before the first refused one; `None` if
/// the host's own refusal stands (or nothing was refused).
pub fn earlier_rejection<E>(
    items: &[TxItem],
    refused: &BTreeSet<usize>,
    plan: impl FnOnce(&[TxItem]) -> Result<Option<TransactionError>, E>,
) -> Result<Option<TransactionError>, E> {
    let Some(&first) = refused.first() else {
        return Ok(None);
    };
    let (at, kept): (Vec<usize>, Vec<TxItem>) = items
        .iter()
        .enumerate()
        .filter(|(i, _)| !refused.contains(i))
        .map(|(i, item)| (i, item.clone()))
        .unzip();
    Ok(plan(&kept)?.and_then(|mut t| {
        let index = *at.get(t.index)?;
        (index < first).then(|| {
            t.index = index;
            t
        })
    }))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionResult {
    /// The ids of the jobs the transaction touched, in item order.
    pub jobs: Vec<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitResult {
    pub job_limit: u32,
    /// Jobs holding a slot now (not acknowledged, not cancelled).
    pub unacknowledged: u32,
    /// `job_limit - unacknowledged`, never negative.
    pub available: u32,
}

// ---- kv.* -----------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvGetParams {
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvGetResult {
    pub value: Option<String>,
}

/// `kv.set`: a `null` value deletes the key. Durable when answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSetParams {
    pub key: String,
    pub value: Option<String>,
}

/// `kv.get_many`: the values in the keys' order, `null` for a key that is not set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvGetManyParams {
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvGetManyResult {
    pub values: Vec<Option<String>>,
}

/// `kv.set_many`: every entry or none, in one durable commit (a key named twice: the last
/// entry wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSetManyParams {
    pub entries: Vec<KvSetParams>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvListParams {
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvListResult {
    pub keys: Vec<String>,
}

/// An empty result (`{}`), for calls that answer nothing but success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Empty {}

/// Metadata keys the reference extension attaches to jobs (and ferry-server stores).
pub type JobMetadata = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    #[test]
    fn a_name_that_is_not_utf8_reaches_the_extension_escaped_and_exact() {
        use std::os::unix::ffi::OsStringExt;
        let path = std::path::PathBuf::from(std::ffi::OsString::from_vec(
            b"/photos/caf\xE9.jpg".to_vec(),
        ));
        let (name, bytes) = super::ResourceView::name_of(&path);
        assert_eq!(name, "caf\\xE9.jpg");
        assert_eq!(bytes.as_deref(), Some("Y2Fm6S5qcGc="));
        let (name, bytes) = super::ResourceView::name_of(std::path::Path::new("/p/été.jpg"));
        assert_eq!((name.as_str(), bytes), ("été.jpg", None));
        let view: super::ResourceView = serde_json::from_value(serde_json::json!({
            "id": "r", "asset_id": "a", "resource_type": "photo",
            "file_name": "caf\\xE9.jpg", "file_name_bytes": "Y2Fm6S5qcGc=",
            "size_bytes": 1, "content_type": "image/jpeg",
            "content_hash": "00".repeat(32),
        }))
        .unwrap();
        assert_eq!(view.file_name_raw(), b"caf\xE9.jpg");
    }

    use super::*;

    #[test]
    fn messages_round_trip_through_lines() {
        let msgs = [
            Message::Request {
                id: Id::Number(1),
                method: PROCESS_JOBS.into(),
                params: serde_json::json!({"reasons": ["first_run"], "time_budget_ms": 30000}),
            },
            Message::Notification {
                method: WILL_TERMINATE.into(),
                params: serde_json::json!({"reason": "time_budget", "grace_ms": 5000}),
            },
            Message::Response {
                id: Id::String("a".into()),
                result: Ok(serde_json::json!({"token": "ct1.x.1"})),
            },
            Message::Response {
                id: Id::Number(7),
                result: Err(RpcError::new(ErrorCode::ChangeTokenExpired, "expired")),
            },
        ];
        for m in msgs {
            let line = m.to_line();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(Message::parse(&line[..line.len() - 1]).unwrap(), m);
        }
    }

    #[test]
    fn bad_lines_are_classified() {
        assert!(matches!(
            Message::parse(b"{not json"),
            Err(FrameError::Parse(_))
        ));
        assert!(matches!(
            Message::parse(br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#),
            Err(FrameError::Invalid { .. })
        ));
        assert!(matches!(
            Message::parse(
                br#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"x"}}"#
            ),
            Err(FrameError::Invalid { .. })
        ));
        let long = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            Message::parse(&long),
            Err(FrameError::TooLong(MAX_MESSAGE_BYTES + 1))
        );
        assert_eq!(FrameError::TooLong(1).answer(), None);
    }

    /// The id each bad line is answered with, and the error's code.
    #[test]
    fn bad_lines_are_answered_as_json_rpc_says() {
        let s = |v: &str| Id::String(v.into());
        let cases: &[(&[u8], ErrorCode, Id)] = &[
            (b"{not json", ErrorCode::ParseError, Id::Null),
            (b"hello", ErrorCode::ParseError, Id::Null),
            (
                br#"{"jsonrpc":"2.0","id":4,"method":"x""#,
                ErrorCode::ParseError,
                Id::Null,
            ),
            // JSON, but not a message: the id is echoed when it reads as a request.
            (
                br#"{"jsonrpc":"1.0","id":"a","method":"jobs.limit"}"#,
                ErrorCode::InvalidRequest,
                s("a"),
            ),
            (
                br#"{"jsonrpc":"2.0","id":5,"params":{}}"#,
                ErrorCode::InvalidRequest,
                Id::Number(5),
            ),
            (
                br#"{"id":6,"method":"jobs.limit"}"#,
                ErrorCode::InvalidRequest,
                Id::Number(6),
            ),
            (
                br#"{"jsonrpc":2,"id":7,"method":"jobs.limit"}"#,
                ErrorCode::InvalidRequest,
                Id::Number(7),
            ),
            (
                br#"{"jsonrpc":"2.0","id":8,"method":5}"#,
                ErrorCode::InvalidRequest,
                Id::Number(8),
            ),
            (
                br#"{"jsonrpc":"2.0","id":{"n":1},"method":"x"}"#,
                ErrorCode::InvalidRequest,
                Id::Null,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#,
                ErrorCode::InvalidRequest,
                Id::Null,
            ),
            (
                br#"{"jsonrpc":"2.0","id":true,"method":"x"}"#,
                ErrorCode::InvalidRequest,
                Id::Null,
            ),
            // A broken answer: its id is one of the other side's, so the answer has none.
            (
                br#"{"jsonrpc":"2.0","id":2,"result":1,"error":{"code":1,"message":"x"}}"#,
                ErrorCode::InvalidRequest,
                Id::Null,
            ),
            (
                br#"{"jsonrpc":"1.0","id":2,"result":{}}"#,
                ErrorCode::InvalidRequest,
                Id::Null,
            ),
            (
                br#"{"jsonrpc":"2.0","id":null,"result":{}}"#,
                ErrorCode::InvalidRequest,
                Id::Null,
            ),
            (
                br#"{"jsonrpc":"2.0","method":"x","result":1}"#,
                ErrorCode::InvalidRequest,
                Id::Null,
            ),
            // Not an object: an array would otherwise read as the fields in order.
            (
                br#"["2.0",1,"jobs.limit"]"#,
                ErrorCode::InvalidRequest,
                Id::Null,
            ),
            (b"[]", ErrorCode::InvalidRequest, Id::Null),
            (b"5", ErrorCode::InvalidRequest, Id::Null),
            (b"null", ErrorCode::InvalidRequest, Id::Null),
            (br#""text""#, ErrorCode::InvalidRequest, Id::Null),
        ];
        for (line, code, id) in cases {
            let text = String::from_utf8_lossy(line);
            let e = Message::parse(line).expect_err(&text);
            match e.answer() {
                Some(Message::Response {
                    id: got,
                    result: Err(err),
                }) => {
                    assert_eq!(&got, id, "{text}");
                    assert_eq!(err.kind(), Some(*code), "{text}");
                    assert_eq!(err.code, code.number(), "{text}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_answer_never_quotes_a_whole_line_back() {
        let huge = "x".repeat(MAX_MESSAGE_BYTES / 2);
        let line = format!(r#"{{"jsonrpc":"2.0","id":1,"error":"{huge}"}}"#);
        let e = Message::parse(line.as_bytes()).unwrap_err();
        let answer = e.answer().unwrap().to_line();
        assert!(answer.len() < 1024, "{} bytes", answer.len());
    }

    #[test]
    fn an_error_answer_without_id_is_a_message_of_its_own() {
        let line = br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"not JSON","data":{"code":"parse_error"}}}"#;
        let m = Message::parse(line).unwrap();
        let Message::Response {
            id: Id::Null,
            result: Err(e),
        } = &m
        else {
            panic!("{m:?}")
        };
        assert_eq!(e.kind(), Some(ErrorCode::ParseError));
        let back = m.to_line();
        assert_eq!(&back[..back.len() - 1], &line[..]);
        // What it always was: a request with a null id is a notification; an answer without
        // an id member is no message.
        assert_eq!(
            Message::parse(br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#).unwrap(),
            Message::Notification {
                method: "x".into(),
                params: serde_json::Value::Null
            }
        );
        assert!(Message::parse(br#"{"jsonrpc":"2.0","error":{"code":1,"message":"x"}}"#).is_err());
    }

    fn tx_item(op: &str, n: u8, method: serde_json::Value) -> serde_json::Value {
        let id = format!("0190f5a0-0000-7000-8000-0000000000{n:02}");
        let destination = serde_json::json!({"method": method,
            "url": "http://127.0.0.1:1/v1/uploads", "headers": []});
        match op {
            "create" => serde_json::json!({"op": "create", "id": id, "resource_id": "r1",
                "content_hash": "00".repeat(32), "destination": destination}),
            _ => serde_json::json!({"op": "retry", "job": id, "destination": destination}),
        }
    }

    #[test]
    fn a_method_ferry_cannot_send_is_a_bad_destination_not_bad_params() {
        use serde_json::json;
        let r = TransactionRequest::parse(json!({"items": [
            tx_item("create", 1, json!("PUT")),
            tx_item("create", 2, json!("GET")),
            tx_item("retry", 3, json!("post")),
            json!({"op": "retry", "job": "0190f5a0-0000-7000-8000-000000000004", "destination": null}),
        ]}))
        .unwrap();
        assert_eq!(r.items.len(), 4);
        let got: Vec<(usize, String, &str)> = r
            .bad_methods
            .iter()
            .map(|t| (t.index, t.job.to_string(), t.code()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    1,
                    "0190f5a0-0000-7000-8000-000000000002".into(),
                    "bad_destination"
                ),
                (
                    2,
                    "0190f5a0-0000-7000-8000-000000000003".into(),
                    "bad_destination"
                ),
            ]
        );
        assert!(
            r.bad_methods[0].to_string().contains("\"GET\""),
            "{}",
            r.bad_methods[0]
        );
        // A long name is cut where it is quoted back.
        let long = "X".repeat(10_000);
        let r = TransactionRequest::parse(json!({"items": [tx_item("create", 1, json!(long))]}))
            .unwrap();
        assert!(r.bad_methods[0].to_string().len() < 300);

        // Faults of another kind stay invalid params, whatever the method.
        for bad in [
            json!({"items": [tx_item("create", 1, json!(5))]}),
            json!({"items": [tx_item("create", 1, json!(null))]}),
            json!({"items": [{"op": "create", "id": "nope", "resource_id": "r1",
                "content_hash": "00".repeat(32),
                "destination": {"method": "GET", "url": "http://127.0.0.1:1/", "headers": []}}]}),
            json!({"items": [{"op": "explode"}]}),
            json!({"items": 3}),
            json!({}),
            serde_json::Value::Null,
        ] {
            assert!(TransactionRequest::parse(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_job_rules_win_only_for_an_earlier_item() {
        let items: Vec<TxItem> = (1..=4)
            .map(|n| {
                serde_json::from_value(tx_item("create", n, serde_json::json!("PUT"))).unwrap()
            })
            .collect();
        let refused: BTreeSet<usize> = [2].into();
        let rejection = |index: usize| TransactionError {
            index,
            job: items[0].job_id(),
            reason: Rejection::JobExists,
        };
        // The plan sees items 0, 1 and 3; its index 2 is item 3, after the refused one.
        let plan_saw = std::cell::Cell::new(0);
        let r = earlier_rejection(&items, &refused, |kept| {
            plan_saw.set(kept.len());
            Ok::<_, ()>(Some(rejection(2)))
        });
        assert_eq!(r, Ok(None));
        assert_eq!(plan_saw.get(), 3);
        let r = earlier_rejection(&items, &refused, |_| Ok::<_, ()>(Some(rejection(1))));
        assert_eq!(r.unwrap().map(|t| t.index), Some(1));
        let r = earlier_rejection(&items, &refused, |_| Ok::<_, ()>(None));
        assert_eq!(r, Ok(None));
        // Nothing refused: nothing to decide here.
        let r = earlier_rejection(&items, &BTreeSet::new(), |_| {
            Ok::<_, ()>(Some(rejection(0)))
        });
        assert_eq!(r, Ok(None));
    }

    #[test]
    fn error_codes_are_stable_and_distinct() {
        let mut numbers = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(numbers.insert(c.number()), "{c:?}");
            assert_eq!(ErrorCode::from_name(c.name()), Some(c));
            let e = RpcError::new(c, "x");
            assert_eq!(e.kind(), Some(c));
        }
    }

    #[test]
    fn transaction_items_use_the_documented_shape() {
        let p: TransactionParams = serde_json::from_value(serde_json::json!({
            "items": [
                {"op": "create", "id": "0190f5a0-0000-7000-8000-000000000001",
                 "resource_id": "r1",
                 "content_hash": "00".repeat(32),
                 "destination": {"method": "POST", "url": "http://127.0.0.1:1/v1/uploads",
                                 "headers": [["authorization", "Bearer t"]]},
                 "metadata": {"file_name": "a.jpg"}},
                {"op": "retry", "job": "0190f5a0-0000-7000-8000-000000000002", "destination": null},
                {"op": "acknowledge", "job": "0190f5a0-0000-7000-8000-000000000003"},
                {"op": "cancel", "job": "0190f5a0-0000-7000-8000-000000000004"}
            ]
        }))
        .unwrap();
        assert_eq!(p.items.len(), 4);
    }
}
