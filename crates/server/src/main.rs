//! The `ferry-server` command: `serve`, `user …` and `token …`; everything else is the library.

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

/// Where the server's data lives; every command that opens it takes the same flags.
#[derive(Debug, clap::Args)]
struct DataArgs {
    /// The data directory: unfinished uploads, and unless told otherwise the metadata
    /// (`meta.db`) and the objects (`blobs/`).
    #[arg(long = "data", env = "FERRY_SERVER_DATA", value_name = "DIR")]
    dir: PathBuf,
    /// The metadata database: `sqlite:PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`
    /// (default: sqlite:DIR/meta.db).
    // The value is never shown in --help: it may hold a password.
    #[arg(
        long,
        env = "FERRY_SERVER_DATABASE",
        hide_env_values = true,
        value_name = "URL"
    )]
    database: Option<String>,
    /// Where finished objects go: `file:DIR` or `s3://BUCKET[/PREFIX]` (default: file:DIR/blobs).
    /// An S3 store is configured by AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY (and AWS_ALLOW_HTTP=true for a plain-http endpoint). The `user` and
    /// `token` commands check the URL but never open the store.
    #[arg(long, env = "FERRY_SERVER_STORE", value_name = "URL")]
    store: Option<String>,
}

impl DataArgs {
    /// A command that never opens the store still refuses a bad `--store` (or
    /// `FERRY_SERVER_STORE`): the same flags serve every command, so a typo shows at once.
    fn check_store(&self) -> anyhow::Result<()> {
        if let Some(store) = &self.store {
            ferry_server::StoreUrl::parse(store).map_err(ferry_server::StartError::StoreUrl)?;
        }
        Ok(())
    }

