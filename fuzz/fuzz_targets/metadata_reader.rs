//! Fuzzes the whole metadata read of one library file as the scanner does it: sniff the
//! content type, then `MetadataReader::read_with_head` (nom-exif for EXIF in JPEG, HEIC, TIFF
//! and raw formats, our own code for the rest). nom-exif is third-party code the reader runs
//! under `catch_unwind`; this target keeps that containment (a silent panic hook) so what it
//! finds are crashes that would take the scanner down: aborts, overflows, hangs, OOM.
#![no_main]

use std::path::Path;
use std::sync::Once;

use ferry_library::classify::sniff;
use ferry_library::metadata::MetadataReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let content_type = sniff(data).unwrap_or("image/jpeg");
    let mut reader = MetadataReader::new();
    // The whole file is in hand; the path is never opened for images.
    let _ = reader.read_with_head(Path::new("/nonexistent/fuzz"), content_type, Some((data, true)));
});
