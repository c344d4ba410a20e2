//! A private image registry (`docker-registry serve`, the CNCF distribution
//! registry v2) on 127.0.0.1, which Docker treats as insecure (plain HTTP) by
//! default, so `docker push/pull 127.0.0.1:PORT/name:tag` just works.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::http::request;
use super::util::{ExitGuard, free_port, keep_artifacts, kill_child, tail_file};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// A running (or stopped) `docker-registry` process with its own config,
/// filesystem storage and log file in a temp dir. Dropping it kills the
/// process and deletes the storage.
pub struct Registry {
    port: u16,
    dir: Option<TempDir>,
    dir_path: PathBuf,
    child: Option<Child>,
    guard: Option<ExitGuard>,
}

impl Registry {
    /// Starts a fresh registry on a free port of 127.0.0.1 and waits until
    /// `GET /v2/` answers 200. Panics (with the registry log) on failure.
    pub fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("berth-reg-")
            .tempdir()
            .expect("Registry::start: cannot create a temp dir");
        // Another process may grab the port between free_port() and the
        // registry's bind; retry a few times with a new port if so.
        let mut errors = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            write_config(dir.path(), port);
            match launch(dir.path(), port) {
                Ok((child, guard)) => {
                    let dir_path = dir.path().to_path_buf();
                    return Registry {
                        port,
                        dir: Some(dir),
                        dir_path,
                        child: Some(child),
                        guard: Some(guard),
                    };
                }
                Err(e) => errors.push(e),
            }
        }
        panic!("Registry::start failed 3 times:\n{}", errors.join("\n"));
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port the registry listens on (stays the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding `config.yml`, `registry.log` and the `data/` storage.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// Whole log of the registry so far (warnings, errors, access log lines).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(log_path(&self.dir_path)).unwrap_or_default())
            .into_owned()
    }

    /// Whether the registry process is currently running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the registry process (SIGKILL) and reaps it. The storage is
    /// kept, so [`Registry::start_again`] brings the same images back.
    /// Does nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
        if let Some(guard) = self.guard.take() {
            guard.disarm();
        }
    }

    /// Starts the registry again on the same port with the same storage and
    /// waits until it is ready. Panics if it is still running or fails.
    pub fn start_again(&mut self) {
        assert!(
            !self.is_running(),
            "Registry::start_again: registry {} is still running",
            self.addr()
        );
        self.stop(); // reaps a process that died by itself, disarms its guard
        let (child, guard) = launch(&self.dir_path, self.port)
            .unwrap_or_else(|e| panic!("Registry::start_again: {e}"));
        self.child = Some(child);
        self.guard = Some(guard);
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("registry.log")
}

/// Spawns `docker-registry serve DIR/config.yml` (output appended to
/// `DIR/registry.log`) and waits until it answers `GET /v2/` with 200.
fn launch(dir: &Path, port: u16) -> Result<(Child, ExitGuard), String> {
    spawn_registry(
        dir,
        port,
        "registry",
        |addr| matches!(request(addr, "GET", "/v2/", &[], &[], true), Ok(r) if r.status == 200),
    )
}

/// Spawns `docker-registry serve DIR/config.yml` (output appended to
/// `DIR/registry.log`, `REGISTRY_*` variables removed) and waits until
/// `ready(addr)` holds while the process lives. `what` names it in errors.
pub(crate) fn spawn_registry(
    dir: &Path,
    port: u16,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> Result<(Child, ExitGuard), String> {
    let config = dir.join("config.yml");
    let log_file = log_path(dir);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .map_err(|e| format!("cannot open {}: {e}", log_file.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot dup the log fd: {e}"))?;
    let mut cmd = Command::new(REGISTRY_BIN);
    cmd.arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // REGISTRY_* variables would override our config file.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(&k);
        }
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot spawn `{REGISTRY_BIN} serve {}`: {e}",
            config.display()
        )
    })?;
    let guard = ExitGuard::arm(child.id(), &config.to_string_lossy(), Some(dir));

    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            guard.disarm();
            return Err(format!(
                "{what} on {addr} exited during startup ({status}); log tail:\n{}",
                tail_file(&log_file, 20)
            ));
        }
        // Re-check liveness: answers from someone else's server on a port we
        // failed to bind must not count.
        if ready(&addr) && matches!(child.try_wait(), Ok(None)) {
            return Ok((child, guard));
        }
        if start.elapsed() > READY_DEADLINE {
            kill_child(&mut child);
            guard.disarm();
            return Err(format!(
                "{what} on {addr} not ready within {READY_DEADLINE:?}; log tail:\n{}",
                tail_file(&log_file, 20)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- registry {} log tail (test panicked) ---\n{}",
                self.addr(),
                tail_file(&log_path(&self.dir_path), 30)
            );
        }
        self.stop();
        if keep_artifacts()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("BERTH_TEST_KEEP: keeping {}", dir.keep().display());
        }
    }
}

fn write_config(dir: &Path, port: u16) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", data.display()));
    let config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  formatter: text\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: berth-test-registry-secret\n",
        data = data.display()
    );
    let path = dir.join("config.yml");
    std::fs::write(&path, config)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A registry shared by all tests of this process that do not need to stop
/// it. Started on first use; killed when the test process exits (by an
/// [`ExitGuard`] helper, since statics are never dropped). Uses a fresh port
/// and storage each run, so a leftover can never disturb the next run.
pub fn shared_registry() -> &'static Registry {
    static SHARED: OnceLock<Registry> = OnceLock::new();
    SHARED.get_or_init(Registry::start)
}

/// Digest (`sha256:...`) of the manifest that `repo:tag` points to in the
/// registry at `registry_addr`, as `Docker-Content-Digest` reports it (the
/// same digest `docker` shows in RepoDigests after a pull). `None` if the
/// registry is unreachable or has no such tag.
pub fn registry_manifest_digest(registry_addr: &str, repo: &str, tag: &str) -> Option<String> {
    let accept = "application/vnd.docker.distribution.manifest.v2+json, \
                  application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.list.v2+json, \
                  application/vnd.oci.image.index.v1+json";
    let path = format!("/v2/{repo}/manifests/{tag}");
    let resp = request(
        registry_addr,
        "HEAD",
        &path,
        &[("Accept", accept)],
        &[],
        false,
    )
    .ok()?;
    if resp.status != 200 {
        return None;
    }
    resp.header("docker-content-digest").map(str::to_string)
}
