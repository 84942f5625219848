//! Lingering: a systemd user service keeps running while the screen is locked, but systemd
//! stops it when its person logs out unless logind keeps their user manager running
//! ("lingering", `loginctl enable-linger`). `ferry service install` turns it on (asked, or
//! `--linger`) and `ferry status` says when it is off. `loginctl` is run by name from `PATH`.

use std::process::{Command, Stdio};

/// Whether logind keeps the person's services running after they log out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Linger {
    Yes,
    No,
    /// `loginctl` is absent or answered something else.
    Unknown,
}

/// What `ferry status` says when the unit is installed and lingering is off.
pub const STOPS_AT_LOGOUT: &str =
    "uploads stop when you log out (lingering off): run `loginctl enable-linger`";

/// The person's user name (`$USER`, else `$LOGNAME`), else their uid (loginctl takes either).
pub fn user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self")
                .map(|m| m.uid().to_string())
                .unwrap_or_else(|_| "0".into())
        })
}

/// Asks `loginctl show-user USER --property=Linger`.
pub fn state(user: &str) -> Linger {
    let Ok(out) = Command::new("loginctl")
        .args(["show-user", user, "--property=Linger"])
        .stdin(Stdio::null())
        .output()
    else {
        return Linger::Unknown;
    };
    if !out.status.success() {
        // logind knows only users who are logged in or lingering: one it does not know is not
        // lingering.
        let err = String::from_utf8_lossy(&out.stderr);
        return if err.contains("not logged in or lingering") {
            Linger::No
        } else {
            Linger::Unknown
        };
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// `Linger=yes` / `Linger=no` among `loginctl show-user`'s lines.
fn parse(text: &str) -> Linger {
    match text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Linger="))
        .map(str::trim)
    {
        Some("yes") => Linger::Yes,
        Some("no") => Linger::No,
        _ => Linger::Unknown,
    }
}

/// `loginctl enable-linger USER`; the error says what went wrong.
pub fn enable(user: &str) -> Result<(), String> {
    match Command::new("loginctl")
        .args(["enable-linger", user])
        .stdin(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`loginctl enable-linger {user}` failed ({s})")),
        Err(e) => Err(format!("cannot run loginctl: {e}")),
    }
}

/// The service as `ferry status` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceStatus {
    pub unit: std::path::PathBuf,
    /// Whether `ferry service install` wrote the unit.
    pub installed: bool,
    /// Checked only when the unit is installed.
    pub linger: Option<Linger>,
}

impl ServiceStatus {
    pub fn of(unit: &std::path::Path) -> ServiceStatus {
        let installed = unit.exists();
        ServiceStatus {
            unit: unit.to_owned(),
            installed,
            linger: installed.then(|| state(&user())),
        }
    }

    /// The `ferry status` line, when the unit is installed.
    pub fn line(&self) -> Option<String> {
        Some(match self.linger? {
            Linger::No => format!("  service: {STOPS_AT_LOGOUT}"),
            Linger::Yes => {
                "  service: installed, keeps running after you log out (lingering on)".into()
            }
            Linger::Unknown => {
                "  service: installed; lingering unknown (no answer from loginctl): \
                 uploads may stop when you log out"
                    .into()
            }
        })
    }
}

/// What `ferry service install` did about lingering.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallOutcome {
    pub user: String,
    /// Before: on already means nothing to do.
    pub was: Linger,
    /// Whether it turned lingering on now.
    pub enabled: bool,
    /// Why turning it on failed.
    pub error: Option<String>,
}

impl InstallOutcome {
    /// On, already or now.
    pub fn on(&self) -> bool {
        self.was == Linger::Yes || self.enabled
    }
}

/// Checks lingering and, when it is off, turns it on if `choice` says so (`--linger`), or, with
/// neither flag, if the person says yes on a terminal. Left off, it says plainly that uploads
/// stop at logout and how to change that.
pub fn on_install(choice: Option<bool>) -> std::io::Result<InstallOutcome> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let user = user();
    let was = state(&user);
    let mut outcome = InstallOutcome {
        user: user.clone(),
        was,
        enabled: false,
        error: None,
    };
    if was == Linger::Yes {
        return Ok(outcome);
    }
    let want = match choice {
        Some(c) => c,
        None if std::io::stdin().is_terminal() => {
            eprint!(
                "Keep uploading after you log out? This turns on lingering for {user} \
                 (`loginctl enable-linger {user}`): systemd then keeps your user services \
                 running while you are logged out. [Y/n] "
            );
            std::io::stderr().flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            matches!(answer.trim(), "" | "y" | "Y" | "yes")
        }
        None => false,
    };
    if want {
        match enable(&user) {
            Ok(()) => outcome.enabled = true,
            Err(e) => {
                eprintln!("ferry: cannot turn lingering on: {e}");
                eprintln!("{}", warning(&user, was));
                outcome.error = Some(e);
            }
        }
    } else {
        eprintln!("{}", warning(&user, was));
    }
    Ok(outcome)
}

/// The plain warning when lingering stays off (or cannot be checked).
pub fn warning(user: &str, state: Linger) -> String {
    let why = match state {
        Linger::Unknown => {
            "lingering could not be checked (is loginctl installed?), and without it"
        }
        _ => "lingering is off, so",
    };
    format!(
        "ferry: {why} systemd stops the service when you log out: uploads stop at logout and \
         resume at your next login. To keep them going, run `loginctl enable-linger {user}` \
         (or `ferry service install --linger`)."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loginctl_answers() {
        assert_eq!(parse("Linger=yes\n"), Linger::Yes);
        assert_eq!(parse("Name=me\nLinger=no\n"), Linger::No);
        assert_eq!(parse(""), Linger::Unknown);
        assert_eq!(parse("Linger=maybe"), Linger::Unknown);
    }
}
