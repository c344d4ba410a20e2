//! The supervisor: keeps the pinned plan's containers running.
//!
//! - [`state`]: the pure reducer, `apply(&mut State, Input, now) -> Vec<Effect>`,
//!   with every rule about failures, backoff and adoption.
//! - [`executor`]: runs the effects against a [`ContainerRuntime`] (at most
//!   one action in flight per component, so a slow engine call never delays
//!   events about other components) and follows the engine's event stream.
//! - [`report`]: turns the state into the status the API serves, the typed
//!   [`Report`] the daemon's tasks read, log lines and `sd_notify` status.
//! - [`drain`]: stops every container, last wave first.
//!
//! One task owns the state ([`Supervisor::run`]); nothing else mutates it.
//! Event-driven: a `die` event is answered with a start at once (the first
//! time; then with backoff). A full resync (list + inspect) runs at
//! start-up, after every reconnect to the engine, and every
//! `agent.resync_interval` as a safety net. Restarts reuse the same
//! container; it is recreated only when it is gone or no longer matches the
//! pin, so a crash loop leaves no litter of dead containers.

mod drain;
mod executor;
pub mod heartbeat;
mod report;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::plan::Plan;
use crate::runtime::ContainerRuntime;
use crate::secrets::{NoStore, ResolveSecrets, Resolver};
use crate::status::{AgentState, DriftEntry, Status};
pub use heartbeat::Heartbeat;
pub use state::{Input, Now, State};

/// How long a drain waits for actions already in flight before stopping containers.
pub const DRAIN_ACTION_WAIT: Duration = Duration::from_secs(60);

/// Why the containers are drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// Local mode: the preferred versions changed.
    Drift,
    /// EC2: the rollout gate said this instance's turn has come.
    Retire,
    /// EC2: the group is terminating this instance.
    Terminating,
    /// EC2: a spot interruption notice.
    Spot,
}

impl DrainReason {
    /// One sentence for logs and status.
    pub fn describe(self) -> &'static str {
        match self {
            DrainReason::Drift => "drift: the preferred versions changed",
            DrainReason::Retire => "retiring: the rollout gate chose this instance",
            DrainReason::Terminating => "the group is terminating this instance",
            DrainReason::Spot => "a spot interruption notice was issued",
        }
    }
}

/// How the supervisor's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The agent is shutting down; containers keep running.
    Cancelled,
    /// A drain was requested; containers were stopped in reverse order.
    Drained(DrainReason),
}

/// The supervisor's typed state, for the daemon's tasks (instance tags, the
/// launch hook, health escalation). Published on every change.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub state: AgentState,
    /// Why the agent is not ready, when it is not.
    pub reason: Option<String>,
    pub engine_connected: bool,
    /// Components whose failure budget is exhausted with no stable run
    /// since, and when that happened. Stays set through a crash loop's
    /// restarts: this, not the phase of the moment, is what "failed" means.
    pub failed: Vec<(String, SystemTime)>,
    /// Set once a drain has begun, with its reason.
    pub draining: Option<DrainReason>,
}

/// Settings the supervisor needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub resync_interval: Duration,
    pub pull_attempts: u32,
    pub namespace: String,
}

/// Messages to the supervisor's loop (boxing the input would cost an
/// allocation per event for no gain: the channel holds a handful).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Msg {
    Input(Input),
    Drain(DrainReason),
}

/// A handle for the daemon to talk to a running supervisor.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Handle {
    /// Sets the daemon's message and the drift shown in status.
    pub fn set_notes(&self, message: Option<String>, drift: Vec<DriftEntry>) {
        let _ = self.tx.send(Msg::Input(Input::Notes { message, drift }));
    }

    /// Asks the supervisor to stop supervising and drain; its run then
    /// returns [`Exit::Drained`] with this reason. The first request wins.
    pub fn drain(&self, reason: DrainReason) {
        let _ = self.tx.send(Msg::Drain(reason));
    }
}

/// What a test sees of the requests sent through a [`Handle`].
#[cfg(test)]
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Msg>,
    drains: Vec<DrainReason>,
    messages: Vec<Option<String>>,
}

#[cfg(test)]
impl Handle {
    /// A handle whose requests land in the returned inbox (no supervisor).
    pub fn for_tests() -> (Handle, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inbox = Inbox {
            rx,
            drains: Vec::new(),
            messages: Vec::new(),
        };
        (Handle { tx }, inbox)
    }
}

#[cfg(test)]
impl Inbox {
    fn pull(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            match m {
                Msg::Drain(r) => self.drains.push(r),
                Msg::Input(Input::Notes { message, .. }) => self.messages.push(message),
                Msg::Input(_) => {}
            }
        }
    }

    /// The first drain requested so far, if any.
    pub fn drained(&mut self) -> Option<DrainReason> {
        self.pull();
        self.drains.first().copied()
    }

    /// The last message set so far.
    pub fn last_message(&mut self) -> Option<String> {
        self.pull();
        self.messages.last().cloned().flatten()
    }
}

