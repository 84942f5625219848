//! tus-js-client (npm) against ferry-server: tus-v1, ietf-draft-03 and ietf-draft-05 uploads of
//! 0 B, 1 B, 5 MiB and 200 MiB files, plus one upload per protocol aborted mid-body and resumed.
//! The stored objects are checked against the files by BLAKE3. Needs
//! `scripts/setup.d/server-interop.sh` to have installed `crates/server/interop/node_modules`.

mod common;
use common::*;

use std::collections::HashMap;
use std::path::Path;

fn file_blake3(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).unwrap()).unwrap();
    h.finalize().to_hex().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_in_every_protocol() {
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
    assert!(
        interop
            .join("node_modules/tus-js-client/package.json")
            .exists(),
        "tus-js-client is not installed in {}: run scripts/setup.d/server-interop.sh",
        interop.display()
    );
    let s = open_server().await;
    let files = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("node")
        .arg(interop.join("upload.js"))
        .arg(s.url("/v1/uploads"))
        .arg(files.path())
        .arg("tus-v1,ietf-draft-03,ietf-draft-05")
        .output()
        .await
        .expect("node must be installed to run the interop test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "upload.js failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().last(), Some("done"));

    let mut expected: HashMap<String, String> = HashMap::new();
    let mut seen = 0;
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = v["file"].as_str().unwrap();
        let path = files.path().join(file);
        let want = expected
            .entry(file.to_string())
            .or_insert_with(|| file_blake3(&path));
        assert_eq!(v["objectId"].as_str(), Some(want.as_str()), "{line}");
        if file == "resume.bin" {
            let from = v["resumedFromBytes"].as_u64().unwrap();
            assert!(
                from > 0 && from < std::fs::metadata(&path).unwrap().len(),
                "{line}"
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 3 * 4 + 3, "every protocol × file reported");

    // The stored bytes, read back, hash to the same ids.
    for (file, id) in &expected {
        let mut r = s
            .req("GET", &format!("/v1/objects/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{file}");
        let mut h = blake3::Hasher::new();
        while let Some(chunk) = r.chunk().await.unwrap() {
            h.update(&chunk);
        }
        assert_eq!(&h.finalize().to_hex().to_string(), id, "{file}");
    }
    // tus-js-client's metadata arrived with each upload, in every protocol.
    let r = s
        .req(
            "GET",
            &format!("/v1/objects/{}/receipts", expected["five.bin"]),
        )
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let mut protocols: Vec<String> = v["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metadata"]["protocol"].as_str().unwrap().to_string())
        .collect();
    protocols.sort();
    assert_eq!(protocols, ["ietf-draft-03", "ietf-draft-05", "tus-v1"]);
}
