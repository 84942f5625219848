//! Reading a resource's metadata: EXIF and QuickTime through nom-exif, plus the pieces it
//! does not surface, read here by hand: image dimensions from the format headers, Apple's
//! Live Photo content identifier (QuickTime `moov/meta` keys, and MakerNote tag 0x0011).
//!
//! Metadata is best effort by design: a truncated or hostile file yields what could be read
//! and a reason, never an error that stops indexing, and never a panic.

use ferry_core::{Gps, ResourceMetadata};
use nom_exif::{
    EntryValue, ExifIter, IfdIndex, IfdKind, MediaKind, MediaParser, MediaSource, TrackInfoTag,
};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// A parser per worker thread: nom-exif reuses its buffer across files.
#[derive(Default)]
pub struct MetadataReader {
    parser: MediaParser,
}

impl std::fmt::Debug for MetadataReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetadataReader")
    }
}

/// What was read, and why not more.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetadataOutcome {
    pub metadata: ResourceMetadata,
    /// Set when the file's metadata was present but unreadable (truncated, corrupt).
    pub problem: Option<String>,
}

impl MetadataReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads what metadata `path` holds; `content_type` is the sniffed type.
    pub fn read(&mut self, path: &Path, content_type: &str) -> MetadataOutcome {
        self.read_with_head(path, content_type, None)
    }

    /// Like [`MetadataReader::read`], given the file's first bytes already read (all of it when
    /// `head.1` says so): a JPEG's metadata lies in its first segments, so the file need not be
    /// opened again. Other formats, whose metadata may sit at the end, read the file.
    pub fn read_with_head(
        &mut self,
        path: &Path,
        content_type: &str,
        head: Option<(&[u8], bool)>,
    ) -> MetadataOutcome {
        let parser = &mut self.parser;
        // nom-exif is third-party code fed untrusted bytes: contain a panic to this one file.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match head {
            Some((bytes, whole)) if whole || content_type == "image/jpeg" => {
                read_image_in_memory(parser, bytes, content_type)
                    .unwrap_or_else(|| read_inner(parser, path, content_type))
            }
            _ => read_inner(parser, path, content_type),
        }));
        match result {
            Ok(outcome) => outcome,
            Err(_) => {
                self.parser = MediaParser::new();
                MetadataOutcome {
                    metadata: ResourceMetadata::default(),
                    problem: Some("metadata parser failed on this file".into()),
                }
            }
        }
    }
}

/// Images only, from memory; `None` when the bytes in hand are not enough (read the file).
fn read_image_in_memory(
    parser: &mut MediaParser,
    bytes: &[u8],
    content_type: &str,
) -> Option<MetadataOutcome> {
    if !content_type.starts_with("image/") {
        return None;
    }
    let mut out = MetadataOutcome::default();
    // A seekable cursor, not nom-exif's memory mode: that copies the buffer over and over.
    match MediaSource::seekable(io::Cursor::new(bytes)) {
        Ok(ms) if ms.kind() == MediaKind::Image => match parser.parse_exif(ms) {
            Ok(iter) => apply_exif(&mut out.metadata, iter),
            Err(nom_exif::Error::ExifNotFound) => {}
            Err(_) => return None,
        },
        Ok(_) => return None,
        Err(nom_exif::Error::UnsupportedFormat) | Err(nom_exif::Error::ExifNotFound) => {}
        Err(_) => return None,
    }
    let (w, h) = dimensions_from(&mut io::Cursor::new(bytes), content_type).ok()??;
    out.metadata.width = Some(w);
    out.metadata.height = Some(h);
    Some(out)
}

