//! The EC2 tasks around the supervisor: the instance's tags, the launch
//! lifecycle hook, health escalation, termination and spot notices, and
//! what happens after a drain (terminate in the group, or complete the
//! terminating hook). Each reads the supervisor's typed [`Report`], never
//! the JSON status, and is generic over [`GroupApi`] so unit tests run it
//! against an in-process fake. Each AWS call goes through the one retry
//! loop ([`retry`]) with the [`AWS_CALL`] schedule; a permanent error
//! (access denied, validation) is reported once, at ERROR, and never
//! retried.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::boot::{Booted, Ec2, Ids, RunOptions};
use super::sleep_or_cancel;
use crate::aws::asg::{GroupApi, GroupSnapshot, InstanceInfo, Member};
use crate::backoff::{AWS_CALL, GaveUp, retry};
use crate::rollout::{self, MemberView, Snapshot};
use crate::status::AgentState;
use crate::store::{Retiring, Store};
use crate::supervisor::{DrainReason, Handle, Report};
use crate::tags::{self, InstanceState};

/// A retirement gives up (and the instance serves again) when the group
/// has not accepted the termination within this time.
pub const RETIRE_DEADLINE: Duration = Duration::from_secs(5 * 60);
/// Completing the terminating hook, or checking a resumed termination,
/// gives up after this long: the group proceeds at its heartbeat timeout.
pub const TERMINATING_HOOK_DEADLINE: Duration = Duration::from_secs(60);
/// Completing the launch hook gives up after this long.
pub const LAUNCH_HOOK_COMPLETE_DEADLINE: Duration = Duration::from_secs(120);

/// A retirement that could not complete: the containers run again and the
/// gate decides anew, after a backoff that grows with each abort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aborted {
    /// What failed, for status and logs.
    pub error: String,
    /// Retirements aborted in a row, 1-based.
    pub count: u32,
}

/// Spawns the EC2 tasks of one round.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    tracker: &TaskTracker,
    e: &Ec2,
    opts: &RunOptions,
    booted: &Booted,
    handle: Handle,
    report: watch::Receiver<Report>,
    aborted: Option<Aborted>,
    first_round: bool,
    round: &CancellationToken,
) {
    let ids = e.ids();
    let agent = &opts.manifest.agent;
    let (tagged_tx, tagged) = watch::channel(None);
    tracker.spawn(tag_instance(
        e.group.clone(),
        ids.clone(),
        booted.plan.versions_tag(),
        booted.plan.cluster.clone(),
        report.clone(),
        tagged_tx,
        round.clone(),
    ));
    let (doorbell_tx, doorbell) = watch::channel(Doorbell::default());
    tracker.spawn(watch_nudges(e.imds.clone(), doorbell_tx, round.clone()));
    if first_round && let Some(r) = &booted.resuming {
        // A retirement was under way when the agent stopped: finish it.
        tracing::warn!(
            terminate_sent = r.terminate_sent,
            "resuming the retirement of this instance"
        );
        handle.set_notes(
            Some("retiring (resumed after an agent restart)".into()),
            Vec::new(),
        );
        handle.drain(DrainReason::Retire);
        return;
    }
    tracker.spawn(
        super::rollout::Driver {
            group: e.group.clone(),
            engine: booted.engine.clone(),
            ids: ids.clone(),
            manifest: opts.manifest.clone(),
            plan: booted.plan.clone(),
            store: booted.store.clone(),
            handle: handle.clone(),
            report: report.clone(),
            tagged,
            doorbell,
            aborted,
            cancel: round.clone(),
        }
        .run(),
    );
    let boot_lifecycle = e
        .boot_lifecycle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    tracker.spawn(launch_hook(
        e.group.clone(),
        ids.clone(),
        agent.launch_timeout.0,
        boot_lifecycle,
        report.clone(),
        round.clone(),
    ));
    tracker.spawn(escalate_health(
        e.group.clone(),
        ids.clone(),
        agent.unhealthy_after.0,
        booted.plan.versions(),
        booted.plan.cluster.clone(),
        report,
        round.clone(),
    ));
    tracker.spawn(watch_termination(
        e.clone(),
        agent.lifecycle_poll_interval.0,
        handle,
        round.clone(),
    ));
}

/// The `berth:state` tag for a report: a drain for retirement says
/// `retiring` (never overwritten by `draining`), other drains `draining`.
pub fn instance_state(r: &Report) -> InstanceState {
    match (r.draining, r.state) {
        (Some(DrainReason::Retire), _) => InstanceState::Retiring,
        (Some(_), _) | (None, AgentState::Draining | AgentState::Retired) => {
            InstanceState::Draining
        }
        (None, AgentState::Starting) => InstanceState::Starting,
        (None, AgentState::Ready) => InstanceState::Ready,
        (None, AgentState::Degraded) => InstanceState::Degraded,
    }
}

