#![no_main]
//! `cargo +nightly fuzz run jwks`: see `gateway::fuzzing::jwks` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::jwks(data));
