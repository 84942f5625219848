//! Fuzzes ferry-server's parsers of request header fields, which read bytes straight from the
//! network: Structured Fields (Upload-Complete, Upload-Offset, Upload-Length, Content-Digest /
//! Repr-Digest dictionaries) and tus metadata (Upload-Metadata). None may panic; a Byte
//! Sequence the server serialises must parse back to the same bytes.
#![no_main]

use ferry_server::{http, sf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let _ = sf::parse_boolean(raw);
    let _ = sf::parse_non_negative_integer(raw);
    let _ = sf::parse_dictionary(raw);
    let _ = sf::sha256_from_digest_field(raw);
    let _ = sf::repr_digests(raw);
    if let Ok(json) = http::parse_metadata(raw) {
        // Whatever is accepted is stored as a JSON object of strings, and read back as one
        // (not as a `Value`: serde_json's `$serde_json::private::RawValue` key, a crash this
        // target found, is an ordinary key in a map of strings).
        let map: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&json).expect("metadata is a JSON object of strings");
        assert!(map.len() <= 32);
    }
    let field = format!("sha-256={}", sf::serialize_bytes(data));
    let parsed = sf::parse_dictionary(&field).expect("a serialised byte sequence parses");
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].1, sf::Item::Bytes(data.to_vec()));
});
