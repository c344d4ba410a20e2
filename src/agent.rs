//! `berth run`: the daemon. Wires the source of identity and desired state,
//! the pin, the engine, the supervisor and the status API together, and
//! owns shutdown.
//!
//! Two sources share every other code path:
//! - **local**: a file stands in for IMDS and the group's tags ([`crate::local`]);
//!   drift drains and exits with [`crate::exit::RETIRED`].
//! - **EC2**: IMDSv2 gives the instance, the group's tags give the desired
//!   state ([`crate::aws`]). The agent tags its instance (`berth:versions`,
//!   `berth:state`), completes a launch lifecycle hook once every container
//!   is running and healthy, drains when the group terminates the instance
//!   or a spot interruption is announced, and marks the instance unhealthy
//!   when a component stays failed.
//!
//! Shutdown is structured: one root [`CancellationToken`] and one
//! [`TaskTracker`]. SIGTERM or SIGINT cancels it; every loop and every
//! backoff sleep selects on it; the agent then waits up to
//! [`SHUTDOWN_DEADLINE`] for its tasks. Containers are never stopped on
//! shutdown: restarting or upgrading berth causes no downtime.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aws::asg::{self, Group, Hook};
use crate::aws::ecr::Ecr;
use crate::aws::imds::{Imds, InstanceMetadata};
use crate::backoff::{DESIRED_STATE, ENGINE_RECONNECT, RetryPolicy, random_unit};
use crate::desired::{self, Desired, Identity};
use crate::local::LocalFile;
use crate::manifest::Manifest;
use crate::plan::Plan;
use crate::rollout;
use crate::runtime::Engine;
use crate::runtime::auth::RegistryAuth;
use crate::status::{AgentState, DriftEntry, Phase, Status};
use crate::supervisor::{self, Exit, Handle, Supervisor};

/// How long the agent waits for its own tasks after SIGTERM.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// Attempts to find this instance's group before giving up with
/// [`crate::exit::NOT_IN_GROUP`] (1 s, 2 s, 4 s, 8 s apart: a new member can
/// take a moment to show up in `DescribeAutoScalingInstances`).
pub const GROUP_LOOKUP_ATTEMPTS: u32 = 5;
/// Retrying calls to AWS from the agent's loops: 1 s … 60 s; throttling
/// doubles the wait.
pub const AWS_RETRY: RetryPolicy = RetryPolicy {
    name: "aws-retry",
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

/// Where identity and desired state come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// Local mode: this file stands in for IMDS and the group's tags.
    Local(PathBuf),
    /// EC2: IMDSv2 and the autoscaling group.
    Ec2,
}

/// Everything `berth run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub manifest: Manifest,
    pub source: SourceSpec,
    pub data_dir: PathBuf,
    pub status_addr: std::net::SocketAddr,
}

/// How `berth run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by a signal; containers keep running.
    Stopped,
    /// Containers were drained; the instance is to be retired (or is being terminated).
    Retired,
}

/// This instance is not a member of any autoscaling group.
#[derive(Debug, thiserror::Error)]
#[error(
    "instance {instance_id} is not in an autoscaling group (no {tag} tag in IMDS, and DescribeAutoScalingInstances knows no group); berth runs only on group members, or with --local"
)]
pub struct NotInGroup {
    pub instance_id: String,
    pub tag: &'static str,
}

/// Why containers are being drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainReason {
    /// Local mode: drift.
    Drift,
    /// EC2: the rollout gate said this instance's turn has come.
    Retire,
    Terminating,
    Spot,
}

/// File in the data dir recording a retirement in progress, so an agent
/// restart resumes it rather than starting over, and never terminates twice.
pub const RETIRING_FILE: &str = "retiring.json";

/// A retirement in progress.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Retiring {
    pub instance_id: String,
    /// `TerminateInstanceInAutoScalingGroup` was (about to be) sent.
    pub terminate_sent: bool,
}

impl Retiring {
    /// The retirement in progress for `instance_id`, if any.
    pub fn load(data_dir: &std::path::Path, instance_id: &str) -> Option<Retiring> {
        let bytes = std::fs::read(data_dir.join(RETIRING_FILE)).ok()?;
        serde_json::from_slice::<Retiring>(&bytes)
            .ok()
            .filter(|r| r.instance_id == instance_id)
    }

    fn save(&self, data_dir: &std::path::Path) {
        let body = serde_json::to_vec_pretty(self).expect("retiring serializes");
        if let Err(e) = crate::plan::atomic_write(data_dir, RETIRING_FILE, &body) {
            tracing::error!(error = %e, "cannot record the retirement in the data dir");
        }
    }
}

