#![no_main]
//! `cargo +nightly fuzz run path`: see `gateway::fuzzing::path` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::path(data));
