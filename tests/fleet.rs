//! Fleet end-to-end: a group of real agents (one `berth run` per moto
//! instance, each with its own IMDS emulator) on the real Docker engine,
//! pulling from a real registry on loopback, rolling out through moto.
//! See `support::fleet` for the harness. The Auto Scaling endpoint is the
//! recording proxy in front of moto (`support::lifecycle_proxy`), which is
//! also where AWS outages and throttling are injected.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

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
    let mut tags = vec![
        ("berth:version", "1"),
        ("berth:drift-grace", "0s"),
        ("berth:max-unavailable", k),
    ];
    tags.extend_from_slice(extra_tags);
    let f = Fleet::start(
        SIZE as i32,
        &tags,
        &images(grace, trap),
        "unhealthy_after = \"off\"",
    );
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
    let f = fleet("1", &[("berth:halt-on-alarms", alarm.as_str())], "1s", true);
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
