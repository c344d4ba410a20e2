//! AWS adapters: the only modules that use the AWS SDK.
//!
//! - [`imds`]: the instance metadata service (IMDSv2 only).
//! - [`asg`]: the autoscaling group (desired state, members, health,
//!   lifecycle hooks) and the instance's own tags (EC2).
//! - [`ecr`]: registry tokens for ECR.
//! - CloudWatch alarms (the rollout's alarm gate) are read through [`asg::Group`]
//!   too: the gate's inputs come through one seam.
//! - [`secrets`]: SSM Parameter Store and Secrets Manager, behind
//!   [`crate::secrets::SecretStore`].
//!
//! One factory ([`sdk_config`]) builds the SDK configuration for all of
//! them: region, timeouts, retries. Endpoints follow the SDK's standard
//! overrides: `AWS_ENDPOINT_URL`, per service `AWS_ENDPOINT_URL_AUTO_SCALING`,
//! `AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL_ECR`, `AWS_ENDPOINT_URL_CLOUDWATCH`,
//! `AWS_ENDPOINT_URL_SSM`, `AWS_ENDPOINT_URL_SECRETS_MANAGER`; IMDS follows
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` (it does not follow `AWS_ENDPOINT_URL`).

pub mod asg;
pub mod ecr;
#[cfg(test)]
pub mod fake;
pub mod imds;
pub mod secrets;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// The SDK makes one attempt per call: exactly one layer retries, and it
/// is berth's own ([`crate::backoff::retry`] with [`crate::backoff::AWS_CALL`]),
/// which knows the operation, the deadline, cancellation and whether an
/// error is worth retrying ([`AwsError::is_retryable`]).
pub const AWS_SDK_ATTEMPTS: u32 = 1;
/// Connecting to an AWS endpoint.
pub const AWS_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One AWS call.
pub const AWS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the SDK configuration every AWS client uses. `region` is the
/// instance's (from IMDS) unless `AWS_REGION` is set.
pub async fn sdk_config(region: &str) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(AWS_SDK_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(AWS_CONNECT_TIMEOUT)
                .operation_attempt_timeout(AWS_ATTEMPT_TIMEOUT)
                .operation_timeout(AWS_ATTEMPT_TIMEOUT)
                .build(),
        );
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        loader = loader.region(Region::new(region.to_string()));
    }
    loader.load().await
}

/// The AWS operations berth calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsOp {
    ImdsGet,
    DescribeAutoScalingInstances,
    DescribeAutoScalingGroups,
    DescribeLifecycleHooks,
    CompleteLifecycleAction,
    RecordLifecycleActionHeartbeat,
    SetInstanceHealth,
    DescribeInstances,
    TerminateInstanceInAutoScalingGroup,
    CreateTags,
    CreateOrUpdateTags,
    DescribeAlarms,
    GetParameters,
    BatchGetSecretValue,
}

impl std::fmt::Display for AwsOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            AwsOp::ImdsGet => "IMDS get",
            other => return write!(f, "{other:?}"),
        };
        f.write_str(s)
    }
}

/// A failed AWS call, naming the operation and the object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} {target}: {message}")]
pub struct AwsError {
    pub op: AwsOp,
    pub target: String,
    pub message: String,
    /// The service said slow down (throttling): back off harder.
    pub throttled: bool,
    /// Worth trying again: throttling, a 5xx, a timeout, a network failure.
    /// Not: access denied, a validation error, a missing resource.
    pub retryable: bool,
}

/// Service error codes that are never worth retrying: only a person (an
/// IAM policy, a request berth should not make) can fix them.
const PERMANENT_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "AuthFailure",
    "InvalidClientTokenId",
    "ValidationError",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "MissingParameter",
    "InvalidInstanceID.NotFound",
    "InvalidInstanceID.Malformed",
];

impl AwsError {
    pub(crate) fn new(
        op: AwsOp,
        target: impl Into<String>,
        message: impl Into<String>,
    ) -> AwsError {
        AwsError {
            op,
            target: target.into(),
            message: message.into(),
            throttled: false,
            retryable: true,
        }
    }

    /// A permanent error: retrying cannot help.
    pub(crate) fn permanent(
        op: AwsOp,
        target: impl Into<String>,
        message: impl Into<String>,
    ) -> AwsError {
        AwsError {
            retryable: false,
            ..AwsError::new(op, target, message)
        }
    }

    /// Whether trying again can help (see [`AwsError::retryable`]).
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// From an SDK error, keeping the service's code and message, and
    /// classifying it: throttling, 5xx, timeouts and network failures are
    /// retryable; access denied, validation and other 4xx are permanent.
    pub(crate) fn sdk<E>(
        op: AwsOp,
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
        use aws_sdk_autoscaling::error::{ProvideErrorMetadata, SdkError};
        let code = ProvideErrorMetadata::code(&e).map(str::to_string);
        let throttled = code.as_deref().is_some_and(|c| {
            c.contains("Throttl") || c == "RequestLimitExceeded" || c == "SlowDown"
        });
        let status = match &e {
            SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
            SdkError::ResponseError(r) => Some(r.raw().status().as_u16()),
            _ => None,
        };
        let permanent_code = code
            .as_deref()
            .is_some_and(|c| PERMANENT_CODES.contains(&c));
        let retryable = match &e {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
            SdkError::ConstructionFailure(_) => false,
            _ if throttled => true,
            _ if permanent_code => false,
            _ => status.is_none_or(|s| s >= 500 || s == 429),
        };
        let message = match (&code, ProvideErrorMetadata::message(&e)) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.clone(),
            _ => aws_sdk_autoscaling::error::DisplayErrorContext(&e).to_string(),
        };
        AwsError {
            op,
            target: target.into(),
            message,
            throttled,
            retryable,
        }
    }
}

impl crate::backoff::Retryable for AwsError {
    fn is_retryable(&self) -> bool {
        self.retryable
    }
    fn is_throttled(&self) -> bool {
        self.throttled
    }
}

#[cfg(test)]
mod tests {
    use super::AwsOp;

    /// The IAM action each operation needs, for the policy check below.
    fn iam_action(op: AwsOp) -> Option<String> {
        use AwsOp::*;
        let service = match op {
            ImdsGet => return None,
            DescribeAutoScalingInstances
            | DescribeAutoScalingGroups
            | DescribeLifecycleHooks
            | CompleteLifecycleAction
            | RecordLifecycleActionHeartbeat
            | SetInstanceHealth
            | TerminateInstanceInAutoScalingGroup
            | CreateOrUpdateTags => "autoscaling",
            DescribeInstances | CreateTags => "ec2",
            DescribeAlarms => "cloudwatch",
            GetParameters => "ssm",
            BatchGetSecretValue => "secretsmanager",
        };
        Some(format!("{service}:{op:?}"))
    }

    /// docs/iam-policy.json grants every action the code calls; the
    /// secret stores' reads are scoped by a path or name prefix, and KMS
    /// decryption only through those two services.
    #[test]
    fn the_iam_policy_grants_every_call_the_code_makes() {
        use AwsOp::*;
        let policy: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/iam-policy.json")).unwrap();
        let statements = policy["Statement"].as_array().unwrap();
        let granting = |action: &str| -> Vec<&serde_json::Value> {
            statements
                .iter()
                .filter(|st| match &st["Action"] {
                    serde_json::Value::String(a) => a == action,
                    serde_json::Value::Array(a) => a.iter().any(|x| x == action),
                    _ => false,
                })
                .collect()
        };
        let all = [
            ImdsGet,
            DescribeAutoScalingInstances,
            DescribeAutoScalingGroups,
            DescribeLifecycleHooks,
            CompleteLifecycleAction,
            RecordLifecycleActionHeartbeat,
            SetInstanceHealth,
            DescribeInstances,
            TerminateInstanceInAutoScalingGroup,
            CreateTags,
            CreateOrUpdateTags,
            DescribeAlarms,
            GetParameters,
            BatchGetSecretValue,
        ];
        for op in all {
            if let Some(a) = iam_action(op) {
                assert!(!granting(&a).is_empty(), "docs/iam-policy.json lacks {a}");
            }
        }
        // BatchGetSecretValue needs GetSecretValue on each secret too.
        let scoped = |action: &str, arn_prefix: &str| {
            let st = granting(action);
            assert_eq!(st.len(), 1, "{action}");
            let r = st[0]["Resource"].as_str().unwrap_or_default();
            assert!(
                r.starts_with(arn_prefix) && r.ends_with("/*") && r.len() > arn_prefix.len() + 2,
                "{action} is scoped by a prefix: {r}"
            );
        };
        scoped("ssm:GetParameters", "arn:aws:ssm:*:*:parameter/");
        scoped(
            "secretsmanager:GetSecretValue",
            "arn:aws:secretsmanager:*:*:secret:",
        );
        let kms = granting("kms:Decrypt");
        assert_eq!(kms.len(), 1);
        let via = &kms[0]["Condition"]["StringLike"]["kms:ViaService"];
        let via: Vec<&str> = via
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            via,
            ["ssm.*.amazonaws.com", "secretsmanager.*.amazonaws.com"]
        );
    }
}
