//! A small, faithful IMDSv2 (EC2 instance metadata service) emulator on a
//! free loopback port, in-process. Point a spawned `berth` at it with
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` (see [`Imds::env`]).
//!
//! Behaviour (IMDSv2 only, like an instance with `HttpTokens=required`):
//!
//! * `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds`
//!   (an integer 1–21600, else 400) and no `X-Forwarded-For` (else 403); it
//!   answers a random token and echoes the TTL header.
//! * Every `GET` needs a valid, unexpired `X-aws-ec2-metadata-token`, else
//!   401 (also when the header is missing: there is no IMDSv1 fallback).
//! * Paths: `/latest/meta-data/instance-id`, `.../instance-type`
//!   (`t3.micro`), `.../placement/region`, `.../placement/availability-zone`,
//!   `.../tags/instance` (newline-separated keys) and
//!   `.../tags/instance/KEY` (both 404 unless instance-metadata tags are
//!   enabled), `.../autoscaling/target-lifecycle-state` (default
//!   `InService`), `.../spot/instance-action` (404 unless set),
//!   `/latest/dynamic/instance-identity/document` (JSON, account
//!   `123456789012`). `.../iam/security-credentials/` is 404, so the SDK
//!   falls back to the environment's credentials. Anything else is 404;
//!   methods other than GET/PUT are 405.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::http_server::{HttpServer, Request, Response};

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const META: &str = "/latest/meta-data";
/// Largest token TTL IMDS accepts (6 hours).
const MAX_TTL_SECS: u64 = 21600;

/// What the emulated instance looks like at start.
#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// `instance-id`, e.g. one of [`super::Moto::create_group`]'s ids.
    pub instance_id: String,
    /// `placement/region`, e.g. `us-east-1`.
    pub region: String,
    /// `placement/availability-zone`, e.g. `us-east-1a`.
    pub az: String,
    /// Instance tags served under `tags/instance` when enabled.
    pub tags: BTreeMap<String, String>,
    /// Whether instance-metadata tags are enabled (`InstanceMetadataTags`).
    pub tags_enabled: bool,
}

impl Default for ImdsConfig {
    /// `i-0123456789abcdef0` in `us-east-1a`, no tags, tags disabled.
    fn default() -> Self {
        ImdsConfig {
            instance_id: "i-0123456789abcdef0".into(),
            region: "us-east-1".into(),
            az: "us-east-1a".into(),
            tags: BTreeMap::new(),
            tags_enabled: false,
        }
    }
}

struct State {
    config: ImdsConfig,
    target_lifecycle_state: String,
    spot_action: Option<String>,
    tokens: HashMap<String, Instant>,
    requests_without_token: usize,
    rejected_tokens: usize,
    token_puts: usize,
    gets: HashMap<String, usize>,
}

/// A running IMDSv2 emulator; see the module docs. All setters may be called
/// from the test thread while clients use it. Dropping it stops it.
pub struct Imds {
    state: Arc<Mutex<State>>,
    server: HttpServer,
}

impl Imds {
    /// Starts an emulator for the instance described by `config` on a free
    /// port of 127.0.0.1. Panics if it cannot listen.
    pub fn start(config: ImdsConfig) -> Imds {
        let state = Arc::new(Mutex::new(State {
            config,
            target_lifecycle_state: "InService".into(),
            spot_action: None,
            tokens: HashMap::new(),
            requests_without_token: 0,
            rejected_tokens: 0,
            token_puts: 0,
            gets: HashMap::new(),
        }));
        let handler_state = state.clone();
        let server = HttpServer::start(
            "imds",
            Arc::new(move |req: &Request| handle(&handler_state, req)),
        );
        Imds { state, server }
    }

    /// `http://127.0.0.1:PORT`, the value for
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT` or the SDK IMDS client's `endpoint`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The port the emulator listens on.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Environment for a spawned `berth`: `AWS_EC2_METADATA_SERVICE_ENDPOINT`
    /// set to [`Imds::url`]. (Make sure `AWS_EC2_METADATA_DISABLED` is unset.)
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), self.url())]
    }

    /// Sets what `autoscaling/target-lifecycle-state` answers, e.g.
    /// `Terminated` when the group is about to terminate the instance.
    pub fn set_target_lifecycle_state(&self, state: &str) {
        self.lock().target_lifecycle_state = state.to_string();
    }

    /// Sets the JSON body of `spot/instance-action`, e.g.
    /// `{"action":"terminate","time":"2026-01-01T00:00:00Z"}`; `None` makes
    /// it 404 again (no interruption scheduled).
    pub fn set_spot_action(&self, action: Option<&str>) {
        self.lock().spot_action = action.map(str::to_string);
    }

    /// Enables or disables instance-metadata tags (404 while disabled).
    pub fn set_tags_enabled(&self, enabled: bool) {
        self.lock().config.tags_enabled = enabled;
    }

    /// Adds or replaces the instance tag `key`.
    pub fn set_tag(&self, key: &str, value: &str) {
        self.lock()
            .config
            .tags
            .insert(key.to_string(), value.to_string());
    }

    /// Removes the instance tag `key` (no-op if absent).
    pub fn remove_tag(&self, key: &str) {
        self.lock().config.tags.remove(key);
    }

    /// Revokes every token handed out so far: GETs with one of them get 401.
    /// Note that the Rust SDK's IMDS client does not drop its cached token
    /// on a 401 (it retries with the same token and fails), so this is a
    /// fault knob rather than a way to force a token refresh.
    pub fn expire_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// How many GETs arrived without an `X-aws-ec2-metadata-token` header
    /// (IMDSv1-style requests; all were answered 401).
    pub fn requests_without_token(&self) -> usize {
        self.lock().requests_without_token
    }

    /// How many GETs carried a token that was unknown or expired (401).
    pub fn rejected_tokens(&self) -> usize {
        self.lock().rejected_tokens
    }

    /// How many `PUT /latest/api/token` requests arrived (valid or not).
    pub fn token_puts(&self) -> usize {
        self.lock().token_puts
    }

    /// How many GETs of exactly `path` (e.g.
    /// `/latest/meta-data/spot/instance-action`) arrived, whatever the answer.
    pub fn gets(&self, path: &str) -> usize {
        self.lock().gets.get(path).copied().unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
    Response::new(status, "text/plain", body).with_header("Server", "EC2ws")
}

fn not_found() -> Response {
    text(404, "Not Found")
}

fn handle(state: &Mutex<State>, req: &Request) -> Response {
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    let path = req.path();
    match req.method.as_str() {
        "PUT" if path == TOKEN_PATH => {
            st.token_puts += 1;
            if req.header("x-forwarded-for").is_some() {
                return text(403, "Forbidden");
            }
            let Some(ttl_text) = req.header(TTL_HEADER) else {
                return text(400, "Bad Request: missing TTL header");
            };
            let ttl = match ttl_text.parse::<u64>() {
                Ok(t) if (1..=MAX_TTL_SECS).contains(&t) => t,
                _ => return text(400, "Bad Request: invalid TTL"),
            };
            let token = new_token();
            let now = Instant::now();
            st.tokens.retain(|_, expiry| *expiry > now);
            st.tokens
                .insert(token.clone(), now + Duration::from_secs(ttl));
            text(200, token).with_header(TTL_HEADER, &ttl.to_string())
        }
        "GET" => {
            *st.gets.entry(path.to_string()).or_default() += 1;
            let Some(token) = req.header(TOKEN_HEADER) else {
                st.requests_without_token += 1;
                return text(401, "Unauthorized");
            };
            let valid = st
                .tokens
                .get(token)
                .is_some_and(|expiry| *expiry > Instant::now());
            if !valid {
                st.rejected_tokens += 1;
                return text(401, "Unauthorized");
            }
            match metadata(&st, path) {
                Some((content_type, body)) => Response::new(200, content_type, body),
                None => not_found(),
            }
        }
        _ => text(405, "Method Not Allowed"),
    }
}

/// The answer for a GET of `path` with a valid token, or `None` for 404.
fn metadata(st: &State, path: &str) -> Option<(&'static str, String)> {
    let cfg = &st.config;
    if path == "/latest/dynamic/instance-identity/document" {
        let doc = serde_json::json!({
            "accountId": "123456789012",
            "architecture": "x86_64",
            "availabilityZone": cfg.az,
            "imageId": "ami-12c6146b",
            "instanceId": cfg.instance_id,
            "instanceType": "t3.micro",
            "pendingTime": "2026-01-01T00:00:00Z",
            "privateIp": "10.0.0.10",
            "region": cfg.region,
            "version": "2017-09-30",
        });
        return Some((
            "application/json",
            serde_json::to_string_pretty(&doc).expect("serialize identity document"),
        ));
    }
    let rel = path.strip_prefix(META)?.trim_end_matches('/');
    let plain = |s: &str| Some(("text/plain", s.to_string()));
    match rel {
        "/instance-id" => plain(&cfg.instance_id),
        "/instance-type" => plain("t3.micro"),
        "/placement/region" => plain(&cfg.region),
        "/placement/availability-zone" => plain(&cfg.az),
        "/autoscaling/target-lifecycle-state" => plain(&st.target_lifecycle_state),
        "/spot/instance-action" => st
            .spot_action
            .as_deref()
            .map(|a| ("application/json", a.to_string())),
        "/tags/instance" if cfg.tags_enabled => {
            let keys: Vec<&str> = cfg.tags.keys().map(String::as_str).collect();
            plain(&keys.join("\n"))
        }
        _ => {
            let key = rel.strip_prefix("/tags/instance/")?;
            if !cfg.tags_enabled {
                return None;
            }
            cfg.tags.get(key).map(|v| ("text/plain", v.clone()))
        }
    }
}

/// A random token in the shape of a real one (56 base64 characters).
fn new_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut token = String::from("AQAEA");
    while token.len() < 54 {
        token.push(ALPHABET[fastrand::usize(..ALPHABET.len())] as char);
    }
    token.push_str("==");
    token
}
