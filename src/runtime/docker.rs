//! The Docker Engine adapter (bollard). The only module that speaks the
//! engine's API; everything else sees [`Observed`] and [`EngineEvent`].
//!
//! The engine is found the way the docker CLI finds it: `DOCKER_HOST`
//! (`unix://…` or `tcp://…`), else `unix:///var/run/docker.sock`. The API
//! version is negotiated down to the engine's.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HealthConfig, HealthStatusEnum, HostConfig, HostConfigLogConfig,
    PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, RestartContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::auth::RegistryAuth;
use super::*;
use crate::backoff::{IMAGE_PULL, random_unit};
use crate::manifest::{ContainerSpec, PullPolicy, parse_port};
use crate::plan::{Plan, PlannedComponent};
use crate::secrets::SecretEnv;

/// Timeout of every non-streaming engine call (bollard applies it to the
/// response headers; streams such as events and pulls are not cut by it).
pub const ENGINE_CALL_TIMEOUT_SECS: u64 = 60;

/// A connection to the engine, scoped to one namespace.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    host: String,
    namespace: String,
    auth: std::sync::Arc<RegistryAuth>,
}

/// The engine's form of registry credentials: an identity token goes in
/// `identitytoken` with no user name or password (docker's own mapping).
fn engine_credentials(c: super::auth::Credentials) -> DockerCredentials {
    DockerCredentials {
        username: c.username,
        password: c.password,
        serveraddress: Some(c.server),
        identitytoken: c.identity_token,
        ..Default::default()
    }
}

fn host_from_env() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string())
}

impl Engine {
    /// Connects and negotiates the API version. Fails if the engine does not answer.
    pub async fn connect(namespace: &str, auth: RegistryAuth) -> Result<Engine, EngineError> {
        let host = host_from_env();
        let cerr = |e: BollardError| EngineError::Connect {
            host: host.clone(),
            what: String::new(),
            source: Box::new(e),
        };
        let docker = Docker::connect_with_defaults()
            .map_err(cerr)?
            .with_timeout(Duration::from_secs(ENGINE_CALL_TIMEOUT_SECS));
        let docker = docker.negotiate_version().await.map_err(cerr)?;
        Ok(Engine {
            docker,
            host: host.clone(),
            namespace: namespace.to_string(),
            auth: std::sync::Arc::new(auth),
        })
    }

