//! The fleet manifest: agent settings plus, per cluster, the fixed container set.
//!
//! Parsing happens in two steps. Serde turns the TOML into typed structs
//! (`deny_unknown_fields` everywhere, so a misspelt key is an error, and the
//! error names the key's path). Then [`Manifest::validate`] checks what types
//! cannot express and returns *every* problem at once, each with its field
//! path, e.g. `clusters.web.containers[1].healthcheck.interval: must be > 0`.
//! Between the two, a cluster's `compose` file is read into its containers
//! ([`crate::compose`]); problems in those are named by their Compose keys.
//!
//! # Values are not quoted
//!
//! The manifest holds secrets (environment values), so no message about it
//! quotes the document: a syntax or type error gives the field path, the
//! line and the column, and a message with the offending value left out
//! ([`without_values`]); output shows environment values as [`REDACTED`]
//! ([`ContainerSpec::redacted`]).
//!
//! See `docs/manifest.md` for the format.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Default location of the manifest, baked into the machine image.
pub const DEFAULT_MANIFEST_PATH: &str = "/etc/berth/berth.toml";
/// Default data directory, where the pin lives.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/berth";
/// Default loopback address of the status API.
pub const DEFAULT_STATUS_ADDR: &str = "127.0.0.1:7878";
/// The placeholder an image reference carries for the component's version.
pub const VERSION_PLACEHOLDER: &str = "{version}";
/// What output shows instead of an environment value.
pub const REDACTED: &str = "<redacted>";

/// The one place the `{version}` template is filled: `reg/web:{version}` → `reg/web:1.4.2`.
pub fn fill_version(image_template: &str, version: &str) -> String {
    image_template.replace(VERSION_PLACEHOLDER, version)
}

/// A problem found in a manifest, with the path of the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted field path, e.g. `clusters.web.containers[0].image`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {field}: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: {} problem(s):\n{}", .errors.len(), render_errors(.errors))]
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
}

fn render_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A duration written as text (`"10s"`, `"1m 30s"`, `"500ms"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Dur(pub Duration);

impl From<Dur> for String {
    fn from(d: Dur) -> String {
        humantime::format_duration(d.0).to_string()
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration: {} (e.g. \"10s\", \"1m\", \"500ms\")",
                duration_problem(&e)
            ))
        })
    }
}

/// What is wrong with a duration, without quoting it (humantime's own
/// message quotes the unit, or the number).
fn duration_problem(e: &humantime::DurationError) -> String {
    match e {
        humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
            "a number needs a time unit".to_string()
        }
        humantime::DurationError::UnknownUnit { start, .. } => {
            format!("unknown time unit at {start}")
        }
        other => other.to_string(),
    }
}

/// A size in bytes written as text (`"256MiB"`, `"1G"`, `"512k"`) or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bytes(pub u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Bytes(n)),
            Raw::Text(s) => parse_bytes(&s).map(Bytes).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"256MiB"`, `"1G"`, `"100m"`, `"4096"` into bytes (binary multiples for both `M` and `MiB`, as Docker does).
/// Messages do not quote `s` (see the module docs).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "invalid size: a number first (e.g. \"256MiB\", \"1G\")".to_string())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err("invalid size unit (use k, M, G, KiB, MiB, GiB)".to_string()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "size is too large".to_string())
}

/// The whole manifest file.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub agent: AgentSettings,
    #[serde(default)]
    pub clusters: BTreeMap<String, Cluster>,
}

/// How the agent itself behaves on this machine image.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// Where the pin is kept. Must survive agent restarts, not instance replacement.
    pub data_dir: PathBuf,
    /// Loopback address of the status API (`/healthz`, `/status`).
    pub status_addr: String,
    /// Allow a `status_addr` that is not loopback. The API has no
    /// authentication: anyone who can reach it reads the status and can tie
    /// up its connections.
    pub status_allow_remote: bool,
    /// `text` (default) or `json` logs.
    pub log_format: LogFormat,
    /// Prefix of container names (`<namespace>-<component>`) and value of the
    /// `berth.namespace` label. Lets several agents share one engine (tests, demos).
    pub namespace: String,
    /// How often the full state is compared with the engine, as a safety net
    /// beside the event stream.
    pub resync_interval: Dur,
    /// How often the local-mode file is re-read.
    pub local_poll_interval: Dur,
    /// Attempts per image pull before the pull is reported failed (and retried later).
    pub pull_attempts: u32,
    /// EC2: the least wait after a failed read of the group (± jitter).
    /// Successful reads follow the rollout schedule ([`crate::rollout::next_poll`]).
    pub group_poll_interval: Dur,
    /// EC2: how often IMDS is asked whether the group is terminating this
    /// instance (`autoscaling/target-lifecycle-state`) or a spot interruption
    /// notice was issued.
    pub lifecycle_poll_interval: Dur,
    /// EC2: with a launch lifecycle hook, `ABANDON` it if the containers are
    /// not all running and healthy within this time.
    pub launch_timeout: Dur,
    /// EC2: mark the instance `Unhealthy` in its group once a component has
    /// been `failed` this long; `"off"` never does.
    pub unhealthy_after: OffOr,
}

/// A duration, or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct OffOr(pub Option<Duration>);

impl From<OffOr> for String {
    fn from(d: OffOr) -> String {
        d.0.map_or("off".to_string(), |d| {
            humantime::format_duration(d).to_string()
        })
    }
}

