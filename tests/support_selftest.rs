//! Self-test of the integration-test support code in `tests/support/`:
//! real registries, real engines, real processes, moto and the real AWS
//! SDKs, real outcomes.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use aws_config::imds::client::Client as ImdsClient;
use aws_config::imds::client::error::ImdsError;
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use aws_sdk_cloudwatch::types::{ComparisonOperator, StateValue, Statistic};

use support::cbor;
use support::*;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn unique_ids_are_distinct_and_docker_safe() {
    let handles: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| (0..200).map(|_| unique("Self Test_")).collect::<Vec<_>>()))
        .collect();
    let mut all = HashSet::new();
    for h in handles {
        for id in h.join().expect("id thread panicked") {
            assert!(id.starts_with("self-test-"), "{id}");
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{id} has characters docker rejects in names/tags"
            );
            assert!(id.len() <= 40, "{id} is not short");
            assert!(all.insert(id.clone()), "duplicate id {id}");
        }
    }
    assert_eq!(unique("").split('-').next(), Some("t"));
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
    assert_eq!(ports.iter().collect::<HashSet<_>>().len(), ports.len());
    for p in ports {
        TcpListener::bind(("127.0.0.1", p))
            .unwrap_or_else(|e| panic!("port {p} not bindable: {e}"));
    }
}

#[test]
fn wait_until_returns_the_value() {
    let mut calls = 0;
    let v = wait_until("third call", Duration::from_secs(10), || {
        calls += 1;
        (calls == 3).then_some(calls * 10)
    });
    assert_eq!(v, 30);
}

#[test]
#[should_panic(expected = "waiting for: something that never happens")]
fn wait_until_panics_at_the_deadline() {
    wait_until(
        "something that never happens",
        Duration::from_millis(300),
        || None::<()>,
    );
}

/// Serves exactly one canned HTTP response on a fresh loopback port.
fn one_shot_server(response: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback test server");
    let addr = listener.local_addr().expect("local addr").to_string();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4096];
        let mut req = Vec::new();
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).expect("read request");
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        conn.write_all(response).expect("write response");
    });
    addr
}

#[test]
fn http_get_decodes_chunked_and_sized_bodies() {
    let addr = one_shot_server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n\
          6\r\n{\"a\": \r\n3;ext=1\r\n[1]\r\n1\r\n}\r\n0\r\n\r\n",
    );
    assert_eq!(
        http_get_json(&addr, "/x"),
        Some(serde_json::json!({"a": [1]}))
    );

    let addr =
        one_shot_server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusyEXTRA");
    assert_eq!(http_get(&addr, "/"), Some((503, "busy".to_string())));

    // Nothing listens on a fresh free port: connection refused -> None.
    assert_eq!(http_get(&format!("127.0.0.1:{}", free_port()), "/"), None);
}

