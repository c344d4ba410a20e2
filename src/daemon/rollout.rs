//! The rollout driver (EC2): observe → [`rollout::Watch`] (the gate and the
//! schedule, pure) → act.
//!
//! Each look reads the group (one `DescribeAutoScalingGroups`, plus
//! `DescribeInstances` for members' launch times and tags when drifted, and
//! once at boot) and, when drifted, checks the new images exist. Any error
//! or missing data means no decision: the agent never retires on what it
//! cannot read. On `Retire` it records the retirement in the data dir and
//! asks the supervisor to drain; the termination follows in
//! [`super::ec2::after_drain`]. After an aborted retirement it waits a
//! growing backoff before it lets the gate retire it again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::boot::Ids;
use super::ec2::{Aborted, Doorbell};
use crate::aws::asg::GroupApi;
use crate::backoff::{AWS_CALL, Retryable, random_unit};
use crate::desired::{self, Desired, DriftEntry};
use crate::manifest::Manifest;
use crate::plan::Plan;
use crate::rollout::{
    self, AlarmCheck, Decision, ImageCheck, Observation, Prompt, RingKind, Snapshot, Wait,
};
use crate::runtime::ContainerRuntime;
use crate::status::AgentState;
use crate::store::{Retiring, Store};
use crate::supervisor::{DrainReason, Handle, Report};
use crate::tags::{self, InstanceState};

/// Assumed boot time (launch → ready) until this instance has seen its own.
pub const ASSUMED_BOOT: Duration = Duration::from_secs(120);
/// After an aborted retirement, the gate may retire this instance again
/// only after this long, doubling with each abort in a row.
pub const RETIRE_ABORT_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// The longest wait after aborted retirements.
pub const RETIRE_ABORT_BACKOFF_MAX: Duration = Duration::from_secs(60 * 60);

/// The driver's inputs.
pub struct Driver<G: GroupApi, R: ContainerRuntime> {
    pub group: G,
    pub engine: R,
    pub ids: Ids,
    pub manifest: Manifest,
    pub plan: Plan,
    pub store: Store,
    pub handle: Handle,
    pub report: watch::Receiver<Report>,
    /// This instance's `berth:state` as last tagged (what others see).
    pub tagged: watch::Receiver<Option<InstanceState>>,
    /// The `berth:nudge` doorbell, read through IMDS.
    pub doorbell: watch::Receiver<Doorbell>,
    /// The retirement the previous round aborted, if it did.
    pub aborted: Option<Aborted>,
    pub cancel: CancellationToken,
}

/// One look at the group, ready for the gate.
struct Look {
    snapshot: Snapshot,
    policy: rollout::Policy,
    desired: Desired,
    drift: Vec<DriftEntry>,
    image: ImageCheck,
    alarms: AlarmCheck,
    /// The automatic rollback this instance writes now, if it is the writer.
    rollback: Option<rollout::Rollback>,
}

/// The driver's clock: monotonic from its start, anchored to the wall clock
/// then, so a wall-clock step while it runs (NTP at boot) cannot shorten the
/// drift grace or skew the schedule.
struct Clock {
    wall0_ms: u64,
    t0: Instant,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            wall0_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            t0: Instant::now(),
        }
    }

    /// Now, in ms since the epoch.
    fn now_ms(&self) -> u64 {
        self.wall0_ms + self.t0.elapsed().as_millis() as u64
    }
}

/// What the driver remembers between looks.
struct Memory {
    clock: Clock,
    gate: rollout::Watch,
    launch_times: HashMap<String, u64>,
    images_present: HashSet<String>,
    my_boot: Option<Duration>,
    last_note: Option<String>,
    last_drift: Vec<DriftEntry>,
    head: Option<(String, Instant)>,
    failures: u32,
    /// Why the next look happens: its schedule, a nudge, or this instance
    /// just became ready (as tagged), when it rings the member it admits.
    prompt: Prompt,
    /// Read the members' tags on the next look even at rest (after writing
    /// a rollback, to ring the members it makes drifted).
    read_members: bool,
    /// From the last look, for [`rollout::on_ring`]: drifted, rank, k,
    /// the drift grace.
    drifted: bool,
    rank: u32,
    k: u32,
    grace: Duration,
    /// Whom to ring after this look, and the change's mark to ring with.
    ring: Vec<(String, RingKind)>,
    mark: String,
}

/// The longest a member that is not ready waits for its first look at the
/// group (it looks as soon as it is ready).
const FIRST_LOOK_WAIT: Duration = Duration::from_secs(5 * 60);

/// How long a retiring agent waits for its `retiring` tag before it rings
/// the next members anyway.
const RETIRING_TAG_WAIT: Duration = Duration::from_secs(30);

