//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the same entry
//! points the cargo-fuzz targets call, on stable and in CI: every input a fuzzer kept, and
//! every crash it ever found (saved there as a regression input), is checked again.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails on {}", target, path.display());
        inputs += 1;
    }
    assert!(inputs > 0, "no corpus in {}", dir.display());
}

#[test]
fn the_path_corpus_replays_cleanly() {
    replay("path", gateway::fuzzing::path);
}

#[test]
fn the_config_corpus_replays_cleanly() {
    replay("config", gateway::fuzzing::config);
}

#[test]
fn the_token_corpus_replays_cleanly() {
    replay("token", gateway::fuzzing::token);
}

#[test]
fn the_request_head_corpus_replays_cleanly() {
    replay("request_head", gateway::fuzzing::request_head);
}

#[test]
fn the_jwks_corpus_replays_cleanly() {
    replay("jwks", gateway::fuzzing::jwks);
}