/// Reads one response with a `Content-Length` body from `conn`; returns its
/// status code and body.
fn read_response(conn: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("numeric content-length"))
                .expect("every response has a Content-Length");
            if buf.len() >= end + 4 + len {
                let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]);
                return (status.expect("a status code"), body.into_owned());
            }
        }
        let n = conn.read(&mut chunk).expect("read a response");
        assert!(n > 0, "connection closed mid-response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn http_server_keeps_alive_bounds_requests_and_closes_on_drop() {
    use support::http_server::{HttpServer, Request, Response};
    let server = HttpServer::start(
        "selftest-http",
        Arc::new(|req: &Request| {
            let body = String::from_utf8_lossy(&req.body);
            let text = format!("{} {}?{} {body}", req.method, req.path(), req.query());
            Response::new(200, "text/plain", text)
        }),
    );
    let addr = format!("127.0.0.1:{}", server.port());
    let r = http_request(&addr, "PUT", "/a?b=c", &[], b"xyz").expect("the server answers");
    assert_eq!((r.status, r.text().as_str()), (200, "PUT /a?b=c xyz"));

    let connect = || {
        let conn = TcpStream::connect(&addr).expect("connect to the server");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set a read timeout");
        conn
    };
    // Too large a body or head is refused.
    let mut conn = connect();
    conn.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 16777217\r\n\r\n")
        .expect("write a request head");
    assert_eq!(read_response(&mut conn).0, 413);
    let mut conn = connect();
    let long = format!("GET / HTTP/1.1\r\nX-Long: {}", "y".repeat(70 * 1024));
    conn.write_all(long.as_bytes()).expect("write a long head");
    assert_eq!(read_response(&mut conn).0, 431);

    // Keep-alive, with a chunked request body; dropping the server closes
    // the open connection.
    let mut conn = connect();
    conn.write_all(
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .expect("write a chunked request");
    assert_eq!(read_response(&mut conn), (200, "POST /c? abc".to_string()));
    conn.write_all(b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write a second request");
    assert_eq!(read_response(&mut conn), (200, "GET /d? ".to_string()));
    drop(server);
    let mut rest = Vec::new();
    match conn.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(
        TcpStream::connect(&addr).is_err(),
        "the server still listens"
    );
}

#[test]
fn shared_registry_answers_v2() {
    let reg = shared_registry();
    assert_eq!(http_get(&reg.addr(), "/v2/"), Some((200, "{}".to_string())));
    assert_eq!(
        http_get_json(&reg.addr(), "/v2/"),
        Some(serde_json::json!({}))
    );
    assert!(
        std::ptr::eq(reg, shared_registry()),
        "shared_registry must be a singleton"
    );
}

#[test]
fn registry_push_pull_and_restart() {
    let mut reg = Registry::start();
    let repo = unique("selftest/app");
    let reference = push_image(&reg.addr(), &repo, "v1");
    assert_eq!(reference, format!("{}/{repo}:v1", reg.addr()));
    assert!(
        !image_exists(&reference),
        "push_image must remove the local tag"
    );
    let base_digest =
        registry_manifest_digest(&reg.addr(), &repo, "v1").expect("registry has the pushed tag");
    assert!(base_digest.starts_with("sha256:"), "{base_digest}");

    docker(&["pull", &reference]);
    let repo_digests = docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .RepoDigests}}",
        &reference,
    ]);
    assert!(
        repo_digests.contains(&base_digest),
        "{repo_digests} lacks {base_digest}"
    );
    docker(&["image", "rm", &reference]);

    // A variant gets a different digest under another tag.
    let variant = push_variant(&reg.addr(), &repo, "v2", "marker-one");
    assert!(
        !image_exists(&variant),
        "push_variant must remove the local image"
    );
    let variant_digest =
        registry_manifest_digest(&reg.addr(), &repo, "v2").expect("registry has the variant");
    assert_ne!(variant_digest, base_digest);
    docker(&["pull", &variant]);
    let content = docker(&["run", "--rm", &variant, "cat", "/marker"]);
    assert_eq!(content, "marker-one");
    docker(&["image", "rm", &variant]);

    reg.stop();
    assert!(!reg.is_running());
    let err =
        docker_ok(&["pull", &reference]).expect_err("pull must fail while the registry is down");
    assert!(
        err.contains(&reg.addr()) || err.contains("refused"),
        "unexpected error: {err}"
    );
    assert_eq!(http_get(&reg.addr(), "/v2/"), None);

    reg.start_again();
    assert_eq!(
        registry_manifest_digest(&reg.addr(), &repo, "v1"),
        Some(base_digest)
    );
    docker(&["pull", &reference]);
    docker(&["image", "rm", &reference]);
}

#[test]
fn kill_main_process_crashes_a_container() {
    let label = format!("berth.selftest={}", unique("crash"));
    let id = docker(&["run", "-d", "--label", &label, &base_image()]);
    assert_eq!(container_ids_with_label(&label), vec![id.clone()]);
    assert_eq!(inspect_field(&id, "{{.State.Status}}"), "running");

    kill_main_process(&id);
    wait_until(
        "container to exit after SIGKILL of its main process",
        LONG,
        || (inspect_field(&id, "{{.State.Status}}") == "exited").then_some(()),
    );
    assert_eq!(inspect_field(&id, "{{.State.ExitCode}}"), "137");

    remove_containers_with_label(&label);
    assert!(container_ids_with_label(&label).is_empty());
    remove_containers_with_label(&label); // idempotent
}

