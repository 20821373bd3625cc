//! The offline commands: `check` (with the `--against` preview), `explain`, `report`,
//! `token` and the demo's upstreams and instructions. `main.rs` parses arguments and
//! calls these.

pub mod demo;
pub mod explain;
pub mod preview;
pub mod report;
pub mod token;
