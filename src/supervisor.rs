//! The supervisor: keeps the pinned plan's containers running.
//!
//! One task owns all state ([`Supervisor`]); nothing else mutates it. Inputs
//! arrive on one channel: engine events, results of actions, resyncs, and
//! commands from the agent. After every input the supervisor runs the pure
//! [`decide`] for each component and spawns the actions it asks for (pull,
//! create, start, restart), at most one in flight per component, so a slow
//! engine call never delays events about other components.
//!
//! Event-driven: a `die` event is answered with a start at once (the first
//! time; then with backoff). A full resync (list + inspect) runs at start-up,
//! after every reconnect to the engine, and every `agent.resync_interval` as a
//! safety net.
//!
//! Restarts reuse the same container; it is recreated only when it is gone or
//! no longer matches the pin (`berth.spec` label or image id), so a crash loop
//! leaves no litter of dead containers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::{ENGINE_RECONNECT, random_unit, restart_delay};
use crate::plan::{Plan, PlannedComponent};
use crate::runtime::{Engine, EngineError, EngineEvent, EventKind, Health, Observed};
use crate::status::{AgentState, ComponentStatus, DriftEntry, Phase, Status};

/// Delay before retrying a component whose image could not be pulled (the
/// pull itself already retried `agent.pull_attempts` times with backoff).
/// Pull failures never count against the failure budget: a registry outage
/// must not make a whole fleet look unhealthy.
pub const PULL_RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long a drain waits for actions already in flight before stopping containers.
pub const DRAIN_ACTION_WAIT: Duration = Duration::from_secs(60);

/// What the supervisor knows of a component's container.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub id: String,
    pub running: bool,
    pub health: Health,
    pub started_at: Option<SystemTime>,
    /// False when the container does not match the pin and must be replaced.
    pub matches: bool,
}

impl View {
    fn from_observed(o: &Observed, matches: bool) -> View {
        View {
            id: o.id.clone(),
            running: o.running,
            health: o.health,
            started_at: o.started_at,
            matches,
        }
    }
}

/// The supervisor's state for one component. Invariant: `busy` is true
/// exactly while one action for this component is in flight, and only the
/// action's result may then change `container`.
#[derive(Debug, Clone)]
pub struct Comp {
    pub spec: PlannedComponent,
    pub container: Option<View>,
    pub busy: Option<ActionKind>,
    /// The image is present locally (pulled or found).
    pub image_ready: bool,
    /// Consecutive failures since the last stable run.
    pub failures: u32,
    /// Restarts made by this agent.
    pub restarts: u64,
    pub not_before: Option<Instant>,
    pub last_exit_code: Option<i64>,
    pub last_error: Option<String>,
    /// The failure budget is exhausted (cleared by a stable run).
    pub failed: bool,
    /// The last pull failed; waiting to try again.
    pub pull_failed: bool,
    phase_logged: Phase,
}

/// An action the supervisor takes for a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make the image present (pull if needed).
    Pull,
    /// Create and start a container, removing `replace` first.
    Create { replace: Option<String> },
    /// Start the existing, stopped container.
    Start { id: String },
    /// Restart the running (unhealthy) container.
    Restart { id: String },
}

/// The kind of an action, without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Pull,
    Create,
    Start,
    Restart,
}

impl Action {
    fn kind(&self) -> ActionKind {
        match self {
            Action::Pull => ActionKind::Pull,
            Action::Create { .. } => ActionKind::Create,
            Action::Start { .. } => ActionKind::Start,
            Action::Restart { .. } => ActionKind::Restart,
        }
    }
}

/// The pure decision for one component: what to do now, if anything.
///
/// `deps_ready`: every dependency runs (and is healthy, if it has a
/// healthcheck); only creation waits for it. `can_act`: the engine is
/// connected and the initial resync is done.
pub fn decide(c: &Comp, deps_ready: bool, can_act: bool, now: Instant) -> Option<Action> {
    if c.busy.is_some() || !can_act || c.not_before.is_some_and(|t| t > now) {
        return None;
    }
    match &c.container {
        None if !c.image_ready => Some(Action::Pull),
        None if deps_ready => Some(Action::Create { replace: None }),
        None => None,
        Some(v) if !v.matches => Some(Action::Create {
            replace: Some(v.id.clone()),
        }),
        Some(v) if !v.running => Some(Action::Start { id: v.id.clone() }),
        Some(v) if v.health == Health::Unhealthy => Some(Action::Restart { id: v.id.clone() }),
        Some(_) => None,
    }
}