fn read_inner(parser: &mut MediaParser, path: &Path, content_type: &str) -> MetadataOutcome {
    let mut out = MetadataOutcome::default();
    let is_image = content_type.starts_with("image/");
    let is_track = content_type.starts_with("video/") || content_type == "audio/mp4";
    if is_image || is_track {
        match File::open(path)
            .map_err(nom_exif::Error::from)
            .and_then(MediaSource::seekable)
        {
            Ok(ms) => match ms.kind() {
                MediaKind::Image => match parser.parse_exif(ms) {
                    Ok(iter) => apply_exif(&mut out.metadata, iter),
                    Err(nom_exif::Error::ExifNotFound) => {}
                    Err(e) => out.problem = Some(format!("EXIF: {e}")),
                },
                MediaKind::Track => match parser.parse_track(ms) {
                    Ok(info) => apply_track(&mut out.metadata, &info),
                    Err(e) => out.problem = Some(format!("QuickTime/MP4: {e}")),
                },
            },
            // An unsupported container is not a problem: there is just nothing to read.
            Err(nom_exif::Error::UnsupportedFormat) | Err(nom_exif::Error::ExifNotFound) => {}
            Err(e) => out.problem = Some(format!("metadata: {e}")),
        }
    }
    if is_image && let Ok(Some((w, h))) = image_dimensions(path, content_type) {
        out.metadata.width = Some(w);
        out.metadata.height = Some(h);
    }
    if matches!(content_type, "video/quicktime" | "video/mp4")
        && let Ok(keys) = quicktime_keys(path)
    {
        if let Some(id) = keys.content_identifier {
            out.metadata.content_identifier = Some(id);
        }
        let m = &mut out.metadata;
        m.make = m.make.take().or(keys.make.filter(|s| !s.trim().is_empty()));
        m.model = m
            .model
            .take()
            .or(keys.model.filter(|s| !s.trim().is_empty()));
        if m.gps.is_none() {
            m.gps = keys.location_iso6709.as_deref().and_then(parse_iso6709);
        }
        if let Some(date) = keys.creation_date
            && let Some((local, off)) = parse_iso_datetime(&date)
        {
            out.metadata.capture_time = Some(local);
            out.metadata.utc_offset_s = off;
        }
    }
    out
}

fn text(v: Option<&EntryValue>) -> Option<String> {
    let s = v?
        .as_str()?
        .trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!s.is_empty()).then(|| s.to_owned())
}

