//! The rollout gate and the polling schedule: pure functions over one
//! snapshot of the group, so a table test, a property test or a simulation
//! can call them a million times.
//!
//! # The gate
//!
//! [`decide`] says [`Decision::Retire`] only if all hold, from one snapshot:
//! this instance has drifted; the new preferred images exist in their
//! registries; the drift has lasted `berth:drift-grace`; the group is not
//! `berth:paused`; this instance is itself ready; the budget
//! `k − U > 0`, where `k` = `berth:max-unavailable` and
//! `U = max(desired, members) − ready`; and this instance is among the first
//! `budget` drifted, ready members ordered by (launch time, instance id).
//! Anything missing or unreadable means wait.
//!
//! Why no coordinator is needed: when `r` members ahead of this one retire,
//! a later snapshot shows them unavailable (`U + r`) and gone from the line
//! (`p − r`), so `p ≤ k − U` is unchanged. Agents reading snapshots of
//! different ages agree on who may go; an older snapshot is only more
//! conservative.
//!
//! # The schedule
//!
//! [`next_poll`] spends a fixed call rate per group where it matters: at rest
//! the oldest members (first in line when a version changes) look most
//! often; once drifted, an agent sleeps in proportion to how many rounds
//! away its turn is.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::desired::TagError;

pub use crate::tags::{TAG_DRIFT_GRACE, TAG_MAX_UNAVAILABLE, TAG_PAUSED, TAG_STATE, TAG_VERSIONS};

/// Default drift grace.
pub const DEFAULT_DRIFT_GRACE: Duration = Duration::from_secs(60);
/// The group-wide call rate the schedule aims at (calls per second).
pub const GROUP_CALLS_PER_SEC: f64 = 1.0;
/// No agent polls more often than this.
pub const POLL_FLOOR: Duration = Duration::from_secs(5);
/// Agents waiting for their turn share at least this many calls per second,
/// so a large budget does not become a burst: their floor is `k / rate`.
pub const WINDOW_CALLS_PER_SEC: f64 = 10.0;
/// Slack added to the estimated moment of an agent's turn.
pub const READY_SLACK: Duration = Duration::from_secs(3);
/// At rest, no member waits longer than this fraction of a round for its
/// first look, so the first windows of a rollout are not delayed by
/// discovery (this costs more than 1 call/s only when the budget is large).
pub const REST_MAX_FRACTION_OF_ROUND: f64 = 0.8;
/// Drifted agents far back in line together make at most this many calls per
/// second: their cap is `max(DRIFTED_POLL_CAP, n / rate)`.
pub const BACK_OF_LINE_CALLS_PER_SEC: f64 = 0.25;
/// Euler–Mascheroni constant: the harmonic sum `H_n ≈ ln n + γ`.
const EULER_GAMMA: f64 = 0.5772;
/// An agent never sleeps longer than this between polls once drifted.
pub const DRIFTED_POLL_CAP: Duration = Duration::from_secs(600);

/// `berth:max-unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxUnavailable {
    Count(u32),
    Percent(u32),
}

impl MaxUnavailable {
    /// The count for a group of `desired` capacity: a percent rounds down,
    /// but never below 1, so a rollout always progresses.
    pub fn resolve(self, desired: u32) -> u32 {
        match self {
            MaxUnavailable::Count(n) => n,
            MaxUnavailable::Percent(p) => (desired.saturating_mul(p) / 100).max(1),
        }
    }
}

/// The rollout settings, from the group's tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_unavailable: MaxUnavailable,
    pub drift_grace: Duration,
    pub paused: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_unavailable: MaxUnavailable::Count(1),
            drift_grace: DEFAULT_DRIFT_GRACE,
            paused: false,
        }
    }
}