/// Keeps the instance's `berth:state` tag current (with `berth:ready-since`
/// when it becomes ready), and sets `berth:versions` and
/// `berth:pinned-cluster` once: one `CreateTags` per change, with every tag
/// that changed, never one that did not. Publishes each state once it is
/// tagged on `tagged`, so the rollout driver rings the next members only
/// when they can see it.
#[allow(clippy::too_many_arguments)]
pub async fn tag_instance<G: GroupApi>(
    group: G,
    ids: Ids,
    versions: String,
    cluster: String,
    mut report: watch::Receiver<Report>,
    tagged_tx: watch::Sender<Option<InstanceState>>,
    cancel: CancellationToken,
) {
    let mut tagged: Option<InstanceState> = None;
    let mut pin_done = false;
    loop {
        let want = instance_state(&report.borrow_and_update());
        if tagged != Some(want) || !pin_done {
            let now_s = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let since = crate::rollout::format_ready_since(now_s);
            let mut kv = vec![(tags::TAG_STATE, want.as_str())];
            if want == InstanceState::Ready {
                kv.push((tags::TAG_READY_SINCE, since.as_str()));
            }
            if !pin_done {
                kv.push((tags::TAG_VERSIONS, versions.as_str()));
                kv.push((tags::TAG_PINNED_CLUSTER, cluster.as_str()));
            }
            let r = retry(&AWS_CALL, "CreateTags", &cancel, None, || {
                group.tag_instance(&ids.instance_id, &kv)
            })
            .await;
            match r {
                Ok(()) => {
                    tracing::info!(state = want.as_str(), "instance tagged");
                    tagged = Some(want);
                    pin_done = true;
                    tagged_tx.send_replace(tagged);
                }
                Err(GaveUp::Cancelled) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cannot tag the instance: the instance profile needs ec2:CreateTags on itself (see the IAM policy in the docs); the rollout gate cannot see this instance until it can");
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = report.changed() => if r.is_err() { return },
        }
    }
}

/// With a launch lifecycle hook and this instance in `Pending:Wait`:
/// heartbeats while the containers start, `CONTINUE` once every container
/// is running and healthy, `ABANDON` after `timeout`.
pub async fn launch_hook<G: GroupApi>(
    group: G,
    ids: Ids,
    timeout: Duration,
    boot_lifecycle: Option<String>,
    mut report: watch::Receiver<Report>,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    let deadline = started + timeout;
    // The member's state first: only a member in Pending:Wait has a launch
    // hook to complete, so the others (every agent restart, every group
    // without a hook) spend no call on the hooks. The boot read of the
    // group already told it, when it was taken.
    let state = match boot_lifecycle {
        Some(state) => state,
        None => match retry(
            &AWS_CALL,
            "DescribeAutoScalingGroups",
            &cancel,
            Some(deadline),
            || group.describe(&ids.group),
        )
        .await
        {
            Ok(s) => s
                .member(&ids.instance_id)
                .map(|m| m.lifecycle_state.clone())
                .unwrap_or_default(),
            Err(_) => return,
        },
    };
    if state != tags::PENDING_WAIT {
        tracing::debug!(lifecycle_state = %state, "no launch hook waits for this instance");
        return;
    }
    let hooks = match retry(
        &AWS_CALL,
        "DescribeLifecycleHooks",
        &cancel,
        Some(deadline),
        || group.hooks(&ids.group),
    )
    .await
    {
        Ok(h) => h,
        Err(GaveUp::Cancelled) => return,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the group's lifecycle hooks; the launch hook is left to its timeout");
            return;
        }
    };
    let Some(hook) = hooks.into_iter().find(|h| h.transition == tags::LAUNCHING) else {
        tracing::warn!(lifecycle_state = %state, "in Pending:Wait, but the group has no launch hook");
        return;
    };
    tracing::info!(hook = %hook.name, timeout = ?timeout, "launch hook waits for every container to be running and healthy");
    let beat_every = Duration::from_secs((hook.heartbeat_timeout_secs.max(30) / 3) as u64);
    let mut last_beat = Instant::now();
    let result = loop {
        if report.borrow_and_update().state == AgentState::Ready {
            break tags::CONTINUE;
        }
        let now = Instant::now();
        if now >= deadline {
            tracing::error!(timeout = ?timeout, "containers not ready in time; abandoning the launch");
            break tags::ABANDON;
        }
        if now >= last_beat + beat_every {
            if let Err(err) = group
                .heartbeat(&ids.group, &hook.name, &ids.instance_id)
                .await
            {
                tracing::warn!(error = %err, "lifecycle heartbeat failed");
            }
            last_beat = now;
        }
        let next = (last_beat + beat_every).min(deadline);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = report.changed() => {}
            _ = tokio::time::sleep_until(next) => {}
        }
    };
    let r = retry(
        &AWS_CALL,
        "CompleteLifecycleAction",
        &cancel,
        Some(Instant::now() + LAUNCH_HOOK_COMPLETE_DEADLINE),
        || group.complete_lifecycle_action(&ids.group, &hook.name, &ids.instance_id, result),
    )
    .await;
    match r {
        Ok(()) => {
            tracing::info!(hook = %hook.name, result, waited = ?started.elapsed(), "launch lifecycle action completed")
        }
        Err(GaveUp::Cancelled) => {}
        Err(e) => {
            tracing::error!(hook = %hook.name, error = %e, "cannot complete the launch lifecycle action; the group decides at the hook's timeout")
        }
    }
}

