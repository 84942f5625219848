//! Where a job's bytes go: the method, URL and headers an extension chose, and the rules that
//! keep them inside what the user consented to (SPEC.md, "Enabling" 3 and "Jobs").
//!
//! The URL parser is deliberately small and strict (`scheme://host[:port]/path?query`): it
//! accepts only what Ferry can compare safely against a declared base, so anything unusual
//! (userinfo, fragments, dot segments, raw non-ASCII) is refused rather than normalised.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Most headers one destination may carry; bounds what one job stores and sends.
pub const MAX_HEADERS: usize = 64;
/// Most bytes of header names and values together on one destination.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Longest URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 4 * 1024;

/// The HTTP methods an upload may use; the body is always the resource's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Post,
    Put,
    Patch,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }

    /// Parses a method name; only POST, PUT and PATCH carry a body Ferry can send.
    pub fn parse(name: &str) -> Result<Method, DestinationError> {
        match name.to_ascii_uppercase().as_str() {
            "POST" => Ok(Method::Post),
            "PUT" => Ok(Method::Put),
            "PATCH" => Ok(Method::Patch),
            _ => Err(DestinationError::Method(name.to_owned())),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a destination or a base was refused. Each names the rule so the extension can be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("method {0:?} is not POST, PUT or PATCH")]
    Method(String),
    #[error("URL {url:?} is malformed: {why}")]
    MalformedUrl { url: String, why: &'static str },
    #[error("URL {0:?} uses http on a host that is not loopback; use https")]
    InsecureScheme(String),
    #[error("URL {0:?} lies outside every destination base the extension declared")]
    OutsideBases(String),
    #[error("a destination base may not carry a query: {0:?}")]
    BaseWithQuery(String),
    #[error("header name {0:?} is not a valid token")]
    HeaderName(String),
    #[error("header {0:?} has a value with control characters (CR, LF, NUL, ...)")]
    HeaderValue(String),
    #[error("header {0:?} is set by Ferry's transfer, not by the extension")]
    ReservedHeader(String),
    #[error("too many headers: {count} (at most {MAX_HEADERS}, {MAX_HEADER_BYTES} bytes)")]
    TooManyHeaders { count: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed URL: lower-cased scheme and host, the effective port, the path and the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// Lower-cased; an IPv6 literal keeps its brackets.
    pub host: String,
    pub port: u16,
    /// Starts with `/`; `/` when the URL had none.
    pub path: String,
    pub query: Option<String>,
}

impl Url {
    pub fn parse(input: &str) -> Result<Url, DestinationError> {
        let bad = |why| DestinationError::MalformedUrl {
            url: input.chars().take(200).collect(),
            why,
        };
        if input.len() > MAX_URL_BYTES {
            return Err(bad("longer than 4 KiB"));
        }
        if !input.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("contains spaces, control or non-ASCII characters"));
        }
        if input.contains('#') {
            return Err(bad("has a fragment"));
        }
        let (scheme, rest) = input.split_once("://").ok_or(bad("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            _ => return Err(bad("scheme is not http or https")),
        };
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(bad("has user info"));
        }
        let (host, port) = split_host_port(authority).ok_or(bad("bad host or port"))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (rest, None),
        };
        let path = if path.is_empty() { "/" } else { path };
        if !path.bytes().all(is_path_byte) {
            return Err(bad("path has characters that must be percent-encoded"));
        }
        if let Some(q) = &query
            && !q.bytes().all(|b| is_path_byte(b) || b == b'?')
        {
            return Err(bad("query has characters that must be percent-encoded"));
        }
        if !percent_escapes_ok(path) || !query.as_deref().is_none_or(percent_escapes_ok) {
            return Err(bad("bad percent escape"));
        }
        // Encoded slashes and backslashes hide segment boundaries from the base check that
        // a server's decoding would reveal.
        let lower_path = path.to_ascii_lowercase();
        if lower_path.contains("%2f") || lower_path.contains("%5c") {
            return Err(bad("path has an encoded slash or backslash"));
        }
        // Dot segments would let a URL climb out of its base once a server normalises it.
        if path.split('/').any(|seg| {
            let s = seg.to_ascii_lowercase().replace("%2e", ".");
            s == "." || s == ".."
        }) {
            return Err(bad("path has dot segments"));
        }
        Ok(Url {
            port: port.unwrap_or(scheme.default_port()),
            scheme,
            host,
            path: path.to_owned(),
            query,
        })
    }

    /// Loopback hosts are the only place plain http is allowed: traffic never leaves the device.
    pub fn is_loopback(&self) -> bool {
        if self.host == "localhost" {
            return true;
        }
        if let Some(v6) = self
            .host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
        {
            return v6.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback());
        }
        self.host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
    }
}

fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let inner = &rest[..end];
        inner.parse::<Ipv6Addr>().ok()?;
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", inner.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !ok {
            return None;
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|&n| n != 0)?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// RFC 3986 `pchar` plus `/` (and `%`, checked separately).
fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b)
}

