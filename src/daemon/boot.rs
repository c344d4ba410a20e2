//! The boot sequence: identify the instance (IMDS or the local file),
//! connect the engine, read or write the pin, and find a retirement left
//! under way by a previous run. Every step that can pass by itself (IMDS,
//! AWS, the engine, a full or read-only data dir) is retried in-process
//! with backoff while the status API says what it waits for; only what a
//! person must fix ends the process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::sleep_or_cancel;
use crate::aws::asg::Group;
use crate::aws::ecr::Ecr;
use crate::aws::imds::{Imds, InstanceMetadata};
use crate::aws::secrets::AwsSecrets;
use crate::backoff::{AWS_CALL, DESIRED_STATE, ENGINE_RECONNECT, random_unit};
use crate::desired::{self, Desired, Identity};
use crate::error::Error;
use crate::local::{LocalFile, LocalSecrets};
use crate::manifest::Manifest;
use crate::plan::Plan;
use crate::runtime::Engine;
use crate::runtime::auth::RegistryAuth;
use crate::secrets::{ResolveSecrets, Resolver};
use crate::status::Status;
use crate::store::{Retiring, Store};

/// Attempts to find this instance's group before giving up with
/// [`Error::NotInGroup`] (1 s, 2 s, 4 s, 8 s apart: a new member can take a
/// moment to show up in `DescribeAutoScalingInstances`).
pub const GROUP_LOOKUP_ATTEMPTS: u32 = 5;

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

/// The EC2 side: IMDS, the group's APIs, and who this instance is.
#[derive(Clone)]
pub struct Ec2 {
    pub imds: Imds,
    pub group: Group,
    pub meta: InstanceMetadata,
    pub group_name: String,
    pub config: aws_config::SdkConfig,
    /// This instance's lifecycle state in the group's last read at boot
    /// (`None`: not read yet, or not a member), so the launch hook check
    /// costs no second `DescribeAutoScalingGroups`.
    pub boot_lifecycle: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

/// Who this instance is, in its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub instance_id: String,
    pub group: String,
}

impl Ec2 {
    /// The identity the desired state is resolved for.
    pub fn identity(&self) -> Identity {
        Identity {
            instance_id: self.meta.instance_id.clone(),
            group: self.group_name.clone(),
        }
    }

    /// This instance's ids.
    pub fn ids(&self) -> Ids {
        Ids {
            instance_id: self.meta.instance_id.clone(),
            group: self.group_name.clone(),
        }
    }
}

/// A connected source.
#[derive(Clone)]
pub enum Source {
    Local(PathBuf),
    Ec2(Box<Ec2>),
}

