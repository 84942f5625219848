//! Fuzzes the extension manifest (`Manifest::parse`), written by extension authors: any text
//! gets a typed error or a manifest, never a panic, and an accepted manifest's scope never
//! leaves the library (no `.` or `..` part, no absolute folder).
#![no_main]

use std::path::Path;

use ferry_extension::protocol::Scope;
use ferry_host::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Manifest::parse(text, Path::new("/fuzz/ext/manifest.toml")) {
        if let Scope::Folders { folders } = &m.scope {
            for f in folders {
                assert!(!f.starts_with('/'), "absolute scope folder {f:?}");
                assert!(
                    !f.split('/').any(|part| part == ".." || part == "."),
                    "scope folder {f:?} leaves the library"
                );
            }
        }
    }
});
