//! Generic helpers: unique ids, free ports, polling, running commands with a
//! timeout, and "kill this process when the test process exits" guards.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// True if the environment variable `BERTH_TEST_KEEP` is set to a non-empty
/// value: registries, private engines and agents then keep their temp dirs
/// (logs, storage) after the test for debugging. Processes are still killed.
pub fn keep_artifacts() -> bool {
    std::env::var_os("BERTH_TEST_KEEP").is_some_and(|v| !v.is_empty())
}

/// Returns a short, lowercase id that is unique across the threads of this
/// process and (thanks to pid + time) across runs: `PREFIX-PID-N-TIME`.
///
/// The result is valid as a container name, an image repository path
/// component and an image tag. Characters of `prefix` that are not ASCII
/// alphanumerics become `-`; an empty prefix becomes `t`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "t" } else { clean };
    // 36^6 ms is about 25 days: enough to tell runs apart when pids repeat.
    let time = base36((millis % 36u128.pow(6)) as u64);
    format!("{clean}-{}-{n}-{time}", std::process::id())
}

fn base36(mut v: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if v == 0 {
        return "0".into();
    }
    let mut out = Vec::new();
    while v > 0 {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0,
/// read the port, drop the listener). A port is never handed out twice by
/// the same test process, so parallel tests do not race each other for it.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..200 {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("free_port: cannot bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("free_port: local_addr of a bound listener")
            .port();
        drop(listener);
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("free_port: the kernel kept returning ports this process already handed out");
}

/// Calls `f` every 100 ms until it returns `Some`, and returns that value.
///
/// Panics when `deadline` has passed, naming `what` and the elapsed time.
/// `f` is always called at least once, and once more right at the deadline.
/// This blocks the calling thread: inside `#[tokio::test]` use the
/// multi-thread flavor or `spawn_blocking` if the test also drives futures.
pub fn wait_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            panic!("timed out after {elapsed:.1?} (deadline {deadline:?}) waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(100).min(deadline - elapsed));
    }
}

/// Runs `cmd` with stdin closed, capturing stdout and stderr, and kills it if
/// it has not finished after `timeout`. `what` names the command in errors.
pub(crate) fn output_with_timeout(
    mut cmd: Command,
    what: &str,
    timeout: Duration,
) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot spawn {what}: {e}"))?;
    let mut out = child.stdout.take().expect("stdout was piped");
    let mut err = child.stderr.take().expect("stderr was piped");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what} did not finish within {timeout:?}; killed it"
                ));
            }
            Ok(None) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("waiting for {what} failed: {e}")),
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Sends signal number `sig` to `pid` with the `kill` command.
/// Returns an error (with kill's stderr) if the signal could not be sent.
pub fn send_signal(pid: u32, sig: i32) -> Result<(), String> {
    let mut cmd = Command::new("kill");
    cmd.arg(format!("-{sig}")).arg(pid.to_string());
    let what = format!("`kill -{sig} {pid}`");
    let out = output_with_timeout(cmd, &what, Duration::from_secs(10))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Waits up to `deadline` for `child` to exit; returns whether it did.
pub(crate) fn wait_child(child: &mut Child, deadline: Duration) -> bool {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if start.elapsed() >= deadline => return false,
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(_) => return true,
        }
    }
}

/// SIGKILLs `child` (if still running) and reaps it.
pub(crate) fn kill_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Returns the last `n` lines of the file at `path` (lossy UTF-8), or a note
/// saying it could not be read. Used to put log excerpts into panics.
pub(crate) fn tail_file(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Keeps a helper `sh` process that SIGKILLs a target process once this test
/// process exits in any way (normal exit, panic-abort, SIGKILL), because the
/// kernel then closes our end of the helper's stdin pipe. The target is only
/// killed if its command line still contains `marker` (guards against pid
/// reuse); then the optional `remove_dir` is deleted too. Call
/// [`ExitGuard::disarm`] once the target was stopped normally.
///
/// Statics are never dropped, so this is what stops e.g. the shared registry
/// at the end of a test run.
pub(crate) struct ExitGuard {
    stdin: Option<ChildStdin>,
    helper: Option<Child>,
}

impl ExitGuard {
    /// Arms a guard for `pid`; see the type's docs. Never panics: if the helper
    /// cannot be started, the guard is inert (the target may then outlive us).
    pub(crate) fn arm(pid: u32, marker: &str, remove_dir: Option<&Path>) -> ExitGuard {
        const SCRIPT: &str = r#"read line
[ "$line" = disarm ] && exit 0
grep -qaF -- "$2" "/proc/$1/cmdline" 2>/dev/null && kill -9 "$1"
[ -n "$3" ] && sleep 0.2 && rm -rf -- "$3"
exit 0"#;
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("berth-test-exit-guard")
            .arg(pid.to_string())
            .arg(marker)
            .arg(remove_dir.map(|d| d.as_os_str()).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C of the test run must not kill the
            // guard before it has done its job.
            .process_group(0)
            .spawn();
        match spawned {
            Ok(mut helper) => ExitGuard {
                stdin: helper.stdin.take(),
                helper: Some(helper),
            },
            Err(e) => {
                eprintln!("warning: cannot start exit guard for pid {pid}: {e}");
                ExitGuard {
                    stdin: None,
                    helper: None,
                }
            }
        }
    }

    /// Tells the helper to exit without killing anything, and reaps it.
    pub(crate) fn disarm(mut self) {
        self.disarm_inner();
    }

    fn disarm_inner(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"disarm\n");
        }
        if let Some(mut helper) = self.helper.take()
            && !wait_child(&mut helper, Duration::from_secs(5))
        {
            kill_child(&mut helper);
        }
    }
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // Dropping an ExitGuard means its owner cleaned up (or is doing so).
        self.disarm_inner();
    }
}
