//! A Compose file as a cluster's container set (pure, but for the env files
//! it is given a reader for).
//!
//! `[clusters.web] compose = "web.compose.yaml"` makes the services of a
//! Compose file the cluster's containers: [`load`] maps each service onto a
//! [`ContainerSpec`], in the file's order, when the manifest is loaded, so
//! validation, plans and pins see ordinary containers. `berth import compose`
//! prints the same containers as manifest TOML.
//!
//! The schema is the published compose-spec. Only what the manifest can
//! express is read; every other key is an error naming its path
//! (`services.web.privileged: not supported by berth`), and every error is
//! reported at once. Nothing is silently dropped: the keys read and not
//! used either have no effect on what runs (`version`; `name`, whose
//! container prefix berth replaces with its namespace; `x-*` extensions; a
//! port's descriptive `name` and `app_protocol`), or say what berth does
//! anyway (`restart: always`, a port's `mode: host`, a bind's
//! `create_host_path: true`, a dependency's `required: true`); any other
//! value of those is an error. See `docs/compose.md`.
//!
//! The file is YAML 1.2 (saphyr: anchors and aliases resolved, duplicate
//! keys refused); `<<` merge keys are applied here, as Compose does.
//! Values are taken as written: variable interpolation (`${VAR}`, `$VAR`)
//! is an error, since a machine image has no shell environment to take them
//! from, and `$$` is a literal `$`. Messages never quote values (they may be
//! secrets), only keys.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use crate::manifest::{
    self, Bytes, Cluster, ContainerSpec, Dur, FieldError, HealthTest, Healthcheck, LogConfig,
    Manifest, PullPolicy, RegistryAuthMode, RestartPolicy, parse_bytes,
};

/// Reads an env file (the real file system, or a table in tests).
pub type ReadFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<String>;

/// The containers of a Compose file, and where each came from.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub containers: Vec<ContainerSpec>,
    pub source: Source,
}

/// Where a cluster's containers came from, to name the Compose key of a
/// problem found in them later (the manifest's validation).
#[derive(Debug, Clone)]
pub struct Source {
    /// The file as the manifest names it.
    pub file: String,
    /// One per container, in order.
    services: Vec<Origin>,
    /// The paths of the problems found while mapping.
    reported: Vec<String>,
}

#[derive(Debug, Clone)]
struct Origin {
    service: String,
    /// (container field path, Compose key path), most specific first.
    renames: Vec<(String, String)>,
}

impl Source {
    /// The manifest's validation problems of the cluster at `cluster_path`,
    /// named by their Compose keys ([`Source::locate`]), less those under a
    /// path the mapping already reported (a service that is not a mapping
    /// has no image to check).
    pub fn rewrite(&self, cluster_path: &str, errors: Vec<FieldError>) -> Vec<FieldError> {
        errors
            .into_iter()
            .map(|e| FieldError {
                path: self.locate(cluster_path, &e.path),
                message: e.message,
            })
            .filter(|e| {
                !self.reported.iter().any(|r| {
                    e.path
                        .strip_prefix(r.as_str())
                        .is_some_and(|t| t.is_empty() || t.starts_with(['.', '[']))
                })
            })
            .collect()
    }

    /// The Compose path of a validation problem at `path`, a field of the
    /// containers of the cluster at `cluster_path`: `clusters.web.containers[1].env.A`
    /// becomes `web.compose.yaml: services.app.environment.A`.
    pub fn locate(&self, cluster_path: &str, path: &str) -> String {
        let Some(rest) = path
            .strip_prefix(cluster_path)
            .and_then(|r| r.strip_prefix(".containers"))
        else {
            return path.to_string();
        };
        if rest.is_empty() {
            return format!("{}: services", self.file);
        }
        let Some((index, field)) = rest
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .and_then(|(i, f)| Some((i.parse::<usize>().ok()?, f)))
        else {
            return path.to_string();
        };
        let Some(origin) = self.services.get(index) else {
            return path.to_string();
        };
        let field = field.strip_prefix('.').unwrap_or(field);
        let key = origin
            .renames
            .iter()
            .map(|(from, to)| (from.as_str(), to.as_str()))
            .chain(RENAMES.iter().copied())
            .find_map(|(from, to)| {
                let tail = field.strip_prefix(from)?;
                (tail.is_empty() || tail.starts_with(['.', '['])).then(|| {
                    if to.is_empty() {
                        tail.to_string()
                    } else {
                        format!(".{to}{tail}")
                    }
                })
            })
            .unwrap_or_else(|| {
                if field.is_empty() {
                    String::new()
                } else {
                    format!(".{field}")
                }
            });
        format!("{}: services.{}{key}", self.file, origin.service)
    }
}

/// Container fields whose Compose key has another name (the service's own
/// renames, e.g. `memory` from `deploy.resources.limits.memory`, come first).
const RENAMES: &[(&str, &str)] = &[
    ("name", ""),
    ("env", "environment"),
    ("log", "logging"),
    ("pull", "pull_policy"),
    ("memory", "mem_limit"),
];

/// Maps the Compose file `text` onto containers, one per service in the
/// file's order, and returns them with every problem found. A service with
/// problems still gives a container (what could be read of it), so that the
/// manifest's validation can check the rest of the cluster; it reports
/// nothing under a path that already has a problem ([`Source::rewrite`]).
/// `file` names the file in messages (as the manifest wrote it); relative
/// paths in it (env files, bind mounts) resolve against `dir`, which should
/// be absolute. No containers at all when the YAML cannot be read.
pub fn load(text: &str, file: &str, dir: &Path, read: ReadFile) -> (Mapped, Vec<FieldError>) {
    let mut p = Problems {
        file: file.to_string(),
        list: Vec::new(),
    };
    let mapped = parse_yaml(text, &mut p)
        .map(|root| map_file(&root, dir, read, &mut p))
        .unwrap_or_default();
    let (containers, services) = mapped.into_iter().unzip();
    let source = Source {
        file: file.to_string(),
        services,
        reported: p.list.iter().map(|e| e.path.clone()).collect(),
    };
    (Mapped { containers, source }, p.list)
}

// ---- the YAML tree ----------------------------------------------------------

/// A YAML node with merge keys applied and its line.
#[derive(Debug, Clone)]
struct Node {
    v: V,
    line: usize,
}

#[derive(Debug, Clone)]
enum V {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl V {
    fn kind(&self) -> &'static str {
        match self {
            V::Null => "null",
            V::Bool(_) => "a boolean",
            V::Int(_) => "an integer",
            V::Float(_) => "a number",
            V::Str(_) => "a string",
            V::Seq(_) => "a list",
            V::Map(_) => "a mapping",
        }
    }
}

struct Problems {
    file: String,
    list: Vec<FieldError>,
}

impl Problems {
    fn at(&mut self, path: &str, line: usize, message: impl AsRef<str>) {
        let path = if path.is_empty() { "(top level)" } else { path };
        self.list.push(FieldError {
            path: format!("{}: {path}", self.file),
            message: if line > 0 {
                format!("{} (line {line})", message.as_ref())
            } else {
                message.as_ref().to_string()
            },
        });
    }
}

fn parse_yaml(text: &str, p: &mut Problems) -> Option<Node> {
    let docs = match MarkedYaml::load_from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let m = e.marker();
            p.at(
                "(syntax)",
                0,
                format!("line {}, column {}: {}", m.line(), m.col() + 1, e.info()),
            );
            return None;
        }
    };
    match docs.len() {
        0 => {
            p.at("services", 0, "required: the file is empty");
            None
        }
        1 => convert(&docs[0], "", p),
        n => {
            p.at(
                "(top level)",
                0,
                format!("{n} YAML documents: a Compose file is one"),
            );
            None
        }
    }
}

/// Our tree from saphyr's, merge keys (`<<`) applied. Tags other than the
/// core schema's are errors (Compose's `!reset` and `!override` merge
/// several files, which berth does not).
fn convert(y: &MarkedYaml, path: &str, p: &mut Problems) -> Option<Node> {
    let line = y.span.start.line();
    let v = match &y.data {
        YamlData::Value(s) => match s {
            Scalar::Null => V::Null,
            Scalar::Boolean(b) => V::Bool(*b),
            Scalar::Integer(i) => V::Int(*i),
            Scalar::FloatingPoint(f) => V::Float(f.into_inner()),
            Scalar::String(s) => V::Str(s.to_string()),
        },
        YamlData::Representation(s, _, _) => V::Str(s.to_string()),
        YamlData::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(convert(item, &format!("{path}[{i}]"), p)?);
            }
            V::Seq(out)
        }
        YamlData::Mapping(m) => {
            let mut out: Vec<(String, Node)> = Vec::with_capacity(m.len());
            let mut merged: Vec<(String, Node)> = Vec::new();
            for (k, v) in m {
                let key = match &k.data {
                    YamlData::Value(Scalar::String(s)) => s.to_string(),
                    YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                    YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                    YamlData::Representation(s, _, _) => s.to_string(),
                    _ => {
                        p.at(path, k.span.start.line(), "keys must be strings");
                        return None;
                    }
                };
                let kpath = join(path, &key);
                let value = convert(v, &kpath, p)?;
                if key == "<<" {
                    let sources = match value.v {
                        V::Map(entries) => vec![entries],
                        V::Seq(items) => {
                            let mut maps = Vec::new();
                            for item in items {
                                match item.v {
                                    V::Map(entries) => maps.push(entries),
                                    other => {
                                        p.at(
                                            &kpath,
                                            item.line,
                                            format!(
                                                "a merge key takes mappings, not {}",
                                                other.kind()
                                            ),
                                        );
                                        return None;
                                    }
                                }
                            }
                            maps
                        }
                        other => {
                            p.at(
                                &kpath,
                                value.line,
                                format!("a merge key takes mappings, not {}", other.kind()),
                            );
                            return None;
                        }
                    };
                    // Earlier sources win, as YAML's merge key says.
                    for entries in sources {
                        for (k, v) in entries {
                            if !merged.iter().any(|(m, _)| *m == k) {
                                merged.push((k, v));
                            }
                        }
                    }
                } else {
                    out.push((key, value));
                }
            }
            // Keys written in the mapping win over merged ones.
            for (k, v) in merged {
                if !out.iter().any(|(o, _)| *o == k) {
                    out.push((k, v));
                }
            }
            V::Map(out)
        }
        YamlData::Tagged(tag, _) => {
            p.at(
                path,
                line,
                format!("the YAML tag !{} is not supported by berth", tag.suffix),
            );
            return None;
        }
        YamlData::Alias(_) => {
            p.at(path, line, "an unresolved alias");
            return None;
        }
        YamlData::BadValue => {
            p.at(path, line, "a value that does not match its tag");
            return None;
        }
    };
    Some(Node { v, line })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

