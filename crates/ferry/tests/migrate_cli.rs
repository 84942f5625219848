//! The real `ferry migrate` binaries, two state folders on one machine over loopback: after
//! `receive`/`send` the new device's status matches the old one's and its `ferry backup` sends
//! nothing and makes no job; the old device refuses to upload and says why; a wrong code is
//! refused before anything moves; a byte flipped on the way (through the fault proxy) ends the
//! move with nothing installed, a cut or a `kill -9` of either side resumes to the same
//! result; the same through a file, with a flipped byte refused.

use serde_json::Value;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};

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
        .env("FERRY_CONFIG", state.join("no-config.toml"))
        .env("XDG_CONFIG_HOME", state.join("config"))
        .env_remove("FERRY_EXTENSIONS_DIR")
        .env("FERRY_RUNTIME_DIR", state.join("run"))
        .env_remove("FERRY_SERVER_URL")
        .env_remove("FERRY_TOKEN")
        .stdin(Stdio::null());
    c
}

fn ferry(state: &Path, args: &[&str]) -> Output {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    command(state, &args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last JSON line with `"event"` of `kind` (or an error).
fn event(out: &Output, kind: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains(&format!("\"event\":\"{kind}\"")) || l.contains("\"event\":\"error\""))
        .unwrap_or_else(|| panic!("no {kind} line: {}", text(out)));
    serde_json::from_str(line).unwrap()
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

    fn proxy_to(&self, addr: std::net::SocketAddr) -> FaultProxy {
        self.rt.block_on(FaultProxy::start(addr)).unwrap()
    }

    fn backup(&self, state: &Path, lib: &Path, url: &str) -> Output {
        ferry(
            state,
            &[
                "backup",
                lib.to_str().unwrap(),
                "--to",
                url,
                "--token",
                &self.token,
                "--now",
                "--json",
            ],
        )
    }
}

/// A `ferry migrate receive` (or `resume`) running, and the address and code it printed.
struct Receiving {
    child: Child,
    addr: String,
    code: String,
    stdout: BufReader<ChildStdout>,
}

impl Receiving {
    fn start(state: &Path, verb: &str, extra: &[&str]) -> Receiving {
        Receiving::start_with(state, verb, extra, &[])
    }

    fn start_with(state: &Path, verb: &str, extra: &[&str], env: &[(&str, &str)]) -> Receiving {
        let mut args = vec!["migrate", verb, "--listen", "127.0.0.1:0", "--json"];
        args.extend_from_slice(extra);
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        // stderr to a file: a pipe nobody reads would block the child once full.
        let log = std::fs::File::create(state.join(format!("test-{verb}.log"))).unwrap();
        let mut child = command(state, &args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let waiting = loop {
            line.clear();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                break None;
            }
            let v: Value = serde_json::from_str(line.trim()).unwrap_or_default();
            if v["event"] == "waiting" || v["event"] == "error" {
                break Some(v);
            }
        };
        match waiting {
            Some(v) if v["event"] == "waiting" => Receiving {
                child,
                addr: v["address"].as_str().unwrap().to_owned(),
                code: v["code"].as_str().unwrap().to_owned(),
                stdout,
            },
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("receive did not wait for a sender: {other:?}");
            }
        }
    }

    /// Waits for the end; returns the exit code and the last summary or error event.
    fn finish(mut self) -> (Option<i32>, Value) {
        let mut last = Value::Null;
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Ok(v) = serde_json::from_str::<Value>(line.trim())
                && (v["event"] == "summary" || v["event"] == "error")
            {
                last = v;
            }
        }
        let status = self.child.wait().unwrap();
        (status.code(), last)
    }
}

/// SIGTERM, then wait: the daemon finishes what is in flight and exits 0.
fn stop(mut daemon: Child) {
    let pid = daemon.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = daemon.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the daemon's exit");
}

fn send(state: &Path, to: &str, code: &str) -> Output {
    ferry(
        state,
        &["migrate", "send", "--to", to, "--code", code, "--json"],
    )
}

