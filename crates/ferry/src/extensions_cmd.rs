//! `ferry extensions ...`: list installed extensions, show one, and record the user's consent
//! (enable, after showing what it will see and where it may send) or withdraw it (disable).

use crate::output::json_line;
use crate::{EXIT_BAD_INPUT, EXIT_FAILURE};
use anyhow::Context;
use clap::{Args, Subcommand};
use ferry_extension::protocol::Scope;
use ferry_host::{ExtensionStatus, Grant, Host, HostConfig, Manifest, consent, manifest};
use ferry_store::Store;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

#[derive(Debug, Args)]
pub struct ExtensionsArgs {
    /// Where installed extensions' manifests are (default: $XDG_CONFIG_HOME/ferry/extensions).
    #[arg(long, global = true, env = "FERRY_EXTENSIONS_DIR", value_name = "DIR")]
    extensions_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: ExtensionsCommand,
}

#[derive(Debug, Subcommand)]
enum ExtensionsCommand {
    /// Installed extensions: enabled or not, last outcome, failures.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One extension: what it asks for, what was granted, how its calls went.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Consent: let the extension see the library (or some folders) and create upload jobs.
    Enable {
        id: String,
        /// Consent without asking (for scripts).
        #[arg(long)]
        yes: bool,
        /// Grant only this folder (relative to the library root, or a path inside it);
        /// repeatable.
        #[arg(long = "folder", value_name = "DIR")]
        folders: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Withdraw consent: stop calling it and cancel its registered and pending jobs.
    Disable {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

fn open(state_dir: &Path, extensions_dir: &Path) -> anyhow::Result<(Host, Arc<Mutex<Store>>)> {
    ferry_daemon::config::prepare_state_dir(state_dir)
        .with_context(|| format!("cannot create the state folder {}", state_dir.display()))?;
    let store = Arc::new(Mutex::new(Store::open(&state_dir.join("ferry.db"))?));
    let config = HostConfig::new(extensions_dir.to_owned(), state_dir.to_owned());
    Ok((Host::new(store.clone(), config)?, store))
}

fn scope_text(scope: &Scope) -> String {
    match scope {
        Scope::Library => "the whole library".to_owned(),
        Scope::Folders { folders } => format!("only these folders: {}", folders.join(", ")),
    }
}

fn status_line(s: &ExtensionStatus) -> String {
    let mut line = format!(
        "{:<24} {:<9} {:<12}",
        s.id,
        if s.enabled { "enabled" } else { "disabled" },
        format!("{:?}", s.state).to_lowercase()
    );
    if let Some(o) = &s.last_outcome {
        line.push_str(&format!(" last: {o}"));
    }
    if s.consecutive_failures > 0 {
        line.push_str(&format!(" ({} failures in a row)", s.consecutive_failures));
    }
    if let Some(name) = &s.name {
        line.push_str(&format!("  {name}"));
    }
    line
}

/// A `--folder` value as a folder relative to the library's roots: a path inside a root
/// (absolute, or relative to the current folder), or the root-relative form itself (a folder
/// that exists under a root, or any well-formed one while no root is known yet).
fn relative_folder(folder: &str, roots: &[PathBuf]) -> Option<String> {
    let as_text = |rel: &Path| -> Option<String> {
        let text = rel.to_str()?.trim_end_matches('/').to_owned();
        manifest::valid_folder(&text).then_some(text)
    };
    let p = Path::new(folder);
    // A path on disk (absolute, or from here) that lies inside a root.
    if let Ok(real) = std::fs::canonicalize(p)
        && let Some(rel) = roots.iter().find_map(|r| real.strip_prefix(r).ok())
    {
        return as_text(rel);
    }
    if p.is_absolute() {
        return None;
    }
    // The root-relative form.
    let text = as_text(p)?;
    (roots.is_empty() || roots.iter().any(|r| r.join(&text).is_dir())).then_some(text)
}

/// Whether a `[config]` key names a credential (its value is never printed).
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "passwd",
        "authorization",
        "api_key",
        "apikey",
        "cookie",
    ]
    .iter()
    .any(|s| k.contains(s))
        && !k.ends_with("_file")
}

/// The manifest as JSON with credential values in its `[config]` replaced by `***`.
fn redacted_manifest(m: &Manifest) -> serde_json::Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    if let Some(config) = v.get_mut("config").and_then(|c| c.as_object_mut()) {
        for (k, val) in config.iter_mut() {
            if secret_key(k) && !val.is_null() {
                *val = serde_json::Value::String("***".into());
            }
        }
    }
    v
}

/// Tells a running daemon that consent changed, so it acts without a restart (no daemon: the
/// next one reads the store anyway).
fn wake_daemon(state_dir: &Path) {
    let socket =
        ferry_daemon::config::runtime_dir(state_dir).join(ferry_daemon::control::SOCKET_NAME);
    let _ = ferry_daemon::control::request(&socket, "POST", "/v1/wake");
}