impl Source {
    /// The identity and the desired state, read now.
    pub async fn desired(&self, manifest: &Manifest) -> anyhow::Result<(Identity, Desired)> {
        match self {
            Source::Local(path) => resolve_local(path, manifest),
            Source::Ec2(e) => {
                let snapshot = e.group.describe(&e.group_name).await?;
                *e.boot_lifecycle.lock().unwrap_or_else(|p| p.into_inner()) = snapshot
                    .member(&e.meta.instance_id)
                    .map(|m| m.lifecycle_state.clone());
                let identity = e.identity();
                let desired = desired::resolve(&identity, &snapshot.tags, manifest)?;
                Ok((identity, desired))
            }
        }
    }
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

/// What boot produced.
pub struct Booted {
    pub source: Source,
    pub engine: Engine,
    pub plan: Plan,
    /// A retirement a previous run left under way.
    pub resuming: Option<Retiring>,
    pub store: Store,
    /// Resolves secrets for every supervisor of this boot (one cache).
    pub secrets: Arc<dyn ResolveSecrets>,
}

/// Sets the status's reason while booting.
fn note(status: &watch::Sender<Arc<Status>>, m: String) {
    status.send_modify(|s| Arc::make_mut(s).reason = Some(m));
}

/// Boots; `Ok(None)` if cancelled first.
pub async fn boot(
    opts: &RunOptions,
    status: &watch::Sender<Arc<Status>>,
    cancel: &CancellationToken,
) -> Result<Option<Booted>, Error> {
    let note = |m: String| note(status, m);
    let Some(source) = connect(&opts.source, cancel, &note).await? else {
        return Ok(None);
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
    let ns = &opts.manifest.agent.namespace;
    let mut attempt = 0;
    let engine = loop {
        match Engine::connect(ns, auth.clone()).await {
            Ok(e) => break e,
            Err(e) => {
                attempt += 1;
                if attempt == 1 {
                    tracing::error!(error = %e, "cannot reach the container engine; retrying");
                }
                note(format!("waiting for the container engine: {e}"));
                if !sleep_or_cancel(cancel, ENGINE_RECONNECT.delay(attempt, random_unit())).await {
                    return Ok(None);
                }
            }
        }
    };
    let Some(store) = open_store(opts, cancel, &note).await? else {
        return Ok(None);
    };
    let Some(plan) = pin(opts, &source, &store, cancel, &note).await? else {
        return Ok(None);
    };
    tracing::info!(
        instance = %plan.instance_id,
        group = %plan.group,
        cluster = %plan.cluster,
        plan = %plan.id,
        versions = %plan.versions_tag(),
        "running the pinned plan"
    );
    let resuming = match &source {
        Source::Ec2(e) => store
            .load_retiring(&e.meta.instance_id)
            .map_err(|err| Error::Config(err.into()))?,
        Source::Local(_) => None,
    };
    let secrets: Arc<dyn ResolveSecrets> = match &source {
        Source::Local(path) => Arc::new(Resolver::new(LocalSecrets::new(path.clone()))),
        Source::Ec2(e) => Arc::new(Resolver::new(AwsSecrets::new(&e.config))),
    };
    Ok(Some(Booted {
        source,
        engine,
        plan,
        resuming,
        store,
        secrets,
    }))
}

/// Opens the data dir, retrying while it cannot be created or fixed (a
/// full or read-only disk may pass).
async fn open_store(
    opts: &RunOptions,
    cancel: &CancellationToken,
    note: &impl Fn(String),
) -> Result<Option<Store>, Error> {
    let mut attempt = 0;
    loop {
        match Store::open(&opts.data_dir) {
            Ok(s) => return Ok(Some(s)),
            Err(e) if e.needs_person() => return Err(Error::Config(e.into())),
            Err(e) => {
                attempt += 1;
                let wait = DESIRED_STATE.delay(attempt, random_unit());
                tracing::error!(error = %e, retry_in = ?wait, "cannot use the data dir; retrying");
                note(format!("cannot use the data dir: {e}"));
                if !sleep_or_cancel(cancel, wait).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// Connects the source. For EC2: reads IMDS and finds the group, retrying
/// while IMDS or AWS cannot be reached. `Ok(None)` if cancelled.
pub async fn connect(
    spec: &SourceSpec,
    cancel: &CancellationToken,
    note: &impl Fn(String),
) -> Result<Option<Source>, Error> {
    match spec {
        SourceSpec::Local(p) => Ok(Some(Source::Local(p.clone()))),
        SourceSpec::Ec2 => Ok(connect_ec2(cancel, note)
            .await?
            .map(|e| Source::Ec2(Box::new(e)))),
    }
}

async fn connect_ec2(
    cancel: &CancellationToken,
    note: &impl Fn(String),
) -> Result<Option<Ec2>, Error> {
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
                if cancel.is_cancelled() || !sleep_or_cancel(cancel, wait).await {
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
                            return Err(Error::NotInGroup {
                                instance_id: meta.instance_id.clone(),
                                tag: crate::tags::GROUP_NAME_TAG,
                            });
                        }
                    }
                    Err(e) if !e.is_retryable() => {
                        return Err(Error::Config(anyhow!(
                            "{e}: the instance profile needs autoscaling:DescribeAutoScalingInstances (see the IAM policy in the docs), or enable instance-metadata tags"
                        )));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot find this instance's group; retrying");
                        note(format!("waiting for AWS: {e}"));
                    }
                }
                attempt += 1;
                if cancel.is_cancelled()
                    || !sleep_or_cancel(cancel, AWS_CALL.delay(attempt, random_unit())).await
                {
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
        boot_lifecycle: Default::default(),
    }))
}

/// The pin: the existing one for this instance, or a new one resolved from
/// the desired state (retried with [`DESIRED_STATE`] backoff until it is
/// valid and written). `None` if cancelled first. A corrupt pin is a
/// configuration error; a pin that cannot be read or written is retried.
async fn pin(
    opts: &RunOptions,
    source: &Source,
    store: &Store,
    cancel: &CancellationToken,
    note: &impl Fn(String),
) -> Result<Option<Plan>, Error> {
    let mut attempt = 0;
    let mut wait = || {
        attempt += 1;
        DESIRED_STATE.delay(attempt, random_unit())
    };
    let existing = loop {
        match store.load_pin() {
            Ok(p) => break p,
            Err(e) if e.needs_person() => return Err(Error::Config(e.into())),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the pin; retrying");
                note(format!("cannot read the pin: {e}"));
                if !sleep_or_cancel(cancel, wait()).await {
                    return Ok(None);
                }
            }
        }
    };
    // On EC2 the identity is known without reading the group.
    if let (Source::Ec2(e), Some(p)) = (source, &existing)
        && p.instance_id == e.meta.instance_id
    {
        return Ok(existing);
    }
    let plan = loop {
        match (source.desired(&opts.manifest).await, &existing) {
            (Ok((identity, _)), Some(p)) if p.instance_id == identity.instance_id => {
                return Ok(existing);
            }
            (Err(e), Some(p)) if matches!(source, Source::Local(_)) => {
                tracing::warn!(error = %format!("{e:#}"), "desired state unreadable; running the existing pin");
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
                break Plan::build(&identity, &desired, &opts.manifest, now);
            }
            (Err(e), _) => {
                let w = wait();
                // Bad tags or a permission need a person; an outage passes.
                let person = e.is::<desired::TagErrors>()
                    || e.downcast_ref::<crate::aws::AwsError>()
                        .is_some_and(|a| !a.is_retryable());
                if person {
                    tracing::error!(error = %format!("{e:#}"), retry_in = ?w, "cannot resolve the desired state; nothing is pinned yet");
                } else {
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?w, "cannot resolve the desired state yet; nothing is pinned yet");
                }
                note(format!("waiting for a valid desired state: {e:#}"));
                if !sleep_or_cancel(cancel, w).await {
                    return Ok(None);
                }
            }
        }
    };
    loop {
        match store.save_pin(&plan) {
            Ok(()) => break,
            Err(e) => {
                let w = wait();
                tracing::error!(error = %e, retry_in = ?w, "cannot write the pin; nothing starts until it is written");
                note(format!("cannot write the pin: {e}"));
                if !sleep_or_cancel(cancel, w).await {
                    return Ok(None);
                }
            }
        }
    }
    tracing::info!(versions = %plan.versions_tag(), "pinned");
    Ok(Some(plan))
}