impl<'de> Deserialize<'de> for OffOr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "off" {
            return Ok(OffOr(None));
        }
        humantime::parse_duration(s.trim())
            .map(|d| OffOr(Some(d)))
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration: {} (or \"off\")",
                    duration_problem(&e)
                ))
            })
    }
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            status_addr: DEFAULT_STATUS_ADDR.to_string(),
            status_allow_remote: false,
            log_format: LogFormat::Text,
            namespace: "berth".to_string(),
            resync_interval: Dur(Duration::from_secs(30)),
            local_poll_interval: Dur(Duration::from_secs(2)),
            pull_attempts: 5,
            group_poll_interval: Dur(Duration::from_secs(30)),
            lifecycle_poll_interval: Dur(Duration::from_secs(5)),
            launch_timeout: Dur(Duration::from_secs(15 * 60)),
            unhealthy_after: OffOr(Some(Duration::from_secs(60))),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One cluster's fixed container set: `containers`, or the services of a
/// Compose file (`compose`, read when the manifest is loaded).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    #[serde(default)]
    pub containers: Vec<ContainerSpec>,
    /// A Compose file, relative to the manifest's directory
    /// ([`crate::compose`]); when set, `containers` are its services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose: Option<PathBuf>,
    /// What reading `compose` gave (unset without it).
    #[serde(skip)]
    from_compose: Option<FromCompose>,
}

impl Cluster {
    /// A cluster of a Compose file's services (`berth import compose`),
    /// validated as `compose = "<file>"` would be.
    pub fn from_compose(mapped: crate::compose::Mapped) -> Cluster {
        Cluster {
            containers: mapped.containers,
            compose: None,
            from_compose: Some(FromCompose::Mapped(mapped.source)),
        }
    }
}

/// The outcome of reading a cluster's Compose file.
#[derive(Debug, Clone)]
enum FromCompose {
    /// `containers` are its services; problems found in them are named by
    /// their Compose keys.
    Mapped(crate::compose::Source),
    /// It could not be read, or the cluster also has `containers` (the
    /// problem is reported); nothing more to check.
    Failed,
}

/// How a container's image registry is authenticated (`registry_auth` in the manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryAuthMode {
    /// ECR tokens for ECR hosts (`<account>.dkr.ecr.<region>.amazonaws.com`), else docker's config.json.
    #[default]
    Auto,
    /// ECR tokens whatever the host (ECR behind another name).
    Ecr,
    /// docker's config.json only.
    Docker,
    /// Anonymous.
    None,
}

/// Image pull policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull only when the image is not present locally (default).
    #[default]
    Missing,
    /// Pull at first boot even when the tag is present locally.
    Always,
}

/// One component: the template of one container.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    pub name: String,
    /// Image reference with a `{version}` placeholder in its tag.
    pub image: String,
    #[serde(default)]
    pub pull: PullPolicy,
    /// Where pull credentials come from: `auto` (ECR tokens for ECR hosts,
    /// else docker's config.json), `ecr`, `docker`, `none`.
    #[serde(default, skip_serializing_if = "is_default_auth")]
    pub registry_auth: RegistryAuthMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Environment names → secret references (`ssm:/prod/db/password`,
    /// `secretsmanager:<name or ARN>[#<json key>]`), resolved when the
    /// container is created ([`crate::secrets`]). The pin keeps the
    /// references, never the values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// `"8080:80"`, `"127.0.0.1:9000:9000/udp"`, `"80"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// `"/host/path:/container/path[:ro]"` or `"volume-name:/path[:ro]"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// `bridge` (default), `host`, `none`, `container:<name>` or a network name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default = "default_grace", skip_serializing_if = "is_default_grace")]
    pub stop_grace_period: Dur,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default_restart")]
    pub restart: RestartPolicy,
}

impl ContainerSpec {
    /// Whether the container has a healthcheck of its own to wait for
    /// (`["NONE"]` disables the image's instead).
    pub fn has_healthcheck(&self) -> bool {
        self.healthcheck.as_ref().is_some_and(|h| !h.test.is_none())
    }

    /// This spec for output: every environment value replaced by
    /// [`REDACTED`], the names kept. Environment values are secrets; only
    /// the engine and the pin get them.
    pub fn redacted(&self) -> ContainerSpec {
        let mut spec = self.clone();
        for value in spec.env.values_mut() {
            *value = REDACTED.to_string();
        }
        spec
    }
}

fn is_default_auth(m: &RegistryAuthMode) -> bool {
    *m == RegistryAuthMode::Auto
}
pub(crate) fn default_grace() -> Dur {
    Dur(Duration::from_secs(10))
}
fn is_default_grace(d: &Dur) -> bool {
    *d == default_grace()
}
fn is_default_restart(r: &RestartPolicy) -> bool {
    *r == RestartPolicy::default()
}

/// A healthcheck, as Docker runs it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    /// `["CMD", "prog", "arg"]`, `["CMD-SHELL", "cmd"]`, or a string run by the shell.
    pub test: HealthTest,
    #[serde(default = "default_hc_interval")]
    pub interval: Dur,
    #[serde(default = "default_hc_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_hc_retries")]
    pub retries: u32,
    #[serde(default = "default_hc_start")]
    pub start_period: Dur,
}

pub(crate) fn default_hc_interval() -> Dur {
    Dur(Duration::from_secs(30))
}
pub(crate) fn default_hc_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
pub(crate) fn default_hc_retries() -> u32 {
    3
}
pub(crate) fn default_hc_start() -> Dur {
    Dur(Duration::ZERO)
}

/// The healthcheck command: a shell string or an exec array.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum HealthTest {
    Shell(String),
    Exec(Vec<String>),
}

impl HealthTest {
    /// `["NONE"]`: no healthcheck, not even the image's.
    pub fn is_none(&self) -> bool {
        matches!(self, HealthTest::Exec(v) if v.len() == 1 && v[0] == "NONE")
    }

    /// The form Docker's API takes (`["CMD-SHELL", s]` for a string).
    pub fn to_docker(&self) -> Vec<String> {
        match self {
            HealthTest::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
            HealthTest::Exec(v) => v.clone(),
        }
    }
}

