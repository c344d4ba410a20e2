//! Docker credential helpers: `docker-credential-<name> get`.
//!
//! The protocol (docker CLI's `login` reference): the helper is a program on
//! `PATH`, run with the single argument `get`; the registry's server address
//! comes on stdin (`127.0.0.1:5000`, or `https://index.docker.io/v1/` for
//! Docker Hub), and the helper writes `{"ServerURL", "Username", "Secret"}`
//! as JSON on stdout. User name `<token>` means the secret is an identity
//! token (registry token auth), not a password. A helper without credentials
//! for that server exits non-zero with `credentials not found in native
//! keychain` (on stdout, by the protocol; stderr is accepted too).
//!
//! What berth does with each outcome:
//!
//! | outcome | result |
//! |---|---|
//! | JSON with a user name and a secret | those credentials |
//! | the not-found message (or an empty user name and secret) | no credentials: the pull is anonymous |
//! | no answer within [`CRED_HELPER_TIMEOUT_SECS`] | [`HelperError::Timeout`]; the helper is killed |
//! | any other non-zero exit, a missing program, output that is not the JSON | a [`HelperError`] naming the helper and the registry |
//!
//! The helper's output never reaches a log or an error message: errors
//! carry the exit status and, for a failure, the helper's own error line
//! only when it cannot be credentials JSON.
//!
//! Answers are cached per helper and registry ([`Helpers`]): credentials and
//! not-found for [`CRED_HELPER_CACHE_SECS`]; a failure is shared with the
//! pulls that waited for that same run, and the next pull runs the helper
//! again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::auth::Credentials;

/// How long a helper may take to answer `get` before it is killed.
pub const CRED_HELPER_TIMEOUT_SECS: u64 = 10;
/// How long a helper's answer (credentials, or none) serves later pulls.
pub const CRED_HELPER_CACHE_SECS: u64 = 300;
/// The helpers' program name prefix: `credsStore = "pass"` runs `docker-credential-pass`.
pub const HELPER_PREFIX: &str = "docker-credential-";
/// What a helper says when it has no credentials for the server.
const NOT_FOUND: &str = "credentials not found in native keychain";
/// The user name that marks the secret as an identity token.
const TOKEN_USERNAME: &str = "<token>";
/// The most of a helper's stdout or stderr that is read.
const OUTPUT_LIMIT_BYTES: u64 = 1 << 20;
/// The longest piece of a helper's error line an error message quotes.
const DETAIL_LIMIT_CHARS: usize = 200;

/// A credential helper that could not answer. Never carries its secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelperError {
    #[error("credential helper {program} (for registry {server}) is not on PATH")]
    Missing { program: String, server: String },
    #[error("credential helper {program} (for registry {server}) could not be run: {message}")]
    Spawn {
        program: String,
        server: String,
        message: String,
    },
    #[error(
        "credential helper {program} (for registry {server}) did not answer within {secs}s and was killed"
    )]
    Timeout {
        program: String,
        server: String,
        secs: u64,
    },
    #[error("credential helper {program} (for registry {server}) failed: {status}{detail}")]
    Failed {
        program: String,
        server: String,
        status: String,
        /// `": <the helper's error line>"`, or empty.
        detail: String,
    },
    #[error(
        "credential helper {program} (for registry {server}) answered something that is not credentials JSON: {what}"
    )]
    Malformed {
        program: String,
        server: String,
        what: String,
    },
}

/// What a helper's successful `get` said, before it is tied to a helper.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Found(Credentials),
    NotFound,
}

#[derive(Deserialize)]
struct HelperJson {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Parses the stdout of a successful `get` for `server`. The error says
/// what was wrong without quoting the output (it may hold the secret).
fn parse_answer(server: &str, stdout: &[u8]) -> Result<Answer, String> {
    let json: HelperJson = serde_json::from_slice(stdout).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "needs string fields Username and Secret",
            serde_json::error::Category::Eof => "truncated JSON",
        };
        format!("{kind} (line {}, column {})", e.line(), e.column())
    })?;
    if json.username.is_empty() && json.secret.is_empty() {
        return Ok(Answer::NotFound);
    }
    let mut creds = Credentials {
        server: server.to_string(),
        ..Default::default()
    };
    if json.username == TOKEN_USERNAME {
        creds.identity_token = Some(json.secret);
    } else {
        creds.username = Some(json.username);
        creds.password = Some(json.secret);
    }
    Ok(Answer::Found(creds))
}

