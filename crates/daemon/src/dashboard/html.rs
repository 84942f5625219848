//! The dashboard's markup, written by hand: small enough not to need a template engine, and
//! every string that comes from the library or an extension goes through [`esc`].

use std::fmt::Write as _;

use super::view::{Card, FileRef, View, thousands};
use crate::report::Why;

/// A file's path, linked to its `why` page when its asset is known.
fn file_link(f: &FileRef) -> String {
    match &f.asset_id {
        Some(a) => format!(
            "<a class=\"file\" href=\"/why?asset={}\">{}</a>",
            esc(&url_component(a)),
            esc(&f.path)
        ),
        None => format!("<span class=\"file\">{}</span>", esc(&f.path)),
    }
}

/// The file's thumbnail (by resource id, never by path), its name as the alternative text.
/// Shown at 64 px on the long side; the picture itself is up to 256 px, for sharp screens.
fn thumb_img(f: &FileRef) -> String {
    match &f.thumb {
        Some((id, version)) => format!(
            "<img class=\"thumb\" src=\"/thumb/{}?v={}\" alt=\"{}\" width=\"64\" height=\"64\" loading=\"lazy\">",
            esc(&url_component(id)),
            esc(&url_component(version)),
            esc(&f.path)
        ),
        None => String::new(),
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn url_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A byte count for people (1 KB = 1000 bytes, as file managers on Linux show).
pub fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The last day's throughput as an inline SVG line, oldest hour at the left, with the same
/// facts in words beside it (a screen reader reads the label; nothing is in colour alone).
pub fn sparkline(hourly: &[u64; 24]) -> String {
    let (w, h) = (240.0_f64, 40.0_f64);
    let max = hourly.iter().copied().max().unwrap_or(0).max(1) as f64;
    let points: Vec<String> = hourly
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let x = i as f64 * w / 23.0;
            let y = h - 2.0 - (b as f64 / max) * (h - 4.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let total: u64 = hourly.iter().sum();
    let busiest = hourly.iter().copied().max().unwrap_or(0);
    let words = format!(
        "Sent in the last 24 hours: {}; busiest hour: {}",
        bytes_text(total),
        bytes_text(busiest)
    );
    format!(
        "<figure class=\"sparkline\"><svg role=\"img\" aria-label=\"{words}\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\"><polyline fill=\"none\" stroke=\"currentColor\" stroke-width=\"2\" points=\"{}\"/></svg><figcaption>{words}</figcaption></figure>",
        points.join(" ")
    )
}

/// A complete page around `body` (markup). No inline script or style: the CSP allows neither.
pub fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{} · Ferry</title><link rel=\"stylesheet\" href=\"/static/dashboard.css\"></head>\
<body><main><h1>{}</h1>\n{body}\n</main></body></html>\n",
        esc(title),
        esc(title)
    )
}

fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

fn card(out: &mut String, c: &Card, csrf: &str) {
    let id = esc(&c.id);
    let _ = write!(
        out,
        "<article class=\"card\" aria-labelledby=\"ext-{id}\"><h3 id=\"ext-{id}\">{} <span class=\"id\">({id})</span></h3><dl>",
        esc(&c.name)
    );
    let _ = write!(
        out,
        "<dt>Consent</dt><dd class=\"{}\">{}</dd>",
        if c.enabled { "on" } else { "off" },
        if c.enabled { "Enabled" } else { "Not enabled" }
    );
    if let Some(g) = &c.granted {
        let _ = write!(out, "<dt>May see</dt><dd>{}</dd>", esc(g));
    }
    if let Some(a) = &c.asks {
        let _ = write!(out, "<dt>Asks to see</dt><dd>{}</dd>", esc(a));
    }
    // Where uploads go and how many it may hold, as `ferry extensions enable` says before
    // asking: what a grant would give, or what was given.
    if !c.destinations.is_empty() {
        let _ = write!(
            out,
            "<dt>{}</dt><dd class=\"destinations\">{}</dd>",
            if c.enabled {
                "Sends to"
            } else {
                "Would send to"
            },
            esc(&c.destinations.join(", "))
        );
    }
    if let Some(n) = c.job_limit {
        let _ = write!(out, "<dt>Job limit</dt><dd class=\"job-limit\">{n}</dd>");
    }
    if !c.installed {
        out.push_str("<dt>Installed</dt><dd>No (its manifest is gone)</dd>");
    }
    let _ = write!(out, "<dt>State</dt><dd>{}</dd>", esc(&c.state));
    if let Some(e) = &c.last_error {
        let _ = write!(out, "<dt>Last error</dt><dd>{}</dd>", esc(e));
    }
    out.push_str("</dl><div class=\"actions\">");
    // Granting is offered while it is off (optionally to some folders only), and again while
    // it is limited to fewer folders than it asks.
    if c.installed && !c.enabled {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/extensions/grant\">{}<input type=\"hidden\" name=\"id\" value=\"{id}\">\
<label for=\"grant-folders-{id}\">Grant only these folders (optional; one a line, relative to the library folder or a full path; empty: everything it asks for)</label>\
<textarea id=\"grant-folders-{id}\" name=\"folders\" rows=\"2\"></textarea><button type=\"submit\">Grant</button></form>",
            csrf_field(csrf)
        );
    } else if c.installed && !c.granted_folders.is_empty() {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/extensions/grant\">{}<input type=\"hidden\" name=\"id\" value=\"{id}\"><button type=\"submit\">Grant everything it asks for</button></form>",
            csrf_field(csrf)
        );
    }
    // Limiting narrows a consent already given: offered only while it is enabled, so that it
    // never grants one.
    if c.installed && c.enabled {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/extensions/limit\">{}<input type=\"hidden\" name=\"id\" value=\"{id}\">\
<label for=\"folders-{id}\">Limit to folders (one a line, relative to the library folder or a full path)</label>\
<textarea id=\"folders-{id}\" name=\"folders\" rows=\"2\">{}</textarea><button type=\"submit\">Limit to these folders</button></form>",
            csrf_field(csrf),
            esc(&c.granted_folders.join("\n"))
        );
    }
    if c.enabled {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/extensions/revoke\">{}<input type=\"hidden\" name=\"id\" value=\"{id}\"><button type=\"submit\" class=\"danger\">Revoke (cancels its waiting uploads)</button></form>",
            csrf_field(csrf)
        );
    }
    out.push_str("</div></article>");
}

