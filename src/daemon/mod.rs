//! `berth run`: wires the status API, the boot sequence ([`boot`]), the
//! supervisor, and the drift watch ([`local`] or, on EC2, the tasks of
//! [`ec2`] and the rollout driver [`rollout`]), and owns shutdown.
//!
//! Shutdown is structured: one root [`CancellationToken`] and one
//! [`TaskTracker`]. SIGTERM or SIGINT cancels it; every loop and every
//! backoff sleep selects on it; the agent then waits up to
//! [`SHUTDOWN_DEADLINE`] for its tasks. Containers are never stopped on
//! shutdown: restarting or upgrading berth causes no downtime.
//!
//! A retirement that cannot complete (a permanent AWS error, or
//! [`ec2::RETIRE_DEADLINE`] passed) is aborted: the daemon starts a new
//! round (a new supervisor adopts and starts the containers again; new
//! EC2 tasks tag the instance ready once it is), and the rollout driver may
//! retire it again only when the gate says so again, after a backoff.

pub mod boot;
pub mod ec2;
pub mod local;
pub mod rollout;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Error;
use crate::status::Status;
use crate::supervisor::{self, DrainReason, Exit, Supervisor};
pub use boot::{RunOptions, Source, SourceSpec};

/// How long the agent waits for its own tasks after SIGTERM.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// How `berth run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by a signal; containers keep running.
    Stopped,
    /// Containers were drained, for this reason.
    Drained(DrainReason),
}

/// Runs the agent until a signal or a drain.
pub async fn run(opts: RunOptions) -> Result<Outcome, Error> {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(on_signal(cancel.clone()));
    let (status_tx, status_rx) = watch::channel(Arc::new(Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        reason: Some("starting".into()),
        ..Default::default()
    }));
    crate::status::serve(opts.status_addr, status_rx, cancel.clone(), tracker.clone())
        .await
        .map_err(|e| Error::StatusAddr {
            addr: opts.status_addr,
            source: e,
        })?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let heartbeat = supervisor::Heartbeat::default();
    tracker.spawn(supervisor::heartbeat::watchdog(
        sd_notify::watchdog_enabled(),
        heartbeat.clone(),
        cancel.clone(),
    ));
    let Some(booted) = boot::boot(&opts, &status_tx, &cancel).await? else {
        return Ok(finish(tracker, Outcome::Stopped).await);
    };
    let mut aborted: Option<ec2::Aborted> = None;
    let mut first_round = true;
    let outcome = loop {
        let round = cancel.child_token();
        let settings = supervisor::Settings {
            data_dir: opts.data_dir.clone(),
            resync_interval: opts.manifest.agent.resync_interval.0,
            pull_attempts: opts.manifest.agent.pull_attempts,
            namespace: opts.manifest.agent.namespace.clone(),
        };
        let (sup, handle, report) = Supervisor::new(
            booted.engine.clone(),
            booted.plan.clone(),
            settings,
            status_tx.clone(),
            round.clone(),
        );
        let sup = sup
            .with_heartbeat(heartbeat.clone())
            .with_secrets(booted.secrets.clone());
        match &booted.source {
            Source::Local(_) => {
                tracker.spawn(local::watch(
                    opts.clone(),
                    booted.source.clone(),
                    booted.plan.clone(),
                    handle,
                    round.clone(),
                ));
            }
            Source::Ec2(e) => ec2::spawn(
                &tracker,
                e,
                &opts,
                &booted,
                handle,
                report,
                aborted.clone(),
                first_round,
                &round,
            ),
        }
        first_round = false;
        let exit = sup.run(&tracker).await;
        round.cancel();
        let reason = match exit {
            Exit::Cancelled => break Outcome::Stopped,
            Exit::Drained(reason) => reason,
        };
        let Source::Ec2(e) = &booted.source else {
            break Outcome::Drained(reason);
        };
        let ids = e.ids();
        let done = ec2::after_drain(
            &e.group,
            &ids,
            reason,
            &booted.store,
            aborted.as_ref(),
            &cancel,
        );
        match done.await {
            Ok(()) => break Outcome::Drained(reason),
            Err(a) => {
                tracing::error!(error = %a.error, "retirement aborted: starting the containers again; this instance retires only when the gate says so again");
                aborted = Some(a);
            }
        }
    };
    cancel.cancel();
    Ok(finish(tracker, outcome).await)
}

async fn finish(tracker: TaskTracker, outcome: Outcome) -> Outcome {
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(deadline = ?SHUTDOWN_DEADLINE, "some tasks did not stop in time; exiting anyway");
    }
    outcome
}

/// Returns false if cancelled during the sleep.
pub(crate) async fn sleep_or_cancel(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
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