/// The supervisor: the state, the engine, and where it publishes.
pub struct Supervisor<R: ContainerRuntime> {
    engine: R,
    state: State,
    settings: Settings,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    status: watch::Sender<Arc<Status>>,
    report: watch::Sender<Report>,
    /// The last agent state logged, so each change is logged once.
    last_state: Option<AgentState>,
    /// Beats on every turn of the loop, for systemd's watchdog.
    heartbeat: Heartbeat,
    /// Resolves components' secrets at create; its cache lives as long as
    /// the agent process (the daemon hands the same one to every round).
    secrets: Arc<dyn ResolveSecrets>,
    actions: TaskTracker,
    cancel: CancellationToken,
}

impl<R: ContainerRuntime> Supervisor<R> {
    /// A supervisor for `plan`, publishing to `status`. Returns it, a
    /// handle, and the typed report channel.
    pub fn new(
        engine: R,
        plan: Plan,
        settings: Settings,
        status: watch::Sender<Arc<Status>>,
        cancel: CancellationToken,
    ) -> (Supervisor<R>, Handle, watch::Receiver<Report>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = executor::load_counters(&settings.data_dir, &plan);
        let state = State::new(
            plan,
            state::Settings {
                resync_interval: settings.resync_interval,
                namespace: settings.namespace.clone(),
            },
            &counters,
            Now::read(),
        );
        let (report, report_rx) = watch::channel(Report::default());
        let handle = Handle { tx: tx.clone() };
        let s = Supervisor {
            engine,
            state,
            settings,
            tx,
            rx,
            status,
            report,
            last_state: None,
            heartbeat: Heartbeat::default(),
            secrets: Arc::new(Resolver::new(NoStore)),
            actions: TaskTracker::new(),
            cancel,
        };
        (s, handle, report_rx)
    }

    /// Beats `hb` on every turn of the loop (see [`heartbeat`]).
    pub fn with_heartbeat(mut self, hb: Heartbeat) -> Self {
        self.heartbeat = hb;
        self
    }

    /// Resolves secrets with `secrets` (by default there is no store, and
    /// every reference fails).
    pub fn with_secrets(mut self, secrets: Arc<dyn ResolveSecrets>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Runs until cancelled (containers keep running) or drained.
    pub async fn run(mut self, tracker: &TaskTracker) -> Exit {
        tracker.spawn(executor::watch_engine(
            self.engine.clone(),
            self.tx.clone(),
            self.cancel.clone(),
            SystemTime::now(),
        ));
        let reason = loop {
            self.heartbeat.beat();
            let now = Now::read();
            self.publish(now);
            let wake = self
                .state
                .next_wake(now)
                .min(now.at + heartbeat::BEAT_EVERY);
            let msg = tokio::select! {
                _ = self.cancel.cancelled() => {
                    self.heartbeat.leave();
                    tracing::info!("supervisor stopping; containers keep running");
                    return Exit::Cancelled;
                }
                m = self.rx.recv() => m,
                _ = tokio::time::sleep_until(wake.into()) => Some(Msg::Input(Input::Tick)),
            };
            match msg {
                Some(Msg::Drain(reason)) => break reason,
                Some(Msg::Input(input)) => {
                    let effects = state::apply(&mut self.state, input, Now::read());
                    self.execute(effects);
                }
                None => {}
            }
        };
        self.heartbeat.leave();
        self.drain(reason).await;
        Exit::Drained(reason)
    }
}

#[cfg(test)]
mod tests {
    //! The supervisor's loop and executor against an in-process fake engine.
    use super::*;
    use crate::runtime::fake::Fake;
    use crate::runtime::{EngineEvent, EventKind};

