//! A private Docker engine (`dockerd`) for fault tests: it can be stopped,
//! restarted and SIGKILLed without touching the machine's real engine.
//!
//! Findings in this sandbox (Docker Engine 20.10.24, cgroup v1 + cgroupfs,
//! firecracker VM, root):
//! * `--config-file` pointing at an empty `{}` file is REQUIRED: the system
//!   `/etc/docker/daemon.json` sets `data-root` and `storage-driver`, and
//!   dockerd refuses to start when a directive is given both as a flag and in
//!   its config file.
//! * `--bridge=none` must NOT be used: a dockerd started with it deletes the
//!   `docker0` link (`removeDefaultBridgeInterface`), and since the private
//!   engine shares the host network namespace that is the SYSTEM engine's
//!   bridge, which breaks every container start there ("could not find
//!   bridge docker0"). Instead the private engine shares `docker0` but
//!   allocates its containers' addresses from its own `--fixed-cidr`
//!   (a /24 in the upper half of docker0's /16, never handed out by the
//!   system engine in practice), with `--mtu` equal to docker0's MTU so it
//!   does not change the bridge. With `--iptables=false --ip-masq=false` it
//!   adds no firewall rules, and it never deletes the default bridge.
//! * No other extra flags are needed (no cgroup or userland-proxy trouble).
//!   The private dockerd starts its own managed containerd under its
//!   exec-root (socket `EXEC/containerd/containerd.sock`), so nothing is
//!   shared with the system engine. Startup takes ~0.2 s.
//! * `--cgroup-parent /berth-test-…` puts every container of this engine
//!   into its own cgroup subtree; cleanup uses it to find and kill container
//!   processes that outlived a SIGKILLed daemon.
//! * Registries on 127.0.0.0/8 are insecure (plain HTTP) by default here
//!   too, so the private engine can pull from a test `Registry`.
//! * A graceful stop (SIGTERM) waits for each running container's stop
//!   timeout: busybox `sleep` as PID 1 ignores SIGTERM, so a stop takes
//!   ~11 s with such a container unless it was created with a short
//!   `--stop-timeout`. `--shutdown-timeout` does not shorten this.
//! * After `kill9()`, the daemon's containerd dies with it, but the
//!   containerd-shims and container processes keep running, and the
//!   data-root bind mount stays. A restart then takes ~10 s when containers
//!   were running (without live-restore the engine kills them during restore,
//!   they show `Exited (137)` afterwards).
//! * A stale pidfile whose pid still exists (e.g. an unreaped zombie) makes
//!   dockerd refuse to start; `start_again` deletes the pidfile first.
//! * dockerd bind-mounts its data-root onto itself; it only unmounts it on a
//!   graceful stop of the daemon that created the mount. Cleanup unmounts
//!   everything under the temp dir before deleting it.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::docker::{base_image, copy_image_to, docker_at_ok};
use super::util::{
    ExitGuard, keep_artifacts, kill_child, send_signal, tail_file, unique, wait_child,
};

const READY_DEADLINE: Duration = Duration::from_secs(90);
const STOP_DEADLINE: Duration = Duration::from_secs(90);

/// A private `dockerd` with its own socket, data-root, exec-root, pidfile,
/// log file and cgroup parent, all inside a short temp dir under `/tmp`
/// (unix socket paths are limited to 108 bytes). Storage driver `vfs`, no
/// iptables; its containers sit on the shared `docker0` with their own
/// address range (see the module docs). Dropping it removes its containers,
/// stops it, kills leftovers, unmounts and deletes its directories.
pub struct PrivateDockerd {
    dir: Option<TempDir>,
    root: PathBuf,
    cgroup_parent: String,
    fixed_cidr: String,
    mtu: u32,
    child: Option<Child>,
    guard: Option<ExitGuard>,
}

