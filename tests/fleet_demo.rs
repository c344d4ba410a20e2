//! The fleet demo behind `packaging/demo/fleet.sh`: five instances of one
//! autoscaling group on moto, each with its own IMDS emulator and its own
//! `berth run`, on the real Docker engine, pulling from a registry on
//! loopback (the `support::fleet` harness of `tests/fleet.rs`).
//!
//! It changes the group's `berth:version` from 1 to 2 and draws a live line
//! per instance while the group replaces itself under
//! `berth:max-unavailable` = 2, then sets a typo'd version and shows that
//! nobody retires, and why. It checks what it shows (never more than k
//! unavailable, each original instance retired once, nobody retired for the
//! typo) and fails otherwise, so it doubles as a smoke test.
//!
//! Ignored in the suite; run it with the script, or by hand:
//! `cargo test --test fleet_demo -- --ignored --nocapture`. On a terminal
//! the view redraws in place; otherwise it prints plain lines every few
//! seconds. SIGINT or SIGTERM stop it cleanly: agents, containers, moto,
//! the registry and the pulled images go.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::fleet::Fleet;
use support::*;

/// Instances in the group.
const SIZE: usize = 5;
/// `berth:max-unavailable`.
const K: usize = 2;
/// `berth:drift-grace`, shortened for the demo (the default is 60 s).
const GRACE: &str = "5s";
/// The typo'd version.
const TYPO: &str = "2.O";
/// The longest any one step may take before the demo gives up.
const STEP: Duration = Duration::from_secs(90);
/// How often the view looks at the group (and samples the unavailable count).
const TICK: Duration = Duration::from_millis(250);
/// How long the typo is watched after every agent has said why it stays.
const WATCH_TYPO: Duration = Duration::from_secs(5);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[test]
#[ignore = "the fleet demo: run packaging/demo/fleet.sh"]
fn fleet_demo() {
    watch_signals();
    let start = Instant::now();
    let term = Mutex::new(Term::new());
    let mut sum = Summary::default();
    let result = run(&term, start, &mut sum);
    let took = start.elapsed();
    if result.as_ref().is_err_and(|e| e == "interrupted") {
        println!("\ninterrupted after {}; cleaned up", secs(took));
        std::process::exit(130);
    }
    if let Err(e) = &result {
        sum.failures.push(e.clone());
    }
    sum.print(&term, took);
    assert!(
        sum.failures.is_empty(),
        "the fleet demo failed: {}",
        sum.failures.join("; ")
    );
}

/// Turns SIGINT and SIGTERM into [`INTERRUPTED`]: every wait then ends and
/// the demo cleans up before it exits. Later signals are ignored, so the
/// clean-up is not cut short.
fn watch_signals() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
            let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
            let _ = tx.send(());
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            INTERRUPTED.store(true, SeqCst);
        });
    });
    let _ = rx.recv();
}

fn interrupted() -> Result<(), String> {
    if INTERRUPTED.load(SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Calls `f` every [`TICK`] until it returns `Some`; an error on timeout or
/// interruption.
fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        interrupted()?;
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() >= deadline {
            return Err(format!(
                "timed out after {} waiting for {what}",
                secs(deadline)
            ));
        }
        std::thread::sleep(TICK);
    }
}

