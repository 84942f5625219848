//! Why this exists: a self-hosted ferry-server with the certificate most self-hosters make
//! (`openssl req -x509 …`: self-signed, CA flag set) could not be used at all — the backup
//! failed with "invalid peer certificate: CaUsedAsEndEntity … check the URL and that the server
//! runs", and no option trusted it (issue 23, item 4). Here the real `ferry` binary meets a real
//! https ferry-server with such a certificate, made by openssl in the test: refused (exit 6)
//! with a message naming the certificate, why, and the options with the fingerprint it saw;
//! then backed up for real (uploads, the check, the bundled extension) when trusted by
//! `--server-cert-sha256`, by `--server-ca`, or by the configuration file's keys; refused with
//! a wrong fingerprint.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../library/tests/fixtures/library")
}

/// The self-signed certificate of the issue, made with its openssl one-liner.
struct SelfSigned {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    /// openssl's own `AA:BB:…` SHA-256 fingerprint of it.
    sha256: String,
}

/// `None` (after saying why) when openssl is not installed.
fn self_signed() -> Option<SelfSigned> {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "365", "-subj", "/CN=myserver"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .output();
    match made {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("openssl req failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("skipped: this test makes its certificate with openssl, not found: {e}");
            return None;
        }
    }
    let fp = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(fp.status.success());
    let sha256 = String::from_utf8(fp.stdout)
        .unwrap()
        .trim()
        .split_once('=')
        .expect("openssl prints `sha256 Fingerprint=…`")
        .1
        .to_owned();
    assert_eq!(sha256.len(), 95, "{sha256}");
    Some(SelfSigned {
        _dir: dir,
        cert,
        key,
        sha256,
    })
}

/// A ferry-server serving https with `cert`, on its own data folder, with a token.
struct Srv {
    handle: ferry_server::ServerHandle,
    url: String,
    token: String,
    data: tempfile::TempDir,
}

fn start(runtime: &tokio::runtime::Runtime, cert: &SelfSigned) -> Srv {
    let data = tempfile::tempdir().unwrap();
    let token = runtime
        .block_on(ferry_server::create_token(data.path(), "test"))
        .unwrap();
    let mut config = ferry_server::Config::new(data.path(), "127.0.0.1:0".parse().unwrap());
    config.tls = Some(ferry_server::TlsFiles {
        cert_path: cert.cert.clone(),
        key_path: cert.key.clone(),
    });
    let handle = runtime
        .block_on(ferry_server::Server::start(config))
        .unwrap();
    let url = handle.base_url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    Srv {
        handle,
        url,
        token,
        data,
    }
}

impl Srv {
    /// How many objects the server stores.
    fn objects(&self) -> usize {
        walk(&self.data.path().join("blobs/objects"))
    }
}

