//! Retry policy for transfers: which failures are worth another attempt, and when.
//!
//! Pure: the caller passes `now_ms` and a jitter sample in `[0, 1)`, and stores the state
//! ([`AttemptState`], [`OriginBackoff`]) durably so a restart does not reset the budget.
//! Exponential backoff with full jitter (AWS's "Exponential Backoff and Jitter"); a server's
//! `Retry-After` is a floor, never shortened by jitter.

use crate::job::ErrorCode;
use serde::{Deserialize, Serialize};

/// What went wrong with one attempt, as the transfer saw it. Classified here, once, so no
/// caller branches on error strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Failure {
    /// Could not connect (refused, unreachable, DNS).
    ConnectFailed,
    /// The connection broke mid-request (reset, closed early).
    ConnectionLost,
    /// No answer in time.
    TimedOut,
    /// A final HTTP answer that is not success.
    Http {
        status: u16,
        retry_after_ms: Option<u64>,
    },
    /// The server's offset is not ours (409 in both protocols): ask it, then resume.
    OffsetMismatch,
    /// The upload is busy on the server (423, or a concurrent append).
    Locked,
    /// The answer made no sense (garbage, contradictory limits, success without the bytes).
    BadResponse,
    /// Too many redirects, or a redirect to a place the job may not go.
    RedirectRefused,
    /// The file no longer matches the job's pinned hash.
    ResourceChanged,
    /// The file is gone.
    ResourceMissing,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Try again at this time (ms since the epoch).
    RetryAt(i64),
    /// The budget is spent, or the failure is permanent: the job fails with this code.
    Fail(ErrorCode),
}

impl Failure {
    /// Transient failures may succeed on another attempt; the rest never will.
    pub fn is_transient(self) -> bool {
        match self {
            Failure::ConnectFailed
            | Failure::ConnectionLost
            | Failure::TimedOut
            | Failure::OffsetMismatch
            | Failure::Locked => true,
            Failure::Http { status, .. } => {
                matches!(status, 408 | 409 | 423 | 425 | 429) || (500..=599).contains(&status)
            }
            // A server that answered nonsense may answer sense after a restart.
            Failure::BadResponse => true,
            Failure::RedirectRefused | Failure::ResourceChanged | Failure::ResourceMissing => false,
        }
    }

    /// The code a job that ends on this failure carries.
    pub fn code(self) -> ErrorCode {
        match self {
            Failure::ConnectFailed | Failure::ConnectionLost => ErrorCode::NetworkLost,
            Failure::TimedOut => ErrorCode::TimedOut,
            Failure::Http { status, .. } if status >= 500 => ErrorCode::ServerError,
            Failure::Http { status: 408, .. } => ErrorCode::TimedOut,
            Failure::Http { .. } | Failure::OffsetMismatch | Failure::Locked => {
                ErrorCode::ClientError
            }
            Failure::BadResponse => ErrorCode::BadResponse,
            Failure::RedirectRefused => ErrorCode::DestinationRefused,
            Failure::ResourceChanged => ErrorCode::ResourceChanged,
            Failure::ResourceMissing => ErrorCode::ResourceMissing,
        }
    }

    fn retry_after_ms(self) -> Option<u64> {
        match self {
            Failure::Http { retry_after_ms, .. } => retry_after_ms,
            _ => None,
        }
    }
}

/// The retry budget of one job, and the backoff curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// After this long since the first attempt, no new attempt starts.
    pub max_age_ms: u64,
    /// A `Retry-After` longer than this is treated as this (a hostile server cannot park a
    /// job for a year).
    pub max_retry_after_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_delay_ms: 1_000,
            max_delay_ms: 5 * 60_000,
            max_attempts: 12,
            max_age_ms: 7 * 24 * 3600 * 1000,
            max_retry_after_ms: 6 * 3600 * 1000,
        }
    }
}

/// A job's attempts so far (persisted with the job).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AttemptState {
    pub attempts: u32,
    pub first_attempt_ms: Option<i64>,
}

impl RetryPolicy {
    /// The full-jitter delay before attempt `attempt + 1` (`attempt` ≥ 1 failures so far).
    pub fn backoff_ms(&self, failures: u32, jitter: f64) -> u64 {
        let exp = failures.saturating_sub(1).min(32);
        let cap = self
            .base_delay_ms
            .saturating_mul(1u64 << exp)
            .min(self.max_delay_ms);
        let j = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        (cap as f64 * j) as u64
    }

    /// Records a failed attempt and says what to do next.
    pub fn on_failure(
        &self,
        state: &mut AttemptState,
        failure: Failure,
        now_ms: i64,
        jitter: f64,
    ) -> Verdict {
        state.attempts = state.attempts.saturating_add(1);
        let first = *state.first_attempt_ms.get_or_insert(now_ms);
        if !failure.is_transient() || state.attempts >= self.max_attempts {
            return Verdict::Fail(failure.code());
        }
        let mut delay = self.backoff_ms(state.attempts, jitter);
        if let Some(ra) = failure.retry_after_ms() {
            delay = delay.max(ra.min(self.max_retry_after_ms));
        }
        let at = now_ms.saturating_add(delay.min(i64::MAX as u64) as i64);
        if at.saturating_sub(first) > self.max_age_ms.min(i64::MAX as u64) as i64 {
            return Verdict::Fail(failure.code());
        }
        Verdict::RetryAt(at)
    }
}

/// Backoff shared by every job to one origin (scheme, host, port), so one dead server does not
/// slow the others and is not hammered by many jobs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OriginBackoff {
    pub consecutive_failures: u32,
    pub until_ms: i64,
}

