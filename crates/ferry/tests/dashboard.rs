//! The dashboard over HTTP on loopback against a real `ferry daemon`: the one-time login,
//! each security rule (Host allow-list, session, Origin / Sec-Fetch-Site / CSRF on POSTs,
//! headers, escaping) with a check that consent and jobs did not change when a request was
//! refused, the consent forms, and live updates by Server-Sent Events.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const XSS_NAME: &str = "<img src=x onerror=alert(1)>.jpg";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../library/tests/fixtures/library")
}

/// A state folder and a home of its own, as in daemon_cli.rs.
struct Env {
    state: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            state: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FERRY);
        c.arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .env("FERRY_CONFIG", self.home.path().join("config.toml"))
            .env("FERRY_RUNTIME_DIR", self.home.path().join("run"))
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env_remove("FERRY_SERVER_URL")
            .env_remove("FERRY_TOKEN");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn socket(&self) -> PathBuf {
        self.home.path().join("run/control.sock")
    }

    /// Starts `ferry daemon` and waits for its control socket.
    fn daemon(&self, args: &[&str]) -> Daemon {
        let mut all = vec!["daemon"];
        all.extend_from_slice(args);
        let child = self
            .cmd(&all)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the control socket", || self.socket().exists());
        Daemon(child)
    }

    /// Consent and jobs as the CLI sees them: what a refused request must leave alone.
    fn consent_and_jobs(&self) -> (Value, Vec<(String, String, bool)>) {
        let consent =
            json(&self.run(&["extensions", "show", "bundled", "--json"]))["consent"].clone();
        (consent, self.jobs())
    }

    /// Every job's id, state and whether it was acknowledged (`ferry jobs ls`).
    fn jobs(&self) -> Vec<(String, String, bool)> {
        json(&self.run(&["jobs", "ls", "--json"]))
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["id"].as_str().unwrap().to_owned(),
                    j["state"].as_str().unwrap().to_owned(),
                    j["acknowledged"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    }
}

/// Stops the daemon (SIGTERM) at the end of a test, even a failing one.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Polls `check` until it holds or the (generous) deadline passes.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[derive(Debug)]
struct Answer {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// The body as sent (a thumbnail is binary).
    raw: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The security headers every answer carries.
    fn assert_hardened(&self) {
        assert_eq!(
            self.header("content-security-policy"),
            Some(CSP),
            "{self:?}"
        );
        assert_eq!(self.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(self.header("referrer-policy"), Some("no-referrer"));
        if self
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html"))
        {
            assert_eq!(self.header("cache-control"), Some("no-store"));
        }
    }
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&s[..eol]).trim().to_owned();
        let Ok(n) = usize::from_str_radix(&size, 16) else {
            break;
        };
        let rest = &s[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// One HTTP/1.1 request to the dashboard, as a browser or an attacker would send it: the
/// Host header is ours unless `headers` gives one.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let code = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Answer {
        code: code.parse().unwrap(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        raw: body,
    }
}

/// `ferry dashboard --no-open --json`: the login URL's port and path.
fn login_url(env: &Env) -> (u16, String) {
    let out = env.run(&["dashboard", "--no-open", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    let url = v["url"].as_str().unwrap();
    let rest = url.strip_prefix("http://127.0.0.1:").unwrap();
    let (port, path) = rest.split_once('/').unwrap();
    (port.parse().unwrap(), format!("/{path}"))
}

/// Logs in: the port and the `name=value` of the session cookie.
fn login(env: &Env) -> (u16, String) {
    let (port, path) = login_url(env);
    let a = http(port, "GET", &path, &[], "");
    assert_eq!(a.code, 303, "{a:?}");
    let cookie = a.header("set-cookie").unwrap();
    (port, cookie.split(';').next().unwrap().to_owned())
}

/// The CSRF token in the page's forms.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a token")
        + 19;
    page[at..at + 64].to_owned()
}

#[test]
fn the_login_link_works_once_and_opens_a_session_on_the_page() {
    let env = Env::new();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), &lib.path().join("plain"));
    // An installed (not enabled) extension whose name is markup: its card escapes it.
    let extensions = env.home.path().join("config/ferry/extensions");
    std::fs::create_dir_all(&extensions).unwrap();
    std::fs::write(
        extensions.join("evil.toml"),
        "id = \"evil\"\nname = \"<script>alert(1)</script>\"\nexec = \"/bin/false\"\n\
         capabilities = [\"upload\"]\nscope = \"library\"\n\
         destination_bases = [\"http://127.0.0.1:9/v1/\"]\n",
    )
    .unwrap();
    let _daemon = env.daemon(&["--folder", lib.path().to_str().unwrap(), "--now"]);
    wait_for("everything backed up", || {
        env.run(&["status", "--json"]).status.code() == Some(0)
    });
    let assets = json(&env.run(&["status", "--json"]))["status"]["library"]["assets"]
        .as_u64()
        .unwrap();

    // Printed as one line on stdout with --no-open.
    let out = env.run(&["dashboard", "--no-open"]);
    assert_eq!(out.status.code(), Some(0));
    let printed = String::from_utf8_lossy(&out.stdout);
    let url = printed.trim();
    assert!(url.starts_with("http://127.0.0.1:"), "{printed}");
    let token = url.split("token=").nth(1).unwrap();
    assert_eq!(token.len(), 64, "256 bits in hex");
    let (port, path) = login_url(&env);

