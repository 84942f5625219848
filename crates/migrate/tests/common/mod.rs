//! Shared test helpers: deterministic package folders, running a move over loopback, reading
//! a staging folder back.
#![allow(dead_code)]

use ferry_migrate::{PackageManifest, Progress, ReceivedPackage, Receiver, SendOutcome, send};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

pub const LOOPBACK: &str = "127.0.0.1:0";

pub fn loopback() -> SocketAddr {
    LOOPBACK.parse().unwrap()
}

/// Incompressible bytes, the same for the same seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Very compressible text.
pub fn text(len: usize) -> Vec<u8> {
    let line = b"{\"setting\": \"value\", \"enabled\": true, \"interval\": 3600}\n";
    line.iter().copied().cycle().take(len).collect()
}

pub fn write(root: &Path, name: &[u8], bytes: &[u8]) {
    let path = root.join(OsStr::from_bytes(name));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The package of most tests: a state file, compressible extension settings, two identical
/// files, an empty one, a name that is not UTF-8.
pub struct Sample {
    pub root: PathBuf,
    pub manifest: PackageManifest,
    /// Size of one of the two identical files.
    pub dup_size: u64,
    /// Size of the compressible entry.
    pub text_size: u64,
}

pub fn sample(root: &Path) -> Sample {
    write(root, b"state.sqlite", &noise(1, 300_000));
    write(root, b"ext/bundled/settings.json", &text(400_000));
    write(root, b"media/a.bin", &noise(2, 150_000));
    write(root, b"media/copy-of-a.bin", &noise(2, 150_000));
    write(root, b"empty", b"");
    write(root, b"caf\xe9.txt", b"latin-1 name");
    let manifest = PackageManifest::build(
        root,
        serde_json::json!({"source": "old-phone", "extensions": {"bundled": "1.2.0"}}),
        |name| name.ends_with(b".json"),
    )
    .unwrap();
    Sample {
        root: root.to_path_buf(),
        manifest,
        dup_size: 150_000,
        text_size: 400_000,
    }
}

/// Several incompressible entries of the same size, for cut-and-resume tests.
pub fn many(root: &Path, count: u64, size: usize) -> PackageManifest {
    for i in 0..count {
        write(
            root,
            format!("part/{i:03}.bin").as_bytes(),
            &noise(100 + i, size),
        );
    }
    PackageManifest::build(root, serde_json::json!({}), |_| false).unwrap()
}

/// Starts a send on its own task.
pub fn spawn_send(
    addr: SocketAddr,
    code: String,
    root: PathBuf,
    manifest: PackageManifest,
    progress: Option<watch::Sender<Progress>>,
) -> tokio::task::JoinHandle<Result<SendOutcome, ferry_migrate::MigrateError>> {
    tokio::spawn(async move {
        let to = addr.to_string();
        send(&root, &manifest, &to, &code, |p| {
            if let Some(tx) = &progress {
                tx.send_replace(p);
            }
        })
        .await
    })
}

/// One whole move over `via` (the receiver's address, or a proxy in front of it), confirmed
/// installed. Panics on failure.
pub async fn full_move(
    receiver: &mut Receiver,
    via: SocketAddr,
    staging: &Path,
    root: &Path,
    manifest: &PackageManifest,
) -> (ReceivedPackage, SendOutcome) {
    let sender = spawn_send(
        via,
        receiver.code(),
        root.to_path_buf(),
        manifest.clone(),
        None,
    );
    let session = receiver.receive(staging, |_| {}).await.unwrap();
    let package = session.confirm_installed().await.unwrap();
    let outcome = sender.await.unwrap().unwrap();
    (package, outcome)
}

/// Names of the verified blobs in a staging folder (no `.part`).
pub fn blobs(staging: &Path) -> Vec<String> {
    let dir = staging.join("blobs");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".part"))
        .collect();
    names.sort();
    names
}

/// Every blob present hashes to its name: nothing unverified is ever kept.
pub fn assert_blobs_sound(staging: &Path) {
    for name in blobs(staging) {
        let bytes = std::fs::read(staging.join("blobs").join(&name)).unwrap();
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            name,
            "blob {name} is not what its name says"
        );
    }
}

/// The installed tree equals the source tree, byte for byte.
pub fn assert_same_tree(manifest: &PackageManifest, a: &Path, b: &Path) {
    for e in &manifest.entries {
        let name = OsStr::from_bytes(&e.name);
        assert_eq!(
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
            "{}",
            e.name.escape_ascii()
        );
    }
}
