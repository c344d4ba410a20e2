//! A private moto server (`python3 -m moto.server`, moto 5.2.1) on a free
//! loopback port: fake Auto Scaling, EC2, CloudWatch, ECR, SSM and Secrets Manager APIs for the
//! AWS side of berth, all on one port. Each [`Moto`] is its own process with
//! its own state, so parallel tests never see each other's groups.
//!
//! [`Moto::sdk_config`] gives an `SdkConfig` for the Rust SDK (region
//! `us-east-1`, static `test` credentials, endpoint = moto) and
//! [`Moto::env`] the environment a spawned `berth` needs. The helper methods
//! ([`Moto::create_group`], [`Moto::instance_tags`], ...) are synchronous:
//! they run the SDK on a private runtime in a helper thread (see
//! [`block_on`]), so they work from plain `#[test]`s and from inside
//! `#[tokio::test]`s alike.
//!
//! moto 5.2.1 quirks worth knowing (checked by `tests/aws_support_selftest.rs`):
//!
//! * Only AMIs of moto's built-in list exist (e.g. [`MOTO_AMI`],
//!   `ami-12c6146b`); a group's instances are launched synchronously by
//!   `CreateAutoScalingGroup`, straight to `InService`/`Healthy`: there is no
//!   `Pending`/`Pending:Wait`, even with a launching lifecycle hook.
//! * Instances get the tags `aws:autoscaling:groupName`,
//!   `aws:ec2launchtemplate:id` and `aws:ec2launchtemplate:version`.
//! * `SetInstanceHealth` only flips `HealthStatus` (`Unhealthy` stays a
//!   member, is not replaced; [`super::fleet`] replaces it as Auto Scaling
//!   would).
//! * `PutLifecycleHook` without a notification target stores fake
//!   `NotificationTargetARN`/`RoleARN` values; the default heartbeat timeout
//!   is 3600 s and `DefaultResult` is `ABANDON`.
//! * `CompleteLifecycleAction` and `RecordLifecycleActionHeartbeat` are not
//!   implemented (HTTP 500): put a [`super::LifecycleProxy`] in front.
//! * moto routes requests by the SigV4 credential scope, so unsigned
//!   requests land in its S3 backend.
//! * SSM `GetParameters` refuses more than 10 names (`ValidationException`),
//!   as AWS does, and lists unknown names in `InvalidParameters`; a
//!   `SecureString` put without a key id is decrypted with `WithDecryption`.
//! * Secrets Manager `BatchGetSecretValue` is implemented: unknown ids come
//!   back in `Errors` (`ResourceNotFoundException`); it does not enforce
//!   AWS's limit of 20 ids per call, and never returns a `NextToken` for a
//!   `SecretIdList`.
//! * ECR `GetAuthorizationToken` returns base64 `AWS:123456789012-auth-token`
//!   (see [`MOTO_ECR_USER`], [`MOTO_ECR_PASSWORD`]).
//! * CloudWatch speaks the query and AWS JSON 1.0 protocols only, not the
//!   Smithy RPC v2 CBOR protocol that `aws-sdk-cloudwatch` 1.x sends (moto
//!   answers 404 to its `/service/.../operation/...` paths): the CloudWatch
//!   helpers here use JSON, and agents reach CloudWatch through a
//!   [`super::LifecycleProxy`], which translates.
//! * `DescribeAlarms` applies one filter only, the first present of
//!   `ActionPrefix`, `AlarmNamePrefix`, `AlarmNames`, `StateValue`: with
//!   names or a prefix, `StateValue` is ignored (AWS applies both; the proxy
//!   does too). `AlarmTypes`, `MaxRecords` and `NextToken` are ignored.
//! * A new metric alarm starts in `OK` (AWS: `INSUFFICIENT_DATA`), and moto
//!   never evaluates alarms: a state set by `SetAlarmState` stays.
//!   `PutCompositeAlarm` is not implemented (HTTP 500).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_autoscaling::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_autoscaling::error::DisplayErrorContext;
use tempfile::TempDir;

use super::http::{HttpResponse, request, request_within};
use super::util::{ExitGuard, free_port, keep_artifacts, kill_child, tail_file};

/// The region everything runs in.
pub const MOTO_REGION: &str = "us-east-1";
/// The availability zone [`Moto::create_group`] puts groups in.
pub const MOTO_AZ: &str = "us-east-1a";
/// A fake AMI id that exists in moto 5.2.1's built-in image list.
pub const MOTO_AMI: &str = "ami-12c6146b";
/// moto's fixed account id.
pub const MOTO_ACCOUNT: &str = "123456789012";
/// Registry user name in moto's ECR authorization token.
pub const MOTO_ECR_USER: &str = "AWS";
/// Registry password in moto's ECR authorization token.
pub const MOTO_ECR_PASSWORD: &str = "123456789012-auth-token";

