//! A Compose file as a cluster's container set: `compose = "FILE"` plans
//! exactly like the equivalent manifest TOML, `berth import compose` prints
//! TOML that plans the same again, an unsupported key is named by
//! `berth validate` (exit code 78), and a Compose-defined cluster runs on
//! the machine's real engine in local mode.

mod support;

use std::path::Path;

use serde_json::Value;
use support::fixture::{Fx, comp};
use support::*;

const RUN: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

/// Every key berth maps, in each of its forms.
fn every_key(image: &str) -> String {
    format!(
        r#"name: shop
version: "3.9"
x-logging: &logging
  driver: json-file
  options:
    max-size: 10m
    max-file: 3
services:
  db:
    image: "{image}"
    command: sh -c "touch /ready; {RUN}"
    environment:
      GREETING: hello
      COUNT: 3
    env_file:
      - db.env
      - path: optional.env
        required: false
    healthcheck:
      test: ["CMD", "test", "-f", "/ready"]
      interval: 500ms
      timeout: 2s
      retries: 3
      start_period: 1m30s
    stop_signal: SIGTERM
    stop_grace_period: 5s
    mem_limit: 64m
    cpus: 0.5
    logging: *logging
    labels:
      com.example.role: db
    volumes:
      - data:/data
      - ./conf:/conf:ro
    restart: unless-stopped
  app:
    image: "{image}"
    entrypoint: ["sh", "-c"]
    command: ["{RUN}"]
    environment:
      - MODE=compose
    ports:
      - "127.0.0.1:18080:80"
      - 9000
      - target: 81
        published: 18081
        host_ip: 127.0.0.1
        protocol: udp
    volumes:
      - type: bind
        source: ./conf
        target: /etc/app
        read_only: true
    user: "65534"
    network_mode: bridge
    labels:
      - com.example.role=app
    deploy:
      resources:
        limits:
          memory: 32M
          cpus: "0.25"
    depends_on:
      db:
        condition: service_healthy
    pull_policy: always
    x-note: ignored, as Compose ignores it
  side:
    image: "{image}"
    entrypoint: sh -c
    command: ["{RUN}"]
    healthcheck:
      test: curl -f http://localhost/ || exit 1
    depends_on: [app]
  quiet:
    image: "{image}"
    healthcheck:
      disable: true
    logging:
      driver: none
volumes:
  data:
"#
    )
}

/// The same containers, written by hand in the manifest's TOML.
fn every_key_toml(image: &str, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"[[clusters.web.containers]]
name = "db"
image = "{image}"
command = ["sh", "-c", "touch /ready; {RUN}"]
env = {{ GREETING = "hello", COUNT = "3", PASSWORD = "from the env file" }}
healthcheck = {{ test = ["CMD", "test", "-f", "/ready"], interval = "500ms", timeout = "2s", retries = 3, start_period = "90s" }}
stop_signal = "SIGTERM"
stop_grace_period = "5s"
memory = "64MiB"
cpus = 0.5
log = {{ driver = "json-file", options = {{ max-size = "10m", max-file = "3" }} }}
labels = {{ "com.example.role" = "db" }}
volumes = ["data:/data", "{dir}/conf:/conf:ro"]

[[clusters.web.containers]]
name = "app"
image = "{image}"
pull = "always"
entrypoint = ["sh", "-c"]
command = ["{RUN}"]
env = {{ MODE = "compose" }}
ports = ["127.0.0.1:18080:80", "9000", "127.0.0.1:18081:81/udp"]
volumes = ["{dir}/conf:/etc/app:ro"]
user = "65534"
network_mode = "bridge"
labels = {{ "com.example.role" = "app" }}
memory = "32MiB"
cpus = 0.25
depends_on = ["db"]

[[clusters.web.containers]]
name = "side"
image = "{image}"
entrypoint = ["sh", "-c"]
command = ["{RUN}"]
healthcheck = {{ test = "curl -f http://localhost/ || exit 1" }}
depends_on = ["app"]

[[clusters.web.containers]]
name = "quiet"
image = "{image}"
healthcheck = {{ test = ["NONE"] }}
log = {{ driver = "none" }}
"#
    )
}

