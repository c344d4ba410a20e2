//! The rollout gate and the polling schedule: pure functions over one
//! snapshot of the group, so a table test, a property test or a simulation
//! can call them a million times.
//!
//! # The gate
//!
//! [`decide`] says [`Decision::Retire`] only if all hold, from one snapshot:
//! this instance has drifted; the new preferred images exist in their
//! registries; the drift has lasted `berth:drift-grace`; the group is not
//! `berth:paused`; no alarm of `berth:halt-on-alarms` is in ALARM (and they
//! could be read); the rollout is not [`halted`]; this instance is itself
//! ready; the canary, if any, has baked or this instance is among its first
//! `berth:canary` places ([`canary_hold`]); the budget `k − U > 0`, where
//! `k` = `berth:max-unavailable` and `U = max(desired, members) − ready`
//! (with a bake time and no canary, a new member counts as ready only once
//! baked: [`budget_unavailable`]); and this instance is among the first
//! `budget` drifted, ready members ordered by (launch time, instance id).
//! Anything missing or unreadable means wait.
//!
//! Why no coordinator is needed: when `r` members ahead of this one retire,
//! a later snapshot shows them unavailable (`U + r`) and gone from the line
//! (`p − r`), so `p ≤ k − U` is unchanged. Agents reading snapshots of
//! different ages agree on who may go; an older snapshot is only more
//! conservative. The canary rule is a position rule of the same kind.
//!
//! When the rollout halts and `berth:auto-rollback` is set, [`rollback`]
//! names one writer, the oldest ready member on the old versions, and the
//! tags it sets: its own pin.
//!
//! # The schedule and the doorbell
//!
//! AWS throttles per account and region, so [`next_poll`] spends a small
//! fixed budget per group at rest: the oldest member (first in line when a
//! version changes) reads the group every `berth:rest-poll`, the others on
//! a squared backstop. The `berth:nudge` instance tag, read through IMDS
//! for free, is a doorbell: whoever sees a change rings the members not yet
//! told of it ([`ring_unaware`]), a retiring member and a replacement that
//! becomes ready each ring the one member whose turn they open
//! ([`ring_on_retire`], [`ring_on_ready`]), and a rung member looks at its
//! place or at its estimated turn ([`on_ring`]). Once drifted, an agent
//! sleeps until its estimated turn. A nudge is only a hint: every decision
//! is the gate's, from a fresh snapshot.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use crate::desired::{TagError, check_version};
use crate::tags::{InstanceState, TAG_VERSION, TAG_VERSION_PREFIX, TERMINATING_STATE_PREFIX};

pub use crate::tags::{
    TAG_AUTO_ROLLBACK, TAG_BAKE_TIME, TAG_CANARY, TAG_DRIFT_GRACE, TAG_HALT_ON_ALARMS,
    TAG_MAX_UNAVAILABLE, TAG_NUDGE, TAG_PAUSED, TAG_PROGRESS_DEADLINE, TAG_READY_SINCE,
    TAG_REST_POLL, TAG_ROLLED_BACK_FROM, TAG_STATE, TAG_VERSIONS,
};

/// Default drift grace.
pub const DEFAULT_DRIFT_GRACE: Duration = Duration::from_secs(60);
/// No agent polls more often than this.
pub const POLL_FLOOR: Duration = Duration::from_secs(5);
/// Agents waiting for their turn share at least this many calls per second,
/// so a large budget does not become a burst: their floor is `k / rate`.
pub const WINDOW_CALLS_PER_SEC: f64 = 10.0;
/// Slack added to the estimated moment of an agent's turn.
pub const READY_SLACK: Duration = Duration::from_secs(3);
/// Drifted agents far back in line together make at most this many calls per
/// second: their cap is `max(DRIFTED_POLL_CAP, n / rate)`.
pub const BACK_OF_LINE_CALLS_PER_SEC: f64 = 0.25;
/// With the doorbell the members ahead ring a waiting member when its turn
/// comes, so the back of the line re-estimates less often: together at
/// most this many calls per second.
pub const BACK_OF_LINE_CALLS_PER_SEC_RUNG: f64 = 0.05;
/// At rest, no agent sleeps longer than this between looks: the backstop
/// of the backstop (a member whose rank is stale re-learns it).
pub const REST_POLL_CAP: Duration = Duration::from_secs(24 * 3600);
/// Members rung together look at most this many per second
/// ([`nudged_look_in`]).
pub const NUDGE_LOOKS_PER_SEC_MAX: f64 = 4.0;
/// At rest, intervals are this fraction of their nominal value, so that
/// with the agent's ±10 % jitter the oldest member still looks within one
/// `berth:rest-poll`.
pub const REST_JITTER_MARGIN: f64 = 0.9;
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

/// Default `berth:progress-deadline`.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// The shortest `berth:progress-deadline`: no instance boots faster, and a
/// shorter one would halt (and with `berth:auto-rollback`, revert) every
/// rollout as soon as its first replacement launched.
pub const MIN_PROGRESS_DEADLINE: Duration = Duration::from_secs(60);
/// Default `berth:rest-poll`.
pub const DEFAULT_REST_POLL: Duration = Duration::from_secs(5 * 60);
/// The shortest `berth:rest-poll`.
pub const MIN_REST_POLL: Duration = Duration::from_secs(10);
/// At most this many entries in `berth:halt-on-alarms`.
pub const MAX_HALT_ALARMS: usize = 100;
/// The longest CloudWatch alarm name (or name prefix), in characters.
pub const MAX_ALARM_NAME_CHARS: usize = 255;
/// `DescribeAlarms` takes at most this many `AlarmNames` per request.
pub const MAX_ALARM_NAMES_PER_REQUEST: usize = 100;
/// The CloudWatch alarm state that holds a rollout (`OK` and
/// `INSUFFICIENT_DATA` do not).
pub const ALARM_STATE_ALARM: &str = "ALARM";

/// The rollout settings, from the group's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub max_unavailable: MaxUnavailable,
    pub drift_grace: Duration,
    pub paused: bool,
    /// `berth:canary`: the first this many replacements go, then nobody
    /// else until this many members on the preferred versions are baked
    /// (0: off).
    pub canary: u32,
    /// `berth:bake-time`: how long a member on the preferred versions must
    /// have been ready to count as baked (0: off).
    pub bake_time: Duration,
    /// `berth:halt-on-alarms`: alarm names; an entry ending in `*` is a
    /// prefix. Each is non-empty, at most [`MAX_ALARM_NAME_CHARS`] long
    /// without the `*`; at most [`MAX_HALT_ALARMS`] entries.
    pub halt_on_alarms: Vec<String>,
    /// `berth:auto-rollback`: revert the version tags when the rollout halts.
    pub auto_rollback: bool,
    /// `berth:progress-deadline`: a member on the preferred versions not
    /// ready this long after its launch halts the rollout. At least
    /// [`MIN_PROGRESS_DEADLINE`].
    pub progress_deadline: Duration,
    /// `berth:rest-poll`: the whole group's backstop poll interval at rest.
    /// At least [`MIN_REST_POLL`].
    pub rest_poll: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_unavailable: MaxUnavailable::Count(1),
            drift_grace: DEFAULT_DRIFT_GRACE,
            paused: false,
            canary: 0,
            bake_time: Duration::ZERO,
            halt_on_alarms: Vec::new(),
            auto_rollback: false,
            progress_deadline: DEFAULT_PROGRESS_DEADLINE,
            rest_poll: DEFAULT_REST_POLL,
        }
    }
}

/// Reads the rollout settings from the group's tags, naming every bad tag.
/// A bad value is never replaced by its default: the caller waits.
pub fn policy_from_tags(tags: &BTreeMap<String, String>) -> Result<Policy, Vec<TagError>> {
    let mut p = Policy::default();
    let mut errors = Vec::new();
    let mut bad = |tag: &str, message: String| {
        errors.push(TagError {
            tag: tag.into(),
            message,
        })
    };
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
            None => bad(
                TAG_MAX_UNAVAILABLE,
                format!("{v:?} is not a count (\"2\") or a percent (\"10%\") of at least 1"),
            ),
        }
    }
    if let Some(v) = tags.get(TAG_DRIFT_GRACE) {
        match humantime::parse_duration(v.trim()) {
            Ok(d) => p.drift_grace = d,
            Err(e) => bad(
                TAG_DRIFT_GRACE,
                format!("{v:?} is not a duration like \"60s\" or \"5m\": {e}"),
            ),
        }
    }
    if let Some(v) = tags.get(TAG_PAUSED) {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => p.paused = true,
            "false" | "no" | "0" | "" => p.paused = false,
            _ => bad(TAG_PAUSED, format!("{v:?} is not true or false")),
        }
    }
    if let Some(v) = tags.get(TAG_CANARY) {
        match v.trim().parse::<u32>() {
            Ok(n) => p.canary = n,
            Err(_) => bad(
                TAG_CANARY,
                format!("{v:?} is not a count of replacements (\"0\" is off)"),
            ),
        }
    }
    let mut duration = |tag: &str, min: Duration, into: &mut Duration| {
        if let Some(v) = tags.get(tag) {
            match humantime::parse_duration(v.trim()) {
                Ok(d) if d >= min => *into = d,
                Ok(_) => bad(
                    tag,
                    format!(
                        "{v:?} is shorter than the minimum, {}",
                        humantime::format_duration(min)
                    ),
                ),
                Err(e) => bad(
                    tag,
                    format!("{v:?} is not a duration like \"10m\" or \"1h\": {e}"),
                ),
            }
        }
    };
    duration(TAG_BAKE_TIME, Duration::ZERO, &mut p.bake_time);
    duration(
        TAG_PROGRESS_DEADLINE,
        MIN_PROGRESS_DEADLINE,
        &mut p.progress_deadline,
    );
    duration(TAG_REST_POLL, MIN_REST_POLL, &mut p.rest_poll);
    if let Some(v) = tags.get(TAG_HALT_ON_ALARMS) {
        match parse_alarm_entries(v) {
            Ok(a) => p.halt_on_alarms = a,
            Err(m) => bad(TAG_HALT_ON_ALARMS, m),
        }
    }
    if let Some(v) = tags.get(TAG_AUTO_ROLLBACK) {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" => p.auto_rollback = true,
            "false" => p.auto_rollback = false,
            _ => bad(
                TAG_AUTO_ROLLBACK,
                format!("{v:?} is not \"true\" or \"false\""),
            ),
        }
    }
    if let Some(v) = tags.get(TAG_ROLLED_BACK_FROM) {
        let ok = parse_versions(v)
            .is_some_and(|m| !m.is_empty() && m.values().all(|v| check_version(v).is_ok()));
        if !ok {
            bad(
                TAG_ROLLED_BACK_FROM,
                format!("{v:?} is not a list of versions like \"web=1.4.2,proxy=0.9.1\""),
            );
        }
    }
    if errors.is_empty() {
        Ok(p)
    } else {
        Err(errors)
    }
}

/// Parses `berth:halt-on-alarms`: comma-separated entries, each an alarm
/// name or a prefix ending in `*`, naming every bad entry.
fn parse_alarm_entries(v: &str) -> Result<Vec<String>, String> {
    let entries: Vec<&str> = v.split(',').map(str::trim).collect();
    let mut problems = Vec::new();
    if entries.len() > MAX_HALT_ALARMS {
        problems.push(format!(
            "{} entries, at most {MAX_HALT_ALARMS}",
            entries.len()
        ));
    }
    for e in &entries {
        let name = e.strip_suffix('*').unwrap_or(e);
        if name.is_empty() {
            problems.push(format!(
                "empty entry {e:?} (remove the tag to watch no alarms; a prefix needs a character before '*')"
            ));
        } else if name.contains('*') {
            problems.push(format!("{e:?}: '*' may only end an entry"));
        } else if name.chars().count() > MAX_ALARM_NAME_CHARS {
            problems.push(format!(
                "{e:?} is longer than {MAX_ALARM_NAME_CHARS} characters"
            ));
        } else if name.chars().any(char::is_control) {
            problems.push(format!("{e:?} contains a control character"));
        }
    }
    if problems.is_empty() {
        Ok(entries.into_iter().map(str::to_string).collect())
    } else {
        Err(problems.join("; "))
    }
}

