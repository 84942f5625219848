//! The few HTTP Structured Field shapes (RFC 9651) the resumable-upload draft and RFC 9530 digests use.
//!
//! Hand-written instead of a dependency because only Boolean, Integer and a Dictionary of simple
//! items are needed, and every malformed input must become a typed 400 rather than a panic.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Why a structured field was refused; the text goes into the 400's problem detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed structured field: {0}")]
pub struct SfError(pub &'static str);

/// One bare item of a dictionary member; parameters are parsed and dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Integer(i64),
    Boolean(bool),
    Bytes(Vec<u8>),
    Token(String),
    String(String),
}

fn trim_sp(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// `?0` / `?1`.
pub fn parse_boolean(raw: &str) -> Result<bool, SfError> {
    match trim_sp(raw) {
        "?1" => Ok(true),
        "?0" => Ok(false),
        _ => Err(SfError("expected a Boolean (?0 or ?1)")),
    }
}

/// An sf-integer (at most 15 digits); negative values are refused because every use is a size
/// or an offset.
pub fn parse_non_negative_integer(raw: &str) -> Result<u64, SfError> {
    let s = trim_sp(raw);
    if s.starts_with('-') {
        return Err(SfError("negative integer"));
    }
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SfError("expected an Integer of 1 to 15 digits"));
    }
    s.parse().map_err(|_| SfError("expected an Integer"))
}

pub fn serialize_boolean(value: bool) -> &'static str {
    if value { "?1" } else { "?0" }
}

/// A Byte Sequence item, as used by `Repr-Digest: sha-256=:…:`.
pub fn serialize_bytes(bytes: &[u8]) -> String {
    format!(":{}:", STANDARD.encode(bytes))
}

/// Parses a Dictionary. Duplicate keys keep the last value, as RFC 9651 says.
pub fn parse_dictionary(raw: &str) -> Result<Vec<(String, Item)>, SfError> {
    let mut p = Parser {
        s: raw.as_bytes(),
        i: 0,
    };
    let mut out: Vec<(String, Item)> = Vec::new();
    p.skip_sp();
    if p.done() {
        return Ok(out);
    }
    loop {
        let key = p.key()?;
        let item = if p.peek() == Some(b'=') {
            p.i += 1;
            p.bare_item()?
        } else {
            Item::Boolean(true)
        };
        p.parameters()?;
        out.retain(|(k, _)| *k != key);
        out.push((key, item));
        p.skip_ows();
        if p.done() {
            return Ok(out);
        }
        if p.peek() != Some(b',') {
            return Err(SfError("expected ',' between dictionary members"));
        }
        p.i += 1;
        p.skip_ows();
        if p.done() {
            return Err(SfError("trailing ',' in dictionary"));
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn key(&mut self) -> Result<String, SfError> {
        let start = self.i;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => self.i += 1,
            _ => {
                return Err(SfError(
                    "dictionary key must start with a lowercase letter or '*'",
                ));
            }
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c) {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn parameters(&mut self) -> Result<(), SfError> {
        while self.peek() == Some(b';') {
            self.i += 1;
            self.skip_sp();
            self.key()?;
            if self.peek() == Some(b'=') {
                self.i += 1;
                self.bare_item()?;
            }
        }
        Ok(())
    }
    fn bare_item(&mut self) -> Result<Item, SfError> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                if self.peek() == Some(b'-') {
                    self.i += 1;
                }
                let digits_start = self.i;
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
                if self.peek() == Some(b'.') {
                    return Err(SfError("decimals are not accepted here"));
                }
                let n = self.i - digits_start;
                if n == 0 || n > 15 {
                    return Err(SfError("integer must have 1 to 15 digits"));
                }
                let text =
                    std::str::from_utf8(&self.s[start..self.i]).map_err(|_| SfError("integer"))?;
                text.parse()
                    .map(Item::Integer)
                    .map_err(|_| SfError("integer"))
            }
            Some(b'?') => {
                self.i += 1;
                let v = match self.peek() {
                    Some(b'0') => false,
                    Some(b'1') => true,
                    _ => return Err(SfError("boolean must be ?0 or ?1")),
                };
                self.i += 1;
                Ok(Item::Boolean(v))
            }
            Some(b':') => {
                self.i += 1;
                let start = self.i;
                while let Some(c) = self.peek() {
                    if c == b':' {
                        break;
                    }
                    if !(c.is_ascii_alphanumeric() || b"+/=".contains(&c)) {
                        return Err(SfError("invalid character in byte sequence"));
                    }
                    self.i += 1;
                }
                if self.peek() != Some(b':') {
                    return Err(SfError("unterminated byte sequence"));
                }
                let body = &self.s[start..self.i];
                self.i += 1;
                STANDARD
                    .decode(body)
                    .map(Item::Bytes)
                    .map_err(|_| SfError("byte sequence is not valid base64"))
            }
            Some(b'"') => {
                self.i += 1;
                let mut out = String::new();
                loop {
                    match self.peek() {
                        None => return Err(SfError("unterminated string")),
                        Some(b'"') => {
                            self.i += 1;
                            return Ok(Item::String(out));
                        }
                        Some(b'\\') => {
                            self.i += 1;
                            match self.peek() {
                                Some(c @ (b'"' | b'\\')) => out.push(c as char),
                                _ => return Err(SfError("bad escape in string")),
                            }
                            self.i += 1;
                        }
                        Some(c) if (0x20..0x7f).contains(&c) => {
                            out.push(c as char);
                            self.i += 1;
                        }
                        Some(_) => return Err(SfError("non-printable character in string")),
                    }
                }
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => {
                let start = self.i;
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c) {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                Ok(Item::Token(
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                ))
            }
            _ => Err(SfError("expected an item")),
        }
    }
}

/// The digests of a whole upload a client may promise in `Repr-Digest`: `sha-256` (RFC 9530)
/// and `blake3` (not in IANA's registry; Ferry's own clients send it to servers that ask for it
/// with `Want-Repr-Digest`, and this server checks it like the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReprDigests {
    pub sha256: Option<[u8; 32]>,
    pub blake3: Option<[u8; 32]>,
}