/// Log driver and its options.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub driver: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// When and how fast a dead or unhealthy container is restarted.
///
/// The first failure is restarted at once; the n-th consecutive failure after
/// that waits `initial_delay * 2^(n-2)`, capped at `max_delay`, with ±10 %
/// jitter. A run of `stable_after` resets the count. After `failure_budget`
/// consecutive failures the component is reported `failed` (and still retried
/// every `max_delay`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RestartPolicy {
    pub initial_delay: Dur,
    pub max_delay: Dur,
    pub stable_after: Dur,
    pub failure_budget: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_delay: Dur(Duration::from_secs(1)),
            max_delay: Dur(Duration::from_secs(30)),
            stable_after: Dur(Duration::from_secs(10)),
            failure_budget: 5,
        }
    }
}

impl Manifest {
    /// Reads, parses and validates a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(&text, path)
    }

    /// Parses and validates manifest text; `path` names it in messages, and
    /// its directory is where a cluster's `compose` file is found.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let mut manifest: Manifest =
            parse_toml(text).map_err(|(field, message)| ManifestError::Parse {
                path: path.to_path_buf(),
                field,
                message,
            })?;
        let mut errors = manifest.read_compose(&crate::compose::absolute_dir(path));
        errors.extend(manifest.validate());
        if errors.is_empty() {
            Ok(manifest)
        } else {
            Err(ManifestError::Invalid {
                path: path.to_path_buf(),
                errors,
            })
        }
    }

    /// Reads the Compose file of every cluster that names one into its
    /// containers; returns the problems (a cluster with both `containers`
    /// and `compose`, a file that cannot be read, keys berth does not map).
    fn read_compose(&mut self, dir: &Path) -> Vec<FieldError> {
        let mut errs = Errors::default();
        for (cname, cluster) in &mut self.clusters {
            let Some(file) = &cluster.compose else {
                continue;
            };
            let cpath = format!("clusters.{cname}");
            cluster.from_compose = Some(FromCompose::Failed);
            if !cluster.containers.is_empty() {
                errs.push(&cpath, "has both containers and compose: give one of them");
                continue;
            }
            let full = dir.join(file);
            let text = match std::fs::read_to_string(&full) {
                Ok(t) => t,
                Err(e) => {
                    errs.push(
                        format!("{cpath}.compose"),
                        format!("cannot read {}: {e}", file.display()),
                    );
                    continue;
                }
            };
            let base = crate::compose::absolute_dir(&full);
            let read = |p: &Path| std::fs::read_to_string(p);
            let (mapped, problems) =
                crate::compose::load(&text, &file.display().to_string(), &base, &read);
            cluster.containers = mapped.containers;
            cluster.from_compose = Some(FromCompose::Mapped(mapped.source));
            errs.0.extend(problems);
        }
        errs.0
    }

    /// Every semantic problem, each with its field path. Empty means valid.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errs = Errors::default();
        let a = &self.agent;
        match a.status_addr.parse::<SocketAddr>() {
            Err(_) => errs.push(
                "agent.status_addr",
                format!(
                    "{:?} is not an address like \"127.0.0.1:7878\"",
                    a.status_addr
                ),
            ),
            Ok(addr) => {
                if let Err(m) = crate::status::check_addr(addr, a.status_allow_remote) {
                    errs.push("agent.status_addr", m);
                }
            }
        }
        if !is_name(&a.namespace) {
            errs.push("agent.namespace", name_rule(&a.namespace));
        }
        if a.resync_interval.0 < Duration::from_secs(1) {
            errs.push("agent.resync_interval", "must be at least 1s");
        }
        if a.local_poll_interval.0 < Duration::from_millis(100) {
            errs.push("agent.local_poll_interval", "must be at least 100ms");
        }
        if a.group_poll_interval.0 < Duration::from_secs(1) {
            errs.push("agent.group_poll_interval", "must be at least 1s");
        }
        if a.lifecycle_poll_interval.0 < Duration::from_millis(100) {
            errs.push("agent.lifecycle_poll_interval", "must be at least 100ms");
        }
        if a.pull_attempts == 0 {
            errs.push("agent.pull_attempts", "must be at least 1");
        }
        if self.clusters.is_empty() {
            errs.push(
                "clusters",
                "no cluster defined: add [clusters.<name>] with at least one container",
            );
        }
        for (cname, cluster) in &self.clusters {
            let cpath = format!("clusters.{cname}");
            if !is_name(cname) {
                errs.push(&cpath, name_rule(cname));
            }
            match &cluster.from_compose {
                None => validate_cluster(cluster, &cpath, &mut errs),
                Some(FromCompose::Failed) => {}
                Some(FromCompose::Mapped(source)) => {
                    let mut found = Errors::default();
                    validate_cluster(cluster, &cpath, &mut found);
                    errs.0.extend(source.rewrite(&cpath, found.0));
                }
            }
        }
        errs.0
    }

    /// The cluster named `name`, if the manifest defines it.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.get(name)
    }
}

/// Deserializes TOML, returning the failing field's path and a message
/// that never quotes the document: `line L, column C: <what is wrong>`,
/// without the value (see the module docs).
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<T, (String, String)> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| ("(syntax)".to_string(), describe(text, &e)))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "(top level)".to_string()
        } else {
            path
        };
        (path, describe(text, e.inner()))
    })
}

/// Where and what, from a TOML error: its message and span only, never its
/// `Display`, which quotes the line.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let what = without_values(&one_line(e.message()));
    match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("line {line}, column {column}: {what}")
        }
        None => what,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A deserializer's message with the value it quotes left out.