/// When the instance is to be marked `Unhealthy`: `after` past the moment
/// the first component became failed (failed = budget exhausted, no stable
/// run since; see [`Report::failed`]). `None`: nothing is failed, or
/// escalation is off.
pub fn escalate_at(failed: &[(String, SystemTime)], after: Option<Duration>) -> Option<SystemTime> {
    let after = after?;
    failed.iter().map(|(_, since)| *since + after).min()
}

/// Marks the instance `Unhealthy` once some component has been failed for
/// `after` (`agent.unhealthy_after`), so the group replaces it; then nudges
/// the members that act on it ([`nudge_on_unhealthy`]). `pin` and `cluster`
/// are what this instance runs.
pub async fn escalate_health<G: GroupApi>(
    group: G,
    ids: Ids,
    after: Option<Duration>,
    pin: BTreeMap<String, String>,
    cluster: String,
    mut report: watch::Receiver<Report>,
    cancel: CancellationToken,
) {
    loop {
        let failed = report.borrow_and_update().failed.clone();
        let wake = match escalate_at(&failed, after) {
            Some(at) => match at.duration_since(SystemTime::now()) {
                Ok(left) => left,
                Err(_) => {
                    let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
                    tracing::error!(components = %names.join(","), after = ?after, "marking this instance Unhealthy so the group replaces it");
                    match retry(&AWS_CALL, "SetInstanceHealth", &cancel, None, || {
                        group.set_unhealthy(&ids.instance_id)
                    })
                    .await
                    {
                        Ok(()) => {
                            tracing::error!("instance marked Unhealthy");
                            nudge_on_unhealthy(&group, &ids, &pin, &cluster, &cancel).await;
                        }
                        Err(GaveUp::Cancelled) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "cannot mark the instance Unhealthy: the instance profile needs autoscaling:SetInstanceHealth")
                        }
                    }
                    return;
                }
            },
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = report.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// The nudge after this instance marked itself Unhealthy gives up after
/// this long: the group replaces the instance within seconds, and a late
/// nudge is of no use.
pub const UNHEALTHY_NUDGE_DEADLINE: Duration = Duration::from_secs(10);

/// How the rollout gate sees one member: its membership in the group, and
/// its EC2 tags and launch time (`ec2_tags` `None`: EC2 did not describe
/// it).
pub(super) fn member_view(
    m: &Member,
    ec2_tags: Option<&BTreeMap<String, String>>,
    launch_time: u64,
) -> MemberView {
    let tag = |k: &str| ec2_tags.and_then(|t| t.get(k).cloned());
    let ready_since = tag(tags::TAG_READY_SINCE).and_then(|v| rollout::parse_ready_since(&v));
    MemberView {
        id: m.instance_id.clone(),
        launch_time,
        in_service: m.lifecycle_state == tags::IN_SERVICE,
        healthy: m.health_status == tags::HEALTHY,
        berth_state: tag(tags::TAG_STATE),
        versions: tag(tags::TAG_VERSIONS).and_then(|v| rollout::parse_versions(&v)),
        cluster: tag(tags::TAG_PINNED_CLUSTER),
        ready_since,
        abandoned: rollout::launch_abandoned(&m.lifecycle_state, ready_since),
        nudge: tag(tags::TAG_NUDGE),
    }
}

/// Whom an instance that marked itself Unhealthy nudges, from one snapshot:
/// the first `berth:max-unavailable` members in line for its own versions
/// `pin` (ready members on other versions: the next to retire, who must see
/// the rollout halted), and the [rollback writer](rollout::rollback_writer)
/// (the oldest ready member on other versions). A bad rollout tag counts as
/// a budget of 1 (every agent waits on it anyway).
pub fn unhealthy_nudge_targets(
    snap: &GroupSnapshot,
    infos: &[InstanceInfo],
    me: &str,
    pin: &BTreeMap<String, String>,
    cluster: &str,
    now_s: u64,
) -> Vec<String> {
    let members = snap
        .members
        .iter()
        .map(|m| {
            let info = infos.iter().find(|i| i.instance_id == m.instance_id);
            member_view(
                m,
                info.map(|i| &i.tags),
                info.map_or(now_s, |i| i.launch_time),
            )
        })
        .collect();
    let snapshot = Snapshot {
        desired_capacity: snap.desired_capacity.max(0) as u32,
        members,
        cluster: Some(cluster.to_string()),
    };
    let k = rollout::policy_from_tags(&snap.tags)
        .map_or(1, |p| p.max_unavailable.resolve(snapshot.desired_capacity));
    let mut targets: Vec<String> = rollout::line(&snapshot, pin)
        .into_iter()
        .filter(|m| m.id != me)
        .take(k.max(1) as usize)
        .map(|m| m.id.clone())
        .collect();
    if let Some(w) = rollout::rollback_writer(&snapshot, pin)
        && w.id != me
        && !targets.contains(&w.id)
    {
        targets.push(w.id.clone());
    }
    targets
}

/// Rings the doorbell of [`unhealthy_nudge_targets`] right after this
/// instance marked itself Unhealthy. The rollout halts on an Unhealthy
/// member on the new versions, but only while the group lists it with its
/// tags readable: Auto Scaling replaces it within seconds, faster than a
/// member waiting for its turn may look. Nudged, they look now (and the
/// rollback writer rolls back). A nudge is a hint: a failure is logged and
/// costs only that.
pub async fn nudge_on_unhealthy<G: GroupApi>(
    group: &G,
    ids: &Ids,
    pin: &BTreeMap<String, String>,
    cluster: &str,
    cancel: &CancellationToken,
) {
    let deadline = Some(Instant::now() + UNHEALTHY_NUDGE_DEADLINE);
    let read = async {
        let snap = retry(
            &AWS_CALL,
            "DescribeAutoScalingGroups",
            cancel,
            deadline,
            || group.describe(&ids.group),
        )
        .await?;
        let infos = retry(&AWS_CALL, "DescribeInstances", cancel, deadline, || {
            group.instances(&ids.group)
        })
        .await?;
        Ok::<_, GaveUp<crate::aws::AwsError>>((snap, infos))
    };
    let (snap, infos) = match read.await {
        Ok(r) => r,
        Err(GaveUp::Cancelled) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the group to nudge the next members in line; they see the halt only if they look in time");
            return;
        }
    };
    let now_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let targets = unhealthy_nudge_targets(&snap, &infos, &ids.instance_id, pin, cluster, now_s);
    if targets.is_empty() {
        return;
    }
    // It runs the preferred versions: its mark is the change's.
    let value = rollout::nudge_value(
        &rollout::change_mark(pin, Some(cluster)),
        rollout::RingKind::Now,
        &ids.instance_id,
        now_s * 1000,
    );
    match group
        .tag_instances(&targets, &[(tags::TAG_NUDGE, value.as_str())])
        .await
    {
        Ok(()) => {
            tracing::warn!(members = targets.len(), first = %targets[0], "nudged the next members in line: this instance is Unhealthy, which halts a rollout to its versions")
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot nudge the next members in line; they see the halt only if they look in time")
        }
    }
}