    /// Opens the accounts (users and tokens) these flags name.
    async fn accounts(&self) -> anyhow::Result<ferry_server::accounts::Accounts> {
        self.check_store()?;
        Ok(ferry_server::accounts::Accounts::connect(&self.dir, self.database.as_deref()).await?)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve uploads. The first line on stdout is `listening on http://ADDR` (or https); with
    /// TLS the second is `certificate sha256 AA:BB:…`, the fingerprint a client can pin.
    Serve {
        #[command(flatten)]
        data: DataArgs,
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
        /// With an S3 store: how long an upload's lease holds without renewal, in
        /// milliseconds (default 30000); another instance takes over an upload whose holder
        /// stopped after this long.
        /// At least 1000: a holder renews every third of it and stops writing after three
        /// quarters since its last renewal.
        #[arg(long, env = "FERRY_SERVER_LEASE_TTL_MS", value_parser = clap::value_parser!(u64).range(1000..))]
        lease_ttl_ms: Option<u64>,
        /// Serve https: PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key", value_name = "PEM")]
        tls_cert: Option<PathBuf>,
        /// Serve https: PEM private key (needs --tls-cert).
        #[arg(long, requires = "tls_cert", value_name = "PEM")]
        tls_key: Option<PathBuf>,
    },
    /// Manage users: each sees only the objects and receipts its own tokens stored.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage device tokens (each belongs to one user).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user.
    Create {
        /// 1 to 64 letters, digits, `.`, `_` or `-`.
        name: String,
        /// Most bytes the user's objects may take (the sum of their sizes); default unlimited.
        #[arg(long, value_name = "BYTES")]
        quota: Option<u64>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List users with their quota, usage and number of tokens.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Set a user's quota in bytes, or `none` for unlimited.
    SetQuota {
        name: String,
        #[arg(value_parser = parse_quota, value_name = "BYTES|none")]
        quota: Quota,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it once; only its hash is stored.
    Create {
        /// The device's name.
        #[arg(long)]
        name: String,
        /// The user the token belongs to (default: the implicit user `default`).
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List tokens (id, user, device name, creation time); never the tokens themselves.
    List {
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Revoke a token by its id or device name: a running server refuses it from its next
    /// request (401).
    Revoke {
        #[arg(value_name = "NAME-OR-ID")]
        token: String,
        /// Look the name up among this user's tokens only.
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        data: DataArgs,
    },
}

/// A quota as `user set-quota` takes it: `None` is unlimited.
#[derive(Debug, Clone, Copy)]
struct Quota(Option<u64>);

fn parse_quota(s: &str) -> Result<Quota, String> {
    if s.eq_ignore_ascii_case("none") || s.eq_ignore_ascii_case("unlimited") {
        return Ok(Quota(None));
    }
    s.parse()
        .map(|q| Quota(Some(q)))
        .map_err(|_| format!("{s:?} is neither a number of bytes nor `none`"))
}

fn quota_text(q: Option<u64>) -> String {
    q.map_or_else(|| "unlimited".into(), |b| b.to_string())
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
            lease_ttl_ms,
            tls_cert,
            tls_key,
        } => {
            let mut config = ferry_server::Config::new(data.dir, listen);
            config.database = data.database;
            config.store = data.store;
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
            if let Some(v) = lease_ttl_ms {
                config.limits.lease_ttl = Duration::from_millis(v);
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
        Command::User { command } => user_command(command).await?,
        Command::Token { command } => token_command(command).await?,
    }
    Ok(())
}

async fn user_command(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Create { name, quota, data } => {
            let accounts = data.accounts().await?;
            let user = accounts.create_user(&name, quota).await;
            accounts.close().await;
            let user = user.context("creating the user")?;
            println!(
                "created user {} (quota: {})",
                user.name,
                quota_text(user.quota_bytes)
            );
        }
        UserCommand::List { data } => {
            let accounts = data.accounts().await?;
            let listed = async {
                Ok::<_, anyhow::Error>((accounts.users().await?, accounts.tokens(None).await?))
            }
            .await;
            accounts.close().await;
            let (users, tokens) = listed?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<24} {:>16} {:>16} {:>6}",
                "NAME", "QUOTA_BYTES", "USED_BYTES", "TOKENS"
            )?;
            for u in users {
                let n = tokens.iter().filter(|t| t.user_id == u.id).count();
                writeln!(
                    out,
                    "{:<24} {:>16} {:>16} {:>6}",
                    u.name,
                    quota_text(u.quota_bytes),
                    u.used_bytes,
                    n
                )?;
            }
        }
        UserCommand::SetQuota { name, quota, data } => {
            let accounts = data.accounts().await?;
            let user = accounts.set_quota(&name, quota.0).await;
            accounts.close().await;
            let user = user.context("setting the quota")?;
            println!(
                "user {}: quota {}, {} bytes used",
                user.name,
                quota_text(user.quota_bytes),
                user.used_bytes
            );
        }
    }
    Ok(())
}

async fn token_command(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name, user, data } => {
            let token = match user {
                // Without a user: exactly as before accounts (the embedded server's path).
                None => {
                    data.check_store()?;
                    ferry_server::create_token_in(&data.dir, data.database.as_deref(), &name)
                        .await
                        .context("creating the token")?
                }
                Some(user) => {
                    let accounts = data.accounts().await?;
                    let token = accounts.create_token(Some(&user), &name).await;
                    accounts.close().await;
                    token.context("creating the token")?
                }
            };
            println!("{token}");
        }
        TokenCommand::List { user, data } => {
            let accounts = data.accounts().await?;
            let tokens = accounts.tokens(user.as_deref()).await;
            accounts.close().await;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{:<16} {:<24} {:<24} CREATED", "ID", "USER", "NAME")?;
            for t in tokens? {
                let created =
                    std::time::UNIX_EPOCH + Duration::from_millis(t.created_unix_ms.max(0) as u64);
                writeln!(
                    out,
                    "{:<16} {:<24} {:<24} {}",
                    t.id(),
                    t.user_name,
                    t.name,
                    httpdate::fmt_http_date(created)
                )?;
            }
        }
        TokenCommand::Revoke { token, user, data } => {
            let accounts = data.accounts().await?;
            let revoked = accounts.revoke_token(&token, user.as_deref()).await;
            accounts.close().await;
            let t = revoked.context("revoking the token")?;
            println!(
                "revoked token {} ({} of user {})",
                t.id(),
                t.name,
                t.user_name
            );
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
