//! Properties of the real rollout gate, [`berth::rollout::decide`].
//!
//! - Safety: agents deciding on fresh or stale (but consistent) snapshots
//!   never make the gate's own unavailability exceed `k`. Two measures:
//!   - *retired*: members the gate retired whose replacement is not ready
//!     yet (retiring, or the replacement booting) — the design's claim as
//!     stated. Holds whenever desired capacity ≥ members; with extra members
//!     (desired < members, a scale-in) it fails even on fresh snapshots, see
//!     [`gate_retires_at_most_k_even_during_scale_in`] (ignored, reported).
//!   - *shortfall*: how much the gate adds to `max(0, desired − ready)`, i.e.
//!     that minus what it would be had every gate-retired slot stayed ready.
//!     Holds for every desired capacity.
//!
//!   The history model: a fleet of 3–40 members (launch times collide on
//!   purpose, so ties break by id), each ready or not (not ready for reasons
//!   berth did not cause: booting, unhealthy or degraded), drifted or not;
//!   desired capacity = members + `delta`; `k` in 1..=5 (a count). Each step
//!   changes the true state by (a) removing a retiring member and launching
//!   its booting, non-drifted replacement, or (b) a not-ready member (an
//!   initial one or a replacement) becoming ready; then a few drifted agents
//!   ask the gate, each on a snapshot that is the true state at an earlier
//!   instant (any recorded state, from the start on) or the current one.
//!   `Retire` retires that member at once in the true state, if it is still
//!   ready there (so at most once). The measure is checked after every
//!   change.
//! - Progress: a healthy, fully drifted fleet always retires someone, and
//!   exactly `min(k, members)` if everyone asks.
//! - Agreement: for one snapshot, the members told `Retire` are exactly the
//!   first `min(budget, |line|)` of [`line`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use berth::rollout::{
    AlarmCheck, Checks, Decision, ImageCheck, MaxUnavailable, MemberView, Policy, RollbackTarget,
    Snapshot, decide, halted, line, rollback, rollback_writer, unavailable,
};
use proptest::prelude::*;
use proptest::sample::Index;

fn versions(v: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("web".to_string(), v.to_string())])
}

fn old() -> BTreeMap<String, String> {
    versions("1")
}

fn preferred() -> BTreeMap<String, String> {
    versions("2")
}

/// Drift has lasted well past any grace.
const AGE: Duration = Duration::from_secs(3600);

/// Longer than any history here: no member misses the progress deadline
/// (halts have properties of their own).
const DAY: Duration = Duration::from_secs(24 * 3600);

fn policy(k: u32) -> Policy {
    Policy {
        max_unavailable: MaxUnavailable::Count(k),
        drift_grace: Duration::from_secs(60),
        paused: false,
        progress_deadline: DAY,
        ..Policy::default()
    }
}

/// Images present, no alarms.
const CLEAR: Checks<'static> = Checks {
    image: &ImageCheck::Present,
    alarms: &AlarmCheck::NotConfigured,
};

/// The model's clock starts here (seconds since the epoch); initial members
/// were launched at 0..60.
const T0: u64 = 1000;

fn ask(s: &Snapshot, me: &str, p: &Policy, now: u64) -> bool {
    decide(s, me, &preferred(), p, Some(AGE), &CLEAR, now) == Decision::Retire
}

// ---------------------------------------------------------------------------
// Safety under stale snapshots
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// InService, Healthy, `ready`.
    Ready,
    /// Not ready at the start, for reasons berth did not cause (booting,
    /// unhealthy or degraded); may become ready later.
    Unready(u8),
    /// Told `Retire` by the gate: draining, not ready.
    Retiring,
    /// The replacement of a retired member, launched but not tagged yet:
    /// its versions are unknown ([`Replace::InSteps`] only).
    Untagged,
    /// The replacement of a retired member, booting.
    Booting,
}

#[derive(Debug, Clone)]
struct Member {
    id: String,
    launch: u64,
    drifted: bool,
    status: Status,
    /// Its `berth:ready-since`.
    ready_since: Option<u64>,
    /// Launched by the model to replace a retired member.
    replacement: bool,
}

impl Member {
    fn view(&self) -> MemberView {
        let (in_service, healthy, state) = match self.status {
            Status::Ready => (true, true, "ready"),
            Status::Unready(0) => (false, true, "starting"),
            Status::Unready(1) => (true, false, "ready"),
            Status::Unready(_) => (true, true, "degraded"),
            Status::Retiring => (true, true, "retiring"),
            Status::Untagged | Status::Booting => (false, true, "starting"),
        };
        MemberView {
            id: self.id.clone(),
            launch_time: self.launch,
            in_service,
            healthy,
            berth_state: Some(state.into()),
            versions: match (self.status, self.drifted) {
                (Status::Untagged, _) => None,
                (_, true) => Some(old()),
                (_, false) => Some(preferred()),
            },
            cluster: None,
            ready_since: self.ready_since,
            abandoned: false,
            nudge: None,
        }
    }

