//! A whole move over loopback TCP: bytes identical, identical entries carried once, compressed
//! entries smaller on the wire, progress reported, the install confirmed back to the sender.

mod common;

use common::*;
use ferry_faultproxy::FaultProxy;
use ferry_migrate::{MigrateError, Phase, Progress, ReceivedPackage, Receiver};
use tokio::sync::watch;

#[tokio::test]
async fn round_trip_over_loopback() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let staging = dst.path().join("staging");

    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let proxy = FaultProxy::start(receiver.addr()).await.unwrap();
    let (progress_tx, progress_rx) = watch::channel(Progress::default());
    let (recv_progress, recv_progress_rx) = watch::channel(Progress::default());
    let sender = spawn_send(
        proxy.addr(),
        receiver.code(),
        s.root.clone(),
        s.manifest.clone(),
        Some(progress_tx),
    );
    let session = receiver
        .receive(&staging, |p| {
            recv_progress.send_replace(p);
        })
        .await
        .unwrap();
    assert_eq!(session.package().manifest, s.manifest);
    assert_eq!(session.package().id(), s.manifest.id());
    let package = session.confirm_installed().await.unwrap();
    let outcome = sender.await.unwrap().unwrap();
    assert!(outcome.installed);

    // Identical entries travel once: five distinct contents of six entries.
    assert_eq!(s.manifest.entries.len(), 6);
    assert_eq!(outcome.sent_entries, 5);
    assert_eq!(outcome.skipped_entries, 0);
    assert_eq!(outcome.sent_bytes, s.manifest.total_bytes() - s.dup_size);
    // Compressed entries are smaller on the wire: everything crossed in less than the raw
    // distinct bytes minus most of the text.
    let on_wire = proxy.stats().bytes_to_server;
    assert!(on_wire >= outcome.wire_bytes);
    assert!(
        on_wire < outcome.sent_bytes - s.text_size * 9 / 10,
        "wire {on_wire}, raw {}",
        outcome.sent_bytes
    );
    assert!(on_wire > outcome.sent_bytes - s.text_size);

    // Progress on both sides ends complete.
    let p = *progress_rx.borrow();
    assert_eq!(p.phase, Phase::Installed);
    assert_eq!(p.done_bytes, s.manifest.total_bytes());
    assert_eq!(p.done_entries, 6);
    assert_eq!(p.wire_bytes, outcome.wire_bytes);
    let r = *recv_progress_rx.borrow();
    assert_eq!(r.phase, Phase::Verified);
    assert_eq!(r.done_bytes, r.total_bytes);

    // The staging folder holds the journal and reopens as the same package.
    assert_eq!(blobs(&staging).len(), 5);
    assert_blobs_sound(&staging);
    assert_eq!(ReceivedPackage::open(&staging).unwrap(), package);

    let installed = dst.path().join("installed");
    package.materialize(&installed).unwrap();
    assert_same_tree(&s.manifest, &s.root, &installed);
    for e in &s.manifest.entries {
        assert!(package.path_of(e).is_file());
    }
    // A second materialize into the same place refuses to overwrite.
    assert!(package.materialize(&installed).is_err());
    package.discard().unwrap();
    assert!(!staging.exists());
}

#[tokio::test]
async fn declined_install_is_reported_to_the_sender() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let sender = spawn_send(
        receiver.addr(),
        receiver.code(),
        s.root.clone(),
        s.manifest.clone(),
        None,
    );
    let session = receiver.receive(dst.path(), |_| {}).await.unwrap();
    session
        .decline("the person changed their mind")
        .await
        .unwrap();
    let outcome = sender.await.unwrap().unwrap();
    assert!(!outcome.installed);

    // Dropping the session without a word is a decline too.
    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let sender = spawn_send(
        receiver.addr(),
        receiver.code(),
        s.root.clone(),
        s.manifest.clone(),
        None,
    );
    let session = receiver.receive(dst.path(), |_| {}).await.unwrap();
    drop(session);
    let outcome = sender.await.unwrap().unwrap();
    assert!(!outcome.installed);
    // Everything was there already: the second move carried nothing.
    assert_eq!(outcome.sent_entries, 0);
    assert_eq!(outcome.skipped_entries, 5);
}

#[tokio::test]
async fn a_file_changed_after_the_manifest_is_refused() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    write(&s.root, b"state.sqlite", &noise(9, 300_000));
    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let sender = spawn_send(
        receiver.addr(),
        receiver.code(),
        s.root.clone(),
        s.manifest.clone(),
        None,
    );
    let got = receiver.receive(dst.path(), |_| {}).await;
    assert!(
        matches!(got, Err(MigrateError::PeerAborted { .. })),
        "{got:?}"
    );
    let sent = sender.await.unwrap();
    assert!(matches!(sent, Err(MigrateError::BadPackage(_))), "{sent:?}");
    assert_blobs_sound(dst.path());
    let state = &s
        .manifest
        .entries
        .iter()
        .find(|e| e.name == b"state.sqlite")
        .unwrap();
    assert!(!blobs(dst.path()).contains(&blake3::Hash::from(state.blake3).to_hex().to_string()));
}

#[test]
fn build_refuses_symlinks_and_names_are_bytes() {
    let src = tempfile::tempdir().unwrap();
    write(src.path(), b"a\xff/b", b"x");
    let m = ferry_migrate::PackageManifest::build(src.path(), serde_json::json!(null), |_| true)
        .unwrap();
    assert_eq!(m.entries[0].name, b"a\xff/b");
    let back = ferry_migrate::PackageManifest::from_json(m.to_json()).unwrap();
    assert_eq!(back, m);
    assert_eq!(
        ferry_migrate::PackageManifest::decode(&m.encode()).unwrap(),
        m
    );

    std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).unwrap();
    let err = ferry_migrate::PackageManifest::build(src.path(), serde_json::json!(null), |_| true);
    assert!(matches!(err, Err(MigrateError::BadPackage(_))), "{err:?}");
}

#[test]
fn the_id_ignores_meta_key_order_and_names_must_stay_inside() {
    let mut a = ferry_migrate::PackageManifest {
        format: ferry_migrate::FORMAT,
        entries: vec![],
        meta: serde_json::json!({"b": 1, "a": {"y": [1, 2], "x": "z"}}),
    };
    let b = ferry_migrate::PackageManifest {
        meta: serde_json::from_str(r#"{"a": {"x": "z", "y": [1, 2]}, "b": 1}"#).unwrap(),
        ..a.clone()
    };
    assert_eq!(a.id(), b.id());
    for bad in [
        &b"/etc/passwd"[..],
        b"../x",
        b"a/../../x",
        b"a//b",
        b"./a",
        b"",
    ] {
        a.entries = vec![ferry_migrate::Entry {
            name: bad.to_vec(),
            size: 0,
            blake3: *blake3::hash(b"").as_bytes(),
            compress: false,
        }];
        assert!(a.validate().is_err(), "{}", bad.escape_ascii());
        assert!(ferry_migrate::PackageManifest::decode(&a.encode()).is_err());
        let pkg = ReceivedPackage {
            manifest: a.clone(),
            staging: "/nonexistent".into(),
        };
        let dest = tempfile::tempdir().unwrap();
        assert!(pkg.materialize(dest.path()).is_err());
    }
}
