//! Fuzzes the WebSocket command parser: every text frame a client sends goes
//! through `parse_command` first, so it must never panic, and whatever it
//! accepts must already satisfy the checks the session relies on.

#![no_main]

use herald_protocol::{parse_command, validate_channel, Command, ErrorCode, MAX_ID};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 by the time the session sees them.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_command(text) {
        Ok(envelope) => {
            assert!(envelope.id.is_none_or(|id| id <= MAX_ID));
            match envelope.command {
                Command::Subscribe { channel, .. }
                | Command::Unsubscribe { channel }
                | Command::Publish { channel, .. } => {
                    assert!(validate_channel(&channel).is_ok(), "{channel:?}");
                }
                _ => {}
            }
        }
        Err((id, e)) => {
            assert!(id.is_none_or(|id| id <= MAX_ID));
            // A parse failure is always a client error, never an internal one.
            assert!(
                matches!(e.code, ErrorCode::BadRequest | ErrorCode::InvalidChannel),
                "{e:?}"
            );
            // Error messages are bounded: they echo at most a short prefix.
            assert!(e.message.len() < 512, "{}", e.message.len());
        }
    }
});
