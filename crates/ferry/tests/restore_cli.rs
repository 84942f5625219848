//! The real `ferry restore` binary against real ferry-servers on loopback, after a real
//! `ferry backup` of a library holding what real ones do (Live Photos, RAW+JPEG, edits,
//! sidecars, a unicode folder, a name that is not UTF-8): the tree comes back byte for byte
//! with its modification times; a second run downloads nothing; `kill -9` at seeded random
//! points resumes without fetching a file more than once more; a byte flipped on the way is
//! caught and fetched again; hostile metadata paths stay inside the folder; a different file
//! at a name is kept and the restored one written beside it; a wrong token ends at once.

use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::BufRead;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use ferry_faultproxy::{Fault, FaultProxy, Plan};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../library/tests/fixtures/library")
}

fn command(state: &Path, args: &[&OsStr]) -> Command {
    let mut c = Command::new(FERRY);
    c.arg("--state-dir")
        .arg(state)
        .args(args)
        // No user configuration leaks in.
        .env("FERRY_CONFIG", state.join("no-config.toml"))
        .env("XDG_CONFIG_HOME", state.join("config"))
        .env("FERRY_RUNTIME_DIR", state.join("run"))
        .env_remove("FERRY_SERVER_URL")
        .env_remove("FERRY_TOKEN")
        .stdin(Stdio::null());
    c
}

fn ferry(state: &Path, args: &[&OsStr]) -> Output {
    command(state, args).output().unwrap()
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last `summary` (or `error`) JSON line.
fn summary(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("\"event\":\"summary\"") || l.contains("\"event\":\"error\""))
        .unwrap_or_else(|| panic!("no summary line: {}", text(out)));
    serde_json::from_str(line).unwrap()
}

/// A deterministic byte stream (xorshift64*), so a test's files are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// The fixture library, plus a folder and a file named in Latin-1 (not UTF-8) and `big`
/// extra photos of `big_size` bytes each (seeded content), in a fresh folder.
fn library(big: usize, big_size: usize, seed: u64) -> tempfile::TempDir {
    let lib = tempfile::tempdir().unwrap();
    copy_tree(&fixtures(), lib.path());
    let latin1 = lib.path().join(OsString::from_vec(b"\xE9t\xE9".to_vec()));
    std::fs::create_dir(&latin1).unwrap();
    // Different bytes from the fixture it copies: the same bytes under two paths are one
    // object, which the backup sends once.
    let mut jpeg = std::fs::read(fixtures().join("plain/IMG_0010.JPG")).unwrap();
    jpeg.extend_from_slice(b"latin-1 copy");
    std::fs::write(
        latin1.join(OsString::from_vec(b"caf\xE9.jpg".to_vec())),
        jpeg,
    )
    .unwrap();
    let mut rng = Rng(seed | 1);
    if big > 0 {
        let dir = lib.path().join("big");
        std::fs::create_dir(&dir).unwrap();
        for i in 0..big {
            std::fs::write(dir.join(format!("IMG_9{i:03}.JPG")), rng.bytes(big_size)).unwrap();
        }
    }
    lib
}

/// A ferry-server on loopback with one token, on its own runtime (which also runs the fault
/// proxies of the test).
struct Server {
    rt: tokio::runtime::Runtime,
    handle: ferry_server::ServerHandle,
    token: String,
    _data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let data = tempfile::tempdir().unwrap();
        let token = rt
            .block_on(ferry_server::create_token(data.path(), "test"))
            .unwrap();
        let handle = rt
            .block_on(ferry_server::Server::start(ferry_server::Config::new(
                data.path(),
                "127.0.0.1:0".parse().unwrap(),
            )))
            .unwrap();
        Server {
            rt,
            handle,
            token,
            _data: data,
        }
    }

    fn url(&self) -> String {
        self.handle.base_url()
    }

    fn proxy(&self) -> FaultProxy {
        self.rt
            .block_on(FaultProxy::start(self.handle.local_addr()))
            .unwrap()
    }

    /// The listing's size in bytes, as the restore reads it (one page).
    fn listing_bytes(&self) -> u64 {
        self.rt.block_on(async {
            let res = reqwest::Client::new()
                .get(format!("{}/v1/objects?limit=1000", self.url()))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let body = res.bytes().await.unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert!(v["next_after"].is_null(), "one page");
            body.len() as u64
        })
    }

    /// Backs `lib` up to this server with the real `ferry backup`.
    fn backup(&self, state: &Path, lib: &Path) {
        let url = self.url();
        let out = ferry(
            state,
            &[
                os("backup"),
                lib.as_os_str(),
                os("--to"),
                os(&url),
                os("--token"),
                os(&self.token),
                os("--now"),
                os("--json"),
            ],
        );
        assert_eq!(out.status.code(), Some(0), "backup: {}", text(&out));
    }
}

