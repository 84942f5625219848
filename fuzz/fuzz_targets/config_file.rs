//! Fuzzes Ferry's configuration file (`FileConfig::parse`), the one TOML file a person edits:
//! any text gets a typed error or a configuration, never a panic, and a configuration that
//! parses answers every question the daemon asks of it.
#![no_main]

use std::path::Path;

use ferry_daemon::config::FileConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = FileConfig::parse(Path::new("/fuzz/config.toml"), text) {
        let _ = config.policy();
        assert!(config.max_concurrent() >= 1, "at least one transfer at a time");
        let _ = config.observe_conditions();
        let observer = config.observer();
        assert!(
            observer.sysfs_poll >= std::time::Duration::from_millis(100),
            "sysfs is never re-read in a busy loop"
        );
    }
});
