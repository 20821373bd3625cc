#![no_main]
//! `cargo +nightly fuzz run request_head`: see `gateway::fuzzing::request_head` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::request_head(data));
