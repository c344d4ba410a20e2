//! A thin recording HTTP proxy in front of a [`super::Moto`] for the Auto
//! Scaling, EC2 and CloudWatch APIs (point berth's per-service endpoint
//! variables at it, see [`LifecycleProxy::env`] and
//! [`LifecycleProxy::env_for`]).
//!
//! Why it exists: moto 5.2.1 does not implement `CompleteLifecycleAction`
//! or `RecordLifecycleActionHeartbeat` (it answers HTTP 500), its
//! instances never sit in `Pending:Wait` (they launch straight to
//! `InService`, lifecycle hook or not), and it cannot read the Smithy RPC v2
//! CBOR protocol that `aws-sdk-cloudwatch` 1.x sends. berth's launch path
//! waits for its containers and then completes the launching lifecycle
//! action, so tests need the first two; an agent that reads alarms needs the
//! third. It also gives tests a fault switch ([`Fault`]) for "AWS is
//! throttling / unavailable / denies this action", and per-action request
//! counts.
//!
//! Each request is identified by its service (the SigV4 credential scope of
//! its `Authorization` header: `autoscaling`, `ec2`, `monitoring`) and its
//! action, whatever the protocol: `Action=` in the form body or query string
//! (the query protocols of Auto Scaling, EC2 and CloudWatch), the
//! `X-Amz-Target` header (AWS JSON 1.0), or the path
//! `/service/GraniteServiceVersion20100801/operation/ACTION` (Smithy RPC v2
//! CBOR, with a `smithy-protocol: rpc-v2-cbor` header). Then, per request:
//!
//! 1. Counts it under its service and action ([`LifecycleProxy::count`]).
//! 2. With a [`Fault`] that applies, answers with it, in the request's
//!    protocol and the service's error codes, and stops there.
//! 3. Auto Scaling `CompleteLifecycleAction` /
//!    `RecordLifecycleActionHeartbeat`: checks the required parameters (400
//!    `ValidationError` like AWS if missing), records the call
//!    ([`LifecycleProxy::calls`]) and answers AWS's success XML. Completing
//!    an instance held in `Pending:Wait` releases it (`ABANDON` also marks
//!    it abandoned).
//! 4. CBOR: translated to AWS JSON 1.0 for moto (see [`super::cbor`]; the
//!    members whose names end in `Timestamp`, `Timestamps`, `Time` or `Date`
//!    are timestamps), and moto's answer, success or error, back to CBOR.
//! 5. Everything else is forwarded to moto unchanged (method, target,
//!    headers with `Host` rewritten, body); moto's answer comes back with a
//!    fresh `Content-Length`. While an instance is held
//!    ([`LifecycleProxy::hold_pending_wait`]), its
//!    `<LifecycleState>InService</LifecycleState>` in
//!    `DescribeAutoScalingInstances` / `DescribeAutoScalingGroups` answers
//!    reads `Pending:Wait`.
//!
//! One correction to moto: its CloudWatch `DescribeAlarms` ignores
//! `StateValue` when `AlarmNames`, `AlarmNamePrefix` or `ActionPrefix` is
//! given; for JSON and CBOR requests the proxy drops the alarms in other
//! states from the answer, as AWS would. (Query-protocol answers are moto's.)
//!
//! Requests without a recognisable service (unsigned, as raw test requests
//! are) are taken for Auto Scaling.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST};
use serde_json::Value;

use super::cbor;
use super::http::send;
use super::http_server::{HttpServer, Request, Response};
use super::moto::CLOUDWATCH_TARGET_PREFIX;

const AUTOSCALING_XMLNS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";
const CLOUDWATCH_XMLNS: &str = "http://monitoring.amazonaws.com/doc/2010-08-01/";
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

/// An AWS API the proxy can stand in front of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    AutoScaling,
    Ec2,
    CloudWatch,
}

impl Service {
    /// Every service the proxy knows.
    pub const ALL: [Service; 3] = [Service::AutoScaling, Service::Ec2, Service::CloudWatch];

