//! Named failure points for crash tests, as `ferry_library::failpoint` has them:
//! `FERRY_FAILPOINTS=name=N` aborts the process (as abruptly as `kill -9`) the N-th time `name`
//! is reached. Read once from the environment; when unset, a hit costs one `OnceLock` read.
//! (A copy rather than a dependency: the server depends on no other Ferry crate.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::OnceLock;

fn table() -> &'static Option<Mutex<HashMap<String, u64>>> {
    static TABLE: OnceLock<Option<Mutex<HashMap<String, u64>>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let spec = std::env::var("FERRY_FAILPOINTS").ok()?;
        let map = spec
            .split(',')
            .filter_map(|item| {
                let (name, n) = item.split_once('=')?;
                Some((name.trim().to_owned(), n.trim().parse().ok()?))
            })
            .collect();
        Some(Mutex::new(map))
    })
}

/// Aborts the process if `name` is armed and this is its N-th hit.
pub fn hit(name: &str) {
    let Some(table) = table() else { return };
    let Ok(mut map) = table.lock() else { return };
    if let Some(left) = map.get_mut(name) {
        *left = left.saturating_sub(1);
        if *left == 0 {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
    }
}
