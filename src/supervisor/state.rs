//! The supervisor's state machine: a pure reducer.
//!
//! [`apply`] takes the state, one [`Input`] (an engine event, the result of
//! an action, a resync, the engine going away or coming back, a tick of the
//! clock) and the time, mutates the state and returns the [`Effect`]s to
//! run. It never touches the engine, the disk or the clock, so table tests
//! drive it with canned inputs and the default settings, at any speed.
//!
//! # The failure rules
//!
//! - A *failure* is a death of a running container, an `unhealthy` report,
//!   or a start that did not work. It counts against the component's
//!   budget and schedules the restart: at once the first time, then with
//!   [`crate::backoff::restart_delay`].
//! - A *stable run* is `restart.stable_after` of running (and, with a
//!   healthcheck, of being healthy), measured from the run's start to now or
//!   to its death. Only a stable run resets the count. A failed start is
//!   never a stable run, however long ago the last one was.
//! - *Failed* means the budget is exhausted and no stable run has happened
//!   since: [`Comp::failed_since`] is set once and stays set through the
//!   crash loop's restarts and backoffs, until a stable run clears it. Health
//!   escalation reads that, never the phase of the moment.
//! - The engine being unreachable is never a failure: actions that cannot
//!   reach it are retried once it is back, and deaths the engine caused by
//!   going away (within [`ENGINE_STOP_WINDOW`] of losing it) are forgiven.
//! - A container that is gone or being removed is recreated, not counted.
//! - Secrets that cannot be resolved at create ([`Input::Unresolved`]) are
//!   not a failure either (a store outage or a missing secret must not
//!   make a fleet look unhealthy, nor would a new instance fare better):
//!   the component stays pending, says why, and the create is tried again
//!   with [`SECRETS_RETRY`] backoff. Nothing else waits for it but its
//!   dependents.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use crate::backoff::{SECRETS_RETRY, restart_delay};
use crate::plan::{Plan, PlannedComponent};
use crate::runtime::{EngineError, EngineEvent, EngineOp, EventKind, Health, Observed};
use crate::secrets::ResolveError;
use crate::status::{AgentState, DriftEntry, Phase};

/// Delay before retrying a component whose image could not be pulled (the
/// pull itself already retried `agent.pull_attempts` times with backoff).
/// Pull failures never count against the failure budget: a registry outage
/// must not make a whole fleet look unhealthy.
pub const PULL_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Deaths seen this close before the engine went away are the engine's
/// doing (it stops containers when it stops) and are not counted.
pub const ENGINE_STOP_WINDOW: Duration = Duration::from_secs(15);
/// Wait before retrying an action that could not reach the engine, or a
/// start refused because the container is being removed.
pub const ENGINE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The time, both clocks: `at` for timers, `wall` to compare with the
/// engine's timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub at: Instant,
    pub wall: SystemTime,
}

impl Now {
    /// The current time.
    pub fn read() -> Now {
        Now {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// This time plus `d` on both clocks.
    #[cfg(test)]
    pub fn plus(self, d: Duration) -> Now {
        Now {
            at: self.at + d,
            wall: self.wall + d,
        }
    }
}

/// What the supervisor knows of a component's container.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub id: String,
    pub running: bool,
    pub paused: bool,
    pub health: Health,
    /// When the current (or last) run started (engine clock).
    pub started_at: Option<SystemTime>,
    /// Since when the current run has been healthy (healthchecked containers).
    pub healthy_since: Option<SystemTime>,
    /// False when the container does not match the pin and must be replaced.
    pub matches: bool,
}

impl View {
    fn from_observed(o: &Observed, matches: bool, now: SystemTime) -> View {
        View {
            id: o.id.clone(),
            running: o.running,
            paused: o.paused,
            health: o.health,
            started_at: o.started_at,
            healthy_since: (o.running && o.health == Health::Healthy).then_some(now),
            matches,
        }
    }

    /// Running, not paused, matching the pin, and healthy where it has a healthcheck.
    pub fn serving(&self) -> bool {
        self.running
            && !self.paused
            && self.matches
            && matches!(self.health, Health::Healthy | Health::None)
    }
}

/// What a failure undid, so a death the engine caused can be forgiven.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forgivable {
    /// When the container died (engine clock).
    pub died_at: SystemTime,
    failures: u32,
    failed_since: Option<SystemTime>,
}

/// The supervisor's state for one component. Invariant: `busy` is `Some`
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
    /// Restarts made for this component (kept across agent restarts by the executor).
    pub restarts: u64,
    /// No action before this time (restart backoff, pull retry).
    pub not_before: Option<Instant>,
    pub last_exit_code: Option<i64>,
    pub last_error: Option<String>,
    /// Set when the failure budget is exhausted; cleared only by a stable run.
    pub failed_since: Option<SystemTime>,
    /// The last pull failed; waiting to try again.
    pub pull_failed: bool,
    /// Consecutive creates whose secrets could not be resolved; 0 once a
    /// create got them.
    pub unresolved: u32,
    /// The last failure was a death that may yet turn out to be the engine's.
    pub forgivable: Option<Forgivable>,
    /// The phase last logged.
    pub phase_logged: Phase,
}

impl Comp {
    fn new(spec: PlannedComponent) -> Comp {
        Comp {
            spec,
            container: None,
            busy: None,
            image_ready: false,
            failures: 0,
            restarts: 0,
            not_before: None,
            last_exit_code: None,
            last_error: None,
            failed_since: None,
            pull_failed: false,
            unresolved: 0,
            forgivable: None,
            phase_logged: Phase::Pending,
        }
    }

    fn has_healthcheck(&self) -> bool {
        self.spec.spec.has_healthcheck()
    }

    /// Since when the current run counts towards a stable run: its start,
    /// or with a healthcheck the moment it became healthy.
    fn stable_from(&self) -> Option<SystemTime> {
        let v = self.container.as_ref()?;
        if self.has_healthcheck() {
            v.healthy_since
        } else {
            v.started_at
        }
    }
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
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Pull => ActionKind::Pull,
            Action::Create { .. } => ActionKind::Create,
            Action::Start { .. } => ActionKind::Start,
            Action::Restart { .. } => ActionKind::Restart,
        }
    }
}

/// What a successful action reports back.
#[derive(Debug)]
pub enum Done {
    Image {
        image_id: String,
        digest: Option<String>,
    },
    Container {
        observed: Observed,
        image: Option<(String, Option<String>)>,
    },
}

/// One input to the reducer.
#[derive(Debug)]
pub enum Input {
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
    /// A create did not start: the component's secrets could not be
    /// resolved (the error names the references, never a value).
    Unresolved {
        idx: usize,
        error: ResolveError,
    },
    /// Time passed (a backoff ended, a run became stable, a resync is due).
    Tick,
}

/// What the executor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Run `action` for component `idx` and report back with [`Input::Done`].
    Act { idx: usize, action: Action },
    /// List and inspect the managed containers; report with [`Input::Observed`].
    Resync,
    /// Remove a container that is not ours to keep (duplicate, not in the pin).
    Remove(String),
    /// Write the pin: an image id and digest were learned.
    SavePin,
    /// Restart or failure counts changed: persist them ([`Counters`]).
    SaveCounters,
}

/// What survives an agent restart for one component: its restarts and its
/// failure streak, so a crash loop that outlives the agent still escalates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub restarts: u64,
    #[serde(default)]
    pub failures: u32,
    /// When the failure budget ran out, in ms since the epoch.
    #[serde(default)]
    pub failed_since_ms: Option<u64>,
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Settings the reducer needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub resync_interval: Duration,
    pub namespace: String,
}

