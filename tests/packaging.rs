//! The packages and the unit: the .deb (cargo-deb) and the .rpm
//! (cargo-generate-rpm) built from the debug binary this suite already
//! built (what is checked is contents and metadata, not the binary's
//! optimisation), their files, modes and metadata; both installed into
//! throwaway roots with their maintainer scripts and no systemd running;
//! `systemd-analyze verify` and `security` on the unit; the example
//! manifest accepted by `berth validate`.
//!
//! Needs cargo-deb, cargo-generate-rpm, rpm, dpkg-dev, systemd, binutils
//! and a static busybox: `tests/setup.sh` installs them
//! (`packaging/tools.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const BIN: &str = env!("CARGO_BIN_EXE_berth");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const SRC: &str = env!("CARGO_MANIFEST_DIR");

/// The manual pages `berth man` writes: berth(1) and one per visible command.
const MAN_PAGES: [&str; 6] = [
    "berth.1",
    "berth-import.1",
    "berth-plan.1",
    "berth-run.1",
    "berth-status.1",
    "berth-validate.1",
];
const MAINTAINER_SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];
const RPM_SCRIPTS: [(&str, &str); 3] = [
    ("postinstall", "post_install.sh"),
    ("preuninstall", "pre_uninstall.sh"),
    ("postuninstall", "post_uninstall.sh"),
];

/// Both packages, built once for all tests, and the .deb extracted.
struct Built {
    /// Holds everything below; under the target dir, emptied at the start.
    dir: PathBuf,
    /// The binary packaged: the suite's debug build, without debug info.
    bin: PathBuf,
    /// The manual pages as `berth man` wrote them.
    man_dir: PathBuf,
    deb: PathBuf,
    rpm: PathBuf,
    /// The .deb's data, extracted with `dpkg-deb -x`.
    deb_root: PathBuf,
}

/// Builds once; a failure is reported by every test that needs the
/// packages, without building again.
fn built() -> &'static Built {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        std::panic::catch_unwind(build).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    match built {
        Ok(b) => b,
        Err(e) => panic!("building the packages failed: {e}"),
    }
}

fn build() -> Built {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packaging");
    if dir.exists() {
        fs::remove_dir_all(&dir).expect("empty the packaging dir");
    }
    // The packaging metadata names `target/release/…`; both tools map
    // that prefix to $CARGO_TARGET_DIR/release.
    let target = dir.join("target");
    let release = target.join("release");
    fs::create_dir_all(&release).expect("create the staging target dir");
    // Without its debug info (600 MB → 60 MB): packing and unpacking
    // the whole debug build would cost most of this test's time.
    let staged = release.join("berth");
    ok(Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(&staged)
        .arg(BIN));
    // The pages as `berth man` writes them, then gzipped for both
    // packages, as packaging/release.sh does.
    let man_dir = dir.join("man");
    let out = run(Command::new(BIN).arg("man").arg(&man_dir));
    assert!(out.status.success(), "berth man: {}", text(&out));
    let gz_dir = release.join("man");
    fs::create_dir_all(&gz_dir).unwrap();
    for page in MAN_PAGES {
        let gz = ok(Command::new("gzip").arg("-9nc").arg(man_dir.join(page))).stdout;
        fs::write(gz_dir.join(format!("{page}.gz")), gz).unwrap();
    }

    let deb = dir.join("berth.deb");
    let out = run(Command::new(cargo())
        .args([
            "deb",
            "--no-build",
            "--no-strip",
            "--fast",
            "--quiet",
            "--output",
        ])
        .arg(&deb)
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(SRC));
    assert!(out.status.success(), "cargo deb: {}", text(&out));
    let rpm = dir.join("berth.rpm");
    let out = run(Command::new(cargo())
        .args(["generate-rpm", "--payload-compress", "none", "--output"])
        .arg(&rpm)
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(SRC));
    assert!(out.status.success(), "cargo generate-rpm: {}", text(&out));

    let deb_root = dir.join("deb-root");
    ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&deb_root));
    Built {
        dir,
        bin: staged,
        man_dir,
        deb,
        rpm,
        deb_root,
    }
}

