//! Uploads through a fault-injecting proxy: cuts, resets, stalls, refusals, slow links, and a
//! server restart. Every transfer completes with identical bytes, and a cut costs at most one
//! chunk of re-sent bytes (resumable protocols).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::*;
use ferry_core::job::JobState;
use ferry_core::retry::Failure;
use ferry_faultproxy::{Fault, FaultProxy, Plan};
use ferry_store::Store;
use ferry_transfer::{
    Protocol, SqliteSessionStore, TransferConfig, UploadError, UploadJob, UploadSession,
    UploadSessionStore, Uploader,
};

const CHUNK: u64 = 64 << 10;
const SIZE: usize = 6 * CHUNK as usize + 17;
/// Request and response headers of one upload (a dozen requests), generously.
const HEADER_SLACK_BYTES: u64 = 24 << 10;

async fn through_fault(prefer: Protocol, fault: Fault, seed: u8) {
    let srv = server().await;
    let proxy = FaultProxy::start(srv.addr()).await.unwrap();
    proxy.set(Plan::once(fault));
    let files = tempfile::tempdir().unwrap();
    let rig = rig(
        test_config(Some(prefer), CHUNK),
        &format!("http://{}", proxy.addr()),
    );
    let data = bytes(SIZE, seed);
    let path = write_file(files.path(), "f", &data);
    let id = rig.add_job(
        EXT,
        &path,
        hash(&data),
        destination(proxy.addr()),
        BTreeMap::new(),
    );
    let report = run(&rig).await;
    let job = rig.job(id);
    assert_eq!(
        job.state,
        JobState::Succeeded,
        "{prefer:?} {fault:?}: {job:?}"
    );
    assert_eq!(
        srv.object(&hex(&data)).await.as_deref(),
        Some(data.as_slice()),
        "{prefer:?} {fault:?}"
    );
    let stats = proxy.stats();
    assert!(stats.faults_applied >= 1, "{fault:?} was never applied");
    assert!(
        report.retried >= 1,
        "{prefer:?} {fault:?}: no retry after the fault"
    );
    let sent = stats.bytes_to_server;
    let bound = match prefer {
        Protocol::Plain => 2 * SIZE as u64 + HEADER_SLACK_BYTES,
        _ => SIZE as u64 + CHUNK + HEADER_SLACK_BYTES,
    };
    assert!(
        sent <= bound,
        "{prefer:?} {fault:?}: sent {sent} bytes for a {SIZE}-byte file (bound {bound})"
    );
}

/// Faults that cut the third chunk in its middle, and faults at connection start.
fn faults() -> Vec<Fault> {
    let mid = 2 * CHUNK + CHUNK / 2;
    vec![
        Fault::ResetAfter { bytes: mid },
        Fault::CloseAfter { bytes: mid },
        Fault::StallAfter { bytes: mid },
        Fault::AcceptThenClose,
        Fault::AcceptThenReset,
    ]
}

#[tokio::test]
async fn ietf_survives_every_fault() {
    for (i, f) in faults().into_iter().enumerate() {
        through_fault(Protocol::Ietf, f, 20 + i as u8).await;
    }
}

#[tokio::test]
async fn tus_survives_every_fault() {
    for (i, f) in faults().into_iter().enumerate() {
        through_fault(Protocol::Tus, f, 30 + i as u8).await;
    }
}

#[tokio::test]
async fn plain_restarts_after_a_cut() {
    through_fault(
        Protocol::Plain,
        Fault::ResetAfter {
            bytes: SIZE as u64 / 2,
        },
        50,
    )
    .await;
}