    /// The SDK's endpoint variable for this service, e.g.
    /// `AWS_ENDPOINT_URL_AUTO_SCALING`.
    pub fn endpoint_env(self) -> &'static str {
        match self {
            Service::AutoScaling => "AWS_ENDPOINT_URL_AUTO_SCALING",
            Service::Ec2 => "AWS_ENDPOINT_URL_EC2",
            Service::CloudWatch => "AWS_ENDPOINT_URL_CLOUDWATCH",
        }
    }

    /// The prefix of the service's IAM actions: `autoscaling`, `ec2`,
    /// `cloudwatch` (as in `ec2:CreateTags`).
    pub fn iam_prefix(self) -> &'static str {
        match self {
            Service::AutoScaling => "autoscaling",
            Service::Ec2 => "ec2",
            Service::CloudWatch => "cloudwatch",
        }
    }

    /// The service of a SigV4 signing name (credential scope).
    fn from_signing_name(name: &str) -> Option<Service> {
        match name {
            "autoscaling" => Some(Service::AutoScaling),
            "ec2" => Some(Service::Ec2),
            "monitoring" => Some(Service::CloudWatch),
            _ => None,
        }
    }
}

/// What the proxy answers instead of forwarding (see [`LifecycleProxy::set_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Normal operation.
    None,
    /// Every request: the service's throttling error, as AWS answers when
    /// the account is rate limited: HTTP 400 `Throttling` ("Rate exceeded")
    /// for Auto Scaling and CloudWatch, HTTP 503 `RequestLimitExceeded` for
    /// EC2.
    Throttle,
    /// Every request: HTTP 503, `ServiceUnavailable` (EC2: `Unavailable`).
    Unavailable,
    /// Requests with this action only: HTTP 403, as AWS answers when the
    /// instance profile lacks the permission (`AccessDenied`; EC2:
    /// `UnauthorizedOperation`). The action is plain (`CreateTags`: in any
    /// service) or IAM-style (`ec2:CreateTags`; see [`Service::iam_prefix`]).
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
    /// Requests per (service, action); `None` for requests of no known service.
    counts: HashMap<(Option<Service>, String), usize>,
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
        self.env_for(&[Service::AutoScaling])
    }

    /// Environment for a spawned `berth` sending the calls of `services`
    /// through the proxy (put it after [`super::Moto::env`]; the other
    /// services go straight to moto). CloudWatch must be among them for an
    /// agent that calls it: moto cannot read the SDK's CBOR.
    pub fn env_for(&self, services: &[Service]) -> Vec<(String, String)> {
        services
            .iter()
            .map(|s| (s.endpoint_env().to_string(), self.url()))
            .collect()
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

    /// How many requests for `action` arrived (faulted, invalid and
    /// forwarded ones alike). `action` is plain (`DescribeAlarms`: summed
    /// over services; note that EC2 and Auto Scaling both have `DeleteTags`
    /// and `DescribeTags`) or IAM-style (`ec2:CreateTags`,
    /// `autoscaling:DescribeAutoScalingGroups`, `cloudwatch:DescribeAlarms`).
    pub fn count(&self, action: &str) -> usize {
        self.lock()
            .counts
            .iter()
            .filter(|((service, a), _)| action_matches(action, *service, a))
            .map(|(_, n)| *n)
            .sum()
    }

    /// Every (service, action) seen so far with its count, IAM-style keys
    /// (`?:Action` for requests of no known service).
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.lock()
            .counts
            .iter()
            .map(|((service, a), n)| {
                let prefix = service.map_or("?", Service::iam_prefix);
                (format!("{prefix}:{a}"), *n)
            })
            .collect()
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

/// Whether `pattern` (plain or IAM-style, see [`LifecycleProxy::count`])
/// names `action` of `service`.
fn action_matches(pattern: &str, service: Option<Service>, action: &str) -> bool {
    match pattern.split_once(':') {
        Some((prefix, name)) => name == action && service.is_some_and(|s| s.iam_prefix() == prefix),
        None => pattern == action,
    }
}

/// The wire protocol of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Form-encoded `Action=` (Auto Scaling, CloudWatch, and EC2's variant).
    Query,
    /// AWS JSON 1.0: `X-Amz-Target: PREFIX.ACTION`, JSON body.
    Json,
    /// Smithy RPC v2 CBOR: `/service/NAME/operation/ACTION`, CBOR body.
    Cbor,
}