/// Reads the rollout settings from the group's tags, naming every bad tag.
pub fn policy_from_tags(tags: &BTreeMap<String, String>) -> Result<Policy, Vec<TagError>> {
    let mut p = Policy::default();
    let mut errors = Vec::new();
    if let Some(v) = tags.get(TAG_MAX_UNAVAILABLE) {
        let v = v.trim();
        let parsed = match v.strip_suffix('%') {
            Some(pct) => pct
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .map(MaxUnavailable::Percent),
            None => v
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .map(MaxUnavailable::Count),
        };
        match parsed {
            Some(m) => p.max_unavailable = m,
            None => errors.push(TagError {
                tag: TAG_MAX_UNAVAILABLE.into(),
                message: format!(
                    "{v:?} is not a count (\"2\") or a percent (\"10%\") of at least 1"
                ),
            }),
        }
    }
    if let Some(v) = tags.get(TAG_DRIFT_GRACE) {
        match humantime::parse_duration(v.trim()) {
            Ok(d) => p.drift_grace = d,
            Err(e) => errors.push(TagError {
                tag: TAG_DRIFT_GRACE.into(),
                message: format!("{v:?} is not a duration like \"60s\" or \"5m\": {e}"),
            }),
        }
    }
    if let Some(v) = tags.get(TAG_PAUSED) {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => p.paused = true,
            "false" | "no" | "0" | "" => p.paused = false,
            _ => errors.push(TagError {
                tag: TAG_PAUSED.into(),
                message: format!("{v:?} is not true or false"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(p)
    } else {
        Err(errors)
    }
}

/// Parses a `berth:versions` tag (`web=1.4.2,proxy=0.9.1`).
pub fn parse_versions(tag: &str) -> Option<BTreeMap<String, String>> {
    tag.split(',')
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// One member of the group, as the gate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: String,
    /// Seconds since the epoch.
    pub launch_time: u64,
    /// Lifecycle state is `InService`.
    pub in_service: bool,
    /// Health status is `Healthy`.
    pub healthy: bool,
    /// The member's `berth:state` tag.
    pub berth_state: Option<String>,
    /// The member's `berth:versions` tag, parsed.
    pub versions: Option<BTreeMap<String, String>>,
    /// The member's `berth:pinned-cluster` tag.
    pub cluster: Option<String>,
}

impl MemberView {
    /// InService, Healthy and tagged `berth:state=ready`.
    pub fn ready(&self) -> bool {
        self.in_service
            && self.healthy
            && self.berth_state.as_deref() == Some(crate::tags::InstanceState::Ready.as_str())
    }

    /// Runs versions other than `preferred`, or a cluster other than the
    /// group's (unknown versions or clusters are not drift): the same rule
    /// as [`crate::desired::drift`], read from the member's tags.
    pub fn drifted(&self, preferred: &BTreeMap<String, String>, cluster: Option<&str>) -> bool {
        let versions = self.versions.as_ref().is_some_and(|v| v != preferred);
        let moved = matches!((self.cluster.as_deref(), cluster), (Some(a), Some(b)) if a != b);
        versions || moved
    }
}

/// One snapshot of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub desired_capacity: u32,
    pub members: Vec<MemberView>,
    /// The group's preferred cluster (`None`: not known, only versions count).
    pub cluster: Option<String>,
}

/// Whether the new preferred images exist in their registries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageCheck {
    /// Every image exists.
    Present,
    /// This image does not exist (a typo never retires anyone).
    Missing(String),
    /// Could not tell (registry unreachable): wait.
    Unknown(String),
}

/// Why the gate says wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// This instance runs the preferred versions.
    NoDrift,
    ImageMissing(String),
    ImageUnknown(String),
    /// Drift must last the grace period; this much is left.
    Grace(Duration),
    Paused,
    /// This instance is not in the snapshot.
    NotInGroup,
    /// This instance is not ready itself; it holds no place in line.
    NotReady,
    /// `k − U ≤ 0`.
    NoBudget {
        unavailable: u32,
        max: u32,
    },
    /// Others are ahead in line.
    NotMyTurn {
        position: u32,
        budget: u32,
        head: String,
    },
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::NoDrift => write!(f, "no drift"),
            Wait::ImageMissing(i) => {
                write!(f, "the preferred image {i} does not exist in its registry")
            }
            Wait::ImageUnknown(e) => write!(f, "cannot check the preferred image: {e}"),
            Wait::Grace(left) => write!(
                f,
                "drift grace: {} left",
                humantime::format_duration(Duration::from_secs(left.as_secs()))
            ),
            Wait::Paused => write!(f, "the group is paused ({TAG_PAUSED})"),
            Wait::NotInGroup => write!(f, "this instance is not in the group's snapshot"),
            Wait::NotReady => write!(f, "this instance is not ready; it holds no place in line"),
            Wait::NoBudget { unavailable, max } => {
                write!(f, "no budget: {unavailable} unavailable, max {max}")
            }
            Wait::NotMyTurn {
                position,
                budget,
                head,
            } => {
                write!(
                    f,
                    "position {position} in line, budget {budget}; head of the line is {head}"
                )
            }
        }
    }
}