// ---- typed reads --------------------------------------------------------------

/// What a value must be, said once: `expected a string, found a list`.
fn wrong(p: &mut Problems, path: &str, n: &Node, want: &str) {
    p.at(
        path,
        n.line,
        format!("expected {want}, found {}", n.v.kind()),
    );
}

/// A string value, `$$` unescaped. Numbers and booleans are written as text,
/// as Compose does.
fn text(n: &Node, path: &str, p: &mut Problems) -> Option<String> {
    match &n.v {
        V::Str(s) => unescape(s, path, n.line, p),
        V::Int(i) => Some(i.to_string()),
        V::Float(f) => Some(f.to_string()),
        V::Bool(b) => Some(b.to_string()),
        _ => {
            wrong(p, path, n, "a string");
            None
        }
    }
}

/// `$$` is a literal `$`; `${…}` and `$NAME` would be interpolated by
/// Compose from the shell, which berth does not have.
fn unescape(s: &str, path: &str, line: usize, p: &mut Problems) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some(&n) if n == '{' || n == '_' || n.is_ascii_alphabetic() => {
                p.at(
                    path,
                    line,
                    "variable interpolation ($NAME, ${NAME}) is not supported by berth: write the value, or $$ for a literal $",
                );
                return None;
            }
            _ => out.push('$'),
        }
    }
    Some(out)
}

fn strings(n: &Node, path: &str, p: &mut Problems) -> Option<Vec<String>> {
    match &n.v {
        V::Seq(items) => {
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match text(item, &format!("{path}[{i}]"), p) {
                    Some(s) => out.push(s),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        _ => {
            wrong(p, path, n, "a list of strings");
            None
        }
    }
}

/// `command` and `entrypoint`: a list, or a string split as a shell would
/// (without running one); null keeps the image's.
fn command(n: &Node, path: &str, p: &mut Problems) -> Option<Option<Vec<String>>> {
    match &n.v {
        V::Null => Some(None),
        V::Str(_) => {
            let s = text(n, path, p)?;
            match shlex::split(&s) {
                Some(words) => Some(Some(words)),
                None => {
                    p.at(path, n.line, "unbalanced quotes");
                    None
                }
            }
        }
        V::Seq(_) => strings(n, path, p).map(Some),
        _ => {
            wrong(p, path, n, "a string or a list of strings");
            None
        }
    }
}

fn boolean(n: &Node, path: &str, p: &mut Problems) -> Option<bool> {
    match n.v {
        V::Bool(b) => Some(b),
        _ => {
            wrong(p, path, n, "true or false");
            None
        }
    }
}

/// A mapping's entries; null is an empty mapping.
fn entries<'a>(n: &'a Node, path: &str, p: &mut Problems) -> Option<&'a [(String, Node)]> {
    match &n.v {
        V::Map(m) => Some(m),
        V::Null => Some(&[]),
        _ => {
            wrong(p, path, n, "a mapping");
            None
        }
    }
}

/// A Compose duration: `{value}{unit}` repeated, units `ns`, `us`, `ms`,
/// `s`, `m`, `h` (`1m30s`, `1h5m30s20ms`, `1.5s`), or `0`.
fn duration(n: &Node, path: &str, p: &mut Problems) -> Option<Dur> {
    let parsed = match &n.v {
        V::Str(s) => parse_duration(s.trim()),
        V::Int(0) => Ok(Duration::ZERO),
        V::Int(_) | V::Float(_) => Err("a duration needs a unit, e.g. \"30s\"".to_string()),
        _ => {
            wrong(p, path, n, "a duration such as \"1m30s\"");
            return None;
        }
    };
    match parsed {
        Ok(d) => Some(Dur(d)),
        Err(m) => {
            p.at(path, n.line, m);
            None
        }
    }
}

/// Parses a Compose (Go) duration; messages do not quote it.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const BAD: &str = "invalid duration (units ns, us, ms, s, m, h, e.g. \"1m30s\" or \"500ms\")";
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(BAD.to_string());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| "a duration needs a unit, e.g. \"30s\"".to_string())?;
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(BAD.to_string()),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(BAD.to_string());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| BAD.to_string())?
        };
        let mut part = whole.checked_mul(nanos).ok_or("duration is too long")?;
        if !frac.is_empty() {
            let scale = 10u128
                .checked_pow(u32::try_from(frac.len()).map_err(|_| BAD.to_string())?)
                .ok_or_else(|| BAD.to_string())?;
            let f: u128 = frac.parse().map_err(|_| BAD.to_string())?;
            part += f.checked_mul(nanos).ok_or("duration is too long")? / scale;
        }
        total = total.checked_add(part).ok_or("duration is too long")?;
        rest = next;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| "duration is too long")?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// A byte value (`300m`, `1gb`, `2048k`, or an integer); 0 is no limit.
fn bytes(n: &Node, path: &str, p: &mut Problems) -> Option<Option<Bytes>> {
    let b = match &n.v {
        V::Int(i) if *i >= 0 => *i as u64,
        V::Str(s) => match parse_bytes(s) {
            Ok(b) => b,
            Err(m) => {
                p.at(path, n.line, m);
                return None;
            }
        },
        _ => {
            wrong(p, path, n, "a byte value such as \"512m\"");
            return None;
        }
    };
    Some((b > 0).then_some(Bytes(b)))
}

/// A number of CPUs (`1.5`, `"0.50"`); 0 is no limit.
fn cpus(n: &Node, path: &str, p: &mut Problems) -> Option<Option<f64>> {
    let c = match &n.v {
        V::Int(i) => *i as f64,
        V::Float(f) => *f,
        V::Str(s) => match s.trim().parse::<f64>() {
            Ok(c) => c,
            Err(_) => {
                p.at(path, n.line, "expected a number of CPUs such as 0.5");
                return None;
            }
        },
        _ => {
            wrong(p, path, n, "a number of CPUs such as 0.5");
            return None;
        }
    };
    Some((c != 0.0).then_some(c))
}

/// `key=value` lists and mappings (`labels`, `environment`, log options).
/// `bare` is what a `key` without `=` (or a null value) means; `None`
/// makes it an error with that message.
fn key_values(
    n: &Node,
    path: &str,
    bare: Result<&str, &str>,
    p: &mut Problems,
) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut ok = true;
    match &n.v {
        V::Map(m) => {
            for (k, v) in m {
                let kpath = format!("{path}.{k}");
                match (&v.v, bare) {
                    (V::Null, Ok(empty)) => out.push((k.clone(), empty.to_string())),
                    (V::Null, Err(why)) => {
                        p.at(&kpath, v.line, why);
                        ok = false;
                    }
                    _ => match text(v, &kpath, p) {
                        Some(s) => out.push((k.clone(), s)),
                        None => ok = false,
                    },
                }
            }
        }
        V::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let ipath = format!("{path}[{i}]");
                let Some(s) = text(item, &ipath, p) else {
                    ok = false;
                    continue;
                };
                match (s.split_once('='), bare) {
                    (Some((k, v)), _) => out.push((k.to_string(), v.to_string())),
                    (None, Ok(empty)) => out.push((s, empty.to_string())),
                    (None, Err(why)) => {
                        p.at(&ipath, item.line, why);
                        ok = false;
                    }
                }
            }
        }
        V::Null => {}
        _ => {
            wrong(p, path, n, "a mapping or a list of key=value");
            return None;
        }
    }
    ok.then_some(out)
}

// ---- the file ---------------------------------------------------------------

/// Why a key is not read, where a hint helps; otherwise "not supported by berth".
fn unsupported(key: &str) -> String {
    let hint = match key {
        "build" => "berth does not build images: push the image and name it in image",
        "container_name" => "berth names containers <namespace>-<service>",
        "networks" => {
            "berth attaches containers to one network, network_mode (no Compose networks)"
        }
        "secrets" | "configs" => "berth mounts no Compose secrets or configs",
        "profiles" => "every service of the file is a container of the cluster",
        "scale" => "a cluster runs one container per service",
        "extends" | "include" => "berth reads one file",
        "links" | "external_links" => "berth creates no links",
        _ => "",
    };
    if hint.is_empty() {
        "not supported by berth".to_string()
    } else {
        format!("not supported by berth ({hint})")
    }
}

/// A top-level volume: the engine's name for it.
struct VolumeDecl {
    engine_name: String,
}

