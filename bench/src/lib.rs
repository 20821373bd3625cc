//! Benchmarks for the gateway.
//!
//! - `cargo bench -p gateway-bench`: criterion micro-benchmarks of the per-request pure
//!   logic (path normalisation, route lookup, header hygiene), in `benches/hot_path.rs`.
//! - `python3 bench/compare.py`: the gateway against nginx and HAProxy as proxies, in one
//!   interleaved run on this machine; prints the markdown table quoted in the README.
#![forbid(unsafe_code)]
