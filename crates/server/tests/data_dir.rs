//! The data directory holds a copy of every upload: the real `ferry-server` binary creates it
//! `0700` (its owner's alone) unless `--data-mode` says otherwise, tightens an existing open
//! one at start and says so, and refuses a mode that would lock itself out.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const SERVER: &str = env!("CARGO_BIN_EXE_ferry-server");

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Starts `serve` on port 0, waits for its address line, stops it; returns its stderr.
fn serve_once(data: &Path, extra: &[&str]) -> String {
    let mut child = Command::new(SERVER)
        .args(["serve", "--open", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(line.starts_with("listening on "), "{line}\nstderr: {err}");
    err
}

#[test]
fn serve_creates_the_data_directory_0700() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("srv");
    serve_once(&data, &[]);
    assert_eq!(mode(&data), 0o700);
    // The database inside is unreachable to others through it.
    assert!(data.join("meta.db").exists());
}

#[test]
fn serve_tightens_an_open_data_directory_and_says_so_once() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("srv");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = serve_once(&data, &[]);
    assert_eq!(mode(&data), 0o700);
    assert!(
        err.contains(&format!(
            "tightened permissions of {} from 0755 to 0700",
            data.display()
        )),
        "{err}"
    );
    let err = serve_once(&data, &[]);
    assert!(!err.contains("permissions of"), "said once: {err}");
}

#[test]
fn data_mode_chooses_another_mode_and_a_lockout_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("srv");
    serve_once(&data, &["--data-mode", "0750"]);
    assert_eq!(mode(&data), 0o750);
    // Back to the default: tightened again.
    serve_once(&data, &[]);
    assert_eq!(mode(&data), 0o700);

    for bad in ["0600", "0o1777", "rwx", "0800"] {
        let out = Command::new(SERVER)
            .args(["serve", "--open", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(["--data-mode", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--data-mode"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let help = Command::new(SERVER)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--data-mode"));
}

#[test]
fn token_create_makes_a_new_data_directory_0700() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("new/srv");
    let out = Command::new(SERVER)
        .args(["token", "create", "--name", "phone", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&data), 0o700);
}