    /// On the preferred versions, ready for the bake time at `now`.
    fn baked(&self, bake: Duration, now: u64) -> bool {
        !self.drifted
            && self.status == Status::Ready
            && (bake.is_zero() || self.ready_since.is_some_and(|t| t + bake.as_secs() <= now))
    }
}

/// How the group replaces a retired member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// In one instant: the retiring member is removed and its booting,
    /// tagged replacement appears.
    Atomic,
    /// In three steps, each an instant of its own: the retiring member is
    /// removed (the group is one short), the replacement is launched with
    /// no tags (versions unknown), then tagged (booting).
    InSteps,
}

/// The true state of the group and every snapshot of it so far.
struct World {
    desired: u32,
    policy: Policy,
    replace: Replace,
    members: Vec<Member>,
    /// Members removed whose replacement is not launched yet.
    pending: u32,
    next_id: u32,
    /// The model's clock (seconds since the epoch); agents decide at this
    /// time whatever the age of their snapshot.
    now: u64,
    /// Every true state so far, in order (each a consistent snapshot).
    history: Vec<Snapshot>,
    retired: BTreeSet<String>,
    /// What had started on the new versions at the beginning: members on the
    /// preferred versions and capacity the group had yet to launch.
    started0: u32,
    /// What happened, for the counterexample.
    log: Vec<String>,
}

/// An initial member: (launch time, ready, drifted, why unready, ready for
/// how long at the start).
type Initial = (u64, bool, bool, u8, u64);