/// Whether a failed helper's output says "no credentials for this server".
fn says_not_found(stdout: &[u8], stderr: &[u8]) -> bool {
    [stdout, stderr]
        .iter()
        .any(|o| String::from_utf8_lossy(o).contains(NOT_FOUND))
}

/// The helper's error line to quote in an error: stderr's first line, else
/// stdout's, unless it could be (part of) credentials JSON.
fn error_detail(stdout: &[u8], stderr: &[u8]) -> String {
    for out in [stderr, stdout] {
        let text = String::from_utf8_lossy(out);
        let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) else {
            continue;
        };
        if text.contains('{') || text.contains("Secret") {
            continue;
        }
        let cut: String = line.chars().take(DETAIL_LIMIT_CHARS).collect();
        return format!(": {cut}");
    }
    String::new()
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

async fn read_capped(r: Option<impl AsyncRead + Unpin>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(r) = r {
        r.take(OUTPUT_LIMIT_BYTES).read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// Runs `program get` for `server`, killing it after `timeout`.
async fn run_get(
    program: &std::path::Path,
    server: &str,
    timeout: Duration,
) -> Result<Answer, HelperError> {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.display().to_string());
    let mut child = tokio::process::Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => HelperError::Missing {
                program: name.clone(),
                server: server.to_string(),
            },
            _ => HelperError::Spawn {
                program: name.clone(),
                server: server.to_string(),
                message: e.to_string(),
            },
        })?;
    let stdin = child.stdin.take();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let io = async {
        let write = async move {
            if let Some(mut stdin) = stdin {
                // A helper that exits without reading its stdin is not an error here.
                let _ = stdin.write_all(server.as_bytes()).await;
            }
        };
        let ((), out, err, status) = tokio::join!(
            write,
            read_capped(stdout),
            read_capped(stderr),
            child.wait()
        );
        (out, err, status)
    };
    let done = tokio::time::timeout(timeout, io).await;
    let (out, err, status) = match done {
        Ok(r) => r,
        Err(_) => {
            // SIGKILL, then reap it.
            let _ = child.kill().await;
            return Err(HelperError::Timeout {
                program: name,
                server: server.to_string(),
                secs: timeout.as_secs(),
            });
        }
    };
    let io_err = |e: std::io::Error| HelperError::Spawn {
        program: name.clone(),
        server: server.to_string(),
        message: e.to_string(),
    };
    let status = status.map_err(io_err)?;
    let (out, err) = (out.map_err(io_err)?, err.map_err(io_err)?);
    if !status.success() {
        if says_not_found(&out, &err) {
            return Ok(Answer::NotFound);
        }
        return Err(HelperError::Failed {
            program: name,
            server: server.to_string(),
            status: describe_status(status),
            detail: error_detail(&out, &err),
        });
    }
    parse_answer(server, &out).map_err(|what| HelperError::Malformed {
        program: name,
        server: server.to_string(),
        what,
    })
}

/// One cached answer of a helper for a server.
struct Slot {
    at: Instant,
    answer: Result<Option<Credentials>, HelperError>,
}

/// A (helper, server) pair's slot, locked while its helper runs.
type SlotRef = Arc<tokio::sync::Mutex<Option<Slot>>>;

/// Runs credential helpers and caches their answers per helper and server.
///
/// Invariant: each (helper, server) pair has one slot, and a helper runs
/// only while its slot's lock is held, so concurrent pulls from one
/// registry run it once.
pub struct Helpers {
    timeout: Duration,
    ttl: Duration,
    /// Where the programs are; `None`: found on `PATH`, as docker does.
    dir: Option<PathBuf>,
    slots: Mutex<HashMap<(String, String), SlotRef>>,
}