/// A manifest beside the fixture's with `cluster` as its `[clusters.web]` body.
fn write_manifest(fx: &Fx, file: &str, cluster: &str) -> String {
    let path = fx.dir.path().join(file);
    std::fs::write(
        &path,
        format!(
            "[agent]\nnamespace = \"{}\"\ndata_dir = \"{}\"\n\n{cluster}",
            fx.ns,
            fx.data_dir().display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// `berth plan --json` of `manifest`, without the time it was made.
fn plan(fx: &Fx, manifest: &str) -> Value {
    let local = fx.local().display().to_string();
    let out = berth(
        &["plan", "--config", manifest, "--local", &local, "--json"],
        &[],
    );
    assert_eq!(
        exit_code(out.status),
        0,
        "plan {manifest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["plan"]
        .as_object_mut()
        .unwrap()
        .remove("pinned_at")
        .expect("a pinned_at");
    v
}

fn write(fx: &Fx, name: &str, text: &str) {
    std::fs::write(fx.dir.path().join(name), text).unwrap();
}

#[test]
fn a_compose_file_with_every_supported_key_plans_like_the_equivalent_toml() {
    let image = "registry.example.com/shop:{version}";
    let fx = Fx::new("compose = \"web.compose.yaml\"\n", "", "1.4.2");
    write(&fx, "web.compose.yaml", &every_key(image));
    write(&fx, "db.env", "# the db's\nPASSWORD='from the env file'\n");
    let from_compose = plan(&fx, &fx.manifest().display().to_string());
    let by_hand = write_manifest(
        &fx,
        "by-hand.toml",
        &format!("[clusters.web]\n{}", every_key_toml(image, fx.dir.path())),
    );
    let by_hand = plan(&fx, &by_hand);
    assert_eq!(from_compose, by_hand);
    // The plan id hashes every spec with its environment values, which the
    // JSON shows redacted: equal ids mean equal values too.
    let components = from_compose["plan"]["components"].as_array().unwrap();
    assert_eq!(
        components
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["db", "app", "side", "quiet"]
    );
    assert_eq!(components[0]["spec"]["env"]["PASSWORD"], "<redacted>");
    assert_eq!(components[1]["image"], "registry.example.com/shop:1.4.2");

    // `berth import compose` prints TOML that plans the same again.
    let compose = fx.dir.path().join("web.compose.yaml");
    let out = berth(
        &[
            "import",
            "compose",
            compose.to_str().unwrap(),
            "--cluster",
            "web",
        ],
        &[],
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        exit_code(out.status),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("[clusters.web]\n"), "{printed}");
    assert!(
        printed.contains("[[clusters.web.containers]]\n"),
        "{printed}"
    );
    assert!(
        printed.contains("from the env file"),
        "env files are read in: {printed}"
    );
    let imported = write_manifest(&fx, "imported.toml", &printed);
    assert_eq!(plan(&fx, &imported), from_compose);
    let out = berth(&["validate", "--config", &imported], &[]);
    assert_eq!(exit_code(out.status), 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("valid (1 cluster(s), 4 container(s))"),
        "{out:?}"
    );
}

#[test]
fn an_unsupported_key_is_named_by_validate_with_exit_code_78() {
    let fx = Fx::new("compose = \"web.compose.yaml\"\n", "", "1.0");
    write(
        &fx,
        "web.compose.yaml",
        "services:\n  web:\n    image: \"reg/web:{version}\"\n    privileged: true\n    environment:\n      - FROM_THE_SHELL\n",
    );
    let manifest = fx.manifest().display().to_string();
    let out = berth(&["validate", "--config", &manifest], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(out.status), 78, "{stderr}");
    assert!(
        stderr.contains("web.compose.yaml: services.web.privileged: not supported by berth"),
        "{stderr}"
    );
    assert!(
        stderr.contains("web.compose.yaml: services.web.environment[0]: has no value"),
        "every problem at once: {stderr}"
    );
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    // `berth import compose` says the same, with the same code.
    let compose = fx.dir.path().join("web.compose.yaml");
    let out = berth(&["import", "compose", compose.to_str().unwrap()], &[]);
    assert_eq!(exit_code(out.status), 78);
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("services.web.privileged"),
        "{out:?}"
    );
    // A cluster with both containers and compose is refused, by name.
    fx.write_manifest(
        "compose = \"web.compose.yaml\"\n[[clusters.web.containers]]\nname = \"a\"\nimage = \"a:{version}\"\n",
        "",
    );
    let out = berth(&["validate", "--config", &manifest], &[]);
    assert_eq!(exit_code(out.status), 78);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("clusters.web: has both containers and compose"),
        "{out:?}"
    );
}

#[test]
fn a_compose_defined_cluster_runs_in_local_mode() {
    let reg = shared_registry();
    let repo = unique("compose");
    push_image(&reg.addr(), &repo, "1.0");
    let fx = Fx::new("compose = \"web.compose.yaml\"\n", "", "1.0");
    write(
        &fx,
        "web.compose.yaml",
        &format!(
            r#"services:
  db:
    image: "{reg}/{repo}:{{version}}"
    command: sh -c "sleep 1; touch /ready; {RUN}"
    healthcheck:
      test: ["CMD", "test", "-f", "/ready"]
      interval: 500ms
  app:
    image: "{reg}/{repo}:{{version}}"
    command: ["sh", "-c", "{RUN}"]
    env_file: app.env
    labels:
      com.example.team: edge
    volumes:
      - ./conf:/conf:ro
    depends_on:
      db:
        condition: service_healthy
  quiet:
    image: "{reg}/{repo}:{{version}}"
    command: ["sh", "-c", "{RUN}"]
    healthcheck:
      disable: true
"#,
            reg = reg.addr()
        ),
    );
    write(&fx, "app.env", "GREETING=\"hello from compose\"\n");
    std::fs::create_dir(fx.dir.path().join("conf")).unwrap();
    write(&fx, "conf/app.conf", "mounted\n");
    let mut agent = fx.agent(&[]);
    let s = fx.wait_ready();
    assert_eq!(comp(&s, "db")["health"], "healthy", "{s}");
    let app = comp(&s, "app")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    let db = comp(&s, "db")["container_id"].as_str().unwrap().to_string();
    assert!(
        docker(&["exec", &app, "env"]).contains("GREETING=hello from compose"),
        "the env file's value"
    );
    assert_eq!(
        docker(&["exec", &app, "cat", "/conf/app.conf"]).trim(),
        "mounted"
    );
    assert_eq!(
        inspect_field(&app, "{{index .Config.Labels \"com.example.team\"}}"),
        "edge"
    );
    // A disabled healthcheck is the engine's NONE, and nothing to wait for.
    let quiet = comp(&s, "quiet")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        inspect_field(&quiet, "{{json .Config.Healthcheck.Test}}"),
        "[\"NONE\"]"
    );
    assert_eq!(comp(&s, "quiet")["health"], "none", "{s}");
    // service_healthy: app was created after db became healthy.
    let t = |s: String| humantime::parse_rfc3339(s.trim()).unwrap();
    assert!(
        t(inspect_field(&db, "{{.State.StartedAt}}")) < t(inspect_field(&app, "{{.Created}}")),
        "db starts before app is created"
    );
    agent.signal(15);
    assert_eq!(agent.wait_exit(support::fixture::LONG), Some(0));
}