#[test]
fn deb_ships_the_binary_unit_config_and_man_pages_with_their_modes() {
    let b = built();
    let mut expected: BTreeMap<String, u32> = BTreeMap::from([
        ("usr/bin/berth".into(), 0o755),
        ("usr/lib/systemd/system/berth.service".into(), 0o644),
        ("etc/berth/berth.toml".into(), 0o644),
        ("usr/share/doc/berth/README.md".into(), 0o644),
        ("usr/share/doc/berth/copyright".into(), 0o644),
    ]);
    for page in MAN_PAGES {
        expected.insert(format!("usr/share/man/man1/{page}.gz"), 0o644);
    }
    let found = files_under(&b.deb_root);
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the .deb's files"
    );
    for (path, mode) in &expected {
        assert_eq!(found[path], *mode, "mode of /{path}: {:o}", found[path]);
    }
    let root = &b.deb_root;
    assert_eq!(
        fs::read(root.join("usr/bin/berth")).unwrap(),
        fs::read(&b.bin).unwrap(),
        "/usr/bin/berth is the built binary"
    );
    assert_eq!(
        fs::read(root.join("usr/lib/systemd/system/berth.service")).unwrap(),
        fs::read(src("systemd/berth.service")).unwrap()
    );
    assert_eq!(
        fs::read(root.join("etc/berth/berth.toml")).unwrap(),
        fs::read(src("packaging/berth.toml.example")).unwrap()
    );
    for page in MAN_PAGES {
        let gz = root.join("usr/share/man/man1").join(format!("{page}.gz"));
        let unzipped = ok(Command::new("gzip").arg("-dc").arg(&gz)).stdout;
        assert_eq!(
            unzipped,
            fs::read(b.man_dir.join(page)).unwrap(),
            "{page}.gz is the page `berth man` wrote"
        );
    }
    // Directories the package creates keep the usual modes.
    for dir in ["etc/berth", "usr/bin", "usr/lib/systemd/system"] {
        let mode = fs::metadata(root.join(dir)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "/{dir}");
    }
}

