//! A thin recording HTTP proxy in front of a [`super::Moto`] for the Auto
//! Scaling API (point berth's `AWS_ENDPOINT_URL_AUTO_SCALING` at it, see
//! [`LifecycleProxy::env`]).
//!
//! Why it exists: moto 5.2.1 does not implement `CompleteLifecycleAction`
//! or `RecordLifecycleActionHeartbeat` (it answers HTTP 500), and its
//! instances never sit in `Pending:Wait` (they launch straight to
//! `InService`, lifecycle hook or not). berth's launch path waits for its
//! containers and then completes the launching lifecycle action, so tests
//! need both. It also gives tests a fault switch ([`Fault`]) for "AWS is
//! throttling / unavailable", and per-action request counts.
//!
//! What it does, per request (the Auto Scaling API uses the AWS query
//! protocol: a form-urlencoded POST body with `Action=...`):
//!
//! 1. Counts the request under its `Action` ([`LifecycleProxy::count`]).
//! 2. With a [`Fault`] set, answers with it and stops there.
//! 3. `CompleteLifecycleAction` / `RecordLifecycleActionHeartbeat`: checks
//!    the required parameters (400 `ValidationError` like AWS if missing),
//!    records the call ([`LifecycleProxy::calls`]) and answers AWS's success
//!    XML. Completing an instance held in `Pending:Wait` releases it
//!    (`ABANDON` also marks it abandoned).
//! 4. Everything else is forwarded to moto unchanged (method, target,
//!    headers with `Host` rewritten, body); moto's answer comes back with a
//!    fresh `Content-Length`. While an instance is held
//!    ([`LifecycleProxy::hold_pending_wait`]), its
//!    `<LifecycleState>InService</LifecycleState>` in
//!    `DescribeAutoScalingInstances` / `DescribeAutoScalingGroups` answers
//!    reads `Pending:Wait`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST};

use super::http::send;
use super::http_server::{HttpServer, Request, Response};

const XMLNS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";
/// Deadline for one forwarded exchange with moto (after a 3 s connect).
const UPSTREAM_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Request and response headers that belong to one hop only.
const HOP_BY_HOP: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "content-length",
    "transfer-encoding",
    "expect",
    "te",
    "trailer",
    "upgrade",
];

/// What the proxy answers instead of forwarding (see [`LifecycleProxy::set_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Normal operation.
    None,
    /// Every request: HTTP 400 with the query-protocol error `Throttling`
    /// ("Rate exceeded"), as AWS answers when the account is rate limited.
    Throttle,
    /// Every request: HTTP 503 with the query-protocol error
    /// `ServiceUnavailable`.
    Unavailable,
    /// Requests with this `Action` only: HTTP 403 `AccessDenied`, as AWS
    /// answers when the instance profile lacks the permission.
    Deny(&'static str),
}

/// One intercepted `CompleteLifecycleAction` or `RecordLifecycleActionHeartbeat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    /// The `Action` parameter.
    pub action: String,
    /// All form (and query-string) parameters, decoded, `Action` and
    /// `Version` included.
    pub params: BTreeMap<String, String>,
}