/// The whole state.
#[derive(Debug, Clone)]
pub struct State {
    pub plan: Plan,
    pub settings: Settings,
    pub comps: Vec<Comp>,
    /// For each component, the indices of its dependencies.
    pub deps: Vec<Vec<usize>>,
    /// Connected to the engine (event stream up).
    pub engine_connected: bool,
    /// Why the engine is unreachable, while it is.
    pub engine_error: Option<String>,
    /// At least one resync has completed: adoption is done, actions may start.
    pub observed_once: bool,
    /// The engine went away; the first resync after it comes back starts
    /// stopped containers without counting failures.
    pub after_outage: bool,
    pub resync_in_flight: bool,
    pub resync_wanted: bool,
    pub next_resync: Instant,
    /// Every component has been ready at least once.
    pub ever_ready: bool,
    /// The daemon's note (drift, the gate's verdict) shown in status.
    pub message: Option<String>,
    pub drift: Vec<DriftEntry>,
}

impl State {
    /// The initial state for `plan`, with the counters a previous run of
    /// the agent left.
    pub fn new(
        plan: Plan,
        settings: Settings,
        counters: &BTreeMap<String, Counters>,
        now: Now,
    ) -> State {
        let comps: Vec<Comp> = plan
            .components
            .iter()
            .map(|spec| {
                let mut c = Comp::new(spec.clone());
                let k = counters.get(&spec.name).copied().unwrap_or_default();
                c.restarts = k.restarts;
                c.failures = k.failures;
                c.failed_since = k
                    .failed_since_ms
                    .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
                c
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
        State {
            plan,
            settings,
            comps,
            deps,
            engine_connected: false,
            engine_error: None,
            observed_once: false,
            after_outage: false,
            resync_in_flight: false,
            resync_wanted: false,
            next_resync: now.at,
            ever_ready: false,
            message: None,
            drift: Vec::new(),
        }
    }

    fn idx_of(&self, component: &str) -> Option<usize> {
        self.comps.iter().position(|c| c.spec.name == component)
    }

    /// The counters to persist, by component.
    pub fn counters(&self) -> BTreeMap<String, Counters> {
        self.comps
            .iter()
            .map(|c| {
                let k = Counters {
                    restarts: c.restarts,
                    failures: c.failures,
                    failed_since_ms: c.failed_since.map(epoch_ms),
                };
                (c.spec.name.clone(), k)
            })
            .collect()
    }

    /// The agent's state and, unless ready, why.
    pub fn agent_state(&self, now: Now) -> (AgentState, Option<String>) {
        if self.all_ready(now.wall) {
            return (AgentState::Ready, None);
        }
        if self.observed_once && !self.engine_connected {
            let why = self.engine_error.as_deref().unwrap_or("connection lost");
            return (
                AgentState::Degraded,
                Some(format!("the container engine is unreachable: {why}")),
            );
        }
        if let Some(c) = self.comps.iter().find(|c| c.failed_since.is_some()) {
            let last = c
                .last_error
                .clone()
                .or_else(|| c.last_exit_code.map(|e| format!("exited with code {e}")))
                .unwrap_or_else(|| "failing".into());
            return (
                AgentState::Degraded,
                Some(format!(
                    "component {} failed ({} consecutive failures; last: {last}); retrying with backoff, at most {} apart",
                    c.spec.name,
                    c.failures,
                    humantime::format_duration(c.spec.spec.restart.max_delay.0)
                )),
            );
        }
        let waiting = self
            .comps
            .iter()
            .find(|c| !is_ready(c))
            .or_else(|| self.comps.iter().find(|c| c.failures > 0))
            .or_else(|| self.comps.iter().find(|c| !settled(c, now.wall)));
        let why = waiting.map(|c| {
            let p = phase(c, now.at);
            match (&c.container, &c.last_error) {
                (Some(v), _) if v.paused => format!("component {} is paused", c.spec.name),
                _ if is_ready(c) && c.failures == 0 => format!(
                    "component {} started; ready after running for {}",
                    c.spec.name,
                    humantime::format_duration(c.spec.spec.restart.stable_after.0)
                ),
                _ if is_ready(c) => format!(
                    "component {} restarted after a failure; ready after a stable run of {}",
                    c.spec.name,
                    humantime::format_duration(c.spec.spec.restart.stable_after.0)
                ),
                (_, Some(e)) => format!("component {} is {}: {e}", c.spec.name, p.as_str()),
                _ => format!("component {} is {}", c.spec.name, p.as_str()),
            }
        });
        if self.ever_ready {
            (AgentState::Degraded, why)
        } else if !self.engine_connected {
            (
                AgentState::Starting,
                Some(match &self.engine_error {
                    Some(e) => format!("waiting for the container engine: {e}"),
                    None => "connecting to the container engine".into(),
                }),
            )
        } else {
            (AgentState::Starting, why)
        }
    }

    /// Every component serves, has had no failure since its last stable
    /// run, and its current run has lasted `restart.stable_after`.
    ///
    /// Ready is what the rollout gate counts as available, so it must not
    /// flicker: a replacement whose new version crashes a second after it
    /// starts, or between two crashes of a loop, is running for a moment,
    /// and a member reading the group then would retire the next instance
    /// onto the same bad version.
    pub fn all_ready(&self, now: SystemTime) -> bool {
        self.engine_connected
            && self
                .comps
                .iter()
                .all(|c| is_ready(c) && c.failures == 0 && settled(c, now))
    }

    /// The components that are failed, with the time they became so.
    pub fn failed(&self) -> Vec<(String, SystemTime)> {
        self.comps
            .iter()
            .filter_map(|c| c.failed_since.map(|t| (c.spec.name.clone(), t)))
            .collect()
    }

    /// The next moment the reducer needs a [`Input::Tick`].
    pub fn next_wake(&self, now: Now) -> Instant {
        let mut wake = self.next_resync.max(now.at + Duration::from_millis(10));
        for c in &self.comps {
            if let Some(t) = c.not_before
                && t > now.at
            {
                wake = wake.min(t);
            }
            let running = c.container.as_ref().is_some_and(|v| v.running);
            let from = if c.failures > 0 {
                c.stable_from()
            } else if !settled(c, now.wall) {
                c.container.as_ref().and_then(|v| v.started_at)
            } else {
                None
            };
            if running && let Some(from) = from {
                let at = from + c.spec.spec.restart.stable_after.0;
                let left = at.duration_since(now.wall).unwrap_or(Duration::ZERO);
                wake = wake.min(now.at + left.max(Duration::from_millis(10)));
            }
        }
        wake
    }
}

/// Ready: no action in flight and the container serves.
pub fn is_ready(c: &Comp) -> bool {
    c.busy.is_none() && c.container.as_ref().is_some_and(View::serving)
}

/// The current run has lasted `restart.stable_after` (engine clock). An
/// adopted container that started long ago is settled at once, so an agent
/// restart does not take a serving instance out of the rollout's count.
fn settled(c: &Comp, now: SystemTime) -> bool {
    c.container
        .as_ref()
        .and_then(|v| v.started_at)
        .and_then(|st| now.duration_since(st).ok())
        .is_some_and(|ran| ran >= c.spec.spec.restart.stable_after.0)
}

/// The pure decision for one component: what to do now, if anything.
///
/// `deps_ready`: every dependency is ready; only creation waits for it.
/// `can_act`: the engine is connected and the initial resync is done.
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
        Some(v) if v.paused => None, // someone paused it on purpose: report, do not fight
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
        (None, Some(v)) if v.running && v.paused => Phase::Paused,
        (None, Some(v)) if v.running && v.matches && v.health != Health::Unhealthy => {
            Phase::Running
        }
        _ if c.failed_since.is_some() => Phase::Failed,
        _ if c.pull_failed => Phase::Pulling,
        _ if c.unresolved > 0 => Phase::Pending,
        _ if waiting => Phase::Backoff,
        (None, None) => Phase::Pending,
        (None, Some(_)) => Phase::Starting,
    }
}

