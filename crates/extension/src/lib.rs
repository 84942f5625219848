//! Ferry's extension protocol and SDK: the wire types both sides share (`protocol`), so the host
//! and every Rust extension agree on one definition; `docs/protocol.md` states it for other
//! languages. The SDK ([`Extension`], [`run`], [`Host`]) speaks the protocol for a Rust
//! extension; `testing` (feature `testing`) is a host-side harness over a real store.

pub mod protocol;
mod sdk;
#[cfg(feature = "testing")]
pub mod testing;

pub use sdk::{
    Archive, ErrorClass, Extension, Host, HostError, RATE_LIMIT_MAX_WAIT_MS, RATE_LIMIT_RETRIES,
    RunError, TerminateFlag, run, run_with,
};
