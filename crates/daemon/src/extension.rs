//! Job creation through the extension host: `ferry backup` installs the bundled `ferry-backup`
//! extension (a manifest whose program is this very binary, `ferry extension-run
//! ferry-backup`), enables it (the command line is the consent), and calls it until it reports
//! `completed`. The extension decides what to upload; Ferry only runs it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_extension::protocol::ProcessStatus;
use ferry_host::consent::{self, Grant};
use ferry_host::{CallOutcome, Host, HostConfig, manifest};
use ferry_store::Store;

/// The bundled extension's id (also the job store's extension name for its jobs).
pub const EXTENSION: &str = "ferry-backup";

/// Its job limit: enough queued work that the engine never waits on the extension between
/// two of its (batched) steps, at any concurrency the command line allows.
pub const JOB_LIMIT: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    #[error("installing {EXTENSION}: {0}")]
    Install(String),
    #[error(transparent)]
    Host(#[from] ferry_host::HostError),
    #[error("{EXTENSION} failed {calls} calls in a row; last: {detail}")]
    Failing { calls: u32, detail: String },
}

/// Whether the extension has more to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Processing,
    Completed,
}

/// The installed, enabled extension and the host that runs it.
#[derive(Debug)]
pub struct Bundled {
    host: Host,
    failures: u32,
}

fn manifest_text(exe: &Path, server_url: &str, token: &str) -> String {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let base = format!("{}/v1/", server_url.trim_end_matches('/'));
    format!(
        "# Written by `ferry backup`: the bundled extension, run in-process by the ferry binary.\n\
         id = \"{EXTENSION}\"\n\
         name = \"Back up to a ferry-server\"\n\
         exec = {}\n\
         args = [\"extension-run\", \"{EXTENSION}\"]\n\
         capabilities = [\"upload\"]\n\
         scope = \"library\"\n\
         destination_bases = [{}]\n\
         job_limit = {JOB_LIMIT}\n\
         \n\
         [config]\n\
         server_url = {}\n\
         token = {}\n",
        q(&exe.to_string_lossy()),
        q(&base),
        q(server_url),
        q(token)
    )
}

impl Bundled {
    /// Writes the manifest (mode 0600: it holds the token) into `state_dir/extensions`,
    /// records the consent, and starts a host on its own store connection.
    pub fn install(
        state_dir: &Path,
        server_url: &str,
        token: &str,
    ) -> Result<Bundled, ExtensionError> {
        let exe = std::env::current_exe()
            .map_err(|e| ExtensionError::Install(format!("the ferry binary's path: {e}")))?;
        let ext_dir: PathBuf = state_dir.join("extensions");
        let path = ext_dir.join(format!("{EXTENSION}.toml"));
        crate::server::write_private(&path, manifest_text(&exe, server_url, token).as_bytes())
            .map_err(|e| ExtensionError::Install(format!("{}: {e}", path.display())))?;
        let m =
            manifest::Manifest::load(&path).map_err(|e| ExtensionError::Install(e.to_string()))?;
        let mut store = Store::open(&state_dir.join("ferry.db"))
            .map_err(|e| ExtensionError::Install(e.to_string()))?;
        consent::enable(
            &mut store,
            &m,
            Grant::requested(&m),
            crate::backup::now_ms(),
        )?;
        let host = Host::new(
            Arc::new(Mutex::new(store)),
            HostConfig::new(ext_dir, state_dir.to_owned()),
        )?;
        Ok(Bundled { host, failures: 0 })
    }

    /// One `process_jobs` round now. Failures are tolerated a few times in a row (the host
    /// backs the extension off; here the caller simply calls again).
    pub async fn step(&mut self) -> Result<StepOutcome, ExtensionError> {
        let outcome = self.host.call_now(EXTENSION).await?;
        tracing::debug!(?outcome, "{EXTENSION} answered");
        let detail = match outcome {
            CallOutcome::Answered {
                status: ProcessStatus::Completed,
                ..
            } => {
                self.failures = 0;
                return Ok(StepOutcome::Completed);
            }
            CallOutcome::Answered {
                status: ProcessStatus::Processing,
                ..
            } => {
                self.failures = 0;
                return Ok(StepOutcome::Processing);
            }
            CallOutcome::Answered { message, .. } => {
                message.unwrap_or_else(|| "it answered failure".into())
            }
            CallOutcome::Failed { failure } => format!("{failure:?}"),
            CallOutcome::NotEnabled => {
                return Err(ferry_host::HostError::NotEnabled(EXTENSION.into()).into());
            }
        };
        self.failures += 1;
        if self.failures >= 3 {
            return Err(ExtensionError::Failing {
                calls: self.failures,
                detail,
            });
        }
        Ok(StepOutcome::Processing)
    }
}