/// Why a failure is counted.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    /// A running container died at `at` (engine clock).
    Died {
        exit_code: Option<i64>,
        at: SystemTime,
    },
    /// The healthcheck reports unhealthy.
    Unhealthy,
    /// A start, restart or create did not leave a running container.
    StartFailed(String),
}

/// Applies one input at `now`; returns what the executor must do.
pub fn apply(s: &mut State, input: Input, now: Now) -> Vec<Effect> {
    let mut fx = Vec::new();
    let before = counts(s);
    match input {
        Input::Event(ev) => on_event(s, ev, now),
        Input::EngineUp => {
            if !s.engine_connected {
                tracing::info!("engine connected");
            }
            s.engine_connected = true;
            s.engine_error = None;
            s.resync_wanted = true;
        }
        Input::EngineDown(why) => on_engine_down(s, why, now),
        Input::Observed(r) => {
            s.resync_in_flight = false;
            match r {
                Ok(list) => on_observed(s, list, now, &mut fx),
                Err(e) => {
                    tracing::warn!(error = %e, "resync failed");
                    s.resync_wanted = s.engine_connected;
                }
            }
        }
        Input::Done { idx, kind, result } => on_done(s, idx, kind, result, now, &mut fx),
        Input::Notes { message, drift } => {
            s.message = message;
            s.drift = drift;
        }
        Input::Unresolved { idx, error } => on_unresolved(s, idx, error, now),
        Input::Tick => {}
    }
    tick(s, now, &mut fx);
    if counts(s) != before {
        fx.push(Effect::SaveCounters);
    }
    fx
}

/// What [`Counters`] persists, per component, without building the map:
/// `apply` compares it before and after every input (a hot path).
fn counts(s: &State) -> Vec<(u64, u32, Option<SystemTime>)> {
    s.comps
        .iter()
        .map(|c| (c.restarts, c.failures, c.failed_since))
        .collect()
}

fn on_engine_down(s: &mut State, why: String, now: Now) {
    if s.engine_connected {
        tracing::warn!(error = %why, "lost the container engine; reconnecting");
    }
    s.engine_connected = false;
    s.engine_error = Some(why);
    if !s.observed_once {
        return;
    }
    s.after_outage = true;
    for c in &mut s.comps {
        let Some(f) = c.forgivable.take() else {
            continue;
        };
        let recent = now
            .wall
            .duration_since(f.died_at)
            .is_ok_and(|ago| ago <= ENGINE_STOP_WINDOW);
        if recent {
            tracing::info!(component = %c.spec.name, "the container died as the engine went away: not counted as a failure");
            c.failures = f.failures;
            c.failed_since = f.failed_since;
            c.not_before = None;
        }
    }
}

fn on_event(s: &mut State, ev: EngineEvent, now: Now) {
    let Some(idx) = ev.component.as_deref().and_then(|c| s.idx_of(c)) else {
        return;
    };
    let c = &mut s.comps[idx];
    if c.busy.is_some() {
        if let EventKind::Die { exit_code } = ev.kind {
            c.last_exit_code = exit_code.or(c.last_exit_code);
        }
        return; // the action's own result is authoritative
    }
    let Some(v) = c.container.as_mut().filter(|v| v.id == ev.container_id) else {
        if !matches!(ev.kind, EventKind::Destroy) {
            s.resync_wanted = true; // a container of ours we do not know
        }
        return;
    };
    let stale = v.started_at.is_some_and(|st| ev.time < st);
    match ev.kind {
        EventKind::Die { exit_code } if v.running && !stale => {
            v.running = false;
            v.paused = false;
            c.last_exit_code = exit_code;
            failure(
                c,
                Failure::Died {
                    exit_code,
                    at: ev.time,
                },
                now,
            );
        }
        EventKind::Start if !v.running => {
            v.running = true;
            v.started_at = Some(ev.time);
            v.healthy_since = None;
            v.health = if c.spec.spec.has_healthcheck() {
                Health::Starting
            } else {
                Health::None
            };
        }
        EventKind::Health(h) if v.running && !stale => {
            let was = v.health;
            v.health = h;
            match h {
                Health::Healthy if was != Health::Healthy => v.healthy_since = Some(ev.time),
                Health::Healthy => {}
                _ => v.healthy_since = None,
            }
            if h == Health::Unhealthy && was != Health::Unhealthy {
                failure(c, Failure::Unhealthy, now);
            }
        }
        EventKind::Pause if v.running => {
            tracing::warn!(component = %c.spec.name, "container was paused: not serving until unpaused");
            v.paused = true;
        }
        EventKind::Unpause => v.paused = false,
        EventKind::Destroy => {
            tracing::warn!(component = %c.spec.name, container = %ev.container_id, "container was removed; recreating");
            c.container = None;
        }
        _ => {}
    }
}

/// Counts a failure and schedules the restart.
fn failure(c: &mut Comp, why: Failure, now: Now) {
    let policy = c.spec.spec.restart;
    // A death ends a run: if that run was stable, the count starts over.
    if let Failure::Died { at, .. } = &why
        && c.stable_from()
            .and_then(|from| at.duration_since(from).ok())
            .is_some_and(|ran| ran >= policy.stable_after.0)
    {
        reset(c);
    }
    c.forgivable = match &why {
        Failure::Died { at, .. } => Some(Forgivable {
            died_at: *at,
            failures: c.failures,
            failed_since: c.failed_since,
        }),
        _ => None,
    };
    c.failures += 1;
    let delay = restart_delay(&policy, c.failures, crate::backoff::random_unit());
    c.not_before = (!delay.is_zero()).then(|| now.at + delay);
    let reason = match &why {
        Failure::Died { exit_code, .. } => format!(
            "exited with code {}",
            exit_code.map_or("?".into(), |e| e.to_string())
        ),
        Failure::Unhealthy => "healthcheck reports unhealthy".into(),
        Failure::StartFailed(e) => format!("start failed: {e}"),
    };
    tracing::warn!(
        component = %c.spec.name,
        reason = %reason,
        failures = c.failures,
        restart_in_ms = delay.as_millis() as u64,
        "component failed"
    );
    if c.failures >= policy.failure_budget && c.failed_since.is_none() {
        c.failed_since = Some(now.wall);
        tracing::error!(
            component = %c.spec.name,
            failures = c.failures,
            budget = policy.failure_budget,
            "component exhausted its failure budget; still retrying with backoff, at most {} apart",
            humantime::format_duration(policy.max_delay.0)
        );
    }
}

/// A stable run: the count starts over and the component is no longer failed.
fn reset(c: &mut Comp) {
    if c.failed_since.is_some() {
        tracing::info!(component = %c.spec.name, "component recovered after a stable run");
    }
    c.failures = 0;
    c.failed_since = None;
    c.forgivable = None;
}

