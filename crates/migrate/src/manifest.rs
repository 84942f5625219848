//! What a package is: its entries (relative byte names, sizes, BLAKE3, whether to compress)
//! and the caller's metadata, with one canonical binary encoding whose BLAKE3 is the package id
//! (the identity of a move: a resumed session must carry the same id).
//!
//! Canonical encoding (all integers big-endian):
//! `"FMPK" | u32 format | u32 entry count | entries | u64 meta length | meta`, an entry being
//! `u32 name length | name | u64 size | [32] blake3 | u8 compress (0/1)`, the meta being JSON
//! with object keys sorted and no whitespace. Decoding insists the bytes are canonical (it
//! encodes again and compares), so the id of what was received is the id of what was meant.

use crate::error::{MigrateError, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The package format this crate writes and reads.
pub const FORMAT: u32 = 1;
/// Bounds on what a peer or a file may claim, so a hostile length cannot exhaust memory.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;
pub const MAX_NAME_BYTES: usize = 4096;
pub const MAX_ENTRIES: u32 = 1_000_000;
const MAGIC: &[u8; 4] = b"FMPK";

/// One file of a package, named by its path relative to the package root (bytes: Linux paths
/// are bytes, and the name must come back exactly).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub name: Vec<u8>,
    pub size: u64,
    pub blake3: [u8; 32],
    /// Carry this entry zstd-compressed (text, SQLite); raw otherwise (already compressed).
    pub compress: bool,
}

/// The table of contents of a package, sent first. Serde gives the JSON form of
/// [`PackageManifest::to_json`] (the id included and checked on the way back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "ManifestJson", try_from = "ManifestJson")]
pub struct PackageManifest {
    pub format: u32,
    pub entries: Vec<Entry>,
    /// The caller's own description (source device, extension versions, ...), carried as is.
    pub meta: serde_json::Value,
}

impl PackageManifest {
    /// Walks `root`, hashing every regular file; refuses symlinks and special files (a move
    /// must not follow a link out of the package). Entries come sorted by name. Blocking.
    pub fn build(
        root: &Path,
        meta: serde_json::Value,
        compress: impl Fn(&[u8]) -> bool,
    ) -> Result<PackageManifest> {
        let mut entries = Vec::new();
        walk(root, &[], &mut entries, &compress)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let manifest = PackageManifest {
            format: FORMAT,
            entries,
            meta,
        };
        manifest.validate().map_err(MigrateError::BadPackage)?;
        Ok(manifest)
    }

