//! A pinned certificate (or CA file) is trust for one origin only: the engine serves many
//! extensions' destinations, and a self-hosted server's pin must not make another origin's
//! certificate acceptable. Two https ferry-servers with the same test certificate (signed by
//! a CA the platform does not trust), the pin given for the first one's origin.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::*;
use ferry_core::job::JobState;
use ferry_core::retry::Failure;
use ferry_core::{Destination, Method, UrlBase};
use ferry_store::JobStore;
use ferry_tls::{Fingerprint, ServerTls, ServerTrust};
use ferry_transfer::{
    MemorySessionStore, OriginTls, TransferConfig, UploadError, UploadJob, UploadSession, Uploader,
};

fn tls_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../server/tests/fixtures/tls")
        .join(name)
}

async fn https_server() -> TestServer {
    server_with(|c| {
        c.tls = Some(ferry_server::TlsFiles {
            cert_path: tls_fixture("cert.pem"),
            key_path: tls_fixture("key.pem"),
        })
    })
    .await
}

/// The status of `GET /v1/objects/{blake3}` on `srv`, asked by a client trusting the test CA.
async fn stored(srv: &TestServer, data: &[u8]) -> u16 {
    let ca = std::fs::read(tls_fixture("ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let url = format!("{}/v1/objects/{}", srv.handle.base_url(), hex(data));
    client.get(url).send().await.unwrap().status().as_u16()
}

fn pinned_to(origin: &str) -> OriginTls {
    let der = ferry_tls::read_ca_file(&tls_fixture("cert.pem")).unwrap();
    let trust = ServerTrust {
        ca_file: None,
        cert_sha256: Some(Fingerprint::of(&der[0])),
    };
    OriginTls {
        origin: reqwest::Url::parse(origin).unwrap(),
        tls: ServerTls::new(&trust).unwrap(),
    }
}

#[tokio::test]
async fn a_pin_trusts_its_origin_and_no_other() {
    let a = https_server().await;
    let b = https_server().await;
    let (base_a, base_b) = (a.handle.base_url(), b.handle.base_url());
    assert!(base_a.starts_with("https://") && base_b.starts_with("https://"));
    assert_ne!(base_a, base_b);

    let mut config = test_config(None, 64 << 10);
    config.transfer.origin_tls = vec![pinned_to(&base_a)];
    let rig = rig(config, &base_a);
    rig.jobs
        .lock()
        .unwrap()
        .set_destination_bases(
            EXT,
            &[
                UrlBase::parse(&base_a).unwrap(),
                UrlBase::parse(&base_b).unwrap(),
            ],
        )
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let data = bytes(150_000, 21);
    let path = write_file(files.path(), "f", &data);
    let to = |base: &str| Destination::new(Method::Post, format!("{base}/v1/uploads"));
    let id_a = rig.add_job(EXT, &path, hash(&data), to(&base_a), BTreeMap::new());
    let id_b = rig.add_job(EXT, &path, hash(&data), to(&base_b), BTreeMap::new());
    run(&rig).await;

    let job_a = rig.job(id_a);
    assert_eq!(job_a.state, JobState::Succeeded, "{job_a:?}");
    assert_eq!(stored(&a, &data).await, 200);
    let job_b = rig.job(id_b);
    assert_eq!(job_b.state, JobState::Failed, "{job_b:?}");
    assert_eq!(stored(&b, &data).await, 404);
}

#[tokio::test]
async fn a_refused_certificate_is_named_in_the_failure() {
    // The same pin, for another origin: the server's certificate is checked against the
    // platform's roots, refused, and the failure says it is the certificate and why.
    let srv = https_server().await;
    let uploader = Uploader::new(TransferConfig {
        origin_tls: vec![pinned_to("https://127.0.0.1:1")],
        ..TransferConfig::default()
    })
    .unwrap();
    let files = tempfile::tempdir().unwrap();
    let data = bytes(1000, 22);
    let path = write_file(files.path(), "f", &data);
    let dest = Destination::new(
        Method::Post,
        format!("{}/v1/uploads", srv.handle.base_url()),
    );
    let meta = BTreeMap::new();
    let job = UploadJob {
        job_id: uuid::Uuid::now_v7(),
        destination: &dest,
        metadata: &meta,
        source_path: &path,
        pinned_blake3: hash(&data),
    };
    let mut session = UploadSession::new(job.job_id);
    let r = uploader
        .upload(&job, &mut session, &MemorySessionStore::new())
        .await;
    let Err(UploadError::Failed(f)) = r else {
        panic!("an untrusted certificate was accepted: {r:?}");
    };
    assert_eq!(f.failure, Failure::ConnectFailed, "{f:?}");
    assert!(
        f.detail.contains("certificate is not trusted") && f.detail.contains("unknown issuer"),
        "{}",
        f.detail
    );
    assert_eq!(stored(&srv, &data).await, 404);
}