#[test]
fn private_dockerd_lifecycle() {
    let docker0_before = docker0_state();
    let mut engine = PrivateDockerd::start();
    let host = engine.host();
    let root = engine.root().to_path_buf();
    let cgroup = engine.cgroup_parent().to_string();
    assert!(host.len() < 108, "socket path too long: {host}");

    assert_eq!(docker_at(&host, &["info", "-f", "{{.Driver}}"]), "vfs");
    assert_eq!(
        docker_at(&host, &["ps", "-a", "-q"]),
        "",
        "a new engine has no containers"
    );
    let base = engine.load_base_image();
    assert!(docker_at_ok(&host, &["image", "inspect", &base]).is_ok());
    assert!(docker_at_ok(&host, &["image", "inspect", "nonexistent:nope"]).is_err());

    // The private engine can pull from a loopback registry (insecure by default).
    let reference = push_image(&shared_registry().addr(), &unique("selftest/pd"), "v1");
    docker_at(&host, &["pull", &reference]);

    let label = format!("berth.selftest={}", unique("pd"));
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "-d", "--label", &label, "--stop-timeout", "1"];
        args.extend_from_slice(extra);
        args.push(&base);
        docker_at(&host, &args)
    };
    let id = run(&[]);
    assert_eq!(inspect_field_at(&host, &id, "{{.State.Status}}"), "running");
    let ip = inspect_field_at(&host, &id, "{{.NetworkSettings.IPAddress}}");
    let prefix = engine.fixed_cidr().trim_end_matches("0/24");
    assert!(
        ip.starts_with(prefix),
        "container ip {ip} not in {}",
        engine.fixed_cidr()
    );
    assert_eq!(container_ids_with_label_at(&host, &label), vec![id.clone()]);
    assert!(
        container_ids_with_label(&label).is_empty(),
        "must not leak into the system engine"
    );

    // Graceful stop: the daemon stops the container; it is back afterwards.
    engine.stop();
    assert!(!engine.is_running());
    assert!(
        docker_at_ok(&host, &["info"]).is_err(),
        "engine must be down"
    );
    engine.start_again();
    assert_eq!(inspect_field_at(&host, &id, "{{.State.Status}}"), "exited");
    docker_at(&host, &["start", &id]);
    let pid: u32 = inspect_field_at(&host, &id, "{{.State.Pid}}")
        .parse()
        .expect("numeric pid");

    // Crash: containers survive the daemon; a restart reconciles them.
    engine.kill9();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container died with dockerd"
    );
    engine.start_again();
    wait_until(
        "container to be stopped after the engine restarted",
        LONG,
        || (inspect_field_at(&host, &id, "{{.State.Running}}") == "false").then_some(()),
    );

    // Crash a container's main process from the host.
    docker_at(&host, &["start", &id]);
    kill_main_process_at(&host, &id);
    wait_until("private container to exit", LONG, || {
        (inspect_field_at(&host, &id, "{{.State.Status}}") == "exited").then_some(())
    });

    // Leave one container running and the daemon crashed: Drop must still
    // clean up processes, mounts, cgroups and directories.
    run(&[]);
    engine.kill9();
    drop(engine);
    assert!(
        private_dockerd_fully_removed(&root, &cgroup),
        "private engine left something behind under {} / cgroup {cgroup}",
        root.display()
    );
    assert_eq!(
        docker0_state(),
        docker0_before,
        "the system engine's docker0 must be untouched"
    );
    // ... and the system engine can still start containers on its bridge.
    let out = docker(&[
        "run",
        "--rm",
        &base,
        "sh",
        "-c",
        "ip -4 addr show eth0 | grep -c inet",
    ]);
    assert_eq!(out, "1");
}

/// Address and MTU of the system engine's bridge.
/// docker0's address: a private engine that took the bridge would change
/// it. (Not its MTU: a bridge's MTU follows the ports attached to it, so
/// any container the system engine starts or stops meanwhile changes it.)
fn docker0_state() -> String {
    assert!(
        std::path::Path::new("/sys/class/net/docker0").exists(),
        "docker0 exists"
    );
    let addr = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", "docker0"])
        .output()
        .expect("run ip");
    let addr = String::from_utf8_lossy(&addr.stdout);
    addr.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

#[test]
fn one_shot_berth_runs_the_binary() {
    let out = berth(&["--help"], &[]);
    assert!(out.status.success(), "berth --help failed: {out:?}");
    assert!(!out.stdout.is_empty(), "berth --help printed nothing");
}

#[test]
fn agent_process_is_spawned_logged_and_signalled() {
    // `--help` exits by itself: exercises spawn, log capture and wait_exit.
    let mut agent = Agent::spawn(&["--help"], &[("BERTH_SELFTEST", "1")]);
    assert_eq!(agent.wait_exit(LONG), Some(0), "log:\n{}", agent.log());
    assert!(!agent.is_running());
    assert!(!agent.log().is_empty(), "stdout was not captured");
}

#[test]
fn agent_signals_and_exit_codes() {
    // A stand-in long-running process, so this does not depend on berth's CLI.
    let mut p = Agent::spawn_program(
        "/usr/bin/busybox",
        &["sh", "-c", "echo up; echo err >&2; exec sleep 60"],
        &[],
    );
    p.wait_log("up", LONG);
    p.wait_log("err", LONG);
    assert!(p.is_running());
    assert_eq!(p.wait_exit(Duration::from_millis(200)), None);
    p.signal(15);
    assert_eq!(p.wait_exit(LONG), Some(128 + 15));

    let mut q = Agent::spawn_program("/usr/bin/busybox", &["sh", "-c", "exit 3"], &[]);
    assert_eq!(q.wait_exit(LONG), Some(3));

    // Drop SIGKILLs a running process.
    let r = Agent::spawn_program("/usr/bin/busybox", &["sleep", "60"], &[]);
    let pid = r.pid();
    drop(r);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} survived Drop"
    );
}

// --- AWS side: live IMDS tags, moto's EC2 tags and CloudWatch alarms, and
// what the proxy counts, refuses and translates. Real moto, real SDKs.

const GROUP_TAG: &str = "aws:autoscaling:groupName";