impl World {
    fn new(fleet: &[Initial], desired: u32, policy: Policy, replace: Replace) -> World {
        let members: Vec<Member> = fleet
            .iter()
            .enumerate()
            .map(|(i, &(launch, ready, drifted, why, ready_for))| Member {
                id: format!("i-{i:02}"),
                launch,
                drifted,
                status: match (ready, why % 3) {
                    (true, _) => Status::Ready,
                    // A member on the preferred versions is never Unhealthy
                    // here: that halts the rollout (a property of its own).
                    (false, 1) if !drifted => Status::Unready(2),
                    (false, why) => Status::Unready(why),
                },
                ready_since: ready.then_some(T0.saturating_sub(ready_for)),
                replacement: false,
            })
            .collect();
        let started0 = members.iter().filter(|m| !m.drifted).count() as u32
            + desired.saturating_sub(members.len() as u32);
        let mut w = World {
            desired,
            policy,
            replace,
            members,
            pending: 0,
            next_id: 100,
            now: T0,
            history: Vec::new(),
            retired: BTreeSet::new(),
            started0,
            log: Vec::new(),
        };
        w.record();
        w
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            desired_capacity: self.desired,
            members: self.members.iter().map(Member::view).collect(),
            cluster: None,
        }
    }

    fn record(&mut self) {
        self.history.push(self.snapshot());
    }

    /// With a bake time and no canary, the budget waits for replacements
    /// to bake, not only to be ready.
    fn bake_alone(&self) -> bool {
        !self.policy.bake_time.is_zero() && self.policy.canary == 0
    }

    /// Members the gate retired whose replacement is not ready yet (baked,
    /// with a bake time and no canary): the retiring ones, the removed ones
    /// not yet relaunched, and the replacements until then.
    fn gate_unavailable(&self) -> u32 {
        let bake = self.policy.bake_time;
        self.pending
            + self
                .members
                .iter()
                .filter(|m| match m.status {
                    Status::Retiring | Status::Untagged | Status::Booting => true,
                    Status::Ready => self.bake_alone() && m.replacement && !m.baked(bake, self.now),
                    Status::Unready(_) => false,
                })
                .count() as u32
    }

    /// The unavailability berth adds: `max(0, desired − ready)` minus what it
    /// would be had the gate retired nobody (each gate-retired slot ready).
    fn gate_shortfall(&self) -> u32 {
        let ready = self
            .members
            .iter()
            .filter(|m| m.status == Status::Ready)
            .count() as u32;
        let now = self.desired.saturating_sub(ready);
        let without = self.desired.saturating_sub(ready + self.gate_unavailable());
        now - without
    }

    /// At least `berth:canary` members on the preferred versions are baked.
    fn canary_baked(&self) -> bool {
        let baked = self
            .members
            .iter()
            .filter(|m| m.baked(self.policy.bake_time, self.now))
            .count() as u32;
        baked >= self.policy.canary
    }

    fn launch(&mut self, status: Status) {
        self.next_id += 1;
        self.members.push(Member {
            id: format!("i-{}", self.next_id),
            launch: self.now,
            drifted: false,
            status,
            ready_since: None,
            replacement: true,
        });
    }

    /// The group moves on: with [`Replace::Atomic`], `kind` 0 and 1 replace
    /// a retiring member, 2 and 3 make a member ready; with
    /// [`Replace::InSteps`], 0 removes a retiring member, 1 launches a
    /// replacement, 2 tags one, 3 makes a member ready.
    fn change(&mut self, kind: u8, pick: Index) {
        let pick_of = |w: &World, f: &dyn Fn(&Member) -> bool| -> Option<usize> {
            let v: Vec<usize> = (0..w.members.len()).filter(|&i| f(&w.members[i])).collect();
            (!v.is_empty()).then(|| v[pick.index(v.len())])
        };
        let what = match (self.replace, kind) {
            (Replace::Atomic, 0 | 1) => {
                let Some(i) = pick_of(self, &|m| m.status == Status::Retiring) else {
                    return;
                };
                let gone = self.members.remove(i);
                self.launch(Status::Booting);
                format!("{} replaced", gone.id)
            }
            (Replace::InSteps, 0) => {
                let Some(i) = pick_of(self, &|m| m.status == Status::Retiring) else {
                    return;
                };
                let gone = self.members.remove(i);
                self.pending += 1;
                format!("{} removed", gone.id)
            }
            (Replace::InSteps, 1) => {
                if self.pending == 0 {
                    return;
                }
                self.pending -= 1;
                self.launch(Status::Untagged);
                format!("i-{} launched", self.next_id)
            }
            (Replace::InSteps, 2) => {
                let Some(i) = pick_of(self, &|m| m.status == Status::Untagged) else {
                    return;
                };
                self.members[i].status = Status::Booting;
                format!("{} tagged", self.members[i].id)
            }
            _ => {
                let Some(i) = pick_of(self, &|m| {
                    matches!(m.status, Status::Unready(_) | Status::Booting)
                }) else {
                    return;
                };
                self.members[i].status = Status::Ready;
                self.members[i].ready_since = Some(self.now);
                format!("{} ready", self.members[i].id)
            }
        };
        self.log.push(format!("t={}: {what}", self.now));
        self.record();
    }

    /// A drifted agent decides on snapshot `seen` (an index into the history,
    /// or `None` for the current state) at the current time; `Retire`
    /// retires it now, if it is still ready and has not retired before.
    fn decide(&mut self, agent: Index, seen: Option<Index>) {
        let drifted: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].drifted)
            .collect();
        if drifted.is_empty() {
            return;
        }
        let i = drifted[agent.index(drifted.len())];
        let (retire, at) = {
            let (snap, at) = match seen {
                Some(s) => {
                    let at = s.index(self.history.len());
                    (&self.history[at], Some(at))
                }
                None => (self.history.last().expect("history is never empty"), None),
            };
            (ask(snap, &self.members[i].id, &self.policy, self.now), at)
        };
        let m = &mut self.members[i];
        if retire && m.status == Status::Ready && !self.retired.contains(&m.id) {
            m.status = Status::Retiring;
            self.retired.insert(m.id.clone());
            self.log.push(format!(
                "t={}: {} retires on snapshot {}",
                self.now,
                m.id,
                at.map_or("current".to_string(), |a| format!("#{a}"))
            ));
            self.record();
        }
    }
}

#[derive(Debug, Clone)]
struct Step {
    /// The clock moves on by this many seconds first.
    advance: u64,
    /// What changes in the group: see [`World::change`].
    kind: u8,
    pick: Index,
    /// Agents that decide after the change, each on a snapshot: an earlier
    /// one (`Some`) or the current one (`None`).
    decisions: Vec<(Index, Option<Index>)>,
}

/// A step; the clock moves by up to `max_advance` seconds.
fn step(max_advance: u64) -> impl Strategy<Value = Step> {
    (
        0..=max_advance,
        0u8..4,
        any::<Index>(),
        prop::collection::vec(
            (any::<Index>(), prop::option::weighted(0.7, any::<Index>())),
            0..6,
        ),
    )
        .prop_map(|(advance, kind, pick, decisions)| Step {
            advance,
            kind,
            pick,
            decisions,
        })
}

/// Initial members, each ready with probability `ready` and drifted with
/// `drifted`: launch times collide on purpose, so ties break by id; ready
/// members have been ready for up to 1,000 s.
fn fleet(ready: f64, drifted: f64) -> impl Strategy<Value = Vec<Initial>> {
    prop::collection::vec(
        (
            0u64..60,
            prop::bool::weighted(ready),
            prop::bool::weighted(drifted),
            0u8..3,
            0u64..1000,
        ),
        3..=40,
    )
}

