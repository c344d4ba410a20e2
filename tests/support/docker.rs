//! Helpers that drive Docker through the `docker` CLI: running commands,
//! finding/inspecting/killing/removing containers, and building/pushing the
//! busybox test images.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::util::{output_with_timeout, send_signal};

/// How long a single `docker` CLI invocation may take before it is killed.
/// Generous: pushes/builds on a loaded 2-core CI machine can be slow.
const DOCKER_CLI_TIMEOUT: Duration = Duration::from_secs(180);

/// Name of the locally built busybox base image (see [`base_image`]).
pub const BASE_IMAGE: &str = "berth-test/busybox:base";

/// Image label holding the sha256 of the busybox binary the image was built
/// from; lets [`base_image`] reuse an image left by an earlier run.
const BUSYBOX_SHA_LABEL: &str = "berth.test.busybox-sha256";

/// Host busybox (Debian `busybox-static`) copied into the base image.
const HOST_BUSYBOX: &str = "/usr/bin/busybox";

fn describe(host: Option<&str>, args: &[&str]) -> String {
    match host {
        Some(h) => format!("`DOCKER_HOST={h} docker {}`", args.join(" ")),
        None => format!("`docker {}`", args.join(" ")),
    }
}

fn docker_cmd(host: Option<&str>) -> Command {
    let mut cmd = Command::new("docker");
    if let Some(h) = host {
        cmd.env("DOCKER_HOST", h).env_remove("DOCKER_CONTEXT");
    }
    cmd
}

