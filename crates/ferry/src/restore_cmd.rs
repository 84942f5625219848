//! `ferry restore DIR`: argument handling, the live progress display and the summary; the
//! restore itself is `ferry_daemon::restore`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_core::path_text::display;
use ferry_daemon::backup::Target;
use ferry_daemon::config::FileConfig;
use ferry_daemon::restore::{
    FileEvent, Filter, NextStep, Phase, Progress, RestoreOptions, RestoreSummary, Snapshot,
};

use crate::output::{bytes, json_out, out};
use crate::{EXIT_AUTH, EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INCOMPLETE, EXIT_UNREACHABLE};

/// Downloads at once unless `--concurrency` says otherwise.
const DEFAULT_CONCURRENCY: usize = 8;

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The folder to restore into (created if missing). Files already there are kept: an
    /// identical one is skipped, a different one keeps its name and the restored file goes
    /// beside it ("IMG_0001 (restored).JPG").
    pub dir: PathBuf,
    /// The ferry-server to restore from (default: [server] of the configuration, else the
    /// built-in server in the state folder, as `ferry backup` uses).
    #[arg(long, env = "FERRY_SERVER_URL", value_name = "URL")]
    pub from: Option<String>,
    /// The device token for --from (create one with `ferry-server token create`).
    #[arg(
        long,
        env = "FERRY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Trust the server's certificate through this PEM file, beside the system's roots.
    /// Overrides [server] ca_file.
    #[arg(long, value_name = "PEM", conflicts_with = "server_cert_sha256")]
    pub server_ca: Option<PathBuf>,
    /// Trust exactly the server certificate with this SHA-256 fingerprint. Overrides
    /// [server] cert_sha256.
    #[arg(long, value_name = "FINGERPRINT")]
    pub server_cert_sha256: Option<ferry_tls::Fingerprint>,
    /// Only files the server received on or after DATE (RFC 3339: 2024-06-01, local midnight,
    /// or 2024-06-01T10:00:00Z). This is the backup's time, not the capture time.
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Only files under this folder of the library (relative to the backed-up folder, e.g.
    /// "Vacances 2023" or "2024/June"). Repeat for several.
    #[arg(long, value_name = "PATH")]
    pub folder: Vec<PathBuf>,
    /// Only the files of this asset (its id, as `ferry library ls` shows it). Repeat for several.
    #[arg(long, value_name = "ID")]
    pub asset: Vec<String>,
    /// Downloads at once.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Progress, file events and the summary as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
}

impl RestoreArgs {
    /// The server to restore from, as `ServerArgs::target` decides it for `--to`.
    fn source(&self, config: &FileConfig) -> anyhow::Result<Result<Target, ExitCode>> {
        crate::backup_cmd::server_target(
            self.from.clone(),
            self.token.clone(),
            self.server_ca.as_ref(),
            self.server_cert_sha256,
            config,
        )
    }
}

fn exit_code(step: NextStep) -> u8 {
    match step {
        NextStep::FixInput => EXIT_BAD_INPUT,
        NextStep::FixToken => EXIT_AUTH,
        NextStep::CheckServer => EXIT_UNREACHABLE,
        NextStep::AlreadyRunning => crate::state_cmd::EXIT_ALREADY_RUNNING,
        NextStep::FreeSpace | NextStep::Report => EXIT_FAILURE,
    }
}

pub fn run(state_dir: &Path, config: &FileConfig, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let source = match args.source(config)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let fail = |e: ferry_daemon::restore::RestoreError, json: bool| {
        let code = exit_code(e.next_step());
        if json {
            json_out(
                &serde_json::json!({"event": "error", "exit_code": code, "error": e.to_string()}),
            );
        }
        eprintln!("ferry: {e}");
        ExitCode::from(code)
    };
    let since_ms = match args
        .since
        .as_deref()
        .map(ferry_daemon::restore::parse_since)
    {
        None => None,
        Some(Ok(ms)) => Some(ms),
        Some(Err(e)) => return Ok(fail(e, args.json)),
    };
    let opts = RestoreOptions {
        dir: args.dir.clone(),
        state_dir: state_dir.to_owned(),
        source,
        filter: Filter {
            since_ms,
            folders: args.folder.clone(),
            assets: args.asset.clone(),
        },
        concurrency: args.concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1),
        attempts: 4,
    };
    if !args.json {
        let from = match &opts.source {
            Target::Embedded => "the built-in server".to_owned(),
            Target::Remote { url, .. } => url.clone(),
        };
        eprintln!("ferry: restoring into {} from {from}", display(&args.dir));
    }
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let result = crate::backup_cmd::with_progress(progress, args.json, show_progress, |stop| {
        ferry_daemon::restore::run(opts, p, stop)
    })?;
    match result {
        Ok(summary) => Ok(report(&summary, args.json)),
        Err(e) => Ok(fail(e, args.json)),
    }
}