    /// Checks the engine answers.
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| EngineError::Connect {
                host: self.host.clone(),
                what: "ping: ".into(),
                source: Box::new(e),
            })
    }

    /// The container name of a component: `<namespace>-<component>`.
    pub fn container_name(&self, component: &str) -> String {
        format!("{}-{}", self.namespace, component)
    }

    /// Makes sure the component's image is present, pulling it (with the
    /// [`IMAGE_PULL`] schedule, `attempts` tries) when needed. Returns the
    /// local image id and the repo digest, if the registry gave one.
    #[tracing::instrument(skip_all, fields(component = %c.name, image = %c.create_ref()))]
    pub async fn ensure_image(
        &self,
        c: &PlannedComponent,
        attempts: u32,
        cancel: &CancellationToken,
    ) -> Result<(String, Option<String>), EngineError> {
        let reference = c.create_ref().to_string();
        let need_pull = match (c.digest.is_some(), c.spec.pull) {
            (true, _) | (false, PullPolicy::Missing) => {
                self.docker.inspect_image(&reference).await.is_err()
            }
            (false, PullPolicy::Always) => c.image_id.is_none(),
        };
        if need_pull {
            let mut attempt = 0;
            loop {
                attempt += 1;
                tracing::info!(attempt, "pulling image");
                match self.pull(&reference, c.spec.registry_auth).await {
                    Ok(()) => break,
                    Err(message) if attempt >= attempts => {
                        return Err(EngineError::Pull {
                            image: reference,
                            attempts: attempt,
                            message,
                        });
                    }
                    Err(message) => {
                        let wait = IMAGE_PULL.delay(attempt, random_unit());
                        tracing::warn!(attempt, retry_in = ?wait, error = %message, "image pull failed");
                        tokio::select! {
                            _ = cancel.cancelled() => return Err(EngineError::Cancelled),
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        }
        let inspect = self
            .docker
            .inspect_image(&reference)
            .await
            .map_err(|e| api(EngineOp::InspectImage, &reference, e))?;
        let id = inspect.id.unwrap_or_default();
        let repo = repository(&c.image);
        let digest = inspect
            .repo_digests
            .unwrap_or_default()
            .into_iter()
            .find(|d| d.split_once('@').is_some_and(|(r, _)| r == repo));
        Ok((id, digest))
    }

    async fn pull(
        &self,
        reference: &str,
        mode: super::auth::RegistryAuthMode,
    ) -> Result<(), String> {
        let (from, tag) = split_reference(reference);
        let mut opts = CreateImageOptionsBuilder::default().from_image(from);
        if let Some(t) = tag {
            opts = opts.tag(t);
        }
        let lookup = self.auth.lookup(reference, mode).await?;
        let creds = lookup.credentials.map(engine_credentials);
        self.docker
            .create_image(Some(opts.build()), None, creds)
            .try_for_each(|_| async { Ok(()) })
            .await
            .map_err(|e| match lookup.anonymous {
                Some(why) => format!("{e} ({why})"),
                None => e.to_string(),
            })
    }

    /// The engine's form of the credentials `mode` gives for `image`.
    async fn credentials(
        &self,
        image: &str,
        mode: super::auth::RegistryAuthMode,
    ) -> Result<Option<DockerCredentials>, String> {
        Ok(self
            .auth
            .credentials(image, mode)
            .await?
            .map(engine_credentials))
    }

    /// Whether `image` exists in its registry (the engine's distribution
    /// inspect, with the same credentials as pulls): `Ok(true)` exists,
    /// `Ok(false)` the registry says it does not, `Err` could not tell.
    pub async fn image_in_registry(
        &self,
        image: &str,
        mode: super::auth::RegistryAuthMode,
    ) -> Result<bool, String> {
        let creds = self.credentials(image, mode).await?;
        match self.docker.inspect_registry_image(image, creds).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code,
                message,
            }) if status_code == 404
                || message.contains("manifest unknown")
                || message.contains("not found") =>
            {
                Ok(false)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Every container of this namespace that carries the managed label, inspected.
    pub async fn list_managed(&self) -> Result<Vec<Observed>, EngineError> {
        let filters: HashMap<&str, Vec<String>> = HashMap::from([(
            "label",
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_NAMESPACE}={}", self.namespace),
            ],
        )]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| api(EngineOp::List, &self.namespace, e))?;
        let mut out = Vec::with_capacity(list.len());
        for s in list {
            let Some(id) = s.id else { continue };
            match self.inspect(&id).await {
                Ok(o) => out.push(o),
                Err(EngineError::NotFound { .. }) => {} // removed meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Inspects one container.
    pub async fn inspect(&self, id: &str) -> Result<Observed, EngineError> {
        let r = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| api(EngineOp::Inspect, id, e))?;
        let labels = r
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let state = r.state.unwrap_or_default();
        let health = match state.health.and_then(|h| h.status) {
            Some(HealthStatusEnum::STARTING) => Health::Starting,
            Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
            Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
            _ => Health::None,
        };
        Ok(Observed {
            id: r.id.unwrap_or_else(|| id.to_string()),
            name: r
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            component: labels.get(LABEL_COMPONENT).cloned(),
            spec_hash: labels.get(LABEL_SPEC).cloned(),
            image_id: r.image.unwrap_or_default(),
            running: state.running.unwrap_or(false),
            paused: state.paused.unwrap_or(false),
            exit_code: state.exit_code,
            health,
            started_at: state.started_at.as_deref().and_then(parse_time),
            finished_at: state.finished_at.as_deref().and_then(parse_time),
            instance: labels.get(LABEL_INSTANCE).cloned(),
        })
    }

    /// Creates the component's container (not started). A container of the
    /// same name that berth does not manage is never removed: that is a conflict.
    #[tracing::instrument(skip_all, fields(component = %c.name))]
    pub async fn create(
        &self,
        plan: &Plan,
        c: &PlannedComponent,
        secrets: &SecretEnv,
    ) -> Result<String, EngineError> {
        let name = self.container_name(&c.name);
        let mut labels: HashMap<String, String> = c.spec.labels.clone().into_iter().collect();
        labels.extend([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_NAMESPACE.to_string(), self.namespace.clone()),
            (LABEL_COMPONENT.to_string(), c.name.clone()),
            (LABEL_VERSION.to_string(), c.version.clone()),
            (LABEL_PLAN.to_string(), plan.id.clone()),
            (LABEL_SPEC.to_string(), c.spec_hash()),
            (LABEL_INSTANCE.to_string(), plan.instance_id.clone()),
        ]);
        let body = container_body(&c.spec, c.create_ref(), labels, secrets);
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        match self.docker.create_container(Some(opts), body).await {
            Ok(r) => Ok(r.id),
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) => Err(EngineError::Conflict {
                op: EngineOp::Create,
                target: name,
                message: format!("{message} (berth never removes a container it did not create)"),
            }),
            Err(e) => Err(api(EngineOp::Create, &name, e)),
        }
    }

    /// Starts a created or stopped container.
    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        match self.docker.start_container(id, None).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) => Err(EngineError::Conflict {
                op: EngineOp::Start,
                target: id.to_string(),
                message,
            }),
            Err(e) => Err(api(EngineOp::Start, id, e)),
        }
    }

    /// Restarts a running container: its stop signal, `grace`, then SIGKILL, then start.
    pub async fn restart(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        let opts = RestartContainerOptionsBuilder::default()
            .t(secs(grace))
            .build();
        self.docker
            .restart_container(id, Some(opts))
            .await
            .map_err(|e| api(EngineOp::Restart, id, e))
    }

    /// Stops a container: its stop signal, `grace`, then SIGKILL.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        let opts = StopContainerOptionsBuilder::default()
            .t(secs(grace))
            .build();
        match self.docker.stop_container(id, Some(opts)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(api(EngineOp::Stop, id, e)),
        }
    }

    /// Removes a container (forcibly: it may be running).
    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(api(EngineOp::Remove, id, e)),
        }
    }

    /// The engine's events about this namespace's containers, from `since`
    /// (so a reconnect misses nothing the engine still remembers).
    pub fn events(
        &self,
        since: SystemTime,
    ) -> impl Stream<Item = Result<EngineEvent, EngineError>> + use<> {
        let filters: HashMap<&str, Vec<String>> = HashMap::from([
            ("type", vec!["container".to_string()]),
            (
                "label",
                vec![
                    format!("{LABEL_NAMESPACE}={}", self.namespace),
                    format!("{LABEL_MANAGED}=true"),
                ],
            ),
            (
                "event",
                [
                    "start",
                    "die",
                    "health_status",
                    "pause",
                    "unpause",
                    "destroy",
                ]
                .map(String::from)
                .to_vec(),
            ),
        ]);
        let since = since.duration_since(UNIX_EPOCH).unwrap_or_default();
        let since = format!("{}.{:09}", since.as_secs(), since.subsec_nanos());
        let opts = EventsOptionsBuilder::default()
            .since(&since)
            .filters(&filters)
            .build();
        let host = self.host.clone();
        self.docker.events(Some(opts)).filter_map(move |r| {
            let out = match r {
                Ok(m) => to_event(m).map(Ok),
                Err(e) => Some(Err(EngineError::Connect {
                    host: host.clone(),
                    what: "event stream: ".into(),
                    source: Box::new(e),
                })),
            };
            async move { out }
        })
    }
}