/// The phase shown in status and logged on change.
pub fn phase(c: &Comp, now: Instant) -> Phase {
    let waiting = c.not_before.is_some_and(|t| t > now);
    match (&c.busy, &c.container) {
        (Some(ActionKind::Pull), _) => Phase::Pulling,
        (Some(_), _) => Phase::Starting,
        (None, Some(v)) if v.running && v.matches && v.health != Health::Unhealthy => {
            Phase::Running
        }
        _ if c.failed => Phase::Failed,
        _ if c.pull_failed => Phase::Pulling,
        _ if waiting => Phase::Backoff,
        (None, None) => Phase::Pending,
        (None, Some(_)) => Phase::Starting,
    }
}

fn is_ready(c: &Comp) -> bool {
    c.busy.is_none()
        && c.container.as_ref().is_some_and(|v| {
            v.running && v.matches && matches!(v.health, Health::Healthy | Health::None)
        })
}

/// Inputs to the supervisor's loop.
#[derive(Debug)]
enum Input {
    Event(EngineEvent),
    EngineUp,
    EngineDown(String),
    Observed(Result<Vec<Observed>, String>),
    Done {
        idx: usize,
        kind: ActionKind,
        result: Result<Done, EngineError>,
    },
    Notes {
        message: Option<String>,
        drift: Vec<DriftEntry>,
    },
    Drain,
}

/// What a successful action reports back.
#[derive(Debug)]
enum Done {
    Image {
        image_id: String,
        digest: Option<String>,
    },
    Container {
        observed: Observed,
        image: Option<(String, Option<String>)>,
    },
}

/// How the supervisor's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The agent is shutting down; containers keep running.
    Cancelled,
    /// A drain was requested; containers were stopped in reverse order.
    Drained,
}

/// A handle for the agent to talk to a running supervisor.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Input>,
}

impl Handle {
    /// Sets the agent-level message and drift shown in status.
    pub fn set_notes(&self, message: Option<String>, drift: Vec<DriftEntry>) {
        let _ = self.tx.send(Input::Notes { message, drift });
    }

    /// Asks the supervisor to stop supervising and drain.
    pub fn drain(&self) {
        let _ = self.tx.send(Input::Drain);
    }
}

/// Settings the supervisor needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: std::path::PathBuf,
    pub resync_interval: Duration,
    pub pull_attempts: u32,
}

/// The supervisor's state.
pub struct Supervisor {
    engine: Engine,
    plan: Plan,
    settings: Settings,
    comps: Vec<Comp>,
    waves: Vec<Vec<usize>>,
    deps: Vec<Vec<usize>>,
    tx: mpsc::UnboundedSender<Input>,
    rx: mpsc::UnboundedReceiver<Input>,
    status: watch::Sender<Arc<Status>>,
    engine_connected: bool,
    observed_once: bool,
    resync_in_flight: bool,
    resync_wanted: bool,
    next_resync: Instant,
    ever_ready: bool,
    message: Option<String>,
    drift: Vec<DriftEntry>,
    last_state: Option<AgentState>,
    actions: TaskTracker,
    cancel: CancellationToken,
}

impl Supervisor {
    /// A supervisor for `plan`, publishing to `status`.
    pub fn new(
        engine: Engine,
        plan: Plan,
        settings: Settings,
        status: watch::Sender<Arc<Status>>,
        cancel: CancellationToken,
    ) -> (Supervisor, Handle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let comps = plan
            .components
            .iter()
            .map(|spec| Comp {
                spec: spec.clone(),
                container: None,
                busy: None,
                image_ready: false,
                failures: 0,
                restarts: 0,
                not_before: None,
                last_exit_code: None,
                last_error: None,
                failed: false,
                pull_failed: false,
                phase_logged: Phase::Pending,
            })
            .collect();
        let deps = plan
            .components
            .iter()
            .map(|c| {
                c.spec
                    .depends_on
                    .iter()
                    .filter_map(|d| plan.components.iter().position(|x| &x.name == d))
                    .collect()
            })
            .collect();
        let waves = plan.waves();
        let handle = Handle { tx: tx.clone() };
        let s = Supervisor {
            engine,
            plan,
            settings,
            comps,
            waves,
            deps,
            tx,
            rx,
            status,
            engine_connected: false,
            observed_once: false,
            resync_in_flight: false,
            resync_wanted: false,
            next_resync: Instant::now(),
            ever_ready: false,
            message: None,
            drift: Vec::new(),
            last_state: None,
            actions: TaskTracker::new(),
            cancel,
        };
        (s, handle)
    }

