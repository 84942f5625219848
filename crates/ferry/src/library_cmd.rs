//! `ferry library ...`: scan a folder into the index, list and show assets, read the history.

use crate::output::{bytes, json_line};
use crate::{EXIT_BAD_INPUT, EXIT_FAILURE};
use anyhow::Context;
use clap::Subcommand;
use ferry_library::{ScanError, ScanEvent, ScanOptions, ScanReport};
use ferry_store::Store;
use ferry_store::library::{AssetRecord, ChangesError, ResourceRecord};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum LibraryCommand {
    /// Index DIR: group files into assets, hash them, read their metadata, record changes.
    Scan {
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Print progress events as JSON lines before the report (implies --json).
        #[arg(long)]
        events: bool,
        /// Resources per committed batch (smaller: less work redone after a crash).
        #[arg(long, default_value_t = 2000, hide = true)]
        batch_resources: usize,
    },
    /// Scan DIR, then keep the index in step with it as files arrive, change or go.
    Watch {
        dir: PathBuf,
        /// Print one JSON line per scan.
        #[arg(long)]
        json: bool,
    },
    /// List indexed assets.
    Ls {
        #[arg(long)]
        json: bool,
        /// At most this many assets.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Show one asset with its resources and their metadata.
    Show {
        asset: String,
        #[arg(long)]
        json: bool,
    },
    /// Asset ids inserted, updated and deleted since a change token, oldest first.
    Changes {
        /// A token from an earlier answer; omit to get the current token only.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn open_store(state_dir: &Path) -> anyhow::Result<Store> {
    ferry_daemon::config::prepare_state_dir(state_dir)
        .with_context(|| format!("cannot create the state folder {}", state_dir.display()))?;
    Ok(Store::open(&state_dir.join("ferry.db"))?)
}

pub fn run(state_dir: &Path, cmd: LibraryCommand) -> anyhow::Result<ExitCode> {
    let mut store = open_store(state_dir)?;
    match cmd {
        LibraryCommand::Scan {
            dir,
            json,
            events,
            batch_resources,
        } => {
            let opts = ScanOptions {
                exclude: vec![state_dir.to_owned()],
                batch_max_resources: batch_resources.max(1),
                ..ScanOptions::default()
            };
            scan(&mut store, &opts, &dir, json || events, events)
        }
        LibraryCommand::Watch { dir, json } => watch(&mut store, state_dir, &dir, json),
        LibraryCommand::Ls {
            json,
            limit,
            offset,
        } => ls(&store, json, limit, offset),
        LibraryCommand::Show { asset, json } => show(&store, &asset, json),
        LibraryCommand::Changes { since, json } => changes(&store, since.as_deref(), json),
    }
}

fn scan(
    store: &mut Store,
    opts: &ScanOptions,
    dir: &Path,
    json: bool,
    events: bool,
) -> anyhow::Result<ExitCode> {
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message("listing");
        bar
    });
    let mut on_event = |e: &ScanEvent| {
        if events {
            let _ = json_line(e);
        }
        if let Some(bar) = &bar {
            match e {
                ScanEvent::Walked { media_files, .. } => {
                    bar.set_message(format!("{media_files} media files"))
                }
                ScanEvent::Indexing {
                    files_done,
                    files_to_read,
                    bytes_done,
                    bytes_to_read,
                } => {
                    bar.set_length(*bytes_to_read);
                    bar.set_position(*bytes_done);
                    bar.set_message(format!("reading {files_done}/{files_to_read}"));
                }
                ScanEvent::Committed { .. } => {}
            }
        }
    };
    let result = ferry_library::scan(store, &[dir.to_owned()], opts, &mut on_event);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = match result {
        Ok(r) => r,
        Err(
            e @ (ScanError::RootNotFound(_)
            | ScanError::RootNotADirectory(_)
            | ScanError::RootUnreadable { .. }),
        ) => {
            eprintln!("ferry: {e}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
        Err(e) => return Err(e.into()),
    };
    // The folder is a library root from now on: consent limited to folders is resolved
    // against the roots.
    if let Ok(root) = std::fs::canonicalize(dir) {
        ferry_daemon::run::record_root(store, &root)?;
    }
    if json {
        json_line(&serde_json::json!({
            "event": "report",
            "report": &report,
            "peak_rss_bytes": crate::output::peak_rss_bytes(),
        }))?;
    } else {
        print_report(store, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn watch(store: &mut Store, state_dir: &Path, dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let opts = ferry_library::WatchOptions {
        scan: ScanOptions {
            exclude: vec![state_dir.to_owned()],
            ..ScanOptions::default()
        },
        ..Default::default()
    };
    let mut on_scan = |cause: ferry_library::ScanCause, r: &ScanReport| {
        if json {
            let line = serde_json::json!({"event": "scan", "cause": cause, "report": r});
            if json_line(&line).is_err() {
                return std::ops::ControlFlow::Break(());
            }
        } else {
            println!(
                "{cause:?}: new {} · modified {} · moved {} · deleted {} · unchanged {} ({} ms) → {}",
                r.new_resources,
                r.modified_resources,
                r.moved_resources,
                r.deleted_resources,
                r.unchanged_resources,
                r.elapsed_ms,
                r.change_token
            );
        }
        std::ops::ControlFlow::Continue(())
    };
    if let Ok(root) = std::fs::canonicalize(dir) {
        ferry_daemon::run::record_root(store, &root)?;
    }
    match ferry_library::watch(store, &[dir.to_owned()], &opts, &mut |_| {}, &mut on_scan) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(ferry_library::WatchError::Scan(
            e @ (ScanError::RootNotFound(_)
            | ScanError::RootNotADirectory(_)
            | ScanError::RootUnreadable { .. }),
        )) => {
            eprintln!("ferry: {e}");
            Ok(ExitCode::from(EXIT_BAD_INPUT))
        }
        Err(e) => Err(e.into()),
    }
}

fn print_report(store: &Store, r: &ScanReport) -> anyhow::Result<()> {
    let counts = store.library_counts()?;
    println!(
        "Scanned {}: {} media files in {} folders ({:.1} s, {} read)",
        r.scopes.join(", "),
        r.media_files,
        r.folders,
        r.elapsed_ms as f64 / 1000.0,
        bytes(r.bytes_read)
    );
    println!(
        "  new {} · modified {} · moved {} · unchanged {} · deleted {}",
        r.new_resources,
        r.modified_resources,
        r.moved_resources,
        r.unchanged_resources,
        r.deleted_resources
    );
    println!(
        "  library: {} assets, {} resources, {}",
        counts.assets,
        counts.resources,
        bytes(counts.bytes)
    );
    if !r.counts_by_reason.is_empty() {
        let parts: Vec<String> = r
            .counts_by_reason
            .iter()
            .map(|(k, v)| {
                format!(
                    "{} {v}",
                    serde_json::to_value(k)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )
            })
            .collect();
        println!("  passed over or flagged: {}", parts.join(", "));
    }
    for issue in &r.issues {
        println!(
            "    {}: {} ({})",
            ferry_core::path_text::display(&issue.path),
            serde_json::to_value(issue.reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            issue.detail
        );
    }
    let hidden: u64 = r
        .counts_by_reason
        .iter()
        .filter(|(k, _)| !k.is_expected())
        .map(|(_, v)| v)
        .sum::<u64>()
        .saturating_sub(r.issues.len() as u64);
    if hidden > 0 {
        println!("    ... and {hidden} more (see --json)");
    }
    println!("  change token: {}", r.change_token);
    Ok(())
}

#[derive(Serialize)]
struct AssetView {
    #[serde(flatten)]
    asset: AssetRecord,
    capture_time: Option<String>,
    resources: Vec<ResourceRecord>,
}

fn asset_view(store: &Store, asset: AssetRecord) -> anyhow::Result<AssetView> {
    let resources = store.resources_of_asset(&asset.id)?;
    let primary = resources
        .iter()
        .find(|r| {
            matches!(
                r.resource_type,
                ferry_core::ResourceType::Photo | ferry_core::ResourceType::Video
            )
        })
        .or(resources.first());
    Ok(AssetView {
        capture_time: primary.and_then(|r| r.metadata.capture_time_display()),
        asset,
        resources,
    })
}

fn ls(store: &Store, json: bool, limit: u64, offset: u64) -> anyhow::Result<ExitCode> {
    for asset in store.assets(limit, offset)? {
        let view = asset_view(store, asset)?;
        if json {
            json_line(&view)?;
        } else {
            let kinds: Vec<String> = view
                .resources
                .iter()
                .map(|r| {
                    format!(
                        "{}:{}",
                        r.resource_type,
                        r.path
                            .file_name()
                            .map(ferry_core::path_text::display_os)
                            .unwrap_or_default()
                    )
                })
                .collect();
            println!(
                "{}  {}  {}  {}",
                view.asset.id,
                view.capture_time.as_deref().unwrap_or("-"),
                ferry_core::path_text::display(&view.asset.dir),
                kinds.join(" ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(store: &Store, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let Some(asset) = store.asset(id)? else {
        eprintln!("ferry: no asset {id:?} in the library (list them with `ferry library ls`)");
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    let view = asset_view(store, asset)?;
    if json {
        json_line(&view)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("asset {}", view.asset.id);
    println!(
        "  folder   {}",
        ferry_core::path_text::display(&view.asset.dir)
    );
    println!(
        "  captured {}",
        view.capture_time.as_deref().unwrap_or("unknown")
    );
    for r in &view.resources {
        println!(
            "  {} {}",
            r.resource_type,
            ferry_core::path_text::display(&r.path)
        );
        println!(
            "    {} · {} · blake3 {}",
            r.content_type,
            bytes(r.size),
            ferry_store::library::hex(&r.blake3)
        );
        let m = &r.metadata;
        let mut facts = Vec::new();
        if let Some(t) = m.capture_time_display() {
            facts.push(format!("captured {t}"));
        }
        if let (Some(w), Some(h)) = (m.width, m.height) {
            facts.push(format!("{w}×{h}"));
        }
        if let Some(d) = m.duration_ms {
            facts.push(format!("{:.1} s", d as f64 / 1000.0));
        }
        if let Some(make) = &m.make {
            facts.push(
                format!("{make} {}", m.model.as_deref().unwrap_or(""))
                    .trim()
                    .to_owned(),
            );
        }
        if let Some(g) = m.gps {
            facts.push(format!("GPS {:.5},{:.5}", g.latitude, g.longitude));
        }
        if let Some(c) = &m.content_identifier {
            facts.push(format!("content id {c}"));
        }
        if !facts.is_empty() {
            println!("    {}", facts.join(" · "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn changes(store: &Store, since: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let Some(since) = since else {
        let token = store.current_change_token()?;
        if json {
            json_line(&serde_json::json!({ "current_token": token }))?;
        } else {
            println!("{token}");
        }
        return Ok(ExitCode::SUCCESS);
    };
    match store.changes_since(since) {
        Ok(sets) => {
            if json {
                let current = store.current_change_token()?;
                json_line(&serde_json::json!({ "changes": sets, "current_token": current }))?;
            } else {
                for s in &sets {
                    println!(
                        "{}  inserted {}  updated {}  deleted {}",
                        s.token,
                        s.inserted.len(),
                        s.updated.len(),
                        s.deleted.len()
                    );
                    for (label, ids) in [("+", &s.inserted), ("~", &s.updated), ("-", &s.deleted)] {
                        for id in ids.iter() {
                            println!("  {label} {id}");
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ChangesError::ChangeTokenExpired { oldest_kept }) => {
            if json {
                json_line(
                    &serde_json::json!({"error": "change_token_expired", "oldest_kept": oldest_kept}),
                )?;
            }
            eprintln!(
                "ferry: change_token_expired: that token is older than the kept history; resynchronise from `ferry library ls`"
            );
            Ok(ExitCode::from(3))
        }
        Err(ChangesError::InvalidToken(t)) => {
            eprintln!("ferry: {t:?} is not a change token of this library");
            Ok(ExitCode::from(EXIT_BAD_INPUT))
        }
        Err(ChangesError::Store(e)) => Err(e.into()),
    }
}
