//! A small extension whose behaviour `[config] mode` chooses, so the SDK's tests (and a host's)
//! can drive a real process: `report` reads the library and its saved state, `until_terminate`
//! keeps calling the host until `will_terminate`, `fail_init` refuses to start, `migrate`
//! (protocol version 2) exports every file of its data folder, imports a folder into it, and
//! reports (then clears) the import status `initialize` gave it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ferry_extension::protocol::{
    ErrorCode, ImportSource, ImportStatus, InitializeParams, MigrationPreflightResult,
    ProcessJobsParams, ProcessJobsResult, ProcessStatus,
};
use ferry_extension::{Archive, ErrorClass, Extension, Host, HostError};

#[derive(Debug, Default)]
struct Probe {
    mode: String,
    import_status: Option<ImportStatus>,
}

/// The extension's own data folder (Ferry sets it; the working folder otherwise).
fn data_dir() -> PathBuf {
    std::env::var_os("FERRY_EXTENSION_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Every file under `dir` as (path, `/`-separated name relative to `dir`), sorted; Ferry's
/// log of this extension (`stderr.log` at the top) is not its data.
fn files_under(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push((e.path(), rel));
            } else if t.is_file() && rel != "stderr.log" {
                out.push((e.path(), rel));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn answer(status: ProcessStatus, message: serde_json::Value) -> ProcessJobsResult {
    ProcessJobsResult {
        status,
        message: Some(message.to_string()),
    }
}

fn failure(e: &HostError) -> ProcessJobsResult {
    let status = match e.class() {
        ErrorClass::Transient | ErrorClass::Terminated => ProcessStatus::Processing,
        ErrorClass::Permanent => ProcessStatus::Failure,
    };
    answer(status, serde_json::json!({"error": e.to_string()}))
}

impl Probe {
    /// Changes since the saved token (or the whole library's count on the first call), the
    /// job limit, and the token saved for next time.
    fn report(&mut self, host: &mut Host) -> Result<serde_json::Value, HostError> {
        let saved = host.kv_get("token")?;
        // An expired or foreign token means a full pass, as a first run does (section 4).
        let since = match &saved {
            Some(t) => match host.changes_all(t) {
                Ok(r) => Some(r),
                Err(e)
                    if matches!(
                        e.code(),
                        Some(ErrorCode::ChangeTokenExpired | ErrorCode::InvalidToken)
                    ) =>
                {
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let (changes, until) = match since {
            Some(r) => r,
            None => {
                let token = host.current_token()?;
                let mut n = 0;
                let mut after: Option<String> = None;
                loop {
                    let page = host.list_assets(after.as_deref(), Some(2))?;
                    n += page.assets.len();
                    match page.next_after {
                        Some(a) => after = Some(a),
                        None => break,
                    }
                }
                host.kv_set("token", Some(&token))?;
                return Ok(serde_json::json!({"listed": n, "token": token}));
            }
        };
        let ids: Vec<String> = changes.iter().map(|c| c.asset_id.clone()).collect();
        let assets = host.assets(&ids)?;
        let limit = host.limit()?;
        host.kv_set("token", Some(&until))?;
        Ok(serde_json::json!({
            "changes": changes.len(),
            "assets": assets.assets.len(),
            "missing": assets.missing.len(),
            "available": limit.available,
            "token": until,
        }))
    }
}

impl Extension for Probe {
    fn initialize(&mut self, params: &InitializeParams) -> Result<(), String> {
        self.mode = params
            .config
            .get("mode")
            .and_then(|m| m.as_str())
            .unwrap_or("report")
            .to_owned();
        if self.mode == "fail_init" {
            return Err("configured to fail".into());
        }
        self.import_status = params.import_status().cloned();
        Ok(())
    }

    fn preflight(&mut self) -> Result<MigrationPreflightResult, String> {
        let files = files_under(&data_dir()).map_err(|e| e.to_string())?;
        let size = files
            .iter()
            .filter_map(|(p, _)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Ok(MigrationPreflightResult {
            size_estimate_bytes: size,
            data_version: "probe-1".into(),
            compressible: false,
        })
    }

    fn export(&mut self, archive: &mut Archive<'_, '_>) -> Result<(), String> {
        for (path, name) in files_under(&data_dir()).map_err(|e| e.to_string())? {
            if archive.will_terminate_received() {
                return Err("stopped by the host".into());
            }
            archive.append(&path, &name).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn import(&mut self, host: &mut Host, dir: &Path, source: &ImportSource) -> Result<(), String> {
        let to = data_dir();
        for (path, name) in files_under(dir).map_err(|e| e.to_string())? {
            let dest = to.join(&name);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::copy(&path, &dest).map_err(|e| e.to_string())?;
        }
        host.kv_set("imported_from", Some(&source.extension))
            .map_err(|e| e.to_string())
    }

    fn process_jobs(&mut self, host: &mut Host, _params: &ProcessJobsParams) -> ProcessJobsResult {
        match self.mode.as_str() {
            "until_terminate" => {
                // Bounded so a host that never sends will_terminate still gets an answer.
                for calls in 0..100_000u32 {
                    if host.will_terminate_received() {
                        return answer(
                            ProcessStatus::Processing,
                            serde_json::json!({"calls": calls}),
                        );
                    }
                    if let Err(e) = host.limit() {
                        return failure(&e);
                    }
                }
                answer(
                    ProcessStatus::Failure,
                    serde_json::json!({"calls": "bound"}),
                )
            }
            "migrate" => {
                let status = serde_json::to_value(&self.import_status).unwrap_or_default();
                if self.import_status.take().is_some()
                    && let Err(e) = host.clear_import_status()
                {
                    return failure(&e);
                }
                let files: Vec<String> = files_under(&data_dir())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(_, n)| n)
                    .collect();
                answer(
                    ProcessStatus::Completed,
                    serde_json::json!({"import_status": status, "files": files}),
                )
            }
            _ => match self.report(host) {
                Ok(v) => answer(ProcessStatus::Completed, v),
                Err(e) => failure(&e),
            },
        }
    }
}

fn main() -> ExitCode {
    ferry_extension::run(Probe::default())
}
