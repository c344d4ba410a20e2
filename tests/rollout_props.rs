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
    Decision, ImageCheck, MaxUnavailable, MemberView, Policy, Snapshot, decide, line, unavailable,
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

fn policy(k: u32) -> Policy {
    Policy {
        max_unavailable: MaxUnavailable::Count(k),
        drift_grace: Duration::from_secs(60),
        paused: false,
    }
}

fn ask(s: &Snapshot, me: &str, p: &Policy) -> bool {
    decide(s, me, &preferred(), p, Some(AGE), &ImageCheck::Present) == Decision::Retire
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
    /// The replacement of a retired member, booting.
    Booting,
}

#[derive(Debug, Clone)]
struct Member {
    id: String,
    launch: u64,
    drifted: bool,
    status: Status,
}

impl Member {
    fn view(&self) -> MemberView {
        let (in_service, healthy, state) = match self.status {
            Status::Ready => (true, true, "ready"),
            Status::Unready(0) => (false, true, "starting"),
            Status::Unready(1) => (true, false, "ready"),
            Status::Unready(_) => (true, true, "degraded"),
            Status::Retiring => (true, true, "retiring"),
            Status::Booting => (false, true, "starting"),
        };
        MemberView {
            id: self.id.clone(),
            launch_time: self.launch,
            in_service,
            healthy,
            berth_state: Some(state.into()),
            versions: Some(if self.drifted { old() } else { preferred() }),
            cluster: None,
        }
    }
}

/// The true state of the group and every snapshot of it so far.
struct World {
    desired: u32,
    k: u32,
    members: Vec<Member>,
    next_launch: u64,
    next_id: u32,
    /// Every true state so far, in order (each a consistent snapshot).
    history: Vec<Snapshot>,
    retired: BTreeSet<String>,
    /// What happened, for the counterexample.
    log: Vec<String>,
}

impl World {
    fn new(fleet: &[(u64, bool, bool, u8)], desired: u32, k: u32) -> World {
        let members = fleet
            .iter()
            .enumerate()
            .map(|(i, &(launch, ready, drifted, why))| Member {
                id: format!("i-{i:02}"),
                launch,
                drifted,
                status: if ready {
                    Status::Ready
                } else {
                    Status::Unready(why % 3)
                },
            })
            .collect();
        let mut w = World {
            desired,
            k,
            members,
            next_launch: 1000,
            next_id: 100,
            history: Vec::new(),
            retired: BTreeSet::new(),
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

    /// Members the gate retired whose replacement is not ready yet: the
    /// retiring ones and the booting replacements.
    fn gate_unavailable(&self) -> u32 {
        self.members
            .iter()
            .filter(|m| matches!(m.status, Status::Retiring | Status::Booting))
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

    /// (a) A retiring member is removed and replaced by a booting one.
    fn replace(&mut self, pick: Index) {
        let retiring: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].status == Status::Retiring)
            .collect();
        if retiring.is_empty() {
            return;
        }
        let i = retiring[pick.index(retiring.len())];
        let gone = self.members.remove(i);
        self.next_launch += 1;
        self.next_id += 1;
        self.members.push(Member {
            id: format!("i-{}", self.next_id),
            launch: self.next_launch,
            drifted: false,
            status: Status::Booting,
        });
        self.log.push(format!("{} replaced", gone.id));
        self.record();
    }

    /// (b) A member that is not ready (booting, or unready from the start) becomes ready.
    fn ready(&mut self, pick: Index) {
        let waiting: Vec<usize> = (0..self.members.len())
            .filter(|&i| matches!(self.members[i].status, Status::Unready(_) | Status::Booting))
            .collect();
        if waiting.is_empty() {
            return;
        }
        let i = waiting[pick.index(waiting.len())];
        self.members[i].status = Status::Ready;
        self.log.push(format!("{} ready", self.members[i].id));
        self.record();
    }

    /// A drifted agent decides on snapshot `seen` (an index into the history,
    /// or `None` for the current state); `Retire` retires it now, if it is
    /// still ready and has not retired before.
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
            (ask(snap, &self.members[i].id, &policy(self.k)), at)
        };
        let m = &mut self.members[i];
        if retire && m.status == Status::Ready && !self.retired.contains(&m.id) {
            m.status = Status::Retiring;
            self.retired.insert(m.id.clone());
            self.log.push(format!(
                "{} retires on snapshot {}",
                m.id,
                at.map_or("current".to_string(), |a| format!("#{a}"))
            ));
            self.record();
        }
    }
}

#[derive(Debug, Clone)]
struct Step {
    /// (a) replace a retiring member, else (b) a member becomes ready.
    replace: bool,
    pick: Index,
    /// Agents that decide after the change, each on a snapshot: an earlier
    /// one (`Some`) or the current one (`None`).
    decisions: Vec<(Index, Option<Index>)>,
}

