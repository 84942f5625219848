//! Rescans on a real folder: what is unchanged is not reread, edits and moves keep identity,
//! deletions and additions show up in the change history, bad input is reported, not fatal.

use ferry_library::{IssueReason, ScanError, ScanOptions, ScanReport, scan};
use ferry_store::Store;
use ferry_store::library::ResourceRecord;
use std::fs;
use std::path::{Path, PathBuf};

struct Lib {
    _state: tempfile::TempDir,
    root: PathBuf,
    _root_dir: tempfile::TempDir,
    store: Store,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/library")
        .join(name)
}

impl Lib {
    fn new() -> Lib {
        let state = tempfile::tempdir().unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        let root = root_dir.path().canonicalize().unwrap();
        let store = Store::open(&state.path().join("ferry.db")).unwrap();
        Lib {
            _state: state,
            root,
            _root_dir: root_dir,
            store,
        }
    }

    fn put(&self, rel: &str, from_fixture: &str) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::copy(fixture(from_fixture), &p).unwrap();
        p
    }

    fn scan(&mut self) -> ScanReport {
        scan(
            &mut self.store,
            std::slice::from_ref(&self.root),
            &ScanOptions::default(),
            &mut |_| {},
        )
        .unwrap()
    }

    fn resource_at(&self, rel: &str) -> ResourceRecord {
        let p = self.root.join(rel);
        self.store
            .resources_under(&self.root)
            .unwrap()
            .into_iter()
            .find(|r| r.path == p)
            .unwrap_or_else(|| panic!("{rel} not indexed"))
    }
}

#[test]
fn unchanged_rescan_reads_nothing_and_records_no_change() {
    let mut lib = Lib::new();
    lib.put("a/IMG_0100.JPG", "raw/IMG_0100.JPG");
    lib.put("a/IMG_0100.DNG", "raw/IMG_0100.DNG");
    lib.put("b/IMG_0200.HEIC", "live/IMG_0200.HEIC");
    let first = lib.scan();
    assert_eq!(first.new_resources, 3);
    let token = first.change_token.clone();

    let again = lib.scan();
    assert_eq!(again.unchanged_resources, 3);
    assert_eq!(again.bytes_read, 0, "an unchanged file was reread");
    assert_eq!(again.change_token, token);
    assert!(lib.store.changes_since(&token).unwrap().is_empty());
}

#[test]
fn edit_move_delete_and_add_are_tracked_with_stable_ids() {
    let mut lib = Lib::new();
    lib.put("a/IMG_0100.JPG", "raw/IMG_0100.JPG");
    lib.put("a/IMG_0010.JPG", "plain/IMG_0010.JPG");
    lib.put("a/IMG_0011.JPG", "plain/IMG_0011.JPG");
    let t0 = lib.scan().change_token;
    let jpeg = lib.resource_at("a/IMG_0100.JPG");
    let moving = lib.resource_at("a/IMG_0010.JPG");
    let doomed = lib.resource_at("a/IMG_0011.JPG");

    // A RAW arrives beside the JPEG: same asset, now with an alternate_photo.
    lib.put("a/IMG_0100.DNG", "raw/IMG_0100.DNG");
    // A photo moves to another folder and is renamed.
    fs::create_dir_all(lib.root.join("b")).unwrap();
    fs::rename(
        lib.root.join("a/IMG_0010.JPG"),
        lib.root.join("b/renamed.jpg"),
    )
    .unwrap();
    // A photo is deleted.
    fs::remove_file(lib.root.join("a/IMG_0011.JPG")).unwrap();
    let r = lib.scan();
    assert_eq!(
        (r.new_resources, r.moved_resources, r.deleted_resources),
        (1, 1, 1)
    );

    let raw = lib.resource_at("a/IMG_0100.DNG");
    assert_eq!(raw.asset_id, jpeg.asset_id);
    assert_eq!(raw.resource_type.as_str(), "alternate_photo");
    let moved = lib.resource_at("b/renamed.jpg");
    assert_eq!(
        (moved.id.as_str(), moved.asset_id.as_str()),
        (moving.id.as_str(), moving.asset_id.as_str())
    );
    assert!(lib.store.asset(&doomed.asset_id).unwrap().is_none());

    let sets = lib.store.changes_since(&t0).unwrap();
    let all = |f: fn(&ferry_store::library::ChangeSet) -> &Vec<String>| {
        sets.iter().flat_map(f).cloned().collect::<Vec<_>>()
    };
    assert!(all(|s| &s.updated).contains(&jpeg.asset_id));
    assert!(
        all(|s| &s.updated).contains(&moving.asset_id),
        "a move is an update"
    );
    assert!(all(|s| &s.deleted).contains(&doomed.asset_id));
    assert!(
        all(|s| &s.inserted).is_empty(),
        "nothing new was inserted: {sets:?}"
    );

    // Editing a file in place: same resource, new hash, one update.
    let t1 = lib.store.current_change_token().unwrap();
    let p = lib.root.join("a/IMG_0100.JPG");
    let mut bytes = fs::read(&p).unwrap();
    bytes.extend_from_slice(b"appended");
    fs::write(&p, bytes).unwrap();
    let r = lib.scan();
    assert_eq!(r.modified_resources, 1);
    let edited = lib.resource_at("a/IMG_0100.JPG");
    assert_eq!(edited.id, jpeg.id);
    assert_ne!(edited.blake3, jpeg.blake3);
    let sets = lib.store.changes_since(&t1).unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].updated, vec![jpeg.asset_id.clone()]);
}

