//! Environment values are secrets: berth hands them to the engine and keeps
//! them in its private pin, and never prints them: not in `berth plan`, not
//! in manifest errors, not in logs at any level. The pin and the data
//! directory are private (0600/0700) whoever creates them.
//!
//! Every test puts [`SECRET`] in a container's environment (or where a value
//! goes in the manifest) and looks for it in what berth prints.
//!
//! Secrets by reference (`secrets = { NAME = "ssm:…" }`) go further: their
//! values, read from moto's SSM and Secrets Manager (or the local file's
//! `[secrets]`) when the container is created, reach the container's
//! environment and nothing else, not even the pin. Those tests mark every
//! value with [`MARK`].

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::fixture::{Fx, LONG, comp};
use support::imds::{Imds, ImdsConfig};
use support::moto::{Moto, env_refs};
use support::*;

const SECRET: &str = "hunter2-secret";

fn running_forever() -> &'static str {
    r#"command = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#
}

/// One container from the local base image, with `DB_PASSWORD = SECRET`.
fn with_secret_env() -> Fx {
    base_image();
    Fx::new(
        &format!(
            "[[clusters.web.containers]]\nname = \"app\"\nimage = \"berth-test/busybox:{{version}}\"\n{}\nenv = {{ DB_PASSWORD = \"{SECRET}\", GREETING = \"hello\" }}\n",
            running_forever()
        ),
        "",
        "base",
    )
}

/// The permission bits, in octal.
fn mode(p: &Path) -> String {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    format!("{:o}", m.permissions().mode() & 0o777)
}

fn plan_output(fx: &Fx, json: bool) -> (String, String) {
    let (manifest, local) = (fx.manifest(), fx.local());
    let mut args = vec![
        "plan",
        "--config",
        manifest.to_str().unwrap(),
        "--local",
        local.to_str().unwrap(),
    ];
    if json {
        args.push("--json");
    }
    let out = berth(&args, &[]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(exit_code(out.status), 0, "berth {args:?}: {stderr}");
    (stdout, stderr)
}

/// `berth plan`, as a table and as JSON: the names, never the values.
fn assert_plan_redacted(fx: &Fx, pinned: bool) {
    let (json, stderr) = plan_output(fx, true);
    assert!(
        !json.contains(SECRET) && !stderr.contains(SECRET),
        "plan --json prints the value:\n{json}\n{stderr}"
    );
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["pinned"], pinned, "{json}");
    let env = &v["plan"]["components"][0]["spec"]["env"];
    assert_eq!(env["DB_PASSWORD"], "<redacted>", "{json}");
    assert_eq!(env["GREETING"], "<redacted>", "{json}");
    let (table, stderr) = plan_output(fx, false);
    assert!(
        !table.contains(SECRET) && !stderr.contains(SECRET),
        "plan prints the value:\n{table}\n{stderr}"
    );
    assert!(
        table.contains("DB_PASSWORD") && table.contains("GREETING"),
        "plan shows the names:\n{table}"
    );
}

#[test]
fn plan_shows_environment_names_and_redacts_values() {
    let fx = with_secret_env();
    assert_plan_redacted(&fx, false);
    assert!(!fx.data_dir().exists(), "plan writes nothing");
}