fn map_file(
    root: &Node,
    dir: &Path,
    read: ReadFile,
    p: &mut Problems,
) -> Vec<(ContainerSpec, Origin)> {
    let Some(top) = entries(root, "", p) else {
        return Vec::new();
    };
    let mut services = None;
    let mut volumes: BTreeMap<String, VolumeDecl> = BTreeMap::new();
    for (key, value) in top {
        match key.as_str() {
            "services" => services = Some(value),
            // Obsolete in the spec; Compose itself ignores it.
            "version" => {}
            // The project name prefixes Compose's container names; berth's
            // are <namespace>-<service>.
            "name" => {}
            "volumes" => volumes = top_volumes(value, p),
            "networks" | "secrets" | "configs" => {
                if !matches!(&value.v, V::Null) && !matches!(&value.v, V::Map(m) if m.is_empty()) {
                    p.at(key, value.line, unsupported(key));
                }
            }
            k if k.starts_with("x-") => {}
            k => p.at(k, value.line, unsupported(k)),
        }
    }
    let Some(services) = services else {
        p.at("services", 0, "required");
        return Vec::new();
    };
    let Some(list) = entries(services, "services", p) else {
        return Vec::new();
    };
    if list.is_empty() {
        p.at(
            "services",
            services.line,
            "at least one service is required",
        );
    }
    let mut out = Vec::new();
    let mut healthy_deps = Vec::new();
    for (name, def) in list {
        let path = format!("services.{name}");
        let (spec, origin, wants_healthy) = map_service(name, def, &path, dir, read, &volumes, p);
        healthy_deps.extend(wants_healthy);
        out.push((spec, origin));
    }
    // `condition: service_healthy` needs a healthcheck to wait for (unless
    // the dependency's healthcheck has a problem already reported).
    for (path, line, dep) in healthy_deps {
        let reported = format!("{}: services.{dep}", p.file);
        if let Some((spec, _)) = out.iter().find(|(s, _)| s.name == dep)
            && !spec.has_healthcheck()
            && !p.list.iter().any(|e| {
                e.path == reported || e.path.starts_with(&format!("{reported}.healthcheck"))
            })
        {
            p.at(
                &path,
                line,
                format!("service_healthy, but service {dep} has no healthcheck"),
            );
        }
    }
    out
}

fn top_volumes(n: &Node, p: &mut Problems) -> BTreeMap<String, VolumeDecl> {
    let mut out = BTreeMap::new();
    let Some(list) = entries(n, "volumes", p) else {
        return out;
    };
    for (name, def) in list {
        let path = format!("volumes.{name}");
        let mut engine_name = name.clone();
        let Some(keys) = entries(def, &path, p) else {
            continue;
        };
        for (k, v) in keys {
            let kpath = format!("{path}.{k}");
            match k.as_str() {
                // The engine creates a missing local volume on first use;
                // external means it must exist, which the engine checks.
                "external" => {
                    boolean(v, &kpath, p);
                }
                "name" => {
                    if let Some(s) = text(v, &kpath, p) {
                        engine_name = s;
                    }
                }
                k if k.starts_with("x-") => {}
                _ => p.at(
                    &kpath,
                    v.line,
                    "not supported by berth (the engine creates named volumes with the local driver and no options)",
                ),
            }
        }
        out.insert(name.clone(), VolumeDecl { engine_name });
    }
    out
}

/// A container with the manifest's defaults, where a service starts.
fn blank(name: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        image: String::new(),
        pull: PullPolicy::default(),
        registry_auth: RegistryAuthMode::default(),
        command: None,
        entrypoint: None,
        env: BTreeMap::new(),
        secrets: BTreeMap::new(),
        ports: Vec::new(),
        volumes: Vec::new(),
        network_mode: None,
        user: None,
        labels: BTreeMap::new(),
        healthcheck: None,
        stop_signal: None,
        stop_grace_period: manifest::default_grace(),
        memory: None,
        cpus: None,
        log: None,
        depends_on: Vec::new(),
        restart: RestartPolicy::default(),
    }
}

/// One service → one container (what could be read of it, when it has
/// problems); also the `service_healthy` dependencies to check once every
/// service is known: (path, line, service).
#[allow(clippy::type_complexity)]
fn map_service(
    name: &str,
    def: &Node,
    path: &str,
    dir: &Path,
    read: ReadFile,
    volumes: &BTreeMap<String, VolumeDecl>,
    p: &mut Problems,
) -> (ContainerSpec, Origin, Vec<(String, usize, String)>) {
    let mut spec = blank(name);
    let Some(keys) = entries(def, path, p) else {
        return (
            spec,
            Origin {
                service: name.to_string(),
                renames: Vec::new(),
            },
            Vec::new(),
        );
    };
    let mut origin = Origin {
        service: name.to_string(),
        renames: Vec::new(),
    };
    let mut healthy = Vec::new();
    let mut image = false;
    let mut environment = Vec::new();
    let mut env_files = BTreeMap::new();
    let mut mem_limit = None;
    let mut cpus_key = None;
    for (key, v) in keys {
        let kp = format!("{path}.{key}");
        match key.as_str() {
            "image" => {
                image = true;
                if let Some(s) = text(v, &kp, p) {
                    spec.image = s;
                }
            }
            "command" => spec.command = command(v, &kp, p).flatten(),
            "entrypoint" => spec.entrypoint = command(v, &kp, p).flatten(),
            "environment" => {
                let why = "has no value: Compose takes it from the shell, which berth has not; write its value";
                environment = key_values(v, &kp, Err(why), p).unwrap_or_default();
            }
            "env_file" => env_files = env_file(v, &kp, dir, read, p),
            "ports" => {
                if let V::Seq(items) = &v.v {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(port) = port(item, &format!("{kp}[{i}]"), p) {
                            spec.ports.push(port);
                        }
                    }
                } else {
                    wrong(p, &kp, v, "a list");
                }
            }
            "volumes" => {
                if let V::Seq(items) = &v.v {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(vol) = volume(item, &format!("{kp}[{i}]"), dir, volumes, p) {
                            spec.volumes.push(vol);
                        }
                    }
                } else {
                    wrong(p, &kp, v, "a list");
                }
            }
            "network_mode" => {
                if let Some(s) = text(v, &kp, p) {
                    if s.starts_with("service:") {
                        p.at(
                            &kp,
                            v.line,
                            "service:<name> is not supported by berth (container:<name> names a container)",
                        );
                    } else {
                        spec.network_mode = Some(s);
                    }
                }
            }
            "user" => spec.user = text(v, &kp, p),
            "labels" => {
                for (k, val) in key_values(v, &kp, Ok(""), p).unwrap_or_default() {
                    if k.starts_with("com.docker.compose.") {
                        p.at(
                            &format!("{kp}.{k}"),
                            v.line,
                            "the com.docker.compose prefix is reserved",
                        );
                    }
                    spec.labels.insert(k, val);
                }
            }
            "healthcheck" => spec.healthcheck = healthcheck(v, &kp, p),
            "stop_signal" => spec.stop_signal = text(v, &kp, p),
            "stop_grace_period" => {
                if let Some(d) = duration(v, &kp, p) {
                    spec.stop_grace_period = d;
                }
            }
            "mem_limit" => mem_limit = Some((bytes(v, &kp, p), v.line)),
            "cpus" => cpus_key = Some((cpus(v, &kp, p), v.line)),
            "deploy" => deploy(v, &kp, &mut spec, &mut origin, p),
            "logging" => spec.log = logging(v, &kp, p),
            "depends_on" => {
                spec.depends_on = depends_on(v, &kp, &mut origin, &mut healthy, p);
            }
            // berth restarts every container that stops, with backoff.
            "restart" => match text(v, &kp, p).as_deref() {
                Some("always" | "unless-stopped") | None => {}
                Some(_) => p.at(
                    &kp,
                    v.line,
                    "berth restarts every container that stops: only always or unless-stopped",
                ),
            },
            "pull_policy" => match text(v, &kp, p).as_deref() {
                Some("always") => spec.pull = PullPolicy::Always,
                Some("missing" | "if_not_present") => spec.pull = PullPolicy::Missing,
                None => {}
                Some(_) => p.at(&kp, v.line, "berth pulls always or missing"),
            },
            k if k.starts_with("x-") => {}
            k => p.at(&kp, v.line, unsupported(k)),
        }
    }
    if !image {
        p.at(&format!("{path}.image"), def.line, "required");
    }
    // Compose: the env files in order, then environment over them.
    spec.env = env_files;
    spec.env.extend(environment);
    // A top-level key and its deploy twin must agree (the spec says so).
    if let Some((m, line)) = mem_limit {
        let m = m.flatten();
        if spec.memory.is_some() && spec.memory != m {
            p.at(
                &format!("{path}.deploy.resources.limits.memory"),
                line,
                "differs from mem_limit",
            );
        }
        if spec.memory.is_none() {
            spec.memory = m;
            origin.renames.retain(|(from, _)| from.as_str() != "memory");
        }
    }
    if let Some((c, line)) = cpus_key {
        let c = c.flatten();
        if spec.cpus.is_some() && spec.cpus != c {
            p.at(
                &format!("{path}.deploy.resources.limits.cpus"),
                line,
                "differs from cpus",
            );
        }
        if spec.cpus.is_none() {
            spec.cpus = c;
            origin.renames.retain(|(from, _)| from.as_str() != "cpus");
        }
    }
    (spec, origin, healthy)
}

/// `env_file`: one path, or a list of paths and `{path, required, format}`;
/// later files win. Relative paths resolve against the Compose file's
/// directory. A file not `required` that is missing is skipped.
fn env_file(
    n: &Node,
    path: &str,
    dir: &Path,
    read: ReadFile,
    p: &mut Problems,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let items: Vec<(String, &Node)> = match &n.v {
        V::Str(_) => vec![(path.to_string(), n)],
        V::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("{path}[{i}]"), item))
            .collect(),
        _ => {
            wrong(p, path, n, "a path or a list");
            return out;
        }
    };
    for (ipath, item) in items {
        let (file, required, raw) = match &item.v {
            V::Map(keys) => {
                let mut file = None;
                let mut required = true;
                let mut raw = false;
                for (k, v) in keys {
                    let kpath = format!("{ipath}.{k}");
                    match k.as_str() {
                        "path" => file = text(v, &kpath, p),
                        "required" => required = boolean(v, &kpath, p).unwrap_or(true),
                        "format" => match text(v, &kpath, p).as_deref() {
                            Some("raw") => raw = true,
                            None => {}
                            Some(_) => p.at(&kpath, v.line, "the only format is raw"),
                        },
                        _ => p.at(&kpath, v.line, unsupported(k)),
                    }
                }
                let Some(file) = file else {
                    p.at(&format!("{ipath}.path"), item.line, "required");
                    continue;
                };
                (file, required, raw)
            }
            _ => match text(item, &ipath, p) {
                Some(f) => (f, true, false),
                None => continue,
            },
        };
        let full = normalize(&dir.join(&file));
        match read(&full) {
            Ok(content) => match parse_env_file(&content, raw) {
                Ok(vars) => out.extend(vars),
                Err((line, m)) => p.at(&ipath, item.line, format!("{file}, line {line}: {m}")),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
            Err(e) => p.at(&ipath, item.line, format!("cannot read {file}: {e}")),
        }
    }
    out
}

