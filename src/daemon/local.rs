//! Local mode's drift watch: re-reads the local file every
//! `agent.local_poll_interval`. Drift (by [`crate::desired::drift`], the
//! same rule as on EC2) is logged and drains, ending the agent with exit
//! code 3. A bad file, or one that names another instance, is reported
//! (once per distinct problem) and changes nothing: containers keep running,
//! nothing is retired.

use tokio_util::sync::CancellationToken;

use super::boot::{RunOptions, Source};
use super::sleep_or_cancel;
use crate::desired::{self, DriftEntry};
use crate::plan::Plan;
use crate::supervisor::{DrainReason, Handle};

/// What one read of the local file says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Look {
    Drift(Vec<DriftEntry>),
    /// The file now names another instance than the pin's.
    OtherInstance(String),
    Unreadable(String),
}

/// Runs until drift (then asks for a drain) or cancel.
pub async fn watch(
    opts: RunOptions,
    source: Source,
    plan: Plan,
    handle: Handle,
    cancel: CancellationToken,
) {
    let pinned = plan.versions();
    let mut last: Option<Look> = None;
    loop {
        let look = match source.desired(&opts.manifest).await {
            Ok((id, _)) if id.instance_id != plan.instance_id => {
                Look::OtherInstance(id.instance_id)
            }
            Ok((_, d)) => Look::Drift(desired::drift(&plan.cluster, &pinned, &d)),
            Err(e) => Look::Unreadable(format!("{e:#}")),
        };
        if last.as_ref() != Some(&look) {
            match &look {
                Look::Unreadable(e) => {
                    tracing::error!(error = %e, "cannot read the desired state; containers keep running, nothing is retired");
                    handle.set_notes(Some(format!("desired state unreadable: {e}")), Vec::new());
                }
                Look::OtherInstance(id) => {
                    tracing::error!(pinned_for = %plan.instance_id, file_says = %id, "the local file names another instance than the pin's; ignoring it (restart the agent to run as the new instance)");
                    handle.set_notes(
                        Some(format!(
                            "the local file names instance {id}, but this agent runs the pin of {}: ignored until the agent restarts",
                            plan.instance_id
                        )),
                        Vec::new(),
                    );
                }
                Look::Drift(d) if d.is_empty() => handle.set_notes(None, Vec::new()),
                Look::Drift(d) => {
                    for e in d {
                        tracing::warn!(component = %e.component, pinned = %e.pinned, preferred = %e.preferred, "drift detected");
                    }
                    handle.set_notes(Some("drift: draining for retirement".into()), d.clone());
                    handle.drain(DrainReason::Drift);
                    return;
                }
            }
            last = Some(look);
        }
        if !sleep_or_cancel(&cancel, opts.manifest.agent.local_poll_interval.0).await {
            return;
        }
    }
}
