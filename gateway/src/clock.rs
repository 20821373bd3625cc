//! The monotonic clock the circuit breakers run on: tokio's, so paused-time tests control
//! it, expressed as time since the first use (the breakers take a plain `Duration`).

use std::sync::LazyLock;
use std::time::Duration;

use tokio::time::Instant;

/// Monotonic time since the process first asked.
pub fn now() -> Duration {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed()
}