/// What a request is: its service (if known), action and protocol.
#[derive(Debug)]
struct Call {
    service: Option<Service>,
    action: String,
    protocol: Protocol,
}

fn classify(req: &Request, params: &BTreeMap<String, String>) -> Call {
    let signed = req.header("authorization").and_then(|auth| {
        // AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, ...
        let scope = auth.split("Credential=").nth(1)?.split(',').next()?;
        Service::from_signing_name(scope.split('/').nth(3)?)
    });
    let path = req.path();
    if let Some(rest) = path.strip_prefix("/service/")
        && let Some((name, action)) = rest.split_once("/operation/")
    {
        let service = signed.or((name == CLOUDWATCH_TARGET_PREFIX).then_some(Service::CloudWatch));
        return Call {
            service,
            action: action.to_string(),
            protocol: Protocol::Cbor,
        };
    }
    if let Some(target) = req.header("x-amz-target") {
        let action = target.rsplit('.').next().unwrap_or(target);
        return Call {
            service: signed,
            action: action.to_string(),
            protocol: Protocol::Json,
        };
    }
    Call {
        service: signed,
        action: params.get("Action").cloned().unwrap_or_default(),
        protocol: Protocol::Query,
    }
}

fn handle(state: &Mutex<State>, upstream: &str, req: &Request) -> Response {
    let params = request_params(req);
    let call = classify(req, &params);
    let held: Vec<String> = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        *st.counts
            .entry((call.service, call.action.clone()))
            .or_default() += 1;
        if let Some(resp) = fault_response(st.fault, &call) {
            return resp;
        }
        let asg = matches!(call.service, None | Some(Service::AutoScaling));
        if asg
            && call.protocol == Protocol::Query
            && matches!(
                call.action.as_str(),
                "CompleteLifecycleAction" | "RecordLifecycleActionHeartbeat"
            )
        {
            return lifecycle_action(&mut st, &call.action, params);
        }
        st.held.iter().cloned().collect()
    };
    match call.protocol {
        Protocol::Cbor => return cbor_call(upstream, req, &call),
        Protocol::Json if call.service == Some(Service::CloudWatch) => {
            return json_call(upstream, req, &call);
        }
        _ => {}
    }
    let mut resp = match forward(upstream, req) {
        Ok(resp) => resp,
        Err(e) => return unreachable_moto(upstream, &e),
    };
    let rewrites = matches!(
        call.action.as_str(),
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
            drop_checksum(&mut resp);
        }
    }
    resp
}

fn unreachable_moto(upstream: &str, e: &io::Error) -> Response {
    Response::new(
        502,
        "text/plain",
        format!("lifecycle proxy: cannot reach moto at {upstream}: {e}"),
    )
}

/// Removes moto's body checksum, which no longer holds for a changed body.
fn drop_checksum(resp: &mut Response) {
    resp.headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case("x-amz-crc32"));
}

/// The answer to `call` under `fault`, or `None` to go on.
fn fault_response(fault: Fault, call: &Call) -> Option<Response> {
    let ec2 = call.service == Some(Service::Ec2);
    let (status, kind, code, message) = match fault {
        Fault::None => return None,
        Fault::Deny(pattern) if !action_matches(pattern, call.service, &call.action) => {
            return None;
        }
        Fault::Deny(_) => {
            let prefix = call.service.unwrap_or(Service::AutoScaling).iam_prefix();
            let message = format!(
                "User: arn:aws:sts::123456789012:assumed-role/berth/i-0 is not authorized to \
                 perform: {prefix}:{} because no identity-based policy allows it",
                call.action
            );
            let code = if ec2 {
                "UnauthorizedOperation"
            } else {
                "AccessDenied"
            };
            (403, "Sender", code, message)
        }
        Fault::Throttle if ec2 => (
            503,
            "Sender",
            "RequestLimitExceeded",
            "Request limit exceeded.".to_string(),
        ),
        Fault::Throttle => (400, "Sender", "Throttling", "Rate exceeded".to_string()),
        Fault::Unavailable if ec2 => (
            503,
            "Receiver",
            "Unavailable",
            "The server is overloaded and can't handle the request.".to_string(),
        ),
        Fault::Unavailable => (
            503,
            "Receiver",
            "ServiceUnavailable",
            "Service is unavailable. Please try again later.".to_string(),
        ),
    };
    Some(match (call.protocol, ec2) {
        (Protocol::Query, true) => ec2_error(status, code, &message),
        (Protocol::Query, false) => query_error(call.service, status, kind, code, &message),
        (Protocol::Json, _) => json_error(status, kind, code, &message),
        (Protocol::Cbor, _) => cbor_error(status, kind, code, &message),
    })
}