impl RecordedCall {
    /// The parameter `name`, if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

struct State {
    fault: Fault,
    calls: Vec<RecordedCall>,
    counts: HashMap<String, usize>,
    held: BTreeSet<String>,
    abandoned: BTreeSet<String>,
}

/// A running proxy; see the module docs. Dropping it stops it (moto keeps
/// running).
pub struct LifecycleProxy {
    state: Arc<Mutex<State>>,
    server: HttpServer,
    upstream: String,
}

impl LifecycleProxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `moto_url`
    /// (`http://127.0.0.1:PORT`, i.e. [`super::Moto::url`]). Panics if the
    /// URL is not a plain `http://host:port` or the proxy cannot listen.
    pub fn start(moto_url: &str) -> LifecycleProxy {
        let upstream = moto_url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("LifecycleProxy::start: {moto_url:?} is not an http:// URL"))
            .trim_end_matches('/')
            .to_string();
        assert!(
            !upstream.contains('/') && upstream.contains(':'),
            "LifecycleProxy::start: {moto_url:?} is not http://host:port"
        );
        let state = Arc::new(Mutex::new(State {
            fault: Fault::None,
            calls: Vec::new(),
            counts: HashMap::new(),
            held: BTreeSet::new(),
            abandoned: BTreeSet::new(),
        }));
        let handler_state = state.clone();
        let handler_upstream = upstream.clone();
        let server = HttpServer::start(
            "lifecycle-proxy",
            Arc::new(move |req: &Request| handle(&handler_state, &handler_upstream, req)),
        );
        LifecycleProxy {
            state,
            server,
            upstream,
        }
    }

    /// `http://127.0.0.1:PORT`, the proxy's endpoint URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `host:port` of the moto server behind the proxy.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Environment for a spawned `berth`: `AWS_ENDPOINT_URL_AUTO_SCALING`
    /// set to [`LifecycleProxy::url`] (put it after [`super::Moto::env`]).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("AWS_ENDPOINT_URL_AUTO_SCALING".into(), self.url())]
    }

    /// Every intercepted `CompleteLifecycleAction` and
    /// `RecordLifecycleActionHeartbeat` so far, in arrival order (faulted
    /// and invalid requests are not recorded).
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.lock().calls.clone()
    }

    /// The recorded calls whose action is `action`.
    pub fn calls_of(&self, action: &str) -> Vec<RecordedCall> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.action == action)
            .cloned()
            .collect()
    }

    /// How many requests with `Action=action` arrived (faulted, invalid and
    /// forwarded ones alike).
    pub fn count(&self, action: &str) -> usize {
        self.lock().counts.get(action).copied().unwrap_or(0)
    }

    /// Makes `instance_id` look `Pending:Wait` (instead of `InService`) in
    /// `DescribeAutoScalingInstances`/`DescribeAutoScalingGroups` answers
    /// until a `CompleteLifecycleAction` for it arrives.
    pub fn hold_pending_wait(&self, instance_id: &str) {
        self.lock().held.insert(instance_id.to_string());
    }

    /// Whether `instance_id` is still held in `Pending:Wait`.
    pub fn is_held(&self, instance_id: &str) -> bool {
        self.lock().held.contains(instance_id)
    }

    /// Whether a `CompleteLifecycleAction` with `LifecycleActionResult=ABANDON`
    /// arrived for `instance_id`.
    pub fn is_abandoned(&self, instance_id: &str) -> bool {
        self.lock().abandoned.contains(instance_id)
    }

    /// Sets the fault answered to every request from now on.
    pub fn set_fault(&self, fault: Fault) {
        self.lock().fault = fault;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn handle(state: &Mutex<State>, upstream: &str, req: &Request) -> Response {
    let params = request_params(req);
    let action = params.get("Action").cloned().unwrap_or_default();
    let held: Vec<String> = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        *st.counts.entry(action.clone()).or_default() += 1;
        match st.fault {
            Fault::None => {}
            Fault::Deny(a) if a != action => {}
            Fault::Deny(a) => {
                return error_response(
                    403,
                    "Sender",
                    "AccessDenied",
                    &format!("User is not authorized to perform: autoscaling:{a}"),
                );
            }
            Fault::Throttle => {
                return error_response(400, "Sender", "Throttling", "Rate exceeded");
            }
            Fault::Unavailable => {
                return error_response(
                    503,
                    "Receiver",
                    "ServiceUnavailable",
                    "Service is unavailable. Please try again later.",
                );
            }
        }
        if action == "CompleteLifecycleAction" || action == "RecordLifecycleActionHeartbeat" {
            return lifecycle_action(&mut st, &action, params);
        }
        st.held.iter().cloned().collect()
    };
    let mut resp = match forward(upstream, req) {
        Ok(resp) => resp,
        Err(e) => {
            return Response::new(
                502,
                "text/plain",
                format!("lifecycle proxy: cannot reach moto at {upstream}: {e}"),
            );
        }
    };
    let rewrites = matches!(
        action.as_str(),
        "DescribeAutoScalingInstances" | "DescribeAutoScalingGroups"
    );
    if rewrites && resp.status == 200 && !held.is_empty() {
        let mut body = String::from_utf8_lossy(&resp.body).into_owned();
        let mut changed = false;
        for id in &held {
            changed |= rewrite_to_pending_wait(&mut body, id);
        }
        if changed {
            resp.body = body.into_bytes();
            // The checksum of moto's body no longer holds.
            resp.headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case("x-amz-crc32"));
        }
    }
    resp
}