const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Deadline for one exchange of a raw (non-SDK) helper call.
const RAW_CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// CloudWatch's `X-Amz-Target` prefix in the AWS JSON 1.0 protocol, and the
/// service name in the Smithy RPC v2 CBOR paths.
pub const CLOUDWATCH_TARGET_PREFIX: &str = "GraniteServiceVersion20100801";

/// One member of a group as `DescribeAutoScalingGroups` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInstance {
    pub id: String,
    /// `InService`, `Pending`, `Terminating`, …
    pub lifecycle_state: String,
    /// `Healthy` or `Unhealthy`.
    pub health_status: String,
}

/// A running moto server with its log in a temp dir. Dropping it kills the
/// process (SIGKILL) and deletes the dir.
pub struct Moto {
    port: u16,
    dir: Option<TempDir>,
    dir_path: PathBuf,
    child: Option<Child>,
    guard: Option<ExitGuard>,
}

impl Moto {
    /// Starts a fresh moto server on a free port of 127.0.0.1 and waits until
    /// `GET /moto-api/` answers 200. Panics (with the log) on failure, or
    /// with install instructions if moto is missing.
    pub fn start() -> Moto {
        let python = python_with_moto();
        let dir = tempfile::Builder::new()
            .prefix("berth-moto-")
            .tempdir()
            .expect("Moto::start: cannot create a temp dir");
        let dir_path = dir.path().to_path_buf();
        let mut errors = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            match launch(python, &dir_path, port) {
                Ok((child, guard)) => {
                    return Moto {
                        port,
                        dir: Some(dir),
                        dir_path,
                        child: Some(child),
                        guard: Some(guard),
                    };
                }
                Err(e) => errors.push(e),
            }
        }
        panic!("Moto::start failed 3 times:\n{}", errors.join("\n"));
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port moto listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whole log of the server so far (werkzeug access lines, tracebacks).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(log_path(&self.dir_path)).unwrap_or_default())
            .into_owned()
    }

    /// Directory holding `moto.log`.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// Forgets every resource (`POST /moto-api/reset`). Panics on failure.
    pub fn reset(&self) {
        let addr = format!("127.0.0.1:{}", self.port);
        let resp = request(&addr, "POST", "/moto-api/reset", &[], &[], false)
            .unwrap_or_else(|e| panic!("Moto::reset: POST /moto-api/reset on {addr}: {e}"));
        assert_eq!(
            resp.status,
            200,
            "Moto::reset: POST /moto-api/reset answered {}: {}",
            resp.status,
            resp.text()
        );
    }

    /// An `SdkConfig` for this server: see [`sdk_config_for`].
    pub fn sdk_config(&self) -> SdkConfig {
        sdk_config_for(&self.url())
    }

    /// Environment for a spawned `berth` talking to this server:
    /// `AWS_ENDPOINT_URL` (all services), `AWS_ACCESS_KEY_ID=test`,
    /// `AWS_SECRET_ACCESS_KEY=test`, `AWS_REGION=us-east-1`,
    /// `AWS_MAX_ATTEMPTS=2`, and `AWS_CONFIG_FILE`/`AWS_SHARED_CREDENTIALS_FILE`
    /// pointing at `/dev/null` so no profile of the machine interferes.
    /// `AWS_EC2_METADATA_DISABLED` is deliberately absent (berth uses IMDS:
    /// add [`super::Imds::env`]). Override one service's endpoint, e.g. with
    /// [`super::LifecycleProxy::env`]'s `AWS_ENDPOINT_URL_AUTO_SCALING`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.url().as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", MOTO_REGION),
            ("AWS_MAX_ATTEMPTS", "2"),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Creates a launch template (`NAME-lt`, [`MOTO_AMI`], `t3.micro`) and an
    /// Auto Scaling group `name` using it in [`MOTO_AZ`] with min 0, max
    /// `desired + 10`, `desired` instances and the group tags `tags`
    /// (`PropagateAtLaunch=false`). Returns the member instance ids (moto
    /// launches them synchronously). Panics on failure.
    pub fn create_group(&self, name: &str, desired: i32, tags: &[(&str, &str)]) -> Vec<String> {
        let cfg = self.sdk_config();
        let name = name.to_string();
        let tags = asg_tags(&name, tags);
        block_on(async move {
            let ec2 = aws_sdk_ec2::Client::new(&cfg);
            let asg = aws_sdk_autoscaling::Client::new(&cfg);
            let lt_name = format!("{name}-lt");
            ec2.create_launch_template()
                .launch_template_name(&lt_name)
                .launch_template_data(
                    aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                        .image_id(MOTO_AMI)
                        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                        .build(),
                )
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "create_group({name}): CreateLaunchTemplate {lt_name}: {}",
                        DisplayErrorContext(&e)
                    )
                });
            asg.create_auto_scaling_group()
                .auto_scaling_group_name(&name)
                .launch_template(
                    aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                        .launch_template_name(&lt_name)
                        .version("$Latest")
                        .build(),
                )
                .min_size(0)
                .max_size(desired + 10)
                .desired_capacity(desired)
                .availability_zones(MOTO_AZ)
                .set_tags(Some(tags))
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "create_group({name}): CreateAutoScalingGroup: {}",
                        DisplayErrorContext(&e)
                    )
                });
            group_instance_ids(&asg, &name).await
        })
    }

    /// Ids of the instances that are members of group `name`, in moto's order.
    /// Panics if the group does not exist.
    pub fn group_instance_ids(&self, name: &str) -> Vec<String> {
        let cfg = self.sdk_config();
        block_on(
            async move { group_instance_ids(&aws_sdk_autoscaling::Client::new(&cfg), name).await },
        )
    }

    /// The members of group `name` with their lifecycle state and health
    /// (one `DescribeAutoScalingGroups`), in moto's order. Panics if the
    /// group does not exist.
    pub fn group_instances(&self, name: &str) -> Vec<GroupInstance> {
        let cfg = self.sdk_config();
        block_on(async move {
            describe_group(&aws_sdk_autoscaling::Client::new(&cfg), name)
                .await
                .instances()
                .iter()
                .filter_map(|i| {
                    Some(GroupInstance {
                        id: i.instance_id()?.to_string(),
                        lifecycle_state: i.lifecycle_state()?.as_str().to_string(),
                        health_status: i.health_status()?.to_string(),
                    })
                })
                .collect()
        })
    }

    /// Terminates `instance_id` in its group
    /// (`TerminateInstanceInAutoScalingGroup`). With
    /// `decrement_desired = false`, moto removes it and launches its
    /// replacement in the same call (so the group never shows it
    /// `Terminating`). An error (e.g. the instance is no member any more)
    /// is returned, not raised, for the fleet harness's thread.
    pub fn terminate_in_group(
        &self,
        instance_id: &str,
        decrement_desired: bool,
    ) -> Result<(), String> {
        let cfg = self.sdk_config();
        block_on(async move {
            aws_sdk_autoscaling::Client::new(&cfg)
                .terminate_instance_in_auto_scaling_group()
                .instance_id(instance_id)
                .should_decrement_desired_capacity(decrement_desired)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    format!(
                        "terminate_in_group({instance_id}): TerminateInstanceInAutoScalingGroup: {}",
                        DisplayErrorContext(&e)
                    )
                })
        })
    }

    /// The EC2 launch time of each of `ids` (one `DescribeInstances`), in
    /// seconds since the epoch, as the agents order their line by it.
    /// Panics on failure or if an instance is unknown.
    pub fn launch_times<S: AsRef<str>>(&self, ids: &[S]) -> BTreeMap<String, i64> {
        let cfg = self.sdk_config();
        let ids: Vec<String> = ids.iter().map(|i| i.as_ref().to_string()).collect();
        block_on(async move {
            let out = aws_sdk_ec2::Client::new(&cfg)
                .describe_instances()
                .set_instance_ids(Some(ids.clone()))
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "launch_times({ids:?}): DescribeInstances: {}",
                        DisplayErrorContext(&e)
                    )
                });
            let times: BTreeMap<String, i64> = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(|i| Some((i.instance_id()?.to_string(), i.launch_time()?.secs())))
                .collect();
            assert_eq!(times.len(), ids.len(), "launch_times({ids:?}): {times:?}");
            times
        })
    }

    /// Puts SSM parameter `name` with `value` (`PutParameter`, overwriting),
    /// a `SecureString` (moto's default KMS key) when `secure`. Panics on failure.
    pub fn put_parameter(&self, name: &str, value: &str, secure: bool) {
        let cfg = self.sdk_config();
        block_on(async move {
            let kind = if secure {
                aws_sdk_ssm::types::ParameterType::SecureString
            } else {
                aws_sdk_ssm::types::ParameterType::String
            };
            aws_sdk_ssm::Client::new(&cfg)
                .put_parameter()
                .name(name)
                .value(value)
                .r#type(kind)
                .overwrite(true)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "put_parameter({name}): PutParameter: {}",
                        DisplayErrorContext(&e)
                    )
                });
        })
    }

    /// Creates Secrets Manager secret `name` with the text `value`
    /// (`CreateSecret`), or gives an existing one that new value
    /// (`PutSecretValue`). Returns its ARN. Panics on failure.
    pub fn put_secret(&self, name: &str, value: &str) -> String {
        let cfg = self.sdk_config();
        block_on(async move {
            let sm = aws_sdk_secretsmanager::Client::new(&cfg);
            match sm
                .create_secret()
                .name(name)
                .secret_string(value)
                .send()
                .await
            {
                Ok(out) => out.arn().unwrap_or_default().to_string(),
                Err(e)
                    if aws_sdk_secretsmanager::error::ProvideErrorMetadata::code(&e)
                        == Some("ResourceExistsException") =>
                {
                    sm.put_secret_value()
                        .secret_id(name)
                        .secret_string(value)
                        .send()
                        .await
                        .unwrap_or_else(|e| {
                            panic!(
                                "put_secret({name}): PutSecretValue: {}",
                                DisplayErrorContext(&e)
                            )
                        })
                        .arn()
                        .unwrap_or_default()
                        .to_string()
                }
                Err(e) => panic!(
                    "put_secret({name}): CreateSecret: {}",
                    DisplayErrorContext(&e)
                ),
            }
        })
    }

    /// Adds or overwrites group tags (`CreateOrUpdateTags`,
    /// `PropagateAtLaunch=false`); other tags stay. Panics on failure.
    pub fn set_group_tags(&self, name: &str, tags: &[(&str, &str)]) {
        let cfg = self.sdk_config();
        let tags = asg_tags(name, tags);
        block_on(async move {
            aws_sdk_autoscaling::Client::new(&cfg)
                .create_or_update_tags()
                .set_tags(Some(tags))
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "set_group_tags({name}): CreateOrUpdateTags: {}",
                        DisplayErrorContext(&e)
                    )
                });
        })
    }

    /// Deletes the group tag `key` (`DeleteTags`). Panics on failure.
    pub fn delete_group_tag(&self, name: &str, key: &str) {
        let cfg = self.sdk_config();
        let tag = aws_sdk_autoscaling::types::Tag::builder()
            .key(key)
            .resource_id(name)
            .resource_type("auto-scaling-group")
            .build();
        block_on(async move {
            aws_sdk_autoscaling::Client::new(&cfg)
                .delete_tags()
                .tags(tag)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "delete_group_tag({name}, {key}): DeleteTags: {}",
                        DisplayErrorContext(&e)
                    )
                });
        })
    }

    /// The tags of group `name` (from `DescribeAutoScalingGroups`).
    /// Panics if the group does not exist.
    pub fn group_tags(&self, name: &str) -> BTreeMap<String, String> {
        let cfg = self.sdk_config();
        block_on(async move {
            let group = describe_group(&aws_sdk_autoscaling::Client::new(&cfg), name).await;
            group
                .tags()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or_default().to_string(),
                        t.value().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
    }

    /// The EC2 tags of instance `instance_id` (`DescribeTags` filtered by
    /// resource id), including moto's `aws:autoscaling:groupName`.
    pub fn instance_tags(&self, instance_id: &str) -> BTreeMap<String, String> {
        self.instances_tags(&[instance_id])
            .remove(instance_id)
            .unwrap_or_default()
    }

    /// The EC2 tags of each of `ids`, with one `DescribeTags` (all pages)
    /// filtered on their resource ids. An id without tags (or unknown to
    /// moto) maps to an empty set.
    pub fn instances_tags<S: AsRef<str>>(
        &self,
        ids: &[S],
    ) -> BTreeMap<String, BTreeMap<String, String>> {
        let cfg = self.sdk_config();
        let ids: Vec<String> = ids.iter().map(|i| i.as_ref().to_string()).collect();
        block_on(async move {
            let ec2 = aws_sdk_ec2::Client::new(&cfg);
            let mut tags: BTreeMap<String, BTreeMap<String, String>> =
                ids.iter().map(|id| (id.clone(), BTreeMap::new())).collect();
            if ids.is_empty() {
                return tags;
            }
            let mut next: Option<String> = None;
            loop {
                let out = ec2
                    .describe_tags()
                    .filters(
                        aws_sdk_ec2::types::Filter::builder()
                            .name("resource-id")
                            .set_values(Some(ids.clone()))
                            .build(),
                    )
                    .set_next_token(next.take())
                    .send()
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "instances_tags({ids:?}): DescribeTags: {}",
                            DisplayErrorContext(&e)
                        )
                    });
                for t in out.tags() {
                    tags.entry(t.resource_id().unwrap_or_default().to_string())
                        .or_default()
                        .insert(
                            t.key().unwrap_or_default().to_string(),
                            t.value().unwrap_or_default().to_string(),
                        );
                }
                match out.next_token() {
                    Some(t) if !t.is_empty() => next = Some(t.to_string()),
                    _ => return tags,
                }
            }
        })
    }

    /// Sets the EC2 tag `key=value` on instance `instance_id` (`CreateTags`).
    pub fn set_instance_tag(&self, instance_id: &str, key: &str, value: &str) {
        self.tag_instances(&[instance_id], &[(key, value)]);
    }

    /// Adds or overwrites `tags` on every instance of `ids` with one
    /// `CreateTags` call, as an operator (or `berth fleet`) would. Panics on
    /// failure.
    pub fn tag_instances<S: AsRef<str>>(&self, ids: &[S], tags: &[(&str, &str)]) {
        let cfg = self.sdk_config();
        let ids: Vec<String> = ids.iter().map(|i| i.as_ref().to_string()).collect();
        let tags: Vec<aws_sdk_ec2::types::Tag> = tags
            .iter()
            .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build())
            .collect();
        block_on(async move {
            aws_sdk_ec2::Client::new(&cfg)
                .create_tags()
                .set_resources(Some(ids.clone()))
                .set_tags(Some(tags))
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "tag_instances({ids:?}): CreateTags: {}",
                        DisplayErrorContext(&e)
                    )
                });
        })
    }

    /// Removes the tags `keys` (whatever their values) from every instance of
    /// `ids` with one `DeleteTags` call. Absent keys are no error. Panics on
    /// failure.
    pub fn untag_instances<S: AsRef<str>>(&self, ids: &[S], keys: &[&str]) {
        let cfg = self.sdk_config();
        let ids: Vec<String> = ids.iter().map(|i| i.as_ref().to_string()).collect();
        let tags: Vec<aws_sdk_ec2::types::Tag> = keys
            .iter()
            .map(|k| aws_sdk_ec2::types::Tag::builder().key(*k).build())
            .collect();
        block_on(async move {
            aws_sdk_ec2::Client::new(&cfg)
                .delete_tags()
                .set_resources(Some(ids.clone()))
                .set_tags(Some(tags))
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "untag_instances({ids:?}): DeleteTags: {}",
                        DisplayErrorContext(&e)
                    )
                });
        })
    }

    /// Calls the CloudWatch `operation` (e.g. `DescribeAlarms`) on moto with
    /// the AWS JSON 1.0 protocol and `input` as the body; returns the status
    /// and the answer's JSON (`null` if the body is not JSON, e.g. moto's
    /// HTML 500 for an operation it lacks). Panics if moto cannot be reached.
    pub fn cloudwatch(
        &self,
        operation: &str,
        input: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let resp = cloudwatch_json_call(&self.addr(), operation, &input, RAW_CALL_TIMEOUT)
            .unwrap_or_else(|e| panic!("CloudWatch {operation} on moto {}: {e}", self.url()));
        let body = serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null);
        (resp.status, body)
    }

    /// Creates or replaces the metric alarm `name` (`PutMetricAlarm`: the
    /// average of `berth-test/Errors` over 60 s greater than 1, one
    /// evaluation period). moto starts it in `OK`. Panics on failure.
    pub fn put_metric_alarm(&self, name: &str) {
        let (status, body) = self.cloudwatch(
            "PutMetricAlarm",
            serde_json::json!({
                "AlarmName": name,
                "Namespace": "berth-test",
                "MetricName": "Errors",
                "Statistic": "Average",
                "Period": 60,
                "EvaluationPeriods": 1,
                "Threshold": 1.0,
                "ComparisonOperator": "GreaterThanThreshold",
            }),
        );
        assert_eq!(status, 200, "put_metric_alarm({name}): {body}");
    }

    /// Sets the state of alarm `name` (`SetAlarmState`): `ALARM`, `OK` or
    /// `INSUFFICIENT_DATA`. moto keeps it until the next call. Panics on
    /// failure (e.g. an unknown alarm: 404 `ResourceNotFound`).
    pub fn set_alarm_state(&self, name: &str, state: &str) {
        let (status, body) = self.cloudwatch(
            "SetAlarmState",
            serde_json::json!({
                "AlarmName": name,
                "StateValue": state,
                "StateReason": "set by a test",
            }),
        );
        assert_eq!(status, 200, "set_alarm_state({name}, {state}): {body}");
    }

    /// Every metric alarm and its `StateValue` (`DescribeAlarms` without
    /// filters). Panics on failure.
    pub fn alarm_states(&self) -> BTreeMap<String, String> {
        let (status, body) = self.cloudwatch("DescribeAlarms", serde_json::json!({}));
        assert_eq!(status, 200, "alarm_states: DescribeAlarms: {body}");
        alarm_states_of(&body)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `HealthStatus` of `instance_id` (`Healthy`/`Unhealthy`) from
    /// `DescribeAutoScalingInstances`. Panics if the instance is not a member
    /// of `group`.
    pub fn instance_health(&self, group: &str, instance_id: &str) -> String {
        self.asg_instance(group, instance_id).0
    }

    /// `LifecycleState` of `instance_id` (e.g. `InService`) from
    /// `DescribeAutoScalingInstances`. Panics if the instance is not a member
    /// of `group`.
    pub fn instance_lifecycle_state(&self, group: &str, instance_id: &str) -> String {
        self.asg_instance(group, instance_id).1
    }

    fn asg_instance(&self, group: &str, instance_id: &str) -> (String, String) {
        let cfg = self.sdk_config();
        block_on(async move {
            let out = aws_sdk_autoscaling::Client::new(&cfg)
                .describe_auto_scaling_instances()
                .instance_ids(instance_id)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "DescribeAutoScalingInstances({instance_id}): {}",
                        DisplayErrorContext(&e)
                    )
                });
            let inst = out
                .auto_scaling_instances()
                .iter()
                .find(|i| i.instance_id() == Some(instance_id))
                .unwrap_or_else(|| {
                    panic!("instance {instance_id} is in no Auto Scaling group: {out:?}")
                });
            assert_eq!(
                inst.auto_scaling_group_name(),
                Some(group),
                "instance {instance_id} is not in group {group}"
            );
            (
                inst.health_status().unwrap_or_default().to_string(),
                inst.lifecycle_state().unwrap_or_default().to_string(),
            )
        })
    }

    /// Creates or replaces the lifecycle hook `hook_name` of `group` for
    /// `transition` (`autoscaling:EC2_INSTANCE_LAUNCHING` or
    /// `autoscaling:EC2_INSTANCE_TERMINATING`) with the given heartbeat
    /// timeout (`PutLifecycleHook`, no notification target). Panics on failure.
    pub fn put_lifecycle_hook(
        &self,
        group: &str,
        hook_name: &str,
        transition: &str,
        heartbeat_timeout_secs: i32,
    ) {
        let cfg = self.sdk_config();
        block_on(async move {
            aws_sdk_autoscaling::Client::new(&cfg)
                .put_lifecycle_hook()
                .auto_scaling_group_name(group)
                .lifecycle_hook_name(hook_name)
                .lifecycle_transition(transition)
                .heartbeat_timeout(heartbeat_timeout_secs)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "put_lifecycle_hook({group}, {hook_name}): PutLifecycleHook: {}",
                        DisplayErrorContext(&e)
                    )
                });
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- moto {} log tail (test panicked) ---\n{}",
                self.url(),
                tail_file(&log_path(&self.dir_path), 30)
            );
        }
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
        if let Some(guard) = self.guard.take() {
            guard.disarm();
        }
        if keep_artifacts()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("BERTH_TEST_KEEP: keeping {}", dir.keep().display());
        }
    }
}