/// The dashboard page.
pub fn dashboard(v: &View, csrf: &str) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<section aria-labelledby=\"verdict-h\"><h2 id=\"verdict-h\" class=\"visually-hidden\">Status</h2>\
<p id=\"verdict\" class=\"verdict {tone}\" role=\"status\" aria-live=\"polite\" data-tone=\"{tone}\">\
<span class=\"tone\">{word}</span> <span id=\"verdict-text\">{}</span></p>\
<p id=\"progress\">{}</p>",
        esc(&v.verdict),
        esc(&v.progress_line),
        tone = v.tone,
        word = match v.tone {
            "ok" => "Safe:",
            "failed" => "Problem:",
            _ => "Not yet:",
        }
    );
    let _ = write!(b, "<div id=\"library\">{}</div>", library(v));
    let _ = write!(b, "<div id=\"sparkline\">{}</div>", sparkline(&v.hourly));
    let _ = write!(
        b,
        "<p>Conditions: <span id=\"conditions\">{}</span></p>",
        esc(v.conditions.as_deref().unwrap_or("not known yet"))
    );
    let _ = write!(b, "<div id=\"observed\">{}</div>", observed(v));
    b.push_str("</section>");
    // Replaced whole by live updates (dashboard.js), as is the history below.
    let _ = write!(b, "<div id=\"lists\">{}</div>", lists(v));
    b.push_str("<section aria-labelledby=\"ext-h\"><h2 id=\"ext-h\">Extensions</h2>");
    if v.extensions.is_empty() {
        b.push_str("<p>No extension is installed.</p>");
    }
    for c in &v.extensions {
        card(&mut b, c, csrf);
    }
    let _ = write!(
        b,
        "</section><section aria-labelledby=\"history-h\"><h2 id=\"history-h\">History</h2><div id=\"history\">{}</div>",
        history(v)
    );
    let _ = write!(
        b,
        "</section><form method=\"post\" action=\"/logout\" class=\"logout\">{}<button type=\"submit\">Sign out</button></form><script src=\"/static/dashboard.js\"></script>",
        csrf_field(csrf)
    );
    document("Photo backup", &b)
}

