#![no_main]
//! `cargo +nightly fuzz run token`: see `gateway::fuzzing::token` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::token(data));