/// Sleeps `d`, but ends early (with an error) when interrupted.
fn pause(d: Duration) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < d {
        interrupted()?;
        std::thread::sleep(TICK.min(d - start.elapsed()));
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

// ---------------------------------------------------------------------------
// The demo.

#[derive(Default)]
struct Summary {
    rollout: Option<Duration>,
    retirements: usize,
    terminate_calls: usize,
    max_unavailable: Option<usize>,
    typo: Option<Duration>,
    typo_reason: Option<String>,
    failures: Vec<String>,
}

impl Summary {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }

    fn print(&self, term: &Mutex<Term>, took: Duration) {
        let mut t = term.lock().unwrap();
        t.heading("summary");
        let dash = || "-".to_string();
        let ok = |b: bool| if b { "ok" } else { "FAILED" };
        let mut lines = vec![
            format!(
                "rollout 1 -> 2   {}: {} retirements, {} TerminateInstanceInAutoScalingGroup calls",
                self.rollout.map_or_else(dash, |d| format!(
                    "{SIZE} instances replaced in {}",
                    secs(d)
                )),
                self.retirements,
                self.terminate_calls,
            ),
            match self.max_unavailable {
                Some(m) => format!(
                    "unavailable      at most {m} at once, k = {K}: {}",
                    ok(m <= K)
                ),
                None => "unavailable      not measured".to_string(),
            },
            match self.typo {
                Some(d) => format!("typo {TYPO}         nobody retired in {}", secs(d)),
                None => format!("typo {TYPO}         not reached"),
            },
        ];
        if let Some(r) = &self.typo_reason {
            lines.push(format!("                 {r}"));
        }
        lines.push(format!(
            "time             {} after the build, clean-up included (the goal: under 2 minutes{})",
            secs(took),
            if took > Duration::from_secs(120) {
                "; MISSED"
            } else {
                ""
            }
        ));
        if self.failures.is_empty() {
            lines.push("checks           all passed".to_string());
        }
        for f in &self.failures {
            lines.push(format!("FAILED           {f}"));
        }
        t.text(&lines);
    }
}

fn say(term: &Mutex<Term>, heading: &str) {
    term.lock().unwrap().heading(heading);
}

fn note(term: &Mutex<Term>, lines: &[String]) {
    term.lock().unwrap().text(lines);
}

/// The whole demo: images, the fleet, the scenario, then the clean-up.
fn run(term: &Mutex<Term>, start: Instant, sum: &mut Summary) -> Result<(), String> {
    say(
        term,
        "a registry on loopback; pushing the images web:1 and web:2",
    );
    let registry = Registry::start();
    let repo_dir = format!("berth-fleet-demo-{}", std::process::id());
    let repo = format!("{repo_dir}/web");
    for (tag, marker) in [("1", "one"), ("2", "two")] {
        push_variant(&registry.addr(), &repo, tag, marker);
    }
    let image = format!("{}/{repo}:{{version}}", registry.addr());
    note(
        term,
        &[format!(
            "{image}: FROM scratch + busybox; the container sleeps, and drains for a second when stopped"
        )],
    );
    let containers = format!(
        "[[clusters.web.containers]]\nname = \"web\"\nimage = \"{image}\"\n\
         command = [\"sh\", \"-c\", \"trap 'sleep 1; exit 0' TERM; while true; do sleep 1; done\"]\n\
         stop_grace_period = \"3s\"\n"
    );
    let result = (|| {
        interrupted()?;
        say(
            term,
            &format!(
                "moto and one autoscaling group of {SIZE} instances, each with its own IMDS emulator and berth agent"
            ),
        );
        let k = K.to_string();
        let tags = [
            ("berth:version", "1"),
            ("berth:max-unavailable", k.as_str()),
            ("berth:drift-grace", GRACE),
        ];
        let fleet = Fleet::start(SIZE as i32, &tags, &containers, "");
        note(
            term,
            &[
                format!(
                    "group {}: berth:cluster=web berth:version=1 berth:max-unavailable={K} berth:drift-grace={GRACE}",
                    fleet.group
                ),
                "(berth:drift-grace is shortened for the demo; the default is 60s. The agents look at the group on berth's own schedule: every 5s to 15s at rest in a group this size.)"
                    .to_string(),
            ],
        );
        let mon = Monitor::new(start, format!("{}/{repo_dir}/", registry.addr()));
        let result = std::thread::scope(|s| {
            let _stop = StopOnDrop(&mon.stop);
            s.spawn(|| view(&fleet, term, &mon));
            let r = scenario(&fleet, term, &mon, sum);
            mon.settle();
            r
        });
        sum.max_unavailable = mon.measured();
        sum.retirements = fleet.terminated().len();
        sum.terminate_calls = fleet.proxy.count("TerminateInstanceInAutoScalingGroup");
        if let Err(e) = &result
            && e != "interrupted"
        {
            diagnostics(&fleet, term, e);
        }
        let what = "agents, containers, moto, the registry, the pulled images, temp dirs";
        if INTERRUPTED.load(SeqCst) {
            say(term, &format!("interrupted: cleaning up {what}"));
        } else {
            say(term, &format!("cleaning up: {what}"));
        }
        drop(fleet);
        result
    })();
    drop(registry);
    remove_pulled_images(&repo);
    result
}

