//! The bundled extension: `ferry backup` and the daemon back the library up to a ferry-server
//! through the reference extension, installed like any other (a manifest whose program is this
//! very binary, `ferry extension-run ferry-backup`) but written by Ferry into the state
//! folder's `extensions/`, and consented by the command line. The extension decides what to
//! upload; the host runs it (see [`crate::run`]).

use std::path::{Path, PathBuf};

use ferry_host::consent::{self, Grant};
use ferry_host::manifest;
use ferry_store::Store;

/// The bundled extension's id (also the job store's extension name for its jobs). Distinct
/// from `ferry-backup`, the id of the same program installed by hand for another server, so
/// the two never share consent, jobs or key-value records.
pub const EXTENSION: &str = "bundled";

/// The id the bundled extension had before it was renamed (its manifest is replaced).
const OLD_EXTENSION: &str = "ferry-backup";

/// Its job limit: enough queued work that the engine never waits on the extension between
/// two of its (batched) calls, at any concurrency the command line allows.
pub const JOB_LIMIT: u32 = 1000;

/// How the bundled extension's consent is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundledConsent {
    /// `ferry backup DIR`: running the command is the consent.
    Grant,
    /// The daemon: enabled the first time; a person who disabled it keeps it disabled.
    UnlessRevoked,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    #[error("installing the bundled extension: {0}")]
    Install(String),
    #[error(transparent)]
    Host(#[from] ferry_host::HostError),
    #[error("the bundled extension failed {calls} calls in a row; last: {detail}")]
    Failing { calls: u32, detail: String },
}

fn manifest_text(
    exe: &Path,
    server_url: &str,
    token: &str,
    trust: &ferry_tls::ServerTrust,
) -> String {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let base = format!("{}/v1/", server_url.trim_end_matches('/'));
    // The server's trust, so the extension's own check trusts what Ferry's uploads trust.
    let mut trust_keys = String::new();
    if let Some(ca) = &trust.ca_file {
        let ca = std::path::absolute(ca).unwrap_or_else(|_| ca.clone());
        trust_keys.push_str(&format!("ca_file = {}\n", q(&ca.to_string_lossy())));
    }
    if let Some(fp) = &trust.cert_sha256 {
        trust_keys.push_str(&format!("cert_sha256 = {}\n", q(&fp.to_string())));
    }
    format!(
        "# Written by `ferry backup` / `ferry daemon`: the bundled extension (ferry-backup, run\n\
         # in-process by the ferry binary). Rewritten at every start; edit the server instead.\n\
         id = \"{EXTENSION}\"\n\
         name = \"Back up to a ferry-server (bundled)\"\n\
         exec = {}\n\
         args = [\"extension-run\", \"ferry-backup\"]\n\
         capabilities = [\"upload\"]\n\
         scope = \"library\"\n\
         destination_bases = [{}]\n\
         job_limit = {JOB_LIMIT}\n\
         \n\
         [config]\n\
         server_url = {}\n\
         token = {}\n\
         {trust_keys}",
        q(&exe.to_string_lossy()),
        q(&base),
        q(server_url),
        q(token)
    )
}

/// Writes the manifest (mode 0600: it holds the token) into `state_dir/extensions` and
/// records the consent as `consent` says.
pub fn install(
    state_dir: &Path,
    server_url: &str,
    token: &str,
    trust: &ferry_tls::ServerTrust,
    consent: BundledConsent,
) -> Result<(), ExtensionError> {
    let exe = std::env::current_exe()
        .map_err(|e| ExtensionError::Install(format!("the ferry binary's path: {e}")))?;
    let ext_dir: PathBuf = state_dir.join("extensions");
    let mut store = Store::open(&state_dir.join("ferry.db"))
        .map_err(|e| ExtensionError::Install(e.to_string()))?;
    retire_old_id(&ext_dir, &mut store)?;
    let path = ext_dir.join(format!("{EXTENSION}.toml"));
    crate::server::write_private(
        &path,
        manifest_text(&exe, server_url, token, trust).as_bytes(),
    )
    .map_err(|e| ExtensionError::Install(format!("{}: {e}", path.display())))?;
    let m = manifest::Manifest::load(&path).map_err(|e| ExtensionError::Install(e.to_string()))?;
    let revoked = store
        .consent(EXTENSION)
        .map_err(ferry_host::HostError::from)?
        .is_some_and(|c| !c.is_enabled());
    if consent == BundledConsent::UnlessRevoked && revoked {
        tracing::warn!(
            "the bundled extension is disabled; `ferry extensions enable {EXTENSION}` turns it back on"
        );
        return Ok(());
    }
    consent::enable(
        &mut store,
        &m,
        Grant::requested(&m),
        crate::backup::now_ms(),
    )?;
    Ok(())
}

/// Before the rename, the bundled extension was `ferry-backup` in the state folder: its
/// manifest goes and its consent is withdrawn (its queued jobs are cancelled; the new one asks
/// the server what it holds, so nothing is sent twice).
fn retire_old_id(ext_dir: &Path, store: &mut Store) -> Result<(), ExtensionError> {
    let old = ext_dir.join(format!("{OLD_EXTENSION}.toml"));
    let Ok(m) = manifest::Manifest::load(&old) else {
        return Ok(());
    };
    if m.args.first().map(String::as_str) != Some("extension-run") {
        return Ok(());
    }
    consent::disable(store, OLD_EXTENSION, crate::backup::now_ms())?;
    std::fs::remove_file(&old)
        .map_err(|e| ExtensionError::Install(format!("{}: {e}", old.display())))?;
    Ok(())
}
