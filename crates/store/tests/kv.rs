//! The extensions' key-value store on a real SQLite file: batch writes are all or none, the
//! size cap counts every key and value, and writes survive reopening the database.

use ferry_store::Store;
use ferry_store::extensions::KvError;

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("ferry.db")).unwrap()
}

#[test]
fn set_many_writes_all_in_one_commit_and_last_entry_wins() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir);
    s.kv_set("ext", "gone", Some("x"), 1 << 20).unwrap();
    s.kv_set_many(
        "ext",
        &[
            ("a", Some("1")),
            ("b", Some("2")),
            ("a", Some("3")),
            ("gone", None),
        ],
        1 << 20,
    )
    .unwrap();
    drop(s);
    let s = open(&dir);
    assert_eq!(s.kv_get("ext", "a").unwrap().as_deref(), Some("3"));
    assert_eq!(s.kv_get("ext", "b").unwrap().as_deref(), Some("2"));
    assert_eq!(s.kv_get("ext", "gone").unwrap(), None);
    // Another extension's keys are its own.
    assert_eq!(s.kv_get("other", "a").unwrap(), None);
}

#[test]
fn set_many_over_the_cap_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir);
    // "k" + 10 bytes = 11 of a 30-byte cap; the batch below would end at 33.
    s.kv_set("ext", "k", Some("0123456789"), 30).unwrap();
    let e = s
        .kv_set_many(
            "ext",
            &[
                ("k", None),
                ("x", Some("0123456789")),
                ("y", Some("0123456789")),
                ("z", Some("0123456789")),
            ],
            30,
        )
        .unwrap_err();
    match e {
        KvError::Full { max_bytes, .. } => assert_eq!(max_bytes, 30),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(
        s.kv_get("ext", "k").unwrap().as_deref(),
        Some("0123456789"),
        "the delete in the refused batch did not happen"
    );
    assert_eq!(s.kv_get("ext", "x").unwrap(), None);
    // Replacing a value counts the new size, not both.
    s.kv_set("ext", "k", Some("0123456789012345678"), 30)
        .unwrap();
    // Deleting is never refused.
    s.kv_set_many("ext", &[("k", None)], 0).unwrap();
    assert_eq!(s.kv_get("ext", "k").unwrap(), None);
}