impl PrivateDockerd {
    /// Starts a new private engine and waits until it answers `/_ping`.
    /// Panics with the daemon log if it does not come up within 90 s.
    pub fn start() -> PrivateDockerd {
        let dir = tempfile::Builder::new()
            .prefix("bpd")
            .tempdir_in("/tmp")
            .expect("PrivateDockerd::start: cannot create a temp dir under /tmp");
        let root = dir.path().to_path_buf();
        std::fs::write(root.join("daemon.json"), "{}\n")
            .expect("PrivateDockerd::start: cannot write daemon.json");
        let (fixed_cidr, mtu) = docker0_share();
        let mut d = PrivateDockerd {
            dir: Some(dir),
            root,
            cgroup_parent: format!("berth-test-{}", unique("pd")),
            fixed_cidr,
            mtu,
            child: None,
            guard: None,
        };
        d.launch();
        d
    }

    /// `unix:///tmp/bpd…/docker.sock`: use as `DOCKER_HOST` (e.g. for the
    /// agent under test) or with [`super::docker_at`].
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The temp dir holding everything of this engine (`docker.sock`,
    /// `data/`, `exec/`, `docker.pid`, `dockerd.log`, `daemon.json`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Name of the cgroup (directly under each cgroup hierarchy root) that
    /// holds this engine's containers.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The /24 (inside docker0's subnet) this engine's containers get their
    /// addresses from, e.g. `172.17.201.0/24`.
    pub fn fixed_cidr(&self) -> &str {
        &self.fixed_cidr
    }

    /// Pid of the running dockerd process, if any.
    pub fn pid(&mut self) -> Option<u32> {
        if self.is_running() {
            self.child.as_ref().map(Child::id)
        } else {
            None
        }
    }

    /// Whether the dockerd process is running (it may not be ready yet).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The whole daemon log so far (all runs of this engine).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// Graceful stop: SIGTERM, then wait (up to 90 s) for dockerd to exit.
    /// The daemon stops its running containers first (see the module docs
    /// for timings). Panics with the log tail if it does not exit in time.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            if let Err(e) = send_signal(child.id(), 15) {
                eprintln!("warning: PrivateDockerd::stop: {e}");
            }
            if !wait_child(&mut child, STOP_DEADLINE) {
                kill_child(&mut child);
                self.disarm();
                panic!(
                    "PrivateDockerd::stop: dockerd did not exit within {STOP_DEADLINE:?} of \
                     SIGTERM (SIGKILLed it); log tail:\n{}",
                    tail_file(&self.log_path(), 30)
                );
            }
        }
        let _ = child.wait();
        self.disarm();
    }

    /// SIGKILLs dockerd (a crash). Its containerd dies with it; shims and
    /// container processes keep running until the daemon is started again.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
        self.disarm();
        self.clear_stale_containerd();
    }

    /// Starts dockerd again with the same directories (so containers and
    /// images are still there) and waits until it answers `/_ping`.
    /// Panics if it is still running or does not come up.
    pub fn start_again(&mut self) {
        assert!(
            !self.is_running(),
            "PrivateDockerd::start_again: dockerd is still running"
        );
        self.kill9(); // reaps a daemon that died by itself, disarms its guard
        // A stale pidfile whose pid got reused would make dockerd refuse to start.
        let _ = std::fs::remove_file(self.root.join("docker.pid"));
        self.launch();
    }

    /// Makes sure the managed containerd of a daemon that is gone is gone
    /// too, and removes its pidfile. Otherwise a restarted dockerd that
    /// finds the old pid still "alive" (dying, or an unreaped zombie: this
    /// sandbox's init does not always reap orphans) assumes containerd is
    /// running, cannot connect, and fails with "timeout waiting for
    /// containerd to start".
    fn clear_stale_containerd(&self) {
        let pidfile = self.root.join("exec/containerd/containerd.pid");
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            let marker = format!("{}/", self.root.display());
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()))
                .unwrap_or(false);
            if ours {
                let _ = send_signal(pid, 9);
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(10) && process_alive(pid) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = std::fs::remove_file(&pidfile);
    }

    /// Copies `reference` from the default engine into this engine
    /// (`docker save | docker load`). Panics on failure.
    pub fn load_image(&self, reference: &str) {
        copy_image_to(&self.host(), reference);
    }

    /// Makes sure [`base_image`] exists in the default engine, loads it into
    /// this engine and returns its reference.
    pub fn load_base_image(&self) -> String {
        let base = base_image();
        self.load_image(&base);
        base
    }

    fn socket(&self) -> PathBuf {
        self.root.join("docker.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("dockerd.log")
    }

    fn disarm(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.disarm();
        }
    }

    fn launch(&mut self) {
        let r = |name: &str| self.root.join(name).to_string_lossy().into_owned();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path().display()));
        let log_err = log.try_clone().expect("cannot dup the dockerd log fd");
        let args = [
            format!("--config-file={}", r("daemon.json")),
            format!("--host={}", self.host()),
            format!("--data-root={}", r("data")),
            format!("--exec-root={}", r("exec")),
            format!("--pidfile={}", r("docker.pid")),
            "--storage-driver=vfs".to_string(),
            "--iptables=false".to_string(),
            "--ip-masq=false".to_string(),
            format!("--fixed-cidr={}", self.fixed_cidr),
            format!("--mtu={}", self.mtu),
            format!("--cgroup-parent=/{}", self.cgroup_parent),
        ];
        let child = Command::new("dockerd")
            .args(&args)
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn `dockerd {}`: {e}", args.join(" ")));
        let marker = format!("{}/", self.root.display());
        self.guard = Some(ExitGuard::arm(child.id(), &marker, None));
        self.child = Some(child);

        let start = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                self.disarm();
                panic!(
                    "private dockerd exited during startup ({status}); args: {}\nlog tail:\n{}",
                    args.join(" "),
                    tail_file(&self.log_path(), 30)
                );
            }
            if ping(&self.socket()) {
                return;
            }
            if start.elapsed() > READY_DEADLINE {
                self.kill9();
                panic!(
                    "private dockerd not ready within {READY_DEADLINE:?}; log tail:\n{}",
                    tail_file(&self.log_path(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Removes everything this engine left behind. Never panics.
    fn cleanup(&mut self) {
        if self.is_running() {
            let host = self.host();
            if let Ok(ids) = docker_at_ok(&host, &["ps", "-a", "-q"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f", "-v"];
                    args.extend(ids);
                    let _ = docker_at_ok(&host, &args);
                }
            }
            if let Some(mut child) = self.child.take() {
                let _ = send_signal(child.id(), 15);
                if !wait_child(&mut child, Duration::from_secs(30)) {
                    kill_child(&mut child);
                }
            }
        }
        self.kill9();
        kill_leftovers(&self.root, &self.cgroup_parent);
        unmount_below(&self.root);
        remove_cgroups(&self.cgroup_parent);
        if let Some(dir) = self.dir.take() {
            if keep_artifacts() {
                eprintln!("BERTH_TEST_KEEP: keeping {}", dir.keep().display());
                return;
            }
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("warning: could not fully remove {}: {e}", path.display());
            }
        }
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- private dockerd {} log tail (test panicked) ---\n{}",
                self.host(),
                tail_file(&self.log_path(), 40)
            );
        }
        self.cleanup();
    }
}