/// The gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Retire,
    Wait(Wait),
}

/// The line: drifted, ready members ordered by (launch time, instance id).
pub fn line<'a>(
    snapshot: &'a Snapshot,
    preferred: &BTreeMap<String, String>,
) -> Vec<&'a MemberView> {
    let mut l: Vec<&MemberView> = snapshot
        .members
        .iter()
        .filter(|m| m.ready() && m.drifted(preferred, snapshot.cluster.as_deref()))
        .collect();
    l.sort_by(|a, b| (a.launch_time, &a.id).cmp(&(b.launch_time, &b.id)));
    l
}

/// Whom to nudge (provisional; the schedule work replaces it).
pub fn nudge_targets(
    snapshot: &Snapshot,
    preferred: &BTreeMap<String, String>,
    me: &str,
    k: u32,
) -> Vec<String> {
    line(snapshot, preferred)
        .into_iter()
        .filter(|m| m.id != me)
        .take(k.max(1) as usize)
        .map(|m| m.id.clone())
        .collect()
}

/// `U = max(desired, members) − ready`: every member that is not ready
/// counts, and so does capacity the group still has to launch. (Not
/// `desired − ready`: during a scale-in, when members outnumber the desired
/// capacity, that would let several members retire at once.)
pub fn unavailable(snapshot: &Snapshot) -> u32 {
    let ready = snapshot.members.iter().filter(|m| m.ready()).count() as u32;
    snapshot
        .desired_capacity
        .max(snapshot.members.len() as u32)
        .saturating_sub(ready)
}

/// The gate. `drift_age`: how long this instance has seen drift (`None`: no drift).
pub fn decide(
    snapshot: &Snapshot,
    me: &str,
    preferred: &BTreeMap<String, String>,
    policy: &Policy,
    drift_age: Option<Duration>,
    image: &ImageCheck,
) -> Decision {
    let Some(age) = drift_age else {
        return Decision::Wait(Wait::NoDrift);
    };
    match image {
        ImageCheck::Present => {}
        ImageCheck::Missing(i) => return Decision::Wait(Wait::ImageMissing(i.clone())),
        ImageCheck::Unknown(e) => return Decision::Wait(Wait::ImageUnknown(e.clone())),
    }
    if age < policy.drift_grace {
        return Decision::Wait(Wait::Grace(policy.drift_grace - age));
    }
    if policy.paused {
        return Decision::Wait(Wait::Paused);
    }
    let Some(my) = snapshot.members.iter().find(|m| m.id == me) else {
        return Decision::Wait(Wait::NotInGroup);
    };
    if !my.ready() {
        return Decision::Wait(Wait::NotReady);
    }
    let k = policy.max_unavailable.resolve(snapshot.desired_capacity);
    let u = unavailable(snapshot);
    if u >= k {
        return Decision::Wait(Wait::NoBudget {
            unavailable: u,
            max: k,
        });
    }
    let budget = k - u;
    let line = line(snapshot, preferred);
    let Some(pos) = line.iter().position(|m| m.id == me) else {
        // Ready but not drifted in the group's eyes (its versions tag lags): wait.
        return Decision::Wait(Wait::NotReady);
    };
    let position = pos as u32 + 1;
    if position <= budget {
        Decision::Retire
    } else {
        Decision::Wait(Wait::NotMyTurn {
            position,
            budget,
            head: line[0].id.clone(),
        })
    }
}

