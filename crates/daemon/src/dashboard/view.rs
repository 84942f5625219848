//! What the dashboard shows, computed from the same reports as `ferry status` and `ferry why`
//! (crate::report), and what its forms do, through the same consent code as
//! `ferry extensions enable/disable` (ferry_host::consent). No HTML here: see `html.rs`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use ferry_core::job::JobState;
use ferry_core::policy::{Decision, WaitReason};
use ferry_extension::protocol::Scope;
use ferry_host::{Grant, HostConfig, HostError, consent, manifest};
use ferry_store::{Store, StoreError};

use super::DashboardConfig;
use crate::report::{self, ReportError};

/// At most this many file names are listed per group (the count says how many there are).
const MAX_LISTED: usize = 50;

/// Waiting files that share one reason.
#[derive(Debug, Clone, Default)]
pub struct WaitGroup {
    /// The reason in plain words.
    pub reason: String,
    pub count: u64,
    pub files: Vec<FileRef>,
}

/// A file as shown: its path for people, its asset for the `why` page.
#[derive(Debug, Clone)]
pub struct FileRef {
    pub path: String,
    pub asset_id: Option<String>,
    /// Its resource id and the start of its content hash, for the thumbnail's URL
    /// (`/thumb/ID?v=HASH`: a changed file gets a new URL, so browsers may cache thumbnails).
    pub thumb: Option<(String, String)>,
}

/// One receipt: what became of an upload that was let go of.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub when: String,
    pub file: FileRef,
    pub extension: String,
    /// `succeeded`, `failed` or `cancelled`, with the error if any.
    pub outcome: String,
}

/// A file whose upload failed (and was not delivered since).
#[derive(Debug, Clone)]
pub struct Failed {
    pub file: FileRef,
    pub extension: String,
    pub error: String,
}

/// One extension's card.
#[derive(Debug, Clone)]
pub struct Card {
    pub id: String,
    pub name: String,
    pub installed: bool,
    pub enabled: bool,
    /// What its manifest asks to see.
    pub asks: Option<String>,
    /// What the person granted, while enabled.
    pub granted: Option<String>,
    /// Folders granted, one a line (pre-fills the limit form).
    pub granted_folders: Vec<String>,
    /// Where its uploads may go and how many jobs it may hold: what the consent gave while it
    /// is enabled, else what a grant would give (its manifest), as `ferry extensions enable`
    /// shows before asking. Empty / `None` when neither is known.
    pub destinations: Vec<String>,
    pub job_limit: Option<u32>,
    pub state: String,
    pub last_error: Option<String>,
}

/// Everything on the page.
#[derive(Debug, Clone)]
pub struct View {
    /// The one sentence: are my photos safe?
    pub verdict: String,
    /// `ok`, `waiting` or `failed` (a word beside the sentence, never colour alone).
    pub tone: &'static str,
    pub progress_line: String,
    pub library: report::LibraryTotals,
    pub conditions: Option<String>,
    /// What is observed, one (name, value) a line as `ferry conditions` shows it.
    pub observed: Vec<(String, String)>,
    pub waiting: Vec<WaitGroup>,
    pub failed: Vec<Failed>,
    pub extensions: Vec<Card>,
    /// The newest receipts first.
    pub history: Vec<HistoryRow>,
    /// Bytes delivered per hour over the last day, oldest first.
    pub hourly: [u64; 24],
}

