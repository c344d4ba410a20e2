//! Runs the reducer's effects against the engine, and follows the engine's
//! event stream. Every action runs in its own task and reports back to the
//! supervisor's loop as an [`Input`]; nothing here decides anything.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::state::{Action, Counters, Done, Effect, Input};
use super::{Msg, Supervisor};
use crate::backoff::{ENGINE_RECONNECT, random_unit};
use crate::plan::{Plan, PlannedComponent};
use crate::runtime::{ContainerRuntime, EngineError};
use crate::secrets::SecretEnv;

/// File in the data dir that keeps restart and failure counts across agent restarts.
pub const COUNTERS_FILE: &str = "restarts.json";

/// The counters kept for this plan.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Kept {
    plan: String,
    components: BTreeMap<String, Counters>,
}

/// The counters a previous run of the agent recorded for `plan` (none for
/// another plan, or when unreadable: they are informational, never a reason
/// to stop).
pub fn load_counters(data_dir: &Path, plan: &Plan) -> BTreeMap<String, Counters> {
    std::fs::read(data_dir.join(COUNTERS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Kept>(&b).ok())
        .filter(|k| k.plan == plan.id)
        .map(|k| k.components)
        .unwrap_or_default()
}

fn save_counters(data_dir: &Path, plan: &Plan, components: BTreeMap<String, Counters>) {
    let body = serde_json::to_vec(&Kept {
        plan: plan.id.clone(),
        components,
    })
    .expect("counters serialize");
    if let Err(e) = crate::store::atomic_write(data_dir, COUNTERS_FILE, &body) {
        tracing::warn!(error = %e, "cannot record restart counts in the data dir");
    }
}

impl<R: ContainerRuntime> Supervisor<R> {
    /// Runs the effects: actions and resyncs in tasks, writes in place.
    pub(super) fn execute(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Act { idx, action } => self.spawn_action(idx, action),
                Effect::Resync => {
                    let engine = self.engine.clone();
                    let tx = self.tx.clone();
                    self.actions.spawn(async move {
                        let r = engine.list_managed().await.map_err(|e| e.to_string());
                        let _ = tx.send(Msg::Input(Input::Observed(r)));
                    });
                }
                Effect::Remove(id) => {
                    let engine = self.engine.clone();
                    self.actions.spawn(async move {
                        if let Err(e) = engine.remove(&id).await {
                            tracing::warn!(container = %id, error = %e, "cannot remove container");
                        }
                    });
                }
                Effect::SavePin => {
                    if let Err(e) = self.state.plan.save(&self.settings.data_dir) {
                        tracing::error!(error = %e, "cannot record the image in the pin");
                    }
                }
                Effect::SaveCounters => save_counters(
                    &self.settings.data_dir,
                    &self.state.plan,
                    self.state.counters(),
                ),
            }
        }
    }

    fn spawn_action(&mut self, idx: usize, action: Action) {
        let kind = action.kind();
        let spec = self.state.comps[idx].spec.clone();
        let engine = self.engine.clone();
        let tx = self.tx.clone();
        let plan = self.state.plan.clone();
        let attempts = self.settings.pull_attempts;
        let cancel = self.cancel.clone();
        let grace = spec.spec.stop_grace_period.0;
        let secrets = self.secrets.clone();
        tracing::debug!(component = %spec.name, ?action, "acting");
        self.actions.spawn(async move {
            let result = match action {
                Action::Pull => engine
                    .ensure_image(&spec, attempts, &cancel)
                    .await
                    .map(|(image_id, digest)| Done::Image { image_id, digest }),
                Action::Create { replace } => {
                    // Before anything is removed: a component whose secrets
                    // do not resolve keeps what it has.
                    let env = match secrets.resolve(&spec.spec.secrets, &cancel).await {
                        Ok(env) => env,
                        Err(error) => {
                            let _ = tx.send(Msg::Input(Input::Unresolved { idx, error }));
                            return;
                        }
                    };
                    create(&engine, &plan, spec, &env, replace, attempts, &cancel).await
                }
                Action::Start { id } => match engine.start(&id).await {
                    Ok(()) => inspected(&engine, &id).await,
                    Err(e) => Err(e),
                },
                Action::Restart { id } => match engine.restart(&id, grace).await {
                    Ok(()) => inspected(&engine, &id).await,
                    Err(e) => Err(e),
                },
            };
            let _ = tx.send(Msg::Input(Input::Done { idx, kind, result }));
        });
    }
}

async fn inspected<R: ContainerRuntime>(engine: &R, id: &str) -> Result<Done, EngineError> {
    engine.inspect(id).await.map(|observed| Done::Container {
        observed,
        image: None,
    })
}

/// Creates and starts a component's container with its resolved secrets,
/// replacing `replace` first.
async fn create<R: ContainerRuntime>(
    engine: &R,
    plan: &Plan,
    mut spec: PlannedComponent,
    secrets: &SecretEnv,
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
    let id = match engine.create(plan, &spec, secrets).await {
        Err(EngineError::NotFound { .. }) => {
            // The image went away (pruned): fetch it again, once.
            engine.ensure_image(&spec, attempts, cancel).await?;
            engine.create(plan, &spec, secrets).await?
        }
        r => r?,
    };
    engine.start(&id).await?;
    let observed = engine.inspect(&id).await?;
    Ok(Done::Container { observed, image })
}

/// Follows the engine's event stream, reconnecting with [`ENGINE_RECONNECT`]
/// backoff; reports the engine up (which triggers a resync) and down.
pub(super) async fn watch_engine<R: ContainerRuntime>(
    engine: R,
    tx: mpsc::UnboundedSender<Msg>,
    cancel: CancellationToken,
    start: SystemTime,
) {
    let send = |i: Input| tx.send(Msg::Input(i)).is_ok();
    let mut since = start;
    let mut attempt = 0u32;
    loop {
        if let Err(e) = engine.ping().await {
            if !send(Input::EngineDown(e.to_string())) {
                return;
            }
            attempt += 1;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(ENGINE_RECONNECT.delay(attempt, random_unit())) => continue,
            }
        }
        attempt = 0;
        let mut stream = engine.events(since);
        if !send(Input::EngineUp) {
            return;
        }
        let why = loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => return,
                i = stream.next() => i,
            };
            match item {
                Some(Ok(ev)) => {
                    since = ev.time + Duration::from_nanos(1);
                    if !send(Input::Event(ev)) {
                        return;
                    }
                }
                Some(Err(e)) => break e.to_string(),
                None => break "event stream ended".to_string(),
            }
        };
        if !send(Input::EngineDown(why)) {
            return;
        }
    }
}
