//! The commands that answer questions and manage the service: `status`, `why`, `jobs ls`,
//! `history`, `config path|check`, `service install|uninstall`, `daemon`. Status and why ask
//! the daemon when it runs (it knows the live conditions) and read the state database
//! otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Subcommand;
use ferry_core::job::{Job, JobState};
use ferry_daemon::config::{FileConfig, config_path, runtime_dir};
use ferry_daemon::control::{self, ClientError};
use ferry_daemon::report::{self, Status, Why};
use ferry_store::{JobFilter, JobStore, Store};
use serde_json::Value;

use crate::output::bytes;
use crate::{EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INCOMPLETE};

/// Exit code of `ferry daemon` when another daemon holds the state folder.
pub const EXIT_ALREADY_RUNNING: u8 = 7;

fn out(line: &str) -> bool {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{line}").and_then(|_| o.flush()).is_ok()
}

fn json_out<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let s = serde_json::to_string(v)?;
    out(&s);
    Ok(())
}

fn socket(state_dir: &Path) -> PathBuf {
    runtime_dir(state_dir).join(control::SOCKET_NAME)
}

/// Asks the daemon; `Ok(None)` when none runs.
fn ask_daemon(state_dir: &Path, path: &str) -> anyhow::Result<Option<(u16, Value)>> {
    match control::request(&socket(state_dir), "GET", path) {
        Ok((code, body)) => {
            let v: Value = serde_json::from_str(&body)
                .with_context(|| format!("the daemon's answer to {path} is not JSON"))?;
            Ok(Some((code, v)))
        }
        Err(ClientError::NotRunning(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn open_store(state_dir: &Path) -> anyhow::Result<Store> {
    ferry_daemon::config::prepare_state_dir(state_dir)
        .with_context(|| format!("cannot create the state folder {}", state_dir.display()))?;
    Ok(Store::open(&state_dir.join("ferry.db"))?)
}

pub fn status(state_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let status: Status = match ask_daemon(state_dir, "/v1/status")? {
        Some((200, v)) => serde_json::from_value(v.clone())
            .map(|mut s: Status| {
                s.daemon = v.get("daemon").cloned();
                s
            })
            .context("the daemon's status has an unexpected shape")?,
        Some((code, v)) => anyhow::bail!("the daemon answered {code}: {v}"),
        None => {
            let mut st = report::status(
                &open_store(state_dir)?,
                None,
                ferry_daemon::backup::now_ms(),
            )?;
            st.extension_calls =
                report::extension_calls(state_dir, &ferry_host::default_extensions_dir());
            st
        }
    };
    let code = if status.safe { 0 } else { EXIT_INCOMPLETE };
    let service = crate::linger::ServiceStatus::of(&unit_path());
    if json {
        json_out(&serde_json::json!({"status": status, "exit_code": code, "service": service}))?;
        return Ok(ExitCode::from(code));
    }
    let l = &status.library;
    let mut lines = vec![
        if status.safe {
            "Everything is backed up.".to_owned()
        } else {
            "NOT everything is backed up yet.".to_owned()
        },
        format!(
            "  library: {} assets, {} files, {}",
            l.assets,
            l.resources,
            bytes(l.bytes)
        ),
        format!(
            "  backed up {} · not yet {}",
            status.resources_backed_up, status.resources_not_backed_up
        ),
    ];
    if let Some(why) = &status.upload_blocked {
        lines.insert(1, format!("  NOT UPLOADING: {why}"));
    }
    for e in &status.extensions {
        lines.push(format!(
            "  {}: succeeded {} · pending {} · failed {} · cancelled {}",
            e.extension, e.succeeded, e.pending, e.failed, e.cancelled
        ));
        if !e.waiting.is_empty() {
            let w: Vec<String> = e.waiting.iter().map(|(k, v)| format!("{k} {v}")).collect();
            lines.push(format!("    waiting: {}", w.join(", ")));
        }
    }
    for x in &status.extension_calls {
        if !x.enabled {
            continue;
        }
        let mut line = format!(
            "  extension {}: {}, {} call(s)",
            x.id,
            format!("{:?}", x.state).to_lowercase(),
            x.calls
        );
        if x.consecutive_failures > 0 {
            line.push_str(&format!(
                ", failing ({} in a row{})",
                x.consecutive_failures,
                x.backoff_until_ms
                    .map(|t| {
                        let s = (t - ferry_daemon::backup::now_ms()).max(0) / 1000;
                        format!(", next try in {s} s")
                    })
                    .unwrap_or_default()
            ));
        }
        lines.push(line);
        if x.consecutive_failures > 0
            && let Some(e) = &x.last_error
        {
            lines.push(format!("    last error: {e}"));
        }
    }
    if let Some(d) = &status.decision {
        lines.push(format!("  conditions: {d}"));
    }
    match &status.daemon {
        Some(d) => lines.push(format!(
            "  daemon: running (pid {}), {}",
            d["pid"],
            d["progress"]["phase"].as_str().unwrap_or("?")
        )),
        None => lines.push(
            "  daemon: not running (start it with `ferry daemon` or `ferry service install`)"
                .into(),
        ),
    }
    lines.extend(service.line());
    for l in lines {
        if !out(&l) {
            break;
        }
    }
    Ok(ExitCode::from(code))
}

pub fn why(state_dir: &Path, asset: &str, json: bool) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/why/{}", percent_encode(asset));
    let why: Why = match ask_daemon(state_dir, &path)? {
        Some((200, v)) => serde_json::from_value(v).context("unexpected answer shape")?,
        Some((404, v)) => {
            eprintln!("ferry: {}", v["error"].as_str().unwrap_or("no such asset"));
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
        Some((code, v)) => anyhow::bail!("the daemon answered {code}: {v}"),
        None => match report::why(
            &open_store(state_dir)?,
            asset,
            None,
            ferry_daemon::backup::now_ms(),
        ) {
            Ok(w) => w,
            Err(e @ report::ReportError::NoSuchAsset(_)) => {
                eprintln!("ferry: {e}");
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
            Err(e) => return Err(e.into()),
        },
    };
    let safe = why.resources.iter().all(|r| r.verdict == "backed_up");
    let code = if safe { 0 } else { EXIT_INCOMPLETE };
    if json {
        json_out(&why)?;
        return Ok(ExitCode::from(code));
    }
    out(&format!("asset {}", why.asset_id));
    for r in &why.resources {
        out(&format!(
            "  {} ({}): {} — {}",
            ferry_core::path_text::display(&r.path),
            bytes(r.size_bytes),
            r.verdict,
            r.explanation
        ));
        for e in &r.by_extension {
            out(&format!(
                "      {}: {} — {}",
                e.extension, e.verdict, e.explanation
            ));
        }
    }
    Ok(ExitCode::from(code))
}

/// Enough percent-encoding for an asset id in a path segment.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, oldest first.
    Ls {
        /// registered, pending, succeeded, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        extension: Option<String>,
        /// At most this many (0: the page cap, 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

pub fn jobs(state_dir: &Path, cmd: JobsCommand) -> anyhow::Result<ExitCode> {
    let JobsCommand::Ls {
        state,
        extension,
        limit,
        json,
    } = cmd;
    let state = match state.as_deref().map(|s| (s, JobState::from_name(s))) {
        None => None,
        Some((_, Some(st))) => Some(st),
        Some((name, None)) => {
            eprintln!(
                "ferry: unknown job state {name:?}: use registered, pending, succeeded, failed or cancelled"
            );
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let store = open_store(state_dir)?;
    let list: Vec<Job> = store
        .jobs(&JobFilter {
            state,
            extension,
            limit,
            ..JobFilter::default()
        })?
        .into_iter()
        .map(Job::redacted)
        .collect();
    if json {
        json_out(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    for j in &list {
        if !out(&job_line(j)) {
            break;
        }
    }
    if list.is_empty() {
        out("no jobs");
    }
    Ok(ExitCode::SUCCESS)
}

fn job_line(j: &Job) -> String {
    format!(
        "{}  {:<10} {:<14} {}{}",
        j.id,
        j.state.as_str(),
        j.extension,
        j.resource_id,
        j.error
            .as_ref()
            .map(|e| format!("  ({e})"))
            .unwrap_or_default()
    )
}

pub fn history(state_dir: &Path, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let store = open_store(state_dir)?;
    let receipts = report::history(&store, limit, 0)?;
    if json {
        json_out(&receipts)?;
        return Ok(ExitCode::SUCCESS);
    }
    for r in &receipts {
        let line = format!(
            "{}  {:<10} {:<14} {} → {}{}",
            r.job_id,
            r.state.as_str(),
            r.extension,
            r.resource_id,
            r.destination.url,
            r.error
                .as_ref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_else(|| r
                    .status
                    .map(|s| format!("  (HTTP {s})"))
                    .unwrap_or_default())
        );
        if !out(&line) {
            break;
        }
    }
    if receipts.is_empty() {
        out("no history yet");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print where the configuration file is (it need not exist).
    Path,
    /// Read and check the configuration; print the effective settings.
    Check {
        #[arg(long)]
        json: bool,
    },
}

pub fn config(cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    let path = config_path();
    match cmd {
        ConfigCommand::Path => {
            out(&path.display().to_string());
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Check { json } => match FileConfig::load_checked(&path) {
            Ok(mut cfg) => {
                if cfg.server.token.is_some() {
                    cfg.server.token = Some("(set)".into());
                }
                let exists = path.exists();
                if json {
                    json_out(&serde_json::json!({
                        "path": path, "exists": exists, "ok": true,
                        "config": cfg, "policy": cfg.policy(),
                    }))?;
                } else {
                    out(&format!(
                        "{}: {}",
                        path.display(),
                        if exists {
                            "ok"
                        } else {
                            "not present (defaults apply)"
                        }
                    ));
                    out(&toml::to_string(&cfg).unwrap_or_default());
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                if json {
                    json_out(
                        &serde_json::json!({"path": path, "ok": false, "error": e.to_string()}),
                    )?;
                }
                eprintln!("ferry: {e}");
                Ok(ExitCode::from(EXIT_BAD_INPUT))
            }
        },
    }
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write a systemd user unit running `ferry daemon`.
    Install {
        /// Also `systemctl --user enable --now` it.
        #[arg(long)]
        now: bool,
        /// Turn lingering on without asking (`loginctl enable-linger`): the service keeps
        /// running after you log out. Asked on a terminal when neither flag is given.
        #[arg(long, conflicts_with = "no_linger")]
        linger: bool,
        /// Leave lingering off without asking: uploads stop when you log out.
        #[arg(long)]
        no_linger: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove the unit (after `systemctl --user disable --now ferry`).
    Uninstall {
        #[arg(long)]
        json: bool,
    },
}

fn unit_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("systemd/user/ferry.service")
}

pub fn unit_text(exe: &Path, state_dir: &Path) -> String {
    format!(
        "# Written by `ferry service install`; remove with `ferry service uninstall`.\n\
         [Unit]\n\
         Description=Ferry: back up photos in the background\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart=\"{}\" --state-dir \"{}\" daemon\n\
         Restart=on-failure\n\
         RestartSec=10\n\
         # 2: a usage error or a device whose Ferry moved away: restarting would not help.\n\
         RestartPreventExitStatus=2\n\
         # SIGTERM: the daemon finishes the chunks in flight (at most 20 s), saves where each\n\
         # upload stands and exits; the next start resumes from there.\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=30\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        exe.display(),
        state_dir.display()
    )
}

pub fn service(state_dir: &Path, cmd: ServiceCommand) -> anyhow::Result<ExitCode> {
    let path = unit_path();
    match cmd {
        ServiceCommand::Install {
            now,
            linger,
            no_linger,
            json,
        } => {
            let exe = std::env::current_exe().context("cannot find the ferry binary's path")?;
            let text = unit_text(&exe, state_dir);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            ferry_daemon::server::write_private(&path, text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            let mut started = false;
            if now {
                let ok = |args: &[&str]| {
                    std::process::Command::new("systemctl")
                        .arg("--user")
                        .args(args)
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false)
                };
                started = ok(&["daemon-reload"]) && ok(&["enable", "--now", "ferry.service"]);
                if !started {
                    eprintln!(
                        "ferry: the unit is written but systemctl could not start it; run `systemctl --user daemon-reload && systemctl --user enable --now ferry`"
                    );
                }
            }
            // Without lingering, systemd stops the service at logout.
            let choice = (linger || no_linger).then_some(linger);
            let lingering = crate::linger::on_install(choice)?;
            if json {
                json_out(&serde_json::json!({
                    "unit": path, "started": started, "linger": lingering,
                }))?;
            } else {
                out(&format!("wrote {}", path.display()));
                if !started {
                    out(
                        "start it with: systemctl --user daemon-reload && systemctl --user enable --now ferry",
                    );
                }
                if lingering.on() {
                    out(&format!(
                        "lingering is on for {}: the service keeps running after you log out",
                        lingering.user
                    ));
                }
            }
            Ok(
                if (now && !started) || (linger && lingering.error.is_some()) {
                    ExitCode::from(EXIT_FAILURE)
                } else {
                    ExitCode::SUCCESS
                },
            )
        }
        ServiceCommand::Uninstall { json } => {
            let existed = match std::fs::remove_file(&path) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()));
                }
            };
            if json {
                json_out(&serde_json::json!({"unit": path, "removed": existed}))?;
            } else if existed {
                out(&format!("removed {}", path.display()));
                out(
                    "if it was running: systemctl --user disable --now ferry && systemctl --user daemon-reload",
                );
            } else {
                out(&format!("no unit at {}", path.display()));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// A folder to watch and back up (adds to the configuration's [library] folders).
    #[arg(long = "folder", value_name = "DIR")]
    pub folders: Vec<PathBuf>,
    #[command(flatten)]
    pub server: crate::backup_cmd::ServerArgs,
    /// Ignore the device's conditions (network, power, time windows).
    #[arg(long)]
    pub now: bool,
}

pub fn daemon(state_dir: &Path, config: &FileConfig, args: DaemonArgs) -> anyhow::Result<ExitCode> {
    use ferry_daemon::daemon::{DaemonError, DaemonOptions};
    // No server given: the daemon decides (the built-in one, unless other extensions do the
    // backing up).
    let target = if args.server.to.is_some() || config.server.url.is_some() {
        match args.server.target(config)? {
            Ok(target) => Some(target),
            Err(code) => return Ok(code),
        }
    } else {
        None
    };
    let mut folders = config.library.folders.clone();
    folders.extend(args.folders);
    let opts = DaemonOptions {
        state_dir: state_dir.to_owned(),
        runtime_dir: runtime_dir(state_dir),
        folders,
        extensions_dir: ferry_host::default_extensions_dir(),
        target,
        policy: (!args.now && config.observe_conditions()).then(|| config.policy()),
        observer: config.observer(),
        max_concurrent: config.max_concurrent(),
        dashboard_port: config.dashboard.port.unwrap_or(0),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let (stop_tx, _) = tokio::sync::watch::channel(false);
        let signals = stop_tx.clone();
        tokio::spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            let _ = signals.send(true);
        });
        ferry_daemon::daemon::run(opts, Arc::default(), stop_tx).await
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ DaemonError::AlreadyRunning(_)) => {
            eprintln!("ferry: {e}");
            Ok(ExitCode::from(EXIT_ALREADY_RUNNING))
        }
        Err(e @ DaemonError::NoFolders) => {
            eprintln!("ferry: {e}");
            Ok(ExitCode::from(EXIT_BAD_INPUT))
        }
        // Moved to another device: exit 2, which the service unit does not restart on.
        Err(e @ DaemonError::Backup(ferry_daemon::backup::BackupError::Moved(_))) => {
            eprintln!("ferry: {e}");
            Ok(ExitCode::from(EXIT_BAD_INPUT))
        }
        Err(e) => Err(e.into()),
    }
}