    /// Runs until cancelled (containers keep running) or drained.
    pub async fn run(mut self, tracker: &TaskTracker) -> Exit {
        tracker.spawn(watch_engine(
            self.engine.clone(),
            self.tx.clone(),
            self.cancel.clone(),
            SystemTime::now(),
        ));
        let mut drain = false;
        loop {
            self.tick();
            self.publish();
            let wake = self.next_wake();
            let input = tokio::select! {
                _ = self.cancel.cancelled() => break,
                i = self.rx.recv() => i,
                _ = tokio::time::sleep_until(wake.into()) => None,
            };
            match input {
                Some(Input::Drain) => {
                    drain = true;
                    break;
                }
                Some(i) => self.handle(i),
                None => {}
            }
        }
        if !drain {
            tracing::info!("supervisor stopping; containers keep running");
            return Exit::Cancelled;
        }
        self.drain().await;
        Exit::Drained
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Event(ev) => self.on_event(ev),
            Input::EngineUp => {
                if !self.engine_connected {
                    tracing::info!(host = self.engine.host(), "engine connected");
                }
                self.engine_connected = true;
                self.resync_wanted = true;
            }
            Input::EngineDown(why) => {
                if self.engine_connected {
                    tracing::error!(host = self.engine.host(), error = %why, "lost the engine; reconnecting");
                }
                self.engine_connected = false;
            }
            Input::Observed(r) => {
                self.resync_in_flight = false;
                match r {
                    Ok(list) => self.on_observed(list),
                    Err(e) => tracing::warn!(error = %e, "resync failed"),
                }
            }
            Input::Done { idx, kind, result } => self.on_done(idx, kind, result),
            Input::Notes { message, drift } => {
                self.message = message;
                self.drift = drift;
            }
            Input::Drain => unreachable!("handled in run"),
        }
    }

    fn idx_of(&self, component: &str) -> Option<usize> {
        self.comps.iter().position(|c| c.spec.name == component)
    }

    fn on_event(&mut self, ev: EngineEvent) {
        let Some(idx) = ev.component.as_deref().and_then(|c| self.idx_of(c)) else {
            return;
        };
        let c = &mut self.comps[idx];
        if c.busy.is_some() {
            if let EventKind::Die { exit_code } = ev.kind {
                c.last_exit_code = exit_code.or(c.last_exit_code);
            }
            return; // the action's own result is authoritative
        }
        let Some(v) = c.container.as_mut().filter(|v| v.id == ev.container_id) else {
            if !matches!(ev.kind, EventKind::Destroy) {
                self.resync_wanted = true; // a container of ours we do not know
            }
            return;
        };
        let stale = v.started_at.is_some_and(|s| ev.time < s);
        match ev.kind {
            EventKind::Die { exit_code } if v.running && !stale => {
                v.running = false;
                c.last_exit_code = exit_code;
                let why = format!(
                    "exited with code {}",
                    exit_code.map_or("?".into(), |e| e.to_string())
                );
                self.failure(idx, &why);
            }
            EventKind::Start if !v.running => {
                v.running = true;
                v.started_at = Some(ev.time);
                v.health = if c.spec.spec.healthcheck.is_some() {
                    Health::Starting
                } else {
                    Health::None
                };
            }
            EventKind::Health(h) if v.running && !stale => {
                let was = v.health;
                v.health = h;
                if h == Health::Unhealthy && was != Health::Unhealthy {
                    self.failure(idx, "healthcheck reports unhealthy");
                }
            }
            EventKind::Destroy => {
                tracing::warn!(component = %c.spec.name, container = %ev.container_id, "container was removed; recreating");
                c.container = None;
            }
            _ => {}
        }
    }

    /// Counts a failure and schedules the restart.
    fn failure(&mut self, idx: usize, why: &str) {
        let c = &mut self.comps[idx];
        let policy = c.spec.spec.restart;
        let stable = c
            .container
            .as_ref()
            .and_then(|v| v.started_at)
            .and_then(|s| SystemTime::now().duration_since(s).ok())
            .is_some_and(|ran| ran >= policy.stable_after.0);
        if stable {
            c.failures = 0;
        }
        c.failures += 1;
        let delay = restart_delay(&policy, c.failures, random_unit());
        c.not_before = (!delay.is_zero()).then(|| Instant::now() + delay);
        tracing::warn!(
            component = %c.spec.name,
            reason = why,
            failures = c.failures,
            restart_in_ms = delay.as_millis() as u64,
            "component failed"
        );
        if c.failures >= policy.failure_budget && !c.failed {
            c.failed = true;
            tracing::error!(
                component = %c.spec.name,
                failures = c.failures,
                budget = policy.failure_budget,
                "component exhausted its failure budget; still retrying every {:?}",
                policy.max_delay.0
            );
        }
    }

    fn on_observed(&mut self, list: Vec<Observed>) {
        let first = !self.observed_once;
        self.observed_once = true;
        let mut by_comp: BTreeMap<usize, Vec<Observed>> = BTreeMap::new();
        for o in list {
            match o.component.as_deref().and_then(|c| self.idx_of(c)) {
                Some(i) => by_comp.entry(i).or_default().push(o),
                None => {
                    tracing::warn!(container = %o.id, name = %o.name, component = ?o.component, "removing a managed container that is not in the pin");
                    self.spawn_remove(o.id);
                }
            }
        }
        for idx in 0..self.comps.len() {
            if self.comps[idx].busy.is_some() {
                continue;
            }
            let found = by_comp.remove(&idx).unwrap_or_default();
            let c = &self.comps[idx];
            let want_hash = c.spec.spec_hash();
            let matches = |o: &Observed| {
                o.spec_hash.as_deref() == Some(want_hash.as_str())
                    && c.spec.image_id.as_ref().is_none_or(|id| *id == o.image_id)
            };
            // Keep the best container: matching and running, then matching, then any.
            let keep = found
                .iter()
                .position(|o| matches(o) && o.running)
                .or_else(|| found.iter().position(&matches))
                .or(if found.is_empty() { None } else { Some(0) });
            let keep_obs = keep.map(|k| (found[k].clone(), matches(&found[k])));
            for (i, o) in found.into_iter().enumerate() {
                if Some(i) != keep {
                    tracing::warn!(component = %self.comps[idx].spec.name, container = %o.id, "removing a duplicate container");
                    self.spawn_remove(o.id);
                }
            }
            let c = &mut self.comps[idx];
            let Some((o, m)) = keep_obs else {
                if c.container.take().is_some() {
                    tracing::warn!(component = %c.spec.name, "container disappeared; recreating");
                }
                continue;
            };
            if m {
                c.image_ready = true;
            }
            let prev = c.container.replace(View::from_observed(&o, m));
            if first || prev.as_ref().map(|p| &p.id) != Some(&o.id) {
                if m {
                    tracing::info!(component = %c.spec.name, container = %o.id, running = o.running, "adopted container");
                } else {
                    tracing::info!(component = %c.spec.name, container = %o.id, "container does not match the pin; replacing");
                }
            }
            let was_running = prev.as_ref().is_some_and(|p| p.running && p.id == o.id);
            let was_unhealthy = prev.as_ref().is_some_and(|p| p.health == Health::Unhealthy);
            if m && !o.running && (first || was_running) {
                c.last_exit_code = o.exit_code;
                self.failure(idx, "found stopped");
            } else if m && o.running && o.health == Health::Unhealthy && !was_unhealthy {
                self.failure(idx, "healthcheck reports unhealthy");
            }
        }
    }

    fn on_done(&mut self, idx: usize, kind: ActionKind, result: Result<Done, EngineError>) {
        let c = &mut self.comps[idx];
        c.busy = None;
        match result {
            Ok(Done::Image { image_id, digest }) => {
                c.image_ready = true;
                c.pull_failed = false;
                c.last_error = None;
                self.record_image(idx, image_id, digest);
            }
            Ok(Done::Container { observed, image }) => {
                if kind != ActionKind::Create || c.restarts > 0 || c.failures > 0 {
                    c.restarts += 1;
                }
                c.last_error = None;
                c.image_ready = true;
                c.container = Some(View::from_observed(&observed, true));
                let name = c.spec.name.clone();
                if let Some((image_id, digest)) = image {
                    self.record_image(idx, image_id, digest);
                }
                tracing::info!(component = %name, container = %observed.id, action = ?kind, "container started");
                if !observed.running {
                    self.comps[idx].last_exit_code = observed.exit_code;
                    self.failure(idx, "exited right after start");
                }
            }
            Err(EngineError::NotFound {
                op: "start container",
                ..
            })
            | Err(EngineError::NotFound {
                op: "restart container",
                ..
            }) => {
                tracing::warn!(component = %c.spec.name, "container is gone; recreating");
                c.container = None;
            }
            Err(e @ EngineError::Pull { .. }) => {
                tracing::error!(component = %c.spec.name, error = %e, retry_in = ?PULL_RETRY_AFTER, "cannot pull image");
                c.pull_failed = true;
                c.last_error = Some(e.to_string());
                c.not_before = Some(Instant::now() + PULL_RETRY_AFTER);
            }
            Err(EngineError::Cancelled) => {}
            Err(e) => {
                tracing::error!(component = %c.spec.name, action = ?kind, error = %e, "action failed");
                c.last_error = Some(e.to_string());
                if self.engine_connected {
                    self.failure(idx, "action failed");
                } else {
                    c.not_before = Some(Instant::now() + Duration::from_secs(1));
                }
                self.resync_wanted = true;
            }
        }
    }

    /// Records an image id and digest in the pin the first time they are learned.
    fn record_image(&mut self, idx: usize, image_id: String, digest: Option<String>) {
        let c = &mut self.comps[idx];
        if c.spec.image_id.is_some() {
            return;
        }
        c.spec.image_id = Some(image_id.clone());
        c.spec.digest = digest.clone();
        self.plan.components[idx].image_id = Some(image_id.clone());
        self.plan.components[idx].digest = digest.clone();
        tracing::info!(component = %c.spec.name, image_id = %image_id, digest = ?digest, "image pinned");
        if let Err(e) = self.plan.save(&self.settings.data_dir) {
            tracing::error!(error = %e, "cannot record the image in the pin");
        }
    }

    /// Decides and acts for every component; starts a resync when due.
    fn tick(&mut self) {
        let now = Instant::now();
        for c in &mut self.comps {
            // A stable run clears the failure count.
            if let Some(v) = &c.container
                && v.running
                && c.failures > 0
                && c.busy.is_none()
                && v.started_at
                    .and_then(|s| SystemTime::now().duration_since(s).ok())
                    .is_some_and(|ran| ran >= c.spec.spec.restart.stable_after.0)
                && v.health != Health::Unhealthy
            {
                if c.failed {
                    tracing::info!(component = %c.spec.name, "component recovered after a stable run");
                }
                c.failures = 0;
                c.failed = false;
            }
        }
        if self.engine_connected
            && (self.resync_wanted || now >= self.next_resync)
            && !self.resync_in_flight
        {
            self.resync_wanted = false;
            self.resync_in_flight = true;
            self.next_resync = now + self.settings.resync_interval;
            let engine = self.engine.clone();
            let tx = self.tx.clone();
            self.actions.spawn(async move {
                let r = engine.list_managed().await.map_err(|e| e.to_string());
                let _ = tx.send(Input::Observed(r));
            });
        }
        let can_act = self.engine_connected && self.observed_once;
        for idx in 0..self.comps.len() {
            let deps_ready = self.deps[idx].iter().all(|&d| is_ready(&self.comps[d]));
            if let Some(action) = decide(&self.comps[idx], deps_ready, can_act, now) {
                self.spawn_action(idx, action);
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = self.next_resync.max(now + Duration::from_millis(10));
        for c in &self.comps {
            if let Some(t) = c.not_before
                && t > now
            {
                wake = wake.min(t);
            }
            if c.failures > 0
                && let Some(s) = c.container.as_ref().and_then(|v| v.started_at)
            {
                let at = s + c.spec.spec.restart.stable_after.0;
                if let Ok(left) = at.duration_since(SystemTime::now()) {
                    wake = wake.min(now + left);
                } else if c.container.as_ref().is_some_and(|v| v.running) {
                    wake = wake.min(now + Duration::from_secs(1));
                }
            }
        }
        wake
    }

    fn spawn_action(&mut self, idx: usize, action: Action) {
        let kind = action.kind();
        let c = &mut self.comps[idx];
        c.busy = Some(kind);
        c.not_before = None;
        let spec = c.spec.clone();
        let engine = self.engine.clone();
        let tx = self.tx.clone();
        let plan = self.plan.clone();
        let attempts = self.settings.pull_attempts;
        let cancel = self.cancel.clone();
        let grace = spec.spec.stop_grace_period.0;
        tracing::debug!(component = %spec.name, ?action, "acting");
        self.actions.spawn(async move {
            let result = match action {
                Action::Pull => engine
                    .ensure_image(&spec, attempts, &cancel)
                    .await
                    .map(|(image_id, digest)| Done::Image { image_id, digest }),
                Action::Create { replace } => {
                    create(&engine, &plan, spec, replace, attempts, &cancel).await
                }
                Action::Start { id } => match engine.start(&id).await {
                    Ok(()) => engine.inspect(&id).await.map(|observed| Done::Container {
                        observed,
                        image: None,
                    }),
                    Err(e) => Err(e),
                },
                Action::Restart { id } => match engine.restart(&id, grace).await {
                    Ok(()) => engine.inspect(&id).await.map(|observed| Done::Container {
                        observed,
                        image: None,
                    }),
                    Err(e) => Err(e),
                },
            };
            let _ = tx.send(Input::Done { idx, kind, result });
        });
    }

    fn spawn_remove(&self, id: String) {
        let engine = self.engine.clone();
        self.actions.spawn(async move {
            if let Err(e) = engine.remove(&id).await {
                tracing::warn!(container = %id, error = %e, "cannot remove container");
            }
        });
    }

    fn agent_state(&self) -> AgentState {
        if self.comps.iter().all(is_ready) {
            AgentState::Ready
        } else if self.ever_ready {
            AgentState::Degraded
        } else {
            AgentState::Starting
        }
    }

    /// Publishes status and logs every component phase change as one event.
    fn publish(&mut self) {
        let now = Instant::now();
        for c in &mut self.comps {
            let p = phase(c, now);
            if p != c.phase_logged {
                tracing::info!(
                    component = %c.spec.name,
                    from = ?c.phase_logged,
                    to = ?p,
                    restarts = c.restarts,
                    failures = c.failures,
                    exit_code = ?c.last_exit_code,
                    "component state changed"
                );
                c.phase_logged = p;
            }
        }
        let state = self.agent_state();
        if state == AgentState::Ready {
            self.ever_ready = true;
        }
        if self.last_state != Some(state) {
            tracing::info!(state = ?state, "agent state changed");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!("{state:?}"))]);
            self.last_state = Some(state);
        }
        let status = self.snapshot(state, now);
        self.status.send_if_modified(|old| {
            if **old == status {
                false
            } else {
                *old = Arc::new(status);
                true
            }
        });
    }

    fn snapshot(&self, state: AgentState, now: Instant) -> Status {
        let wall = SystemTime::now();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance_id: Some(self.plan.instance_id.clone()),
            group: Some(self.plan.group.clone()),
            cluster: Some(self.plan.cluster.clone()),
            plan_id: Some(self.plan.id.clone()),
            state,
            message: self.message.clone(),
            engine_connected: self.engine_connected,
            drift: self.drift.clone(),
            components: self
                .comps
                .iter()
                .map(|c| component_status(c, phase(c, now), now, wall))
                .collect(),
        }
    }

    /// Stops every container, last wave first, each with its grace period.
    async fn drain(mut self) {
        tracing::info!("draining: waiting for actions in flight");
        self.actions.close();
        let _ = tokio::time::timeout(DRAIN_ACTION_WAIT, self.actions.wait()).await;
        let mut attempt = 0;
        let list = loop {
            match self.engine.list_managed().await {
                Ok(l) => break l,
                Err(e) if attempt < 10 => {
                    attempt += 1;
                    tracing::warn!(error = %e, "drain cannot list containers; retrying");
                    tokio::time::sleep(ENGINE_RECONNECT.delay(attempt, random_unit())).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "drain cannot reach the engine; giving up");
                    return;
                }
            }
        };
        let now = Instant::now();
        let waves = self.waves.clone();
        for wave in waves.iter().rev() {
            let mut stops = Vec::new();
            for &idx in wave {
                let c = &mut self.comps[idx];
                c.phase_logged = Phase::Stopping;
                let ids: Vec<String> = list
                    .iter()
                    .filter(|o| o.component.as_deref() == Some(c.spec.name.as_str()) && o.running)
                    .map(|o| o.id.clone())
                    .collect();
                tracing::info!(component = %c.spec.name, grace = ?c.spec.spec.stop_grace_period.0, "stopping");
                for id in ids {
                    let engine = self.engine.clone();
                    let grace = c.spec.spec.stop_grace_period.0;
                    stops.push(async move { (id.clone(), engine.stop(&id, grace).await) });
                }
            }
            self.publish_drain(wave, Phase::Stopping, now);
            for (id, r) in futures_util::future::join_all(stops).await {
                if let Err(e) = r {
                    tracing::error!(container = %id, error = %e, "cannot stop container");
                }
            }
            for &idx in wave {
                tracing::info!(component = %self.comps[idx].spec.name, "component state changed to stopped");
                self.comps[idx].phase_logged = Phase::Stopped;
            }
            self.publish_drain(wave, Phase::Stopped, now);
        }
        tracing::info!("drained");
    }

    fn publish_drain(&self, wave: &[usize], phase_now: Phase, now: Instant) {
        let mut s = self.snapshot(AgentState::Draining, now);
        for (i, cs) in s.components.iter_mut().enumerate() {
            cs.state = if wave.contains(&i) {
                phase_now
            } else {
                self.comps[i].phase_logged
            };
        }
        self.status.send_replace(Arc::new(s));
    }
}

