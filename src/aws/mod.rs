//! AWS adapters: the only modules that use the AWS SDK.
//!
//! - [`imds`]: the instance metadata service (IMDSv2 only).
//! - [`asg`]: the autoscaling group (desired state, members, health,
//!   lifecycle hooks) and the instance's own tags (EC2).
//! - [`ecr`]: registry tokens for ECR.
//!
//! One factory ([`sdk_config`]) builds the SDK configuration for all of
//! them: region, timeouts, retries. Endpoints follow the SDK's standard
//! overrides: `AWS_ENDPOINT_URL`, per service `AWS_ENDPOINT_URL_AUTO_SCALING`,
//! `AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL_ECR`; IMDS follows
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` (it does not follow `AWS_ENDPOINT_URL`).

pub mod asg;
pub mod ecr;
pub mod imds;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Attempts per AWS call in the SDK's standard retry mode (exponential
/// backoff with jitter, throttling-aware). The agent's own loops add their
/// backoff on top.
pub const AWS_MAX_ATTEMPTS: u32 = 3;
/// Connecting to an AWS endpoint.
pub const AWS_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One attempt of an AWS call.
pub const AWS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// One AWS call, retries included.
pub const AWS_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the SDK configuration every AWS client uses. `region` is the
/// instance's (from IMDS) unless `AWS_REGION` is set.
pub async fn sdk_config(region: &str) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(AWS_MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(AWS_CONNECT_TIMEOUT)
                .operation_attempt_timeout(AWS_ATTEMPT_TIMEOUT)
                .operation_timeout(AWS_OPERATION_TIMEOUT)
                .build(),
        );
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        loader = loader.region(Region::new(region.to_string()));
    }
    loader.load().await
}

/// A failed AWS call, naming the operation and the object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} {target}: {message}")]
pub struct AwsError {
    pub op: &'static str,
    pub target: String,
    pub message: String,
    /// The service said slow down (throttling): back off harder.
    pub throttled: bool,
}

impl AwsError {
    pub(crate) fn new(
        op: &'static str,
        target: impl Into<String>,
        message: impl Into<String>,
    ) -> AwsError {
        AwsError {
            op,
            target: target.into(),
            message: message.into(),
            throttled: false,
        }
    }

    /// From an SDK error, keeping the service's code and message.
    pub(crate) fn sdk<E>(
        op: &'static str,
        target: impl Into<String>,
        e: aws_sdk_autoscaling::error::SdkError<E>,
    ) -> AwsError
    where
        E: aws_sdk_autoscaling::error::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + 'static,
    {
        let code = aws_sdk_autoscaling::error::ProvideErrorMetadata::code(&e).map(str::to_string);
        let throttled = code.as_deref().is_some_and(|c| {
            c.contains("Throttl") || c == "RequestLimitExceeded" || c == "SlowDown"
        });
        let message = match (
            &code,
            aws_sdk_autoscaling::error::ProvideErrorMetadata::message(&e),
        ) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.clone(),
            _ => aws_sdk_autoscaling::error::DisplayErrorContext(&e).to_string(),
        };
        AwsError {
            op,
            target: target.into(),
            message,
            throttled,
        }
    }
}
