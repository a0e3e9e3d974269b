//! Fuzzes the server's WebSocket frame decoder, which reads every byte a
//! client sends after the upgrade.
//!
//! The first byte picks where the input is split into two reads, so the
//! decoder is driven as the socket drives it: with a buffer that holds what
//! was not consumed and grows only to what `Incomplete` asks for.

#![no_main]

use herald_server::fuzzing::{Decoded, Decoder, Event, Violation};
use libfuzzer_sys::fuzz_target;

/// Small enough that the size checks are reached by short inputs.
const MAX: usize = 300;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(input.len());
    let mut decoder = Decoder::new(MAX);
    let mut held: Vec<u8> = Vec::new();
    for part in [&input[..split], &input[split..]] {
        held.extend_from_slice(part);
        loop {
            match decoder.decode(&held) {
                Ok(Decoded::Incomplete { needed }) => {
                    assert!(needed > held.len(), "asks for more than it holds");
                    // Never more than a header and a payload within the limit.
                    assert!(needed <= 14 + MAX, "needed {needed}");
                    break;
                }
                Ok(Decoded::Frame {
                    consumed,
                    event,
                    charged,
                }) => {
                    assert!(consumed >= 6 && consumed <= held.len());
                    held.drain(..consumed);
                    match event {
                        Some(Event::Text(t)) => assert!(t.len() <= MAX && !charged),
                        Some(Event::Ping(p)) => assert!(p.len() <= 125 && charged),
                        Some(Event::Pong | Event::Close(_)) => assert!(charged),
                        Some(Event::Binary) | None => {}
                    }
                    assert!(decoder.buffered_capacity() <= MAX);
                }
                Err(v) => {
                    assert!(matches!(v.code(), 1002 | 1007 | 1009));
                    assert!(v.reason().len() <= 123);
                    // A violation is final.
                    assert_eq!(decoder.decode(&held), Err(v));
                    assert!(!matches!(v, Violation::FragmentTimeout));
                    return;
                }
            }
        }
    }
});
