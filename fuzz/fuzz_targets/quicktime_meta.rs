//! Fuzzes ferry-library's own metadata parsers: the QuickTime box walk (`moov/meta`, `keys`,
//! `ilst`) over a file, image dimensions from headers, Apple MakerNote content identifiers and
//! the ISO 8601 / ISO 6709 strings found in videos. Files come from the user's library and
//! may be truncated or hostile; none of this may panic.
#![no_main]

use std::io::{Cursor, Write};
use std::sync::OnceLock;

use ferry_library::metadata;
use libfuzzer_sys::fuzz_target;

/// One scratch file per fuzzing process, rewritten for every input.
fn scratch() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("ferry-fuzz-qt-{}", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let _ = metadata::parse_meta(data);
    let _ = metadata::apple_content_identifier(data);
    for content_type in ["image/png", "image/gif", "image/bmp", "image/webp", "image/jpeg",
        "image/tiff", "image/heic", "image/jxl"]
    {
        let _ = metadata::dimensions_from(&mut Cursor::new(data), content_type);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = metadata::parse_offset(text);
        let _ = metadata::parse_iso_datetime(text);
        let _ = metadata::parse_iso6709(text);
    }
    let Ok(mut f) = std::fs::File::create(scratch()) else {
        return;
    };
    if f.write_all(data).is_ok() {
        let _ = metadata::quicktime_keys(scratch());
    }
});
