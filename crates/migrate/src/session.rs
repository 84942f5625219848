//! The two ends of a move over the network: [`Receiver`] (binds, shows a code, receives into a
//! staging folder, later confirms the install) and [`send`] (connects with the code, sends what
//! the receiver lacks, learns whether it was installed). The protocol is in `wire.rs`.

use crate::code::Code;
use crate::error::{MigrateError, Result};
use crate::manifest::{MAX_MANIFEST_BYTES, PackageManifest};
use crate::source::EntryReader;
use crate::staging::{ReceivedPackage, SpaceCheck, Staging};
use crate::wire::{self, Abort, HANDSHAKE, Hello, IDLE, Msg, RecvHalf, SendHalf};
use crate::{Phase, Progress};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long the sender waits, after "verified", for the receiver to say it installed.
const INSTALL_WAIT: Duration = Duration::from_secs(600);
/// How long a side spends telling the other why it stops, before just closing.
const ABORT_WAIT: Duration = Duration::from_secs(5);

/// The receiving device's end: a listening socket and its one-time code.
///
/// It accepts exactly one pairing attempt: the first connection that offers a code spends it,
/// right or wrong. Later attempts are answered [`MigrateError::CodeUsed`] while the `Receiver`
/// lives. Connections that never offer a code (a port scan) do not count.
#[derive(Debug)]
pub struct Receiver {
    listener: Option<TcpListener>,
    addr: SocketAddr,
    code: Code,
    used: bool,
    space: SpaceCheck,
    refuser: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listens on `addr` (port 0 picks one) with a fresh code.
    pub async fn bind(addr: SocketAddr) -> Result<Receiver> {
        Receiver::with_code(addr, Code::generate()?).await
    }

    /// Listens with a given code. For tests (a replay needs two receivers with one code); a
    /// real receiver must use [`Receiver::bind`], a code is good for one attempt only.
    #[doc(hidden)]
    pub async fn bind_with_code(addr: SocketAddr, code: &str) -> Result<Receiver> {
        Receiver::with_code(addr, Code::parse(code)?).await
    }

    async fn with_code(addr: SocketAddr, code: Code) -> Result<Receiver> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Receiver {
            listener: Some(listener),
            addr,
            code,
            used: false,
            space: SpaceCheck::os(),
            refuser: None,
        })
    }

    /// Decides how free space is measured at the staging folder (tests force `NoSpace`).
    pub fn with_space_check(mut self, check: SpaceCheck) -> Receiver {
        self.space = check;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The code to show, as `7-K4M2-9QXT`.
    pub fn code(&self) -> String {
        self.code.display()
    }

    /// Waits for the sender, pairs, and receives the package into `staging` (created if
    /// needed), resuming from what it already holds. Returns once every entry is verified
    /// there; the session stays open so the caller can confirm the install. Errors:
    /// [`MigrateError::WrongCode`] (the code is spent), [`MigrateError::CodeUsed`] on a second
    /// call, [`MigrateError::NoSpace`] before anything moves, `PeerGone` (resumable), ...
    pub async fn receive(
        &mut self,
        staging: &Path,
        progress: impl Fn(Progress) + Send + Sync,
    ) -> Result<ReceiverSession> {
        if self.used {
            return Err(MigrateError::CodeUsed);
        }
        let Some(listener) = self.listener.take() else {
            return Err(MigrateError::CodeUsed);
        };
        let (stream, theirs) = loop {
            let (mut stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    self.listener = Some(listener);
                    return Err(e.into());
                }
            };
            match tokio::time::timeout(HANDSHAKE, wire::read_hello(&mut stream)).await {
                Ok(Ok(Hello::Pair(theirs))) => break (stream, theirs),
                Ok(Ok(Hello::OtherVersion)) => {
                    tokio::spawn(wire::refuse_version(stream));
                }
                // A stray connection: not an attempt at the code.
                _ => {}
            }
        };
        // The attempt is spent whatever comes of it; later ones are told so.
        self.used = true;
        self.refuser = Some(tokio::spawn(refuse_all(listener)));
        let (tx, rx) =
            match tokio::time::timeout(HANDSHAKE, wire::respond(stream, &self.code, &theirs)).await
            {
                Ok(r) => r?,
                Err(_) => return Err(MigrateError::PeerGone),
            };
        receive_package(tx, rx, staging, &self.space, &progress).await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(h) = self.refuser.take() {
            h.abort();
        }
    }
}