///
/// Serde's own messages quote the offending value: `invalid type: string
/// "…", expected a map`, `invalid value: integer `5`, expected …`,
/// `unknown variant `…`, expected one of …`. They become `invalid type:
/// string, expected a map`, `unknown variant, expected one of …`. What
/// follows `, expected` comes from berth's types, not from the document, and
/// stays. Names stay too (`unknown field `x``, `missing field `x``): they
/// are keys, not values. berth's own deserializers and TOML's syntax
/// messages never quote the document; serde_json's messages (the pin) have
/// the same forms as the ones above.
pub fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            // `rest` is `<kind>[ <quoted value>], expected <what>`.
            let (unexpected, expected) =
                rest.split_at(rest.rfind(", expected ").unwrap_or(rest.len()));
            let kind = unexpected
                .split(['"', '`'])
                .next()
                .unwrap_or_default()
                .trim_end();
            return format!("{prefix}{kind}{expected}");
        }
    }
    if message.starts_with("unknown variant `") {
        let rest = &message["unknown variant ".len()..];
        let tail = rest
            .rfind(", expected ")
            .or_else(|| rest.rfind(", there are no variants"))
            .map_or("", |i| &rest[i..]);
        return format!("unknown variant{tail}");
    }
    message.to_string()
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Names of clusters, components and namespaces: `[a-z0-9][a-z0-9_-]*`, at most 63 characters.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn name_rule(s: &str) -> String {
    format!(
        "{s:?} is not a valid name (lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 63 characters)"
    )
}