fn step() -> impl Strategy<Value = Step> {
    (
        any::<bool>(),
        any::<Index>(),
        prop::collection::vec(
            (any::<Index>(), prop::option::weighted(0.7, any::<Index>())),
            0..6,
        ),
    )
        .prop_map(|(replace, pick, decisions)| Step {
            replace,
            pick,
            decisions,
        })
}

/// (launch time, ready, drifted, why unready): launch times collide on
/// purpose, so ties break by id.
fn fleet(ready: f64) -> impl Strategy<Value = Vec<(u64, bool, bool, u8)>> {
    prop::collection::vec(
        (
            0u64..60,
            prop::bool::weighted(ready),
            prop::bool::weighted(0.7),
            0u8..3,
        ),
        3..=40,
    )
}

/// Which measure of berth's unavailability the property bounds by `k`.
#[derive(Clone, Copy)]
enum Measure {
    /// Members the gate retired whose replacement is not yet ready.
    Retired,
    /// The shortfall below desired capacity that the gate added.
    Shortfall,
}

fn run(
    fleet: &[(u64, bool, bool, u8)],
    desired: u32,
    k: u32,
    steps: &[Step],
    stale: bool,
    measure: Measure,
) -> Result<(), TestCaseError> {
    let mut w = World::new(fleet, desired, k);
    let check = |w: &World| -> Result<(), TestCaseError> {
        let (what, v) = match measure {
            Measure::Retired => ("retired, not yet replaced", w.gate_unavailable()),
            Measure::Shortfall => ("shortfall added by the gate", w.gate_shortfall()),
        };
        prop_assert!(v <= w.k, "{what}: {v} > k = {}\nlog: {:#?}", w.k, w.log);
        Ok(())
    };
    for s in steps {
        if s.replace {
            w.replace(s.pick);
        } else {
            w.ready(s.pick);
        }
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
        fleet in fleet(0.8),
        delta in 0i32..=3,
        k in 1u32..=5,
        steps in prop::collection::vec(step(), 0..60),
    ) {
        run(&fleet, desired(fleet.len(), delta), k, &steps, true, Measure::Retired)?;
    }

    /// The same with fresh snapshots only.
    #[test]
    fn gate_retires_at_most_k_on_fresh_snapshots(
        fleet in fleet(0.8),
        delta in 0i32..=3,
        k in 1u32..=5,
        steps in prop::collection::vec(step(), 0..60),
    ) {
        run(&fleet, desired(fleet.len(), delta), k, &steps, false, Measure::Retired)?;
    }

    /// Stale or fresh snapshots, desired = members ± 3: the gate never adds
    /// more than `k` to the shortfall `max(0, desired − ready)`.
    #[test]
    fn gate_adds_at_most_k_shortfall_on_stale_snapshots(
        fleet in fleet(0.8),
        delta in -3i32..=3,
        k in 1u32..=5,
        steps in prop::collection::vec(step(), 0..60),
    ) {
        run(&fleet, desired(fleet.len(), delta), k, &steps, true, Measure::Shortfall)?;
    }

    /// The same with fresh snapshots only.
    #[test]
    fn gate_adds_at_most_k_shortfall_on_fresh_snapshots(
        fleet in fleet(0.8),
        delta in -3i32..=3,
        k in 1u32..=5,
        steps in prop::collection::vec(step(), 0..60),
    ) {
        run(&fleet, desired(fleet.len(), delta), k, &steps, false, Measure::Shortfall)?;
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
        fleet in fleet(0.8),
        delta in -3i32..=3,
        k in 1u32..=5,
        steps in prop::collection::vec(step(), 0..60),
    ) {
        run(&fleet, desired(fleet.len(), delta), k, &steps, true, Measure::Retired)?;
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
            .filter(|id| ask(&s, id, &p))
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
            if ask(&s, &id, &p) {
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
        drift_grace: Duration::from_secs(60),
        paused: false,
    })
}

proptest! {
    /// On one snapshot of any group, every member whose agent knows it has
    /// drifted asks; the ones told `Retire` are exactly the first
    /// `min(k − U, |line|)` of `line(snapshot)` (none if `U ≥ k`).
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
                decide(&s, &m.id, &pref, &policy, age, &ImageCheck::Present)
                    == Decision::Retire
            })
            .map(|m| m.id.clone())
            .collect();
        let k = policy.max_unavailable.resolve(desired);
        let budget = k.saturating_sub(unavailable(&s)) as usize;
        let l = line(&s, &pref);
        let want: BTreeSet<String> = l.iter().take(budget).map(|m| m.id.clone()).collect();
        let got: BTreeSet<String> = retire.into_iter().collect();
        prop_assert_eq!(got, want);
    }
}