fn on_observed(s: &mut State, list: Vec<Observed>, now: Now, fx: &mut Vec<Effect>) {
    let first = !s.observed_once;
    s.observed_once = true;
    let after_outage = std::mem::take(&mut s.after_outage);
    let mut by_comp: BTreeMap<usize, Vec<Observed>> = BTreeMap::new();
    for o in list {
        let foreign = o
            .instance
            .as_deref()
            .is_some_and(|i| i != s.plan.instance_id);
        match o.component.as_deref().and_then(|c| s.idx_of(c)) {
            _ if foreign && o.running => {
                // Another live agent (another instance id) uses this
                // namespace: never touch its containers.
                tracing::error!(container = %o.id, name = %o.name, instance = ?o.instance, namespace = %s.settings.namespace, "a running container of another instance's agent is in this namespace; leaving it alone (give each agent its own agent.namespace)");
            }
            _ if foreign => {
                // A stopped container of an instance that is gone (local
                // mode's replacement instance on the same engine): litter
                // that holds the name.
                tracing::warn!(container = %o.id, name = %o.name, instance = ?o.instance, "removing a stopped container of another instance");
                fx.push(Effect::Remove(o.id.clone()));
                // It holds the name: let the removal finish before creating.
                if let Some(i) = o.component.as_deref().and_then(|c| s.idx_of(c)) {
                    s.comps[i].not_before = Some(now.at + ENGINE_RETRY_AFTER);
                }
            }
            Some(i) => by_comp.entry(i).or_default().push(o),
            None => {
                tracing::warn!(container = %o.id, name = %o.name, component = ?o.component, "removing a managed container that is not in the pin");
                fx.push(Effect::Remove(o.id));
            }
        }
    }
    for idx in 0..s.comps.len() {
        if s.comps[idx].busy.is_some() {
            continue;
        }
        let found = by_comp.remove(&idx).unwrap_or_default();
        let c = &s.comps[idx];
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
                tracing::warn!(component = %s.comps[idx].spec.name, container = %o.id, "removing a duplicate container");
                fx.push(Effect::Remove(o.id));
            }
        }
        let c = &mut s.comps[idx];
        let Some((o, m)) = keep_obs else {
            if c.container.take().is_some() {
                tracing::warn!(component = %c.spec.name, "container disappeared; recreating");
            }
            continue;
        };
        if m {
            c.image_ready = true;
        }
        let mut view = View::from_observed(&o, m, now.wall);
        let prev = c.container.take();
        if let Some(p) = prev
            .as_ref()
            .filter(|p| p.id == o.id && p.running && o.running)
        {
            view.healthy_since = p.healthy_since.or(view.healthy_since);
        }
        c.container = Some(view);
        if first || prev.as_ref().map(|p| &p.id) != Some(&o.id) {
            if m {
                tracing::info!(component = %c.spec.name, container = %o.id, running = o.running, "adopted container");
            } else {
                tracing::info!(component = %c.spec.name, container = %o.id, "container does not match the pin; replacing");
            }
        }
        let was_running = prev.as_ref().is_some_and(|p| p.running && p.id == o.id);
        let was_unhealthy = prev.as_ref().is_some_and(|p| p.health == Health::Unhealthy);
        if m && !o.running && (first || after_outage) {
            // Stopped while no agent watched, or during an engine outage: we
            // cannot tell a crash from a reboot or an engine stop, so start it
            // again without counting a failure.
            c.last_exit_code = o.exit_code;
            tracing::info!(component = %c.spec.name, container = %o.id, exit_code = ?o.exit_code, "found stopped; starting it");
        } else if m && !o.running && was_running {
            c.last_exit_code = o.exit_code;
            let at = o.finished_at.unwrap_or(now.wall);
            failure(
                c,
                Failure::Died {
                    exit_code: o.exit_code,
                    at,
                },
                now,
            );
        } else if m && o.running && o.health == Health::Unhealthy && !was_unhealthy {
            failure(c, Failure::Unhealthy, now);
        }
    }
}

fn on_done(
    s: &mut State,
    idx: usize,
    kind: ActionKind,
    result: Result<Done, EngineError>,
    now: Now,
    fx: &mut Vec<Effect>,
) {
    let connected = s.engine_connected;
    let c = &mut s.comps[idx];
    c.busy = None;
    if kind == ActionKind::Create {
        // A create reports back once its secrets are resolved.
        c.unresolved = 0;
    }
    match result {
        Ok(Done::Image { image_id, digest }) => {
            c.image_ready = true;
            c.pull_failed = false;
            c.last_error = None;
            record_image(s, idx, image_id, digest, fx);
        }
        Ok(Done::Container { observed, image }) => {
            if kind != ActionKind::Create || c.restarts > 0 || c.failures > 0 {
                c.restarts += 1;
            }
            c.last_error = None;
            c.image_ready = true;
            c.container = Some(View::from_observed(&observed, true, now.wall));
            tracing::info!(component = %c.spec.name, container = %observed.id, action = ?kind, "container started");
            if !observed.running {
                c.last_exit_code = observed.exit_code;
                failure(
                    c,
                    Failure::StartFailed(format!(
                        "exited right after start with code {}",
                        observed.exit_code.map_or("?".into(), |e| e.to_string())
                    )),
                    now,
                );
            }
            if let Some((image_id, digest)) = image {
                record_image(s, idx, image_id, digest, fx);
            }
        }
        Err(EngineError::Cancelled) => {}
        Err(e) if e.is_unreachable() || !connected => {
            // Not the container's fault: try again once the engine answers.
            tracing::warn!(component = %c.spec.name, action = ?kind, error = %e, "the engine did not answer; will retry");
            c.last_error = Some(e.to_string());
            c.not_before = Some(now.at + ENGINE_RETRY_AFTER);
            s.resync_wanted = true;
        }
        Err(e) if e.is_gone() && matches!(kind, ActionKind::Start | ActionKind::Restart) => {
            tracing::warn!(component = %c.spec.name, error = %e, "container is gone or being removed; recreating");
            c.container = None;
            c.not_before = Some(now.at + ENGINE_RETRY_AFTER);
            s.resync_wanted = true;
        }
        Err(e @ EngineError::Pull { .. }) => {
            tracing::error!(component = %c.spec.name, error = %e, retry_in = ?PULL_RETRY_AFTER, "cannot pull image");
            c.pull_failed = true;
            c.last_error = Some(e.to_string());
            c.not_before = Some(now.at + PULL_RETRY_AFTER);
        }
        Err(e) => {
            if let EngineError::Conflict {
                op: EngineOp::Create,
                ..
            } = &e
            {
                tracing::error!(component = %c.spec.name, namespace = %s.settings.namespace, error = %e, "the container name is taken: is another agent using the same agent.namespace?");
            } else {
                tracing::warn!(component = %c.spec.name, action = ?kind, error = %e, "action failed");
            }
            c.last_error = Some(e.to_string());
            failure(c, Failure::StartFailed(e.to_string()), now);
            s.resync_wanted = true;
        }
    }
}

/// A create whose secrets could not be resolved: the component stays
/// pending, says why, and tries again after [`SECRETS_RETRY`]'s backoff.
/// Never a failure (see the module docs).
fn on_unresolved(s: &mut State, idx: usize, error: ResolveError, now: Now) {
    let c = &mut s.comps[idx];
    c.busy = None;
    if error == ResolveError::Cancelled {
        return;
    }
    c.unresolved += 1;
    let wait = SECRETS_RETRY.delay(c.unresolved, crate::backoff::random_unit());
    c.not_before = Some(now.at + wait);
    let message = error.to_string();
    if c.last_error.as_deref() != Some(message.as_str()) {
        tracing::error!(component = %c.spec.name, error = %message, attempts = c.unresolved, retry_in = ?wait, "cannot resolve the component's secrets; it is not created until they resolve");
    } else {
        tracing::warn!(component = %c.spec.name, error = %message, attempts = c.unresolved, retry_in = ?wait, "the component's secrets still do not resolve");
    }
    c.last_error = Some(message);
}

