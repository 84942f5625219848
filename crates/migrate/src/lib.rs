//! ferry-migrate: the transport of a one-time move of Ferry's state from one device to another.
//!
//! It knows packages, not Ferry: a **package** is a folder of files (entries, named by relative
//! byte paths) plus a [`PackageManifest`] with their sizes and BLAKE3 and the caller's metadata;
//! the manifest's BLAKE3 is the identity of the move. What goes into a package, and how it is
//! installed, is the caller's business.
//!
//! - **Pairing**: the receiving device binds a [`Receiver`] and shows its one-time code; the
//!   sending device calls [`send`] with it. SPAKE2 turns the code into a key, a Noise
//!   `NNpsk0` session proves it on both sides before anything moves and encrypts the rest
//!   (`wire.rs` documents the protocol). One attempt per code.
//! - **The stream**: manifest first; the receiver checks its free space and answers what it
//!   holds verified already; the sender sends each missing content once (zstd where the entry
//!   says so); the receiver verifies each against its BLAKE3, makes it durable under
//!   `staging/blobs/<hex>` and acknowledges; at the end it says "verified", the caller installs
//!   from the [`ReceivedPackage`] and confirms, and the sender learns it ([`SendOutcome`]).
//! - **Resume**: the staging folder is the journal. Cut the link or kill either side, run both
//!   again (new code, same staging folder, same package): only what was in flight moves again.
//! - **File**: [`export_file`] / [`import_file`] carry the same stream through a file, with a
//!   checksum trailer, for a person who moves the package on a disk.

mod code;
mod error;
mod file;
mod fsutil;
mod manifest;
mod session;
mod source;
mod staging;
mod wire;

pub use code::Code;
pub use error::MigrateError;
pub use file::{export_file, export_file_with, import_file, import_file_with};
pub use manifest::{
    Entry, FORMAT, MAX_ENTRIES, MAX_MANIFEST_BYTES, MAX_NAME_BYTES, PackageManifest,
};
pub use session::{Receiver, ReceiverSession, SendOutcome, send};
pub use staging::{ReceivedPackage, SpaceCheck, free_bytes, staged_bytes};

/// Where a move stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Pairing.
    #[default]
    Connecting,
    Transferring,
    /// Every entry is verified at the receiver (for a file: written, or imported).
    Verified,
    /// The receiver confirmed it installed the package.
    Installed,
}

/// Progress of a move, handed to the caller's callback as it changes (a `watch` channel's
/// `send_replace` makes a good callback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub phase: Phase,
    /// Bytes this side wrote (sender, export) or read (receiver, import), framing included.
    pub wire_bytes: u64,
    /// Entry bytes verified at the receiving end (identical entries each counted), of
    /// `total_bytes` (the manifest's total).
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub done_entries: u64,
    pub total_entries: u64,
}

fn session_progress(manifest: &PackageManifest) -> Progress {
    Progress {
        phase: Phase::Transferring,
        total_bytes: manifest.total_bytes(),
        total_entries: manifest.entries.len() as u64,
        ..Progress::default()
    }
}
