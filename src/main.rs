//! The `berth` command line. See the crate docs for the contract and exit codes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use berth::agent::{self, Outcome, RunOptions, Source, SourceSpec};
use berth::exit;
use berth::manifest::{self, LogFormat, Manifest};
use berth::plan::Plan;

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
    /// termination), 4 not in an autoscaling group, 78 bad configuration.
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
        /// Loopback address of the status API (default: the manifest's agent.status_addr).
        #[arg(long, env = "BERTH_STATUS_ADDR")]
        status_addr: Option<SocketAddr>,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            local,
            data_dir,
            status_addr,
        } => {
            let loaded = Manifest::load(&config.config);
            let format = cli
                .log_format
                .or_else(|| loaded.as_ref().ok().map(|m| m.agent.log_format))
                .unwrap_or_default();
            berth::telemetry::init(format);
            let manifest = match loaded {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!("invalid manifest: {e}");
                    return ExitCode::from(exit::CONFIG);
                }
            };
            let status_addr = status_addr
                .unwrap_or_else(|| manifest.agent.status_addr.parse().expect("validated"));
            let opts = RunOptions {
                data_dir: data_dir.unwrap_or_else(|| manifest.agent.data_dir.clone()),
                manifest,
                source: local.map_or(SourceSpec::Ec2, SourceSpec::Local),
                status_addr,
            };
            match runtime().block_on(agent::run(opts)) {
                Ok(Outcome::Stopped) => ExitCode::from(exit::OK),
                Ok(Outcome::Retired) => {
                    tracing::info!(code = exit::RETIRED, "retired: exiting");
                    ExitCode::from(exit::RETIRED)
                }
                Err(e) => {
                    tracing::error!("{e:#}");
                    if e.is::<berth::plan::PinError>() {
                        ExitCode::from(exit::CONFIG)
                    } else if e.is::<agent::NotInGroup>() {
                        ExitCode::from(exit::NOT_IN_GROUP)
                    } else {
                        ExitCode::from(exit::FAILURE)
                    }
                }
            }
        }
        Command::Validate { config, local } => validate(&config.config, local.as_deref()),
        Command::Plan {
            config,
            local,
            data_dir,
            json,
        } => plan(&config.config, local, data_dir, json),
        Command::Status { addr, config, json } => status(addr, &config.config, json),
    }
}

fn validate(config: &Path, local: Option<&Path>) -> ExitCode {
    let m = match Manifest::load(config) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("invalid: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    if let Some(l) = local {
        match agent::resolve_local(l, &m) {
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
                return ExitCode::from(exit::CONFIG);
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
    ExitCode::from(exit::OK)
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
            return ExitCode::from(exit::CONFIG);
        }
    };
    let data_dir = data_dir.unwrap_or_else(|| m.agent.data_dir.clone());
    let spec = local.map_or(SourceSpec::Ec2, SourceSpec::Local);
    let resolved = runtime().block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let ec2 = matches!(spec, SourceSpec::Ec2);
        if ec2 {
            // One attempt: a command line tool should not wait for IMDS.
            cancel.cancel();
        }
        let source = Source::connect(&spec, &cancel, &|m: String| eprintln!("{m}")).await?;
        let source = source.ok_or_else(|| anyhow::anyhow!("cannot identify this instance from IMDS and its group: not on EC2? use --local FILE"))?;
        source.desired(&m).await
    });
    let (identity, desired) = match resolved {
        Ok(x) => x,
        Err(e) => {
            eprintln!("invalid: {e:#}");
            return ExitCode::from(if e.is::<agent::NotInGroup>() {
                exit::NOT_IN_GROUP
            } else {
                exit::CONFIG
            });
        }
    };
    let pinned = match Plan::load(&data_dir) {
        Ok(p) => p.filter(|p| p.instance_id == identity.instance_id),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let is_pinned = pinned.is_some();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let p = pinned.unwrap_or_else(|| Plan::build(&identity, &desired, &m, now));
    if json {
        let out =
            serde_json::json!({ "pinned": is_pinned, "plan": p, "preferred": desired.versions });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("plan serializes")
        );
        return ExitCode::from(exit::OK);
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
        "{:<5} {:<16} {:<12} {:<12} {:<40} DEPENDS ON",
        "WAVE", "COMPONENT", "VERSION", "PREFERRED", "IMAGE"
    );
    for (w, wave) in p.waves().iter().enumerate() {
        for &i in wave {
            let c = &p.components[i];
            let preferred = desired.versions.get(&c.name).map_or("-", String::as_str);
            println!(
                "{:<5} {:<16} {:<12} {:<12} {:<40} {}",
                w + 1,
                c.name,
                c.version,
                preferred,
                c.create_ref(),
                c.spec.depends_on.join(",")
            );
        }
    }
    ExitCode::from(exit::OK)
}

fn status(addr: Option<String>, config: &Path, json: bool) -> ExitCode {
    let addr = addr.unwrap_or_else(|| {
        Manifest::load(config)
            .map(|m| m.agent.status_addr)
            .unwrap_or_else(|_| manifest::DEFAULT_STATUS_ADDR.to_string())
    });
    match runtime().block_on(berth::status::fetch(&addr)) {
        Ok(s) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&s).expect("status serializes")
            );
            ExitCode::from(exit::OK)
        }
        Ok(s) => {
            print!("{}", berth::status::render(&s));
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}