#[test]
fn moto_tags_many_instances_at_once_and_reads_group_tags() {
    let moto = Moto::start();
    let group = unique("tagged");
    let ids = moto.create_group(&group, 3, &[("berth:version", "1")]);
    moto.tag_instances(&ids, &[("berth:nudge", "a"), ("berth:state", "ready")]);
    let all = moto.instances_tags(&ids);
    assert_eq!(all.len(), 3);
    for (id, tags) in &all {
        assert_eq!(
            tags.get("berth:nudge").map(String::as_str),
            Some("a"),
            "{id}"
        );
        assert_eq!(tags.get("berth:state").map(String::as_str), Some("ready"));
        assert_eq!(tags.get(GROUP_TAG), Some(&group), "moto tags members");
    }
    // DeleteTags by key removes whatever the value; other tags stay.
    moto.set_instance_tag(&ids[2], "berth:nudge", "b");
    moto.untag_instances(&ids[1..], &["berth:nudge", "absent"]);
    let all = moto.instances_tags(&ids);
    assert_eq!(all[&ids[0]]["berth:nudge"], "a");
    assert!(!all[&ids[1]].contains_key("berth:nudge"));
    assert!(!all[&ids[2]].contains_key("berth:nudge"));
    assert_eq!(all[&ids[2]]["berth:state"], "ready");
    assert_eq!(moto.instance_tags(&ids[1]), all[&ids[1]]);
    // An unknown id reads as no tags.
    assert!(moto.instances_tags(&["i-00000000000000000"])["i-00000000000000000"].is_empty());

    moto.set_group_tags(&group, &[("berth:rolled-back-from", "2")]);
    let group_tags = moto.group_tags(&group);
    assert_eq!(group_tags["berth:version"], "1");
    assert_eq!(group_tags["berth:rolled-back-from"], "2");
}

/// GETs `path` the way the agent does (the SDK's IMDSv2 client): the value,
/// or the HTTP status of an error answer.
async fn imds_get(client: &ImdsClient, path: &str) -> Result<String, u16> {
    match client.get(path).await {
        Ok(v) => Ok(v.as_ref().to_string()),
        Err(ImdsError::ErrorResponse(r)) => Err(r.response().status().as_u16()),
        Err(e) => panic!("IMDS GET {path}: {e}"),
    }
}

fn imds_client(imds: &Imds) -> ImdsClient {
    ImdsClient::builder()
        .endpoint(imds.url())
        .expect("a valid IMDS endpoint")
        .max_attempts(1)
        .build()
}

#[tokio::test]
async fn imds_serves_the_instances_tags_live_from_moto() {
    let moto = Moto::start();
    let group = unique("live");
    let ids = moto.create_group(&group, 2, &[]);
    let imds = Imds::start(ImdsConfig {
        instance_id: ids[0].clone(),
        tags: BTreeMap::from([(GROUP_TAG.to_string(), group.clone())]),
        tags_enabled: true,
        live_tags_from: Some(moto.url()),
        ..Default::default()
    });
    let client = imds_client(&imds);
    let keys = "/latest/meta-data/tags/instance";
    let nudge = "/latest/meta-data/tags/instance/berth:nudge";
    let group_path = format!("/latest/meta-data/tags/instance/{GROUP_TAG}");

    // moto's own tags of the instance, the group's name among them.
    let listed = imds_get(&client, keys).await.expect("the key list");
    let moto_keys: Vec<String> = moto.instance_tags(&ids[0]).into_keys().collect();
    assert_eq!(listed.split('\n').collect::<Vec<_>>(), moto_keys);
    assert!(moto_keys.iter().any(|k| k == GROUP_TAG), "{moto_keys:?}");
    assert_eq!(imds_get(&client, &group_path).await, Ok(group.clone()));
    assert_eq!(imds_get(&client, nudge).await, Err(404));

    // CreateTags on moto shows at the next GET, with no restart; a tag on
    // another instance does not.
    moto.tag_instances(&ids, &[("berth:nudge", "1")]);
    assert_eq!(imds_get(&client, nudge).await, Ok("1".to_string()));
    moto.tag_instances(&ids[1..], &[("berth:nudge", "2"), ("only", "theirs")]);
    assert_eq!(imds_get(&client, nudge).await, Ok("1".to_string()));
    assert_eq!(
        imds_get(&client, "/latest/meta-data/tags/instance/only").await,
        Err(404)
    );
    moto.set_instance_tag(&ids[0], "berth:nudge", "3");
    assert_eq!(imds_get(&client, nudge).await, Ok("3".to_string()));
    let listed = imds_get(&client, keys).await.expect("the key list");
    assert!(listed.split('\n').any(|k| k == "berth:nudge"), "{listed}");

    // DeleteTags: gone from the value and from the list.
    moto.untag_instances(&ids[..1], &["berth:nudge"]);
    assert_eq!(imds_get(&client, nudge).await, Err(404));
    let listed = imds_get(&client, keys).await.expect("the key list");
    assert!(!listed.split('\n').any(|k| k == "berth:nudge"), "{listed}");

    // The group's name is served even when moto does not hold it.
    moto.untag_instances(&ids[..1], &[GROUP_TAG]);
    assert!(!moto.instance_tags(&ids[0]).contains_key(GROUP_TAG));
    assert_eq!(imds_get(&client, &group_path).await, Ok(group.clone()));

    // Still IMDSv2 only: no token, no tags.
    let addr = format!("127.0.0.1:{}", imds.port());
    let r = http_request(&addr, "GET", nudge, &[], b"").expect("IMDS answers");
    assert_eq!(r.status, 401);
    let r = http_request(
        &addr,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        b"",
    )
    .expect("IMDS answers");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-aws-ec2-metadata-token-ttl-seconds"), Some("60"));
    let token = r.text();
    let r = http_request(
        &addr,
        "GET",
        &group_path,
        &[("X-aws-ec2-metadata-token", &token)],
        b"",
    )
    .expect("IMDS answers");
    assert_eq!((r.status, r.text()), (200, group.clone()));

    // InstanceMetadataTags=disabled: every tag path is 404, whatever moto holds.
    moto.set_instance_tag(&ids[0], "berth:nudge", "4");
    imds.set_tags_enabled(false);
    assert_eq!(imds_get(&client, keys).await, Err(404));
    assert_eq!(imds_get(&client, nudge).await, Err(404));
    assert_eq!(imds_get(&client, &group_path).await, Err(404));
    imds.set_tags_enabled(true);
    assert_eq!(imds_get(&client, nudge).await, Ok("4".to_string()));
    assert_eq!(imds.live_tag_failures(), 0);

    // moto gone: the last tags read are served, and the failure is counted.
    drop(moto);
    assert_eq!(imds_get(&client, nudge).await, Ok("4".to_string()));
    assert_eq!(imds.live_tag_failures(), 1);
    assert!(
        imds.last_live_tag_failure()
            .is_some_and(|e| e.contains("DescribeTags")),
        "{:?}",
        imds.last_live_tag_failure()
    );
}

