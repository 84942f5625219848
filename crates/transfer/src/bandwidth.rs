//! An upload bandwidth cap shared by every transfer of one engine: a token bucket.
//!
//! Body streams take tokens before handing a block to the HTTP stack, so the cap holds across
//! concurrent uploads. Waiters queue on a fair (FIFO) lock, so one upload cannot starve
//! another. A block larger than the bucket still passes: the bucket goes into debt and the
//! next taker waits it out.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Bandwidth {
    bytes_per_s: f64,
    /// Tokens (bytes) available, and when they were last counted.
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl Bandwidth {
    /// A cap of `bytes_per_s` (at least 1), with one second's worth of burst.
    pub fn new(bytes_per_s: u64) -> Bandwidth {
        let rate = bytes_per_s.max(1) as f64;
        Bandwidth {
            bytes_per_s: rate,
            state: tokio::sync::Mutex::new((rate, Instant::now())),
        }
    }

    /// Blocks of this size keep each wait short (well under any idle timeout).
    pub fn block_bytes(&self) -> usize {
        ((self.bytes_per_s / 8.0) as usize).clamp(4 << 10, crate::source::READ_BLOCK_BYTES)
    }

    /// Waits until `n` bytes may be sent.
    pub async fn take(&self, n: usize) {
        let mut s = self.state.lock().await;
        let now = Instant::now();
        s.0 =
            (s.0 + now.duration_since(s.1).as_secs_f64() * self.bytes_per_s).min(self.bytes_per_s);
        s.1 = now;
        s.0 -= n as f64;
        if s.0 < 0.0 {
            // Holding the lock while waiting keeps the queue in order.
            tokio::time::sleep(Duration::from_secs_f64(-s.0 / self.bytes_per_s)).await;
        }
    }
}