/// A waiting reason's code (as in `ferry status`) in plain words.
pub fn reason_words(code: &str) -> String {
    match code {
        "retry_backoff" => "waiting to try again after a failed attempt".to_owned(),
        "in_flight" => "being uploaded now".to_owned(),
        "queued" => "queued to upload next".to_owned(),
        "outside_scope" => {
            "outside consent scope: not in the folders any extension may see".to_owned()
        }
        "no_job" => "not sent yet: no extension has made an upload for it".to_owned(),
        _ => serde_json::from_value::<WaitReason>(serde_json::Value::String(code.to_owned()))
            .map(|r| r.to_string())
            .unwrap_or_else(|_| code.replace('_', " ")),
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// A count as people read large ones: 4,213.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The verdict sentence and its tone.
pub fn verdict(
    status: &report::Status,
    waiting: &[WaitGroup],
    failed: usize,
    decision: Option<&Decision>,
) -> (String, &'static str) {
    let n_waiting: u64 = waiting.iter().map(|g| g.count).sum();
    if let Some(why) = &status.upload_blocked {
        return (format!("Not uploading — {why}"), "waiting");
    }
    if failed > 0 {
        let mut s = format!("{} failed", thousands(failed as u64));
        if n_waiting > 0 {
            s.push_str(&format!(" · {} waiting", thousands(n_waiting)));
        }
        return (s, "failed");
    }
    // Conditions hold everything back: extensions are not called either, so files may wait
    // with no job made for them yet.
    if let Some(Decision::Wait(r)) = decision
        && (n_waiting > 0 || status.resources_not_backed_up > 0)
    {
        let n = if n_waiting > 0 {
            n_waiting
        } else {
            status.resources_not_backed_up
        };
        return (format!("{} waiting — {r}", thousands(n)), "waiting");
    }
    if n_waiting > 0 {
        let reason = match decision {
            Some(Decision::Wait(r)) => Some(r.to_string()),
            _ => waiting
                .iter()
                .filter(|g| g.reason == reason_words("retry_backoff"))
                .max_by_key(|g| g.count)
                .map(|g| g.reason.clone())
                // Nothing is on its way, only files no consent covers: say why.
                .or_else(|| {
                    waiting
                        .iter()
                        .all(|g| g.reason == reason_words("outside_scope"))
                        .then(|| reason_words("outside_scope"))
                }),
        };
        // Nothing is on its way, and no extension made an upload for some: say so.
        let idle = [reason_words("outside_scope"), reason_words("no_job")];
        if reason.is_none() && waiting.iter().all(|g| idle.contains(&g.reason)) {
            return (
                format!(
                    "{} not backed up yet — no extension has made an upload for them",
                    plural(n_waiting, "file", "files")
                ),
                "waiting",
            );
        }
        return match reason {
            Some(r) => (format!("{} waiting — {r}", thousands(n_waiting)), "waiting"),
            None => (
                format!("Backing up — {} to go", thousands(n_waiting)),
                "waiting",
            ),
        };
    }
    if status.library.resources == 0 {
        return ("No photos in the library yet".to_owned(), "waiting");
    }
    if status.safe {
        let n = status.library.assets;
        return (
            if n == 1 {
                "The 1 photo is backed up".to_owned()
            } else {
                format!("All {} photos are backed up", thousands(n))
            },
            "ok",
        );
    }
    (
        format!(
            "{} not backed up yet — no extension has made an upload for them",
            plural(status.resources_not_backed_up, "file", "files")
        ),
        "waiting",
    )
}

fn scope_text(scope: &Scope) -> String {
    match scope {
        Scope::Library => "the whole library".to_owned(),
        Scope::Folders { folders } => format!("only these folders: {}", folders.join(", ")),
    }
}

fn display_path(store: &Store, resource_id: &str) -> FileRef {
    match store.resource(resource_id) {
        Ok(Some(r)) => FileRef {
            path: ferry_core::path_text::display(&r.path),
            asset_id: Some(r.asset_id),
            thumb: Some((r.id, ferry_store::library::hex(&r.blake3[..8]))),
        },
        _ => FileRef {
            path: format!("(resource {resource_id}, no longer in the index)"),
            asset_id: None,
            thumb: None,
        },
    }
}

/// Milliseconds since the epoch as people read them (UTC: the daemon may not know the zone).
pub fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| format!("{ms} ms"))
}

const HOUR_MS: i64 = 3_600_000;
/// Receipts read at most for the sparkline (newest first): a bound on the page's cost.
const THROUGHPUT_RECEIPTS: usize = 10_000;

/// Bytes delivered per hour over the last 24 hours, oldest hour first, from (finished at, bytes)
/// pairs; older or future points are left out.
pub fn hourly(points: &[(i64, u64)], now_ms: i64) -> [u64; 24] {
    let mut out = [0u64; 24];
    let start = now_ms - 24 * HOUR_MS;
    for &(t, bytes) in points {
        if t < start || t > now_ms {
            continue;
        }
        let i = usize::try_from((t - start) / HOUR_MS).unwrap_or(0).min(23);
        out[i] += bytes;
    }
    out
}

