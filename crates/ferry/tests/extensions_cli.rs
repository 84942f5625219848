//! The real `ferry` binary: `ferry extensions list | show | enable | disable` and their exit
//! codes, consent refused without a terminal unless `--yes`.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn ferry(state: &Path, exts: &Path, args: &[&str]) -> Output {
    Command::new(FERRY)
        .arg("--state-dir")
        .arg(state)
        .arg("extensions")
        .arg("--extensions-dir")
        .arg(exts)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
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

#[test]
fn consent_is_asked_recorded_and_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let (state, exts) = (dir.path().join("state"), dir.path().join("extensions"));
    std::fs::create_dir_all(&exts).unwrap();
    std::fs::write(
        exts.join("backup.toml"),
        "id = \"backup\"\nname = \"Backup\"\nexec = \"/bin/true\"\ncapabilities = [\"upload\"]\n\
         destination_bases = [\"http://127.0.0.1:9/up\"]\nscope = [\"Camera\", \"Trips\"]\njob_limit = 50\n",
    )
    .unwrap();
    std::fs::write(exts.join("broken.toml"), "id = \"broken\"\n").unwrap();

    let out = ferry(&state, &exts, &["list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let list = json(&out);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], "backup");
    assert_eq!(list[0]["enabled"], false);
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.toml"));

    // No terminal and no --yes: refused, nothing recorded.
    let out = ferry(&state, &exts, &["enable", "backup"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--yes"), "{err}");
    assert!(
        err.contains("Camera, Trips") && err.contains("http://127.0.0.1:9/up"),
        "{err}"
    );
    assert_eq!(
        json(&ferry(&state, &exts, &["list", "--json"]))[0]["enabled"],
        false
    );

    // A folder outside what it asks for, or outside the library, is refused.
    let out = ferry(
        &state,
        &exts,
        &["enable", "backup", "--yes", "--folder", "Elsewhere"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = ferry(
        &state,
        &exts,
        &["enable", "backup", "--yes", "--folder", "../up"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = ferry(&state, &exts, &["enable", "nosuch", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let out = ferry(
        &state,
        &exts,
        &[
            "enable",
            "backup",
            "--yes",
            "--folder",
            "Trips/2024",
            "--json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let enabled = json(&out);
    assert_eq!(enabled["enabled"], true);
    assert_eq!(
        enabled["scope"]["folders"],
        serde_json::json!(["Trips/2024"])
    );
    assert_eq!(enabled["job_limit"], 50);

    let shown = json(&ferry(&state, &exts, &["show", "backup", "--json"]));
    assert_eq!(
        shown["consent"]["scope"]["folders"],
        serde_json::json!(["Trips/2024"])
    );
    assert_eq!(shown["consent"]["disabled_at_ms"], Value::Null);
    assert_eq!(
        json(&ferry(&state, &exts, &["list", "--json"]))[0]["enabled"],
        true
    );

    let out = ferry(&state, &exts, &["disable", "backup", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json(&out)["was_enabled"], true);
    let shown = json(&ferry(&state, &exts, &["show", "backup", "--json"]));
    assert!(shown["consent"]["disabled_at_ms"].is_i64(), "{shown}");

    let out = ferry(&state, &exts, &["show", "nosuch"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
