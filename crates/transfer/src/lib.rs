//! ferry-transfer: the engine that carries out upload jobs over HTTP.
//!
//! It reads a job's resource from disk in constant memory, picks the destination's protocol by
//! a cached `OPTIONS` preflight (IETF resumable-uploads draft, tus 1.0, or one plain request),
//! resumes interrupted uploads from the server's offset (also after a `kill -9`, from its
//! [`UploadSession`]), refuses to complete a file that no longer matches the job's pinned hash,
//! checks the server's receipt against its own digests, and maps every outcome to a
//! [`ferry_core::retry::Failure`] so the retry decision stays in `ferry-core`.
//!
//! Entry points: [`Uploader::upload`] for one attempt of one job; [`Engine`] for the loop over
//! the job store. TLS is rustls (aws-lc-rs, the platform's verifier) through reqwest.

pub mod bandwidth;
pub mod engine;
pub mod preflight;
pub mod session;
pub mod source;
pub mod upload;

pub use engine::{
    Engine, EngineConfig, EngineError, MapLocator, ResourceLocator, RunReport, StoreLocator,
};
pub use preflight::{Capabilities, Protocol};
pub use session::{
    MemorySessionStore, SessionStoreError, SqliteSessionStore, UploadSession, UploadSessionStore,
};
pub use source::{FileStamp, Prepass, SourceError};
pub use upload::{
    Delivered, OriginTls, TransferConfig, UploadError, UploadFailure, UploadJob, Uploader,
};