/// Formats versions as the `berth:versions` and `berth:rolled-back-from`
/// tags hold them (`proxy=0.9.1,web=1.4.2`); [`parse_versions`] reads it back.
pub fn format_versions(versions: &BTreeMap<String, String>) -> String {
    versions
        .iter()
        .map(|(c, v)| format!("{c}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a `berth:ready-since` tag (RFC 3339 in UTC, `2025-01-31T12:00:00Z`)
/// as seconds since the epoch; `None` if it does not parse.
pub fn parse_ready_since(tag: &str) -> Option<u64> {
    humantime::parse_rfc3339(tag.trim())
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// The `berth:ready-since` value an agent writes when it becomes ready at
/// `secs` since the epoch.
pub fn format_ready_since(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Whether a member's launch lifecycle hook was abandoned, as far as a
/// snapshot can tell: its lifecycle state is `Terminating…` (where Auto
/// Scaling sends a member whose launch hook is abandoned) and it never
/// reported ready (no `berth:ready-since`). A member on the preferred
/// versions removed by a scale-in before it was ever ready looks the same
/// and halts the rollout too: agents wait and, with `berth:auto-rollback`,
/// roll back. (A member whose agent could not write `berth:ready-since`
/// looks abandoned when it leaves, for the same reason.)
pub fn launch_abandoned(lifecycle_state: &str, ready_since: Option<u64>) -> bool {
    lifecycle_state.starts_with(TERMINATING_STATE_PREFIX) && ready_since.is_none()
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
    /// When it last became ready: its `berth:ready-since` tag, in seconds
    /// since the epoch (`None`: no tag, or one that does not parse).
    pub ready_since: Option<u64>,
    /// Its launch lifecycle hook was abandoned ([`launch_abandoned`]).
    pub abandoned: bool,
    /// Its `berth:nudge` tag ([`carries_mark`]).
    pub nudge: Option<String>,
}

impl MemberView {
    /// InService, Healthy and tagged `berth:state=ready`.
    pub fn ready(&self) -> bool {
        self.in_service
            && self.healthy
            && self.berth_state.as_deref() == Some(InstanceState::Ready.as_str())
    }

    /// Ready, and ready since at least `bake` ago (with `bake` zero, ready
    /// is enough). A member without a readable `berth:ready-since` is never
    /// baked.
    pub fn baked(&self, bake: Duration, now_s: u64) -> bool {
        self.ready()
            && (bake.is_zero()
                || self
                    .ready_since
                    .is_some_and(|t| t.saturating_add(bake.as_secs()) <= now_s))
    }

    /// Tagged `berth:state` `retiring` or `draining`: on its way out.
    pub fn leaving(&self) -> bool {
        matches!(
            self.berth_state.as_deref(),
            Some(s) if s == InstanceState::Retiring.as_str() || s == InstanceState::Draining.as_str()
        )
    }

    /// Runs exactly the preferred versions, in the group's cluster (as far
    /// as its tags tell).
    pub fn on_preferred(
        &self,
        preferred: &BTreeMap<String, String>,
        cluster: Option<&str>,
    ) -> bool {
        self.versions.as_ref() == Some(preferred) && !self.drifted(preferred, cluster)
    }

    /// Runs versions other than `preferred`, or a cluster other than the
    /// group's (unknown versions or clusters are not drift): the same rule
    /// as [`crate::desired::drift`], read from the member's tags.
    pub fn drifted(&self, preferred: &BTreeMap<String, String>, cluster: Option<&str>) -> bool {
        let versions = self.versions.as_ref().is_some_and(|v| v != preferred);
        versions || self.moved(cluster)
    }

    /// Pinned to another cluster than the group's (both known).
    fn moved(&self, cluster: Option<&str>) -> bool {
        matches!((self.cluster.as_deref(), cluster), (Some(a), Some(b)) if a != b)
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

/// The state of the alarms of `berth:halt-on-alarms`, read just before the
/// gate decides (see [`alarm_requests`] and [`alarm_check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlarmCheck {
    /// No alarms were read. Only right when `berth:halt-on-alarms` is unset:
    /// with alarms configured, the gate treats it as unknown and waits.
    NotConfigured,
    /// No alarm is in ALARM.
    Clear,
    /// These alarms are in ALARM: wait.
    InAlarm(Vec<String>),
    /// Could not tell (CloudWatch unreachable, an alarm not found): wait.
    Unknown(String),
}

/// One `DescribeAlarms` request (for both metric and composite alarms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlarmRequest {
    /// `AlarmNames`: at most [`MAX_ALARM_NAMES_PER_REQUEST`].
    Names(Vec<String>),
    /// `AlarmNamePrefix`: one per request.
    Prefix(String),
}

/// The `DescribeAlarms` requests that read every alarm of
/// `berth:halt-on-alarms` ([`Policy::halt_on_alarms`]): the names in batches
/// of [`MAX_ALARM_NAMES_PER_REQUEST`], then one request per prefix, without
/// duplicates. No entries, no requests.
pub fn alarm_requests(entries: &[String]) -> Vec<AlarmRequest> {
    let mut names: Vec<String> = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    for e in entries {
        match e.strip_suffix('*') {
            Some(p) if !prefixes.iter().any(|x| x == p) => prefixes.push(p.to_string()),
            Some(_) => {}
            None if !names.contains(e) => names.push(e.clone()),
            None => {}
        }
    }
    names
        .chunks(MAX_ALARM_NAMES_PER_REQUEST)
        .map(|c| AlarmRequest::Names(c.to_vec()))
        .chain(prefixes.into_iter().map(AlarmRequest::Prefix))
        .collect()
}

/// Judges what the [`alarm_requests`] returned, as (alarm name, state
/// value) pairs: any in `ALARM` holds the rollout; a named alarm that does
/// not exist, or a prefix that matches none, is unknown (a typo must not
/// silently turn the protection off).
pub fn alarm_check(entries: &[String], found: &[(String, String)]) -> AlarmCheck {
    if entries.is_empty() {
        return AlarmCheck::NotConfigured;
    }
    let watched = |name: &str| {
        entries.iter().any(|e| match e.strip_suffix('*') {
            Some(p) => name.starts_with(p),
            None => name == e,
        })
    };
    let mut missing = Vec::new();
    for e in entries {
        let seen = match e.strip_suffix('*') {
            Some(p) => found.iter().any(|(n, _)| n.starts_with(p)),
            None => found.iter().any(|(n, _)| n == e),
        };
        if !seen {
            missing.push(e.as_str());
        }
    }
    if !missing.is_empty() {
        return AlarmCheck::Unknown(format!("no alarm named {}", missing.join(", ")));
    }
    let mut firing: Vec<String> = found
        .iter()
        .filter(|(n, state)| state == ALARM_STATE_ALARM && watched(n))
        .map(|(n, _)| n.clone())
        .collect();
    firing.sort();
    firing.dedup();
    if firing.is_empty() {
        AlarmCheck::Clear
    } else {
        AlarmCheck::InAlarm(firing)
    }
}

/// What the agent checked outside the group's snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Checks<'a> {
    /// The new preferred images.
    pub image: &'a ImageCheck,
    /// The alarms of `berth:halt-on-alarms`.
    pub alarms: &'a AlarmCheck,
}

/// Why a rollout is halted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaltReason {
    /// Its Auto Scaling health status is `Unhealthy`.
    Unhealthy,
    /// Its launch lifecycle hook was abandoned ([`launch_abandoned`]).
    LaunchAbandoned,
    /// Not ready `berth:progress-deadline` after its launch.
    Deadline(Duration),
}

/// A member on the preferred versions that shows the new versions fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    pub member: String,
    pub reason: HaltReason,
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.member;
        match &self.reason {
            HaltReason::Unhealthy => {
                write!(f, "{m} on the preferred versions is Unhealthy")
            }
            HaltReason::LaunchAbandoned => write!(
                f,
                "{m} on the preferred versions left the group before it was ever ready (launch hook abandoned)"
            ),
            HaltReason::Deadline(d) => write!(
                f,
                "{m} on the preferred versions is not ready {} after its launch ({TAG_PROGRESS_DEADLINE})",
                humantime::format_duration(*d)
            ),
        }
    }
}

/// Whether the rollout is halted: a member on the preferred versions is
/// `Unhealthy`, abandoned its launch hook, or is not ready
/// `berth:progress-deadline` after its launch (unless it is leaving on
/// purpose: `retiring` or `draining`). The oldest such member, by (launch
/// time, id), is named. Every agent computes the same answer from the same
/// snapshot; a halted rollout stays halted until the member is gone or
/// recovers, or the preferred versions change.
pub fn halted(
    snapshot: &Snapshot,
    preferred: &BTreeMap<String, String>,
    policy: &Policy,
    now_s: u64,
) -> Option<Halt> {
    let deadline = policy.progress_deadline.as_secs();
    let mut bad: Vec<(&MemberView, HaltReason)> = snapshot
        .members
        .iter()
        .filter(|m| m.on_preferred(preferred, snapshot.cluster.as_deref()))
        .filter_map(|m| {
            let reason = if !m.healthy {
                HaltReason::Unhealthy
            } else if m.abandoned {
                HaltReason::LaunchAbandoned
            } else if !m.ready() && !m.leaving() && m.launch_time.saturating_add(deadline) <= now_s
            {
                HaltReason::Deadline(policy.progress_deadline)
            } else {
                return None;
            };
            Some((m, reason))
        })
        .collect();
    bad.sort_by(|(a, _), (b, _)| (a.launch_time, &a.id).cmp(&(b.launch_time, &b.id)));
    bad.into_iter().next().map(|(m, reason)| Halt {
        member: m.id.clone(),
        reason,
    })
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
    /// These alarms of `berth:halt-on-alarms` are in ALARM.
    Alarm(Vec<String>),
    /// The alarms of `berth:halt-on-alarms` could not be read.
    AlarmUnknown(String),
    /// The rollout is [`halted`].
    Halted(Halt),
    /// This instance is not in the snapshot.
    NotInGroup,
    /// This instance is not ready itself; it holds no place in line.
    NotReady,
    /// The canary holds: `started` of the first `canary` replacements have
    /// started, and only `baked` members on the preferred versions have
    /// been ready for `bake_time`.
    Canary {
        canary: u32,
        started: u32,
        baked: u32,
        bake_time: Duration,
    },
    /// The budget is spent on members on the preferred versions that have
    /// not been ready for `berth:bake-time` yet; `member` bakes first, in
    /// `left` (`None`: it has no readable `berth:ready-since`).
    Baking {
        member: String,
        left: Option<Duration>,
    },
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

/// A duration to the second, for messages.
fn secs(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::NoDrift => write!(f, "no drift"),
            Wait::ImageMissing(i) => {
                write!(f, "the preferred image {i} does not exist in its registry")
            }
            Wait::ImageUnknown(e) => write!(f, "cannot check the preferred image: {e}"),
            Wait::Grace(left) => write!(f, "drift grace: {} left", secs(*left)),
            Wait::Paused => write!(f, "the group is paused ({TAG_PAUSED})"),
            Wait::Alarm(names) => write!(
                f,
                "alarm in ALARM ({TAG_HALT_ON_ALARMS}): {}",
                names.join(", ")
            ),
            Wait::AlarmUnknown(e) => {
                write!(f, "cannot check the alarms of {TAG_HALT_ON_ALARMS}: {e}")
            }
            Wait::Halted(h) => write!(f, "rollout halted: {h}"),
            Wait::NotInGroup => write!(f, "this instance is not in the group's snapshot"),
            Wait::NotReady => write!(f, "this instance is not ready; it holds no place in line"),
            Wait::Canary {
                canary,
                started,
                baked,
                bake_time,
            } => {
                write!(f, "canary ({TAG_CANARY}={canary}): the others wait until ")?;
                if bake_time.is_zero() {
                    write!(f, "the canary is ready")?;
                } else {
                    write!(f, "the canary has been ready for {}", secs(*bake_time))?;
                }
                write!(f, " ({baked} of {canary} baked, {started} started)")
            }
            Wait::Baking { member, left } => match left {
                Some(left) => write!(
                    f,
                    "bake time ({TAG_BAKE_TIME}): {member} on the preferred versions counts as ready in {}",
                    secs(*left)
                ),
                None => write!(
                    f,
                    "bake time ({TAG_BAKE_TIME}): {member} on the preferred versions has no readable {TAG_READY_SINCE} tag"
                ),
            },
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

/// `U` as the budget counts it. Without `berth:bake-time`, or with a canary
/// (which then does the baking: [`canary_hold`]), it is [`unavailable`].
/// With a bake time and no canary, a member on the preferred versions counts
/// as ready only once [baked](MemberView::baked), like Kubernetes'
/// `minReadySeconds`: a version that crashes a minute after it starts keeps
/// using the budget until it has proven itself, so at most `k` replacements
/// run it. The position rule stays safe: a member turns baked only as time
/// passes, the way a booting one turns ready, and a stale snapshot judged at
/// the current time reads the same `berth:ready-since`.
pub fn budget_unavailable(
    snapshot: &Snapshot,
    preferred: &BTreeMap<String, String>,
    policy: &Policy,
    now_s: u64,
) -> u32 {
    if policy.bake_time.is_zero() || policy.canary > 0 {
        return unavailable(snapshot);
    }
    let cluster = snapshot.cluster.as_deref();
    let ready = snapshot
        .members
        .iter()
        .filter(|m| {
            m.ready() && (!m.on_preferred(preferred, cluster) || m.baked(policy.bake_time, now_s))
        })
        .count() as u32;
    snapshot
        .desired_capacity
        .max(snapshot.members.len() as u32)
        .saturating_sub(ready)
}

/// The member on the preferred versions that is ready but not yet baked and
/// bakes first, and how long it has left (`None`: no readable
/// `berth:ready-since`, it never bakes as things stand).
fn first_to_bake(
    snapshot: &Snapshot,
    preferred: &BTreeMap<String, String>,
    bake: Duration,
    now_s: u64,
) -> Option<(String, Option<Duration>)> {
    let cluster = snapshot.cluster.as_deref();
    snapshot
        .members
        .iter()
        .filter(|m| m.ready() && m.on_preferred(preferred, cluster) && !m.baked(bake, now_s))
        .map(|m| {
            let done = m.ready_since.map(|t| t.saturating_add(bake.as_secs()));
            (done.is_none(), done, m.launch_time, &m.id)
        })
        .min()
        .map(|(_, done, _, id)| {
            (
                id.clone(),
                done.map(|d| Duration::from_secs(d.saturating_sub(now_s))),
            )
        })
}

/// The canary rule, with `n` = `berth:canary` > 0: until `n` members on the
/// preferred versions are [baked](MemberView::baked) (ready for
/// `berth:bake-time`; ready is enough without one), a drifted member may
/// retire only if `q ≤ n − started`, where
///
/// - `started` counts the places already spent on the new versions: members
///   on the preferred versions, drifted members leaving (`retiring`,
///   `draining`), members whose versions are not known yet (a replacement
///   before its first tags), and capacity the group has yet to launch
///   (`desired − members`, when positive);
/// - `q` is the member's place among the drifted members that are not
///   leaving, *ready or not*, ordered by (launch time, instance id).
///
/// Why this holds without a coordinator, on snapshots of any age: when `r`
/// members ahead retire, they leave the list (`q − r`) and count as started
/// (`+ r`), and stay counted while they are terminated (missing capacity),
/// replaced (versions unknown) and the replacement tagged (preferred); a
/// member behind retiring only adds to `started`. So `q + started` never
/// decreases, and an older snapshot is only more conservative. Take the
/// last retiree in that order, deciding on whatever snapshot: every other
/// retiree is ahead of it there, either still listed (in `q`) or already
/// started (in `started`), so the retirees number at most `n` minus what
/// had started before any of them: never more than `n` replacements before
/// `n` are baked. The budget `k` applies as well, so never more than `k`
/// unavailable either.
///
/// A drifted member that is not ready keeps its place in this list. Were
/// the places counted among ready members only (the line), an older member
/// turning ready would take a place a younger one had already used on an
/// older snapshot, and `n + 1` would go; `tests/rollout_props.rs` finds that
/// in a few hundred cases. (Capacity lost for reasons berth does not cause,
/// such as a scale-in that removes a leaving member, is the same exception
/// as for the budget.)
///
/// `Some(wait)` when the canary holds `me`; `None` when the canary is off or
/// baked, or `me` is within its places (or not listed: the rest of the gate
/// decides).
pub fn canary_hold(
    snapshot: &Snapshot,
    me: &str,
    preferred: &BTreeMap<String, String>,
    policy: &Policy,
    now_s: u64,
) -> Option<Wait> {
    let n = policy.canary;
    if n == 0 {
        return None;
    }
    let cluster = snapshot.cluster.as_deref();
    let baked = snapshot
        .members
        .iter()
        .filter(|m| m.on_preferred(preferred, cluster) && m.baked(policy.bake_time, now_s))
        .count() as u32;
    if baked >= n {
        return None;
    }
    let mut listed: Vec<&MemberView> = snapshot
        .members
        .iter()
        .filter(|m| m.drifted(preferred, cluster) && !m.leaving())
        .collect();
    listed.sort_by(|a, b| (a.launch_time, &a.id).cmp(&(b.launch_time, &b.id)));
    let q = listed.iter().position(|m| m.id == me)? as u32 + 1;
    let missing = snapshot
        .desired_capacity
        .saturating_sub(snapshot.members.len() as u32);
    let started = missing
        + snapshot
            .members
            .iter()
            .filter(|m| {
                m.versions.is_none()
                    || m.on_preferred(preferred, cluster)
                    || (m.drifted(preferred, cluster) && m.leaving())
            })
            .count() as u32;
    (q > n.saturating_sub(started)).then_some(Wait::Canary {
        canary: n,
        started,
        baked,
        bake_time: policy.bake_time,
    })
}

/// The gate. `drift_age`: how long this instance has seen drift (`None`: no
/// drift); `checks`: the images and alarms read for this look; `now_s`: now,
/// in seconds since the epoch (for the bake time and the progress deadline).
pub fn decide(
    snapshot: &Snapshot,
    me: &str,
    preferred: &BTreeMap<String, String>,
    policy: &Policy,
    drift_age: Option<Duration>,
    checks: &Checks<'_>,
    now_s: u64,
) -> Decision {
    let Some(age) = drift_age else {
        return Decision::Wait(Wait::NoDrift);
    };
    match checks.image {
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
    match checks.alarms {
        AlarmCheck::InAlarm(a) => return Decision::Wait(Wait::Alarm(a.clone())),
        AlarmCheck::Unknown(e) => return Decision::Wait(Wait::AlarmUnknown(e.clone())),
        AlarmCheck::NotConfigured if !policy.halt_on_alarms.is_empty() => {
            return Decision::Wait(Wait::AlarmUnknown(
                "the alarms are configured but were not read".into(),
            ));
        }
        AlarmCheck::NotConfigured | AlarmCheck::Clear => {}
    }
    if let Some(h) = halted(snapshot, preferred, policy, now_s) {
        return Decision::Wait(Wait::Halted(h));
    }
    let Some(my) = snapshot.members.iter().find(|m| m.id == me) else {
        return Decision::Wait(Wait::NotInGroup);
    };
    if !my.ready() {
        return Decision::Wait(Wait::NotReady);
    }
    if let Some(w) = canary_hold(snapshot, me, preferred, policy, now_s) {
        return Decision::Wait(w);
    }
    let k = policy.max_unavailable.resolve(snapshot.desired_capacity);
    let u = budget_unavailable(snapshot, preferred, policy, now_s);
    let line = line(snapshot, preferred);
    let position = line.iter().position(|m| m.id == me).map(|p| p as u32 + 1);
    let budget = k.saturating_sub(u);
    // Held only because new members have not baked yet: say so.
    let unbaked_budget = k.saturating_sub(unavailable(snapshot));
    if let Some(p) = position
        && p > budget
        && p <= unbaked_budget
        && let Some((member, left)) = first_to_bake(snapshot, preferred, policy.bake_time, now_s)
    {
        return Decision::Wait(Wait::Baking { member, left });
    }
    if u >= k {
        return Decision::Wait(Wait::NoBudget {
            unavailable: u,
            max: k,
        });
    }
    let Some(position) = position else {
        // Ready but not drifted in the group's eyes (its versions tag lags): wait.
        return Decision::Wait(Wait::NotReady);
    };
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

/// This instance's pin, offered as the target of an automatic rollback.
#[derive(Debug, Clone, Copy)]
pub struct RollbackTarget<'a> {
    /// The pinned versions, component → version.
    pub versions: &'a BTreeMap<String, String>,
    /// Whether the pinned images still exist in their registries, checked
    /// by the caller (for the writer only: see [`rollback_writer`]). A
    /// rollback never targets a version whose image does not exist: only
    /// [`ImageCheck::Present`] lets [`rollback`] answer.
    pub images: &'a ImageCheck,
}

/// What an automatic rollback sets on the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    /// Every group tag to set, in one call: the version tags that make the
    /// preferred versions the writer's pin, and `berth:rolled-back-from`.
    pub tags: BTreeMap<String, String>,
    /// The preferred versions rolled back from, as
    /// `berth:rolled-back-from` holds them (`web=1.5.0`).
    pub rolled_back_from: String,
}

/// Who writes an automatic rollback: the oldest, by (launch time, id), ready
/// member on other versions than the preferred ones (and in the group's
/// cluster). Every agent computes the same one from the same snapshot.
pub fn rollback_writer<'a>(
    snapshot: &'a Snapshot,
    preferred: &BTreeMap<String, String>,
) -> Option<&'a MemberView> {
    let cluster = snapshot.cluster.as_deref();
    snapshot
        .members
        .iter()
        .filter(|m| {
            m.ready() && !m.moved(cluster) && m.versions.as_ref().is_some_and(|v| v != preferred)
        })
        .min_by(|a, b| (a.launch_time, &a.id).cmp(&(b.launch_time, &b.id)))
}

/// The automatic rollback, decided by `me` from one snapshot. `Some` only
/// when all hold: `berth:auto-rollback` is set and the group is not paused;
/// the rollout is [`halted`]; `me` is the [`rollback_writer`] and its
/// `berth:versions` tag is its pin (which therefore differs from the
/// preferred versions); every pinned version is valid; and the pinned
/// images exist ([`RollbackTarget::images`] is `Present`).
///
/// The tags set the preferred versions to the writer's pin: `berth:version`
/// alone when every component has the same version and no
/// `berth:version:<component>` tag on the group says otherwise, else one
/// `berth:version:<component>` per component; plus
/// `berth:rolled-back-from`. The writer and the value depend only on the
/// snapshot, so a second writer (another agent on a later snapshot, while
/// the old members share one pin) writes the same tags, and writing them
/// twice changes nothing. Once written, the old versions are preferred: no
/// member is on the failing versions' side any more, the rollout is no
/// longer halted, and this answers `None`.
pub fn rollback(
    snapshot: &Snapshot,
    me: &str,
    target: &RollbackTarget<'_>,
    preferred: &BTreeMap<String, String>,
    group_tags: &BTreeMap<String, String>,
    policy: &Policy,
    now_s: u64,
) -> Option<Rollback> {
    if !policy.auto_rollback || policy.paused {
        return None;
    }
    halted(snapshot, preferred, policy, now_s)?;
    let writer = rollback_writer(snapshot, preferred)?;
    let pin = target.versions;
    if writer.id != me || writer.versions.as_ref() != Some(pin) {
        return None;
    }
    if pin.values().any(|v| check_version(v).is_err()) || *target.images != ImageCheck::Present {
        return None;
    }
    let mut versions = pin.values();
    let one = versions
        .next()
        .filter(|first| versions.all(|v| v == *first));
    let mut tags: BTreeMap<String, String> = match one {
        Some(v)
            if !group_tags.iter().any(|(k, tv)| {
                k.strip_prefix(TAG_VERSION_PREFIX)
                    .is_some_and(|c| pin.contains_key(c) && tv != v)
            }) =>
        {
            BTreeMap::from([(TAG_VERSION.to_string(), v.clone())])
        }
        _ => pin
            .iter()
            .map(|(c, v)| (format!("{TAG_VERSION_PREFIX}{c}"), v.clone()))
            .collect(),
    };
    let rolled_back_from = format_versions(preferred);
    tags.insert(TAG_ROLLED_BACK_FROM.to_string(), rolled_back_from.clone());
    Some(Rollback {
        tags,
        rolled_back_from,
    })
}

/// Where an agent stands, for the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Standing {
    /// Not drifted: the at-rest backstop.
    AtRest,
    /// Drifted, but held by something other than its turn (image, pause,
    /// alarms, a halt, the canary, its own readiness): it looks on the
    /// held schedule, so that the hold's end is seen without a nudge.
    Held,
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
    /// At rest: this instance's rank by (launch time, id) among the members
    /// that are not drifted and not leaving (its peers once the drifted
    /// members are gone), 0 = oldest. Held: its position in line.
    pub rank: u32,
    pub standing: Standing,
    /// How long one retirement round takes (drain + boot of the replacement).
    pub round: Duration,
    /// `berth:rest-poll`.
    pub rest_poll: Duration,
    /// The `berth:nudge` doorbell works (instance-metadata tags enabled).
    pub doorbell: bool,
}