fn restore_args<'a>(dir: &'a Path, url: &'a str, token: &'a str) -> Vec<&'a OsStr> {
    vec![
        os("restore"),
        dir.as_os_str(),
        os("--from"),
        os(url),
        os("--token"),
        os(token),
        os("--json"),
    ]
}

/// What was backed up, as `ferry library ls --json` lists it: path relative to the library
/// root → (BLAKE3 hex, mtime in ns).
fn listed(state: &Path, lib: &Path) -> BTreeMap<PathBuf, (String, i128)> {
    let out = ferry(state, &[os("library"), os("ls"), os("--json")]);
    assert!(out.status.success(), "ls: {}", text(&out));
    let root = lib.canonicalize().unwrap();
    let mut map = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let asset: Value = serde_json::from_str(line).unwrap();
        for r in asset["resources"].as_array().unwrap() {
            let path = ferry_core::path_text::from_json(
                r["path"].as_str().unwrap(),
                r["path_bytes"].as_str(),
            )
            .unwrap();
            let Ok(rel) = path.strip_prefix(&root) else {
                continue;
            };
            map.insert(
                rel.to_owned(),
                (
                    r["blake3"].as_str().unwrap().to_owned(),
                    r["mtime_ns"].as_i64().unwrap() as i128,
                ),
            );
        }
    }
    map
}