    let a = http(port, "GET", &path, &[], "");
    assert_eq!(a.code, 303, "{a:?}");
    assert_eq!(a.header("location"), Some("/"));
    a.assert_hardened();
    let set_cookie = a.header("set-cookie").unwrap();
    // Max-Age: the browser forgets it when the session would end anyway (7 days).
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=604800"] {
        assert!(set_cookie.contains(attr), "{attr} in {set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    // Single use; a wrong or missing token gets the same 401.
    for p in [
        path.clone(),
        format!("/login?token={}", "0".repeat(64)),
        "/login".to_owned(),
    ] {
        let again = http(port, "GET", &p, &[], "");
        assert_eq!(again.code, 401, "{p}: {again:?}");
        assert!(again.body.contains("run `ferry dashboard`"), "{again:?}");
        assert!(again.header("set-cookie").is_none());
        again.assert_hardened();
    }

    let page = http(port, "GET", "/", &[("Cookie", cookie.as_str())], "");
    assert_eq!(page.code, 200, "{page:?}");
    page.assert_hardened();
    assert!(
        page.body
            .contains(&format!("All {assets} photos are backed up")),
        "{}",
        page.body
    );
    assert!(page.body.contains("aria-live=\"polite\""));
    assert!(
        page.body
            .contains("&lt;script&gt;alert(1)&lt;/script&gt; <span class=\"id\">(evil)</span>"),
        "the extension's card, its name escaped: {}",
        page.body
    );
    assert!(
        page.body.contains("id=\"ext-bundled\""),
        "the bundled extension's card"
    );
    // No inline script or style: the CSP allows none.
    assert_eq!(
        page.body.matches("<script").count(),
        page.body
            .matches("<script src=\"/static/dashboard.js\"></script>")
            .count()
    );
    assert!(!page.body.contains("<style") && !page.body.contains(" style="));

    for (p, ty) in [
        ("/static/dashboard.css", "text/css"),
        ("/static/dashboard.js", "text/javascript"),
    ] {
        let a = http(port, "GET", p, &[], "");
        assert_eq!(a.code, 200);
        assert!(a.header("content-type").unwrap().starts_with(ty), "{a:?}");
        a.assert_hardened();
    }

    // A second `ferry dashboard` reuses the running listener.
    assert_eq!(login_url(&env).0, port);

    // Signing out ends the session (revocable), under the same rules as every POST.
    let origin = format!("http://127.0.0.1:{port}");
    let a = http(
        port,
        "POST",
        "/logout",
        &[("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
        "csrf=wrong",
    );
    assert_eq!(a.code, 403, "{a:?}");
    assert_eq!(
        http(port, "GET", "/", &[("Cookie", cookie.as_str())], "").code,
        200,
        "a refused sign-out leaves the session"
    );
    let a = http(
        port,
        "POST",
        "/logout",
        &[("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
        &format!("csrf={}", csrf_of(&page.body)),
    );
    assert_eq!(a.code, 200, "{a:?}");
    a.assert_hardened();
    assert!(a.header("set-cookie").unwrap().contains("Max-Age=0"));
    let after = http(port, "GET", "/", &[("Cookie", cookie.as_str())], "");
    assert_eq!(after.code, 401, "the session is gone");
    assert!(after.body.contains("run `ferry dashboard`"));
}

#[test]
fn ferry_dashboard_opens_the_link_with_xdg_open_or_prints_it_without_one() {
    let env = Env::new();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), lib.path());
    let _daemon = env.daemon(&["--folder", lib.path().to_str().unwrap(), "--now"]);

    // A stand-in browser opener that writes down what it was asked to open.
    let bin = tempfile::tempdir().unwrap();
    let opened = bin.path().join("opened");
    let script = bin.path().join("xdg-open");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > '{}'\n", opened.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = env
        .cmd(&["dashboard"])
        .env("PATH", bin.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The opener runs on its own after `ferry dashboard` returned.
    let mut url = String::new();
    wait_for("the opener to write the link", || {
        url = std::fs::read_to_string(&opened).unwrap_or_default();
        url.contains("token=") && url.len() > url.find("token=").unwrap() + 6 + 63
    });
    let rest = url.strip_prefix("http://127.0.0.1:").unwrap();
    let (port, path) = rest.split_once('/').unwrap();
    let a = http(port.parse().unwrap(), "GET", &format!("/{path}"), &[], "");
    assert_eq!(a.code, 303, "the opened link logs in: {a:?}");

    // No xdg-open: not an error; the link is printed and the reason said.
    let empty = tempfile::tempdir().unwrap();
    let out = env
        .cmd(&["dashboard"])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("xdg-open is not installed"), "{text}");
    assert!(text.contains("http://127.0.0.1:"), "{text}");

    // No daemon: said plainly, exit 1.
    let other = Env::new();
    let out = other.run(&["dashboard", "--no-open"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no daemon is running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A ferry-server on loopback that refuses every photo (anything over 100 bytes is too large).
struct RefusingServer {
    server: ferry_server::ServerHandle,
    token: String,
    _data: tempfile::TempDir,
    // Last: the server's tasks run on it.
    _runtime: tokio::runtime::Runtime,
}

impl RefusingServer {
    fn start() -> RefusingServer {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let data = tempfile::tempdir().unwrap();
        let token = runtime
            .block_on(ferry_server::create_token(data.path(), "test"))
            .unwrap();
        let mut config = ferry_server::Config::new(data.path(), "127.0.0.1:0".parse().unwrap());
        config.limits.max_size_bytes = 100;
        config.limits.max_append_size_bytes = 100;
        let server = runtime
            .block_on(ferry_server::Server::start(config))
            .unwrap();
        RefusingServer {
            server,
            token,
            _data: data,
            _runtime: runtime,
        }
    }

    /// A daemon backing `lib` up to this server at once (the bundled extension's manifest and
    /// consent are written once it is up), returned when at least `n` uploads failed and the
    /// extension acknowledged them.
    fn url(&self) -> String {
        self.server.base_url()
    }

    fn shutdown(self) {
        self._runtime.block_on(self.server.shutdown());
    }

    fn daemon_failing_all(&self, env: &Env, lib: &Path, n: usize) -> Daemon {
        let url = self.url();
        let daemon = env.daemon(&[
            "--folder",
            lib.to_str().unwrap(),
            "--now",
            "--to",
            &url,
            "--token",
            &self.token,
        ]);
        wait_for("every upload failed and acknowledged", || {
            let jobs = env.jobs();
            jobs.len() >= n && jobs.iter().all(|(_, s, ack)| s == "failed" && *ack)
        });
        daemon
    }
}

/// A server that refuses every photo (too large): failed jobs with an error, one of them a
/// file whose name is markup. Every refused request leaves consent and jobs as they were; the
/// forms then revoke, grant and limit as the CLI does.
#[test]
fn refused_requests_change_nothing_and_the_forms_change_consent() {
    let server = RefusingServer::start();
    let url = server.url();
    let env = Env::new();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), &lib.path().join("plain"));
    std::fs::create_dir_all(lib.path().join("odd")).unwrap();
    let a_jpeg = std::fs::read_dir(lib.path().join("plain"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")))
        .unwrap();
    std::fs::copy(&a_jpeg, lib.path().join("odd").join(XSS_NAME)).unwrap();
    // Settled: every job failed and acknowledged by the extension.
    // (The bundled extension's manifest and consent are written once the daemon is up.)
    let daemon = server.daemon_failing_all(&env, lib.path(), 4);
    let before = env.consent_and_jobs();
    assert!(before.0["disabled_at_ms"].is_null(), "enabled: {before:?}");

    let (port, cookie) = login(&env);
    let page = http(port, "GET", "/", &[("Cookie", cookie.as_str())], "");
    assert_eq!(page.code, 200);
    assert!(
        page.body.contains("&lt;img src=x onerror=alert(1)&gt;.jpg"),
        "the file is listed, escaped: {}",
        page.body
    );
    assert!(!page.body.contains("<img src=x"), "{}", page.body);
    assert!(
        page.body.contains(&format!("{} failed", before.1.len())),
        "the verdict: {}",
        page.body
    );
    assert!(
        page.body.contains("<h2 id=\"history-h\">History</h2>")
            && page.body.contains("<td>failed ("),
        "the receipts are listed: {}",
        page.body
    );
    // Its thumbnail's alternative text is the name, escaped too.
    assert!(
        page.body
            .contains("odd/&lt;img src=x onerror=alert(1)&gt;.jpg\" width=\"64\""),
        "{}",
        page.body
    );
    // The markup-named file links to its `why` page, which escapes it too.
    let name_at = page
        .body
        .find("&lt;img src=x onerror=alert(1)&gt;.jpg</a>")
        .unwrap();
    let href_at = page.body[..name_at].rfind("href=\"/why?asset=").unwrap() + 6;
    let href = &page.body[href_at..href_at + page.body[href_at..].find('"').unwrap()];
    let why = http(port, "GET", href, &[("Cookie", cookie.as_str())], "");
    assert_eq!(why.code, 200, "{why:?}");
    why.assert_hardened();
    assert!(why.body.contains("&lt;img src=x onerror=alert(1)&gt;.jpg"));
    assert!(!why.body.contains("<img"), "{}", why.body);
    assert!(why.body.contains("<strong>failed</strong>"), "{}", why.body);
    assert_eq!(http(port, "GET", href, &[], "").code, 401);
    let missing = http(
        port,
        "GET",
        "/why?asset=%3Cb%3Ex",
        &[("Cookie", cookie.as_str())],
        "",
    );
    assert_eq!(missing.code, 404);
    assert!(missing.body.contains("&lt;b&gt;x") && !missing.body.contains("<b>x"));

    let csrf = csrf_of(&page.body);
    let origin = format!("http://127.0.0.1:{port}");
    let form = format!("id=bundled&csrf={csrf}");
    // Another session's token is no good here.
    let (_, other_cookie) = login(&env);
    let other_page = http(port, "GET", "/", &[("Cookie", &other_cookie)], "");
    let other_csrf = csrf_of(&other_page.body);
    assert_ne!(other_csrf, csrf);

    let evil_host = format!("evil.test:{port}");
    let other_port = format!("127.0.0.1:{}", port.wrapping_add(1));
    let evil_origin = format!("http://evil.test:{port}");
    let wrong_cookie = format!("{}={}", cookie.split('=').next().unwrap(), "0".repeat(64));
    let other_form = format!("id=bundled&csrf={other_csrf}");
    let refused: Vec<Refused> = vec![
        (
            "DNS rebinding: another name",
            421,
            vec![
                ("Host", evil_host.as_str()),
                ("Cookie", cookie.as_str()),
                ("Origin", evil_origin.as_str()),
            ],
            form.clone(),
        ),
        (
            "another port",
            421,
            vec![
                ("Host", other_port.as_str()),
                ("Cookie", cookie.as_str()),
                ("Origin", origin.as_str()),
            ],
            form.clone(),
        ),
        (
            "no session",
            401,
            vec![("Origin", origin.as_str())],
            form.clone(),
        ),
        (
            "an unknown session",
            401,
            vec![
                ("Cookie", wrong_cookie.as_str()),
                ("Origin", origin.as_str()),
            ],
            form.clone(),
        ),
        (
            "no Origin",
            403,
            vec![("Cookie", cookie.as_str())],
            form.clone(),
        ),
        (
            "another Origin",
            403,
            vec![
                ("Cookie", cookie.as_str()),
                ("Origin", evil_origin.as_str()),
            ],
            form.clone(),
        ),
        (
            "an opaque Origin",
            403,
            vec![("Cookie", cookie.as_str()), ("Origin", "null")],
            form.clone(),
        ),
        (
            "an opaque Origin from another site",
            403,
            vec![
                ("Cookie", cookie.as_str()),
                ("Origin", "null"),
                ("Sec-Fetch-Site", "cross-site"),
            ],
            form.clone(),
        ),
        (
            "an opaque Origin, the site unknown",
            403,
            vec![
                ("Cookie", cookie.as_str()),
                ("Origin", "null"),
                ("Sec-Fetch-Site", "none"),
            ],
            form.clone(),
        ),
        (
            "another Origin claiming same-origin",
            403,
            vec![
                ("Cookie", cookie.as_str()),
                ("Origin", evil_origin.as_str()),
                ("Sec-Fetch-Site", "same-origin"),
            ],
            form.clone(),
        ),
        (
            "a cross-site fetch",
            403,
            vec![
                ("Cookie", cookie.as_str()),
                ("Origin", origin.as_str()),
                ("Sec-Fetch-Site", "cross-site"),
            ],
            form.clone(),
        ),
        (
            "a same-site (not same-origin) fetch",
            403,
            vec![
                ("Cookie", cookie.as_str()),
                ("Origin", origin.as_str()),
                ("Sec-Fetch-Site", "same-site"),
            ],
            form.clone(),
        ),
        (
            "no CSRF token",
            403,
            vec![("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
            "id=bundled".to_owned(),
        ),
        (
            "a wrong CSRF token",
            403,
            vec![("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
            format!("id=bundled&csrf={}", "0".repeat(64)),
        ),
        (
            "another session's CSRF token",
            403,
            vec![("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
            other_form,
        ),
    ];
    for action in ["revoke", "limit", "grant"] {
        for (what, code, headers, body) in &refused {
            let body = if action == "limit" {
                format!("{body}&folders=plain")
            } else {
                body.clone()
            };
            let a = http(
                port,
                "POST",
                &format!("/extensions/{action}"),
                headers,
                &body,
            );
            assert_eq!(a.code, *code, "{action}, {what}: {a:?}");
            a.assert_hardened();
            if *code == 401 {
                assert!(a.body.contains("run `ferry dashboard`"), "{a:?}");
            }
            assert_eq!(
                env.consent_and_jobs(),
                before,
                "{action}, {what}: nothing changed"
            );
        }
    }
    // A GET of the page from another name is refused too, whatever the cookie.
    let a = http(
        port,
        "GET",
        "/",
        &[("Host", evil_host.as_str()), ("Cookie", cookie.as_str())],
        "",
    );
    assert_eq!(a.code, 421);
    assert!(!a.body.contains("bundled"), "nothing of the state: {a:?}");
    a.assert_hardened();

    // The real forms, from our own page (`localhost` is our name too).
    let local_host = format!("localhost:{port}");
    let local_origin = format!("http://localhost:{port}");
    let ours = [
        ("Host", local_host.as_str()),
        ("Cookie", cookie.as_str()),
        ("Origin", local_origin.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let a = http(port, "POST", "/extensions/revoke", &ours, &form);
    assert_eq!(a.code, 303, "{a:?}");
    assert_eq!(a.header("location"), Some("/"));
    let (consent, _) = env.consent_and_jobs();
    assert!(consent["disabled_at_ms"].is_i64(), "revoked: {consent}");
    let page = http(port, "GET", "/", &[("Cookie", cookie.as_str())], "");
    assert!(page.body.contains("Not enabled"), "{}", page.body);
    // A disabled card offers Grant (optionally to some folders), never Limit: limiting would
    // grant. It still says where uploads would go and the job limit, as the CLI does.
    assert!(
        page.body.contains("Grant only these folders")
            && !page.body.contains("Limit to these folders"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(&format!(
            "<dt>Would send to</dt><dd class=\"destinations\">{url}"
        )),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("<dt>Job limit</dt><dd class=\"job-limit\">"),
        "{}",
        page.body
    );
    // A limit posted all the same while it is disabled does not grant.
    let revoked = env.consent_and_jobs();
    let a = http(
        port,
        "POST",
        "/extensions/limit",
        &ours,
        &format!("{form}&folders=plain"),
    );
    assert_eq!(a.code, 400, "{a:?}");
    assert!(a.body.contains("is not enabled"), "{a:?}");
    assert_eq!(
        env.consent_and_jobs(),
        revoked,
        "a limit while disabled changed nothing"
    );

    let a = http(port, "POST", "/extensions/grant", &ours, &form);
    assert_eq!(a.code, 303, "{a:?}");
    let (consent, _) = env.consent_and_jobs();
    assert!(consent["disabled_at_ms"].is_null(), "granted: {consent}");
    assert_eq!(consent["scope"]["kind"], "library");

    let a = http(
        port,
        "POST",
        "/extensions/limit",
        &ours,
        &format!("{form}&folders=plain"),
    );
    assert_eq!(a.code, 303, "{a:?}");
    let (consent, _) = env.consent_and_jobs();
    assert_eq!(consent["scope"]["folders"], serde_json::json!(["plain"]));
    // A new photo elsewhere is outside the consent's scope, and its `why` page says so.
    copy_dir(&fixtures().join("live"), &lib.path().join("elsewhere"));
    let mut asset = None;
    wait_for("the new photo indexed", || {
        let out = env.run(&["library", "ls", "--json"]);
        asset = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|a| a.to_string().contains("elsewhere"))
            .and_then(|a| a["id"].as_str().map(str::to_owned));
        asset.is_some()
    });
    let why = http(
        port,
        "GET",
        &format!("/why?asset={}", asset.unwrap()),
        &[("Cookie", cookie.as_str())],
        "",
    );
    assert!(
        why.body.contains("<strong>outside scope</strong>"),
        "{}",
        why.body
    );
    // A folder outside the library: refused with the reason, consent as it was.
    let a = http(
        port,
        "POST",
        "/extensions/limit",
        &ours,
        &format!("{form}&folders=%2Fetc"),
    );
    assert_eq!(a.code, 400, "{a:?}");
    assert!(a.body.contains("not a folder of the library"), "{a:?}");
    assert_eq!(env.consent_and_jobs().0, consent);
    let page = http(port, "GET", "/", &[("Cookie", cookie.as_str())], "");
    assert!(
        page.body.contains(&format!(
            "<dt>Sends to</dt><dd class=\"destinations\">{url}"
        )) && page.body.contains("Limit to these folders"),
        "an enabled card: {}",
        page.body
    );

    // Revoked, then granted from the disabled card's form with a folder: only that folder.
    let a = http(port, "POST", "/extensions/revoke", &ours, &form);
    assert_eq!(a.code, 303, "{a:?}");
    let a = http(
        port,
        "POST",
        "/extensions/grant",
        &ours,
        &format!("{form}&folders=plain"),
    );
    assert_eq!(a.code, 303, "{a:?}");
    let (consent, _) = env.consent_and_jobs();
    assert!(consent["disabled_at_ms"].is_null(), "granted: {consent}");
    assert_eq!(consent["scope"]["folders"], serde_json::json!(["plain"]));

    drop(daemon);
    server.shutdown();
}

/// A request that must be refused: what it is, the status expected, its headers and body.
type Refused<'a> = (&'a str, u16, Vec<(&'a str, &'a str)>, String);

/// Reads Server-Sent Events from `reader` until `done` accepts one's data or the deadline
/// passes; returns every (id, data) read.
fn read_events(
    reader: &mut BufReader<TcpStream>,
    deadline: Instant,
    mut done: impl FnMut(&Value) -> bool,
) -> Vec<(u64, Value)> {
    let mut events = Vec::new();
    let (mut id, mut data) = (0u64, String::new());
    loop {
        assert!(
            Instant::now() < deadline,
            "no event came that was awaited; got {events:?}"
        );
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => panic!("the event stream ended; got {events:?}"),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => panic!("{e}"),
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().unwrap();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if line.is_empty() && !data.is_empty() {
            let v: Value = serde_json::from_str(&data).unwrap();
            data.clear();
            events.push((id, v.clone()));
            if done(&v) {
                return events;
            }
        }
    }
}

#[test]
fn live_updates_send_the_state_at_once_and_when_a_photo_arrives() {
    let env = Env::new();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), &lib.path().join("plain"));
    let _daemon = env.daemon(&["--folder", lib.path().to_str().unwrap(), "--now"]);
    wait_for("everything backed up", || {
        env.run(&["status", "--json"]).status.code() == Some(0)
    });
    let assets = json(&env.run(&["status", "--json"]))["status"]["library"]["assets"]
        .as_u64()
        .unwrap();
    let (port, cookie) = login(&env);

    let a = http(port, "GET", "/events", &[], "");
    assert_eq!(a.code, 401, "no session, no events");
    assert!(a.body.contains("run `ferry dashboard`"));

    // A browser reconnecting says which event it saw last: it gets the current state at once.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\nLast-Event-ID: 41\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut status_line = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_line.is_empty() {
        assert!(Instant::now() < deadline, "no answer to /events");
        let _ = reader.read_line(&mut status_line);
    }
    assert!(status_line.contains(" 200 "), "{status_line}");
    let mut saw_csp = false;
    let mut saw_type = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() {
            assert!(Instant::now() < deadline, "no headers");
            continue;
        }
        let l = h.to_ascii_lowercase();
        saw_csp |= l.starts_with("content-security-policy:");
        saw_type |= l.starts_with("content-type: text/event-stream");
        if h == "\r\n" {
            break;
        }
    }
    assert!(saw_csp && saw_type);
    let first = read_events(
        &mut reader,
        Instant::now() + Duration::from_secs(10),
        |_| true,
    );
    let expected = format!("All {assets} photos are backed up");
    assert_eq!(first[0].1["verdict"], expected.as_str(), "{first:?}");
    assert_eq!(first[0].1["tone"], "ok");

    // New photos: the verdict moves (waiting / backing up) and comes back to "all backed up"
    // with the new count, with no request from the page.
    let started = Instant::now();
    copy_dir(&fixtures().join("live"), &lib.path().join("live"));
    let later = read_events(&mut reader, Instant::now() + Duration::from_secs(90), |v| {
        v["verdict"]
            .as_str()
            .and_then(|s| s.strip_prefix("All "))
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > assets)
    });
    let elapsed = started.elapsed().as_secs_f64();
    // The lists, the history and the sparkline come along as markup, so they follow too: the
    // new photos show in the history and the sparkline counts their bytes.
    let last = &later.last().unwrap().1;
    assert!(last["lists"].is_string(), "{last}");
    assert!(
        last["history"]
            .as_str()
            .is_some_and(|h| h.contains("IMG_0200.HEIC")),
        "{last}"
    );
    assert!(
        last["sparkline"]
            .as_str()
            .is_some_and(|h| !h.contains("Sent in the last 24 hours: 0 bytes")),
        "{last}"
    );
    let ids: Vec<u64> = first.iter().chain(&later).map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "ids increase: {ids:?}");
    // Coalesced: at most about four a second (and one for the state at once).
    assert!(
        (later.len() as f64) <= 2.0 + elapsed * 4.0,
        "{} events in {elapsed:.1} s",
        later.len()
    );
    // Each event says something new.
    let all: Vec<&Value> = first.iter().chain(&later).map(|(_, v)| v).collect();
    assert!(all.windows(2).all(|w| w[0] != w[1]), "{all:?}");

    // Once the extension let go of its jobs (receipts), the day's sparkline shows the bytes.
    wait_for("the receipts in the sparkline", || {
        let page = http(port, "GET", "/", &[("Cookie", cookie.as_str())], "").body;
        page.contains("<svg role=\"img\" aria-label=\"Sent in the last 24 hours: ")
            && !page.contains("Sent in the last 24 hours: 0 bytes")
    });
}

/// Writes one fake sysfs attribute whole (the observer never reads half a value).
fn sysfs(root: &Path, rel: &str, value: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

fn power(root: &Path, plugged: bool) {
    sysfs(root, "class/power_supply/AC/type", "Mains");
    sysfs(
        root,
        "class/power_supply/AC/online",
        if plugged { "1" } else { "0" },
    );
    sysfs(root, "class/power_supply/BAT0/type", "Battery");
    sysfs(root, "class/power_supply/BAT0/capacity", "80");
    sysfs(
        root,
        "class/power_supply/BAT0/status",
        if plugged { "Charging" } else { "Discharging" },
    );
}

/// On battery under a policy that wants the charger: the page says so in words, and plugging
/// in turns the verdict to "backed up" on an open event stream, with no reload.
#[test]
fn on_battery_the_verdict_gives_the_reason_and_turns_live_when_plugged_in() {
    let env = Env::new();
    let sys = tempfile::tempdir().unwrap();
    power(sys.path(), false);
    std::fs::write(
        env.home.path().join("config.toml"),
        format!(
            "[conditions]\nsysfs_root = \"{}\"\nsysfs_poll_ms = 100\n[policy]\nrequire_charging = true\n",
            sys.path().display()
        ),
    )
    .unwrap();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), lib.path());
    let _daemon = env.daemon(&["--folder", lib.path().to_str().unwrap()]);
    let status = || json(&env.run(&["status", "--json"]))["status"].clone();
    wait_for(
        "the daemon waiting for the charger, the library indexed",
        || {
            let s = status();
            s["decision"]["wait"] == "on_battery" && s["library"]["resources"].as_u64() >= Some(3)
        },
    );
    let s = status();
    let files = s["library"]["resources"].as_u64().unwrap();
    assert_eq!(s["resources_backed_up"], 0, "nothing sent on battery: {s}");
    let assets = s["library"]["assets"].as_u64().unwrap();

    let (port, cookie) = login(&env);
    let page = http(port, "GET", "/", &[("Cookie", cookie.as_str())], "");
    let expected = format!("{files} waiting — waiting for the charger (charging required)");
    assert!(page.body.contains(&expected), "{expected} in {}", page.body);
    assert!(page.body.contains("Not yet:"), "said in words, not colour");
    // The waiting list agrees with the verdict: the same files under the same reason (no job
    // is made for them while the conditions hold uploads back), each with its thumbnail.
    assert!(
        page.body.contains(&format!(
            "<h3>{files} — waiting for the charger (charging required)</h3>"
        )),
        "{}",
        page.body
    );
    assert_eq!(thumbs_of(&page.body).len() as u64, files, "{}", page.body);
    assert!(
        page.body
            .contains("<dt>power</dt><dd>on battery, battery 80%"),
        "what is observed: {}",
        page.body
    );

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let first = read_events(
        &mut reader,
        Instant::now() + Duration::from_secs(30),
        |_| true,
    );
    assert_eq!(first[0].1["verdict"], expected.as_str());
    assert_eq!(first[0].1["tone"], "waiting");

    power(sys.path(), true);
    let done = format!("All {assets} photos are backed up");
    let later = read_events(&mut reader, Instant::now() + Duration::from_secs(90), |v| {
        v["verdict"] == done.as_str()
    });
    assert_eq!(later.last().unwrap().1["tone"], "ok");
}

#[test]
fn a_configured_port_is_used() {
    let env = Env::new();
    // A port free a moment ago (the kernel hands out ephemeral ports in turn, so it stays free).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        env.home.path().join("config.toml"),
        format!("[dashboard]\nport = {port}\n"),
    )
    .unwrap();
    let out = env.run(&["config", "check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), lib.path());
    let _daemon = env.daemon(&["--folder", lib.path().to_str().unwrap(), "--now"]);
    let (got, path) = login_url(&env);
    assert_eq!(got, port);
    assert_eq!(http(port, "GET", &path, &[], "").code, 303);
}

/// The dashboard in Debian's Chromium (Playwright, `dashboard_browser.py`; installed by
/// `scripts/setup.d/dashboard-browser.sh`): the verdict turns from waiting to backed up with no
/// reload (what is observed turning to "on mains power" too), axe-core finds nothing serious,
/// consent limited to one folder makes a new photo elsewhere wait "outside consent scope" in
/// the verdict and the waiting list (its thumbnail loaded, the progress line not counting it)
/// with no reload, every request stays on our origin, another origin's auto-submitted revoke
/// and DNS rebinding are refused, and the revoke button works. Writes screenshots (desktop and
/// phone, light and dark, and the outside-scope state) to `<target tmp>/dashboard-screenshots`.
#[test]
fn in_a_real_chromium() {
    let (_, axe) = browser_tools();
    let env = Env::new();
    let sys = tempfile::tempdir().unwrap();
    power(sys.path(), false);
    std::fs::write(
        env.home.path().join("config.toml"),
        format!(
            "[conditions]\nsysfs_root = \"{}\"\nsysfs_poll_ms = 100\n[policy]\nrequire_charging = true\n",
            sys.path().display()
        ),
    )
    .unwrap();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), lib.path());
    // A folder that consent is later limited to, with a photo of its own.
    let mut trip = std::fs::read(fixtures().join("plain/IMG_0010.JPG")).unwrap();
    trip.extend_from_slice(b"a trip");
    std::fs::create_dir_all(lib.path().join("Trips")).unwrap();
    std::fs::write(lib.path().join("Trips/IMG_0900.JPG"), trip).unwrap();
    let _daemon = env.daemon(&["--folder", lib.path().to_str().unwrap()]);
    wait_for(
        "the daemon waiting for the charger, the library indexed",
        || {
            let s = json(&env.run(&["status", "--json"]))["status"].clone();
            s["decision"]["wait"] == "on_battery" && s["library"]["resources"].as_u64() >= Some(4)
        },
    );
    let assets = json(&env.run(&["status", "--json"]))["status"]["library"]["assets"]
        .as_u64()
        .unwrap();
    let (port, path) = login_url(&env);
    let found = run_browser(serde_json::json!({
        "login_url": format!("http://127.0.0.1:{port}{path}"),
        "port": port,
        "sysfs": sys.path(),
        "assets": assets,
        "library": lib.path(),
        "new_photo": fixtures().join("plain/IMG_0011.JPG"),
        "axe": axe,
    }));
    assert_eq!(found["rebinding_status"], 421);
    // Limited to Trips, a new photo beside the others waits outside the consent's scope.
    assert!(
        found["verdict_outside_scope"]
            .as_str()
            .is_some_and(|v| v.starts_with("1 waiting — outside consent scope")),
        "{found}"
    );
    // Forged revokes with the real CSRF token: from another site the strict cookie is not sent
    // (401); from another port of 127.0.0.1 (same site) it is, and Sec-Fetch-Site / Origin
    // refuse it (403). The page showed the consent unchanged after each.
    assert_eq!(found["cross_site_revoke_status"], 401);
    assert_eq!(found["same_site_revoke_status"], 403);
    // The revoke clicked in the browser is what the CLI sees, and no job waits.
    let (consent, jobs) = env.consent_and_jobs();
    assert!(consent["disabled_at_ms"].is_i64(), "{consent}");
    assert!(
        jobs.iter()
            .all(|(_, s, _)| s != "pending" && s != "registered"),
        "{jobs:?}"
    );
}

/// The browser test's tools (installed by `scripts/setup.d/dashboard-browser.sh`): the venv's
/// Python with Playwright, and axe-core.
fn browser_tools() -> (PathBuf, PathBuf) {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/dashboard-browser");
    let python = tools.join("bin/python");
    let axe = tools.join("node_modules/axe-core/axe.min.js");
    assert!(
        python.exists() && axe.exists() && Path::new("/usr/bin/chromium").exists(),
        "Chromium, Playwright or axe-core is not installed: run scripts/setup.d/dashboard-browser.sh"
    );
    (python, axe)
}

/// Runs `dashboard_browser.py` with `args` (the screenshots' folder added): its findings.
fn run_browser(mut args: Value) -> Value {
    let (python, _) = browser_tools();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    args["screenshots"] = serde_json::json!(shots);
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard_browser.py"))
        .arg(args.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    json(&out)
}

/// A server that refuses every photo (too large), in Chromium: the verdict says they failed,
/// each failed file is listed with a thumbnail that loaded (a real one for the JPEGs), and
/// axe-core finds nothing serious. Screenshots: `failed-desktop-light.png`,
/// `failed-phone-dark.png`.
#[test]
fn failed_uploads_in_a_real_chromium() {
    let (_, axe) = browser_tools();
    let server = RefusingServer::start();
    let env = Env::new();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), lib.path());
    let _daemon = server.daemon_failing_all(&env, lib.path(), 3);
    let (port, path) = login_url(&env);
    let found = run_browser(serde_json::json!({
        "mode": "failed",
        "login_url": format!("http://127.0.0.1:{port}{path}"),
        "port": port,
        "axe": axe,
    }));
    assert_eq!(
        found["failed_thumbs"].as_array().map(Vec::len),
        Some(3),
        "{found}"
    );
}

/// Uploads held to a trickle by the policy's bandwidth cap: while they go, the page lists the
/// waiting files under their reason (a markup file name escaped); revoking from the page cancels
/// them (as `ferry jobs ls` shows), and granting again restores the consent.
#[test]
fn waiting_files_are_listed_under_their_reason() {
    let env = Env::new();
    let sys = tempfile::tempdir().unwrap();
    power(sys.path(), true);
    std::fs::write(
        env.home.path().join("config.toml"),
        format!(
            "[conditions]\nsysfs_root = \"{}\"\n[policy]\nbandwidth_cap_bytes_per_s = 400\n",
            sys.path().display()
        ),
    )
    .unwrap();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), lib.path());
    let a_jpeg = std::fs::read_dir(lib.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")))
        .unwrap();
    // Other bytes than its source, so it is a job of its own.
    let mut bytes = std::fs::read(&a_jpeg).unwrap();
    bytes.extend_from_slice(b"different tail");
    std::fs::write(lib.path().join(XSS_NAME), bytes).unwrap();
    let _daemon = env.daemon(&["--folder", lib.path().to_str().unwrap()]);
    let (port, cookie) = login(&env);
    let mut seen = String::new();
    // Listed first as not sent yet (no job made yet), then under the job's reason.
    wait_for("the waiting files listed under their jobs' reason", || {
        seen = http(port, "GET", "/", &[("Cookie", cookie.as_str())], "").body;
        seen.contains("<h2 id=\"waiting-h\">Waiting</h2>")
            && seen.contains("&lt;img src=x onerror=alert(1)&gt;.jpg")
            && ["being uploaded now", "queued to upload next"]
                .iter()
                .any(|r| seen.contains(r))
    });
    assert!(!seen.contains("<img src=x"), "{seen}");
    assert!(
        ["being uploaded now", "queued to upload next"]
            .iter()
            .any(|r| seen.contains(r)),
        "a reason in words: {seen}"
    );

    // Revoking from the page cancels the waiting uploads, and `ferry jobs ls` agrees.
    let origin = format!("http://127.0.0.1:{port}");
    let ours = [
        ("Cookie", cookie.as_str()),
        ("Origin", origin.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let form = format!("id=bundled&csrf={}", csrf_of(&seen));
    let a = http(port, "POST", "/extensions/revoke", &ours, &form);
    assert_eq!(a.code, 303, "{a:?}");
    let (consent, jobs) = env.consent_and_jobs();
    assert!(consent["disabled_at_ms"].is_i64(), "{consent}");
    assert!(
        jobs.iter()
            .all(|(_, s, _)| s != "pending" && s != "registered"),
        "nothing waits after the revoke: {jobs:?}"
    );
    assert!(
        jobs.iter().any(|(_, s, _)| s == "cancelled"),
        "the waiting uploads were cancelled: {jobs:?}"
    );

    // Granted again from the page: consent as before, and the files whose uploads the revoke
    // cancelled get jobs again (the extension's change token expired with the new consent, so
    // it went over the library once more), though the library did not change.
    let count = |jobs: &[(String, String, bool)], states: &[&str]| {
        jobs.iter()
            .filter(|(_, s, _)| states.contains(&s.as_str()))
            .count()
    };
    let cancelled = count(&jobs, &["cancelled"]);
    let done_before = count(&jobs, &["succeeded"]);
    let a = http(port, "POST", "/extensions/grant", &ours, &form);
    assert_eq!(a.code, 303, "{a:?}");
    let (consent, _) = env.consent_and_jobs();
    assert!(consent["disabled_at_ms"].is_null(), "{consent}");
    assert_eq!(consent["scope"]["kind"], "library");
    wait_for("jobs again for the files the revoke cancelled", || {
        count(&env.jobs(), &["registered", "pending", "succeeded"]) >= done_before + cancelled
    });
}

/// An opener that does not return while its browser runs (some desktops' xdg-open): `ferry
/// dashboard` returns at once all the same.
#[test]
fn ferry_dashboard_does_not_wait_for_the_browser() {
    let env = Env::new();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), lib.path());
    let _daemon = env.daemon(&["--folder", lib.path().to_str().unwrap()]);
    let bin = tempfile::tempdir().unwrap();
    let opened = bin.path().join("opened");
    let release = bin.path().join("release");
    let made = Command::new("mkfifo").arg(&release).status().unwrap();
    assert!(made.success());
    // Writes the link down, then blocks until the test writes to the FIFO.
    let script = bin.path().join("xdg-open");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s' \"$1\" > '{}'\nread line < '{}'\n",
            opened.display(),
            release.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = env
        .cmd(&["dashboard"])
        .env("PATH", bin.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ran = wait_until(Duration::from_secs(30), || opened.exists());
    if ran {
        // Let the opener go (opening the FIFO meets its reader, which it is or soon will be).
        std::fs::write(&release, "go\n").unwrap();
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "`ferry dashboard` waited for the opener"
    );
    assert!(ran, "the opener was run");
}

/// Polls `check` until it holds or `limit` passes: whether it held.
fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Signing out ends the live updates of that session: the event stream closes.
#[test]
fn signing_out_ends_the_live_updates() {
    let env = Env::new();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), lib.path());
    let _daemon = env.daemon(&["--folder", lib.path().to_str().unwrap()]);
    let (port, cookie) = login(&env);
    let page = http(port, "GET", "/", &[("Cookie", cookie.as_str())], "");
    assert_eq!(page.code, 200, "{page:?}");

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let first = read_events(
        &mut reader,
        Instant::now() + Duration::from_secs(30),
        |_| true,
    );
    assert!(first[0].1["verdict"].is_string(), "{first:?}");

    let origin = format!("http://127.0.0.1:{port}");
    let a = http(
        port,
        "POST",
        "/logout",
        &[("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
        &format!("csrf={}", csrf_of(&page.body)),
    );
    assert_eq!(a.code, 200, "{a:?}");

    // The stream ends (the last chunk, then the connection closes) with nothing more sent.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = String::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the event stream still runs after sign-out: {after:?}"
        );
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => after.push_str(&line),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        !after.contains("data:"),
        "no event after sign-out: {after:?}"
    );
    let again = http(port, "GET", "/events", &[("Cookie", cookie.as_str())], "");
    assert_eq!(again.code, 401, "{again:?}");
}

/// Cookies are shared by every port of 127.0.0.1: a connection from another user's socket is
/// refused whatever it carries, and the login link it tried still works for us. Needs root (to
/// connect as `nobody` with setpriv); elsewhere it says so and passes.
#[test]
fn another_users_connection_is_refused() {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let have = |p: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
    };
    if !root || !have("setpriv") || !have("curl") {
        eprintln!("skipped: connecting as another user needs root, setpriv and curl");
        return;
    }
    let env = Env::new();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), lib.path());
    let _daemon = env.daemon(&["--folder", lib.path().to_str().unwrap()]);
    let (port, cookie) = login(&env);
    let (_, path) = login_url(&env);
    let as_nobody = |path: &str, cookie: &str| -> (u16, String) {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"])
            .args(["-sS", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Cookie: {cookie}"))
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap_or(0), body.to_owned())
    };
    let (code, body) = as_nobody(&path, "");
    assert_eq!(code, 403, "another user's login: {body}");
    assert!(body.contains("belongs to another user"), "{body}");
    let (code, body) = as_nobody("/", &cookie);
    assert_eq!(code, 403, "another user with our cookie: {body}");
    assert!(!body.contains("bundled"), "nothing of the state: {body}");
    let (code, _) = as_nobody("/events", &cookie);
    assert_eq!(code, 403);
    // We are served as ever, and the refused login link was not used up.
    assert_eq!(http(port, "GET", &path, &[], "").code, 303);
    assert_eq!(
        http(port, "GET", "/", &[("Cookie", cookie.as_str())], "").code,
        200
    );
}

