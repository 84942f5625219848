//! End to end against an in-process ferry-server: every protocol, sizes around the chunk
//! boundaries, the server holding identical bytes, metadata arriving with them.

mod common;

use std::collections::BTreeMap;

use common::*;
use ferry_core::job::JobState;
use ferry_transfer::Protocol;

const CHUNK: u64 = 64 << 10;

async fn upload_sizes(prefer: Protocol, seed: u8) {
    let srv = server().await;
    let files = tempfile::tempdir().unwrap();
    let rig = rig(test_config(Some(prefer), CHUNK), &srv.handle.base_url());
    let sizes = [
        0usize,
        1,
        CHUNK as usize - 1,
        CHUNK as usize,
        CHUNK as usize + 1,
        5 * CHUNK as usize + 123,
    ];
    let mut jobs = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let data = bytes(*size, seed.wrapping_add(i as u8));
        let path = write_file(files.path(), &format!("f{i}"), &data);
        let id = rig.add_job(
            EXT,
            &path,
            hash(&data),
            destination(srv.addr()),
            BTreeMap::new(),
        );
        jobs.push((id, data));
    }
    let report = run(&rig).await;
    assert_eq!(report.succeeded as usize, sizes.len(), "{report:?}");
    for (id, data) in jobs {
        let job = rig.job(id);
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(header(&job, "ferry-blake3"), Some(hex(&data).as_str()));
        // The final answer shows which protocol carried the bytes.
        let spoke = match (
            header(&job, "tus-resumable"),
            header(&job, "upload-complete"),
        ) {
            (Some(_), _) => Protocol::Tus,
            (None, Some("?1")) => Protocol::Ietf,
            _ => Protocol::Plain,
        };
        assert_eq!(spoke, prefer, "{:?}", job.response_headers);
        assert_eq!(
            srv.object(&hex(&data)).await.as_deref(),
            Some(data.as_slice()),
            "{} bytes",
            data.len()
        );
        let receipts = srv.receipts(&hex(&data)).await;
        let n = receipts["receipts"].as_array().unwrap().len();
        assert_eq!(
            n,
            1,
            "exactly one upload completed for {} bytes",
            data.len()
        );
    }
}

#[tokio::test]
async fn ietf_uploads_every_size_intact() {
    upload_sizes(Protocol::Ietf, 10).await;
}

#[tokio::test]
async fn tus_uploads_every_size_intact() {
    upload_sizes(Protocol::Tus, 40).await;
}

#[tokio::test]
async fn plain_uploads_every_size_intact() {
    upload_sizes(Protocol::Plain, 70).await;
}

#[tokio::test]
async fn metadata_travels_with_the_bytes_in_every_protocol() {
    let srv = server().await;
    let files = tempfile::tempdir().unwrap();
    for (i, p) in [Protocol::Ietf, Protocol::Tus, Protocol::Plain]
        .into_iter()
        .enumerate()
    {
        let rig = rig(test_config(Some(p), CHUNK), &srv.handle.base_url());
        let data = bytes(3 * CHUNK as usize, 100 + i as u8);
        let path = write_file(files.path(), &format!("m{i}"), &data);
        let mut meta = BTreeMap::new();
        meta.insert("asset_id".to_string(), format!("asset-{i}"));
        meta.insert("file_name".to_string(), "IMG_0001 é.HEIC".to_string());
        let id = rig.add_job(EXT, &path, hash(&data), destination(srv.addr()), meta);
        run(&rig).await;
        assert_eq!(rig.job(id).state, JobState::Succeeded);
        let r = srv.receipts(&hex(&data)).await;
        let m = &r["receipts"][0]["metadata"];
        assert_eq!(m["asset_id"], format!("asset-{i}"), "{p:?}: {r}");
        assert_eq!(m["file_name"], "IMG_0001 é.HEIC", "{p:?}");
    }
}