    /// BLAKE3 of the canonical encoding: the identity of the move.
    pub fn id(&self) -> [u8; 32] {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// Sum of all entry sizes (identical entries counted each time).
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// The canonical binary encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.format.to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            out.extend_from_slice(&(e.name.len() as u32).to_be_bytes());
            out.extend_from_slice(&e.name);
            out.extend_from_slice(&e.size.to_be_bytes());
            out.extend_from_slice(&e.blake3);
            out.push(u8::from(e.compress));
        }
        let mut meta = Vec::new();
        canonical_json(&self.meta, &mut meta);
        out.extend_from_slice(&(meta.len() as u64).to_be_bytes());
        out.extend_from_slice(&meta);
        out
    }

    /// Decodes a canonical encoding from an untrusted source. The error says what is wrong;
    /// the caller classifies it (protocol error on an authenticated channel, tampering in a
    /// file).
    pub fn decode(bytes: &[u8]) -> std::result::Result<PackageManifest, String> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err("manifest too large".into());
        }
        let mut c = Cursor(bytes);
        if c.take(4)? != MAGIC {
            return Err("not a package manifest".into());
        }
        let format = c.u32()?;
        if format != FORMAT {
            return Err(format!("unsupported package format {format}"));
        }
        let count = c.u32()?;
        if count > MAX_ENTRIES {
            return Err(format!("too many entries ({count})"));
        }
        let mut entries = Vec::with_capacity(count.min(4096) as usize);
        for _ in 0..count {
            let len = c.u32()? as usize;
            if len > MAX_NAME_BYTES {
                return Err("entry name too long".into());
            }
            let name = c.take(len)?.to_vec();
            let size = c.u64()?;
            let blake3: [u8; 32] = c.take(32)?.try_into().map_err(|_| "short hash")?;
            let compress = match c.take(1)?[0] {
                0 => false,
                1 => true,
                _ => return Err("bad compress flag".into()),
            };
            entries.push(Entry {
                name,
                size,
                blake3,
                compress,
            });
        }
        let meta_len = c.u64()?;
        if meta_len != c.0.len() as u64 {
            return Err("meta length does not match".into());
        }
        let meta: serde_json::Value =
            serde_json::from_slice(c.0).map_err(|e| format!("meta is not JSON: {e}"))?;
        let manifest = PackageManifest {
            format,
            entries,
            meta,
        };
        manifest.validate()?;
        if manifest.encode() != bytes {
            return Err("manifest encoding is not canonical".into());
        }
        Ok(manifest)
    }

    /// Names safe to create under a folder, unique, no file also used as a folder; sizes sane.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("unsupported package format {}", self.format));
        }
        if self.entries.len() > MAX_ENTRIES as usize {
            return Err("too many entries".into());
        }
        let mut names = HashSet::with_capacity(self.entries.len());
        for e in &self.entries {
            validate_name(&e.name)?;
            if !names.insert(e.name.as_slice()) {
                return Err(format!("duplicate entry name {}", show(&e.name)));
            }
        }
        for e in &self.entries {
            // A name that is also another entry's folder could not be materialized.
            for (i, b) in e.name.iter().enumerate() {
                if *b == b'/' && names.contains(&e.name[..i]) {
                    return Err(format!("entry {} is also a folder", show(&e.name[..i])));
                }
            }
        }
        Ok(())
    }

    /// The distinct contents to carry, each with the index of its first entry, in manifest
    /// order: identical entries travel once.
    pub(crate) fn distinct(&self) -> Vec<usize> {
        let mut seen = HashSet::new();
        (0..self.entries.len())
            .filter(|&i| seen.insert(self.entries[i].blake3))
            .collect()
    }

    /// Per content hash: how many entries and how many bytes it stands for (for progress).
    pub(crate) fn weights(&self) -> HashMap<[u8; 32], (u64, u64)> {
        let mut w: HashMap<[u8; 32], (u64, u64)> = HashMap::new();
        for e in &self.entries {
            let slot = w.entry(e.blake3).or_default();
            slot.0 += 1;
            slot.1 += e.size;
        }
        w
    }

    /// The JSON kept at `staging/manifest.json` (names as strings when UTF-8, else hex).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(ManifestJson::from(self.clone())).unwrap_or(serde_json::Value::Null)
    }

    /// Reads [`PackageManifest::to_json`]'s form back; checks the recorded id.
    pub fn from_json(value: serde_json::Value) -> std::result::Result<PackageManifest, String> {
        let doc: ManifestJson = serde_json::from_value(value).map_err(|e| e.to_string())?;
        PackageManifest::try_from(doc)
    }
}

impl From<PackageManifest> for ManifestJson {
    fn from(m: PackageManifest) -> ManifestJson {
        let m = &m;
        ManifestJson {
            id: hex(&m.id()),
            format: m.format,
            entries: m
                .entries
                .iter()
                .map(|e| {
                    let (name, name_hex) = match std::str::from_utf8(&e.name) {
                        Ok(s) => (Some(s.to_owned()), None),
                        Err(_) => (None, Some(hex(&e.name))),
                    };
                    EntryJson {
                        name,
                        name_hex,
                        size: e.size,
                        blake3: hex(&e.blake3),
                        compress: e.compress,
                    }
                })
                .collect(),
            meta: m.meta.clone(),
        }
    }
}