/// What the property bounds.
#[derive(Clone, Copy)]
enum Measure {
    /// Members the gate retired whose replacement is not yet ready (or
    /// baked, with a bake time and no canary): at most `k`.
    Retired,
    /// The shortfall below desired capacity that the gate added: at most `k`.
    Shortfall,
    /// Until `berth:canary` members on the preferred versions are baked,
    /// retirements: at most `canary − started₀`.
    Canary,
}

fn run(
    fleet: &[Initial],
    desired: u32,
    policy: Policy,
    replace: Replace,
    steps: &[Step],
    stale: bool,
    measures: &[Measure],
) -> Result<(), TestCaseError> {
    let k = policy.max_unavailable.resolve(desired);
    let mut w = World::new(fleet, desired, policy, replace);
    let check = |w: &World| -> Result<(), TestCaseError> {
        for m in measures {
            let (what, v, max) = match m {
                Measure::Retired => ("retired, not yet replaced", w.gate_unavailable(), k),
                Measure::Shortfall => ("shortfall added by the gate", w.gate_shortfall(), k),
                Measure::Canary if w.canary_baked() => continue,
                Measure::Canary => (
                    "retired before the canary baked",
                    w.retired.len() as u32,
                    w.policy.canary.saturating_sub(w.started0),
                ),
            };
            prop_assert!(v <= max, "{what}: {v} > {max}\nlog: {:#?}", w.log);
        }
        Ok(())
    };
    for s in steps {
        w.now += s.advance;
        w.change(s.kind, s.pick);
        check(&w)?;
        for &(agent, seen) in &s.decisions {
            w.decide(agent, if stale { seen } else { None });
            check(&w)?;
        }
    }
    Ok(())
}

fn desired(members: usize, delta: i32) -> u32 {
    (members as i32 + delta).max(0) as u32
}