fn set_time(meta: &mut ResourceMetadata, v: &EntryValue) -> bool {
    match v {
        EntryValue::DateTime(dt) => {
            meta.capture_time = Some(dt.naive_local().format("%Y-%m-%dT%H:%M:%S").to_string());
            meta.utc_offset_s = Some(dt.offset().local_minus_utc());
            true
        }
        EntryValue::NaiveDateTime(dt) => {
            meta.capture_time = Some(dt.format("%Y-%m-%dT%H:%M:%S").to_string());
            true
        }
        EntryValue::Text(s) => match parse_iso_datetime(s) {
            Some((local, off)) => {
                meta.capture_time = Some(local);
                meta.utc_offset_s = off;
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// One pass over the EXIF entries, keeping only what Ferry stores. (Materialising nom-exif's
/// whole `Exif` map decodes every tag and walks the GPS directory twice: that was half of a
/// first scan's instructions.) Only the main image's directories count, not the thumbnail's.
fn apply_exif(meta: &mut ResourceMetadata, iter: ExifIter) {
    const MAKE: u16 = 0x010F;
    const MODEL: u16 = 0x0110;
    const IMAGE_WIDTH: u16 = 0x0100;
    const IMAGE_HEIGHT: u16 = 0x0101;
    const MODIFY_DATE: u16 = 0x0132;
    const DATE_TIME_ORIGINAL: u16 = 0x9003;
    const CREATE_DATE: u16 = 0x9004;
    const OFFSET_TIME_ORIGINAL: u16 = 0x9011;
    const EXIF_IMAGE_WIDTH: u16 = 0xA002;
    const EXIF_IMAGE_HEIGHT: u16 = 0xA003;
    const MAKER_NOTE: u16 = 0x927C;

    let mut times: [Option<EntryValue>; 3] = [None, None, None];
    let (mut w, mut h, mut exif_w, mut exif_h) = (None, None, None, None);
    let mut offset = None;
    let mut gps = GpsParts::default();
    let dim = |v: &EntryValue| v.try_as_integer().and_then(|v| u32::try_from(v).ok());
    for entry in iter {
        if entry.ifd() != IfdIndex::MAIN {
            continue;
        }
        let Some(v) = entry.value() else { continue };
        let code = entry.tag().code();
        match (entry.ifd_kind(), code) {
            (IfdKind::Gps, _) => gps.take(code, v),
            (_, MAKE) => meta.make = text(Some(v)),
            (_, MODEL) => meta.model = text(Some(v)),
            (_, IMAGE_WIDTH) => w = dim(v),
            (_, IMAGE_HEIGHT) => h = dim(v),
            (_, EXIF_IMAGE_WIDTH) => exif_w = dim(v),
            (_, EXIF_IMAGE_HEIGHT) => exif_h = dim(v),
            (_, DATE_TIME_ORIGINAL) => times[0] = Some(v.clone()),
            (_, CREATE_DATE) => times[1] = Some(v.clone()),
            (_, MODIFY_DATE) => times[2] = Some(v.clone()),
            (_, OFFSET_TIME_ORIGINAL) => offset = text(Some(v)),
            // nom-exif hands the MakerNote over as undefined bytes or as a byte array.
            (_, MAKER_NOTE) => {
                if let EntryValue::Undefined(note) | EntryValue::U8Array(note) = v {
                    meta.content_identifier = apple_content_identifier(note);
                }
            }
            _ => {}
        }
    }
    for v in times.iter().flatten() {
        if set_time(meta, v) {
            break;
        }
    }
    if meta.utc_offset_s.is_none() {
        meta.utc_offset_s = offset.as_deref().and_then(parse_offset);
    }
    meta.width = exif_w.or(w);
    meta.height = exif_h.or(h);
    meta.gps = gps.finish();
}

/// The GPS directory's entries that make a position.
#[derive(Default)]
struct GpsParts {
    lat_ref: Option<char>,
    lat: Option<f64>,
    lon_ref: Option<char>,
    lon: Option<f64>,
    alt_below_sea: bool,
    alt: Option<f64>,
}

impl GpsParts {
    fn take(&mut self, code: u16, v: &EntryValue) {
        let dms = |v: &EntryValue| -> Option<f64> {
            let parts = v.as_urational_slice()?;
            let [d, m, s] = parts else { return None };
            Some(d.to_f64()? + m.to_f64()? / 60.0 + s.to_f64()? / 3600.0)
        };
        let first_char = |v: &EntryValue| v.as_str().and_then(|s| s.trim().chars().next());
        match code {
            0x0001 => self.lat_ref = first_char(v),
            0x0002 => self.lat = dms(v),
            0x0003 => self.lon_ref = first_char(v),
            0x0004 => self.lon = dms(v),
            0x0005 => {
                self.alt_below_sea = match v {
                    EntryValue::Undefined(b) | EntryValue::U8Array(b) => b.first() == Some(&1),
                    other => other.try_as_integer() == Some(1),
                }
            }
            0x0006 => self.alt = v.as_urational().and_then(|r| r.to_f64()),
            _ => {}
        }
    }

    fn finish(self) -> Option<Gps> {
        let sign = |r: Option<char>, neg: char| if r == Some(neg) { -1.0 } else { 1.0 };
        let lat = self.lat? * sign(self.lat_ref.map(|c| c.to_ascii_uppercase()), 'S');
        let lon = self.lon? * sign(self.lon_ref.map(|c| c.to_ascii_uppercase()), 'W');
        let valid = lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0;
        valid.then(|| Gps {
            latitude: lat,
            longitude: lon,
            altitude_m: self
                .alt
                .filter(|a| a.is_finite())
                .map(|a| if self.alt_below_sea { -a } else { a }),
        })
    }
}

/// Signed decimal degrees, only when both are real numbers.
fn gps_of(gps: &nom_exif::GPSInfo) -> Option<Gps> {
    let (lat, lon) = (gps.latitude_decimal()?, gps.longitude_decimal()?);
    (lat.is_finite() && lon.is_finite()).then(|| Gps {
        latitude: lat,
        longitude: lon,
        altitude_m: gps.altitude_meters().filter(|a| a.is_finite()),
    })
}

fn apply_track(meta: &mut ResourceMetadata, info: &nom_exif::TrackInfo) {
    meta.make = text(info.get(TrackInfoTag::Make));
    meta.model = text(info.get(TrackInfoTag::Model));
    if let Some(v) = info.get(TrackInfoTag::CreateDate) {
        set_time(meta, v);
    }
    meta.duration_ms = info
        .get(TrackInfoTag::DurationMs)
        .and_then(|v| v.try_as_integer())
        .and_then(|v| u64::try_from(v).ok());
    let dim = |t| {
        info.get(t)
            .and_then(|v: &EntryValue| v.try_as_integer())
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
    };
    meta.width = dim(TrackInfoTag::Width);
    meta.height = dim(TrackInfoTag::Height);
    meta.gps = info.gps_info().and_then(gps_of);
}

/// `+02:00`, `-0530`, `Z` to seconds east of UTC.
pub fn parse_offset(s: &str) -> Option<i32> {
    let s = s.trim();
    if s == "Z" {
        return Some(0);
    }
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = s[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: i32 = digits[..2].parse().ok()?;
    let m: i32 = digits[2..].parse().ok()?;
    (h <= 14 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

/// `2024-06-12T10:15:00+0200` (QuickTime) or `2024:06:12 10:15:00` (EXIF-like) to
/// (wall-clock `YYYY-MM-DDTHH:MM:SS`, offset).
pub fn parse_iso_datetime(s: &str) -> Option<(String, Option<i32>)> {
    let s = s.trim();
    if s.len() < 19 || !s.is_char_boundary(19) {
        return None;
    }
    let (head, tail) = s.split_at(19);
    let mut local: Vec<u8> = head.bytes().collect();
    if local[4] == b':' && local[7] == b':' {
        local[4] = b'-';
        local[7] = b'-';
    }
    if local[10] == b' ' {
        local[10] = b'T';
    }
    let local = String::from_utf8(local).ok()?;
    ferry_core::resource::parse_wall_clock(&local)?;
    // Skip fractional seconds before the zone.
    let tail = tail.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let off = if tail.is_empty() {
        None
    } else {
        parse_offset(tail)
    };
    Some((local, off))
}

/// ISO 6709 decimal degrees, as QuickTime stores them: `+43.6959+007.2714+012.000/`.
pub fn parse_iso6709(s: &str) -> Option<Gps> {
    let s = s.trim().trim_end_matches('/');
    let mut parts: Vec<f64> = Vec::new();
    let mut start = 0;
    for (i, c) in s.char_indices().skip(1) {
        if c == '+' || c == '-' {
            parts.push(s[start..i].parse().ok()?);
            start = i;
        }
    }
    parts.push(s.get(start..)?.parse().ok()?);
    let (lat, lon) = (*parts.first()?, *parts.get(1)?);
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return None;
    }
    Some(Gps {
        latitude: lat,
        longitude: lon,
        altitude_m: parts.get(2).copied().filter(|a| a.is_finite()),
    })
}

/// Apple's MakerNote: `"Apple iOS\0"`, version, `"MM"`, then a big-endian IFD whose offsets
/// count from the MakerNote's start. Tag 0x0011 is the Live Photo content identifier.
pub fn apple_content_identifier(note: &[u8]) -> Option<String> {
    if !note.starts_with(b"Apple iOS\0") || note.len() < 16 {
        return None;
    }
    let big = match note.get(12..14)? {
        b"MM" => true,
        b"II" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b: [u8; 2] = note.get(o..o + 2)?.try_into().ok()?;
        Some(if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b: [u8; 4] = note.get(o..o + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let count = u16_at(14)? as usize;
    for i in 0..count.min(512) {
        let e = 16 + i * 12;
        if u16_at(e)? != 0x0011 || u16_at(e + 2)? != 2 {
            continue;
        }
        let len = u32_at(e + 4)? as usize;
        let bytes = if len <= 4 {
            note.get(e + 8..e + 8 + len)?
        } else {
            let off = u32_at(e + 8)? as usize;
            note.get(off..off.checked_add(len)?)?
        };
        let s = String::from_utf8_lossy(bytes)
            .trim_end_matches('\0')
            .trim()
            .to_owned();
        return (!s.is_empty()).then_some(s);
    }
    None
}

/// What Ferry reads from QuickTime's `moov/meta` (mdta keys) that nom-exif does not surface.
#[derive(Debug, Default, PartialEq)]
pub struct QuickTimeKeys {
    pub content_identifier: Option<String>,
    pub creation_date: Option<String>,
    pub make: Option<String>,
    pub model: Option<String>,
    pub location_iso6709: Option<String>,
}

const MAX_META_BYTES: u64 = 1 << 20;

fn read_box_header<R: Read>(r: &mut R, remaining: u64) -> io::Result<Option<([u8; 4], u64, u64)>> {
    if remaining < 8 {
        return Ok(None);
    }
    let mut h = [0u8; 8];
    r.read_exact(&mut h)?;
    let size32 = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
    let kind = [h[4], h[5], h[6], h[7]];
    let (size, header) = match size32 {
        1 => {
            let mut l = [0u8; 8];
            r.read_exact(&mut l)?;
            (u64::from_be_bytes(l), 16)
        }
        0 => (remaining, 8),
        s => (s, 8),
    };
    if size < header || size > remaining {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad box size"));
    }
    Ok(Some((kind, size, header)))
}

/// Finds `moov/meta` (or `moov/udta/meta`) and reads its `keys` + `ilst`.
pub fn quicktime_keys(path: &Path) -> io::Result<QuickTimeKeys> {
    let mut f = BufReader::new(File::open(path)?);
    let len = f.get_ref().metadata()?.len();
    let mut pos = 0u64;
    while let Some((kind, size, header)) = read_box_header(&mut f, len - pos)? {
        if &kind == b"moov" {
            return find_meta(&mut f, size - header);
        }
        pos += size;
        f.seek(SeekFrom::Start(pos))?;
    }
    Ok(QuickTimeKeys::default())
}

fn find_meta<R: Read + Seek>(f: &mut R, span: u64) -> io::Result<QuickTimeKeys> {
    let start = f.stream_position()?;
    let mut pos = 0u64;
    while let Some((kind, size, header)) = read_box_header(f, span - pos)? {
        match &kind {
            b"meta" if size - header <= MAX_META_BYTES => {
                let mut body = vec![0u8; (size - header) as usize];
                f.read_exact(&mut body)?;
                let keys = parse_meta(&body);
                if keys != QuickTimeKeys::default() {
                    return Ok(keys);
                }
            }
            b"udta" => {
                let keys = find_meta(f, size - header)?;
                if keys != QuickTimeKeys::default() {
                    return Ok(keys);
                }
            }
            _ => {}
        }
        pos += size;
        f.seek(SeekFrom::Start(start + pos))?;
    }
    Ok(QuickTimeKeys::default())
}

/// Iterates the child boxes of `body` as (type, payload).
fn children(body: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let h = body.get(pos..pos + 8)?;
        let size = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let kind = [h[4], h[5], h[6], h[7]];
        if size < 8 || pos.checked_add(size)? > body.len() {
            return None;
        }
        let payload = &body[pos + 8..pos + size];
        pos += size;
        Some((kind, payload))
    })
}

pub fn parse_meta(body: &[u8]) -> QuickTimeKeys {
    // QuickTime's `meta` has no version/flags word; ISO BMFF's does. Try both.
    let mut out = parse_meta_children(body);
    if out == QuickTimeKeys::default() && body.len() > 4 {
        out = parse_meta_children(&body[4..]);
    }
    out
}

fn parse_meta_children(body: &[u8]) -> QuickTimeKeys {
    let mut names: Vec<String> = Vec::new();
    let mut items: Vec<(u32, String)> = Vec::new();
    for (kind, payload) in children(body) {
        match &kind {
            b"keys" => {
                // version/flags (4), count (4), then (size u32, namespace [4], name).
                let Some(rest) = payload.get(8..) else {
                    continue;
                };
                let mut p = 0usize;
                while let Some(h) = rest.get(p..p + 8) {
                    let size = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                    if size < 8 || p + size > rest.len() {
                        break;
                    }
                    names.push(String::from_utf8_lossy(&rest[p + 8..p + size]).into_owned());
                    p += size;
                }
            }
            b"ilst" => {
                for (idx, item) in children(payload) {
                    let index = u32::from_be_bytes(idx);
                    for (dk, data) in children(item) {
                        // `data`: type (4), locale (4), value. Type 1 is UTF-8.
                        if &dk == b"data" && data.len() >= 8 {
                            let value = String::from_utf8_lossy(&data[8..])
                                .trim_end_matches('\0')
                                .to_owned();
                            items.push((index, value));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = QuickTimeKeys::default();
    for (index, value) in items {
        let Some(name) = (index as usize).checked_sub(1).and_then(|i| names.get(i)) else {
            continue;
        };
        match name.as_str() {
            "com.apple.quicktime.content.identifier" => out.content_identifier = Some(value),
            "com.apple.quicktime.creationdate" => out.creation_date = Some(value),
            "com.apple.quicktime.make" => out.make = Some(value),
            "com.apple.quicktime.location.ISO6709" => out.location_iso6709 = Some(value),
            "com.apple.quicktime.model" => out.model = Some(value),
            _ => {}
        }
    }
    out
}

/// Width and height from an image's own header (the truth, where EXIF may be stale).
pub fn image_dimensions(path: &Path, content_type: &str) -> io::Result<Option<(u32, u32)>> {
    dimensions_from(&mut BufReader::new(File::open(path)?), content_type)
}

pub fn dimensions_from<R: Read + Seek>(
    f: &mut R,
    content_type: &str,
) -> io::Result<Option<(u32, u32)>> {
    let mut head = [0u8; 32];
    let n = read_up_to(f, &mut head)?;
    let head = &head[..n];
    let le16 = |b: &[u8], o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let be32 = |b: &[u8], o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    let le32 = |b: &[u8], o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    Ok(match content_type {
        "image/png" => be32(head, 16).zip(be32(head, 20)),
        "image/gif" => le16(head, 6)
            .zip(le16(head, 8))
            .map(|(w, h)| (w as u32, h as u32)),
        "image/bmp" => le32(head, 18)
            .zip(le32(head, 22))
            .map(|(w, h)| (w, (h as i32).unsigned_abs())),
        "image/webp" => match head.get(12..16) {
            Some(b"VP8X") => head.get(24..30).map(|d| {
                let w = u32::from_le_bytes([d[0], d[1], d[2], 0]) + 1;
                let h = u32::from_le_bytes([d[3], d[4], d[5], 0]) + 1;
                (w, h)
            }),
            Some(b"VP8L") => head.get(21..25).map(|d| {
                let bits = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
            }),
            Some(b"VP8 ") => le16(head, 26)
                .zip(le16(head, 28))
                .map(|(w, h)| ((w & 0x3FFF) as u32, (h & 0x3FFF) as u32)),
            _ => None,
        },
        "image/jpeg" => {
            f.seek(SeekFrom::Start(2))?;
            jpeg_sof(f)?
        }
        "image/heic" | "image/heif" | "image/avif" => {
            f.seek(SeekFrom::Start(0))?;
            heif_ispe(f)?
        }
        _ => None,
    }
    .filter(|(w, h)| *w > 0 && *h > 0))
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn jpeg_sof<R: Read + Seek>(f: &mut R) -> io::Result<Option<(u32, u32)>> {
    for _ in 0..256 {
        let mut m = [0u8; 2];
        if read_up_to(f, &mut m)? < 2 || m[0] != 0xFF {
            return Ok(None);
        }
        let marker = m[1];
        if marker == 0xD8 || (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            continue;
        }
        if marker == 0xD9 || marker == 0xDA {
            return Ok(None);
        }
        let mut l = [0u8; 2];
        if read_up_to(f, &mut l)? < 2 {
            return Ok(None);
        }
        let len = u16::from_be_bytes(l) as i64;
        if len < 2 {
            return Ok(None);
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let mut s = [0u8; 5];
            if read_up_to(f, &mut s)? < 5 {
                return Ok(None);
            }
            let h = u16::from_be_bytes([s[1], s[2]]) as u32;
            let w = u16::from_be_bytes([s[3], s[4]]) as u32;
            return Ok(Some((w, h)));
        }
        f.seek(SeekFrom::Current(len - 2))?;
    }
    Ok(None)
}

/// The largest `ispe` (image spatial extent) in `meta/iprp/ipco`: the primary image's, not a
/// thumbnail's.
fn heif_ispe<R: Read + Seek>(f: &mut R) -> io::Result<Option<(u32, u32)>> {
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    let mut pos = 0u64;
    while let Some((kind, size, header)) = read_box_header(f, len - pos)? {
        if &kind == b"meta" && size - header <= 4 * MAX_META_BYTES {
            let mut body = vec![0u8; (size - header) as usize];
            f.read_exact(&mut body)?;
            let mut best: Option<(u32, u32)> = None;
            for (k, iprp) in children(body.get(4..).unwrap_or(&[])) {
                if &k != b"iprp" {
                    continue;
                }
                for (k, ipco) in children(iprp) {
                    if &k != b"ipco" {
                        continue;
                    }
                    for (k, p) in children(ipco) {
                        if &k == b"ispe" && p.len() >= 12 {
                            let w = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                            let h = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
                            if best.is_none_or(|(bw, bh)| {
                                (w as u64 * h as u64) > bw as u64 * bh as u64
                            }) {
                                best = Some((w, h));
                            }
                        }
                    }
                }
            }
            return Ok(best);
        }
        pos += size;
        f.seek(SeekFrom::Start(pos))?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apple_makernote_content_identifier() {
        let id = b"6D2A5D44-7B2C-4C5A-9F1E-0123456789AB\0";
        let mut note = b"Apple iOS\0\0\x01MM".to_vec();
        note.extend_from_slice(&1u16.to_be_bytes());
        note.extend_from_slice(&0x0011u16.to_be_bytes());
        note.extend_from_slice(&2u16.to_be_bytes());
        note.extend_from_slice(&(id.len() as u32).to_be_bytes());
        let off = note.len() as u32 + 4 + 4;
        note.extend_from_slice(&off.to_be_bytes());
        note.extend_from_slice(&0u32.to_be_bytes());
        note.extend_from_slice(id);
        assert_eq!(
            apple_content_identifier(&note).as_deref(),
            Some("6D2A5D44-7B2C-4C5A-9F1E-0123456789AB")
        );
        // Truncated anywhere: no identifier, no panic.
        for cut in 0..note.len() {
            let _ = apple_content_identifier(&note[..cut]);
        }
        assert_eq!(apple_content_identifier(b"Canon"), None);
    }

    #[test]
    fn iso6709() {
        let g = parse_iso6709("+43.6959+007.2714+012.000/").unwrap();
        assert_eq!(
            (g.latitude, g.longitude, g.altitude_m),
            (43.6959, 7.2714, Some(12.0))
        );
        let g = parse_iso6709("-33.8688-151.2093/").unwrap();
        assert_eq!(
            (g.latitude, g.longitude, g.altitude_m),
            (-33.8688, -151.2093, None)
        );
        assert_eq!(parse_iso6709("+91.0+000.0/"), None);
        assert_eq!(parse_iso6709("garbage"), None);
        assert_eq!(parse_iso6709(""), None);
    }

    #[test]
    fn datetimes_and_offsets() {
        assert_eq!(
            parse_iso_datetime("2024-06-12T10:15:00+0200"),
            Some(("2024-06-12T10:15:00".into(), Some(7200)))
        );
        assert_eq!(
            parse_iso_datetime("2024:06:12 10:15:00.123-05:30"),
            Some(("2024-06-12T10:15:00".into(), Some(-19800)))
        );
        assert_eq!(
            parse_iso_datetime("2024-06-12T10:15:00Z"),
            Some(("2024-06-12T10:15:00".into(), Some(0)))
        );
        assert_eq!(parse_iso_datetime("2024-06-12"), None);
        assert_eq!(parse_iso_datetime("0000-00-00T00:00:00"), None);
        assert_eq!(parse_offset("+25:00"), None);
        assert_eq!(parse_iso_datetime("2024-06-12T10:15:0é"), None);
    }
}
