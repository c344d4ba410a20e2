//! The image bake and infrastructure examples (`packaging/packer/`,
//! `packaging/terraform/`, `docs/aws-setup.md`) against the code.
//!
//! `packer validate` and `terraform validate` cannot run here (no plugins
//! or providers can be fetched), so `tests/infra_check.py` parses the HCL
//! with python-hcl2 (installed by `tests/setup.sh`) and checks every tag
//! name, path, IAM action, metadata option and lifecycle hook against
//! `src/tags.rs`, `src/manifest.rs`, `systemd/` and `docs/iam-policy.json`.
//! Its `--self-test` breaks those inputs in memory one way at a time and
//! fails unless each drift is caught.

use std::path::Path;
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn check(args: &[&str]) {
    let out = run(Command::new("python3")
        .arg("tests/infra_check.py")
        .args(args));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "tests/infra_check.py {args:?} failed ({}):\n{stdout}{stderr}",
        out.status
    );
}

#[test]
fn packer_and_terraform_use_the_names_of_the_code() {
    check(&[]);
}

#[test]
fn the_infra_checks_catch_every_kind_of_drift() {
    check(&["--self-test"]);
}

/// The manifest the Packer template bakes by default is one `berth
/// validate` accepts (the template runs the same command on the image).
#[test]
fn the_example_manifest_is_valid() {
    let out = run(Command::new(env!("CARGO_BIN_EXE_berth")).args([
        "validate",
        "--config",
        "packaging/packer/berth.toml",
    ]));
    assert!(
        out.status.success(),
        "berth validate refused packaging/packer/berth.toml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
