//! Ferry's state is its owner's alone (issue 23): the real `ferry backup` creates the state
//! folder and the built-in server's data `0700`, the database and the token `0600`, so another
//! local account cannot read the library's paths and places, the token or the stored photos —
//! checked as `nobody` when the tests run as root. An open state folder left by an older Ferry
//! is tightened at the next start, and Ferry says so once.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../library/tests/fixtures/library")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// A temp folder every local account may traverse (`0755`, not tempfile's `0700`), so only
/// Ferry's own modes protect what it writes inside.
fn open_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    chmod(t.path(), 0o755);
    t
}

fn ferry(home: &Path, state: &Path, args: &[&str]) -> Output {
    Command::new(FERRY)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("FERRY_CONFIG", home.join("no-config.toml"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("FERRY_RUNTIME_DIR", home.join("run"))
        .env_remove("FERRY_SERVER_URL")
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_LOG")
        .output()
        .unwrap()
}

fn backup(home: &Path, state: &Path) -> Output {
    let out = ferry(
        home,
        state,
        &["backup", fixtures().to_str().unwrap(), "--now", "--json"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One object the built-in server stored (a full copy of a photo).
fn a_stored_object(state: &Path) -> PathBuf {
    let objects = state.join("server/blobs/objects");
    for shard in std::fs::read_dir(&objects).unwrap() {
        let shard = shard.unwrap().path();
        if let Some(f) = std::fs::read_dir(&shard).unwrap().next() {
            return f.unwrap().path();
        }
    }
    panic!("no object under {}", objects.display());
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// `cat FILE` as `nobody` (uid/gid 65534, no supplementary groups): whether it could read it.
fn nobody_can_read(file: &Path) -> bool {
    let out = if on_path("setpriv") {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(file)
            .output()
            .unwrap()
    } else {
        Command::new("runuser")
            .args(["-u", "nobody", "--", "cat"])
            .arg(file)
            .output()
            .unwrap()
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Permission denied"),
            "cat failed for another reason: {err}"
        );
    }
    out.status.success()
}

#[test]
fn backup_keeps_the_state_private_and_another_user_cannot_read_it() {
    let home = open_tempdir();
    let state = home.path().join("state");
    backup(home.path(), &state);

    assert_eq!(mode(&state), 0o700, "state folder");
    assert_eq!(mode(&state.join("ferry.db")), 0o600, "state database");
    for side in ["ferry.db-wal", "ferry.db-shm"] {
        if state.join(side).exists() {
            assert_eq!(mode(&state.join(side)), 0o600, "{side}");
        }
    }
    assert_eq!(mode(&state.join("server-token")), 0o600, "token");
    assert_eq!(mode(&state.join("server")), 0o700, "built-in server's data");
    assert_eq!(mode(&state.join("extensions")), 0o700, "extensions' folder");
    let photo = a_stored_object(&state);

    if !is_root() {
        eprintln!("not root: the read-as-another-user half of this test is skipped");
        return;
    }
    if !on_path("setpriv") && !on_path("runuser") {
        eprintln!("neither setpriv nor runuser: the read-as-another-user half is skipped");
        return;
    }
    // The check itself works: nobody reads a world-readable file beside the state folder.
    let control = home.path().join("readable");
    std::fs::write(&control, b"anyone").unwrap();
    chmod(&control, 0o644);
    assert!(
        nobody_can_read(&control),
        "nobody must be able to read {} for this test to mean anything",
        control.display()
    );
    // Only Ferry's modes stand in the way: the folders above the state are open.
    assert_eq!(mode(home.path()) & 0o005, 0o005);
    for secret in [state.join("ferry.db"), state.join("server-token"), photo] {
        assert!(
            !nobody_can_read(&secret),
            "another user read {}",
            secret.display()
        );
    }
}

#[test]
fn an_open_state_folder_is_tightened_at_the_next_start_and_said_once() {
    let home = open_tempdir();
    let state = home.path().join("state");
    backup(home.path(), &state);
    // What an older Ferry left: everything readable by everyone.
    chmod(&state, 0o755);
    chmod(&state.join("ferry.db"), 0o644);
    chmod(&state.join("server-token"), 0o644);
    chmod(&state.join("server"), 0o755);

    let out = backup(home.path(), &state);
    let err = String::from_utf8_lossy(&out.stderr);
    for (path, from, to) in [
        (state.clone(), "0755", "0700"),
        (state.join("ferry.db"), "0644", "0600"),
        (state.join("server-token"), "0644", "0600"),
        (state.join("server"), "0755", "0700"),
    ] {
        let said = format!(
            "tightened permissions of {} from {from} to {to}",
            path.display()
        );
        assert_eq!(err.matches(&said).count(), 1, "{said:?} once in:\n{err}");
    }
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("ferry.db")), 0o600);
    assert_eq!(mode(&state.join("server-token")), 0o600);
    assert_eq!(mode(&state.join("server")), 0o700);

    // Nothing left to say at the start after.
    let out = ferry(home.path(), &state, &["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("tightened permissions"), "{err}");
    let out = backup(home.path(), &state);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("tightened permissions"), "{err}");
}

#[test]
fn an_open_config_folder_is_tightened_but_never_created() {
    let home = open_tempdir();
    let state = home.path().join("state");
    let config = home.path().join("config/ferry");
    let out = ferry(home.path(), &state, &["status"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!config.exists(), "Ferry writes nothing there");
    std::fs::create_dir_all(&config).unwrap();
    chmod(&config, 0o755);
    let out = ferry(home.path(), &state, &["status"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "tightened permissions of {} from 0755 to 0700",
            config.display()
        )),
        "{err}"
    );
    assert_eq!(mode(&config), 0o700);
    let out = ferry(home.path(), &state, &["status"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("tightened"));
}

#[test]
fn every_command_creates_the_state_folder_private() {
    let home = open_tempdir();
    for (i, args) in [
        &["status"][..],
        &["library", "ls"][..],
        &["extensions", "list"][..],
        &["jobs", "ls"][..],
    ]
    .iter()
    .enumerate()
    {
        let state = home.path().join(format!("state{i}"));
        let out = ferry(home.path(), &state, args);
        assert!(
            out.status.code().is_some_and(|c| c == 0 || c == 4),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(mode(&state), 0o700, "{args:?}");
        assert_eq!(mode(&state.join("ferry.db")), 0o600, "{args:?}");
    }
}
