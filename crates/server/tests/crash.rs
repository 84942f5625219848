//! `kill -9` of the real `ferry-server` binary in the middle of an append, then a restart on the
//! same data directory and a resume that must complete with identical bytes.

mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts the binary on port 0 and reads the bound address from its first stdout line.
fn spawn(data: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-server"))
        .args(["serve", "--open", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address line")
        .to_string();
    (child, base)
}

#[tokio::test]
async fn kill_9_mid_upload_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(6_000_000, 40);
    let client = reqwest::Client::new();
    let (mut child, base) = spawn(dir.path());

    let r = client
        .post(format!("{base}/v1/uploads"))
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?0")
        .header("upload-length", data.len().to_string())
        .header("repr-digest", sha256_field(&data))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = header(&r, "location").unwrap().to_string();
    let patch = |base: &str, offset: usize, complete: bool, body: reqwest::Body| {
        client
            .patch(format!("{base}{loc}"))
            .header("upload-draft-interop-version", "8")
            .header("content-type", "application/partial-upload")
            .header("upload-offset", offset.to_string())
            .header("upload-complete", if complete { "?1" } else { "?0" })
            .body(body)
            .send()
    };
    let r = patch(&base, 0, false, data[..2_000_000].to_vec().into())
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // A second append is mid-body (3 MB sent of 4 MB, written to disk past the acknowledged
    // offset) when the process dies.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    tx.send(data[2_000_000..5_000_000].to_vec()).await.unwrap();
    let in_flight = tokio::spawn(patch(
        &base,
        2_000_000,
        true,
        reqwest::Body::wrap_stream(stream),
    ));
    let partial = dir
        .path()
        .join("partial")
        .join(loc.rsplit('/').next().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) <= 2_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "second append never reached the disk"
        );
        tokio::task::yield_now().await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(tx);
    assert!(
        in_flight.await.unwrap().is_err(),
        "the cut request cannot have succeeded"
    );

    let (mut child, base) = spawn(dir.path());
    let r = client
        .head(format!("{base}{loc}"))
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "upload-complete"), Some("?0"));
    // Only acknowledged bytes count; the unacknowledged tail on disk is not an offset.
    let offset: usize = header(&r, "upload-offset").unwrap().parse().unwrap();
    assert_eq!(offset, 2_000_000);
    let r = patch(&base, offset, true, data[offset..].to_vec().into())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_object_headers(&r, &data);
    let got = client
        .get(format!("{base}/v1/objects/{}", blake3_hex(&data)))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), &data[..]);
    child.kill().unwrap();
    child.wait().unwrap();
}