/// `ferry status --json`'s status, without what belongs to a device and not to its library.
fn status(state: &Path) -> Value {
    let out = ferry(state, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status: {e}: {}", text(&out)));
    let mut s = v["status"].clone();
    for k in ["extension_calls", "daemon", "decision", "upload_blocked"] {
        s.as_object_mut().unwrap().remove(k);
    }
    s
}

/// The moved tables of a state database, row by row, as text (what must be identical after
/// an uncut and a resumed move).
fn dump(state: &Path) -> String {
    let conn = rusqlite::Connection::open(state.join("ferry.db")).unwrap();
    let mut out = String::new();
    for (table, order) in [
        ("roots", "path"),
        ("assets", "id"),
        ("resources", "id"),
        ("change_sets", "token"),
        ("changes", "token, asset_id"),
        ("jobs", "id"),
        ("receipts", "seq"),
        ("extension_kv", "extension, key"),
    ] {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))
            .unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            out.push_str(table);
            for i in 0..n {
                let v: rusqlite::types::Value = r.get(i).unwrap();
                out.push_str(&format!(" {v:?}"));
            }
            out.push('\n');
        }
    }
    let id: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'library_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    out.push_str(&format!("library_id {id}\n"));
    out
}

/// An old device: a library backed up to `server` in `old`, and the Python example extension
/// installed the documented way and enabled, with 600 KB of data of its own (incompressible,
/// so a move's stream is long enough to cut and damage at several places).
fn old_device(server: &Server) -> (tempfile::TempDir, tempfile::TempDir) {
    let lib = tempfile::tempdir().unwrap();
    copy_tree(&fixtures(), lib.path());
    let old = tempfile::tempdir().unwrap();
    let url = server.handle.base_url();
    let out = server.backup(old.path(), lib.path(), &url);
    assert_eq!(out.status.code(), Some(0), "backup: {}", text(&out));
    install_python_example(old.path(), server);
    let data = old.path().join("extensions/python-example");
    std::fs::create_dir_all(&data).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..4 {
        let bytes: Vec<u8> = (0..150_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(data.join(format!("cache-{i}.bin")), bytes).unwrap();
    }
    (lib, old)
}

/// The Python example's manifest in the person's extensions folder (`$XDG_CONFIG_HOME`), then
/// `ferry extensions enable`.
fn install_python_example(state: &Path, server: &Server) {
    let dir = state.join("config/ferry/extensions");
    std::fs::create_dir_all(&dir).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../extensions/python-example/ferry_example.py")
        .canonicalize()
        .unwrap();
    let url = server.handle.base_url();
    let manifest = format!(
        "id = \"python-example\"\nname = \"Python example\"\nexec = \"python3\"\nargs = [{script:?}]\n\
         capabilities = [\"upload\", \"export\", \"import\"]\nscope = \"library\"\n\
         destination_bases = [\"{url}/v1/\"]\njob_limit = 200\n\n[config]\n\
         upload_url = \"{url}/v1/uploads\"\nauthorization = \"Bearer {token}\"\n",
        script = script.to_str().unwrap(),
        token = server.token,
    );
    std::fs::write(dir.join("python-example.toml"), manifest).unwrap();
    let out = ferry(state, &["extensions", "enable", "python-example", "--yes"]);
    assert!(out.status.success(), "enable: {}", text(&out));
}

fn jobs_count(state: &Path) -> usize {
    let out = ferry(state, &["jobs", "ls", "--json"]);
    assert!(out.status.success(), "jobs ls: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().len()
}

#[test]
fn a_move_over_loopback_installs_everything_and_the_new_device_sends_nothing() {
    let server = Server::start();
    let (lib, old) = old_device(&server);
    let before = status(old.path());
    let old_jobs = jobs_count(old.path());
    assert!(old_jobs > 0);

    let new = tempfile::tempdir().unwrap();
    let rx = Receiving::start(new.path(), "receive", &[]);
    let out_send = send(old.path(), &rx.addr, &rx.code);
    assert_eq!(out_send.status.code(), Some(0), "send: {}", text(&out_send));
    let (code, summary) = rx.finish();
    assert_eq!(code, Some(0), "receive: {summary}");
    let installed = &summary["installed"];
    assert_eq!(installed["files_missing"], 0, "{summary}");
    assert_eq!(installed["files_differ"], 0, "{summary}");
    assert!(installed["files_verified"].as_u64().unwrap() > 0);

    // The new device knows what the old one knew, and no secret came along.
    assert_eq!(status(new.path()), before);
    assert_eq!(dump(new.path()), dump(old.path()));
    let db = std::fs::read(new.path().join("ferry.db")).unwrap();
    assert!(
        !db.windows(server.token.len())
            .any(|w| w == server.token.as_bytes()),
        "the token moved"
    );

    // The old device refuses to upload, and says why.
    let url = server.handle.base_url();
    let out = server.backup(old.path(), lib.path(), &url);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("moved to another device"),
        "{}",
        text(&out)
    );
    let st = ferry(old.path(), &["status", "--json"]);
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["status"]["upload_blocked"].is_string(), "{v}");

    // The new device backs up the same library through a counting proxy: no job, nothing
    // sent; a fresh state on the same library (no move) talks far more to the server.
    let proxy = server.proxy_to(server.handle.local_addr());
    let purl = format!("http://{}", proxy.addr());
    let out = server.backup(new.path(), lib.path(), &purl);
    assert_eq!(out.status.code(), Some(0), "backup on new: {}", text(&out));
    let s = event(&out, "summary");
    assert_eq!(s["summary"]["sent"], 0, "{s}");
    assert_eq!(s["summary"]["bytes_sent"], 0, "{s}");
    assert_eq!(
        jobs_count(new.path()),
        old_jobs,
        "no new job on the new device"
    );
    let moved_bytes = proxy.stats().bytes_to_server;

    let fresh = tempfile::tempdir().unwrap();
    let proxy2 = server.proxy_to(server.handle.local_addr());
    let purl2 = format!("http://{}", proxy2.addr());
    let out = server.backup(fresh.path(), lib.path(), &purl2);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        moved_bytes < proxy2.stats().bytes_to_server,
        "after a move {moved_bytes} bytes to the server, a fresh state {}",
        proxy2.stats().bytes_to_server
    );

    // Status on both sides.
    let st = ferry(old.path(), &["migrate", "status", "--json"]);
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["moved_to"].is_object(), "{v}");
    let st = ferry(new.path(), &["migrate", "status", "--json"]);
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["migrated_from"].is_object(), "{v}");

    // The extension's data moved: sent, waiting as a pending import, imported at its first
    // run on the new device (after the person enabled it there), byte for byte.
    let sent = event(&out_send, "summary");
    let ext = &sent["sent"]["extensions"][0];
    assert_eq!(ext["id"], "python-example", "{sent}");
    assert!(ext["left_out"].is_null(), "{sent}");
    assert!(ext["files"].as_u64().unwrap() >= 4, "{sent}");
    let imports = |state: &Path| -> Value {
        let st = ferry(state, &["migrate", "status", "--json"]);
        serde_json::from_slice::<Value>(&st.stdout).unwrap()["imports"].clone()
    };
    assert_eq!(imports(new.path())[0]["state"], "pending");
    install_python_example(new.path(), &server);
    let daemon = command(
        new.path(),
        &[
            OsStr::new("daemon"),
            OsStr::new("--folder"),
            lib.path().as_os_str(),
            OsStr::new("--now"),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    // Pending until the import ran; then succeeded, until the extension read and cleared the
    // status (the Python example clears it at once). The files tell success from failure.
    while imports(new.path())[0]["state"] == "pending" {
        assert!(
            std::time::Instant::now() < deadline,
            "the import did not run: {}",
            imports(new.path())
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    stop(daemon);
    for i in 0..4 {
        let name = format!("extensions/python-example/cache-{i}.bin");
        assert_eq!(
            std::fs::read(new.path().join(&name)).unwrap(),
            std::fs::read(old.path().join(&name)).unwrap(),
            "{name}"
        );
    }

    // Cancel on the old device makes it upload again.
    let out = ferry(old.path(), &["migrate", "cancel"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = server.backup(old.path(), lib.path(), &url);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_wrong_code_is_refused_before_anything_moves_and_is_used_up() {
    let server = Server::start();
    let (_lib, old) = old_device(&server);
    let new = tempfile::tempdir().unwrap();
    let rx = Receiving::start(new.path(), "receive", &[]);
    let wrong = if rx.code.starts_with('9') {
        rx.code.replacen('9', "8", 1)
    } else {
        format!("9{}", &rx.code[1..])
    };
    let out = send(old.path(), &rx.addr, &wrong);
    assert_eq!(out.status.code(), Some(2), "send: {}", text(&out));
    assert!(
        event(&out, "error")["error"]
            .as_str()
            .unwrap()
            .contains("code"),
        "{}",
        text(&out)
    );
    let (code, last) = rx.finish();
    assert_ne!(
        code,
        Some(0),
        "the receiver ends: the code is used up ({last})"
    );
    // Nothing installed on the new device.
    let st = ferry(new.path(), &["migrate", "status", "--json"]);
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["migrated_from"].is_null(), "{v}");
    assert_eq!(jobs_count(new.path()), 0);
    // The right code on a new receive still works after the failed try.
    let rx = Receiving::start(new.path(), "receive", &[]);
    let out = send(old.path(), &rx.addr, &rx.code);
    assert_eq!(out.status.code(), Some(0), "send: {}", text(&out));
    assert_eq!(rx.finish().0, Some(0));
}

#[test]
fn flipped_bytes_install_nothing_and_a_cut_resumes_to_the_same_result() {
    let server = Server::start();
    let (_lib, old) = old_device(&server);

    // Reference: an uncut move of the same state, from a copy of the old device.
    let reference_old = tempfile::tempdir().unwrap();
    copy_tree(old.path(), reference_old.path());
    let reference = tempfile::tempdir().unwrap();
    let rx = Receiving::start(reference.path(), "receive", &[]);
    let out = send(reference_old.path(), &rx.addr, &rx.code);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rx.finish().0, Some(0));

    let new = tempfile::tempdir().unwrap();
    for offset in [200u64, 5_000, 300_000] {
        let rx = Receiving::start(new.path(), "receive", &[]);
        let proxy = server.proxy_to(rx.addr.parse().unwrap());
        proxy.set(Plan::once(Fault::FlipAfter { bytes: offset }));
        let out = send(old.path(), &proxy.addr().to_string(), &rx.code);
        assert_ne!(
            out.status.code(),
            Some(0),
            "flip at {offset}: {}",
            text(&out)
        );
        let (code, last) = rx.finish();
        assert_ne!(code, Some(0), "flip at {offset}: {last}");
        let st = ferry(new.path(), &["migrate", "status", "--json"]);
        let v: Value = serde_json::from_slice(&st.stdout).unwrap();
        assert!(
            v["migrated_from"].is_null(),
            "flip at {offset}: installed: {v}"
        );
        assert_eq!(jobs_count(new.path()), 0, "flip at {offset}");
    }

    // A cut part-way: resumable on both sides; then a clean resume finishes.
    let rx = Receiving::start(new.path(), "resume", &[]);
    let proxy = server.proxy_to(rx.addr.parse().unwrap());
    proxy.set(Plan::once(Fault::CloseAfter { bytes: 300_000 }));
    let out = send(old.path(), &proxy.addr().to_string(), &rx.code);
    assert_eq!(out.status.code(), Some(3), "cut: {}", text(&out));
    let (code, _) = rx.finish();
    assert_eq!(code, Some(3), "the receiver says it can resume");

    let rx = Receiving::start(new.path(), "resume", &[]);
    let out = send(old.path(), &rx.addr, &rx.code);
    assert_eq!(out.status.code(), Some(0), "resume: {}", text(&out));
    assert_eq!(rx.finish().0, Some(0));
    assert_eq!(dump(new.path()), dump(reference.path()));
}

#[test]
fn kill_9_of_either_side_then_again_gives_the_uncut_result() {
    let server = Server::start();
    let (_lib, old) = old_device(&server);
    let reference_old = tempfile::tempdir().unwrap();
    copy_tree(old.path(), reference_old.path());
    let reference = tempfile::tempdir().unwrap();
    let rx = Receiving::start(reference.path(), "receive", &[]);
    let out = send(reference_old.path(), &rx.addr, &rx.code);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rx.finish().0, Some(0));

    let new = tempfile::tempdir().unwrap();
    // Kill the sender once the receiver verified 200 KB (an entry or more), then the receiver
    // the same way; the stream goes through a proxy that trickles it, so each kill lands
    // mid-transfer. The side left standing sees its peer gone and says the move can resume.
    for victim in ["sender", "receiver"] {
        let mut rx = Receiving::start(
            new.path(),
            if victim == "sender" {
                "receive"
            } else {
                "resume"
            },
            &[],
        );
        let proxy = server.proxy_to(rx.addr.parse().unwrap());
        proxy.set(Plan::always(Fault::Trickle {
            bytes_per_s: 100_000,
        }));
        let to = proxy.addr().to_string();
        let words = ["migrate", "send", "--to", &to, "--code", &rx.code, "--json"];
        let args: Vec<&OsStr> = words.iter().map(OsStr::new).collect();
        let mut tx = command(old.path(), &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut tx_out = BufReader::new(tx.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                tx_out.read_line(&mut line).unwrap() > 0,
                "the send ended before 200 KB were verified ({victim})"
            );
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["event"] == "progress"
                && v["phase"] == "transferring"
                && v["done"].as_u64().unwrap_or(0) >= 200_000
            {
                break;
            }
        }
        if victim == "sender" {
            tx.kill().unwrap();
            tx.wait().unwrap();
            let (code, last) = rx.finish();
            assert_eq!(
                code,
                Some(3),
                "the receiver after the sender's kill: {last}"
            );
        } else {
            rx.child.kill().unwrap();
            rx.child.wait().unwrap();
            drop(proxy);
            let status = tx.wait().unwrap();
            assert_eq!(
                status.code(),
                Some(3),
                "the sender after the receiver's kill"
            );
        }
        let st = ferry(new.path(), &["migrate", "status", "--json"]);
        let v: Value = serde_json::from_slice(&st.stdout).unwrap();
        assert!(v["migrated_from"].is_null(), "installed half a move: {v}");
        assert!(
            v["incoming_bytes"].as_u64().unwrap_or(0) > 0,
            "nothing kept: {v}"
        );
    }
    let rx = Receiving::start(new.path(), "resume", &[]);
    let out = send(old.path(), &rx.addr, &rx.code);
    assert_eq!(out.status.code(), Some(0), "again: {}", text(&out));
    assert_eq!(rx.finish().0, Some(0));
    // What arrived before the kills was not sent again.
    let sent = event(&out, "summary");
    assert!(
        sent["sent"]["skipped_entries"].as_u64().unwrap() >= 1,
        "{sent}"
    );
    assert_eq!(dump(new.path()), dump(reference.path()));
}

#[test]
fn a_move_through_a_file_installs_and_a_flipped_byte_is_refused() {
    let server = Server::start();
    let (lib, old) = old_device(&server);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("move.ferry");
    let out = ferry(
        old.path(),
        &[
            "migrate",
            "export",
            "--out",
            file.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "export: {}", text(&out));
    // The old device stops uploading once the file is written.
    let url = server.handle.base_url();
    assert_eq!(
        server.backup(old.path(), lib.path(), &url).status.code(),
        Some(2)
    );

    // A flipped byte anywhere: refused, nothing installed.
    let bytes = std::fs::read(&file).unwrap();
    let bad = work.path().join("bad.ferry");
    for at in [bytes.len() / 7, bytes.len() / 2, bytes.len() - 3] {
        let mut b = bytes.clone();
        b[at] ^= 1;
        std::fs::write(&bad, &b).unwrap();
        let new = tempfile::tempdir().unwrap();
        let out = ferry(
            new.path(),
            &["migrate", "import", bad.to_str().unwrap(), "--json"],
        );
        assert_ne!(out.status.code(), Some(0), "flip at {at}: {}", text(&out));
        assert_eq!(jobs_count(new.path()), 0, "flip at {at}");
    }
    // Truncated: refused.
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let new = tempfile::tempdir().unwrap();
    let out = ferry(new.path(), &["migrate", "import", bad.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));

    // The real file, with the library moved to another folder: installed and checked there.
    let moved_lib = tempfile::tempdir().unwrap();
    copy_tree(lib.path(), moved_lib.path());
    let root = format!(
        "{}={}",
        lib.path().canonicalize().unwrap().display(),
        moved_lib.path().canonicalize().unwrap().display()
    );
    let new = tempfile::tempdir().unwrap();
    let out = ferry(
        new.path(),
        &[
            "migrate",
            "import",
            file.to_str().unwrap(),
            "--root",
            &root,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "import: {}", text(&out));
    let s = event(&out, "summary");
    assert_eq!(s["installed"]["files_missing"], 0, "{s}");
    assert_eq!(s["installed"]["files_differ"], 0, "{s}");
    let proxy = server.proxy_to(server.handle.local_addr());
    let purl = format!("http://{}", proxy.addr());
    let out = server.backup(new.path(), moved_lib.path(), &purl);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(event(&out, "summary")["summary"]["sent"], 0);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let state = tempfile::tempdir().unwrap();
    let out = ferry(
        state.path(),
        &["migrate", "import", "/nonexistent/move.ferry"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/move.ferry"));
    let out = ferry(
        state.path(),
        &["migrate", "receive", "--root", "relative=/abs"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute"));
    let out = ferry(state.path(), &["migrate", "resume"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = ferry(state.path(), &["migrate", "cancel"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = ferry(state.path(), &["migrate", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no move"));
}

#[test]
fn a_device_that_backed_up_to_its_built_in_server_hands_over_and_the_new_one_backs_up_to_its_own() {
    let lib = tempfile::tempdir().unwrap();
    copy_tree(&fixtures(), lib.path());
    let old = tempfile::tempdir().unwrap();
    let lib_arg = lib.path().to_str().unwrap();
    let out = ferry(old.path(), &["backup", lib_arg, "--now", "--json"]);
    assert_eq!(out.status.code(), Some(0), "backup: {}", text(&out));
    let resources = event(&out, "summary")["summary"]["resources"].clone();

    let pre = ferry(old.path(), &["migrate", "preflight", "--json"]);
    let v: Value = serde_json::from_slice(&pre.stdout).unwrap();
    assert_eq!(v["builtin_server_stays"], true, "{v}");

    let new = tempfile::tempdir().unwrap();
    let rx = Receiving::start(new.path(), "receive", &[]);
    let out = send(old.path(), &rx.addr, &rx.code);
    assert_eq!(out.status.code(), Some(0), "send: {}", text(&out));
    let (code, summary) = rx.finish();
    assert_eq!(code, Some(0), "{summary}");
    assert_eq!(summary["installed"]["builtin_server_stayed"], true);
    // The old device's copies stay on the old device: the new one sends everything to its own
    // built-in server, and verifies it there.
    let out = ferry(new.path(), &["backup", lib_arg, "--now", "--json"]);
    assert_eq!(out.status.code(), Some(0), "backup on new: {}", text(&out));
    let s = event(&out, "summary");
    assert_eq!(s["summary"]["sent"], resources, "{s}");
    assert_eq!(s["summary"]["verified"], resources, "{s}");
}

#[test]
fn a_crafted_package_naming_an_extension_outside_its_folder_is_refused_and_deletes_nothing() {
    // A package whose description lists an extension with the id `../..`: installing its data
    // would name the state folder itself. Built with the transport's own writer, so every hash
    // and the trailer are right: only the content is hostile.
    let server = Server::start();
    let (_lib, old) = old_device(&server);
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good.ferry");
    let out = ferry(
        old.path(),
        &[
            "migrate",
            "export",
            "--out",
            good.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "export: {}", text(&out));
    // Re-package the same state with a hostile description.
    let staging = work.path().join("staging");
    let pkg = ferry_migrate::import_file(&good, &staging, |_| {}).unwrap();
    let root = work.path().join("root");
    pkg.materialize(&root).unwrap();
    let mut meta = pkg.manifest().meta.clone();
    meta["extensions"] = serde_json::json!([{
        "id": "../..", "data_version": "1", "compressible": false,
        "size_estimate_bytes": 0, "files": 0, "bytes": 0, "left_out": null
    }]);
    let manifest = ferry_migrate::PackageManifest::build(&root, meta, |_| false).unwrap();
    let bad = work.path().join("bad.ferry");
    ferry_migrate::export_file(&root, &manifest, &bad, |_| {}).unwrap();

    let new = tempfile::tempdir().unwrap();
    let sentinel = new.path().join("keep-me");
    std::fs::write(&sentinel, b"x").unwrap();
    let out = ferry(new.path(), &["migrate", "import", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("extension id"),
        "{}",
        text(&out)
    );
    assert!(sentinel.exists(), "the state folder was touched");
    assert!(new.path().join("ferry.db").exists());
    assert_eq!(jobs_count(new.path()), 0);
}

#[test]
fn a_crash_at_each_named_point_then_the_same_commands_again_give_the_uncut_result() {
    // Each named point aborts its process as `kill -9` would (FERRY_FAILPOINTS); then the
    // person runs `receive` and `send` again. The result must be the uncut move's: the new
    // device holds exactly what the reference move installed, the old one is marked moved.
    let server = Server::start();
    let (_lib, old) = old_device(&server);
    let reference_old = tempfile::tempdir().unwrap();
    copy_tree(old.path(), reference_old.path());
    let reference = tempfile::tempdir().unwrap();
    let rx = Receiving::start(reference.path(), "receive", &[]);
    let out = send(reference_old.path(), &rx.addr, &rx.code);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rx.finish().0, Some(0));

    for (side, point) in [
        ("sender", "migrate.after_export"),
        ("sender", "migrate.after_prepare"),
        ("receiver", "migrate.after_install"),
        ("receiver", "migrate.before_check"),
        ("sender", "migrate.after_confirmed"),
    ] {
        let old_i = tempfile::tempdir().unwrap();
        copy_tree(old.path(), old_i.path());
        let new_i = tempfile::tempdir().unwrap();
        let armed = [("FERRY_FAILPOINTS", format!("{point}=1"))];
        let armed: Vec<(&str, &str)> = armed.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let rx = Receiving::start_with(
            new_i.path(),
            "receive",
            &[],
            if side == "receiver" { &armed } else { &[] },
        );
        let words = [
            "migrate", "send", "--to", &rx.addr, "--code", &rx.code, "--json",
        ];
        let args: Vec<&OsStr> = words.iter().map(OsStr::new).collect();
        let out = command(old_i.path(), &args)
            .envs(if side == "sender" {
                armed.clone()
            } else {
                Vec::new()
            })
            .output()
            .unwrap();
        if side == "sender" {
            assert_eq!(
                out.status.code(),
                None,
                "{point}: the sender aborts: {}",
                text(&out)
            );
            // A sender that died before pairing leaves the receiver waiting: the person stops it.
            let mut rx = rx;
            let _ = rx.child.kill();
            let _ = rx.child.wait();
        } else {
            let (code, _) = rx.finish();
            assert_eq!(code, None, "{point}: the receiver aborts");
        }
        // Again, with nothing armed.
        let moved_already = {
            let st = ferry(old_i.path(), &["migrate", "status", "--json"]);
            serde_json::from_slice::<Value>(&st.stdout).unwrap()["moved_to"].is_object()
        };
        if !moved_already {
            let rx = Receiving::start(new_i.path(), "receive", &[]);
            let out = send(old_i.path(), &rx.addr, &rx.code);
            assert_eq!(out.status.code(), Some(0), "{point}: again: {}", text(&out));
            let (code, last) = rx.finish();
            assert_eq!(code, Some(0), "{point}: again: {last}");
        }
        let st = ferry(old_i.path(), &["migrate", "status", "--json"]);
        let v: Value = serde_json::from_slice(&st.stdout).unwrap();
        assert!(v["moved_to"].is_object(), "{point}: {v}");
        assert!(v["outgoing"].is_null(), "{point}: {v}");
        assert_eq!(dump(new_i.path()), dump(reference.path()), "{point}");
    }
}

#[test]
fn a_move_and_a_backup_never_run_on_one_state_at_once() {
    // The test holds the uploads lock as a running `ferry backup` does (shared), then as a move
    // does (exclusive): each time the other command is refused at once, saying why.
    let server = Server::start();
    let (lib, old) = old_device(&server);
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(old.path().join("uploads.lock"))
        .unwrap();
    lock.try_lock_shared().unwrap();
    let file = old.path().join("move.ferry");
    let out = ferry(
        old.path(),
        &["migrate", "export", "--out", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ferry backup"),
        "{}",
        text(&out)
    );
    assert!(!file.exists());
    lock.unlock().unwrap();

    lock.try_lock().unwrap();
    let url = server.handle.base_url();
    let out = server.backup(old.path(), lib.path(), &url);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("move"),
        "{}",
        text(&out)
    );
    lock.unlock().unwrap();
    // Neither left anything behind: the backup runs, the move is not under way.
    let out = server.backup(old.path(), lib.path(), &url);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let st = ferry(old.path(), &["migrate", "status", "--json"]);
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["outgoing"].is_null() && v["moved_to"].is_null(), "{v}");
}
