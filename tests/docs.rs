//! The docs, the README and the packaging name only what exists.
//!
//! `tests/docs_check.py` reads `README.md`, `docs/**/*.md`, `packaging/**`
//! and `systemd/**` and checks every `berth:*` tag against `src/tags.rs`,
//! every `berth <command> --flag` against the built binary's `--help`, every
//! IAM action against `docs/iam-policy.json`, every absolute berth path
//! against the code, the unit and the package metadata, every `-var` and
//! `terraform output` against the Packer and Terraform examples, and every
//! relative link and anchor. Its `--self-test` breaks those inputs in
//! memory one way at a time (a bogus flag, a design-only tag, a flag gone
//! from the binary, ...) and fails unless each break is caught.

use std::path::Path;
use std::process::Command;

fn check(extra: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg("tests/docs_check.py")
        .args(["--berth", env!("CARGO_BIN_EXE_berth")])
        .args(extra)
        .current_dir(root)
        .output()
        .expect("cannot run python3 tests/docs_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "tests/docs_check.py {extra:?} failed ({}):\n{stdout}{stderr}",
        out.status
    );
}

#[test]
fn docs_name_only_tags_commands_flags_actions_and_paths_that_exist() {
    check(&[]);
}

#[test]
fn the_docs_checks_catch_every_kind_of_drift() {
    check(&["--self-test"]);
}
