//! Property tests of the protocol's parsers: everything a client controls
//! (frames, channel names, cursors, `since`) is parsed here, so these run in
//! every `cargo test`, beside the coverage-guided fuzzing in `fuzz/`.

mod properties;
