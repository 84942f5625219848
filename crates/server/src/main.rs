//! The `ferry-server` command: `serve` and `token create`; everything else is the library.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-server",
    version,
    about = "Ferry's reference receiving server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve uploads. The first line on stdout is `listening on http://ADDR` (or https); with
    /// TLS the second is `certificate sha256 AA:BB:…`, the fingerprint a client can pin.
    Serve {
        #[arg(long, env = "FERRY_SERVER_DATA")]
        data: PathBuf,
        /// The data directory's mode, in octal (default 0700: it holds a copy of every upload,
        /// so only the server's own account may enter it). Created with it, set to it at start;
        /// e.g. 0750 lets the directory's group read the stored objects.
        #[arg(long, default_value = "0700", value_parser = parse_mode, value_name = "OCTAL")]
        data_mode: u32,
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: SocketAddr,
        /// Accept requests without a token. Meant for loopback demos only.
        #[arg(long, alias = "no-auth")]
        open: bool,
        #[arg(long)]
        max_size_bytes: Option<u64>,
        #[arg(long)]
        max_append_size_bytes: Option<u64>,
        /// Unfinished uploads untouched this long expire.
        #[arg(long)]
        max_age_secs: Option<u64>,
        #[arg(long)]
        body_idle_timeout_secs: Option<u64>,
        /// A client must send a request's headers within this many seconds (default 30).
        #[arg(long)]
        header_read_timeout_secs: Option<u64>,
        /// Serve https: PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key", value_name = "PEM")]
        tls_cert: Option<PathBuf>,
        /// Serve https: PEM private key (needs --tls-cert).
        #[arg(long, requires = "tls_cert", value_name = "PEM")]
        tls_key: Option<PathBuf>,
    },
    /// Manage device tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it once; only its hash is stored.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, env = "FERRY_SERVER_DATA")]
        data: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr: stdout carries the address line (and tokens) for scripts.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Serve {
            data,
            data_mode,
            listen,
            open,
            max_size_bytes,
            max_append_size_bytes,
            max_age_secs,
            body_idle_timeout_secs,
            header_read_timeout_secs,
            tls_cert,
            tls_key,
        } => {
            let mut config = ferry_server::Config::new(data, listen);
            config.data_mode = data_mode;
            config.open = open;
            if let Some(v) = max_size_bytes {
                config.limits.max_size_bytes = v;
            }
            if let Some(v) = max_append_size_bytes {
                config.limits.max_append_size_bytes = v;
            }
            if let Some(v) = max_age_secs {
                config.limits.max_age = Duration::from_secs(v);
            }
            if let Some(v) = body_idle_timeout_secs {
                config.limits.body_idle_timeout = Duration::from_secs(v);
            }
            if let Some(v) = header_read_timeout_secs {
                config.header_read_timeout = Duration::from_secs(v);
            }
            if let (Some(cert_path), Some(key_path)) = (tls_cert, tls_key) {
                config.tls = Some(ferry_server::TlsFiles {
                    cert_path,
                    key_path,
                });
            }
            let fingerprint = config
                .tls
                .as_ref()
                .map(ferry_server::certificate_sha256)
                .transpose()?;
            let mut handle = ferry_server::Server::start(config).await?;
            let mut out = std::io::stdout();
            writeln!(out, "listening on {}", handle.base_url())?;
            if let Some(fp) = fingerprint {
                // What `ferry --server-cert-sha256` (or `cert_sha256` in its [server]) takes.
                writeln!(out, "certificate sha256 {fp}")?;
            }
            out.flush()?;
            tokio::select! {
                _ = handle.wait() => {}
                _ = shutdown_signal() => {
                    tracing::info!("shutting down");
                    handle.shutdown().await;
                }
            }
        }
        Command::Token {
            command: TokenCommand::Create { name, data },
        } => {
            let token = ferry_server::create_token(&data, &name)
                .await
                .context("creating the token")?;
            println!("{token}");
        }
    }
    Ok(())
}

/// An octal directory mode (`0750`, `750` or `0o750`) that leaves the owner full access.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 0700 or 0750"))?;
    if mode & 0o700 != 0o700 {
        return Err(format!(
            "{s:?} would lock the server out of its own data: the owner needs rwx (0700)"
        ));
    }
    Ok(mode)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