fn to_event(m: bollard::models::EventMessage) -> Option<EngineEvent> {
    let actor = m.actor?;
    let attrs = actor.attributes.unwrap_or_default();
    let action = m.action?;
    let kind = match action.as_str() {
        "start" => EventKind::Start,
        "die" => EventKind::Die {
            exit_code: attrs.get("exitCode").and_then(|c| c.parse().ok()),
        },
        "destroy" => EventKind::Destroy,
        "pause" => EventKind::Pause,
        "unpause" => EventKind::Unpause,
        a => match a.strip_prefix("health_status:").map(str::trim) {
            Some("healthy") => EventKind::Health(Health::Healthy),
            Some("unhealthy") => EventKind::Health(Health::Unhealthy),
            Some("starting") => EventKind::Health(Health::Starting),
            _ => return None,
        },
    };
    let time = match m.time_nano {
        Some(n) if n > 0 => UNIX_EPOCH + Duration::from_nanos(n as u64),
        _ => UNIX_EPOCH + Duration::from_secs(m.time.unwrap_or(0).max(0) as u64),
    };
    Some(EngineEvent {
        container_id: actor.id?,
        component: attrs.get(LABEL_COMPONENT).cloned(),
        kind,
        time,
    })
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok().filter(|t| *t > UNIX_EPOCH)
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// Maps a bollard error: 404 is [`EngineError::NotFound`]; a failure to
/// reach the engine (socket missing, refused, reset, timed out) is
/// [`EngineError::Connect`]; anything else is [`EngineError::Api`].
fn api(op: EngineOp, target: &str, e: BollardError) -> EngineError {
    match e {
        BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::RequestTimeoutError
        | BollardError::SocketNotFoundError(_) => EngineError::Connect {
            host: host_from_env(),
            what: format!("{op} {target}: "),
            source: Box::new(e),
        },
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => EngineError::NotFound {
            op,
            target: target.to_string(),
        },
        other => EngineError::Api {
            op,
            target: target.to_string(),
            source: Box::new(other),
        },
    }
}

/// `reg:5000/web:1.0` → (`reg:5000/web`, `Some("1.0")`); digests stay whole.
fn split_reference(r: &str) -> (&str, Option<&str>) {
    if r.contains('@') {
        return (r, None);
    }
    let slash = r.rfind('/').map_or(0, |i| i + 1);
    match r[slash..].rfind(':') {
        Some(i) => (&r[..slash + i], Some(&r[slash + i + 1..])),
        None => (r, None),
    }
}

fn repository(image: &str) -> &str {
    split_reference(image).0.split('@').next().unwrap_or(image)
}

/// The engine's create body for a spec: its environment is the spec's
/// `env` and the resolved `secrets` (validation keeps their names apart).
fn container_body(
    spec: &ContainerSpec,
    image: &str,
    labels: HashMap<String, String>,
    secrets: &SecretEnv,
) -> ContainerCreateBody {
    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        let (ip, host, container, proto) = parse_port(p).expect("validated port");
        let key = format!("{container}/{proto}");
        exposed.push(key.clone());
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: ip,
                host_port: host.map(|h| h.to_string()),
            });
    }
    let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        env: (!spec.env.is_empty() || !secrets.is_empty()).then(|| {
            spec.env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain(secrets.expose().map(|(k, v)| format!("{k}={v}")))
                .collect()
        }),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        user: spec.user.clone(),
        labels: Some(labels),
        healthcheck: spec.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.to_docker()),
            interval: Some(nanos(h.interval.0)),
            timeout: Some(nanos(h.timeout.0)),
            retries: Some(i64::from(h.retries)),
            start_period: Some(nanos(h.start_period.0)),
            ..Default::default()
        }),
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: Some(i64::from(secs(spec.stop_grace_period.0))),
        host_config: Some(HostConfig {
            binds: (!spec.volumes.is_empty()).then(|| spec.volumes.clone()),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            network_mode: spec.network_mode.clone(),
            memory: spec.memory.map(|m| i64::try_from(m.0).unwrap_or(i64::MAX)),
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            log_config: spec.log.as_ref().map(|l| HostConfigLogConfig {
                typ: Some(l.driver.clone()),
                config: Some(l.options.clone().into_iter().collect()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl ContainerRuntime for Engine {
    async fn ping(&self) -> Result<(), EngineError> {
        Engine::ping(self).await
    }
    fn events(
        &self,
        since: SystemTime,
    ) -> futures_util::stream::BoxStream<'static, Result<EngineEvent, EngineError>> {
        Engine::events(self, since).boxed()
    }
    async fn list_managed(&self) -> Result<Vec<Observed>, EngineError> {
        Engine::list_managed(self).await
    }
    async fn inspect(&self, id: &str) -> Result<Observed, EngineError> {
        Engine::inspect(self, id).await
    }
    async fn ensure_image(
        &self,
        c: &PlannedComponent,
        attempts: u32,
        cancel: &CancellationToken,
    ) -> Result<(String, Option<String>), EngineError> {
        Engine::ensure_image(self, c, attempts, cancel).await
    }
    async fn create(
        &self,
        plan: &Plan,
        c: &PlannedComponent,
        secrets: &SecretEnv,
    ) -> Result<String, EngineError> {
        Engine::create(self, plan, c, secrets).await
    }
    async fn start(&self, id: &str) -> Result<(), EngineError> {
        Engine::start(self, id).await
    }
    async fn restart(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        Engine::restart(self, id, grace).await
    }
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        Engine::stop(self, id, grace).await
    }
    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        Engine::remove(self, id).await
    }
    async fn image_in_registry(
        &self,
        image: &str,
        mode: super::auth::RegistryAuthMode,
    ) -> Result<bool, String> {
        Engine::image_in_registry(self, image, mode).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_the_tag() {
        assert_eq!(
            split_reference("reg:5000/web:1.0"),
            ("reg:5000/web", Some("1.0"))
        );
        assert_eq!(split_reference("reg:5000/web"), ("reg:5000/web", None));
        assert_eq!(split_reference("web@sha256:ab"), ("web@sha256:ab", None));
        assert_eq!(repository("reg:5000/team/web:1.0"), "reg:5000/team/web");
    }

    #[test]
    fn docker_times_parse() {
        assert!(parse_time("0001-01-01T00:00:00Z").is_none());
        let t = parse_time("2024-05-01T10:00:00.123456789Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().subsec_nanos(),
            123_456_789
        );
    }
}