/// Where an agent stands, for the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Standing {
    /// Not drifted, or drifted but waiting on something other than its
    /// turn (image, pause, its own readiness): the at-rest schedule.
    AtRest,
    /// Waiting out the drift grace; this much is left.
    Grace(Duration),
    /// Waiting for its turn, estimated to come in this long.
    Turn(Duration),
}

/// What the schedule needs to know.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollInput {
    /// Members in the group.
    pub members: u32,
    /// `berth:max-unavailable`, resolved.
    pub k: u32,
    /// This instance's rank by (launch time, id) among members, 0 = oldest.
    pub rank: u32,
    pub standing: Standing,
    /// How long one retirement round takes (drain + boot of the replacement).
    pub round: Duration,
}

/// How long to sleep before the next look at the group (before jitter).
///
/// - At rest: `a · (1 + rank / k)` with
///   `a = clamp((k / rate) · (ln(1 + n / k) + γ), floor, 0.8 · round)`, so the
///   whole group makes about `rate` calls per second at any size (more only
///   when the budget is large, so that discovery never delays the first
///   windows), and the oldest members, who go first, look most often.
/// - Waiting out the drift grace: until it ends.
/// - Waiting for its turn: until the estimated turn (plus slack) when it is
///   within two rounds; half of it when further, to correct the estimate as
///   the rollout goes. Never sooner than `max(floor, k / window_rate)`, never
///   later than `max(10 min, n / back_of_line_rate)`.
pub fn next_poll(i: &PollInput) -> Duration {
    let k = i.k.max(1) as f64;
    let n = i.members.max(1) as f64;
    let floor = POLL_FLOOR;
    match i.standing {
        Standing::AtRest => {
            let budget_a = (k / GROUP_CALLS_PER_SEC) * ((1.0 + n / k).ln() + EULER_GAMMA);
            let a = budget_a
                .min(REST_MAX_FRACTION_OF_ROUND * i.round.as_secs_f64())
                .max(floor.as_secs_f64());
            Duration::from_secs_f64(a * (1.0 + i.rank as f64 / k))
        }
        Standing::Grace(left) => left.max(Duration::from_secs(1)),
        Standing::Turn(t) => {
            let window_floor = floor.max(Duration::from_secs_f64(k / WINDOW_CALLS_PER_SEC));
            let cap = DRIFTED_POLL_CAP.max(Duration::from_secs_f64(n / BACK_OF_LINE_CALLS_PER_SEC));
            let sleep = if t > i.round * 2 { t / 2 } else { t };
            sleep.max(window_floor).min(cap)
        }
    }
}

