//! `ferry`: the command line. Argument parsing and output; the work lives in the libraries.

mod extensions_cmd;
mod library_cmd;
mod output;

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
    /// Index a folder of photos and videos, and query the index.
    #[command(subcommand)]
    Library(library_cmd::LibraryCommand),
    /// Installed extensions and the user's consent: list, show, enable, disable.
    Extensions(extensions_cmd::ExtensionsArgs),
    /// What Ferry sees now (network, power, activity, temperature) and what the default
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
pub const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let state_dir = cli.state_dir.unwrap_or_else(default_state_dir);
    let result = match cli.command {
        Command::Library(cmd) => library_cmd::run(&state_dir, cmd),
        Command::Conditions { json, watch } => conditions(json, watch),
        Command::Extensions(args) => extensions_cmd::run(&state_dir, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn conditions(json: bool, watch: bool) -> anyhow::Result<ExitCode> {
    use ferry_conditions::{Observer, ObserverConfig, local_now, report};
    use ferry_core::policy::{Policy, decide};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let policy = Policy::default();
        let observer = Observer::start(ObserverConfig::default()).await;
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

fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ferry");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/ferry"),
        None => PathBuf::from(".ferry"),
    }
}
