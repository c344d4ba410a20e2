//! Fleet end-to-end: a group of real agents (one `berth run` per moto
//! instance, each with its own IMDS emulator) on the real Docker engine,
//! pulling from a real registry on loopback, rolling out through moto.
//! See `support::fleet` for the harness. The Auto Scaling endpoint is the
//! recording proxy in front of moto (`support::lifecycle_proxy`), which is
//! also where AWS outages and throttling are injected.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use support::fleet::Fleet;
use support::lifecycle_proxy::Fault;
use support::*;

const ROLLOUT: Duration = Duration::from_secs(240);
const SIZE: usize = 4;

/// Pushes `1`, `2` and `bad` (whose container exits at once) and returns the containers TOML.
fn images(grace: &str, trap: bool) -> String {
    let reg = shared_registry();
    let repo = unique("fleet");
    for (tag, marker) in [("1", "one"), ("2", "two"), ("bad", "bad")] {
        push_variant(&reg.addr(), &repo, tag, marker);
    }
    let trap = if trap { "trap 'exit 0' TERM; " } else { "" };
    format!(
        "[[clusters.web.containers]]\nname = \"web\"\nimage = \"{}/{repo}:{{version}}\"\n\
         command = [\"sh\", \"-c\", \"{trap}test \\\"$(cat /marker)\\\" != bad || exit 1; while true; do sleep 1; done\"]\n\
         stop_grace_period = \"{grace}\"\nrestart = {{ initial_delay = \"200ms\", max_delay = \"1s\" }}\n",
        reg.addr()
    )
}

fn fleet(k: &str, extra_tags: &[(&str, &str)], grace: &str, trap: bool) -> Fleet {
    fleet_with(k, extra_tags, grace, trap, "unhealthy_after = \"off\"")
}

/// [`fleet`] with `agent_extra` in every member's `[agent]` table.
fn fleet_with(
    k: &str,
    extra_tags: &[(&str, &str)],
    grace: &str,
    trap: bool,
    agent_extra: &str,
) -> Fleet {
    let mut tags = vec![
        ("berth:version", "1"),
        ("berth:drift-grace", "0s"),
        ("berth:max-unavailable", k),
    ];
    tags.extend_from_slice(extra_tags);
    let f = Fleet::start(SIZE as i32, &tags, &images(grace, trap), agent_extra);
    wait_until("every member ready on 1", ROLLOUT, || {
        (f.ready_on("1") == SIZE).then_some(())
    });
    f
}

/// Samples the gate's unavailable count until stopped; returns the maximum seen.
struct Monitor {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    fn start(f: &Fleet) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicUsize::new(0));
        let (moto, group) = (f.moto.clone(), f.group.clone());
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let ids = moto.group_instance_ids(&group);
                let ready = ids
                    .iter()
                    .filter(|id| {
                        moto.instance_tags(id)
                            .get("berth:state")
                            .map(String::as_str)
                            == Some("ready")
                    })
                    .count();
                m.fetch_max(SIZE.saturating_sub(ready), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Monitor {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.max.load(Ordering::SeqCst)
    }
}

