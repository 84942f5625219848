//! A file that changed is never completed on the server, whenever it changed: before the
//! first byte, between attempts, or while an attempt was sending. To a server that checks the
//! pinned BLAKE3 (ferry-server) the file goes without a pre-pass and the server refuses a
//! changed one; to others, nothing that would complete an upload is sent before the pre-pass
//! ends.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use ferry_core::job::JobState;
use ferry_core::retry::Failure;
use ferry_faultproxy::{Fault, FaultProxy, Plan};
use ferry_transfer::{
    MemorySessionStore, Protocol, TransferConfig, UploadError, UploadJob, UploadSession, Uploader,
};

const CHUNK: u64 = 16 << 10;

#[tokio::test]
async fn changed_before_send_fails_without_sending() {
    let srv = server().await;
    let proxy = FaultProxy::start(srv.addr()).await.unwrap();
    let files = tempfile::tempdir().unwrap();
    for (i, p) in [Protocol::Ietf, Protocol::Tus, Protocol::Plain]
        .into_iter()
        .enumerate()
    {
        let rig = rig(
            test_config(Some(p), CHUNK),
            &format!("http://{}", proxy.addr()),
        );
        // Three whole chunks and a last one of 10,848 bytes.
        let old = bytes(60_000, 80 + i as u8);
        let path = write_file(files.path(), &format!("c{i}"), &old);
        let id = rig.add_job(
            EXT,
            &path,
            hash(&old),
            destination(proxy.addr()),
            BTreeMap::new(),
        );
        let new = bytes(60_000, 90 + i as u8);
        std::fs::write(&path, &new).unwrap();
        let sent_before = proxy.stats().bytes_to_server;
        let report = run(&rig).await;
        let job = rig.job(id);
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(
            job.error.as_ref().map(|e| e.as_str()),
            Some("resource_changed")
        );
        assert_eq!(report.retried, 0, "a changed file is not retried");
        let sent = proxy.stats().bytes_to_server - sent_before;
        if p == Protocol::Tus {
            // tus cannot carry the pinned BLAKE3, so the pre-pass runs first: at most the
            // OPTIONS preflight goes out, no file byte.
            assert!(
                sent <= 100,
                "{p:?}: nothing but a preflight may be sent ({sent} bytes)"
            );
        } else {
            // ferry-server asks for the BLAKE3 and checks it: the file is sent without a
            // pre-pass, the server refuses bytes that are not the job's, and the uploader,
            // reading the file once more, finds it changed.
            assert!(sent >= new.len() as u64, "{p:?}: sent {sent} bytes");
        }
        assert_eq!(srv.object(&hex(&old)).await, None);
        assert_eq!(srv.object(&hex(&new)).await, None);
    }
}

#[tokio::test]
async fn missing_file_fails_as_missing() {
    let srv = server().await;
    let files = tempfile::tempdir().unwrap();
    let rig = rig(test_config(None, CHUNK), &srv.handle.base_url());
    let data = bytes(10, 1);
    let path = write_file(files.path(), "gone", &data);
    let id = rig.add_job(
        EXT,
        &path,
        hash(&data),
        destination(srv.addr()),
        BTreeMap::new(),
    );
    std::fs::remove_file(&path).unwrap();
    run(&rig).await;
    let job = rig.job(id);
    assert_eq!(
        job.error.as_ref().map(|e| e.as_str()),
        Some("resource_missing")
    );
}

/// Attempt 1 is cut mid-upload; the file changes; attempt 2 must refuse, and the half upload
/// is removed from the server.
#[tokio::test]
async fn changed_between_attempts_is_refused_and_the_partial_upload_dropped() {
    for (i, prefer) in [Protocol::Ietf, Protocol::Tus].into_iter().enumerate() {
        let srv = server().await;
        let proxy = FaultProxy::start(srv.addr()).await.unwrap();
        proxy.set(Plan::once(Fault::ResetAfter { bytes: 3 * CHUNK }));
        let files = tempfile::tempdir().unwrap();
        let old = bytes(8 * CHUNK as usize, 110 + i as u8);
        let path = write_file(files.path(), "m", &old);
        let dest = destination(proxy.addr());
        let meta = BTreeMap::new();
        let job = UploadJob {
            job_id: uuid::Uuid::now_v7(),
            destination: &dest,
            metadata: &meta,
            source_path: &path,
            pinned_blake3: hash(&old),
        };
        let uploader = Uploader::new(TransferConfig {
            chunk_cap_bytes: CHUNK,
            prefer: Some(prefer),
            ..TransferConfig::default()
        })
        .unwrap();
        let sessions = MemorySessionStore::new();
        let mut session = UploadSession::new(job.job_id);
        let first = uploader.upload(&job, &mut session, &sessions).await;
        assert!(
            matches!(first, Err(UploadError::Failed(ref f)) if f.failure == Failure::ConnectionLost),
            "{first:?}"
        );
        let upload_url = session.upload_url.clone().expect("upload created");
        assert!(session.offset_bytes > 0);

        let new = bytes(8 * CHUNK as usize, 120 + i as u8);
        std::fs::write(&path, &new).unwrap();
        let second = uploader.upload(&job, &mut session, &sessions).await;
        assert!(
            matches!(second, Err(UploadError::Failed(ref f)) if f.failure == Failure::ResourceChanged),
            "{second:?}"
        );
        assert_eq!(session.upload_url, None);
        assert_eq!(srv.object(&hex(&old)).await, None);
        assert_eq!(srv.object(&hex(&new)).await, None);
        // The partial upload was terminated.
        let direct = upload_url.replace(&proxy.addr().to_string(), &srv.addr().to_string());
        let head = reqwest::Client::new()
            .head(direct)
            .header("tus-resumable", "1.0.0")
            .send()
            .await
            .unwrap();
        assert!(
            matches!(head.status().as_u16(), 404 | 410),
            "{prefer:?}: {}",
            head.status()
        );
    }
}

