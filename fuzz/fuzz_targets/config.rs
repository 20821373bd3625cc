#![no_main]
//! `cargo +nightly fuzz run config`: see `gateway::fuzzing::config` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::config(data));