/// A query-protocol error answer (Auto Scaling's or CloudWatch's).
fn query_error(
    service: Option<Service>,
    status: u16,
    kind: &str,
    code: &str,
    message: &str,
) -> Response {
    let xmlns = match service {
        Some(Service::CloudWatch) => CLOUDWATCH_XMLNS,
        _ => AUTOSCALING_XMLNS,
    };
    let id = request_id();
    Response::new(
        status,
        "text/xml",
        format!(
            "<ErrorResponse xmlns=\"{xmlns}\"><Error><Type>{kind}</Type><Code>{code}</Code>\
             <Message>{message}</Message></Error><RequestId>{id}</RequestId></ErrorResponse>"
        ),
    )
    .with_header("x-amzn-RequestId", &id)
}

/// An EC2 error answer.
fn ec2_error(status: u16, code: &str, message: &str) -> Response {
    let id = request_id();
    Response::new(
        status,
        "text/xml;charset=UTF-8",
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}\
             </Code><Message>{message}</Message></Error></Errors><RequestID>{id}</RequestID>\
             </Response>"
        ),
    )
}

/// The body of a JSON or CBOR error, and its query-compatible error header.
fn error_document(kind: &str, code: &str, message: &str) -> (Value, String) {
    (
        serde_json::json!({
            "__type": format!("com.amazonaws.cloudwatch#{code}"),
            "message": message,
        }),
        format!("{code};{kind}"),
    )
}

/// An AWS JSON 1.0 error answer (CloudWatch, query-compatible).
fn json_error(status: u16, kind: &str, code: &str, message: &str) -> Response {
    let (doc, query_error) = error_document(kind, code, message);
    let id = request_id();
    Response::new(status, "application/x-amz-json-1.0", doc.to_string())
        .with_header("x-amzn-query-error", &query_error)
        .with_header("x-amzn-RequestId", &id)
}

/// A Smithy RPC v2 CBOR error answer (CloudWatch, query-compatible).
fn cbor_error(status: u16, kind: &str, code: &str, message: &str) -> Response {
    let (doc, query_error) = error_document(kind, code, message);
    cbor_answer(status, &doc, &request_id()).with_header("x-amzn-query-error", &query_error)
}

/// A Smithy RPC v2 CBOR answer with `doc` as its body.
fn cbor_answer(status: u16, doc: &Value, request_id: &str) -> Response {
    Response::new(
        status,
        "application/cbor",
        cbor::from_json(doc, &cloudwatch_timestamp),
    )
    .with_header("smithy-protocol", "rpc-v2-cbor")
    .with_header("x-amzn-RequestId", request_id)
}

/// Whether the CloudWatch member `key` holds timestamps.
fn cloudwatch_timestamp(key: &str) -> bool {
    ["Timestamp", "Timestamps", "Time", "Date"]
        .iter()
        .any(|suffix| key.ends_with(suffix))
}

/// A CloudWatch call in AWS JSON 1.0: forwarded, and `DescribeAlarms`
/// answers corrected (see the module docs).
fn json_call(upstream: &str, req: &Request, call: &Call) -> Response {
    let mut resp = match forward(upstream, req) {
        Ok(resp) => resp,
        Err(e) => return unreachable_moto(upstream, &e),
    };
    if call.action == "DescribeAlarms" && resp.status == 200 {
        let input: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        if let Ok(mut output) = serde_json::from_slice::<Value>(&resp.body)
            && filter_alarms_by_state(&input, &mut output)
        {
            resp.body = output.to_string().into_bytes();
            drop_checksum(&mut resp);
        }
    }
    resp
}

