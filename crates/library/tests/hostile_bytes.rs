//! Every parser of file content Ferry wrote itself, fed arbitrary and mutated bytes: it may
//! find nothing, but it never panics, hangs or allocates without bound.

use ferry_library::classify::sniff;
use ferry_library::metadata::{
    MetadataReader, apple_content_identifier, dimensions_from, parse_iso_datetime, parse_iso6709,
    parse_meta, parse_offset,
};
use proptest::prelude::*;
use std::io::Cursor;
use std::path::Path;

const TYPES: [&str; 9] = [
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/bmp",
    "image/webp",
    "image/heic",
    "image/avif",
    "video/quicktime",
    "video/mp4",
];

/// Real fixture files, mutated: the shapes a hostile file is most likely to take.
fn fixture_bytes() -> Vec<Vec<u8>> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/library");
    [
        "plain/IMG_0010.JPG",
        "live/IMG_0200.HEIC",
        "live/IMG_0200.MOV",
        "video/VID_20240615_183000.mp4",
        "other/sticker.webp",
        "other/scan.bmp",
    ]
    .iter()
    .map(|f| std::fs::read(lib.join(f)).unwrap())
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn text_parsers_are_total(s in ".{0,64}") {
        let _ = parse_iso_datetime(&s);
        let _ = parse_offset(&s);
        let _ = parse_iso6709(&s);
    }

    #[test]
    fn byte_parsers_are_total(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = apple_content_identifier(&bytes);
        let mut note = b"Apple iOS\0\0\x01MM".to_vec();
        note.extend_from_slice(&bytes);
        let _ = apple_content_identifier(&note);
        let _ = parse_meta(&bytes);
        let _ = sniff(&bytes);
        for t in TYPES {
            let _ = dimensions_from(&mut Cursor::new(&bytes), t);
        }
    }

    #[test]
    fn mutated_media_never_panics(
        which in 0usize..6,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = fixture_bytes().swap_remove(which);
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, &bytes).unwrap();
        let ct = sniff(&bytes).unwrap_or("image/jpeg");
        let mut reader = MetadataReader::new();
        let _ = reader.read(&path, ct);
        let _ = reader.read_with_head(&path, ct, Some((&bytes, true)));
        for t in TYPES {
            let _ = dimensions_from(&mut Cursor::new(&bytes), t);
        }
    }
}