proptest! {
    /// Stale or fresh snapshots, desired ≥ members (`delta` in 0..=3): the
    /// members the gate retired whose replacement is not yet ready never
    /// exceed `k`.
    #[test]
    fn gate_retires_at_most_k_on_stale_snapshots(
        fleet in fleet(0.8, 0.7),
        delta in 0i32..=3,
        k in 1u32..=5,
        steps in prop::collection::vec(step(0), 0..60),
    ) {
        let d = desired(fleet.len(), delta);
        run(&fleet, d, policy(k), Replace::Atomic, &steps, true, &[Measure::Retired])?;
    }

    /// The same with fresh snapshots only.
    #[test]
    fn gate_retires_at_most_k_on_fresh_snapshots(
        fleet in fleet(0.8, 0.7),
        delta in 0i32..=3,
        k in 1u32..=5,
        steps in prop::collection::vec(step(0), 0..60),
    ) {
        let d = desired(fleet.len(), delta);
        run(&fleet, d, policy(k), Replace::Atomic, &steps, false, &[Measure::Retired])?;
    }

    /// Stale or fresh snapshots, desired = members ± 3: the gate never adds
    /// more than `k` to the shortfall `max(0, desired − ready)`.
    #[test]
    fn gate_adds_at_most_k_shortfall_on_stale_snapshots(
        fleet in fleet(0.8, 0.7),
        delta in -3i32..=3,
        k in 1u32..=5,
        steps in prop::collection::vec(step(0), 0..60),
    ) {
        let d = desired(fleet.len(), delta);
        run(&fleet, d, policy(k), Replace::Atomic, &steps, true, &[Measure::Shortfall])?;
    }

    /// The same with fresh snapshots only.
    #[test]
    fn gate_adds_at_most_k_shortfall_on_fresh_snapshots(
        fleet in fleet(0.8, 0.7),
        delta in -3i32..=3,
        k in 1u32..=5,
        steps in prop::collection::vec(step(0), 0..60),
    ) {
        let d = desired(fleet.len(), delta);
        run(&fleet, d, policy(k), Replace::Atomic, &steps, false, &[Measure::Shortfall])?;
    }

    /// The design's claim over every desired capacity, members ± 3. Fails
    /// today, even on fresh snapshots, when desired < members: because
    /// `U = max(0, desired − ready)` ignores not-ready members while there
    /// are extra ones, the gate retires up to `k + (members − desired)`.
    /// Minimal counterexample: 3 ready, drifted members, desired 2, k = 1:
    /// the oldest retires (U = max(0, 2 − 2) = 0), then the next (U still 0),
    /// then U = 1 stops the third — 2 retired at once with k = 1. If the Auto
    /// Scaling group then terminates its extra member (a scale-in), the
    /// shortfall is 2 > k. Counting every not-ready member
    /// (`U = max(desired, members) − ready`) would make this hold; reported
    /// to the lead, not weakened.
    #[test]
    fn gate_retires_at_most_k_even_during_scale_in(
        fleet in fleet(0.8, 0.7),
        delta in -3i32..=3,
        k in 1u32..=5,
        steps in prop::collection::vec(step(0), 0..60),
    ) {
        let d = desired(fleet.len(), delta);
        run(&fleet, d, policy(k), Replace::Atomic, &steps, true, &[Measure::Retired])?;
    }

    /// `berth:canary` n with any `berth:bake-time` (0 included), on stale
    /// or fresh snapshots, replacements appearing in steps (the group one
    /// short, then a member with unknown versions, then tagged), the clock
    /// moving: until n members on the preferred versions are baked, at most
    /// `n − started₀` members retire (never more than n replacements), and
    /// never more than `k` are retired and not yet replaced.
    #[test]
    fn canary_retires_at_most_n_before_n_are_baked(
        fleet in fleet(0.8, 0.95),
        delta in 0i32..=3,
        k in 1u32..=5,
        n in 1u32..=4,
        bake in 0u64..=600,
        steps in prop::collection::vec(step(300), 0..60),
    ) {
        let d = desired(fleet.len(), delta);
        let p = Policy {
            canary: n,
            bake_time: Duration::from_secs(bake),
            ..policy(k)
        };
        let all = [Measure::Retired, Measure::Canary];
        run(&fleet, d, p, Replace::InSteps, &steps, true, &all)?;
    }

    /// `berth:bake-time` alone, on stale or fresh snapshots, replacements
    /// appearing in steps, the clock moving: never more than `k` members
    /// retired whose replacement has not been ready for the bake time.
    #[test]
    fn bake_time_keeps_at_most_k_retired_until_baked(
        fleet in fleet(0.8, 0.95),
        delta in 0i32..=3,
        k in 1u32..=5,
        bake in 1u64..=600,
        steps in prop::collection::vec(step(300), 0..60),
    ) {
        let d = desired(fleet.len(), delta);
        let p = Policy {
            bake_time: Duration::from_secs(bake),
            ..policy(k)
        };
        run(&fleet, d, p, Replace::InSteps, &steps, true, &[Measure::Retired])?;
    }

    /// Replacements in steps, no canary or bake time: still at most `k`.
    #[test]
    fn gate_retires_at_most_k_when_replacements_appear_in_steps(
        fleet in fleet(0.8, 0.7),
        delta in 0i32..=3,
        k in 1u32..=5,
        steps in prop::collection::vec(step(0), 0..60),
    ) {
        let d = desired(fleet.len(), delta);
        run(&fleet, d, policy(k), Replace::InSteps, &steps, true, &[Measure::Retired])?;
    }
}

// ---------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------

/// A healthy fleet: every member ready and drifted, desired = members.
fn healthy(launches: &[u64]) -> Snapshot {
    Snapshot {
        desired_capacity: launches.len() as u32,
        members: launches
            .iter()
            .enumerate()
            .map(|(i, &launch)| {
                Member {
                    id: format!("i-{i:02}"),
                    launch,
                    drifted: true,
                    status: Status::Ready,
                    ready_since: Some(launch),
                    replacement: false,
                }
                .view()
            })
            .collect(),
        cluster: None,
    }
}

/// The members of `s` ordered by (launch time, id).
fn by_age(s: &Snapshot) -> Vec<String> {
    let mut v: Vec<&MemberView> = s.members.iter().collect();
    v.sort_by(|a, b| (a.launch_time, &a.id).cmp(&(b.launch_time, &b.id)));
    v.into_iter().map(|m| m.id.clone()).collect()
}

fn healthy_fleet() -> impl Strategy<Value = (Vec<u64>, Vec<usize>)> {
    (1usize..=40).prop_flat_map(|n| {
        (
            prop::collection::vec(0u64..100, n),
            Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
        )
    })
}

