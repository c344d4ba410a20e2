//! The status API against a flood of idle loopback connections, with the
//! agent's default settings and the default soft open-files limit.
//!
//! Any local user can connect to the status API. However many connections
//! they open and hold, the agent must keep its descriptors for its real work
//! (a killed container is restarted) and `/healthz` must answer again while
//! they are still held. Conditions are waited on with generous deadlines;
//! nothing asserts on timing.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::fixture::{Fx, comp};
use support::*;

/// The default soft limit on open files (systemd's `DefaultLimitNOFILE`
/// soft value, and most shells'): the agent under test runs with it.
const DEFAULT_SOFT_NOFILE: u32 = 1024;

/// Idle connections the test holds: more than the agent's whole descriptor
/// budget under [`DEFAULT_SOFT_NOFILE`].
const IDLE_CONNECTIONS: usize = 1100;

/// How long the agent has to restart the container and answer `/healthz`
/// while the connections are held.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);

/// Bound on opening all the connections (each connect has its own timeout).
const CONNECT_PHASE_DEADLINE: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Lowers the soft open-files limit of process `pid` to `soft`, keeping its
/// hard limit, and checks that the process now has it.
fn set_soft_nofile(pid: u32, soft: u32) {
    let out = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .output()
        .expect("cannot run prlimit (util-linux)");
    assert!(
        out.status.success(),
        "prlimit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("limits list open files");
    assert_eq!(
        line.split_whitespace().nth(3),
        Some(soft.to_string().as_str()),
        "soft open-files limit not applied: {line}"
    );
}

/// Opens `n` TCP connections to `addr` and returns them, never sending a byte.
fn open_idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let start = Instant::now();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        assert!(
            start.elapsed() < CONNECT_PHASE_DEADLINE,
            "opened only {i} of {n} connections in {CONNECT_PHASE_DEADLINE:?}"
        );
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => held.push(s),
            Err(e) => panic!(
                "connection {i} of {n} to {addr} failed: {e} \
                 (the test process needs more than {n} open files: raise `ulimit -n`)"
            ),
        }
    }
    held
}

#[test]
fn idle_connections_do_not_stall_the_agent() {
    base_image();
    let fx = Fx::new(
        r#"
[[clusters.web.containers]]
name = "web"
image = "berth-test/busybox:{version}"
command = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#,
        "",
        "base",
    );
    let agent = fx.agent(&[]);
    // Lowered right after spawning: the agent has only a few low-numbered
    // descriptors yet, so every later one counts against the limit.
    set_soft_nofile(agent.pid(), DEFAULT_SOFT_NOFILE);
    let s = fx.wait_ready();
    let id = comp(&s, "web")["container_id"]
        .as_str()
        .expect("a running component has a container id")
        .to_string();
    let started = inspect_field(&id, "{{.State.StartedAt}}");

    let addr: SocketAddr = fx.status_addr.parse().expect("status address");
    let held = open_idle_connections(addr, IDLE_CONNECTIONS);
    kill_main_process(&id);

    // Watch both outcomes at once (the engine for the restart, so that a
    // stalled status API cannot hide it), to report both when either fails.
    let start = Instant::now();
    let (mut restarted, mut healthz) = (false, None);
    while !(restarted && healthz == Some(200)) && start.elapsed() < RECOVERY_DEADLINE {
        if !restarted {
            restarted = inspect_field(&id, "{{.State.Running}}") == "true"
                && inspect_field(&id, "{{.State.StartedAt}}") != started;
        }
        if healthz != Some(200) {
            healthz = http_get(&fx.status_addr, "/healthz").map(|(code, _)| code);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        restarted && healthz == Some(200),
        "with {} idle connections held for {:.0?}: container restarted: {restarted}; \
         /healthz answered: {healthz:?}; agent log tail:\n{}",
        held.len(),
        start.elapsed(),
        tail(&agent.log(), 20)
    );
    // The agent's own account agrees, still while the connections are held.
    let s = fx.wait_status("the restart in /status", |s| {
        comp(s, "web")["restarts"] == 1 && comp(s, "web")["state"] == "running"
    });
    assert_eq!(comp(&s, "web")["container_id"], id.as_str(), "{s}");
    assert!(
        agent.log().contains("status API at its connection limit"),
        "refused connections are logged"
    );
    drop(held);
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn a_status_addr_off_loopback_is_refused_by_default() {
    let fx = Fx::new(
        r#"
[[clusters.web.containers]]
name = "web"
image = "berth-test/busybox:{version}"
"#,
        "",
        "base",
    );
    // Not 0.0.0.0: should the check ever be missing, the agent must not
    // listen beyond loopback. 192.0.2.1 (a documentation address, RFC 5737)
    // is not on this machine, so it cannot be bound either.
    let remote = format!("192.0.2.1:{}", free_port());
    let run = fx.args();
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let flag = [run.as_slice(), &["--status-addr", &remote]].concat();
    for (how, args, envs) in [
        ("--status-addr", flag, vec![]),
        (
            "BERTH_STATUS_ADDR",
            run.clone(),
            vec![("BERTH_STATUS_ADDR", remote.as_str())],
        ),
    ] {
        let out = berth(&args, &envs);
        let log = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(exit_code(out.status), 78, "{how}: {log}");
        assert!(log.contains("agent.status_allow_remote"), "{how}: {log}");
    }
    assert!(
        container_ids_with_label(&fx.label()).is_empty(),
        "nothing started"
    );

    // In the manifest, `berth validate` (the unit's ExecStartPre) refuses it.
    let manifest = fx.manifest();
    let text = std::fs::read_to_string(&manifest).expect("read manifest");
    std::fs::write(&manifest, text.replace(&fx.status_addr, &remote)).expect("write manifest");
    let path = manifest.display().to_string();
    let out = berth(&["validate", "--config", &path], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(out.status), 78, "{err}");
    assert!(err.contains("agent.status_addr"), "{err}");
    assert!(err.contains("agent.status_allow_remote"), "{err}");
}
