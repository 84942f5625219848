//! `ferry`: the command line. Argument parsing and output; the work lives in the libraries.

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
}

/// Exit codes, documented in README.md.
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let state_dir = cli.state_dir.unwrap_or_else(default_state_dir);
    let result = match cli.command {
        Command::Library(cmd) => library_cmd::run(&state_dir, cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
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