/// Records, for each of a set of instances, when it was first seen leaving:
/// tagged `berth:state` `retiring` or `draining` on moto, or gone from the
/// group (as the harness recorded it), whichever came first. Every time is
/// taken after the agent decided, so it is never early.
struct Departures {
    ids: Vec<String>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<String, SystemTime>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Departures {
    fn start(f: &Fleet, ids: &[String]) -> Departures {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let (moto, watched) = (f.moto.clone(), ids.to_vec());
        let (s, out) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                for (id, tags) in moto.instances_tags(&watched) {
                    let state = tags.get("berth:state").map(String::as_str);
                    if matches!(state, Some("retiring" | "draining")) {
                        out.lock()
                            .unwrap()
                            .entry(id)
                            .or_insert_with(SystemTime::now);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Departures {
            ids: ids.to_vec(),
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops, and returns when each instance that left was first seen leaving.
    fn finish(mut self, f: &Fleet) -> BTreeMap<String, SystemTime> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        let mut left = self.seen.lock().unwrap().clone();
        for (id, at) in f.terminated_at() {
            if self.ids.contains(&id) {
                let t = left.entry(id).or_insert(at);
                *t = (*t).min(at);
            }
        }
        left
    }
}

/// Whether a status says ready with every component on `version`.
fn is_ready_on(s: &serde_json::Value, version: &str) -> bool {
    s["state"] == "ready"
        && s["components"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["version"] == version))
}

/// Waits until every member says `needle`: in its status message (the
/// rollout's note) or, while it boots, in its reason.
fn all_say(f: &Fleet, what: &str, needle: &str) {
    wait_until(what, ROLLOUT, || {
        let s = f.statuses();
        let says = |s: &serde_json::Value, field: &str| {
            s[field].as_str().is_some_and(|m| m.contains(needle))
        };
        (s.len() == SIZE && s.values().all(|s| says(s, "message") || says(s, "reason")))
            .then_some(())
    });
}

fn wait_rollout(f: &Fleet, originals: &[String]) {
    wait_until(
        "every member ready on 2, none of the originals left",
        ROLLOUT,
        || {
            let ids = f.member_ids();
            (f.ready_on("2") == SIZE
                && ids.len() == SIZE
                && !ids.iter().any(|i| originals.contains(i)))
            .then_some(())
        },
    );
}

#[test]
fn a_version_bump_replaces_every_instance_within_the_budget() {
    let f = fleet("2", &[], "1s", true);
    let originals = f.member_ids();
    let monitor = Monitor::start(&f);
    f.moto.set_group_tags(&f.group, &[("berth:version", "2")]);
    // The operator rings the doorbell (docs/rollouts.md): at rest an agent
    // reads the group only every berth:rest-poll.
    f.nudge_all("operator-1");
    wait_rollout(&f, &originals);
    let max = monitor.finish();
    assert!(
        max <= 2,
        "at most max-unavailable (2) not ready at once, saw {max}"
    );
    assert!(max >= 1, "the monitor saw the rollout");
    let terminated = f.terminated();
    assert_eq!(
        terminated,
        originals.iter().cloned().collect(),
        "each original retired once"
    );
    assert_eq!(f.proxy.count("TerminateInstanceInAutoScalingGroup"), SIZE);
    for s in f.statuses().values() {
        assert!(s["drift"].as_array().unwrap().is_empty(), "{s}");
    }
}

#[test]
fn a_preferred_image_that_does_not_exist_retires_nobody() {
    let f = fleet("1", &[], "1s", true);
    f.moto
        .set_group_tags(&f.group, &[("berth:version", "nope")]);
    f.nudge_all("operator-1");
    all_say(
        &f,
        "every member says the image does not exist",
        "does not exist in its registry",
    );
    // Everyone looks again (rung again), still nobody retired.
    let calls = f.proxy.count("DescribeAutoScalingGroups");
    f.nudge_all("operator-2");
    wait_until("another look by every member", ROLLOUT, || {
        (f.proxy.count("DescribeAutoScalingGroups") >= calls + SIZE).then_some(())
    });
    assert!(f.terminated().is_empty());
    assert_eq!(f.proxy.count("TerminateInstanceInAutoScalingGroup"), 0);
    assert_eq!(f.ready_on("1"), SIZE);
}

#[test]
fn a_crash_looping_version_halts_the_rollout_after_max_unavailable() {
    let f = fleet("1", &[], "1s", true);
    let originals = f.member_ids();
    f.moto.set_group_tags(&f.group, &[("berth:version", "bad")]);
    f.nudge_all("operator-1");
    wait_until("one instance retired", ROLLOUT, || {
        (f.terminated().len() == 1).then_some(())
    });
    // The replacement never gets ready; everyone else waits for budget.
    let survivors: Vec<String> = originals
        .iter()
        .filter(|i| !f.terminated().contains(*i))
        .cloned()
        .collect();
    wait_until("the others wait for budget", ROLLOUT, || {
        let s = f.statuses();
        survivors
            .iter()
            .all(|id| {
                s.get(id)
                    .and_then(|s| s["message"].as_str())
                    .is_some_and(|m| m.contains("no budget"))
            })
            .then_some(())
    });
    let replacement: Vec<String> = f
        .member_ids()
        .into_iter()
        .filter(|i| !originals.contains(i))
        .collect();
    assert_eq!(replacement.len(), 1);
    // The component's phase flickers to "running" for a moment on every
    // restart of the loop; what must hold is that the replacement has
    // failed and never counts as ready.
    wait_until("the replacement has failed", ROLLOUT, || {
        let s = f.statuses().remove(&replacement[0])?;
        (s["components"][0]["failures"].as_u64()? >= 2).then_some(s)
    });
    let s = f.statuses();
    assert_ne!(
        s[&replacement[0]]["state"], "ready",
        "the bad version is never ready: {}",
        s[&replacement[0]]
    );
    assert_eq!(f.terminated().len(), 1, "halted after max-unavailable (1)");
    assert_eq!(f.ready_on("1"), SIZE - 1, "the old instances keep serving");
}

#[test]
fn aws_throttling_or_outage_stops_retirements_while_it_lasts() {
    let f = fleet("1", &[], "1s", true);
    let originals = f.member_ids();
    f.moto.set_group_tags(&f.group, &[("berth:version", "2")]);
    f.nudge_all("operator-1");
    wait_until("the rollout started", ROLLOUT, || {
        (!f.terminated().is_empty()).then_some(())
    });
    for (i, fault) in [Fault::Throttle, Fault::Unavailable]
        .into_iter()
        .enumerate()
    {
        f.proxy.set_fault(fault);
        let before = f.terminated().len();
        let members_before = f.moto.group_instance_ids(&f.group);
        // Members at rest look only every berth:rest-poll: ring them, so
        // that every member meets the fault (the doorbell is IMDS, which
        // the fault does not touch).
        f.nudge_all(&format!("operator-fault-{i}"));
        // A member at rest says "desired state unreadable: …" (message), a
        // replacement booting under the fault "waiting for a valid desired
        // state: …" (reason); both name the failing call.
        all_say(
            &f,
            "every member reports the AWS error",
            "DescribeAutoScalingGroups",
        );
        assert_eq!(
            f.terminated().len(),
            before,
            "no termination during {fault:?}"
        );
        assert_eq!(f.moto.group_instance_ids(&f.group), members_before);
        f.proxy.set_fault(Fault::None);
        if fault == Fault::Throttle {
            wait_until("the rollout resumed", ROLLOUT, || {
                (f.terminated().len() > before).then_some(())
            });
        }
    }
    wait_rollout(&f, &originals);
    assert_eq!(f.terminated().len(), SIZE);
}

#[test]
fn a_paused_group_retires_nobody_until_resumed() {
    let f = fleet("1", &[("berth:paused", "true")], "1s", true);
    let originals = f.member_ids();
    f.moto.set_group_tags(&f.group, &[("berth:version", "2")]);
    f.nudge_all("operator-1");
    all_say(&f, "every member says paused", "paused");
    assert!(f.terminated().is_empty());
    f.moto.delete_group_tag(&f.group, "berth:paused");
    // Resuming rings the doorbell too, as `berth fleet resume` will.
    f.nudge_all("operator-2");
    wait_rollout(&f, &originals);
    assert_eq!(f.proxy.count("TerminateInstanceInAutoScalingGroup"), SIZE);
}

#[test]
fn an_agent_killed_while_retiring_resumes_and_terminates_once() {
    // No trap: each stop takes the whole 4 s grace period, a window to kill in.
    let f = fleet("1", &[], "4s", false);
    let originals = f.member_ids();
    f.moto.set_group_tags(&f.group, &[("berth:version", "2")]);
    f.nudge_all("operator-1");
    let victim = wait_until("a member retiring", ROLLOUT, || {
        originals
            .iter()
            .find(|id| {
                f.moto
                    .instance_tags(id)
                    .get("berth:state")
                    .is_some_and(|s| s == "retiring" || s == "draining")
            })
            .cloned()
    });
    f.with_member(&victim, |m| m.agent.as_mut().map(|a| a.signal(9)));
    f.restart_agent(&victim);
    wait_rollout(&f, &originals);
    assert_eq!(f.terminated(), originals.iter().cloned().collect());
    assert_eq!(
        f.proxy.count("TerminateInstanceInAutoScalingGroup"),
        SIZE,
        "one termination per instance"
    );
    let log = f.log_of_terminated(&victim).expect("the victim's log");
    assert!(
        log.contains("resuming the retirement"),
        "the restarted agent resumed: {log}"
    );
}

/// Defect: a retirement refused by a wrong IAM policy (AccessDenied on
/// `TerminateInstanceInAutoScalingGroup`) used to retry for ever, leaving
/// the instance drained, InService and tagged `retiring`, holding the
/// group's only slot. Now it is aborted at once: the containers start
/// again, the instance is tagged `ready` again, and its status says why.
#[test]
fn a_retirement_denied_by_iam_is_aborted_and_the_instance_serves_again() {
    let f = fleet("1", &[], "1s", true);
    f.proxy
        .set_fault(Fault::Deny("TerminateInstanceInAutoScalingGroup"));
    f.moto.set_group_tags(&f.group, &[("berth:version", "2")]);
    f.nudge_all("operator-1");
    let aborted = wait_until("a retirement aborted", ROLLOUT, || {
        f.statuses().into_iter().find(|(_, s)| {
            s["message"]
                .as_str()
                .is_some_and(|m| m.contains("retirement aborted") && m.contains("AccessDenied"))
        })
    });
    let (id, _) = aborted;
    // It serves again: containers running, tagged ready, on its old pin.
    let s = wait_until("the aborted member is ready again", ROLLOUT, || {
        let s = f.statuses().remove(&id)?;
        (s["state"] == "ready"
            && f.moto
                .instance_tags(&id)
                .get("berth:state")
                .map(String::as_str)
                == Some("ready"))
        .then_some(s)
    });
    assert!(
        s["components"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "running" && c["version"] == "1"),
        "{s}"
    );
    assert!(f.terminated().is_empty(), "nobody was terminated");
    assert!(f.proxy.count("TerminateInstanceInAutoScalingGroup") >= 1);
    let log = f
        .with_member(&id, |m| {
            m.agent.as_ref().map(|a| a.log()).unwrap_or_default()
        })
        .unwrap();
    assert!(log.contains("retirement aborted"), "the ERROR names it");
}

/// The doorbell travels the real path: an operator's `CreateTags` of
/// `berth:nudge` on moto, read by each agent through its IMDS (instance
/// tags served live from moto). Agents ring the next members themselves as
/// they retire and as replacements become ready.
#[test]
fn a_nudged_rollout_travels_through_instance_metadata_tags() {
    let f = fleet("1", &[], "1s", true);
    let originals = f.member_ids();
    f.moto.set_group_tags(&f.group, &[("berth:version", "2")]);
    let rung = f.nudge_all("operator-1");
    assert_eq!(rung.len(), SIZE);
    wait_until("every original agent heard the doorbell", ROLLOUT, || {
        originals
            .iter()
            .all(|id| {
                f.with_member(id, |m| {
                    m.agent
                        .as_ref()
                        .is_some_and(|a| a.log().contains("nudged: looking at the group"))
                })
                // Already retired: it heard it (it looked and left).
                .unwrap_or(true)
            })
            .then_some(())
    });
    wait_rollout(&f, &originals);
    // Agents rang each other: some member's doorbell was last set by an
    // agent (`<instance id>@<ms>`), not by the operator.
    let by_agents = originals
        .iter()
        .filter_map(|id| f.log_of_terminated(id))
        .filter(|log| log.contains("nudged the next members in line"))
        .count();
    assert!(
        by_agents >= 1,
        "a retiring or newly ready agent rang the next members"
    );
}

/// An alarm in `ALARM` holds every retirement (read from moto's CloudWatch
/// through the real SDK); once it clears, the rollout runs.
#[test]
fn an_alarm_in_alarm_holds_the_rollout_until_it_clears() {
    let alarm = unique("api-5xx");
    // Nobody rings when an alarm clears: the held members see it on their
    // own schedule, within berth:rest-poll, here at its minimum (10s) so
    // that the test takes seconds (the default's timing is the
    // simulation's and the schedule's unit tests').
    let f = fleet(
        "1",
        &[
            ("berth:halt-on-alarms", alarm.as_str()),
            ("berth:rest-poll", "10s"),
        ],
        "1s",
        true,
    );
    f.moto.put_metric_alarm(&alarm);
    f.moto.set_alarm_state(&alarm, "ALARM");
    let originals = f.member_ids();
    f.moto.set_group_tags(&f.group, &[("berth:version", "2")]);
    f.nudge_all("operator-1");
    all_say(&f, "every member waits for the alarm", alarm.as_str());
    let looks = f.proxy.count("DescribeAlarms");
    assert!(looks >= SIZE, "every drifted agent read the alarm: {looks}");
    // Several more looks later, still nobody retired.
    wait_until("more alarm reads", ROLLOUT, || {
        (f.proxy.count("DescribeAlarms") >= looks + SIZE).then_some(())
    });
    assert!(f.terminated().is_empty());
    assert_eq!(f.proxy.count("TerminateInstanceInAutoScalingGroup"), 0);
    f.moto.set_alarm_state(&alarm, "OK");
    wait_rollout(&f, &originals);
    assert_eq!(f.terminated().len(), SIZE);
}

/// `berth:canary=1` with a bake time: after a version change the first
/// replacement goes, and nobody else retires until it has been ready on the
/// new version for the bake time (by its `berth:ready-since` tag on moto),
/// though `berth:max-unavailable` (2) would allow a second; the held
/// members say why they wait. Then the rest go.
#[test]
fn canary_and_bake_time_hold_the_second_wave() {
    // Shortened: berth:bake-time is 0 (off) by default, so it must be set;
    // 30 s keeps the test short (the default is checked by rollout's
    // `new_policy_tags_default_off_and_parse`, the bake on the gate's
    // tables). The end of the bake rings no doorbell: the held members find
    // out on their own schedule, so berth:rest-poll is at its minimum (10s;
    // its default is the gate's concern, not this test's).
    const BAKE: Duration = Duration::from_secs(30);
    let f = fleet(
        "2",
        &[
            ("berth:canary", "1"),
            ("berth:bake-time", "30s"),
            ("berth:rest-poll", "10s"),
        ],
        "1s",
        true,
    );
    let originals = f.member_ids();
    let monitor = Monitor::start(&f);
    let departures = Departures::start(&f, &originals);
    f.moto.set_group_tags(&f.group, &[("berth:version", "2")]);
    f.nudge_all("operator-1");
    let (canary, since_tag) = wait_until("the canary ready on 2", ROLLOUT, || {
        let s = f.statuses();
        let id = f
            .member_ids()
            .into_iter()
            .find(|id| !originals.contains(id) && s.get(id).is_some_and(|s| is_ready_on(s, "2")))?;
        let since = f.instance_tags(&id).get("berth:ready-since")?.clone();
        Some((id, since))
    });
    let ready_since = humantime::parse_rfc3339(&since_tag)
        .unwrap_or_else(|e| panic!("berth:ready-since {since_tag:?}: {e}"));
    let held: Vec<String> = originals
        .iter()
        .filter(|id| !f.terminated().contains(*id))
        .cloned()
        .collect();
    assert_eq!(held.len(), SIZE - 1, "one went before the canary");
    let says = "canary (berth:canary=1): the others wait until the canary has been ready for 30s";
    wait_until(
        "the held members say the canary holds them",
        ROLLOUT,
        || {
            let s = f.statuses();
            held.iter()
                .all(|id| {
                    s.get(id)
                        .and_then(|s| s["message"].as_str())
                        .is_some_and(|m| m.contains(says))
                })
                .then_some(())
        },
    );
    wait_rollout(&f, &originals);
    let max = monitor.finish();
    let left = departures.finish(&f);
    assert_eq!(
        f.instance_tags(&canary).get("berth:ready-since"),
        Some(&since_tag),
        "the canary stayed ready"
    );
    let baked = ready_since + BAKE;
    for (id, at) in &left {
        let rel = match at.duration_since(ready_since) {
            Ok(d) => format!("{:.1}s after", d.as_secs_f64()),
            Err(e) => format!("{:.1}s before", e.duration().as_secs_f64()),
        };
        eprintln!("{id} left {rel} the canary {canary} was ready ({since_tag})");
    }
    let early: Vec<&String> = left
        .iter()
        .filter(|(_, at)| **at < baked)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left.len(), SIZE, "every original left: {left:?}");
    assert_eq!(
        early.len(),
        1,
        "only the canary's predecessor left before the canary had been ready for {BAKE:?} \
         (ready since {since_tag}): {left:?}"
    );
    assert!(
        max <= 2,
        "at most max-unavailable (2) not ready at once, saw {max}"
    );
    assert_eq!(f.proxy.count("TerminateInstanceInAutoScalingGroup"), SIZE);
}

/// `berth:auto-rollback=true` and a version whose container exits at once,
/// on the default escalation (`agent.unhealthy_after`, 1m): the first
/// replacement never becomes ready, marks itself Unhealthy once its failure
/// budget has been spent that long, and nudges the next in line. That halts
/// the rollout, and the oldest ready member on the old version writes the
/// group's version back, with `berth:rolled-back-from`. The group replaces
/// the Unhealthy member (the harness does what Auto Scaling does) with one
/// that boots the old version. Nobody else retired.
#[test]
fn a_crash_looping_version_is_rolled_back_automatically() {
    let f = fleet_with("1", &[("berth:auto-rollback", "true")], "1s", true, "");
    let originals = f.member_ids();
    let t0 = std::time::Instant::now();
    f.moto.set_group_tags(&f.group, &[("berth:version", "bad")]);
    f.nudge_all("operator-1");
    let sick = wait_until("a replacement on bad", ROLLOUT, || {
        f.member_ids().into_iter().find(|id| {
            !originals.contains(id)
                && f.instance_tags(id)
                    .get("berth:versions")
                    .map(String::as_str)
                    == Some("web=bad")
        })
    });
    let survivors: Vec<String> = originals
        .iter()
        .filter(|id| !f.terminated().contains(*id))
        .cloned()
        .collect();
    assert_eq!(survivors.len(), SIZE - 1, "one went first");
    eprintln!("{sick} on bad after {:.1?}", t0.elapsed());
    let tags = wait_until("the group rolled back", ROLLOUT, || {
        let t = f.group_tags();
        t.contains_key("berth:rolled-back-from").then_some(t)
    });
    eprintln!("rolled back after {:.1?}", t0.elapsed());
    assert_eq!(tags["berth:rolled-back-from"], "web=bad");
    assert_eq!(tags["berth:version"], "1");
    wait_until(
        "every member ready on 1, the failed replacement gone",
        ROLLOUT,
        || {
            (f.ready_on("1") == SIZE
                && f.member_ids().len() == SIZE
                && f.terminated().contains(&sick))
            .then_some(())
        },
    );
    eprintln!("every member ready on 1 after {:.1?}", t0.elapsed());
    assert!(
        f.health_replaced().contains(&sick),
        "the group replaced the failed member for its health: {:?}",
        f.health_replaced()
    );
    let log = f.log_of_terminated(&sick).expect("the failed member's log");
    assert!(log.contains("instance marked Unhealthy"), "{log}");
    assert!(log.contains("nudged the next members in line"), "{log}");
    let members = f.member_ids();
    for id in &survivors {
        assert!(
            members.contains(id),
            "{id} never retired: the rollout halted; its log:\n{}",
            f.log_of_terminated(id).unwrap_or_default()
        );
    }
    // One writer: the oldest ready member on the old version.
    let launched = f.moto.launch_times(&survivors);
    let oldest = survivors
        .iter()
        .min_by_key(|id| (launched[*id], (*id).clone()))
        .unwrap();
    let writers: Vec<&String> = survivors
        .iter()
        .filter(|id| {
            f.with_member(id, |m| {
                m.agent
                    .as_ref()
                    .is_some_and(|a| a.log().contains("rolling the group back"))
            })
            .unwrap_or(false)
        })
        .collect();
    assert_eq!(writers, vec![oldest], "the oldest old member rolled back");
    // The failed member's nudge reached it through IMDS (whether or not
    // its own poll came first).
    let log = f
        .with_member(oldest, |m| m.agent.as_ref().map(|a| a.log()))
        .flatten()
        .unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("nudged") && l.contains(&sick)),
        "the writer heard {sick}'s nudge: {log}"
    );
    assert_eq!(
        f.proxy.count("CreateOrUpdateTags"),
        1,
        "the group's tags were written once"
    );
}
