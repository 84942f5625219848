//! The two calls ferry-backup makes to ferry-server itself: `POST /v1/objects/check`, which
//! content hashes the server already stores, and `POST /v1/objects/receipts`, which records
//! where another copy of stored bytes lives (its path), so a restore brings that path back too.
//! Everything else (the uploads) Ferry does.
//!
//! Blocking on a current-thread tokio runtime: the SDK is synchronous, and the same reqwest
//! build as ferry-transfer keeps the workspace's compile small.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use ferry_core::ContentHash;

/// The most hashes one check carries (the server accepts ≤ 10,000).
pub const MAX_CHECK_HASHES: usize = 1000;

/// The most receipts one request carries (the server's own bound).
pub const MAX_RECEIPT_BATCH: usize = 1000;

/// One receipt to record: an object the server holds, and the metadata of this copy of it
/// (the same keys an upload job of the resource carries, so the receipt of a resource that was
/// uploaded and one added for it are the same receipt to the server).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NewReceipt {
    pub object_id: String,
    pub metadata: BTreeMap<String, String>,
}

/// What the server made of a batch of receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipts {
    /// Recorded (or already there), except for these objects (lowercase hex), which the server
    /// does not hold for this user after all: their bytes must be uploaded.
    Recorded { missing: HashSet<String> },
    /// The server has no receipts route (a ferry-server from before it): 404, 405 or 501.
    Unsupported,
}

/// Why the server could not answer. Classified by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Unreachable, timed out, 408/429/5xx: try again on a later call.
    #[error("server unavailable: {0}")]
    Transient(String),
    /// 401/403 or another 4xx, or an answer that is not the documented JSON: the
    /// configuration (URL, token) needs a person.
    #[error("server refused the check: {0}")]
    Permanent(String),
}

#[derive(Debug)]
pub struct ServerClient {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    check_url: String,
    receipts_url: String,
    authorization: String,
}

#[derive(serde::Serialize)]
struct ReceiptsRequest<'a> {
    receipts: &'a [NewReceipt],
}

#[derive(serde::Deserialize)]
struct ReceiptsResponse {
    receipts: Vec<ReceiptAnswer>,
}

#[derive(serde::Deserialize)]
struct ReceiptAnswer {
    object_id: String,
    status: u16,
}

#[derive(serde::Serialize)]
struct CheckRequest<'a> {
    blake3: &'a [String],
}

#[derive(serde::Deserialize)]
struct CheckResponse {
    #[serde(default)]
    blake3: Vec<String>,
}

impl ServerClient {
    /// A client for `server_url`, trusting its certificate as `trust` says (Ferry's own
    /// verifier: the same trust as Ferry's uploads to it).
    pub fn new(
        server_url: &str,
        token: &str,
        trust: &ferry_tls::ServerTrust,
    ) -> Result<ServerClient, CheckError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CheckError::Permanent(format!("runtime: {e}")))?;
        let tls = ferry_tls::ServerTls::new(trust)
            .map_err(|e| CheckError::Permanent(format!("server trust: {e}")))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls.rustls_config())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| CheckError::Permanent(format!("HTTP client: {e}")))?;
        Ok(ServerClient {
            runtime,
            client,
            check_url: format!("{}/v1/objects/check", server_url.trim_end_matches('/')),
            receipts_url: format!("{}/v1/objects/receipts", server_url.trim_end_matches('/')),
            authorization: format!("Bearer {token}"),
        })
    }

    /// The subset of `hashes` the server already stores.
    pub fn stored(&self, hashes: &[ContentHash]) -> Result<HashSet<ContentHash>, CheckError> {
        let mut out = HashSet::new();
        for chunk in hashes.chunks(MAX_CHECK_HASHES) {
            let hex: Vec<String> = chunk.iter().map(ContentHash::to_hex).collect();
            let body = self.post(&self.check_url, &CheckRequest { blake3: &hex }, false)?;
            let answer = body
                .as_deref()
                .map(serde_json::from_slice::<CheckResponse>)
                .transpose()
                .map_err(|e| CheckError::Permanent(format!("answer: {e}")))?
                .ok_or_else(|| CheckError::Permanent("the server has no check route".into()))?;
            let asked: HashSet<&ContentHash> = chunk.iter().collect();
            // Only hashes we asked about count: a server listing others is ignored.
            out.extend(
                answer
                    .blake3
                    .iter()
                    .filter_map(|h| ContentHash::from_hex(&h.to_ascii_lowercase()))
                    .filter(|h| asked.contains(h)),
            );
        }
        Ok(out)
    }

    /// Records `receipts` (any number; sent [`MAX_RECEIPT_BATCH`] at a time). The server
    /// answers a receipt it already has with that one and writes nothing, so sending one again
    /// (a call cut short, a page redone) is harmless.
    pub fn add_receipts(&self, receipts: &[NewReceipt]) -> Result<Receipts, CheckError> {
        let mut missing = HashSet::new();
        for chunk in receipts.chunks(MAX_RECEIPT_BATCH) {
            let Some(body) = self.post(
                &self.receipts_url,
                &ReceiptsRequest { receipts: chunk },
                true,
            )?
            else {
                return Ok(Receipts::Unsupported);
            };
            let answer: ReceiptsResponse = serde_json::from_slice(&body)
                .map_err(|e| CheckError::Permanent(format!("receipts answer: {e}")))?;
            if answer.receipts.len() != chunk.len() {
                return Err(CheckError::Permanent(format!(
                    "receipts answer: {} answers to {} receipts",
                    answer.receipts.len(),
                    chunk.len()
                )));
            }
            for (asked, a) in chunk.iter().zip(answer.receipts) {
                match a.status {
                    200 | 201 => {}
                    404 => {
                        missing.insert(asked.object_id.to_ascii_lowercase());
                    }
                    other => {
                        return Err(CheckError::Permanent(format!(
                            "receipts answer: status {other} for {}",
                            a.object_id.chars().take(64).collect::<String>()
                        )));
                    }
                }
            }
        }
        Ok(Receipts::Recorded { missing })
    }

    /// POSTs `body` as JSON to `url`: the answer's body on success; `None` when the route is
    /// missing (404, 405, 501) and `missing_ok`. Failures classified for the caller: the network
    /// and 408/429/5xx pass, anything else (a refused token, an untrusted certificate) needs a
    /// person.
    fn post(
        &self,
        url: &str,
        body: &impl serde::Serialize,
        missing_ok: bool,
    ) -> Result<Option<Vec<u8>>, CheckError> {
        self.runtime.block_on(async {
            let r = self
                .client
                .post(url)
                .header("authorization", &self.authorization)
                .json(body)
                .send()
                .await
                .map_err(|e| match ferry_tls::CertificateProblem::find(&e) {
                    // Not a passing trouble: the configuration (`ca_file`, `cert_sha256`)
                    // or the server's certificate needs a person.
                    Some(p) => CheckError::Permanent(format!(
                        "the server's certificate is not trusted: {p}; trust it with `cert_sha256` or `ca_file` in the manifest's [config]"
                    )),
                    None => CheckError::Transient(e.to_string()),
                })?;
            let status = r.status();
            if missing_ok && matches!(status.as_u16(), 404 | 405 | 501) {
                return Ok(None);
            }
            if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
                return Err(CheckError::Transient(format!("HTTP {status}")));
            }
            if !status.is_success() {
                return Err(CheckError::Permanent(format!("HTTP {status}")));
            }
            r.bytes()
                .await
                .map(|b| Some(b.to_vec()))
                .map_err(|e| CheckError::Transient(e.to_string()))
        })
    }
}