#[test]
fn deb_metadata_conffile_and_maintainer_scripts() {
    let b = built();
    let field = |name: &str| {
        let out = ok(Command::new("dpkg-deb").arg("-f").arg(&b.deb).arg(name));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(field("Package"), "berth");
    assert_eq!(field("Version"), format!("{VERSION}-1"));
    let arch = ok(Command::new("dpkg").arg("--print-architecture")).stdout;
    assert_eq!(
        field("Architecture"),
        String::from_utf8(arch).unwrap().trim()
    );
    let depends = field("Depends");
    assert!(
        depends.contains("libc6 (>= 2."),
        "Depends (from dpkg-shlibdeps): {depends:?}"
    );
    assert!(
        !depends.contains("docker"),
        "the engine may come from anywhere: {depends:?}"
    );
    assert!(field("Recommends").contains("docker.io"));
    assert_eq!(field("Section"), "admin");
    assert!(!field("Maintainer").is_empty());

    // The portable variant (packaging/release.sh) states the glibc 2.17
    // baseline the release script checks, under the same package name.
    let portable = b.dir.join("berth-portable.deb");
    ok(Command::new(cargo())
        .args(["deb", "--no-build", "--no-strip", "--fast", "--quiet"])
        .args(["--variant", "portable", "--output"])
        .arg(&portable)
        .env("CARGO_TARGET_DIR", b.dir.join("target"))
        .current_dir(SRC));
    let portable_field = |name: &str| {
        let out = ok(Command::new("dpkg-deb").arg("-f").arg(&portable).arg(name));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(portable_field("Package"), "berth");
    assert_eq!(portable_field("Depends"), "libc6 (>= 2.17)");

    let ctrl = b.dir.join("deb-control");
    ok(Command::new("dpkg-deb").arg("-e").arg(&b.deb).arg(&ctrl));
    assert_eq!(
        fs::read_to_string(ctrl.join("conffiles")).unwrap(),
        "/etc/berth/berth.toml\n",
        "the example manifest is the one conffile"
    );
    for name in MAINTAINER_SCRIPTS {
        let path = ctrl.join(name);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{name}");
        let script = fs::read_to_string(&path).unwrap();
        assert_eq!(
            script,
            fs::read_to_string(src(&format!("packaging/deb/{name}"))).unwrap()
        );
        ok(Command::new("sh").arg("-n").arg(&path));
        never_stops_containers(name, &script);
    }
    // The agent is stopped on removal only, never on upgrade.
    let prerm = fs::read_to_string(ctrl.join("prerm")).unwrap();
    assert_eq!(
        case_branch_of(&prerm, "systemctl stop"),
        Some("remove)".to_string())
    );
}

#[test]
fn deb_installs_upgrades_and_purges_in_a_throwaway_root_without_systemd() {
    let b = built();
    let root = b.dir.join("dpkg-root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // The scripts run outside a chroot with DPKG_ROOT set, as an image
    // build's dpkg --root does; they must act on the root only.
    let dpkg = |args: &[&str]| {
        ok(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .arg(format!("--log={}", root.join("var/log/dpkg.log").display()))
            .args(["--force-script-chrootless", "--force-depends"])
            .args(args))
    };
    let deb = b.deb.to_str().unwrap();
    let state = root.join("var/lib/berth");
    let wants = root.join("etc/systemd/system/multi-user.target.wants/berth.service");

    dpkg(&["-i", deb]);
    assert!(root.join("usr/bin/berth").is_file());
    let meta = fs::metadata(&state).expect("postinst made /var/lib/berth");
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o700, "/var/lib/berth");
    assert_eq!(meta.uid(), 0);
    assert_eq!(
        fs::read_link(&wants).expect("enabled: the wants link exists"),
        Path::new("/usr/lib/systemd/system/berth.service")
    );

    // An upgrade keeps the pin and the operator's manifest.
    fs::write(state.join("pin.json"), "{}").unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    let manifest = root.join("etc/berth/berth.toml");
    fs::write(&manifest, "# the fleet's own\n").unwrap();
    dpkg(&["--force-confold", "-i", deb]);
    assert_eq!(fs::read_to_string(state.join("pin.json")).unwrap(), "{}");
    assert_eq!(
        fs::metadata(&state).unwrap().permissions().mode() & 0o7777,
        0o700,
        "postinst tightens /var/lib/berth"
    );
    assert_eq!(
        fs::read_to_string(&manifest).unwrap(),
        "# the fleet's own\n"
    );

    // Removal: the binary and the enablement go; config and state stay.
    dpkg(&["-r", "berth"]);
    assert!(!root.join("usr/bin/berth").exists());
    assert!(!root.join("usr/lib/systemd/system/berth.service").exists());
    assert!(fs::symlink_metadata(&wants).is_err(), "disabled on removal");
    assert!(manifest.exists(), "a conffile stays until purge");
    assert!(state.join("pin.json").exists(), "state stays until purge");

    // Purge: the manifest and the state directory go too.
    dpkg(&["-P", "berth"]);
    assert!(!manifest.exists());
    assert!(!state.exists());
}

#[test]
fn rpm_files_modes_config_scripts_and_metadata() {
    let b = built();
    let rpm = b.rpm.to_str().unwrap();
    let query = |args: &[&str]| {
        let out = ok(Command::new("rpm").args(["-qp"]).args(args).arg(rpm));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        query(&["--qf", "%{NAME} %{VERSION} %{ARCH}\n"]),
        format!("berth {VERSION} {}\n", std::env::consts::ARCH)
    );

    let mut expected: BTreeMap<String, u32> = BTreeMap::from([
        ("/usr/bin/berth".into(), 0o100755),
        ("/usr/lib/systemd/system/berth.service".into(), 0o100644),
        ("/etc/berth/berth.toml".into(), 0o100644),
        ("/usr/share/doc/berth/README.md".into(), 0o100644),
        ("/usr/share/licenses/berth/LICENSE".into(), 0o100644),
    ]);
    for page in MAN_PAGES {
        expected.insert(format!("/usr/share/man/man1/{page}.gz"), 0o100644);
    }
    let listed: BTreeSet<String> = query(&["-l"]).lines().map(str::to_string).collect();
    assert_eq!(
        listed,
        expected.keys().cloned().collect(),
        "rpm -qlp lists exactly the packaged files"
    );

    // --dump: path size mtime digest mode owner group isconfig isdoc rdev symlink
    let mut sizes = BTreeMap::new();
    for line in query(&["--dump"]).lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (path, size, mode) = (f[0], f[1], u32::from_str_radix(f[4], 8).unwrap());
        assert_eq!(mode, expected[path], "mode of {path}: {mode:o}");
        assert_eq!((f[5], f[6]), ("root", "root"), "owner of {path}");
        let is_config = path == "/etc/berth/berth.toml";
        assert_eq!(f[7] == "1", is_config, "config flag of {path}");
        sizes.insert(path.to_string(), size.parse::<u64>().unwrap());
    }
    assert_eq!(sizes["/usr/bin/berth"], fs::metadata(&b.bin).unwrap().len());
    for page in MAN_PAGES {
        let gz = format!("{page}.gz");
        let packed = b.dir.join("target/release/man").join(&gz);
        assert_eq!(
            sizes[&format!("/usr/share/man/man1/{gz}")],
            fs::metadata(packed).unwrap().len()
        );
    }
    assert_eq!(query(&["--configfiles"]), "/etc/berth/berth.toml\n");
    let flags = query(&["--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]"]);
    assert!(
        flags.lines().any(|l| l == "/etc/berth/berth.toml cn"),
        "the manifest is %config(noreplace): {flags}"
    );

    let scripts = query(&["--scripts"]);
    for (kind, file) in RPM_SCRIPTS {
        let script = fs::read_to_string(src(&format!("packaging/rpm/{file}"))).unwrap();
        assert!(
            scripts.contains(&format!("{kind} scriptlet (using /bin/sh):\n{script}")),
            "{kind} is packaging/rpm/{file}: {scripts}"
        );
        ok(Command::new("sh")
            .arg("-n")
            .arg(src(&format!("packaging/rpm/{file}"))));
        never_stops_containers(file, &script);
    }
    let preun = fs::read_to_string(src("packaging/rpm/pre_uninstall.sh")).unwrap();
    assert!(
        preun.contains("if [ \"$1\" -eq 0 ]; then"),
        "%preun stops the agent on removal only"
    );

    let requires = query(&["-R"]);
    assert!(requires.contains("/bin/sh"), "{requires}");
    assert!(requires.contains("libc.so.6"), "{requires}");
    assert!(
        query(&["--recommends"]).contains("docker"),
        "recommends an engine"
    );
}

#[test]
fn rpm_installs_upgrades_and_erases_in_a_throwaway_root() {
    let b = built();
    // rpm runs the scriptlets chrooted into the root: a static busybox is
    // its /bin/sh, and there is no systemctl and no systemd, as in an
    // image build's chroot.
    let root = b.dir.join("rpm-root");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    let busybox =
        String::from_utf8(ok(Command::new("sh").args(["-c", "command -v busybox"])).stdout)
            .unwrap();
    fs::copy(busybox.trim(), root.join("bin/busybox")).unwrap();
    for applet in ["sh", "mkdir", "chmod", "rm", "["] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let rpm = |args: &[&str]| {
        ok(Command::new("rpm")
            .arg("--root")
            .arg(&root)
            .args(["--nodeps", "--force-debian"])
            .args(args))
    };
    let pkg = b.rpm.to_str().unwrap();
    ok(Command::new("rpm").arg("--root").arg(&root).arg("--initdb"));
    rpm(&["-i", pkg]);
    assert!(root.join("usr/bin/berth").is_file());
    let state = root.join("var/lib/berth");
    let meta = fs::metadata(&state).expect("%post made /var/lib/berth");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o700, "/var/lib/berth");

    // An upgrade keeps the pin and the operator's manifest (noreplace).
    fs::write(state.join("pin.json"), "{}").unwrap();
    let manifest = root.join("etc/berth/berth.toml");
    fs::write(&manifest, "# the fleet's own\n").unwrap();
    rpm(&["-U", "--replacepkgs", pkg]);
    assert_eq!(fs::read_to_string(state.join("pin.json")).unwrap(), "{}");
    assert_eq!(
        fs::read_to_string(&manifest).unwrap(),
        "# the fleet's own\n"
    );

    // Erase: the binary and the unit go; the state stays.
    rpm(&["-e", "berth"]);
    assert!(!root.join("usr/bin/berth").exists());
    assert!(!root.join("usr/lib/systemd/system/berth.service").exists());
    assert!(state.join("pin.json").exists());
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let b = built();
    // verify checks that ExecStart='s binary exists and, for
    // Documentation=man:berth(1), that `man` finds the page. Against the
    // host's units (sysinit.target and the rest: `--root` would need a
    // whole systemd tree), with /usr/bin/berth pointed at the .deb's
    // binary and MANPATH at the .deb's man pages.
    let unit = fs::read_to_string(src("systemd/berth.service")).unwrap();
    assert!(unit.contains("/usr/bin/berth "));
    let packaged_bin = b.deb_root.join("usr/bin/berth");
    let dir = b.dir.join("verify");
    fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("berth.service");
    fs::write(
        &copy,
        unit.replace("/usr/bin/berth ", &format!("{} ", packaged_bin.display())),
    )
    .unwrap();
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .env("MANPATH", b.deb_root.join("usr/share/man")));
    // verify exits 0 on an unknown key or a bad value, but says so.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
}

