//! Where backups go: an embedded ferry-server on loopback (the zero-setup default) or a
//! server given by URL and token, and the one question Ferry asks a server directly: which of
//! these content hashes do you hold?

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_server::{Config, Server, ServerHandle};

/// Most hashes in one `POST /v1/objects/check` (the server's own bound).
pub const CHECK_BATCH: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The server answered 401: the token is wrong or missing. The user must fix the token.
    #[error(
        "the server at {url} refused the token: create one with `ferry-server token create --name NAME --data DIR` and pass it with --token (or FERRY_TOKEN)"
    )]
    Unauthorized { url: String },
    /// No answer: wrong URL, server down. Worth retrying later.
    #[error("cannot reach the server at {url}: {detail}; check the URL and that the server runs")]
    Unreachable { url: String, detail: String },
    /// An answer that is not the protocol's.
    #[error("the server at {url} answered unexpectedly: {detail}")]
    BadResponse { url: String, detail: String },
    /// The TLS handshake failed on the server's certificate: a person must trust it (or fix
    /// the server), so it is never waited out.
    #[error(
        "the server at {url} presented a certificate Ferry does not trust: {reason}{}. {}",
        .seen_sha256.map(|s| format!(". Its SHA-256 fingerprint is {s}")).unwrap_or_default(),
        certificate_advice(.reason, .seen_sha256.as_ref())
    )]
    Certificate {
        url: String,
        reason: ferry_tls::CertReason,
        /// What the server presented, when Ferry's verifier saw it.
        seen_sha256: Option<ferry_tls::Fingerprint>,
    },
    /// `ca_file` / `--server-ca` cannot be used (or no roots at all): a setting to fix.
    #[error("cannot set up trust for the server at {url}: {source}")]
    Trust {
        url: String,
        #[source]
        source: ferry_tls::TrustError,
    },
    #[error("server URL {0:?} is not usable: {1}")]
    BadUrl(String, String),
    /// The embedded server could not start (its folder, its database).
    #[error("cannot start the built-in server in {dir}: {detail}")]
    Embedded { dir: PathBuf, detail: String },
}

/// Which option fixes a refused certificate, with the fingerprint to pin when it is known.
fn certificate_advice(
    reason: &ferry_tls::CertReason,
    seen: Option<&ferry_tls::Fingerprint>,
) -> String {
    use ferry_tls::CertReason;
    let pin = match seen {
        Some(s) => format!("--server-cert-sha256 {s}"),
        None => "--server-cert-sha256 FINGERPRINT".to_owned(),
    };
    let pin_how = format!(
        "{pin} (cert_sha256 in [server] of the configuration; compare it with the fingerprint ferry-server prints at start)"
    );
    match reason {
        CertReason::FingerprintMismatch { .. } => format!(
            "If the server's certificate was replaced, pin the new one with {pin_how}; if not, something else answers at this address"
        ),
        CertReason::NameMismatch { .. } => format!(
            "Use a URL with a name the certificate holds, or pin the certificate with {pin_how}, which does not depend on names"
        ),
        CertReason::Expired { .. } | CertReason::NotYetValid => format!(
            "Renew the server's certificate (or check this machine's clock), or pin it with {pin_how}, which does not depend on dates"
        ),
        _ => format!(
            "If this is your server, trust its certificate with {pin_how}, or with --server-ca PEM (ca_file in [server]) naming its certificate or the CA that signed it"
        ),
    }
}

/// A running embedded server with its token.
#[derive(Debug)]
pub struct Embedded {
    pub handle: ServerHandle,
    pub token: String,
    pub data_dir: PathBuf,
}

impl Embedded {
    /// Starts the embedded server storing under `state_dir/server`, on an ephemeral loopback
    /// port. Its token is created once and kept in `state_dir/server-token` (mode 0600).
    pub async fn start(state_dir: &Path) -> Result<Embedded, ServerError> {
        let data_dir = state_dir.join("server");
        let token_path = state_dir.join("server-token");
        let err = |detail: String| ServerError::Embedded {
            dir: data_dir.clone(),
            detail,
        };
        let token = match std::fs::read_to_string(&token_path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => {
                let token = ferry_server::create_token(&data_dir, "ferry-backup")
                    .await
                    .map_err(|e| err(e.to_string()))?;
                write_private(&token_path, token.as_bytes()).map_err(|e| err(e.to_string()))?;
                token
            }
        };
        // The same port as last time when it is free, so jobs and receipts keep one address.
        let port_path = state_dir.join("server-port");
        let last_port: Option<u16> = std::fs::read_to_string(&port_path)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let at = |port: u16| {
            let mut c = Config::new(
                &data_dir,
                std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            );
            // Unfinished uploads live a day; collecting them every ten minutes is plenty, and
            // keeps the daemon's own server from waking it every minute.
            c.gc_interval = Duration::from_secs(600);
            c
        };
        let handle = match last_port {
            Some(p) => match Server::start(at(p)).await {
                Ok(h) => Ok(h),
                Err(ferry_server::StartError::Listen(..)) => Server::start(at(0)).await,
                Err(e) => Err(e),
            },
            None => Server::start(at(0)).await,
        }
        .map_err(|e| err(e.to_string()))?;
        if last_port != Some(handle.local_addr().port()) {
            write_private(
                &port_path,
                handle.local_addr().port().to_string().as_bytes(),
            )
            .map_err(|e| err(e.to_string()))?;
        }
        Ok(Embedded {
            handle,
            token,
            data_dir,
        })
    }