fn states(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn moto_cloudwatch_alarms_states_and_describe_filters() {
    let moto = Moto::start();
    for name in ["app-a", "app-b", "other-c"] {
        moto.put_metric_alarm(name);
    }
    // moto starts alarms in OK (AWS: INSUFFICIENT_DATA) and never evaluates them.
    assert_eq!(
        moto.alarm_states(),
        states(&[("app-a", "OK"), ("app-b", "OK"), ("other-c", "OK")])
    );
    moto.set_alarm_state("app-a", "ALARM");
    moto.set_alarm_state("other-c", "ALARM");
    let describe = |input: serde_json::Value| {
        let (status, body) = moto.cloudwatch("DescribeAlarms", input.clone());
        assert_eq!(status, 200, "DescribeAlarms {input}: {body}");
        alarm_states_of(&body)
    };
    assert_eq!(
        describe(serde_json::json!({"AlarmNames": ["app-a", "app-b", "nope"]})),
        states(&[("app-a", "ALARM"), ("app-b", "OK")])
    );
    assert_eq!(
        describe(serde_json::json!({"AlarmNamePrefix": "app-"})),
        states(&[("app-a", "ALARM"), ("app-b", "OK")])
    );
    assert_eq!(
        describe(serde_json::json!({"StateValue": "ALARM"})),
        states(&[("app-a", "ALARM"), ("other-c", "ALARM")])
    );
    // moto's quirk: next to names or a prefix, StateValue is ignored
    // (AWS would answer app-a alone). The proxy corrects it.
    assert_eq!(
        describe(serde_json::json!({"AlarmNames": ["app-a", "app-b"], "StateValue": "ALARM"})),
        states(&[("app-a", "ALARM"), ("app-b", "OK")])
    );
    assert_eq!(
        describe(serde_json::json!({"AlarmNamePrefix": "app-", "StateValue": "OK"})),
        states(&[("app-a", "ALARM"), ("app-b", "OK")])
    );
    moto.set_alarm_state("app-a", "OK");
    assert_eq!(
        describe(serde_json::json!({"StateValue": "ALARM"})),
        states(&[("other-c", "ALARM")])
    );

    // Errors, and what moto lacks.
    let (status, body) = moto.cloudwatch(
        "SetAlarmState",
        serde_json::json!({"AlarmName": "nope", "StateValue": "ALARM", "StateReason": "t"}),
    );
    assert_eq!(status, 404, "{body}");
    assert!(
        body["__type"]
            .as_str()
            .is_some_and(|t| t.ends_with("#ResourceNotFound"))
    );
    let (status, _) = moto.cloudwatch(
        "PutCompositeAlarm",
        serde_json::json!({"AlarmName": "both", "AlarmRule": "ALARM(app-a)"}),
    );
    assert_eq!(status, 500, "moto grew PutCompositeAlarm");
}

#[test]
fn cbor_codec_reads_rfc_8949_examples_and_writes_timestamps() {
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    };
    for (bytes, json) in [
        ("00", serde_json::json!(0)),
        ("1bffffffffffffffff", serde_json::json!(u64::MAX)),
        ("3903e7", serde_json::json!(-1000)),
        ("f93c00", serde_json::json!(1.0)),
        ("f9c400", serde_json::json!(-4.0)),
        ("fa47c35000", serde_json::json!(100000.0)),
        ("fb3ff199999999999a", serde_json::json!(1.1)),
        ("f97c00", serde_json::json!("Infinity")),
        ("f4", serde_json::json!(false)),
        ("f6", serde_json::json!(null)),
        ("c11a514b67b0", serde_json::json!(1363896240)),
        ("4401020304", serde_json::json!("AQIDBA==")),
        ("5f42010243030405ff", serde_json::json!("AQIDBAU=")),
        ("7f657374726561646d696e67ff", serde_json::json!("streaming")),
        ("62c3bc", serde_json::json!("ü")),
        ("83019f0203ff820405", serde_json::json!([1, [2, 3], [4, 5]])),
        (
            "bf61610161629f0203ffff",
            serde_json::json!({"a": 1, "b": [2, 3]}),
        ),
        ("a0", serde_json::json!({})),
        ("", serde_json::json!({})),
    ] {
        assert_eq!(cbor::to_json(&hex(bytes)), Ok(json), "{bytes}");
    }
    for bad in ["18", "a1016161", "ff", "8201", "0000", "c1"] {
        assert!(cbor::to_json(&hex(bad)).is_err(), "{bad} is not one item");
    }

    let doc = serde_json::json!({
        "n": -2, "u": 500, "f": 5.0, "s": "x", "b": true, "z": null,
        "StateUpdatedTimestamp": 1700000000.5,
        "Timestamps": [1, 2],
        "Nested": [{"EndTime": 3}],
    });
    let is_ts =
        |k: &str| k.ends_with("Timestamp") || k.ends_with("Timestamps") || k.ends_with("Time");
    let bytes = cbor::from_json(&doc, &is_ts);
    // Timestamps are tag 1 over a float64, as Smithy's decoder requires.
    let tag_1_f64 = [0xc1, 0xfb];
    let windows = bytes.windows(2).filter(|w| *w == tag_1_f64).count();
    assert_eq!(windows, 4, "{bytes:02x?}");
    // Reading it back gives the same JSON (timestamps as their seconds).
    let back = cbor::to_json(&bytes).expect("our own CBOR parses");
    assert_eq!(back["StateUpdatedTimestamp"], 1700000000.5);
    assert_eq!(back["Timestamps"], serde_json::json!([1.0, 2.0]));
    assert_eq!(back["Nested"][0]["EndTime"], 3.0);
    assert_eq!(back["n"], -2);
    assert_eq!(back["u"], 500);
    assert_eq!(back["f"], 5.0);
    assert!(back["f"].is_f64(), "a float stays a float");
    assert_eq!(
        (back["s"].clone(), back["b"].clone()),
        (serde_json::json!("x"), serde_json::json!(true))
    );
    assert!(back["z"].is_null());
}