#[test]
fn unit_settings_and_exposure() {
    let unit = fs::read_to_string(src("systemd/berth.service")).unwrap();
    let settings = unit_settings(&unit);
    let one = |section: &str, key: &str| -> String {
        let v = settings
            .get(&(section.to_string(), key.to_string()))
            .unwrap_or_else(|| panic!("[{section}] {key}= is missing"));
        assert_eq!(v.len(), 1, "[{section}] {key}= set once: {v:?}");
        v[0].clone()
    };
    assert_eq!(one("Service", "Type"), "notify");
    assert_eq!(one("Service", "NotifyAccess"), "main");
    assert_eq!(one("Service", "WatchdogSec"), "30s");
    assert_eq!(one("Service", "Restart"), "always");
    assert_eq!(
        one("Service", "KillMode"),
        "process",
        "containers outlive the agent"
    );
    assert_eq!(one("Service", "LimitNOFILE"), "65536");
    assert_eq!(one("Service", "StateDirectory"), "berth");
    assert_eq!(one("Service", "StateDirectoryMode"), "0700");
    assert_eq!(
        one("Service", "Environment"),
        "DOCKER_CONFIG=/root/.docker",
        "no $HOME without User=: registry credentials need it"
    );
    assert_eq!(one("Service", "ProtectSystem"), "strict");
    assert_eq!(one("Service", "CapabilityBoundingSet"), "");
    assert!(one("Unit", "StartLimitIntervalSec").ends_with("min"));
    assert!(one("Unit", "StartLimitBurst").parse::<u32>().unwrap() > 1);
    assert_eq!(one("Unit", "Documentation"), "man:berth(1)");
    let codes: BTreeSet<u8> = one("Service", "RestartPreventExitStatus")
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    let finals = [
        berth::ExitCode::Drained,
        berth::ExitCode::NotInGroup,
        berth::ExitCode::Config,
    ];
    assert_eq!(codes, finals.iter().map(|c| *c as u8).collect());
    assert!(!codes.contains(&(berth::ExitCode::TempFail as u8)));
    assert_eq!(
        one("Service", "ExecStartPre"),
        "-/usr/bin/berth validate --config /etc/berth/berth.toml"
    );
    assert_eq!(
        one("Service", "ExecStart"),
        "/usr/bin/berth run --config /etc/berth/berth.toml"
    );

    // The exposure score recorded in the unit and in docs/packaging.md is
    // what systemd-analyze says (or better).
    let out = ok(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(src("systemd/berth.service")));
    let report = String::from_utf8(out.stdout).unwrap();
    let measured = number_after(&report, "Overall exposure level for berth.service: ")
        .unwrap_or_else(|| panic!("no overall exposure level in: {report}"));
    let recorded = number_after(&unit, "252): ").expect("the unit records its exposure");
    let docs = fs::read_to_string(src("docs/packaging.md")).unwrap();
    let docs = docs.split_whitespace().collect::<Vec<_>>().join(" ");
    let documented =
        number_after(&docs, "overall exposure level: ").expect("docs/packaging.md records it");
    assert!(
        measured <= recorded,
        "exposure {measured} is worse than the {recorded} recorded in the unit"
    );
    assert_eq!(recorded, documented, "the unit and docs/packaging.md agree");
}

