//! A server token never leaves in output: after a backup to a ferry-server with a token, every
//! command's text and JSON output, and the daemon's most talkative log, are searched for it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../library/tests/fixtures/library")
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
fn the_token_is_in_no_output_and_no_log() {
    let rt = tokio::runtime::Runtime::new().unwrap();
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
    let url = handle.base_url();
    let state = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), lib.path());
    let lib_s = lib.path().to_str().unwrap();
    let cmd = |args: &[&str]| {
        let mut c = Command::new(FERRY);
        c.arg("--state-dir")
            .arg(state.path())
            .args(args)
            .env("FERRY_CONFIG", home.path().join("config.toml"))
            .env("FERRY_RUNTIME_DIR", home.path().join("run"))
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("FERRY_SERVER_URL", &url)
            .env("FERRY_TOKEN", &token)
            .env("FERRY_LOG", "debug")
            .stdin(Stdio::null());
        c
    };
    let mut seen = Vec::new();
    let mut check = |what: &str, out: &Output| {
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let text = String::from_utf8_lossy(bytes);
            assert!(
                !text.contains(&token),
                "`{what}` printed the token on {stream}: {text}"
            );
        }
        seen.push(what.to_owned());
    };

    let out = cmd(&["backup", lib_s, "--now", "--json"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    check("backup --json", &out);
    let out = cmd(&["backup", lib_s, "--now"]).output().unwrap();
    check("backup", &out);
    let asset =
        String::from_utf8_lossy(&cmd(&["library", "ls", "--json"]).output().unwrap().stdout)
            .lines()
            .next()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .unwrap();
    for args in [
        vec!["jobs", "ls"],
        vec!["jobs", "ls", "--json"],
        vec!["history"],
        vec!["history", "--json"],
        vec!["status"],
        vec!["status", "--json"],
        vec!["why", &asset],
        vec!["why", &asset, "--json"],
        vec!["extensions", "list"],
        vec!["extensions", "list", "--json"],
        vec!["extensions", "show", "bundled"],
        vec!["extensions", "show", "bundled", "--json"],
        vec!["config", "check", "--json"],
        vec!["library", "ls", "--json"],
    ] {
        let out = cmd(&args).output().unwrap();
        check(&args.join(" "), &out);
    }
    // The redacted form is what shows: the scheme, not the secret.
    let out = cmd(&["jobs", "ls", "--json"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Bearer ***"),
        "{out:?}"
    );

    // The daemon's debug log, through a new photo's upload, and its control API.
    std::fs::copy(
        fixtures().join("raw/IMG_0100.JPG"),
        lib.path().join("NEW.JPG"),
    )
    .unwrap();
    let log = home.path().join("daemon.log");
    let mut daemon = cmd(&["daemon", "--folder", lib_s, "--now"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cmd(&["status", "--json"]).output().unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap_or_default())
                .unwrap_or_default();
        if v["status"]["daemon"]["pid"].is_u64() && v["status"]["safe"] == true {
            check("status --json (daemon)", &out);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not back up the new photo"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for args in [vec!["jobs", "ls", "--json"], vec!["why", &asset, "--json"]] {
        let out = cmd(&args).output().unwrap();
        check(&args.join(" "), &out);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.is_empty(), "the debug log said something");
    assert!(
        !text.contains(&token),
        "the daemon's log has the token: {text}"
    );
    assert!(seen.len() > 15);
    rt.block_on(handle.shutdown());
}
