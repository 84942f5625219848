//! `ferry`: the command line. Argument parsing and output; the work lives in the libraries.

mod backup_cmd;
mod dashboard_cmd;
mod extensions_cmd;
mod library_cmd;
mod linger;
mod migrate_cmd;
mod output;
mod restore_cmd;
mod state_cmd;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Back up a photo library through extensions"
)]
struct Cli {
    /// Where Ferry keeps its state (default: $XDG_STATE_HOME/ferry, or ~/.local/state/ferry).
    #[arg(long, global = true, env = "FERRY_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back up a folder: index it, send what the server lacks, verify everything.
    Backup(backup_cmd::BackupArgs),
    /// Get the photos back: download everything backed up into a folder, verified, folders
    /// and names as they were. Exit 0: every file is there; 4: some could not be restored.
    Restore(restore_cmd::RestoreArgs),
    /// Is everything backed up? Counts by state and waiting reason, per extension.
    /// Exit 0: everything is safe; 4: something is not backed up yet.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Why an asset is (or is not) backed up.
    Why {
        asset: String,
        #[arg(long)]
        json: bool,
    },
    /// Upload jobs.
    #[command(subcommand)]
    Jobs(state_cmd::JobsCommand),
    /// What was sent (receipts), newest first.
    History {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// The configuration file.
    #[command(subcommand)]
    Config(state_cmd::ConfigCommand),
    /// Run Ferry as a systemd user service.
    #[command(subcommand)]
    Service(state_cmd::ServiceCommand),
    /// Open the dashboard in a browser: the running daemon starts its web page on loopback and
    /// gives a one-time login link (valid 60 s).
    Dashboard(dashboard_cmd::DashboardArgs),
    /// Run the daemon: watch the configured folders and back them up, serve the control API.
    Daemon(state_cmd::DaemonArgs),
    /// Index a folder of photos and videos, and query the index.
    #[command(subcommand)]
    Library(library_cmd::LibraryCommand),
    /// Installed extensions and the user's consent: list, show, enable, disable.
    Extensions(extensions_cmd::ExtensionsArgs),
    /// Move this Ferry to a new device, once: preflight, receive, send, resume, export,
    /// import, status, cancel.
    #[command(subcommand)]
    Migrate(migrate_cmd::MigrateCommand),
    /// What Ferry sees now (network, power, activity, temperature) and what the configured
    /// policy makes of it.
    Conditions {
        #[arg(long)]
        json: bool,
        /// Print again on every change until interrupted.
        #[arg(long)]
        watch: bool,
    },
}

/// Exit codes, documented in README.md.
pub const EXIT_FAILURE: u8 = 1;
/// Wrong usage, a folder that is not there, a configuration to fix.
pub const EXIT_BAD_INPUT: u8 = 2;
/// The backup ran but not every resource is verified on the server.
pub const EXIT_INCOMPLETE: u8 = 4;
/// The server refused the token.
pub const EXIT_AUTH: u8 = 5;
/// The server could not be reached, answered nonsense, or presented a certificate Ferry does
/// not trust (the message names the option that trusts it).
pub const EXIT_UNREACHABLE: u8 = 6;

fn main() -> ExitCode {
    ferry_daemon::limit_malloc_arenas();
    // `ferry extension-run ferry-backup`: the bundled extension, speaking the extension
    // protocol on stdin/stdout (the host runs this binary as the extension's program).
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "extension-run") {
        if args.get(1).is_some_and(|a| a == "ferry-backup") && args.len() == 2 {
            return ferry_backup::main_with_stdio();
        }
        eprintln!("ferry: extension-run knows one extension: ferry-backup");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    // Logs go to stderr, warnings only unless FERRY_LOG says otherwise (e.g. `FERRY_LOG=info`,
    // `FERRY_LOG=ferry_transfer=debug`): stdout carries the command's output. The metadata
    // parser's own complaints about broken files are off by default: the scan already reports
    // each such file, with its reason, and a person should not read "ERROR" for a file Ferry
    // handled. Nor are the platform certificate verifier's: a refused certificate is Ferry's
    // own error message, with the reason and the option that trusts it.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,nom_exif=off,rustls_platform_verifier=off")
            }),
        )
        .init();
    let cli = Cli::parse();
    let state_dir = cli
        .state_dir
        .unwrap_or_else(ferry_daemon::config::default_state_dir);
    // `config` reports a broken file itself; every other command needs a good one.
    let command = match cli.command {
        Command::Config(cmd) => return finish(state_cmd::config(cmd)),
        other => other,
    };
    ferry_daemon::config::tighten_config_dir();
    let config_path = ferry_daemon::config::config_path();
    let config = match ferry_daemon::config::FileConfig::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let result = match command {
        Command::Status { json } => state_cmd::status(&state_dir, json),
        Command::Why { asset, json } => state_cmd::why(&state_dir, &asset, json),
        Command::Jobs(cmd) => state_cmd::jobs(&state_dir, cmd),
        Command::History { limit, json } => state_cmd::history(&state_dir, limit, json),
        Command::Config(cmd) => state_cmd::config(cmd),
        Command::Service(cmd) => state_cmd::service(&state_dir, cmd),
        Command::Daemon(args) => state_cmd::daemon(&state_dir, &config, args),
        Command::Dashboard(args) => dashboard_cmd::run(&state_dir, args),
        Command::Backup(args) => backup_cmd::run(&state_dir, &config, args),
        Command::Restore(args) => restore_cmd::run(&state_dir, &config, args),
        Command::Library(cmd) => library_cmd::run(&state_dir, cmd),
        Command::Extensions(args) => extensions_cmd::run(&state_dir, args),
        Command::Migrate(cmd) => {
            migrate_cmd::run(&state_dir, &ferry_host::default_extensions_dir(), cmd)
        }
        Command::Conditions { json, watch } => {
            conditions(config.policy(), config.observer(), json, watch)
        }
    };
    finish(result)
}

fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn conditions(
    policy: ferry_core::Policy,
    observer: ferry_conditions::ObserverConfig,
    json: bool,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    use ferry_conditions::{Observer, local_now, report};
    use ferry_core::policy::decide;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let observer = Observer::start(observer).await;
        let show = |c: &ferry_core::Conditions| -> anyhow::Result<()> {
            let now = local_now();
            if json {
                let decision = decide(&policy, c, &now);
                output::json_line(&serde_json::json!({
                    "conditions": c,
                    "decision": decision,
                    "summary": decision.to_string(),
                }))
            } else {
                print!("{}", report(c, &policy, &now));
                Ok(())
            }
        };
        show(&observer.current())?;
        if watch {
            let mut rx = observer.subscribe();
            while rx.changed().await.is_ok() {
                let c = rx.borrow_and_update().clone();
                if !json {
                    println!();
                }
                show(&c)?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
