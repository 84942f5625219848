//! `ferry dashboard`: asks the running daemon for a one-time login link to its web dashboard
//! and opens it in the browser (`xdg-open`), or prints it (`--no-open`, or no `xdg-open`).

use crate::EXIT_FAILURE;
use crate::output::json_line;
use anyhow::Context;
use clap::Args;
use ferry_daemon::control::{self, ClientError};
use ferry_daemon::dashboard::LoginUrl;
use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Print the login link instead of opening a browser.
    #[arg(long)]
    no_open: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(state_dir: &Path, args: DashboardArgs) -> anyhow::Result<ExitCode> {
    let socket = ferry_daemon::config::runtime_dir(state_dir).join(control::SOCKET_NAME);
    let (code, body) = match control::request(&socket, "POST", "/v1/dashboard/login") {
        Ok(answer) => answer,
        Err(ClientError::NotRunning(_)) => {
            eprintln!(
                "ferry: the dashboard is served by the daemon, and no daemon is running; start it with `ferry daemon` or `ferry service install --now`"
            );
            return Ok(ExitCode::from(EXIT_FAILURE));
        }
        Err(e) => return Err(e.into()),
    };
    if code != 200 {
        anyhow::bail!("the daemon could not start the dashboard ({code}): {body}");
    }
    let login: LoginUrl =
        serde_json::from_str(&body).context("the daemon's answer has an unexpected shape")?;
    let opened = if args.no_open {
        None
    } else {
        // xdg-open may run as long as the browser it starts (some desktops' openers do): spawn
        // it and do not wait, so the command returns at once. A thread reaps it should it end
        // while we still run; once we exit, init does.
        Some(
            std::process::Command::new("xdg-open")
                .arg(&login.url)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map(|mut child| {
                    std::thread::spawn(move || child.wait());
                }),
        )
    };
    let opened_ok = matches!(opened, Some(Ok(())));
    if args.json {
        json_line(&serde_json::json!({
            "url": login.url,
            "port": login.port,
            "expires_in_s": login.expires_in_s,
            "opened": opened_ok,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    match opened {
        None => {}
        Some(Ok(())) => {
            println!("Asked your browser to open the dashboard.");
            println!(
                "If it did not open, this link works once in the next {} s:",
                login.expires_in_s
            );
        }
        Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => println!(
            "xdg-open is not installed; open this link yourself (it works once, in the next {} s):",
            login.expires_in_s
        ),
        Some(Err(e)) => println!(
            "could not run xdg-open ({e}); open this link yourself (it works once, in the next {} s):",
            login.expires_in_s
        ),
    }
    println!("{}", login.url);
    Ok(ExitCode::SUCCESS)
}
