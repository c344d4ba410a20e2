//! Environment values are secrets: berth hands them to the engine and keeps
//! them in its private pin, and never prints them: not in `berth plan`, not
//! in manifest errors, not in logs at any level. The pin and the data
//! directory are private (0600/0700) whoever creates them.
//!
//! Every test puts [`SECRET`] in a container's environment (or where a value
//! goes in the manifest) and looks for it in what berth prints.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::fixture::{Fx, comp};
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