/// The file is rewritten while an attempt is sending its middle chunks: the stamp check before
/// the final chunk refuses to complete it.
#[tokio::test]
async fn changed_during_an_attempt_is_never_completed() {
    for (i, prefer) in [Protocol::Ietf, Protocol::Tus].into_iter().enumerate() {
        let srv = server().await;
        let proxy = FaultProxy::start(srv.addr()).await.unwrap();
        // Slow enough that the test sees the upload in progress.
        proxy.set(Plan::always(Fault::Trickle {
            bytes_per_s: 256 << 10,
        }));
        let files = tempfile::tempdir().unwrap();
        let mut config = test_config(Some(prefer), CHUNK);
        config.transfer.idle_timeout = Duration::from_secs(10);
        let rig = rig(config, &format!("http://{}", proxy.addr()));
        let size = 24 * CHUNK as usize;
        let old = bytes(size, 130 + i as u8);
        let path = write_file(files.path(), "w", &old);
        let id = rig.add_job(
            EXT,
            &path,
            hash(&old),
            destination(proxy.addr()),
            BTreeMap::new(),
        );
        let new = bytes(size, 140 + i as u8);
        let watcher = async {
            // Wait (by condition, not by time) until two chunks have gone out, then rewrite.
            while proxy.stats().bytes_to_server < 2 * CHUNK {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            std::fs::write(&path, &new).unwrap();
        };
        let (report, ()) = tokio::join!(run(&rig), watcher);
        let job = rig.job(id);
        assert_eq!(job.state, JobState::Failed, "{prefer:?}: {report:?}");
        assert_eq!(
            job.error.as_ref().map(|e| e.as_str()),
            Some("resource_changed"),
            "{prefer:?}"
        );
        assert!(
            proxy.stats().bytes_to_server < size as u64,
            "{prefer:?}: the final chunk was never sent"
        );
        assert_eq!(srv.object(&hex(&old)).await, None);
        assert_eq!(srv.object(&hex(&new)).await, None);
    }
}

/// A middlebox flips one bit of the body: ferry-server, holding the pinned BLAKE3 from the
/// creation, refuses to make an object of it; the uploader finds its file unchanged, so the
/// bytes were damaged on the way, and sends them again. One retry, then the right object.
#[tokio::test]
async fn bytes_damaged_on_the_way_are_refused_by_the_server_and_sent_again() {
    for (i, prefer) in [Protocol::Ietf, Protocol::Plain].into_iter().enumerate() {
        let srv = server().await;
        let proxy = FaultProxy::start(srv.addr()).await.unwrap();
        // Past the request head, inside the body (one chunk: the creation carries it all).
        proxy.set(Plan::once(Fault::FlipAfter { bytes: 200_000 }));
        let files = tempfile::tempdir().unwrap();
        let rig = rig(
            test_config(Some(prefer), 4 << 20),
            &format!("http://{}", proxy.addr()),
        );
        let data = bytes(1_000_000, 150 + i as u8);
        let path = write_file(files.path(), "d", &data);
        let id = rig.add_job(
            EXT,
            &path,
            hash(&data),
            destination(proxy.addr()),
            BTreeMap::new(),
        );
        let report = run(&rig).await;
        assert_eq!(proxy.stats().faults_applied, 1, "{prefer:?}");
        assert_eq!(report.retried, 1, "{prefer:?}: {report:?}");
        assert_eq!(rig.job(id).state, JobState::Succeeded, "{prefer:?}");
        assert_eq!(srv.object(&hex(&data)).await.as_deref(), Some(&data[..]));
        // Where in the body the flip landed depends on the head's length: no object but ours.
        assert_eq!(srv.object_count(), 1, "{prefer:?}");
    }
}

/// The file is rewritten while its only chunk is on the wire, after the last stamp check: the
/// bytes the server got are a mix, which it refuses (they break the pinned BLAKE3); the
/// uploader reads its file again, finds it changed, and fails the job without a retry.
#[tokio::test]
async fn changed_while_its_only_chunk_is_sent_is_refused_by_the_server() {
    let srv = server().await;
    let proxy = FaultProxy::start(srv.addr()).await.unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut config = test_config(Some(Protocol::Ietf), 4 << 20);
    // The cap paces the file's reads (a second's burst, then blocks of 128 KiB): what is read
    // after the rewrite below is the new bytes.
    config.transfer.max_bytes_per_s = Some(1 << 20);
    let rig = rig(config, &format!("http://{}", proxy.addr()));
    let size = 3 << 20;
    let old = bytes(size, 160);
    let path = write_file(files.path(), "w", &old);
    let id = rig.add_job(
        EXT,
        &path,
        hash(&old),
        destination(proxy.addr()),
        BTreeMap::new(),
    );
    let new = bytes(size, 161);
    let watcher = async {
        // Once the body has started (by condition, not by time), rewrite the file in place:
        // the same size, new bytes, so the reader goes on with the new ones.
        while proxy.stats().bytes_to_server < 64 << 10 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, &new).unwrap();
        f.sync_all().unwrap();
    };
    let (report, ()) = tokio::join!(run(&rig), watcher);
    let job = rig.job(id);
    assert_eq!(job.state, JobState::Failed, "{report:?}");
    assert_eq!(
        job.error.as_ref().map(|e| e.as_str()),
        Some("resource_changed")
    );
    assert_eq!(report.retried, 0);
    assert!(
        proxy.stats().bytes_to_server >= size as u64,
        "the whole body went out before the server judged it"
    );
    assert_eq!(srv.object_count(), 0, "no object of a mix");
}