/// How long to sleep before the next look at the group (before jitter).
/// `P` = `berth:rest-poll`, `r` = [`PollInput::rank`].
///
/// - At rest, with the doorbell: `min(0.9 · P · (1 + r)², REST_POLL_CAP)`
///   (0.9: [`REST_JITTER_MARGIN`]). The oldest member looks every `P` at
///   most, the next every `4P`, `9P`, …: the group makes about
///   `π²/6 / 0.9 ≈ 1.8` calls per `P` whatever its size, plus
///   `n / REST_POLL_CAP`. Whoever sees a change rings the rest
///   ([`ring_unaware`]), so the change reaches every member within about
///   `P` of its making, or of an operator's nudge.
/// - At rest, without the doorbell (no instance-metadata tags): nobody can
///   tell anybody, so the first `k` members in line look every `P` to `2P`:
///   `min(0.9 · P · (1 + r / k), REST_POLL_CAP)`, about
///   `(k / 0.9P) · (ln(1 + n / k) + γ)` calls per second per group.
/// - Held: like at rest without the doorbell, by position in line, capped
///   as the back of the line is.
/// - Waiting out the drift grace: until it ends.
/// - Waiting for its turn: until the estimated turn (plus slack). Without
///   the doorbell, when the turn is more than two rounds away, half of it,
///   to correct the estimate as the rollout goes; with it, the members
///   ahead ring it when its turn comes ([`ring_on_retire`],
///   [`ring_on_ready`]), and the estimate is only the backstop. Never sooner
///   than `max(floor, k / window_rate)`, never later than
///   `max(10 min, n / back_of_line_rate)` (0.25 calls/s, or 0.05 with the
///   doorbell).
pub fn next_poll(i: &PollInput) -> Duration {
    let k = i.k.max(1) as f64;
    let n = i.members.max(1) as f64;
    let r = i.rank as f64;
    let p = i.rest_poll.max(MIN_REST_POLL).as_secs_f64() * REST_JITTER_MARGIN;
    let back_rate = if i.doorbell {
        BACK_OF_LINE_CALLS_PER_SEC_RUNG
    } else {
        BACK_OF_LINE_CALLS_PER_SEC
    };
    let back_of_line = DRIFTED_POLL_CAP.max(Duration::from_secs_f64(n / back_rate));
    let capped = |secs: f64, cap: Duration| Duration::from_secs_f64(secs.min(cap.as_secs_f64()));
    match i.standing {
        Standing::AtRest if i.doorbell => capped(p * (1.0 + r) * (1.0 + r), REST_POLL_CAP),
        Standing::AtRest => capped(p * (1.0 + r / k), REST_POLL_CAP),
        Standing::Held => capped(p * (1.0 + r / k), back_of_line),
        Standing::Grace(left) => left.max(Duration::from_secs(1)),
        Standing::Turn(t) => {
            let window_floor = POLL_FLOOR.max(Duration::from_secs_f64(k / WINDOW_CALLS_PER_SEC));
            let sleep = if t > i.round * 2 && !i.doorbell {
                t / 2
            } else {
                t
            };
            sleep.max(window_floor).min(back_of_line)
        }
    }
}