/// The Compose env file format: `VAR=VAL` lines, `#` comments, blank lines,
/// an optional `export `; values unquoted (a ` #` starts a comment),
/// single-quoted (literal) or double-quoted (`\n`, `\t`, `\\`, `\"`
/// escapes). `raw` takes what follows `=` as it is. A `VAR` without `=`
/// (taken from the shell by Compose) and interpolation outside single
/// quotes are errors. Errors give the line, never the value.
pub fn parse_env_file(text: &str, raw: bool) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let l = line.trim_start();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let l = l.strip_prefix("export ").unwrap_or(l);
        let Some((key, value)) = l.split_once('=') else {
            return Err((
                n,
                "a variable without =: Compose takes it from the shell, which berth has not".into(),
            ));
        };
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err((n, "not a variable name".into()));
        }
        let value = if raw {
            value.to_string()
        } else {
            env_value(value.trim_start()).map_err(|m| (n, m.to_string()))?
        };
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn env_value(v: &str) -> Result<String, &'static str> {
    const INTERPOLATION: &str =
        "variable interpolation is not supported by berth: write the value, or single-quote it";
    let closing = |rest: &str| {
        let rest = rest.trim_start();
        rest.is_empty() || rest.starts_with('#')
    };
    if let Some(body) = v.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.clone().next() == Some('\'') => {
                    chars.next();
                    out.push('\'');
                }
                '\'' if closing(chars.as_str()) => return Ok(out),
                '\'' => return Err("text after the closing quote"),
                c => out.push(c),
            }
        }
        Err("no closing quote")
    } else if let Some(body) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some(c @ ('\\' | '"' | '\'' | '$')) => out.push(c),
                    Some(c) => {
                        out.push('\\');
                        out.push(c);
                    }
                    None => return Err("no closing quote"),
                },
                '$' => return Err(INTERPOLATION),
                '"' if closing(chars.as_str()) => return Ok(out),
                '"' => return Err("text after the closing quote"),
                c => out.push(c),
            }
        }
        Err("no closing quote")
    } else {
        let value = match v.find(" #") {
            Some(i) => &v[..i],
            None => v,
        }
        .trim_end();
        if value.contains('$') {
            return Err(INTERPOLATION);
        }
        Ok(value.to_string())
    }
}

/// A port, short (`"8080:80"`, `"127.0.0.1:81:80/udp"`, `80`) or long
/// (`target`, `published`, `host_ip`, `protocol`, `mode`), in the
/// manifest's short form. Ranges and IPv6 host addresses are errors.
fn port(n: &Node, path: &str, p: &mut Problems) -> Option<String> {
    let check = |s: &str, p: &mut Problems| {
        if s.contains('-') {
            p.at(path, n.line, "port ranges are not supported by berth");
            false
        } else if s.contains('[') || s.matches(':').count() > 2 {
            p.at(
                path,
                n.line,
                "IPv6 host addresses are not supported by berth's ports",
            );
            false
        } else {
            true
        }
    };
    match &n.v {
        V::Str(_) | V::Int(_) => {
            let s = text(n, path, p)?;
            check(&s, p).then_some(s)
        }
        V::Map(keys) => {
            let (mut target, mut published, mut host_ip, mut protocol) = (None, None, None, None);
            for (k, v) in keys {
                let kpath = format!("{path}.{k}");
                match k.as_str() {
                    "target" => target = text(v, &kpath, p),
                    "published" => published = text(v, &kpath, p),
                    "host_ip" => host_ip = text(v, &kpath, p),
                    "protocol" => protocol = text(v, &kpath, p),
                    // On one engine every published port is the host's.
                    "mode" => match text(v, &kpath, p).as_deref() {
                        Some("host" | "ingress") | None => {}
                        Some(_) => p.at(&kpath, v.line, "must be host or ingress"),
                    },
                    // Descriptive only: nothing the engine is told.
                    "name" | "app_protocol" => {
                        text(v, &kpath, p);
                    }
                    _ => p.at(&kpath, v.line, unsupported(k)),
                }
            }
            let Some(target) = target else {
                p.at(&format!("{path}.target"), n.line, "required");
                return None;
            };
            let mut s = match (&host_ip, &published) {
                (Some(ip), Some(h)) => format!("{ip}:{h}:{target}"),
                (None, Some(h)) => format!("{h}:{target}"),
                (None, None) => target,
                (Some(_), None) => {
                    p.at(
                        &format!("{path}.published"),
                        n.line,
                        "berth needs published with host_ip",
                    );
                    return None;
                }
            };
            match protocol.as_deref() {
                None | Some("tcp") => {}
                Some(proto) => s = format!("{s}/{proto}"),
            }
            check(&s, p).then_some(s)
        }
        _ => {
            wrong(p, path, n, "a port such as \"8080:80\" or a mapping");
            None
        }
    }
}

/// A volume, short (`./data:/data:ro`, `name:/path`) or long (`type`
/// `bind` or `volume`, `source`, `target`, `read_only`, `bind.selinux`,
/// `bind.create_host_path`), in the manifest's `source:target[:mode]`.
/// Relative bind sources resolve against the Compose file's directory;
/// named volumes must be declared in the top-level `volumes`.
fn volume(
    n: &Node,
    path: &str,
    dir: &Path,
    volumes: &BTreeMap<String, VolumeDecl>,
    p: &mut Problems,
) -> Option<String> {
    let source = |src: &str, p: &mut Problems| -> Option<String> {
        if src.starts_with('/') {
            Some(src.to_string())
        } else if src == "." || src.starts_with("./") || src.starts_with("../") || src == ".." {
            Some(normalize(&dir.join(src)).display().to_string())
        } else if src.starts_with('~') {
            p.at(path, n.line, "a path from ~ is not supported by berth");
            None
        } else if let Some(decl) = volumes.get(src) {
            Some(decl.engine_name.clone())
        } else {
            p.at(
                path,
                n.line,
                format!("volume {src} is not declared in the top-level volumes"),
            );
            None
        }
    };
    match &n.v {
        V::Str(_) => {
            let s = text(n, path, p)?;
            let (src, rest) = match s.split_once(':') {
                Some(x) => x,
                None => {
                    p.at(
                        path,
                        n.line,
                        "anonymous volumes are not supported by berth: name a source",
                    );
                    return None;
                }
            };
            Some(format!("{}:{rest}", source(src, p)?))
        }
        V::Map(keys) => {
            let (mut typ, mut src, mut target, mut mode) = (None, None, None, Vec::new());
            let mut ok = true;
            for (k, v) in keys {
                let kpath = format!("{path}.{k}");
                match k.as_str() {
                    "type" => typ = text(v, &kpath, p),
                    "source" => src = text(v, &kpath, p),
                    "target" => target = text(v, &kpath, p),
                    "read_only" => {
                        if boolean(v, &kpath, p) == Some(true) {
                            mode.insert(0, "ro".to_string());
                        }
                    }
                    "bind" => {
                        for (bk, bv) in entries(v, &kpath, p).unwrap_or_default() {
                            let bpath = format!("{kpath}.{bk}");
                            match bk.as_str() {
                                "selinux" => match text(bv, &bpath, p).as_deref() {
                                    Some(z @ ("z" | "Z")) => mode.push(z.to_string()),
                                    None => ok = false,
                                    Some(_) => {
                                        p.at(&bpath, bv.line, "must be z or Z");
                                        ok = false;
                                    }
                                },
                                // The engine creates a missing bind source, as Compose does by default.
                                "create_host_path" => {
                                    if boolean(bv, &bpath, p) == Some(false) {
                                        p.at(
                                            &bpath,
                                            bv.line,
                                            "false is not supported by berth (the engine creates a missing source)",
                                        );
                                        ok = false;
                                    }
                                }
                                _ => {
                                    p.at(&bpath, bv.line, unsupported(bk));
                                    ok = false;
                                }
                            }
                        }
                    }
                    _ => {
                        p.at(&kpath, v.line, unsupported(k));
                        ok = false;
                    }
                }
            }
            match typ.as_deref() {
                Some("bind" | "volume") => {}
                Some(_) => {
                    p.at(
                        &format!("{path}.type"),
                        n.line,
                        "berth mounts bind and volume types only",
                    );
                    return None;
                }
                None => {
                    p.at(&format!("{path}.type"), n.line, "required");
                    return None;
                }
            }
            let (Some(src), Some(target)) = (src, target) else {
                p.at(path, n.line, "source and target are required");
                return None;
            };
            if !ok {
                return None;
            }
            let src = source(&src, p)?;
            Some(if mode.is_empty() {
                format!("{src}:{target}")
            } else {
                format!("{src}:{target}:{}", mode.join(","))
            })
        }
        _ => {
            wrong(p, path, n, "a volume such as \"./data:/data\" or a mapping");
            None
        }
    }
}