impl ReprDigests {
    pub fn is_empty(&self) -> bool {
        self.sha256.is_none() && self.blake3.is_none()
    }
}

/// Finds `sha-256` and `blake3` in a `Repr-Digest` value; other algorithms are ignored, as
/// RFC 9530 lets a recipient do. A known algorithm with a malformed value is an error.
pub fn repr_digests(raw: &str) -> Result<ReprDigests, SfError> {
    let mut d = ReprDigests::default();
    for (key, item) in parse_dictionary(raw)? {
        let slot = match key.as_str() {
            "sha-256" => &mut d.sha256,
            "blake3" => &mut d.blake3,
            _ => continue,
        };
        let Item::Bytes(b) = item else {
            return Err(SfError("a digest must be a byte sequence"));
        };
        *slot = Some(
            b.try_into()
                .map_err(|_| SfError("sha-256 and blake3 digests are 32 bytes"))?,
        );
    }
    Ok(d)
}

/// Finds `sha-256` in a `Repr-Digest`/`Content-Digest` value. `Ok(None)` when the field names
/// only algorithms this server does not check, which RFC 9530 lets a recipient ignore.
pub fn sha256_from_digest_field(raw: &str) -> Result<Option<[u8; 32]>, SfError> {
    for (key, item) in parse_dictionary(raw)? {
        match (key.as_str(), item) {
            ("sha-256", Item::Bytes(b)) => {
                return b
                    .try_into()
                    .map(Some)
                    .map_err(|_| SfError("sha-256 digest must be 32 bytes"));
            }
            ("sha-256", _) => return Err(SfError("sha-256 digest must be a byte sequence")),
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_and_integers() {
        assert_eq!(parse_boolean("?1"), Ok(true));
        assert_eq!(parse_boolean(" ?0 "), Ok(false));
        assert!(parse_boolean("1").is_err());
        assert!(parse_boolean("?2").is_err());
        assert_eq!(parse_non_negative_integer("0"), Ok(0));
        assert_eq!(
            parse_non_negative_integer("999999999999999"),
            Ok(999_999_999_999_999)
        );
        assert!(parse_non_negative_integer("1000000000000000").is_err());
        assert!(parse_non_negative_integer("-1").is_err());
        assert!(parse_non_negative_integer("1.5").is_err());
        assert!(parse_non_negative_integer("").is_err());
        assert!(parse_non_negative_integer("+3").is_err());
    }

    #[test]
    fn dictionaries() {
        let d = parse_dictionary("sha-256=:AAAA:, sha-512=:AAAA:;p=1, flag, n=-3, t=abc").unwrap();
        assert_eq!(d.len(), 5);
        assert_eq!(d[2], ("flag".into(), Item::Boolean(true)));
        assert_eq!(d[3], ("n".into(), Item::Integer(-3)));
        assert!(parse_dictionary("a=1,").is_err());
        assert!(parse_dictionary("A=1").is_err());
        assert!(parse_dictionary("a=:not base64!:").is_err());
        assert!(parse_dictionary("a=:AAAA").is_err());
        assert!(parse_dictionary("a=1 b=2").is_err());
    }

    #[test]
    fn digests() {
        let zero = [0u8; 32];
        let field = format!("sha-512=:AAAA:, sha-256={}", serialize_bytes(&zero));
        assert_eq!(sha256_from_digest_field(&field), Ok(Some(zero)));
        assert_eq!(sha256_from_digest_field("md5=:AAAA:"), Ok(None));
        assert!(sha256_from_digest_field("sha-256=:AAAA:").is_err());
        assert!(sha256_from_digest_field("sha-256=abc").is_err());
        let one = [1u8; 32];
        let both = format!(
            "md5=:AAAA:, blake3={}, sha-256={}",
            serialize_bytes(&one),
            serialize_bytes(&zero)
        );
        assert_eq!(
            repr_digests(&both),
            Ok(ReprDigests {
                sha256: Some(zero),
                blake3: Some(one)
            })
        );
        assert_eq!(repr_digests("md5=:AAAA:"), Ok(ReprDigests::default()));
        assert!(repr_digests("blake3=:AAAA:").is_err());
        assert!(repr_digests("blake3=7").is_err());
    }
}