/// Uploads that finished but that their extension has not acknowledged yet, as the receipts
/// they will become (let go of when they finished). Receipts exist only after the
/// acknowledgement, so without these the history and the sparkline would lag behind the
/// progress line and the backed-up count, which count a delivery at once.
pub fn unacknowledged(jobs: &[ferry_core::job::Job]) -> Vec<ferry_core::job::Receipt> {
    let mut out: Vec<_> = jobs
        .iter()
        .filter(|j| {
            !j.acknowledged
                && matches!(
                    j.state,
                    JobState::Succeeded | JobState::Failed | JobState::Cancelled
                )
        })
        .map(|j| ferry_core::job::Receipt::of(j, j.finished_ms.unwrap_or(j.updated_ms)).redacted())
        .collect();
    out.sort_by_key(|r| std::cmp::Reverse(finished_at(r)));
    out
}

/// When a receipt's upload finished (when it was let go of, for one that never ran).
fn finished_at(r: &ferry_core::job::Receipt) -> i64 {
    r.finished_ms.unwrap_or(r.acknowledged_ms)
}

/// The `limit` newest of two lists, each newest first, by when they finished.
pub fn newest_first(
    a: Vec<ferry_core::job::Receipt>,
    b: Vec<ferry_core::job::Receipt>,
    limit: usize,
) -> Vec<ferry_core::job::Receipt> {
    let mut all: Vec<_> = a.into_iter().chain(b).collect();
    all.sort_by_key(|r| std::cmp::Reverse(finished_at(r)));
    // A job acknowledged between the two reads is in both: once.
    let mut seen = HashSet::new();
    all.retain(|r| seen.insert(r.job_id));
    all.truncate(limit);
    all
}

/// What the last day delivered: the succeeded receipts and the succeeded uploads not yet
/// acknowledged (`pending`), with each resource's size from the index (0 for one no longer
/// there).
fn throughput(
    store: &Store,
    pending: &[ferry_core::job::Receipt],
    now_ms: i64,
) -> Result<[u64; 24], ReportError> {
    let since = now_ms - 24 * HOUR_MS;
    let mut points = Vec::new();
    // A job acknowledged between the two reads is in both: counted once.
    let mut counted = HashSet::new();
    for r in pending {
        if r.state == JobState::Succeeded && finished_at(r) >= since {
            let size = store.resource(&r.resource_id)?.map_or(0, |x| x.size);
            points.push((finished_at(r), size));
            counted.insert(r.job_id);
        }
    }
    let mut offset = 0;
    'pages: while offset < THROUGHPUT_RECEIPTS {
        let page = report::history(store, 500, offset)?;
        if page.is_empty() {
            break;
        }
        offset += page.len();
        for r in page {
            // Newest first by when they were let go of, which is after they finished.
            if r.acknowledged_ms < since {
                break 'pages;
            }
            if r.state != JobState::Succeeded || counted.contains(&r.job_id) {
                continue;
            }
            let size = store.resource(&r.resource_id)?.map_or(0, |x| x.size);
            points.push((finished_at(&r), size));
        }
    }
    Ok(hourly(&points, now_ms))
}

/// The upload rate over the last minute, from the bytes sent as seen at each look (the
/// tally counts a file's bytes when it is delivered, so a shorter window would jump).
#[derive(Debug, Default)]
pub struct RateMeter {
    samples: std::collections::VecDeque<(std::time::Instant, u64)>,
}

impl RateMeter {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

    /// Notes `bytes_sent` at `now`; the rate in bytes per second once a second or more is seen.
    pub fn note(&mut self, now: std::time::Instant, bytes_sent: u64) -> Option<f64> {
        if self.samples.back().is_some_and(|&(_, b)| b > bytes_sent) {
            self.samples.clear(); // a new run started counting again
        }
        self.samples.push_back((now, bytes_sent));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|&(t, _)| now.duration_since(t) > Self::WINDOW)
        {
            self.samples.pop_front();
        }
        let (t0, b0) = *self.samples.front()?;
        let span = now.duration_since(t0).as_secs_f64();
        (span >= 1.0).then(|| (bytes_sent - b0) as f64 / span)
    }
}