/// Returns `(fixed_cidr, mtu)` for a new private engine sharing `docker0`:
/// a /24 in the upper half of docker0's /16 that no other private engine of
/// this process uses, and docker0's current MTU. Panics if docker0 is
/// missing or its subnet is smaller than a /16.
fn docker0_share() -> (String, u32) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let mtu_text = std::fs::read_to_string("/sys/class/net/docker0/mtu").unwrap_or_else(|e| {
        panic!(
            "PrivateDockerd shares the system engine's docker0 bridge, but it is missing \
             ({e}); has something deleted it (e.g. a dockerd run with --bridge=none)?"
        )
    });
    let mtu: u32 = mtu_text.trim().parse().expect("docker0 MTU is a number");
    // The system engine's default "bridge" network is docker0.
    let subnets = super::docker::docker(&[
        "network",
        "inspect",
        "bridge",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
    ]);
    let cidr = subnets
        .split_whitespace()
        .find(|s| s.contains('.'))
        .unwrap_or_else(|| panic!("the system bridge network has no IPv4 subnet: {subnets:?}"));
    let (ip, prefix) = cidr.split_once('/').expect("subnets are ADDR/PREFIX");
    let prefix: u8 = prefix.parse().expect("numeric prefix length");
    assert!(
        prefix <= 16,
        "docker0's subnet {cidr} is smaller than a /16; cannot carve out a /24"
    );
    let octets: Vec<&str> = ip.split('.').collect();
    // Upper half of the /16 (x.y.128.0 - x.y.254.0): the system engine hands
    // out addresses from the bottom. The pid spreads concurrent test
    // processes; the counter spreads engines within this process.
    let slot = std::process::id()
        .wrapping_mul(37)
        .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
        % 127;
    (
        format!("{}.{}.{}.0/24", octets[0], octets[1], 128 + slot),
        mtu,
    )
}

