//! The one call ferry-backup makes to ferry-server itself: `POST /v1/objects/check`, which
//! content hashes the server already stores. Everything else (the uploads) Ferry does.
//!
//! Blocking on a current-thread tokio runtime: the SDK is synchronous, and the same reqwest
//! build as ferry-transfer keeps the workspace's compile small.

use std::collections::HashSet;
use std::time::Duration;

use ferry_core::ContentHash;

/// The most hashes one check carries (the server accepts ≤ 10,000).
pub const MAX_CHECK_HASHES: usize = 1000;

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
    authorization: String,
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
            authorization: format!("Bearer {token}"),
        })
    }

    /// The subset of `hashes` the server already stores.
    pub fn stored(&self, hashes: &[ContentHash]) -> Result<HashSet<ContentHash>, CheckError> {
        let mut out = HashSet::new();
        for chunk in hashes.chunks(MAX_CHECK_HASHES) {
            let hex: Vec<String> = chunk.iter().map(ContentHash::to_hex).collect();
            let answer = self.runtime.block_on(async {
                let r = self
                    .client
                    .post(&self.check_url)
                    .header("authorization", &self.authorization)
                    .json(&CheckRequest { blake3: &hex })
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
                if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
                    return Err(CheckError::Transient(format!("HTTP {status}")));
                }
                if !status.is_success() {
                    return Err(CheckError::Permanent(format!("HTTP {status}")));
                }
                let body = r
                    .bytes()
                    .await
                    .map_err(|e| CheckError::Transient(e.to_string()))?;
                serde_json::from_slice::<CheckResponse>(&body)
                    .map_err(|e| CheckError::Permanent(format!("answer: {e}")))
            })?;
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
}
