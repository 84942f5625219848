//! Paths are bytes on Linux (an old camera's `caf\xE9.jpg` is not UTF-8), but people read text
//! and JSON carries strings. One way to show a path everywhere: text escapes what is not
//! printable UTF-8 so it can be copied back (`caf\xE9.jpg`, as bash's `$'…'` and
//! `ls --quoting-style=escape` read it), and JSON carries that display string beside a lossless
//! base64 form of the bytes, present only when the name is not UTF-8.
//!
//! In JSON, a path field `name` becomes `"name": "<display>"` plus
//! `"name_bytes": "<standard base64 of the raw bytes>"` when (and only when) the path is not
//! valid UTF-8. Readers that want the real file use `name_bytes` when it is there, else `name`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The bytes escaped for display: printable UTF-8 as is, `\` as `\\`, control characters and
/// bytes that are not UTF-8 as `\xNN`. Valid UTF-8 with no control character or backslash
/// comes back unchanged.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() && (c as u32) < 0x100 => {
                    out.push_str(&format!("\\x{:02X}", c as u32))
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// A path for people (see [`escape_bytes`]).
pub fn display(path: &Path) -> String {
    escape_bytes(path.as_os_str().as_bytes())
}

/// An `OsStr` (a file name) for people.
pub fn display_os(name: &OsStr) -> String {
    escape_bytes(name.as_bytes())
}

/// The lossless form: base64 of the raw bytes, only when they are not UTF-8.
pub fn lossless(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes)
        .is_err()
        .then(|| STANDARD.encode(bytes))
}

/// The path from its JSON pair: the base64 bytes when present, else the display string
/// unescaped (exact too: every escape [`escape_bytes`] makes is undone).
pub fn from_json(display: &str, bytes_b64: Option<&str>) -> Result<PathBuf, String> {
    match bytes_b64 {
        Some(b) => STANDARD
            .decode(b)
            .map(|v| PathBuf::from(std::ffi::OsString::from_vec(v)))
            .map_err(|e| format!("not base64: {e}")),
        None => unescape(display).map(|v| PathBuf::from(std::ffi::OsString::from_vec(v))),
    }
}

/// The inverse of [`escape_bytes`].
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b != b'\\' {
            out.push(b);
            rest = tail;
            continue;
        }
        match tail {
            [b'\\', more @ ..] => {
                out.push(b'\\');
                rest = more;
            }
            [b'x', h, l, more @ ..] => {
                let hex = [*h, *l];
                let s = std::str::from_utf8(&hex).map_err(|_| "bad \\x escape".to_owned())?;
                out.push(u8::from_str_radix(s, 16).map_err(|_| format!("bad \\x escape: {s}"))?);
                rest = more;
            }
            _ => return Err("a lone backslash".to_owned()),
        }
    }
    Ok(out)
}

// Serde support for one path field, flattened into its struct:
// `#[serde(flatten, with = "ferry_core::path_text::path")] pub path: PathBuf`.
macro_rules! path_field {
    ($module:ident, $name:literal, $bytes:literal) => {
        #[doc = concat!("`", $name, "` and `", $bytes, "` for a flattened path field.")]
        pub mod $module {
            use serde::{Deserialize, Deserializer, Serialize, Serializer};
            use std::os::unix::ffi::OsStrExt;
            use std::path::PathBuf;

            #[derive(Serialize, Deserialize)]
            struct Field {
                #[serde(rename = $name)]
                text: String,
                #[serde(rename = $bytes, default, skip_serializing_if = "Option::is_none")]
                bytes: Option<String>,
            }

            // serde's `with` passes the field as it is declared: `&PathBuf`.
            #[allow(clippy::ptr_arg)]
            pub fn serialize<S: Serializer>(p: &PathBuf, s: S) -> Result<S::Ok, S::Error> {
                let raw = p.as_os_str().as_bytes();
                Field {
                    text: super::escape_bytes(raw),
                    bytes: super::lossless(raw),
                }
                .serialize(s)
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
                let f = Field::deserialize(d)?;
                super::from_json(&f.text, f.bytes.as_deref()).map_err(serde::de::Error::custom)
            }
        }
    };
}

path_field!(path, "path", "path_bytes");
path_field!(dir, "dir", "dir_bytes");

/// Serde support for a list of paths: each element as its display string, with a
/// `<name>_bytes` list beside it only when one of them is not UTF-8 — here as a plain
/// `serialize_with` giving display strings (lists are folders people typed, shown back).
pub fn serialize_list<S: serde::Serializer>(v: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for p in v {
        seq.serialize_element(&display(p))?;
    }
    seq.end()
}

/// The inverse of [`serialize_list`].
pub fn deserialize_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    let v: Vec<String> = serde::Deserialize::deserialize(d)?;
    v.iter()
        .map(|t| from_json(t, None).map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn p(bytes: &[u8]) -> PathBuf {
        PathBuf::from(OsString::from_vec(bytes.to_vec()))
    }

    #[test]
    fn names_are_escaped_so_they_can_be_copied_back() {
        let cases: &[(&[u8], &str)] = &[
            (b"/photos/IMG_0001.JPG", "/photos/IMG_0001.JPG"),
            ("/photos/été/été.jpg".as_bytes(), "/photos/été/été.jpg"),
            (b"/photos/caf\xE9.jpg", "/photos/caf\\xE9.jpg"),
            (b"/a\\b", "/a\\\\b"),
            (b"/a\nb\x7f", "/a\\x0Ab\\x7F"),
            (b"/\xFF\xFE", "/\\xFF\\xFE"),
        ];
        for (raw, shown) in cases {
            assert_eq!(display(&p(raw)), *shown);
            assert_eq!(unescape(shown).unwrap(), raw.to_vec(), "{shown}");
        }
        assert!(unescape("\\").is_err());
        assert!(unescape("\\xZZ").is_err());
    }

    #[test]
    fn json_carries_the_bytes_only_when_needed_and_round_trips() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct R {
            id: u32,
            #[serde(flatten, with = "path")]
            path: PathBuf,
        }
        let plain = R {
            id: 1,
            path: p("/photos/été.jpg".as_bytes()),
        };
        let j = serde_json::to_value(&plain).unwrap();
        assert_eq!(j, serde_json::json!({"id": 1, "path": "/photos/été.jpg"}));
        assert_eq!(serde_json::from_value::<R>(j).unwrap(), plain);

        let odd = R {
            id: 2,
            path: p(b"/photos/caf\xE9.jpg"),
        };
        let j = serde_json::to_value(&odd).unwrap();
        assert_eq!(j["path"], "/photos/caf\\xE9.jpg");
        assert_eq!(j["path_bytes"], STANDARD.encode(b"/photos/caf\xE9.jpg"));
        assert_eq!(serde_json::from_value::<R>(j).unwrap(), odd);
    }
}