async fn refuse_all(listener: TcpListener) {
    while let Ok((s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HANDSHAKE, wire::refuse_used(s)).await;
        });
    }
}

/// A received, verified package with the session still open: install from
/// [`ReceiverSession::package`], then [`ReceiverSession::confirm_installed`] so the old device
/// knows it may stop (or [`ReceiverSession::decline`]).
pub struct ReceiverSession {
    package: ReceivedPackage,
    tx: SendHalf,
    rx: RecvHalf,
}

impl std::fmt::Debug for ReceiverSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverSession")
            .field("package", &self.package)
            .finish_non_exhaustive()
    }
}

impl ReceiverSession {
    pub fn package(&self) -> &ReceivedPackage {
        &self.package
    }

    /// Tells the sender the package is installed here. If this message is lost (the link
    /// dies now) the sender reports `installed: false`: the caller should say so.
    pub async fn confirm_installed(self) -> Result<ReceivedPackage> {
        self.close(Msg::Installed).await
    }

    /// Tells the sender the package was received but will not be installed.
    pub async fn decline(self, reason: &str) -> Result<ReceivedPackage> {
        self.close(Msg::Abort(Abort::cancelled(reason))).await
    }

    async fn close(mut self, last: Msg) -> Result<ReceivedPackage> {
        self.tx.send(&last).await?;
        self.tx.shutdown().await;
        // Wait for the sender to close first, so the last message is not lost to a reset.
        let _ = self.rx.recv(ABORT_WAIT).await;
        Ok(self.package)
    }
}

async fn receive_package(
    mut tx: SendHalf,
    mut rx: RecvHalf,
    staging: &Path,
    space: &SpaceCheck,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<ReceiverSession> {
    match receive_entries(&mut tx, &mut rx, staging, space, progress).await {
        Ok(package) => Ok(ReceiverSession { package, tx, rx }),
        Err(e) => {
            if let Some(abort) = Abort::from_error(&e) {
                let _ = tokio::time::timeout(ABORT_WAIT, tx.send(&Msg::Abort(abort))).await;
                tx.shutdown().await;
                rx.drain(ABORT_WAIT).await;
            }
            Err(e)
        }
    }
}

fn unexpected(msg: Msg) -> MigrateError {
    match msg {
        Msg::Abort(a) => a.into_error(),
        other => MigrateError::Protocol(format!("unexpected message {}", kind_name(&other))),
    }
}

fn kind_name(m: &Msg) -> &'static str {
    match m {
        Msg::Manifest(_) => "manifest",
        Msg::Have { .. } => "have",
        Msg::Begin { .. } => "begin",
        Msg::Data(_) => "data",
        Msg::End => "end",
        Msg::Ack { .. } => "ack",
        Msg::Done => "done",
        Msg::Verified => "verified",
        Msg::Installed => "installed",
        Msg::Abort(_) => "abort",
    }
}

/// Tracks what is verified at the receiver, for [`Progress`].
struct Tally {
    weights: HashMap<[u8; 32], (u64, u64)>,
    progress: Progress,
}

impl Tally {
    fn new(manifest: &PackageManifest) -> Tally {
        Tally {
            weights: manifest.weights(),
            progress: Progress {
                phase: Phase::Transferring,
                total_bytes: manifest.total_bytes(),
                total_entries: manifest.entries.len() as u64,
                ..Progress::default()
            },
        }
    }
    fn verified(&mut self, hash: &[u8; 32]) {
        if let Some((n, bytes)) = self.weights.get(hash) {
            self.progress.done_entries += n;
            self.progress.done_bytes += bytes;
        }
    }
    fn report(&self, to: &(dyn Fn(Progress) + Send + Sync)) {
        to(self.progress);
    }
}