#[test]
fn hash_is_blake3_of_the_bytes() {
    let mut lib = Lib::new();
    let p = lib.put("x/IMG_0200.MOV", "live/IMG_0200.MOV");
    lib.scan();
    let r = lib.resource_at("x/IMG_0200.MOV");
    assert_eq!(r.blake3, *blake3::hash(&fs::read(p).unwrap()).as_bytes());
    assert_eq!(r.content_type, "video/quicktime");
}

#[test]
fn bad_input_is_reported_and_never_fatal() {
    use std::os::unix::ffi::OsStrExt;
    let mut lib = Lib::new();
    lib.put("ok/IMG_0010.JPG", "plain/IMG_0010.JPG");
    let root = lib.root.clone();
    // A broken symlink, a symlink loop, a link back to the root, a FIFO, a zero-byte file,
    // a non-UTF-8 name, an unreadable file name with odd bytes, media behind a wrong extension.
    std::os::unix::fs::symlink(root.join("nowhere.jpg"), root.join("ok/broken.jpg")).unwrap();
    std::os::unix::fs::symlink(root.join("ok/loop2.jpg"), root.join("ok/loop1.jpg")).unwrap();
    std::os::unix::fs::symlink(root.join("ok/loop1.jpg"), root.join("ok/loop2.jpg")).unwrap();
    std::os::unix::fs::symlink(&root, root.join("ok/back-to-root")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(root.join("ok/pipe.jpg"))
        .status()
        .unwrap();
    assert!(status.success());
    fs::write(root.join("ok/empty.jpg"), b"").unwrap();
    let odd = root.join(std::ffi::OsStr::from_bytes(b"ok/caf\xe9.jpg"));
    fs::copy(fixture("plain/IMG_0011.JPG"), &odd).unwrap();
    fs::copy(fixture("plain/IMG_0012.JPG"), root.join("ok/download.bin")).unwrap();

    let r = lib.scan();
    let count = |reason| r.counts_by_reason.get(&reason).copied().unwrap_or(0);
    assert_eq!(count(IssueReason::BrokenSymlink), 1, "{r:#?}");
    assert_eq!(count(IssueReason::SymlinkLoop), 3, "{r:#?}");
    assert_eq!(count(IssueReason::NotRegularFile), 1, "{r:#?}");
    assert_eq!(count(IssueReason::Empty), 1, "{r:#?}");
    // The good photo, the non-UTF-8 one, and JPEG bytes named .bin are all indexed.
    assert_eq!(r.new_resources, 3, "{r:#?}");
    let odd_rec = lib
        .store
        .resources_under(&root)
        .unwrap()
        .into_iter()
        .find(|x| x.path == odd)
        .expect("non-UTF-8 name indexed byte for byte");
    assert_eq!(odd_rec.metadata.make.as_deref(), Some("Canon"));
    // And the index survives a second pass over the same mess unchanged.
    let again = lib.scan();
    assert_eq!(again.unchanged_resources, 3);
}

#[test]
fn a_root_that_does_not_exist_is_a_clear_error_and_changes_nothing() {
    let mut lib = Lib::new();
    lib.put("a/IMG_0010.JPG", "plain/IMG_0010.JPG");
    lib.scan();
    let before = lib.store.library_counts().unwrap();
    let missing = lib.root.join("no-such-folder");
    let err = scan(
        &mut lib.store,
        &[missing],
        &ScanOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, ScanError::RootNotFound(_)), "{err}");
    let file = lib.root.join("a/IMG_0010.JPG");
    let err = scan(
        &mut lib.store,
        &[file],
        &ScanOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, ScanError::RootNotADirectory(_)), "{err}");
    assert_eq!(lib.store.library_counts().unwrap(), before);
}