    fn plan() -> Plan {
        crate::plan::for_tests(
            "[[clusters.web.containers]]\nname = \"db\"\nimage = \"db:{version}\"\n[[clusters.web.containers]]\nname = \"app\"\nimage = \"app:{version}\"\ndepends_on = [\"db\"]\n",
            "1",
        )
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..2000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn starts_in_order_restarts_a_death_and_drains_in_reverse() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let (status, _status_rx) = watch::channel(Arc::new(Status::default()));
        let cancel = CancellationToken::new();
        let (sup, handle, mut report) = Supervisor::new(
            fake.clone(),
            plan(),
            Settings {
                data_dir: dir.path().to_path_buf(),
                resync_interval: Duration::from_secs(30),
                pull_attempts: 1,
                namespace: "t".into(),
            },
            status,
            cancel.clone(),
        );
        let tracker = TaskTracker::new();
        let run = tokio::spawn(async move { sup.run(&tracker).await });
        report
            .wait_for(|r| r.state == AgentState::Ready)
            .await
            .unwrap();
        assert_eq!(
            fake.calls(),
            vec!["create db", "start c-db", "create app", "start c-app"],
            "dependencies first"
        );
        // A death is answered with a start of the same container, at once.
        let died = fake.set_running("c-db", false);
        let tx = fake.state().events.clone().unwrap();
        tx.send(Ok(EngineEvent {
            container_id: died.id.clone(),
            component: died.component.clone(),
            kind: EventKind::Die { exit_code: Some(1) },
            time: SystemTime::now(),
        }))
        .unwrap();
        until("the restart", || {
            fake.calls().iter().filter(|c| *c == "start c-db").count() == 2
        })
        .await;
        let kept = executor::load_counters(dir.path(), &plan());
        assert_eq!(kept["db"].restarts, 1, "persisted");
        handle.drain(DrainReason::Retire);
        assert_eq!(run.await.unwrap(), Exit::Drained(DrainReason::Retire));
        let stops: Vec<String> = fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("stop"))
            .collect();
        assert_eq!(stops, vec!["stop c-app", "stop c-db"], "reverse order");
        assert_eq!(report.borrow().draining, Some(DrainReason::Retire));
    }

    /// The executor resolves a component's secrets before its create and
    /// hands them to the engine only; a reference that does not resolve
    /// keeps that component pending (its status names the reference) while
    /// the other starts, and once the secret exists the component starts.
    #[tokio::test]
    async fn secrets_reach_the_create_only_and_an_unresolved_component_waits_alone() {
        use crate::local::LocalSecrets;
        use crate::secrets::Resolver;
        use crate::status::Phase;
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("local.toml");
        let head = "instance_id = \"i-1\"\ngroup = \"web\"\n";
        std::fs::write(&local, head).unwrap();
        let plan = crate::plan::for_tests(
            "[[clusters.web.containers]]\nname = \"db\"\nimage = \"db:{version}\"\nsecrets = { PW = \"ssm:/db/pw\" }\n[[clusters.web.containers]]\nname = \"cache\"\nimage = \"cache:{version}\"\n",
            "1",
        );
        let fake = Fake::default();
        let (status, mut status_rx) = watch::channel(Arc::new(Status::default()));
        let cancel = CancellationToken::new();
        let (sup, _handle, mut report) = Supervisor::new(
            fake.clone(),
            plan,
            Settings {
                data_dir: dir.path().join("data"),
                resync_interval: Duration::from_secs(30),
                pull_attempts: 1,
                namespace: "t".into(),
            },
            status,
            cancel.clone(),
        );
        let sup = sup.with_secrets(Arc::new(Resolver::new(LocalSecrets::new(local.clone()))));
        let tracker = TaskTracker::new();
        let run = tokio::spawn(async move { sup.run(&tracker).await });
        let phase_of = |s: &Status, name: &str| {
            s.components
                .iter()
                .find(|c| c.name == name)
                .map(|c| (c.state, c.last_error.clone()))
        };
        let deadline = Duration::from_secs(60);
        let waiting = tokio::time::timeout(
            deadline,
            status_rx.wait_for(|s| {
                phase_of(s, "cache").is_some_and(|(p, _)| p == Phase::Running)
                    && phase_of(s, "db").is_some_and(|(p, e)| {
                        p == Phase::Pending && e.is_some_and(|e| e.contains("ssm:/db/pw"))
                    })
            }),
        )
        .await
        .expect("cache runs, db pending")
        .unwrap()
        .clone();
        let (_, error) = phase_of(&waiting, "db").unwrap();
        assert_eq!(
            error.as_deref(),
            Some(
                format!(
                    "secret PW (ssm:/db/pw): not in the [secrets] table of the local file {}",
                    local.display()
                )
                .as_str()
            )
        );
        assert!(
            waiting
                .reason
                .as_deref()
                .unwrap()
                .contains("component db is pending")
        );
        assert!(
            !fake.calls().contains(&"create db".to_string()),
            "{:?}",
            fake.calls()
        );
        std::fs::write(
            &local,
            format!("{head}[secrets]\n\"ssm:/db/pw\" = \"pw-value\"\n"),
        )
        .unwrap();
        tokio::time::timeout(deadline, report.wait_for(|r| r.state == AgentState::Ready))
            .await
            .expect("ready once the secret exists")
            .unwrap();
        let created = fake.state().created_env.clone();
        assert_eq!(
            created,
            [
                ("cache".to_string(), vec![]),
                ("db".to_string(), vec!["PW=pw-value".to_string()])
            ]
        );
        let shown = serde_json::to_string(&**status_rx.borrow()).unwrap();
        assert!(!shown.contains("pw-value"), "{shown}");
        cancel.cancel();
        assert_eq!(run.await.unwrap(), Exit::Cancelled);
    }
}