async fn receive_entries(
    tx: &mut SendHalf,
    rx: &mut RecvHalf,
    staging_path: &Path,
    space: &SpaceCheck,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<ReceivedPackage> {
    let bytes = match rx.recv(IDLE).await? {
        Msg::Manifest(bytes) => bytes,
        other => return Err(unexpected(other)),
    };
    let manifest = PackageManifest::decode(&bytes)
        .map_err(|e| MigrateError::Protocol(format!("manifest: {e}")))?;
    drop(bytes);
    // Opening waits out a receive of this folder that was just dropped (its last fsync may
    // still run on a blocking thread); preparing lists and deletes files: both off the
    // async threads.
    let (staging, present, manifest) = {
        let path = staging_path.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<_> {
            let staging = Staging::open(&path)?;
            let present = staging.prepare(&manifest)?;
            Ok((staging, present, manifest))
        })
        .await
        .map_err(|e| MigrateError::Io(std::io::Error::other(e)))??
    };
    space.require(staging.root(), Staging::missing_bytes(&manifest, &present))?;

    let count = manifest.entries.len();
    let mut bits = vec![0u8; count.div_ceil(8)];
    for (i, e) in manifest.entries.iter().enumerate() {
        if present.contains(&e.blake3) {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    tx.send(&Msg::Have {
        count: count as u32,
        bits,
    })
    .await?;

    let mut tally = Tally::new(&manifest);
    for h in &present {
        tally.verified(h);
    }
    let mut pending: HashSet<[u8; 32]> = manifest
        .entries
        .iter()
        .map(|e| e.blake3)
        .filter(|h| !present.contains(h))
        .collect();
    tally.progress.wire_bytes = rx.wire;
    tally.report(progress);

    let mut writer = None;
    let mut acks_broken = false;
    // Each entry is made durable (fsync, rename, fsync folder) on a blocking thread while the
    // next one arrives: waiting for every fsync before reading on held the sender to one
    // entry per fsync latency. An entry is acknowledged only once it is durable.
    let mut finishing: tokio::task::JoinSet<(u32, Result<()>)> = tokio::task::JoinSet::new();
    loop {
        // Acks for what became durable meanwhile (never waiting: `recv` below is the one await
        // that reads the stream, so no frame is ever half-read and dropped).
        while let Some(done) = finishing.try_join_next() {
            let index = settle(done, &manifest, &mut tally)?;
            if !acks_broken && tx.send(&Msg::Ack { index }).await.is_err() {
                acks_broken = true;
            }
            tally.report(progress);
        }
        let msg = match rx.recv(IDLE).await {
            Ok(msg) => msg,
            Err(e) => {
                // A cut: what fully arrived is made durable (and counted) before the caller
                // hears of it, so a resume sends none of it again.
                while let Some(done) = finishing.join_next().await {
                    if settle(done, &manifest, &mut tally).is_ok() {
                        tally.report(progress);
                    }
                }
                return Err(e);
            }
        };
        tally.progress.wire_bytes = rx.wire;
        match msg {
            Msg::Begin { index, compressed } => {
                let entry = manifest
                    .entries
                    .get(index as usize)
                    .filter(|e| writer.is_none() && pending.contains(&e.blake3))
                    .ok_or_else(|| {
                        MigrateError::Protocol(format!("entry {index} not asked for"))
                    })?;
                // Out of `pending` from its first byte: a second `Begin` of the same content
                // while the first is still being made durable is refused, never written twice.
                pending.remove(&entry.blake3);
                writer = Some((index, staging.writer(entry, compressed)?));
            }
            Msg::Data(data) => match writer.as_mut() {
                Some((_, w)) => {
                    w.write(&data)?;
                    tally.report(progress);
                }
                None => return Err(MigrateError::Protocol("data outside an entry".into())),
            },
            Msg::End => {
                let Some((index, w)) = writer.take() else {
                    return Err(MigrateError::Protocol("end outside an entry".into()));
                };
                // fsync and rename off the async threads, a few entries at a time.
                finishing.spawn_blocking(move || (index, w.finish()));
                while finishing.len() > MAX_FINISHING {
                    let Some(done) = finishing.join_next().await else {
                        break;
                    };
                    let index = settle(done, &manifest, &mut tally)?;
                    // An ack that cannot be written does not stop the receiving: every entry
                    // that fully arrived before a cut is still verified and kept.
                    if !acks_broken && tx.send(&Msg::Ack { index }).await.is_err() {
                        acks_broken = true;
                    }
                    tally.report(progress);
                }
            }
            Msg::Done => {
                while let Some(done) = finishing.join_next().await {
                    let index = settle(done, &manifest, &mut tally)?;
                    if !acks_broken && tx.send(&Msg::Ack { index }).await.is_err() {
                        acks_broken = true;
                    }
                    tally.report(progress);
                }
                if acks_broken {
                    return Err(MigrateError::PeerGone);
                }
                if writer.is_some() || !pending.is_empty() {
                    return Err(MigrateError::Protocol(format!(
                        "the sender finished with {} contents missing",
                        pending.len()
                    )));
                }
                break;
            }
            other => return Err(unexpected(other)),
        }
    }
    tx.send(&Msg::Verified).await?;
    tally.progress.phase = Phase::Verified;
    tally.report(progress);
    Ok(staging.package(manifest))
}

/// Entries being made durable at once on the receiving side.
const MAX_FINISHING: usize = 16;

/// One entry's durability settled: its index once verified and durable, or why not.
fn settle(
    done: std::result::Result<(u32, Result<()>), tokio::task::JoinError>,
    manifest: &PackageManifest,
    tally: &mut Tally,
) -> Result<u32> {
    let (index, r) = done.map_err(|e| MigrateError::Io(std::io::Error::other(e)))?;
    r?;
    tally.verified(&manifest.entries[index as usize].blake3);
    Ok(index)
}

/// What a finished send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// The receiver confirmed it installed the package: this device may stop its own work.
    pub installed: bool,
    /// Distinct contents sent in this run (identical entries travel once).
    pub sent_entries: u64,
    /// Distinct contents the receiver already held verified (a resumed move).
    pub skipped_entries: u64,
    /// Entry bytes sent in this run, before compression.
    pub sent_bytes: u64,
    /// Bytes this side wrote to the socket in this run, pairing excluded, framing included.
    pub wire_bytes: u64,
}

enum Produced {
    Begin { index: u32, compressed: bool },
    Chunk(Vec<u8>),
    End,
}

/// Sends the package at `root`, described by `manifest`, to the receiver at `to`
/// (`host:port`) that shows `code`. Sends only what the receiver does not hold verified already
/// (so running it again after a cut resumes), then waits (up to 10 minutes) for the receiver to
/// say whether it installed the package. `progress` is called with the bytes written and the
/// entry bytes the receiver verified. Cancel by dropping the future.
pub async fn send(
    root: &Path,
    manifest: &PackageManifest,
    to: &str,
    code: &str,
    progress: impl Fn(Progress) + Send + Sync,
) -> Result<SendOutcome> {
    let progress: &(dyn Fn(Progress) + Send + Sync) = &progress;
    let code = Code::parse(code)?;
    manifest.validate().map_err(MigrateError::BadPackage)?;
    let encoded = manifest.encode();
    if encoded.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(MigrateError::BadPackage("manifest too large".into()));
    }
    let mut tally = Tally::new(manifest);
    tally.progress.phase = Phase::Connecting;
    tally.report(progress);

    let (mut tx, mut rx) = tokio::time::timeout(HANDSHAKE, async {
        let stream = TcpStream::connect(to).await?;
        stream.set_nodelay(true)?;
        wire::initiate(stream, &code).await
    })
    .await
    .map_err(|_| MigrateError::PeerGone)??;
    tally.progress.phase = Phase::Transferring;
    tally.report(progress);

    tx.send(&Msg::Manifest(encoded)).await?;
    let has = match rx.recv(IDLE).await? {
        Msg::Have { count, bits } => {
            if count as usize != manifest.entries.len()
                || bits.len() != manifest.entries.len().div_ceil(8)
            {
                return Err(MigrateError::Protocol("have: wrong entry count".into()));
            }
            move |i: usize| bits[i / 8] & (1 << (i % 8)) != 0
        }
        other => return Err(unexpected(other)),
    };
    let mut outcome = SendOutcome {
        installed: false,
        sent_entries: 0,
        skipped_entries: 0,
        sent_bytes: 0,
        wire_bytes: 0,
    };
    let mut to_send = Vec::new();
    for i in manifest.distinct() {
        if has(i) {
            outcome.skipped_entries += 1;
            tally.verified(&manifest.entries[i].blake3);
        } else {
            to_send.push(i);
        }
    }
    tally.report(progress);

    // Incoming messages (acks, the end, an abort) are read while entries go out.
    let (in_tx, mut incoming) = mpsc::channel::<Result<Msg>>(64);
    let reader = tokio::spawn(async move {
        let mut wait = IDLE;
        loop {
            let m = rx.recv(wait).await;
            let stop = matches!(m, Err(_) | Ok(Msg::Installed) | Ok(Msg::Abort(_)));
            if matches!(m, Ok(Msg::Verified)) {
                wait = INSTALL_WAIT;
            }
            if in_tx.send(m).await.is_err() || stop {
                break;
            }
        }
    });
    let _reader = AbortOnDrop(reader);

    // Files are read, hashed and compressed on a blocking thread, a few chunks ahead.
    let (chunk_tx, mut chunks) = mpsc::channel::<Result<Produced>>(8);
    let producer_entries: Vec<(u32, crate::manifest::Entry)> = to_send
        .iter()
        .map(|&i| (i as u32, manifest.entries[i].clone()))
        .collect();
    let producer_root: PathBuf = root.to_path_buf();
    tokio::task::spawn_blocking(move || produce(&producer_root, producer_entries, chunk_tx));

    let mut sent: HashMap<u32, [u8; 32]> = HashMap::new();
    let mut acked = 0usize;
    let mut producing = true;
    loop {
        tokio::select! {
            p = chunks.recv(), if producing => {
                let msg = match p {
                    Some(Ok(Produced::Begin { index, compressed })) => {
                        let e = &manifest.entries[index as usize];
                        sent.insert(index, e.blake3);
                        outcome.sent_entries += 1;
                        outcome.sent_bytes += e.size;
                        Msg::Begin { index, compressed }
                    }
                    Some(Ok(Produced::Chunk(c))) => Msg::Data(c),
                    Some(Ok(Produced::End)) => Msg::End,
                    Some(Err(e)) => {
                        if let Some(abort) = Abort::from_error(&e) {
                            let _ = tokio::time::timeout(ABORT_WAIT, tx.send(&Msg::Abort(abort))).await;
                            tx.shutdown().await;
                            // Until the receiver closes: our abort must not be lost to a reset.
                            let _ = tokio::time::timeout(ABORT_WAIT, async {
                                while let Some(Ok(_)) = incoming.recv().await {}
                            })
                            .await;
                        }
                        return Err(e);
                    }
                    None => {
                        producing = false;
                        Msg::Done
                    }
                };
                if let Err(e) = tx.send(&msg).await {
                    return Err(why_broken(e, &mut incoming).await);
                }
                tally.progress.wire_bytes = tx.wire;
                tally.report(progress);
            }
            m = incoming.recv() => match m {
                Some(Ok(Msg::Ack { index })) => {
                    let Some(hash) = sent.remove(&index) else {
                        return Err(MigrateError::Protocol(format!("ack for entry {index} not sent")));
                    };
                    acked += 1;
                    tally.verified(&hash);
                    tally.report(progress);
                }
                Some(Ok(Msg::Verified)) => {
                    if producing || acked != to_send.len() {
                        return Err(MigrateError::Protocol("verified before every entry was acknowledged".into()));
                    }
                    break;
                }
                Some(Ok(other)) => return Err(unexpected(other)),
                Some(Err(e)) => return Err(e),
                None => return Err(MigrateError::PeerGone),
            }
        }
    }
    tally.progress.phase = Phase::Verified;
    tally.report(progress);
    outcome.wire_bytes = tx.wire;
    // The receiver installs, then says so; a close or a decline means it did not.
    outcome.installed = matches!(incoming.recv().await, Some(Ok(Msg::Installed)));
    if outcome.installed {
        tally.progress.phase = Phase::Installed;
        tally.report(progress);
    }
    tx.shutdown().await;
    Ok(outcome)
}