/// True if process `pid` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself
        // contain spaces or parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// True if the engine behind `sock` answers `GET /_ping` with 200.
fn ping(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.starts_with("HTTP/1.") && text.split_whitespace().nth(1) == Some("200")
}

/// Directories named `cgroup_parent` directly under each cgroup hierarchy
/// root (v1: `/sys/fs/cgroup/<controller>/NAME`; v2: `/sys/fs/cgroup/NAME`).
fn cgroup_dirs(cgroup_parent: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut roots = vec![base.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(base) {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    roots
        .into_iter()
        .map(|r| r.join(cgroup_parent))
        .filter(|p| p.is_dir())
        .collect()
}

/// All directories below (and including) `dir`, deepest first.
fn dirs_deepest_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
        out.push(d);
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Pids of processes in the engine's cgroups or whose command line mentions
/// its temp dir (dockerd, containerd, shims).
fn leftover_pids(root: &Path, cgroup_parent: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut pids = Vec::new();
    for cg in cgroup_dirs(cgroup_parent) {
        for d in dirs_deepest_first(&cg) {
            if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
    }
    let marker = format!("{}/", root.display()).into_bytes();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(cmdline) = std::fs::read(e.path().join("cmdline"))
                && cmdline
                    .windows(marker.len())
                    .any(|w| w == marker.as_slice())
            {
                pids.push(pid);
            }
        }
    }
    pids.retain(|&p| p != me);
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn kill_leftovers(root: &Path, cgroup_parent: &str) {
    for _ in 0..20 {
        let pids = leftover_pids(root, cgroup_parent);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = send_signal(pid, 9);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "warning: processes of private dockerd {} survived SIGKILL: {:?}",
        root.display(),
        leftover_pids(root, cgroup_parent)
    );
}

/// Mount points at or below `root`, from /proc/self/mountinfo, deepest first.
fn mounts_below(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mountinfo)
        .filter(|m| *m == root || m.starts_with(&format!("{root}/")))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts.dedup();
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8); // mountinfo only escapes bytes, so v <= 0o377
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmounts everything at or below `root` (best effort).
fn unmount_below(root: &Path) {
    for _ in 0..10 {
        let mounts = mounts_below(root);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&m)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    eprintln!(
        "warning: mounts left below {}: {:?}",
        root.display(),
        mounts_below(root)
    );
}

/// Removes the engine's (now empty) cgroup directories (best effort).
fn remove_cgroups(cgroup_parent: &str) {
    for cg in cgroup_dirs(cgroup_parent) {
        for d in dirs_deepest_first(&cg) {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// Test helper for cleanup assertions: true if no process of the engine
/// whose temp dir was `root` and cgroup parent `cgroup_parent` is left, no
/// mount below `root` remains and `root` itself is gone.
pub fn private_dockerd_fully_removed(root: &Path, cgroup_parent: &str) -> bool {
    leftover_pids(root, cgroup_parent).is_empty()
        && mounts_below(root).is_empty()
        && !root.exists()
        && cgroup_dirs(cgroup_parent).is_empty()
}