#[test]
fn scanning_one_folder_leaves_the_rest_alone() {
    let mut lib = Lib::new();
    lib.put("card/IMG_0010.JPG", "plain/IMG_0010.JPG");
    lib.scan();
    let id = lib.resource_at("card/IMG_0010.JPG").id;
    fs::create_dir_all(lib.root.join("other")).unwrap();
    lib.put("other/IMG_0011.JPG", "plain/IMG_0011.JPG");
    let other = lib.root.join("other");
    let r = scan(
        &mut lib.store,
        &[other],
        &ScanOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((r.new_resources, r.deleted_resources), (1, 0));
    assert_eq!(lib.resource_at("card/IMG_0010.JPG").id, id);
}

#[test]
fn grouping_follows_files_added_later() {
    let mut lib = Lib::new();
    lib.put("d/IMG_0500.HEIC", "edited-live/IMG_0500.HEIC");
    lib.scan();
    let asset = lib.resource_at("d/IMG_0500.HEIC").asset_id;
    for f in [
        "IMG_0500.MOV",
        "IMG_E0500.HEIC",
        "IMG_E0500.MOV",
        "IMG_0500.AAE",
    ] {
        lib.put(&format!("d/{f}"), &format!("edited-live/{f}"));
    }
    lib.scan();
    let types: Vec<(String, String)> = lib
        .store
        .resources_of_asset(&asset)
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.path.file_name().unwrap().to_string_lossy().into_owned(),
                r.resource_type.to_string(),
            )
        })
        .collect();
    assert_eq!(types.len(), 5, "{types:?}");
    assert!(types.contains(&("IMG_E0500.MOV".into(), "full_size_paired_video".into())));
    assert_eq!(lib.store.library_counts().unwrap().assets, 1);
}

#[test]
fn overlapping_scopes_are_walked_once() {
    let mut lib = Lib::new();
    lib.put("a/IMG_0010.JPG", "plain/IMG_0010.JPG");
    lib.put("a/b/IMG_0011.JPG", "plain/IMG_0011.JPG");
    let scopes = [lib.root.join("a/b"), lib.root.clone(), lib.root.join("a")];
    let r = scan(
        &mut lib.store,
        &scopes,
        &ScanOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((r.media_files, r.new_resources), (2, 2));
    assert_eq!(r.scopes.len(), 1);
}

/// A JPEG moves away from its RAW to a folder walked before (`0/`) or after (`z/`) the one
/// it left: it keeps its resource id, and the asset id goes to exactly one of the two groups
/// (whichever folder is written first), never to both.
#[test]
fn a_moved_resource_and_the_siblings_it_left_never_share_an_asset() {
    for dest in ["0", "z"] {
        let mut lib = Lib::new();
        lib.put("m/IMG_0100.JPG", "raw/IMG_0100.JPG");
        lib.put("m/IMG_0100.DNG", "raw/IMG_0100.DNG");
        lib.scan();
        let jpeg = lib.resource_at("m/IMG_0100.JPG");
        let raw = lib.resource_at("m/IMG_0100.DNG");
        assert_eq!(jpeg.asset_id, raw.asset_id);

        fs::create_dir_all(lib.root.join(dest)).unwrap();
        let to = format!("{dest}/IMG_0100.JPG");
        fs::rename(lib.root.join("m/IMG_0100.JPG"), lib.root.join(&to)).unwrap();
        let r = lib.scan();
        assert_eq!(
            (r.moved_resources, r.new_resources, r.deleted_resources),
            (1, 0, 0),
            "{dest}"
        );
        let moved = lib.resource_at(&to);
        let left = lib.resource_at("m/IMG_0100.DNG");
        assert_eq!(moved.id, jpeg.id, "{dest}");
        assert_eq!(left.id, raw.id, "{dest}");
        assert_ne!(moved.asset_id, left.asset_id, "{dest}: one asset per group");
        assert!(
            [&moved.asset_id, &left.asset_id].contains(&&jpeg.asset_id),
            "{dest}: one of them keeps the asset"
        );
    }
}

/// A file missing while its folder is walked and back before the folder is written (a sync
/// client replacing it, a save by rename): it keeps its entry and id, and nothing is deleted —
/// neither it, nor (when a copy of it sits in a folder written first) handed to the copy.
#[test]
fn a_file_back_before_its_folder_is_written_keeps_its_entry() {
    for copy_elsewhere in [false, true] {
        let mut lib = Lib::new();
        lib.put("m/IMG_0010.JPG", "plain/IMG_0010.JPG");
        lib.put("m/IMG_0011.JPG", "plain/IMG_0011.JPG");
        lib.scan();
        let before = lib.resource_at("m/IMG_0010.JPG");
        if copy_elsewhere {
            // Same bytes in a folder walked and written before `m/`.
            lib.put("a/copy.jpg", "plain/IMG_0010.JPG");
        }
        let away = lib._state.path().join("away.jpg");
        let here = lib.root.join("m/IMG_0010.JPG");
        fs::rename(&here, &away).unwrap();
        let r = scan(
            &mut lib.store,
            std::slice::from_ref(&lib.root),
            &ScanOptions::default(),
            &mut |e| {
                if matches!(e, ferry_library::ScanEvent::Walked { .. }) {
                    fs::rename(&away, &here).unwrap();
                }
            },
        )
        .unwrap();
        assert_eq!(r.deleted_resources, 0, "copy elsewhere: {copy_elsewhere}");
        assert_eq!(r.moved_resources, 0, "copy elsewhere: {copy_elsewhere}");
        let after = lib.resource_at("m/IMG_0010.JPG");
        assert_eq!(after.id, before.id, "copy elsewhere: {copy_elsewhere}");
        if copy_elsewhere {
            assert_ne!(lib.resource_at("a/copy.jpg").id, before.id);
        }
    }
}
