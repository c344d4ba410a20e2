//! Whole behaviours of `berth run` (local mode) against the machine's real
//! Docker engine and a real registry on loopback.
//!
//! Every test has its own namespace (container names and labels), status
//! port, data directory and image repository, so tests run in parallel and
//! never see each other's containers. Tests wait on conditions with generous
//! deadlines; none asserts on timing.

mod support;

use serde_json::Value;
use support::fixture::{Fx, LONG, comp};
use support::*;

fn running_forever() -> &'static str {
    r#"command = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#
}

/// One component, `web`, that runs until stopped, on the base image.
fn web_forever() -> Fx {
    Fx::new(
        &format!(
            "[[clusters.web.containers]]\nname = \"web\"\nimage = \"berth-test/busybox:{{version}}\"\n{}\n",
            running_forever()
        ),
        "",
        "base",
    )
}

fn started_at(id: &str) -> String {
    inspect_field(id, "{{.State.StartedAt}}")
}

/// A Docker RFC 3339 time (its fractions have variable length, so strings do not compare).
fn time(s: &str) -> std::time::SystemTime {
    humantime::parse_rfc3339(s.trim()).unwrap_or_else(|e| panic!("bad time {s:?}: {e}"))
}

/// Engine event times (ns) of `event` for container `id` since `since` (RFC 3339).
fn event_times(id: &str, event: &str, since: &str) -> Vec<i64> {
    let until = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 1
    );
    docker(&[
        "events",
        "--since",
        since,
        "--until",
        &until,
        "--filter",
        &format!("container={id}"),
        "--filter",
        &format!("event={event}"),
        "--format",
        "{{.TimeNano}}",
    ])
    .lines()
    .filter_map(|l| l.trim().parse().ok())
    .collect()
}

#[test]
fn starts_a_multi_container_set_in_order_pulling_through_the_registry() {
    let reg = shared_registry();
    let repo = unique("order");
    push_image(&reg.addr(), &repo, "1.0");
    let image = format!("{}/{repo}:{{version}}", reg.addr());
    let fx = Fx::new(
        &format!(
            r#"
[[clusters.web.containers]]
name = "web"
image = "{image}"
{run}
depends_on = ["app"]
labels = {{ team = "edge" }}

[[clusters.web.containers]]
name = "db"
image = "{image}"
command = ["sh", "-c", "trap 'exit 0' TERM; sleep 2; touch /ready; while true; do sleep 1; done"]
healthcheck = {{ test = ["CMD", "test", "-f", "/ready"], interval = "500ms", retries = 3 }}

[[clusters.web.containers]]
name = "app"
image = "{image}"
{run}
depends_on = ["db"]
env = {{ GREETING = "hello" }}
"#,
            run = running_forever()
        ),
        "",
        "1.0",
    );
    let mut agent = fx.agent(&[]);
    let s = fx.wait_ready();
    for c in ["web", "db", "app"] {
        assert_eq!(comp(&s, c)["state"], "running", "{s}");
        assert_eq!(comp(&s, c)["version"], "1.0");
    }
    assert_eq!(comp(&s, "db")["health"], "healthy");
    // Order: db became healthy before app was created; app ran before web.
    let id = |c: &str| comp(&s, c)["container_id"].as_str().unwrap().to_string();
    let (db, app, web) = (id("db"), id("app"), id("web"));
    let created = |c: &str| inspect_field(c, "{{.Created}}");
    assert!(
        time(&started_at(&db)) < time(&created(&app)),
        "db started {} app created {}",
        started_at(&db),
        created(&app)
    );
    assert!(
        time(&started_at(&app)) < time(&created(&web)),
        "app started {} web created {}",
        started_at(&app),
        created(&web)
    );
    let healthy = event_times(&db, "health_status", &started_at(&db));
    let app_created = time(&created(&app))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        healthy.first().is_some_and(|h| *h < app_created),
        "db healthy {healthy:?} before app created {app_created}"
    );
    // Labels, env and the name are what the manifest and pin say.
    assert_eq!(
        inspect_field(&web, "{{index .Config.Labels \"berth.managed\"}}"),
        "true"
    );
    assert_eq!(
        inspect_field(&web, "{{index .Config.Labels \"berth.component\"}}"),
        "web"
    );
    assert_eq!(
        inspect_field(&web, "{{index .Config.Labels \"team\"}}"),
        "edge"
    );
    assert!(inspect_field(&app, "{{json .Config.Env}}").contains("GREETING=hello"));
    assert_eq!(
        inspect_field(&app, "{{.Name}}"),
        format!("/{}", fx.name("app"))
    );
    // The pin records the registry digest, and containers run from it.
    let pin: Value =
        serde_json::from_slice(&std::fs::read(fx.data_dir().join("pin.json")).unwrap()).unwrap();
    let digest = pin["components"][0]["digest"]
        .as_str()
        .expect("digest pinned")
        .to_string();
    assert!(
        digest.starts_with(&format!("{}/{repo}@sha256:", reg.addr())),
        "{digest}"
    );
    assert_eq!(inspect_field(&web, "{{.Config.Image}}"), digest);
    assert_eq!(container_ids_with_label(&fx.label()).len(), 3);
    agent.signal(15);
    assert_eq!(agent.wait_exit(LONG), Some(0));
}

