//! A small extension whose behaviour `[config] mode` chooses, so the SDK's tests (and a host's)
//! can drive a real process: `report` reads the library and its saved state, `until_terminate`
//! keeps calling the host until `will_terminate`, `fail_init` refuses to start.

use std::process::ExitCode;

use ferry_extension::protocol::{
    InitializeParams, ProcessJobsParams, ProcessJobsResult, ProcessStatus,
};
use ferry_extension::{ErrorClass, Extension, Host, HostError};

#[derive(Debug, Default)]
struct Probe {
    mode: String,
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
        let (changes, until) = match &saved {
            Some(t) => host.changes_all(t)?,
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
        Ok(())
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