impl TryFrom<ManifestJson> for PackageManifest {
    type Error = String;
    fn try_from(doc: ManifestJson) -> std::result::Result<PackageManifest, String> {
        let mut entries = Vec::with_capacity(doc.entries.len());
        for e in doc.entries {
            let name = match (e.name, e.name_hex) {
                (Some(n), None) => n.into_bytes(),
                (None, Some(h)) => unhex(&h).ok_or("bad name_hex")?,
                _ => return Err("entry needs exactly one of name, name_hex".into()),
            };
            let blake3 = unhex(&e.blake3)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or("bad blake3")?;
            entries.push(Entry {
                name,
                size: e.size,
                blake3,
                compress: e.compress,
            });
        }
        let manifest = PackageManifest {
            format: doc.format,
            entries,
            meta: doc.meta,
        };
        manifest.validate()?;
        if hex(&manifest.id()) != doc.id {
            return Err("recorded id does not match the manifest".into());
        }
        Ok(manifest)
    }
}

#[derive(Serialize, Deserialize)]
struct ManifestJson {
    id: String,
    format: u32,
    entries: Vec<EntryJson>,
    meta: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct EntryJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name_hex: Option<String>,
    size: u64,
    blake3: String,
    compress: bool,
}

/// A relative path of plain components: nothing that could land outside the destination.
pub(crate) fn validate_name(name: &[u8]) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err("entry name empty or too long".into());
    }
    if name.contains(&0) {
        return Err(format!("entry name {} contains NUL", show(name)));
    }
    if name[0] == b'/' {
        return Err(format!("entry name {} is absolute", show(name)));
    }
    for part in name.split(|b| *b == b'/') {
        if part.is_empty() || part == b"." || part == b".." {
            return Err(format!(
                "entry name {} is not a plain relative path",
                show(name)
            ));
        }
    }
    Ok(())
}

/// A name for messages: lossless enough to find the file, never fails.
pub(crate) fn show(name: &[u8]) -> String {
    name.escape_ascii().to_string()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let val = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    b.chunks(2)
        .map(|p| Some(val(p[0])? << 4 | val(p[1])?))
        .collect()
}

/// JSON with sorted keys and no whitespace, whatever serde_json's map order feature says, so
/// the id does not depend on how the caller built its value.
fn canonical_json(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                scalar_json(&serde_json::Value::String(k.clone()), out);
                out.push(b':');
                canonical_json(&map[k], out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        other => scalar_json(other, out),
    }
}

fn scalar_json(v: &serde_json::Value, out: &mut Vec<u8>) {
    // Writing a scalar to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

fn walk(
    dir: &Path,
    prefix: &[u8],
    out: &mut Vec<Entry>,
    compress: &impl Fn(&[u8]) -> bool,
) -> Result<()> {
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let path = item.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let mut name = prefix.to_vec();
        if !name.is_empty() {
            name.push(b'/');
        }
        name.extend_from_slice(item.file_name().as_bytes());
        let ft = meta.file_type();
        if ft.is_symlink() {
            return Err(MigrateError::BadPackage(format!(
                "{} is a symlink: packages hold regular files only",
                show(&name)
            )));
        } else if ft.is_dir() {
            walk(&path, &name, out, compress)?;
        } else if ft.is_file() {
            let (size, blake3) = hash_file(&path)?;
            let compress = compress(&name);
            out.push(Entry {
                name,
                size,
                blake3,
                compress,
            });
        } else {
            return Err(MigrateError::BadPackage(format!(
                "{} is not a regular file",
                show(&name)
            )));
        }
    }
    Ok(())
}

pub(crate) fn hash_file(path: &Path) -> Result<(u64, [u8; 32])> {
    let mut f = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, *hasher.finalize().as_bytes()))
}

/// Bounds-checked reads over untrusted bytes.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("manifest ends early".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().map_err(|_| "short")?,
        ))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| "short")?,
        ))
    }
}
