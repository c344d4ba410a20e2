//! The container runtime: what the supervisor sees of the engine, in berth's
//! own types. Only [`docker`] talks to the engine (through bollard).

pub mod auth;
pub mod docker;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

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
    pub exit_code: Option<i64>,
    pub health: Health,
    /// When the current (or last) run started.
    pub started_at: Option<SystemTime>,
}

/// What happened to a container, from the engine's event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Start,
    Die { exit_code: Option<i64> },
    Health(Health),
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

/// A failed engine operation, naming the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker engine at {host}: {message}")]
    Connect { host: String, message: String },
    #[error("{op} {target}: not found")]
    NotFound { op: &'static str, target: String },
    #[error("{op} {target}: {message}")]
    Conflict {
        op: &'static str,
        target: String,
        message: String,
    },
    #[error("{op} {target}: {message}")]
    Api {
        op: &'static str,
        target: String,
        message: String,
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
