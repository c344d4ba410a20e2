//! An in-process fake engine ([`ContainerRuntime`]) for unit tests:
//! containers in memory, events on a channel, every call recorded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ContainerRuntime, EngineError, EngineEvent, EngineOp, Health, Observed};
use crate::plan::{Plan, PlannedComponent};
use crate::secrets::SecretEnv;

#[derive(Default)]
pub struct Engine {
    pub containers: Vec<Observed>,
    pub calls: Vec<String>,
    pub events: Option<mpsc::UnboundedSender<Result<EngineEvent, EngineError>>>,
    /// Images `image_in_registry` says are missing.
    pub missing_images: Vec<String>,
    /// Each create's component and the secrets it was given (`NAME=value`).
    pub created_env: Vec<(String, Vec<String>)>,
}

/// A fake engine: containers in memory, events on a channel.
#[derive(Clone, Default)]
pub struct Fake(Arc<Mutex<Engine>>);

impl Fake {
    /// The fake's state, to set up or inspect.
    pub fn state(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.0.lock().unwrap()
    }

    pub fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().calls.clone()
    }
    pub fn set_running(&self, id: &str, running: bool) -> Observed {
        let mut e = self.0.lock().unwrap();
        let c = e.containers.iter_mut().find(|c| c.id == id).unwrap();
        c.running = running;
        if running {
            c.started_at = Some(SystemTime::now());
        }
        c.clone()
    }
}

impl ContainerRuntime for Fake {
    async fn ping(&self) -> Result<(), EngineError> {
        Ok(())
    }
    fn events(&self, _since: SystemTime) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.0.lock().unwrap().events = Some(tx);
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|e| (e, rx))
        }))
    }
    async fn list_managed(&self) -> Result<Vec<Observed>, EngineError> {
        Ok(self.0.lock().unwrap().containers.clone())
    }
    async fn inspect(&self, id: &str) -> Result<Observed, EngineError> {
        let e = self.0.lock().unwrap();
        e.containers
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .ok_or(EngineError::NotFound {
                op: EngineOp::Inspect,
                target: id.into(),
            })
    }
    async fn ensure_image(
        &self,
        _c: &PlannedComponent,
        _attempts: u32,
        _cancel: &CancellationToken,
    ) -> Result<(String, Option<String>), EngineError> {
        Ok(("sha256:img".into(), None))
    }
    async fn create(
        &self,
        plan: &Plan,
        c: &PlannedComponent,
        secrets: &SecretEnv,
    ) -> Result<String, EngineError> {
        let mut e = self.0.lock().unwrap();
        e.calls.push(format!("create {}", c.name));
        e.created_env.push((
            c.name.clone(),
            secrets.expose().map(|(k, v)| format!("{k}={v}")).collect(),
        ));
        let id = format!("c-{}", c.name);
        e.containers.push(Observed {
            id: id.clone(),
            name: format!("t-{}", c.name),
            component: Some(c.name.clone()),
            spec_hash: Some(c.spec_hash()),
            image_id: c.image_id.clone().unwrap_or_default(),
            running: false,
            paused: false,
            exit_code: None,
            health: Health::None,
            started_at: None,
            finished_at: None,
            instance: Some(plan.instance_id.clone()),
        });
        Ok(id)
    }
    async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.0.lock().unwrap().calls.push(format!("start {id}"));
        self.set_running(id, true);
        Ok(())
    }
    async fn restart(&self, id: &str, _grace: Duration) -> Result<(), EngineError> {
        self.start(id).await
    }
    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), EngineError> {
        self.0.lock().unwrap().calls.push(format!("stop {id}"));
        self.set_running(id, false);
        Ok(())
    }
    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        self.0.lock().unwrap().calls.push(format!("remove {id}"));
        Ok(())
    }
    async fn image_in_registry(
        &self,
        image: &str,
        _mode: crate::manifest::RegistryAuthMode,
    ) -> Result<bool, String> {
        Ok(!self.state().missing_images.iter().any(|m| m == image))
    }
}
