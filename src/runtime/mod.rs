//! The container runtime: what the supervisor sees of the engine, in berth's
//! own types. Only [`docker`] talks to the engine (through bollard).
//!
//! [`ContainerRuntime`] is the seam: the supervisor and the rollout driver
//! are generic over it, the real [`Engine`] implements it, and unit tests use
//! in-process fakes.

pub mod auth;
pub mod credhelper;
pub mod docker;
#[cfg(test)]
pub mod fake;

use std::future::Future;
use std::time::{Duration, SystemTime};

use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::manifest::RegistryAuthMode;
use crate::plan::{Plan, PlannedComponent};
use crate::secrets::SecretEnv;

pub use docker::Engine;

/// Label every container berth creates carries (`"true"`). Containers without
/// it are never touched.
pub const LABEL_MANAGED: &str = "berth.managed";
/// The agent's namespace (`agent.namespace`); an agent only sees its own.
pub const LABEL_NAMESPACE: &str = "berth.namespace";
/// The component the container runs.
pub const LABEL_COMPONENT: &str = "berth.component";
/// The pinned version.
pub const LABEL_VERSION: &str = "berth.version";
/// The plan id.
pub const LABEL_PLAN: &str = "berth.plan";
/// Hash of the container's spec and image: a mismatch means replace.
pub const LABEL_SPEC: &str = "berth.spec";
/// The instance the container was created for.
pub const LABEL_INSTANCE: &str = "berth.instance";

/// A container's health as Docker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No healthcheck.
    #[default]
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// One managed container, as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub id: String,
    pub name: String,
    pub component: Option<String>,
    pub spec_hash: Option<String>,
    pub image_id: String,
    pub running: bool,
    /// `docker pause`d: running but frozen, so not serving.
    pub paused: bool,
    pub exit_code: Option<i64>,
    pub health: Health,
    /// When the current (or last) run started.
    pub started_at: Option<SystemTime>,
    /// When the last run ended (stopped containers).
    pub finished_at: Option<SystemTime>,
    /// The instance the container was created for (label `berth.instance`).
    pub instance: Option<String>,
}

/// What happened to a container, from the engine's event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Start,
    Die { exit_code: Option<i64> },
    Health(Health),
    Pause,
    Unpause,
    Destroy,
}

/// One engine event about a managed container.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineEvent {
    pub container_id: String,
    pub component: Option<String>,
    pub kind: EventKind,
    pub time: SystemTime,
}

/// An error from the engine's client, kept as the source of an [`EngineError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The engine operations berth makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineOp {
    List,
    Inspect,
    InspectImage,
    Create,
    Start,
    Restart,
    Stop,
    Remove,
}

impl std::fmt::Display for EngineOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineOp::List => "list containers",
            EngineOp::Inspect => "inspect container",
            EngineOp::InspectImage => "inspect image",
            EngineOp::Create => "create container",
            EngineOp::Start => "start container",
            EngineOp::Restart => "restart container",
            EngineOp::Stop => "stop container",
            EngineOp::Remove => "remove container",
        })
    }
}

/// A failed engine operation, naming the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine could not be reached; `source` is the client's error.
    #[error("cannot reach the Docker engine at {host}: {what}{source}")]
    Connect {
        host: String,
        /// What was being done, as a prefix (`"start container c1: "`), or empty.
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("{op} {target}: not found")]
    NotFound { op: EngineOp, target: String },
    #[error("{op} {target}: {message}")]
    Conflict {
        op: EngineOp,
        target: String,
        message: String,
    },
    /// The engine refused or failed the call; `source` is the client's error.
    #[error("{op} {target}: {source}")]
    Api {
        op: EngineOp,
        target: String,
        #[source]
        source: BoxError,
    },
    #[error("pull {image}: {message} (after {attempts} attempt(s))")]
    Pull {
        image: String,
        attempts: u32,
        message: String,
    },
    #[error("cancelled")]
    Cancelled,
}

impl EngineError {
    /// The engine could not be reached (socket gone, connection refused or
    /// reset, timeout): never the container's fault, so never counted
    /// against its failure budget.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, EngineError::Connect { .. })
    }

    /// The container is gone or being removed (404, or 409 "marked for
    /// removal" / "removal in progress"): recreate it, not a failure.
    pub fn is_gone(&self) -> bool {
        match self {
            EngineError::NotFound { .. } => true,
            EngineError::Conflict { message, .. } => {
                message.contains("marked for removal") || message.contains("removal of container")
            }
            _ => false,
        }
    }
}

/// The engine as the supervisor and the rollout driver use it. One
/// implementation talks to Docker ([`Engine`]); tests use fakes.
pub trait ContainerRuntime: Clone + Send + Sync + 'static {
    /// Checks the engine answers.
    fn ping(&self) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Events about this namespace's managed containers, from `since`.
    fn events(&self, since: SystemTime) -> BoxStream<'static, Result<EngineEvent, EngineError>>;
    /// Every managed container of this namespace, inspected.
    fn list_managed(&self) -> impl Future<Output = Result<Vec<Observed>, EngineError>> + Send;
    /// One container.
    fn inspect(&self, id: &str) -> impl Future<Output = Result<Observed, EngineError>> + Send;
    /// Makes the component's image present; returns its id and repo digest.
    fn ensure_image(
        &self,
        c: &PlannedComponent,
        attempts: u32,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(String, Option<String>), EngineError>> + Send;
    /// Creates the component's container (not started) with its resolved
    /// secrets added to its environment; returns its id. The labels come
    /// from `c` alone: no value reaches them.
    fn create(
        &self,
        plan: &Plan,
        c: &PlannedComponent,
        secrets: &SecretEnv,
    ) -> impl Future<Output = Result<String, EngineError>> + Send;
    fn start(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    fn restart(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    fn stop(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Whether `image` exists in its registry: `Ok(false)` the registry
    /// says no, `Err` could not tell.
    fn image_in_registry(
        &self,
        image: &str,
        mode: RegistryAuthMode,
    ) -> impl Future<Output = Result<bool, String>> + Send;
}