fn aws_command(group: &str, value: &str) -> String {
    format!(
        "$ aws autoscaling create-or-update-tags --tags \
         ResourceId={group},ResourceType=auto-scaling-group,Key=berth:version,Value={value},PropagateAtLaunch=false"
    )
}

/// The doorbell: `berth:nudge` on the group's oldest members (docs/rollouts.md).
fn nudge_command(group: &str) -> String {
    format!(
        "$ aws ec2 create-tags --tags Key=berth:nudge,Value=$(date +%s) --resources $(aws ec2 describe-instances \
         --filters Name=tag:aws:autoscaling:groupName,Values={group} Name=instance-state-name,Values=running \
         --query 'sort_by(Reservations[].Instances[], &LaunchTime)[:5].InstanceId' --output text)"
    )
}

fn scenario(
    fleet: &Fleet,
    term: &Mutex<Term>,
    mon: &Monitor,
    sum: &mut Summary,
) -> Result<(), String> {
    wait_for("every instance ready on 1", STEP, || {
        let l = mon.latest()?;
        (l.ready_on("1") == SIZE && l.snap.members.len() == SIZE && l.unavailable() == 0)
            .then_some(())
    })?;
    mon.settle();
    let originals: BTreeSet<String> = mon
        .latest()
        .map(|l| l.snap.members.iter().map(|m| m.id.clone()).collect())
        .unwrap_or_default();

    say(term, "the operators change one value: berth:version=2");
    note(
        term,
        &[
            aws_command(&fleet.group, "2"),
            nudge_command(&fleet.group),
            "(here: the same CreateOrUpdateTags and CreateTags calls, on moto; the doorbell is read through IMDS)".into(),
            format!(
                "Each agent sees the drift, waits out the drift grace ({GRACE}), and retires when the gate lets it:"
            ),
            format!(
                "oldest first, never more than k = {K} unavailable. The group launches a replacement, which pins 2."
            ),
        ],
    );
    mon.measuring.store(true, SeqCst);
    let t = Instant::now();
    fleet
        .moto
        .set_group_tags(&fleet.group, &[("berth:version", "2")]);
    fleet.nudge_all("operator-2");
    wait_for("every instance replaced and ready on 2", STEP, || {
        let l = mon.latest()?;
        (l.ready_on("2") == SIZE
            && l.snap.members.len() == SIZE
            && !l.snap.members.iter().any(|m| originals.contains(&m.id))
            && l.unavailable() == 0)
            .then_some(())
    })?;
    sum.rollout = Some(t.elapsed());
    mon.settle();
    let max = mon.measured().unwrap_or(0);
    sum.check(
        max <= K,
        format!("{max} unavailable at once, more than k = {K}"),
    );
    sum.check(max >= 1, "the view never saw an instance unavailable");
    // The harness follows the group a moment behind this view.
    let _ = wait_for("the harness to see the last retirement", TICK * 20, || {
        (fleet.terminated() == originals).then_some(())
    });
    let terminated = fleet.terminated();
    sum.check(
        terminated == originals,
        format!("retired {terminated:?}, expected each of {originals:?} once"),
    );
    let calls = fleet.proxy.count("TerminateInstanceInAutoScalingGroup");
    sum.check(
        calls == SIZE,
        format!("{calls} TerminateInstanceInAutoScalingGroup calls, expected {SIZE}"),
    );
    note(
        term,
        &[format!(
            "every instance replaced in {}, at most {max} unavailable at once (k = {K})",
            secs(t.elapsed())
        )],
    );

    say(term, &format!("a typo: berth:version={TYPO}"));
    note(
        term,
        &[
            aws_command(&fleet.group, TYPO),
            "Every agent checks that the preferred image exists in its registry before it may retire.".into(),
        ],
    );
    let members: BTreeSet<String> = mon
        .latest()
        .map(|l| l.snap.members.iter().map(|m| m.id.clone()).collect())
        .unwrap_or_default();
    let t = Instant::now();
    fleet
        .moto
        .set_group_tags(&fleet.group, &[("berth:version", TYPO)]);
    fleet.nudge_all("operator-typo");
    const MISSING: &str = "does not exist in its registry";
    wait_for("every agent to report the missing image", STEP, || {
        let l = mon.latest()?;
        (l.snap.preferred == TYPO
            && l.status.len() == SIZE
            && l.status.values().all(|s| message(s).contains(MISSING)))
        .then_some(())
    })?;
    mon.settle();
    note(
        term,
        &[format!(
            "every agent says why it stays; watching {} more",
            secs(WATCH_TYPO)
        )],
    );
    pause(WATCH_TYPO)?;
    sum.typo = Some(t.elapsed());
    mon.settle();
    let l = mon.latest().ok_or("no look at the group")?;
    let now: BTreeSet<String> = l.snap.members.iter().map(|m| m.id.clone()).collect();
    sum.check(
        now == members,
        format!("the typo changed the group: {members:?} became {now:?}"),
    );
    sum.check(
        fleet.proxy.count("TerminateInstanceInAutoScalingGroup") == calls,
        "the typo retired an instance",
    );
    sum.check(
        l.ready_on("2") == SIZE,
        format!("after the typo only {} ready on 2", l.ready_on("2")),
    );

    // The view stops here: what follows is the last word.
    mon.stop.store(true, SeqCst);
    let first = l.snap.members.first().ok_or("no member")?;
    let addr = fleet
        .with_member(&first.id, |m| m.fx.status_addr.clone())
        .ok_or("the member went away")?;
    say(term, &format!("the reason, from the agent of {}", first.id));
    let out = berth(&["status", "--addr", &addr], &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = vec![format!("$ berth status        # on {}", first.id)];
    lines.extend(text.lines().map(str::to_string));
    note(term, &lines);
    sum.typo_reason = text
        .lines()
        .find_map(|l| l.strip_prefix("message"))
        .map(|m| m.trim().to_string());
    sum.check(
        sum.typo_reason
            .as_deref()
            .is_some_and(|m| m.contains(MISSING)),
        format!("`berth status` does not say the image is missing: {text}"),
    );
    Ok(())
}

/// After a failed step: the last lines of every agent's log.
fn diagnostics(fleet: &Fleet, term: &Mutex<Term>, error: &str) {
    say(term, &format!("FAILED: {error}"));
    for id in fleet.member_ids() {
        let log = fleet
            .with_member(&id, |m| m.agent.as_ref().map(|a| a.log()))
            .flatten()
            .unwrap_or_default();
        let mut lines = vec![format!("--- the agent of {id}, last lines of its log ---")];
        let all: Vec<&str> = log.lines().collect();
        lines.extend(
            all[all.len().saturating_sub(12)..]
                .iter()
                .map(|l| l.to_string()),
        );
        note(term, &lines);
    }
}

/// Removes the images the agents pulled from the demo's registry.
fn remove_pulled_images(repo: &str) {
    let Ok(list) = docker_ok(&["images", "--format", "{{.Repository}} {{.ID}}"]) else {
        return;
    };
    let suffix = format!("/{repo}");
    let ids: BTreeSet<&str> = list
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(r, _)| r.ends_with(&suffix))
        .map(|(_, id)| id)
        .collect();
    for id in ids {
        let _ = docker_ok(&["rmi", "-f", id]);
    }
}