/// The time before the gate may retire this instance again after `a`.
pub fn abort_backoff(a: &Aborted) -> Duration {
    RETIRE_ABORT_BACKOFF
        .saturating_mul(2u32.saturating_pow(a.count.saturating_sub(1).min(16)))
        .min(RETIRE_ABORT_BACKOFF_MAX)
}

impl<G: GroupApi, R: ContainerRuntime> Driver<G, R> {
    /// Runs until this instance retires (drain requested) or cancel.
    pub async fn run(self) {
        let mut m = Memory {
            clock: Clock::start(),
            gate: Default::default(),
            launch_times: Default::default(),
            images_present: Default::default(),
            my_boot: None,
            last_note: None,
            last_drift: Vec::new(),
            head: None,
            failures: 0,
            prompt: Prompt::Schedule,
            read_members: false,
            drifted: false,
            rank: 0,
            k: 1,
            grace: rollout::DEFAULT_DRIFT_GRACE,
            ring: Vec::new(),
            mark: String::new(),
        };
        let mut tagged = self.tagged.clone();
        let mut doorbell = self.doorbell.clone();
        let (mut tagged_open, mut doorbell_open) = (true, true);
        let hold_until = self
            .aborted
            .as_ref()
            .map(|a| (Instant::now() + abort_backoff(a), a.clone()));
        // A member that is not ready holds no place in line and cannot act:
        // its first look waits until it is (and then rings the member its
        // readiness admits), or a nudge, or FIRST_LOOK_WAIT.
        if *tagged.borrow_and_update() != Some(InstanceState::Ready) {
            let ready = tagged.wait_for(|s| *s == Some(InstanceState::Ready));
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = ready => {
                    if r.is_ok() {
                        m.prompt = Prompt::BecameReady;
                    }
                }
                _ = doorbell.wait_for(|d| d.rings > 0) => {}
                _ = tokio::time::sleep(FIRST_LOOK_WAIT) => {}
            }
            doorbell.borrow_and_update();
        }
        loop {
            let wait = match self.look(&mut m).await {
                Err(err) => self.unreadable(&mut m, err),
                Ok(look) if look.rollback.is_some() => {
                    if let Some(r) = &look.rollback
                        && self.write_rollback(r).await
                    {
                        // Look again soon, reading the members: the group
                        // now prefers this pin, and the members on the
                        // versions rolled back from are to be rung.
                        m.read_members = true;
                    }
                    Duration::from_secs(5)
                }
                Ok(look) => match self.decide(&mut m, look, hold_until.as_ref()) {
                    Some(next) => next,
                    None => {
                        // Retiring: ring the next members once they can see it.
                        let mut t = tagged.clone();
                        let seen = tokio::time::timeout(
                            RETIRING_TAG_WAIT,
                            t.wait_for(|s| *s == Some(InstanceState::Retiring)),
                        );
                        tokio::select! {
                            _ = self.cancel.cancelled() => return,
                            _ = seen => {}
                        }
                        self.ring(&m.mark, std::mem::take(&mut m.ring)).await;
                        return;
                    }
                },
            };
            self.ring(&m.mark, std::mem::take(&mut m.ring)).await;
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = &mut sleep => break,
                    r = doorbell.changed(), if doorbell_open => match r {
                        // The watcher stopped (tags disabled): sleep on.
                        Err(_) => doorbell_open = false,
                        Ok(()) if doorbell.borrow_and_update().rings > 0 => {
                            let value = doorbell.borrow().value.clone();
                            let (delay, hint) = rollout::on_ring(&rollout::Ring {
                                value: value.as_deref(),
                                drifted: m.drifted,
                                mine: &m.mark,
                                rank: m.rank,
                                k: m.k,
                                round: m.my_boot.unwrap_or(ASSUMED_BOOT) + drain_estimate(&self.plan),
                                grace: m.grace,
                                u: random_unit(),
                            });
                            if let Some(mark) = hint {
                                let now = m.clock.now_ms();
                                m.gate.told(mark, now);
                            }
                            let at = Instant::now() + delay;
                            if at < sleep.deadline() {
                                tracing::info!(delay = ?delay, "nudged: looking at the group in {}", humantime::format_duration(Duration::from_secs(delay.as_secs())));
                                sleep.as_mut().reset(at);
                            }
                            if m.prompt == Prompt::Schedule {
                                m.prompt = Prompt::Nudged;
                            }
                        }
                        Ok(()) => {}
                    },
                    r = tagged.changed(), if tagged_open => match r {
                        Err(_) => tagged_open = false,
                        Ok(()) if *tagged.borrow_and_update() == Some(InstanceState::Ready) => {
                            m.prompt = Prompt::BecameReady;
                            break;
                        }
                        Ok(()) => {}
                    },
                }
            }
        }
    }

    /// Rings the doorbell of `ring`: one `CreateTags` per kind and 1,000
    /// members, with the change's `mark` ([`rollout::nudge_value`]). A
    /// nudge is a hint, so a failure is logged and otherwise ignored.
    async fn ring(&self, mark: &str, ring: Vec<(String, RingKind)>) {
        for (kind, ids) in rollout::by_kind(&ring) {
            let value = rollout::nudge_value(
                mark,
                kind,
                &self.ids.instance_id,
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as u64,
            );
            match self
                .group
                .tag_instances(&ids, &[(tags::TAG_NUDGE, value.as_str())])
                .await
            {
                Ok(()) => {
                    tracing::info!(members = ids.len(), first = %ids[0], kind = ?kind, "nudged the next members in line")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot nudge the next members in line; they find out on their own schedule")
                }
            }
        }
    }

    /// Reads the group and, when drifted, the members and the new images.
    async fn look(&self, m: &mut Memory) -> anyhow::Result<Look> {
        let snap = self.group.describe(&self.ids.group).await?;
        let identity = desired::Identity {
            instance_id: self.ids.instance_id.clone(),
            group: self.ids.group.clone(),
        };
        let desired = desired::resolve(&identity, &snap.tags, &self.manifest)?;
        let policy =
            rollout::policy_from_tags(&snap.tags).map_err(|errors| desired::TagErrors {
                group: self.ids.group.clone(),
                errors,
            })?;
        let drift = desired::drift(&self.plan.cluster, &self.plan.versions(), &desired);
        // At rest only this instance's own rank matters, and members not seen
        // before are the youngest: one DescribeInstances at boot is enough.
        let unknown = !m.launch_times.contains_key(&self.ids.instance_id);
        let infos = if !drift.is_empty()
            || unknown
            || m.prompt == Prompt::BecameReady
            || std::mem::take(&mut m.read_members)
        {
            self.group.instances(&self.ids.group).await?
        } else {
            Vec::new()
        };
        let mut tags_of: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for i in infos {
            m.launch_times.insert(i.instance_id.clone(), i.launch_time);
            tags_of.insert(i.instance_id, i.tags);
        }
        let now_s = m.clock.now_ms() / 1000;
        let members = snap
            .members
            .iter()
            .map(|mem| {
                let launch = m
                    .launch_times
                    .get(&mem.instance_id)
                    .copied()
                    .unwrap_or(now_s);
                super::ec2::member_view(mem, tags_of.get(&mem.instance_id), launch)
            })
            .collect();
        let image = if drift.is_empty() {
            ImageCheck::Present
        } else {
            self.check_images(&desired, &mut m.images_present).await
        };
        // Alarms are read only by drifted agents of a group that has them:
        // nothing at rest. Unreadable means wait, like every other input.
        let alarms = if drift.is_empty() || policy.halt_on_alarms.is_empty() {
            AlarmCheck::NotConfigured
        } else {
            let requests = rollout::alarm_requests(&policy.halt_on_alarms);
            match self.group.alarms(&requests).await {
                Ok(found) => rollout::alarm_check(&policy.halt_on_alarms, &found),
                Err(e) => AlarmCheck::Unknown(e.to_string()),
            }
        };
        let snapshot = Snapshot {
            desired_capacity: snap.desired_capacity.max(0) as u32,
            members,
            cluster: Some(desired.cluster.clone()),
        };
        let me = self.ids.instance_id.as_str();
        let writer = policy.auto_rollback
            && !drift.is_empty()
            && rollout::halted(&snapshot, &desired.versions, &policy, now_s).is_some()
            && rollout::rollback_writer(&snapshot, &desired.versions).is_some_and(|w| w.id == me);
        let rollback = if writer {
            // Only the writer checks that its own images still exist.
            let versions = self.plan.versions();
            let images = self.check_pin_images(&mut m.images_present).await;
            let target = rollout::RollbackTarget {
                versions: &versions,
                images: &images,
            };
            let r = rollout::rollback(
                &snapshot,
                me,
                &target,
                &desired.versions,
                &snap.tags,
                &policy,
                now_s,
            );
            if r.is_none() && images != ImageCheck::Present {
                tracing::error!(images = ?images, "the rollout is halted, but this instance's own images cannot be confirmed in their registries: not rolling back");
            }
            r
        } else {
            None
        };
        Ok(Look {
            snapshot,
            policy,
            desired,
            drift,
            image,
            alarms,
            rollback,
        })
    }

    /// Whether every changed component's preferred image exists in its
    /// registry.
    async fn check_images(&self, desired: &Desired, present: &mut HashSet<String>) -> ImageCheck {
        let pinned = self.plan.versions();
        let same_cluster = desired.cluster == self.plan.cluster;
        self.images_exist(&desired.cluster, &desired.versions, present, |c, v| {
            !(same_cluster && pinned.get(c) == Some(v))
        })
        .await
    }

    /// Whether this instance's own pinned images still exist in their
    /// registries (a rollback never targets a missing image).
    async fn check_pin_images(&self, present: &mut HashSet<String>) -> ImageCheck {
        let pinned = self.plan.versions();
        self.images_exist(&self.plan.cluster, &pinned, present, |_, _| true)
            .await
    }

    /// Whether the images of `cluster` at `versions` (the components
    /// `wanted` selects) exist in their registries. Positive answers are
    /// cached in `present`; others are asked again next time.
    async fn images_exist(
        &self,
        cluster: &str,
        versions: &BTreeMap<String, String>,
        present: &mut HashSet<String>,
        wanted: impl Fn(&str, &String) -> bool,
    ) -> ImageCheck {
        let Some(spec) = self.manifest.cluster(cluster) else {
            return ImageCheck::Unknown(format!("cluster {cluster} is not in the manifest"));
        };
        for c in &spec.containers {
            let Some(v) = versions.get(&c.name) else {
                continue;
            };
            if !wanted(&c.name, v) {
                continue;
            }
            let image = crate::manifest::fill_version(&c.image, v);
            if present.contains(&image) {
                continue;
            }
            match self.engine.image_in_registry(&image, c.registry_auth).await {
                Ok(true) => {
                    present.insert(image);
                }
                Ok(false) => return ImageCheck::Missing(image),
                Err(err) => return ImageCheck::Unknown(format!("{image}: {err}")),
            }
        }
        ImageCheck::Present
    }

    /// Writes an automatic rollback: the group's version tags back to this
    /// instance's pin, and `berth:rolled-back-from`, in one call. Every
    /// old member computes the same value, so a second writer is harmless.
    /// Says whether it was written.
    async fn write_rollback(&self, r: &rollout::Rollback) -> bool {
        let tags: Vec<(String, String)> = r.tags.clone().into_iter().collect();
        let set = tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        tracing::error!(rolled_back_from = %r.rolled_back_from, set = %set, "the rollout is halted: rolling the group back to this instance's versions");
        let result = crate::backoff::retry(
            &AWS_CALL,
            "CreateOrUpdateTags",
            &self.cancel,
            Some(Instant::now() + Duration::from_secs(60)),
            || self.group.tag_group(&self.ids.group, &tags),
        )
        .await;
        match result {
            Ok(()) => {
                let note = format!(
                    "rolled the group back from {} (the rollout halted); new members drift back and retire through the gate",
                    r.rolled_back_from
                );
                self.handle.set_notes(Some(note), Vec::new());
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot roll the group back: the instance profile needs autoscaling:CreateOrUpdateTags on its group (see the IAM policy in the docs); the rollout stays halted");
                false
            }
        }
    }

    /// The group could not be read: no decision; back off.
    fn unreadable(&self, m: &mut Memory, err: anyhow::Error) -> Duration {
        m.failures += 1;
        let aws = err.downcast_ref::<crate::aws::AwsError>();
        let throttled = aws.is_some_and(|a| a.is_throttled());
        let note = format!("desired state unreadable: {err:#}");
        if m.last_note.as_ref() != Some(&note) {
            if aws.is_some_and(|a| !a.is_retryable()) {
                tracing::error!(error = %format!("{err:#}"), "cannot read the group: fix the instance profile's permissions; containers keep running, nothing is retired");
            } else {
                tracing::warn!(error = %format!("{err:#}"), "cannot read the group; containers keep running, nothing is retired");
            }
            self.handle
                .set_notes(Some(note.clone()), m.last_drift.clone());
            m.last_note = Some(note);
        }
        AWS_CALL
            .delay(m.failures + u32::from(throttled), random_unit())
            .max(self.manifest.agent.group_poll_interval.0)
    }

    /// Asks the gate; acts on `Retire`. Returns the wait before the next
    /// look, or `None` when this instance retires.
    fn decide(
        &self,
        m: &mut Memory,
        look: Look,
        hold: Option<&(Instant, Aborted)>,
    ) -> Option<Duration> {
        m.failures = 0;
        if m.my_boot.is_none() && self.report.borrow().state == AgentState::Ready {
            let launched = m
                .launch_times
                .get(&self.ids.instance_id)
                .copied()
                .unwrap_or(0);
            let now_s = m.clock.now_ms() / 1000;
            m.my_boot = Some(
                Duration::from_secs(now_s.saturating_sub(launched))
                    .clamp(Duration::from_secs(10), Duration::from_secs(3600)),
            );
        }
        if look.drift != m.last_drift {
            for d in &look.drift {
                tracing::warn!(component = %d.component, pinned = %d.pinned, preferred = %d.preferred, "drift detected");
            }
            m.last_drift = look.drift.clone();
        }
        let prompt = std::mem::take(&mut m.prompt);
        let answer = m.gate.observe(&Observation {
            now_ms: m.clock.now_ms(),
            snapshot: &look.snapshot,
            me: &self.ids.instance_id,
            drifted: !look.drift.is_empty(),
            preferred: &look.desired.versions,
            policy: &look.policy,
            image: &look.image,
            alarms: &look.alarms,
            boot: m.my_boot.unwrap_or(ASSUMED_BOOT),
            drain: drain_estimate(&self.plan),
            doorbell: self.doorbell.borrow().enabled == Some(true),
            prompt,
        });
        let decision = answer.decision;
        m.drifted = !look.drift.is_empty();
        m.rank = answer.rank;
        m.k = look
            .policy
            .max_unavailable
            .resolve(look.snapshot.desired_capacity);
        m.grace = look.policy.drift_grace;
        m.mark = rollout::change_mark(&look.desired.versions, Some(&look.desired.cluster));
        m.ring = answer.ring;
        let mut next = answer.next.mul_f64(0.9 + 0.2 * random_unit());
        let held = hold.filter(|(until, _)| Instant::now() < *until);
        if let (Decision::Retire, Some((until, a))) = (&decision, held) {
            let left = until.saturating_duration_since(Instant::now());
            next = next.min(left).max(Duration::from_secs(1));
            let note = format!(
                "retirement aborted ({}): this instance may retire again in {}",
                a.error,
                humantime::format_duration(Duration::from_secs(left.as_secs()))
            );
            if m.last_note.as_ref() != Some(&note) {
                self.handle
                    .set_notes(Some(note.clone()), look.drift.clone());
                m.last_note = Some(note);
            }
            // Not retiring: ring only the members unaware of the change.
            m.ring.retain(|(_, kind)| *kind == RingKind::Told);
            return Some(next);
        }
        let note = match &decision {
            Decision::Retire => "retiring: draining, then terminating in the group".to_string(),
            Decision::Wait(Wait::NoDrift) => String::new(),
            Decision::Wait(w) => {
                if let Wait::NotMyTurn { head: h, .. } = w {
                    if m.head.as_ref().map(|(id, _)| id) != Some(h) {
                        m.head = Some((h.clone(), Instant::now()));
                    }
                } else {
                    m.head = None;
                }
                let since = m
                    .head
                    .as_ref()
                    .map(|(_, t)| {
                        format!(
                            " (for {})",
                            humantime::format_duration(Duration::from_secs(t.elapsed().as_secs()))
                        )
                    })
                    .unwrap_or_default();
                format!("drift: rollout gate waits: {w}{since}")
            }
        };
        let note = (!note.is_empty()).then_some(note);
        if note != m.last_note {
            match &note {
                Some(n) => tracing::info!(decision = %n, "rollout gate"),
                None => tracing::info!("no drift"),
            }
            self.handle.set_notes(note.clone(), look.drift.clone());
            m.last_note = note;
        }
        if decision != Decision::Retire {
            return Some(next);
        }
        tracing::warn!(instance = %self.ids.instance_id, "rollout gate: this instance retires now");
        let record = Retiring {
            instance_id: self.ids.instance_id.clone(),
            terminate_sent: false,
        };
        if let Err(e) = self.store.save_retiring(&record) {
            // Without the record a restart would not resume: do not start.
            tracing::error!(error = %e, "cannot record the retirement in the data dir; not retiring now");
            return Some(next);
        }
        self.handle.drain(DrainReason::Retire);
        None
    }
}