#[test]
fn example_manifest_validates() {
    let out = run(Command::new(BIN)
        .args(["validate", "--config"])
        .arg(src("packaging/berth.toml.example")));
    assert!(out.status.success(), "berth validate: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("valid (1 cluster(s), 2 container(s))"),
        "{}",
        text(&out)
    );
    // A broken copy is refused with the configuration exit code, so the
    // check above means something.
    let dir = built().dir.join("broken");
    fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("berth.toml");
    let example = fs::read_to_string(src("packaging/berth.toml.example")).unwrap();
    fs::write(&broken, example.replace("{version}", "latest")).unwrap();
    let out = run(Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&broken));
    assert_eq!(
        out.status.code(),
        Some(berth::ExitCode::Config as i32),
        "{}",
        text(&out)
    );
}

#[test]
fn man_pages_cover_every_command() {
    let b = built();
    let written: BTreeSet<String> = fs::read_dir(&b.man_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(written, MAN_PAGES.iter().map(|p| p.to_string()).collect());
    let main = fs::read_to_string(b.man_dir.join("berth.1")).unwrap();
    assert!(main.contains(".TH berth 1"), "{main}");
    for cmd in ["run", "validate", "plan", "status", "import"] {
        assert!(
            main.contains(&format!("berth\\-{cmd}(1)")),
            "berth(1) lists {cmd}"
        );
    }
    assert!(
        !main.contains("berth\\-man"),
        "the man command stays hidden"
    );
    let run_page = fs::read_to_string(b.man_dir.join("berth-run.1")).unwrap();
    for option in ["\\-\\-local", "\\-\\-config", "\\-\\-data\\-dir"] {
        assert!(run_page.contains(option), "berth-run(1) documents {option}");
    }
}

/// Shell maintainer scripts must never act on containers, and may restart
/// the agent only with try-restart (only if it runs).
fn never_stops_containers(name: &str, script: &str) {
    let allowed = [
        "try-restart",
        "stop",
        "enable",
        "disable",
        "daemon-reload",
        "is-active",
    ];
    for line in script.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        // Commands, not messages: drop "quoted" text.
        let code: String = line.split('"').step_by(2).collect::<Vec<_>>().join(" ");
        let words: Vec<&str> = code.split_whitespace().collect();
        assert!(
            !words.iter().any(|w| w.ends_with("docker")),
            "{name} calls docker: {line}"
        );
        let Some(i) = words.iter().position(|w| *w == "systemctl") else {
            continue;
        };
        if i > 0 && words[i - 1] == "-v" {
            continue; // `command -v systemctl`
        }
        let verb = words[i + 1..]
            .iter()
            .find(|w| !w.starts_with('-'))
            .unwrap_or_else(|| panic!("{name}: systemctl without a verb: {line}"));
        assert!(allowed.contains(verb), "{name}: systemctl {verb}: {line}");
    }
}