impl OriginBackoff {
    /// Whether a new attempt to this origin may start now.
    pub fn ready(&self, now_ms: i64) -> bool {
        now_ms >= self.until_ms
    }

    /// A failure that says something about the origin (not about one file) backs it off.
    pub fn on_failure(&mut self, policy: &RetryPolicy, failure: Failure, now_ms: i64, jitter: f64) {
        let origin_wide = matches!(
            failure,
            Failure::ConnectFailed | Failure::TimedOut | Failure::ConnectionLost
        ) || matches!(failure, Failure::Http { status, .. } if status == 429 || status == 503 || status >= 500);
        if !origin_wide {
            return;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let mut delay = policy.backoff_ms(self.consecutive_failures, jitter);
        if let Some(ra) = failure.retry_after_ms() {
            delay = delay.max(ra.min(policy.max_retry_after_ms));
        }
        self.until_ms = self
            .until_ms
            .max(now_ms.saturating_add(delay.min(i64::MAX as u64) as i64));
    }

    pub fn on_success(&mut self) {
        *self = OriginBackoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> Failure {
        Failure::Http {
            status,
            retry_after_ms: None,
        }
    }

    #[test]
    fn classification() {
        for s in [408, 409, 423, 429, 500, 502, 503, 507, 599] {
            assert!(http(s).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 413, 415, 460] {
            assert!(!http(s).is_transient(), "{s}");
            assert_eq!(http(s).code(), ErrorCode::ClientError);
        }
        assert_eq!(http(503).code(), ErrorCode::ServerError);
        // A full disk on the server: retry later, and say so if the budget runs out.
        assert_eq!(http(507).code(), ErrorCode::ServerError);
        assert_eq!(Failure::ConnectionLost.code(), ErrorCode::NetworkLost);
        assert!(!Failure::ResourceChanged.is_transient());
    }

    /// A transcript: a job failing transiently until the budget is spent.
    #[test]
    fn transcript_backoff_until_budget_spent() {
        let p = RetryPolicy {
            base_delay_ms: 100,
            max_delay_ms: 1_000,
            max_attempts: 6,
            ..RetryPolicy::default()
        };
        let mut s = AttemptState::default();
        let mut now = 0;
        let mut lines = Vec::new();
        loop {
            match p.on_failure(&mut s, Failure::ConnectionLost, now, 0.5) {
                Verdict::RetryAt(at) => {
                    lines.push(format!(
                        "attempt {} failed at {now}: retry at {at}",
                        s.attempts
                    ));
                    now = at;
                }
                Verdict::Fail(code) => {
                    lines.push(format!(
                        "attempt {} failed at {now}: fail {code:?}",
                        s.attempts
                    ));
                    break;
                }
            }
        }
        assert_eq!(
            lines.join("\n"),
            "attempt 1 failed at 0: retry at 50\n\
             attempt 2 failed at 50: retry at 150\n\
             attempt 3 failed at 150: retry at 350\n\
             attempt 4 failed at 350: retry at 750\n\
             attempt 5 failed at 750: retry at 1250\n\
             attempt 6 failed at 1250: fail NetworkLost"
        );
    }

    #[test]
    fn permanent_fails_at_once_and_retry_after_is_a_floor() {
        let p = RetryPolicy::default();
        let mut s = AttemptState::default();
        assert_eq!(
            p.on_failure(&mut s, http(403), 10, 0.9),
            Verdict::Fail(ErrorCode::ClientError)
        );
        let mut s = AttemptState::default();
        let ra = Failure::Http {
            status: 429,
            retry_after_ms: Some(30_000),
        };
        assert_eq!(p.on_failure(&mut s, ra, 10, 0.0), Verdict::RetryAt(30_010));
        // A hostile Retry-After is capped.
        let huge = Failure::Http {
            status: 503,
            retry_after_ms: Some(u64::MAX),
        };
        let mut s = AttemptState::default();
        assert_eq!(
            p.on_failure(&mut s, huge, 0, 0.0),
            Verdict::RetryAt(p.max_retry_after_ms as i64)
        );
    }

    #[test]
    fn age_budget_ends_retries() {
        let p = RetryPolicy {
            max_age_ms: 1_000,
            ..RetryPolicy::default()
        };
        let mut s = AttemptState::default();
        assert!(matches!(
            p.on_failure(&mut s, Failure::TimedOut, 0, 0.0),
            Verdict::RetryAt(_)
        ));
        assert_eq!(
            p.on_failure(&mut s, Failure::TimedOut, 2_000, 0.0),
            Verdict::Fail(ErrorCode::TimedOut)
        );
    }

    #[test]
    fn origin_backoff_is_shared_and_cleared() {
        let p = RetryPolicy::default();
        let mut o = OriginBackoff::default();
        assert!(o.ready(0));
        o.on_failure(&p, http(404), 0, 1.0);
        assert!(o.ready(0), "a 404 says nothing about the origin");
        o.on_failure(&p, Failure::ConnectFailed, 0, 1.0);
        assert!(!o.ready(999) && o.ready(1_000));
        o.on_failure(&p, Failure::ConnectFailed, 1_000, 1.0);
        assert_eq!(o.until_ms, 3_000);
        o.on_success();
        assert!(o.ready(0));
    }

    #[test]
    fn jitter_out_of_range_is_clamped() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff_ms(1, f64::NAN), 0);
        assert_eq!(p.backoff_ms(1, 7.0), 1_000);
        assert_eq!(p.backoff_ms(200, 1.0), p.max_delay_ms);
    }
}