/// How long draining this instance takes at most: each wave's longest grace period.
pub fn drain_estimate(plan: &Plan) -> Duration {
    plan.waves()
        .iter()
        .map(|w| {
            w.iter()
                .map(|&i| plan.components[i].spec.stop_grace_period.0)
                .max()
                .unwrap_or_default()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    //! The driver against the fake group and the fake engine, on the
    //! default settings (drift grace set to 0 where the test is about
    //! something else), with tokio's paused clock.
    use super::*;
    use crate::aws::asg::{GroupSnapshot, InstanceInfo, Member};
    use crate::aws::fake::FakeGroup;
    use crate::runtime::fake::Fake;
    use std::path::Path;

    const MANIFEST: &str = "[clusters.web]\n[[clusters.web.containers]]\nname = \"web\"\nimage = \"reg/web:{version}\"\n[clusters.api]\n[[clusters.api.containers]]\nname = \"web\"\nimage = \"reg/api:{version}\"\n";

    /// Two ready members on `web=1` (this one, `i-1`, the oldest) and the
    /// group's `tags`.
    fn world(tags: &[(&str, &str)]) -> FakeGroup {
        let g = FakeGroup::default();
        let member = |id: &str| Member {
            instance_id: id.into(),
            lifecycle_state: tags::IN_SERVICE.into(),
            health_status: tags::HEALTHY.into(),
        };
        let info = |id: &str, launch: u64| InstanceInfo {
            instance_id: id.into(),
            launch_time: launch,
            tags: [
                (tags::TAG_STATE, "ready"),
                (tags::TAG_VERSIONS, "web=1"),
                (tags::TAG_PINNED_CLUSTER, "web"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        let mut f = g.state();
        f.snapshot = Some(GroupSnapshot {
            name: "asg".into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            desired_capacity: 2,
            members: vec![member("i-1"), member("i-2")],
        });
        f.instances = vec![info("i-1", 100), info("i-2", 200)];
        drop(f);
        g
    }

    struct Run {
        inbox: crate::supervisor::Inbox,
        store: Store,
        _dir: tempfile::TempDir,
        task: tokio::task::JoinHandle<()>,
        cancel: CancellationToken,
        tagged: watch::Sender<Option<InstanceState>>,
        doorbell: watch::Sender<Doorbell>,
    }

    fn start(g: &FakeGroup, engine: Fake, aborted: Option<Aborted>) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (handle, inbox) = Handle::for_tests();
        let (_tx, report) = watch::channel(Report {
            state: AgentState::Ready,
            ..Default::default()
        });
        let cancel = CancellationToken::new();
        let (tagged_tx, tagged) = watch::channel(Some(InstanceState::Ready));
        // Instance-metadata tags enabled, as the docs recommend.
        let (doorbell_tx, doorbell) = watch::channel(Doorbell {
            enabled: Some(true),
            ..Default::default()
        });
        let driver = Driver {
            group: g.clone(),
            engine,
            ids: Ids {
                instance_id: "i-1".into(),
                group: "asg".into(),
            },
            manifest: Manifest::parse(MANIFEST, Path::new("m.toml")).unwrap(),
            plan: crate::plan::for_tests(MANIFEST, "1"),
            store: store.clone(),
            handle,
            report,
            tagged,
            doorbell,
            aborted,
            cancel: cancel.clone(),
        };
        let task = tokio::spawn(driver.run());
        Run {
            inbox,
            store,
            _dir: dir,
            task,
            cancel,
            tagged: tagged_tx,
            doorbell: doorbell_tx,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_version_change_retires_the_head_of_the_line_after_the_default_grace() {
        let g = world(&[("berth:cluster", "web"), ("berth:version", "2")]);
        let mut r = start(&g, Fake::default(), None);
        // The default drift grace is 60 s: nothing before it.
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert_eq!(r.inbox.drained(), None);
        assert!(r.inbox.last_message().unwrap().contains("drift grace"));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(r.inbox.drained(), Some(DrainReason::Retire));
        r.task.await.unwrap();
        assert!(
            r.store.load_retiring("i-1").unwrap().is_some(),
            "recorded first"
        );
    }

    /// Defect: a changed `berth:cluster` with the same versions never retired.
    #[tokio::test(start_paused = true)]
    async fn a_changed_cluster_with_the_same_versions_retires() {
        let g = world(&[
            ("berth:cluster", "api"),
            ("berth:version", "1"),
            ("berth:drift-grace", "0s"),
        ]);
        let mut r = start(&g, Fake::default(), None);
        r.task.await.unwrap();
        assert_eq!(r.inbox.drained(), Some(DrainReason::Retire));
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_image_retires_nobody_and_says_why() {
        let g = world(&[
            ("berth:cluster", "web"),
            ("berth:version", "2.O"),
            ("berth:drift-grace", "0s"),
        ]);
        let engine = Fake::default();
        engine.state().missing_images = vec!["reg/web:2.O".into()];
        let mut r = start(&g, engine, None);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(r.inbox.drained(), None);
        assert!(r.inbox.last_message().unwrap().contains("does not exist"));
        r.cancel.cancel();
        r.task.await.unwrap();
    }

    /// After an aborted retirement, not again before the backoff (5 min).
    #[tokio::test(start_paused = true)]
    async fn an_aborted_retirement_waits_its_backoff_then_the_gate_decides() {
        let g = world(&[
            ("berth:cluster", "web"),
            ("berth:version", "2"),
            ("berth:drift-grace", "0s"),
        ]);
        let aborted = Aborted {
            error: "AccessDenied".into(),
            count: 1,
        };
        assert_eq!(abort_backoff(&aborted), RETIRE_ABORT_BACKOFF);
        let mut r = start(&g, Fake::default(), Some(aborted));
        tokio::time::sleep(Duration::from_secs(240)).await;
        assert_eq!(r.inbox.drained(), None);
        assert!(
            r.inbox
                .last_message()
                .unwrap()
                .contains("may retire again in")
        );
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(r.inbox.drained(), Some(DrainReason::Retire));
        r.task.await.unwrap();
        let a = |count| Aborted {
            error: String::new(),
            count,
        };
        assert_eq!(abort_backoff(&a(2)), RETIRE_ABORT_BACKOFF * 2);
        assert_eq!(abort_backoff(&a(10)), RETIRE_ABORT_BACKOFF_MAX);
    }

    /// A wrong IAM policy on the reads: no decision, said once, nothing drained.
    #[tokio::test(start_paused = true)]
    async fn an_unreadable_group_decides_nothing() {
        let g = world(&[("berth:cluster", "web"), ("berth:version", "2")]);
        g.fail(
            "DescribeAutoScalingGroups",
            crate::aws::AwsError::permanent(
                crate::aws::AwsOp::DescribeAutoScalingGroups,
                "asg",
                "AccessDenied: not authorized",
            ),
            1000,
        );
        let mut r = start(&g, Fake::default(), None);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(r.inbox.drained(), None);
        assert!(r.inbox.last_message().unwrap().contains("AccessDenied"));
        let calls = g.calls("DescribeAutoScalingGroups").len();
        assert!(calls <= 25, "backs off: {calls} calls in 10 minutes");
        r.cancel.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_nudge_makes_an_agent_at_rest_look_within_its_place() {
        let g = world(&[("berth:cluster", "web"), ("berth:version", "1")]);
        let r = start(&g, Fake::default(), None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = g.calls("DescribeAutoScalingGroups").len();
        assert_eq!(before, 1, "the first look");
        r.doorbell.send_modify(|d| d.rings += 1);
        // The oldest at rest looks within a second (nudged_look_in); its
        // schedule alone would wait the default rest-poll, 5 minutes.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(g.calls("DescribeAutoScalingGroups").len(), before + 1);
        assert!(g.calls("CreateTags").is_empty(), "nobody to ring at rest");
        r.cancel.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_retiring_member_rings_the_next_in_line_once_tagged_retiring() {
        let g = world(&[
            ("berth:cluster", "web"),
            ("berth:version", "2"),
            ("berth:drift-grace", "0s"),
        ]);
        let mut r = start(&g, Fake::default(), None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(r.inbox.drained(), Some(DrainReason::Retire));
        assert!(
            g.calls("CreateTags").is_empty(),
            "nobody is rung before they can see this instance retiring"
        );
        r.tagged.send_replace(Some(InstanceState::Retiring));
        r.task.await.unwrap();
        let calls = g.calls("CreateTags");
        assert_eq!(calls.len(), 1, "one call: {calls:?}");
        let mark = rollout::change_mark(&rollout::parse_versions("web=2").unwrap(), Some("web"));
        assert!(
            calls[0].starts_with(&format!("CreateTags i-2 berth:nudge={mark}.r.i-1.")),
            "{calls:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn becoming_ready_rings_the_next_in_line() {
        // This instance (i-1) runs the preferred version; i-2 is still on
        // the old one, so it is next in line.
        let g = world(&[("berth:cluster", "web"), ("berth:version", "1")]);
        g.state().instances[1]
            .tags
            .insert(tags::TAG_VERSIONS.into(), "web=0".into());
        let r = start(&g, Fake::default(), None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Its first look read the members: i-2 had not been told of the change.
        let mark = rollout::change_mark(&rollout::parse_versions("web=1").unwrap(), Some("web"));
        let calls = g.calls("CreateTags");
        assert_eq!(calls.len(), 1, "{calls:?}");
        let told = format!("CreateTags i-2 berth:nudge={mark}.t.i-1.");
        assert!(calls[0].starts_with(&told), "{calls:?}");
        r.tagged.send_replace(Some(InstanceState::Starting));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(g.calls("CreateTags").len(), 1, "told once");
        r.tagged.send_replace(Some(InstanceState::Ready));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Ready: it rings the member its readiness admits.
        let calls = g.calls("CreateTags");
        assert_eq!(calls.len(), 2, "{calls:?}");
        let now = format!("CreateTags i-2 berth:nudge={mark}.g.i-1.");
        assert!(calls[1].starts_with(&now), "{calls:?}");
        r.cancel.cancel();
        r.task.await.unwrap();
    }

    /// The world of an automatic rollback: this instance (`i-1`, the oldest)
    /// is ready on `web=1`; `i-2` runs the preferred `web=2` and the group
    /// marked it Unhealthy (its health escalation fired).
    fn halted_world() -> FakeGroup {
        let g = world(&[
            ("berth:cluster", "web"),
            ("berth:version", "2"),
            ("berth:auto-rollback", "true"),
        ]);
        {
            let mut f = g.state();
            f.instances[1]
                .tags
                .insert(tags::TAG_VERSIONS.into(), "web=2".into());
            f.instances[1]
                .tags
                .insert(tags::TAG_STATE.into(), "degraded".into());
            f.snapshot.as_mut().unwrap().members[1].health_status = "Unhealthy".into();
        }
        g
    }

    #[tokio::test(start_paused = true)]
    async fn a_halted_rollout_is_rolled_back_by_the_oldest_old_member() {
        let g = halted_world();
        let mut r = start(&g, Fake::default(), None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            g.calls("CreateOrUpdateTags"),
            vec!["CreateOrUpdateTags asg berth:rolled-back-from=web=2,berth:version=1"]
        );
        assert_eq!(r.inbox.drained(), None, "the writer does not retire");
        // The group now prefers this instance's pin: no drift, no second write.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(g.calls("CreateOrUpdateTags").len(), 1);
        assert!(r.inbox.drained().is_none());
        r.cancel.cancel();
        r.task.await.unwrap();
    }

    /// After the rollback, the members on the versions rolled back from
    /// drift: the writer rings those that are ready (in line) at once.
    #[tokio::test(start_paused = true)]
    async fn the_rollback_writer_rings_the_members_it_makes_drifted() {
        let g = halted_world();
        {
            let mut f = g.state();
            f.snapshot.as_mut().unwrap().members.push(Member {
                instance_id: "i-3".into(),
                lifecycle_state: tags::IN_SERVICE.into(),
                health_status: tags::HEALTHY.into(),
            });
            f.instances.push(InstanceInfo {
                instance_id: "i-3".into(),
                launch_time: 300,
                tags: [
                    (tags::TAG_STATE, "ready"),
                    (tags::TAG_VERSIONS, "web=2"),
                    (tags::TAG_PINNED_CLUSTER, "web"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            });
        }
        let r = start(&g, Fake::default(), None);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(g.calls("CreateOrUpdateTags").len(), 1);
        let mark = rollout::change_mark(&rollout::parse_versions("web=1").unwrap(), Some("web"));
        let rings: Vec<String> = g
            .calls("CreateTags")
            .into_iter()
            .filter(|c| c.contains(&mark))
            .collect();
        assert_eq!(rings.len(), 1, "{rings:?}");
        assert!(
            rings[0].starts_with("CreateTags i-3 berth:nudge="),
            "{rings:?}"
        );
        r.cancel.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn no_rollback_to_an_image_that_is_gone() {
        let g = halted_world();
        let engine = Fake::default();
        engine.state().missing_images = vec!["reg/web:1".into()];
        let mut r = start(&g, engine, None);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(g.calls("CreateOrUpdateTags").is_empty());
        assert_eq!(r.inbox.drained(), None, "halted: nobody retires");
        assert!(r.inbox.last_message().unwrap().contains("halted"));
        r.cancel.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_alarm_in_alarm_holds_the_rollout_until_it_clears() {
        let g = world(&[
            ("berth:cluster", "web"),
            ("berth:version", "2"),
            ("berth:drift-grace", "0s"),
            ("berth:halt-on-alarms", "api-5xx,latency-*"),
        ]);
        g.state().alarms = vec![
            ("api-5xx".into(), "OK".into()),
            ("latency-p99".into(), "ALARM".into()),
        ];
        let mut r = start(&g, Fake::default(), None);
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(r.inbox.drained(), None);
        assert!(r.inbox.last_message().unwrap().contains("latency-p99"));
        assert!(!g.calls("DescribeAlarms").is_empty());
        g.state().alarms[1].1 = "OK".into();
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(r.inbox.drained(), Some(DrainReason::Retire));
        r.tagged.send_replace(Some(InstanceState::Retiring));
        r.task.await.unwrap();
    }
}