fn message(status: &Value) -> &str {
    status["message"].as_str().unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Looking at the group.

/// One member as the group and EC2 describe it.
#[derive(Clone, Default)]
struct Inst {
    id: String,
    lifecycle: String,
    health: String,
    /// The `berth:state` tag.
    state: String,
    /// The `berth:versions` tag.
    versions: String,
    launched: Option<i64>,
}

impl Inst {
    /// Ready in the gate's eyes.
    fn ready(&self) -> bool {
        self.lifecycle == "InService" && self.health == "Healthy" && self.state == "ready"
    }
}

/// One look at the group: `DescribeAutoScalingGroups`, then
/// `DescribeInstances` for its members (oldest first).
#[derive(Clone, Default)]
struct Snap {
    desired: usize,
    preferred: String,
    members: Vec<Inst>,
}

async fn snapshot(
    asg: &aws_sdk_autoscaling::Client,
    ec2: &aws_sdk_ec2::Client,
    group: &str,
) -> Result<Snap, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let out = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .map_err(|e| err(&aws_sdk_autoscaling::error::DisplayErrorContext(&e)))?;
    let g = out
        .auto_scaling_groups()
        .first()
        .ok_or_else(|| format!("no group {group}"))?;
    let preferred = g
        .tags()
        .iter()
        .find(|t| t.key() == Some("berth:version"))
        .and_then(|t| t.value())
        .unwrap_or_default()
        .to_string();
    let mut members: Vec<Inst> = g
        .instances()
        .iter()
        .map(|i| Inst {
            id: i.instance_id().unwrap_or_default().to_string(),
            lifecycle: i
                .lifecycle_state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            health: i.health_status().unwrap_or_default().to_string(),
            ..Inst::default()
        })
        .collect();
    if !members.is_empty() {
        let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        let out = ec2
            .describe_instances()
            .set_instance_ids(Some(ids))
            .send()
            .await
            .map_err(|e| err(&aws_sdk_ec2::error::DisplayErrorContext(&e)))?;
        for i in out.reservations().iter().flat_map(|r| r.instances()) {
            let Some(m) = members
                .iter_mut()
                .find(|m| Some(m.id.as_str()) == i.instance_id())
            else {
                continue;
            };
            m.launched = i.launch_time().map(|t| t.secs());
            for t in i.tags() {
                match t.key() {
                    Some("berth:state") => m.state = t.value().unwrap_or_default().into(),
                    Some("berth:versions") => m.versions = t.value().unwrap_or_default().into(),
                    _ => {}
                }
            }
        }
    }
    members.sort_by(|a, b| (a.launched, &a.id).cmp(&(b.launched, &b.id)));
    Ok(Snap {
        desired: g.desired_capacity().unwrap_or(0).max(0) as usize,
        preferred,
        members,
    })
}