proptest! {
    /// Everyone asks on the same snapshot: exactly the oldest `min(k, n)`
    /// members are told `Retire` (so at least one).
    #[test]
    fn healthy_fleet_retires_oldest_min_k_on_one_snapshot(
        (launches, _order) in healthy_fleet(),
        k in 1u32..=10,
    ) {
        let s = healthy(&launches);
        let p = policy(k);
        let retire: Vec<String> = by_age(&s)
            .into_iter()
            .filter(|id| ask(&s, id, &p, T0))
            .collect();
        let want = (k as usize).min(launches.len());
        prop_assert!(!retire.is_empty());
        prop_assert_eq!(&retire[..], &by_age(&s)[..want]);
    }

    /// Everyone asks once, in a random order, each on a fresh snapshot that
    /// shows the retirements so far: exactly `min(k, n)` retire.
    #[test]
    fn healthy_fleet_retires_min_k_on_fresh_snapshots(
        (launches, order) in healthy_fleet(),
        k in 1u32..=10,
    ) {
        let mut s = healthy(&launches);
        let p = policy(k);
        let mut retired = 0;
        for i in order {
            let id = s.members[i].id.clone();
            if ask(&s, &id, &p, T0) {
                s.members[i].berth_state = Some("retiring".into());
                retired += 1;
            }
            prop_assert!(unavailable(&s) <= k);
        }
        prop_assert_eq!(retired, (k as usize).min(launches.len()));
    }
}

// ---------------------------------------------------------------------------
// Agreement
// ---------------------------------------------------------------------------

fn any_member() -> impl Strategy<Value = (u64, bool, bool, Option<&'static str>, u8)> {
    (
        0u64..50,
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.9),
        prop::sample::select(vec![
            Some("ready"),
            Some("ready"),
            Some("ready"),
            Some("starting"),
            Some("degraded"),
            Some("draining"),
            Some("retiring"),
            None,
        ]),
        0u8..5,
    )
}

fn any_policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        (1u32..=10).prop_map(MaxUnavailable::Count),
        (1u32..=100).prop_map(MaxUnavailable::Percent),
    ]
    .prop_map(|max_unavailable| Policy {
        max_unavailable,
        ..policy(1)
    })
}

