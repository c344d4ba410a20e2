//! A private image registry that requires HTTP basic auth (the ECR path of
//! berth): `docker-registry serve` with `auth.htpasswd` on 127.0.0.1.
//!
//! Docker treats a loopback registry as insecure (plain HTTP) and still sends
//! basic auth after the registry's 401 challenge, so
//! `docker --config DIR push` with credentials in `DIR/config.json` works,
//! while an anonymous pull fails with "no basic auth credentials". The
//! htpasswd file is bcrypt (`htpasswd -Bbn`, Debian's `apache2-utils`, which
//! `tests/setup.sh` installs; Python's `bcrypt` module is the fallback).
//!
//! moto's ECR `GetAuthorizationToken` hands out user [`super::MOTO_ECR_USER`]
//! and password [`super::MOTO_ECR_PASSWORD`]: start the registry with those
//! to let berth pull with the token it got from (fake) ECR.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use tempfile::TempDir;

use super::docker::{base_image, docker};
use super::http::request;
use super::util::{
    ExitGuard, free_port, keep_artifacts, kill_child, output_with_timeout, tail_file,
};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// The realm the registry announces in its `WWW-Authenticate` challenge.
pub const AUTH_REALM: &str = "berth-test-registry";

/// A running `docker-registry` that only serves clients presenting
/// `user`/`password`, with config, htpasswd, storage and log in a temp dir.
/// Dropping it kills the process and deletes the dir.
pub struct AuthRegistry {
    port: u16,
    user: String,
    password: String,
    dir: Option<TempDir>,
    dir_path: PathBuf,
    child: Option<Child>,
    guard: Option<ExitGuard>,
}

impl AuthRegistry {
    /// Starts a registry on a free port of 127.0.0.1 accepting only
    /// `user`/`password`, and waits until `GET /v2/` answers 401 without and
    /// 200 with those credentials. Panics (with the log) on failure.
    pub fn start(user: &str, password: &str) -> AuthRegistry {
        assert!(
            !user.contains(':'),
            "AuthRegistry::start: user {user:?} contains ':'"
        );
        let dir = tempfile::Builder::new()
            .prefix("berth-authreg-")
            .tempdir()
            .expect("AuthRegistry::start: cannot create a temp dir");
        let dir_path = dir.path().to_path_buf();
        write_htpasswd(&dir_path, user, password);
        let auth = basic_auth(user, password);
        let mut errors = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            write_config(&dir_path, port);
            match launch(&dir_path, port, &auth) {
                Ok((child, guard)) => {
                    return AuthRegistry {
                        port,
                        user: user.to_string(),
                        password: password.to_string(),
                        dir: Some(dir),
                        dir_path,
                        child: Some(child),
                        guard: Some(guard),
                    };
                }
                Err(e) => errors.push(e),
            }
        }
        panic!("AuthRegistry::start failed 3 times:\n{}", errors.join("\n"));
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port the registry listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The accepted user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The accepted password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `Basic BASE64(user:password)`, an `Authorization` header value.
    pub fn authorization(&self) -> String {
        basic_auth(&self.user, &self.password)
    }

    /// Directory holding `config.yml`, `htpasswd`, `registry.log` and `data/`.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// Whole log of the registry so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(log_path(&self.dir_path)).unwrap_or_default())
            .into_owned()
    }

    /// [`push_image_with_auth`] with this registry's credentials.
    pub fn push_image(&self, repo: &str, tag: &str) -> String {
        push_image_with_auth(&self.addr(), &self.user, &self.password, repo, tag)
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- auth registry {} log tail (test panicked) ---\n{}",
                self.addr(),
                tail_file(&log_path(&self.dir_path), 30)
            );
        }
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
        if let Some(guard) = self.guard.take() {
            guard.disarm();
        }
        if keep_artifacts()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("BERTH_TEST_KEEP: keeping {}", dir.keep().display());
        }
    }
}

