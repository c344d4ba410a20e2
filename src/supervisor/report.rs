//! What the supervisor shows: the status the API serves, the typed
//! [`Report`] for the daemon's tasks, one log line per change, and the
//! `sd_notify` status line.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::state::{Comp, Now, phase};
use super::{Report, Supervisor};
use crate::runtime::{ContainerRuntime, Health};
use crate::status::{AgentState, ComponentStatus, Status};

impl<R: ContainerRuntime> Supervisor<R> {
    /// Publishes status and the report; logs every component phase change
    /// and every agent state change as one event each.
    pub(super) fn publish(&mut self, now: Now) {
        for c in &mut self.state.comps {
            let p = phase(c, now.at);
            if p != c.phase_logged {
                tracing::info!(
                    component = %c.spec.name,
                    from = c.phase_logged.as_str(),
                    to = p.as_str(),
                    restarts = c.restarts,
                    failures = c.failures,
                    exit_code = ?c.last_exit_code,
                    "component state changed"
                );
                c.phase_logged = p;
            }
        }
        let (state, reason) = self.state.agent_state(now);
        if self.last_state != Some(state) {
            tracing::info!(state = state.as_str(), reason = ?reason, "agent state changed");
            let line = match &reason {
                Some(r) => format!("{}: {r}", state.as_str()),
                None => state.as_str().to_string(),
            };
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
            self.last_state = Some(state);
        }
        let report = Report {
            state,
            reason: reason.clone(),
            engine_connected: self.state.engine_connected,
            failed: self.state.failed(),
            draining: None,
        };
        self.report.send_if_modified(|old| {
            let changed = *old != report;
            if changed {
                *old = report;
            }
            changed
        });
        let status = self.snapshot(state, reason, now);
        self.status.send_if_modified(|old| {
            if **old == status {
                false
            } else {
                *old = Arc::new(status);
                true
            }
        });
    }

    pub(super) fn snapshot(&self, state: AgentState, reason: Option<String>, now: Now) -> Status {
        let plan = &self.state.plan;
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance_id: Some(plan.instance_id.clone()),
            group: Some(plan.group.clone()),
            cluster: Some(plan.cluster.clone()),
            plan_id: Some(plan.id.clone()),
            state,
            reason,
            message: self.state.message.clone(),
            engine_connected: self.state.engine_connected,
            drift: self.state.drift.clone(),
            components: self
                .state
                .comps
                .iter()
                .map(|c| component_status(c, phase(c, now.at), now.at, now.wall))
                .collect(),
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub(super) fn component_status(
    c: &Comp,
    phase: crate::status::Phase,
    now: Instant,
    wall: SystemTime,
) -> ComponentStatus {
    ComponentStatus {
        name: c.spec.name.clone(),
        version: c.spec.version.clone(),
        image: c.spec.image.clone(),
        image_id: c.spec.image_id.clone(),
        container_id: c.container.as_ref().map(|v| v.id.clone()),
        state: phase,
        health: c.container.as_ref().map_or(Health::None, |v| v.health),
        restarts: c.restarts,
        failures: c.failures,
        failed_since: c.failed_since.map(rfc3339),
        last_exit_code: c.last_exit_code,
        backoff_until: c
            .not_before
            .filter(|t| *t > now)
            .map(|t| rfc3339(wall + (t - now))),
        last_error: c.last_error.clone(),
    }
}