/// Every kind of parse error that used to echo a value, each in a place a
/// secret could be put by mistake. Each must name the field and the line, and
/// not print the value, from `berth validate`, `berth plan` and `berth run`.
#[test]
fn manifest_errors_name_the_field_and_line_but_never_quote_values() {
    let head = "[[clusters.web.containers]]\nname = \"w\"\nimage = \"x:{version}\"\n";
    let cases = [
        (
            "syntax error on the env line",
            format!("env = {{ DB_PASSWORD = \"{SECRET}\" GREETING = \"hi\" }}\n"),
            "(syntax)",
        ),
        (
            "unterminated string",
            format!("env = {{ DB_PASSWORD = \"{SECRET} }}\n"),
            "(syntax)",
        ),
        (
            "env as a string",
            format!("env = \"DB_PASSWORD={SECRET}\"\n"),
            "clusters.web.containers[0].env",
        ),
        (
            "env value of the wrong type",
            format!("env = {{ DB_PASSWORD = [\"{SECRET}\"], N = 4242 }}\n"),
            "clusters.web.containers[0].env",
        ),
        (
            "env as a list",
            format!("env = [\"DB_PASSWORD={SECRET}\"]\n"),
            "clusters.web.containers[0].env",
        ),
        (
            "a value where an enum goes",
            format!("pull = \"{SECRET}\"\n"),
            "clusters.web.containers[0].pull",
        ),
        (
            "a value where a duration goes",
            format!("stop_grace_period = \"{SECRET}\"\n"),
            "clusters.web.containers[0].stop_grace_period",
        ),
        (
            "a value where a size goes",
            format!("memory = \"{SECRET}\"\n"),
            "clusters.web.containers[0].memory",
        ),
        (
            "a value where a number goes",
            format!("cpus = \"{SECRET}\"\n"),
            "clusters.web.containers[0].cpus",
        ),
    ];
    for (what, line, path) in cases {
        let fx = Fx::new(&format!("{head}{line}"), "", "1.0");
        // The manifest's line with the mistake (the fixture writes a header first).
        let text = std::fs::read_to_string(fx.manifest()).unwrap();
        let lineno = text
            .lines()
            .position(|l| l.contains(SECRET))
            .expect("the secret is in the manifest")
            + 1;
        let (manifest, local) = (fx.manifest(), fx.local());
        let (manifest, local) = (manifest.to_str().unwrap(), local.to_str().unwrap());
        for args in [
            vec!["validate", "--config", manifest],
            vec!["plan", "--config", manifest, "--local", local],
            vec!["run", "--config", manifest, "--local", local],
        ] {
            let out = berth(&args, &[("RUST_LOG", "trace")]);
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(exit_code(out.status), 78, "{what}: {args:?}: {all}");
            assert!(
                !all.contains(SECRET) && !all.contains("4242"),
                "{what}: {args:?} prints the value:\n{all}"
            );
            assert!(all.contains(path), "{what}: {args:?} names {path}:\n{all}");
            assert!(
                all.contains(&format!("line {lineno}")),
                "{what}: {args:?} names line {lineno}:\n{all}"
            );
        }
    }
}

/// Logs at every level, with every crate asked for its most verbose output,
/// never print an environment value, while the container does get it.
#[test]
fn trace_logs_never_print_environment_values() {
    let fx = with_secret_env();
    let mut agent = fx.agent(&[(
        "RUST_LOG",
        "trace,bollard=trace,bollard::docker=trace,hyper=trace,hyper_util=trace",
    )]);
    let s = fx.wait_ready();
    let id = comp(&s, "app")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Docker's model: the engine keeps the environment in the container's config.
    assert!(
        inspect_field(&id, "{{json .Config.Env}}").contains(&format!("DB_PASSWORD={SECRET}")),
        "the container has the value"
    );
    // A few restarts and resyncs on top of the start, to log a bit of everything.
    kill_main_process(&id);
    fx.wait_status("restarted", |s| {
        comp(s, "app")["restarts"].as_u64() >= Some(1) && comp(s, "app")["state"] == "running"
    });
    agent.signal(15);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(0));
    let log = agent.log();
    // berth's own debug events are there: the filter is as verbose as asked
    // (berth has no trace events; before the cap, bollard's filled the log).
    assert!(log.contains("DEBUG"), "the agent logged at debug:\n{log}");
    if let Some(at) = log.find(SECRET) {
        let from = log[..at].rfind('\n').map_or(0, |i| i + 1);
        let to = log[at..].find('\n').map_or(log.len(), |i| at + i);
        panic!("the log prints the value:\n{}", &log[from..to]);
    }
    // The pin has it (it must recreate the container), and `berth plan` on the pin does not print it.
    let pin = std::fs::read_to_string(fx.data_dir().join("pin.json")).unwrap();
    assert!(pin.contains(SECRET));
    assert_plan_redacted(&fx, true);
}