fn component_status(c: &Comp, phase: Phase, now: Instant, wall: SystemTime) -> ComponentStatus {
    ComponentStatus {
        name: c.spec.name.clone(),
        version: c.spec.version.clone(),
        image: c.spec.image.clone(),
        image_id: c.spec.image_id.clone(),
        container_id: c.container.as_ref().map(|v| v.id.clone()),
        state: phase,
        health: c.container.as_ref().map_or(Health::None, |v| v.health),
        restarts: c.restarts,
        failures: c.failures,
        last_exit_code: c.last_exit_code,
        backoff_until: c
            .not_before
            .filter(|t| *t > now)
            .map(|t| humantime::format_rfc3339_millis(wall + (t - now)).to_string()),
        last_error: c.last_error.clone(),
    }
}

/// Creates and starts a component's container, replacing `replace` first.
async fn create(
    engine: &Engine,
    plan: &Plan,
    mut spec: PlannedComponent,
    replace: Option<String>,
    attempts: u32,
    cancel: &CancellationToken,
) -> Result<Done, EngineError> {
    if let Some(old) = replace {
        engine.remove(&old).await?;
    }
    let mut image = None;
    if spec.image_id.is_none() {
        let (id, digest) = engine.ensure_image(&spec, attempts, cancel).await?;
        spec.image_id = Some(id.clone());
        spec.digest = digest.clone();
        image = Some((id, digest));
    }
    let id = match engine.create(plan, &spec).await {
        Err(EngineError::NotFound { .. }) => {
            // The image went away (pruned): fetch it again, once.
            engine.ensure_image(&spec, attempts, cancel).await?;
            engine.create(plan, &spec).await?
        }
        r => r?,
    };
    engine.start(&id).await?;
    let observed = engine.inspect(&id).await?;
    Ok(Done::Container { observed, image })
}

