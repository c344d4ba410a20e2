//! berth: a boot agent for immutable EC2 fleets.
//!
//! One binary, baked into the machine image and started by systemd at boot,
//! turns "this instance is in group G" into "the fixed set of containers for
//! G is running, at the versions the operators prefer, and stays running".
//!
//! # What it reads
//!
//! - The fleet manifest (`/etc/berth/berth.toml`): agent settings and, per
//!   cluster, the fixed container set ([`manifest`]), or a Compose file it
//!   names (`compose`) and the env files that file names.
//! - The instance identity: IMDSv2 (instance id, region, zone, type, the
//!   `aws:autoscaling:groupName` tag) or, without instance-metadata tags,
//!   `DescribeAutoScalingInstances` ([`aws`]). In local mode a small file
//!   stands in for IMDS and the group ([`local`]).
//! - The group's tags (`DescribeAutoScalingGroups`): the cluster and the
//!   preferred versions ([`desired`]); its lifecycle hooks; IMDS's
//!   `autoscaling/target-lifecycle-state` and `spot/instance-action`.
//! - The pin in the data directory (`/var/lib/berth/pin.json`), once written,
//!   and on EC2 a retirement in progress (`retiring.json`) (`store`).
//! - The Docker engine's state and event stream ([`runtime`]).
//! - The secrets the containers' `secrets` tables reference, when a
//!   container is created: SSM parameters (`GetParameters`) and Secrets
//!   Manager secrets (`BatchGetSecretValue`), or in local mode the local
//!   file's `[secrets]` table (`secrets`).
//!
//! # What it changes
//!
//! - Containers labelled `berth.managed=true` in its namespace: pulls,
//!   creates, starts, restarts, replaces and (on retirement) stops them.
//!   Never any other container.
//! - The data directory, private (0700, files 0600): the pin, written once
//!   per instance, the retirement record, and restart counts.
//! - EC2: its own instance's tags `berth:versions` and `berth:state`; the
//!   group's launch and terminating lifecycle actions (completed); its own
//!   health in the group (`Unhealthy` when a component stays failed).
//! - Local mode: on drift it drains and exits with [`ExitCode::Drained`].
//!
//! Stopping the agent (SIGTERM/SIGINT) never stops the containers.
//!
//! # Exit codes
//!
//! Errors map into a typed [`ExitCode`] (`error::Error::exit_code`):
//!
//! | code | meaning | systemd restarts? |
//! |---|---|---|
//! | 0 | stopped by a signal; or a command succeeded | yes (`Restart=always`), unless systemd itself stopped it |
//! | 1 | unexpected failure (e.g. the status address is in use) | yes |
//! | 2 | bad command line | yes |
//! | 3 | containers drained: retirement, termination, spot, or drift in local mode | no |
//! | 4 | EC2: the instance is not in an autoscaling group | no |
//! | 75 | a temporary failure (I/O, network, AWS or IMDS unreachable), from one-shot commands such as `berth plan` | yes |
//! | 78 | invalid configuration a person must fix: manifest, local file, tags, a status address that is not loopback, a corrupt file in the data dir | no |
//!
//! The systemd unit lists 3, 4 and 78 in `RestartPreventExitStatus=`. The
//! daemon itself retries what can pass (IMDS, AWS, the engine, a full or
//! read-only data dir) in-process, saying in its status what it waits for,
//! so it does not depend on systemd's restarts (and their start limit).
//!
//! # Layout
//!
//! | module | responsibility |
//! |---|---|
//! | `manifest` | the manifest's types, parsing and validation (pure) |
//! | `compose` | a Compose file's services as a cluster's containers, and `berth import compose` (pure; env files through a reader it is given) |
//! | `tags` | every `berth:*` tag and lifecycle string (one home per fact) |
//! | `desired` | identity, group tags → cluster and preferred versions; the one `drift()` (pure) |
//! | `local` | the local-mode file (identity, tags, secrets) |
//! | `plan` | plan building: manifest + versions → concrete container specs (pure) |
//! | `store` | the data dir: the pin and the retirement record, private and atomic |
//! | [`backoff`] | retry and restart schedules, and the one retry loop |
//! | [`rollout`] | the rollout gate, the polling schedule and the doorbell rules (pure) |
//! | `runtime` | the `ContainerRuntime` seam and its Docker adapter (the only user of bollard); registry credentials and docker's credential helpers |
//! | `secrets` | secret references (`ssm:`, `secretsmanager:`): parsing; resolution at create through the `SecretStore` seam, batched, cached, retried (no SDK) |
//! | `supervisor` | keeps the pinned containers running: a pure reducer (`state`), its executor, the report, the drain |
//! | `status` | the status model, the loopback HTTP API, `berth status` |
//! | `aws` | the AWS adapters (the only users of the AWS SDK): the `GroupApi` seam, the secret stores |
//! | `daemon` | `berth run`: wiring and shutdown, boot, the local watch, the EC2 tasks, the rollout driver |
//! | `error` | the errors `berth` ends with and their exit codes |
//! | [`cli`] | the command line (`main` only parses and calls it) |
//! | `telemetry` | logging setup |
//!
//! Only [`cli`], [`rollout`] and [`backoff`] are public: the simulation and
//! property tests drive the latter two; the rest is the binary's own.

mod aws;
pub mod backoff;
pub mod cli;
mod compose;
mod daemon;
mod desired;
mod error;
mod local;
mod manifest;
mod plan;
pub mod rollout;
mod runtime;
mod secrets;
mod status;
mod store;
mod supervisor;
mod tags;
mod telemetry;

pub use error::ExitCode;
