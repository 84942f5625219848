//! Which upload protocol a destination speaks, learnt from one `OPTIONS` request and cached.
//!
//! The IETF draft announces itself with `Upload-Limit` (and `Accept-Patch:
//! application/partial-upload`), tus 1.0 with `Tus-Version`. A server that answers neither, or
//! refuses `OPTIONS` (404, 405, 501), gets one plain request. Parsing is defensive: the headers
//! come from the network, so garbage is "not advertised", and contradictory limits are
//! [`BadLimits`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// IETF "Resumable Uploads for HTTP", interop version 8.
    Ietf,
    /// tus 1.0.0.
    Tus,
    /// One request carrying the whole body; restarted from zero after a cut.
    Plain,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Ietf => "ietf",
            Protocol::Tus => "tus",
            Protocol::Plain => "plain",
        }
    }
}

/// The draft's `Upload-Limit` dictionary (the members Ferry uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UploadLimit {
    pub max_size_bytes: Option<u64>,
    pub max_append_size_bytes: Option<u64>,
    pub min_append_size_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// The draft is supported, with these limits.
    pub ietf: Option<UploadLimit>,
    /// tus 1.0.0 is supported.
    pub tus: Option<TusCaps>,
    /// The server asks for a BLAKE3 `Repr-Digest` (`Want-Repr-Digest: blake3=…`, as
    /// ferry-server does): it checks the promised hash before an upload becomes an object, so
    /// the job's pinned BLAKE3 can be sent as it is, without hashing the file first.
    pub wants_blake3: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TusCaps {
    pub max_size_bytes: Option<u64>,
    pub extensions: Vec<String>,
    pub checksum_algorithms: Vec<String>,
}

impl TusCaps {
    pub fn has(&self, extension: &str) -> bool {
        self.extensions.iter().any(|e| e == extension)
    }

    /// The strongest checksum this client and the server share.
    pub fn checksum_sha256(&self) -> bool {
        self.has("checksum") && self.checksum_algorithms.iter().any(|a| a == "sha256")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server advertises contradictory upload limits: {0}")]
pub struct BadLimits(pub String);

fn header_text<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// An sf-integer (RFC 8941: at most 15 digits, no sign here) or `None`.
fn sf_integer(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || v.len() > 15 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Parses `Upload-Limit: max-size=…, max-append-size=…`; unknown members are ignored, members
/// that are not integers make the field unusable (treated as absent).
pub fn parse_upload_limit(v: &str) -> Option<UploadLimit> {
    let mut l = UploadLimit::default();
    for member in v.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let (key, value) = member.split_once('=')?;
        let value = value.split(';').next().unwrap_or("");
        match key.trim() {
            "max-size" => l.max_size_bytes = Some(sf_integer(value)?),
            "max-append-size" => l.max_append_size_bytes = Some(sf_integer(value)?),
            "min-append-size" => l.min_append_size_bytes = Some(sf_integer(value)?),
            _ => {}
        }
    }
    Some(l)
}

/// What an `OPTIONS` answer advertises. Status matters: a refusal advertises nothing.
pub fn parse_capabilities(status: u16, h: &HeaderMap) -> Result<Capabilities, BadLimits> {
    if !(200..300).contains(&status) {
        return Ok(Capabilities::default());
    }
    let accept_patch = header_text(h, "accept-patch")
        .map(|v| list(v).iter().any(|m| m == "application/partial-upload"))
        .unwrap_or(false);
    let ietf = match header_text(h, "upload-limit") {
        Some(v) => parse_upload_limit(v),
        None if accept_patch => Some(UploadLimit::default()),
        None => None,
    };
    if let Some(l) = &ietf {
        if l.max_append_size_bytes == Some(0) || l.max_size_bytes == Some(0) {
            return Err(BadLimits("a zero max-size or max-append-size".into()));
        }
        if let (Some(min), Some(max)) = (l.min_append_size_bytes, l.max_append_size_bytes)
            && min > max
        {
            return Err(BadLimits(format!(
                "min-append-size {min} > max-append-size {max}"
            )));
        }
    }
    let tus = header_text(h, "tus-version")
        .filter(|v| list(v).iter().any(|x| x == "1.0.0"))
        .map(|_| TusCaps {
            max_size_bytes: header_text(h, "tus-max-size").and_then(sf_integer),
            extensions: header_text(h, "tus-extension")
                .map(list)
                .unwrap_or_default(),
            checksum_algorithms: header_text(h, "tus-checksum-algorithm")
                .map(list)
                .unwrap_or_default(),
        });
    // RFC 9530: `Want-Repr-Digest: blake3=9, sha-256=5`; a preference of 0 means "not
    // acceptable", garbage means nothing.
    let wants_blake3 = header_text(h, "want-repr-digest").is_some_and(|v| {
        v.split(',').any(|m| {
            m.split_once('=').is_some_and(|(k, p)| {
                k.trim() == "blake3"
                    && sf_integer(p.split(';').next().unwrap_or("")).unwrap_or(0) > 0
            })
        })
    });
    Ok(Capabilities {
        ietf,
        tus,
        wants_blake3,
    })
}

/// Chooses the protocol: the caller's preference if the server speaks it, else the draft, then
/// tus (with creation), then plain.
pub fn choose(caps: &Capabilities, prefer: Option<Protocol>) -> Protocol {
    let tus_ok = caps.tus.as_ref().is_some_and(|t| t.has("creation"));
    let speaks = |p: Protocol| match p {
        Protocol::Ietf => caps.ietf.is_some(),
        Protocol::Tus => tus_ok,
        Protocol::Plain => true,
    };
    if let Some(p) = prefer
        && speaks(p)
    {
        return p;
    }
    [Protocol::Ietf, Protocol::Tus, Protocol::Plain]
        .into_iter()
        .find(|p| speaks(*p))
        .unwrap_or(Protocol::Plain)
}

/// Preflight answers by endpoint (URL without its query), kept for `ttl`.
#[derive(Debug)]
pub struct PreflightCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Capabilities)>>,
}

