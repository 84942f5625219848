//! What kind of file is this? By name first (cheap, decides grouping), then by its first bytes
//! (the content type stored with the resource, and media hiding behind an odd extension).

/// The role a file can play, before grouping decides its resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKind {
    /// A rendered still: JPEG, HEIC, PNG, ...
    Photo,
    /// A camera RAW: becomes `alternate_photo` beside a rendered still of the same name.
    Raw,
    Video,
    Audio,
    /// Apple's edit recipe (`.AAE`).
    Adjustment,
    /// An XMP sidecar.
    Sidecar,
}

const PHOTO_EXT: &[&str] = &[
    "jpg", "jpeg", "jpe", "heic", "heif", "hif", "avif", "png", "gif", "webp", "tif", "tiff",
    "bmp", "jxl", "jp2", "psd",
];
const RAW_EXT: &[&str] = &[
    "dng", "cr2", "cr3", "crw", "nef", "nrw", "arw", "srf", "sr2", "raf", "rw2", "orf", "pef",
    "srw", "x3f", "3fr", "erf", "kdc", "mrw", "mos", "iiq", "rwl", "gpr",
];
const VIDEO_EXT: &[&str] = &[
    "mov", "mp4", "m4v", "3gp", "3g2", "avi", "mkv", "mts", "m2ts", "webm", "mpg", "mpeg", "wmv",
    "insv", "lrv",
];
const AUDIO_EXT: &[&str] = &[
    "m4a", "mp3", "wav", "aac", "flac", "ogg", "opus", "caf", "amr",
];

/// The kind implied by a file name's extension, if it names media or a sidecar.
pub fn kind_from_name(name: &str) -> Option<FileKind> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    let e = ext.as_str();
    if PHOTO_EXT.contains(&e) {
        Some(FileKind::Photo)
    } else if RAW_EXT.contains(&e) {
        Some(FileKind::Raw)
    } else if VIDEO_EXT.contains(&e) {
        Some(FileKind::Video)
    } else if AUDIO_EXT.contains(&e) {
        Some(FileKind::Audio)
    } else if e == "aae" {
        Some(FileKind::Adjustment)
    } else if e == "xmp" {
        Some(FileKind::Sidecar)
    } else {
        None
    }
}

/// How many leading bytes [`sniff`] wants.
pub const SNIFF_LEN: usize = 64;

/// The content type from a file's first bytes; `None` when nothing is recognised.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    let starts = |m: &[u8]| head.starts_with(m);
    if starts(&[0xFF, 0xD8, 0xFF]) {
        return Some("image/jpeg");
    }
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Some("image/png");
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Some("image/gif");
    }
    if starts(b"BM") && head.len() >= 14 {
        return Some("image/bmp");
    }
    if head.len() >= 12 && &head[0..4] == b"RIFF" {
        return match &head[8..12] {
            b"WEBP" => Some("image/webp"),
            b"AVI " => Some("video/x-msvideo"),
            b"WAVE" => Some("audio/wav"),
            _ => None,
        };
    }
    if starts(b"II*\0") || starts(b"MM\0*") {
        return Some("image/tiff");
    }
    if starts(b"IIRO") || starts(b"IIU\0") {
        return Some("image/x-olympus-orf");
    }
    if starts(b"FUJIFILMCCD-RAW") {
        return Some("image/x-fuji-raf");
    }
    if starts(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return Some("video/x-matroska");
    }
    if starts(b"\0\0\0\x0cJXL ") || starts(&[0xFF, 0x0A]) {
        return Some("image/jxl");
    }
    if starts(b"ID3") || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0) {
        return Some("audio/mpeg");
    }
    if starts(b"fLaC") {
        return Some("audio/flac");
    }
    if starts(b"OggS") {
        return Some("audio/ogg");
    }
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        return Some(match &head[8..12] {
            b"heic" | b"heix" | b"heim" | b"heis" => "image/heic",
            b"mif1" | b"msf1" | b"heif" => "image/heif",
            b"avif" | b"avis" => "image/avif",
            b"crx " => "image/x-canon-cr3",
            b"qt  " => "video/quicktime",
            b"M4A " | b"M4B " => "audio/mp4",
            b"3gp4" | b"3gp5" | b"3gp6" | b"3g2a" => "video/3gpp",
            _ => "video/mp4",
        });
    }
    // QuickTime files may start with a `wide`, `mdat` or `moov` atom instead of `ftyp`.
    if head.len() >= 8 && matches!(&head[4..8], b"moov" | b"mdat" | b"wide" | b"free") {
        return Some("video/quicktime");
    }
    let text = String::from_utf8_lossy(head);
    if text.contains("<x:xmpmeta") || text.contains("<?xpacket") {
        return Some("application/rdf+xml");
    }
    if text.contains("<?xml") || text.contains("<plist") || starts(b"bplist") {
        return Some("application/xml");
    }
    None
}

/// A content type for a file whose bytes were not recognised, from its kind.
pub fn fallback_content_type(kind: FileKind, name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match (kind, ext.as_str()) {
        (FileKind::Adjustment, _) => "application/xml",
        (FileKind::Sidecar, _) => "application/rdf+xml",
        (FileKind::Raw, _) => "image/x-raw",
        (FileKind::Photo, _) => "image/x-unknown",
        (FileKind::Video, "mov") => "video/quicktime",
        (FileKind::Video, _) => "video/x-unknown",
        (FileKind::Audio, _) => "audio/x-unknown",
    }
}

/// For a file whose name says nothing: is its content media we should keep?
pub fn kind_from_content_type(ct: &str) -> Option<FileKind> {
    if ct.starts_with("image/") {
        Some(FileKind::Photo)
    } else if ct.starts_with("video/") {
        Some(FileKind::Video)
    } else if ct.starts_with("audio/") {
        Some(FileKind::Audio)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_classify_case_insensitively() {
        assert_eq!(kind_from_name("IMG_0001.JPG"), Some(FileKind::Photo));
        assert_eq!(kind_from_name("a.b.CR3"), Some(FileKind::Raw));
        assert_eq!(kind_from_name("clip.MoV"), Some(FileKind::Video));
        assert_eq!(kind_from_name("IMG_0001.AAE"), Some(FileKind::Adjustment));
        assert_eq!(kind_from_name("x.jpg.xmp"), Some(FileKind::Sidecar));
        assert_eq!(kind_from_name("notes.txt"), None);
        assert_eq!(kind_from_name("noext"), None);
        assert_eq!(kind_from_name(".DS_Store"), None);
    }

    #[test]
    fn sniffs_common_magic() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE1]), Some("image/jpeg"));
        assert_eq!(sniff(b"\0\0\0\x18ftypheic\0\0"), Some("image/heic"));
        assert_eq!(sniff(b"\0\0\0\x14ftypqt  \0\0"), Some("video/quicktime"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"hello world"), None);
        assert_eq!(sniff(b""), None);
    }
}
