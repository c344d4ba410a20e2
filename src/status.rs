//! The agent's status: the model the supervisor publishes, the loopback HTTP
//! API that serves it (`/healthz`, `/status`), and the client `berth status` uses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
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
    /// `docker pause`d: running but frozen, not serving. berth leaves it
    /// paused (someone did that on purpose) and reports it.
    Paused,
    /// Being stopped (drain).
    Stopping,
    Stopped,
}

impl Phase {
    /// The lowercase name used in status and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Pulling => "pulling",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Backoff => "backoff",
            Phase::Failed => "failed",
            Phase::Paused => "paused",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        }
    }
}

impl AgentState {
    /// The lowercase name used in status, logs and the `berth:state` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Starting => "starting",
            AgentState::Ready => "ready",
            AgentState::Degraded => "degraded",
            AgentState::Draining => "draining",
            AgentState::Retired => "retired",
        }
    }
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
    /// Restarts berth made for this component; kept across agent restarts.
    pub restarts: u64,
    /// Consecutive failures (reset by a stable run).
    pub failures: u32,
    /// RFC 3339 time the failure budget was exhausted, while no stable run
    /// has happened since.
    #[serde(default)]
    pub failed_since: Option<String>,
    pub last_exit_code: Option<i64>,
    /// RFC 3339 time before which the component is not restarted.
    pub backoff_until: Option<String>,
    pub last_error: Option<String>,
}

pub use crate::desired::DriftEntry;

/// Everything `/status` serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Status {
    pub version: String,
    pub instance_id: Option<String>,
    pub group: Option<String>,
    pub cluster: Option<String>,
    pub plan_id: Option<String>,
    pub state: AgentState,
    /// Why the agent is not ready, in one sentence, when it is not.
    #[serde(default)]
    pub reason: Option<String>,
    /// The daemon's note: drift, the rollout gate's verdict, a retirement.
    pub message: Option<String>,
    pub engine_connected: bool,
    pub drift: Vec<DriftEntry>,
    pub components: Vec<ComponentStatus>,
}

/// Most connections the status API holds at once.
///
/// Its clients are `berth status`, a health probe and perhaps a scraper: a
/// handful at a time. 64 leaves them ample room while keeping the API's share
/// of the agent's descriptors small: under the default soft limit of 1024
/// open files, more than 900 stay for the engine, AWS endpoints and logs,
/// whatever a local user does to the API. A connection beyond the limit is
/// accepted and closed at once (see [`serve`]).
pub const MAX_CONNECTIONS: usize = 64;

/// How long a connection may take to send the head (request line and
/// headers) of its next request: counted from accept, and again from the end
/// of each response. hyper 1 restarts its header-read timer whenever a
/// kept-alive connection goes idle, so this is also the keep-alive idle
/// timeout. A local client sends its head in one write, so 5 s is generous;
/// it is also how long idle connections can occupy every slot.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a connection lives, whatever it does: bounds a client that
/// trickles a request body, reads its response slowly or keeps a connection
/// busy with a stream of requests. Far above any real exchange (a few ms).
pub const CONNECTION_MAX_LIFETIME: Duration = Duration::from_secs(30);

/// After [`CONNECTION_MAX_LIFETIME`], how long the request in flight (if any)
/// may take to finish before the connection is dropped.
pub const CONNECTION_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// At most one WARN per interval about connections refused at the limit, so
/// a flood of connections cannot flood the journal too.
pub const REFUSED_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Pause after a failed accept (e.g. the process is out of descriptors)
/// before accepting again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Checks that the status API may listen on `addr`: a loopback address, or
/// any address when `allow_remote` (the manifest's
/// `agent.status_allow_remote`) is set. The API has no authentication, so it
/// must not be reachable from the network by accident; `0.0.0.0` and `[::]`
/// (every interface) are not loopback. The error says how to fix it.
pub fn check_addr(addr: SocketAddr, allow_remote: bool) -> Result<(), String> {
    if allow_remote || addr.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "{addr} is not a loopback address, and the status API has no authentication: \
         use 127.0.0.1 or [::1], or set agent.status_allow_remote = true to serve it beyond this machine"
    ))
}

/// The bounds on the status API's connections (the constants above; tests shorten them).
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    head_timeout: Duration,
    max_lifetime: Duration,
    close_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            head_timeout: REQUEST_HEAD_TIMEOUT,
            max_lifetime: CONNECTION_MAX_LIFETIME,
            close_grace: CONNECTION_CLOSE_GRACE,
        }
    }
}

/// Counts connections refused at the limit and decides when to WARN about
/// them: at the first refusal, then at most once per
/// [`REFUSED_WARN_INTERVAL`] with the number refused since the last WARN.
#[derive(Debug, Default)]
struct Refusals {
    /// Refused and not yet reported.
    unreported: u64,
    /// When the last WARN was logged; `None` before the first.
    last_warn: Option<Instant>,
}