#[test]
fn pull_is_retried_while_the_registry_is_down() {
    let mut reg = Registry::start();
    let repo = unique("pull");
    push_image(&reg.addr(), &repo, "2.0");
    reg.stop();
    let fx = Fx::new(
        &format!(
            "[[clusters.web.containers]]\nname = \"web\"\nimage = \"{}/{repo}:{{version}}\"\n{}\n",
            reg.addr(),
            running_forever()
        ),
        "pull_attempts = 2",
        "2.0",
    );
    let mut agent = fx.agent(&[]);
    let s = fx.wait_status("pull error shown", |s| {
        comp(s, "web")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("pull"))
    });
    assert_ne!(comp(&s, "web")["state"], "running");
    assert_eq!(
        comp(&s, "web")["failures"],
        0,
        "pull failures must not count against the budget: {s}"
    );
    assert!(container_ids_with_label(&fx.label()).is_empty());
    reg.start_again();
    let s = fx.wait_ready();
    assert_eq!(comp(&s, "web")["state"], "running");
    assert!(agent.log().contains("image pull failed"));
    agent.kill();
}

#[test]
fn a_killed_container_is_restarted_in_place() {
    let fx = web_forever();
    base_image();
    let _agent = fx.agent(&[]);
    let s = fx.wait_ready();
    let id = comp(&s, "web")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    for round in 1..=2 {
        kill_main_process(&id);
        let s = fx.wait_status("restarted", |s| {
            comp(s, "web")["restarts"] == round && comp(s, "web")["state"] == "running"
        });
        assert_eq!(
            comp(&s, "web")["container_id"],
            id.as_str(),
            "restart must reuse the container"
        );
        assert_eq!(comp(&s, "web")["last_exit_code"], 137);
    }
    assert_eq!(
        container_ids_with_label(&fx.label()),
        vec![id.clone()],
        "no litter"
    );
    assert_eq!(inspect_field(&id, "{{.State.Running}}"), "true");
}

