//! The errors `berth` ends with, and the exit code each maps to.
//!
//! The rule: [`ExitCode::Config`] (78) only for what a person must fix (the
//! manifest, the group's tags, a corrupt file in the data dir); systemd does
//! not restart on it. Anything that may pass by itself (I/O, the network,
//! AWS or IMDS unreachable) is [`ExitCode::TempFail`] (75), on which systemd
//! restarts the agent. The daemon itself retries those in-process wherever
//! it can, so it rarely needs to exit at all.

use std::net::SocketAddr;

/// Process exit codes (see the table in the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Stopped by a signal, or the command succeeded.
    Ok = 0,
    /// Unexpected failure.
    Failure = 1,
    /// Bad command line.
    Usage = 2,
    /// Containers drained: retirement, termination, spot, or local drift.
    Drained = 3,
    /// EC2: the instance is not a member of an autoscaling group.
    NotInGroup = 4,
    /// A temporary failure (I/O, network, AWS or IMDS unreachable): try again (`EX_TEMPFAIL`).
    TempFail = 75,
    /// Invalid configuration a person must fix (`EX_CONFIG`).
    Config = 78,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}

/// Why `berth` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest, the local file, the group's tags or a file in the data
    /// dir is invalid: a person must fix it.
    #[error("{0:#}")]
    Config(anyhow::Error),
    /// This instance is not in an autoscaling group.
    #[error(
        "instance {instance_id} is not in an autoscaling group (no {tag} tag in IMDS, and DescribeAutoScalingInstances knows no group); berth runs only on group members, or with --local"
    )]
    NotInGroup {
        instance_id: String,
        tag: &'static str,
    },
    /// Something that may pass by itself: I/O, the network, AWS or IMDS.
    #[error("{0:#}")]
    Transient(anyhow::Error),
    /// The status API cannot listen.
    #[error("cannot listen on {addr} for the status API (agent.status_addr): {source}")]
    StatusAddr {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Error {
    /// The exit code this error ends the process with.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config(_) => ExitCode::Config,
            Error::NotInGroup { .. } => ExitCode::NotInGroup,
            Error::Transient(_) => ExitCode::TempFail,
            Error::StatusAddr { .. } => ExitCode::Failure,
        }
    }
}