impl PreflightCache {
    pub fn new(ttl: Duration) -> PreflightCache {
        PreflightCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn key(url: &reqwest::Url) -> String {
        let mut u = url.clone();
        u.set_query(None);
        u.set_fragment(None);
        u.to_string()
    }

    pub fn get(&self, key: &str) -> Option<Capabilities> {
        let e = self.entries.lock().ok()?;
        e.get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, c)| c.clone())
    }

    pub fn put(&self, key: String, caps: Capabilities) {
        if let Ok(mut e) = self.entries.lock() {
            // Bounded: a cache of endpoints, not of uploads.
            if e.len() >= 1024 {
                e.clear();
            }
            e.insert(key, (Instant::now(), caps));
        }
    }

    /// Forgets an endpoint whose answers stopped matching what it advertised.
    pub fn forget(&self, key: &str) {
        if let Ok(mut e) = self.entries.lock() {
            e.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn ferry_server_options_advertise_both() {
        let h = headers(&[
            ("tus-version", "1.0.0"),
            ("tus-extension", "creation,creation-with-upload,checksum"),
            ("tus-max-size", "1000"),
            ("tus-checksum-algorithm", "sha1,sha256,md5"),
            ("accept-patch", "application/partial-upload"),
            (
                "upload-limit",
                "max-size=1000, max-append-size=100, max-age=60",
            ),
            ("want-repr-digest", "blake3=9, sha-256=5"),
        ]);
        let c = parse_capabilities(204, &h).unwrap();
        assert_eq!(
            c.ietf,
            Some(UploadLimit {
                max_size_bytes: Some(1000),
                max_append_size_bytes: Some(100),
                min_append_size_bytes: None
            })
        );
        let t = c.tus.clone().unwrap();
        assert!(t.checksum_sha256() && t.has("creation-with-upload"));
        assert_eq!(t.max_size_bytes, Some(1000));
        assert!(c.wants_blake3);
        for (v, wants) in [
            ("sha-256=5", false),
            ("blake3=0", false),
            ("blake3", false),
            ("blake3=x, sha-256=1", false),
            ("sha-256=3,blake3=1", true),
        ] {
            let h = headers(&[("want-repr-digest", v)]);
            assert_eq!(
                parse_capabilities(200, &h).unwrap().wants_blake3,
                wants,
                "{v}"
            );
        }
        assert_eq!(choose(&c, None), Protocol::Ietf);
        assert_eq!(choose(&c, Some(Protocol::Tus)), Protocol::Tus);
        assert_eq!(choose(&c, Some(Protocol::Plain)), Protocol::Plain);
    }

    #[test]
    fn refusals_and_garbage_advertise_nothing() {
        let h = headers(&[("upload-limit", "max-size=1"), ("tus-version", "1.0.0")]);
        assert_eq!(
            parse_capabilities(501, &h).unwrap(),
            Capabilities::default()
        );
        let g = headers(&[
            ("upload-limit", "max-size=banana"),
            ("tus-version", "0.2.2"),
        ]);
        let c = parse_capabilities(200, &g).unwrap();
        assert_eq!(c, Capabilities::default());
        assert_eq!(choose(&c, Some(Protocol::Ietf)), Protocol::Plain);
        let zero = headers(&[("upload-limit", "max-append-size=0")]);
        assert!(parse_capabilities(200, &zero).is_err());
        // tus without creation cannot start an upload.
        let t = headers(&[("tus-version", "1.0.0")]);
        assert_eq!(
            choose(&parse_capabilities(200, &t).unwrap(), None),
            Protocol::Plain
        );
    }
}