impl Refusals {
    /// Counts one refusal at `now`; returns the count to WARN about if a WARN is due.
    fn refused(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        self.take_if_due(now)
    }

    /// When the unreported refusals are due to be reported; `None` if there are none.
    fn next_due(&self) -> Option<Instant> {
        (self.unreported > 0).then(|| {
            self.last_warn
                .map_or_else(Instant::now, |t| t + REFUSED_WARN_INTERVAL)
        })
    }

    /// The unreported refusals, if there are some and a WARN is due at `now`.
    fn take_if_due(&mut self, now: Instant) -> Option<u64> {
        let due = self.unreported > 0
            && self
                .last_warn
                .is_none_or(|t| now.saturating_duration_since(t) >= REFUSED_WARN_INTERVAL);
        if !due {
            return None;
        }
        self.last_warn = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

fn warn_refused(refused: u64, max_connections: usize) {
    tracing::warn!(
        refused,
        max_connections,
        "status API at its connection limit: closed new connections at once"
    );
}

/// Serves `/healthz` and `/status` on `addr` until `cancel`.
///
/// Any local user can connect, so the API bounds what connections can hold:
/// at most [`MAX_CONNECTIONS`] at once, each closed when it sends no request
/// head for [`REQUEST_HEAD_TIMEOUT`] (from accept or after a response) and
/// in any case after [`CONNECTION_MAX_LIFETIME`].
///
/// At the limit, a new connection is accepted and closed at once (its client
/// sees the connection closed, and `berth status` fails fast) rather than left
/// in the listen backlog: queued behind idle connections it would wait for a
/// free slot anyway, and a full backlog would make every later client hang on
/// connect. Refusals are logged at WARN: the first at once, then at most once
/// per [`REFUSED_WARN_INTERVAL`] with the number refused since. Idle connections free their slots within
/// [`REQUEST_HEAD_TIMEOUT`], so `/healthz` answers again soon after a flood
/// stops; a client that keeps reconnecting can keep the API busy, but never
/// the agent's descriptors or its supervision of the containers.
pub async fn serve(
    addr: SocketAddr,
    status: watch::Receiver<Arc<Status>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> std::io::Result<SocketAddr> {
    serve_with(addr, status, cancel, tracker, Limits::default()).await
}

async fn serve_with(
    addr: SocketAddr,
    status: watch::Receiver<Arc<Status>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    limits: Limits,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(
        addr = %local,
        max_connections = limits.max_connections,
        "status API listening"
    );
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let t = tracker.clone();
    tracker.spawn(async move {
        let mut refusals = Refusals::default();
        loop {
            let report_at = refusals.next_due();
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                // Reports refusals left over when a flood stops.
                _ = tokio::time::sleep_until(report_at.unwrap_or_else(Instant::now)),
                    if report_at.is_some() =>
                {
                    if let Some(refused) = refusals.take_if_due(Instant::now()) {
                        warn_refused(refused, limits.max_connections);
                    }
                    continue;
                }
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "status API accept failed");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(ACCEPT_RETRY_DELAY) => {}
                        }
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                drop(stream);
                if let Some(refused) = refusals.refused(Instant::now()) {
                    warn_refused(refused, limits.max_connections);
                }
                continue;
            };
            let status = status.clone();
            let cancel = cancel.clone();
            t.spawn(async move {
                let _permit = permit;
                let svc = hyper::service::service_fn(move |req| {
                    let s = status.borrow().clone();
                    async move { Ok::<_, Infallible>(route(&req, &s)) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.head_timeout)
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    r = &mut conn => if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "status API connection closed");
                    },
                    _ = tokio::time::sleep(limits.max_lifetime) => {
                        tracing::debug!(%peer, "status API connection reached its lifetime: closing");
                        conn.as_mut().graceful_shutdown();
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = tokio::time::timeout(limits.close_grace, conn) => {}
                        }
                    }
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
        "state    {}  engine {}",
        s.state.as_str(),
        if s.engine_connected {
            "connected"
        } else {
            "DISCONNECTED"
        }
    );
    if let Some(r) = &s.reason {
        let _ = writeln!(out, "reason   {r}");
    }
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
            c.state.as_str(),
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Generous bound on waiting for a condition in these tests (not a timing goal).
    const DEADLINE: Duration = Duration::from_secs(10);

    #[test]
    fn only_loopback_addresses_unless_remote_is_allowed() {
        for (addr, loopback) in [
            ("127.0.0.1:7878", true),
            ("127.1.2.3:7878", true),
            ("[::1]:7878", true),
            ("[::ffff:127.0.0.1]:7878", true),
            ("0.0.0.0:7878", false),
            ("[::]:7878", false),
            ("10.0.0.5:7878", false),
            ("[2001:db8::1]:7878", false),
            ("[::ffff:10.0.0.5]:7878", false),
        ] {
            let a: SocketAddr = addr.parse().unwrap();
            assert_eq!(check_addr(a, false).is_ok(), loopback, "{addr}");
            assert_eq!(check_addr(a, true), Ok(()), "{addr} with remote allowed");
        }
        let err = check_addr("0.0.0.0:7878".parse().unwrap(), false).unwrap_err();
        assert!(err.contains("agent.status_allow_remote"), "{err}");
    }

    #[test]
    fn refusals_warn_at_most_once_per_interval_with_the_count() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let i = REFUSED_WARN_INTERVAL.as_millis() as u64;
        let mut r = Refusals::default();
        assert_eq!(r.next_due(), None);
        let got: Vec<Option<u64>> = [0, 1, 2, i - 1, i, i + 1, 3 * i]
            .into_iter()
            .map(|ms| r.refused(at(ms)))
            .collect();
        assert_eq!(got, vec![Some(1), None, None, None, Some(4), None, Some(2)]);
        assert_eq!(r.next_due(), None, "all reported");
        // Refusals left when a flood stops are reported when due, once.
        assert_eq!(r.refused(at(3 * i + 1)), None);
        assert_eq!(r.refused(at(3 * i + 2)), None);
        assert_eq!(r.next_due(), Some(at(4 * i)));
        assert_eq!(r.take_if_due(at(4 * i - 1)), None);
        assert_eq!(r.take_if_due(at(4 * i)), Some(2));
        assert_eq!(r.take_if_due(at(5 * i)), None);
        assert_eq!(r.next_due(), None);
    }

    async fn start(limits: Limits) -> (SocketAddr, CancellationToken) {
        let (_tx, rx) = watch::channel(Arc::new(Status::default()));
        let cancel = CancellationToken::new();
        let addr = serve_with(
            "127.0.0.1:0".parse().unwrap(),
            rx,
            cancel.clone(),
            TaskTracker::new(),
            limits,
        )
        .await
        .expect("bind loopback");
        (addr, cancel)
    }

    /// Sends `GET /healthz` on a kept-alive connection and reads the answer;
    /// `false` if the server closed the connection instead.
    async fn healthz(stream: &mut TcpStream) -> bool {
        let req = b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n";
        if stream.write_all(req).await.is_err() {
            return false;
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.ends_with(b"\r\n\r\nok\n") {
            match tokio::time::timeout(DEADLINE, stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                Ok(_) => return false,
                Err(_) => panic!("no answer and not closed within {DEADLINE:?}"),
            }
        }
        assert!(buf.starts_with(b"HTTP/1.1 200"), "{buf:?}");
        true
    }

    /// Waits for the server to close `stream` (EOF or reset); panics if it
    /// is still open after [`DEADLINE`].
    async fn closed_by_server(stream: &mut TcpStream, what: &str) {
        let mut b = [0u8; 64];
        match tokio::time::timeout(DEADLINE, stream.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("{what}: unexpected {n} bytes"),
            Err(_) => panic!("{what}: still open after {DEADLINE:?}"),
        }
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 64,
            head_timeout: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(60),
            close_grace: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn a_connection_beyond_the_limit_is_closed_at_once() {
        let (addr, cancel) = start(Limits {
            max_connections: 2,
            ..limits()
        })
        .await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        // Served, then kept alive: both hold a slot.
        assert!(healthz(&mut a).await);
        assert!(healthz(&mut b).await);
        let mut c = TcpStream::connect(addr).await.unwrap();
        closed_by_server(&mut c, "third connection").await;
        // A slot frees when its client leaves; a new connection is served.
        drop(a);
        let start = std::time::Instant::now();
        loop {
            let mut d = TcpStream::connect(addr).await.unwrap();
            if healthz(&mut d).await {
                break;
            }
            assert!(start.elapsed() < DEADLINE, "no slot freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(healthz(&mut b).await, "kept connections stay served");
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_head_timeout() {
        let (addr, cancel) = start(Limits {
            head_timeout: Duration::from_millis(200),
            ..limits()
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        closed_by_server(&mut s, "silent connection").await;
        // A partial request head does not keep it open either.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        closed_by_server(&mut s, "partial head").await;
        cancel.cancel();
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_is_closed() {
        let (addr, cancel) = start(Limits {
            head_timeout: Duration::from_millis(200),
            ..limits()
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(healthz(&mut s).await);
        closed_by_server(&mut s, "idle after a response").await;
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_busy_connection_is_closed_at_the_end_of_its_lifetime() {
        let (addr, cancel) = start(Limits {
            max_lifetime: Duration::from_millis(300),
            ..limits()
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let start = std::time::Instant::now();
        let mut answered = 0;
        while healthz(&mut s).await {
            answered += 1;
            assert!(
                start.elapsed() < DEADLINE,
                "still served after {answered} requests"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(answered > 0, "served before its lifetime ended");
        cancel.cancel();
    }

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
                failed_since: None,
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