/// When this agent's turn can come, from one snapshot: `needed` more slots
/// must open. Slots open as not-ready members become ready (a booting
/// replacement at its launch plus `boot`; a draining one after its drain and
/// its replacement's boot); after those, one round per `k` slots.
pub fn turn_in(
    snapshot: &Snapshot,
    preferred: &BTreeMap<String, String>,
    needed: u32,
    k: u32,
    now_s: u64,
    boot: Duration,
    drain: Duration,
) -> Duration {
    let mut ready_at: Vec<u64> = snapshot
        .members
        .iter()
        .filter(|m| !m.ready())
        .map(|m| {
            if m.drifted(preferred, snapshot.cluster.as_deref()) {
                now_s + (drain + boot).as_secs()
            } else {
                (m.launch_time + boot.as_secs()).max(now_s)
            }
        })
        .collect();
    // Capacity the group has yet to launch becomes ready a boot from now.
    let missing = snapshot
        .desired_capacity
        .saturating_sub(snapshot.members.len() as u32);
    ready_at.extend(std::iter::repeat_n(
        now_s + boot.as_secs(),
        missing as usize,
    ));
    ready_at.sort_unstable();
    let needed = needed.max(1) as usize;
    let at = if needed <= ready_at.len() {
        ready_at[needed - 1]
    } else {
        let last = ready_at.last().copied().unwrap_or(now_s);
        let more = (needed - ready_at.len()).div_ceil(k.max(1) as usize) as u64;
        last + more * (drain + boot).as_secs()
    };
    Duration::from_secs(at.saturating_sub(now_s)) + READY_SLACK
}

/// The agent's side of the rollout, shared by the agent and the simulation:
/// remembers when drift was first seen and turns one snapshot into a
/// decision and the time of the next look.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// When this instance first saw its pin differ from the preferred versions (ms since the epoch).
    pub drift_since_ms: Option<u64>,
}

/// One look at the group.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// Now, in ms since the epoch.
    pub now_ms: u64,
    pub snapshot: &'a Snapshot,
    pub me: &'a str,
    /// This instance has drifted, by [`crate::desired::drift`].
    pub drifted: bool,
    pub preferred: &'a BTreeMap<String, String>,
    pub policy: &'a Policy,
    pub image: &'a ImageCheck,
    /// How long a member takes from launch to ready (observed or assumed).
    pub boot: Duration,
    /// How long a drain takes.
    pub drain: Duration,
}