/// An `SdkConfig` for a fake AWS endpoint at `endpoint_url` (a [`Moto`] or a
/// [`super::LifecycleProxy`]): region `us-east-1`, static credentials
/// `test`/`test`, standard retries with at most 2 attempts (like
/// `AWS_MAX_ATTEMPTS=2`), 3 s connect and 30 s per-attempt timeouts. It reads
/// nothing from the environment or profile files.
pub fn sdk_config_for(endpoint_url: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(MOTO_REGION))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test", "test", None, None, "test",
        )))
        .endpoint_url(endpoint_url)
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        .build()
}

/// Runs `fut` to completion on a fresh current-thread tokio runtime in a
/// helper thread and returns its output; a panic inside is re-raised here.
/// Works from plain tests and from inside a tokio runtime (whose thread it
/// blocks meanwhile).
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        let helper = s.spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("block_on: cannot build a tokio runtime")
                .block_on(fut)
        });
        match helper.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Borrows owned `(name, value)` pairs (as [`Moto::env`] returns them) as
/// the `&[(&str, &str)]` that [`super::Agent::spawn`] and [`super::berth`] take.
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn asg_tags(group: &str, tags: &[(&str, &str)]) -> Vec<aws_sdk_autoscaling::types::Tag> {
    tags.iter()
        .map(|(k, v)| {
            aws_sdk_autoscaling::types::Tag::builder()
                .key(*k)
                .value(*v)
                .propagate_at_launch(false)
                .resource_id(group)
                .resource_type("auto-scaling-group")
                .build()
        })
        .collect()
}

