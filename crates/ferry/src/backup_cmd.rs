//! `ferry backup DIR`: argument handling, the live progress display and the summary; the
//! backup itself is `ferry_daemon::backup`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_daemon::backup::{
    BackupError, BackupOptions, BackupSummary, Phase, Progress, Snapshot, Target,
};
use ferry_daemon::config::FileConfig;
use ferry_daemon::server::ServerError;

use crate::output::{bytes, json_out, out};
use crate::{EXIT_AUTH, EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INCOMPLETE, EXIT_UNREACHABLE};

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The folder of photos and videos to back up.
    pub dir: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Keep going: back up new photos as they arrive, until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Upload now whatever the conditions (network, power, time windows).
    #[arg(long)]
    pub now: bool,
    /// Uploads at once.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Progress and the summary as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Where backups go, shared by `ferry backup` and `ferry daemon`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// A ferry-server URL (default: the built-in server on loopback, storing in the state folder).
    #[arg(long, env = "FERRY_SERVER_URL", value_name = "URL")]
    pub to: Option<String>,
    /// The device token for --to (create one with `ferry-server token create`).
    #[arg(
        long,
        env = "FERRY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Trust the server's certificate through this PEM file (its own self-signed certificate,
    /// or the CA that signed it), beside the system's roots. Overrides [server] ca_file.
    #[arg(long, value_name = "PEM", conflicts_with = "server_cert_sha256")]
    pub server_ca: Option<PathBuf>,
    /// Trust exactly the server certificate with this SHA-256 fingerprint (`AA:BB:…` as
    /// ferry-server prints it, or 64 hex digits), whatever signed it. Overrides [server]
    /// cert_sha256.
    #[arg(long, value_name = "FINGERPRINT")]
    pub server_cert_sha256: Option<ferry_tls::Fingerprint>,
}

impl ServerArgs {
    /// The command line over the configuration; `Err(code)` after telling the user what is
    /// missing.
    pub fn target(&self, config: &FileConfig) -> anyhow::Result<Result<Target, ExitCode>> {
        server_target(
            self.to.clone(),
            self.token.clone(),
            self.server_ca.as_ref(),
            self.server_cert_sha256,
            config,
        )
    }
}

/// A server from the command line over the configuration (`--to` for backups, `--from` for
/// restores): the built-in one when neither names a URL; `Err(code)` after telling the user
/// what is missing.
pub(crate) fn server_target(
    url: Option<String>,
    token: Option<String>,
    server_ca: Option<&PathBuf>,
    server_cert_sha256: Option<ferry_tls::Fingerprint>,
    config: &FileConfig,
) -> anyhow::Result<Result<Target, ExitCode>> {
    let Some(url) = url.or_else(|| config.server.url.clone()) else {
        return Ok(Ok(Target::Embedded));
    };
    let token = match token {
        Some(t) => Some(t),
        None => config.token()?,
    };
    let Some(token) = token else {
        eprintln!(
            "ferry: the server {url} needs a token: pass --token, set FERRY_TOKEN or [server] token in the configuration; create one with `ferry-server token create --name NAME --data DIR`"
        );
        return Ok(Err(ExitCode::from(EXIT_BAD_INPUT)));
    };
    // Either flag replaces the configuration's trust settings as a whole.
    let trust = if server_ca.is_some() || server_cert_sha256.is_some() {
        ferry_tls::ServerTrust {
            ca_file: server_ca.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
            cert_sha256: server_cert_sha256,
        }
    } else {
        config.server_trust()
    };
    Ok(Ok(Target::Remote { url, token, trust }))
}

/// Runs `work` on a two-thread runtime while a thread draws `show` (a terminal's progress, or
/// plain or JSON lines); Ctrl-C turns the stop signal it gets.
pub(crate) fn with_progress<P, T, F, Fut>(
    progress: Arc<P>,
    json: bool,
    show: fn(&P, &AtomicBool, bool),
    work: F,
) -> anyhow::Result<T>
where
    P: Send + Sync + 'static,
    F: FnOnce(tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let done = Arc::new(AtomicBool::new(false));
    let display = {
        let progress = progress.clone();
        let done = done.clone();
        std::thread::spawn(move || show(&progress, &done, json))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = stop_tx.send(true);
            }
        });
        work(stop_rx).await
    });
    done.store(true, Ordering::Relaxed);
    let _ = display.join();
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(result)
}