/// How long after its doorbell rings an agent looks at the group. An agent
/// that already knows it is in a rollout (`drifted`) looks at once: it was
/// rung for its turn. One that does not is most likely one of many rung
/// together (an operator's nudge, or the first member to see a change
/// ringing the line), so it waits its place: `(rank + u) / rate` with `u`
/// uniform in [0, 1) and `rate = clamp(k / 25, 1, 4)` looks per second,
/// so the oldest (first in line) look within seconds and a ring of 1,000
/// members stays within the group's rolling budget.
pub fn nudged_look_in(drifted: bool, rank: u32, k: u32, u: f64) -> Duration {
    if drifted {
        return Duration::ZERO;
    }
    let rate = (k as f64 / 25.0).clamp(1.0, NUDGE_LOOKS_PER_SEC_MAX);
    Duration::from_secs_f64((rank as f64 + u.clamp(0.0, 1.0)) / rate)
}

/// What an agent does when its doorbell rings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ring<'a> {
    /// The new `berth:nudge` value.
    pub value: Option<&'a str>,
    /// Its last look showed it drifted: it knows it is in line.
    pub drifted: bool,
    /// The mark of what it runs ([`change_mark`] of its pin and cluster).
    pub mine: &'a str,
    /// Its rank at its last look ([`Answer::rank`]), and `k`.
    pub rank: u32,
    pub k: u32,
    /// Boot + drain, and `berth:drift-grace`.
    pub round: Duration,
    pub grace: Duration,
    /// Uniform in [0, 1).
    pub u: f64,
}

/// When a rung agent looks, and the change it was told of, if any. The
/// agent looks then unless its schedule says sooner.
///
/// - It knows it is in line: now, or, told its turn comes when the
///   ringer's replacement is ready ([`RingKind::Turn`]), a round and the
///   slack from now (the replacement's ready ring should wake it first).
/// - The nudge is an agent's, with a change's mark other than its own:
///   another agent saw the group prefer other versions, so it is in line.
///   [`RingKind::Now`]: now. [`RingKind::Turn`]: a round and the slack from
///   now. [`RingKind::Told`]: the first `k` by rank look at their place (as
///   [`nudged_look_in`]); the others are rung by the members ahead when
///   their turn comes, and look at `grace + (⌊rank / k⌋ + 1) · round`
///   (a round after their estimated turn) only if both rings are lost. The mark is kept as a hint: if its look then shows
///   the same change, the drift counts from the ring ([`Watch::hint`]), so a
///   member told early does not wait out the grace again at its turn.
/// - Otherwise (an operator's nudge, or its own versions): its place,
///   [`nudged_look_in`].
pub fn on_ring(r: &Ring<'_>) -> (Duration, Option<String>) {
    let kind = r.value.and_then(ring_kind);
    if r.drifted {
        let at = match kind {
            Some(RingKind::Turn) => r.round + READY_SLACK,
            _ => Duration::ZERO,
        };
        return (at, None);
    }
    let spread = nudged_look_in(false, r.rank, r.k, r.u);
    match (r.value.and_then(mark_of), kind) {
        (Some(mark), Some(kind)) if mark != r.mine => {
            let window = r.rank / r.k.max(1);
            let at = match kind {
                RingKind::Told if window == 0 => spread,
                // A round late: the members ahead ring it when its turn
                // comes (a turn ring a round before, the ready ring at
                // it); this is the backstop if both are lost.
                RingKind::Told => r.grace + r.round * (window + 1),
                RingKind::Turn => r.round + READY_SLACK,
                RingKind::Now => Duration::ZERO,
            };
            (at, Some(mark.to_string()))
        }
        _ => (spread, None),
    }
}

/// The change's mark in a `berth:nudge` value an agent rang with
/// ([`nudge_value`]), if it is one.
pub fn mark_of(value: &str) -> Option<&str> {
    let mark = value.split('.').next()?;
    (mark.len() == MARK_HEX
        && mark.bytes().all(|b| b.is_ascii_hexdigit())
        && value.len() > mark.len())
    .then_some(mark)
}

/// Hex digits of a change's mark.
const MARK_HEX: usize = 12;

/// The mark of one change: a short digest of the preferred versions and the
/// cluster. An agent's nudges carry it (`<mark>.<from>.<ms>`), so a member
/// whose `berth:nudge` starts with the mark has been told of this change,
/// and nobody rings it again ([`ring_unaware`]).
pub fn change_mark(preferred: &BTreeMap<String, String>, cluster: Option<&str>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(cluster.unwrap_or_default().as_bytes());
    h.update([0]);
    h.update(format_versions(preferred).as_bytes());
    let d = h.finalize();
    d[..MARK_HEX / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a nudge tells the member it rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKind {
    /// Told of the change: it is in line ([`ring_unaware`]).
    Told,
    /// Its turn comes when the ringer's replacement is ready, about a
    /// round from now ([`ring_on_retire`]).
    Turn,
    /// Look now ([`ring_on_ready`], an Unhealthy member's ring).
    Now,
}

impl RingKind {
    fn code(self) -> char {
        match self {
            RingKind::Told => 't',
            RingKind::Turn => 'r',
            RingKind::Now => 'g',
        }
    }
}

/// The `berth:nudge` value an agent rings with: `<mark>.<kind>.<from>.<ms>`.
pub fn nudge_value(mark: &str, kind: RingKind, me: &str, now_ms: u64) -> String {
    format!("{mark}.{}.{me}.{now_ms}", kind.code())
}

/// A look's rings grouped by kind, one group per `CreateTags` value, in the
/// order they are sent (look now, your turn, told); empty groups left out.
pub fn by_kind(ring: &[(String, RingKind)]) -> Vec<(RingKind, Vec<String>)> {
    [RingKind::Now, RingKind::Turn, RingKind::Told]
        .into_iter()
        .map(|kind| {
            let ids = ring
                .iter()
                .filter(|(_, k)| *k == kind)
                .map(|(id, _)| id.clone())
                .collect::<Vec<_>>();
            (kind, ids)
        })
        .filter(|(_, ids)| !ids.is_empty())
        .collect()
}

/// The kind of an agent's `berth:nudge` value (`None`: not an agent's).
pub fn ring_kind(value: &str) -> Option<RingKind> {
    mark_of(value)?;
    match value.split('.').nth(1)? {
        "t" => Some(RingKind::Told),
        "r" => Some(RingKind::Turn),
        "g" => Some(RingKind::Now),
        _ => None,
    }
}

/// Whether a `berth:nudge` value carries `mark`.
pub fn carries_mark(value: Option<&str>, mark: &str) -> bool {
    value.is_some_and(|v| v.split('.').next() == Some(mark))
}

/// The members of the line (drifted and ready, from a look that read their
/// tags) that have not been told of this change: whoever sees them rings
/// them. The first to see a change therefore rings every drifted member
/// once (one `CreateTags` per 1,000), and later lookers find them marked.
pub fn ring_unaware(
    snapshot: &Snapshot,
    preferred: &BTreeMap<String, String>,
    me: &str,
) -> Vec<String> {
    let mark = change_mark(preferred, snapshot.cluster.as_deref());
    line(snapshot, preferred)
        .into_iter()
        .filter(|m| m.id != me && !carries_mark(m.nudge.as_deref(), &mark))
        .map(|m| m.id.clone())
        .collect()
}

/// Whom a retiring member rings: the one member whose turn its replacement
/// opens, a window behind it: `position + k` in line, where `position` is
/// its own place. (Not `position + budget`: once `r` of a window have left,
/// the line and the budget have both shrunk by `r`, and every later member
/// of the window would ring the same one.) One target per retirement, so a
/// window of k costs k looks, not k².
pub fn ring_on_retire(
    snapshot: &Snapshot,
    preferred: &BTreeMap<String, String>,
    me: &str,
    policy: &Policy,
) -> Vec<String> {
    let l = line(snapshot, preferred);
    let Some(p) = l.iter().position(|m| m.id == me) else {
        return Vec::new();
    };
    let k = policy.max_unavailable.resolve(snapshot.desired_capacity) as usize;
    l.get(p + k.max(1))
        .map(|m| vec![m.id.clone()])
        .unwrap_or_default()
}

/// Whom a member that just became ready rings: the last member in line the
/// budget now admits (`budget − 1`), the one whose turn it opened.
pub fn ring_on_ready(
    snapshot: &Snapshot,
    preferred: &BTreeMap<String, String>,
    me: &str,
    policy: &Policy,
    now_s: u64,
) -> Vec<String> {
    let k = policy.max_unavailable.resolve(snapshot.desired_capacity);
    let b = k.saturating_sub(budget_unavailable(snapshot, preferred, policy, now_s)) as usize;
    if b == 0 {
        return Vec::new();
    }
    let l = line(snapshot, preferred);
    l.get(b - 1)
        .filter(|m| m.id != me)
        .map(|m| vec![m.id.clone()])
        .unwrap_or_default()
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
/// decision, the time of the next look, and whom to ring.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// When this instance first saw its pin differ from the preferred versions (ms since the epoch).
    pub drift_since_ms: Option<u64>,
    /// A change another agent told it of ([`on_ring`]): the change's mark
    /// and when (ms since the epoch). If its first look that sees drift sees
    /// this change, the drift counts from then.
    pub hint: Option<(String, u64)>,
}

/// Why the agent looks now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prompt {
    /// Its schedule (or boot).
    #[default]
    Schedule,
    /// Its doorbell rang.
    Nudged,
    /// It has just become ready (tagged `berth:state=ready`).
    BecameReady,
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
    /// The alarms of `berth:halt-on-alarms` ([`AlarmCheck::NotConfigured`]
    /// when there are none).
    pub alarms: &'a AlarmCheck,
    /// How long a member takes from launch to ready (observed or assumed).
    pub boot: Duration,
    /// How long a drain takes.
    pub drain: Duration,
    /// The `berth:nudge` doorbell works here.
    pub doorbell: bool,
    pub prompt: Prompt,
}

/// What one look decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub decision: Decision,
    /// When to look again (before jitter).
    pub next: Duration,
    /// Whom to ring (`berth:nudge`, [`nudge_value`]) after this look, and
    /// with what; empty without the doorbell.
    pub ring: Vec<(String, RingKind)>,
    /// This instance's rank among its peers (at rest) or in line, for
    /// [`nudged_look_in`].
    pub rank: u32,
}