/// The EC2 side: IMDS, the group's APIs, and who this instance is.
#[derive(Clone)]
pub struct Ec2 {
    pub imds: Imds,
    pub group: Group,
    pub meta: InstanceMetadata,
    pub group_name: String,
    pub config: aws_config::SdkConfig,
}

/// A connected source.
#[derive(Clone)]
pub enum Source {
    Local(PathBuf),
    Ec2(Box<Ec2>),
}

impl Source {
    /// Connects the source. For EC2: reads IMDS and finds the group,
    /// retrying while IMDS or AWS cannot be reached. `Ok(None)` if cancelled.
    pub async fn connect(
        spec: &SourceSpec,
        cancel: &CancellationToken,
        note: &(dyn Fn(String) + Sync),
    ) -> anyhow::Result<Option<Source>> {
        match spec {
            SourceSpec::Local(p) => Ok(Some(Source::Local(p.clone()))),
            SourceSpec::Ec2 => Ok(connect_ec2(cancel, note)
                .await?
                .map(|e| Source::Ec2(Box::new(e)))),
        }
    }

    /// The identity and the desired state, read now.
    pub async fn desired(&self, manifest: &Manifest) -> anyhow::Result<(Identity, Desired)> {
        match self {
            Source::Local(path) => {
                let file = LocalFile::load(path)?;
                let identity = file.identity();
                let desired = desired::resolve(&identity, &file.tags, manifest)?;
                Ok((identity, desired))
            }
            Source::Ec2(e) => {
                let snapshot = e.group.describe(&e.group_name).await?;
                let identity = e.identity();
                let desired = desired::resolve(&identity, &snapshot.tags, manifest)?;
                Ok((identity, desired))
            }
        }
    }

    fn poll_interval(&self, manifest: &Manifest) -> Duration {
        match self {
            Source::Local(_) => manifest.agent.local_poll_interval.0,
            Source::Ec2(_) => manifest.agent.group_poll_interval.0,
        }
    }
}

impl Ec2 {
    fn identity(&self) -> Identity {
        Identity {
            instance_id: self.meta.instance_id.clone(),
            group: self.group_name.clone(),
        }
    }
}