proptest! {
    /// On one snapshot of any group, every member whose agent knows it has
    /// drifted asks; the ones told `Retire` are exactly the first
    /// `min(k − U, |line|)` of `line(snapshot)` (none if `U ≥ k`, or if the
    /// rollout is halted: a member on the preferred versions is Unhealthy).
    #[test]
    fn retirees_are_the_head_of_the_line(
        members in prop::collection::vec(any_member(), 0..=40),
        desired in 0u32..=45,
        policy in any_policy(),
    ) {
        let pref = preferred();
        let s = Snapshot {
            desired_capacity: desired,
            members: members
                .iter()
                .enumerate()
                .map(|(i, &(launch, in_service, healthy, state, v))| MemberView {
                    id: format!("i-{i:02}"),
                    launch_time: launch,
                    in_service,
                    healthy,
                    berth_state: state.map(str::to_string),
                    // 0, 1: old; 2: new; 3: two components; 4: tag missing.
                    versions: match v {
                        0 | 1 => Some(old()),
                        2 => Some(pref.clone()),
                        3 => Some(BTreeMap::from([
                            ("web".to_string(), "2".to_string()),
                            ("proxy".to_string(), "1".to_string()),
                        ])),
                        _ => None,
                    },
                    cluster: None,
                    ready_since: Some(launch),
                    abandoned: false,
                    nudge: None,
                })
                .collect(),
            cluster: None,
        };
        let retire: Vec<String> = s
            .members
            .iter()
            .filter(|m| {
                // The agent knows its own pin; only the tag may be missing.
                let age = (m.versions.as_ref() != Some(&pref)).then_some(AGE);
                decide(&s, &m.id, &pref, &policy, age, &CLEAR, T0) == Decision::Retire
            })
            .map(|m| m.id.clone())
            .collect();
        let k = policy.max_unavailable.resolve(desired);
        let budget = k.saturating_sub(unavailable(&s)) as usize;
        let l = line(&s, &pref);
        let budget = if halted(&s, &pref, &policy, T0).is_some() { 0 } else { budget };
        let want: BTreeSet<String> = l.iter().take(budget).map(|m| m.id.clone()).collect();
        let got: BTreeSet<String> = retire.into_iter().collect();
        prop_assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------------------
// Halts and rollbacks
// ---------------------------------------------------------------------------

/// Now, in the halt and rollback properties.
const NOW: u64 = 2000;

/// A member of a rollout: (launch time, on the new versions (else the old),
/// lifecycle (0 ready, 1 booting, 2 degraded, 3 draining, 4 no versions tag),
/// healthy, launch hook abandoned, ready since (`None`: no tag)).
type Any = (u64, bool, u8, bool, bool, Option<u64>);

fn any_rollout_member() -> impl Strategy<Value = Any> {
    (
        0u64..2000,
        any::<bool>(),
        0u8..5,
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.1),
        prop::option::of(0u64..2000),
    )
}

/// A snapshot of members on `old` or `new` versions.
fn rollout_snapshot(
    members: &[Any],
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Snapshot {
    Snapshot {
        desired_capacity: members.len() as u32,
        members: members
            .iter()
            .enumerate()
            .map(
                |(i, &(launch, on_new, life, healthy, abandoned, ready_since))| MemberView {
                    id: format!("i-{i:02}"),
                    launch_time: launch,
                    in_service: life != 1,
                    healthy,
                    berth_state: Some(
                        ["ready", "starting", "degraded", "draining", "ready"][life as usize]
                            .into(),
                    ),
                    versions: match (life, on_new) {
                        (4, _) => None,
                        (_, true) => Some(new.clone()),
                        (_, false) => Some(old.clone()),
                    },
                    cluster: None,
                    ready_since,
                    abandoned,
                    nudge: None,
                },
            )
            .collect(),
        cluster: None,
    }
}

fn deadline_policy(deadline_min: u64) -> Policy {
    Policy {
        progress_deadline: Duration::from_secs(deadline_min * 60),
        auto_rollback: true,
        ..Policy::default()
    }
}

proptest! {
    /// `halted` names the oldest member on the preferred versions that is
    /// Unhealthy, abandoned its launch hook, or is not ready (and not
    /// leaving) the progress deadline after its launch; members on other
    /// versions never matter; and while halted, nobody is told `Retire`.
    #[test]
    fn halted_names_the_oldest_failing_member_on_the_preferred_versions(
        members in prop::collection::vec(any_rollout_member(), 0..=30),
        deadline_min in 1u64..=30,
        k in 1u32..=10,
    ) {
        let (old, new) = (old(), preferred());
        let s = rollout_snapshot(&members, &old, &new);
        let p = Policy { max_unavailable: MaxUnavailable::Count(k), ..deadline_policy(deadline_min) };
        let deadline = deadline_min * 60;
        let want = s
            .members
            .iter()
            .filter(|m| m.versions.as_ref() == Some(&new))
            .filter(|m| {
                let leaving = matches!(m.berth_state.as_deref(), Some("retiring" | "draining"));
                !m.healthy
                    || m.abandoned
                    || (!m.ready() && !leaving && m.launch_time + deadline <= NOW)
            })
            .min_by_key(|m| (m.launch_time, m.id.clone()))
            .map(|m| m.id.clone());
        let got = halted(&s, &new, &p, NOW);
        prop_assert_eq!(got.as_ref().map(|h| h.member.clone()), want);
        // Members on other versions never matter.
        let mut others = s.clone();
        for m in others.members.iter_mut().filter(|m| m.versions.as_ref() != Some(&new)) {
            m.healthy = !m.healthy;
            m.abandoned = !m.abandoned;
            m.launch_time = 0;
        }
        prop_assert_eq!(halted(&others, &new, &p, NOW), got.clone());
        if got.is_some() {
            for m in &s.members {
                let d = decide(&s, &m.id, &new, &p, Some(AGE), &CLEAR, NOW);
                prop_assert!(matches!(d, Decision::Wait(_)), "{} told {:?}", m.id, d);
            }
        }
    }
}

/// Components of the rollback properties.
const COMPONENTS: [&str; 2] = ["proxy", "web"];

/// Versions from one value per component.
fn pin(vs: &[&str; 2]) -> BTreeMap<String, String> {
    COMPONENTS
        .iter()
        .zip(vs)
        .map(|(c, v)| (c.to_string(), v.to_string()))
        .collect()
}

/// The preferred versions the group's tags name, as `desired::resolve` reads them.
fn preferred_of(tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    COMPONENTS
        .iter()
        .filter_map(|c| {
            tags.get(&format!("berth:version:{c}"))
                .or(tags.get("berth:version"))
                .map(|v| (c.to_string(), v.clone()))
        })
        .collect()
}

/// Group tags that name `preferred`: `berth:version` (maybe) plus
/// per-component tags where needed and, per `extra`, where not.
fn tags_for(
    preferred: &BTreeMap<String, String>,
    default: Option<&str>,
    extra: [bool; 2],
) -> BTreeMap<String, String> {
    let mut t = BTreeMap::new();
    if let Some(d) = default {
        t.insert("berth:version".to_string(), d.to_string());
    }
    for (c, x) in COMPONENTS.iter().zip(extra) {
        let v = &preferred[*c];
        if x || default != Some(v.as_str()) {
            t.insert(format!("berth:version:{c}"), v.clone());
        }
    }
    t
}

fn version() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["1", "1.1", "2", "2.1"])
}

/// A change between two snapshots of a halted rollout: (member, what: 0
/// retires, 1 is removed, 2 degrades, 3 recovers, 4 new member turns
/// Unhealthy, 5 new member recovers).
fn any_change() -> impl Strategy<Value = (Index, u8)> {
    (any::<Index>(), 0u8..6)
}