/// A look at the group and at every member's `/status`.
struct Look {
    snap: Snap,
    status: BTreeMap<String, Value>,
    retired: usize,
}

impl Look {
    fn ready(&self) -> usize {
        self.snap.members.iter().filter(|m| m.ready()).count()
    }

    /// What the gate counts: max(desired, members) − ready.
    fn unavailable(&self) -> usize {
        self.snap
            .desired
            .max(self.snap.members.len())
            .saturating_sub(self.ready())
    }

    /// Members ready (in the gate's eyes and their own) and pinned to `version`.
    fn ready_on(&self, version: &str) -> usize {
        let tag = format!("web={version}");
        self.snap
            .members
            .iter()
            .filter(|m| {
                m.ready()
                    && m.versions == tag
                    && self
                        .status
                        .get(&m.id)
                        .is_some_and(|s| s["state"] == "ready")
            })
            .count()
    }
}

/// The view's state shared with the scenario.
struct Monitor {
    started: Instant,
    /// `REGISTRY/REPO/` of the images, left out of the notes in the view.
    image_prefix: String,
    /// Whether the unavailable count is being measured (from the version change on).
    measuring: AtomicBool,
    max: AtomicUsize,
    /// Draws requested by [`Monitor::settle`] and done by the view.
    requested: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
    latest: Mutex<Option<Arc<Look>>>,
}

impl Monitor {
    fn new(started: Instant, image_prefix: String) -> Monitor {
        Monitor {
            started,
            image_prefix,
            measuring: AtomicBool::new(false),
            max: AtomicUsize::new(0),
            requested: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            latest: Mutex::new(None),
        }
    }

    fn latest(&self) -> Option<Arc<Look>> {
        self.latest.lock().unwrap().clone()
    }

    fn measured(&self) -> Option<usize> {
        self.measuring.load(SeqCst).then(|| self.max.load(SeqCst))
    }