async fn connect_ec2(
    cancel: &CancellationToken,
    note: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Option<Ec2>> {
    let imds = Imds::new();
    let mut attempt = 0;
    let meta = loop {
        match imds.metadata().await {
            Ok(m) => break m,
            Err(e) => {
                attempt += 1;
                let wait = DESIRED_STATE.delay(attempt, random_unit());
                tracing::error!(error = %e, retry_in = ?wait, "cannot read instance metadata (IMDSv2); not on EC2? use --local for local mode");
                note(format!("waiting for IMDS: {e}"));
                if !sleep_or_cancel(cancel, wait).await {
                    return Ok(None);
                }
            }
        }
    };
    let config = crate::aws::sdk_config(&meta.region).await;
    let group = Group::new(&config);
    let group_name = match meta.group_from_tag.clone() {
        Some(g) => g,
        None => {
            let mut misses = 0;
            let mut attempt = 0;
            loop {
                match group.group_of(&meta.instance_id).await {
                    Ok(Some(g)) => break g,
                    Ok(None) => {
                        misses += 1;
                        if misses >= GROUP_LOOKUP_ATTEMPTS {
                            return Err(NotInGroup {
                                instance_id: meta.instance_id.clone(),
                                tag: crate::aws::imds::GROUP_NAME_TAG,
                            }
                            .into());
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot find this instance's group; retrying");
                        note(format!("waiting for AWS: {e}"));
                    }
                }
                attempt += 1;
                if !sleep_or_cancel(cancel, AWS_RETRY.delay(attempt, random_unit())).await {
                    return Ok(None);
                }
            }
        }
    };
    tracing::info!(
        instance = %meta.instance_id,
        group = %group_name,
        region = %meta.region,
        zone = %meta.availability_zone,
        instance_type = %meta.instance_type,
        group_from = if meta.group_from_tag.is_some() { "imds-tag" } else { "api" },
        "identity"
    );
    Ok(Some(Ec2 {
        imds,
        group,
        meta,
        group_name,
        config,
    }))
}

/// Reads the local file and resolves it against the manifest.
pub fn resolve_local(
    path: &std::path::Path,
    manifest: &Manifest,
) -> anyhow::Result<(Identity, Desired)> {
    let file = LocalFile::load(path)?;
    let identity = file.identity();
    let desired = desired::resolve(&identity, &file.tags, manifest)?;
    Ok((identity, desired))
}

/// Runs the agent until a signal (→ [`Outcome::Stopped`]) or a drain (→ [`Outcome::Retired`]).
pub async fn run(opts: RunOptions) -> anyhow::Result<Outcome> {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(on_signal(cancel.clone()));

    let (status_tx, status_rx) = watch::channel(Arc::new(Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        message: Some("starting".into()),
        ..Default::default()
    }));
    crate::status::serve(opts.status_addr, status_rx, cancel.clone(), tracker.clone())
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for the status API (agent.status_addr)",
                opts.status_addr
            )
        })?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let note_tx = status_tx.clone();
    let note = move |m: String| {
        note_tx.send_modify(|s| Arc::make_mut(s).message = Some(m));
    };

    let Some(source) = Source::connect(&opts.source, &cancel, &note).await? else {
        return finish(tracker, Outcome::Stopped).await;
    };

    let mut auth = match RegistryAuth::default_path().map(|p| RegistryAuth::load(&p)) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "ignoring docker config; pulling without its credentials");
            RegistryAuth::default()
        }
        None => RegistryAuth::default(),
    };
    if let Source::Ec2(e) = &source {
        auth = auth.with_tokens(Ecr::new(e.config.clone(), e.meta.region.clone()));
    }

    let ns = opts.manifest.agent.namespace.clone();
    let engine = {
        let mut attempt = 0;
        loop {
            match Engine::connect(&ns, auth.clone()).await {
                Ok(e) => break e,
                Err(e) => {
                    attempt += 1;
                    if attempt == 1 {
                        tracing::error!(error = %e, "cannot reach the engine; retrying");
                    }
                    note(format!("waiting for the engine: {e}"));
                    if !sleep_or_cancel(&cancel, ENGINE_RECONNECT.delay(attempt, random_unit()))
                        .await
                    {
                        return finish(tracker, Outcome::Stopped).await;
                    }
                }
            }
        }
    };

    let Some(plan) = pin(&opts, &source, &cancel, &note).await? else {
        return finish(tracker, Outcome::Stopped).await;
    };
    tracing::info!(
        instance = %plan.instance_id,
        group = %plan.group,
        cluster = %plan.cluster,
        plan = %plan.id,
        versions = %plan.versions_tag(),
        "running the pinned plan"
    );

    let settings = supervisor::Settings {
        data_dir: opts.data_dir.clone(),
        resync_interval: opts.manifest.agent.resync_interval.0,
        pull_attempts: opts.manifest.agent.pull_attempts,
    };
    let status_watch = status_tx.subscribe();
    let (sup, handle) = Supervisor::new(
        engine.clone(),
        plan.clone(),
        settings,
        status_tx,
        cancel.clone(),
    );
    let reason: Arc<Mutex<Option<DrainReason>>> = Arc::default();
    let resuming = match &source {
        Source::Ec2(e) => Retiring::load(&opts.data_dir, &e.meta.instance_id),
        Source::Local(_) => None,
    };
    if let Some(r) = &resuming {
        // A retirement was under way when the agent stopped: finish it.
        tracing::warn!(
            terminate_sent = r.terminate_sent,
            "resuming the retirement of this instance"
        );
        *reason.lock().expect("drain reason lock") = Some(DrainReason::Retire);
        handle.set_notes(
            Some("retiring (resumed after an agent restart)".into()),
            Vec::new(),
        );
        handle.drain();
    } else if let Source::Ec2(e) = &source {
        tracker.spawn(rollout(
            (**e).clone(),
            engine,
            opts.clone(),
            plan.clone(),
            handle.clone(),
            reason.clone(),
            status_watch.clone(),
            cancel.clone(),
        ));
    } else {
        tracker.spawn(watch_local(
            opts.clone(),
            source.clone(),
            plan.clone(),
            handle.clone(),
            reason.clone(),
            cancel.clone(),
        ));
    }
    if let (Source::Ec2(e), None) = (&source, &resuming) {
        let e = (**e).clone();
        tracker.spawn(tag_instance(
            e.clone(),
            plan.versions_tag(),
            status_watch.clone(),
            cancel.clone(),
        ));
        tracker.spawn(launch_hook(
            e.clone(),
            opts.manifest.agent.launch_timeout.0,
            status_watch.clone(),
            cancel.clone(),
        ));
        tracker.spawn(escalate_health(
            e.clone(),
            opts.manifest.agent.unhealthy_after.0,
            status_watch.clone(),
            cancel.clone(),
        ));
        tracker.spawn(watch_termination(
            e,
            opts.manifest.agent.lifecycle_poll_interval.0,
            handle,
            reason.clone(),
            cancel.clone(),
        ));
    }
    let exit = sup.run(&tracker).await;
    let outcome = match exit {
        Exit::Cancelled => Outcome::Stopped,
        Exit::Drained => Outcome::Retired,
    };
    if outcome == Outcome::Retired
        && let Source::Ec2(e) = &source
    {
        let why = *reason.lock().expect("drain reason lock");
        after_drain(e, why, &opts.data_dir).await;
    }
    cancel.cancel();
    finish(tracker, outcome).await
}