pub fn run(state_dir: &Path, config: &FileConfig, args: BackupArgs) -> anyhow::Result<ExitCode> {
    let target = match args.server.target(config)? {
        Ok(target) => target,
        Err(code) => return Ok(code),
    };
    let observe = !args.now && config.observe_conditions();
    let opts = BackupOptions {
        dirs: vec![args.dir.clone()],
        state_dir: state_dir.to_owned(),
        target,
        policy: observe.then(|| config.policy()),
        observer: config.observer(),
        max_concurrent: args
            .concurrency
            .unwrap_or_else(|| config.max_concurrent())
            .max(1),
        watch: args.watch,
    };
    if !args.json {
        let to = match &opts.target {
            Target::Embedded => "the built-in server".to_owned(),
            Target::Remote { url, .. } => url.clone(),
        };
        // Two lines, each short enough for an 80-column terminal with a usual path.
        eprintln!(
            "ferry: backing up {} to {to}",
            ferry_core::path_text::display(&args.dir)
        );
        eprintln!(
            "       with the bundled ferry-backup extension (running this command is your consent)"
        );
    }
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let result = with_progress(progress, args.json, show_progress, |stop| {
        ferry_daemon::backup::run(opts, p, stop)
    })?;
    match result {
        Ok(summary) => Ok(report(&summary, args.json)),
        Err(e) => {
            let code = match &e {
                BackupError::Folder(_) | BackupError::Moved(_) => EXIT_BAD_INPUT,
                BackupError::Server(ServerError::Unauthorized { .. }) => EXIT_AUTH,
                BackupError::Server(
                    ServerError::Unreachable { .. }
                    | ServerError::BadResponse { .. }
                    | ServerError::Certificate { .. },
                ) => EXIT_UNREACHABLE,
                BackupError::Server(ServerError::BadUrl(..) | ServerError::Trust { .. }) => {
                    EXIT_BAD_INPUT
                }
                _ => EXIT_FAILURE,
            };
            if args.json {
                json_out(
                    &serde_json::json!({"event": "error", "exit_code": code, "error": e.to_string()}),
                );
            }
            eprintln!("ferry: {e}");
            Ok(ExitCode::from(code))
        }
    }
}

fn report(s: &BackupSummary, json: bool) -> ExitCode {
    let code = if s.complete() { 0 } else { EXIT_INCOMPLETE };
    if json {
        json_out(&serde_json::json!({
            "event": "summary",
            "exit_code": code,
            "summary": s,
            "peak_rss_bytes": crate::output::peak_rss_bytes(),
        }));
        return ExitCode::from(code);
    }
    let mut lines = vec![
        format!(
            "{} {}: {} assets, {} files, {}",
            if s.complete() {
                "Backed up"
            } else {
                "NOT fully backed up"
            },
            dirs_text(&s.dirs),
            s.assets,
            s.resources,
            bytes(s.bytes)
        ),
        format!(
            "  sent {} ({}) · already on the server {} · failed {} · {:.1} s",
            s.sent,
            bytes(s.bytes_sent),
            s.already_stored,
            s.failed,
            s.elapsed_ms as f64 / 1000.0
        ),
        format!(
            "  verified {}/{} against the server's BLAKE3 digests",
            s.verified, s.resources
        ),
    ];
    // Where the time went, in the order the phases run.
    let timed: Vec<String> = ["indexing", "checking", "sending", "verifying"]
        .iter()
        .filter_map(|p| {
            s.phase_ms
                .get(*p)
                .map(|ms| format!("{p} {:.1} s", *ms as f64 / 1000.0))
        })
        .collect();
    if !timed.is_empty() {
        lines.push(format!("  time: {}", timed.join(" · ")));
    }
    match &s.embedded_server_dir {
        Some(dir) => lines.push(format!(
            "  server {} (built in, storing in {})",
            s.server_url,
            ferry_core::path_text::display(dir)
        )),
        None => lines.push(format!("  server {}", s.server_url)),
    }
    if s.index_issues > 0 {
        lines.push(format!(
            "  {} files could not be indexed (see `ferry library scan {}`)",
            s.index_issues,
            dirs_text(&s.dirs)
        ));
    }
    for m in s.missing.iter().take(20) {
        lines.push(format!(
            "  missing {}: {}",
            ferry_core::path_text::display(&m.path),
            m.why
        ));
    }
    let missing_total = s.resources.saturating_sub(s.verified) as usize;
    if missing_total > 20 {
        lines.push(format!("  ... and {} more missing", missing_total - 20));
    }
    if !s.complete() {
        lines.push("  run the same command again to retry; `ferry status` shows what waits".into());
    }
    for l in lines {
        if !out(&l) {
            break;
        }
    }
    ExitCode::from(code)
}

