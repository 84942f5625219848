//! The promise at Ferry's heart, through its own entry points: extensions installed the
//! documented way (a manifest in `$XDG_CONFIG_HOME/ferry/extensions`, `ferry extensions
//! enable`) are run by `ferry daemon`, each to its own ferry-server; one enabled while the
//! daemon runs is picked up without a restart; consent limited to a folder holds for new
//! photos; and extensions that crash, hang or flood cost only themselves.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    repo().join("crates/library/tests/fixtures/library")
}

struct Env {
    state: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FERRY);
        c.arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .env("FERRY_CONFIG", self.home.path().join("config.toml"))
            .env("FERRY_RUNTIME_DIR", self.home.path().join("run"))
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env_remove("FERRY_EXTENSIONS_DIR")
            .env_remove("FERRY_SERVER_URL")
            .env_remove("FERRY_TOKEN")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ferry {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Where the README says installed extensions go.
    fn extensions_dir(&self) -> PathBuf {
        self.home.path().join("config/ferry/extensions")
    }

    fn install(&self, id: &str, manifest: &str) {
        std::fs::create_dir_all(self.extensions_dir()).unwrap();
        std::fs::write(self.extensions_dir().join(format!("{id}.toml")), manifest).unwrap();
    }
}

fn json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Polls `check` until it holds or the (generous) deadline passes.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A ferry-server on loopback with one token.
struct TestServer {
    _data: tempfile::TempDir,
    url: String,
    token: String,
    handle: Option<ferry_server::ServerHandle>,
}

impl TestServer {
    fn start(rt: &tokio::runtime::Runtime) -> TestServer {
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
        TestServer {
            url: handle.base_url(),
            _data: data,
            token,
            handle: Some(handle),
        }
    }