impl Answer {
    /// The members rung with `kind`.
    pub fn rung(&self, kind: RingKind) -> Vec<String> {
        self.ring
            .iter()
            .filter(|(_, k)| *k == kind)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

impl Watch {
    /// Records that another agent told this one of the change `mark` at
    /// `at_ms` ([`on_ring`]). The first time counts: later rings of the
    /// same change (its turn, look now) do not restart the drift grace.
    pub fn told(&mut self, mark: String, at_ms: u64) {
        match &self.hint {
            Some((m, _)) if *m == mark => {}
            _ => self.hint = Some((mark, at_ms)),
        }
    }

    /// Decides, says when to look again (before jitter) and whom to ring.
    pub fn observe(&mut self, o: &Observation<'_>) -> Answer {
        let drifted = o.drifted;
        let hinted = self
            .hint
            .take()
            .filter(|(mark, at)| {
                *at <= o.now_ms && *mark == change_mark(o.preferred, o.snapshot.cluster.as_deref())
            })
            .map(|(_, at)| at);
        self.drift_since_ms = match (drifted, self.drift_since_ms) {
            (false, _) => None,
            (true, None) => Some(hinted.unwrap_or(o.now_ms)),
            (true, since) => since,
        };
        let age = self
            .drift_since_ms
            .map(|s| Duration::from_millis(o.now_ms.saturating_sub(s)));
        let checks = Checks {
            image: o.image,
            alarms: o.alarms,
        };
        let now_s = o.now_ms / 1000;
        let decision = decide(o.snapshot, o.me, o.preferred, o.policy, age, &checks, now_s);
        let cluster = o.snapshot.cluster.as_deref();
        let k = o
            .policy
            .max_unavailable
            .resolve(o.snapshot.desired_capacity);
        let line = line(o.snapshot, o.preferred);
        let position = line.iter().position(|m| m.id == o.me);
        let standing = match &decision {
            Decision::Wait(Wait::Grace(left)) => Standing::Grace(*left),
            Decision::Wait(Wait::NotMyTurn { .. }) | Decision::Wait(Wait::NoBudget { .. }) => {
                let budget = k.saturating_sub(unavailable(o.snapshot));
                let position = position.map_or(line.len() + 1, |p| p + 1) as u32;
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
            Decision::Wait(Wait::Baking {
                left: Some(left), ..
            }) => Standing::Turn(*left + READY_SLACK),
            // Held by the canary: nobody rings when it has baked, so look
            // then (or on the held schedule, if nothing bakes yet).
            Decision::Wait(Wait::Canary { bake_time, .. }) => {
                match first_to_bake(o.snapshot, o.preferred, *bake_time, now_s) {
                    Some((_, Some(left))) => Standing::Turn(left + READY_SLACK),
                    _ => Standing::Held,
                }
            }
            Decision::Wait(Wait::NoDrift) => Standing::AtRest,
            _ if drifted => Standing::Held,
            _ => Standing::AtRest,
        };
        let rank = match standing {
            Standing::AtRest => {
                let mut peers: Vec<&MemberView> = o
                    .snapshot
                    .members
                    .iter()
                    .filter(|m| m.id == o.me || (!m.leaving() && !m.drifted(o.preferred, cluster)))
                    .collect();
                peers.sort_by(|a, b| (a.launch_time, &a.id).cmp(&(b.launch_time, &b.id)));
                peers
                    .iter()
                    .position(|m| m.id == o.me)
                    .unwrap_or(peers.len())
            }
            _ => position.unwrap_or(line.len()),
        } as u32;
        let next = next_poll(&PollInput {
            members: o.snapshot.members.len() as u32,
            k,
            rank,
            standing,
            round: o.boot + o.drain,
            rest_poll: o.policy.rest_poll,
            doorbell: o.doorbell,
        });
        let mut ring: Vec<(String, RingKind)> = Vec::new();
        if o.doorbell {
            let more = match (&decision, o.prompt) {
                (Decision::Retire, _) => (
                    ring_on_retire(o.snapshot, o.preferred, o.me, o.policy),
                    RingKind::Turn,
                ),
                (_, Prompt::BecameReady) if !drifted => (
                    ring_on_ready(o.snapshot, o.preferred, o.me, o.policy, now_s),
                    RingKind::Now,
                ),
                _ => (Vec::new(), RingKind::Now),
            };
            ring.extend(more.0.into_iter().map(|id| (id, more.1)));
            for id in ring_unaware(o.snapshot, o.preferred, o.me) {
                if !ring.iter().any(|(r, _)| *r == id) {
                    ring.push((id, RingKind::Told));
                }
            }
        }
        Answer {
            decision,
            next,
            ring,
            rank,
        }
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
            ready_since: ready.then_some(launch),
            abandoned: false,
            nudge: None,
        }
    }

    /// No alarms, images present.
    const CLEAR: Checks<'static> = Checks {
        image: &ImageCheck::Present,
        alarms: &AlarmCheck::NotConfigured,
    };

    /// Now in the table tests: a little after the youngest launch (900).
    const NOW: u64 = 1000;

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
            &CLEAR,
            NOW,
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
            &CLEAR,
            NOW,
        )
    }

    #[test]
    fn gate_table() {
        let p = Policy::default();
        let p2 = Policy {
            max_unavailable: MaxUnavailable::Count(2),
            ..p.clone()
        };
        let mut booting = base();
        booting.members[0] = member("i-new", 900, false, NEW);
        let mut replaced = base();
        replaced.members[0] = member("i-new", 900, true, NEW);
        let cases: Vec<(&str, Snapshot, &str, Policy, Decision)> = vec![
            (
                "oldest goes first",
                base(),
                "i-a",
                p.clone(),
                Decision::Retire,
            ),
            (
                "second waits its turn",
                base(),
                "i-b",
                p.clone(),
                Decision::Wait(Wait::NotMyTurn {
                    position: 2,
                    budget: 1,
                    head: "i-a".into(),
                }),
            ),
            (
                "k=2: second goes too",
                base(),
                "i-b",
                p2.clone(),
                Decision::Retire,
            ),
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
                    ..p.clone()
                },
                Decision::Retire,
            ),
            (
                "a booting replacement uses the budget",
                booting.clone(),
                "i-b",
                p.clone(),
                Decision::Wait(Wait::NoBudget {
                    unavailable: 1,
                    max: 1,
                }),
            ),
            (
                "the replacement ready: next one goes",
                replaced,
                "i-b",
                p.clone(),
                Decision::Retire,
            ),
            (
                "paused",
                base(),
                "i-a",
                Policy {
                    paused: true,
                    ..p.clone()
                },
                Decision::Wait(Wait::Paused),
            ),
            (
                "not a member",
                base(),
                "i-zzz",
                p.clone(),
                Decision::Wait(Wait::NotInGroup),
            ),
            (
                "percent rounds down, at least 1",
                base(),
                "i-b",
                Policy {
                    max_unavailable: MaxUnavailable::Percent(10),
                    ..p.clone()
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
                    ..p.clone()
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
            decide(&s, "i-a", &pref, &p, None, &CLEAR, NOW),
            Decision::Wait(Wait::NoDrift)
        );
        assert_eq!(
            decide(
                &s,
                "i-a",
                &pref,
                &p,
                Some(Duration::from_secs(999)),
                &Checks {
                    image: &ImageCheck::Missing("web:2".into()),
                    alarms: &AlarmCheck::NotConfigured,
                },
                NOW
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
                &Checks {
                    image: &ImageCheck::Unknown("down".into()),
                    alarms: &AlarmCheck::NotConfigured,
                },
                NOW
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
                &CLEAR,
                NOW
            ),
            Decision::Wait(Wait::Grace(Duration::from_secs(40)))
        );
        let mut degraded = base();
        degraded.members[0].berth_state = Some("degraded".into());
        assert_eq!(
            go(&degraded, "i-a", p.clone()),
            Decision::Wait(Wait::NotReady)
        );
        // An unhealthy member counts as unavailable.
        let mut sick = base();
        sick.members[3].healthy = false;
        assert_eq!(
            go(&sick, "i-a", p.clone()),
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

    /// The group's calls per second at rest, summed over its members, on
    /// the default `berth:rest-poll`.
    fn rest_rate(n: u32, k: u32, doorbell: bool) -> f64 {
        (0..n)
            .map(|rank| {
                let d = next_poll(&PollInput {
                    members: n,
                    k,
                    rank,
                    standing: Standing::AtRest,
                    round: Duration::from_secs(150),
                    rest_poll: DEFAULT_REST_POLL,
                    doorbell,
                });
                1.0 / d.as_secs_f64()
            })
            .sum()
    }

    #[test]
    fn at_rest_with_the_doorbell_a_group_makes_under_two_calls_per_rest_poll() {
        let p = DEFAULT_REST_POLL.as_secs_f64();
        for (n, k) in [(10u32, 1u32), (100, 1), (100, 10), (1000, 1), (1000, 100)] {
            let per_poll = rest_rate(n, k, true) * p;
            // π²/6 ≈ 1.645 over the jitter margin, plus n / REST_POLL_CAP.
            let cap = 1.645 / REST_JITTER_MARGIN + n as f64 * p / REST_POLL_CAP.as_secs_f64();
            assert!(
                per_poll <= cap,
                "n={n} k={k}: {per_poll} calls per rest-poll"
            );
            assert!(
                per_poll >= 1.0,
                "n={n} k={k}: the oldest looks every rest-poll"
            );
        }
        // The region's goal: 50 groups of 100 at rest, at most 1 call/s.
        assert!(50.0 * rest_rate(100, 1, true) <= 1.0);
        // The oldest looks every rest-poll (0.9 of it, before ±10 % jitter),
        // the next every 4, then 9.
        let at = |rank| {
            next_poll(&PollInput {
                members: 100,
                k: 1,
                rank,
                standing: Standing::AtRest,
                round: Duration::from_secs(150),
                rest_poll: DEFAULT_REST_POLL,
                doorbell: true,
            })
        };
        let p = DEFAULT_REST_POLL.mul_f64(REST_JITTER_MARGIN);
        assert_eq!(at(0), p);
        assert_eq!(at(1), p * 4);
        assert_eq!(at(2), p * 9);
        assert!(at(0).mul_f64(1.0 + crate::backoff::JITTER_FRACTION) <= DEFAULT_REST_POLL);
        assert_eq!(at(99), REST_POLL_CAP);
    }

    #[test]
    fn at_rest_without_the_doorbell_the_first_k_look_every_rest_poll() {
        let at = |rank, k| {
            next_poll(&PollInput {
                members: 100,
                k,
                rank,
                standing: Standing::AtRest,
                round: Duration::from_secs(150),
                rest_poll: DEFAULT_REST_POLL,
                doorbell: false,
            })
        };
        let p = DEFAULT_REST_POLL.mul_f64(REST_JITTER_MARGIN);
        assert_eq!(at(0, 1), p);
        assert_eq!(at(9, 10), p.mul_f64(1.9));
        assert_eq!(at(99, 1), p * 100);
        // With k = 1, 50 groups of 100 stay within the region's 1 call/s.
        assert!(50.0 * rest_rate(100, 1, false) <= 1.0);
    }

    #[test]
    fn a_nudged_agent_waits_its_place_unless_it_knows_it_is_in_line() {
        assert_eq!(nudged_look_in(true, 500, 1, 0.5), Duration::ZERO);
        assert_eq!(nudged_look_in(false, 0, 1, 0.5), Duration::from_millis(500));
        // k = 1: one look per second, the 1,000th member after ~1,000 s.
        assert_eq!(nudged_look_in(false, 999, 1, 0.0), Duration::from_secs(999));
        // k = 100: 4 per second.
        assert_eq!(nudged_look_in(false, 99, 100, 1.0), Duration::from_secs(25));
    }

    #[test]
    fn a_rung_member_looks_when_its_turn_can_come() {
        let mine = change_mark(&v(OLD), None);
        let other = change_mark(&v(NEW), None);
        let ring = |value: &str, drifted: bool, rank: u32| {
            on_ring(&Ring {
                value: Some(value),
                drifted,
                mine: &mine,
                rank,
                k: 10,
                round: Duration::from_secs(150),
                grace: DEFAULT_DRIFT_GRACE,
                u: 0.0,
            })
        };
        let told = nudge_value(&other, RingKind::Told, "i-x", 1);
        let turn = nudge_value(&other, RingKind::Turn, "i-x", 1);
        let now = nudge_value(&other, RingKind::Now, "i-x", 1);
        let round = Duration::from_secs(150);
        // In line already: now, or a round from now when told its turn.
        assert_eq!(ring(&told, true, 500), (Duration::ZERO, None));
        assert_eq!(ring(&now, true, 500), (Duration::ZERO, None));
        // Just after the replacement's ready ring is due: the ring wakes it,
        // the timer is the backstop.
        assert_eq!(ring(&turn, true, 500), (round + READY_SLACK, None));
        // Told of another change, in the first window: its place.
        let hint = Some(other.clone());
        assert_eq!(
            ring(&told, false, 3),
            (Duration::from_secs(3), hint.clone())
        );
        // Three windows back: rung at its turn; else grace + 4 rounds.
        let at = Duration::from_secs(60 + 600);
        assert_eq!(ring(&told, false, 35), (at, hint.clone()));
        assert_eq!(ring(&turn, false, 35), (round + READY_SLACK, hint.clone()));
        assert_eq!(ring(&now, false, 35), (Duration::ZERO, hint));
        assert_eq!(ring_kind(&turn), Some(RingKind::Turn));
        // An operator's value, or its own versions: its place, no hint.
        assert_eq!(
            ring("2026-12-06", false, 35),
            (Duration::from_secs(35), None)
        );
        let own = nudge_value(&mine, RingKind::Told, "i-x", 1);
        assert_eq!(ring(&own, false, 35), (Duration::from_secs(35), None));
        assert_eq!(mark_of(&told), Some(other.as_str()));
        assert_eq!(mark_of("1733500000"), None);
    }

    /// Nobody rings when the canary has baked: the held look then.
    #[test]
    fn members_held_by_the_canary_look_when_it_has_baked() {
        let mut s = base();
        s.members[0] = member("i-new", 980, true, NEW);
        let policy = Policy {
            drift_grace: Duration::ZERO,
            canary: 1,
            bake_time: Duration::from_secs(600),
            ..Policy::default()
        };
        let a = view_with(&s, &policy, |o| o.me = "i-b", &mut Watch::default());
        assert!(
            matches!(a.decision, Decision::Wait(Wait::Canary { .. })),
            "{a:?}"
        );
        // Ready since 980, bakes at 1580; now is 1000.
        assert_eq!(a.next, Duration::from_secs(580) + READY_SLACK);
    }

    #[test]
    fn a_hint_of_the_same_change_counts_the_drift_from_the_ring() {
        let s = base();
        let mark = change_mark(&v(NEW), s.cluster.as_deref());
        let policy = Policy::default();
        // Told 61 s ago (the default grace is 60 s): it may go at once.
        let mut w = Watch {
            hint: Some((mark.clone(), 1_000_000 - 61_000)),
            ..Watch::default()
        };
        let a = view_with(&s, &policy, |_| {}, &mut w);
        assert_eq!(a.decision, Decision::Retire);
        // Later rings of the same change keep the first time.
        let mut w = Watch::default();
        w.told(mark.clone(), 1_000_000 - 61_000);
        w.told(mark.clone(), 1_000_000 - 1_000);
        let a = view_with(&s, &policy, |_| {}, &mut w);
        assert_eq!(a.decision, Decision::Retire);
        // A hint of another change counts for nothing.
        let mut w = Watch {
            hint: Some(("0123456789ab".into(), 1_000_000 - 61_000)),
            ..Watch::default()
        };
        let a = view_with(&s, &policy, |_| {}, &mut w);
        assert!(
            matches!(a.decision, Decision::Wait(Wait::Grace(_))),
            "{a:?}"
        );
    }

    fn view(snapshot: &Snapshot, o: impl FnOnce(&mut Observation<'_>), w: &mut Watch) -> Answer {
        let policy = Policy {
            drift_grace: Duration::ZERO,
            ..Policy::default()
        };
        view_with(snapshot, &policy, o, w)
    }

    fn view_with(
        snapshot: &Snapshot,
        policy: &Policy,
        o: impl FnOnce(&mut Observation<'_>),
        w: &mut Watch,
    ) -> Answer {
        let pref = v(NEW);
        let mut obs = Observation {
            now_ms: 1_000_000,
            snapshot,
            me: "i-a",
            drifted: true,
            preferred: &pref,
            policy,
            image: &ImageCheck::Present,
            alarms: &AlarmCheck::NotConfigured,
            boot: Duration::from_secs(120),
            drain: Duration::from_secs(30),
            doorbell: true,
            prompt: Prompt::Schedule,
        };
        o(&mut obs);
        w.observe(&obs)
    }

    #[test]
    fn the_first_to_see_a_change_rings_the_line_once() {
        let mut s = base();
        let w = &mut Watch::default();
        // i-a, the head, retires: it rings i-b, whose turn its replacement
        // opens (position 0 + budget 1), and tells the rest of the line.
        let a = view(&s, |_| {}, w);
        assert_eq!(a.decision, Decision::Retire);
        assert_eq!(a.rung(RingKind::Turn), vec!["i-b"]);
        assert_eq!(a.rung(RingKind::Told), vec!["i-c", "i-d"]);
        // Once they carry the change's mark, nobody rings them again.
        let mark = change_mark(&v(NEW), s.cluster.as_deref());
        for m in &mut s.members {
            m.nudge = Some(nudge_value(&mark, RingKind::Told, "i-a", 1));
        }
        let w = &mut Watch::default();
        let b = view(&s, |o| o.me = "i-b", w);
        assert!(b.ring.is_empty(), "{:?}", b.ring);
        // An operator's nudge carries no mark: rung again, once.
        s.members[2].nudge = Some("2026-12-06".into());
        let w = &mut Watch::default();
        let b = view(&s, |o| o.me = "i-b", w);
        assert_eq!(b.rung(RingKind::Told), vec!["i-c"]);
        // Without the doorbell, nobody rings.
        let w = &mut Watch::default();
        let c = view(&s, |o| o.doorbell = false, w);
        assert!(c.ring.is_empty());
    }

    #[test]
    fn a_retiring_member_rings_the_one_whose_turn_its_replacement_opens() {
        let mut s = base();
        let mark = change_mark(&v(NEW), s.cluster.as_deref());
        for m in &mut s.members {
            m.nudge = Some(nudge_value(&mark, RingKind::Told, "x", 1));
        }
        let a = view(&s, |_| {}, &mut Watch::default());
        assert_eq!(a.decision, Decision::Retire);
        assert_eq!(a.ring, vec![("i-b".to_string(), RingKind::Turn)]);
        // Budget 2: i-a and i-b go; i-a rings i-c (position 0 + 2).
        let policy = Policy {
            drift_grace: Duration::ZERO,
            max_unavailable: MaxUnavailable::Count(2),
            ..Policy::default()
        };
        let a = view_with(&s, &policy, |_| {}, &mut Watch::default());
        assert_eq!(a.ring, vec![("i-c".to_string(), RingKind::Turn)]);
        // Then i-b, with i-a already leaving: it rings i-d, not i-c again.
        s.members[0].berth_state = Some("retiring".into());
        let b = view_with(&s, &policy, |o| o.me = "i-b", &mut Watch::default());
        assert_eq!(b.decision, Decision::Retire);
        assert_eq!(b.ring, vec![("i-d".to_string(), RingKind::Turn)]);
    }

    #[test]
    fn a_member_that_becomes_ready_rings_the_one_it_admits() {
        let mut s = base();
        let mark = change_mark(&v(NEW), s.cluster.as_deref());
        for m in &mut s.members {
            m.nudge = Some(nudge_value(&mark, RingKind::Told, "x", 1));
        }
        // i-a was replaced by i-new, now ready: budget 1 admits i-b.
        s.members[0] = member("i-new", 980, true, NEW);
        let a = view(
            &s,
            |o| {
                o.me = "i-new";
                o.drifted = false;
                o.prompt = Prompt::BecameReady;
            },
            &mut Watch::default(),
        );
        assert_eq!(a.decision, Decision::Wait(Wait::NoDrift));
        assert_eq!(a.ring, vec![("i-b".to_string(), RingKind::Now)]);
        // On its schedule it rings nobody.
        let a = view(
            &s,
            |o| {
                o.me = "i-new";
                o.drifted = false;
            },
            &mut Watch::default(),
        );
        assert!(a.ring.is_empty());
        // Its rank at rest counts only its peers: the drifted leave.
        assert_eq!(a.rank, 0);
    }

    #[test]
    fn schedule_when_drifted() {
        // With the doorbell, the members ahead ring it: the estimate is
        // only a backstop, so it sleeps all the way.
        let with = next_poll(&PollInput {
            members: 100,
            k: 10,
            rank: 50,
            standing: Standing::Turn(Duration::from_secs(1000)),
            round: Duration::from_secs(150),
            rest_poll: DEFAULT_REST_POLL,
            doorbell: true,
        });
        assert_eq!(with, Duration::from_secs(1000));
        let at = |k: u32, standing: Standing| {
            next_poll(&PollInput {
                members: 100,
                k,
                rank: 50,
                standing,
                round: Duration::from_secs(150),
                rest_poll: DEFAULT_REST_POLL,
                doorbell: false,
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

    fn tags(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MIN: u64 = 60;

    #[test]
    fn new_policy_tags_default_off_and_parse() {
        let d = Policy::default();
        assert_eq!(d.canary, 0);
        assert_eq!(d.bake_time, Duration::ZERO);
        assert!(d.halt_on_alarms.is_empty());
        assert!(!d.auto_rollback);
        assert_eq!(d.progress_deadline, Duration::from_secs(15 * MIN));
        assert_eq!(d.rest_poll, Duration::from_secs(5 * MIN));
        let p = policy_from_tags(&tags(&[
            (TAG_CANARY, "2"),
            (TAG_BAKE_TIME, "10m"),
            (TAG_HALT_ON_ALARMS, "web-5xx, web-latency-*"),
            (TAG_AUTO_ROLLBACK, "TRUE"),
            (TAG_PROGRESS_DEADLINE, "20m"),
            (TAG_REST_POLL, "10s"),
            (TAG_ROLLED_BACK_FROM, "proxy=0.9.1,web=1.5.0"),
        ]))
        .unwrap();
        assert_eq!(p.canary, 2);
        assert_eq!(p.bake_time, Duration::from_secs(10 * MIN));
        assert_eq!(p.halt_on_alarms, vec!["web-5xx", "web-latency-*"]);
        assert!(p.auto_rollback);
        assert_eq!(p.progress_deadline, Duration::from_secs(20 * MIN));
        assert_eq!(p.rest_poll, MIN_REST_POLL);
        // Zero turns the canary and the bake time off.
        let off = policy_from_tags(&tags(&[(TAG_CANARY, "0"), (TAG_BAKE_TIME, "0s")])).unwrap();
        assert_eq!(off, Policy::default());
    }

    #[test]
    fn every_bad_new_tag_is_named_at_once() {
        let e = policy_from_tags(&tags(&[
            (TAG_CANARY, "-1"),
            (TAG_BAKE_TIME, "a while"),
            (TAG_HALT_ON_ALARMS, "web-5xx,,a*b"),
            (TAG_AUTO_ROLLBACK, "yes"),
            (TAG_PROGRESS_DEADLINE, "30s"),
            (TAG_REST_POLL, "5s"),
            (TAG_ROLLED_BACK_FROM, "web"),
        ]))
        .unwrap_err();
        let mut named: Vec<&str> = e.iter().map(|e| e.tag.as_str()).collect();
        named.sort();
        let mut want = vec![
            TAG_CANARY,
            TAG_BAKE_TIME,
            TAG_HALT_ON_ALARMS,
            TAG_AUTO_ROLLBACK,
            TAG_PROGRESS_DEADLINE,
            TAG_REST_POLL,
            TAG_ROLLED_BACK_FROM,
        ];
        want.sort();
        assert_eq!(named, want);
        let alarms = e.iter().find(|e| e.tag == TAG_HALT_ON_ALARMS).unwrap();
        assert!(alarms.message.contains("empty entry"), "{}", alarms.message);
        assert!(alarms.message.contains("\"a*b\""), "{}", alarms.message);
        let deadline = e.iter().find(|e| e.tag == TAG_PROGRESS_DEADLINE).unwrap();
        assert!(deadline.message.contains("1m"), "{}", deadline.message);
        // Strict: these are all errors too.
        for (tag, value) in [
            (TAG_CANARY, ""),
            (TAG_CANARY, "1.5"),
            (TAG_BAKE_TIME, ""),
            (TAG_AUTO_ROLLBACK, ""),
            (TAG_AUTO_ROLLBACK, "1"),
            (TAG_HALT_ON_ALARMS, ""),
            (TAG_HALT_ON_ALARMS, "*"),
            (TAG_HALT_ON_ALARMS, "web*,"),
            (TAG_HALT_ON_ALARMS, "tab\there"),
            (TAG_ROLLED_BACK_FROM, "web=bad version"),
            (TAG_ROLLED_BACK_FROM, ""),
        ] {
            assert!(
                policy_from_tags(&tags(&[(tag, value)])).is_err(),
                "{tag}={value:?}"
            );
        }
        let long = "a".repeat(MAX_ALARM_NAME_CHARS);
        assert!(policy_from_tags(&tags(&[(TAG_HALT_ON_ALARMS, &long)])).is_ok());
        assert!(policy_from_tags(&tags(&[(TAG_HALT_ON_ALARMS, &format!("{long}*"))])).is_ok());
        assert!(policy_from_tags(&tags(&[(TAG_HALT_ON_ALARMS, &format!("{long}a"))])).is_err());
        let many = |n: usize| {
            (0..n)
                .map(|i| format!("a{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert!(policy_from_tags(&tags(&[(TAG_HALT_ON_ALARMS, &many(MAX_HALT_ALARMS))])).is_ok());
        assert!(
            policy_from_tags(&tags(&[(TAG_HALT_ON_ALARMS, &many(MAX_HALT_ALARMS + 1))])).is_err()
        );
    }

    #[test]
    fn ready_since_round_trips_and_abandoned_launches() {
        let t = 1_738_324_800; // 2025-01-31T12:00:00Z
        assert_eq!(format_ready_since(t), "2025-01-31T12:00:00Z");
        assert_eq!(parse_ready_since(&format_ready_since(t)), Some(t));
        for bad in ["", "yesterday", "1738324800", "2025-01-31 12:00:00"] {
            assert_eq!(parse_ready_since(bad), None, "{bad:?}");
        }
        assert!(launch_abandoned("Terminating:Wait", None));
        assert!(launch_abandoned("Terminating", None));
        assert!(launch_abandoned("Terminating:Proceed", None));
        assert!(
            !launch_abandoned("Terminating:Wait", Some(t)),
            "it was ready"
        );
        assert!(!launch_abandoned("Pending:Wait", None));
        assert!(!launch_abandoned("InService", None));
        assert_eq!(
            format_versions(&v("web=1.5.0,proxy=0.9.1")),
            "proxy=0.9.1,web=1.5.0"
        );
    }

    #[test]
    fn alarm_requests_batch_names_and_query_each_prefix() {
        let entries: Vec<String> = (0..150)
            .map(|i| format!("n{i}"))
            .chain(["web-*".into(), "n0".into(), "web-*".into(), "db-*".into()])
            .collect();
        let r = alarm_requests(&entries);
        assert_eq!(r.len(), 4);
        assert!(matches!(&r[0], AlarmRequest::Names(n) if n.len() == 100 && n[0] == "n0"));
        assert!(matches!(&r[1], AlarmRequest::Names(n) if n.len() == 50 && n[49] == "n149"));
        assert_eq!(r[2], AlarmRequest::Prefix("web-".into()));
        assert_eq!(r[3], AlarmRequest::Prefix("db-".into()));
        assert!(alarm_requests(&[]).is_empty());
    }

    #[test]
    fn alarm_check_table() {
        let entries = vec!["web-5xx".to_string(), "web-lat-*".to_string()];
        let found = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
            kv.iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect()
        };
        assert_eq!(alarm_check(&[], &[]), AlarmCheck::NotConfigured);
        assert_eq!(
            alarm_check(
                &entries,
                &found(&[("web-5xx", "OK"), ("web-lat-p99", "INSUFFICIENT_DATA")])
            ),
            AlarmCheck::Clear
        );
        assert_eq!(
            alarm_check(
                &entries,
                &found(&[
                    ("web-5xx", "OK"),
                    ("web-lat-p99", "ALARM"),
                    ("web-lat-p50", "ALARM"),
                    ("other", "ALARM"),
                ])
            ),
            AlarmCheck::InAlarm(vec!["web-lat-p50".into(), "web-lat-p99".into()])
        );
        // A named alarm that does not exist, or a prefix matching none: unknown.
        assert!(matches!(
            alarm_check(&entries, &found(&[("web-lat-p99", "OK")])),
            AlarmCheck::Unknown(m) if m.contains("web-5xx")
        ));
        assert!(matches!(
            alarm_check(&entries, &found(&[("web-5xx", "OK")])),
            AlarmCheck::Unknown(m) if m.contains("web-lat-*")
        ));
    }

    fn check(alarms: &AlarmCheck) -> Checks<'_> {
        Checks {
            image: &ImageCheck::Present,
            alarms,
        }
    }

    #[test]
    fn alarms_hold_the_rollout() {
        let s = base();
        let pref = v(NEW);
        let watched = Policy {
            halt_on_alarms: vec!["web-5xx".into()],
            ..Policy::default()
        };
        let at = |p: &Policy, a: &AlarmCheck| {
            decide(
                &s,
                "i-a",
                &pref,
                p,
                Some(Duration::from_secs(3600)),
                &check(a),
                NOW,
            )
        };
        assert_eq!(at(&watched, &AlarmCheck::Clear), Decision::Retire);
        let firing = at(&watched, &AlarmCheck::InAlarm(vec!["web-5xx".into()]));
        assert_eq!(firing, Decision::Wait(Wait::Alarm(vec!["web-5xx".into()])));
        assert!(matches!(
            at(&watched, &AlarmCheck::Unknown("throttled".into())),
            Decision::Wait(Wait::AlarmUnknown(e)) if e == "throttled"
        ));
        // Alarms configured but not read: wait, never go.
        assert!(matches!(
            at(&watched, &AlarmCheck::NotConfigured),
            Decision::Wait(Wait::AlarmUnknown(_))
        ));
        assert_eq!(
            at(&Policy::default(), &AlarmCheck::NotConfigured),
            Decision::Retire
        );
    }

    /// i-a, i-b on the old versions (i-a oldest); i-new on the new ones,
    /// launched at 900.
    fn rolling() -> Snapshot {
        fleet(
            3,
            vec![
                member("i-a", 100, true, OLD),
                member("i-b", 200, true, OLD),
                member("i-new", 900, false, NEW),
            ],
        )
    }

    #[test]
    fn halted_table() {
        let pref = v(NEW);
        let p = Policy::default();
        let deadline = 900 + 15 * MIN;
        let at = |s: &Snapshot, now: u64| halted(s, &pref, &p, now);
        // Booting within the deadline: not halted.
        assert_eq!(at(&rolling(), deadline - 1), None);
        // Not ready by the deadline.
        assert_eq!(
            at(&rolling(), deadline),
            Some(Halt {
                member: "i-new".into(),
                reason: HaltReason::Deadline(p.progress_deadline),
            })
        );
        // Unhealthy, or its launch hook abandoned: halted at once.
        let mut sick = rolling();
        sick.members[2].healthy = false;
        assert_eq!(at(&sick, NOW).unwrap().reason, HaltReason::Unhealthy);
        let mut abandoned = rolling();
        abandoned.members[2].abandoned = true;
        assert_eq!(
            at(&abandoned, NOW).unwrap().reason,
            HaltReason::LaunchAbandoned
        );
        // Ready in time: not halted, however long after.
        let mut fine = rolling();
        fine.members[2] = member("i-new", 900, true, NEW);
        assert_eq!(at(&fine, deadline + 3600), None);
        // Leaving on purpose (drained by a scale-in): not a halt.
        let mut leaving = rolling();
        leaving.members[2].berth_state = Some("draining".into());
        assert_eq!(at(&leaving, deadline + 3600), None);
        // Members on the old versions never halt the rollout.
        let mut old_sick = rolling();
        old_sick.members[1].healthy = false;
        old_sick.members[0].abandoned = true;
        assert_eq!(at(&old_sick, NOW), None);
        // Halted: every drifted agent waits, naming the member.
        let d = go_at(&sick, "i-a", Policy::default(), NOW);
        assert!(matches!(&d, Decision::Wait(Wait::Halted(h)) if h.member == "i-new"));
        let Decision::Wait(w) = d else { unreachable!() };
        assert_eq!(
            w.to_string(),
            "rollout halted: i-new on the preferred versions is Unhealthy"
        );
    }

    fn go_at(s: &Snapshot, me: &str, policy: Policy, now: u64) -> Decision {
        decide(
            s,
            me,
            &v(NEW),
            &policy,
            Some(Duration::from_secs(3600)),
            &CLEAR,
            now,
        )
    }

    #[test]
    fn bake_time_alone_keeps_new_members_in_the_budget_until_baked() {
        let bake = Policy {
            bake_time: Duration::from_secs(10 * MIN),
            ..Policy::default()
        };
        let mut s = rolling();
        s.members[2] = member("i-new", 900, true, NEW);
        s.members[2].ready_since = Some(1000);
        // Ready 2 minutes ago: it still uses the budget.
        let now = 1000 + 2 * MIN;
        assert_eq!(budget_unavailable(&s, &v(NEW), &bake, now), 1);
        assert_eq!(unavailable(&s), 0);
        assert_eq!(
            go_at(&s, "i-a", bake.clone(), now),
            Decision::Wait(Wait::Baking {
                member: "i-new".into(),
                left: Some(Duration::from_secs(8 * MIN)),
            })
        );
        // Baked: the next one goes.
        assert_eq!(
            go_at(&s, "i-a", bake.clone(), 1000 + 10 * MIN),
            Decision::Retire
        );
        // Without the bake time, ready is enough.
        assert_eq!(go_at(&s, "i-a", Policy::default(), now), Decision::Retire);
        // No readable berth:ready-since: never baked, and status says why.
        s.members[2].ready_since = None;
        let d = go_at(&s, "i-a", bake.clone(), 1000 + 60 * MIN);
        assert_eq!(
            d,
            Decision::Wait(Wait::Baking {
                member: "i-new".into(),
                left: None,
            })
        );
        // Behind the budget anyway: the plain answer.
        s.members[2].ready_since = Some(1000);
        assert!(matches!(
            go_at(&s, "i-b", bake, now),
            Decision::Wait(Wait::NoBudget { .. })
        ));
    }

    #[test]
    fn canary_goes_first_then_the_rest_wait_for_it_to_bake() {
        let canary = Policy {
            max_unavailable: MaxUnavailable::Count(2),
            canary: 1,
            bake_time: Duration::from_secs(10 * MIN),
            ..Policy::default()
        };
        let go = |s: &Snapshot, me: &str, now: u64| go_at(s, me, canary.clone(), now);
        // The first replacement goes; the second would fit the budget but
        // not the canary.
        let s = base();
        assert_eq!(go(&s, "i-a", NOW), Decision::Retire);
        let held = Decision::Wait(Wait::Canary {
            canary: 1,
            started: 0,
            baked: 0,
            bake_time: Duration::from_secs(10 * MIN),
        });
        assert_eq!(go(&s, "i-b", NOW), held);
        // i-a retiring, then gone (the group one short), then replaced:
        // still one started, the others wait.
        let mut retiring = base();
        retiring.members[0].berth_state = Some("retiring".into());
        let mut gone = base();
        gone.members.remove(0);
        let mut booting = base();
        booting.members[0] = member("i-new", 900, false, NEW);
        let mut untagged = booting.clone();
        untagged.members[0].versions = None;
        for s in [&retiring, &gone, &untagged, &booting] {
            assert!(
                matches!(
                    go(s, "i-b", NOW),
                    Decision::Wait(Wait::Canary { started: 1, .. })
                ),
                "{s:?}"
            );
        }
        // Ready, not yet baked: still held; baked: the rest go, k at a time.
        let mut ready = base();
        ready.members[0] = member("i-new", 900, true, NEW);
        ready.members[0].ready_since = Some(1000);
        assert!(matches!(
            go(&ready, "i-b", 1000 + 9 * MIN),
            Decision::Wait(Wait::Canary { baked: 0, .. })
        ));
        let later = 1000 + 10 * MIN;
        assert_eq!(go(&ready, "i-b", later), Decision::Retire);
        assert_eq!(go(&ready, "i-c", later), Decision::Retire);
        assert!(matches!(
            go(&ready, "i-d", later),
            Decision::Wait(Wait::NotMyTurn { .. })
        ));
    }

    /// Defect in a first design that counted canary places among ready
    /// members: i-a, older but not ready, let i-b take the only place; once
    /// ready, i-a took it again on a fresher snapshot, and two went with a
    /// canary of one. A drifted member that is not ready keeps its place.
    #[test]
    fn a_drifted_member_not_ready_keeps_its_canary_place() {
        let canary = Policy {
            max_unavailable: MaxUnavailable::Count(3),
            canary: 1,
            ..Policy::default()
        };
        let mut s = base();
        s.members[0].berth_state = Some("degraded".into());
        assert!(matches!(
            go_at(&s, "i-b", canary.clone(), NOW),
            Decision::Wait(Wait::Canary { .. })
        ));
        s.members[0].berth_state = Some("ready".into());
        assert_eq!(go_at(&s, "i-a", canary.clone(), NOW), Decision::Retire);
        assert_eq!(canary_hold(&s, "i-a", &v(NEW), &canary, NOW), None);
    }

    fn old_rollout(pin: &str, new_health: bool) -> Snapshot {
        let mut s = fleet(
            3,
            vec![
                member("i-a", 100, true, pin),
                member("i-b", 200, true, pin),
                member("i-new", 900, true, NEW),
            ],
        );
        s.members[2].healthy = new_health;
        s
    }

    fn auto() -> Policy {
        Policy {
            auto_rollback: true,
            ..Policy::default()
        }
    }

    fn back(
        s: &Snapshot,
        me: &str,
        pin: &str,
        images: &ImageCheck,
        group: &BTreeMap<String, String>,
        policy: &Policy,
    ) -> Option<Rollback> {
        let pin = v(pin);
        let target = RollbackTarget {
            versions: &pin,
            images,
        };
        let pref = v(NEW);
        rollback(s, me, &target, &pref, group, policy, NOW)
    }

    #[test]
    fn rollback_table() {
        let present = ImageCheck::Present;
        let group = tags(&[(TAG_VERSION, "2")]);
        let halted = old_rollout(OLD, false);
        // The oldest ready member on the old versions writes its own pin.
        let want = Rollback {
            tags: BTreeMap::from([
                (TAG_VERSION.to_string(), "1".to_string()),
                (TAG_ROLLED_BACK_FROM.to_string(), "web=2".to_string()),
            ]),
            rolled_back_from: "web=2".into(),
        };
        assert_eq!(
            back(&halted, "i-a", OLD, &present, &group, &auto()),
            Some(want)
        );
        assert_eq!(
            rollback_writer(&halted, &v(NEW)).map(|m| m.id.as_str()),
            Some("i-a")
        );
        // Nobody else; not when the image is gone or unknown; not when off,
        // paused, or not halted.
        assert_eq!(back(&halted, "i-b", OLD, &present, &group, &auto()), None);
        assert_eq!(back(&halted, "i-new", NEW, &present, &group, &auto()), None);
        for images in [
            ImageCheck::Missing("reg/web:1".into()),
            ImageCheck::Unknown("registry down".into()),
        ] {
            assert_eq!(back(&halted, "i-a", OLD, &images, &group, &auto()), None);
        }
        assert_eq!(
            back(&halted, "i-a", OLD, &present, &group, &Policy::default()),
            None
        );
        let paused = Policy {
            paused: true,
            ..auto()
        };
        assert_eq!(back(&halted, "i-a", OLD, &present, &group, &paused), None);
        let fine = old_rollout(OLD, true);
        assert_eq!(back(&fine, "i-a", OLD, &present, &group, &auto()), None);
        // The pin must be what the member's tag says (else the others would
        // not agree on the value).
        assert_eq!(
            back(&halted, "i-a", "web=0", &present, &group, &auto()),
            None
        );
        // i-a not ready: i-b writes the same value.
        let mut a_down = old_rollout(OLD, false);
        a_down.members[0].berth_state = Some("degraded".into());
        assert_eq!(
            back(&a_down, "i-b", OLD, &present, &group, &auto()),
            back(&halted, "i-a", OLD, &present, &group, &auto())
        );
    }

    #[test]
    fn rollback_writes_per_component_tags_when_one_version_cannot_say_it() {
        let present = ImageCheck::Present;
        let two = "proxy=1,web=1";
        let mut s = old_rollout(two, false);
        s.members[2].versions = Some(v(NEW));
        let pref = v(NEW);
        let pin = v(two);
        let target = RollbackTarget {
            versions: &pin,
            images: &present,
        };
        let run = |group: &BTreeMap<String, String>| {
            rollback(&s, "i-a", &target, &pref, group, &auto(), NOW).map(|r| r.tags)
        };
        // One version for both, no per-component tag against it.
        let agree = tags(&[(TAG_VERSION, "2"), ("berth:version:proxy", "1")]);
        assert_eq!(
            run(&agree).unwrap().get(TAG_VERSION).map(String::as_str),
            Some("1")
        );
        // A per-component tag says otherwise: per-component tags.
        let disagree = tags(&[(TAG_VERSION, "1"), ("berth:version:web", "2")]);
        let t = run(&disagree).unwrap();
        assert_eq!(t.get("berth:version:web").map(String::as_str), Some("1"));
        assert_eq!(t.get("berth:version:proxy").map(String::as_str), Some("1"));
        assert!(!t.contains_key(TAG_VERSION));
        // Different versions per component: per-component tags.
        let mixed = "proxy=0.9,web=1";
        let mut m = old_rollout(mixed, false);
        m.members[2].versions = Some(v(NEW));
        let pin = v(mixed);
        let target = RollbackTarget {
            versions: &pin,
            images: &present,
        };
        let t = rollback(&m, "i-a", &target, &pref, &agree, &auto(), NOW)
            .unwrap()
            .tags;
        assert_eq!(
            t,
            BTreeMap::from([
                ("berth:version:proxy".to_string(), "0.9".to_string()),
                ("berth:version:web".to_string(), "1".to_string()),
                (TAG_ROLLED_BACK_FROM.to_string(), "web=2".to_string()),
            ])
        );
    }

    #[test]
    fn every_new_wait_says_what_holds_the_rollout() {
        let cases = [
            (
                Wait::Alarm(vec!["web-5xx".into(), "web-lat".into()]),
                "alarm in ALARM (berth:halt-on-alarms): web-5xx, web-lat",
            ),
            (
                Wait::AlarmUnknown("throttled".into()),
                "cannot check the alarms of berth:halt-on-alarms: throttled",
            ),
            (
                Wait::Halted(Halt {
                    member: "i-1".into(),
                    reason: HaltReason::Deadline(DEFAULT_PROGRESS_DEADLINE),
                }),
                "rollout halted: i-1 on the preferred versions is not ready 15m after its launch (berth:progress-deadline)",
            ),
            (
                Wait::Halted(Halt {
                    member: "i-1".into(),
                    reason: HaltReason::LaunchAbandoned,
                }),
                "rollout halted: i-1 on the preferred versions left the group before it was ever ready (launch hook abandoned)",
            ),
            (
                Wait::Canary {
                    canary: 2,
                    started: 2,
                    baked: 1,
                    bake_time: Duration::from_secs(10 * MIN),
                },
                "canary (berth:canary=2): the others wait until the canary has been ready for 10m (1 of 2 baked, 2 started)",
            ),
            (
                Wait::Canary {
                    canary: 1,
                    started: 1,
                    baked: 0,
                    bake_time: Duration::ZERO,
                },
                "canary (berth:canary=1): the others wait until the canary is ready (0 of 1 baked, 1 started)",
            ),
            (
                Wait::Baking {
                    member: "i-1".into(),
                    left: Some(Duration::from_millis(90_500)),
                },
                "bake time (berth:bake-time): i-1 on the preferred versions counts as ready in 1m 30s",
            ),
            (
                Wait::Baking {
                    member: "i-1".into(),
                    left: None,
                },
                "bake time (berth:bake-time): i-1 on the preferred versions has no readable berth:ready-since tag",
            ),
        ];
        for (w, want) in cases {
            assert_eq!(w.to_string(), want);
        }
    }
}