impl Default for Helpers {
    fn default() -> Helpers {
        Helpers {
            timeout: Duration::from_secs(CRED_HELPER_TIMEOUT_SECS),
            ttl: Duration::from_secs(CRED_HELPER_CACHE_SECS),
            dir: None,
            slots: Mutex::default(),
        }
    }
}

impl Helpers {
    /// Helpers found in `dir` instead of on `PATH`, with another timeout.
    #[cfg(test)]
    pub fn in_dir(dir: PathBuf, timeout: Duration) -> Helpers {
        Helpers {
            timeout,
            dir: Some(dir),
            ..Helpers::default()
        }
    }

    /// The credentials helper `name` has for `server` (`None`: it has none).
    pub async fn get(&self, name: &str, server: &str) -> Result<Option<Credentials>, HelperError> {
        let asked = Instant::now();
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((name.to_string(), server.to_string()))
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(s) = slot.as_ref() {
            // A run that ended while this call waited answers it, whatever it
            // said; otherwise only an answer younger than the TTL does.
            let fresh = s.answer.is_ok() && s.at.elapsed() < self.ttl;
            if fresh || s.at >= asked {
                return s.answer.clone();
            }
        }
        let program = format!("{HELPER_PREFIX}{name}");
        let program = match &self.dir {
            Some(d) => d.join(program),
            None => PathBuf::from(program),
        };
        let answer = run_get(&program, server, self.timeout)
            .await
            .map(|a| match a {
                Answer::Found(c) => Some(c),
                Answer::NotFound => None,
            });
        match &answer {
            Ok(Some(_)) => {
                tracing::info!(
                    helper = name,
                    registry = server,
                    "credential helper answered"
                )
            }
            Ok(None) => tracing::info!(
                helper = name,
                registry = server,
                "credential helper has no credentials for the registry; pulling anonymously"
            ),
            Err(_) => {} // the pull or the check that asked reports it
        }
        *slot = Some(Slot {
            at: Instant::now(),
            answer: answer.clone(),
        });
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn answers_parse_into_credentials() {
        let c = parse_answer(
            "r.io",
            br#"{"ServerURL":"r.io","Username":"u","Secret":"s"}"#,
        );
        assert_eq!(
            c,
            Ok(Answer::Found(Credentials {
                server: "r.io".into(),
                username: Some("u".into()),
                password: Some("s".into()),
                identity_token: None,
            }))
        );
        // `<token>`: an identity token, no user name or password.
        let c = parse_answer("r.io", br#"{"Username":"<token>","Secret":"tok"}"#);
        assert_eq!(
            c,
            Ok(Answer::Found(Credentials {
                server: "r.io".into(),
                identity_token: Some("tok".into()),
                ..Default::default()
            }))
        );
        assert_eq!(
            parse_answer("r.io", br#"{"Username":"","Secret":""}"#),
            Ok(Answer::NotFound)
        );
    }

    #[test]
    fn bad_answers_are_named_without_quoting_them() {
        for (out, needle) in [
            (
                &br#"{"Username":"u","Secret":12345678}"#[..],
                "string fields",
            ),
            (br#"{"Username":"u"}"#, "string fields"),
            (b"hunter2", "not JSON"),
            (br#"{"Username":"u","Secret":"hunter2"#, "truncated"),
        ] {
            let e = parse_answer("r.io", out).unwrap_err();
            assert!(e.contains(needle), "{e}");
            assert!(!e.contains("hunter2") && !e.contains("12345678"), "{e}");
        }
    }

    #[test]
    fn failure_details_never_quote_json() {
        assert_eq!(error_detail(b"", b"boom\nmore"), ": boom");
        assert_eq!(error_detail(b"no such server\n", b""), ": no such server");
        assert_eq!(error_detail(br#"{"Secret":"x"}"#, b""), "");
        assert_eq!(error_detail(b"", b""), "");
        assert!(says_not_found(
            b"credentials not found in native keychain\n",
            b""
        ));
        assert!(says_not_found(
            b"",
            b"credentials not found in native keychain"
        ));
        assert!(!says_not_found(b"exit", b"boom"));
    }

    /// A temp dir holding `docker-credential-NAME` scripts.
    struct Dir(tempfile::TempDir);
    impl Dir {
        fn new() -> Dir {
            Dir(tempfile::tempdir().unwrap())
        }
        fn script(&self, name: &str, body: &str) {
            let p = self.0.path().join(format!("{HELPER_PREFIX}{name}"));
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        fn helpers(&self, timeout: Duration) -> Helpers {
            Helpers::in_dir(self.0.path().to_path_buf(), timeout)
        }
        fn calls(&self) -> String {
            std::fs::read_to_string(self.0.path().join("calls")).unwrap_or_default()
        }
        fn path(&self) -> String {
            self.0.path().display().to_string()
        }
    }

    #[tokio::test]
    async fn a_helper_is_run_with_the_server_on_stdin_and_cached() {
        let d = Dir::new();
        let calls = format!("{}/calls", d.path());
        d.script(
            "ok",
            &format!(
                "[ \"$1\" = get ] || exit 9\nserver=$(cat)\necho \"$server\" >> {calls}\n\
                 printf '{{\"ServerURL\":\"%s\",\"Username\":\"u-%s\",\"Secret\":\"s\"}}' \"$server\" \"$server\""
            ),
        );
        let h = d.helpers(Duration::from_secs(30));
        // Concurrent asks for one server run the helper once.
        let (a, b) = tokio::join!(h.get("ok", "r.io:5000"), h.get("ok", "r.io:5000"));
        let a = a.unwrap().unwrap();
        assert_eq!(a.username.as_deref(), Some("u-r.io:5000"));
        assert_eq!(b.unwrap().unwrap(), a);
        assert_eq!(h.get("ok", "r.io:5000").await.unwrap().unwrap(), a);
        assert_eq!(d.calls(), "r.io:5000\n");
        // Another server is another run.
        let c = h.get("ok", "other.io").await.unwrap().unwrap();
        assert_eq!(c.username.as_deref(), Some("u-other.io"));
        assert_eq!(d.calls(), "r.io:5000\nother.io\n");
    }

    #[tokio::test]
    async fn not_found_is_no_credentials_and_failures_are_errors() {
        let d = Dir::new();
        d.script("none", &format!("echo '{NOT_FOUND}'\nexit 1"));
        d.script("broken", "echo 'cannot reach the store' >&2\nexit 3");
        d.script("garbage", "echo 'Username: u, Secret: hunter2'");
        let h = d.helpers(Duration::from_secs(30));
        assert_eq!(h.get("none", "r.io").await, Ok(None));
        let e = h.get("broken", "r.io").await.unwrap_err().to_string();
        assert_eq!(
            e,
            "credential helper docker-credential-broken (for registry r.io) failed: exit status 3: cannot reach the store"
        );
        let e = h.get("garbage", "r.io").await.unwrap_err().to_string();
        assert!(
            e.contains("not credentials JSON") && !e.contains("hunter2"),
            "{e}"
        );
        let e = h.get("absent", "r.io").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "credential helper docker-credential-absent (for registry r.io) is not on PATH"
        );
    }

    #[tokio::test]
    async fn a_hanging_helper_is_killed_at_the_timeout_and_run_again_next_time() {
        let d = Dir::new();
        let pids = format!("{}/pids", d.path());
        d.script("hang", &format!("echo $$ >> {pids}\nexec sleep 600"));
        let h = d.helpers(Duration::from_secs(3));
        let e = h.get("hang", "r.io").await.unwrap_err();
        assert!(matches!(e, HelperError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("docker-credential-hang"), "{e}");
        assert!(e.to_string().contains("registry r.io"), "{e}");
        // Killed and reaped: no such process any more.
        let pid = std::fs::read_to_string(&pids).unwrap();
        let proc_dir = format!("/proc/{}", pid.trim());
        assert!(
            !std::path::Path::new(&proc_dir).exists(),
            "{proc_dir} alive"
        );
        // A failure is not cached.
        assert!(h.get("hang", "r.io").await.is_err());
        assert_eq!(std::fs::read_to_string(&pids).unwrap().lines().count(), 2);
    }
}