fn cloudwatch_client(endpoint_url: &str) -> aws_sdk_cloudwatch::Client {
    aws_sdk_cloudwatch::Client::new(&sdk_config_for(endpoint_url))
}

async fn put_alarm(cw: &aws_sdk_cloudwatch::Client, name: &str) {
    cw.put_metric_alarm()
        .alarm_name(name)
        .namespace("berth-test")
        .metric_name("Errors")
        .statistic(Statistic::Average)
        .period(60)
        .evaluation_periods(1)
        .threshold(2.5)
        .comparison_operator(ComparisonOperator::GreaterThanThreshold)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PutMetricAlarm {name}: {}",
                aws_sdk_cloudwatch::error::DisplayErrorContext(&e)
            )
        });
}

/// `AlarmName` → state of the metric alarms in a `DescribeAlarms` answer.
fn sdk_states(
    out: &aws_sdk_cloudwatch::operation::describe_alarms::DescribeAlarmsOutput,
) -> BTreeMap<String, String> {
    out.metric_alarms()
        .iter()
        .map(|a| {
            (
                a.alarm_name().unwrap_or_default().to_string(),
                a.state_value()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn proxy_serves_the_cloudwatch_sdk_from_moto_and_counts_it() {
    let moto = Moto::start();
    let proxy = LifecycleProxy::start(&moto.url());
    assert_eq!(
        proxy.env_for(&[Service::CloudWatch]),
        vec![("AWS_ENDPOINT_URL_CLOUDWATCH".to_string(), proxy.url())]
    );

    // What the SDK sends, moto cannot read.
    let direct = cloudwatch_client(&moto.url())
        .describe_alarms()
        .send()
        .await;
    assert!(direct.is_err(), "moto grew the CBOR protocol: {direct:?}");

    let cw = cloudwatch_client(&proxy.url());
    for name in ["app-a", "app-b", "other-c"] {
        put_alarm(&cw, name).await;
    }
    for (name, state) in [("app-a", StateValue::Alarm), ("other-c", StateValue::Alarm)] {
        cw.set_alarm_state()
            .alarm_name(name)
            .state_value(state)
            .state_reason("test")
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "SetAlarmState: {}",
                    aws_sdk_cloudwatch::error::DisplayErrorContext(&e)
                )
            });
    }
    // The proxy's SDK writes reached moto.
    assert_eq!(
        moto.alarm_states(),
        states(&[("app-a", "ALARM"), ("app-b", "OK"), ("other-c", "ALARM")])
    );

    let describe = |names: &[&str], prefix: Option<&str>, state: Option<StateValue>| {
        let req = cw
            .describe_alarms()
            .set_alarm_names(
                (!names.is_empty()).then(|| names.iter().map(|n| n.to_string()).collect()),
            )
            .set_alarm_name_prefix(prefix.map(str::to_string))
            .set_state_value(state);
        async move {
            req.send().await.unwrap_or_else(|e| {
                panic!(
                    "DescribeAlarms: {}",
                    aws_sdk_cloudwatch::error::DisplayErrorContext(&e)
                )
            })
        }
    };
    let all = describe(&[], None, None).await;
    assert_eq!(
        sdk_states(&all),
        states(&[("app-a", "ALARM"), ("app-b", "OK"), ("other-c", "ALARM")])
    );
    // Every field of the answer survives the translation, timestamps too.
    let a = &all.metric_alarms()[0];
    assert_eq!(a.threshold(), Some(2.5));
    assert_eq!(a.period(), Some(60));
    assert_eq!(
        a.comparison_operator(),
        Some(&ComparisonOperator::GreaterThanThreshold)
    );
    assert_eq!(
        a.alarm_arn(),
        Some("arn:aws:cloudwatch:us-east-1:123456789012:alarm:app-a")
    );
    let updated = a
        .state_updated_timestamp()
        .expect("a state timestamp")
        .secs();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time after 1970")
        .as_secs() as i64;
    assert!((now - updated).abs() < 300, "{updated} vs now {now}");

    assert_eq!(
        sdk_states(&describe(&["app-a", "app-b"], None, None).await),
        states(&[("app-a", "ALARM"), ("app-b", "OK")])
    );
    assert_eq!(
        sdk_states(&describe(&[], Some("app-"), None).await),
        states(&[("app-a", "ALARM"), ("app-b", "OK")])
    );
    assert_eq!(
        sdk_states(&describe(&[], None, Some(StateValue::Alarm)).await),
        states(&[("app-a", "ALARM"), ("other-c", "ALARM")])
    );
    // Names (or a prefix) with StateValue: as AWS answers, not as moto does.
    assert_eq!(
        sdk_states(&describe(&["app-a", "app-b"], None, Some(StateValue::Alarm)).await),
        states(&[("app-a", "ALARM")])
    );
    assert_eq!(
        sdk_states(&describe(&[], Some("app-"), Some(StateValue::Ok)).await),
        states(&[("app-b", "OK")])
    );
    assert_eq!(
        sdk_states(&describe(&["nope"], None, None).await),
        BTreeMap::new()
    );

    // moto's errors reach the SDK as its typed errors.
    let err = cw
        .set_alarm_state()
        .alarm_name("nope")
        .state_value(StateValue::Alarm)
        .state_reason("test")
        .send()
        .await
        .expect_err("no such alarm");
    assert_eq!(
        err.code(),
        Some("ResourceNotFound"),
        "{}",
        aws_sdk_cloudwatch::error::DisplayErrorContext(&err)
    );
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_resource_not_found())
    );

    // Counted per action, IAM-style or plain.
    assert_eq!(proxy.count("DescribeAlarms"), 7);
    assert_eq!(proxy.count("cloudwatch:DescribeAlarms"), 7);
    assert_eq!(proxy.count("ec2:DescribeAlarms"), 0);
    assert_eq!(proxy.count("PutMetricAlarm"), 3);
    assert_eq!(proxy.count("SetAlarmState"), 3);
    assert_eq!(proxy.counts()["cloudwatch:SetAlarmState"], 3);

    // Faults in the CBOR protocol, with CloudWatch's codes.
    proxy.set_fault(Fault::Deny("cloudwatch:DescribeAlarms"));
    let err = describe_err(&cw).await;
    assert_eq!(
        err.code(),
        Some("AccessDenied"),
        "{}",
        aws_sdk_cloudwatch::error::DisplayErrorContext(&err)
    );
    assert!(
        err.message()
            .is_some_and(|m| m.contains("cloudwatch:DescribeAlarms"))
    );
    assert_eq!(proxy.count("DescribeAlarms"), 8, "a denial is not retried");
    put_alarm(&cw, "app-d").await;
    proxy.set_fault(Fault::Throttle);
    let err = describe_err(&cw).await;
    assert_eq!(
        err.code(),
        Some("Throttling"),
        "{}",
        aws_sdk_cloudwatch::error::DisplayErrorContext(&err)
    );
    assert_eq!(
        proxy.count("DescribeAlarms"),
        10,
        "throttling is retried once"
    );
    proxy.set_fault(Fault::Unavailable);
    let err = describe_err(&cw).await;
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert_eq!(err.code(), Some("ServiceUnavailable"));
    proxy.set_fault(Fault::None);
    assert_eq!(sdk_states(&describe(&["app-d"], None, None).await).len(), 1);
}

