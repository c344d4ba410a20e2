//! `berth run`: the daemon. Wires the sources, the pin, the engine, the
//! supervisor and the status API together, and owns shutdown.
//!
//! Shutdown is structured: one root [`CancellationToken`] and one
//! [`TaskTracker`]. SIGTERM or SIGINT cancels it; every loop and every
//! backoff sleep selects on it; the agent then waits up to
//! [`SHUTDOWN_DEADLINE`] for its tasks. Containers are never stopped on
//! shutdown: restarting or upgrading berth causes no downtime.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::{DESIRED_STATE, ENGINE_RECONNECT, random_unit};
use crate::desired::{self, Desired, Identity};
use crate::local::LocalFile;
use crate::manifest::Manifest;
use crate::plan::Plan;
use crate::runtime::Engine;
use crate::runtime::auth::RegistryAuth;
use crate::status::{DriftEntry, Status};
use crate::supervisor::{self, Exit, Handle, Supervisor};

/// How long the agent waits for its own tasks after SIGTERM.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Everything `berth run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub manifest: Manifest,
    /// The local-mode file standing in for IMDS and the group's tags.
    pub local: PathBuf,
    pub data_dir: PathBuf,
    pub status_addr: std::net::SocketAddr,
}

/// How `berth run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by a signal; containers keep running.
    Stopped,
    /// Drift: containers were drained; the instance is to be retired.
    Retired,
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

/// Runs the agent until a signal (→ [`Outcome::Stopped`]) or drift (→ [`Outcome::Retired`]).
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
    let note = |m: String| {
        status_tx.send_modify(|s| Arc::make_mut(s).message = Some(m));
    };

    let auth = match RegistryAuth::default_path().map(|p| RegistryAuth::load(&p)) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "ignoring docker config; pulling without credentials");
            RegistryAuth::default()
        }
        None => RegistryAuth::default(),
    };

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

    let Some(plan) = pin(&opts, &cancel, &note).await? else {
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
    let (sup, handle) = Supervisor::new(engine, plan.clone(), settings, status_tx, cancel.clone());
    tracker.spawn(watch_local(opts.clone(), plan, handle, cancel.clone()));
    let exit = sup.run(&tracker).await;
    cancel.cancel();
    let outcome = match exit {
        Exit::Cancelled => Outcome::Stopped,
        Exit::Drained => Outcome::Retired,
    };
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
    cancel: &CancellationToken,
    note: &impl Fn(String),
) -> anyhow::Result<Option<Plan>> {
    let existing = Plan::load(&opts.data_dir)?;
    let mut attempt = 0;
    loop {
        match (resolve_local(&opts.local, &opts.manifest), &existing) {
            (Ok((identity, _)), Some(p)) if p.instance_id == identity.instance_id => {
                return Ok(existing);
            }
            (Err(e), Some(p)) => {
                tracing::warn!(error = %e, pin = %Plan::path(&opts.data_dir).display(), "desired state unreadable; running the existing pin");
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
            (Err(e), None) => {
                attempt += 1;
                let wait = DESIRED_STATE.delay(attempt, random_unit());
                tracing::error!(error = %e, retry_in = ?wait, "cannot resolve the desired state; nothing is pinned yet");
                note(format!("waiting for a valid desired state: {e}"));
                if !sleep_or_cancel(cancel, wait).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// Local mode's drift watch: re-reads the file; on drift, logs it and drains.
/// A bad file is logged (once per distinct error) and changes nothing.
async fn watch_local(opts: RunOptions, plan: Plan, handle: Handle, cancel: CancellationToken) {
    let pinned = plan.versions();
    let mut last: Option<Result<Vec<DriftEntry>, String>> = None;
    loop {
        let now = match resolve_local(&opts.local, &opts.manifest) {
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
                    handle.set_notes(Some("drift: draining for retirement".into()), d.clone());
                    handle.drain();
                    return;
                }
            }
            last = Some(now);
        }
        if !sleep_or_cancel(&cancel, opts.manifest.agent.local_poll_interval.0).await {
            return;
        }
    }
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