/// Records an image id and digest in the pin the first time they are learned.
fn record_image(
    s: &mut State,
    idx: usize,
    image_id: String,
    digest: Option<String>,
    fx: &mut Vec<Effect>,
) {
    let c = &mut s.comps[idx];
    if c.spec.image_id.is_some() {
        return;
    }
    c.spec.image_id = Some(image_id.clone());
    c.spec.digest = digest.clone();
    s.plan.components[idx].image_id = Some(image_id.clone());
    s.plan.components[idx].digest = digest.clone();
    tracing::info!(component = %c.spec.name, image_id = %image_id, digest = ?digest, "image pinned");
    fx.push(Effect::SavePin);
}

/// Stable runs, resyncs, and the actions due now.
fn tick(s: &mut State, now: Now, fx: &mut Vec<Effect>) {
    for c in &mut s.comps {
        let stable = c.failures > 0
            && c.busy.is_none()
            && c.container
                .as_ref()
                .is_some_and(|v| v.running && v.health != Health::Unhealthy)
            && c.stable_from()
                .and_then(|from| now.wall.duration_since(from).ok())
                .is_some_and(|ran| ran >= c.spec.spec.restart.stable_after.0);
        if stable {
            reset(c);
        }
    }
    if s.engine_connected && (s.resync_wanted || now.at >= s.next_resync) && !s.resync_in_flight {
        s.resync_wanted = false;
        s.resync_in_flight = true;
        s.next_resync = now.at + s.settings.resync_interval;
        fx.push(Effect::Resync);
    }
    let can_act = s.engine_connected && s.observed_once;
    for idx in 0..s.comps.len() {
        let deps_ready = s.deps[idx].iter().all(|&d| is_ready(&s.comps[d]));
        if let Some(action) = decide(&s.comps[idx], deps_ready, can_act, now.at) {
            let c = &mut s.comps[idx];
            c.busy = Some(action.kind());
            c.not_before = None;
            fx.push(Effect::Act { idx, action });
        }
    }
    if s.all_ready(now.wall) {
        s.ever_ready = true;
    }
}

#[cfg(test)]
mod tests {
    //! Table and scenario tests of the reducer, all with the manifest's
    //! default restart policy (1 s initial delay, 30 s cap, stable after
    //! 10 s, budget 5) and the default `unhealthy_after` (60 s).
    use super::*;
    use crate::manifest::RestartPolicy;

    const WEB: usize = 0;

    fn plan(containers: &str) -> Plan {
        let mut p = crate::plan::for_tests(containers, "1");
        for c in &mut p.components {
            c.image_id = Some("sha256:img".into());
        }
        p
    }

    const ONE: &str = "[[clusters.web.containers]]\nname = \"web\"\nimage = \"web:{version}\"\n";

    fn state(containers: &str, t0: Now) -> State {
        State::new(
            plan(containers),
            Settings {
                resync_interval: Duration::from_secs(30),
                namespace: "berth".into(),
            },
            &BTreeMap::new(),
            t0,
        )
    }

    fn observed(s: &State, idx: usize, running: bool, started: SystemTime) -> Observed {
        let c = &s.comps[idx];
        Observed {
            id: format!("c-{}", c.spec.name),
            name: format!("berth-{}", c.spec.name),
            component: Some(c.spec.name.clone()),
            spec_hash: Some(c.spec.spec_hash()),
            image_id: "sha256:img".into(),
            running,
            paused: false,
            exit_code: (!running).then_some(1),
            health: Health::None,
            started_at: Some(started),
            finished_at: None,
            instance: Some("i-1".into()),
        }
    }

    /// A state whose one container was adopted running, started at `started`.
    fn adopted(t0: Now, started: SystemTime) -> State {
        let mut s = state(ONE, t0);
        apply(&mut s, Input::EngineUp, t0);
        s.resync_in_flight = false;
        let o = observed(&s, WEB, true, started);
        let fx = apply(&mut s, Input::Observed(Ok(vec![o])), t0);
        assert!(
            fx.iter().all(|e| !matches!(e, Effect::Act { .. })),
            "{fx:?}"
        );
        assert!(is_ready(&s.comps[WEB]));
        s
    }

    fn die(s: &State, at: SystemTime) -> Input {
        Input::Event(EngineEvent {
            container_id: s.comps[WEB].container.as_ref().unwrap().id.clone(),
            component: Some("web".into()),
            kind: EventKind::Die { exit_code: Some(1) },
            time: at,
        })
    }