/// The library's size: markup sent again by live updates.
pub fn library(v: &View) -> String {
    format!(
        "<p>Library: {} photos, {} files, {}.</p>",
        thousands(v.library.assets),
        thousands(v.library.resources),
        bytes_text(v.library.bytes)
    )
}

/// What is observed (power, network...): markup sent again by live updates, so it never
/// contradicts the conditions line above it.
pub fn observed(v: &View) -> String {
    let mut b = String::new();
    if !v.observed.is_empty() {
        b.push_str("<dl class=\"observed\" aria-label=\"What Ferry sees\">");
        for (k, val) in &v.observed {
            let _ = write!(b, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(val));
        }
        b.push_str("</dl>");
    }
    b
}

/// The failed and waiting files, with their thumbnails: markup sent again by live updates.
pub fn lists(v: &View) -> String {
    let mut b = String::new();
    if !v.failed.is_empty() {
        b.push_str("<section aria-labelledby=\"failed-h\"><h2 id=\"failed-h\">Failed</h2><ul class=\"files\">");
        for f in &v.failed {
            let _ = write!(
                b,
                "<li class=\"with-thumb\">{}<span>{} — {} <span class=\"ext\">({})</span></span></li>",
                thumb_img(&f.file),
                file_link(&f.file),
                esc(&f.error),
                esc(&f.extension)
            );
        }
        b.push_str("</ul></section>");
    }
    if !v.waiting.is_empty() {
        b.push_str("<section aria-labelledby=\"waiting-h\"><h2 id=\"waiting-h\">Waiting</h2>");
        for g in &v.waiting {
            let _ = write!(
                b,
                "<h3>{} — {}</h3><ul class=\"files\">",
                thousands(g.count),
                esc(&g.reason)
            );
            for f in &g.files {
                let _ = write!(
                    b,
                    "<li class=\"with-thumb\">{}<span>{}</span></li>",
                    thumb_img(f),
                    file_link(f)
                );
            }
            if (g.files.len() as u64) < g.count {
                let _ = write!(b, "<li>and {} more</li>", g.count - g.files.len() as u64);
            }
            b.push_str("</ul>");
        }
        b.push_str("</section>");
    }
    b
}

/// The newest finished uploads: markup sent again by live updates.
pub fn history(v: &View) -> String {
    let mut b = String::new();
    if v.history.is_empty() {
        b.push_str("<p>No finished upload recorded yet.</p>");
    } else {
        b.push_str("<table><thead><tr><th scope=\"col\">When</th><th scope=\"col\">File</th><th scope=\"col\">Outcome</th><th scope=\"col\">Extension</th></tr></thead><tbody>");
        for h in &v.history {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&h.when),
                file_link(&h.file),
                esc(&h.outcome),
                esc(&h.extension)
            );
        }
        b.push_str("</tbody></table>");
    }
    b
}

