//! An upload bandwidth cap shared by every transfer of one engine: a token bucket.
//!
//! The rate can change while transfers run (the daemon's policy caps it, and the cap follows
//! the conditions); `None` lets blocks pass at once.
//!
//! Body streams take tokens before handing a block to the HTTP stack, so the cap holds across
//! concurrent uploads. Waiters queue on a fair (FIFO) lock, so one upload cannot starve
//! another. A block larger than the bucket still passes: the bucket goes into debt and the
//! next taker waits it out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Bandwidth {
    /// The rate in bytes per second, `0` for none: read without the bucket's lock, so a body
    /// stream knows its block size at once.
    rate: AtomicU64,
    /// Tokens (bytes) available, and when they were last counted.
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl Bandwidth {
    /// A cap of `bytes_per_s` (at least 1; `None`: no cap), with one second's worth of burst.
    pub fn new(bytes_per_s: Option<u64>) -> Bandwidth {
        let rate = bytes_per_s.map_or(0, |r| r.max(1));
        Bandwidth {
            rate: AtomicU64::new(rate),
            state: tokio::sync::Mutex::new((rate as f64, Instant::now())),
        }
    }

    /// Changes the cap; blocks already waiting finish their wait.
    pub fn set_rate(&self, bytes_per_s: Option<u64>) {
        self.rate
            .store(bytes_per_s.map_or(0, |r| r.max(1)), Ordering::Relaxed);
    }

    pub fn rate(&self) -> Option<u64> {
        Some(self.rate.load(Ordering::Relaxed)).filter(|r| *r > 0)
    }

    /// Blocks of this size keep each wait short (well under any idle timeout).
    pub fn block_bytes(&self) -> usize {
        match self.rate() {
            Some(r) => ((r / 8) as usize).clamp(4 << 10, crate::source::READ_BLOCK_BYTES),
            None => crate::source::READ_BLOCK_BYTES,
        }
    }

    /// Waits until `n` bytes may be sent.
    pub async fn take(&self, n: usize) {
        let Some(rate) = self.rate() else {
            return;
        };
        let rate = rate as f64;
        let mut s = self.state.lock().await;
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * rate).min(rate);
        s.1 = now;
        s.0 -= n as f64;
        if s.0 < 0.0 {
            // Holding the lock while waiting keeps the queue in order.
            tokio::time::sleep(Duration::from_secs_f64(-s.0 / rate)).await;
        }
    }
}