    fn acts(fx: &[Effect]) -> Vec<&Action> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Act { action, .. } => Some(action),
                _ => None,
            })
            .collect()
    }

    fn started_ok(s: &State, at: SystemTime) -> Input {
        let mut o = observed(s, WEB, true, at);
        o.exit_code = None;
        Input::Done {
            idx: WEB,
            kind: ActionKind::Start,
            result: Ok(Done::Container {
                observed: o,
                image: None,
            }),
        }
    }

    #[test]
    fn defaults_are_what_these_tests_assume() {
        let p = RestartPolicy::default();
        assert_eq!(p.initial_delay.0, Duration::from_secs(1));
        assert_eq!(p.max_delay.0, Duration::from_secs(30));
        assert_eq!(p.stable_after.0, Duration::from_secs(10));
        assert_eq!(p.failure_budget, 5);
        let a = crate::manifest::AgentSettings::default();
        assert_eq!(a.unhealthy_after.0, Some(Duration::from_secs(60)));
    }

    /// Defect 1: in a crash loop the phase alternates (starting, running,
    /// backoff, failed), but "failed" stays set from the moment the budget
    /// ran out, so escalation after `unhealthy_after` fires.
    #[test]
    fn a_crash_loop_stays_failed_through_its_restarts_and_escalates_on_defaults() {
        let t0 = Now::read();
        let mut s = adopted(t0, t0.wall);
        let mut now = t0.plus(Duration::from_secs(1));
        let mut phases = Vec::new();
        let mut failed_at = None;
        // Each run lasts 1 s, then dies; restarts happen when the backoff allows.
        while now.at < t0.at + Duration::from_secs(180) {
            let fx = {
                let i = die(&s, now.wall);
                apply(&mut s, i, now)
            };
            let mut start_fx = fx;
            // Wait out the backoff, ticking like the executor would.
            while acts(&start_fx).is_empty() {
                now = now.plus(Duration::from_millis(250));
                phases.push(phase(&s.comps[WEB], now.at));
                start_fx = apply(&mut s, Input::Tick, now);
            }
            assert!(matches!(acts(&start_fx)[0], Action::Start { .. }));
            {
                let i = started_ok(&s, now.wall);
                apply(&mut s, i, now)
            };
            phases.push(phase(&s.comps[WEB], now.at));
            if failed_at.is_none() {
                failed_at = s.comps[WEB].failed_since;
            }
            now = now.plus(Duration::from_secs(1));
        }
        let failed_at = failed_at.expect("the budget of 5 runs out in a crash loop");
        assert!(
            failed_at.duration_since(t0.wall).unwrap() < Duration::from_secs(15),
            "failed after {:?}",
            failed_at.duration_since(t0.wall)
        );
        // The phase of the moment is not "failed" most of the time ...
        assert!(phases.contains(&Phase::Running) && phases.contains(&Phase::Failed));
        // ... but the component stays failed, since the same moment.
        assert_eq!(s.failed(), vec![("web".to_string(), failed_at)]);
        let at = crate::daemon::ec2::escalate_at(
            &s.failed(),
            crate::manifest::AgentSettings::default().unhealthy_after.0,
        )
        .unwrap();
        assert_eq!(at, failed_at + Duration::from_secs(60));
        assert!(
            at < now.wall,
            "escalation is due within the 3-minute crash loop"
        );
        // Backoff reached the 30 s cap and the count kept growing.
        assert!(s.comps[WEB].failures > 5);
    }

    /// Defect 2: a container that ran for an hour and now fails to start
    /// is not restarted in a hot loop: a failed start is never a stable run.
    #[test]
    fn failed_starts_after_a_long_run_back_off_and_become_failed() {
        let t0 = Now::read();
        let mut s = adopted(t0, t0.wall - Duration::from_secs(3600));
        let fx = {
            let i = die(&s, t0.wall);
            apply(&mut s, i, t0)
        };
        assert_eq!(
            s.comps[WEB].failures, 1,
            "the long run was stable: count starts over"
        );
        assert_eq!(acts(&fx).len(), 1, "first restart is immediate");
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..5 {
            let err = EngineError::Api {
                op: EngineOp::Start,
                target: "c-web".into(),
                source: "error mounting: not a directory".into(),
            };
            let fx = apply(
                &mut s,
                Input::Done {
                    idx: WEB,
                    kind: ActionKind::Start,
                    result: Err(err),
                },
                now,
            );
            assert!(
                acts(&fx).is_empty(),
                "no immediate retry after a failed start"
            );
            let nb = s.comps[WEB].not_before.expect("a backoff");
            delays.push((nb - now.at).as_secs_f64());
            now = Now {
                at: nb,
                wall: now.wall + (nb - now.at),
            };
            let fx = apply(&mut s, Input::Tick, now);
            assert_eq!(acts(&fx).len(), 1);
        }
        // 1, 2, 4, 8, 16 s, each within the ±10 % jitter.
        for (got, want) in delays.iter().zip([1.0, 2.0, 4.0, 8.0, 16.0]) {
            assert!((want * 0.9..=want * 1.1).contains(got), "{delays:?}");
        }
        assert!(s.comps[WEB].failed_since.is_some(), "budget of 5 exhausted");
        assert_eq!(s.agent_state(now).0, AgentState::Degraded);
    }

    /// A run that lasted `stable_after` resets the count; a shorter one does not.
    #[test]
    fn only_a_stable_run_resets_the_count() {
        let t0 = Now::read();
        let mut s = adopted(t0, t0.wall);
        {
            let i = die(&s, t0.wall + Duration::from_secs(3));
            apply(&mut s, i, t0)
        };
        assert_eq!(s.comps[WEB].failures, 1);
        apply(&mut s, Input::Tick, t0);
        let t1 = t0.plus(Duration::from_secs(4));
        {
            let i = started_ok(&s, t1.wall);
            apply(&mut s, i, t1)
        };
        let t2 = t1.plus(Duration::from_secs(9));
        {
            let i = die(&s, t2.wall);
            apply(&mut s, i, t2)
        };
        assert_eq!(s.comps[WEB].failures, 2, "9 s is not stable");
        let t3 = t2.plus(Duration::from_secs(2));
        apply(&mut s, Input::Tick, t3);
        {
            let i = started_ok(&s, t3.wall);
            apply(&mut s, i, t3)
        };
        let t4 = t3.plus(Duration::from_secs(10));
        assert!(
            s.next_wake(t3) <= t4.at,
            "woken when the run becomes stable"
        );
        apply(&mut s, Input::Tick, t4);
        assert_eq!(s.comps[WEB].failures, 0, "10 s running is stable");
    }

    /// Defect 8: deaths the engine caused by stopping, and actions that
    /// cannot reach it, are never counted; the state says why it is degraded.
    #[test]
    fn an_engine_outage_is_never_a_component_failure() {
        let t0 = Now::read();
        let mut s = adopted(t0, t0.wall - Duration::from_secs(60));
        assert_eq!(s.agent_state(t0).0, AgentState::Ready);
        // The engine stops: it kills the container, then the stream breaks.
        let fx = {
            let i = die(&s, t0.wall);
            apply(&mut s, i, t0)
        };
        assert_eq!(acts(&fx).len(), 1);
        let t1 = t0.plus(Duration::from_millis(200));
        apply(
            &mut s,
            Input::Done {
                idx: WEB,
                kind: ActionKind::Start,
                result: Err(EngineError::Connect {
                    host: "unix:///var/run/docker.sock".into(),
                    what: "start container c-web: ".into(),
                    source: "connection refused".into(),
                }),
            },
            t1,
        );
        apply(&mut s, Input::EngineDown("event stream ended".into()), t1);
        // The resync the failed start asked for fails too.
        apply(
            &mut s,
            Input::Observed(Err("connection refused".into())),
            t1,
        );
        assert_eq!(s.comps[WEB].failures, 0, "forgiven");
        let (st, why) = s.agent_state(t1);
        assert_eq!(st, AgentState::Degraded);
        assert!(why.unwrap().contains("engine is unreachable"));
        // While down, nothing is attempted.
        let t2 = t1.plus(Duration::from_secs(5));
        assert!(acts(&apply(&mut s, Input::Tick, t2)).is_empty());
        // Back: it is started again (and the resync confirms), uncounted.
        let mut fx = apply(&mut s, Input::EngineUp, t2);
        assert!(fx.contains(&Effect::Resync));
        let stopped = observed(&s, WEB, false, t0.wall - Duration::from_secs(60));
        fx.extend(apply(&mut s, Input::Observed(Ok(vec![stopped])), t2));
        assert_eq!(acts(&fx), vec![&Action::Start { id: "c-web".into() }]);
        assert_eq!(s.comps[WEB].failures, 0);
        assert!(s.comps[WEB].failed_since.is_none());
    }

    #[test]
    fn a_start_refused_because_the_container_is_being_removed_recreates_it() {
        let t0 = Now::read();
        let mut s = adopted(t0, t0.wall - Duration::from_secs(60));
        {
            let i = die(&s, t0.wall);
            apply(&mut s, i, t0)
        };
        let conflict = EngineError::Conflict {
            op: EngineOp::Start,
            target: "c-web".into(),
            message: "container is marked for removal and cannot be started".into(),
        };
        apply(
            &mut s,
            Input::Done {
                idx: WEB,
                kind: ActionKind::Start,
                result: Err(conflict),
            },
            t0,
        );
        assert_eq!(s.comps[WEB].failures, 1, "only the death counted");
        assert!(s.comps[WEB].container.is_none());
        let fx = apply(&mut s, Input::Tick, t0.plus(ENGINE_RETRY_AFTER));
        assert_eq!(acts(&fx), vec![&Action::Create { replace: None }]);
    }

    #[test]
    fn a_name_taken_by_another_agent_backs_off() {
        let t0 = Now::read();
        let mut s = state(ONE, t0);
        s.comps[WEB].image_ready = true;
        apply(&mut s, Input::EngineUp, t0);
        let mut pending = apply(&mut s, Input::Observed(Ok(vec![])), t0);
        let mut now = t0;
        let mut creates = 0;
        for _ in 0..600 {
            let mut fx = apply(&mut s, Input::Tick, now);
            fx.append(&mut pending);
            for a in acts(&fx) {
                assert!(matches!(a, Action::Create { .. }));
                creates += 1;
                pending = apply(
                    &mut s,
                    Input::Done {
                        idx: WEB,
                        kind: ActionKind::Create,
                        result: Err(EngineError::Conflict {
                            op: EngineOp::Create,
                            target: "berth-web".into(),
                            message: "name in use".into(),
                        }),
                    },
                    now,
                );
            }
            now = now.plus(Duration::from_millis(100));
        }
        // One minute: 0, 1, 2, 4, 8, 16, 30 s apart → at most 8 attempts, not thousands.
        assert!(creates <= 8, "{creates} creates in a minute");
        assert!(
            creates >= 6,
            "{creates} creates in a minute: {:?}",
            s.comps[WEB]
        );
        assert!(s.comps[WEB].failed_since.is_some());
    }

    /// Secrets that do not resolve keep only their component pending, with
    /// the reference in its error and the agent's reason; never a failure
    /// (no budget spent, never `failed`); the create is tried again with
    /// backoff (5 s, 10 s, 20 s … 5 min), and once they resolve the
    /// component starts like any other.
    #[test]
    fn unresolved_secrets_keep_only_their_component_pending_and_retry_with_backoff() {
        use crate::secrets::Problem;
        const DB: usize = 1;
        let two = format!(
            "{ONE}secrets = {{ DB_PASSWORD = \"ssm:/prod/db\" }}\n[[clusters.web.containers]]\nname = \"db\"\nimage = \"db:{{version}}\"\n"
        );
        let t0 = Now::read();
        let mut s = state(&two, t0);
        for c in &mut s.comps {
            c.image_ready = true;
        }
        apply(&mut s, Input::EngineUp, t0);
        let fx = apply(&mut s, Input::Observed(Ok(vec![])), t0);
        let created: Vec<usize> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Act {
                    idx,
                    action: Action::Create { replace: None },
                } => Some(*idx),
                _ => None,
            })
            .collect();
        assert_eq!(created, [WEB, DB], "{fx:?}");
        let unresolved = || Input::Unresolved {
            idx: WEB,
            error: ResolveError::Unresolved(vec![Problem {
                env: "DB_PASSWORD".into(),
                reference: "ssm:/prod/db".into(),
                why: "parameter not found (GetParameters)".into(),
            }]),
        };
        let mut pending = apply(&mut s, unresolved(), t0);
        let started = t0.wall - Duration::from_secs(60);
        let db_up = observed(&s, DB, true, started);
        pending.extend(apply(
            &mut s,
            Input::Done {
                idx: DB,
                kind: ActionKind::Create,
                result: Ok(Done::Container {
                    observed: db_up,
                    image: None,
                }),
            },
            t0,
        ));
        assert_eq!(phase(&s.comps[WEB], t0.at), Phase::Pending);
        assert_eq!(phase(&s.comps[DB], t0.at), Phase::Running, "the other runs");
        let want = "secret DB_PASSWORD (ssm:/prod/db): parameter not found (GetParameters)";
        assert_eq!(s.comps[WEB].last_error.as_deref(), Some(want));
        let (st, why) = s.agent_state(t0);
        assert_eq!(st, AgentState::Starting);
        assert_eq!(
            why.as_deref(),
            Some(format!("component web is pending: {want}").as_str())
        );
        // Ten minutes of retries: 5, 10, 20, 40, 80, 160, 300 s apart (± 10 %).
        let mut now = t0;
        let mut attempts = vec![Duration::ZERO];
        for _ in 0..600 {
            now = now.plus(Duration::from_secs(1));
            let mut fx = apply(&mut s, Input::Tick, now);
            fx.append(&mut pending);
            for e in &fx {
                if let Effect::Act { idx, action } = e {
                    assert_eq!((*idx, action), (WEB, &Action::Create { replace: None }));
                    attempts.push(now.at - t0.at);
                    pending = apply(&mut s, unresolved(), now);
                }
            }
            assert_eq!(phase(&s.comps[WEB], now.at), Phase::Pending);
        }
        let gaps: Vec<u64> = attempts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs())
            .collect();
        for (gap, want) in gaps.iter().zip([5u64, 10, 20, 40, 80, 160, 300]) {
            assert!(
                *gap >= want * 9 / 10 && *gap <= want * 11 / 10 + 1,
                "{gaps:?}"
            );
        }
        assert!((7..=8).contains(&attempts.len()), "{attempts:?}");
        let web = &s.comps[WEB];
        assert_eq!(
            (web.failures, web.failed_since),
            (0, None),
            "never a failure"
        );
        assert!(s.failed().is_empty());
        assert_eq!(s.comps[WEB].unresolved as usize, attempts.len());
        // The secret exists now: the next create starts the component.
        let at = s.comps[WEB].not_before.unwrap();
        let now = Now {
            at,
            wall: now.wall + (at - now.at),
        };
        let fx = apply(&mut s, Input::Tick, now);
        assert_eq!(acts(&fx), [&Action::Create { replace: None }]);
        let up = observed(&s, WEB, true, now.wall - Duration::from_secs(60));
        apply(
            &mut s,
            Input::Done {
                idx: WEB,
                kind: ActionKind::Create,
                result: Ok(Done::Container {
                    observed: up,
                    image: None,
                }),
            },
            now,
        );
        let web = &s.comps[WEB];
        assert_eq!((web.unresolved, web.last_error.as_ref()), (0, None));
        assert_eq!(phase(web, now.at), Phase::Running);
        assert_eq!(s.agent_state(now).0, AgentState::Ready);
    }

    #[test]
    fn a_paused_container_is_not_ready_and_says_so() {
        let t0 = Now::read();
        let mut s = adopted(t0, t0.wall - Duration::from_secs(60));
        let id = s.comps[WEB].container.as_ref().unwrap().id.clone();
        let fx = apply(
            &mut s,
            Input::Event(EngineEvent {
                container_id: id,
                component: Some("web".into()),
                kind: EventKind::Pause,
                time: t0.wall,
            }),
            t0,
        );
        assert!(
            acts(&fx).is_empty(),
            "berth does not fight a deliberate pause"
        );
        assert_eq!(phase(&s.comps[WEB], t0.at), Phase::Paused);
        let (st, why) = s.agent_state(t0);
        assert_eq!(st, AgentState::Degraded);
        assert!(why.unwrap().contains("paused"));
    }

    #[test]
    fn a_failed_component_before_ready_is_degraded_with_a_reason() {
        let t0 = Now::read();
        let mut s = state(ONE, t0);
        s.comps[WEB].image_ready = true;
        apply(&mut s, Input::EngineUp, t0);
        let mut pending = apply(&mut s, Input::Observed(Ok(vec![])), t0);
        let mut now = t0;
        for _ in 0..5 {
            let mut fx = apply(&mut s, Input::Tick, now);
            fx.append(&mut pending);
            if acts(&fx).is_empty() {
                now = Now {
                    at: s.comps[WEB].not_before.unwrap(),
                    wall: now.wall + (s.comps[WEB].not_before.unwrap() - now.at),
                };
                fx = apply(&mut s, Input::Tick, now);
            }
            assert_eq!(acts(&fx).len(), 1, "{fx:?}");
            pending = apply(
                &mut s,
                Input::Done {
                    idx: WEB,
                    kind: ActionKind::Create,
                    result: Err(EngineError::Api {
                        op: EngineOp::Start,
                        target: "berth-web".into(),
                        source: "exec: \"/app\": no such file".into(),
                    }),
                },
                now,
            );
        }
        let (st, why) = s.agent_state(now);
        assert_eq!(st, AgentState::Degraded, "not 'starting' for minutes");
        let why = why.unwrap();
        assert!(
            why.contains("component web failed") && why.contains("no such file"),
            "{why}"
        );
    }

    #[test]
    fn counters_carry_over_an_agent_restart() {
        let t0 = Now::read();
        let failed_at = t0.wall - Duration::from_secs(30);
        let restarts = BTreeMap::from([(
            "web".to_string(),
            Counters {
                restarts: 7,
                failures: 6,
                failed_since_ms: Some(epoch_ms(failed_at)),
            },
        )]);
        let s = State::new(
            plan(ONE),
            Settings {
                resync_interval: Duration::from_secs(30),
                namespace: "berth".into(),
            },
            &restarts,
            t0,
        );
        assert_eq!(s.comps[WEB].restarts, 7);
        assert_eq!(s.comps[WEB].failures, 6);
        // A crash loop that outlives the agent still escalates on time.
        assert_eq!(
            s.failed()[0].1,
            SystemTime::UNIX_EPOCH + Duration::from_millis(epoch_ms(failed_at))
        );
        assert_eq!(s.counters()["web"].failures, 6);
    }

    #[test]
    fn running_containers_of_another_instance_are_left_alone_stopped_ones_removed() {
        let t0 = Now::read();
        let mut s = state(ONE, t0);
        apply(&mut s, Input::EngineUp, t0);
        let mut o = observed(&s, WEB, true, t0.wall);
        o.instance = Some("i-other".into());
        let fx = apply(&mut s, Input::Observed(Ok(vec![o.clone()])), t0);
        assert!(!fx.iter().any(|e| matches!(e, Effect::Remove(_))), "{fx:?}");
        // A stopped one is a gone instance's litter holding the name.
        o.running = false;
        let fx = apply(&mut s, Input::Observed(Ok(vec![o])), t0);
        assert!(fx.contains(&Effect::Remove("c-web".into())), "{fx:?}");
        assert!(
            acts(&fx).is_empty(),
            "no create while the name is still taken"
        );
    }

    /// Between two crashes of a loop the container runs, but the agent is
    /// not "ready" until a stable run: no flapping tag, no false slot in
    /// the rollout gate.
    #[test]
    fn ready_waits_for_a_stable_run_after_a_failure() {
        let t0 = Now::read();
        let mut s = adopted(t0, t0.wall - Duration::from_secs(60));
        assert_eq!(s.agent_state(t0).0, AgentState::Ready);
        {
            let i = die(&s, t0.wall);
            apply(&mut s, i, t0);
        }
        let t1 = t0.plus(Duration::from_millis(300));
        {
            let i = started_ok(&s, t1.wall);
            apply(&mut s, i, t1);
        }
        assert!(is_ready(&s.comps[WEB]));
        let (st, why) = s.agent_state(t1);
        assert_eq!(st, AgentState::Degraded);
        assert!(why.unwrap().contains("stable run"));
        let t2 = t1.plus(RestartPolicy::default().stable_after.0);
        apply(&mut s, Input::Tick, t2);
        assert_eq!(s.agent_state(t2).0, AgentState::Ready);
    }

    /// A replacement's first run counts as ready only once it has lasted
    /// `stable_after` (10 s by default). A new version that dies a second
    /// after its first start never shows "ready", not even for a moment, so
    /// no member reading the group then counts it as available and retires
    /// the next instance onto the same bad version.
    #[test]
    fn a_first_run_is_ready_only_after_stable_after() {
        let t0 = Now::read();
        // Adopted long-running containers are ready at once.
        let s = adopted(t0, t0.wall - Duration::from_secs(60));
        assert_eq!(s.agent_state(t0).0, AgentState::Ready);
        // A container that has just started is not.
        let mut s = adopted(t0, t0.wall);
        assert!(is_ready(&s.comps[WEB]));
        let (st, why) = s.agent_state(t0);
        assert_eq!(st, AgentState::Starting);
        assert!(why.unwrap().contains("ready after running for 10s"));
        let stable = RestartPolicy::default().stable_after.0;
        assert!(
            s.next_wake(t0) <= t0.at + stable,
            "woken when the run has lasted stable_after"
        );
        // It dies after one second: it was never ready.
        let t1 = t0.plus(Duration::from_secs(1));
        assert_eq!(s.agent_state(t1).0, AgentState::Starting);
        {
            let i = die(&s, t1.wall);
            apply(&mut s, i, t1);
        }
        assert!(!s.ever_ready);
        assert_ne!(s.agent_state(t1).0, AgentState::Ready);
        // A run that lasts 10 s is ready.
        let t2 = t1.plus(Duration::from_millis(100));
        {
            let i = started_ok(&s, t2.wall);
            apply(&mut s, i, t2);
        }
        let t3 = t2.plus(stable);
        apply(&mut s, Input::Tick, t3);
        assert_eq!(s.agent_state(t3).0, AgentState::Ready);
        assert!(s.ever_ready);
    }

    #[test]
    fn decide_table() {
        let t0 = Now::read();
        let s = state(ONE, t0);
        let base = s.comps[WEB].clone();
        let view = |running: bool, paused: bool, health: Health, matches: bool| {
            Some(View {
                id: "c1".into(),
                running,
                paused,
                health,
                started_at: None,
                healthy_since: None,
                matches,
            })
        };
        let now = t0.at;
        let later = now + Duration::from_secs(5);
        let start = Some(Action::Start { id: "c1".into() });
        let cases: Vec<(&str, Comp, bool, bool, Option<Action>)> = vec![
            (
                "no image yet: pull",
                Comp {
                    image_ready: false,
                    ..base.clone()
                },
                true,
                true,
                Some(Action::Pull),
            ),
            (
                "absent: create",
                Comp {
                    image_ready: true,
                    ..base.clone()
                },
                true,
                true,
                Some(Action::Create { replace: None }),
            ),
            (
                "absent, deps not ready: wait",
                Comp {
                    image_ready: true,
                    ..base.clone()
                },
                false,
                true,
                None,
            ),
            (
                "engine down: wait",
                Comp {
                    image_ready: true,
                    ..base.clone()
                },
                true,
                false,
                None,
            ),
            (
                "busy: wait",
                Comp {
                    busy: Some(ActionKind::Start),
                    ..base.clone()
                },
                true,
                true,
                None,
            ),
            (
                "stopped: start, deps ignored",
                Comp {
                    container: view(false, false, Health::None, true),
                    ..base.clone()
                },
                false,
                true,
                start.clone(),
            ),
            (
                "stopped in backoff: wait",
                Comp {
                    container: view(false, false, Health::None, true),
                    not_before: Some(later),
                    ..base.clone()
                },
                true,
                true,
                None,
            ),
            (
                "backoff over: start",
                Comp {
                    container: view(false, false, Health::None, true),
                    not_before: Some(now),
                    ..base.clone()
                },
                true,
                true,
                start,
            ),
            (
                "unhealthy: restart",
                Comp {
                    container: view(true, false, Health::Unhealthy, true),
                    ..base.clone()
                },
                true,
                true,
                Some(Action::Restart { id: "c1".into() }),
            ),
            (
                "paused: leave it",
                Comp {
                    container: view(true, true, Health::None, true),
                    ..base.clone()
                },
                true,
                true,
                None,
            ),
            (
                "mismatch: replace",
                Comp {
                    container: view(true, false, Health::None, false),
                    ..base.clone()
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
                    container: view(true, false, Health::Healthy, true),
                    ..base.clone()
                },
                true,
                true,
                None,
            ),
            (
                "starting health: nothing",
                Comp {
                    container: view(true, false, Health::Starting, true),
                    ..base.clone()
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
}