/// Handles an intercepted lifecycle action with the state locked.
fn lifecycle_action(st: &mut State, action: &str, params: BTreeMap<String, String>) -> Response {
    for required in ["LifecycleHookName", "AutoScalingGroupName"] {
        if params.get(required).is_none_or(|v| v.is_empty()) {
            return error_response(
                400,
                "Sender",
                "ValidationError",
                &format!(
                    "1 validation error detected: Value null at '{required}' failed to satisfy constraint: Member must not be null"
                ),
            );
        }
    }
    let instance = params.get("InstanceId").cloned();
    if instance.is_none() && !params.contains_key("LifecycleActionToken") {
        return error_response(
            400,
            "Sender",
            "ValidationError",
            "Either InstanceId or LifecycleActionToken must be specified",
        );
    }
    if action == "CompleteLifecycleAction" {
        let result = params
            .get("LifecycleActionResult")
            .map(String::as_str)
            .unwrap_or("");
        if result != "CONTINUE" && result != "ABANDON" {
            return error_response(
                400,
                "Sender",
                "ValidationError",
                &format!("Invalid LifecycleActionResult {result:?}: must be CONTINUE or ABANDON"),
            );
        }
        if let Some(id) = &instance {
            st.held.remove(id);
            if result == "ABANDON" {
                st.abandoned.insert(id.clone());
            }
        }
    }
    st.calls.push(RecordedCall {
        action: action.to_string(),
        params,
    });
    let id = request_id();
    Response::new(
        200,
        "text/xml",
        format!(
            "<{action}Response xmlns=\"{XMLNS}\"><{action}Result/><ResponseMetadata>\
             <RequestId>{id}</RequestId></ResponseMetadata></{action}Response>"
        ),
    )
    .with_header("x-amzn-RequestId", &id)
}

/// A query-protocol error answer.
fn error_response(status: u16, kind: &str, code: &str, message: &str) -> Response {
    let id = request_id();
    Response::new(
        status,
        "text/xml",
        format!(
            "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>{kind}</Type><Code>{code}</Code>\
             <Message>{message}</Message></Error><RequestId>{id}</RequestId></ErrorResponse>"
        ),
    )
    .with_header("x-amzn-RequestId", &id)
}

/// In `body`, inside each `<member>` element whose `<InstanceId>` is `id`,
/// turns `<LifecycleState>InService</LifecycleState>` into `Pending:Wait`.
/// Returns whether anything changed.
fn rewrite_to_pending_wait(body: &mut String, id: &str) -> bool {
    const OPEN: &str = "<LifecycleState>";
    const CLOSE: &str = "</LifecycleState>";
    let needle = format!("<InstanceId>{id}</InstanceId>");
    let mut changed = false;
    let mut from = 0;
    while let Some(rel) = body[from..].find(&needle) {
        let at = from + rel;
        from = at + needle.len();
        // The instance's own <member>: the nearest one around the id (an
        // instance member has no nested members).
        let Some(start) = body[..at].rfind("<member>") else {
            continue;
        };
        let Some(end) = body[at..].find("</member>").map(|e| at + e) else {
            continue;
        };
        let Some(open) = body[start..end].find(OPEN).map(|o| start + o + OPEN.len()) else {
            continue;
        };
        let Some(close) = body[open..end].find(CLOSE).map(|c| open + c) else {
            continue;
        };
        if body[open..close].trim() == "InService" {
            body.replace_range(open..close, "Pending:Wait");
            changed = true;
        }
    }
    changed
}

/// Form parameters of the body (when it is form-urlencoded) and of the query
/// string, percent-decoded. Later duplicates win.
fn request_params(req: &Request) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let mut add = |s: &str| {
        for pair in s.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            params.insert(form_decode(k), form_decode(v));
        }
    };
    add(req.query());
    let form = req
        .header("content-type")
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("x-www-form-urlencoded"));
    if form {
        add(&String::from_utf8_lossy(&req.body));
    }
    params
}

/// Decodes `application/x-www-form-urlencoded` text (`+` and `%XX`).
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A random id in the shape of AWS request ids (a UUID).
fn request_id() -> String {
    let hex = |n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(fastrand::u32(..16), 16).expect("digit < 16"))
            .collect()
    };
    format!("{}-{}-{}-{}-{}", hex(8), hex(4), hex(4), hex(4), hex(12))
}

/// Sends `req` to `upstream` (`host:port`) over a fresh connection and reads
/// the whole answer. Hop-by-hop headers of both sides are dropped.
fn forward(upstream: &str, req: &Request) -> io::Result<Response> {
    let mut fwd = hyper::Request::builder()
        .method(req.method.as_str())
        .uri(req.target.as_str())
        .header(HOST, upstream)
        .header(CONNECTION, "close");
    for (k, v) in req.headers.iter().filter(|(k, _)| !is_hop_by_hop(k)) {
        fwd = fwd.header(k.as_str(), v.as_str());
    }
    if !req.body.is_empty() || matches!(req.method.as_str(), "POST" | "PUT" | "PATCH") {
        fwd = fwd.header(CONTENT_LENGTH, req.body.len());
    }
    let fwd = fwd
        .body(Full::new(Bytes::copy_from_slice(&req.body)))
        .map_err(io::Error::other)?;
    let resp = send(upstream, fwd, UPSTREAM_IO_TIMEOUT)?;
    Ok(Response {
        status: resp.status,
        headers: resp
            .headers
            .into_iter()
            .filter(|(k, _)| !is_hop_by_hop(k))
            .collect(),
        body: resp.body,
    })
}

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}
