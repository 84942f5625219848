//! `ferry migrate …`: the one-time move of this Ferry to a new device — what would move, the
//! paired send/receive, the same through a file, where a move stands, and undoing one.

use std::io::{IsTerminal, Write as _};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use ferry_daemon::migrate::{self as mv, MoveError, MovePhase, MoveProgress};

use crate::output::{bytes, json_out, out};
use crate::{EXIT_BAD_INPUT, EXIT_FAILURE};

/// Exit code of a move that stopped part-way and continues when run again.
pub const EXIT_RESUMABLE: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// What would move, how big, how long; checks nothing is in the way. Moves nothing.
    Preflight {
        #[arg(long)]
        json: bool,
    },
    /// On the NEW device: wait for the old one; prints an address and a one-time code.
    Receive(ReceiveArgs),
    /// On the OLD device: send this Ferry to the device that printed ADDR and CODE.
    Send {
        /// The address `ferry migrate receive` printed (host:port).
        #[arg(long)]
        to: String,
        /// The one-time code it printed.
        #[arg(long)]
        code: String,
        #[arg(long)]
        json: bool,
    },
    /// On the NEW device, after a cut: wait again for the old one (a new code); what arrived
    /// already is kept and not sent again.
    Resume(ReceiveArgs),
    /// On the OLD device: write the move to a file, for devices that never meet.
    Export {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// On the NEW device: install a move from a file written by `ferry migrate export`.
    Import {
        file: PathBuf,
        /// Library folders that have another path here: OLD=NEW (repeatable).
        #[arg(long = "root", value_name = "OLD=NEW")]
        roots: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Where moves stand on this device: moved away, under way, received, extension imports.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Undo on this device: drop a prepared or half-received move; a device that moved away
    /// uploads again.
    Cancel {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Where to listen (the old device connects here). Default: every interface, a free port.
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    /// Library folders that have another path here: OLD=NEW (repeatable).
    #[arg(long = "root", value_name = "OLD=NEW")]
    roots: Vec<String>,
    #[arg(long)]
    json: bool,
}

pub fn run(
    state_dir: &Path,
    extensions_dir: &Path,
    cmd: MigrateCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        MigrateCommand::Preflight { json } => preflight(state_dir, extensions_dir, json),
        MigrateCommand::Receive(a) => receive(state_dir, a, false),
        MigrateCommand::Resume(a) => receive(state_dir, a, true),
        MigrateCommand::Send { to, code, json } => {
            let ext = extensions_dir.to_owned();
            let sd = state_dir.to_owned();
            // A name is resolved here, so a typo fails before anything is prepared.
            if let Err(e) = to.to_socket_addrs() {
                return Ok(fail(
                    &MoveError::Usage(format!("--to {to}: {e} (expected host:port)")),
                    json,
                ));
            }
            run_with_progress(json, move |p, stop| async move {
                mv::send(&sd, &ext, &to, &code, p, stop)
                    .await
                    .map(Done::Sent)
            })
        }
        MigrateCommand::Export { out: file, json } => {
            let ext = extensions_dir.to_owned();
            let sd = state_dir.to_owned();
            run_with_progress(json, move |p, stop| async move {
                mv::export(&sd, &ext, &file, p, stop).await.map(Done::Sent)
            })
        }
        MigrateCommand::Import { file, roots, json } => {
            let roots = match mv::parse_roots(&roots) {
                Ok(r) => r,
                Err(e) => return Ok(fail(&e, json)),
            };
            let sd = state_dir.to_owned();
            run_with_progress(json, move |p, _stop| async move {
                mv::import(&sd, &file, &roots, p).await.map(Done::Installed)
            })
        }
        MigrateCommand::Status { json } => status(state_dir, json),
        MigrateCommand::Cancel { json } => match mv::cancel(state_dir) {
            Ok(c) => {
                if json {
                    json_out(&serde_json::json!({"event": "cancelled", "cancelled": c}));
                } else {
                    if c.outgoing {
                        out("ferry: the prepared move is dropped; this device uploads again");
                    }
                    if c.moved_mark {
                        out(
                            "ferry: this device uploads again (it had moved to another device: both now back up)",
                        );
                    }
                    if c.incoming {
                        out("ferry: the half-received move is dropped");
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(fail(&e, json)),
        },
    }
}

fn exit_code(e: &MoveError) -> u8 {
    match e {
        _ if e.is_resumable() => EXIT_RESUMABLE,
        MoveError::Usage(_)
        | MoveError::Busy(_)
        | MoveError::BackupRunning(_)
        | MoveError::AlreadyReceived { .. }
        | MoveError::NothingToCancel
        | MoveError::BadPackage(_) => EXIT_BAD_INPUT,
        MoveError::Store(ferry_store::migration::MigrationStoreError::NotFresh { .. })
        | MoveError::Store(ferry_store::migration::MigrationStoreError::UnknownRoot { .. }) => {
            EXIT_BAD_INPUT
        }
        MoveError::Transport(t) if !t.is_resumable() => EXIT_BAD_INPUT,
        _ => EXIT_FAILURE,
    }
}

fn fail(e: &MoveError, json: bool) -> ExitCode {
    let code = exit_code(e);
    if json {
        json_out(&serde_json::json!({
            "event": "error",
            "exit_code": code,
            "resumable": e.is_resumable(),
            "error": e.to_string(),
        }));
    }
    eprintln!("ferry: {e}");
    if e.is_resumable() {
        eprintln!("ferry: what arrived is kept: run the same command again to go on");
    }
    ExitCode::from(code)
}

enum Done {
    Sent(mv::SendSummary),
    Installed(mv::InstallSummary),
}

fn run_with_progress<F, Fut>(json: bool, work: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Arc<MoveProgress>, tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = Result<Done, MoveError>>,
{
    let progress = Arc::new(MoveProgress::default());
    let p = progress.clone();
    let result =
        crate::backup_cmd::with_progress(progress, json, show_progress, |stop| work(p, stop))?;
    Ok(match result {
        Ok(done) => report(&done, json),
        Err(e) => fail(&e, json),
    })
}

fn receive(state_dir: &Path, a: ReceiveArgs, resume: bool) -> anyhow::Result<ExitCode> {
    let roots = match mv::parse_roots(&a.roots) {
        Ok(r) => r,
        Err(e) => return Ok(fail(&e, a.json)),
    };
    if resume && !mv::MovePaths::new(state_dir).has_unfinished_receive() {
        return Ok(fail(
            &MoveError::Usage(
                "no move to resume on this device: start one with `ferry migrate receive`".into(),
            ),
            a.json,
        ));
    }
    let sd = state_dir.to_owned();
    let json = a.json;
    let listen = a.listen;
    run_with_progress(json, move |p, mut stop| async move {
        let waiting = mv::listen(&sd, listen).await?;
        let addr = shown_addr(waiting.addr());
        let code = waiting.code();
        if json {
            json_out(&serde_json::json!({"event": "waiting", "address": addr, "code": code}));
        } else {
            out(&format!("ferry: waiting for the old device at {addr}"));
            out(&format!("ferry: one-time code: {code}"));
            out(&format!(
                "ferry: on the old device run: ferry migrate send --to {addr} --code {code}"
            ));
        }
        tokio::select! {
            r = mv::receive(waiting, &roots, p) => r.map(Done::Installed),
            _ = stop.wait_for(|s| *s) => Err(MoveError::Transport(ferry_migrate::MigrateError::Cancelled)),
        }
    })
}

/// The address to tell the other device: an unspecified bind shown as this machine's address
/// on the default route (no packet is sent to find it).
fn shown_addr(bound: SocketAddr) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, bound.port()).to_string()
}

fn report(done: &Done, json: bool) -> ExitCode {
    match done {
        Done::Sent(s) => {
            if json {
                json_out(&serde_json::json!({"event": "summary", "sent": s}));
            } else {
                out(&format!(
                    "ferry: moved: {} entries, {} ({} on the wire; {} sent now, {} already there) in {:.1} s",
                    s.entries,
                    bytes(s.bytes),
                    bytes(s.wire_bytes),
                    s.sent_entries,
                    s.skipped_entries,
                    s.elapsed_ms as f64 / 1000.0
                ));
                for e in &s.extensions {
                    out(&extension_line(e));
                }
                out(&format!(
                    "ferry: this device no longer uploads (moved to {}); `ferry migrate cancel` undoes that",
                    s.moved.to
                ));
            }
        }
        Done::Installed(s) => {
            if json {
                json_out(&serde_json::json!({"event": "summary", "installed": s}));
            } else {
                let c = &s.counts;
                out(&format!(
                    "ferry: installed the move from {}{}: {} assets, {} resources, {} receipts, {} extension records",
                    s.source_host,
                    if s.already_installed {
                        " (already installed before)"
                    } else {
                        ""
                    },
                    c.assets,
                    c.resources,
                    c.receipts,
                    c.kv_entries
                ));
                out(&format!(
                    "ferry: library files here: {} verified, {} missing, {} changed{}",
                    s.files_verified,
                    s.files_missing,
                    s.files_differ,
                    if s.files_missing + s.files_differ > 0 {
                        " (the next scan indexes what changed; --root OLD=NEW maps a folder that moved)"
                    } else {
                        ""
                    }
                ));
                for e in &s.extensions {
                    out(&extension_line(e));
                }
                if s.builtin_server_stayed {
                    out(
                        "ferry: the old device backed up to its built-in server, whose copies stay there: `ferry backup` here backs up to this device's own",
                    );
                }
                if s.confirmation_lost {
                    out(
                        "ferry: the old device did not hear that the move is installed: run `ferry migrate receive` here and `ferry migrate send` there again, so it stops uploading",
                    );
                }
                out(
                    "ferry: consent does not move: enable extensions again here (`ferry extensions enable ID`); each imports its data before its first run",
                );
            }
        }
    }
    ExitCode::SUCCESS
}

fn extension_line(e: &mv::ExtensionMove) -> String {
    match &e.left_out {
        Some(why) => format!("  extension {}: data left out: {why}", e.id),
        None => format!(
            "  extension {}: {} files, {} (data version {})",
            e.id,
            e.files,
            bytes(e.bytes),
            e.data_version
        ),
    }
}

fn phase_name(p: MovePhase) -> &'static str {
    match p {
        MovePhase::Preparing => "preparing",
        MovePhase::Exporting => "exporting",
        MovePhase::Pairing => "pairing",
        MovePhase::Transferring => "moving",
        MovePhase::Checking => "checking",
        MovePhase::Installing => "installing",
        MovePhase::Done => "done",
    }
}

/// Per phase: done of total (bytes; files while checking), rate and ETA.
fn show_progress(progress: &MoveProgress, done: &AtomicBool, json: bool) {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let tty = !json && std::io::stderr().is_terminal();
    let mut bar: Option<ProgressBar> = None;
    let mut last = (MovePhase::Preparing, String::new());
    let mut phase_start = (Instant::now(), 0u64);
    let mut last_emit = Instant::now() - Duration::from_secs(10);
    loop {
        let finished = done.load(Ordering::Relaxed);
        let (phase, what) = progress.phase();
        let d = progress.done.load(Ordering::Relaxed);
        let t = progress.total.load(Ordering::Relaxed);
        if (phase, &what) != (last.0, &last.1) {
            phase_start = (Instant::now(), d);
            last = (phase, what.clone());
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
        }
        let secs = phase_start.0.elapsed().as_secs_f64();
        let rate = if secs > 0.2 {
            d.saturating_sub(phase_start.1) as f64 / secs
        } else {
            0.0
        };
        let eta = (rate > 0.0 && t > d).then(|| ((t - d) as f64 / rate) as u64);
        let unit_files = phase == MovePhase::Checking;
        if json {
            if last_emit.elapsed() >= Duration::from_millis(500) || finished {
                last_emit = Instant::now();
                if !json_out(&serde_json::json!({
                    "event": "progress",
                    "phase": phase,
                    "what": what,
                    "done": d,
                    "total": t,
                    "unit": if unit_files { "files" } else { "bytes" },
                    "rate_per_s": rate as u64,
                    "eta_s": eta,
                })) {
                    return;
                }
            }
        } else if tty {
            let b = bar.get_or_insert_with(|| {
                let b = ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr());
                let tpl = if unit_files {
                    "{spinner} {prefix:10} [{bar:30}] {pos}/{len} files {per_sec} eta {eta}  {wide_msg}"
                } else {
                    "{spinner} {prefix:10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}  {wide_msg}"
                };
                b.set_style(
                    ProgressStyle::with_template(tpl)
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                b.enable_steady_tick(Duration::from_millis(120));
                b
            });
            b.set_prefix(phase_name(phase));
            b.set_length(t);
            b.set_position(d);
            b.set_message(what.clone());
        } else if last_emit.elapsed() >= Duration::from_secs(2) && !finished {
            last_emit = Instant::now();
            if !matches!(phase, MovePhase::Done | MovePhase::Pairing) && t > 0 {
                let mut e = std::io::stderr().lock();
                let amount = if unit_files {
                    format!("{d}/{t} files")
                } else {
                    format!("{}/{}", bytes(d), bytes(t))
                };
                let _ = writeln!(
                    e,
                    "{} {what} {amount}, {}/s{}",
                    phase_name(phase),
                    if unit_files {
                        format!("{rate:.0}")
                    } else {
                        bytes(rate as u64)
                    },
                    eta.map(|s| format!(", {s} s left")).unwrap_or_default()
                );
            }
        }
        if finished {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn preflight(state_dir: &Path, extensions_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let p = match runtime.block_on(mv::preflight(state_dir, extensions_dir)) {
        Ok(p) => p,
        Err(e) => return Ok(fail(&e, json)),
    };
    if json {
        json_out(&p);
        return Ok(ExitCode::SUCCESS);
    }
    let c = &p.counts;
    out(&format!(
        "would move: {} library folders, {} assets, {} resources, {} change sets, {} finished jobs, {} receipts, {} extension records",
        c.roots, c.assets, c.resources, c.change_sets, c.jobs, c.receipts, c.kv_entries
    ));
    if c.unfinished_jobs > 0 {
        out(&format!(
            "does not move: {} unfinished jobs (their extensions make them again on the new device)",
            c.unfinished_jobs
        ));
    }
    out(
        "does not move: consent (granted again on the new device), tokens and secrets, upload sessions",
    );
    out(&format!("state: {}", bytes(p.state_bytes)));
    for e in &p.extensions {
        match &e.left_out {
            Some(why) => out(&format!("extension {}: cannot export: {why}", e.id)),
            None => out(&format!(
                "extension {}: about {} (data version {}{})",
                e.id,
                bytes(e.size_estimate_bytes),
                e.data_version,
                if e.compressible { ", compressible" } else { "" }
            )),
        };
    }
    for id in &p.kv_only {
        out(&format!(
            "extension {id}: its key-value records move; it exports no files"
        ));
    }
    if p.builtin_server_stays {
        out(
            "does not move: the built-in server's copies (in this state folder): the new device backs up to its own built-in server",
        );
    }
    out(&format!(
        "total: about {}, about {} s on a gigabit network",
        bytes(p.total_bytes_estimate),
        p.estimated_seconds
    ));
    if let Some(free) = p.free_bytes_here {
        out(&format!("free here (for the package): {}", bytes(free)));
    }
    if let Some(b) = &p.blocked {
        out(&format!("note: {b}"));
    }
    Ok(ExitCode::SUCCESS)
}

fn status(state_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let s = match mv::status(state_dir) {
        Ok(s) => s,
        Err(e) => return Ok(fail(&e, json)),
    };
    if json {
        json_out(&s);
        return Ok(ExitCode::SUCCESS);
    }
    let mut said = false;
    if let Some(m) = &s.moved_to {
        out(&format!(
            "moved away: to {} (package {}); this device does not upload",
            m.to,
            &m.package[..12.min(m.package.len())]
        ));
        said = true;
    }
    if let Some(o) = &s.outgoing {
        out(&format!(
            "under way: a prepared move of {} entries, {}; `ferry migrate send` to go on, `ferry migrate cancel` to drop it",
            o.entries,
            bytes(o.bytes)
        ));
        said = true;
    }
    if let Some(m) = &s.migrated_from {
        out(&format!(
            "received: the move from {} (package {})",
            m.source_host,
            &m.package[..12.min(m.package.len())]
        ));
        said = true;
    }
    if let Some(b) = s.incoming_bytes {
        out(&format!(
            "half received: {} verified so far; `ferry migrate resume` to go on",
            bytes(b)
        ));
        said = true;
    }
    for i in &s.imports {
        out(&format!(
            "import of {}'s data: {}{}",
            i.extension,
            i.state,
            i.message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ));
        said = true;
    }
    if !said {
        out("no move on this device");
    }
    Ok(ExitCode::SUCCESS)
}