fn walk(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// The real binary on a fresh state folder, with `config` as its configuration file (else
/// none); conditions are not observed (`--now` in the arguments).
fn ferry(state: &Path, config: Option<&Path>, args: &[&str]) -> Output {
    Command::new(FERRY)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env(
            "FERRY_CONFIG",
            config.map_or_else(|| state.join("no-config.toml"), Path::to_path_buf),
        )
        .env_remove("FERRY_SERVER_URL")
        .env_remove("FERRY_TOKEN")
        .output()
        .unwrap()
}

fn backup(config: Option<&Path>, srv: &Srv, extra: &[&str]) -> Output {
    let state = tempfile::tempdir().unwrap();
    let lib = fixtures();
    let mut args = vec!["backup", lib.to_str().unwrap(), "--now", "--json"];
    if config.is_none() {
        args.extend(["--to", &srv.url, "--token", &srv.token]);
    }
    args.extend(extra);
    ferry(state.path(), config, &args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The backup went through: exit 0, everything sent and verified against the server.
fn assert_backed_up(out: &Output, srv: &Srv) {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("\"summary\""))
        .unwrap_or_else(|| panic!("no summary: {text}\n{}", stderr(out)));
    let s: Value = serde_json::from_str(line).unwrap();
    let resources = s["summary"]["resources"].as_u64().unwrap();
    assert!(resources >= 10, "{s}");
    assert_eq!(s["summary"]["verified"].as_u64(), Some(resources), "{s}");
    // A fresh server: every file went through the transfer engine, over the trusted TLS.
    assert_eq!(s["summary"]["already_stored"].as_u64(), Some(0), "{s}");
    assert!(s["summary"]["sent"].as_u64().unwrap() > 0, "{s}");
    assert!(srv.objects() > 0);
}

#[test]
fn an_untrusted_self_signed_server_is_refused_naming_the_certificate_and_the_options() {
    let Some(cert) = self_signed() else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let srv = start(&runtime, &cert);

    let out = backup(None, &srv, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains("self-signed"), "{err}");
    assert!(err.contains("--server-ca"), "{err}");
    assert!(
        err.contains(&format!("--server-cert-sha256 {}", cert.sha256)),
        "names the option with the fingerprint it saw: {err}"
    );
    assert!(!err.contains("cannot reach"), "{err}");
    assert!(!err.contains("CaUsedAsEndEntity"), "{err}");
    // The JSON error event says the same.
    let last: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["exit_code"], 6);
    assert!(
        last["error"].as_str().unwrap().contains(&cert.sha256),
        "{last}"
    );

    // Pinned to another certificate: refused as a fingerprint mismatch, nothing uploaded.
    let mut wrong = cert.sha256.clone();
    wrong.replace_range(0..2, if wrong.starts_with("00") { "01" } else { "00" });
    let out = backup(None, &srv, &["--server-cert-sha256", &wrong]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("fingerprint mismatch"), "{err}");
    assert!(err.contains(&wrong), "the pinned one: {err}");
    assert!(err.contains(&cert.sha256), "the one presented: {err}");
    assert_eq!(srv.objects(), 0);

    // A fingerprint that is not one: a usage error, before anything runs.
    let out = backup(None, &srv, &["--server-cert-sha256", "AB:CD"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("64 hex digits"), "{}", stderr(&out));
    runtime.block_on(srv.handle.shutdown());
}

#[test]
fn pinning_the_fingerprint_or_trusting_the_pem_lets_the_backup_through() {
    let Some(cert) = self_signed() else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let pinned = start(&runtime, &cert);
    let out = backup(None, &pinned, &["--server-cert-sha256", &cert.sha256]);
    assert_backed_up(&out, &pinned);

    let by_ca = start(&runtime, &cert);
    let out = backup(None, &by_ca, &["--server-ca", cert.cert.to_str().unwrap()]);
    assert_backed_up(&out, &by_ca);

    for s in [pinned, by_ca] {
        runtime.block_on(s.handle.shutdown());
    }
}

#[test]
fn the_configuration_file_keys_trust_the_server() {
    let Some(cert) = self_signed() else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let srv = start(&runtime, &cert);
    let conf_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&cert.cert, conf_dir.path().join("server.pem")).unwrap();
    let toml = |trust: &str| {
        format!(
            "[server]\nurl = \"{}\"\ntoken = \"{}\"\n{trust}\n",
            srv.url, srv.token
        )
    };

    // ca_file, relative to the configuration file's folder.
    let config = conf_dir.path().join("config.toml");
    std::fs::write(&config, toml("ca_file = \"server.pem\"")).unwrap();
    let out = backup(Some(&config), &srv, &[]);
    assert_backed_up(&out, &srv);
    let state = tempfile::tempdir().unwrap();
    let check = ferry(state.path(), Some(&config), &["config", "check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    let text = String::from_utf8_lossy(&check.stdout);
    let abs = conf_dir.path().join("server.pem");
    assert!(
        text.contains(&format!("ca_file = \"{}\"", abs.display())),
        "{text}"
    );

    // cert_sha256 in plain lower-case hex: shown by `config check`, and a wrong one refused.
    let hex: String = cert.sha256.replace(':', "").to_ascii_lowercase();
    std::fs::write(&config, toml(&format!("cert_sha256 = \"{hex}\""))).unwrap();
    let check = ferry(state.path(), Some(&config), &["config", "check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains(&format!("cert_sha256 = \"{hex}\"")),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let out = backup(Some(&config), &srv, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Keys that cannot work are configuration errors (exit 2), the file named.
    std::fs::write(&config, toml("ca_file = \"missing.pem\"")).unwrap();
    let check = ferry(state.path(), Some(&config), &["config", "check"]);
    assert_eq!(check.status.code(), Some(2), "{}", stderr(&check));
    assert!(stderr(&check).contains("missing.pem"), "{}", stderr(&check));
    std::fs::write(&config, toml("cert_sha256 = \"AB:CD\"")).unwrap();
    let out = backup(Some(&config), &srv, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("server.cert_sha256"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&config, toml("ca = \"server.pem\"")).unwrap();
    let out = backup(Some(&config), &srv, &[]);
    assert_eq!(out.status.code(), Some(2), "unknown keys stay errors");
    runtime.block_on(srv.handle.shutdown());
}