    /// Which of these BLAKE3 hashes the server holds, by its own check.
    fn holds(&self, rt: &tokio::runtime::Runtime, hashes: &[String]) -> Vec<bool> {
        let v: Value = rt.block_on(async {
            reqwest::Client::new()
                .post(format!("{}/v1/objects/check", self.url))
                .bearer_auth(&self.token)
                .json(&serde_json::json!({ "blake3": hashes }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        let present: Vec<&str> = v["blake3"]
            .as_array()
            .unwrap_or_else(|| panic!("unexpected check answer: {v}"))
            .iter()
            .filter_map(|h| h.as_str())
            .collect();
        hashes
            .iter()
            .map(|h| present.contains(&h.as_str()))
            .collect()
    }
}

/// Every indexed resource as (path, BLAKE3 hex, asset id).
fn indexed(env: &Env) -> Vec<(String, String, String)> {
    let out = env.ok(&["library", "ls", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut res = Vec::new();
    for line in text.lines() {
        let a: Value = serde_json::from_str(line).unwrap();
        let id = a["id"].as_str().unwrap().to_owned();
        for r in a["resources"].as_array().unwrap() {
            res.push((
                r["path"].as_str().unwrap().to_owned(),
                r["blake3"].as_str().unwrap().to_owned(),
                id.clone(),
            ));
        }
    }
    res
}

fn python3() -> String {
    let out = Command::new("sh")
        .args(["-c", "command -v python3"])
        .output()
        .unwrap();
    let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!p.is_empty(), "python3 must be on PATH for this test");
    p
}

fn python_manifest(server: &TestServer) -> String {
    format!(
        "id = \"python-example\"\nname = \"Python example\"\nexec = {exec:?}\nargs = [{script:?}]\n\
         capabilities = [\"upload\"]\nscope = \"library\"\ndestination_bases = [\"{url}/v1/\"]\n\
         job_limit = 200\n\n[config]\nupload_url = \"{url}/v1/uploads\"\nauthorization = \"Bearer {token}\"\n",
        exec = python3(),
        script = repo()
            .join("extensions/python-example/ferry_example.py")
            .canonicalize()
            .unwrap()
            .to_str()
            .unwrap(),
        url = server.url,
        token = server.token,
    )
}

/// `crates/backup/ferry-backup.toml.example`, filled in; its program is the `ferry` binary's
/// in-process form of ferry-backup, as the example's comment offers.
fn ferry_backup_manifest(server: &TestServer, token_file: &Path) -> String {
    let example =
        std::fs::read_to_string(repo().join("crates/backup/ferry-backup.toml.example")).unwrap();
    let m = example
        .replace("https://backup.example.org", &server.url)
        .replace("exec = \"ferry-backup\"", &format!("exec = {FERRY:?}"))
        .replace("args = []", "args = [\"extension-run\", \"ferry-backup\"]")
        .replace(
            "token_file = \"~/.config/ferry/backup.token\"",
            &format!("token_file = {:?}", token_file.to_str().unwrap()),
        );
    assert!(
        m.contains(&server.url) && m.contains("extension-run"),
        "{m}"
    );
    m
}

fn spawn_daemon(env: &Env, lib: &Path) -> Child {
    env.cmd(&["daemon", "--folder", lib.to_str().unwrap(), "--now"])
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn stop_daemon(mut daemon: Child) {
    let pid = daemon.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            assert_eq!(s.code(), Some(0), "the daemon's exit");
            return;
        }
        assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A photo with content of its own (a fixture JPEG with a tag appended: still a JPEG).
fn new_photo(path: &Path, tag: &str) {
    let mut bytes = std::fs::read(fixtures().join("plain/IMG_0010.JPG")).unwrap();
    bytes.extend_from_slice(tag.as_bytes());
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn extension_status(env: &Env, id: &str) -> Value {
    let out = env.ok(&["extensions", "show", id, "--json"]);
    json(&out)["status"].clone()
}

#[test]
fn the_daemon_runs_installed_extensions_each_to_its_own_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = Env {
        state: tempfile::tempdir().unwrap(),
        home: tempfile::tempdir().unwrap(),
    };
    let lib = tempfile::tempdir().unwrap();
    let lib_path = lib.path().canonicalize().unwrap();
    copy_dir(&fixtures().join("plain"), &lib_path.join("in"));
    copy_dir(&fixtures().join("raw"), &lib_path.join("out"));
    let (a, b) = (TestServer::start(&rt), TestServer::start(&rt));

    // ferry-backup to server B, and beside it extensions that crash, hang and flood: all
    // installed and enabled the documented way before the daemon starts.
    let token_file = env.home.path().join("backup.token");
    std::fs::write(&token_file, format!("{}\n", b.token)).unwrap();
    env.install("ferry-backup", &ferry_backup_manifest(&b, &token_file));
    let bad = |id: &str, script: &str| {
        format!(
            "id = \"{id}\"\nname = \"{id}\"\nexec = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\n\
             capabilities = [\"upload\"]\nscope = \"library\"\n\
             destination_bases = [\"{}/v1/\"]\ncall_budget_ms = 1000\n",
            a.url
        )
    };
    env.install("crasher", &bad("crasher", "exit 3"));
    env.install("hanger", &bad("hanger", "exec sleep 600"));
    env.install("flooder", &bad("flooder", "exec yes not-json-rpc"));
    env.ok(&["library", "scan", lib_path.to_str().unwrap()]);
    for id in ["ferry-backup", "crasher", "hanger", "flooder"] {
        env.ok(&["extensions", "enable", id, "--yes"]);
    }
    let all = indexed(&env);
    let hashes: Vec<String> = all.iter().map(|(_, h, _)| h.clone()).collect();
    assert!(hashes.len() >= 4, "{all:?}");

    let daemon = spawn_daemon(&env, &lib_path);
    wait_for("ferry-backup to put every file on server B", || {
        b.holds(&rt, &hashes).iter().all(|x| *x)
    });
    assert!(
        a.holds(&rt, &hashes).iter().all(|x| !x),
        "server A got files before any extension sent it one"
    );

    // The Python example, dropped in and enabled while the daemon runs: no restart.
    env.install("python-example", &python_manifest(&a));
    env.ok(&["extensions", "enable", "python-example", "--yes"]);
    wait_for("the Python example to put every file on server A", || {
        a.holds(&rt, &hashes).iter().all(|x| *x)
    });

    // The bad ones failed, were backed off, and cost nobody else anything.
    for id in ["crasher", "hanger", "flooder"] {
        wait_for(&format!("{id} to have failed"), || {
            extension_status(&env, id)["failures"].as_u64().unwrap_or(0) >= 1
        });
        let s = extension_status(&env, id);
        assert!(s["last_error"].is_string(), "{id}: {s}");
    }
    let out = env.run(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("extension crasher") && text.contains("failing"),
        "status shows the failing extension: {text}"
    );

    // Consent limited to one folder (given as a path inside the library): a new photo inside
    // it goes to both servers, one outside only to ferry-backup's.
    env.ok(&[
        "extensions",
        "enable",
        "python-example",
        "--yes",
        "--folder",
        lib_path.join("in").to_str().unwrap(),
    ]);
    let shown = json(&env.ok(&["extensions", "show", "python-example", "--json"]));
    assert_eq!(
        shown["consent"]["scope"],
        serde_json::json!({"kind": "folders", "folders": ["in"]}),
        "{shown}"
    );
    new_photo(&lib_path.join("in/NEW_IN.JPG"), "inside");
    new_photo(&lib_path.join("out/NEW_OUT.JPG"), "outside");
    let new_files = |env: &Env| -> Vec<(String, String, String)> {
        indexed(env)
            .into_iter()
            .filter(|(p, _, _)| p.ends_with("NEW_IN.JPG") || p.ends_with("NEW_OUT.JPG"))
            .collect()
    };
    wait_for("the daemon to index both new photos", || {
        new_files(&env).len() == 2
    });
    let new = new_files(&env);
    let inside = new
        .iter()
        .find(|(p, _, _)| p.ends_with("NEW_IN.JPG"))
        .unwrap();
    let outside = new
        .iter()
        .find(|(p, _, _)| p.ends_with("NEW_OUT.JPG"))
        .unwrap();
    let both = [inside.1.clone(), outside.1.clone()];
    wait_for("ferry-backup to send both new photos", || {
        b.holds(&rt, &both).iter().all(|x| *x)
    });
    wait_for(
        "the Python example to send the photo inside its folder",
        || a.holds(&rt, &both)[0],
    );
    assert!(
        !a.holds(&rt, &both)[1],
        "the photo outside the granted folder reached the Python example's server"
    );
    let why = env.run(&["why", &outside.2]);
    let text = String::from_utf8_lossy(&why.stdout);
    assert!(
        text.contains("python-example: outside_scope") && text.contains("outside consent scope"),
        "`ferry why` says why: {text}"
    );
    let why = json(&env.run(&["why", &outside.2, "--json"]));
    let by: Vec<&Value> = why["resources"][0]["by_extension"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    let of = |id: &str| {
        by.iter()
            .find(|e| e["extension"] == id)
            .unwrap_or_else(|| panic!("{id} in {why}"))["verdict"]
            .clone()
    };
    assert_eq!(of("python-example"), "outside_scope");
    assert_eq!(of("ferry-backup"), "backed_up");

    // Jobs are listed by extension.
    let out = env.ok(&["jobs", "ls", "--extension", "python-example", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.trim().is_empty());
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let jobs = v.as_array().cloned().unwrap_or_else(|| vec![v]);
        for j in jobs {
            assert_eq!(j["extension"], "python-example", "{j}");
        }
    }

    stop_daemon(daemon);
    for s in [a, b] {
        if let Some(h) = s.handle {
            rt.block_on(h.shutdown());
        }
    }
}

/// After `ferry backup`, the bundled extension is listed as installed and enabled (it was
/// `notinstalled`), and `--folder` takes a folder in any of the forms a person types, refusing
/// others with the library's roots in the message.
#[test]
fn the_bundled_extension_is_listed_and_folders_resolve_against_the_roots() {
    let env = Env {
        state: tempfile::tempdir().unwrap(),
        home: tempfile::tempdir().unwrap(),
    };
    let lib = tempfile::tempdir().unwrap();
    let lib_path = lib.path().canonicalize().unwrap();
    copy_dir(&fixtures().join("plain"), &lib_path.join("in"));
    copy_dir(&fixtures().join("raw"), &lib_path.join("out"));
    env.ok(&["backup", lib_path.to_str().unwrap(), "--now", "--json"]);

    let list = json(&env.ok(&["extensions", "list", "--json"]));
    let bundled = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "bundled")
        .unwrap_or_else(|| panic!("bundled not listed: {list}"));
    assert_eq!(bundled["installed"], true, "{bundled}");
    assert_eq!(bundled["enabled"], true, "{bundled}");
    assert_eq!(bundled["last_outcome"], "completed", "{bundled}");

    let server = TestServer {
        _data: tempfile::tempdir().unwrap(),
        url: "http://127.0.0.1:9".into(),
        token: "t".into(),
        handle: None,
    };
    env.install("python-example", &python_manifest(&server));
    let scope_after = |args: &[&str], cwd: &Path| -> Value {
        let mut full = vec!["extensions", "enable", "python-example", "--yes", "--json"];
        full.extend_from_slice(args);
        let out = env.cmd(&full).current_dir(cwd).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        json(&out)["scope"].clone()
    };
    let want = serde_json::json!({"kind": "folders", "folders": ["in"]});
    // Root-relative, absolute, and relative to the current folder.
    assert_eq!(scope_after(&["--folder", "in"], env.home.path()), want);
    assert_eq!(
        scope_after(
            &["--folder", lib_path.join("in").to_str().unwrap()],
            env.home.path()
        ),
        want
    );
    assert_eq!(scope_after(&["--folder", "./in"], &lib_path), want);
    // Not a folder of the library: refused, and the roots are named.
    let out = env
        .cmd(&[
            "extensions",
            "enable",
            "python-example",
            "--yes",
            "--folder",
            env.home.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(lib_path.to_str().unwrap()), "{err}");
    let out = env
        .cmd(&[
            "extensions",
            "enable",
            "python-example",
            "--yes",
            "--folder",
            "nowhere",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
