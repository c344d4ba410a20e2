//! Every `berth:*` tag and every lifecycle string berth reads or writes, in
//! one place. Everyone else imports them from here.

/// Group tag naming the cluster; defaults to the group's name.
pub const TAG_CLUSTER: &str = "berth:cluster";
/// Group tag with the preferred version of every component.
pub const TAG_VERSION: &str = "berth:version";
/// Prefix of the per-component version tag, `berth:version:<component>`.
pub const TAG_VERSION_PREFIX: &str = "berth:version:";
/// Group tag: the rollout budget, a count (`2`) or a percent (`10%`) of desired capacity.
pub const TAG_MAX_UNAVAILABLE: &str = "berth:max-unavailable";
/// Group tag: how long drift must persist before retiring.
pub const TAG_DRIFT_GRACE: &str = "berth:drift-grace";
/// Group tag: `true` stops all retirements.
pub const TAG_PAUSED: &str = "berth:paused";
/// Group tag: how many replacements go first, before the rest wait for
/// them to bake (a count; `0`, the default, is off).
pub const TAG_CANARY: &str = "berth:canary";
/// Group tag: how long a member on the preferred versions must have been
/// ready before it counts as baked (a duration; `0`, the default, is off).
pub const TAG_BAKE_TIME: &str = "berth:bake-time";
/// Group tag: CloudWatch alarm names, comma-separated, that hold the rollout
/// while any is in ALARM; an entry ending in `*` is a name prefix.
pub const TAG_HALT_ON_ALARMS: &str = "berth:halt-on-alarms";
/// Group tag: `true` sets the version tags back to the old versions when
/// the rollout halts.
pub const TAG_AUTO_ROLLBACK: &str = "berth:auto-rollback";
/// Group tag: how long after its launch a member on the preferred versions
/// may take to become ready before the rollout halts.
pub const TAG_PROGRESS_DEADLINE: &str = "berth:progress-deadline";
/// Group tag written by an automatic rollback: the preferred versions it
/// rolled back from (`web=1.5.0`).
pub const TAG_ROLLED_BACK_FROM: &str = "berth:rolled-back-from";
/// Group tag: the whole group's backstop poll interval at rest.
pub const TAG_REST_POLL: &str = "berth:rest-poll";

/// Instance tag: the pin, `web=1.4.2,proxy=0.9.1`.
pub const TAG_VERSIONS: &str = "berth:versions";
/// Instance tag: the pinned cluster (drift includes a changed cluster).
pub const TAG_PINNED_CLUSTER: &str = "berth:pinned-cluster";
/// Instance tag: the agent's state, one of [`InstanceState`].
pub const TAG_STATE: &str = "berth:state";
/// Instance tag: when the agent last became ready, RFC 3339 in UTC to the
/// second (`2025-01-31T12:00:00Z`).
pub const TAG_READY_SINCE: &str = "berth:ready-since";
/// Instance tag: a doorbell; changing it asks the agent to read its group now.
pub const TAG_NUDGE: &str = "berth:nudge";

/// The instance tag the group sets on its members (visible in IMDS when
/// instance-metadata tags are enabled).
pub const GROUP_NAME_TAG: &str = "aws:autoscaling:groupName";

/// Lifecycle transition of launch hooks.
pub const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";
/// Lifecycle transition of terminate hooks.
pub const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";
/// A member's lifecycle state once it serves.
pub const IN_SERVICE: &str = "InService";
/// A member's lifecycle state while a launch hook holds it.
pub const PENDING_WAIT: &str = "Pending:Wait";
/// The prefix of a leaving member's lifecycle states: `Terminating`,
/// `Terminating:Wait`, `Terminating:Proceed`.
pub const TERMINATING_STATE_PREFIX: &str = "Terminating";
/// A member's health status when the group counts it healthy.
pub const HEALTHY: &str = "Healthy";
/// IMDS `autoscaling/target-lifecycle-state` when the group terminates the instance.
pub const TARGET_TERMINATED: &str = "Terminated";
/// Lifecycle action results.
pub const CONTINUE: &str = "CONTINUE";
pub const ABANDON: &str = "ABANDON";

/// The values of the `berth:state` instance tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Starting,
    Ready,
    Degraded,
    /// Stopping containers because the group terminates the instance (or spot).
    Draining,
    /// Retiring: the rollout gate chose this instance; it drains, then terminates.
    Retiring,
}

impl InstanceState {
    /// The tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Degraded => "degraded",
            InstanceState::Draining => "draining",
            InstanceState::Retiring => "retiring",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With instance-metadata tags enabled, an instance tag key outside
    /// letters, digits and `+ - = . , _ : @` makes launches fail.
    #[test]
    fn instance_tag_keys_are_allowed_in_instance_metadata() {
        for key in [
            TAG_VERSIONS,
            TAG_PINNED_CLUSTER,
            TAG_STATE,
            TAG_READY_SINCE,
            TAG_NUDGE,
        ] {
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-=.,_:@".contains(c)),
                "{key}"
            );
        }
    }
}