/// Follows the engine's event stream, reconnecting with [`ENGINE_RECONNECT`]
/// backoff; reports the engine up (which triggers a resync) and down.
async fn watch_engine(
    engine: Engine,
    tx: mpsc::UnboundedSender<Input>,
    cancel: CancellationToken,
    start: SystemTime,
) {
    let mut since = start;
    let mut attempt = 0u32;
    loop {
        if let Err(e) = engine.ping().await {
            let _ = tx.send(Input::EngineDown(e.to_string()));
            attempt += 1;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(ENGINE_RECONNECT.delay(attempt, random_unit())) => continue,
            }
        }
        attempt = 0;
        let stream = engine.events(since);
        tokio::pin!(stream);
        let _ = tx.send(Input::EngineUp);
        let why = loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => return,
                i = stream.next() => i,
            };
            match item {
                Some(Ok(ev)) => {
                    since = ev.time + Duration::from_nanos(1);
                    if tx.send(Input::Event(ev)).is_err() {
                        return;
                    }
                }
                Some(Err(e)) => break e.to_string(),
                None => break "event stream ended".to_string(),
            }
        };
        let _ = tx.send(Input::EngineDown(why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ContainerSpec, RestartPolicy};

    fn comp() -> Comp {
        let spec: ContainerSpec = toml::from_str("name = \"web\"\nimage = \"web:1\"").unwrap();
        Comp {
            spec: PlannedComponent {
                name: "web".into(),
                version: "1".into(),
                image: "web:1".into(),
                image_id: Some("sha256:1".into()),
                digest: None,
                spec,
            },
            container: None,
            busy: None,
            image_ready: true,
            failures: 0,
            restarts: 0,
            not_before: None,
            last_exit_code: None,
            last_error: None,
            failed: false,
            pull_failed: false,
            phase_logged: Phase::Pending,
        }
    }

    fn view(running: bool, health: Health, matches: bool) -> Option<View> {
        Some(View {
            id: "c1".into(),
            running,
            health,
            started_at: None,
            matches,
        })
    }

    #[test]
    fn decide_table() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let start = Some(Action::Start { id: "c1".into() });
        let cases: Vec<(&str, Comp, bool, bool, Option<Action>)> = vec![
            (
                "no image yet: pull",
                Comp {
                    image_ready: false,
                    ..comp()
                },
                true,
                true,
                Some(Action::Pull),
            ),
            (
                "absent: create",
                comp(),
                true,
                true,
                Some(Action::Create { replace: None }),
            ),
            ("absent, deps not ready: wait", comp(), false, true, None),
            ("engine down: wait", comp(), true, false, None),
            (
                "busy: wait",
                Comp {
                    busy: Some(ActionKind::Start),
                    ..comp()
                },
                true,
                true,
                None,
            ),
            (
                "stopped: start, deps ignored",
                Comp {
                    container: view(false, Health::None, true),
                    ..comp()
                },
                false,
                true,
                start.clone(),
            ),
            (
                "stopped in backoff: wait",
                Comp {
                    container: view(false, Health::None, true),
                    not_before: Some(later),
                    ..comp()
                },
                true,
                true,
                None,
            ),
            (
                "backoff over: start",
                Comp {
                    container: view(false, Health::None, true),
                    not_before: Some(now),
                    ..comp()
                },
                true,
                true,
                start,
            ),
            (
                "unhealthy: restart",
                Comp {
                    container: view(true, Health::Unhealthy, true),
                    ..comp()
                },
                true,
                true,
                Some(Action::Restart { id: "c1".into() }),
            ),
            (
                "mismatch: replace",
                Comp {
                    container: view(true, Health::None, false),
                    ..comp()
                },
                true,
                true,
                Some(Action::Create {
                    replace: Some("c1".into()),
                }),
            ),
            (
                "healthy: nothing",
                Comp {
                    container: view(true, Health::Healthy, true),
                    ..comp()
                },
                true,
                true,
                None,
            ),
            (
                "starting health: nothing",
                Comp {
                    container: view(true, Health::Starting, true),
                    ..comp()
                },
                true,
                true,
                None,
            ),
        ];
        for (what, c, deps, can, want) in cases {
            assert_eq!(decide(&c, deps, can, now), want, "{what}");
        }
    }

    #[test]
    fn phases() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        assert_eq!(phase(&comp(), now), Phase::Pending);
        assert_eq!(
            phase(
                &Comp {
                    busy: Some(ActionKind::Pull),
                    ..comp()
                },
                now
            ),
            Phase::Pulling
        );
        assert_eq!(
            phase(
                &Comp {
                    container: view(true, Health::Healthy, true),
                    ..comp()
                },
                now
            ),
            Phase::Running
        );
        assert_eq!(
            phase(
                &Comp {
                    container: view(false, Health::None, true),
                    not_before: Some(later),
                    ..comp()
                },
                now
            ),
            Phase::Backoff
        );
        assert_eq!(
            phase(
                &Comp {
                    container: view(false, Health::None, true),
                    failed: true,
                    ..comp()
                },
                now
            ),
            Phase::Failed
        );
        assert_eq!(
            phase(
                &Comp {
                    container: view(true, Health::Unhealthy, true),
                    not_before: Some(later),
                    ..comp()
                },
                now
            ),
            Phase::Backoff
        );
        assert!(RestartPolicy::default().failure_budget > 1);
    }
}
