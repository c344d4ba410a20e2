//! Self-test of the integration-test support code in `tests/support/`:
//! real registries, real engines, real processes, real outcomes.

mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

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