#[tokio::test]
async fn a_slow_link_completes() {
    let srv = server().await;
    let proxy = FaultProxy::start(srv.addr()).await.unwrap();
    proxy.set(Plan::always(Fault::Trickle {
        bytes_per_s: 4 << 20,
    }));
    let files = tempfile::tempdir().unwrap();
    let rig = rig(
        test_config(Some(Protocol::Ietf), CHUNK),
        &format!("http://{}", proxy.addr()),
    );
    let data = bytes(SIZE, 55);
    let path = write_file(files.path(), "slow", &data);
    let id = rig.add_job(
        EXT,
        &path,
        hash(&data),
        destination(proxy.addr()),
        BTreeMap::new(),
    );
    let report = run(&rig).await;
    assert_eq!(rig.job(id).state, JobState::Succeeded);
    assert_eq!(report.retried, 0, "a slow but moving link is not a stall");
    assert_eq!(
        srv.object(&hex(&data)).await.as_deref(),
        Some(data.as_slice())
    );
}

/// A cut, then the server restarts and this process "restarts" (new uploader, store reopened
/// from disk): the upload resumes from the server's offset, not from zero.
#[tokio::test]
async fn resumes_after_server_and_client_restart() {
    for (i, prefer) in [Protocol::Ietf, Protocol::Tus].into_iter().enumerate() {
        let srv_dir = tempfile::tempdir().unwrap();
        let mut config = ferry_server::Config::new(srv_dir.path(), "127.0.0.1:0".parse().unwrap());
        config.open = true;
        let handle = ferry_server::Server::start(config.clone()).await.unwrap();
        let server_addr = handle.local_addr();
        let proxy = FaultProxy::start(server_addr).await.unwrap();
        let mid = 3 * CHUNK + CHUNK / 3;
        proxy.set(Plan::once(Fault::ResetAfter { bytes: mid }));

        let files = tempfile::tempdir().unwrap();
        let data = bytes(SIZE, 60 + i as u8);
        let path = write_file(files.path(), "r", &data);
        let db = files.path().join("ferry.db");
        let dest = destination(proxy.addr());
        let meta = BTreeMap::new();
        let job = UploadJob {
            job_id: uuid::Uuid::now_v7(),
            destination: &dest,
            metadata: &meta,
            source_path: &path,
            pinned_blake3: hash(&data),
        };
        let transfer = TransferConfig {
            chunk_cap_bytes: CHUNK,
            prefer: Some(prefer),
            ..TransferConfig::default()
        };

        {
            let store = Arc::new(Mutex::new(Store::open(&db).unwrap()));
            let sessions = SqliteSessionStore::new(store);
            let uploader = Uploader::new(transfer.clone()).unwrap();
            let mut session = UploadSession::new(job.job_id);
            let err = uploader
                .upload(&job, &mut session, &sessions)
                .await
                .unwrap_err();
            match err {
                UploadError::Failed(f) => assert_eq!(f.failure, Failure::ConnectionLost, "{f}"),
                other => panic!("{other}"),
            }
            let saved = sessions.load(job.job_id).unwrap().unwrap();
            assert!(saved.upload_url.is_some());
            assert!(
                saved.offset_bytes >= 2 * CHUNK,
                "acknowledged chunks are saved: {saved:?}"
            );
        }
        // The server goes down and comes back on the same address and data.
        handle.shutdown().await;
        let mut config2 = config.clone();
        config2.listen = server_addr;
        let handle2 = ferry_server::Server::start(config2).await.unwrap();

        let store = Arc::new(Mutex::new(Store::open(&db).unwrap()));
        let sessions = SqliteSessionStore::new(store);
        let mut session = sessions.load(job.job_id).unwrap().unwrap();
        let uploader = Uploader::new(transfer).unwrap();
        let d = uploader
            .upload(&job, &mut session, &sessions)
            .await
            .unwrap();
        assert_eq!(d.protocol, prefer);
        let r = reqwest::get(format!("{}/v1/objects/{}", handle2.base_url(), hex(&data)))
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
        let sent = proxy.stats().bytes_to_server;
        assert!(
            sent <= SIZE as u64 + CHUNK + HEADER_SLACK_BYTES,
            "{prefer:?}: sent {sent} for {SIZE}"
        );
        handle2.shutdown().await;
    }
}
