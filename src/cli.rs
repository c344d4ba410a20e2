//! The `berth` command line. See the crate docs for the contract and exit codes.
//! `main` parses the command line and calls [`main`] here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::daemon::{self, Outcome, RunOptions, SourceSpec};
use crate::error::{Error, ExitCode};
use crate::manifest::{self, LogFormat, Manifest};
use crate::plan::Plan;
use crate::supervisor::DrainReason;

/// A boot agent for immutable EC2 fleets: keeps the fixed container set of
/// this instance's group running, at the pinned versions, and retires the
/// instance when the group prefers other versions.
#[derive(Parser)]
#[command(name = "berth", version, propagate_version = true)]
struct Cli {
    /// Log format (default: the manifest's agent.log_format, else text).
    #[arg(long, global = true, value_enum, env = "BERTH_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// The fleet manifest.
    #[arg(long, short = 'c', env = "BERTH_CONFIG", default_value = manifest::DEFAULT_MANIFEST_PATH)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: pin, pull, start and supervise the containers (the systemd service).
    ///
    /// Without --local it runs on EC2: identity from IMDSv2, desired state
    /// from the autoscaling group's tags. Stopping the agent never stops the
    /// containers. Exit codes: 0 stopped by a signal, 3 drained (retirement or
    /// termination), 4 not in an autoscaling group, 75 temporary failure,
    /// 78 bad configuration.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Local mode: FILE stands in for the instance identity and the group's
        /// tags (instance_id, group, [tags]); it is re-read while running.
        #[arg(long, value_name = "FILE")]
        local: Option<PathBuf>,
        /// Where the pin is kept (default: the manifest's agent.data_dir).
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Loopback address of the status API (default: the manifest's agent.status_addr;
        /// another address needs agent.status_allow_remote).
        #[arg(long, env = "BERTH_STATUS_ADDR")]
        status_addr: Option<SocketAddr>,
        /// Container name prefix and namespace label (default: the manifest's agent.namespace).
        #[arg(long, env = "BERTH_NAMESPACE")]
        namespace: Option<String>,
    },
    /// Check a manifest (and optionally a local file); report every problem with its field path.
    ///
    /// Exit code 0 when valid, 78 when not. Used as the unit's ExecStartPre.
    Validate {
        #[command(flatten)]
        config: ConfigArg,
        /// Also check this local-mode file and resolve it against the manifest.
        #[arg(long, value_name = "FILE")]
        local: Option<PathBuf>,
    },
    /// Show what would run here, resolved, without starting anything.
    ///
    /// Shows the existing pin when there is one for this instance; otherwise
    /// what would be pinned now. Without --local it asks IMDS and the group.
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        /// Local-mode file (identity and tags).
        #[arg(long, value_name = "FILE")]
        local: Option<PathBuf>,
        /// Where the pin is kept (default: the manifest's agent.data_dir).
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show this instance's components, versions, states and restarts (from the running agent).
    Status {
        /// The agent's status address (default: the manifest's agent.status_addr, else 127.0.0.1:7878).
        #[arg(long, env = "BERTH_STATUS_ADDR")]
        addr: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the equivalent manifest TOML of another format's file, to move over to the manifest.
    ///
    /// `berth import compose FILE` prints the services of a Compose file as
    /// a [clusters.<name>] with its [[clusters.<name>.containers]], exactly
    /// what `compose = "FILE"` in the manifest would run. Relative paths
    /// resolve against FILE's directory; env files are read into env, so the
    /// output holds their values. Exit code 0, or 78 when FILE has anything
    /// berth cannot map (every problem is listed).
    Import {
        /// The format of FILE.
        #[arg(value_enum)]
        format: ImportFormat,
        /// The file to import.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The cluster's name (default: the Compose file's name, else its file name up to the first dot).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Write the manual pages (berth.1, berth-<command>.1) into DIR, for packaging.
    #[command(hide = true)]
    Man {
        /// The directory to write them into (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// What `berth import` reads.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ImportFormat {
    /// A Compose file (compose-spec).
    Compose,
}

/// Runs the command line; returns the process's exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run {
            config,
            local,
            data_dir,
            status_addr,
            namespace,
        } => run(
            cli.log_format,
            &config.config,
            local,
            data_dir,
            status_addr,
            namespace,
        ),
        Command::Validate { config, local } => validate(&config.config, local.as_deref()),
        Command::Plan {
            config,
            local,
            data_dir,
            json,
        } => plan(&config.config, local, data_dir, json),
        Command::Status { addr, config, json } => status(addr, &config.config, json),
        Command::Import {
            format: ImportFormat::Compose,
            file,
            cluster,
        } => import_compose(&file, cluster.as_deref()),
        Command::Man { dir } => man(&dir),
    };
    code.into()
}