pub fn run(state_dir: &Path, args: ExtensionsArgs) -> anyhow::Result<ExitCode> {
    let extensions_dir = args
        .extensions_dir
        .unwrap_or_else(ferry_host::default_extensions_dir);
    let (host, store) = open(state_dir, &extensions_dir)?;
    let dirs = host.config().manifest_dirs();
    let find = |id: &str| -> anyhow::Result<Option<Manifest>> { Ok(manifest::find_in(&dirs, id)?) };
    match args.command {
        ExtensionsCommand::List { json } => {
            let (_, broken) = manifest::load_dirs(&dirs);
            for e in &broken {
                eprintln!("ferry: skipped: {e}");
            }
            let status = host.status();
            if json {
                json_line(&status)?;
            } else if status.is_empty() {
                println!("No extensions installed in {}", extensions_dir.display());
            } else {
                for s in &status {
                    println!("{}", status_line(s));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ExtensionsCommand::Show { id, json } => {
            let m = find(&id)?;
            let c = store
                .lock()
                .map_err(|_| anyhow::anyhow!("store unavailable"))?
                .consent(&id)?;
            let status = host.status().into_iter().find(|s| s.id == id);
            if m.is_none() && c.is_none() {
                eprintln!("ferry: no extension {id:?} in {}", extensions_dir.display());
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
            if json {
                json_line(&serde_json::json!({
                    "manifest": m.as_ref().map(redacted_manifest),
                    "consent": c.as_ref().map(|c| serde_json::json!({
                        "scope": consent::scope_of(c),
                        "destination_bases": c.bases,
                        "job_limit": c.job_limit,
                        "enabled_at_ms": c.enabled_at_ms,
                        "disabled_at_ms": c.disabled_at_ms,
                    })),
                    "status": status,
                }))?;
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(m) = &m {
                println!("{} ({})", m.name, m.id);
                println!("  runs:        {} {}", m.exec.display(), m.args.join(" "));
                println!("  asks to see: {}", scope_text(&m.scope));
                let bases: Vec<&str> = m.destination_bases.iter().map(|b| b.as_str()).collect();
                println!("  may send to: {}", bases.join(", "));
                println!("  job limit:   {}", m.job_limit);
                println!("  call budget: {} ms", m.call_budget_ms);
            } else {
                println!("{id} (not installed)");
            }
            match &c {
                Some(c) if c.is_enabled() => {
                    println!(
                        "  enabled at {} ms: sees {}, job limit {}",
                        c.enabled_at_ms,
                        scope_text(&consent::scope_of(c)),
                        c.job_limit
                    );
                }
                Some(c) => println!("  disabled at {} ms", c.disabled_at_ms.unwrap_or_default()),
                None => println!("  never enabled"),
            }
            if let Some(s) = status {
                println!("  status:      {}", status_line(&s).trim());
                if let Some(e) = &s.last_error {
                    println!("  last error:  {e}");
                }
                println!(
                    "  log:         {}",
                    ferry_host::session::log_path(state_dir, &id).display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ExtensionsCommand::Enable {
            id,
            yes,
            folders,
            json,
        } => {
            let Some(m) = find(&id)? else {
                eprintln!("ferry: no extension {id:?} in {}", extensions_dir.display());
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            };
            let mut grant = Grant::requested(&m);
            if !folders.is_empty() {
                let roots = store
                    .lock()
                    .map_err(|_| anyhow::anyhow!("store unavailable"))?
                    .roots()?;
                let mut rel = Vec::new();
                for f in &folders {
                    match relative_folder(f, &roots) {
                        Some(r) => rel.push(r),
                        None => {
                            let listed: Vec<String> =
                                roots.iter().map(|r| r.display().to_string()).collect();
                            eprintln!(
                                "ferry: {f:?} is not a folder of the library; give a folder inside one of its roots (a path, or relative to the root): {}",
                                if listed.is_empty() {
                                    "none yet (run `ferry library scan DIR` or the daemon first)"
                                        .to_owned()
                                } else {
                                    listed.join(", ")
                                }
                            );
                            return Ok(ExitCode::from(EXIT_BAD_INPUT));
                        }
                    }
                }
                grant = grant.with_folders(rel);
            }
            if !json || !yes {
                eprintln!("Enable {} ({})?", m.name, m.id);
                eprintln!("  It will see:  {}", scope_text(&grant.scope));
                eprintln!("                (metadata only; Ferry reads and sends the files)");
                let bases: Vec<&str> = grant.destination_bases.iter().map(|b| b.as_str()).collect();
                eprintln!("  It may send to: {}", bases.join(", "));
                eprintln!("  Job limit:    {}", grant.job_limit);
            }
            if !yes {
                if !std::io::stdin().is_terminal() {
                    eprintln!(
                        "ferry: enabling needs confirmation; run it in a terminal or pass --yes"
                    );
                    return Ok(ExitCode::from(EXIT_BAD_INPUT));
                }
                eprint!("Enable? [y/N] ");
                std::io::stderr().flush()?;
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    eprintln!("Not enabled.");
                    return Ok(ExitCode::from(EXIT_FAILURE));
                }
            }
            let c = {
                let mut s = store
                    .lock()
                    .map_err(|_| anyhow::anyhow!("store unavailable"))?;
                match consent::enable(&mut s, &m, grant, ferry_host::now_ms()) {
                    Ok(c) => c,
                    Err(e @ ferry_host::HostError::Grant { .. }) => {
                        eprintln!("ferry: {e}");
                        return Ok(ExitCode::from(EXIT_BAD_INPUT));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            wake_daemon(state_dir);
            if json {
                json_line(&serde_json::json!({
                    "id": c.id,
                    "enabled": true,
                    "scope": consent::scope_of(&c),
                    "destination_bases": c.bases,
                    "job_limit": c.job_limit,
                    "enabled_at_ms": c.enabled_at_ms,
                }))?;
            } else {
                println!("Enabled {}", c.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        ExtensionsCommand::Disable { id, json } => {
            let report = host.disable(&id)?;
            wake_daemon(state_dir);
            if json {
                json_line(&report)?;
            } else if report.was_enabled {
                println!(
                    "Disabled {id}; cancelled {} job(s)",
                    report.cancelled_jobs.len()
                );
            } else {
                println!("{id} was not enabled");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
