//! The agent's status: the model the supervisor publishes, the loopback HTTP
//! API that serves it (`/healthz`, `/status`), and the client `berth status` uses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runtime::Health;

/// Timeout of `berth status`'s request to the agent.
pub const STATUS_CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Resolving, pinning, pulling, or starting containers.
    #[default]
    Starting,
    /// Every container is running, and healthy where it has a healthcheck.
    Ready,
    /// Running, but some component is not (yet, or any more) running and healthy.
    Degraded,
    /// Stopping containers before retirement.
    Draining,
    /// Drained; the agent is exiting.
    Retired,
}

/// The state of one component, as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not created yet (waiting for its image or its dependencies).
    #[default]
    Pending,
    /// Its image is being pulled.
    Pulling,
    /// Being created, started or restarted.
    Starting,
    Running,
    /// Dead or unhealthy, waiting out its restart backoff.
    Backoff,
    /// Exhausted its failure budget; still retried every `restart.max_delay`.
    Failed,
    /// Being stopped (drain).
    Stopping,
    Stopped,
}

/// One component's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub version: String,
    pub image: String,
    pub image_id: Option<String>,
    pub container_id: Option<String>,
    pub state: Phase,
    pub health: Health,
    /// Restarts berth made since the agent started.
    pub restarts: u64,
    /// Consecutive failures (reset by a stable run).
    pub failures: u32,
    pub last_exit_code: Option<i64>,
    /// RFC 3339 time before which the component is not restarted.
    pub backoff_until: Option<String>,
    pub last_error: Option<String>,
}

/// A component whose preferred version differs from its pinned one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftEntry {
    pub component: String,
    pub pinned: String,
    pub preferred: String,
}

/// Everything `/status` serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Status {
    pub version: String,
    pub instance_id: Option<String>,
    pub group: Option<String>,
    pub cluster: Option<String>,
    pub plan_id: Option<String>,
    pub state: AgentState,
    /// Why the agent waits or what went wrong, in one sentence, when anything does.
    pub message: Option<String>,
    pub engine_connected: bool,
    pub drift: Vec<DriftEntry>,
    pub components: Vec<ComponentStatus>,
}

/// Serves `/healthz` and `/status` on `addr` until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    status: watch::Receiver<Arc<Status>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "status API listening");
    let t = tracker.clone();
    tracker.spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "status API accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let status = status.clone();
            let cancel = cancel.clone();
            t.spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let s = status.borrow().clone();
                    async move { Ok::<_, Infallible>(route(&req, &s)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = conn => {}
                }
            });
        }
    });
    Ok(local)
}

fn route(req: &Request<Incoming>, status: &Status) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &str, body: Vec<u8>| {
        Response::builder()
            .status(code)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        (&Method::GET, "/status") => {
            let mut body = serde_json::to_vec_pretty(status).expect("status serializes");
            body.push(b'\n');
            reply(StatusCode::OK, "application/json", body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            b"not found: try /status or /healthz\n".to_vec(),
        ),
    }
}

/// Fetches `/status` from a running agent.
pub async fn fetch(addr: &str) -> anyhow::Result<Status> {
    use anyhow::Context;
    let work = async {
        let stream = TcpStream::connect(addr).await.with_context(|| {
            format!("cannot connect to the agent's status API at {addr} (is `berth run` running?)")
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::get("/status")
            .header("host", addr)
            .body(http_body_util::Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "status API answered {}",
            resp.status()
        );
        let body = resp.into_body().collect().await?.to_bytes();
        serde_json::from_slice::<Status>(&body)
            .context("status API answered with JSON berth does not understand")
    };
    tokio::time::timeout(STATUS_CLIENT_TIMEOUT, work)
        .await
        .with_context(|| format!("no answer from {addr} within {STATUS_CLIENT_TIMEOUT:?}"))?
}

/// Renders a status as the table `berth status` prints.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "instance {}  group {}  cluster {}  plan {}",
        dash(&s.instance_id),
        dash(&s.group),
        dash(&s.cluster),
        dash(&s.plan_id)
    );
    let _ = writeln!(
        out,
        "state    {:?}  engine {}",
        s.state,
        if s.engine_connected {
            "connected"
        } else {
            "DISCONNECTED"
        }
    );
    if let Some(m) = &s.message {
        let _ = writeln!(out, "message  {m}");
    }
    for d in &s.drift {
        let _ = writeln!(
            out,
            "drift    {}: pinned {}, preferred {}",
            d.component, d.pinned, d.preferred
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:<12} {:<9} {:<10} {:<13} {:>8} {:>5}  NOTE",
        "COMPONENT", "VERSION", "STATE", "HEALTH", "CONTAINER", "RESTARTS", "EXIT"
    );
    for c in &s.components {
        let note = match (&c.backoff_until, &c.last_error) {
            (Some(b), _) => format!("backoff until {b}"),
            (None, Some(e)) => e.clone(),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<12} {:<9} {:<10} {:<13} {:>8} {:>5}  {}",
            c.name,
            c.version,
            format!("{:?}", c.state).to_lowercase(),
            format!("{:?}", c.health).to_lowercase(),
            c.container_id
                .as_deref()
                .map_or("-", |i| &i[..i.len().min(12)]),
            c.restarts,
            c.last_exit_code.map_or("-".to_string(), |e| e.to_string()),
            note
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_every_component_and_the_reason() {
        let s = Status {
            instance_id: Some("i-1".into()),
            state: AgentState::Degraded,
            message: Some("waiting".into()),
            components: vec![ComponentStatus {
                name: "web".into(),
                version: "1.0".into(),
                image: "web:1.0".into(),
                image_id: None,
                container_id: Some("0123456789abcdef".into()),
                state: Phase::Backoff,
                health: Health::Unhealthy,
                restarts: 3,
                failures: 2,
                last_exit_code: Some(137),
                backoff_until: Some("2026-01-01T00:00:00Z".into()),
                last_error: None,
            }],
            ..Default::default()
        };
        let t = render(&s);
        assert!(t.contains("0123456789ab "), "{t}");
        assert!(t.contains("backoff until 2026-01-01T00:00:00Z"), "{t}");
        assert!(t.contains("unhealthy"), "{t}");
        assert!(t.contains("message  waiting"), "{t}");
    }
}