fn validate_cluster(cluster: &Cluster, cpath: &str, errs: &mut Errors) {
    if cluster.containers.is_empty() {
        errs.push(
            format!("{cpath}.containers"),
            "a cluster needs at least one container (or a compose file)",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, c) in cluster.containers.iter().enumerate() {
        let p = format!("{cpath}.containers[{i}]");
        if !is_name(&c.name) {
            errs.push(format!("{p}.name"), name_rule(&c.name));
        } else if !seen.insert(c.name.as_str()) {
            errs.push(
                format!("{p}.name"),
                format!("duplicate container name {:?}", c.name),
            );
        }
        validate_container(c, &p, errs);
    }
    let names: BTreeSet<&str> = cluster.containers.iter().map(|c| c.name.as_str()).collect();
    for (i, c) in cluster.containers.iter().enumerate() {
        for (j, d) in c.depends_on.iter().enumerate() {
            let p = format!("{cpath}.containers[{i}].depends_on[{j}]");
            if d == &c.name {
                errs.push(p, "a container cannot depend on itself");
            } else if !names.contains(d.as_str()) {
                errs.push(
                    p,
                    format!(
                        "unknown container {d:?} (known: {})",
                        names.iter().copied().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
    }
    if let Err(cycle) = start_order(&cluster.containers) {
        errs.push(
            format!("{cpath}.containers"),
            format!("depends_on has a cycle through {}", cycle.join(" -> ")),
        );
    }
}

fn validate_container(c: &ContainerSpec, p: &str, errs: &mut Errors) {
    if let Err(m) = check_image_template(&c.image) {
        errs.push(format!("{p}.image"), m);
    }
    for k in c.env.keys() {
        if k.is_empty() || k.contains('=') {
            errs.push(
                format!("{p}.env.{k}"),
                "environment names must be non-empty and contain no '='",
            );
        }
    }
    for (k, reference) in &c.secrets {
        let path = format!("{p}.secrets.{k}");
        if k.is_empty() || k.contains('=') {
            errs.push(
                &path,
                "environment names must be non-empty and contain no '='",
            );
        }
        if c.env.contains_key(k) {
            errs.push(
                &path,
                format!("{k} is also in env: set each name once, in env or in secrets"),
            );
        }
        if let Err(m) = crate::secrets::SecretRef::parse(reference) {
            errs.push(&path, m);
        }
    }
    for (i, port) in c.ports.iter().enumerate() {
        if let Err(m) = parse_port(port) {
            errs.push(format!("{p}.ports[{i}]"), m);
        }
    }
    for (i, v) in c.volumes.iter().enumerate() {
        if let Err(m) = parse_volume(v) {
            errs.push(format!("{p}.volumes[{i}]"), m);
        }
    }
    if let Some(mode) = &c.network_mode {
        if mode.is_empty() || mode == "container:" {
            errs.push(
                format!("{p}.network_mode"),
                "must be bridge, host, none, container:<name> or a network name",
            );
        }
        if mode == "host" && !c.ports.is_empty() {
            errs.push(
                format!("{p}.ports"),
                "ports cannot be published with network_mode = \"host\"",
            );
        }
    }
    if let Some(u) = &c.user
        && (u.is_empty() || u.contains(char::is_whitespace))
    {
        errs.push(
            format!("{p}.user"),
            format!("{u:?} is not a user (\"name\", \"uid\" or \"uid:gid\")"),
        );
    }
    if let Some(hc) = &c.healthcheck {
        let hp = format!("{p}.healthcheck");
        match &hc.test {
            HealthTest::Shell(s) if s.trim().is_empty() => {
                errs.push(format!("{hp}.test"), "must not be empty")
            }
            HealthTest::Exec(v) => match v.first().map(String::as_str) {
                Some("CMD") if v.len() >= 2 => {}
                Some("CMD-SHELL") if v.len() == 2 => {}
                Some("NONE") if v.len() == 1 => {}
                _ => errs.push(
                    format!("{hp}.test"),
                    "must be a shell string, [\"CMD\", prog, args...], [\"CMD-SHELL\", command] or [\"NONE\"]",
                ),
            },
            _ => {}
        }
        if hc.interval.0 < Duration::from_millis(100) {
            errs.push(format!("{hp}.interval"), "must be at least 100ms");
        }
        if hc.timeout.0 < Duration::from_millis(100) {
            errs.push(format!("{hp}.timeout"), "must be at least 100ms");
        }
        if hc.retries == 0 {
            errs.push(format!("{hp}.retries"), "must be at least 1");
        }
    }
    if let Some(s) = &c.stop_signal
        && !is_signal(s)
    {
        errs.push(
            format!("{p}.stop_signal"),
            format!("{s:?} is not a signal name like \"SIGTERM\" or \"SIGQUIT\""),
        );
    }
    if let Some(m) = c.memory
        && m.0 < 6 * 1024 * 1024
    {
        errs.push(
            format!("{p}.memory"),
            "must be at least 6MiB (Docker's minimum)",
        );
    }
    if let Some(cpus) = c.cpus
        && !(cpus > 0.0 && cpus <= 1024.0)
    {
        errs.push(
            format!("{p}.cpus"),
            "must be a number of CPUs greater than 0, like 0.5 or 2",
        );
    }
    if let Some(l) = &c.log
        && l.driver.trim().is_empty()
    {
        errs.push(format!("{p}.log.driver"), "must not be empty");
    }
    let r = &c.restart;
    if r.initial_delay.0 > r.max_delay.0 {
        errs.push(
            format!("{p}.restart.initial_delay"),
            "must not exceed restart.max_delay",
        );
    }
    if r.max_delay.0.is_zero() {
        errs.push(format!("{p}.restart.max_delay"), "must be greater than 0");
    }
    if r.failure_budget == 0 {
        errs.push(format!("{p}.restart.failure_budget"), "must be at least 1");
    }
}

/// Checks an image template: a reference with exactly one `{version}`, in the tag.
pub fn check_image_template(image: &str) -> Result<(), String> {
    let n = image.matches(VERSION_PLACEHOLDER).count();
    if n != 1 {
        return Err(format!(
            "{image:?} must contain {VERSION_PLACEHOLDER} exactly once, as (part of) its tag, e.g. \"registry.example.com/web:{VERSION_PLACEHOLDER}\""
        ));
    }
    if image.contains('@') {
        return Err(format!(
            "{image:?}: digests are pinned by berth itself; write a tag with {VERSION_PLACEHOLDER}"
        ));
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag.contains(VERSION_PLACEHOLDER) => {}
        _ => {
            return Err(format!(
                "{image:?}: {VERSION_PLACEHOLDER} must be in the tag, after the last ':'"
            ));
        }
    }
    let probe = fill_version(image, "1.0.0");
    if probe
        .bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b"._-/:".contains(&b)))
        || probe.starts_with('/')
        || probe.contains("//")
    {
        return Err(format!("{image:?} is not a valid image reference"));
    }
    Ok(())
}

/// A published port: `(host_ip, host_port, container_port, proto)`.
pub type PortBinding = (Option<String>, Option<u16>, u16, String);

/// Parses `"80"`, `"8080:80"`, `"127.0.0.1:8080:80/udp"`.
pub fn parse_port(s: &str) -> Result<PortBinding, String> {
    let bad = || {
        format!(
            "{s:?} is not a port mapping like \"8080:80\", \"127.0.0.1:9000:9000/udp\" or \"80\""
        )
    };
    let (rest, proto) = match s.split_once('/') {
        Some((r, p)) if p == "tcp" || p == "udp" || p == "sctp" => (r, p.to_string()),
        Some(_) => return Err(bad()),
        None => (s, "tcp".to_string()),
    };
    let port = |x: &str| x.parse::<u16>().ok().filter(|p| *p > 0);
    let parts: Vec<&str> = rest.split(':').collect();
    match parts.as_slice() {
        [c] => Ok((None, None, port(c).ok_or_else(bad)?, proto)),
        [h, c] => Ok((
            None,
            Some(port(h).ok_or_else(bad)?),
            port(c).ok_or_else(bad)?,
            proto,
        )),
        [ip, h, c] => {
            ip.parse::<std::net::IpAddr>().map_err(|_| bad())?;
            Ok((
                Some(ip.to_string()),
                Some(port(h).ok_or_else(bad)?),
                port(c).ok_or_else(bad)?,
                proto,
            ))
        }
        _ => Err(bad()),
    }
}

/// Checks a volume: `"source:/target"` or `"source:/target:ro"`.
pub fn parse_volume(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = match parts.as_slice() {
        [src, dst] => !src.is_empty() && dst.starts_with('/'),
        [src, dst, mode] => {
            !src.is_empty()
                && dst.starts_with('/')
                && mode.split(',').all(|m| ["ro", "rw", "z", "Z"].contains(&m))
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a volume like \"/host/path:/in/container[:ro]\" or \"name:/in/container\""
        ))
    }
}

fn is_signal(s: &str) -> bool {
    const SIGNALS: &[&str] = &[
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    let name = s.strip_prefix("SIG").unwrap_or(s);
    SIGNALS.contains(&name) || s.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n))
}

/// Start order honouring `depends_on`: a list of waves, each wave's members
/// depending only on earlier waves. Members of one wave start in parallel.
/// Returns the names on a cycle if there is one.
pub fn start_order(containers: &[ContainerSpec]) -> Result<Vec<Vec<String>>, Vec<String>> {
    let known: BTreeSet<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut waves = Vec::new();
    while done.len() < containers.len() {
        let wave: Vec<String> = containers
            .iter()
            .filter(|c| !done.contains(&c.name))
            .filter(|c| {
                c.depends_on
                    .iter()
                    .all(|d| done.contains(d) || !known.contains(d.as_str()) || d == &c.name)
            })
            .map(|c| c.name.clone())
            .collect();
        if wave.is_empty() {
            let left: Vec<String> = containers
                .iter()
                .filter(|c| !done.contains(&c.name))
                .map(|c| c.name.clone())
                .collect();
            return Err(left);
        }
        done.extend(wave.iter().cloned());
        waves.push(wave);
    }
    Ok(waves)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(s, Path::new("berth.toml"))
    }

    const GOOD: &str = r#"
[agent]
namespace = "t1"

[clusters.web]
[[clusters.web.containers]]
name = "proxy"
image = "127.0.0.1:5000/proxy:{version}"
ports = ["127.0.0.1:8080:80"]

[[clusters.web.containers]]
name = "app"
image = "app:v{version}"
depends_on = ["proxy"]
memory = "64MiB"
cpus = 0.5
healthcheck = { test = "true", interval = "1s", retries = 2 }
"#;

    #[test]
    fn good_manifest_parses_with_defaults() {
        let m = parse(GOOD).expect("valid");
        assert_eq!(m.agent.namespace, "t1");
        assert_eq!(m.agent.status_addr, DEFAULT_STATUS_ADDR);
        let app = &m.clusters["web"].containers[1];
        assert_eq!(app.memory, Some(Bytes(64 << 20)));
        assert_eq!(app.stop_grace_period.0, Duration::from_secs(10));
        assert_eq!(
            app.healthcheck.as_ref().unwrap().timeout.0,
            Duration::from_secs(30)
        );
        assert_eq!(
            start_order(&m.clusters["web"].containers).unwrap(),
            vec![vec!["proxy".to_string()], vec!["app".to_string()]]
        );
    }

    #[test]
    fn redacted_keeps_environment_names_and_hides_values() {
        let m = parse(&GOOD.replace(
            "cpus = 0.5",
            "cpus = 0.5\nenv = { DB_PASSWORD = \"hunter2\", A = \"\" }",
        ))
        .unwrap();
        let spec = &m.clusters["web"].containers[1];
        let shown = spec.redacted();
        assert_eq!(
            shown
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
            [("A", REDACTED), ("DB_PASSWORD", REDACTED)]
        );
        assert_eq!(shown.env.len(), spec.env.len());
        assert_eq!(
            ContainerSpec {
                env: spec.env.clone(),
                ..shown
            },
            *spec,
            "only values change"
        );
    }

    #[test]
    fn unknown_key_names_its_path() {
        let bad = GOOD.replace("cpus = 0.5", "cpus = 0.5\ncpu_shares = 3");
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.contains("clusters.web.containers[1]"), "{err}");
        assert!(err.contains("cpu_shares"), "{err}");
    }

    #[test]
    fn bad_type_names_its_path() {
        let bad = GOOD.replace("interval = \"1s\"", "interval = \"soon\"");
        let err = parse(&bad).unwrap_err().to_string();
        assert!(
            err.contains("clusters.web.containers[1].healthcheck.interval"),
            "{err}"
        );
        assert!(err.contains("invalid duration"), "{err}");
    }

    #[test]
    fn parse_errors_give_the_line_and_column_and_never_quote_the_document() {
        let secret = "hunter2-secret";
        let cases = [
            // (a line for the first container, the path)
            (format!("env = {{ A = \"{secret}\" B = 1 }}"), "(syntax)"),
            (format!("env = \"{secret}\""), "containers[0].env"),
            (
                format!("env = {{ A = [\"{secret}\"] }}"),
                "containers[0].env.A",
            ),
            ("env = { A = 424242 }".to_string(), "containers[0].env.A"),
            ("env = { A = 42.4242 }".to_string(), "containers[0].env.A"),
            (format!("pull = \"{secret}\""), "containers[0].pull"),
            (format!("restart = \"{secret}\""), "containers[0].restart"),
            (format!("memory = \"{secret}\""), "containers[0].memory"),
            (format!("memory = \"12{secret}\""), "containers[0].memory"),
            (
                format!("stop_grace_period = \"{secret}\""),
                "containers[0].stop_grace_period",
            ),
            (
                format!("stop_grace_period = \"1{secret}\""),
                "containers[0].stop_grace_period",
            ),
            (
                "stop_grace_period = \"424242\"".to_string(),
                "containers[0].stop_grace_period",
            ),
            (format!("user = [\"{secret}\"]"), "containers[0].user"),
        ];
        for (line, path) in cases {
            let text = GOOD.replace("ports = [", &format!("{line}\nports = ["));
            let lineno = text.lines().position(|l| l == line).unwrap() + 1;
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                !err.contains(secret) && !err.contains("4242"),
                "{line}: {err}"
            );
            assert!(err.contains(path), "{line}: {err}");
            assert!(
                err.contains(&format!("line {lineno}, column ")),
                "{line}: {err}"
            );
        }
        let agent = "[agent]\nunhealthy_after = \"1hunter2\"\n";
        let err = parse(agent).unwrap_err().to_string();
        assert!(
            err.contains("agent.unhealthy_after: line 2, column 19: invalid duration"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn values_are_left_out_of_serde_messages_and_names_kept() {
        for (message, want) in [
            (
                r#"invalid type: string "a, expected b", expected a map"#,
                "invalid type: string, expected a map",
            ),
            (
                "invalid value: integer `7`, expected a nonzero u8",
                "invalid value: integer, expected a nonzero u8",
            ),
            (
                "invalid type: sequence, expected a string",
                "invalid type: sequence, expected a string",
            ),
            (
                "invalid type: floating point `0.5`, expected u32 at line 3 column 9",
                "invalid type: floating point, expected u32 at line 3 column 9",
            ),
            (
                "unknown variant `s3cr`et`, expected `missing` or `always`",
                "unknown variant, expected `missing` or `always`",
            ),
            (
                "unknown variant `s3cret`, there are no variants",
                "unknown variant, there are no variants",
            ),
            (
                "unknown field `cpu_shares`, expected one of `name`, `image`",
                "unknown field `cpu_shares`, expected one of `name`, `image`",
            ),
            ("missing field `image`", "missing field `image`"),
        ] {
            assert_eq!(without_values(message), want);
        }
    }

    #[test]
    fn line_and_column_count_characters() {
        let text = "a\néé = x\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 2), (2, 1));
        assert_eq!(line_column(text, "a\néé ".len()), (2, 4));
        assert_eq!(line_column(text, 3), (2, 1), "inside a character");
        assert_eq!(line_column(text, 999), (3, 1));
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let bad = r#"
[agent]
status_addr = "localhost"
[clusters.web]
[[clusters.web.containers]]
name = "Web"
image = "web:latest"
ports = ["99999:80"]
volumes = ["relative"]
stop_signal = "SIGNOPE"
depends_on = ["ghost"]
healthcheck = { test = [], interval = "0s", retries = 0 }
restart = { initial_delay = "1m", max_delay = "1s", failure_budget = 0 }
"#;
        let Err(ManifestError::Invalid { errors, .. }) = parse(bad) else {
            panic!("expected validation errors")
        };
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "agent.status_addr",
            "clusters.web.containers[0].name",
            "clusters.web.containers[0].image",
            "clusters.web.containers[0].ports[0]",
            "clusters.web.containers[0].volumes[0]",
            "clusters.web.containers[0].stop_signal",
            "clusters.web.containers[0].depends_on[0]",
            "clusters.web.containers[0].healthcheck.test",
            "clusters.web.containers[0].healthcheck.interval",
            "clusters.web.containers[0].healthcheck.retries",
            "clusters.web.containers[0].restart.initial_delay",
            "clusters.web.containers[0].restart.failure_budget",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn secret_references_are_checked_all_at_once_and_never_quoted() {
        let bad = GOOD.replace(
            "cpus = 0.5",
            r#"cpus = 0.5
env = { DB_PASSWORD = "x" }
secrets = { DB_PASSWORD = "ssm:/prod/db", TOKEN = "hunter2", "A=B" = "ssm:/a", API = "secretsmanager:prod/api#", OK = "secretsmanager:prod/api#token", P = "ssm:prod/x" }"#,
        );
        let Err(ManifestError::Invalid { errors, .. }) = parse(&bad) else {
            panic!("expected validation errors")
        };
        let p = "clusters.web.containers[1].secrets";
        let got: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        for (path, want) in [
            (format!("{p}.DB_PASSWORD"), "also in env"),
            (format!("{p}.TOKEN"), "not a secret reference"),
            (format!("{p}.A=B"), "contain no '='"),
            (format!("{p}.API"), "key after '#' is empty"),
            (format!("{p}.P"), "starts with '/'"),
        ] {
            assert!(
                got.iter().any(|(gp, m)| *gp == path && m.contains(want)),
                "{path}: {want} in {got:?}"
            );
        }
        assert_eq!(errors.len(), 5, "{got:?}");
        assert!(!errors.iter().any(|e| e.to_string().contains("hunter2")));
        let ok = GOOD.replace(
            "cpus = 0.5",
            "cpus = 0.5\nsecrets = { TOKEN = \"secretsmanager:prod/api#token\", DB = \"ssm:/prod/db\" }",
        );
        let m = parse(&ok).expect("valid references");
        assert_eq!(
            m.clusters["web"].containers[1].secrets["DB"],
            "ssm:/prod/db"
        );
    }

    #[test]
    fn a_status_addr_off_loopback_needs_status_allow_remote() {
        for addr in ["127.0.0.1:7878", "[::1]:7878"] {
            let m = GOOD.replace("[agent]\n", &format!("[agent]\nstatus_addr = \"{addr}\"\n"));
            assert!(parse(&m).is_ok(), "{addr}");
        }
        for addr in ["0.0.0.0:7878", "[::]:7878", "192.0.2.10:7878"] {
            let m = GOOD.replace("[agent]\n", &format!("[agent]\nstatus_addr = \"{addr}\"\n"));
            let Err(ManifestError::Invalid { errors, .. }) = parse(&m) else {
                panic!("{addr} must be refused")
            };
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].path, "agent.status_addr");
            assert!(
                errors[0].message.contains("agent.status_allow_remote"),
                "{}",
                errors[0]
            );
            let allowed = m.replace("[agent]\n", "[agent]\nstatus_allow_remote = true\n");
            let ok = parse(&allowed).unwrap_or_else(|e| panic!("{addr} allowed: {e}"));
            assert!(ok.agent.status_allow_remote);
        }
        assert!(
            !parse(GOOD).unwrap().agent.status_allow_remote,
            "off by default"
        );
    }

    #[test]
    fn cycles_and_duplicates_are_found() {
        let bad = r#"
[clusters.c]
[[clusters.c.containers]]
name = "a"
image = "a:{version}"
depends_on = ["b"]
[[clusters.c.containers]]
name = "b"
image = "b:{version}"
depends_on = ["a"]
[[clusters.c.containers]]
name = "b"
image = "b:{version}"
"#;
        let err = parse(bad).unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
        assert!(err.contains("duplicate container name"), "{err}");
    }

    #[test]
    fn a_cluster_from_a_compose_file_beside_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("compose")).unwrap();
        std::fs::write(
            dir.path().join("compose/web.compose.yaml"),
            "services:\n  db:\n    image: \"r/db:{version}\"\n    env_file: db.env\n    volumes: [\"./data:/data\"]\n  app:\n    image: \"r/app:{version}\"\n    depends_on: [db]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("compose/db.env"), "PASSWORD=x\n").unwrap();
        let path = dir.path().join("berth.toml");
        let text = "[clusters.web]\ncompose = \"compose/web.compose.yaml\"\n";
        let m = Manifest::parse(text, &path).expect("valid");
        let web = &m.clusters["web"];
        let names: Vec<&str> = web.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["db", "app"]);
        assert_eq!(
            web.containers[0].env["PASSWORD"], "x",
            "relative to the compose file"
        );
        assert_eq!(
            web.containers[0].volumes,
            [format!("{}/compose/data:/data", dir.path().display())]
        );
        assert_eq!(
            start_order(&web.containers).unwrap(),
            vec![vec!["db".to_string()], vec!["app".to_string()]]
        );
    }

    #[test]
    fn compose_problems_come_with_the_manifest_problems() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.compose.yaml"),
            "services:\n  web:\n    image: web:latest\n    privileged: true\n",
        )
        .unwrap();
        let path = dir.path().join("berth.toml");
        let text = "[agent]\nstatus_addr = \"nowhere\"\n[clusters.web]\ncompose = \"web.compose.yaml\"\n[clusters.both]\ncompose = \"web.compose.yaml\"\n[[clusters.both.containers]]\nname = \"a\"\nimage = \"a:{version}\"\n[clusters.gone]\ncompose = \"gone.yaml\"\n[clusters.none]\n";
        let Err(ManifestError::Invalid { errors, .. }) = Manifest::parse(text, &path) else {
            panic!("expected validation errors")
        };
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "clusters.both",
                "clusters.gone.compose",
                "web.compose.yaml: services.web.privileged",
                "agent.status_addr",
                "clusters.none.containers",
                "web.compose.yaml: services.web.image",
            ],
            "{shown:#?}"
        );
        assert!(
            shown[0].contains("has both containers and compose"),
            "{shown:?}"
        );
        assert!(shown[1].contains("cannot read gone.yaml"), "{shown:?}");
        assert!(
            shown[2]
                .starts_with("web.compose.yaml: services.web.privileged: not supported by berth"),
            "{shown:?}"
        );
    }

    #[test]
    fn healthcheck_none_disables_the_image_healthcheck() {
        let m = parse(&GOOD.replace(
            "healthcheck = { test = \"true\", interval = \"1s\", retries = 2 }",
            "healthcheck = { test = [\"NONE\"] }",
        ))
        .unwrap();
        let app = &m.clusters["web"].containers[1];
        assert!(app.healthcheck.is_some());
        assert!(!app.has_healthcheck(), "nothing to wait for");
        assert!(parse(GOOD).unwrap().clusters["web"].containers[1].has_healthcheck());
        let bad = GOOD.replace(
            "healthcheck = { test = \"true\", interval = \"1s\", retries = 2 }",
            "healthcheck = { test = [\"NONE\", \"x\"] }",
        );
        assert!(
            parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("healthcheck.test")
        );
    }

    #[test]
    fn image_templates() {
        assert!(check_image_template("reg.example.com:5000/team/web:{version}").is_ok());
        assert!(check_image_template("web:v{version}-alpine").is_ok());
        assert!(check_image_template("web:latest").is_err());
        assert!(check_image_template("{version}/web:1").is_err());
        assert!(check_image_template("web:{version}@sha256:abc").is_err());
        assert!(check_image_template("web:{version}{version}").is_err());
        assert!(check_image_template("we b:{version}").is_err());
    }

    #[test]
    fn sizes_and_ports() {
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("12 parsecs").is_err());
        assert_eq!(parse_port("80"), Ok((None, None, 80, "tcp".into())));
        assert_eq!(
            parse_port("127.0.0.1:81:80/udp"),
            Ok((Some("127.0.0.1".into()), Some(81), 80, "udp".into()))
        );
        assert!(parse_port("0:80").is_err());
        assert!(parse_port("a:b:c:d").is_err());
    }
}