    /// Waits until the view has looked at the group and drawn it once more.
    fn settle(&self) {
        let want = self.requested.fetch_add(1, SeqCst) + 1;
        let start = Instant::now();
        while self.done.load(SeqCst) < want
            && start.elapsed() < Duration::from_secs(5)
            && !self.stop.load(SeqCst)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// The view: looks at the group every [`TICK`], samples the unavailable
/// count, and draws one line per instance under a header line.
fn view(fleet: &Fleet, term: &Mutex<Term>, mon: &Monitor) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let cfg = fleet.moto.sdk_config();
    let (asg, ec2) = (
        aws_sdk_autoscaling::Client::new(&cfg),
        aws_sdk_ec2::Client::new(&cfg),
    );
    while !mon.stop.load(SeqCst) {
        let want = mon.requested.load(SeqCst);
        if let Ok(snap) = rt.block_on(snapshot(&asg, &ec2, &fleet.group)) {
            let status = snap
                .members
                .iter()
                .filter_map(|m| {
                    let addr = fleet.with_member(&m.id, |mm| mm.fx.status_addr.clone())?;
                    let (_, body) = http_get(&addr, "/status")?;
                    Some((m.id.clone(), serde_json::from_str(&body).ok()?))
                })
                .collect();
            let look = Look {
                snap,
                status,
                retired: fleet.terminated().len(),
            };
            let unavailable = look.unavailable();
            if mon.measuring.load(SeqCst) {
                mon.max.fetch_max(unavailable, SeqCst);
            }
            let (lines, key) = draw(&look, mon);
            *mon.latest.lock().unwrap() = Some(Arc::new(look));
            term.lock()
                .unwrap()
                .live(&lines, &key, want > mon.done.load(SeqCst));
        }
        mon.done.store(want, SeqCst);
        if mon.requested.load(SeqCst) == want {
            std::thread::sleep(TICK);
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The lines of the view, and a key that changes when anything but the
/// clock does (off a terminal, unchanged views are printed less often).
fn draw(look: &Look, mon: &Monitor) -> (Vec<Line>, String) {
    use Style::*;
    let snap = &look.snap;
    let unavailable = look.unavailable();
    let measuring = mon.measuring.load(SeqCst);
    let on_new = look.ready_on(&snap.preferred);
    let mut header: Line = vec![
        (Dim, format!("[{:>4}] ", secs(mon.started.elapsed()))),
        (Cyan, format!("berth:version={}", snap.preferred)),
        (
            Plain,
            format!(
                " · desired {} · ready {} · on {}: {on_new} · unavailable ",
                snap.desired,
                look.ready(),
                snap.preferred
            ),
        ),
    ];
    let over = measuring && unavailable > K;
    header.push((if over { Red } else { Bold }, format!("{unavailable} now")));
    if measuring {
        let max = mon.max.load(SeqCst);
        header.push((Plain, " / ".into()));
        header.push((if max > K { Red } else { Bold }, format!("{max} max")));
        header.push((Plain, format!(" (k = {K})")));
    }
    header.push((Plain, format!(" · retired {}", look.retired)));
    let mut key = format!(
        "{} {} {} {unavailable} {}",
        snap.preferred,
        snap.desired,
        look.ready(),
        look.retired
    );
    let mut lines = vec![header];
    let now = now_secs();
    for m in &snap.members {
        let status = look.status.get(&m.id);
        let note = status
            .map(|s| {
                let msg = message(s);
                if !msg.is_empty() {
                    // The image's name in full is in `berth status`, below.
                    msg.replace(&mon.image_prefix, "")
                } else if s["state"] != "ready" {
                    s["reason"].as_str().unwrap_or_default().to_string()
                } else {
                    String::new()
                }
            })
            .unwrap_or_else(|| "(agent starting)".into());
        let state = if m.state.is_empty() { "-" } else { &m.state };
        let state_style = match state {
            "ready" => Green,
            "degraded" => Red,
            "-" => Dim,
            _ => Yellow,
        };
        let versions = if m.versions.is_empty() {
            "-"
        } else {
            &m.versions
        };
        let version_style = if m.versions == format!("web={}", snap.preferred) {
            Cyan
        } else {
            Plain
        };
        let age = m
            .launched
            .map(|l| secs(Duration::from_secs((now - l).max(0) as u64)))
            .unwrap_or_else(|| "-".into());
        let lifecycle = if m.health == "Healthy" {
            m.lifecycle.clone()
        } else {
            format!("{}/{}", m.lifecycle, m.health)
        };
        lines.push(vec![
            (Plain, format!("  {:<20} ", m.id)),
            (Plain, format!("{lifecycle:<10} ")),
            (state_style, format!("{state:<9}")),
            (version_style, format!(" {versions:<8}")),
            (Plain, format!(" {age:>6}  ")),
            (Dim, note.clone()),
        ]);
        key += &format!(
            "\n{} {} {} {} {} {note}",
            m.id, m.lifecycle, m.health, state, versions
        );
    }
    (lines, key)
}

// ---------------------------------------------------------------------------
// The terminal.

#[derive(Clone, Copy, PartialEq)]
enum Style {
    Plain,
    Bold,
    Dim,
    Green,
    Yellow,
    Red,
    Cyan,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Style::Plain => "",
            Style::Bold => "\x1b[1m",
            Style::Dim => "\x1b[2m",
            Style::Green => "\x1b[32m",
            Style::Yellow => "\x1b[33m",
            Style::Red => "\x1b[31m",
            Style::Cyan => "\x1b[36m",
        }
    }
}

type Line = Vec<(Style, String)>;

/// Standard output: on a terminal, the live view is redrawn in place with
/// ANSI cursor movement and colour (`NO_COLOR` turns colour off); elsewhere
/// it is printed as plain lines, when it changed and at most every few
/// seconds (or every 15 s when nothing changed).
struct Term {
    tty: bool,
    color: bool,
    /// Width to clip live lines to (a wrapped line would break the redraw):
    /// `BERTH_DEMO_COLUMNS`, else 120.
    cols: usize,
    /// Lines of the live view on screen below the cursor's line.
    drawn: usize,
    /// When the view was last printed off a terminal, and its key.
    printed: Option<(Instant, String)>,
}

impl Term {
    fn new() -> Term {
        let tty = std::io::stdout().is_terminal();
        Term {
            tty,
            color: tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            cols: std::env::var("BERTH_DEMO_COLUMNS")
                .ok()
                .and_then(|c| c.trim().parse().ok())
                .filter(|&c| c >= 40)
                .unwrap_or(120),
            drawn: 0,
            printed: None,
        }
    }

    fn render(&self, line: &Line, clip: bool) -> String {
        let mut out = String::new();
        let mut left = if clip && self.tty {
            self.cols - 1
        } else {
            usize::MAX
        };
        for (style, text) in line {
            let part: String = text.chars().take(left).collect();
            left -= part.chars().count();
            if self.color && *style != Style::Plain {
                out += style.code();
                out += &part;
                out += "\x1b[0m";
            } else {
                out += &part;
            }
        }
        out
    }

    fn write(&self, s: &str) {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(s.as_bytes());
        let _ = o.flush();
    }

    /// `== heading`; the live view drawn so far stays above it.
    fn heading(&mut self, text: &str) {
        let s = format!(
            "\n{}\n",
            self.render(&vec![(Style::Bold, format!("== {text}"))], false)
        );
        self.write(&s);
        self.drawn = 0;
        self.printed = None;
    }

    fn text(&mut self, lines: &[String]) {
        let mut s = String::new();
        for l in lines {
            s += &format!("   {l}\n");
        }
        self.write(&s);
        self.drawn = 0;
        self.printed = None;
    }

    /// Draws the live view: in place on a terminal; off one, printed when
    /// it changed (at once if `force`, else at most every 3 s) or every 15 s.
    fn live(&mut self, lines: &[Line], key: &str, force: bool) {
        if self.tty {
            let mut s = String::new();
            if self.drawn > 0 {
                // To the start of the view's first line, and clear to the end.
                s += &format!("\x1b[{}F\x1b[J", self.drawn);
            }
            for l in lines {
                s += &self.render(l, true);
                s.push('\n');
            }
            self.drawn = lines.len();
            self.write(&s);
            return;
        }
        let due = match &self.printed {
            None => true,
            Some((at, k)) => {
                (k != key && (force || at.elapsed() >= Duration::from_secs(3)))
                    || at.elapsed() >= Duration::from_secs(15)
            }
        };
        if due {
            let mut s = String::new();
            for l in lines {
                s += &self.render(l, false);
                s.push('\n');
            }
            self.write(&s);
            self.printed = Some((Instant::now(), key.to_string()));
        }
    }
}