/// The `case` branch label (`remove)`) whose body holds `needle`.
fn case_branch_of(script: &str, needle: &str) -> Option<String> {
    let mut branch = None;
    for line in script.lines().map(str::trim) {
        if line.ends_with(')') && !line.contains(' ') {
            branch = Some(line.to_string());
        } else if line == ";;" {
            branch = None;
        } else if line.contains(needle) {
            return branch;
        }
    }
    None
}

/// `(section, key) -> values` of a unit file (comments and blanks skipped).
fn unit_settings(unit: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut map: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            map.entry((section.clone(), k.to_string()))
                .or_default()
                .push(v.to_string());
        }
    }
    map
}

fn number_after(text: &str, marker: &str) -> Option<f64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].trim_end_matches('.').parse().ok()
}

/// Regular files and symlinks under `root`, relative, with their modes.
fn files_under(root: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                let rel = entry.path().strip_prefix(root).unwrap().to_owned();
                out.insert(
                    rel.to_string_lossy().into_owned(),
                    meta.permissions().mode() & 0o7777,
                );
            }
        }
    }
    out
}

fn src(rel: &str) -> PathBuf {
    Path::new(SRC).join(rel)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (tests/setup.sh installs it): {e}"))
}

/// Runs `cmd` and insists on success.
fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