/// `healthcheck`: `test` (a string run by the shell, `["CMD", …]`,
/// `["CMD-SHELL", "…"]`, `["NONE"]`), `interval`, `timeout`, `retries`,
/// `start_period`, `disable`.
fn healthcheck(n: &Node, path: &str, p: &mut Problems) -> Option<Healthcheck> {
    let keys = entries(n, path, p)?;
    let mut hc = Healthcheck {
        test: HealthTest::Shell(String::new()),
        interval: manifest::default_hc_interval(),
        timeout: manifest::default_hc_timeout(),
        retries: manifest::default_hc_retries(),
        start_period: manifest::default_hc_start(),
    };
    let mut test = None;
    let mut disable = false;
    for (k, v) in keys {
        let kpath = format!("{path}.{k}");
        match k.as_str() {
            "test" => {
                test = match &v.v {
                    V::Seq(_) => strings(v, &kpath, p).map(HealthTest::Exec),
                    _ => text(v, &kpath, p).map(HealthTest::Shell),
                };
                if let Some(HealthTest::Exec(words)) = &test
                    && !matches!(
                        words.first().map(String::as_str),
                        Some("CMD" | "CMD-SHELL" | "NONE")
                    )
                {
                    p.at(&kpath, v.line, "a list starts with CMD, CMD-SHELL or NONE");
                }
            }
            "interval" => hc.interval = duration(v, &kpath, p).unwrap_or(hc.interval),
            "timeout" => hc.timeout = duration(v, &kpath, p).unwrap_or(hc.timeout),
            "start_period" => hc.start_period = duration(v, &kpath, p).unwrap_or(hc.start_period),
            "retries" => match v.v {
                V::Int(r) if (0..=i64::from(u32::MAX)).contains(&r) => hc.retries = r as u32,
                _ => wrong(p, &kpath, v, "a number of retries"),
            },
            "disable" => disable = boolean(v, &kpath, p).unwrap_or(false),
            _ => p.at(&kpath, v.line, unsupported(k)),
        }
    }
    if disable {
        if test.as_ref().is_some_and(|t| !t.is_none()) {
            p.at(&format!("{path}.disable"), n.line, "disable with a test");
        }
        test = Some(HealthTest::Exec(vec!["NONE".to_string()]));
    }
    match test {
        Some(t) => {
            hc.test = t;
            Some(hc)
        }
        None => {
            p.at(
                &format!("{path}.test"),
                n.line,
                "required by berth (it cannot take the rest of the image's healthcheck)",
            );
            None
        }
    }
}

/// `logging`: `driver` and `options`.
fn logging(n: &Node, path: &str, p: &mut Problems) -> Option<LogConfig> {
    let keys = entries(n, path, p)?;
    let mut driver = None;
    let mut options = BTreeMap::new();
    for (k, v) in keys {
        let kpath = format!("{path}.{k}");
        match k.as_str() {
            "driver" => driver = text(v, &kpath, p),
            "options" => {
                options = key_values(v, &kpath, Ok(""), p)
                    .unwrap_or_default()
                    .into_iter()
                    .collect()
            }
            _ => p.at(&kpath, v.line, unsupported(k)),
        }
    }
    match driver {
        Some(driver) => Some(LogConfig { driver, options }),
        None => {
            p.at(&format!("{path}.driver"), n.line, "required by berth");
            None
        }
    }
}

/// `deploy`: only `resources.limits.cpus` and `resources.limits.memory`.
fn deploy(n: &Node, path: &str, spec: &mut ContainerSpec, origin: &mut Origin, p: &mut Problems) {
    for (k, v) in entries(n, path, p).unwrap_or_default() {
        let kpath = format!("{path}.{k}");
        if k != "resources" {
            p.at(&kpath, v.line, unsupported(k));
            continue;
        }
        for (rk, rv) in entries(v, &kpath, p).unwrap_or_default() {
            let rpath = format!("{kpath}.{rk}");
            if rk != "limits" {
                p.at(&rpath, rv.line, unsupported(rk));
                continue;
            }
            for (lk, lv) in entries(rv, &rpath, p).unwrap_or_default() {
                let lpath = format!("{rpath}.{lk}");
                match lk.as_str() {
                    "memory" => {
                        spec.memory = bytes(lv, &lpath, p).flatten();
                        origin.renames.push((
                            "memory".to_string(),
                            "deploy.resources.limits.memory".to_string(),
                        ));
                    }
                    "cpus" => {
                        spec.cpus = cpus(lv, &lpath, p).flatten();
                        origin.renames.push((
                            "cpus".to_string(),
                            "deploy.resources.limits.cpus".to_string(),
                        ));
                    }
                    _ => p.at(&lpath, lv.line, unsupported(lk)),
                }
            }
        }
    }
}

/// `depends_on`: a list of services, or a mapping of services to
/// `condition` (`service_started`, the default, or `service_healthy`),
/// `required` (true) and `restart` (false). berth waits for a dependency's
/// healthcheck whenever it has one, so both conditions map to `depends_on`.
fn depends_on(
    n: &Node,
    path: &str,
    origin: &mut Origin,
    healthy: &mut Vec<(String, usize, String)>,
    p: &mut Problems,
) -> Vec<String> {
    let mut out = Vec::new();
    match &n.v {
        V::Seq(_) => out = strings(n, path, p).unwrap_or_default(),
        V::Map(deps) => {
            for (dep, v) in deps {
                let dpath = format!("{path}.{dep}");
                origin.renames.push((
                    format!("depends_on[{}]", out.len()),
                    format!("depends_on.{dep}"),
                ));
                out.push(dep.clone());
                for (k, kv) in entries(v, &dpath, p).unwrap_or_default() {
                    let kpath = format!("{dpath}.{k}");
                    match k.as_str() {
                        "condition" => match text(kv, &kpath, p).as_deref() {
                            Some("service_started") | None => {}
                            Some("service_healthy") => healthy.push((kpath, kv.line, dep.clone())),
                            Some(_) => p.at(
                                &kpath,
                                kv.line,
                                "berth waits for service_started or service_healthy only",
                            ),
                        },
                        "required" => {
                            if boolean(kv, &kpath, p) == Some(false) {
                                p.at(&kpath, kv.line, "false is not supported by berth");
                            }
                        }
                        "restart" => {
                            if boolean(kv, &kpath, p) == Some(true) {
                                p.at(&kpath, kv.line, "true is not supported by berth");
                            }
                        }
                        _ => p.at(&kpath, kv.line, unsupported(k)),
                    }
                }
            }
        }
        _ => wrong(p, path, n, "a list or a mapping of services"),
    }
    out
}

/// The absolute directory of `file`, where the paths it names resolve
/// (the working directory for a bare file name).
pub fn absolute_dir(file: &Path) -> PathBuf {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    normalize(&std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()))
}

/// `a/./b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// `berth import compose`: the manifest TOML of cluster `cluster` whose
/// containers are the Compose file's services, validated as the manifest
/// would validate them (so loading the output gives the same plan as
/// `compose = "<file>"`).
pub fn import(
    text: &str,
    file: &str,
    dir: &Path,
    read: ReadFile,
    cluster: &str,
) -> Result<String, Vec<FieldError>> {
    let (mapped, mut errors) = load(text, file, dir, read);
    let manifest = Manifest {
        agent: Default::default(),
        clusters: [(cluster.to_string(), Cluster::from_compose(mapped))].into(),
    };
    errors.extend(manifest.validate());
    if !errors.is_empty() {
        return Err(errors);
    }
    #[derive(serde::Serialize)]
    struct Out<'a> {
        clusters: &'a BTreeMap<String, Cluster>,
    }
    let body = toml::to_string(&Out {
        clusters: &manifest.clusters,
    })
    .expect("containers serialize as TOML");
    Ok(format!(
        "# The services of {file} as berth containers (berth import compose).\n# Env values, env files' included, are written out as they are.\n\n[clusters.{cluster}]\n\n{body}"
    ))
}

