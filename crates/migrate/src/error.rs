//! The one error type of the crate, classified so the caller can tell the person what to do
//! (type the code again, free space, run again to resume) without reading strings.

use std::io;

/// Everything that can go wrong while building, moving or importing a package.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The two devices did not agree on the pairing code (or the handshake was forged). Detected
    /// during the handshake, before any package byte moves; the receiver's code is used up.
    #[error("wrong code: the two devices did not agree on the pairing code")]
    WrongCode,
    /// The receiver already spent its one pairing attempt: it needs a new code.
    #[error("this pairing code was already used: ask the receiving device for a new code")]
    CodeUsed,
    /// Bytes that do not authenticate or do not hash to what the manifest says, or a frame that
    /// breaks the format: something changed what was carried.
    #[error("tampered or damaged: {what}")]
    Tampered { what: String },
    /// A package file ends before its trailer.
    #[error("truncated: the package file ends early")]
    Truncated,
    /// The staging (or output) file system has too little free space; nothing was moved.
    #[error("not enough free space: need {need} bytes, have {have}")]
    NoSpace { need: u64, have: u64 },
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the protocol (unexpected message, unsupported version, ...).
    #[error("protocol: {0}")]
    Protocol(String),
    /// The package on this side is not sendable: a symlink, a non-regular file, a bad name, or
    /// a file that changed since its manifest was built (build the manifest again).
    #[error("bad package: {0}")]
    BadPackage(String),
    /// The move was cancelled (by the caller on this side, or the other side declined).
    #[error("cancelled")]
    Cancelled,
    /// The other side stopped the session because of a failure of its own, and said why
    /// (a file that changed under the sender, a disk error at the receiver, ...).
    #[error("the other side stopped: {reason}")]
    PeerAborted { reason: String },
    /// The connection was cut or went silent. Everything verified so far is kept in the
    /// receiver's staging folder: run again (with a new code) to resume.
    #[error("the other device went away (connection cut or silent): run again to resume")]
    PeerGone,
}

impl MigrateError {
    /// Whether running the same move again (new code, same staging folder, same package) can
    /// succeed and keeps what was already verified. `Tampered` is not: it needs a look first.
    pub fn is_resumable(&self) -> bool {
        matches!(
            self,
            MigrateError::PeerGone
                | MigrateError::Truncated
                | MigrateError::Cancelled
                | MigrateError::PeerAborted { .. }
        )
    }

    pub(crate) fn tampered(what: impl Into<String>) -> MigrateError {
        MigrateError::Tampered { what: what.into() }
    }
}

/// Socket errors that mean "the other side is gone" become [`MigrateError::PeerGone`]; others
/// stay I/O errors.
pub(crate) fn net(e: io::Error) -> MigrateError {
    use io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | TimedOut
        | NotConnected => MigrateError::PeerGone,
        _ => MigrateError::Io(e),
    }
}

pub type Result<T, E = MigrateError> = std::result::Result<T, E>;