async fn describe_err(
    cw: &aws_sdk_cloudwatch::Client,
) -> aws_sdk_cloudwatch::error::SdkError<
    aws_sdk_cloudwatch::operation::describe_alarms::DescribeAlarmsError,
> {
    cw.describe_alarms()
        .alarm_names("app-a")
        .state_value(StateValue::Alarm)
        .send()
        .await
        .expect_err("a fault is set")
}

#[tokio::test]
async fn proxy_counts_and_refuses_ec2_and_auto_scaling_actions() {
    let moto = Moto::start();
    let group = unique("counted");
    let ids = moto.create_group(&group, 2, &[]);
    let proxy = LifecycleProxy::start(&moto.url());
    let env = proxy.env_for(&Service::ALL);
    let vars: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        vars,
        [
            "AWS_ENDPOINT_URL_AUTO_SCALING",
            "AWS_ENDPOINT_URL_EC2",
            "AWS_ENDPOINT_URL_CLOUDWATCH"
        ]
    );
    assert_eq!(proxy.env(), proxy.env_for(&[Service::AutoScaling]));
    let cfg = sdk_config_for(&proxy.url());
    let ec2 = aws_sdk_ec2::Client::new(&cfg);
    let asg = aws_sdk_autoscaling::Client::new(&cfg);
    let nudge = aws_sdk_ec2::types::Tag::builder()
        .key("berth:nudge")
        .value("1")
        .build();
    let create_tags = || {
        ec2.create_tags()
            .set_resources(Some(ids.clone()))
            .tags(nudge.clone())
            .send()
    };
    let describe_instances = || ec2.describe_instances().instance_ids(&ids[0]).send();
    let group_tag = |key: &str| {
        aws_sdk_autoscaling::types::Tag::builder()
            .key(key)
            .value("v")
            .propagate_at_launch(false)
            .resource_id(&group)
            .resource_type("auto-scaling-group")
            .build()
    };

    create_tags().await.expect("CreateTags via the proxy");
    let out = describe_instances()
        .await
        .expect("DescribeInstances via the proxy");
    assert_eq!(
        out.reservations()[0].instances()[0].instance_id(),
        Some(ids[0].as_str())
    );
    asg.describe_auto_scaling_groups()
        .auto_scaling_group_names(&group)
        .send()
        .await
        .expect("DescribeAutoScalingGroups via the proxy");
    asg.create_or_update_tags()
        .tags(group_tag("berth:version"))
        .send()
        .await
        .expect("CreateOrUpdateTags via the proxy");
    ec2.delete_tags()
        .resources(&ids[1])
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("berth:nudge")
                .build(),
        )
        .send()
        .await
        .expect("EC2 DeleteTags via the proxy");
    // Forwarded for real.
    assert_eq!(moto.instance_tags(&ids[0])["berth:nudge"], "1");
    assert!(!moto.instance_tags(&ids[1]).contains_key("berth:nudge"));
    assert_eq!(moto.group_tags(&group)["berth:version"], "v");

    assert_eq!(proxy.count("CreateTags"), 1);
    assert_eq!(proxy.count("ec2:CreateTags"), 1);
    assert_eq!(proxy.count("DescribeInstances"), 1);
    assert_eq!(proxy.count("autoscaling:DescribeAutoScalingGroups"), 1);
    assert_eq!(proxy.count("CreateOrUpdateTags"), 1);
    assert_eq!(proxy.count("ec2:DeleteTags"), 1);
    assert_eq!(proxy.count("autoscaling:DeleteTags"), 0);
    assert_eq!(proxy.count("ec2:CreateOrUpdateTags"), 0);

    // Deny one action: EC2's code for it, one attempt, the rest unaffected.
    proxy.set_fault(Fault::Deny("ec2:CreateTags"));
    let err = create_tags().await.expect_err("denied");
    assert_eq!(
        err.code(),
        Some("UnauthorizedOperation"),
        "{}",
        aws_sdk_ec2::error::DisplayErrorContext(&err)
    );
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));
    assert!(err.message().is_some_and(|m| m.contains("ec2:CreateTags")));
    assert_eq!(proxy.count("CreateTags"), 2);
    describe_instances().await.expect("another action passes");
    asg.create_or_update_tags()
        .tags(group_tag("berth:other"))
        .send()
        .await
        .expect("another service passes");
    proxy.set_fault(Fault::Deny("CreateOrUpdateTags"));
    let err = asg
        .create_or_update_tags()
        .tags(group_tag("berth:denied"))
        .send()
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Some("AccessDenied"));
    assert!(!moto.group_tags(&group).contains_key("berth:denied"));
    create_tags().await.expect("no longer denied");

    // Throttling and outages, in each service's terms, retried once.
    proxy.set_fault(Fault::Throttle);
    let err = describe_instances().await.expect_err("throttled");
    assert_eq!(
        err.code(),
        Some("RequestLimitExceeded"),
        "{}",
        aws_sdk_ec2::error::DisplayErrorContext(&err)
    );
    assert_eq!(proxy.count("DescribeInstances"), 4);
    let err = asg
        .describe_auto_scaling_groups()
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(err.code(), Some("Throttling"));
    assert_eq!(proxy.count("DescribeAutoScalingGroups"), 3);
    proxy.set_fault(Fault::Unavailable);
    let err = describe_instances().await.expect_err("unavailable");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert_eq!(err.code(), Some("Unavailable"));
    proxy.set_fault(Fault::None);
    describe_instances().await.expect("recovered");
    assert_eq!(proxy.counts()["ec2:DescribeInstances"], 7);
}