/// The cluster names of `berth import compose`: the file's `name`, else
/// its file name up to the first dot (`web.compose.yaml` → `web`).
pub fn default_cluster_name(text: &str, file: &Path) -> Option<String> {
    let from_yaml = MarkedYaml::load_from_str(text).ok().and_then(|docs| {
        let doc = docs.into_iter().next()?;
        let YamlData::Mapping(m) = &doc.data else {
            return None;
        };
        m.iter().find_map(|(k, v)| match (&k.data, &v.data) {
            (YamlData::Value(Scalar::String(k)), YamlData::Value(Scalar::String(v)))
                if k == "name" =>
            {
                Some(v.to_string())
            }
            _ => None,
        })
    });
    from_yaml.or_else(|| {
        let name = file.file_name()?.to_str()?;
        Some(name.split('.').next().unwrap_or(name).to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "web.compose.yaml";
    const DIR: &str = "/srv/app";

    /// Env files the tests read, by absolute path.
    fn files(path: &Path) -> std::io::Result<String> {
        match path.to_str().unwrap() {
            "/srv/app/a.env" => Ok("# a comment\n\nA=from-a\nSHARED=a\nexport E=exported\n".into()),
            "/srv/app/b.env" => Ok(
                "SHARED=b\nQ=\"two\\twords\" # comment\nS='lit $ral'\nU=plain # comment\nV=\n"
                    .into(),
            ),
            "/srv/app/raw.env" => Ok("R=\"$kept as is\"\n".into()),
            "/srv/app/no-value.env" => Ok("OK=1\nFROM_SHELL\n".into()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        }
    }

    fn map(yaml: &str) -> (Vec<ContainerSpec>, Vec<String>) {
        let (mapped, errors) = load(yaml, FILE, Path::new(DIR), &files);
        (
            mapped.containers,
            errors.iter().map(ToString::to_string).collect(),
        )
    }

    /// The one service `app` with image `r/app:{version}` and `body`
    /// (its other keys, indented by 4).
    fn service(body: &str) -> String {
        format!("services:\n  app:\n    image: \"r/app:{{version}}\"\n{body}")
    }

    fn app() -> ContainerSpec {
        ContainerSpec {
            image: "r/app:{version}".into(),
            ..blank("app")
        }
    }

    fn hc(test: HealthTest) -> Healthcheck {
        Healthcheck {
            test,
            interval: manifest::default_hc_interval(),
            timeout: manifest::default_hc_timeout(),
            retries: manifest::default_hc_retries(),
            start_period: manifest::default_hc_start(),
        }
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn kv(v: &[(&str, &str)]) -> BTreeMap<String, String> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_supported_key_in_every_form_maps_onto_the_manifest() {
        type Want = fn(&mut ContainerSpec);
        let cases: &[(&str, Want)] = &[
            ("", |_| {}),
            // command and entrypoint: a list, a string split as a shell would, null.
            ("    command: [\"sh\", \"-c\", \"echo hi\"]\n", |c| {
                c.command = Some(strs(&["sh", "-c", "echo hi"]))
            }),
            ("    command: sh -c 'echo \"$$HOME\"'\n", |c| {
                c.command = Some(strs(&["sh", "-c", "echo \"$HOME\""]))
            }),
            ("    command: null\n", |_| {}),
            ("    command: []\n", |c| c.command = Some(vec![])),
            ("    entrypoint: /bin/app --flag\n", |c| {
                c.entrypoint = Some(strs(&["/bin/app", "--flag"]))
            }),
            ("    entrypoint: [\"/bin/app\"]\n", |c| {
                c.entrypoint = Some(strs(&["/bin/app"]))
            }),
            // environment: map and list; numbers and booleans as text; $$.
            (
                "    environment:\n      A: x\n      N: 5\n      F: 1.5\n      B: true\n      E: \"\"\n      D: a$$b\n",
                |c| {
                    c.env = kv(&[
                        ("A", "x"),
                        ("N", "5"),
                        ("F", "1.5"),
                        ("B", "true"),
                        ("E", ""),
                        ("D", "a$b"),
                    ])
                },
            ),
            (
                "    environment:\n      - A=x\n      - B=y=z\n      - C=\n",
                |c| c.env = kv(&[("A", "x"), ("B", "y=z"), ("C", "")]),
            ),
            // env_file: one path, a list, the long form; later files win,
            // environment wins over them; a missing optional file is skipped.
            ("    env_file: a.env\n", |c| {
                c.env = kv(&[("A", "from-a"), ("SHARED", "a"), ("E", "exported")])
            }),
            (
                "    env_file:\n      - ./a.env\n      - path: b.env\n        required: true\n      - path: gone.env\n        required: false\n    environment:\n      A: override\n",
                |c| {
                    c.env = kv(&[
                        ("A", "override"),
                        ("E", "exported"),
                        ("SHARED", "b"),
                        ("Q", "two\twords"),
                        ("S", "lit $ral"),
                        ("U", "plain"),
                        ("V", ""),
                    ])
                },
            ),
            (
                "    env_file:\n      - path: raw.env\n        format: raw\n",
                |c| c.env = kv(&[("R", "\"$kept as is\"")]),
            ),
            // ports: short (strings, a number) and long.
            (
                "    ports:\n      - \"8080:80\"\n      - 9000\n      - 127.0.0.1:53:53/udp\n      - target: 443\n        published: \"8443\"\n        host_ip: 127.0.0.1\n        protocol: tcp\n        mode: host\n        name: https\n        app_protocol: https\n      - target: 81\n        published: 8081\n        protocol: udp\n      - target: 82\n",
                |c| {
                    c.ports = strs(&[
                        "8080:80",
                        "9000",
                        "127.0.0.1:53:53/udp",
                        "127.0.0.1:8443:443",
                        "8081:81/udp",
                        "82",
                    ])
                },
            ),
            // volumes: short and long; relative sources from the file's
            // directory; named volumes by their engine name.
            (
                "    volumes:\n      - /var/log:/log\n      - ./conf:/etc/app:ro\n      - ../shared:/shared:ro,z\n      - data:/data\n      - cache:/cache:rw\n      - type: bind\n        source: ./certs\n        target: /certs\n        read_only: true\n        bind:\n          selinux: Z\n          create_host_path: true\n      - type: volume\n        source: data\n        target: /more\nvolumes:\n  data:\n  cache:\n    name: shared-cache\n    external: true\n",
                |c| {
                    c.volumes = strs(&[
                        "/var/log:/log",
                        "/srv/app/conf:/etc/app:ro",
                        "/srv/shared:/shared:ro,z",
                        "data:/data",
                        "shared-cache:/cache:rw",
                        "/srv/app/certs:/certs:ro,Z",
                        "data:/more",
                    ])
                },
            ),
            ("    network_mode: host\n", |c| {
                c.network_mode = Some("host".into())
            }),
            ("    network_mode: container:sidecar\n", |c| {
                c.network_mode = Some("container:sidecar".into())
            }),
            ("    user: \"1000:1000\"\n", |c| {
                c.user = Some("1000:1000".into())
            }),
            ("    user: 1000\n", |c| c.user = Some("1000".into())),
            // labels: map and list (a bare key is an empty label).
            (
                "    labels:\n      com.example.team: edge\n      n: 1\n",
                |c| c.labels = kv(&[("com.example.team", "edge"), ("n", "1")]),
            ),
            (
                "    labels:\n      - com.example.team=edge\n      - flag\n",
                |c| c.labels = kv(&[("com.example.team", "edge"), ("flag", "")]),
            ),
            // healthcheck: every test form, durations, disable.
            (
                "    healthcheck:\n      test: [\"CMD\", \"curl\", \"-f\", \"http://localhost\"]\n      interval: 1m30s\n      timeout: 1500ms\n      retries: 5\n      start_period: 1h5m30s20ms\n",
                |c| {
                    c.healthcheck = Some(Healthcheck {
                        test: HealthTest::Exec(strs(&["CMD", "curl", "-f", "http://localhost"])),
                        interval: Dur(Duration::from_secs(90)),
                        timeout: Dur(Duration::from_millis(1500)),
                        retries: 5,
                        start_period: Dur(Duration::from_millis(3_930_020)),
                    })
                },
            ),
            (
                "    healthcheck:\n      test: [\"CMD-SHELL\", \"curl -f http://localhost || exit 1\"]\n",
                |c| {
                    c.healthcheck = Some(hc(HealthTest::Exec(strs(&[
                        "CMD-SHELL",
                        "curl -f http://localhost || exit 1",
                    ]))))
                },
            ),
            (
                "    healthcheck:\n      test: curl -f http://localhost || exit 1\n",
                |c| {
                    c.healthcheck = Some(hc(HealthTest::Shell(
                        "curl -f http://localhost || exit 1".into(),
                    )))
                },
            ),
            ("    healthcheck:\n      test: [\"NONE\"]\n", |c| {
                c.healthcheck = Some(hc(HealthTest::Exec(strs(&["NONE"]))))
            }),
            ("    healthcheck:\n      disable: true\n", |c| {
                c.healthcheck = Some(hc(HealthTest::Exec(strs(&["NONE"]))))
            }),
            ("    stop_signal: SIGQUIT\n", |c| {
                c.stop_signal = Some("SIGQUIT".into())
            }),
            ("    stop_grace_period: 1m30s\n", |c| {
                c.stop_grace_period = Dur(Duration::from_secs(90))
            }),
            ("    stop_grace_period: 1.5s\n", |c| {
                c.stop_grace_period = Dur(Duration::from_millis(1500))
            }),
            // memory and CPUs: top-level keys and deploy's; 0 is no limit.
            ("    mem_limit: 256m\n    cpus: 0.5\n", |c| {
                c.memory = Some(Bytes(256 << 20));
                c.cpus = Some(0.5);
            }),
            ("    mem_limit: 1gb\n    cpus: \"1.50\"\n", |c| {
                c.memory = Some(Bytes(1 << 30));
                c.cpus = Some(1.5);
            }),
            ("    mem_limit: 67108864\n", |c| {
                c.memory = Some(Bytes(64 << 20))
            }),
            ("    mem_limit: 0\n    cpus: 0\n", |_| {}),
            (
                "    deploy:\n      resources:\n        limits:\n          cpus: '0.25'\n          memory: 50M\n",
                |c| {
                    c.memory = Some(Bytes(50 << 20));
                    c.cpus = Some(0.25);
                },
            ),
            (
                "    mem_limit: 50m\n    cpus: 2\n    deploy:\n      resources:\n        limits:\n          cpus: 2\n          memory: 50M\n",
                |c| {
                    c.memory = Some(Bytes(50 << 20));
                    c.cpus = Some(2.0);
                },
            ),
            (
                "    logging:\n      driver: json-file\n      options:\n        max-size: 10m\n        max-file: 3\n",
                |c| {
                    c.log = Some(LogConfig {
                        driver: "json-file".into(),
                        options: kv(&[("max-size", "10m"), ("max-file", "3")]),
                    })
                },
            ),
            ("    logging:\n      driver: none\n", |c| {
                c.log = Some(LogConfig {
                    driver: "none".into(),
                    options: BTreeMap::new(),
                })
            }),
            // restart and pull_policy: what berth does anyway, or its pull policies.
            ("    restart: unless-stopped\n", |_| {}),
            ("    restart: always\n", |_| {}),
            ("    pull_policy: always\n", |c| c.pull = PullPolicy::Always),
            ("    pull_policy: if_not_present\n", |_| {}),
            // Extensions are ignored, as Compose ignores them.
            ("    x-note: anything\n", |_| {}),
        ];
        for (body, want) in cases {
            let (got, errors) = map(&service(body));
            assert_eq!(errors, Vec::<String>::new(), "{body}");
            let mut expected = app();
            want(&mut expected);
            assert_eq!(got, vec![expected], "{body}");
        }
    }

    #[test]
    fn depends_on_in_both_forms() {
        let db = "  db:\n    image: \"r/db:{version}\"\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n  cache:\n    image: \"r/cache:{version}\"\n";
        for body in [
            "    depends_on: [db, cache]\n",
            "    depends_on:\n      - db\n      - cache\n",
            "    depends_on:\n      db:\n        condition: service_healthy\n        restart: false\n        required: true\n      cache:\n",
            "    depends_on:\n      db:\n        condition: service_started\n      cache:\n        condition: service_started\n",
        ] {
            let (got, errors) = map(&format!("{}{db}", service(body)));
            assert_eq!(errors, Vec::<String>::new(), "{body}");
            assert_eq!(
                got.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                ["app", "db", "cache"],
                "in the file's order"
            );
            assert_eq!(got[0].depends_on, strs(&["db", "cache"]), "{body}");
        }
    }

    #[test]
    fn anchors_aliases_and_merge_keys_are_applied() {
        let yaml = "x-common: &common\n  restart: always\n  labels:\n    team: edge\n  environment: &env\n    A: common\n    B: common\nx-more: &more\n  user: nobody\n  labels:\n    team: ignored\nservices:\n  app:\n    <<: [*common, *more]\n    image: \"r/app:{version}\"\n    environment:\n      <<: *env\n      B: own\n";
        let (got, errors) = map(yaml);
        assert_eq!(errors, Vec::<String>::new());
        let mut want = app();
        want.labels = kv(&[("team", "edge")]);
        want.env = kv(&[("A", "common"), ("B", "own")]);
        want.user = Some("nobody".into());
        assert_eq!(got, vec![want]);
    }

    #[test]
    fn top_level_keys() {
        for (top, ok) in [
            ("version: \"3.9\"\n", true),
            ("name: shop\n", true),
            ("x-anything:\n  a: 1\n", true),
            ("networks: {}\n", true),
            ("networks:\n", true),
            ("secrets: {}\nconfigs: {}\n", true),
            ("volumes:\n  data: {}\n", true),
            ("networks:\n  front: {}\n", false),
            ("secrets:\n  key:\n    file: ./key\n", false),
            ("configs:\n  conf:\n    file: ./conf\n", false),
            ("volumes:\n  data:\n    driver: local\n", false),
            ("include:\n  - other.yaml\n", false),
        ] {
            let (_, errors) = map(&format!("{top}{}", service("")));
            assert_eq!(errors.is_empty(), ok, "{top}: {errors:?}");
            if !ok {
                let key = top.split(':').next().unwrap();
                assert!(
                    errors[0].starts_with(&format!("{FILE}: {key}")),
                    "{top}: {errors:?}"
                );
                assert!(errors[0].contains("not supported by berth"), "{errors:?}");
            }
        }
        let (_, errors) = map("version: \"3\"\n");
        assert_eq!(errors, [format!("{FILE}: services: required")]);
        let (_, errors) = map("");
        assert_eq!(
            errors,
            [format!("{FILE}: services: required: the file is empty")]
        );
        let (_, errors) = map("services: {}\n");
        assert!(errors[0].contains("at least one service"), "{errors:?}");
    }

    #[test]
    fn unsupported_keys_are_named_with_their_path() {
        for (body, path) in [
            ("    privileged: true\n", "services.app.privileged"),
            ("    build: .\n", "services.app.build"),
            ("    container_name: web\n", "services.app.container_name"),
            ("    working_dir: /app\n", "services.app.working_dir"),
            ("    networks: [front]\n", "services.app.networks"),
            ("    secrets: [key]\n", "services.app.secrets"),
            ("    cap_add: [NET_ADMIN]\n", "services.app.cap_add"),
            (
                "    deploy:\n      replicas: 2\n",
                "services.app.deploy.replicas",
            ),
            (
                "    deploy:\n      resources:\n        reservations:\n          memory: 1g\n",
                "services.app.deploy.resources.reservations",
            ),
            (
                "    deploy:\n      resources:\n        limits:\n          pids: 10\n",
                "services.app.deploy.resources.limits.pids",
            ),
            (
                "    healthcheck:\n      test: \"true\"\n      start_interval: 1s\n",
                "services.app.healthcheck.start_interval",
            ),
            (
                "    logging:\n      driver: x\n      format: y\n",
                "services.app.logging.format",
            ),
            (
                "    ports:\n      - target: 80\n        published: 8080\n        extra: 1\n",
                "services.app.ports[0].extra",
            ),
            (
                "    volumes:\n      - type: bind\n        source: /a\n        target: /b\n        consistency: cached\n",
                "services.app.volumes[0].consistency",
            ),
            (
                "    volumes:\n      - type: volume\n        source: data\n        target: /b\n        volume:\n          nocopy: true\nvolumes:\n  data:\n",
                "services.app.volumes[0].volume",
            ),
            (
                "    volumes:\n      - type: bind\n        source: /a\n        target: /b\n        bind:\n          propagation: shared\n",
                "services.app.volumes[0].bind.propagation",
            ),
            (
                "    depends_on:\n      db:\n        wait: 1\n",
                "services.app.depends_on.db.wait",
            ),
            (
                "    env_file:\n      - path: a.env\n        mode: 1\n",
                "services.app.env_file[0].mode",
            ),
        ] {
            let (_, errors) = map(&service(body));
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with(&format!("{FILE}: {path}: not supported by berth"))),
                "{body}: want {path}, got {errors:?}"
            );
        }
    }

    #[test]
    fn values_berth_cannot_express_are_errors_with_their_path() {
        for (body, path, says) in [
            (
                "    environment:\n      - FROM_SHELL\n",
                "services.app.environment[0]",
                "has no value",
            ),
            (
                "    environment:\n      FROM_SHELL:\n",
                "services.app.environment.FROM_SHELL",
                "has no value",
            ),
            (
                "    environment:\n      A: ${HOME}\n",
                "services.app.environment.A",
                "interpolation",
            ),
            (
                "    environment:\n      A: $HOME\n",
                "services.app.environment.A",
                "interpolation",
            ),
            (
                "    env_file: gone.env\n",
                "services.app.env_file",
                "cannot read gone.env",
            ),
            (
                "    env_file: no-value.env\n",
                "services.app.env_file",
                "no-value.env, line 2: a variable without =",
            ),
            (
                "    command: \"sh -c 'oops\"\n",
                "services.app.command",
                "unbalanced quotes",
            ),
            (
                "    command: 5\n",
                "services.app.command",
                "expected a string or a list",
            ),
            (
                "    ports:\n      - \"8000-8010:8000-8010\"\n",
                "services.app.ports[0]",
                "ranges",
            ),
            (
                "    ports:\n      - \"[::1]:80:80\"\n",
                "services.app.ports[0]",
                "IPv6",
            ),
            (
                "    ports:\n      - target: 80\n        host_ip: 127.0.0.1\n",
                "services.app.ports[0].published",
                "host_ip",
            ),
            (
                "    ports:\n      - published: 80\n",
                "services.app.ports[0].target",
                "required",
            ),
            (
                "    ports:\n      - target: 80\n        mode: overlay\n",
                "services.app.ports[0].mode",
                "host or ingress",
            ),
            (
                "    volumes:\n      - /anonymous\n",
                "services.app.volumes[0]",
                "anonymous",
            ),
            (
                "    volumes:\n      - ~/data:/data\n",
                "services.app.volumes[0]",
                "~",
            ),
            (
                "    volumes:\n      - undeclared:/data\n",
                "services.app.volumes[0]",
                "not declared",
            ),
            (
                "    volumes:\n      - type: tmpfs\n        target: /tmp\n",
                "services.app.volumes[0].type",
                "bind and volume",
            ),
            (
                "    volumes:\n      - type: bind\n        source: /a\n        target: /b\n        bind:\n          create_host_path: false\n",
                "services.app.volumes[0].bind.create_host_path",
                "false",
            ),
            (
                "    network_mode: service:db\n",
                "services.app.network_mode",
                "service:<name>",
            ),
            (
                "    healthcheck:\n      interval: 5s\n",
                "services.app.healthcheck.test",
                "required",
            ),
            (
                "    healthcheck:\n      test: [\"RUN\", \"x\"]\n",
                "services.app.healthcheck.test",
                "CMD, CMD-SHELL or NONE",
            ),
            (
                "    healthcheck:\n      test: \"true\"\n      interval: 30\n",
                "services.app.healthcheck.interval",
                "needs a unit",
            ),
            (
                "    healthcheck:\n      test: \"true\"\n      timeout: 5 seconds\n",
                "services.app.healthcheck.timeout",
                "invalid duration",
            ),
            (
                "    healthcheck:\n      test: \"true\"\n      retries: -1\n",
                "services.app.healthcheck.retries",
                "expected a number of retries",
            ),
            (
                "    healthcheck:\n      test: \"true\"\n      disable: true\n",
                "services.app.healthcheck.disable",
                "with a test",
            ),
            (
                "    mem_limit: lots\n",
                "services.app.mem_limit",
                "invalid size",
            ),
            ("    cpus: many\n", "services.app.cpus", "number of CPUs"),
            (
                "    mem_limit: 1g\n    deploy:\n      resources:\n        limits:\n          memory: 2g\n",
                "services.app.deploy.resources.limits.memory",
                "differs from mem_limit",
            ),
            (
                "    cpus: 1\n    deploy:\n      resources:\n        limits:\n          cpus: 2\n",
                "services.app.deploy.resources.limits.cpus",
                "differs from cpus",
            ),
            (
                "    logging:\n      options:\n        a: b\n",
                "services.app.logging.driver",
                "required",
            ),
            (
                "    labels:\n      com.docker.compose.project: x\n",
                "services.app.labels.com.docker.compose.project",
                "reserved",
            ),
            (
                "    restart: \"no\"\n",
                "services.app.restart",
                "always or unless-stopped",
            ),
            (
                "    restart: on-failure\n",
                "services.app.restart",
                "always or unless-stopped",
            ),
            (
                "    pull_policy: build\n",
                "services.app.pull_policy",
                "always or missing",
            ),
            (
                "    depends_on:\n      db:\n        condition: service_completed_successfully\n",
                "services.app.depends_on.db.condition",
                "service_started or service_healthy",
            ),
            (
                "    depends_on:\n      db:\n        required: false\n",
                "services.app.depends_on.db.required",
                "false",
            ),
            (
                "    depends_on:\n      db:\n        restart: true\n",
                "services.app.depends_on.db.restart",
                "true",
            ),
            (
                "    depends_on: db\n",
                "services.app.depends_on",
                "a list or a mapping",
            ),
            (
                "    user: [a]\n",
                "services.app.user",
                "expected a string, found a list",
            ),
            (
                "    stop_grace_period: !custom 1s\n",
                "services.app.stop_grace_period",
                "YAML tag !custom",
            ),
        ] {
            let (_, errors) = map(&service(body));
            let hit = errors
                .iter()
                .find(|e| e.starts_with(&format!("{FILE}: {path}: ")))
                .unwrap_or_else(|| panic!("{body}: want {path}, got {errors:?}"));
            assert!(hit.contains(says), "{body}: {hit}");
            assert!(hit.contains("(line "), "{body}: {hit}");
        }
    }

    #[test]
    fn interpolation_is_an_error_wherever_a_value_has_it() {
        let (_, errors) = map(
            "services:\n  app:\n    image: \"r/app:${TAG}\"\n    labels:\n      a: \"$$ok\"\n      b: \"$x\"\n    x-ignored: ${NOT_READ}\n",
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with(&format!(
            "{FILE}: services.app.image: variable interpolation"
        )));
        assert!(errors[1].starts_with(&format!(
            "{FILE}: services.app.labels.b: variable interpolation"
        )));
        let (got, errors) = map(&service("    labels:\n      price: \"5$ or $$5 or $\"\n"));
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(got[0].labels["price"], "5$ or $5 or $");
    }

    #[test]
    fn service_healthy_needs_a_healthcheck() {
        let yaml = format!(
            "{}  db:\n    image: \"r/db:{{version}}\"\n  off:\n    image: \"r/off:{{version}}\"\n    healthcheck:\n      test: [\"NONE\"]\n",
            service(
                "    depends_on:\n      db:\n        condition: service_healthy\n      off:\n        condition: service_healthy\n"
            )
        );
        let (_, errors) = map(&yaml);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with(&format!(
            "{FILE}: services.app.depends_on.db.condition: service_healthy, but service db has no healthcheck"
        )));
        assert!(
            errors[1].contains("service off has no healthcheck"),
            "{errors:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let yaml = "networks:\n  front: {}\nservices:\n  web:\n    privileged: true\n    environment:\n      - FROM_SHELL\n    ports:\n      - \"1-2:1-2\"\n    healthcheck:\n      interval: 5\n  db:\n    image: \"r/db:{version}\"\n    tty: true\n  cache: 5\n";
        let (got, errors) = map(yaml);
        let paths: Vec<&str> = errors
            .iter()
            .map(|e| {
                e.trim_start_matches(&format!("{FILE}: "))
                    .split(": ")
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            paths,
            [
                "networks",
                "services.web.privileged",
                "services.web.environment[0]",
                "services.web.ports[0]",
                "services.web.healthcheck.interval",
                "services.web.healthcheck.test",
                "services.web.image",
                "services.db.tty",
                "services.cache",
            ],
            "{errors:#?}"
        );
        // Every service still gives a container, for the manifest's checks.
        assert_eq!(
            got.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["web", "db", "cache"]
        );
    }

    #[test]
    fn yaml_errors_give_the_line_and_no_value() {
        for (yaml, says) in [
            (
                "services:\n  web:\n    image: a\n    image: b\n",
                "line 4, column 5: duplicated key",
            ),
            ("services:\n  web: [\n", "line 3"),
            ("services: {}\n---\nservices: {}\n", "2 YAML documents"),
        ] {
            let (got, errors) = map(yaml);
            assert!(got.is_empty());
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].contains(says), "{yaml}: {errors:?}");
        }
        let (_, errors) = map(&service("    environment:\n      A: [\"hunter2\"]\n"));
        assert!(
            errors[0].contains("expected a string, found a list"),
            "{errors:?}"
        );
        assert!(!errors[0].contains("hunter2"), "{errors:?}");
    }

    #[test]
    fn validation_problems_are_named_by_their_compose_keys() {
        let yaml = "services:\n  Web:\n    image: web:latest\n  app:\n    image: \"r/app:{version}\"\n    environment:\n      A: x\n      \"A=B\": y\n    ports: [\"99999:80\"]\n    mem_limit: 1k\n    deploy:\n      resources:\n        limits:\n          cpus: 99999\n    logging:\n      driver: \"\"\n    depends_on:\n      ghost:\n    healthcheck:\n      test: \"true\"\n      retries: 0\n  broken: 7\n";
        let (mapped, mapping) = load(yaml, FILE, Path::new(DIR), &files);
        assert_eq!(mapping.len(), 1, "{mapping:?}");
        let m = Manifest {
            agent: Default::default(),
            clusters: [("web".to_string(), Cluster::from_compose(mapped))].into(),
        };
        let paths: Vec<String> = m.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "services.Web",
                "services.Web.image",
                "services.app.environment.A=B",
                "services.app.ports[0]",
                "services.app.healthcheck.retries",
                "services.app.mem_limit",
                "services.app.deploy.resources.limits.cpus",
                "services.app.logging.driver",
                "services.app.depends_on.ghost",
            ]
            .map(|p| format!("{FILE}: {p}")),
            "the broken service's own problem is reported once, by the mapping"
        );
    }

    #[test]
    fn compose_durations() {
        for (s, want) in [
            ("0", Duration::ZERO),
            ("10ms", Duration::from_millis(10)),
            ("40s", Duration::from_secs(40)),
            ("1m30s", Duration::from_secs(90)),
            ("1h5m30s20ms", Duration::from_millis(3_930_020)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("1500us", Duration::from_micros(1500)),
            ("2µs", Duration::from_micros(2)),
            ("7ns", Duration::from_nanos(7)),
        ] {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
        for s in [
            "",
            "10",
            "1d",
            "1m30",
            "s",
            "1..5s",
            "1 s",
            "-1s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
    }

    #[test]
    fn env_file_format() {
        let text = "# comment\n\nA=1\nexport B=2\nC=\"q \\\"x\\\" \\n\" # c\nD='single $ kept'\nE=unquoted # comment\nF=no# comment\nG=\nH = spaced\n";
        assert_eq!(
            parse_env_file(text, false),
            Ok(vec![
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
                ("C".into(), "q \"x\" \n".into()),
                ("D".into(), "single $ kept".into()),
                ("E".into(), "unquoted".into()),
                ("F".into(), "no# comment".into()),
                ("G".into(), "".into()),
                ("H".into(), "spaced".into()),
            ])
        );
        for (text, line) in [
            ("A=1\nB\n", 2),
            ("A=$HOME\n", 1),
            ("A=\"${HOME}\"\n", 1),
            ("A=\"open\n", 1),
            ("A='x' y\n", 1),
            ("=x\n", 1),
        ] {
            assert_eq!(
                parse_env_file(text, false).map_err(|e| e.0),
                Err(line),
                "{text}"
            );
        }
        assert_eq!(
            parse_env_file("A=\"$raw\" # all of it\n", true),
            Ok(vec![("A".into(), "\"$raw\" # all of it".into())])
        );
        let (_, m) = parse_env_file("SECRET=\"hunter2\n", false).unwrap_err();
        assert!(!m.contains("hunter2"), "{m}");
    }

    #[test]
    fn the_default_cluster_name() {
        let f = Path::new("deploy/web.compose.yaml");
        assert_eq!(
            default_cluster_name("name: shop\nservices: {}\n", f).as_deref(),
            Some("shop")
        );
        assert_eq!(
            default_cluster_name("services: {}\n", f).as_deref(),
            Some("web")
        );
        assert_eq!(
            default_cluster_name("services: {}\n", Path::new("compose.yaml")).as_deref(),
            Some("compose")
        );
    }

    #[test]
    fn import_prints_toml_that_loads_as_the_same_containers() {
        let yaml = service(
            "    environment:\n      A: \"x\\\"y\"\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 1m30s\n      timeout: 1500ms\n    mem_limit: 256m\n    cpus: 0.5\n    logging:\n      driver: json-file\n      options:\n        max-size: 10m\n    ports: [\"8080:80\"]\n    volumes: [\"./d:/d\"]\n    stop_grace_period: 1m\n    pull_policy: always\n",
        ) + "  db:\n    image: \"r/db:{version}\"\n    depends_on: [app]\n";
        let toml = import(&yaml, FILE, Path::new(DIR), &files, "shop").unwrap();
        assert!(toml.contains("[clusters.shop]\n"), "{toml}");
        assert!(toml.contains("[[clusters.shop.containers]]\n"), "{toml}");
        let loaded = Manifest::parse(&toml, Path::new("m.toml")).unwrap();
        let (mapped, errors) = load(&yaml, FILE, Path::new(DIR), &files);
        assert!(errors.is_empty());
        assert_eq!(loaded.clusters["shop"].containers, mapped.containers);
        assert_eq!(loaded.clusters["shop"].compose, None);
        let err = import(
            &service("    tty: true\n"),
            FILE,
            Path::new(DIR),
            &files,
            "shop",
        )
        .unwrap_err();
        assert_eq!(err[0].path, format!("{FILE}: services.app.tty"));
        let err = import(&service(""), FILE, Path::new(DIR), &files, "Shop").unwrap_err();
        assert_eq!(err[0].path, "clusters.Shop");
    }
}