async fn finish(tracker: TaskTracker, outcome: Outcome) -> anyhow::Result<Outcome> {
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(deadline = ?SHUTDOWN_DEADLINE, "some tasks did not stop in time; exiting anyway");
    }
    Ok(outcome)
}

/// Returns false if cancelled during the sleep.
async fn sleep_or_cancel(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// The pin: the existing one for this instance, or a new one resolved from
/// the desired state (retried with [`DESIRED_STATE`] backoff until it is
/// valid). `None` if cancelled first.
async fn pin(
    opts: &RunOptions,
    source: &Source,
    cancel: &CancellationToken,
    note: &impl Fn(String),
) -> anyhow::Result<Option<Plan>> {
    let existing = Plan::load(&opts.data_dir)?;
    // On EC2 the identity is known without reading the group.
    if let (Source::Ec2(e), Some(p)) = (source, &existing)
        && p.instance_id == e.meta.instance_id
    {
        return Ok(existing);
    }
    let mut attempt = 0;
    loop {
        match (source.desired(&opts.manifest).await, &existing) {
            (Ok((identity, _)), Some(p)) if p.instance_id == identity.instance_id => {
                return Ok(existing);
            }
            (Err(e), Some(p)) if matches!(source, Source::Local(_)) => {
                tracing::warn!(error = %format!("{e:#}"), pin = %Plan::path(&opts.data_dir).display(), "desired state unreadable; running the existing pin");
                return Ok(Some(p.clone()));
            }
            (Ok((identity, desired)), existing) => {
                if let Some(p) = existing {
                    tracing::warn!(pinned_for = %p.instance_id, this = %identity.instance_id, "the pin belongs to another instance; pinning anew");
                }
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let plan = Plan::build(&identity, &desired, &opts.manifest, now);
                plan.save(&opts.data_dir)?;
                tracing::info!(path = %Plan::path(&opts.data_dir).display(), versions = %plan.versions_tag(), "pinned");
                return Ok(Some(plan));
            }
            (Err(e), _) => {
                attempt += 1;
                let wait = DESIRED_STATE.delay(attempt, random_unit());
                tracing::error!(error = %format!("{e:#}"), retry_in = ?wait, "cannot resolve the desired state; nothing is pinned yet");
                note(format!("waiting for a valid desired state: {e:#}"));
                if !sleep_or_cancel(cancel, wait).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// Local mode's drift watch: re-reads the file; on drift, logs it and
/// drains. A bad file is logged (once per distinct error) and changes
/// nothing: containers keep running, nothing is retired.
async fn watch_local(
    opts: RunOptions,
    source: Source,
    plan: Plan,
    handle: Handle,
    reason: Arc<Mutex<Option<DrainReason>>>,
    cancel: CancellationToken,
) {
    let pinned = plan.versions();
    let mut last: Option<Result<Vec<DriftEntry>, String>> = None;
    loop {
        let now = match source.desired(&opts.manifest).await {
            Ok((_, desired)) => Ok(drift_entries(&plan, &pinned, &desired)),
            Err(e) => Err(format!("{e:#}")),
        };
        if last.as_ref() != Some(&now) {
            match &now {
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the desired state; containers keep running, nothing is retired");
                    handle.set_notes(Some(format!("desired state unreadable: {e}")), Vec::new());
                }
                Ok(d) if d.is_empty() => handle.set_notes(None, Vec::new()),
                Ok(d) => {
                    for e in d {
                        tracing::warn!(component = %e.component, pinned = %e.pinned, preferred = %e.preferred, "drift detected");
                    }
                    *reason.lock().expect("drain reason lock") = Some(DrainReason::Drift);
                    handle.set_notes(Some("drift: draining for retirement".into()), d.clone());
                    handle.drain();
                    return;
                }
            }
            last = Some(now);
        }
        if !sleep_or_cancel(&cancel, source.poll_interval(&opts.manifest)).await {
            return;
        }
    }
}

/// Assumed boot time (launch → ready) until this instance has seen its own.
pub const ASSUMED_BOOT: Duration = Duration::from_secs(120);

/// EC2: the drift watch and the rollout gate. Reads the group (one
/// `DescribeAutoScalingGroups`, plus `DescribeInstances` for members' launch
/// times and tags when drifted, and once at boot), asks
/// [`rollout::Watch`] whether this instance may retire, and sleeps as the
/// schedule says (±10 % jitter). Any error or missing data means no
/// decision: the agent never retires on what it cannot read. On `Retire` it
/// records the retirement in the data dir, tags `berth:state=retiring` and
/// drains; the termination follows in [`after_drain`].
#[allow(clippy::too_many_arguments)]
async fn rollout(
    e: Ec2,
    engine: Engine,
    opts: RunOptions,
    plan: Plan,
    handle: Handle,
    reason: Arc<Mutex<Option<DrainReason>>>,
    status: watch::Receiver<Arc<Status>>,
    cancel: CancellationToken,
) {
    use crate::rollout::{Decision, ImageCheck, MemberView, Observation, Snapshot};
    let pinned = plan.versions();
    let me = e.meta.instance_id.clone();
    let mut gate = rollout::Watch::default();
    let mut launch_times: HashMap<String, u64> = HashMap::new();
    let mut images_present: HashSet<String> = HashSet::new();
    let mut my_boot: Option<Duration> = None;
    let mut last_note: Option<String> = None;
    let mut last_drift: Vec<DriftEntry> = Vec::new();
    let mut head: Option<(String, Instant)> = None;
    let mut failures = 0u32;
    let drain = drain_estimate(&plan);
    loop {
        let look = async {
            let snap = e.group.describe(&e.group_name).await?;
            let desired = desired::resolve(&e.identity(), &snap.tags, &opts.manifest)?;
            let policy =
                rollout::policy_from_tags(&snap.tags).map_err(|errors| desired::TagErrors {
                    group: e.group_name.clone(),
                    errors,
                })?;
            let drifted = desired.versions != pinned || desired.cluster != plan.cluster;
            // At rest only this instance's own rank matters, and members not seen
            // before are the youngest: one DescribeInstances at boot is enough.
            let unknown = !launch_times.contains_key(&me);
            let infos = if drifted || unknown {
                Some(e.group.instances(&e.group_name).await?)
            } else {
                None
            };
            let mut tags_of: HashMap<String, BTreeMap<String, String>> = HashMap::new();
            for i in infos.into_iter().flatten() {
                launch_times.insert(i.instance_id.clone(), i.launch_time);
                tags_of.insert(i.instance_id, i.tags);
            }
            let now_s = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let members = snap
                .members
                .iter()
                .map(|m| {
                    let tags = tags_of.get(&m.instance_id);
                    MemberView {
                        id: m.instance_id.clone(),
                        launch_time: launch_times.get(&m.instance_id).copied().unwrap_or(now_s),
                        in_service: m.lifecycle_state == "InService",
                        healthy: m.health_status == "Healthy",
                        berth_state: tags.and_then(|t| t.get(rollout::TAG_STATE).cloned()),
                        versions: tags
                            .and_then(|t| t.get(rollout::TAG_VERSIONS))
                            .and_then(|v| rollout::parse_versions(v)),
                    }
                })
                .collect();
            let image = if drifted {
                check_images(
                    &engine,
                    &opts.manifest,
                    &desired,
                    &pinned,
                    &mut images_present,
                )
                .await
            } else {
                ImageCheck::Present
            };
            Ok::<_, anyhow::Error>((
                Snapshot {
                    desired_capacity: snap.desired_capacity.max(0) as u32,
                    members,
                },
                policy,
                desired,
                image,
            ))
        };
        let wait = match look.await {
            Err(err) => {
                failures += 1;
                let throttled = err
                    .downcast_ref::<crate::aws::AwsError>()
                    .is_some_and(|a| a.throttled);
                let note = format!("desired state unreadable: {err:#}");
                if last_note.as_ref() != Some(&note) {
                    tracing::error!(error = %format!("{err:#}"), "cannot read the group; containers keep running, nothing is retired");
                    handle.set_notes(Some(note.clone()), last_drift.clone());
                    last_note = Some(note);
                }
                AWS_RETRY
                    .delay(failures + u32::from(throttled), random_unit())
                    .max(opts.manifest.agent.group_poll_interval.0)
            }
            Ok((snapshot, policy, desired, image)) => {
                failures = 0;
                if my_boot.is_none() && status.borrow().state == AgentState::Ready {
                    let launched = launch_times.get(&me).copied().unwrap_or(0);
                    let now_s = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    my_boot = Some(
                        Duration::from_secs(now_s.saturating_sub(launched))
                            .clamp(Duration::from_secs(10), Duration::from_secs(3600)),
                    );
                }
                let drift = drift_entries(&plan, &pinned, &desired);
                if drift != last_drift {
                    for d in &drift {
                        tracing::warn!(component = %d.component, pinned = %d.pinned, preferred = %d.preferred, "drift detected");
                    }
                    last_drift = drift.clone();
                }
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as u64;
                let (decision, next) = gate.observe(&Observation {
                    now_ms,
                    snapshot: &snapshot,
                    me: &me,
                    pinned: &pinned,
                    preferred: &desired.versions,
                    policy: &policy,
                    image: &image,
                    boot: my_boot.unwrap_or(ASSUMED_BOOT),
                    drain,
                });
                let note = match &decision {
                    Decision::Retire => {
                        "retiring: draining, then terminating in the group".to_string()
                    }
                    Decision::Wait(rollout::Wait::NoDrift) => String::new(),
                    Decision::Wait(w) => {
                        if let rollout::Wait::NotMyTurn { head: h, .. } = w {
                            if head.as_ref().map(|(id, _)| id) != Some(h) {
                                head = Some((h.clone(), Instant::now()));
                            }
                        } else {
                            head = None;
                        }
                        let since = head
                            .as_ref()
                            .map(|(_, t)| {
                                format!(
                                    " (for {})",
                                    humantime::format_duration(Duration::from_secs(
                                        t.elapsed().as_secs()
                                    ))
                                )
                            })
                            .unwrap_or_default();
                        format!("drift: rollout gate waits: {w}{since}")
                    }
                };
                let note = (!note.is_empty()).then_some(note);
                if note != last_note {
                    match &note {
                        Some(n) => tracing::info!(decision = %n, "rollout gate"),
                        None => tracing::info!("no drift"),
                    }
                    handle.set_notes(note.clone(), drift.clone());
                    last_note = note;
                }
                if decision == Decision::Retire {
                    tracing::warn!(instance = %me, "rollout gate: this instance retires now");
                    Retiring {
                        instance_id: me.clone(),
                        terminate_sent: false,
                    }
                    .save(&opts.data_dir);
                    *reason.lock().expect("drain reason lock") = Some(DrainReason::Retire);
                    if let Err(err) = e
                        .group
                        .tag_instance(&me, &[(rollout::TAG_STATE, "retiring")])
                        .await
                    {
                        tracing::warn!(error = %err, "cannot tag the instance retiring");
                    }
                    handle.drain();
                    return;
                }
                next.mul_f64(0.9 + 0.2 * random_unit())
            }
        };
        if !sleep_or_cancel(&cancel, wait).await {
            return;
        }
    }
}

/// How long draining this instance takes at most: each wave's longest grace period.
fn drain_estimate(plan: &Plan) -> Duration {
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

/// Whether every changed component's preferred image exists in its registry.
/// Positive answers are cached; a missing or unknown one is asked again next time.
async fn check_images(
    engine: &Engine,
    manifest: &Manifest,
    desired: &Desired,
    pinned: &BTreeMap<String, String>,
    present: &mut HashSet<String>,
) -> rollout::ImageCheck {
    let Some(cluster) = manifest.cluster(&desired.cluster) else {
        return rollout::ImageCheck::Unknown(format!(
            "cluster {} is not in the manifest",
            desired.cluster
        ));
    };
    for c in &cluster.containers {
        let Some(v) = desired.versions.get(&c.name) else {
            continue;
        };
        if pinned.get(&c.name) == Some(v) {
            continue;
        }
        let image = c.image.replace(crate::manifest::VERSION_PLACEHOLDER, v);
        if present.contains(&image) {
            continue;
        }
        match engine.image_in_registry(&image, c.registry_auth).await {
            Ok(true) => {
                present.insert(image);
            }
            Ok(false) => return rollout::ImageCheck::Missing(image),
            Err(err) => return rollout::ImageCheck::Unknown(format!("{image}: {err}")),
        }
    }
    rollout::ImageCheck::Present
}

fn drift_entries(
    plan: &Plan,
    pinned: &std::collections::BTreeMap<String, String>,
    desired: &Desired,
) -> Vec<DriftEntry> {
    if desired.cluster != plan.cluster {
        return vec![DriftEntry {
            component: "(cluster)".into(),
            pinned: plan.cluster.clone(),
            preferred: desired.cluster.clone(),
        }];
    }
    desired::drift(pinned, desired)
        .into_iter()
        .map(|(component, pinned, preferred)| DriftEntry {
            component,
            pinned,
            preferred,
        })
        .collect()
}

/// The `berth:state` tag value for an agent state.
pub fn state_tag(s: AgentState) -> &'static str {
    match s {
        AgentState::Starting => "starting",
        AgentState::Ready => "ready",
        AgentState::Degraded => "degraded",
        AgentState::Draining => "draining",
        AgentState::Retired => "retiring",
    }
}

/// Keeps the instance's `berth:versions` and `berth:state` tags current,
/// retrying with [`AWS_RETRY`] backoff.
async fn tag_instance(
    e: Ec2,
    versions: String,
    mut status: watch::Receiver<Arc<Status>>,
    cancel: CancellationToken,
) {
    let mut tagged: Option<&'static str> = None;
    let mut versions_done = false;
    let mut attempt = 0;
    loop {
        let want = state_tag(status.borrow_and_update().state);
        if tagged != Some(want) || !versions_done {
            let mut tags = vec![("berth:state", want)];
            if !versions_done {
                tags.push(("berth:versions", versions.as_str()));
            }
            match e.group.tag_instance(&e.meta.instance_id, &tags).await {
                Ok(()) => {
                    tracing::info!(state = want, "instance tagged");
                    tagged = Some(want);
                    versions_done = true;
                    attempt = 0;
                }
                Err(err) => {
                    attempt += 1;
                    tracing::warn!(error = %err, "cannot tag the instance; retrying");
                    if !sleep_or_cancel(
                        &cancel,
                        AWS_RETRY.delay(attempt + u32::from(err.throttled), random_unit()),
                    )
                    .await
                    {
                        return;
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = status.changed() => if r.is_err() { return },
        }
    }
}

/// Retries an AWS call with [`AWS_RETRY`] backoff until it succeeds, `give_up` passes, or cancel.
async fn retry_aws<T, F, Fut>(
    what: &str,
    cancel: &CancellationToken,
    give_up: Option<Instant>,
    mut call: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::aws::AwsError>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(v) => return Some(v),
            Err(e) => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "{what} failed; retrying");
                if give_up.is_some_and(|t| Instant::now() >= t) {
                    return None;
                }
                if !sleep_or_cancel(
                    cancel,
                    AWS_RETRY.delay(attempt + u32::from(e.throttled), random_unit()),
                )
                .await
                {
                    return None;
                }
            }
        }
    }
}

/// With a launch lifecycle hook and this instance in `Pending:Wait`:
/// heartbeats while the containers start, `CONTINUE` once every container
/// is running and healthy, `ABANDON` after `timeout`.
async fn launch_hook(
    e: Ec2,
    timeout: Duration,
    mut status: watch::Receiver<Arc<Status>>,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    let deadline = started + timeout;
    let Some(hooks) = retry_aws("DescribeLifecycleHooks", &cancel, Some(deadline), || {
        e.group.hooks(&e.group_name)
    })
    .await
    else {
        return;
    };
    let Some(hook) = hooks.into_iter().find(|h| h.transition == asg::LAUNCHING) else {
        tracing::debug!("no launch lifecycle hook");
        return;
    };
    let Some(snapshot) = retry_aws("DescribeAutoScalingGroups", &cancel, Some(deadline), || {
        e.group.describe(&e.group_name)
    })
    .await
    else {
        return;
    };
    let state = snapshot
        .member(&e.meta.instance_id)
        .map(|m| m.lifecycle_state.clone())
        .unwrap_or_default();
    if state != "Pending:Wait" {
        tracing::info!(hook = %hook.name, lifecycle_state = %state, "launch hook not waiting for this instance");
        return;
    }
    tracing::info!(hook = %hook.name, timeout = ?timeout, "launch hook waits for every container to be running and healthy");
    let beat_every = Duration::from_secs((hook.heartbeat_timeout_secs.max(30) / 3) as u64);
    let mut last_beat = Instant::now();
    let result = loop {
        if status.borrow_and_update().state == AgentState::Ready {
            break "CONTINUE";
        }
        let now = Instant::now();
        if now >= deadline {
            tracing::error!(timeout = ?timeout, "containers not ready in time; abandoning the launch");
            break "ABANDON";
        }
        if now >= last_beat + beat_every {
            if let Err(err) = e
                .group
                .heartbeat(&e.group_name, &hook.name, &e.meta.instance_id)
                .await
            {
                tracing::warn!(error = %err, "lifecycle heartbeat failed");
            }
            last_beat = now;
        }
        let next = (last_beat + beat_every).min(deadline);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = status.changed() => {}
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    };
    let hook_name = hook.name.clone();
    if retry_aws(
        "CompleteLifecycleAction",
        &cancel,
        Some(Instant::now() + Duration::from_secs(120)),
        || {
            e.group.complete_lifecycle_action(
                &e.group_name,
                &hook_name,
                &e.meta.instance_id,
                result,
            )
        },
    )
    .await
    .is_some()
    {
        tracing::info!(hook = %hook.name, result, waited = ?started.elapsed(), "launch lifecycle action completed");
    }
}

/// Marks the instance `Unhealthy` once some component has been failed for `after`.
async fn escalate_health(
    e: Ec2,
    after: Option<Duration>,
    mut status: watch::Receiver<Arc<Status>>,
    cancel: CancellationToken,
) {
    let Some(after) = after else { return };
    let mut failed_since: Option<Instant> = None;
    loop {
        let failed: Vec<String> = status
            .borrow_and_update()
            .components
            .iter()
            .filter(|c| c.state == Phase::Failed)
            .map(|c| c.name.clone())
            .collect();
        failed_since = if failed.is_empty() {
            None
        } else {
            failed_since.or(Some(Instant::now()))
        };
        if let Some(since) = failed_since
            && since.elapsed() >= after
        {
            tracing::error!(components = %failed.join(","), failed_for = ?since.elapsed(), "marking this instance Unhealthy so the group replaces it");
            if retry_aws("SetInstanceHealth", &cancel, None, || {
                e.group.set_unhealthy(&e.meta.instance_id)
            })
            .await
            .is_some()
            {
                tracing::error!("instance marked Unhealthy");
            }
            return;
        }
        let wake = failed_since.map_or(Duration::from_secs(3600), |s| {
            (s + after).saturating_duration_since(Instant::now())
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = status.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// Polls IMDS for the group terminating this instance or a spot
/// interruption notice; either drains the containers. IMDS errors change
/// nothing.
async fn watch_termination(
    e: Ec2,
    every: Duration,
    handle: Handle,
    reason: Arc<Mutex<Option<DrainReason>>>,
    cancel: CancellationToken,
) {
    let mut warned = false;
    loop {
        let target = e.imds.target_lifecycle_state().await;
        let spot = e.imds.spot_instance_action().await;
        let why = match (&target, &spot) {
            (Ok(Some(t)), _) if t == "Terminated" => Some(DrainReason::Terminating),
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
            tracing::warn!(reason = ?why, spot = ?spot.ok().flatten(), "the instance is going away: draining");
            *reason.lock().expect("drain reason lock") = Some(why);
            if let Err(err) = e
                .group
                .tag_instance(&e.meta.instance_id, &[("berth:state", "draining")])
                .await
            {
                tracing::warn!(error = %err, "cannot tag the instance draining");
            }
            handle.set_notes(Some(format!("draining: {why:?}")), Vec::new());
            handle.drain();
            return;
        }
        if !sleep_or_cancel(&cancel, every).await {
            return;
        }
    }
}

/// After a drain on EC2: for a retirement, terminates the instance in its
/// group (once: recorded in the data dir before the call); for a
/// termination or spot notice, completes the group's terminating lifecycle
/// hook, if it has one.
async fn after_drain(e: &Ec2, why: Option<DrainReason>, data_dir: &std::path::Path) {
    let cancel = CancellationToken::new();
    match why {
        Some(DrainReason::Retire) => {
            let me = &e.meta.instance_id;
            let mut r = Retiring::load(data_dir, me).unwrap_or(Retiring {
                instance_id: me.clone(),
                terminate_sent: false,
            });
            if r.terminate_sent {
                // Sent before an agent restart: send again only if the group still has us in service.
                let give_up = Some(Instant::now() + Duration::from_secs(60));
                let still = retry_aws("DescribeAutoScalingGroups", &cancel, give_up, || {
                    e.group.describe(&e.group_name)
                })
                .await
                .and_then(|s| s.member(me).map(|m| m.lifecycle_state.clone()));
                if still.as_deref() != Some("InService") {
                    tracing::info!(lifecycle_state = ?still, "termination already under way; not sending it again");
                    return;
                }
            }
            r.terminate_sent = true;
            r.save(data_dir);
            if retry_aws("TerminateInstanceInAutoScalingGroup", &cancel, None, || {
                e.group.terminate(me)
            })
            .await
            .is_some()
            {
                tracing::warn!(instance = %me, "retired: the group terminates this instance and launches a replacement");
            }
        }
        Some(DrainReason::Terminating) | Some(DrainReason::Spot) => {
            let give_up = Some(Instant::now() + Duration::from_secs(60));
            let Some(hooks) = retry_aws("DescribeLifecycleHooks", &cancel, give_up, || {
                e.group.hooks(&e.group_name)
            })
            .await
            else {
                return;
            };
            let terminating: Vec<Hook> = hooks
                .into_iter()
                .filter(|h| h.transition == asg::TERMINATING)
                .collect();
            for hook in terminating {
                if retry_aws("CompleteLifecycleAction", &cancel, give_up, || {
                    e.group.complete_lifecycle_action(
                        &e.group_name,
                        &hook.name,
                        &e.meta.instance_id,
                        "CONTINUE",
                    )
                })
                .await
                .is_some()
                {
                    tracing::info!(hook = %hook.name, "terminating lifecycle action completed");
                }
            }
        }
        Some(DrainReason::Drift) | None => {}
    }
}

async fn on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping the agent; containers keep running"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping the agent; containers keep running"),
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    cancel.cancel();
}