async fn describe_group(
    asg: &aws_sdk_autoscaling::Client,
    name: &str,
) -> aws_sdk_autoscaling::types::AutoScalingGroup {
    let out = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "DescribeAutoScalingGroups({name}): {}",
                DisplayErrorContext(&e)
            )
        });
    out.auto_scaling_groups()
        .iter()
        .find(|g| g.auto_scaling_group_name() == Some(name))
        .cloned()
        .unwrap_or_else(|| panic!("Auto Scaling group {name} does not exist"))
}

async fn group_instance_ids(asg: &aws_sdk_autoscaling::Client, name: &str) -> Vec<String> {
    describe_group(asg, name)
        .await
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect()
}

/// `AlarmName` → `StateValue` of the `MetricAlarms` and `CompositeAlarms`
/// of a JSON `DescribeAlarms` answer.
pub fn alarm_states_of(describe_alarms: &serde_json::Value) -> BTreeMap<String, String> {
    ["MetricAlarms", "CompositeAlarms"]
        .iter()
        .filter_map(|list| describe_alarms[list].as_array())
        .flatten()
        .filter_map(|a| {
            Some((
                a["AlarmName"].as_str()?.to_string(),
                a["StateValue"].as_str().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// The `Authorization` header of a raw request for `service` (a SigV4
/// signing name: `ec2`, `autoscaling`, `monitoring`). moto routes a request
/// by the credential scope in it and checks no signature, so this is all a
/// raw request needs (without it, moto takes the request for S3).
pub(crate) fn moto_authorization(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=test/20260101/{MOTO_REGION}/{service}/aws4_request, \
         SignedHeaders=host, Signature=0"
    )
}

/// POSTs a CloudWatch AWS JSON 1.0 request to `addr` (`host:port` of a moto
/// server) and reads the answer within `io_timeout`.
pub(crate) fn cloudwatch_json_call(
    addr: &str,
    operation: &str,
    input: &serde_json::Value,
    io_timeout: Duration,
) -> io::Result<HttpResponse> {
    let target = format!("{CLOUDWATCH_TARGET_PREFIX}.{operation}");
    let auth = moto_authorization("monitoring");
    let body = serde_json::to_vec(input).map_err(io::Error::other)?;
    request_within(
        addr,
        "POST",
        "/",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-amz-json-1.0"),
            ("X-Amz-Target", &target),
        ],
        &body,
        false,
        io_timeout,
    )
}

/// The EC2 tags of `instance_id` as moto holds them now, read with raw
/// query-protocol `DescribeTags` calls (all pages) to `addr` (`host:port`),
/// each within `io_timeout`. Light enough to run per IMDS request.
pub(crate) fn instance_tags_raw(
    addr: &str,
    instance_id: &str,
    io_timeout: Duration,
) -> Result<BTreeMap<String, String>, String> {
    let auth = moto_authorization("ec2");
    let mut tags = BTreeMap::new();
    let mut next: Option<String> = None;
    for _ in 0..100 {
        let mut params = vec![
            ("Action", "DescribeTags"),
            ("Version", "2016-11-15"),
            ("Filter.1.Name", "resource-id"),
            ("Filter.1.Value.1", instance_id),
        ];
        if let Some(token) = &next {
            params.push(("NextToken", token));
        }
        let resp = request_within(
            addr,
            "POST",
            "/",
            &[
                ("Authorization", &auth),
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
            ],
            form_encode(&params).as_bytes(),
            false,
            io_timeout,
        )
        .map_err(|e| format!("DescribeTags({instance_id}) on {addr}: {e}"))?;
        let body = resp.text();
        if resp.status != 200 {
            return Err(format!(
                "DescribeTags({instance_id}) on {addr} answered {}: {body}",
                resp.status
            ));
        }
        for item in xml_elements(&body, "item") {
            if xml_child(item, "resourceId").as_deref() != Some(instance_id) {
                continue;
            }
            if let Some(key) = xml_child(item, "key") {
                tags.insert(key, xml_child(item, "value").unwrap_or_default());
            }
        }
        match xml_child(&body, "nextToken") {
            Some(t) if !t.is_empty() => next = Some(t),
            _ => return Ok(tags),
        }
    }
    Err(format!(
        "DescribeTags({instance_id}) on {addr}: more than 100 pages"
    ))
}

/// `application/x-www-form-urlencoded` of `params`.
pub(crate) fn form_encode(params: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The inner text of every `<name>...</name>` element of `xml`, in order
/// (not nested in each other; enough for flat AWS lists like `tagSet`).
fn xml_elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

/// The unescaped text of the first `<name>` element of `xml` (`<name/>` is
/// the empty string), or `None` if there is none.
fn xml_child(xml: &str, name: &str) -> Option<String> {
    let (open, empty) = (format!("<{name}>"), format!("<{name}/>"));
    match (xml.find(&open), xml.find(&empty)) {
        (Some(o), Some(e)) if e < o => Some(String::new()),
        (Some(o), _) => {
            let after = &xml[o + open.len()..];
            let end = after.find(&format!("</{name}>"))?;
            Some(xml_unescape(&after[..end]))
        }
        (None, Some(_)) => Some(String::new()),
        (None, None) => None,
    }
}

/// Resolves the five predefined XML entities and numeric character references.
fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let Some(semi) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = &tail[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &tail[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("moto.log")
}

/// The Python interpreter that can import `moto.server` (resolved once,
/// through `python3` on PATH, so pyenv shims are not paid per start).
fn python_with_moto() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys, moto, moto.server; print(sys.executable); print(moto.__version__)",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("Moto: cannot run python3 (is Python 3 installed?)");
        assert!(
            out.status.success(),
            "Moto: python3 cannot import moto.server ({}); install it with \
             `pip install 'moto[server]==5.2.1'`: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = stdout.lines();
        let exe = lines.next().unwrap_or_default().trim().to_string();
        let version = lines.next().unwrap_or_default().trim();
        if version != "5.2.1" {
            eprintln!("warning: moto {version} found; these helpers were written for 5.2.1");
        }
        assert!(!exe.is_empty(), "Moto: python3 printed no sys.executable");
        exe
    })
}

/// Spawns moto on `port` (output appended to `DIR/moto.log`) and waits until
/// it answers `GET /moto-api/` with 200. The temp dir path is passed as an
/// unused argument so the [`ExitGuard`] can recognise the process.
fn launch(python: &str, dir: &Path, port: u16) -> Result<(Child, ExitGuard), String> {
    let log_file = log_path(dir);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .map_err(|e| format!("cannot open {}: {e}", log_file.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot dup the log fd: {e}"))?;
    let marker = dir.to_string_lossy().into_owned();
    let mut cmd = Command::new(python);
    cmd.args([
        "-c",
        "import sys; from moto.server import main; main(sys.argv[2:])",
        &marker,
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .current_dir(dir)
    .stdin(Stdio::null())
    .stdout(log)
    .stderr(log_err);
    // MOTO_* / TEST_SERVER_MODE of the test environment would change moto's
    // behaviour (MOTO_PORT even its advertised URLs).
    for (k, _) in std::env::vars_os() {
        let k_text = k.to_string_lossy();
        if k_text.starts_with("MOTO_") || k_text == "TEST_SERVER_MODE" {
            cmd.env_remove(&k);
        }
    }
    cmd.env("MOTO_PORT", port.to_string())
        .env("PYTHONUNBUFFERED", "1");
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot spawn moto ({python}): {e}"))?;
    let guard = ExitGuard::arm(child.id(), &marker, Some(dir));

    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            guard.disarm();
            return Err(format!(
                "moto on {addr} exited during startup ({status}); log tail:\n{}",
                tail_file(&log_file, 20)
            ));
        }
        let ready = matches!(
            request(&addr, "GET", "/moto-api/", &[], &[], false),
            Ok(r) if r.status == 200
        );
        // Re-check liveness: a 200 from someone else's server on a port we
        // failed to bind must not count.
        if ready && matches!(child.try_wait(), Ok(None)) {
            return Ok((child, guard));
        }
        if start.elapsed() > READY_DEADLINE {
            kill_child(&mut child);
            guard.disarm();
            return Err(format!(
                "moto on {addr} not ready within {READY_DEADLINE:?}; log tail:\n{}",
                tail_file(&log_file, 20)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