/// The `<img class="thumb">`s of a page: (alt, src), with `&amp;` in the src undone.
fn thumbs_of(page: &str) -> Vec<(String, String)> {
    page.split("<img class=\"thumb\" ")
        .skip(1)
        .map(|tag| {
            let attr = |name: &str| {
                let at = tag.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                tag[at..at + tag[at..].find('"').unwrap()].replace("&amp;", "&")
            };
            assert!(
                tag.contains("width=\"64\" height=\"64\" loading=\"lazy\""),
                "{tag}"
            );
            (attr("alt"), attr("src"))
        })
        .collect()
}

/// A JPEG of `w` × `h` with some detail in it (a flat one would be a few hundred bytes).
fn a_jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

/// Failed uploads are shown with thumbnails, served by resource id from the index: a large
/// JPEG comes back at most 256 px on its long side and is cached by content hash (the second
/// answer is the cache file's), garbage gets the placeholder, an HEIC goes through
/// heif-thumbnailer when it is installed; an unknown or path-like id is 404, no session 401.
#[test]
fn failed_photos_show_thumbnails_made_from_the_index() {
    let server = RefusingServer::start();
    let env = Env::new();
    let lib = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("plain"), lib.path());
    let big = a_jpeg(1200, 900);
    std::fs::write(lib.path().join("big.jpg"), &big).unwrap();
    let mut garbage = b"\xFF\xD8\xFF".to_vec();
    garbage.extend((0..2000u32).map(|i| (i * 7919 % 251) as u8));
    std::fs::write(lib.path().join("garbage.jpg"), &garbage).unwrap();
    std::fs::copy(
        fixtures().join("live/IMG_0200.HEIC"),
        lib.path().join("still.heic"),
    )
    .unwrap();
    let _daemon = server.daemon_failing_all(&env, lib.path(), 6);
    let (port, cookie) = login(&env);
    let page = http(port, "GET", "/", &[("Cookie", cookie.as_str())], "");
    assert_eq!(page.code, 200);
    let thumbs = thumbs_of(&page.body);
    let src_of = |name: &str| {
        thumbs
            .iter()
            .find(|(alt, _)| alt.ends_with(&format!("/{name}")))
            .unwrap_or_else(|| panic!("no thumbnail of {name}: {thumbs:?}"))
            .1
            .clone()
    };
    let get = |path: &str| http(port, "GET", path, &[("Cookie", cookie.as_str())], "");

    // A large JPEG: at most 256 px, cached privately, the security headers as everywhere.
    let big_src = src_of("big.jpg");
    assert!(big_src.starts_with("/thumb/"), "{big_src}");
    let a = get(&big_src);
    assert_eq!(a.code, 200, "{a:?}");
    a.assert_hardened();
    assert_eq!(a.header("content-type"), Some("image/jpeg"));
    assert!(
        a.header("cache-control")
            .is_some_and(|c| c.starts_with("private, max-age=")),
        "{a:?}"
    );
    let img = image::load_from_memory(&a.raw).unwrap();
    assert_eq!((img.width(), img.height()), (256, 192));
    let cached = env
        .state
        .path()
        .join("dashboard/thumbs")
        .join(format!("{}.jpg", blake3::hash(&big).to_hex()));
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        a.raw,
        "cached by content hash"
    );
    // The second answer comes from the cache: put other bytes there and they are served.
    let marker = a_jpeg(10, 10);
    std::fs::write(&cached, &marker).unwrap();
    assert_eq!(get(&big_src).raw, marker, "served from the cache");

    // A small JPEG keeps its size.
    let small = image::load_from_memory(&get(&src_of("IMG_0010.JPG")).raw).unwrap();
    assert_eq!((small.width(), small.height()), (64, 48));

    // Garbage: the placeholder, 200, nothing cached.
    let g = get(&src_of("garbage.jpg"));
    assert_eq!(g.code, 200);
    assert_eq!(g.header("content-type"), Some("image/svg+xml"));
    assert!(g.body.starts_with("<svg"), "{}", g.body);
    assert!(
        !env.state
            .path()
            .join("dashboard/thumbs")
            .join(format!("{}.jpg", blake3::hash(&garbage).to_hex()))
            .exists()
    );

    // HEIC through Debian's tool when it is there, else the placeholder.
    let h = get(&src_of("still.heic"));
    assert_eq!(h.code, 200);
    let has_tool = Command::new("heif-thumbnailer")
        .arg("--help")
        .output()
        .is_ok();
    if has_tool {
        assert_eq!(h.header("content-type"), Some("image/jpeg"), "{h:?}");
        let img = image::load_from_memory(&h.raw).unwrap();
        assert!(img.width().max(img.height()) <= 256);
    } else {
        assert_eq!(h.header("content-type"), Some("image/svg+xml"));
    }

    // By id from the index only: an unknown id or a path is not found, and nothing is read.
    for bad in [
        "/thumb/no-such-resource",
        "/thumb/..%2F..%2Fetc%2Fpasswd",
        "/thumb/%2Fetc%2Fpasswd",
        "/thumb/../../etc/passwd",
    ] {
        let a = get(bad);
        assert_eq!(a.code, 404, "{bad}: {a:?}");
        assert!(!a.body.contains("root:"), "{bad}");
        a.assert_hardened();
    }
    // No session: 401, whatever the id.
    assert_eq!(http(port, "GET", &big_src, &[], "").code, 401);
}