#[tokio::test]
async fn server_limits_bound_the_chunks_and_the_size() {
    // max-append-size below the client's cap: the draft must honour it.
    let srv = server_with(|c| {
        c.limits.max_append_size_bytes = 10_000;
        c.limits.max_size_bytes = 100_000;
    })
    .await;
    let files = tempfile::tempdir().unwrap();
    let rig = rig(
        test_config(Some(Protocol::Ietf), CHUNK),
        &srv.handle.base_url(),
    );
    let data = bytes(95_000, 7);
    let path = write_file(files.path(), "big", &data);
    let ok = rig.add_job(
        EXT,
        &path,
        hash(&data),
        destination(srv.addr()),
        BTreeMap::new(),
    );
    let too_big = bytes(100_001, 8);
    let path2 = write_file(files.path(), "too-big", &too_big);
    let refused = rig.add_job(
        EXT,
        &path2,
        hash(&too_big),
        destination(srv.addr()),
        BTreeMap::new(),
    );
    run(&rig).await;
    assert_eq!(rig.job(ok).state, JobState::Succeeded);
    assert_eq!(
        srv.object(&hex(&data)).await.as_deref(),
        Some(data.as_slice())
    );
    let j = rig.job(refused);
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.error.as_ref().map(|e| e.as_str()), Some("client_error"));
    assert_eq!(srv.object(&hex(&too_big)).await, None);
}

#[tokio::test]
async fn bearer_token_is_sent_on_every_request() {
    let srv = server_with(|c| c.open = false).await;
    let token = ferry_server::create_token(srv.dir.path(), "test")
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    for (i, p) in [Protocol::Ietf, Protocol::Tus, Protocol::Plain]
        .into_iter()
        .enumerate()
    {
        let rig = rig(test_config(Some(p), CHUNK), &srv.handle.base_url());
        let data = bytes(2 * CHUNK as usize + 5, 150 + i as u8);
        let path = write_file(files.path(), &format!("t{i}"), &data);
        let dest = destination(srv.addr()).header("Authorization", format!("Bearer {token}"));
        let id = rig.add_job(EXT, &path, hash(&data), dest, BTreeMap::new());
        run(&rig).await;
        assert_eq!(rig.job(id).state, JobState::Succeeded, "{p:?}");
        // Without the token: a permanent client error, not a retry loop.
        let data2 = bytes(10, 160 + i as u8);
        let path2 = write_file(files.path(), &format!("u{i}"), &data2);
        let id2 = rig.add_job(
            EXT,
            &path2,
            hash(&data2),
            destination(srv.addr()),
            BTreeMap::new(),
        );
        let report = run(&rig).await;
        assert_eq!(report.retried, 0, "{p:?}: 401 is not retried");
        let j = rig.job(id2);
        assert_eq!((j.state, j.status), (JobState::Failed, Some(401)), "{p:?}");
    }
}

/// An upload the server already holds under the job's `Idempotency-Key` but in another shape
/// (made before the server asked for BLAKE3, or by an older client): the server answers 422,
/// and the uploader creates afresh without the key instead of failing the job.
#[tokio::test]
async fn a_key_taken_by_another_shape_does_not_fail_the_job() {
    let srv = server().await;
    let files = tempfile::tempdir().unwrap();
    for (i, prefer) in [Protocol::Ietf, Protocol::Plain].into_iter().enumerate() {
        let rig = rig(test_config(Some(prefer), 1 << 20), &srv.handle.base_url());
        let data = bytes(100_000, 60 + i as u8);
        let path = write_file(files.path(), &format!("k{i}"), &data);
        let id = rig.add_job(
            EXT,
            &path,
            hash(&data),
            destination(srv.addr()),
            BTreeMap::new(),
        );
        // The same key, another protocol and length: an upload the job's creation cannot be.
        let key = format!("\"{id}-{}\"", prefer.as_str());
        let r = reqwest::Client::new()
            .post(format!("{}/v1/uploads", srv.handle.base_url()))
            .header("upload-draft-interop-version", "8")
            .header("upload-complete", "?0")
            .header("upload-length", 5)
            .header("idempotency-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let report = run(&rig).await;
        assert_eq!(report.succeeded, 1, "{prefer:?}: {report:?}");
        assert_eq!(rig.job(id).state, JobState::Succeeded);
        assert_eq!(srv.object(&hex(&data)).await.as_deref(), Some(&data[..]));
    }
}
