//! Running the `berth` binary under test: long-lived agents ([`Agent`]) and
//! one-shot commands ([`berth`]).

use std::fs::OpenOptions;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::util::{
    ExitGuard, keep_artifacts, kill_child, output_with_timeout, send_signal, tail_file,
};

/// Path of the `berth` binary built by cargo for these tests.
pub const BERTH_BIN: &str = env!("CARGO_BIN_EXE_berth");

/// How long a one-shot [`berth`] command may run before it is killed.
const ONE_SHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Exit code of a finished process: its code, or `128 + signal` if a signal
/// killed it (the shell convention, e.g. 137 for SIGKILL).
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// A spawned `berth` process (usually the long-running agent). Its stdout and
/// stderr are appended to `agent.log` in a private temp dir. Dropping it
/// SIGKILLs the process (its containers stay: tests clean them up) and, if
/// the test is panicking, prints the log tail and keeps the temp dir.
pub struct Agent {
    child: Child,
    status: Option<ExitStatus>,
    dir: Option<TempDir>,
    dir_path: PathBuf,
    log_path: PathBuf,
    guard: Option<ExitGuard>,
}

impl Agent {
    /// Spawns `berth ARGS` with the extra environment `envs` (on top of the
    /// inherited one) and the test's working directory. Panics if the binary
    /// cannot be started.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Agent {
        Agent::spawn_program(BERTH_BIN, args, envs)
    }

    /// Like [`Agent::spawn`] but runs `program` instead of berth (e.g. a
    /// stand-in process, or berth through a wrapper).
    pub fn spawn_program(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("berth-agent-")
            .tempdir()
            .expect("Agent::spawn: cannot create a temp dir");
        let dir_path = dir.path().to_path_buf();
        let log_path = dir_path.join("agent.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("Agent::spawn: cannot open {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .expect("Agent::spawn: cannot dup the log fd");
        let child = Command::new(program)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn `{program} {}`: {e}", args.join(" ")));
        let guard = ExitGuard::arm(child.id(), program, Some(&dir_path));
        Agent {
            child,
            status: None,
            dir: Some(dir),
            dir_path,
            log_path,
            guard: Some(guard),
        }
    }

    /// Everything the process wrote to stdout and stderr so far (lossy UTF-8).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// Path of the log file (stdout + stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The agent's private temp dir (holds the log; tests may put files here).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal number `sig` (e.g. 15 for SIGTERM, 1 for SIGHUP) to the
    /// process. Panics (with the log tail) if it has already exited.
    pub fn signal(&mut self, sig: i32) {
        if let Some(status) = self.poll() {
            panic!(
                "Agent::signal({sig}): berth already exited ({status}); log tail:\n{}",
                tail_file(&self.log_path, 40)
            );
        }
        send_signal(self.pid(), sig).unwrap_or_else(|e| panic!("Agent::signal: {e}"));
    }

    /// Waits up to `deadline` for the process to exit. Returns its exit code
    /// (`128 + signal` if killed by a signal), or `None` if still running.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.poll() {
                return Some(exit_code(status));
            }
            if start.elapsed() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.poll().is_none()
    }

    /// Waits until the log contains `needle`; panics (with the log tail) on
    /// timeout or if the process exits before that.
    pub fn wait_log(&mut self, needle: &str, deadline: Duration) {
        let start = Instant::now();
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Some(status) = self.poll() {
                // The final output may have landed just before exiting.
                if self.log().contains(needle) {
                    return;
                }
                panic!(
                    "berth exited ({status}) before logging {needle:?}; log tail:\n{}",
                    tail_file(&self.log_path, 40)
                );
            }
            if start.elapsed() >= deadline {
                panic!(
                    "timed out after {:.1?} waiting for berth to log {needle:?}; log tail:\n{}",
                    start.elapsed(),
                    tail_file(&self.log_path, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs the process (if running) and reaps it, like Drop does.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            kill_child(&mut self.child);
            self.status = self.child.try_wait().ok().flatten();
        }
        if let Some(guard) = self.guard.take() {
            guard.disarm();
        }
    }

    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() || keep_artifacts() {
            let kept = self.dir.take().map(TempDir::keep);
            eprintln!(
                "--- berth agent (pid {}) log tail (dir kept at {}) ---\n{}",
                self.pid(),
                kept.as_deref().unwrap_or(&self.dir_path).display(),
                tail_file(&self.log_path, 60)
            );
        }
    }
}

/// Runs `berth ARGS` to completion (stdin closed, extra `envs`, the test's
/// working directory) and returns its output. Panics if it cannot be
/// started or runs for more than 2 minutes.
pub fn berth(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BERTH_BIN);
    cmd.args(args).envs(envs.iter().copied());
    let what = format!("`berth {}`", args.join(" "));
    output_with_timeout(cmd, &what, ONE_SHOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}