/// This session's progress: files and bytes, the rate and the time left when known.
pub fn progress_text(snap: &crate::backup::Snapshot, rate: Option<f64>) -> String {
    let mut s = format!(
        "This session: {} of {} files sent ({} of {}), {} uploading now",
        snap.sent,
        snap.to_send,
        super::html::bytes_text(snap.bytes_sent),
        super::html::bytes_text(snap.bytes_to_send),
        snap.in_flight
    );
    let left = snap.bytes_to_send.saturating_sub(snap.bytes_sent);
    if let Some(r) = rate.filter(|r| *r > 0.0)
        && left > 0
    {
        let secs = (left as f64 / r).ceil() as u64;
        s.push_str(&format!(
            " · {}/s · about {} left",
            super::html::bytes_text(r as u64),
            if secs < 90 {
                format!("{secs} s")
            } else if secs < 90 * 60 {
                format!("{} min", secs.div_ceil(60))
            } else {
                format!("{} h", secs.div_ceil(3600))
            }
        ));
    }
    s
}

/// How many receipts the page lists.
const HISTORY_ROWS: usize = 20;

impl View {
    pub fn load(
        cfg: &DashboardConfig,
        rate: &std::sync::Mutex<RateMeter>,
    ) -> Result<View, ReportError> {
        let store = Store::open(&cfg.state_dir.join("ferry.db"))?;
        let decision = cfg.progress.decision();
        let now = crate::backup::now_ms();
        let status = report::status(&store, decision, now)?;
        let jobs = report::all_jobs(&store)?;
        let backoff = report::backoff_until(&store)?;
        let delivered: HashSet<[u8; 32]> = jobs
            .iter()
            .filter(|j| j.state == JobState::Succeeded)
            .map(|j| j.content_hash.0)
            .collect();
        let mut groups: BTreeMap<String, WaitGroup> = BTreeMap::new();
        let mut failed = Vec::new();
        for j in &jobs {
            match j.state {
                JobState::Registered | JobState::Pending => {
                    let reason = match decision {
                        Some(Decision::Wait(r)) => r.to_string(),
                        _ => reason_words(&report::waiting_reason(
                            j,
                            decision.as_ref(),
                            &backoff,
                            now,
                        )),
                    };
                    let g = groups.entry(reason.clone()).or_insert(WaitGroup {
                        reason,
                        count: 0,
                        files: Vec::new(),
                    });
                    g.count += 1;
                    if g.files.len() < MAX_LISTED {
                        g.files.push(display_path(&store, &j.resource_id));
                    }
                }
                JobState::Failed
                    if !delivered.contains(&j.content_hash.0) && failed.len() < MAX_LISTED =>
                {
                    failed.push(Failed {
                        file: display_path(&store, &j.resource_id),
                        extension: j.extension.clone(),
                        error: format!(
                            "{}{}",
                            j.error.as_ref().map(|e| e.as_str()).unwrap_or("unknown"),
                            j.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
                        ),
                    });
                }
                _ => {}
            }
        }
        let n_failed = jobs
            .iter()
            .filter(|j| j.state == JobState::Failed && !delivered.contains(&j.content_hash.0))
            .count();
        let (no_job, outside_bytes) = if status.resources_not_backed_up > 0 {
            without_job(&store, &jobs, decision.as_ref())?
        } else {
            Default::default()
        };
        let outside_count = no_job
            .iter()
            .filter(|g| g.reason == reason_words("outside_scope"))
            .map(|g| g.count)
            .sum::<u64>();
        for g in no_job {
            // Under the conditions' reason, beside the jobs that wait for it too.
            let e = groups.entry(g.reason.clone()).or_insert(WaitGroup {
                reason: g.reason,
                ..WaitGroup::default()
            });
            e.count += g.count;
            for f in g.files {
                if e.files.len() < MAX_LISTED {
                    e.files.push(f);
                }
            }
        }
        let waiting: Vec<WaitGroup> = groups.into_values().collect();
        let (verdict, tone) = verdict(&status, &waiting, n_failed, decision.as_ref());
        let mut snap = cfg.progress.snapshot();
        // The run's plan counts every file of the library the server lacks, consent aside;
        // files no consent covers will not be sent, so "N of M sent" and the time left leave
        // them out, as the lists put them under their own reason.
        if outside_count > 0 {
            snap.to_send = snap.to_send.saturating_sub(outside_count).max(snap.sent);
            snap.bytes_to_send = snap
                .bytes_to_send
                .saturating_sub(outside_bytes)
                .max(snap.bytes_sent);
        }
        let progress_line = if snap.to_send > 0 {
            let rate = rate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .note(std::time::Instant::now(), snap.bytes_sent);
            progress_text(&snap, rate)
        } else {
            format!(
                "{} of {} files backed up",
                status.resources_backed_up, status.library.resources
            )
        };
        let pending = unacknowledged(&jobs);
        let hourly = throughput(&store, &pending, now)?;
        let history = newest_first(
            report::history(&store, HISTORY_ROWS, 0)?,
            pending,
            HISTORY_ROWS,
        );
        Ok(View {
            verdict,
            tone,
            progress_line,
            library: status.library,
            conditions: decision.map(|d| match d {
                Decision::Wait(r) => format!("uploads wait: {r}"),
                allow => allow.to_string(),
            }),
            observed: cfg
                .progress
                .conditions()
                .map(|c| {
                    c.to_string()
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            waiting,
            failed,
            extensions: cards(cfg, &store),
            hourly,
            history: history
                .into_iter()
                .map(|r| HistoryRow {
                    when: when(finished_at(&r)),
                    file: display_path(&store, &r.resource_id),
                    extension: r.extension,
                    outcome: match &r.error {
                        Some(e) => format!("{} ({})", r.state.as_str(), e.as_str()),
                        None => r.state.as_str().to_owned(),
                    },
                })
                .collect(),
        })
    }
}

/// Resources page by page while looking for files no job stands for.
const SCOPE_PAGE: usize = 10_000;

/// Files not backed up that no job stands for (none open, none failed), grouped by why: while
/// the conditions hold uploads back, their reason (extensions are not called then, so no job
/// is made); files that no enabled extension may see, because every consent is limited to
/// other folders, "outside consent scope"; else "no upload made yet". Without these the
/// verdict could say "40 waiting" above a list of none. Also the bytes outside the scopes.
fn without_job(
    store: &Store,
    jobs: &[ferry_core::job::Job],
    decision: Option<&Decision>,
) -> Result<(Vec<WaitGroup>, u64), ReportError> {
    let group = |code: &str| WaitGroup {
        reason: reason_words(code),
        ..WaitGroup::default()
    };
    let mut outside = group("outside_scope");
    let mut held = WaitGroup {
        reason: match decision {
            Some(Decision::Wait(r)) => r.to_string(),
            _ => reason_words("no_job"),
        },
        ..WaitGroup::default()
    };
    let mut outside_bytes = 0;
    let roots = store.roots()?;
    let scopes: Vec<ferry_host::serve::ScopeFilter> = store
        .consents()?
        .iter()
        .filter(|c| c.is_enabled())
        .map(|c| ferry_host::serve::ScopeFilter::new(&consent::scope_of(c), &roots))
        .collect();
    // Only while every enabled consent is limited to folders can a file be outside them all.
    let limited = !scopes.is_empty() && scopes.iter().all(|s| !s.is_library());
    // A file whose content has a job that is not over, that failed (listed as failed) or that
    // was delivered is counted elsewhere.
    let handled: HashSet<[u8; 32]> = jobs
        .iter()
        .filter(|j| j.state != JobState::Cancelled)
        .map(|j| j.content_hash.0)
        .collect();
    let mut after: Option<PathBuf> = None;
    loop {
        let page = store.resource_stats_under_page(Path::new("/"), after.as_deref(), SCOPE_PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.path.clone());
        for r in &page {
            if handled.contains(&r.blake3)
                || store.delivered_with_receipt(&ferry_core::ContentHash(r.blake3))?
            {
                continue;
            }
            let dir = r.path.parent().unwrap_or(Path::new("/"));
            let g = if limited && !scopes.iter().any(|s| s.contains(dir)) {
                outside_bytes += r.size;
                &mut outside
            } else {
                &mut held
            };
            g.count += 1;
            if g.files.len() < MAX_LISTED {
                g.files.push(display_path(store, &r.id));
            }
        }
    }
    Ok((
        [outside, held]
            .into_iter()
            .filter(|g| g.count > 0)
            .collect(),
        outside_bytes,
    ))
}

fn cards(cfg: &DashboardConfig, store: &Store) -> Vec<Card> {
    let host = HostConfig::new(cfg.extensions_dir.clone(), cfg.state_dir.clone());
    let (manifests, _) = manifest::load_dirs(&host.manifest_dirs());
    let consents = store.consents().unwrap_or_default();
    report::extension_calls(&cfg.state_dir, &cfg.extensions_dir)
        .into_iter()
        .map(|s| {
            let m = manifests.iter().find(|m| m.id == s.id);
            let c = consents.iter().find(|c| c.id == s.id && c.is_enabled());
            Card {
                name: s
                    .name
                    .clone()
                    .or_else(|| m.map(|m| m.name.clone()))
                    .unwrap_or_else(|| s.id.clone()),
                installed: s.installed,
                enabled: s.enabled,
                asks: m.map(|m| scope_text(&m.scope)),
                granted: c.map(|c| scope_text(&consent::scope_of(c))),
                granted_folders: c.and_then(|c| c.folders.clone()).unwrap_or_default(),
                destinations: match (c, m) {
                    (Some(c), _) => c.bases.iter().map(|b| b.as_str().to_owned()).collect(),
                    (None, Some(m)) => m
                        .destination_bases
                        .iter()
                        .map(|b| b.as_str().to_owned())
                        .collect(),
                    (None, None) => Vec::new(),
                },
                job_limit: c.map(|c| c.job_limit).or(m.map(|m| m.job_limit)),
                state: format!("{:?}", s.state).to_lowercase(),
                last_error: s.last_error.clone(),
                id: s.id,
            }
        })
        .collect()
}

/// What a dashboard form asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Everything the manifest asks for (`ferry extensions enable ID`).
    Grant,
    /// Only these folders, granted while it is not enabled (`ferry extensions enable ID
    /// --folder DIR...`).
    GrantFolders(Vec<String>),
    /// Only these folders, while it is enabled: narrows (or widens back) a consent already
    /// given, and never gives one (a disabled card offers Grant instead).
    Limit(Vec<String>),
    /// `ferry extensions disable ID`.
    Revoke,
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no extension {0:?} is installed")]
    NotInstalled(String),
    #[error("give at least one folder to limit it to")]
    NoFolders,
    #[error(
        "{0:?} is not enabled, so there is no consent to limit; grant it (optionally to some folders only) instead"
    )]
    NotEnabled(String),
    #[error(
        "{0:?} is not a folder of the library; give a folder inside one of its roots (a path, or relative to the root)"
    )]
    NotAFolder(String),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A folder as the consent records it: relative to a library root. Accepts a path inside a