    pub fn base_url(&self) -> String {
        self.handle.base_url()
    }
}

/// Writes a small secret file durably: temp file (0600) → fsync → rename → fsync dir. A
/// missing folder on the way is created 0700.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    ferry_store::private::create_private_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(ferry_store::private::FILE_MODE)
        .open(&tmp)?;
    // A temp file left behind keeps its mode when reopened: set it.
    f.set_permissions(std::fs::Permissions::from_mode(
        ferry_store::private::FILE_MODE,
    ))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Ferry's client for the server's own API (not uploads: those are the transfer engine's).
#[derive(Debug, Clone)]
pub struct ServerClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

#[derive(serde::Deserialize)]
struct CheckAnswer {
    #[serde(default)]
    blake3: Vec<String>,
}

/// The server's base URL (no trailing `/`, checked) and an HTTP client builder with what every
/// client of the server shares: its TLS trust and a 10 s connect timeout.
pub(crate) fn client_builder(
    base_url: &str,
    tls: Option<&ferry_tls::ServerTls>,
) -> Result<(String, reqwest::ClientBuilder), ServerError> {
    let base = base_url.trim_end_matches('/').to_owned();
    reqwest::Url::parse(&base).map_err(|e| ServerError::BadUrl(base.clone(), e.to_string()))?;
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(tls) = tls {
        builder = builder.tls_backend_preconfigured(tls.rustls_config());
    }
    Ok((base, builder))
}

impl ServerClient {
    pub fn new(base_url: &str, token: &str) -> Result<ServerClient, ServerError> {
        ServerClient::with_tls(base_url, token, None)
    }

    /// With the server's own TLS trust (`ca_file`, `cert_sha256`); `None`: the platform's
    /// roots, as reqwest sets them up.
    pub fn with_tls(
        base_url: &str,
        token: &str,
        tls: Option<&ferry_tls::ServerTls>,
    ) -> Result<ServerClient, ServerError> {
        let (base, builder) = client_builder(base_url, tls)?;
        let http = builder
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ServerError::BadUrl(base.clone(), e.to_string()))?;
        Ok(ServerClient {
            base,
            token: token.to_owned(),
            http,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The upload URL jobs are sent to.
    pub fn uploads_url(&self) -> String {
        format!("{}{}", self.base, ferry_server::http::UPLOADS_PATH)
    }

    /// Which of `blake3_hex` the server holds as finished objects.
    pub async fn present(&self, blake3_hex: &[String]) -> Result<HashSet<String>, ServerError> {
        let mut out = HashSet::new();
        let url = format!("{}/v1/objects/check", self.base);
        let batches: Vec<&[String]> = if blake3_hex.is_empty() {
            // An empty check still proves the token works.
            vec![&[]]
        } else {
            blake3_hex.chunks(CHECK_BATCH).collect()
        };
        for batch in batches {
            let res = self
                .http
                .post(&url)
                .bearer_auth(&self.token)
                .json(&serde_json::json!({ "blake3": batch }))
                .send()
                .await
                .map_err(|e| match ferry_tls::CertificateProblem::find(&e) {
                    Some(p) => ServerError::Certificate {
                        url: self.base.clone(),
                        reason: p.reason,
                        seen_sha256: p.seen_sha256,
                    },
                    None => ServerError::Unreachable {
                        url: self.base.clone(),
                        detail: error_chain(&e),
                    },
                })?;
            let status = res.status();
            if status == reqwest::StatusCode::UNAUTHORIZED {
                return Err(ServerError::Unauthorized {
                    url: self.base.clone(),
                });
            }
            if !status.is_success() {
                return Err(ServerError::BadResponse {
                    url: self.base.clone(),
                    detail: format!("check answered {status}"),
                });
            }
            let answer: CheckAnswer = res.json().await.map_err(|e| ServerError::BadResponse {
                url: self.base.clone(),
                detail: format!("check answer: {e}"),
            })?;
            out.extend(answer.blake3.into_iter().map(|h| h.to_ascii_lowercase()));
        }
        Ok(out)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
