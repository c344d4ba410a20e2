//! The drain: stop supervising, wait for actions in flight, then stop every
//! container, last start wave first, each with its grace period.

use std::sync::Arc;
use std::time::Duration;

use super::state::Now;
use super::{DRAIN_ACTION_WAIT, DrainReason, Supervisor};
use crate::backoff::{ENGINE_RECONNECT, random_unit};
use crate::runtime::ContainerRuntime;
use crate::status::{AgentState, Phase};

/// Attempts to list the containers before a drain gives up on the engine.
pub const DRAIN_LIST_ATTEMPTS: u32 = 10;

impl<R: ContainerRuntime> Supervisor<R> {
    /// Stops every container, last wave first, each with its grace period.
    pub(super) async fn drain(mut self, reason: DrainReason) {
        tracing::warn!(
            reason = reason.describe(),
            "draining: stopping every container"
        );
        self.report.send_modify(|r| {
            r.state = AgentState::Draining;
            r.draining = Some(reason);
        });
        self.publish_drain(&[], Phase::Stopping);
        self.actions.close();
        if tokio::time::timeout(DRAIN_ACTION_WAIT, self.actions.wait())
            .await
            .is_err()
        {
            tracing::warn!(waited = ?DRAIN_ACTION_WAIT, "actions still in flight; stopping anyway");
        }
        let mut attempt = 0;
        let list = loop {
            match self.engine.list_managed().await {
                Ok(l) => break l,
                Err(e) if attempt < DRAIN_LIST_ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(error = %e, "drain cannot list containers; retrying");
                    tokio::time::sleep(ENGINE_RECONNECT.delay(attempt, random_unit())).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "drain cannot reach the engine; giving up");
                    return;
                }
            }
        };
        let waves = self.state.plan.waves();
        for wave in waves.iter().rev() {
            let mut stops = Vec::new();
            for &idx in wave {
                let c = &self.state.comps[idx];
                let grace: Duration = c.spec.spec.stop_grace_period.0;
                tracing::info!(component = %c.spec.name, grace = ?grace, "stopping");
                for o in list
                    .iter()
                    .filter(|o| o.component.as_deref() == Some(c.spec.name.as_str()) && o.running)
                {
                    let engine = self.engine.clone();
                    let id = o.id.clone();
                    stops.push(async move {
                        let r = engine.stop(&id, grace).await;
                        (id, r)
                    });
                }
            }
            for &idx in wave {
                self.state.comps[idx].phase_logged = Phase::Stopping;
            }
            self.publish_drain(wave, Phase::Stopping);
            for (id, r) in futures_util::future::join_all(stops).await {
                if let Err(e) = r {
                    tracing::error!(container = %id, error = %e, "cannot stop container");
                }
            }
            for &idx in wave {
                tracing::info!(component = %self.state.comps[idx].spec.name, "component state changed to stopped");
                self.state.comps[idx].phase_logged = Phase::Stopped;
            }
            self.publish_drain(wave, Phase::Stopped);
        }
        tracing::info!("drained");
    }

    fn publish_drain(&self, wave: &[usize], phase_now: Phase) {
        let now = Now::read();
        let reason = self
            .report
            .borrow()
            .draining
            .map(|r| r.describe().to_string());
        let mut s = self.snapshot(AgentState::Draining, reason, now);
        for (i, cs) in s.components.iter_mut().enumerate() {
            cs.state = if wave.contains(&i) {
                phase_now
            } else {
                self.state.comps[i].phase_logged
            };
        }
        self.status.send_replace(Arc::new(s));
    }
}
