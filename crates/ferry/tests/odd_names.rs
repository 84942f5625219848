//! Names that are not UTF-8 (Latin-1 from old cameras, Windows shares, zip archives) through
//! every command that prints a path, in text and JSON: JSON always parses, text shows the
//! name escaped so it can be copied back, and the lossless form gives the real bytes.

use serde_json::Value;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../library/tests/fixtures/library")
}

fn ferry(state: &Path, home: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(FERRY)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("FERRY_CONFIG", home.join("config.toml"))
        .env("FERRY_RUNTIME_DIR", home.join("run"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("FERRY_SERVER_URL")
        .env_remove("FERRY_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success() || out.status.code() == Some(4),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every stdout line parses as JSON.
fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .expect("JSON output is UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn real_path(v: &Value, key: &str) -> PathBuf {
    let bytes_key = format!("{key}_bytes");
    ferry_core::path_text::from_json(
        v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}")),
        v[&bytes_key].as_str(),
    )
    .unwrap()
}

#[test]
fn names_that_are_not_utf8_survive_every_command() {
    let state = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let lib = tempfile::tempdir().unwrap();
    let lib_path = lib.path().canonicalize().unwrap();
    // A folder and a file named in Latin-1: "été" and "café".
    let folder = lib_path.join(OsString::from_vec(b"\xE9t\xE9".to_vec()));
    std::fs::create_dir(&folder).unwrap();
    let file = folder.join(OsString::from_vec(b"caf\xE9.jpg".to_vec()));
    std::fs::copy(fixtures().join("plain/IMG_0010.JPG"), &file).unwrap();
    std::fs::copy(
        fixtures().join("plain/IMG_0011.JPG"),
        lib_path.join("plain.jpg"),
    )
    .unwrap();
    let (s, h) = (state.path(), home.path());
    let os = |a: &str| std::ffi::OsString::from(a);
    let lib_os = lib_path.as_os_str().to_owned();

    // backup --json: every event parses; the summary names the folder.
    let out = ok(
        ferry(s, h, &[&os("backup"), &lib_os, &os("--now"), &os("--json")]),
        "backup",
    );
    let events = json_lines(&out);
    let summary = events.last().unwrap();
    assert_eq!(summary["summary"]["verified"], 2, "{summary}");

    // library ls: JSON lossless, text escaped.
    let out = ok(
        ferry(s, h, &[&os("library"), &os("ls"), &os("--json")]),
        "ls",
    );
    let assets = json_lines(&out);
    let odd = assets
        .iter()
        .find(|a| a["dir_bytes"].is_string())
        .unwrap_or_else(|| panic!("no dir_bytes: {assets:?}"));
    assert_eq!(real_path(odd, "dir"), folder);
    assert_eq!(odd["dir"], format!("{}/\\xE9t\\xE9", lib_path.display()));
    let r = &odd["resources"][0];
    assert_eq!(real_path(r, "path"), file);
    assert!(
        r["path"]
            .as_str()
            .unwrap()
            .ends_with("/\\xE9t\\xE9/caf\\xE9.jpg")
    );
    let plain = assets.iter().find(|a| !a["dir_bytes"].is_string()).unwrap();
    assert!(
        plain["resources"][0].get("path_bytes").is_none(),
        "no lossless form for UTF-8 names: {plain}"
    );
    let id = odd["id"].as_str().unwrap().to_owned();
    let out = ok(ferry(s, h, &[&os("library"), &os("ls")]), "ls text");
    let text = String::from_utf8(out.stdout).expect("text output is UTF-8");
    assert!(
        text.contains("\\xE9t\\xE9") && text.contains("caf\\xE9.jpg"),
        "{text}"
    );

    // library show.
    let out = ok(
        ferry(
            s,
            h,
            &[&os("library"), &os("show"), &os(&id), &os("--json")],
        ),
        "show",
    );
    let shown = &json_lines(&out)[0];
    assert_eq!(real_path(&shown["resources"][0], "path"), file);
    let out = ok(
        ferry(s, h, &[&os("library"), &os("show"), &os(&id)]),
        "show",
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("caf\\xE9.jpg"), "{text}");
    // The escaped text copies back: bash's $'…' reads it as the real name.
    let shown_path = shown["resources"][0]["path"].as_str().unwrap();
    let back = Command::new("bash")
        .arg("-c")
        .arg(format!("printf %s $'{}'", shown_path.replace('\'', "\\'")))
        .output()
        .unwrap();
    assert_eq!(back.stdout, file.as_os_str().as_bytes());

    // library scan and changes.
    let out = ok(
        ferry(s, h, &[&os("library"), &os("scan"), &lib_os, &os("--json")]),
        "scan",
    );
    json_lines(&out);
    let out = ok(
        ferry(s, h, &[&os("library"), &os("changes"), &os("--json")]),
        "changes",
    );
    json_lines(&out);

    // why, jobs, history, status.
    let out = ok(ferry(s, h, &[&os("why"), &os(&id), &os("--json")]), "why");
    let why = &json_lines(&out)[0];
    assert_eq!(real_path(&why["resources"][0], "path"), file);
    let out = ok(ferry(s, h, &[&os("why"), &os(&id)]), "why text");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("caf\\xE9.jpg"), "{text}");
    for args in [
        vec!["jobs", "ls", "--json"],
        vec!["history", "--json"],
        vec!["status", "--json"],
    ] {
        let a: Vec<OsString> = args.iter().map(|x| os(x)).collect();
        let r: Vec<&std::ffi::OsStr> = a.iter().map(|x| x.as_os_str()).collect();
        let out = ok(ferry(s, h, &r), &args.join(" "));
        json_lines(&out);
    }
    for args in [vec!["jobs", "ls"], vec!["history"], vec!["status"]] {
        let a: Vec<OsString> = args.iter().map(|x| os(x)).collect();
        let r: Vec<&std::ffi::OsStr> = a.iter().map(|x| x.as_os_str()).collect();
        let out = ok(ferry(s, h, &r), &args.join(" "));
        String::from_utf8(out.stdout).expect("text output is UTF-8");
    }
}
