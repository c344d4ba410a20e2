//! Docker credential helpers (`credHelpers`, `credsStore` in docker's
//! `config.json`) against a real registry that requires basic auth.
//!
//! Each test writes its own helper, `docker-credential-berth-test`, a shell
//! script speaking the helper protocol (`get`, the server address on stdin,
//! JSON on stdout), into a temp dir that it puts first on the agent's
//! `PATH`, and a docker config dir for the agent's `DOCKER_CONFIG`. The
//! script records every server it is asked about, one a line.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use support::fixture::{Fx, LONG, comp};
use support::*;

const HELPER: &str = "berth-test";
const PROGRAM: &str = "docker-credential-berth-test";

/// The helper's dir (on `PATH`) and the docker config dir.
struct HelperWorld {
    dir: tempfile::TempDir,
}

impl HelperWorld {
    /// `answer` is the script's body after it read the server into `$server`.
    fn new(answer: &str, config: serde_json::Value) -> HelperWorld {
        let dir = tempfile::Builder::new()
            .prefix("berth-credhelper-")
            .tempdir()
            .expect("temp dir");
        let w = HelperWorld { dir };
        std::fs::create_dir(w.bin()).unwrap();
        std::fs::create_dir(w.config_dir()).unwrap();
        let script = w.bin().join(PROGRAM);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = get ] || {{ echo \"unsupported: $1\"; exit 1; }}\n\
                 server=$(cat)\necho \"$server\" >> '{calls}'\n{answer}\n",
                calls = w.calls_path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            w.config_dir().join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        w
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("docker")
    }
    fn calls_path(&self) -> PathBuf {
        self.dir.path().join("calls")
    }
    /// The file the script may write its pid to.
    fn pids_path(&self) -> PathBuf {
        self.dir.path().join("pids")
    }

    /// The servers the helper was asked about, in order.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.calls_path())
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// `PATH` and `DOCKER_CONFIG` for the agent, and logs at trace level.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "PATH".into(),
                format!(
                    "{}:{}",
                    self.bin().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
            (
                "DOCKER_CONFIG".into(),
                self.config_dir().display().to_string(),
            ),
            ("RUST_LOG".into(), "trace".into()),
        ]
    }
}

/// A config where `credHelpers` names our helper for `addr`.
fn helper_for(addr: &str) -> serde_json::Value {
    serde_json::json!({ "credHelpers": { addr: HELPER } })
}

fn component(name: &str, image: &str) -> String {
    format!(
        "[[clusters.web.containers]]\nname = \"{name}\"\nimage = \"{image}:{{version}}\"\n\
         command = [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
    )
}

fn agent(fx: &Fx, w: &HelperWorld) -> Agent {
    let env = w.env();
    fx.agent(&env_refs(&env))
}

fn last_error(s: &serde_json::Value, name: &str) -> String {
    comp(s, name)["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn process_gone(pid: &str) -> bool {
    !Path::new(&format!("/proc/{}", pid.trim())).exists()
}

#[test]
fn images_are_pulled_with_a_helper_s_credentials_and_it_runs_once_per_registry() {
    let reg = AuthRegistry::start("helper-user", "helper-pass-7f3a9");
    let addr = reg.addr();
    let (a, b) = (unique("cred-a"), unique("cred-b"));
    reg.push_image(&a, "1.0");
    reg.push_image(&b, "1.0");
    // credHelpers must win over credsStore (a helper that does not exist)
    // and over the `auths` entry (a wrong password).
    let wrong = BASE64_STANDARD.encode(format!("{}:wrong", reg.user()));
    let w = HelperWorld::new(
        &format!(
            "if [ \"$server\" = '{addr}' ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi",
            user = reg.user(),
            password = reg.password()
        ),
        serde_json::json!({
            "auths": { &addr: { "auth": wrong } },
            "credsStore": "berth-missing",
            "credHelpers": { &addr: HELPER },
        }),
    );
    let containers = format!(
        "{}{}",
        component("first", &format!("{addr}/{a}")),
        component("second", &format!("{addr}/{b}"))
    );
    let fx = Fx::new(&containers, "pull_attempts = 1", "1.0");
    let mut agent = agent(&fx, &w);
    let s = fx.wait_ready();
    for name in ["first", "second"] {
        assert_eq!(comp(&s, name)["state"], "running", "{s}");
    }
    // Two images from one registry: one run of the helper.
    assert_eq!(w.calls(), vec![addr.clone()]);
    let log = agent.log();
    assert_eq!(
        log.matches("credential helper answered").count(),
        1,
        "{log}"
    );
    // The secret reaches no log line, even at trace level, in no form.
    for secret in [
        reg.password().to_string(),
        BASE64_STANDARD.encode(format!("{}:{}", reg.user(), reg.password())),
        BASE64_STANDARD.encode(reg.password()),
    ] {
        assert!(!log.contains(&secret), "log shows {secret:?}");
    }
    agent.signal(15);
    assert_eq!(agent.wait_exit(LONG), Some(0));
}

#[test]
fn a_hanging_helper_is_killed_after_10s_and_the_pull_says_so() {
    let reg = AuthRegistry::start("hang-user", "hang-pass-2c81");
    let addr = reg.addr();
    let repo = unique("cred-hang");
    reg.push_image(&repo, "1.0");
    let w = HelperWorld::new("", helper_for(&addr));
    // The script writes its pid, then becomes a sleep that never answers.
    let body = format!(
        "#!/bin/sh\necho $$ >> '{}'\nexec sleep 600\n",
        w.pids_path().display()
    );
    std::fs::write(w.bin().join(PROGRAM), body).unwrap();
    let fx = Fx::new(
        &component("web", &format!("{addr}/{repo}")),
        "pull_attempts = 1",
        "1.0",
    );
    let mut agent = agent(&fx, &w);
    let expected = format!(
        "credential helper {PROGRAM} (for registry {addr}) did not answer within 10s and was killed"
    );
    let s = fx.wait_status("the timeout named in status", |s| {
        last_error(s, "web").contains(&expected)
    });
    assert_ne!(comp(&s, "web")["state"], "running", "{s}");
    assert!(container_ids_with_label(&fx.label()).is_empty());
    // The helper that timed out is dead, not left behind.
    let first = std::fs::read_to_string(w.pids_path()).unwrap();
    let first = first.lines().next().unwrap().to_string();
    wait_until("the timed-out helper is gone", LONG, || {
        process_gone(&first).then_some(())
    });
    assert!(agent.is_running());
    agent.kill();
}

#[test]
fn a_helper_without_credentials_means_an_anonymous_pull_whose_refusal_is_explained() {
    let reg = AuthRegistry::start("anon-user", "anon-pass-91bd");
    let addr = reg.addr();
    let repo = unique("cred-none");
    reg.push_image(&repo, "1.0");
    let w = HelperWorld::new(
        "echo 'credentials not found in native keychain'\nexit 1",
        serde_json::json!({ "credsStore": HELPER }),
    );
    let fx = Fx::new(
        &component("web", &format!("{addr}/{repo}")),
        "pull_attempts = 1",
        "1.0",
    );
    let mut agent = agent(&fx, &w);
    let why =
        format!("pulled anonymously: credential helper {PROGRAM} has no credentials for {addr}");
    let s = fx.wait_status("the anonymous pull's refusal explained", |s| {
        last_error(s, "web").contains(&why)
    });
    let e = last_error(&s, "web");
    // The registry's refusal, as the engine reports it.
    assert!(e.contains("no basic auth credentials"), "{e}");
    assert!(w.calls().contains(&addr));
    agent.wait_log("credential helper has no credentials", LONG);
    agent.kill();
}
