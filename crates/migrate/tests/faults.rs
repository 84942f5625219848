//! The link misbehaves: bytes flipped in transit, the connection cut mid-transfer, too little
//! space. Errors are typed, nothing unverified is kept, and a resumed move re-sends at most the
//! entry that was in flight.

mod common;

use common::*;
use ferry_faultproxy::{Fault, FaultProxy, Plan};
use ferry_migrate::{MigrateError, Progress, Receiver, SpaceCheck};
use tokio::sync::watch;

/// Client→server bytes of a clean move of `manifest` through a proxy (handshake included).
async fn clean_wire(root: &std::path::Path, manifest: &ferry_migrate::PackageManifest) -> u64 {
    let dst = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let proxy = FaultProxy::start(receiver.addr()).await.unwrap();
    full_move(&mut receiver, proxy.addr(), dst.path(), root, manifest).await;
    proxy.stats().bytes_to_server
}

#[tokio::test]
async fn flipped_bytes_are_caught_and_nothing_damaged_is_kept() {
    let src = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let total = clean_wire(&s.root, &s.manifest).await;

    // 46 bytes of hello (its SPAKE2 message from 11), then the Noise handshake to 96, then the
    // encrypted stream: manifest, entries.
    let mut offsets = vec![20, 60, 120, 400, 2_000];
    offsets.extend([total / 5, total / 3, total / 2, total * 3 / 4, total - 200]);
    for off in offsets {
        let dst = tempfile::tempdir().unwrap();
        let mut receiver = Receiver::bind(loopback()).await.unwrap();
        let proxy = FaultProxy::start(receiver.addr()).await.unwrap();
        proxy.set(Plan::once(Fault::FlipAfter { bytes: off }));
        let sender = spawn_send(
            proxy.addr(),
            receiver.code(),
            s.root.clone(),
            s.manifest.clone(),
            None,
        );
        let got = receiver.receive(dst.path(), |_| {}).await;
        let sent = sender.await.unwrap();
        if off < 96 {
            assert!(
                matches!(got, Err(MigrateError::WrongCode)),
                "at {off}: {got:?}"
            );
            assert!(
                matches!(sent, Err(MigrateError::WrongCode)),
                "at {off}: {sent:?}"
            );
        } else {
            assert!(
                matches!(got, Err(MigrateError::Tampered { .. })),
                "at {off}: {got:?}"
            );
            assert!(sent.is_err(), "at {off}: the sender succeeded");
        }
        assert_eq!(proxy.stats().faults_applied, 1);
        assert_blobs_sound(dst.path());
        assert!(
            blobs(dst.path()).len() < 5,
            "at {off}: everything arrived regardless"
        );
    }
}

#[tokio::test]
async fn a_damaged_hello_is_not_an_attempt() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let proxy = FaultProxy::start(receiver.addr()).await.unwrap();
    // The magic: the receiver takes it for a stray connection and keeps its code.
    proxy.set(Plan::once(Fault::FlipAfter { bytes: 4 }));
    let addr = proxy.addr();
    let code = receiver.code();
    let (root, manifest) = (s.root.clone(), s.manifest.clone());
    let sender = tokio::spawn(async move {
        let first = ferry_migrate::send(&root, &manifest, &addr.to_string(), &code, |_| {}).await;
        let second = ferry_migrate::send(&root, &manifest, &addr.to_string(), &code, |_| {}).await;
        (first, second)
    });
    let session = receiver.receive(dst.path(), |_| {}).await.unwrap();
    session.confirm_installed().await.unwrap();
    let (first, second) = sender.await.unwrap();
    assert!(matches!(first, Err(MigrateError::PeerGone)), "{first:?}");
    assert!(second.unwrap().installed);
}