#[test]
fn a_crash_loop_backs_off_then_fails_and_keeps_retrying() {
    base_image();
    let fx = Fx::new(
        r#"
[[clusters.web.containers]]
name = "crashy"
image = "berth-test/busybox:{version}"
command = ["sh", "-c", "exit 3"]
"#,
        "",
        "base",
    );
    let agent = fx.agent(&[("BERTH_LOG_FORMAT", "json")]);
    let s = fx.wait_status("crashy failed", |s| comp(s, "crashy")["state"] == "failed");
    // A failed component is "degraded", and says why (not "starting" for minutes).
    assert_eq!(s["state"], "degraded", "{s}");
    assert!(
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("component crashy failed")),
        "{s}"
    );
    let c = comp(&s, "crashy");
    assert!(c["failures"].as_u64().unwrap() >= 5, "{c}");
    assert_eq!(c["last_exit_code"], 3);
    let id = c["container_id"].as_str().unwrap().to_string();
    let restarts = c["restarts"].as_u64().unwrap();
    // Still retried after failing (every max_delay).
    fx.wait_status("retried after failing", |s| {
        comp(s, "crashy")["restarts"].as_u64().unwrap() > restarts
    });
    assert_eq!(
        container_ids_with_label(&fx.label()),
        vec![id.clone()],
        "a crash loop leaves one container"
    );
    // The default restart policy's schedule: immediate, then 1 s, 2 s, 4 s,
    // 8 s, 16 s, ±10 % jitter (30 s cap), and failed after 5.
    let decided: Vec<u64> = agent
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "component failed" && v["component"] == "crashy")
        .map(|v| v["restart_in_ms"].as_u64().expect("restart_in_ms"))
        .collect();
    assert!(decided.len() >= 5, "{decided:?}");
    for (got, want) in decided.iter().zip([0u64, 1000, 2000, 4000, 8000, 16000]) {
        assert!(got.abs_diff(want) <= want / 10, "schedule {decided:?}");
    }
    // And it waited at least that long each time (a lower bound holds under any load).
    let created = inspect_field(&id, "{{.Created}}");
    let starts = event_times(&id, "start", &created);
    let dies = event_times(&id, "die", &created);
    assert!(
        starts.len() >= 5 && dies.len() >= 5,
        "starts {starts:?} dies {dies:?}"
    );
    for (s, want_ms) in starts[1..].iter().zip(&decided[..4]) {
        let die = dies
            .iter()
            .filter(|d| *d < s)
            .max()
            .expect("a die before each restart");
        assert!(
            (s - die) as f64 / 1e6 >= *want_ms as f64 * 0.9,
            "waited less than decided: starts {starts:?} dies {dies:?} decided {decided:?}"
        );
    }
}

#[test]
fn an_unhealthy_container_is_restarted() {
    base_image();
    let fx = Fx::new(
        r#"
[[clusters.web.containers]]
name = "web"
image = "berth-test/busybox:{version}"
command = ["sh", "-c", "trap 'exit 0' TERM; touch /healthy; sleep 4; rm /healthy; while true; do sleep 1; done"]
healthcheck = { test = ["CMD", "test", "-f", "/healthy"], interval = "500ms", timeout = "1s", retries = 1 }
stop_grace_period = "2s"
"#,
        "",
        "base",
    );
    let mut agent = fx.agent(&[]);
    // Never "ready": ready needs a run of restart.stable_after (10 s), and
    // this container turns unhealthy after 4 s.
    let s = fx.wait_status("web healthy", |s| comp(s, "web")["health"] == "healthy");
    let id = comp(&s, "web")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    let first_start = started_at(&id);
    let s = fx.wait_status("restarted after unhealthy", |s| {
        comp(s, "web")["restarts"].as_u64() >= Some(1) && comp(s, "web")["health"] == "healthy"
    });
    assert_eq!(comp(&s, "web")["container_id"], id.as_str());
    assert!(time(&started_at(&id)) > time(&first_start));
    agent.wait_log("healthcheck reports unhealthy", LONG);
    // The stop signal was honoured: the trap exited 0 rather than being killed.
    assert_eq!(comp(&s, "web")["last_exit_code"], 0, "{s}");
}