/// `Basic BASE64(user:password)`.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        BASE64_STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Creates a temp dir usable as `docker --config DIR` whose `config.json`
/// holds only the credentials `user`/`password` for `registry_addr`
/// (nothing for any other registry, no credential helpers).
pub fn docker_config_with_auth(registry_addr: &str, user: &str, password: &str) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("berth-dockercfg-")
        .tempdir()
        .expect("docker_config_with_auth: cannot create a temp dir");
    let auth = BASE64_STANDARD.encode(format!("{user}:{password}"));
    let config = serde_json::json!({ "auths": { registry_addr: { "auth": auth } } });
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&config).expect("serialize docker config"),
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    dir
}

/// Tags [`base_image`] as `REGISTRY_ADDR/REPO:TAG`, pushes it with
/// `user`/`password` (through a temporary docker config dir, so nothing is
/// stored in the machine's docker config), removes the local tag and returns
/// the reference. Panics if the push fails.
pub fn push_image_with_auth(
    registry_addr: &str,
    user: &str,
    password: &str,
    repo: &str,
    tag: &str,
) -> String {
    let base = base_image();
    let reference = format!("{registry_addr}/{repo}:{tag}");
    let config = docker_config_with_auth(registry_addr, user, password);
    let config_dir = config
        .path()
        .to_str()
        .expect("temp dir paths are UTF-8")
        .to_string();
    docker(&["tag", &base, &reference]);
    let pushed = super::docker::docker_ok(&["--config", &config_dir, "push", &reference]);
    docker(&["image", "rm", &reference]);
    if let Err(e) = pushed {
        panic!("push_image_with_auth: {e}");
    }
    reference
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("registry.log")
}

/// Writes `DIR/htpasswd` with a bcrypt entry for `user`/`password`.
fn write_htpasswd(dir: &Path, user: &str, password: &str) {
    let path = dir.join("htpasswd");
    let mut cmd = Command::new("htpasswd");
    cmd.args(["-Bbn", user, password]);
    let line = match output_with_timeout(cmd, "`htpasswd -Bbn`", Duration::from_secs(30)) {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        first => {
            // Fallback: Python's bcrypt module.
            let mut py = Command::new("python3");
            py.args([
                "-c",
                "import bcrypt, sys; print(sys.argv[1] + ':' + \
                 bcrypt.hashpw(sys.argv[2].encode(), bcrypt.gensalt(5)).decode())",
                user,
                password,
            ]);
            match output_with_timeout(py, "python3 bcrypt", Duration::from_secs(30)) {
                Ok(out) if out.status.success() => {
                    String::from_utf8_lossy(&out.stdout).into_owned()
                }
                second => panic!(
                    "AuthRegistry: cannot make a bcrypt htpasswd entry: install Debian's \
                     apache2-utils (tests/setup.sh does) or Python's bcrypt.\n\
                     htpasswd: {}\npython3: {}",
                    describe_attempt(first),
                    describe_attempt(second)
                ),
            }
        }
    };
    let line = line.trim();
    assert!(
        line.starts_with(&format!("{user}:$2")),
        "AuthRegistry: unexpected htpasswd line {line:?}"
    );
    std::fs::write(&path, format!("{line}\n"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn describe_attempt(r: Result<std::process::Output, String>) -> String {
    match r {
        Ok(out) => format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => e,
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
         http:\n  addr: 127.0.0.1:{port}\n  secret: berth-test-registry-secret\n\
         auth:\n  htpasswd:\n    realm: {AUTH_REALM}\n    path: {htpasswd}\n",
        data = data.display(),
        htpasswd = dir.join("htpasswd").display(),
    );
    let path = dir.join("config.yml");
    std::fs::write(&path, config)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Spawns `docker-registry serve DIR/config.yml` and waits until `GET /v2/`
/// answers 401 anonymously (with this realm) and 200 with `auth` (an
/// `Authorization` header value).
fn launch(dir: &Path, port: u16, auth: &str) -> Result<(Child, ExitGuard), String> {
    super::registry::spawn_registry(dir, port, "auth registry", |addr| {
        let challenged = matches!(
            request(addr, "GET", "/v2/", &[], &[], true),
            Ok(r) if r.status == 401
                && r.header("www-authenticate").is_some_and(|v| v.contains(AUTH_REALM))
        );
        challenged
            && matches!(
                request(addr, "GET", "/v2/", &[("Authorization", auth)], &[], true),
                Ok(r) if r.status == 200
            )
    })
}