fn percent_escapes_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(|c| c.is_ascii_hexdigit());
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// A destination base an extension declared (PhotoKit's `BackgroundUploadURLBase`): a job's
/// URL must share its scheme, host and port and lie under its path on a segment boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UrlBase {
    text: String,
    url: Url,
}

impl UrlBase {
    /// Parses a base; the same scheme rule as for jobs applies, and a base has no query.
    pub fn parse(text: &str) -> Result<UrlBase, DestinationError> {
        let mut url = Url::parse(text)?;
        if url.query.is_some() {
            return Err(DestinationError::BaseWithQuery(text.to_owned()));
        }
        if url.scheme == Scheme::Http && !url.is_loopback() {
            return Err(DestinationError::InsecureScheme(text.to_owned()));
        }
        // "/a/b/" and "/a/b" mean the same base: everything at or under segment "b".
        while url.path.len() > 1 && url.path.ends_with('/') {
            url.path.pop();
        }
        Ok(UrlBase {
            text: text.to_owned(),
            url,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn contains(&self, url: &Url) -> bool {
        let b = &self.url;
        b.scheme == url.scheme
            && b.host == url.host
            && b.port == url.port
            && (b.path == "/"
                || url.path == b.path
                || url
                    .path
                    .strip_prefix(b.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

impl TryFrom<String> for UrlBase {
    type Error = DestinationError;
    fn try_from(s: String) -> Result<UrlBase, DestinationError> {
        UrlBase::parse(&s)
    }
}

impl From<UrlBase> for String {
    fn from(b: UrlBase) -> String {
        b.text
    }
}

/// One upload target as the extension gave it. Header names are stored lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Names of headers whose values are secrets beside the ones Ferry always treats so
    /// ([`ALWAYS_SECRET_HEADERS`]): shown redacted everywhere but to the extension itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_headers: Vec<String>,
}

/// Headers that carry credentials whatever the extension says.
pub const ALWAYS_SECRET_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// What a secret header's value is shown as: its scheme kept when it has one
/// (`Bearer ***`), else `***`.
pub fn redact_value(value: &str) -> String {
    match value.split_once(' ') {
        Some((scheme, _)) if !scheme.is_empty() && scheme.bytes().all(is_token_byte) => {
            format!("{scheme} ***")
        }
        _ => "***".to_owned(),
    }
}

impl Destination {
    pub fn new(method: Method, url: impl Into<String>) -> Destination {
        Destination {
            method,
            url: url.into(),
            headers: Vec::new(),
            secret_headers: Vec::new(),
        }
    }

    /// Whether the header `lower_name` carries a secret.
    pub fn is_secret(&self, lower_name: &str) -> bool {
        ALWAYS_SECRET_HEADERS.contains(&lower_name)
            || self
                .secret_headers
                .iter()
                .any(|s| s.eq_ignore_ascii_case(lower_name))
    }

    /// The destination as people and logs may see it: secret header values redacted.
    pub fn redacted(&self) -> Destination {
        let mut d = self.clone();
        for (name, value) in &mut d.headers {
            if self.is_secret(&name.to_ascii_lowercase()) {
                *value = redact_value(value);
            }
        }
        d
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Destination {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Checks every rule against the extension's bases and returns the destination as Ferry
    /// stores it (header names lower-cased).
    pub fn validate(&self, bases: &[UrlBase]) -> Result<Destination, DestinationError> {
        let url = Url::parse(&self.url)?;
        if url.scheme == Scheme::Http && !url.is_loopback() {
            return Err(DestinationError::InsecureScheme(self.url.clone()));
        }
        if !bases.iter().any(|b| b.contains(&url)) {
            return Err(DestinationError::OutsideBases(self.url.clone()));
        }
        let bytes: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        if self.headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
            return Err(DestinationError::TooManyHeaders {
                count: self.headers.len(),
            });
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(DestinationError::HeaderName(name.clone()));
            }
            let lower = name.to_ascii_lowercase();
            if is_reserved_header(&lower) {
                return Err(DestinationError::ReservedHeader(lower));
            }
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(DestinationError::HeaderValue(lower));
            }
            headers.push((lower, value.clone()));
        }
        if self.secret_headers.len() > MAX_HEADERS {
            return Err(DestinationError::TooManyHeaders {
                count: self.secret_headers.len(),
            });
        }
        Ok(Destination {
            method: self.method,
            url: self.url.clone(),
            headers,
            secret_headers: self
                .secret_headers
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
        })
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Headers that describe the transfer itself or the connection: Ferry sets them (framing,
/// resumable-upload offsets) and an extension's value would corrupt the upload.
pub fn is_reserved_header(lower_name: &str) -> bool {
    const EXACT: [&str; 11] = [
        "content-length",
        "content-range",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "host",
        "expect",
        "proxy-connection",
    ];
    EXACT.contains(&lower_name)
        || lower_name.starts_with("upload-")
        || lower_name.starts_with("tus-")
        || lower_name.starts_with("proxy-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_for_people_and_kept_for_the_extension() {
        let bases = [UrlBase::parse("https://b.example/v1/").unwrap()];
        let mut d = Destination::new(Method::Post, "https://b.example/v1/up")
            .header("Authorization", "Bearer s3cr3t")
            .header("Cookie", "sid=s3cr3t")
            .header("X-Api-Key", "s3cr3t")
            .header("X-Trace", "visible");
        d.secret_headers = vec!["X-API-KEY".into()];
        let stored = d.validate(&bases).unwrap();
        assert_eq!(stored.secret_headers, vec!["x-api-key".to_owned()]);
        assert!(stored.headers.iter().any(|(_, v)| v == "Bearer s3cr3t"));
        let shown = stored.redacted();
        let value = |n: &str| {
            shown
                .headers
                .iter()
                .find(|(k, _)| k == n)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(value("authorization"), "Bearer ***");
        assert_eq!(value("cookie"), "***");
        assert_eq!(value("x-api-key"), "***");
        assert_eq!(value("x-trace"), "visible");
        assert!(!format!("{shown:?}").contains("s3cr3t"));
    }

    fn bases(list: &[&str]) -> Vec<UrlBase> {
        list.iter().map(|b| UrlBase::parse(b).unwrap()).collect()
    }

    #[test]
    fn url_inside_base_only_on_segment_boundary() {
        let b = bases(&["https://Photos.Example.com/u/alice/"]);
        let ok = |u: &str| Destination::new(Method::Put, u).validate(&b);
        assert!(ok("https://photos.example.com/u/alice").is_ok());
        assert!(ok("https://photos.example.com:443/u/alice/x.jpg?v=1").is_ok());
        assert!(matches!(
            ok("https://photos.example.com/u/alicex/x.jpg"),
            Err(DestinationError::OutsideBases(_))
        ));
        assert!(matches!(
            ok("https://photos.example.com:8443/u/alice/x"),
            Err(DestinationError::OutsideBases(_))
        ));
        assert!(matches!(
            ok("https://evil.example.com/u/alice/x"),
            Err(DestinationError::OutsideBases(_))
        ));
        assert!(matches!(
            ok("https://photos.example.com/u/alice/../bob/x"),
            Err(DestinationError::MalformedUrl { .. })
        ));
        assert!(matches!(
            ok("https://photos.example.com/u/alice/%2E%2e/bob"),
            Err(DestinationError::MalformedUrl { .. })
        ));
        assert!(matches!(
            ok("https://photos.example.com/u/alice/%2e%2E%2Fbob"),
            Err(DestinationError::MalformedUrl { .. })
        ));
        assert!(matches!(
            ok("https://user@photos.example.com/u/alice/x"),
            Err(DestinationError::MalformedUrl { .. })
        ));
    }

    #[test]
    fn http_only_on_loopback() {
        assert!(matches!(
            UrlBase::parse("http://example.com/"),
            Err(DestinationError::InsecureScheme(_))
        ));
        for base in [
            "http://127.0.0.1:8080/",
            "http://127.9.9.9/",
            "http://[::1]:9000/up",
            "http://localhost/",
        ] {
            let b = bases(&[base]);
            let url = format!("{}/f", base.trim_end_matches('/'));
            assert!(
                Destination::new(Method::Post, url).validate(&b).is_ok(),
                "{base}"
            );
        }
        // An https base does not admit http to the same host.
        let b = bases(&["https://localhost/"]);
        assert!(matches!(
            Destination::new(Method::Post, "http://localhost:443/x").validate(&b),
            Err(DestinationError::OutsideBases(_))
        ));
    }

    #[test]
    fn headers_are_checked_and_lower_cased() {
        let b = bases(&["https://h.example/"]);
        let d = |n: &str, v: &str| {
            Destination::new(Method::Patch, "https://h.example/x")
                .header(n, v)
                .validate(&b)
        };
        assert_eq!(
            d("X-Album", "Summer").unwrap().headers,
            vec![("x-album".to_owned(), "Summer".to_owned())]
        );
        for reserved in [
            "Content-Length",
            "Upload-Offset",
            "Tus-Resumable",
            "Proxy-Authorization",
            "Host",
            "TE",
        ] {
            assert!(
                matches!(d(reserved, "1"), Err(DestinationError::ReservedHeader(_))),
                "{reserved}"
            );
        }
        assert!(matches!(
            d("X-A", "a\r\nInjected: 1"),
            Err(DestinationError::HeaderValue(_))
        ));
        assert!(matches!(
            d("X A", "1"),
            Err(DestinationError::HeaderName(_))
        ));
        assert!(matches!(d("", "1"), Err(DestinationError::HeaderName(_))));
    }

    #[test]
    fn methods_and_malformed_urls() {
        assert_eq!(Method::parse("put"), Ok(Method::Put));
        assert!(Method::parse("GET").is_err());
        for bad in [
            "ftp://h/x",
            "https://",
            "https://h:0/",
            "https://h:99999/",
            "https://h/x y",
            "https://h/x#frag",
            "https://h/caf\u{e9}",
            "https://h/%zz",
            "https://[::1/x",
            "h/x",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        let u = Url::parse("HTTPS://H.Example:8443?a=b").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str(), u.query.as_deref()),
            ("h.example", 8443, "/", Some("a=b"))
        );
    }
}