#[tokio::test]
async fn cut_mid_transfer_then_resume_resends_at_most_one_entry() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    const SIZE: usize = 100_000;
    let manifest = many(src.path(), 12, SIZE);
    let total = clean_wire(src.path(), &manifest).await;
    let staging = dst.path().join("staging");

    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let proxy = FaultProxy::start(receiver.addr()).await.unwrap();
    proxy.set(Plan::once(Fault::CloseAfter { bytes: 550_000 }));
    let sender = spawn_send(
        proxy.addr(),
        receiver.code(),
        src.path().to_path_buf(),
        manifest.clone(),
        None,
    );
    // What the receiver read, in all and up to its last verified entry.
    let (seen_tx, seen) = watch::channel((0u64, 0u64, 0u64));
    let got = receiver
        .receive(&staging, |p: Progress| {
            seen_tx.send_modify(|(read, at_ack, done)| {
                *read = p.wire_bytes;
                if p.done_entries > *done {
                    *done = p.done_entries;
                    *at_ack = p.wire_bytes;
                }
            });
        })
        .await;
    let sent = sender.await.unwrap();
    assert!(matches!(got, Err(MigrateError::PeerGone)), "{got:?}");
    assert!(got.unwrap_err().is_resumable());
    assert!(sent.is_err());
    let (read, at_last_ack, _) = *seen.borrow();
    // Every entry that crossed whole before the cut is verified and kept (the proxy's own
    // close may lose a little of what it forwarded, so count what the receiver read).
    let kept = blobs(&staging).len() as u64;
    assert!(kept >= 3, "entries kept after the cut: {kept}");
    assert!(read - at_last_ack < (SIZE + 4096) as u64);
    assert_blobs_sound(&staging);

    // Run both again: a new code, the same staging folder and package.
    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let proxy2 = FaultProxy::start(receiver.addr()).await.unwrap();
    let (package, outcome) = full_move(
        &mut receiver,
        proxy2.addr(),
        &staging,
        src.path(),
        &manifest,
    )
    .await;
    assert!(outcome.installed);
    assert_eq!(outcome.skipped_entries, kept);
    assert_eq!(outcome.sent_entries, 12 - kept);
    // Nothing verified before the cut crossed again; what crossed twice is at most the entry
    // in flight.
    let resumed = proxy2.stats().bytes_to_server;
    assert!(
        at_last_ack + resumed <= total + 4096,
        "verified-before-cut {at_last_ack} + resumed {resumed} vs clean {total}"
    );
    assert!(
        read + resumed <= total + (SIZE + 4096) as u64,
        "read-before-cut {read} + resumed {resumed} vs clean {total}"
    );
    let out = dst.path().join("out");
    package.materialize(&out).unwrap();
    assert_same_tree(&manifest, src.path(), &out);
}

#[tokio::test]
async fn a_different_package_replaces_an_unfinished_one_keeping_shared_blobs() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let manifest = many(src.path(), 6, 50_000);
    let staging = dst.path().join("staging");
    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let proxy = FaultProxy::start(receiver.addr()).await.unwrap();
    proxy.set(Plan::once(Fault::CloseAfter { bytes: 160_000 }));
    let sender = spawn_send(
        proxy.addr(),
        receiver.code(),
        src.path().to_path_buf(),
        manifest.clone(),
        None,
    );
    assert!(receiver.receive(&staging, |_| {}).await.is_err());
    assert!(sender.await.unwrap().is_err());
    let before = blobs(&staging);
    assert_eq!(before.len(), 3);

    // The sender's package changed: part/000.bin is gone, a new file came.
    std::fs::remove_file(src.path().join("part/000.bin")).unwrap();
    write(src.path(), b"new.bin", &noise(7, 10_000));
    let changed =
        ferry_migrate::PackageManifest::build(src.path(), serde_json::json!({}), |_| false)
            .unwrap();
    let gone = blake3::Hash::from(manifest.entries[0].blake3)
        .to_hex()
        .to_string();
    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let addr = receiver.addr();
    let (package, outcome) = full_move(&mut receiver, addr, &staging, src.path(), &changed).await;
    assert_eq!(outcome.skipped_entries, 2);
    assert_eq!(outcome.sent_entries, 4);
    assert!(!blobs(&staging).contains(&gone));
    assert_eq!(blobs(&staging).len(), 6);
    assert_eq!(package.manifest, changed);
}

#[tokio::test]
async fn too_little_space_is_refused_before_anything_moves() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let mut receiver = Receiver::bind(loopback())
        .await
        .unwrap()
        .with_space_check(SpaceCheck::fixed(100_000));
    let sender = spawn_send(
        receiver.addr(),
        receiver.code(),
        s.root.clone(),
        s.manifest.clone(),
        None,
    );
    let need = s.manifest.total_bytes() - s.dup_size;
    let got = receiver.receive(dst.path(), |_| {}).await;
    assert!(
        matches!(got, Err(MigrateError::NoSpace { need: n, have: 100_000 }) if n == need),
        "{got:?}"
    );
    let sent = sender.await.unwrap();
    assert!(
        matches!(sent, Err(MigrateError::NoSpace { need: n, have: 100_000 }) if n == need),
        "{sent:?}"
    );
    assert!(blobs(dst.path()).is_empty());
}
