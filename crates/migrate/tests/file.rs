//! The move through a file: a round trip, a truncated file, a flipped byte anywhere, an import
//! that resumes, too little space.

mod common;

use common::*;
use ferry_migrate::{
    MigrateError, Phase, Progress, SpaceCheck, export_file, export_file_with, import_file,
    import_file_with,
};
use tokio::sync::watch;

#[test]
fn export_then_import_round_trip() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let file = dst.path().join("move.ferrypkg");
    let (tx, rx) = watch::channel(Progress::default());
    let size = export_file(&s.root, &s.manifest, &file, |p| {
        tx.send_replace(p);
    })
    .unwrap();
    assert_eq!(size, std::fs::metadata(&file).unwrap().len());
    assert_eq!(rx.borrow().phase, Phase::Verified);
    assert_eq!(rx.borrow().done_bytes, s.manifest.total_bytes());
    // Identical entries once, the text compressed.
    assert!(size < s.manifest.total_bytes() - s.dup_size - s.text_size * 9 / 10);
    // No temporary left beside it.
    assert_eq!(std::fs::read_dir(dst.path()).unwrap().count(), 1);

    let staging = dst.path().join("staging");
    let (tx, rx) = watch::channel(Progress::default());
    let package = import_file(&file, &staging, |p| {
        tx.send_replace(p);
    })
    .unwrap();
    assert_eq!(package.manifest, s.manifest);
    assert_eq!(rx.borrow().phase, Phase::Verified);
    assert_eq!(rx.borrow().wire_bytes, size);
    assert_eq!(rx.borrow().done_entries, 6);
    assert_blobs_sound(&staging);
    let out = dst.path().join("out");
    package.materialize(&out).unwrap();
    assert_same_tree(&s.manifest, &s.root, &out);
}

#[test]
fn a_truncated_file_is_refused() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let file = dst.path().join("move.ferrypkg");
    export_file(&s.root, &s.manifest, &file, |_| {}).unwrap();
    let whole = std::fs::read(&file).unwrap();
    for keep in [
        0,
        5,
        15,
        100,
        whole.len() / 2,
        whole.len() - 33,
        whole.len() - 1,
    ] {
        let cut = dst.path().join(format!("cut-{keep}"));
        std::fs::write(&cut, &whole[..keep]).unwrap();
        let staging = dst.path().join(format!("staging-{keep}"));
        let got = import_file(&cut, &staging, |_| {});
        assert!(
            matches!(got, Err(MigrateError::Truncated)),
            "kept {keep}: {got:?}"
        );
        assert_blobs_sound(&staging);
    }
}

#[test]
fn a_flipped_byte_anywhere_is_refused() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let file = dst.path().join("move.ferrypkg");
    export_file(&s.root, &s.manifest, &file, |_| {}).unwrap();
    let whole = std::fs::read(&file).unwrap();
    let n = whole.len();
    for at in [
        0,
        9,
        13,
        30,
        200,
        n / 4,
        n / 2,
        n * 3 / 4,
        n - 40,
        n - 33,
        n - 1,
    ] {
        let mut bad = whole.clone();
        bad[at] ^= 1;
        let damaged = dst.path().join(format!("flip-{at}"));
        std::fs::write(&damaged, &bad).unwrap();
        let staging = dst.path().join(format!("staging-{at}"));
        let got = import_file(&damaged, &staging, |_| {});
        // A flipped length can make the file look short, or cut a frame: both are refusals.
        assert!(
            matches!(
                got,
                Err(MigrateError::Tampered { .. }
                    | MigrateError::Truncated
                    | MigrateError::Protocol(_))
            ),
            "flip at {at}: {got:?}"
        );
        assert_blobs_sound(&staging);
    }
}

#[test]
fn an_import_resumes_without_writing_verified_entries_again() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let manifest = many(src.path(), 8, 50_000);
    let file = dst.path().join("move.ferrypkg");
    export_file(src.path(), &manifest, &file, |_| {}).unwrap();
    let whole = std::fs::read(&file).unwrap();
    let staging = dst.path().join("staging");

    // The file was being copied when the import started: it stops at the end of what exists.
    let partial = dst.path().join("partial");
    std::fs::write(&partial, &whole[..whole.len() / 2]).unwrap();
    let got = import_file(&partial, &staging, |_| {});
    assert!(matches!(got, Err(MigrateError::Truncated)), "{got:?}");
    let kept = blobs(&staging);
    assert_eq!(kept.len(), 3);
    let stamps: Vec<_> = kept
        .iter()
        .map(|b| {
            std::fs::metadata(staging.join("blobs").join(b))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    let inodes: Vec<_> = kept
        .iter()
        .map(|b| {
            std::os::unix::fs::MetadataExt::ino(
                &std::fs::metadata(staging.join("blobs").join(b)).unwrap(),
            )
        })
        .collect();

    let (tx, rx) = watch::channel(Progress::default());
    let package = import_file(&file, &staging, |p| {
        tx.send_replace(p);
    })
    .unwrap();
    assert_eq!(rx.borrow().done_entries, 8);
    // The blobs verified before were kept as they were, not written again.
    for (i, b) in kept.iter().enumerate() {
        let m = std::fs::metadata(staging.join("blobs").join(b)).unwrap();
        assert_eq!(m.modified().unwrap(), stamps[i]);
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&m), inodes[i]);
    }
    let out = dst.path().join("out");
    package.materialize(&out).unwrap();
    assert_same_tree(&manifest, src.path(), &out);
}

#[test]
fn too_little_space_is_refused_first() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let file = dst.path().join("move.ferrypkg");
    let got = export_file_with(
        &s.root,
        &s.manifest,
        &file,
        |_| {},
        &SpaceCheck::fixed(1000),
    );
    assert!(
        matches!(got, Err(MigrateError::NoSpace { have: 1000, .. })),
        "{got:?}"
    );
    assert_eq!(std::fs::read_dir(dst.path()).unwrap().count(), 0);

    export_file(&s.root, &s.manifest, &file, |_| {}).unwrap();
    let staging = dst.path().join("staging");
    let got = import_file_with(&file, &staging, |_| {}, &SpaceCheck::fixed(1000));
    let need = s.manifest.total_bytes() - s.dup_size;
    assert!(
        matches!(got, Err(MigrateError::NoSpace { need: n, have: 1000 }) if n == need),
        "{got:?}"
    );
    assert!(blobs(&staging).is_empty());
}

#[test]
fn the_os_reports_free_space() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ferry_migrate::free_bytes(dir.path()).unwrap() > 0);
}