/// root, or the root-relative form of a folder that exists (any well-formed one while no root
/// is known yet), as `ferry extensions enable --folder` does.
pub fn relative_folder(folder: &str, roots: &[PathBuf]) -> Option<String> {
    let as_text = |rel: &Path| -> Option<String> {
        let text = rel.to_str()?.trim_end_matches('/').to_owned();
        manifest::valid_folder(&text).then_some(text)
    };
    let p = Path::new(folder);
    if p.is_absolute() {
        let real = std::fs::canonicalize(p).ok()?;
        return roots
            .iter()
            .find_map(|r| real.strip_prefix(r).ok())
            .and_then(as_text);
    }
    let text = as_text(p)?;
    (roots.is_empty() || roots.iter().any(|r| r.join(&text).is_dir())).then_some(text)
}

/// Records the consent change, durably, as the CLI does; the caller wakes the host.
pub fn act(cfg: &DashboardConfig, id: &str, action: Action) -> Result<(), ActionError> {
    let mut store = Store::open(&cfg.state_dir.join("ferry.db"))?;
    let now = ferry_host::now_ms();
    let limiting = matches!(action, Action::Limit(_));
    let find = || -> Result<_, ActionError> {
        let host = HostConfig::new(cfg.extensions_dir.clone(), cfg.state_dir.clone());
        manifest::find_in(&host.manifest_dirs(), id)
            .map_err(HostError::from)?
            .ok_or_else(|| ActionError::NotInstalled(id.to_owned()))
    };
    match action {
        Action::Grant => {
            let m = find()?;
            consent::enable(&mut store, &m, Grant::requested(&m), now)?;
        }
        Action::Limit(folders) | Action::GrantFolders(folders) => {
            if limiting && !store.consent(id)?.is_some_and(|c| c.is_enabled()) {
                return Err(ActionError::NotEnabled(id.to_owned()));
            }
            let m = find()?;
            if folders.is_empty() {
                return Err(ActionError::NoFolders);
            }
            let roots = store.roots()?;
            let rel = folders
                .iter()
                .map(|f| {
                    relative_folder(f, &roots).ok_or_else(|| ActionError::NotAFolder(f.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            consent::enable(&mut store, &m, Grant::requested(&m).with_folders(rel), now)?;
        }
        Action::Revoke => {
            consent::disable(&mut store, id, now)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(assets: u64, resources: u64, backed_up: u64, safe: bool) -> report::Status {
        report::Status {
            library: report::LibraryTotals {
                assets,
                resources,
                bytes: 0,
            },
            resources_backed_up: backed_up,
            resources_not_backed_up: resources - backed_up,
            safe,
            extensions: Vec::new(),
            decision: None,
            daemon: None,
            extension_calls: Vec::new(),
            upload_blocked: None,
        }
    }

    fn group(code: &str, count: u64) -> WaitGroup {
        WaitGroup {
            reason: reason_words(code),
            count,
            files: Vec::new(),
        }
    }

    #[test]
    fn the_verdict_says_safe_waiting_with_its_reason_or_failed() {
        assert_eq!(
            verdict(&status(4213, 5000, 5000, true), &[], 0, None).0,
            "All 4,213 photos are backed up"
        );
        let on_battery = Decision::Wait(WaitReason::OnBattery);
        let (s, tone) = verdict(
            &status(40, 40, 3, false),
            &[group("on_battery", 37)],
            0,
            Some(&on_battery),
        );
        assert_eq!(
            s,
            format!("37 waiting — {}", WaitReason::OnBattery),
            "the reason in words"
        );
        assert_eq!(tone, "waiting");
        assert_eq!(
            verdict(&status(40, 40, 3, false), &[], 0, Some(&on_battery)).0,
            format!("37 waiting — {}", WaitReason::OnBattery),
            "no job made yet: the files not backed up wait"
        );
        let (s, tone) = verdict(&status(9, 9, 6, false), &[group("queued", 1)], 3, None);
        assert_eq!(s, "3 failed · 1 waiting");
        assert_eq!(tone, "failed");
        assert_eq!(
            verdict(&status(9, 9, 6, false), &[group("in_flight", 3)], 0, None).0,
            "Backing up — 3 to go"
        );
        assert_eq!(
            verdict(
                &status(9, 9, 8, false),
                &[group("outside_scope", 1)],
                0,
                None
            )
            .0,
            "1 waiting — outside consent scope: not in the folders any extension may see",
            "a file no consent covers, and nothing else on its way"
        );
        assert_eq!(
            verdict(
                &status(9, 9, 6, false),
                &[group("outside_scope", 1), group("no_job", 2)],
                0,
                None
            )
            .0,
            "3 files not backed up yet — no extension has made an upload for them",
            "no job for them, nothing on its way"
        );
        assert_eq!(
            verdict(
                &status(9, 9, 6, false),
                &[group("outside_scope", 1), group("queued", 2)],
                0,
                None
            )
            .0,
            "Backing up — 3 to go"
        );
        assert_eq!(
            verdict(&status(0, 0, 0, true), &[], 0, None).0,
            "No photos in the library yet"
        );
    }

    #[test]
    fn deliveries_fall_in_their_hour_of_the_last_day() {
        let now = 100 * HOUR_MS;
        let h = hourly(
            &[
                (now, 5),
                (now - 1, 1),
                (now - HOUR_MS - 1, 7),
                (now - 24 * HOUR_MS, 3),
                (now - 24 * HOUR_MS - 1, 1000),
                (now + 1, 1000),
            ],
            now,
        );
        assert_eq!(h[23], 6, "the last hour, the present moment included");
        assert_eq!(h[22], 7);
        assert_eq!(h[0], 3, "exactly a day ago is the first hour");
        assert_eq!(
            h.iter().sum::<u64>(),
            16,
            "older and future points left out"
        );
    }

    #[test]
    fn the_rate_is_over_the_last_minute_and_gives_the_time_left() {
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let mut m = RateMeter::default();
        assert_eq!(m.note(t0, 0), None, "one look is no rate");
        assert_eq!(m.note(t0 + s(10), 10_000), Some(1000.0));
        assert_eq!(m.note(t0 + s(100), 10_000), Some(0.0), "idle for a minute");
        assert_eq!(m.note(t0 + s(101), 0), None, "counting started again");
        let mut snap = crate::backup::Progress::default().snapshot();
        snap.to_send = 10;
        snap.sent = 4;
        snap.bytes_to_send = 60_000;
        snap.bytes_sent = 30_000;
        assert_eq!(
            progress_text(&snap, Some(1000.0)),
            "This session: 4 of 10 files sent (30.0 KB of 60.0 KB), 0 uploading now · 1.0 KB/s · about 30 s left"
        );
        assert!(!progress_text(&snap, None).contains("left"));
    }

    /// Receipts exist only once the extension acknowledges an upload; until then the progress
    /// line and the backed-up count already count the delivery, and so must the history and
    /// the sparkline beside them.
    #[test]
    fn a_delivery_counts_in_history_and_sparkline_before_it_is_acknowledged() {
        use ferry_core::{Destination, Method, NewJob, Outcome, TxItem, UrlBase};
        use ferry_store::JobStore;
        let state = tempfile::tempdir().unwrap();
        let now = crate::backup::now_ms();
        let mut store = Store::open(&state.path().join("ferry.db")).unwrap();
        let mut w = store.index_writer().unwrap();
        w.insert_asset("asset-1", Path::new("/lib"), now).unwrap();
        w.insert_resource(
            &ferry_store::library::ResourceRecord {
                id: "res-1".into(),
                asset_id: "asset-1".into(),
                resource_type: ferry_core::ResourceType::Photo,
                path: PathBuf::from("/lib/IMG_0001.JPG"),
                dev: 1,
                ino: 1,
                size: 4321,
                mtime_ns: 0,
                content_type: "image/jpeg".into(),
                blake3: [7; 32],
                metadata: Default::default(),
                indexed_ms: now,
            },
            now,
        )
        .unwrap();
        w.commit(now, Default::default()).unwrap();
        store
            .set_destination_bases("ext", &[UrlBase::parse("https://up.example/u/").unwrap()])
            .unwrap();
        let job = ferry_store::new_job_id();
        store
            .transaction(
                "ext",
                &[TxItem::Create(NewJob {
                    id: job,
                    resource_id: "res-1".into(),
                    content_hash: ferry_core::ContentHash([7; 32]),
                    destination: Destination::new(Method::Put, "https://up.example/u/1"),
                    metadata: Default::default(),
                })],
                now - 3000,
            )
            .unwrap();
        store.start(job, now - 2000).unwrap();
        store
            .finish(
                job,
                Outcome::Succeeded {
                    status: 201,
                    headers: Vec::new(),
                },
                now - 1000,
            )
            .unwrap();
        drop(store);
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let cfg = DashboardConfig {
            state_dir: state.path().to_owned(),
            extensions_dir: state.path().join("no-extensions"),
            progress: Default::default(),
            extensions_changed: Default::default(),
            stop,
            port: 0,
        };
        let v = View::load(&cfg, &Default::default()).unwrap();
        assert_eq!(v.progress_line, "1 of 1 files backed up");
        assert_eq!(v.history.len(), 1, "not acknowledged yet, but delivered");
        assert_eq!(v.history[0].outcome, "succeeded");
        assert_eq!(v.history[0].file.path, "/lib/IMG_0001.JPG");
        assert_eq!(
            v.hourly.iter().sum::<u64>(),
            4321,
            "the sparkline counts it"
        );
        assert!(v.failed.is_empty() && v.waiting.is_empty());
    }

    #[test]
    fn counts_read_in_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(4213), "4,213");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn reasons_read_as_words() {
        assert_eq!(
            reason_words("on_battery"),
            WaitReason::OnBattery.to_string()
        );
        assert_eq!(reason_words("queued"), "queued to upload next");
        assert_eq!(reason_words("something_new"), "something new");
    }

    #[test]
    fn folders_are_root_relative_and_stay_inside_a_root() {
        let root = tempfile::tempdir().unwrap();
        let root_path = std::fs::canonicalize(root.path()).unwrap();
        std::fs::create_dir_all(root_path.join("Trips/2024")).unwrap();
        let roots = vec![root_path.clone()];
        assert_eq!(
            relative_folder(root_path.join("Trips").to_str().unwrap(), &roots).as_deref(),
            Some("Trips")
        );
        assert_eq!(
            relative_folder("Trips/2024/", &roots).as_deref(),
            Some("Trips/2024")
        );
        assert_eq!(relative_folder("Nope", &roots), None);
        assert_eq!(relative_folder("../etc", &roots), None);
        assert_eq!(relative_folder("/etc", &roots), None);
    }
}