/// How often the agent reads its `berth:nudge` tag through IMDS.
pub const NUDGE_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The doorbell as the rollout driver sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Doorbell {
    /// Instance-metadata tags are readable: the driver may rest on the
    /// slow backstop schedule. `None` until IMDS has answered once.
    pub enabled: Option<bool>,
    /// How many times the `berth:nudge` value has changed since boot.
    pub rings: u64,
    /// The value it last changed to.
    pub value: Option<String>,
}

/// Watches this instance's `berth:nudge` tag through IMDS (local, no API
/// call) and counts its changes. When instance-metadata tags are disabled
/// it says so once and stops: the driver then polls the group. IMDS errors
/// change nothing (the driver's backstop still runs).
pub async fn watch_nudges(
    imds: crate::aws::imds::Imds,
    tx: watch::Sender<Doorbell>,
    cancel: CancellationToken,
) {
    let mut last: Option<Option<String>> = None;
    let mut warned = false;
    loop {
        if tx.borrow().enabled.is_none() {
            match imds.tags_enabled().await {
                Ok(true) => {
                    tracing::info!(
                        "instance-metadata tags enabled: resting on berth:nudge, reading the group only as a backstop"
                    );
                    tx.send_modify(|d| d.enabled = Some(true));
                }
                Ok(false) => {
                    tracing::warn!(
                        "instance-metadata tags are disabled (launch template InstanceMetadataTags): no nudges; polling the group instead, which costs more API calls"
                    );
                    tx.send_modify(|d| d.enabled = Some(false));
                    return;
                }
                Err(err) if !warned => {
                    tracing::warn!(error = %err, "cannot read the instance's tags from IMDS; polling the group until it can");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        if tx.borrow().enabled == Some(true) {
            match imds.instance_tag(tags::TAG_NUDGE).await {
                Ok(v) => {
                    warned = false;
                    if last.as_ref().is_some_and(|l| *l != v) {
                        tracing::info!(nudge = ?v, "nudged");
                        tx.send_modify(|d| {
                            d.rings += 1;
                            d.value = v.clone();
                        });
                    }
                    last = Some(v);
                }
                Err(err) if !warned => {
                    tracing::warn!(error = %err, "cannot read berth:nudge from IMDS; the group's backstop poll still runs");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        if !sleep_or_cancel(&cancel, NUDGE_WATCH_INTERVAL).await {
            return;
        }
    }
}

/// Polls IMDS for the group terminating this instance or a spot
/// interruption notice; either drains the containers. IMDS errors change
/// nothing.
pub async fn watch_termination(e: Ec2, every: Duration, handle: Handle, cancel: CancellationToken) {
    let mut warned = false;
    loop {
        let target = e.imds.target_lifecycle_state().await;
        let spot = e.imds.spot_instance_action().await;
        let why = match (&target, &spot) {
            (Ok(Some(t)), _) if t == tags::TARGET_TERMINATED => Some(DrainReason::Terminating),
            (_, Ok(Some(_))) => Some(DrainReason::Spot),
            (Err(err), _) | (_, Err(err)) => {
                if !warned {
                    tracing::warn!(error = %err, "cannot read the lifecycle state from IMDS; not draining");
                    warned = true;
                }
                None
            }
            _ => {
                warned = false;
                None
            }
        };
        if let Some(why) = why {
            tracing::warn!(reason = why.describe(), spot = ?spot.ok().flatten(), "the instance is going away: draining");
            handle.set_notes(Some(format!("draining: {}", why.describe())), Vec::new());
            handle.drain(why);
            return;
        }
        if !sleep_or_cancel(&cancel, every).await {
            return;
        }
    }
}

/// Completes the group's terminating lifecycle hooks (`CONTINUE`) for this
/// instance, if it has any, retrying until [`TERMINATING_HOOK_DEADLINE`]:
/// right after `TerminateInstanceInAutoScalingGroup` the hook may not be
/// waiting yet. Failures leave the group to the hook's timeout.
async fn complete_terminating_hooks<G: GroupApi>(group: &G, ids: &Ids, cancel: &CancellationToken) {
    let deadline = Some(Instant::now() + TERMINATING_HOOK_DEADLINE);
    let hooks = match retry(
        &AWS_CALL,
        "DescribeLifecycleHooks",
        cancel,
        deadline,
        || group.hooks(&ids.group),
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the group's lifecycle hooks; the group proceeds at their timeout");
            return;
        }
    };
    for hook in hooks.iter().filter(|h| h.transition == tags::TERMINATING) {
        match retry(
            &AWS_CALL,
            "CompleteLifecycleAction",
            cancel,
            deadline,
            || {
                group.complete_lifecycle_action(
                    &ids.group,
                    &hook.name,
                    &ids.instance_id,
                    tags::CONTINUE,
                )
            },
        )
        .await
        {
            Ok(()) => tracing::info!(hook = %hook.name, "terminating lifecycle action completed"),
            Err(e) => {
                tracing::warn!(hook = %hook.name, error = %e, "cannot complete the terminating lifecycle action; the group proceeds at its timeout")
            }
        }
    }
}

/// After a drain on EC2. For a retirement: terminates the instance in its
/// group (once: recorded in the data dir before the call); a permanent
/// error or [`RETIRE_DEADLINE`] aborts the retirement ([`Aborted`]). For a
/// termination or spot notice: completes the group's terminating hooks.
pub async fn after_drain<G: GroupApi>(
    group: &G,
    ids: &Ids,
    reason: DrainReason,
    store: &Store,
    previous: Option<&Aborted>,
    cancel: &CancellationToken,
) -> Result<(), Aborted> {
    let me = &ids.instance_id;
    match reason {
        DrainReason::Retire => {
            let mut r = store.load_retiring(me).ok().flatten().unwrap_or(Retiring {
                instance_id: me.clone(),
                terminate_sent: false,
            });
            if r.terminate_sent {
                // Sent before an agent restart: send again only if the group still has us in service.
                let deadline = Some(Instant::now() + TERMINATING_HOOK_DEADLINE);
                let still = retry(
                    &AWS_CALL,
                    "DescribeAutoScalingGroups",
                    cancel,
                    deadline,
                    || group.describe(&ids.group),
                )
                .await
                .ok()
                .and_then(|s| s.member(me).map(|m| m.lifecycle_state.clone()));
                if still.as_deref() != Some(tags::IN_SERVICE) {
                    tracing::info!(lifecycle_state = ?still, "termination already under way; not sending it again");
                    return Ok(());
                }
            }
            r.terminate_sent = true;
            if let Err(e) = store.save_retiring(&r) {
                tracing::error!(error = %e, "cannot record the retirement in the data dir");
            }
            let deadline = Some(Instant::now() + RETIRE_DEADLINE);
            match retry(
                &AWS_CALL,
                "TerminateInstanceInAutoScalingGroup",
                cancel,
                deadline,
                || group.terminate(me),
            )
            .await
            {
                Ok(()) => {
                    tracing::warn!(instance = %me, "retired: the group terminates this instance and launches a replacement");
                    // Already drained: do not make the group wait out a
                    // terminating hook's timeout (the instance would hold
                    // rollout budget meanwhile).
                    complete_terminating_hooks(group, ids, cancel).await;
                    Ok(())
                }
                // Shutting down: the record stays, the next start resumes.
                Err(GaveUp::Cancelled) => Ok(()),
                Err(e) => {
                    if let Err(err) = store.clear_retiring() {
                        tracing::error!(error = %err, "cannot clear the retirement record");
                    }
                    let hint = match &e {
                        GaveUp::Permanent(_) => {
                            " (a permanent error: check the instance profile allows autoscaling:TerminateInstanceInAutoScalingGroup on this group)"
                        }
                        _ => "",
                    };
                    Err(Aborted {
                        error: format!("{e}{hint}"),
                        count: previous.map_or(1, |p| p.count + 1),
                    })
                }
            }
        }
        DrainReason::Terminating | DrainReason::Spot => {
            complete_terminating_hooks(group, ids, cancel).await;
            tracing::info!(
                reason = reason.describe(),
                "drained for the termination of this instance"
            );
            Ok(())
        }
        DrainReason::Drift => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    //! The EC2 tasks against an in-process fake of the group, on the
    //! default settings, with tokio's paused clock for the retry schedules.
    use super::*;
    use crate::aws::asg::Hook;
    use crate::aws::fake::FakeGroup;
    use crate::aws::{AwsError, AwsOp};

    fn ids() -> Ids {
        Ids {
            instance_id: "i-1".into(),
            group: "asg".into(),
        }
    }

    fn denied(op: AwsOp) -> AwsError {
        AwsError::permanent(op, "i-1", "AccessDenied: not authorized")
    }

    fn unavailable(op: AwsOp) -> AwsError {
        AwsError::new(op, "i-1", "ServiceUnavailable")
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, s)
    }

    const TERMINATE: &str = "TerminateInstanceInAutoScalingGroup";

    /// Defect 3: access denied on terminate aborts the retirement at once:
    /// no endless retries, the record is cleared, the caller restarts.
    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_aborts_the_retirement_at_once() {
        let g = FakeGroup::default();
        g.fail(
            TERMINATE,
            denied(AwsOp::TerminateInstanceInAutoScalingGroup),
            100,
        );
        let (_d, store) = store();
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let r = after_drain(&g, &ids(), DrainReason::Retire, &store, None, &cancel).await;
        let a = r.expect_err("aborted");
        assert!(a.error.contains("AccessDenied"), "{}", a.error);
        assert_eq!(a.count, 1);
        assert_eq!(
            g.calls(TERMINATE).len(),
            1,
            "a permanent error is never retried"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(store.load_retiring("i-1").unwrap(), None, "record cleared");
    }

    /// Defect 3: a retryable error is retried, but not past the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_retirement_gives_up_at_its_deadline() {
        let g = FakeGroup::default();
        g.fail(
            TERMINATE,
            unavailable(AwsOp::TerminateInstanceInAutoScalingGroup),
            1000,
        );
        let (_d, store) = store();
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let r = after_drain(&g, &ids(), DrainReason::Retire, &store, None, &cancel).await;
        assert!(r.is_err());
        let took = started.elapsed();
        assert!(
            took <= RETIRE_DEADLINE && took >= RETIRE_DEADLINE / 2,
            "{took:?}"
        );
        assert!(g.calls(TERMINATE).len() > 3);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_retried_until_the_termination_goes_through() {
        let g = FakeGroup::default();
        let mut t = unavailable(AwsOp::TerminateInstanceInAutoScalingGroup);
        t.throttled = true;
        g.fail(TERMINATE, t, 3);
        let (_d, store) = store();
        let cancel = CancellationToken::new();
        after_drain(&g, &ids(), DrainReason::Retire, &store, None, &cancel)
            .await
            .unwrap();
        assert_eq!(g.calls(TERMINATE).len(), 4);
        assert!(store.load_retiring("i-1").unwrap().unwrap().terminate_sent);
    }

    /// A retired instance does not make the group wait out its terminating
    /// hook: it has drained already.
    #[tokio::test(start_paused = true)]
    async fn a_retirement_completes_the_terminating_hook() {
        let g = FakeGroup::default();
        g.state().hooks = vec![Hook {
            name: "drain".into(),
            transition: tags::TERMINATING.into(),
            heartbeat_timeout_secs: 300,
        }];
        // Right after the terminate call the hook may not be waiting yet.
        g.fail(
            "CompleteLifecycleAction",
            AwsError::new(
                AwsOp::CompleteLifecycleAction,
                "i-1",
                "No active Lifecycle Action found",
            ),
            2,
        );
        let (_d, store) = store();
        let cancel = CancellationToken::new();
        after_drain(&g, &ids(), DrainReason::Retire, &store, None, &cancel)
            .await
            .unwrap();
        assert_eq!(g.calls(TERMINATE).len(), 1);
        assert_eq!(
            g.calls("CompleteLifecycleAction")
                .last()
                .map(String::as_str),
            Some("CompleteLifecycleAction drain CONTINUE")
        );
    }

    /// SIGTERM stops a retirement that is still retrying.
    #[tokio::test(start_paused = true)]
    async fn cancel_stops_a_retrying_retirement() {
        let g = FakeGroup::default();
        g.fail(
            TERMINATE,
            unavailable(AwsOp::TerminateInstanceInAutoScalingGroup),
            1000,
        );
        let (_d, store) = store();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            c.cancel();
        });
        let started = Instant::now();
        after_drain(&g, &ids(), DrainReason::Retire, &store, None, &cancel)
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(25));
        assert!(
            store.load_retiring("i-1").unwrap().is_some(),
            "resumed at the next start"
        );
    }

    /// A termination drained for the group completes its terminating hook,
    /// and gives up on it (not "retired") when it cannot.
    #[tokio::test(start_paused = true)]
    async fn a_termination_completes_the_terminating_hook() {
        let g = FakeGroup::default();
        g.state().hooks = vec![Hook {
            name: "drain".into(),
            transition: tags::TERMINATING.into(),
            heartbeat_timeout_secs: 300,
        }];
        let (_d, store) = store();
        let cancel = CancellationToken::new();
        after_drain(&g, &ids(), DrainReason::Terminating, &store, None, &cancel)
            .await
            .unwrap();
        assert_eq!(
            g.calls("CompleteLifecycleAction"),
            vec!["CompleteLifecycleAction drain CONTINUE"]
        );
        assert!(g.calls(TERMINATE).is_empty());
    }

    /// Defect 9: `retiring` is never overwritten by `draining`.
    #[test]
    fn the_state_tag_of_a_retirement_stays_retiring() {
        let draining_for = |r| Report {
            state: AgentState::Draining,
            draining: Some(r),
            ..Default::default()
        };
        assert_eq!(
            instance_state(&draining_for(DrainReason::Retire)),
            InstanceState::Retiring
        );
        assert_eq!(
            instance_state(&draining_for(DrainReason::Spot)),
            InstanceState::Draining
        );
        assert_eq!(
            instance_state(&Report {
                state: AgentState::Degraded,
                ..Default::default()
            }),
            InstanceState::Degraded
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tags_follow_the_report_and_a_retirement_tags_retiring_once() {
        let g = FakeGroup::default();
        let (tx, rx) = watch::channel(Report::default());
        let cancel = CancellationToken::new();
        let (tagged_tx, mut tagged) = watch::channel(None);
        let task = tokio::spawn(tag_instance(
            g.clone(),
            ids(),
            "web=1".into(),
            "web".into(),
            rx,
            tagged_tx,
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(*tagged.borrow_and_update(), Some(InstanceState::Starting));
        tx.send_modify(|r| r.state = AgentState::Ready);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(*tagged.borrow_and_update(), Some(InstanceState::Ready));
        tx.send_modify(|r| {
            r.state = AgentState::Draining;
            r.draining = Some(DrainReason::Retire);
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(*tagged.borrow(), Some(InstanceState::Retiring));
        let calls = g.calls("CreateTags");
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(
            calls[0],
            "CreateTags i-1 berth:state=starting,berth:versions=web=1,berth:pinned-cluster=web"
        );
        // Ready comes with the time it became so, in the same call.
        let ready = calls[1]
            .strip_prefix("CreateTags i-1 berth:state=ready,berth:ready-since=")
            .unwrap_or_else(|| panic!("{}", calls[1]));
        let since = humantime::parse_rfc3339(ready).unwrap();
        let age = SystemTime::now().duration_since(since).unwrap_or_default();
        assert!(age < Duration::from_secs(60), "{ready}");
        assert_eq!(calls[2], "CreateTags i-1 berth:state=retiring");
    }

    /// Defect 1, the escalation side, on the default `unhealthy_after`.
    #[test]
    fn escalation_is_due_unhealthy_after_past_the_first_failure() {
        let after = crate::manifest::AgentSettings::default().unhealthy_after.0;
        assert_eq!(after, Some(Duration::from_secs(60)));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let failed = vec![
            ("a".to_string(), t + Duration::from_secs(5)),
            ("b".to_string(), t),
        ];
        assert_eq!(
            escalate_at(&failed, after),
            Some(t + Duration::from_secs(60))
        );
        assert_eq!(escalate_at(&[], after), None);
        assert_eq!(escalate_at(&failed, None), None, "off");
    }

    #[tokio::test]
    async fn a_component_failed_long_enough_marks_the_instance_unhealthy() {
        let g = FakeGroup::default();
        let since = SystemTime::now() - Duration::from_secs(61);
        let (_tx, rx) = watch::channel(Report {
            failed: vec![("web".into(), since)],
            ..Default::default()
        });
        let after = crate::manifest::AgentSettings::default().unhealthy_after.0;
        escalate_health(
            g.clone(),
            ids(),
            after,
            pin("web=2"),
            "web".into(),
            rx,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(g.calls("SetInstanceHealth"), vec!["SetInstanceHealth i-1"]);
        assert!(
            g.calls("CreateTags").is_empty(),
            "alone in its group: nobody to nudge"
        );
    }

    fn pin(versions: &str) -> BTreeMap<String, String> {
        rollout::parse_versions(versions).unwrap()
    }

    /// A group in a rollout to `web=2`: this instance (`i-1`, launched
    /// last) runs it; `i-2`, `i-3` and `i-4` (oldest first) are ready on
    /// `web=1`. `group_tags` are the group's.
    fn rolling_group(group_tags: &[(&str, &str)]) -> FakeGroup {
        let g = FakeGroup::default();
        let member = |id: &str| Member {
            instance_id: id.into(),
            lifecycle_state: tags::IN_SERVICE.into(),
            health_status: tags::HEALTHY.into(),
        };
        let info = |id: &str, launch: u64, state: &str, versions: &str| InstanceInfo {
            instance_id: id.into(),
            launch_time: launch,
            tags: [
                (tags::TAG_STATE, state),
                (tags::TAG_VERSIONS, versions),
                (tags::TAG_PINNED_CLUSTER, "web"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        let mut f = g.state();
        f.snapshot = Some(GroupSnapshot {
            name: "asg".into(),
            tags: group_tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            desired_capacity: 4,
            members: ["i-1", "i-2", "i-3", "i-4"].map(member).to_vec(),
        });
        f.instances = vec![
            info("i-1", 400, "degraded", "web=2"),
            info("i-2", 100, "ready", "web=1"),
            info("i-3", 200, "ready", "web=1"),
            info("i-4", 300, "ready", "web=1"),
        ];
        drop(f);
        g
    }

    /// The halt an Unhealthy member causes lasts only while the group lists
    /// it: right after `SetInstanceHealth` it nudges the next member in line
    /// (here also the rollback writer), who then looks at once.
    #[tokio::test]
    async fn marking_itself_unhealthy_nudges_the_next_members_in_line() {
        let g = rolling_group(&[("berth:version", "2")]);
        let since = SystemTime::now() - Duration::from_secs(61);
        let (_tx, rx) = watch::channel(Report {
            failed: vec![("web".into(), since)],
            ..Default::default()
        });
        let after = crate::manifest::AgentSettings::default().unhealthy_after.0;
        escalate_health(
            g.clone(),
            ids(),
            after,
            pin("web=2"),
            "web".into(),
            rx,
            CancellationToken::new(),
        )
        .await;
        let calls = g.state().calls.clone();
        assert_eq!(calls.len(), 4, "{calls:?}");
        assert_eq!(calls[0], "SetInstanceHealth i-1", "marked first");
        assert!(
            calls[3].starts_with("CreateTags i-2 berth:nudge=") && calls[3].contains(".g.i-1."),
            "{calls:?}"
        );
    }

    #[test]
    fn an_unhealthy_member_nudges_the_first_k_in_line_and_the_rollback_writer() {
        let targets = |g: &FakeGroup| {
            let f = g.state();
            unhealthy_nudge_targets(
                f.snapshot.as_ref().unwrap(),
                &f.instances,
                "i-1",
                &pin("web=2"),
                "web",
                1000,
            )
        };
        // The default budget (1): the head of the line, who also writes
        // a rollback.
        assert_eq!(targets(&rolling_group(&[])), vec!["i-2"]);
        let g = rolling_group(&[("berth:max-unavailable", "2")]);
        assert_eq!(targets(&g), vec!["i-2", "i-3"]);
        // A bad tag: a budget of 1.
        let g = rolling_group(&[("berth:max-unavailable", "lots")]);
        assert_eq!(targets(&g), vec!["i-2"]);
        // The head of the line pinned to another cluster never writes a
        // rollback: the writer is nudged as well.
        let g = rolling_group(&[]);
        g.state().instances[1]
            .tags
            .insert(tags::TAG_PINNED_CLUSTER.into(), "api".into());
        assert_eq!(targets(&g), vec!["i-2", "i-3"]);
        // Nobody on other versions (a crash at rest): nobody to nudge.
        let g = rolling_group(&[]);
        for i in &mut g.state().instances {
            i.tags.insert(tags::TAG_VERSIONS.into(), "web=2".into());
        }
        assert!(targets(&g).is_empty());
    }

    /// Most boots (every agent restart, every group without a hook) are not
    /// in Pending:Wait: they read the group once and the hooks never.
    #[tokio::test(start_paused = true)]
    async fn an_instance_not_in_pending_wait_reads_no_hooks() {
        let g = FakeGroup::default();
        g.state().lifecycle = tags::IN_SERVICE.into();
        let (_tx, rx) = watch::channel(Report::default());
        let timeout = crate::manifest::AgentSettings::default().launch_timeout.0;
        launch_hook(
            g.clone(),
            ids(),
            timeout,
            None,
            rx,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(g.calls("DescribeAutoScalingGroups").len(), 1);
        assert!(g.calls("DescribeLifecycleHooks").is_empty());
        let (_tx, rx) = watch::channel(Report::default());
        launch_hook(
            g.clone(),
            ids(),
            timeout,
            Some(tags::IN_SERVICE.into()),
            rx,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(
            g.calls("DescribeAutoScalingGroups").len(),
            1,
            "the boot read told it"
        );
        assert!(g.calls("DescribeLifecycleHooks").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_launch_hook_continues_once_ready() {
        let g = FakeGroup::default();
        {
            let mut f = g.state();
            f.lifecycle = tags::PENDING_WAIT.into();
            f.hooks = vec![Hook {
                name: "boot".into(),
                transition: tags::LAUNCHING.into(),
                heartbeat_timeout_secs: 300,
            }];
        }
        let (tx, rx) = watch::channel(Report::default());
        let timeout = crate::manifest::AgentSettings::default().launch_timeout.0;
        // The boot read found it in Pending:Wait: no second read.
        let task = tokio::spawn(launch_hook(
            g.clone(),
            ids(),
            timeout,
            Some(tags::PENDING_WAIT.into()),
            rx,
            CancellationToken::new(),
        ));
        tokio::time::sleep(Duration::from_secs(250)).await;
        assert!(g.calls("DescribeAutoScalingGroups").is_empty());
        assert!(
            !g.calls("RecordLifecycleActionHeartbeat").is_empty(),
            "heartbeats while starting"
        );
        tx.send_modify(|r| r.state = AgentState::Ready);
        task.await.unwrap();
        assert_eq!(
            g.calls("CompleteLifecycleAction"),
            vec!["CompleteLifecycleAction boot CONTINUE"]
        );
    }
}