/// A CloudWatch call in Smithy RPC v2 CBOR: translated to AWS JSON 1.0 for
/// moto and its answer back to CBOR.
fn cbor_call(upstream: &str, req: &Request, call: &Call) -> Response {
    let input = match cbor::to_json(&req.body) {
        Ok(v) => v,
        Err(e) => {
            return cbor_error(
                400,
                "Sender",
                "SerializationException",
                &format!("lifecycle proxy: the CBOR body does not parse: {e}"),
            );
        }
    };
    let dropped = [
        "content-type",
        "smithy-protocol",
        "accept",
        "content-encoding",
    ];
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(k, _)| !dropped.iter().any(|d| d.eq_ignore_ascii_case(k)))
        .cloned()
        .collect();
    headers.push(("content-type".into(), "application/x-amz-json-1.0".into()));
    headers.push((
        "x-amz-target".into(),
        format!("{CLOUDWATCH_TARGET_PREFIX}.{}", call.action),
    ));
    let json_req = Request {
        method: "POST".into(),
        target: "/".into(),
        version: req.version.clone(),
        headers,
        body: input.to_string().into_bytes(),
    };
    let resp = match forward(upstream, &json_req) {
        Ok(resp) => resp,
        Err(e) => {
            return cbor_error(
                502,
                "Receiver",
                "ServiceUnavailable",
                &format!("lifecycle proxy: cannot reach moto at {upstream}: {e}"),
            );
        }
    };
    let id = resp
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-amzn-requestid"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(request_id);
    let mut output: Value = match serde_json::from_slice(&resp.body) {
        Ok(v) => v,
        Err(_) if resp.status == 200 && resp.body.is_empty() => Value::Object(Default::default()),
        Err(_) => {
            let text = String::from_utf8_lossy(&resp.body);
            let text: String = text.chars().take(300).collect();
            return cbor_error(
                resp.status.max(500),
                "Receiver",
                "InternalFailure",
                &format!("moto answered {} to {}: {text}", resp.status, call.action),
            );
        }
    };
    if call.action == "DescribeAlarms" && resp.status == 200 {
        filter_alarms_by_state(&input, &mut output);
    }
    let mut answer = cbor_answer(resp.status, &output, &id);
    if let Some((_, v)) = resp
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-amzn-query-error"))
    {
        answer = answer.with_header("x-amzn-query-error", v);
    }
    answer
}

/// Drops from a `DescribeAlarms` answer the alarms whose `StateValue` is not
/// the one the request asked for (moto ignores it next to other filters).
/// Returns whether the answer changed.
fn filter_alarms_by_state(input: &Value, output: &mut Value) -> bool {
    let Some(state) = input["StateValue"].as_str() else {
        return false;
    };
    let mut changed = false;
    for list in ["MetricAlarms", "CompositeAlarms"] {
        if let Some(alarms) = output.get_mut(list).and_then(Value::as_array_mut) {
            let before = alarms.len();
            alarms.retain(|a| a["StateValue"] == state);
            changed |= alarms.len() != before;
        }
    }
    changed
}

/// Handles an intercepted lifecycle action with the state locked.
fn lifecycle_action(st: &mut State, action: &str, params: BTreeMap<String, String>) -> Response {
    for required in ["LifecycleHookName", "AutoScalingGroupName"] {
        if params.get(required).is_none_or(|v| v.is_empty()) {
            return query_error(
                Some(Service::AutoScaling),
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
        return query_error(
            Some(Service::AutoScaling),
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
            return query_error(
                Some(Service::AutoScaling),
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
            "<{action}Response xmlns=\"{AUTOSCALING_XMLNS}\"><{action}Result/><ResponseMetadata>\
             <RequestId>{id}</RequestId></ResponseMetadata></{action}Response>"
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