#[cfg(test)]
mod reference {
    //! docs/manifest.md is the manifest's reference: every key its tables
    //! name must be one the parser knows, and every setting the parser
    //! knows must be in the tables, so the two cannot drift apart.
    use super::*;

    const DOC: &str = include_str!("../docs/manifest.md");

    /// The first-column keys of the table under `heading`.
    fn keys(heading: &str) -> Vec<String> {
        let start = DOC
            .find(heading)
            .unwrap_or_else(|| panic!("{heading} in the doc"));
        DOC[start..]
            .lines()
            .skip(1)
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let cell = l.split('|').nth(1)?.trim();
                Some(cell.strip_prefix('`')?.strip_suffix('`')?.to_string())
            })
            .collect()
    }

    /// Whether the parser knows `key` in `table` (an unknown field is the
    /// only error that says so; a wrong value type is fine here).
    fn known(toml_for: impl Fn(&str) -> String, key: &str) -> bool {
        match Manifest::parse(&toml_for(key), Path::new("m.toml")) {
            Ok(_) => true,
            Err(e) => !e.to_string().contains("unknown field"),
        }
    }

    /// The keys the parser accepts where `text` has the unknown key `zzz`.
    fn parser_keys(text: &str) -> Vec<String> {
        let e = Manifest::parse(text, Path::new("m.toml"))
            .unwrap_err()
            .to_string();
        let list = e
            .split("expected one of ")
            .nth(1)
            .unwrap_or_else(|| panic!("{e}"));
        list.split(", ")
            .map(|k| k.trim_matches('`').to_string())
            .collect()
    }

    #[test]
    fn every_documented_agent_setting_is_parsed_and_every_setting_is_documented() {
        let doc = keys("## `[agent]`");
        assert!(doc.len() >= 10, "{doc:?}");
        for k in &doc {
            assert!(
                known(|k| format!("[agent]\n{k} = 0\n"), k),
                "docs/manifest.md documents agent.{k}, which the parser does not know"
            );
        }
        let real = parser_keys("[agent]\nzzz = 0\n");
        assert!(real.len() >= 10, "{real:?}");
        for k in real {
            assert!(
                doc.contains(&k),
                "agent.{k} is not documented in docs/manifest.md"
            );
        }
    }

    #[test]
    fn every_documented_container_key_is_parsed() {
        let doc = keys("## Containers");
        assert!(doc.len() >= 15, "{doc:?}");
        let container = |k: &str| {
            format!(
                "[[clusters.web.containers]]\nname = \"web\"\nimage = \"web:{{version}}\"\n{}\n",
                if k == "name" || k == "image" {
                    String::new()
                } else {
                    format!("{k} = 0")
                }
            )
        };
        for k in &doc {
            assert!(
                known(container, k),
                "docs/manifest.md documents container key {k}, which the parser does not know"
            );
        }
        // And the reverse: every key the parser takes (its unknown-field
        // error lists them all) is in the doc.
        for k in parser_keys(&container("zzz")) {
            assert!(
                doc.contains(&k),
                "container key {k} is not documented in docs/manifest.md"
            );
        }
        assert!(
            !known(container, "cpu_shares"),
            "the check itself tells unknown keys"
        );
    }
}
