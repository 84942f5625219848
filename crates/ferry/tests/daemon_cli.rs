//! The real `ferry` binary as a person uses it after the first backup: the daemon (control
//! socket, lock, watching, SIGTERM), `status`, `why`, `jobs ls`, `history`, `config`,
//! `service`, a backup that cannot complete, a server that is not up yet, and a closed stdout,
//! with their exit codes.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../library/tests/fixtures/library")
}

struct Env {
    state: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            state: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FERRY);
        c.arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .env("FERRY_CONFIG", self.home.path().join("config.toml"))
            .env("FERRY_RUNTIME_DIR", self.home.path().join("run"))
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env_remove("FERRY_SERVER_URL")
            .env_remove("FERRY_TOKEN");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn socket(&self) -> PathBuf {
        self.home.path().join("run/control.sock")
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
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

#[test]
fn daemon_backs_up_watches_answers_and_stops_on_sigterm() {
    let env = Env::new();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), &lib.path().join("plain"));
    let lib_s = lib.path().to_str().unwrap();

    let mut daemon = env
        .cmd(&["daemon", "--folder", lib_s, "--now"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the control socket", || env.socket().exists());
    let mode = std::fs::metadata(env.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket is private");

    let status = |env: &Env| {
        let out = env.run(&["status", "--json"]);
        (out.status.code(), json(&out))
    };
    wait_for("everything backed up", || {
        let (code, v) = status(&env);
        code == Some(0) && v["status"]["library"]["resources"].as_u64().unwrap_or(0) >= 2
    });
    let (_, v) = status(&env);
    assert!(
        v["status"]["daemon"]["pid"].is_u64(),
        "answered by the daemon: {v}"
    );
    let before = v["status"]["library"]["resources"].as_u64().unwrap();

    // One daemon per state folder.
    let out = env.run(&["daemon", "--folder", lib_s, "--now"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A photo arrives: the daemon backs it up without being asked.
    copy_dir(&fixtures().join("live"), &lib.path().join("live"));
    wait_for("the new photo backed up", || {
        let (code, v) = status(&env);
        code == Some(0) && v["status"]["library"]["resources"].as_u64().unwrap_or(0) > before
    });

    // why, jobs, history agree.
    // `library ls --json` prints one asset per line; the last one will do.
    let ls = json(&env.run(&["library", "ls", "--json"]));
    let asset = ls["id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no asset in {ls}"));
    let out = env.run(&["why", &asset, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let why = json(&out);
    for r in why["resources"].as_array().unwrap() {
        assert_eq!(r["verdict"], "backed_up", "{why}");
    }
    let out = env.run(&["jobs", "ls", "--state", "succeeded", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let jobs = json(&out);
    assert!(jobs.as_array().unwrap().len() as u64 > before);
    let out = env.run(&["history", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!json(&out).as_array().unwrap().is_empty());

    // SIGTERM: a clean exit, the socket gone.
    let pid = daemon.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(0));
    assert!(!env.socket().exists(), "socket removed on exit");

    // Without a daemon, status reads the database.
    let (code, v) = status(&env);
    assert_eq!(code, Some(0));
    assert!(v["status"]["daemon"].is_null());
}

#[test]
fn commands_and_exit_codes_without_a_daemon() {
    let env = Env::new();
    let out = env.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "an empty library is safe");
    assert!(String::from_utf8_lossy(&out.stdout).contains("daemon: not running"));

    assert_eq!(
        env.run(&["jobs", "ls", "--state", "bogus"]).status.code(),
        Some(2)
    );
    assert_eq!(env.run(&["why", "no-such-asset"]).status.code(), Some(2));
    assert_eq!(
        json(&env.run(&["jobs", "ls", "--json"])),
        Value::Array(vec![])
    );
    assert_eq!(json(&env.run(&["history", "--json"])), Value::Array(vec![]));
    assert_eq!(env.run(&["daemon"]).status.code(), Some(2), "no folders");

    // config path | check
    let out = env.run(&["config", "path"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        env.home.path().join("config.toml").to_str().unwrap()
    );
    assert_eq!(
        env.run(&["config", "check"]).status.code(),
        Some(0),
        "absent file: defaults"
    );
    std::fs::write(
        env.home.path().join("config.toml"),
        "[policy]\nrequire_charging = true\n",
    )
    .unwrap();
    let out = env.run(&["config", "check", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json(&out)["policy"]["require_charging"], true);
    std::fs::write(env.home.path().join("config.toml"), "[server]\nurll = 1\n").unwrap();
    let out = env.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.toml"));
    assert_eq!(
        env.run(&["status"]).status.code(),
        Some(2),
        "a broken file stops every command"
    );
    std::fs::remove_file(env.home.path().join("config.toml")).unwrap();

    // service install | uninstall
    let out = env.run(&["service", "install", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let unit = PathBuf::from(json(&out)["unit"].as_str().unwrap());
    assert_eq!(
        unit,
        env.home.path().join("config/systemd/user/ferry.service")
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains("ExecStart=") && text.contains(" daemon"),
        "{text}"
    );
    assert!(text.contains(env.state.path().to_str().unwrap()));
    assert_eq!(env.run(&["service", "uninstall"]).status.code(), Some(0));
    assert!(!unit.exists());
}

#[test]
fn a_backup_the_server_refuses_exits_4_and_says_why() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let data = tempfile::tempdir().unwrap();
    let token = runtime
        .block_on(ferry_server::create_token(data.path(), "test"))
        .unwrap();
    let mut config = ferry_server::Config::new(data.path(), "127.0.0.1:0".parse().unwrap());
    // Every fixture photo is larger than this: the server refuses them all.
    config.limits.max_size_bytes = 100;
    config.limits.max_append_size_bytes = 100;
    let handle = runtime
        .block_on(ferry_server::Server::start(config))
        .unwrap();
    let url = handle.base_url();
    let env = Env::new();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), lib.path());
    let out = env.run(&[
        "backup",
        lib.path().to_str().unwrap(),
        "--now",
        "--json",
        "--to",
        &url,
        "--token",
        &token,
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = json(&out);
    let missing = s["summary"]["missing"].as_array().unwrap();
    assert!(!missing.is_empty());
    for m in missing {
        assert_ne!(m["why"], "not_sent", "a reason is given: {m}");
    }
    let out = env.run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(4), "status says not safe");
    runtime.block_on(handle.shutdown());
}

#[test]
fn a_closed_stdout_is_no_panic() {
    let env = Env::new();
    let mut child = env
        .cmd(&["backup", fixtures().to_str().unwrap(), "--now", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

/// A daemon started before its server (a reboot brings both up in any order) waits for it with
/// backoff instead of ending, and backs everything up once the server answers.
#[test]
fn a_daemon_waits_for_a_server_that_is_not_up_yet() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let data = tempfile::tempdir().unwrap();
    let token = runtime
        .block_on(ferry_server::create_token(data.path(), "test"))
        .unwrap();
    // A loopback port with nothing listening on it, yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}");
    let env = Env::new();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), &lib.path().join("plain"));
    let lib_s = lib.path().to_str().unwrap();
    let mut daemon = env
        .cmd(&[
            "daemon", "--folder", lib_s, "--now", "--to", &url, "--token", &token,
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = daemon.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("server not ready; waiting") => break,
            Ok(line) => said.push(line),
            Err(e) => panic!("the daemon never said it waits ({e}); it said: {said:?}"),
        }
    }
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon ended instead of waiting: {said:?}"
    );

    let handle = runtime
        .block_on(ferry_server::Server::start(ferry_server::Config::new(
            data.path(),
            addr,
        )))
        .unwrap();
    wait_for("everything backed up once the server is up", || {
        let out = env.run(&["status", "--json"]);
        let v = json(&out);
        out.status.code() == Some(0)
            && v["status"]["resources_backed_up"].as_u64().unwrap_or(0) >= 2
            && v["status"]["resources_not_backed_up"].as_u64() == Some(0)
    });

    let pid = daemon.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(0));
    runtime.block_on(handle.shutdown());
}
