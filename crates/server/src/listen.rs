//! The accept loop: plain TCP or TLS, HTTP/1.1 served by hyper with a deadline on request
//! headers, and a graceful stop that lets requests in flight finish.
//!
//! axum's own `serve` offers neither TLS nor a header timeout; a client that opens connections
//! and never finishes its headers would otherwise hold them forever.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Where the server's certificate chain and private key are (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("TLS private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS certificate and key do not make a usable configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Reads the PEM files and builds the acceptor; every problem names the file at fault.
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let certs = read_certs(&files.cert_path)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_path).map_err(|e| TlsError::Key {
        path: files.key_path.clone(),
        reason: pem_reason(&e),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The SHA-256 fingerprint of the server's certificate (the first in the chain file), as
/// `AA:BB:…` — what a client pins (`ferry --server-cert-sha256`) and what
/// `openssl x509 -noout -fingerprint -sha256` prints.
pub fn certificate_sha256(files: &TlsFiles) -> Result<String, TlsError> {
    use sha2::{Digest, Sha256};
    let certs = read_certs(&files.cert_path)?;
    let digest = Sha256::digest(certs[0].as_ref());
    Ok(digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Cert {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_reason(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_reason(&e)))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block in the file".into()));
    }
    Ok(certs)
}

fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM block of the right kind".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// Serves `app` on `listener` until `stop` fires, then waits for open connections to finish
/// the request they are on.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    header_read_timeout: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let tls = tls.clone();
                let drain = drain_rx.clone();
                conns.spawn(async move {
                    match tls {
                        None => serve_conn(TokioIo::new(stream), app, header_read_timeout, drain).await,
                        Some(acceptor) => {
                            // The handshake gets the same deadline as headers would.
                            match tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls_stream)) => {
                                    serve_conn(TokioIo::new(tls_stream), app, header_read_timeout, drain).await
                                }
                                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    while conns.join_next().await.is_some() {}
}

async fn serve_conn<I>(
    io: I,
    app: axum::Router,
    header_read_timeout: Duration,
    mut drain: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let draining = async move {
        // The guard `wait_for` returns is not Send: drop it before anything else awaits.
        let _ = drain.wait_for(|draining| *draining).await.map(|_| ());
    };
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        () = draining => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
