//! Fuzzes `Cursor::parse`, which reads cursors from `subscribe.since`,
//! `connect.notifications_since` and the polling `since` parameter.

#![no_main]

use herald_protocol::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cursor) = Cursor::parse(text) {
        assert!(!cursor.epoch.is_empty() && cursor.epoch.len() <= 64);
        assert!(cursor.epoch.bytes().all(|b| b.is_ascii_alphanumeric()));
        // What the server prints, it reads back as the same position.
        let printed = cursor.to_string();
        assert_eq!(Cursor::parse(&printed).as_ref(), Ok(&cursor), "{printed}");
    }
});