/// Every file under `dir` (its `.ferry-restore` journal folder aside): relative path →
/// (BLAKE3 hex, mtime in ns).
fn tree(dir: &Path) -> BTreeMap<PathBuf, (String, i128)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (String, i128)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if dir == root && e.file_name() == ".ferry-restore" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                walk(root, &p, out);
            } else {
                let hash = blake3::hash(&std::fs::read(&p).unwrap())
                    .to_hex()
                    .to_string();
                let mtime = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
                out.insert(p.strip_prefix(root).unwrap().to_owned(), (hash, mtime));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The restored tree is exactly what was backed up: the same relative paths, the same
/// BLAKE3, and the modification time to the millisecond (what the metadata carries).
fn assert_same_tree(backed_up: &BTreeMap<PathBuf, (String, i128)>, dir: &Path) {
    let restored = tree(dir);
    let names =
        |m: &BTreeMap<PathBuf, (String, i128)>| -> Vec<PathBuf> { m.keys().cloned().collect() };
    assert_eq!(names(&restored), names(backed_up), "the same files");
    for (rel, (hash, mtime)) in backed_up {
        let (h, m) = &restored[rel];
        assert_eq!(h, hash, "{} bytes", rel.display());
        assert_eq!(
            m.div_euclid(1_000_000),
            mtime.div_euclid(1_000_000),
            "{} modification time",
            rel.display()
        );
    }
}

fn total_bytes(backed_up: &BTreeMap<PathBuf, (String, i128)>, dir: &Path) -> u64 {
    backed_up
        .keys()
        .map(|rel| std::fs::metadata(dir.join(rel)).unwrap().len())
        .sum()
}

#[test]
fn restore_from_the_builtin_server_rebuilds_the_library_exactly() {
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    let lib = library(0, 0, 1);
    let out = ferry(
        s,
        &[
            os("backup"),
            lib.path().as_os_str(),
            os("--now"),
            os("--json"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "backup: {}", text(&out));
    let backed_up = listed(s, lib.path());
    assert!(backed_up.len() >= 40, "{}", backed_up.len());
    for must in [
        "live/IMG_0200.HEIC",
        "live/IMG_0200.MOV",
        "raw/IMG_0100.DNG",
        "raw/IMG_0100.JPG",
        "edited/IMG_E0400.JPG",
        "edited/IMG_0400.AAE",
        "sidecars/DSC_0700.xmp",
        "Vacances été 2023/IMG_0800.JPG",
    ] {
        assert!(backed_up.contains_key(Path::new(must)), "{must} backed up");
    }
    let odd = PathBuf::from(OsString::from_vec(b"\xE9t\xE9/caf\xE9.jpg".to_vec()));
    assert!(backed_up.contains_key(&odd));

    // The laptop is lost: a new, empty folder; no flags: the built-in server of this state.
    let into = tempfile::tempdir().unwrap();
    let dir = into.path().join("restored");
    let out = ferry(s, &[os("restore"), dir.as_os_str(), os("--json")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let sum = &summary(&out)["summary"];
    assert_eq!(sum["files"], backed_up.len() as u64, "{sum}");
    assert_eq!(sum["restored"], backed_up.len() as u64, "{sum}");
    assert_eq!(sum["failed"], 0);
    assert_same_tree(&backed_up, &dir);
    assert_eq!(sum["bytes"], total_bytes(&backed_up, &dir));
    // A file event for nothing; a progress event at least.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"event\":\"progress\""),
        "{}",
        text(&out)
    );

    // Filters: one folder; one asset; nothing received after tomorrow.
    let only = into.path().join("only-folder");
    let out = ferry(
        s,
        &[
            os("restore"),
            only.as_os_str(),
            os("--folder"),
            os("Vacances été 2023"),
            os("--json"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        tree(&only).keys().cloned().collect::<Vec<_>>(),
        [PathBuf::from("Vacances été 2023/IMG_0800.JPG")]
    );
    let ls = ferry(s, &[os("library"), os("ls"), os("--json")]);
    let live: Value = String::from_utf8(ls.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|a| a["dir"].as_str().unwrap().ends_with("/live"))
        .unwrap();
    let asset = live["id"].as_str().unwrap();
    let one = into.path().join("only-asset");
    let out = ferry(
        s,
        &[
            os("restore"),
            one.as_os_str(),
            os("--asset"),
            os(asset),
            os("--json"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        tree(&one).keys().cloned().collect::<Vec<_>>(),
        [
            PathBuf::from("live/IMG_0200.HEIC"),
            PathBuf::from("live/IMG_0200.MOV")
        ],
        "a Live Photo's two resources"
    );
    let none = into.path().join("none");
    let out = ferry(
        s,
        &[
            os("restore"),
            none.as_os_str(),
            os("--since"),
            os("2999-01-01"),
            os("--json"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(summary(&out)["summary"]["files"], 0);
    let out = ferry(
        s,
        &[os("restore"), none.as_os_str(), os("--since"), os("soon")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn a_second_restore_downloads_nothing() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let lib = library(2, 200_000, 2);
    server.backup(state.path(), lib.path());
    let backed_up = listed(state.path(), lib.path());
    let listing = server.listing_bytes();
    let proxy = server.proxy();
    let url = format!("http://{}", proxy.addr());
    let into = tempfile::tempdir().unwrap();
    let dir = into.path().join("r");

    let out = ferry(state.path(), &restore_args(&dir, &url, &server.token));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_same_tree(&backed_up, &dir);
    let total = total_bytes(&backed_up, &dir);
    let first = proxy.stats().bytes_to_client;
    assert!(first >= total, "{first} < {total}");
    // A temp file a killed run left behind (between linking its name and removing the temp
    // name): a complete run sweeps it away.
    std::fs::write(
        dir.join("raw/.ferry-restore-0123456789abcdef01234567.part"),
        b"left over",
    )
    .unwrap();

    let out = ferry(state.path(), &restore_args(&dir, &url, &server.token));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let sum = &summary(&out)["summary"];
    assert_eq!(sum["skipped_identical"], backed_up.len() as u64, "{sum}");
    assert_eq!(sum["restored"], 0, "{sum}");
    assert_eq!(sum["bytes_downloaded"], 0, "{sum}");
    // Through the proxy: the listing and its headers, not one object.
    let second = proxy.stats().bytes_to_client - first;
    assert!(
        second <= listing + 1024,
        "second run received {second} bytes; the listing is {listing}"
    );
    assert_same_tree(&backed_up, &dir);
}

/// Starts `ferry restore --json` and kills it (SIGKILL) once this run has downloaded
/// `after_bytes`, as its own progress events say. Returns whether it was killed mid-way.
fn restore_and_kill(state: &Path, args: &[&OsStr], after_bytes: u64) -> bool {
    let mut child: Child = command(state, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["event"] == "progress"
            && v["progress"]["bytes_downloaded"].as_u64().unwrap_or(0) >= after_bytes
        {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        if v["event"] == "summary" {
            break;
        }
    }
    child.wait().unwrap();
    false
}

#[test]
fn kill_9_at_random_points_then_again_gives_the_same_tree_fetching_each_file_at_most_once_more() {
    let seed: u64 = std::env::var("FERRY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed {seed} (FERRY_TEST_SEED={seed} replays it)");
    let mut rng = Rng(seed | 1);
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let lib = library(8, 400_000, seed);
    server.backup(state.path(), lib.path());
    let backed_up = listed(state.path(), lib.path());
    let total: u64 = backed_up
        .keys()
        .map(|rel| std::fs::metadata(lib.path().join(rel)).unwrap().len())
        .sum();
    let listing = server.listing_bytes();
    let proxy = server.proxy();
    // 250 KB/s per connection (4 downloads at once): a run takes seconds, so the kills land
    // mid-way.
    proxy.set(Plan::always(Fault::TrickleDown {
        bytes_per_s: 250_000,
    }));
    let url = format!("http://{}", proxy.addr());
    let into = tempfile::tempdir().unwrap();
    let dir = into.path().join("r");
    let args = restore_args(&dir, &url, &server.token);

    let kills = 3;
    for k in 0..kills {
        // Each run downloads 5–25% of the whole before it is killed.
        let after = total / 20 + rng.next() % (total / 5);
        assert!(
            restore_and_kill(state.path(), &args, after),
            "run {k} finished before its kill at {after} bytes (seed {seed})"
        );
        // Nothing half-written under a final name: every file already placed is whole.
        for (rel, (hash, _)) in tree(&dir) {
            let name = rel.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(".ferry-restore-") {
                continue;
            }
            assert_eq!(
                Some(&hash),
                backed_up.get(&rel).map(|x| &x.0),
                "{} after kill {k} (seed {seed})",
                rel.display()
            );
        }
    }
    proxy.set(Plan::always(Fault::None));
    let out = ferry(state.path(), &args);
    assert_eq!(out.status.code(), Some(0), "seed {seed}: {}", text(&out));
    let sum = &summary(&out)["summary"];
    assert!(
        sum["skipped_identical"].as_u64().unwrap() > 0,
        "the last run found files done before: {sum}"
    );
    assert!(
        sum["bytes_resumed"].as_u64().unwrap() > 0,
        "the last run continued the partial downloads the kill left: {sum}"
    );
    assert_same_tree(&backed_up, &dir);

    // Every byte that crossed the proxy: each object at most twice (once, plus what a kill
    // lost), plus one listing per run and the answers' headers.
    let runs = kills + 1;
    let headers = (backed_up.len() as u64 * 2 + runs) * 512;
    let received = proxy.stats().bytes_to_client;
    assert!(
        received <= 2 * total + runs * listing + headers,
        "received {received} for {total} bytes of files (seed {seed})"
    );
    eprintln!(
        "kill test: {total} bytes of files, {received} received over {runs} runs ({:.2}×)",
        received as f64 / total as f64
    );
}

#[test]
fn a_flipped_byte_on_the_way_is_caught_and_fetched_again() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let lib = library(4, 300_000, 4);
    server.backup(state.path(), lib.path());
    let backed_up = listed(state.path(), lib.path());
    let total: u64 = backed_up
        .keys()
        .map(|rel| std::fs::metadata(lib.path().join(rel)).unwrap().len())
        .sum();
    let proxy = server.proxy();
    // One download at a time, all on one connection: the flip at half way lands inside an
    // object's bytes (the same place on every run: the content is seeded).
    proxy.set(Plan::once(Fault::FlipDownAfter { bytes: total / 2 }));
    let url = format!("http://{}", proxy.addr());
    let into = tempfile::tempdir().unwrap();
    let dir = into.path().join("r");
    let mut args = restore_args(&dir, &url, &server.token);
    args.extend([os("--concurrency"), os("1")]);
    let out = ferry(state.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(proxy.stats().faults_applied, 1);
    let sum = &summary(&out)["summary"];
    assert!(sum["refetched"].as_u64().unwrap() >= 1, "{sum}");
    assert!(sum["bytes_downloaded"].as_u64().unwrap() > total, "{sum}");
    assert_eq!(sum["failed"], 0, "{sum}");
    assert_same_tree(&backed_up, &dir);
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn hostile_metadata_paths_never_write_outside_the_folder() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("a/b/restored");
    let outside_abs = top.path().join("abs/x");
    let hostile: Vec<(String, Vec<u8>)> = vec![
        ("../../etc/x".into(), b"dot-dot".to_vec()),
        (
            outside_abs.to_str().unwrap().to_owned(),
            b"absolute".to_vec(),
        ),
        (
            "a/../../../../../../../../../tmp/ferry-restore-escape".into(),
            b"deep".to_vec(),
        ),
        ("ok/\\x00nul.jpg".into(), b"nul".to_vec()),
        ("../..".into(), b"nothing left".to_vec()),
        (".ferry-restore/journal".into(), b"journal".to_vec()),
    ];
    server.rt.block_on(async {
        let http = reqwest::Client::new();
        for (path, body) in &hostile {
            let meta = format!(
                "path {},file_name {}",
                base64(path.as_bytes()),
                base64(b"../evil.jpg")
            );
            let res = http
                .post(format!("{}/v1/uploads", server.url()))
                .bearer_auth(&server.token)
                .header("ferry-metadata", meta)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert!(res.status().is_success(), "upload {path}: {}", res.status());
        }
    });
    let out = ferry(
        state.path(),
        &restore_args(&dir, &server.url(), &server.token),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let sum = &summary(&out)["summary"];
    assert_eq!(sum["files"], hostile.len() as u64, "{sum}");
    assert_eq!(sum["sanitised"], hostile.len() as u64, "{sum}");
    // Everything landed inside the folder, made safe.
    let got: BTreeMap<PathBuf, Vec<u8>> = tree(&dir)
        .keys()
        .map(|rel| (rel.clone(), std::fs::read(dir.join(rel)).unwrap()))
        .collect();
    let abs_rel = outside_abs.strip_prefix("/").unwrap().to_owned();
    let want: BTreeMap<PathBuf, Vec<u8>> = [
        (PathBuf::from("etc/x"), b"dot-dot".to_vec()),
        (abs_rel, b"absolute".to_vec()),
        // `..` is dropped, never resolved.
        (
            PathBuf::from("a/tmp/ferry-restore-escape"),
            b"deep".to_vec(),
        ),
        (PathBuf::from("ok/_nul.jpg"), b"nul".to_vec()),
        (
            PathBuf::from("_unsorted/.._evil.jpg"),
            b"nothing left".to_vec(),
        ),
        (PathBuf::from("_ferry-restore/journal"), b"journal".to_vec()),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    // And nothing outside it: the folder's surroundings hold only the folder.
    let mut around = Vec::new();
    for e in walk_all(top.path()) {
        if !e.starts_with(&dir) {
            around.push(e);
        }
    }
    around.sort();
    assert_eq!(
        around,
        [top.path().join("a"), top.path().join("a/b")],
        "written outside the folder"
    );
    assert!(!Path::new("/tmp/ferry-restore-escape").exists());
}

fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk_all(&p));
        }
    }
    out
}

#[test]
fn a_different_file_at_a_name_is_kept_and_the_restored_one_goes_beside_it() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let lib = library(0, 0, 5);
    server.backup(state.path(), lib.path());
    let backed_up = listed(state.path(), lib.path());
    let into = tempfile::tempdir().unwrap();
    let dir = into.path().join("r");
    // Someone else's IMG_0100.JPG where ours goes, and an identical copy of one of ours.
    std::fs::create_dir_all(dir.join("raw")).unwrap();
    std::fs::write(dir.join("raw/IMG_0100.JPG"), b"not the backed-up photo").unwrap();
    std::fs::create_dir_all(dir.join("live")).unwrap();
    std::fs::copy(
        lib.path().join("live/IMG_0200.HEIC"),
        dir.join("live/IMG_0200.HEIC"),
    )
    .unwrap();

    // Text output this time: it says where the file went and why.
    let url = server.url();
    let mut args = restore_args(&dir, &url, &server.token);
    args.pop();
    let out = ferry(state.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("raw/IMG_0100.JPG restored as raw/IMG_0100 (restored).JPG: a different file is already there"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(dir.join("raw/IMG_0100.JPG")).unwrap(),
        b"not the backed-up photo",
        "the file that was there is kept"
    );
    let mut want = backed_up.clone();
    let ours = want.remove(Path::new("raw/IMG_0100.JPG")).unwrap();
    want.insert("raw/IMG_0100 (restored).JPG".into(), ours);
    let mut got = tree(&dir);
    let theirs = got.remove(Path::new("raw/IMG_0100.JPG")).unwrap();
    assert_ne!(theirs.0, want[Path::new("raw/IMG_0100 (restored).JPG")].0);
    assert_eq!(
        got.iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect::<Vec<_>>(),
        want.iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect::<Vec<_>>()
    );

    // Again, with JSON: everything is already there, the one beside included.
    let out = ferry(state.path(), &restore_args(&dir, &url, &server.token));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let sum = &summary(&out)["summary"];
    assert_eq!(sum["skipped_identical"], backed_up.len() as u64, "{sum}");
    assert_eq!(sum["renamed_for_collision"], 0, "{sum}");
}

#[test]
fn the_first_restore_counts_the_collision_in_json_too() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let lib = library(0, 0, 6);
    server.backup(state.path(), lib.path());
    let into = tempfile::tempdir().unwrap();
    let dir = into.path().join("r");
    std::fs::create_dir_all(dir.join("edited")).unwrap();
    std::fs::write(dir.join("edited/IMG_E0400.JPG"), b"mine").unwrap();
    let url = server.url();
    let out = ferry(state.path(), &restore_args(&dir, &url, &server.token));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let sum = &summary(&out)["summary"];
    assert_eq!(sum["renamed_for_collision"], 1, "{sum}");
    assert_eq!(sum["renamed"][0]["path"], "edited/IMG_E0400.JPG", "{sum}");
    assert_eq!(
        sum["renamed"][0]["restored_as"], "edited/IMG_E0400 (restored).JPG",
        "{sum}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"event\":\"renamed\""), "{stdout}");
}

#[test]
fn a_wrong_token_ends_at_once_with_exit_5_and_writes_nothing() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let into = tempfile::tempdir().unwrap();
    let dir = into.path().join("r");
    let url = server.url();
    let out = ferry(state.path(), &restore_args(&dir, &url, "not-a-token"));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert_eq!(summary(&out)["exit_code"], 5);
    assert!(!dir.exists(), "nothing created");
    // Without a token for --from: a usage error.
    let out = ferry(
        state.path(),
        &[os("restore"), dir.as_os_str(), os("--from"), os(&url)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // No --from and nothing backed up in this state folder: said so.
    let out = ferry(state.path(), &[os("restore"), dir.as_os_str()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--from"),
        "{}",
        text(&out)
    );
}

/// A tmpfs mounted for one test, unmounted however the test ends.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when this account cannot mount (not root): the test says so and passes.
    fn mount(at: &Path, size: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }

    fn grow(&self, size: u64) {
        let s = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(s.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_with_a_clear_message_and_nothing_half_written_then_resumes() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let lib = library(4, 300_000, 7);
    server.backup(state.path(), lib.path());
    let backed_up = listed(state.path(), lib.path());
    let total: u64 = backed_up
        .keys()
        .map(|rel| std::fs::metadata(lib.path().join(rel)).unwrap().len())
        .sum();
    let top = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&top.path().join("disk"), total / 2) else {
        eprintln!("skipped: mounting a small tmpfs needs root (as scripts/torture's disk-full)");
        return;
    };
    let dir = disk.0.join("r");
    let url = server.url();
    let out = ferry(state.path(), &restore_args(&dir, &url, &server.token));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = summary(&out);
    assert!(err["error"].as_str().unwrap().contains("is full"), "{err}");
    // Whatever is under a final name is whole; the rest are temp files.
    let mut placed = 0;
    for (rel, (hash, _)) in tree(&dir) {
        let name = rel.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(".ferry-restore-") && name.ends_with(".part") {
            continue;
        }
        assert_eq!(
            Some(&hash),
            backed_up.get(&rel).map(|x| &x.0),
            "{}",
            rel.display()
        );
        placed += 1;
    }
    assert!(
        placed < backed_up.len(),
        "the disk filled up before the end"
    );

    disk.grow(total * 3 + (1 << 20));
    let out = ferry(state.path(), &restore_args(&dir, &url, &server.token));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_same_tree(&backed_up, &dir);
}

#[test]
fn a_second_restore_into_the_same_folder_is_refused_while_the_first_runs() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let lib = library(2, 300_000, 8);
    server.backup(state.path(), lib.path());
    let proxy = server.proxy();
    proxy.set(Plan::always(Fault::TrickleDown {
        bytes_per_s: 50_000,
    }));
    let url = format!("http://{}", proxy.addr());
    let into = tempfile::tempdir().unwrap();
    let dir = into.path().join("r");
    let args = restore_args(&dir, &url, &server.token);
    let mut first = command(state.path(), &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(first.stdout.take().unwrap()).lines();
    // Once the first is downloading (it holds the folder's lock from before its checks).
    loop {
        let line = lines.next().expect("the first restore runs").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_ne!(v["event"], "summary", "the first restore ended early: {v}");
        if v["event"] == "progress" && v["progress"]["phase"] == "downloading" {
            break;
        }
    }
    let out = ferry(state.path(), &args);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(
        summary(&out)["error"]
            .as_str()
            .unwrap()
            .contains("another ferry restore"),
        "{}",
        text(&out)
    );
}

#[test]
fn two_versions_of_one_path_both_come_back_the_newest_under_its_name() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let versions: [&[u8]; 2] = [b"first version", b"edited, second version"];
    server.rt.block_on(async {
        let http = reqwest::Client::new();
        for body in versions {
            let res = http
                .post(format!("{}/v1/uploads", server.url()))
                .bearer_auth(&server.token)
                .header("ferry-metadata", format!("path {}", base64(b"x/a.jpg")))
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            assert!(res.status().is_success(), "{}", res.status());
        }
    });
    // Which is newest, as the server's receipts say (ties go by object id).
    let newest = server.rt.block_on(async {
        let v: Value = reqwest::Client::new()
            .get(format!("{}/v1/objects?limit=1000", server.url()))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut objs: Vec<(i64, String)> = v["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let ms = o["receipts"][0]["received_ms"].as_i64().unwrap();
                (ms, o["id"].as_str().unwrap().to_owned())
            })
            .collect();
        // Newest first; on a tie, the smaller id first.
        objs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        objs[0].1.clone()
    });
    let into = tempfile::tempdir().unwrap();
    let dir = into.path().join("r");
    let url = server.url();
    let out = ferry(state.path(), &restore_args(&dir, &url, &server.token));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let at_name = std::fs::read(dir.join("x/a.jpg")).unwrap();
    let beside = std::fs::read(dir.join("x/a (restored).jpg")).unwrap();
    assert_eq!(blake3::hash(&at_name).to_hex().as_str(), newest);
    let mut both = vec![at_name, beside];
    both.sort();
    let mut want: Vec<Vec<u8>> = versions.iter().map(|v| v.to_vec()).collect();
    want.sort();
    assert_eq!(both, want);
    let sum = &summary(&out)["summary"];
    assert_eq!(
        sum["renamed"][0]["reason"],
        "a newer version of the same path has that name"
    );
}

/// The receipts' paths of the object holding `bytes`, as the server lists them.
fn receipt_paths(server: &Server, bytes: &[u8]) -> Vec<String> {
    let id = blake3::hash(bytes).to_hex().to_string();
    server.rt.block_on(async {
        let v: Value = reqwest::Client::new()
            .get(format!("{}/v1/objects/{id}/receipts", server.url()))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut paths: Vec<String> = v["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["metadata"]["path"].as_str().unwrap_or("").to_owned())
            .collect();
        paths.sort();
        paths
    })
}

/// Issue 24: a photo copied into two folders is one object on the server; the backup sends its
/// bytes once and records a receipt for every path (also for a copy added after the first
/// backup finished, whose bytes the server already holds), so the restore brings every path
/// back, each with the same bytes and its own modification time.
#[test]
fn the_same_bytes_at_several_paths_all_come_back() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let lib = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x24);
    let photo = rng.bytes(200_000);
    let other = rng.bytes(50_000);
    let put = |rel: &str, bytes: &[u8]| {
        let p = lib.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    put("Trips/a.jpg", &photo);
    put("Best/a.jpg", &photo);
    put("Trips/b.jpg", &other);
    server.backup(state.path(), lib.path());
    assert_eq!(
        receipt_paths(&server, &photo),
        ["Best/a.jpg", "Trips/a.jpg"]
    );

    // A third copy, added once the first backup is done: the server holds its bytes already.
    put("Later/a copy.jpg", &photo);
    server.backup(state.path(), lib.path());
    let all = ["Best/a.jpg", "Later/a copy.jpg", "Trips/a.jpg"];
    assert_eq!(receipt_paths(&server, &photo), all);
    // A run with nothing new records nothing again.
    server.backup(state.path(), lib.path());
    let id = blake3::hash(&photo).to_hex().to_string();
    let receipts = server.rt.block_on(async {
        let v: Value = reqwest::Client::new()
            .get(format!("{}/v1/objects/{id}/receipts", server.url()))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["receipts"].as_array().unwrap().len()
    });
    assert_eq!(receipts, all.len(), "one receipt per path");

    let backed_up = listed(state.path(), lib.path());
    assert_eq!(backed_up.len(), 4, "{backed_up:?}");
    // Into an empty folder, from another device's state: everything from the server.
    let elsewhere = tempfile::tempdir().unwrap();
    let into = tempfile::tempdir().unwrap();
    let dir = into.path().join("restored");
    let url = server.url();
    let out = ferry(elsewhere.path(), &restore_args(&dir, &url, &server.token));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_same_tree(&backed_up, &dir);
    for rel in all {
        assert_eq!(std::fs::read(dir.join(rel)).unwrap(), photo, "{rel}");
    }
    assert_eq!(std::fs::read(dir.join("Trips/b.jpg")).unwrap(), other);
    let sum = &summary(&out)["summary"];
    assert_eq!(
        (
            &sum["objects"],
            &sum["files"],
            &sum["restored"],
            &sum["failed"]
        ),
        (
            &Value::from(2),
            &Value::from(4),
            &Value::from(4),
            &Value::from(0)
        ),
        "{sum}"
    );
}

/// A photo renamed after its backup keeps its bytes on the server; the next backup records a
/// receipt for its new path (the bytes are not sent again), so the restore has it under its new
/// name (and, as the server keeps every receipt, under its old one too).
#[test]
fn a_photo_renamed_after_its_backup_comes_back_under_its_new_name() {
    let server = Server::start();
    let state = tempfile::tempdir().unwrap();
    let lib = tempfile::tempdir().unwrap();
    let photo = Rng(0x2424).bytes(120_000);
    std::fs::create_dir_all(lib.path().join("Trips")).unwrap();
    std::fs::write(lib.path().join("Trips/old name.jpg"), &photo).unwrap();
    server.backup(state.path(), lib.path());
    std::fs::rename(
        lib.path().join("Trips/old name.jpg"),
        lib.path().join("Trips/new name.jpg"),
    )
    .unwrap();
    server.backup(state.path(), lib.path());
    assert_eq!(
        receipt_paths(&server, &photo),
        ["Trips/new name.jpg", "Trips/old name.jpg"]
    );

    let elsewhere = tempfile::tempdir().unwrap();
    let into = tempfile::tempdir().unwrap();
    let dir = into.path().join("restored");
    let url = server.url();
    let out = ferry(elsewhere.path(), &restore_args(&dir, &url, &server.token));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let backed_up = listed(state.path(), lib.path());
    let restored = tree(&dir);
    for (rel, (hash, mtime)) in &backed_up {
        let (h, m) = &restored[rel];
        assert_eq!(
            (h, m.div_euclid(1_000_000)),
            (hash, mtime.div_euclid(1_000_000))
        );
    }
    assert_eq!(
        std::fs::read(dir.join("Trips/new name.jpg")).unwrap(),
        photo
    );
    assert_eq!(
        std::fs::read(dir.join("Trips/old name.jpg")).unwrap(),
        photo
    );
}
