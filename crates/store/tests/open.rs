//! Opening a new store from several processes at once (the daemon starting while `ferry
//! status` runs): every open succeeds, and they agree on one schema and one library id.

use std::sync::{Arc, Barrier};

use ferry_store::Store;

#[test]
fn concurrent_first_opens_all_succeed_and_agree() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("ferry.db"));
        let threads = 6;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let path = path.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    Store::open(&path).map(|s| s.library_id().to_owned())
                })
            })
            .collect();
        let ids: Vec<String> = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("round {round}: a concurrent first open failed: {e}"));
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "round {round}: library ids differ: {ids:?}"
        );
    }
}
