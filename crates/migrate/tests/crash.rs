//! Either side dies mid-transfer (its task dropped where it stands, a stale `.part` left as a
//! `kill -9` would): running both again resumes from the receiver's staging folder.

mod common;

use common::*;
use ferry_migrate::{MigrateError, Progress, Receiver};
use tokio::sync::watch;

#[tokio::test]
async fn the_receiver_dies_mid_transfer_then_resumes() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let manifest = many(src.path(), 100, 100_000);
    let staging = dst.path().join("staging");

    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let sender = spawn_send(
        receiver.addr(),
        receiver.code(),
        src.path().to_path_buf(),
        manifest.clone(),
        None,
    );
    let (progress, mut seen) = watch::channel(Progress::default());
    let st = staging.clone();
    let receiving = tokio::spawn(async move {
        receiver
            .receive(&st, move |p| {
                progress.send_replace(p);
            })
            .await
            .map(|_| ())
    });
    seen.wait_for(|p| p.done_entries >= 4).await.unwrap();
    receiving.abort();
    let _ = receiving.await;
    let sent = sender.await.unwrap();
    assert!(matches!(sent, Err(MigrateError::PeerGone)), "{sent:?}");

    let kept = blobs(&staging).len() as u64;
    assert!((4..100).contains(&kept), "{kept}");
    // What a kill -9 leaves: the entry being written, under its temporary name.
    let next = manifest
        .entries
        .iter()
        .map(|e| blake3::Hash::from(e.blake3).to_hex().to_string())
        .find(|h| !blobs(&staging).contains(h))
        .unwrap();
    std::fs::write(staging.join("blobs").join(format!("{next}.part")), b"half").unwrap();

    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let addr = receiver.addr();
    let (package, outcome) = full_move(&mut receiver, addr, &staging, src.path(), &manifest).await;
    // Entries being made durable when the task was dropped finish on their blocking threads:
    // they may be kept too. Nothing kept is sent again.
    assert!(outcome.skipped_entries >= kept, "{outcome:?}, {kept} kept");
    assert_eq!(outcome.sent_entries + outcome.skipped_entries, 100);
    assert_blobs_sound(&staging);
    assert!(!staging.join("blobs").join(format!("{next}.part")).exists());
    let out = dst.path().join("out");
    package.materialize(&out).unwrap();
    assert_same_tree(&manifest, src.path(), &out);
}

#[tokio::test]
async fn the_sender_dies_mid_transfer_then_resumes() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    // Larger than the socket buffers can hold, so the kill leaves entries unsent.
    let manifest = many(src.path(), 100, 200_000);
    let staging = dst.path().join("staging");

    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let (progress, mut seen) = watch::channel(Progress::default());
    let sender = spawn_send(
        receiver.addr(),
        receiver.code(),
        src.path().to_path_buf(),
        manifest.clone(),
        Some(progress),
    );
    let receiving = receiver.receive(&staging, |_| {});
    let killer = async {
        // The receiver acknowledged three entries: kill the sender where it stands.
        seen.wait_for(|p| p.done_entries >= 3).await.unwrap();
        sender.abort();
    };
    let (got, ()) = tokio::join!(receiving, killer);
    assert!(matches!(got, Err(MigrateError::PeerGone)), "{got:?}");
    let kept = blobs(&staging).len() as u64;
    assert!((3..100).contains(&kept), "{kept}");

    let mut receiver = Receiver::bind(loopback()).await.unwrap();
    let addr = receiver.addr();
    let (package, outcome) = full_move(&mut receiver, addr, &staging, src.path(), &manifest).await;
    assert_eq!(outcome.skipped_entries, kept);
    assert_eq!(outcome.sent_entries, 100 - kept);
    assert_eq!(package.manifest, manifest);
    assert_blobs_sound(&staging);
}

#[test]
fn a_manifest_round_trips_through_serde() {
    let src = tempfile::tempdir().unwrap();
    let s = sample(src.path());
    let json = serde_json::to_string(&s.manifest).unwrap();
    let back: ferry_migrate::PackageManifest = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s.manifest);
    // The recorded id guards the JSON form against edits.
    let edited = json.replace("old-phone", "new-phone");
    assert!(serde_json::from_str::<ferry_migrate::PackageManifest>(&edited).is_err());
}