fn report(s: &RestoreSummary, json: bool) -> ExitCode {
    let code = if s.complete() { 0 } else { EXIT_INCOMPLETE };
    if json {
        json_out(&serde_json::json!({"event": "summary", "exit_code": code, "summary": s}));
        return ExitCode::from(code);
    }
    let mut lines = vec![
        format!(
            "{} {}: {} files, {}",
            if s.complete() {
                "Restored into"
            } else {
                "NOT fully restored into"
            },
            display(&s.dir),
            s.files,
            bytes(s.bytes)
        ),
        format!(
            "  restored {} · already there {} · beside a different file {} · failed {} · {:.1} s",
            s.restored,
            s.skipped_identical,
            s.renamed_for_collision,
            s.failed,
            s.elapsed_ms as f64 / 1000.0
        ),
        format!(
            "  downloaded {} from {} ({} objects), every file verified against its BLAKE3",
            bytes(s.bytes_downloaded),
            s.server_url,
            s.objects
        ),
    ];
    if s.bytes_resumed > 0 {
        lines.push(format!(
            "  resumed {} of downloads an earlier run left unfinished",
            bytes(s.bytes_resumed)
        ));
    }
    if s.refetched > 0 {
        lines.push(format!(
            "  {} downloads were damaged or cut on the way and fetched again",
            s.refetched
        ));
    }
    if s.sanitised > 0 {
        lines.push(format!(
            "  {} files had unsafe paths in their metadata and were put inside the folder",
            s.sanitised
        ));
    }
    for r in s.renamed.iter().take(20) {
        lines.push(format!(
            "  {} restored as {}: {}",
            display(&r.path),
            r.restored_as,
            r.reason
        ));
    }
    if s.renamed.len() > 20 {
        lines.push(format!("  ... and {} more beside", s.renamed.len() - 20));
    }
    for f in s.failures.iter().take(20) {
        lines.push(format!("  failed {}: {}", display(&f.path), f.detail));
    }
    if s.failures.len() > 20 {
        lines.push(format!("  ... and {} more failed", s.failures.len() - 20));
    }
    if s.interrupted {
        lines.push("  interrupted: run the same command again to resume".into());
    } else if !s.complete() {
        lines.push("  run the same command again to retry (it resumes)".into());
    }
    for l in lines {
        if !out(&l) {
            break;
        }
    }
    ExitCode::from(code)
}

fn event_text(e: &FileEvent) -> String {
    match e {
        FileEvent::Renamed(r) => format!(
            "{} restored as {}: {}",
            display(&r.path),
            r.restored_as,
            r.reason
        ),
        FileEvent::Failed(f) => format!("failed {}: {}", display(&f.path), f.detail),
        FileEvent::Sanitised { original, path } => format!(
            "unsafe path {original:?} in the metadata: restored as {}",
            display(path)
        ),
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Starting => "starting",
        Phase::Listing => "listing",
        Phase::Checking => "checking",
        Phase::Downloading => "restoring",
        Phase::Done => "done",
    }
}

fn done_files(s: &Snapshot) -> u64 {
    s.restored + s.skipped_identical + s.renamed_for_collision + s.failed
}

/// One plain progress line (not a terminal): also what the terminal bar's message shows.
fn plain_line(s: &Snapshot, rate_bytes_per_s: f64) -> String {
    match s.phase {
        Phase::Listing => format!("listing: {} objects", s.objects_listed),
        Phase::Checking => format!("checking: {}/{} files", s.files_checked, s.files_total),
        Phase::Downloading => {
            let left = s.bytes_to_download.saturating_sub(s.bytes_restored);
            let eta = if rate_bytes_per_s > 1.0 && left > 0 {
                format!(" · ETA {:.0} s", left as f64 / rate_bytes_per_s)
            } else {
                String::new()
            };
            format!(
                "restoring: {}/{} files, {} / {} · {}/s{eta} · failed {}",
                done_files(s),
                s.files_total,
                bytes(s.bytes_restored),
                bytes(s.bytes_to_download),
                bytes(rate_bytes_per_s as u64),
                s.failed
            )
        }
        p => phase_name(p).to_owned(),
    }
}

fn show_progress(progress: &Progress, done: &AtomicBool, json: bool) {
    let tty = !json && std::io::stderr().is_terminal();
    let bar = tty.then(crate::output::file_bar);
    let mut last_plain = Instant::now() - Duration::from_secs(10);
    let mut last_phase = Phase::Starting;
    let mut start: Option<(Instant, u64)> = None;
    let mut last_json: Option<Snapshot> = None;
    loop {
        let finished = done.load(Ordering::Relaxed);
        for e in progress.take_events() {
            if json {
                if !json_out(&e) {
                    return;
                }
            } else if let Some(bar) = &bar {
                bar.println(event_text(&e));
            } else {
                eprintln!("{}", event_text(&e));
            }
        }
        let s = progress.snapshot();
        if s.phase == Phase::Downloading && start.is_none() {
            start = Some((Instant::now(), s.bytes_downloaded));
        }
        let rate = match start {
            Some((t, b0)) if t.elapsed().as_secs_f64() > 0.2 => {
                s.bytes_downloaded.saturating_sub(b0) as f64 / t.elapsed().as_secs_f64()
            }
            _ => 0.0,
        };
        if json {
            if last_json.as_ref() != Some(&s) {
                if !json_out(&serde_json::json!({"event": "progress", "progress": &s})) {
                    return;
                }
                last_json = Some(s.clone());
            }
        } else if let Some(bar) = &bar {
            bar.set_prefix(phase_name(s.phase));
            bar.set_length(s.files_total);
            match s.phase {
                Phase::Checking => bar.set_position(s.files_checked),
                _ => bar.set_position(done_files(&s)),
            }
            bar.set_message(
                plain_line(&s, rate)
                    .split_once(", ")
                    .map(|x| x.1.to_owned())
                    .unwrap_or_default(),
            );
        } else if s.phase != last_phase
            || last_plain.elapsed() >= Duration::from_secs(2)
            || finished
        {
            if !matches!(s.phase, Phase::Done | Phase::Starting) {
                let mut e = std::io::stderr().lock();
                let _ = writeln!(e, "{}", plain_line(&s, rate));
            }
            last_plain = Instant::now();
        }
        last_phase = s.phase;
        if finished {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(if json { 200 } else { 100 }));
    }
}