fn run(
    log_format: Option<LogFormat>,
    config: &Path,
    local: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    status_addr: Option<SocketAddr>,
    namespace: Option<String>,
) -> ExitCode {
    let loaded = Manifest::load(config);
    let format = log_format
        .or_else(|| loaded.as_ref().ok().map(|m| m.agent.log_format))
        .unwrap_or_default();
    crate::telemetry::init(format);
    let mut manifest = match loaded {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("invalid manifest: {e}");
            return ExitCode::Config;
        }
    };
    if let Some(ns) = namespace {
        if !manifest::is_name(&ns) {
            tracing::error!(namespace = %ns, "invalid --namespace: use letters, digits and '-' (a container name prefix)");
            return ExitCode::Config;
        }
        manifest.agent.namespace = ns;
    }
    let status_addr =
        status_addr.unwrap_or_else(|| manifest.agent.status_addr.parse().expect("validated"));
    if let Err(e) = crate::status::check_addr(status_addr, manifest.agent.status_allow_remote) {
        tracing::error!("invalid status address (--status-addr, BERTH_STATUS_ADDR): {e}");
        return ExitCode::Config;
    }
    let opts = RunOptions {
        data_dir: data_dir.unwrap_or_else(|| manifest.agent.data_dir.clone()),
        manifest,
        source: local.map_or(SourceSpec::Ec2, SourceSpec::Local),
        status_addr,
    };
    match runtime().block_on(daemon::run(opts)) {
        Ok(Outcome::Stopped) => ExitCode::Ok,
        Ok(Outcome::Drained(reason)) => {
            let what = match reason {
                DrainReason::Drift | DrainReason::Retire => "retired",
                DrainReason::Terminating | DrainReason::Spot => "terminated",
            };
            tracing::info!(
                code = ExitCode::Drained as u8,
                reason = reason.describe(),
                "drained ({what}): exiting"
            );
            ExitCode::Drained
        }
        Err(e) => {
            tracing::error!(code = e.exit_code() as u8, "{e}");
            e.exit_code()
        }
    }
}

fn validate(config: &Path, local: Option<&Path>) -> ExitCode {
    let m = match Manifest::load(config) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("invalid: {e}");
            return ExitCode::Config;
        }
    };
    if let Some(l) = local {
        match daemon::boot::resolve_local(l, &m) {
            Ok((id, d)) => println!(
                "{}: instance {} in group {} runs cluster {}: {}",
                l.display(),
                id.instance_id,
                id.group,
                d.cluster,
                d.versions
                    .iter()
                    .map(|(c, v)| format!("{c}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Err(e) => {
                eprintln!("invalid: {e:#}");
                return ExitCode::Config;
            }
        }
    }
    let containers: usize = m.clusters.values().map(|c| c.containers.len()).sum();
    println!(
        "{}: valid ({} cluster(s), {} container(s))",
        config.display(),
        m.clusters.len(),
        containers
    );
    ExitCode::Ok
}

/// `berth import compose FILE`: the manifest TOML on stdout, or every
/// problem on stderr and exit code 78.
fn import_compose(file: &Path, cluster: Option<&str>) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("invalid: cannot read {}: {e}", file.display());
            return ExitCode::Config;
        }
    };
    let name = match cluster
        .map(str::to_string)
        .or_else(|| crate::compose::default_cluster_name(&text, file))
    {
        Some(n) => n,
        None => {
            eprintln!(
                "invalid: {}: name the cluster with --cluster",
                file.display()
            );
            return ExitCode::Config;
        }
    };
    let dir = crate::compose::absolute_dir(file);
    let read = |p: &Path| std::fs::read_to_string(p);
    match crate::compose::import(&text, &file.display().to_string(), &dir, &read, &name) {
        Ok(toml) => {
            print!("{toml}");
            ExitCode::Ok
        }
        Err(errors) => {
            eprintln!(
                "invalid: {}",
                manifest::ManifestError::Invalid {
                    path: file.to_path_buf(),
                    errors,
                }
            );
            ExitCode::Config
        }
    }
}