/// A write failed: the receiver may have said why before closing (tampering it detected, no
/// space); prefer its reason over the bare broken pipe.
async fn why_broken(e: MigrateError, incoming: &mut mpsc::Receiver<Result<Msg>>) -> MigrateError {
    let drain = async {
        while let Some(m) = incoming.recv().await {
            if let Ok(Msg::Abort(a)) = m {
                return Some(a.into_error());
            }
            if m.is_err() {
                return None;
            }
        }
        None
    };
    match tokio::time::timeout(ABORT_WAIT, drain).await {
        Ok(Some(reason)) => reason,
        _ => e,
    }
}

fn produce(
    root: &Path,
    entries: Vec<(u32, crate::manifest::Entry)>,
    out: mpsc::Sender<Result<Produced>>,
) {
    for (index, entry) in entries {
        let step = (|| -> Result<bool> {
            let mut reader = EntryReader::open(root, &entry)?;
            if out
                .blocking_send(Ok(Produced::Begin {
                    index,
                    compressed: entry.compress,
                }))
                .is_err()
            {
                return Ok(false);
            }
            while let Some(chunk) = reader.next_chunk()? {
                if out.blocking_send(Ok(Produced::Chunk(chunk))).is_err() {
                    return Ok(false);
                }
            }
            Ok(out.blocking_send(Ok(Produced::End)).is_ok())
        })();
        match step {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = out.blocking_send(Err(e));
                return;
            }
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