fn run(host: Option<&str>, args: &[&str]) -> Result<String, String> {
    let what = describe(host, args);
    let mut cmd = docker_cmd(host);
    cmd.args(args);
    let out = output_with_timeout(cmd, &what, DOCKER_CLI_TIMEOUT)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `docker ARGS` against the default engine and returns its stdout
/// (trailing whitespace trimmed). Panics with the command and its stderr if
/// it fails or takes longer than 3 minutes.
pub fn docker(args: &[&str]) -> String {
    run(None, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`docker`] but returns `Err(message with stderr)` instead of panicking.
pub fn docker_ok(args: &[&str]) -> Result<String, String> {
    run(None, args)
}

/// Runs `docker ARGS` with `DOCKER_HOST=host` (e.g. a [`super::PrivateDockerd`]'s
/// `host()`) and returns trimmed stdout; panics with stderr on failure.
pub fn docker_at(host: &str, args: &[&str]) -> String {
    run(Some(host), args).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`docker_at`] but returns `Err(message with stderr)` instead of panicking.
pub fn docker_at_ok(host: &str, args: &[&str]) -> Result<String, String> {
    run(Some(host), args)
}

fn ids_with_label(host: Option<&str>, label_kv: &str) -> Vec<String> {
    let filter = format!("label={label_kv}");
    let out = run(host, &["ps", "-a", "-q", "--no-trunc", "--filter", &filter])
        .unwrap_or_else(|e| panic!("{e}"));
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Full ids of all containers (any state) on the default engine carrying the
/// label `label_kv` (`key=value`, or just `key` to match any value).
pub fn container_ids_with_label(label_kv: &str) -> Vec<String> {
    ids_with_label(None, label_kv)
}

/// [`container_ids_with_label`] against the engine at `host`.
pub fn container_ids_with_label_at(host: &str, label_kv: &str) -> Vec<String> {
    ids_with_label(Some(host), label_kv)
}

/// `docker inspect -f GO_TEMPLATE ID` on the default engine, trimmed.
/// Example: `inspect_field(&id, "{{.State.Status}}")`. Panics on failure.
pub fn inspect_field(id: &str, go_template: &str) -> String {
    docker(&["inspect", "-f", go_template, id])
}

/// [`inspect_field`] against the engine at `host`.
pub fn inspect_field_at(host: &str, id: &str, go_template: &str) -> String {
    docker_at(host, &["inspect", "-f", go_template, id])
}

fn kill_main(host: Option<&str>, id: &str) -> u32 {
    let pid_text =
        run(host, &["inspect", "-f", "{{.State.Pid}}", id]).unwrap_or_else(|e| panic!("{e}"));
    let pid: u32 = pid_text
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("container {id}: .State.Pid {pid_text:?} is not a pid: {e}"));
    assert!(
        pid != 0,
        "kill_main_process: container {id} is not running (.State.Pid is 0)"
    );
    send_signal(pid, 9).unwrap_or_else(|e| panic!("kill_main_process({id}): {e}"));
    pid
}

/// SIGKILLs the main process of running container `id` (default engine)
/// directly from the host, using `.State.Pid` — i.e. a crash the engine did
/// not initiate, unlike `docker kill`. Returns the host pid that was killed.
/// Panics if the container is not running.
pub fn kill_main_process(id: &str) -> u32 {
    kill_main(None, id)
}

/// [`kill_main_process`] for a container of the engine at `host`.
pub fn kill_main_process_at(host: &str, id: &str) -> u32 {
    kill_main(Some(host), id)
}

fn remove_with_label(host: Option<&str>, label_kv: &str) {
    let ids = ids_with_label(host, label_kv);
    if ids.is_empty() {
        return;
    }
    let mut args = vec!["rm", "-f", "-v"];
    args.extend(ids.iter().map(String::as_str));
    // Best effort: a container may vanish concurrently (e.g. the agent removed it).
    if let Err(e) = run(host, &args)
        && !e.contains("No such container")
    {
        eprintln!("warning: cleanup failed: {e}");
    }
}

/// Force-removes (with volumes) every container on the default engine that
/// carries `label_kv`. Best effort, for test cleanup: never panics because a
/// container disappeared concurrently; other errors are printed.
pub fn remove_containers_with_label(label_kv: &str) {
    remove_with_label(None, label_kv)
}

/// [`remove_containers_with_label`] against the engine at `host`.
pub fn remove_containers_with_label_at(host: &str, label_kv: &str) {
    remove_with_label(Some(host), label_kv)
}

/// Returns true if the default engine has an image with this reference.
pub fn image_exists(reference: &str) -> bool {
    docker_ok(&["image", "inspect", "--format", "{{.Id}}", reference]).is_ok()
}

fn busybox_sha256() -> String {
    let mut cmd = Command::new("sha256sum");
    cmd.arg(HOST_BUSYBOX);
    let out = output_with_timeout(cmd, "sha256sum of busybox", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "`sha256sum {HOST_BUSYBOX}` failed ({}): {} (is Debian's busybox-static installed?)",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sha256sum printed nothing for {HOST_BUSYBOX}"))
        .to_string()
}

/// Builds (once per test process) and returns [`BASE_IMAGE`],
/// `berth-test/busybox:base`: `FROM scratch`, the host's static busybox at
/// `/bin/busybox` with all applets installed as symlinks in `/bin` (so
/// `sh`, `sleep`, `touch`, `test`, `nc`, `httpd`, ... exist), and
/// `CMD ["sleep","3600"]`. An existing image built from the same busybox
/// binary (checked via a sha256 label) is reused, so re-runs are fast.
/// The image is left in place after the tests (it is small and reusable).
pub fn base_image() -> String {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(build_base_image).clone()
}

fn build_base_image() -> String {
    let sha = busybox_sha256();
    let template = format!("{{{{index .Config.Labels \"{BUSYBOX_SHA_LABEL}\"}}}}");
    if let Ok(existing) = docker_ok(&["image", "inspect", "--format", &template, BASE_IMAGE])
        && existing.trim() == sha
    {
        return BASE_IMAGE.to_string();
    }
    let ctx = tempfile::Builder::new()
        .prefix("berth-img-")
        .tempdir()
        .expect("base_image: cannot create a temp dir for the build context");
    std::fs::copy(HOST_BUSYBOX, ctx.path().join("busybox"))
        .unwrap_or_else(|e| panic!("base_image: cannot copy {HOST_BUSYBOX}: {e}"));
    let dockerfile = format!(
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         LABEL {BUSYBOX_SHA_LABEL}=\"{sha}\"\n\
         CMD [\"sleep\", \"3600\"]\n"
    );
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile)
        .expect("base_image: cannot write the Dockerfile");
    build(ctx.path(), BASE_IMAGE, &[]);
    BASE_IMAGE.to_string()
}

fn build(context: &Path, tag: &str, extra: &[&str]) {
    let context = context.to_str().expect("temp dir paths are UTF-8");
    let mut args = vec!["build", "--quiet", "--tag", tag];
    args.extend_from_slice(extra);
    args.push(context);
    docker(&args);
}

/// Tags [`base_image`] as `REGISTRY_ADDR/REPO:TAG`, pushes it, removes the
/// local tag (so whoever wants it must really pull) and returns the reference.
pub fn push_image(registry_addr: &str, repo: &str, tag: &str) -> String {
    let base = base_image();
    let reference = format!("{registry_addr}/{repo}:{tag}");
    docker(&["tag", &base, &reference]);
    push_and_untag(&reference);
    reference
}

/// Builds a tiny image `FROM` [`base_image`] that adds a file `/marker`
/// containing `marker`, tags it `REGISTRY_ADDR/REPO:TAG`, pushes it, removes
/// it locally and returns the reference. Every call yields a new digest
/// (built without cache), different from the base image's.
pub fn push_variant(registry_addr: &str, repo: &str, tag: &str, marker: &str) -> String {
    let base = base_image();
    let reference = format!("{registry_addr}/{repo}:{tag}");
    let ctx = tempfile::Builder::new()
        .prefix("berth-img-")
        .tempdir()
        .expect("push_variant: cannot create a temp dir for the build context");
    std::fs::write(ctx.path().join("marker"), marker)
        .expect("push_variant: cannot write the marker file");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY marker /marker\n"),
    )
    .expect("push_variant: cannot write the Dockerfile");
    // No build cache: a cached layer shared with a concurrent push_variant of
    // the same marker could be deleted under us by its `image rm`.
    build(ctx.path(), &reference, &["--no-cache"]);
    push_and_untag(&reference);
    reference
}

fn push_and_untag(reference: &str) {
    docker(&["push", reference]);
    docker(&["image", "rm", reference]);
}

/// Copies image `reference` from the default engine into the engine at
/// `host` (`docker save | DOCKER_HOST=host docker load`). Panics on failure.
pub fn copy_image_to(host: &str, reference: &str) {
    let mut save = docker_cmd(None)
        .args(["save", reference])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn `docker save {reference}`: {e}"));
    let save_out = save.stdout.take().expect("stdout was piped");
    let mut load = docker_cmd(Some(host));
    load.arg("load").stdin(Stdio::from(save_out));
    let what = format!("`DOCKER_HOST={host} docker load` of {reference}");
    let load_result = run_with_piped_stdin(load, &what);
    let save_result = save
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for `docker save {reference}` failed: {e}"));
    assert!(
        save_result.status.success(),
        "`docker save {reference}` failed ({}): {}",
        save_result.status,
        String::from_utf8_lossy(&save_result.stderr).trim()
    );
    load_result.unwrap_or_else(|e| panic!("{e}"));
}

/// Runs `cmd` whose stdin was already set (e.g. to another command's stdout;
/// `output_with_timeout` would force it to null), failing with its stderr.
fn run_with_piped_stdin(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
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
