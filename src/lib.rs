//! berth: a boot agent for immutable EC2 fleets.
//!
//! One binary, baked into the machine image and started by systemd at boot,
//! turns "this instance is in group G" into "the fixed set of containers for
//! G is running, at the versions the operators prefer, and stays running".
//!
//! # What it reads
//!
//! - The fleet manifest (`/etc/berth/berth.toml`): agent settings and, per
//!   cluster, the fixed container set ([`manifest`]).
//! - The instance identity: IMDSv2 (instance id, region, zone, type, the
//!   `aws:autoscaling:groupName` tag) or, without instance-metadata tags,
//!   `DescribeAutoScalingInstances` ([`aws`]). In local mode a small file
//!   stands in for IMDS and the group ([`local`]).
//! - The group's tags (`DescribeAutoScalingGroups`): the cluster and the
//!   preferred versions ([`desired`]); its lifecycle hooks; IMDS's
//!   `autoscaling/target-lifecycle-state` and `spot/instance-action`.
//! - The pin in the data directory (`/var/lib/berth/pin.json`), once written
//!   ([`plan`]).
//! - The Docker engine's state and event stream ([`runtime`]).
//!
//! # What it changes
//!
//! - Containers labelled `berth.managed=true` in its namespace: pulls,
//!   creates, starts, restarts, replaces and (on retirement) stops them.
//!   Never any other container.
//! - The pin, written once per instance.
//! - EC2: its own instance's tags `berth:versions` and `berth:state`; the
//!   group's launch and terminating lifecycle actions (completed); its own
//!   health in the group (`Unhealthy` when a component stays failed).
//! - Local mode: on drift it drains and exits with [`exit::RETIRED`].
//!
//! Stopping the agent (SIGTERM/SIGINT) never stops the containers.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 ([`exit::OK`]) | stopped by a signal; or a command succeeded |
//! | 1 ([`exit::FAILURE`]) | unexpected failure (e.g. the status address is in use) |
//! | 2 ([`exit::USAGE`]) | bad command line |
//! | 3 ([`exit::RETIRED`]) | containers drained: drift (local mode), or the group is terminating the instance |
//! | 4 ([`exit::NOT_IN_GROUP`]) | EC2: the instance is not in an autoscaling group |
//! | 78 ([`exit::CONFIG`]) | invalid manifest, local file or pin: fix the configuration |
//!
//! The systemd unit lists 3, 4 and 78 in `RestartPreventExitStatus=`.
//!
//! # Layout
//!
//! | module | responsibility |
//! |---|---|
//! | [`manifest`] | the manifest's types, parsing and validation (pure) |
//! | [`desired`] | identity, group tags → cluster and preferred versions, drift (pure) |
//! | [`local`] | the local-mode file (identity + tags) |
//! | [`plan`] | plan building and the pin on disk |
//! | [`backoff`] | retry and restart schedules (pure) |
//! | [`runtime`] | the Docker engine adapter (the only user of bollard) and registry credentials |
//! | [`supervisor`] | keeps the pinned containers running: events, decisions, actions, drain |
//! | [`status`] | the status model, the loopback HTTP API, `berth status` |
//! | [`aws`] | the AWS adapters (the only users of the AWS SDK): SDK config, IMDS, the group, ECR |
//! | [`agent`] | `berth run`: sources, pinning, drift watch, EC2 lifecycle, shutdown |
//! | [`telemetry`] | logging setup |

pub mod agent;
pub mod aws;
pub mod backoff;
pub mod desired;
pub mod local;
pub mod manifest;
pub mod plan;
pub mod rollout;
pub mod runtime;
pub mod status;
pub mod supervisor;
pub mod telemetry;

/// Process exit codes (see the table in the crate docs).
pub mod exit {
    /// Stopped by a signal, or the command succeeded.
    pub const OK: u8 = 0;
    /// Unexpected failure.
    pub const FAILURE: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// Drift: containers drained; the instance is to be retired.
    pub const RETIRED: u8 = 3;
    /// EC2: the instance is not a member of an autoscaling group.
    pub const NOT_IN_GROUP: u8 = 4;
    /// Invalid manifest, local file or pin (sysexits' `EX_CONFIG`).
    pub const CONFIG: u8 = 78;
}
