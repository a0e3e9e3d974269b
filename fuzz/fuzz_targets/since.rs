//! Fuzzes the polling `since` parser (cursor, Unix milliseconds or RFC 3339),
//! which reads a query parameter straight from the internet.

#![no_main]

use herald_protocol::{Cursor, Since, MAX_SINCE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Since::parse(text) {
        Ok(Since::Oldest) => assert!(text.is_empty()),
        Ok(Since::Cursor(c)) => assert_eq!(Cursor::parse(text), Ok(c)),
        Ok(Since::Time(_)) => assert!(!text.is_empty() && text.len() <= MAX_SINCE_LEN),
        Err(_) => assert!(!text.is_empty()),
    }
});