#[test]
fn a_killed_agent_adopts_its_containers_on_restart() {
    base_image();
    let fx = Fx::new(
        &format!(
            "[[clusters.web.containers]]\nname = \"a\"\nimage = \"berth-test/busybox:{{version}}\"\n{r}\n[[clusters.web.containers]]\nname = \"b\"\nimage = \"berth-test/busybox:{{version}}\"\n{r}\ndepends_on = [\"a\"]\n",
            r = running_forever()
        ),
        "",
        "base",
    );
    let mut agent = fx.agent(&[]);
    let s = fx.wait_ready();
    let ids: Vec<String> = ["a", "b"]
        .iter()
        .map(|c| comp(&s, c)["container_id"].as_str().unwrap().to_string())
        .collect();
    let starts: Vec<String> = ids.iter().map(|i| started_at(i)).collect();
    agent.signal(9);
    assert_eq!(agent.wait_exit(LONG), Some(137));
    let mut again = fx.agent(&[]);
    let s = fx.wait_ready();
    let ids2: Vec<String> = ["a", "b"]
        .iter()
        .map(|c| comp(&s, c)["container_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ids2, "same container ids");
    assert_eq!(
        starts,
        ids.iter().map(|i| started_at(i)).collect::<Vec<_>>(),
        "not restarted"
    );
    assert_eq!(
        container_ids_with_label(&fx.label()).len(),
        2,
        "no duplicates"
    );
    again.wait_log("adopted container", LONG);
    assert!(!again.log().contains("replacing"));
    // SIGTERM stops the agent only.
    again.signal(15);
    assert_eq!(again.wait_exit(LONG), Some(0));
    for id in &ids {
        assert_eq!(inspect_field(id, "{{.State.Running}}"), "true");
    }
}

#[test]
fn unmanaged_containers_are_never_touched() {
    let base = base_image();
    let fx = Fx::new(
        &format!(
            "[[clusters.web.containers]]\nname = \"web\"\nimage = \"berth-test/busybox:{{version}}\"\n{r}\nrestart = {{ initial_delay = \"200ms\", max_delay = \"1s\", failure_budget = 2 }}\n[[clusters.web.containers]]\nname = \"other\"\nimage = \"berth-test/busybox:{{version}}\"\n{r}\n",
            r = running_forever()
        ),
        "",
        "base",
    );
    // Same name as berth's web, but not managed; and one carrying our namespace label only.
    let squatter = docker(&["run", "-d", "--name", &fx.name("web"), &base])
        .trim()
        .to_string();
    let bystander = docker(&["run", "-d", "--label", &fx.label(), &base])
        .trim()
        .to_string();
    let squatter_start = started_at(&squatter);
    let _agent = fx.agent(&[]);
    let s = fx.wait_status("web fails on the name conflict, other runs", |s| {
        comp(s, "web")["state"] == "failed" && comp(s, "other")["state"] == "running"
    });
    assert!(
        comp(&s, "web")["last_error"]
            .as_str()
            .unwrap()
            .contains("never removes"),
        "{s}"
    );
    for (id, start) in [
        (&squatter, &squatter_start),
        (&bystander, &started_at(&bystander)),
    ] {
        assert_eq!(inspect_field(id, "{{.State.Running}}"), "true");
        assert_eq!(&started_at(id), start, "untouched");
    }
    docker(&["rm", "-f", &squatter, &bystander]);
    // With the name free, berth creates its own.
    fx.wait_status("web runs once the name is free", |s| {
        comp(s, "web")["state"] == "running"
    });
}

#[test]
fn drift_drains_in_reverse_order_and_exits_3() {
    base_image();
    let graceful = r#"command = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#;
    let fx = Fx::new(
        &format!(
            "[[clusters.web.containers]]\nname = \"db\"\nimage = \"berth-test/busybox:{{version}}\"\n{graceful}\nstop_grace_period = \"5s\"\n\
             [[clusters.web.containers]]\nname = \"app\"\nimage = \"berth-test/busybox:{{version}}\"\n{graceful}\ndepends_on = [\"db\"]\nstop_grace_period = \"5s\"\n"
        ),
        "local_poll_interval = \"200ms\"",
        "base",
    );
    let mut agent = fx.agent(&[]);
    let s = fx.wait_ready();
    let db = comp(&s, "db")["container_id"].as_str().unwrap().to_string();
    let app = comp(&s, "app")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    fx.write_local(&format!(
        "instance_id = \"i-{}\"\ngroup = \"web\"\n[tags]\n\"berth:version\" = \"next\"\n",
        fx.ns
    ));
    assert_eq!(
        agent.wait_exit(LONG),
        Some(3),
        "exit code 3 = drained for retirement"
    );
    let log = agent.log();
    assert!(log.contains("drift detected"), "{log}");
    assert!(
        log.contains("preferred=next") || log.contains("preferred\":\"next"),
        "{log}"
    );
    for id in [&db, &app] {
        assert_eq!(inspect_field(id, "{{.State.Running}}"), "false");
        assert_eq!(
            inspect_field(id, "{{.State.ExitCode}}"),
            "0",
            "stopped with its signal, not killed"
        );
    }
    let finished = |id: &str| time(&inspect_field(id, "{{.State.FinishedAt}}"));
    assert!(
        finished(&app) < finished(&db),
        "app (depends on db) stops first"
    );
}

#[test]
fn bad_manifests_name_the_field_and_start_nothing() {
    let cases = [
        (
            "unknown key",
            "name = \"w\"\nimage = \"x:{version}\"\ncpu_shares = 2\n",
            "clusters.web.containers[0]",
        ),
        (
            "no placeholder",
            "name = \"w\"\nimage = \"x:latest\"\n",
            "clusters.web.containers[0].image",
        ),
        (
            "bad duration",
            "name = \"w\"\nimage = \"x:{version}\"\nstop_grace_period = \"soon\"\n",
            "clusters.web.containers[0].stop_grace_period",
        ),
        (
            "bad port",
            "name = \"w\"\nimage = \"x:{version}\"\nports = [\"70000:80\"]\n",
            "clusters.web.containers[0].ports[0]",
        ),
        (
            "bad healthcheck",
            "name = \"w\"\nimage = \"x:{version}\"\nhealthcheck = { test = [\"CMD\"], retries = 0 }\n",
            "clusters.web.containers[0].healthcheck.retries",
        ),
        (
            "unknown dependency",
            "name = \"w\"\nimage = \"x:{version}\"\ndepends_on = [\"db\"]\n",
            "clusters.web.containers[0].depends_on[0]",
        ),
        (
            "bad name",
            "name = \"Web App\"\nimage = \"x:{version}\"\n",
            "clusters.web.containers[0].name",
        ),
        (
            "bad memory",
            "name = \"w\"\nimage = \"x:{version}\"\nmemory = \"lots\"\n",
            "clusters.web.containers[0].memory",
        ),
    ];
    for (what, body, path) in cases {
        let fx = Fx::new(&format!("[[clusters.web.containers]]\n{body}"), "", "1.0");
        let out = berth(
            &["validate", "--config", fx.manifest().to_str().unwrap()],
            &[],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(exit_code(out.status), 78, "{what}: {err}");
        assert!(err.contains(path), "{what}: expected {path} in {err}");
        let args = fx.args();
        let run = berth(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        assert_eq!(exit_code(run.status), 78, "{what}: run exits 78");
        assert!(
            String::from_utf8_lossy(&run.stderr).contains(path),
            "{what}: run names the field"
        );
        assert!(
            container_ids_with_label(&fx.label()).is_empty(),
            "{what}: nothing started"
        );
        assert!(
            !fx.data_dir().join("pin.json").exists(),
            "{what}: nothing pinned"
        );
    }
    // Several problems at once.
    let fx = Fx::new(
        "[[clusters.web.containers]]\nname = \"w\"\nimage = \"x\"\nports = [\"x\"]\nstop_signal = \"NOPE\"\n",
        "",
        "1.0",
    );
    let out = berth(
        &["validate", "--config", fx.manifest().to_str().unwrap()],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for p in [
        "containers[0].image",
        "containers[0].ports[0]",
        "containers[0].stop_signal",
    ] {
        assert!(err.contains(p), "missing {p} in {err}");
    }
}

#[test]
fn a_bad_local_file_is_reported_and_changes_nothing() {
    base_image();
    let fx = Fx::new(
        &format!(
            "[[clusters.web.containers]]\nname = \"web\"\nimage = \"berth-test/busybox:{{version}}\"\n{}\n",
            running_forever()
        ),
        "local_poll_interval = \"200ms\"",
        "base",
    );
    let mut agent = fx.agent(&[]);
    let s = fx.wait_ready();
    let id = comp(&s, "web")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    let good = std::fs::read_to_string(fx.local()).unwrap();
    for (bad, needle) in [
        (
            good.replace("\"base\"", "\"not a version\""),
            "berth:version",
        ),
        (
            format!("{good}\"berth:version:ghost\" = \"1\"\n"),
            "berth:version:ghost",
        ),
        ("instance_id = ".to_string(), "local file"),
    ] {
        fx.write_local(&bad);
        let s = fx.wait_status("error shown in status", |s| {
            s["message"].as_str().is_some_and(|m| m.contains(needle))
        });
        assert_eq!(comp(&s, "web")["container_id"], id.as_str());
        assert_eq!(comp(&s, "web")["state"], "running");
        assert!(agent.is_running());
        fx.write_local(&good);
        fx.wait_status("error cleared", |s| s["message"].is_null());
    }
    assert_eq!(inspect_field(&id, "{{.State.Running}}"), "true");
    assert!(agent.log().contains("nothing is retired"));
}

#[test]
fn a_moved_tag_never_changes_what_an_instance_runs() {
    let reg = shared_registry();
    let repo = unique("pin");
    push_variant(&reg.addr(), &repo, "1.0", "first");
    let fx = Fx::new(
        &format!(
            "[[clusters.web.containers]]\nname = \"web\"\nimage = \"{}/{repo}:{{version}}\"\n{}\n",
            reg.addr(),
            running_forever()
        ),
        "",
        "1.0",
    );
    let mut agent = fx.agent(&[]);
    let s = fx.wait_ready();
    let first_image = inspect_field(
        comp(&s, "web")["container_id"].as_str().unwrap(),
        "{{.Image}}",
    );
    agent.signal(15);
    assert_eq!(agent.wait_exit(LONG), Some(0));
    // The tag moves in the registry, and the container is lost.
    push_variant(&reg.addr(), &repo, "1.0", "second");
    remove_containers_with_label(&fx.label());
    let _again = fx.agent(&[]);
    let s = fx.wait_ready();
    let id = comp(&s, "web")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        inspect_field(&id, "{{.Image}}"),
        first_image,
        "recreated from the pinned digest"
    );
    let out = docker(&["exec", &id, "cat", "/marker"]);
    assert_eq!(out.trim(), "first");
}

#[test]
fn plan_shows_what_would_run_without_starting_anything() {
    let fx = Fx::new(
        "[[clusters.web.containers]]\nname = \"web\"\nimage = \"reg.example.com/web:v{version}\"\n",
        "",
        "1.4.2",
    );
    let out = berth(
        &[
            "plan",
            "--config",
            fx.manifest().to_str().unwrap(),
            "--local",
            fx.local().to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert_eq!(
        exit_code(out.status),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pinned"], false);
    assert_eq!(
        v["plan"]["components"][0]["image"],
        "reg.example.com/web:v1.4.2"
    );
    assert!(container_ids_with_label(&fx.label()).is_empty());
    assert!(!fx.data_dir().exists());
    let table = berth(
        &[
            "plan",
            "--config",
            fx.manifest().to_str().unwrap(),
            "--local",
            fx.local().to_str().unwrap(),
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&table.stdout).contains("reg.example.com/web:v1.4.2"));
}

#[test]
fn status_command_prints_the_table_and_json() {
    base_image();
    let fx = web_forever();
    let _agent = fx.agent(&[]);
    fx.wait_ready();
    let out = berth(&["status", "--addr", &fx.status_addr], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(exit_code(out.status), 0);
    assert!(
        text.contains("COMPONENT") && text.contains("web") && text.contains("running"),
        "{text}"
    );
    let out = berth(&["status", "--addr", &fx.status_addr, "--json"], &[]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "ready");
    assert_eq!(
        http_get(&fx.status_addr, "/healthz").map(|r| r.0),
        Some(200)
    );
    let dead = format!("127.0.0.1:{}", free_port());
    let out = berth(&["status", "--addr", &dead], &[]);
    assert_eq!(exit_code(out.status), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `berth run` running?"));
}

#[test]
fn an_engine_restart_is_survived() {
    let mut engine = PrivateDockerd::start();
    let host = engine.host();
    engine.load_base_image();
    let fx = web_forever();
    let mut agent = fx.agent(&[("DOCKER_HOST", &host)]);
    let s = fx.wait_ready();
    let id = comp(&s, "web")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    engine.stop();
    // An unreachable engine is never the container's failure, and the agent
    // says it is degraded, and why (not "ready" with the engine gone).
    let down = fx.wait_status("engine lost", |s| s["engine_connected"] == false);
    assert_eq!(down["state"], "degraded", "{down}");
    assert!(
        down["reason"].as_str().unwrap_or("").contains("engine"),
        "{down}"
    );
    engine.start_again();
    let s = fx.wait_status("running again after the engine restart", |s| {
        s["engine_connected"] == true
            && comp(s, "web")["state"] == "running"
            && comp(s, "web")["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(
        comp(&s, "web")["container_id"],
        id.as_str(),
        "same container, restarted"
    );
    assert_eq!(inspect_field_at(&host, &id, "{{.State.Running}}"), "true");
    assert_eq!(container_ids_with_label_at(&host, &fx.label()).len(), 1);
    assert_eq!(
        comp(&s, "web")["failures"],
        0,
        "the engine's restart is not counted against the budget: {s}"
    );
    assert!(agent.log().contains("lost the container engine"));
    agent.kill();
    remove_containers_with_label_at(&host, &fx.label());
}

/// Defect: a container that ran longer than `stable_after` and then fails
/// to *start* (here its bind-mounted file was replaced by a directory) was
/// restarted in a hot loop, `failures=1 restart_in_ms=0` every time, never
/// failed. On the default restart policy it now backs off and fails.
#[test]
fn a_start_that_fails_after_a_long_run_backs_off_on_the_defaults() {
    base_image();
    let host_dir = tempfile::tempdir().unwrap();
    let conf = host_dir.path().join("app.conf");
    std::fs::write(&conf, "x=1\n").unwrap();
    let fx = Fx::new(
        &format!(
            "[[clusters.web.containers]]\nname = \"web\"\nimage = \"berth-test/busybox:{{version}}\"\nvolumes = [\"{}:/app.conf:ro\"]\n{}\n",
            conf.display(),
            running_forever()
        ),
        "",
        "base",
    );
    let agent = fx.agent(&[("BERTH_LOG_FORMAT", "json")]);
    let s = fx.wait_ready();
    let id = comp(&s, "web")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A run longer than the default stable_after (10 s).
    std::thread::sleep(std::time::Duration::from_secs(11));
    std::fs::remove_file(&conf).unwrap();
    std::fs::create_dir(&conf).unwrap();
    kill_main_process(&id);
    let s = fx.wait_status("web failed after failed starts", |s| {
        comp(s, "web")["state"] == "failed" || comp(s, "web")["failed_since"].is_string()
    });
    let c = comp(&s, "web");
    assert!(c["failures"].as_u64().unwrap() >= 5, "{c}");
    let decided: Vec<u64> = agent
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "component failed" && v["component"] == "web")
        .map(|v| v["restart_in_ms"].as_u64().expect("restart_in_ms"))
        .collect();
    // The death after the long run restarts at once; then 1 s, 2 s, 4 s, 8 s (±10 %).
    for (got, want) in decided.iter().zip([0u64, 1000, 2000, 4000, 8000]) {
        assert!(got.abs_diff(want) <= want / 10, "schedule {decided:?}");
    }
    assert!(decided.len() < 20, "no hot loop: {decided:?}");
    remove_containers_with_label(&fx.label());
}

/// Defect: an unusable data dir (full, read-only, or here a file where the
/// directory should be) exited 78, on which systemd never restarts. Now the
/// agent waits, says why in its status, and carries on once it is fixed.
#[test]
fn an_unusable_data_dir_is_waited_for_not_fatal() {
    base_image();
    let fx = web_forever();
    std::fs::write(fx.data_dir(), "not a directory").unwrap();
    let mut agent = fx.agent(&[]);
    let s = fx.wait_status("waiting for the data dir", |s| {
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot use the data dir"))
    });
    assert_eq!(s["state"], "starting", "{s}");
    assert_eq!(
        agent.wait_exit(std::time::Duration::from_millis(200)),
        None,
        "still running: {}",
        agent.log()
    );
    std::fs::remove_file(fx.data_dir()).unwrap();
    fx.wait_ready();
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&fx.data_dir()), 0o700, "the data dir is private");
    agent.kill();
    remove_containers_with_label(&fx.label());
}

/// Defect: `berth plan` with IMDS unreachable exited 78 ("bad
/// configuration"); it is a temporary failure (75), and a bad manifest
/// still is 78.
#[test]
fn exit_codes_tell_temporary_failures_from_bad_configuration() {
    let fx = Fx::new(
        "[[clusters.web.containers]]\nname = \"web\"\nimage = \"web:{version}\"\n",
        "",
        "1",
    );
    let manifest = fx.manifest().display().to_string();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = berth(
        &["plan", "--config", &manifest],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &dead)],
    );
    assert_eq!(
        exit_code(out.status),
        75,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(fx.manifest(), "[agent]\nbogus = 1\n").unwrap();
    let out = berth(&["plan", "--config", &manifest], &[]);
    assert_eq!(exit_code(out.status), 78);
    let out = berth(&["validate", "--config", &manifest], &[]);
    assert_eq!(exit_code(out.status), 78);
}

#[test]
fn the_namespace_flag_overrides_the_manifest() {
    base_image();
    let fx = web_forever();
    let ns = unique("flag");
    let mut args = fx.args();
    args.extend(["--namespace".to_string(), ns.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn(&args, &[]);
    fx.wait_ready();
    let label = format!("berth.namespace={ns}");
    let ids = container_ids_with_label(&label);
    assert_eq!(ids.len(), 1);
    assert_eq!(inspect_field(&ids[0], "{{.Name}}"), format!("/{ns}-web"));
    assert!(container_ids_with_label(&fx.label()).is_empty());
    agent.kill();
    remove_containers_with_label(&label);
}

/// Defects: restart counts started from zero after an agent restart; a
/// changed `instance_id` in the local file was ignored silently.
#[test]
fn restart_counts_survive_an_agent_restart_and_a_new_instance_id_is_reported() {
    base_image();
    let fx = web_forever();
    let mut agent = fx.agent(&[]);
    let s = fx.wait_ready();
    let id = comp(&s, "web")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    kill_main_process(&id);
    fx.wait_status("restarted once", |s| {
        comp(s, "web")["restarts"] == 1 && comp(s, "web")["state"] == "running"
    });
    agent.signal(15);
    assert_eq!(agent.wait_exit(LONG), Some(0));
    let mut again = fx.agent(&[]);
    let s = fx.wait_ready();
    assert_eq!(
        comp(&s, "web")["restarts"],
        1,
        "kept across the agent restart: {s}"
    );
    fx.write_local(
        "instance_id = \"i-someone-else\"\ngroup = \"web\"\n[tags]\n\"berth:version\" = \"base\"\n",
    );
    let s = fx.wait_status("the new instance id is reported", |s| {
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("i-someone-else"))
    });
    assert_eq!(s["state"], "ready", "nothing else changes: {s}");
    assert!(again.log().contains("names another instance"));
    assert_eq!(again.wait_exit(std::time::Duration::from_millis(200)), None);
    again.kill();
    remove_containers_with_label(&fx.label());
}

/// systemd's protocol as the unit uses it (`Type=notify`, `WatchdogSec=30s`):
/// READY=1 once the status API listens, then WATCHDOG=1 every half period
/// from the running supervisor. The test stands in for systemd with its own
/// notify socket.
#[test]
fn systemd_hears_ready_and_watchdog_pings_on_the_unit_period() {
    use std::os::unix::net::UnixDatagram;
    base_image();
    let fx = web_forever();
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let unit = std::fs::read_to_string("systemd/berth.service").unwrap();
    let period_s: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("WatchdogSec="))
        .map(|v| v.trim().trim_end_matches('s').parse().unwrap())
        .unwrap_or(30);
    let usec = (period_s * 1_000_000).to_string();
    let sock_env = sock_path.display().to_string();
    let mut agent = fx.agent(&[("NOTIFY_SOCKET", &sock_env), ("WATCHDOG_USEC", &usec)]);
    let mut got: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(period_s * 3 + 30);
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline
        && got.iter().filter(|m| m.contains("WATCHDOG=1")).count() < 2
    {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2,
        "{got:?}"
    );
    assert!(
        got.iter().any(|m| m.contains("STATUS=ready")),
        "the status line follows the agent state: {got:?}"
    );
    agent.kill();
    remove_containers_with_label(&fx.label());
}