/// Writes the manual pages with clap_mangen: berth(1) and one page per
/// visible command, which berth(1) lists.
fn man(dir: &Path) -> ExitCode {
    let written =
        std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(Cli::command(), dir));
    match written {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            eprintln!(
                "error: cannot write the manual pages into {}: {e}",
                dir.display()
            );
            ExitCode::Failure
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn plan(config: &Path, local: Option<PathBuf>, data_dir: Option<PathBuf>, json: bool) -> ExitCode {
    let m = match Manifest::load(config) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("invalid: {e}");
            return ExitCode::Config;
        }
    };
    let data_dir = data_dir.unwrap_or_else(|| m.agent.data_dir.clone());
    let spec = local.map_or(SourceSpec::Ec2, SourceSpec::Local);
    let resolved = runtime().block_on(async {
        // One attempt: a command line tool should not wait for IMDS or AWS.
        let cancel = tokio_util::sync::CancellationToken::new();
        cancel.cancel();
        let source = daemon::boot::connect(&spec, &cancel, &|m: String| eprintln!("{m}")).await?;
        let source = source.ok_or_else(|| {
            Error::Transient(anyhow::anyhow!(
                "cannot identify this instance from IMDS and its group: not on EC2? use --local FILE"
            ))
        })?;
        source.desired(&m).await.map_err(|e| classify(e, matches!(spec, SourceSpec::Local(_))))
    });
    let (identity, desired) = match resolved {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return e.exit_code();
        }
    };
    let pinned = match crate::store::Store::at(&data_dir).load_pin() {
        Ok(p) => p.filter(|p| p.instance_id == identity.instance_id),
        Err(e) => {
            eprintln!("error: {e}");
            return if e.needs_person() {
                ExitCode::Config
            } else {
                ExitCode::TempFail
            };
        }
    };
    let is_pinned = pinned.is_some();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // Output shows environment names, never values.
    let p = pinned
        .unwrap_or_else(|| Plan::build(&identity, &desired, &m, now))
        .redacted();
    if json {
        let out =
            serde_json::json!({ "pinned": is_pinned, "plan": p, "preferred": desired.versions });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("plan serializes")
        );
        return ExitCode::Ok;
    }
    println!(
        "instance {}  group {}  cluster {}  plan {}  ({})",
        p.instance_id,
        p.group,
        p.cluster,
        p.id,
        if is_pinned {
            "pinned"
        } else {
            "not pinned yet: this is what `berth run` would pin now"
        }
    );
    println!();
    println!(
        "{:<5} {:<16} {:<12} {:<12} {:<40} {:<16} ENV",
        "WAVE", "COMPONENT", "VERSION", "PREFERRED", "IMAGE", "DEPENDS ON"
    );
    for (w, wave) in p.waves().iter().enumerate() {
        for &i in wave {
            let c = &p.components[i];
            let preferred = desired.versions.get(&c.name).map_or("-", String::as_str);
            println!(
                "{:<5} {:<16} {:<12} {:<12} {:<40} {:<16} {}",
                w + 1,
                c.name,
                c.version,
                preferred,
                c.create_ref(),
                c.spec.depends_on.join(","),
                c.spec
                    .env
                    .keys()
                    .chain(c.spec.secrets.keys())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
    }
    ExitCode::Ok
}

/// Sorts a desired-state error: bad tags or a bad local file are for a
/// person; anything else (AWS, IMDS, I/O) may pass.
fn classify(e: anyhow::Error, local: bool) -> Error {
    let config = local
        || e.is::<crate::desired::TagErrors>()
        || e.downcast_ref::<crate::aws::AwsError>()
            .is_some_and(|a| !a.is_retryable());
    if config {
        Error::Config(e)
    } else {
        Error::Transient(e)
    }
}

fn status(addr: Option<String>, config: &Path, json: bool) -> ExitCode {
    let addr = addr.unwrap_or_else(|| {
        Manifest::load(config)
            .map(|m| m.agent.status_addr)
            .unwrap_or_else(|_| manifest::DEFAULT_STATUS_ADDR.to_string())
    });
    match runtime().block_on(crate::status::fetch(&addr)) {
        Ok(s) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&s).expect("status serializes")
            );
            ExitCode::Ok
        }
        Ok(s) => {
            print!("{}", crate::status::render(&s));
            ExitCode::Ok
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::Failure
        }
    }
}
