//! Ferry's extension protocol and SDK: the wire types both sides share (`protocol`), so the host
//! and every Rust extension agree on one definition; `docs/protocol.md` states it for other
//! languages.

pub mod protocol;