impl Watch {
    /// Decides, and says when to look again (before jitter).
    pub fn observe(&mut self, o: &Observation<'_>) -> (Decision, Duration) {
        let drifted = o.drifted;
        self.drift_since_ms = match (drifted, self.drift_since_ms) {
            (false, _) => None,
            (true, None) => Some(o.now_ms),
            (true, since) => since,
        };
        let age = self
            .drift_since_ms
            .map(|s| Duration::from_millis(o.now_ms.saturating_sub(s)));
        let decision = decide(o.snapshot, o.me, o.preferred, o.policy, age, o.image);
        let mut order: Vec<&MemberView> = o.snapshot.members.iter().collect();
        order.sort_by(|a, b| (a.launch_time, &a.id).cmp(&(b.launch_time, &b.id)));
        let rank = order
            .iter()
            .position(|m| m.id == o.me)
            .unwrap_or(order.len()) as u32;
        let now_s = o.now_ms / 1000;
        let k = o
            .policy
            .max_unavailable
            .resolve(o.snapshot.desired_capacity);
        let standing = match &decision {
            Decision::Wait(Wait::Grace(left)) => Standing::Grace(*left),
            Decision::Wait(Wait::NotMyTurn { .. }) | Decision::Wait(Wait::NoBudget { .. }) => {
                let budget = k.saturating_sub(unavailable(o.snapshot));
                let line = line(o.snapshot, o.preferred);
                let position = line
                    .iter()
                    .position(|m| m.id == o.me)
                    .map_or(line.len() + 1, |p| p + 1) as u32;
                let needed = position.saturating_sub(budget);
                Standing::Turn(turn_in(
                    o.snapshot,
                    o.preferred,
                    needed,
                    k,
                    now_s,
                    o.boot,
                    o.drain,
                ))
            }
            _ => Standing::AtRest,
        };
        let next = next_poll(&PollInput {
            members: o.snapshot.members.len() as u32,
            k,
            rank,
            standing,
            round: o.boot + o.drain,
        });
        (decision, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> BTreeMap<String, String> {
        parse_versions(s).unwrap()
    }

    fn member(id: &str, launch: u64, ready: bool, versions: &str) -> MemberView {
        MemberView {
            id: id.into(),
            launch_time: launch,
            in_service: true,
            healthy: true,
            berth_state: Some(if ready { "ready" } else { "starting" }.into()),
            versions: Some(v(versions)),
            cluster: None,
        }
    }

    /// Defect: a `berth:cluster` change with the same versions showed drift
    /// in status but never retired. Drift is one rule: a member whose pinned
    /// cluster differs from the group's is in line like a version change.
    #[test]
    fn a_changed_cluster_with_the_same_versions_is_drift_and_retires() {
        let mut me = member("i-1", 10, true, OLD);
        me.cluster = Some("web".into());
        let mut other = member("i-2", 20, true, OLD);
        other.cluster = Some("web".into());
        let snap = Snapshot {
            desired_capacity: 2,
            members: vec![me, other],
            cluster: Some("api".into()),
        };
        let preferred = v(OLD);
        assert_eq!(line(&snap, &preferred).len(), 2);
        let d = decide(
            &snap,
            "i-1",
            &preferred,
            &Policy::default(),
            Some(DEFAULT_DRIFT_GRACE),
            &ImageCheck::Present,
        );
        assert_eq!(d, Decision::Retire);
        // Same cluster, same versions: nobody is in line.
        let same = Snapshot {
            cluster: Some("web".into()),
            ..snap
        };
        assert!(line(&same, &preferred).is_empty());
    }

    fn fleet(desired: u32, members: Vec<MemberView>) -> Snapshot {
        Snapshot {
            desired_capacity: desired,
            members,
            cluster: None,
        }
    }

    const OLD: &str = "web=1";
    const NEW: &str = "web=2";

    fn base() -> Snapshot {
        fleet(
            4,
            vec![
                member("i-a", 100, true, OLD),
                member("i-b", 200, true, OLD),
                member("i-c", 300, true, OLD),
                member("i-d", 300, true, OLD),
            ],
        )
    }

    fn go(s: &Snapshot, me: &str, policy: Policy) -> Decision {
        decide(
            s,
            me,
            &v(NEW),
            &policy,
            Some(Duration::from_secs(3600)),
            &ImageCheck::Present,
        )
    }

    #[test]
    fn gate_table() {
        let p = Policy::default();
        let p2 = Policy {
            max_unavailable: MaxUnavailable::Count(2),
            ..p
        };
        let mut booting = base();
        booting.members[0] = member("i-new", 900, false, NEW);
        let mut replaced = base();
        replaced.members[0] = member("i-new", 900, true, NEW);
        let cases: Vec<(&str, Snapshot, &str, Policy, Decision)> = vec![
            ("oldest goes first", base(), "i-a", p, Decision::Retire),
            (
                "second waits its turn",
                base(),
                "i-b",
                p,
                Decision::Wait(Wait::NotMyTurn {
                    position: 2,
                    budget: 1,
                    head: "i-a".into(),
                }),
            ),
            ("k=2: second goes too", base(), "i-b", p2, Decision::Retire),
            (
                "k=2: third waits",
                base(),
                "i-c",
                p2,
                Decision::Wait(Wait::NotMyTurn {
                    position: 3,
                    budget: 2,
                    head: "i-a".into(),
                }),
            ),
            (
                "ties break by id",
                base(),
                "i-c",
                Policy {
                    max_unavailable: MaxUnavailable::Count(3),
                    ..p
                },
                Decision::Retire,
            ),
            (
                "a booting replacement uses the budget",
                booting.clone(),
                "i-b",
                p,
                Decision::Wait(Wait::NoBudget {
                    unavailable: 1,
                    max: 1,
                }),
            ),
            (
                "the replacement ready: next one goes",
                replaced,
                "i-b",
                p,
                Decision::Retire,
            ),
            (
                "paused",
                base(),
                "i-a",
                Policy { paused: true, ..p },
                Decision::Wait(Wait::Paused),
            ),
            (
                "not a member",
                base(),
                "i-zzz",
                p,
                Decision::Wait(Wait::NotInGroup),
            ),
            (
                "percent rounds down, at least 1",
                base(),
                "i-b",
                Policy {
                    max_unavailable: MaxUnavailable::Percent(10),
                    ..p
                },
                Decision::Wait(Wait::NotMyTurn {
                    position: 2,
                    budget: 1,
                    head: "i-a".into(),
                }),
            ),
            (
                "50% of 4 is 2",
                base(),
                "i-b",
                Policy {
                    max_unavailable: MaxUnavailable::Percent(50),
                    ..p
                },
                Decision::Retire,
            ),
        ];
        for (what, s, me, pol, want) in cases {
            assert_eq!(go(&s, me, pol), want, "{what}");
        }
    }

    #[test]
    fn gate_waits_on_drift_image_grace_and_readiness() {
        let s = base();
        let p = Policy::default();
        let pref = v(NEW);
        assert_eq!(
            decide(&s, "i-a", &pref, &p, None, &ImageCheck::Present),
            Decision::Wait(Wait::NoDrift)
        );
        assert_eq!(
            decide(
                &s,
                "i-a",
                &pref,
                &p,
                Some(Duration::from_secs(999)),
                &ImageCheck::Missing("web:2".into())
            ),
            Decision::Wait(Wait::ImageMissing("web:2".into()))
        );
        assert!(matches!(
            decide(
                &s,
                "i-a",
                &pref,
                &p,
                Some(Duration::from_secs(999)),
                &ImageCheck::Unknown("down".into())
            ),
            Decision::Wait(Wait::ImageUnknown(_))
        ));
        assert_eq!(
            decide(
                &s,
                "i-a",
                &pref,
                &p,
                Some(Duration::from_secs(20)),
                &ImageCheck::Present
            ),
            Decision::Wait(Wait::Grace(Duration::from_secs(40)))
        );
        let mut degraded = base();
        degraded.members[0].berth_state = Some("degraded".into());
        assert_eq!(go(&degraded, "i-a", p), Decision::Wait(Wait::NotReady));
        // An unhealthy member counts as unavailable.
        let mut sick = base();
        sick.members[3].healthy = false;
        assert_eq!(
            go(&sick, "i-a", p),
            Decision::Wait(Wait::NoBudget {
                unavailable: 1,
                max: 1
            })
        );
        // Extra capacity during a scale-in never raises the budget above k.
        let mut extra = base();
        extra.desired_capacity = 3;
        assert_eq!(unavailable(&extra), 0);
        assert_eq!(
            go(&extra, "i-b", p),
            Decision::Wait(Wait::NotMyTurn {
                position: 2,
                budget: 1,
                head: "i-a".into()
            })
        );
    }

    #[test]
    fn policy_tags() {
        let t = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(policy_from_tags(&t(&[])).unwrap(), Policy::default());
        let p = policy_from_tags(&t(&[
            (TAG_MAX_UNAVAILABLE, "10%"),
            (TAG_DRIFT_GRACE, "5m"),
            (TAG_PAUSED, "true"),
        ]))
        .unwrap();
        assert_eq!(p.max_unavailable, MaxUnavailable::Percent(10));
        assert_eq!(p.drift_grace, Duration::from_secs(300));
        assert!(p.paused);
        let e = policy_from_tags(&t(&[
            (TAG_MAX_UNAVAILABLE, "0"),
            (TAG_DRIFT_GRACE, "soon"),
            (TAG_PAUSED, "maybe"),
        ]))
        .unwrap_err();
        let tags: Vec<&str> = e.iter().map(|e| e.tag.as_str()).collect();
        assert_eq!(tags, vec![TAG_MAX_UNAVAILABLE, TAG_DRIFT_GRACE, TAG_PAUSED]);
        assert!(policy_from_tags(&t(&[(TAG_MAX_UNAVAILABLE, "150%")])).is_err());
        assert_eq!(MaxUnavailable::Percent(10).resolve(1000), 100);
        assert_eq!(MaxUnavailable::Percent(10).resolve(5), 1);
    }

    #[test]
    fn schedule_spends_about_one_call_per_second_per_group_at_rest() {
        let round = Duration::from_secs(150);
        let rate = |n: u32, k: u32| -> f64 {
            (0..n)
                .map(|rank| {
                    let d = next_poll(&PollInput {
                        members: n,
                        k,
                        rank,
                        standing: Standing::AtRest,
                        round,
                    });
                    1.0 / d.as_secs_f64()
                })
                .sum()
        };
        for (n, k) in [(10u32, 1u32), (100, 1), (100, 10), (1000, 1)] {
            let r = rate(n, k);
            assert!(r <= GROUP_CALLS_PER_SEC * 1.05, "n={n} k={k}: {r} calls/s");
        }
        // A large budget trades calls for discovery: nobody waits past 0.8 of a round first.
        let first = next_poll(&PollInput {
            members: 1000,
            k: 100,
            rank: 0,
            standing: Standing::AtRest,
            round,
        });
        assert_eq!(first, Duration::from_secs(120));
        assert!(rate(1000, 100) < 3.0);
    }

    #[test]
    fn schedule_when_drifted() {
        let at = |k: u32, standing: Standing| {
            next_poll(&PollInput {
                members: 100,
                k,
                rank: 50,
                standing,
                round: Duration::from_secs(150),
            })
        };
        assert_eq!(
            at(10, Standing::Grace(Duration::from_secs(12))),
            Duration::from_secs(12)
        );
        assert_eq!(
            at(10, Standing::Turn(Duration::from_secs(40))),
            Duration::from_secs(40)
        );
        // Far away: half, to correct the estimate as the rollout goes.
        assert_eq!(
            at(10, Standing::Turn(Duration::from_secs(1000))),
            Duration::from_secs(500)
        );
        // Never sooner than the window floor, which scales with k.
        assert_eq!(at(10, Standing::Turn(Duration::from_secs(1))), POLL_FLOOR);
        assert_eq!(
            at(100, Standing::Turn(Duration::from_secs(1))),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn turn_estimates_follow_the_slots() {
        let pref = v(NEW);
        let (boot, drain) = (Duration::from_secs(120), Duration::from_secs(30));
        let mut s = base();
        // i-a was replaced 20 s ago by a booting i-new; i-b drains.
        s.members[0] = member("i-new", 980, false, NEW);
        s.members[1].berth_state = Some("retiring".into());
        let now = 1000;
        // First slot: i-new ready at 980 + 120 = 1100.
        assert_eq!(
            turn_in(&s, &pref, 1, 2, now, boot, drain),
            Duration::from_secs(100) + READY_SLACK
        );
        // Second: i-b's replacement, a drain and a boot from now.
        assert_eq!(
            turn_in(&s, &pref, 2, 2, now, boot, drain),
            Duration::from_secs(150) + READY_SLACK
        );
        // Beyond the known slots: whole rounds of k.
        assert_eq!(
            turn_in(&s, &pref, 4, 2, now, boot, drain),
            Duration::from_secs(300) + READY_SLACK
        );
    }

    #[test]
    fn scale_in_never_lets_two_retire_at_once() {
        // 3 ready members, desired 2, k = 1: the oldest may go ...
        let mut s = fleet(
            2,
            vec![
                member("i-a", 1, true, OLD),
                member("i-b", 2, true, OLD),
                member("i-c", 3, true, OLD),
            ],
        );
        assert_eq!(go(&s, "i-a", Policy::default()), Decision::Retire);
        // ... and once it drains, nobody else may.
        s.members[0].berth_state = Some("retiring".into());
        assert_eq!(unavailable(&s), 1);
        assert_eq!(
            go(&s, "i-b", Policy::default()),
            Decision::Wait(Wait::NoBudget {
                unavailable: 1,
                max: 1
            })
        );
    }
}