/// The data dir and the pin are private, whoever creates them, and an agent
/// start tightens ones left readable.
#[test]
fn the_pin_and_the_data_dir_are_private() {
    let fx = with_secret_env();
    let (dir, pin) = (fx.data_dir(), fx.data_dir().join("pin.json"));
    // berth creates the data dir.
    let mut agent = fx.agent(&[]);
    fx.wait_ready();
    agent.signal(15);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(mode(&dir), "700", "a data dir berth creates");
    assert_eq!(mode(&pin), "600", "a pin berth writes");
    // Someone (a machine image build, a person) loosened them.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut agent = fx.agent(&[]);
    fx.wait_ready();
    agent.signal(15);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(mode(&dir), "700", "an existing data dir is tightened");
    assert_eq!(mode(&pin), "600", "an existing pin is tightened");
    // A data dir someone else created, 0755 and empty.
    let fx = with_secret_env();
    std::fs::create_dir(fx.data_dir()).unwrap();
    std::fs::set_permissions(fx.data_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut agent = fx.agent(&[]);
    fx.wait_ready();
    agent.signal(15);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(mode(&fx.data_dir()), "700", "a pre-made data dir");
    assert_eq!(mode(&fx.data_dir().join("pin.json")), "600");
}

// ---- Secrets by reference ---------------------------------------------------------

/// Every value below has this in it: a log, a file or an output that
/// contains it shows a value.
const MARK: &str = "hunter2";

/// An EC2 instance of its own (a moto group of one, the IMDS emulator)
/// whose containers read secrets from moto's SSM and Secrets Manager.
struct Ec2Secrets {
    moto: Moto,
    _imds: Imds,
    fx: Fx,
    /// Parameter and secret names live under this prefix.
    prefix: String,
    _docker_config: tempfile::TempDir,
}

impl Ec2Secrets {
    fn new(containers: &dyn Fn(&str) -> String) -> Ec2Secrets {
        base_image();
        let moto = Moto::start();
        let group = unique("asg");
        let instance = moto
            .create_group(
                &group,
                1,
                &[("berth:cluster", "web"), ("berth:version", "base")],
            )
            .remove(0);
        let imds = Imds::start(ImdsConfig {
            instance_id: instance,
            tags: [("aws:autoscaling:groupName".to_string(), group)].into(),
            tags_enabled: true,
            ..Default::default()
        });
        let prefix = format!("berth/{}", unique("s"));
        let fx = Fx::new(&containers(&prefix), "", "unused");
        Ec2Secrets {
            moto,
            _imds: imds,
            fx,
            prefix,
            _docker_config: tempfile::tempdir().expect("temp docker config"),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.moto.env();
        env.extend(self._imds.env());
        env.push((
            "DOCKER_CONFIG".into(),
            self._docker_config.path().display().to_string(),
        ));
        env
    }

    fn agent(&self, extra: &[(&str, &str)]) -> Agent {
        let env = self.env();
        let mut env = env_refs(&env);
        env.extend_from_slice(extra);
        self.fx.agent_ec2(&env)
    }

    /// `berth ARGS` with this instance's environment; stdout and stderr.
    fn berth(&self, args: &[&str]) -> (String, String) {
        let env = self.env();
        let out = berth(args, &env_refs(&env));
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert_eq!(exit_code(out.status), 0, "berth {args:?}: {stderr}");
        (stdout, stderr)
    }

    fn plan_json(&self) -> Value {
        let manifest = self.fx.manifest().display().to_string();
        let (out, err) = self.berth(&["plan", "--config", &manifest, "--json"]);
        assert!(
            !out.contains(MARK) && !err.contains(MARK),
            "plan --json:\n{out}{err}"
        );
        serde_json::from_str(&out).unwrap()
    }

    fn status_json(&self) -> String {
        let (out, err) = self.berth(&["status", "--addr", &self.fx.status_addr, "--json"]);
        assert!(!err.contains(MARK), "{err}");
        out
    }
}

/// `docker exec ID env`: the container's environment as its processes see it.
fn container_env(id: &str) -> Vec<String> {
    docker(&["exec", id, "env"])
        .lines()
        .map(str::to_string)
        .collect()
}

fn forever(name: &str) -> String {
    format!(
        "[[clusters.web.containers]]\nname = \"{name}\"\nimage = \"berth-test/busybox:{{version}}\"\n{}\n",
        running_forever()
    )
}

/// The line of `text` that holds `needle`, for a failure message.
fn line_with(text: &str, needle: &str) -> Option<String> {
    text.lines()
        .find(|l| l.contains(needle))
        .map(str::to_string)
}

/// Secrets from moto's Parameter Store (a SecureString and eleven more
/// parameters: more than one `GetParameters` takes, which moto refuses as
/// AWS does) and Secrets Manager (a JSON key, and a whole secret by ARN)
/// reach the container's environment, as `docker exec env` shows, and
/// nothing else: not the pin (it keeps the references), the labels,
/// `berth status --json`, `berth plan --json` or the trace-level log.
#[test]
fn secrets_from_ssm_and_secrets_manager_reach_the_container_and_nowhere_else() {
    let w = Ec2Secrets::new(&|prefix| {
        let mut secrets = vec![
            format!("DB_PASSWORD = \"ssm:/{prefix}/db-password\""),
            format!("API_TOKEN = \"secretsmanager:{prefix}/api#token\""),
            "WHOLE = \"ARN\"".to_string(),
        ];
        secrets.extend((0..11).map(|i| format!("P{i:02} = \"ssm:/{prefix}/p{i:02}\"")));
        format!(
            "{}env = {{ GREETING = \"hello\" }}\nsecrets = {{ {} }}\n{}",
            forever("app"),
            secrets.join(", "),
            forever("other")
        )
    });
    let p = &w.prefix;
    w.moto
        .put_parameter(&format!("/{p}/db-password"), &format!("{MARK}-db"), true);
    for i in 0..11 {
        w.moto
            .put_parameter(&format!("/{p}/p{i:02}"), &format!("{MARK}-p{i:02}"), false);
    }
    let api = format!(r#"{{"token": "{MARK}-token", "unused": "{MARK}-unused"}}"#);
    w.moto.put_secret(&format!("{p}/api"), &api);
    let arn = w
        .moto
        .put_secret(&format!("{p}/whole"), &format!("{MARK}-whole"));
    // The whole secret is referenced by its ARN.
    let text = std::fs::read_to_string(w.fx.manifest()).unwrap();
    std::fs::write(
        w.fx.manifest(),
        text.replace("\"ARN\"", &format!("\"secretsmanager:{arn}\"")),
    )
    .unwrap();
    let mut agent = w.agent(&[(
        "RUST_LOG",
        "trace,bollard=trace,hyper=trace,hyper_util=trace,aws_smithy_runtime=trace,aws_sdk_ssm=trace,aws_sdk_secretsmanager=trace",
    )]);
    let s = w.fx.wait_ready();
    let id = comp(&s, "app")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    let env = container_env(&id);
    let mut want = vec![
        format!("DB_PASSWORD={MARK}-db"),
        format!("API_TOKEN={MARK}-token"),
        format!("WHOLE={MARK}-whole"),
        "GREETING=hello".to_string(),
    ];
    want.extend((0..11).map(|i| format!("P{i:02}={MARK}-p{i:02}")));
    for v in &want {
        assert!(
            env.contains(v),
            "{v} in the container's environment: {env:?}"
        );
    }
    assert!(
        !env.iter().any(|l| l.contains("unused")),
        "only the key asked for: {env:?}"
    );
    let other = comp(&s, "other")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !container_env(&other).iter().any(|l| l.contains(MARK)),
        "the other component has none"
    );
    // Labels (berth.spec hashes the references) and the rest of the config but the environment.
    for id in [&id, &other] {
        let labels = inspect_field(id, "{{json .Config.Labels}}");
        assert!(!labels.contains(MARK), "labels: {labels}");
        assert!(labels.contains("berth.spec"), "{labels}");
    }
    // A container created again (removed behind berth's back) gets them again.
    docker(&["rm", "-f", &id]);
    let s = w.fx.wait_status("app created again", |s| {
        comp(s, "app")["state"] == "running"
            && comp(s, "app")["container_id"]
                .as_str()
                .is_some_and(|c| c != id)
    });
    let again = comp(&s, "app")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(container_env(&again).contains(&format!("DB_PASSWORD={MARK}-db")));
    // The status API, the pin and the plan: references, never values.
    let status = w.fx.wait_ready().to_string() + &w.status_json();
    assert!(!status.contains(MARK), "status: {status}");
    let pin = std::fs::read_to_string(w.fx.data_dir().join("pin.json")).unwrap();
    assert!(!pin.contains(MARK), "the pin: {:?}", line_with(&pin, MARK));
    assert!(pin.contains(&format!("ssm:/{p}/db-password")), "{pin}");
    assert!(
        pin.contains(&format!("secretsmanager:{p}/api#token")),
        "{pin}"
    );
    let plan = w.plan_json();
    assert_eq!(plan["pinned"], true);
    let secrets = &plan["plan"]["components"][0]["spec"]["secrets"];
    assert_eq!(
        secrets["DB_PASSWORD"],
        format!("ssm:/{p}/db-password").as_str()
    );
    assert_eq!(secrets["WHOLE"], format!("secretsmanager:{arn}").as_str());
    let manifest = w.fx.manifest().display().to_string();
    let (table, _) = w.berth(&["plan", "--config", &manifest]);
    assert!(
        !table.contains(MARK) && table.contains("DB_PASSWORD"),
        "{table}"
    );
    agent.signal(15);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(0));
    let log = agent.log();
    assert!(log.contains("DEBUG"), "the agent logged at debug:\n{log}");
    if let Some(l) = line_with(&log, MARK) {
        panic!("the log prints a value:\n{l}");
    }
}

/// With the default settings: a secret that does not exist yet leaves its
/// component pending (not created, not failed), with a message naming each
/// missing reference in status and the log; the other component runs; once
/// the secrets are created, the component starts with them.
#[test]
fn a_missing_secret_leaves_only_its_component_pending_until_it_exists() {
    let w = Ec2Secrets::new(&|prefix| {
        format!(
            "{}secrets = {{ DB_PASSWORD = \"ssm:/{prefix}/late\", API = \"secretsmanager:{prefix}/late-api#k\" }}\n{}",
            forever("app"),
            forever("other")
        )
    });
    let p = &w.prefix;
    let mut agent = w.agent(&[]);
    let s =
        w.fx.wait_status("app pending with its reason, other running", |s| {
            comp(s, "other")["state"] == "running"
                && comp(s, "app")["state"] == "pending"
                && comp(s, "app")["last_error"].is_string()
        });
    let error = comp(&s, "app")["last_error"].as_str().unwrap();
    let ssm = format!("secret DB_PASSWORD (ssm:/{p}/late): parameter not found (GetParameters)");
    let sm = format!("secret API (secretsmanager:{p}/late-api#k): ResourceNotFoundException");
    assert!(error.contains(&ssm) && error.contains(&sm), "{error}");
    assert_eq!(comp(&s, "app")["container_id"], Value::Null, "not created");
    assert_eq!(comp(&s, "app")["failures"], 0, "not a failure");
    assert_eq!(comp(&s, "app")["failed_since"], Value::Null);
    assert_eq!(s["state"], "starting");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("component app is pending") && reason.contains(&ssm),
        "{reason}"
    );
    let (text, _) = w.berth(&["status", "--addr", &w.fx.status_addr]);
    assert!(
        text.contains(&format!("ssm:/{p}/late")),
        "berth status:\n{text}"
    );
    agent.wait_log("cannot resolve the component's secrets", LONG);
    assert!(agent.log().contains(&ssm), "{}", agent.log());
    // Still pending on the next tries; then the secrets appear.
    w.fx.wait_status("a second try", |s| {
        comp(s, "app")["state"] == "pending" && comp(s, "other")["state"] == "running"
    });
    w.moto
        .put_parameter(&format!("/{p}/late"), &format!("{MARK}-late"), true);
    w.moto
        .put_secret(&format!("{p}/late-api"), &format!(r#"{{"k": "{MARK}-k"}}"#));
    let s = w.fx.wait_ready();
    assert_eq!(comp(&s, "app")["last_error"], Value::Null);
    assert_eq!(comp(&s, "app")["failures"], 0);
    let id = comp(&s, "app")["container_id"].as_str().unwrap();
    let env = container_env(id);
    assert!(env.contains(&format!("DB_PASSWORD={MARK}-late")), "{env:?}");
    assert!(env.contains(&format!("API={MARK}-k")), "{env:?}");
    assert!(!w.status_json().contains(MARK));
    agent.signal(15);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(
        line_with(&agent.log(), MARK),
        None,
        "the log prints a value"
    );
}

/// Local mode: the local file's `[secrets]` table stands in for the
/// stores; the values reach the container and nothing else.
#[test]
fn local_mode_reads_secrets_from_the_local_file() {
    base_image();
    let fx = Fx::new(
        &format!(
            "{}secrets = {{ DB = \"ssm:/berth/db\", TOKEN = \"secretsmanager:berth/api#token\" }}\n",
            forever("app")
        ),
        "",
        "base",
    );
    let local = std::fs::read_to_string(fx.local()).unwrap();
    fx.write_local(&format!(
        "{local}[secrets]\n\"ssm:/berth/db\" = \"{MARK}-local-db\"\n\"secretsmanager:berth/api\" = '{{\"token\": \"{MARK}-local-token\"}}'\n"
    ));
    let (manifest, local) = (fx.manifest(), fx.local());
    let (manifest, local) = (manifest.to_str().unwrap(), local.to_str().unwrap());
    let out = berth(&["validate", "--config", manifest, "--local", local], &[]);
    assert_eq!(
        exit_code(out.status),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut agent = fx.agent(&[("RUST_LOG", "trace")]);
    let s = fx.wait_ready();
    let env = container_env(comp(&s, "app")["container_id"].as_str().unwrap());
    assert!(env.contains(&format!("DB={MARK}-local-db")), "{env:?}");
    assert!(
        env.contains(&format!("TOKEN={MARK}-local-token")),
        "{env:?}"
    );
    let (json, err) = plan_output(&fx, true);
    assert!(!json.contains(MARK) && !err.contains(MARK), "{json}{err}");
    let pin = std::fs::read_to_string(fx.data_dir().join("pin.json")).unwrap();
    assert!(
        !pin.contains(MARK) && pin.contains("ssm:/berth/db"),
        "{pin}"
    );
    agent.signal(15);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(
        line_with(&agent.log(), MARK),
        None,
        "the log prints a value"
    );
}

/// A value written where a reference goes is refused by `validate`,
/// `plan` and `run` (exit 78) at its path, and never printed.
#[test]
fn a_value_written_as_a_reference_is_refused_without_being_printed() {
    let fx = Fx::new(
        &format!(
            "{}secrets = {{ DB_PASSWORD = \"{SECRET}\" }}\n",
            forever("app")
        ),
        "",
        "1.0",
    );
    let (manifest, local) = (fx.manifest(), fx.local());
    let (manifest, local) = (manifest.to_str().unwrap(), local.to_str().unwrap());
    for args in [
        vec!["validate", "--config", manifest],
        vec!["plan", "--config", manifest, "--local", local],
        vec!["run", "--config", manifest, "--local", local],
    ] {
        let out = berth(&args, &[("RUST_LOG", "trace")]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(exit_code(out.status), 78, "{args:?}: {all}");
        assert!(!all.contains(SECRET), "{args:?} prints the value:\n{all}");
        assert!(
            all.contains("clusters.web.containers[0].secrets.DB_PASSWORD: not a secret reference"),
            "{args:?}: {all}"
        );
    }
}
