//! The extension protocol, version 1: the one definition of every message Ferry and an extension
//! exchange. `docs/protocol.md` describes the same thing for authors in other languages; a test
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

use std::collections::BTreeMap;

use ferry_core::job::{Action, Job, TxItem};
use ferry_core::resource::{ResourceMetadata, ResourceType};
use ferry_core::{ContentHash, UrlBase};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line either side may write, newline excluded. A longer line is a protocol
/// violation: Ferry stops an extension that writes one.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

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

/// Every method an extension may call, for hosts that validate names up front.
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Number(i64),
    String(String),
}

/// Any one line, before it is known what it is. Parse with [`Message::parse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawMessage {
    pub jsonrpc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

/// Why a line is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("line of {0} bytes is over the limit of {MAX_MESSAGE_BYTES}")]
    TooLong(usize),
    #[error("not JSON: {0}")]
    Parse(String),
    #[error("not a JSON-RPC 2.0 message: {0}")]
    Invalid(&'static str),
}

impl FrameError {
    /// The JSON-RPC error to answer with, where an answer is possible.
    pub fn to_rpc(&self) -> RpcError {
        match self {
            FrameError::TooLong(_) => RpcError::new(ErrorCode::TooLarge, self.to_string()),
            FrameError::Parse(_) => RpcError::new(ErrorCode::ParseError, self.to_string()),
            FrameError::Invalid(_) => RpcError::new(ErrorCode::InvalidRequest, self.to_string()),
        }
    }
}

impl Message {
    /// Parses one line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Message, FrameError> {
        if line.len() > MAX_MESSAGE_BYTES {
            return Err(FrameError::TooLong(line.len()));
        }
        let raw: RawMessage =
            serde_json::from_slice(line).map_err(|e| FrameError::Parse(e.to_string()))?;
        if raw.jsonrpc != "2.0" {
            return Err(FrameError::Invalid("jsonrpc must be \"2.0\""));
        }
        match (raw.id, raw.method, raw.result, raw.error) {
            (Some(id), Some(method), None, None) => Ok(Message::Request {
                id,
                method,
                params: raw.params.unwrap_or(serde_json::Value::Null),
            }),
            (None, Some(method), None, None) => Ok(Message::Notification {
                method,
                params: raw.params.unwrap_or(serde_json::Value::Null),
            }),
            (Some(id), None, Some(result), None) => Ok(Message::Response {
                id,
                result: Ok(result),
            }),
            (Some(id), None, None, Some(error)) => Ok(Message::Response {
                id,
                result: Err(error),
            }),
            _ => Err(FrameError::Invalid(
                "a message has a method (request, notification) or exactly one of result/error",
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
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitializeResult {
    /// The version the extension speaks; Ferry stops one that answers another.
    pub protocol_version: u32,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillTerminateParams {
    pub reason: TerminateReason,
    /// How long Ferry waits for the `process_jobs` answer before stopping the process.
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
    /// The file's name (lossy UTF-8), without its folder.
    pub file_name: String,
    pub size_bytes: u64,
    pub content_type: String,
    /// BLAKE3, the hash a job pins.
    pub content_hash: ContentHash,
    #[serde(default)]
    pub metadata: ResourceMetadata,
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
            Err(FrameError::Invalid(_))
        ));
        assert!(matches!(
            Message::parse(
                br#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"x"}}"#
            ),
            Err(FrameError::Invalid(_))
        ));
        let long = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            Message::parse(&long),
            Err(FrameError::TooLong(MAX_MESSAGE_BYTES + 1))
        );
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
