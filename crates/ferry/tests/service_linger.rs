//! A systemd user service stops at logout unless lingering is on (issue 23): the real
//! `ferry service install` checks it and turns it on (`--linger`), leaves it off and says so
//! (`--no-linger`, or no terminal and no flag), does nothing when it is on; `ferry status`
//! says when it is off. Against a stub `loginctl` first on `PATH` that records its arguments;
//! no real systemd is touched (the unit goes to a temp `XDG_CONFIG_HOME`, no `--now`).

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const STOPS: &str =
    "service: uploads stop when you log out (lingering off): run `loginctl enable-linger`";

struct Env {
    dir: tempfile::TempDir,
    /// Where the stub lives; absent from `PATH` when `without_loginctl`.
    bin: PathBuf,
    with_loginctl: bool,
}

impl Env {
    /// A stub `loginctl` answering `Linger=<linger>`; `enable-linger` turns it to yes.
    fn new(linger: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let calls = dir.path().join("loginctl-calls");
        let answer = dir.path().join("linger");
        std::fs::write(&answer, format!("Linger={linger}\n")).unwrap();
        let stub = bin.join("loginctl");
        std::fs::write(
            &stub,
            format!(
                "#!/bin/sh\n\
                 echo \"$*\" >> '{calls}'\n\
                 case \"$1\" in\n\
                 show-user) cat '{answer}' ;;\n\
                 enable-linger) echo Linger=yes > '{answer}' ;;\n\
                 *) exit 1 ;;\n\
                 esac\n",
                calls = calls.display(),
                answer = answer.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        Env {
            dir,
            bin,
            with_loginctl: true,
        }
    }

    fn without_loginctl() -> Env {
        let mut env = Env::new("no");
        env.with_loginctl = false;
        env
    }

    fn run(&self, args: &[&str]) -> Output {
        let h = self.dir.path();
        let path = if self.with_loginctl {
            let rest = std::env::var_os("PATH").unwrap_or_default();
            std::env::join_paths(
                std::iter::once(self.bin.clone()).chain(std::env::split_paths(&rest)),
            )
            .unwrap()
        } else {
            // Nothing on PATH at all: no loginctl, no systemctl.
            h.join("empty-bin").into_os_string()
        };
        Command::new(FERRY)
            .arg("--state-dir")
            .arg(h.join("state"))
            .args(args)
            .env("PATH", path)
            .env("USER", "tester")
            .env("FERRY_CONFIG", h.join("config.toml"))
            .env("FERRY_RUNTIME_DIR", h.join("run"))
            .env("XDG_CONFIG_HOME", h.join("config"))
            .env_remove("FERRY_SERVER_URL")
            .env_remove("FERRY_TOKEN")
            .output()
            .unwrap()
    }

    /// Every `loginctl` command line, in order.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("loginctl-calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn enabled_linger(&self) -> bool {
        self.calls().iter().any(|c| c.starts_with("enable-linger"))
    }

    fn unit(&self) -> PathBuf {
        self.dir.path().join("config/systemd/user/ferry.service")
    }
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn json(out: &Output) -> Value {
    let t = text(&out.stdout);
    serde_json::from_str(t.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {t}\nstderr: {}", text(&out.stderr)))
}

fn ok(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn install_with_linger_turns_it_on() {
    let env = Env::new("no");
    let out = env.run(&["service", "install", "--linger", "--json"]);
    ok(&out);
    assert!(env.unit().exists());
    assert_eq!(
        env.calls(),
        ["show-user tester --property=Linger", "enable-linger tester"]
    );
    let v = json(&out);
    assert_eq!(v["linger"]["was"], "no");
    assert_eq!(v["linger"]["enabled"], true);
    assert!(!text(&out.stderr).contains("stop at logout"));

    let out = env.run(&["service", "install", "--linger"]);
    ok(&out);
    assert!(
        text(&out.stdout).contains("lingering is on for tester"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn install_with_no_linger_leaves_it_off_and_says_so() {
    let env = Env::new("no");
    let out = env.run(&["service", "install", "--no-linger"]);
    ok(&out);
    assert!(env.unit().exists());
    assert!(!env.enabled_linger(), "{:?}", env.calls());
    let err = text(&out.stderr);
    assert!(
        err.contains("uploads stop at logout") && err.contains("`loginctl enable-linger tester`"),
        "{err}"
    );
}

#[test]
fn install_without_a_terminal_or_a_flag_does_not_enable_and_says_so() {
    let env = Env::new("no");
    let out = env.run(&["service", "install", "--json"]);
    ok(&out);
    assert!(!env.enabled_linger(), "{:?}", env.calls());
    assert_eq!(json(&out)["linger"]["enabled"], false);
    let err = text(&out.stderr);
    assert!(err.contains("uploads stop at logout"), "{err}");
    assert!(err.contains("loginctl enable-linger tester"), "{err}");
}

#[test]
fn install_when_lingering_is_on_calls_nothing() {
    let env = Env::new("yes");
    let out = env.run(&["service", "install", "--linger", "--json"]);
    ok(&out);
    assert_eq!(env.calls(), ["show-user tester --property=Linger"]);
    let v = json(&out);
    assert_eq!(v["linger"]["was"], "yes");
    assert_eq!(v["linger"]["enabled"], false);
    assert!(
        !text(&out.stderr).contains("logout"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_flags_exclude_each_other() {
    let env = Env::new("no");
    let out = env.run(&["service", "install", "--linger", "--no-linger"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(env.calls().is_empty());
}

#[test]
fn status_says_uploads_stop_at_logout_when_lingering_is_off() {
    let env = Env::new("no");
    // No unit: nothing said, loginctl not asked.
    let out = env.run(&["status"]);
    ok(&out);
    assert!(
        !text(&out.stdout).contains("service:"),
        "{}",
        text(&out.stdout)
    );
    assert!(env.calls().is_empty(), "{:?}", env.calls());
    let v = json(&env.run(&["status", "--json"]));
    assert_eq!(v["service"]["installed"], false);
    assert_eq!(v["service"]["linger"], Value::Null);

    ok(&env.run(&["service", "install", "--no-linger"]));
    let out = env.run(&["status"]);
    ok(&out);
    assert!(text(&out.stdout).contains(STOPS), "{}", text(&out.stdout));
    let v = json(&env.run(&["status", "--json"]));
    assert_eq!(v["service"]["installed"], true);
    assert_eq!(v["service"]["linger"], "no");

    // Turned on: the line goes.
    ok(&env.run(&["service", "install", "--linger"]));
    let out = env.run(&["status"]);
    ok(&out);
    assert!(!text(&out.stdout).contains(STOPS), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("lingering on"));
    assert_eq!(
        json(&env.run(&["status", "--json"]))["service"]["linger"],
        "yes"
    );
}

#[test]
fn without_loginctl_status_says_unknown_and_install_warns() {
    let env = Env::without_loginctl();
    let out = env.run(&["service", "install", "--no-linger", "--json"]);
    ok(&out);
    assert_eq!(json(&out)["linger"]["was"], "unknown");
    let err = text(&out.stderr);
    assert!(
        err.contains("could not be checked") && err.contains("uploads stop at logout"),
        "{err}"
    );
    let out = env.run(&["status", "--json"]);
    ok(&out);
    assert_eq!(json(&out)["service"]["linger"], "unknown");
    let out = env.run(&["status"]);
    ok(&out);
    assert!(
        text(&out.stdout).contains("lingering unknown"),
        "{}",
        text(&out.stdout)
    );
    // Asked to turn it on and cannot: the install says so and fails.
    let out = env.run(&["service", "install", "--linger"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot turn lingering on"));
    assert!(env.calls().is_empty());
}