proptest! {
    /// Over a rollout's snapshots of any age, while the old members share
    /// one pin, every member that would write a rollback (at most one per
    /// snapshot: the [`rollback_writer`]) writes the same tags; those tags
    /// make the preferred versions that pin; nobody writes when the pin's
    /// images are missing or unknown.
    #[test]
    fn a_rollback_writes_one_value(
        old_vs in (version(), version()),
        new_vs in (version(), version()),
        default in prop::option::of(version()),
        extra in any::<[bool; 2]>(),
        members in prop::collection::vec(any_rollout_member(), 1..=20),
        changes in prop::collection::vec(any_change(), 0..30),
    ) {
        let old = pin(&[old_vs.0, old_vs.1]);
        let new = pin(&[new_vs.0, new_vs.1]);
        prop_assume!(old != new);
        let group = tags_for(&new, default, extra);
        prop_assert_eq!(preferred_of(&group), new.clone());
        let p = deadline_policy(15);
        // Every snapshot of the rollout, as the members' states change.
        let mut s = rollout_snapshot(&members, &old, &new);
        let mut history = vec![s.clone()];
        for (pick, what) in changes {
            if s.members.is_empty() {
                break;
            }
            let i = pick.index(s.members.len());
            let m = &mut s.members[i];
            match what {
                0 => m.berth_state = Some("retiring".into()),
                1 => {
                    s.members.remove(i);
                }
                2 => m.berth_state = Some("degraded".into()),
                3 => {
                    m.berth_state = Some("ready".into());
                    m.in_service = true;
                    m.healthy = true;
                }
                4 if m.versions.as_ref() == Some(&new) => m.healthy = false,
                _ => m.healthy = true,
            }
            history.push(s.clone());
        }
        let mut written: Option<berth::rollout::Rollback> = None;
        for snap in &history {
            let mut writers = 0;
            for m in &snap.members {
                let Some(mine) = m.versions.as_ref() else { continue };
                for images in [
                    ImageCheck::Missing("reg/web:1".into()),
                    ImageCheck::Unknown("registry down".into()),
                ] {
                    let target = RollbackTarget { versions: mine, images: &images };
                    prop_assert_eq!(rollback(snap, &m.id, &target, &new, &group, &p, NOW), None);
                }
                let target = RollbackTarget { versions: mine, images: &ImageCheck::Present };
                let Some(r) = rollback(snap, &m.id, &target, &new, &group, &p, NOW) else {
                    continue;
                };
                writers += 1;
                prop_assert!(halted(snap, &new, &p, NOW).is_some());
                prop_assert_eq!(
                    rollback_writer(snap, &new).map(|w| w.id.clone()),
                    Some(m.id.clone())
                );
                // Applied, the tags make the old pin preferred.
                let mut after = group.clone();
                after.extend(r.tags.clone());
                prop_assert_eq!(preferred_of(&after), old.clone());
                prop_assert_eq!(after.get("berth:rolled-back-from"), Some(&r.rolled_back_from));
                match &written {
                    None => written = Some(r),
                    Some(w) => prop_assert_eq!(w, &r),
                }
            }
            prop_assert!(writers <= 1, "{} writers on one snapshot", writers);
        }
    }

    /// On one snapshot with old members on different pins, at most one
    /// member writes a rollback, and only to its own pin.
    #[test]
    fn one_writer_per_snapshot_whatever_the_pins(
        members in prop::collection::vec((any_rollout_member(), version()), 1..=20),
        new_vs in (version(), version()),
    ) {
        let new = pin(&[new_vs.0, new_vs.1]);
        let group = tags_for(&new, None, [false, false]);
        let mut s = rollout_snapshot(
            &members.iter().map(|(m, _)| *m).collect::<Vec<_>>(),
            &new,
            &new,
        );
        for (m, (_, v)) in s.members.iter_mut().zip(&members) {
            if let Some(mine) = m.versions.as_mut() {
                mine.insert("web".into(), v.to_string());
            }
        }
        let p = deadline_policy(15);
        let mut writers = Vec::new();
        for m in &s.members {
            let Some(mine) = m.versions.as_ref() else { continue };
            let target = RollbackTarget { versions: mine, images: &ImageCheck::Present };
            if let Some(r) = rollback(&s, &m.id, &target, &new, &group, &p, NOW) {
                let mut after = group.clone();
                after.extend(r.tags);
                prop_assert_eq!(&preferred_of(&after), mine);
                writers.push(m.id.clone());
            }
        }
        prop_assert!(writers.len() <= 1, "writers: {:?}", writers);
    }
}