/// One asset's `why`: each resource, its verdict, and what each extension did with it.
pub fn why_page(w: &Why) -> String {
    let mut b = String::from("<p><a href=\"/\">Back to the dashboard</a></p>");
    for r in &w.resources {
        let _ = write!(
            b,
            "<section class=\"card\"><h2 class=\"file\">{}</h2><p><strong>{}</strong>: {}</p><ul>",
            esc(&ferry_core::path_text::display(&r.path)),
            esc(&r.verdict.replace('_', " ")),
            esc(&r.explanation)
        );
        for e in &r.by_extension {
            let _ = write!(
                b,
                "<li>{}: <strong>{}</strong> — {}</li>",
                esc(&e.extension),
                esc(&e.verdict.replace('_', " ")),
                esc(&e.explanation)
            );
        }
        b.push_str("</ul></section>");
    }
    document("Why this photo is (not) backed up", &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sparkline_spans_the_day_and_says_it_in_words() {
        let mut h = [0u64; 24];
        h[23] = 2000;
        h[0] = 1000;
        let svg = sparkline(&h);
        assert!(svg.contains("points=\"0.0,20.0 "), "{svg}");
        assert!(svg.contains(" 240.0,2.0\""), "{svg}");
        assert!(svg.contains("Sent in the last 24 hours: 3.0 KB; busiest hour: 2.0 KB"));
        assert!(
            !svg.contains("style"),
            "no inline style: the CSP forbids it"
        );
        let flat = sparkline(&[0; 24]);
        assert!(flat.contains("0 bytes"), "{flat}");
    }

    fn a_card(enabled: bool) -> Card {
        Card {
            id: "bundled".into(),
            name: "Ferry server".into(),
            installed: true,
            enabled,
            asks: Some("the whole library".into()),
            granted: enabled.then(|| "the whole library".into()),
            granted_folders: Vec::new(),
            destinations: vec!["https://photos.example/v1/".into(), "http://<b>/".into()],
            job_limit: Some(64),
            state: "idle".into(),
            last_error: None,
        }
    }

    fn rendered(c: &Card) -> String {
        let mut out = String::new();
        card(&mut out, c, "t0k3n");
        out
    }

    #[test]
    fn a_disabled_dashboard_card_offers_grant_and_never_limit() {
        let off = rendered(&a_card(false));
        assert!(!off.contains("action=\"/extensions/limit\""), "{off}");
        assert!(!off.contains("Limit to these folders"), "{off}");
        assert!(!off.contains("action=\"/extensions/revoke\""), "{off}");
        assert!(off.contains("action=\"/extensions/grant\""), "{off}");
        assert!(off.contains(">Grant only these folders"), "{off}");
        assert!(
            off.contains("<button type=\"submit\">Grant</button>"),
            "{off}"
        );
    }

    #[test]
    fn an_enabled_dashboard_card_offers_limit_and_revoke() {
        let on = rendered(&a_card(true));
        assert!(on.contains("action=\"/extensions/limit\""), "{on}");
        assert!(on.contains("Limit to these folders"), "{on}");
        assert!(on.contains("action=\"/extensions/revoke\""), "{on}");
        assert!(
            !on.contains("action=\"/extensions/grant\""),
            "all granted: {on}"
        );
        let mut limited = a_card(true);
        limited.granted_folders = vec!["Trips".into()];
        let limited = rendered(&limited);
        assert!(
            limited.contains("Grant everything it asks for"),
            "{limited}"
        );
        assert!(!limited.contains("Grant only these folders"), "{limited}");
    }

    #[test]
    fn every_dashboard_card_shows_where_uploads_go_and_the_job_limit() {
        for enabled in [false, true] {
            let html = rendered(&a_card(enabled));
            assert!(
                html.contains(&format!(
                    "<dt>{}</dt><dd class=\"destinations\">https://photos.example/v1/, http://&lt;b&gt;/</dd>",
                    if enabled { "Sends to" } else { "Would send to" }
                )),
                "{html}"
            );
            assert!(
                html.contains("<dt>Job limit</dt><dd class=\"job-limit\">64</dd>"),
                "{html}"
            );
        }
    }

    #[test]
    fn markup_characters_are_escaped() {
        assert_eq!(
            esc("<img src=x onerror=alert(1)>.jpg"),
            "&lt;img src=x onerror=alert(1)&gt;.jpg"
        );
        assert_eq!(esc("a\"b'c&d"), "a&quot;b&#39;c&amp;d");
        assert_eq!(url_component("01a-b_c.d~"), "01a-b_c.d~");
        assert_eq!(bytes_text(999), "999 bytes");
        assert_eq!(bytes_text(4220), "4.2 KB");
        assert_eq!(bytes_text(3_500_000_000), "3.5 GB");
        assert_eq!(url_component("a b&c\"<"), "a%20b%26c%22%3C");
    }
}
