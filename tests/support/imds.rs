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
//!   `.../tags/instance/KEY` (the value; both 404 unless instance-metadata
//!   tags are enabled, as with `InstanceMetadataTags=disabled`; an absent
//!   key is 404), `.../autoscaling/target-lifecycle-state` (default
//!   `InService`), `.../spot/instance-action` (404 unless set),
//!   `/latest/dynamic/instance-identity/document` (JSON, account
//!   `123456789012`). `.../iam/security-credentials/` is 404, so the SDK
//!   falls back to the environment's credentials. Anything else is 404;
//!   methods other than GET/PUT are 405.
//!
//! Instance tags come from [`ImdsConfig::tags`] (changed by
//! [`Imds::set_tag`]), or, with [`ImdsConfig::live_tags_from`], from a moto
//! server at every request under `tags/instance`: AWS documents that tags
//! added or removed while the instance runs show in IMDS, so a `CreateTags`
//! on moto (e.g. `berth:nudge`) is seen by the next GET, with no restart.
//! The read is a raw `DescribeTags` to moto itself, never through a
//! [`super::LifecycleProxy`], so it neither counts as an agent's call nor
//! suffers the proxy's faults (IMDS does not depend on the EC2 API). Should
//! moto not answer within [`LIVE_TAGS_TIMEOUT`], the last tags read are
//! served (500 if there are none yet), and the failure is counted
//! ([`Imds::live_tag_failures`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::http_server::{HttpServer, Request, Response};
use super::moto::instance_tags_raw;

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const META: &str = "/latest/meta-data";
/// Largest token TTL IMDS accepts (6 hours).
const MAX_TTL_SECS: u64 = 21600;
/// Deadline for reading live tags from moto: under the 1 s per-attempt
/// timeout of the SDK's IMDS client, so a slow moto costs staleness, not a
/// failed metadata read.
pub const LIVE_TAGS_TIMEOUT: Duration = Duration::from_millis(700);

/// What the emulated instance looks like at start.
#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// `instance-id`, e.g. one of [`super::Moto::create_group`]'s ids.
    pub instance_id: String,
    /// `placement/region`, e.g. `us-east-1`.
    pub region: String,
    /// `placement/availability-zone`, e.g. `us-east-1a`.
    pub az: String,
    /// Instance tags served under `tags/instance` when enabled. With
    /// [`ImdsConfig::live_tags_from`], moto's tags are laid over these: put
    /// here what moto may not hold but AWS serves, such as
    /// `aws:autoscaling:groupName`.
    pub tags: BTreeMap<String, String>,
    /// Whether instance-metadata tags are enabled (`InstanceMetadataTags`).
    pub tags_enabled: bool,
    /// A moto server (`http://127.0.0.1:PORT`, i.e. [`super::Moto::url`])
    /// whose current EC2 tags of `instance_id` are served, read at every
    /// request; `None` serves [`ImdsConfig::tags`] alone.
    pub live_tags_from: Option<String>,
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
            live_tags_from: None,
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
    /// moto's tags of the instance at the last successful live read.
    live_tags: Option<BTreeMap<String, String>>,
    /// Live reads that failed, and the last failure.
    live_tag_failures: usize,
    last_live_tag_failure: Option<String>,
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
            live_tags: None,
            live_tag_failures: 0,
            last_live_tag_failure: None,
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

    /// Adds or replaces the instance tag `key` in [`ImdsConfig::tags`] (with
    /// live tags, moto's tag of the same key wins).
    pub fn set_tag(&self, key: &str, value: &str) {
        self.lock()
            .config
            .tags
            .insert(key.to_string(), value.to_string());
    }

    /// Removes the instance tag `key` from [`ImdsConfig::tags`] (no-op if
    /// absent; with live tags, delete it on moto instead).
    pub fn remove_tag(&self, key: &str) {
        self.lock().config.tags.remove(key);
    }

    /// How many live tag reads from moto failed (and were answered from the
    /// last tags read, or 500).
    pub fn live_tag_failures(&self) -> usize {
        self.lock().live_tag_failures
    }

    /// The last failed live tag read, if any.
    pub fn last_live_tag_failure(&self) -> Option<String> {
        self.lock().last_live_tag_failure.clone()
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
            let Some(tag_path) = tag_path(path) else {
                return answer(metadata(&st, path));
            };
            if !st.config.tags_enabled {
                return not_found();
            }
            let Some(moto_url) = st.config.live_tags_from.clone() else {
                return answer(tags_answer(&st.config.tags, tag_path));
            };
            let id = st.config.instance_id.clone();
            // Never hold the lock across a call to moto.
            drop(st);
            let read = instance_tags_raw(
                moto_url.trim_start_matches("http://").trim_end_matches('/'),
                &id,
                LIVE_TAGS_TIMEOUT,
            );
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            match read {
                Ok(tags) => st.live_tags = Some(tags),
                Err(e) => {
                    st.live_tag_failures += 1;
                    st.last_live_tag_failure = Some(e);
                }
            }
            let Some(live) = &st.live_tags else {
                return text(500, "Internal Server Error");
            };
            let mut tags = st.config.tags.clone();
            tags.extend(live.iter().map(|(k, v)| (k.clone(), v.clone())));
            answer(tags_answer(&tags, tag_path))
        }
        _ => text(405, "Method Not Allowed"),
    }
}

fn answer(found: Option<(&'static str, String)>) -> Response {
    match found {
        Some((content_type, body)) => Response::new(200, content_type, body),
        None => not_found(),
    }
}

/// For a path under `tags/instance`: `Some(None)` for the key list,
/// `Some(Some(key))` for one tag; `None` for any other path.
fn tag_path(path: &str) -> Option<Option<&str>> {
    let rel = path.strip_prefix(META)?.trim_end_matches('/');
    if rel == "/tags/instance" {
        return Some(None);
    }
    rel.strip_prefix("/tags/instance/").map(Some)
}

/// The answer for a tag path (see [`tag_path`]) given the instance's tags.
fn tags_answer(
    tags: &BTreeMap<String, String>,
    key: Option<&str>,
) -> Option<(&'static str, String)> {
    match key {
        None => {
            let keys: Vec<&str> = tags.keys().map(String::as_str).collect();
            Some(("text/plain", keys.join("\n")))
        }
        Some(key) => tags.get(key).map(|v| ("text/plain", v.clone())),
    }
}

/// The answer for a GET of `path` (not a tag path) with a valid token, or
/// `None` for 404.
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
        _ => None,
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
