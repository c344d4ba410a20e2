//! Proof of life for systemd's watchdog: the supervisor's loop beats on
//! every turn (it wakes at least every [`BEAT_EVERY`]); a watchdog task pings
//! systemd (`WATCHDOG=1`) only while the loop keeps beating. Outside the
//! loop (boot, a drain, the retirement after it) the daemon is waiting on
//! something slow but alive, and the task pings freely. So a wedged
//! supervisor stops the pings and systemd restarts the agent (which never
//! stops the containers).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The supervisor's loop wakes at least this often, so it beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(5);

/// The last beat of the supervisor's loop. `0`: not in the loop.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            epoch: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Heartbeat {
    /// The loop is alive now.
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// The loop is left (a drain, or the end): slow work, not a wedge.
    pub fn leave(&self) {
        self.last_ms.store(0, Ordering::Relaxed);
    }

    /// Whether a watchdog ping is deserved: outside the loop, or the loop
    /// beat within `within`.
    pub fn alive(&self, within: Duration) -> bool {
        match self.last_ms.load(Ordering::Relaxed) {
            0 => true,
            ms => {
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms))
                    <= within
            }
        }
    }
}

/// Pings systemd's watchdog every half `period` while `hb` is alive, until
/// cancelled. Does nothing when systemd set no watchdog.
pub async fn watchdog(period: Option<Duration>, hb: Heartbeat, cancel: CancellationToken) {
    let Some(period) = period else { return };
    let every = period / 2;
    let mut warned = false;
    loop {
        if hb.alive(every) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            warned = false;
        } else if !warned {
            tracing::error!(
                period = ?period,
                "the supervisor's loop has not run for {every:?}: no watchdog ping, systemd will restart the agent (containers keep running)"
            );
            warned = true;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_is_not_alive() {
        let hb = Heartbeat::default();
        assert!(hb.alive(Duration::ZERO), "outside the loop: alive");
        hb.beat();
        assert!(hb.alive(Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!hb.alive(Duration::from_millis(10)), "wedged");
        hb.leave();
        assert!(hb.alive(Duration::ZERO), "draining: alive");
    }
}