fn dirs_text(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| ferry_core::path_text::display(d))
        .collect::<Vec<_>>()
        .join(", ")
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Starting => "starting",
        Phase::Indexing => "indexing",
        Phase::Checking => "checking",
        Phase::Sending => "sending",
        Phase::Verifying => "verifying",
        Phase::Watching => "watching",
        Phase::Done => "done",
    }
}

fn waiting_text(s: &Snapshot) -> String {
    match s.waiting_reason {
        Some(r) => format!(" · waiting: {r} ({})", s.waiting),
        None => String::new(),
    }
}

/// One plain progress line (not a terminal): also what the terminal bar's message shows.
fn plain_line(s: &Snapshot, rate_bytes_per_s: f64) -> String {
    match s.phase {
        Phase::Indexing => format!(
            "indexing: {}/{} files, {} / {}",
            s.index_files_done,
            s.index_files_total,
            bytes(s.index_bytes_done),
            bytes(s.index_bytes_total)
        ),
        Phase::Sending | Phase::Watching => {
            let left = s.bytes_to_send.saturating_sub(s.bytes_sent);
            let eta = if rate_bytes_per_s > 1.0 && left > 0 {
                format!(" · ETA {:.0} s", left as f64 / rate_bytes_per_s)
            } else {
                String::new()
            };
            format!(
                "{}: {}/{} files, {} / {} · {}/s{eta} · failed {}{}",
                phase_name(s.phase),
                s.sent,
                s.to_send,
                bytes(s.bytes_sent),
                bytes(s.bytes_to_send),
                bytes(rate_bytes_per_s as u64),
                s.failed,
                waiting_text(s)
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
    let mut send_start: Option<(Instant, u64)> = None;
    let mut last_json: Option<Snapshot> = None;
    loop {
        let finished = done.load(Ordering::Relaxed);
        let s = progress.snapshot();
        if matches!(s.phase, Phase::Sending | Phase::Watching) && send_start.is_none() {
            send_start = Some((Instant::now(), s.bytes_sent));
        }
        let rate = match send_start {
            Some((t, b0)) => {
                let secs = t.elapsed().as_secs_f64();
                if secs > 0.2 {
                    (s.bytes_sent - b0.min(s.bytes_sent)) as f64 / secs
                } else {
                    0.0
                }
            }
            None => 0.0,
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
            match s.phase {
                Phase::Indexing => {
                    bar.set_length(s.index_files_total);
                    bar.set_position(s.index_files_done);
                    bar.set_message(format!(
                        "{} / {} read",
                        bytes(s.index_bytes_done),
                        bytes(s.index_bytes_total)
                    ));
                }
                _ => {
                    bar.set_length(s.to_send);
                    bar.set_position(s.sent + s.failed);
                    bar.set_message(
                        plain_line(&s, rate)
                            .split_once(", ")
                            .map(|x| x.1.to_owned())
                            .unwrap_or_default(),
                    );
                }
            }
        } else if s.phase != last_phase
            || last_plain.elapsed() >= Duration::from_secs(2)
            || finished
        {
            if s.phase != Phase::Done {
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
        std::thread::sleep(Duration::from_millis(if json { 500 } else { 100 }));
    }
}
