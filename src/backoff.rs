//! Backoff schedules: pure functions, so tests can check them exactly.

use std::time::Duration;

use crate::manifest::RestartPolicy;

/// Jitter applied to every delay: ±10 %.
pub const JITTER_FRACTION: f64 = 0.10;

/// A named exponential retry schedule for remote calls:
/// `attempt` n (1-based) waits `min(initial * 2^(n-1), max)` ± jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub name: &'static str,
    pub initial: Duration,
    pub max: Duration,
}

/// Reconnecting to the Docker engine: 100 ms, 200 ms, 400 ms … capped at 5 s.
pub const ENGINE_RECONNECT: RetryPolicy = RetryPolicy {
    name: "engine-reconnect",
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// Pulling an image: 1 s, 2 s, 4 s … capped at 30 s, `agent.pull_attempts` tries per round.
pub const IMAGE_PULL: RetryPolicy = RetryPolicy {
    name: "image-pull",
    initial: Duration::from_secs(1),
    max: Duration::from_secs(30),
};

/// One AWS call from the agent's loops: 1 s, 2 s, 4 s … capped at 60 s;
/// throttling counts as one more attempt (the wait doubles).
pub const AWS_CALL: RetryPolicy = RetryPolicy {
    name: "aws-call",
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

/// A component whose secrets could not be resolved (missing, access
/// denied, or the store still failing after its own retries): 5 s, 10 s,
/// 20 s … capped at 5 min before the next create tries again.
pub const SECRETS_RETRY: RetryPolicy = RetryPolicy {
    name: "secrets-retry",
    initial: Duration::from_secs(5),
    max: Duration::from_secs(5 * 60),
};

/// Reading the desired state before anything is pinned: 1 s … capped at 30 s.
pub const DESIRED_STATE: RetryPolicy = RetryPolicy {
    name: "desired-state",
    initial: Duration::from_secs(1),
    max: Duration::from_secs(30),
};

impl RetryPolicy {
    /// The delay before retry number `attempt` (1-based), with jitter from `unit` in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        jitter(exp(self.initial, self.max, attempt.saturating_sub(1)), unit)
    }
}

fn exp(initial: Duration, max: Duration, doublings: u32) -> Duration {
    let factor = 2u32.saturating_pow(doublings.min(31));
    initial.saturating_mul(factor).min(max)
}

fn jitter(d: Duration, unit: f64) -> Duration {
    let f = 1.0 + JITTER_FRACTION * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    d.mul_f64(f)
}

/// How long to wait before restarting a component after its `failures`-th
/// consecutive failure (1-based): the first restart is immediate, then
/// `initial_delay`, doubling up to `max_delay`, with jitter.
pub fn restart_delay(policy: &RestartPolicy, failures: u32, unit: f64) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    jitter(
        exp(policy.initial_delay.0, policy.max_delay.0, failures - 2),
        unit,
    )
}

/// An error that knows whether trying again can help.
pub trait Retryable: std::fmt::Display {
    /// Throttling, a 5xx, a timeout, a network failure.
    fn is_retryable(&self) -> bool;
    /// The service said slow down: wait longer.
    fn is_throttled(&self) -> bool {
        false
    }
}

/// Why [`retry`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum GaveUp<E: std::error::Error + 'static> {
    /// A permanent error: retrying cannot help.
    #[error("{0}")]
    Permanent(#[source] E),
    /// Still failing at the deadline; the last error.
    #[error("{0} (still failing at the deadline)")]
    Deadline(#[source] E),
    /// Cancelled (shutdown).
    #[error("cancelled")]
    Cancelled,
}

/// The one retry loop: calls `call` until it succeeds, the error is
/// permanent, `deadline` passes, or `cancel` fires, sleeping `policy`'s
/// schedule (with jitter) between attempts. Logs each failure at WARN.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    cancel: &tokio_util::sync::CancellationToken,
    deadline: Option<tokio::time::Instant>,
    mut call: F,
) -> Result<T, GaveUp<E>>
where
    E: Retryable + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 0u32;
    loop {
        let err = tokio::select! {
            _ = cancel.cancelled() => return Err(GaveUp::Cancelled),
            r = call() => match r {
                Ok(v) => return Ok(v),
                Err(e) => e,
            },
        };
        if !err.is_retryable() {
            return Err(GaveUp::Permanent(err));
        }
        attempt += 1;
        let wait = policy.delay(attempt + u32::from(err.is_throttled()), random_unit());
        if deadline.is_some_and(|d| tokio::time::Instant::now() + wait >= d) {
            return Err(GaveUp::Deadline(err));
        }
        tracing::warn!(error = %err, attempt, retry_in = ?wait, policy = policy.name, "{what} failed; retrying");
        tokio::select! {
            _ = cancel.cancelled() => return Err(GaveUp::Cancelled),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// A random unit in [0, 1) for jitter.
pub fn random_unit() -> f64 {
    fastrand::f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Dur;

    #[test]
    fn restart_schedule_is_immediate_then_doubles_to_the_cap() {
        let p = RestartPolicy {
            initial_delay: Dur(Duration::from_secs(1)),
            max_delay: Dur(Duration::from_secs(8)),
            stable_after: Dur(Duration::from_secs(10)),
            failure_budget: 5,
        };
        let mid = 0.5; // no jitter
        let got: Vec<u64> = (1..=7)
            .map(|n| restart_delay(&p, n, mid).as_secs())
            .collect();
        assert_eq!(got, vec![0, 1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let d = ENGINE_RECONNECT.delay(3, 0.0);
        assert_eq!(d, Duration::from_millis(360));
        let d = ENGINE_RECONNECT.delay(3, 1.0);
        assert_eq!(d, Duration::from_millis(440));
        assert_eq!(ENGINE_RECONNECT.delay(100, 0.5), Duration::from_secs(5));
    }
}
