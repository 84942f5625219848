//! Fuzzes the extension protocol's framing (`Message::parse`), which reads every line an
//! extension process writes. It may not panic, and every message it accepts must survive a
//! round trip through `to_line`.
#![no_main]

use ferry_extension::protocol::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::parse(data) {
        let line = message.to_line();
        assert_eq!(line.last(), Some(&b'\n'), "a line ends with its newline");
        let again = Message::parse(&line[..line.len() - 1]).expect("our own line parses");
        assert_eq!(again, message);
    }
});
