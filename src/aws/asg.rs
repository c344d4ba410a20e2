//! The autoscaling group and this instance's EC2 tags.
//!
//! One `DescribeAutoScalingGroups` call returns the group's tags (cluster,
//! preferred versions, rollout settings) and every member's lifecycle state
//! and health: one snapshot for "what should I run" and, later, "may I
//! retire now".

use std::collections::BTreeMap;
use std::future::Future;

use aws_config::SdkConfig;
use aws_sdk_autoscaling::Client as AsgClient;
use aws_sdk_cloudwatch::Client as CwClient;
use aws_sdk_ec2::Client as Ec2Client;

use super::{AwsError, AwsOp};

/// One member of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub instance_id: String,
    /// `Pending`, `Pending:Wait`, `InService`, `Terminating:Wait`, …
    pub lifecycle_state: String,
    /// `Healthy` or `Unhealthy`.
    pub health_status: String,
}

/// The group at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub desired_capacity: i32,
    pub members: Vec<Member>,
}

impl GroupSnapshot {
    /// This instance's membership, if it is a member.
    pub fn member(&self, instance_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.instance_id == instance_id)
    }
}

/// A lifecycle hook of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    pub transition: String,
    /// Seconds the group waits for a heartbeat or completion.
    pub heartbeat_timeout_secs: i32,
}

/// One member as EC2 describes it: its launch time and tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub instance_id: String,
    /// Seconds since the epoch.
    pub launch_time: u64,
    pub tags: BTreeMap<String, String>,
}

/// The Auto Scaling and EC2 APIs, as berth uses them.
#[derive(Clone)]
pub struct Group {
    asg: AsgClient,
    ec2: Ec2Client,
    cw: CwClient,
}

/// EC2 `CreateTags` takes at most this many resources per call.
pub const CREATE_TAGS_MAX_RESOURCES: usize = 1000;

impl Group {
    /// Clients from the shared configuration.
    pub fn new(config: &SdkConfig) -> Group {
        Group {
            asg: AsgClient::new(config),
            ec2: Ec2Client::new(config),
            cw: CwClient::new(config),
        }
    }

    /// The group this instance belongs to, from `DescribeAutoScalingInstances`.
    pub async fn group_of(&self, instance_id: &str) -> Result<Option<String>, AwsError> {
        let out = self
            .asg
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| AwsError::sdk(AwsOp::DescribeAutoScalingInstances, instance_id, e))?;
        Ok(out
            .auto_scaling_instances()
            .iter()
            .find_map(|i| i.auto_scaling_group_name().map(str::to_string)))
    }

    /// One snapshot of the group: tags, desired capacity, members.
    pub async fn describe(&self, group: &str) -> Result<GroupSnapshot, AwsError> {
        let out = self
            .asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(group)
            .send()
            .await
            .map_err(|e| AwsError::sdk(AwsOp::DescribeAutoScalingGroups, group, e))?;
        let g = out
            .auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(group))
            .ok_or_else(|| {
                AwsError::permanent(AwsOp::DescribeAutoScalingGroups, group, "no such group")
            })?;
        Ok(GroupSnapshot {
            name: group.to_string(),
            tags: g
                .tags()
                .iter()
                .filter_map(|t| {
                    Some((
                        t.key()?.to_string(),
                        t.value().unwrap_or_default().to_string(),
                    ))
                })
                .collect(),
            desired_capacity: g.desired_capacity().unwrap_or(0),
            members: g
                .instances()
                .iter()
                .filter_map(|i| {
                    Some(Member {
                        instance_id: i.instance_id()?.to_string(),
                        lifecycle_state: i
                            .lifecycle_state()
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_default(),
                        health_status: i.health_status().unwrap_or_default().to_string(),
                    })
                })
                .collect(),
        })
    }

    /// The group's lifecycle hooks.
    pub async fn hooks(&self, group: &str) -> Result<Vec<Hook>, AwsError> {
        let out = self
            .asg
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(group)
            .send()
            .await
            .map_err(|e| AwsError::sdk(AwsOp::DescribeLifecycleHooks, group, e))?;
        Ok(out
            .lifecycle_hooks()
            .iter()
            .filter_map(|h| {
                Some(Hook {
                    name: h.lifecycle_hook_name()?.to_string(),
                    transition: h.lifecycle_transition()?.to_string(),
                    heartbeat_timeout_secs: h.heartbeat_timeout().unwrap_or(3600),
                })
            })
            .collect())
    }

    /// Completes a lifecycle action with `CONTINUE` or `ABANDON`.
    pub async fn complete_lifecycle_action(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
        result: &str,
    ) -> Result<(), AwsError> {
        self.asg
            .complete_lifecycle_action()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance_id)
            .lifecycle_action_result(result)
            .send()
            .await
            .map_err(|e| {
                AwsError::sdk(
                    AwsOp::CompleteLifecycleAction,
                    format!("{group}/{hook}/{instance_id}"),
                    e,
                )
            })?;
        Ok(())
    }

    /// Extends the lifecycle hook's timeout.
    pub async fn heartbeat(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
    ) -> Result<(), AwsError> {
        self.asg
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance_id)
            .send()
            .await
            .map_err(|e| {
                AwsError::sdk(
                    AwsOp::RecordLifecycleActionHeartbeat,
                    format!("{group}/{hook}/{instance_id}"),
                    e,
                )
            })?;
        Ok(())
    }

    /// Marks the instance unhealthy: the group replaces it.
    pub async fn set_unhealthy(&self, instance_id: &str) -> Result<(), AwsError> {
        self.asg
            .set_instance_health()
            .instance_id(instance_id)
            .health_status("Unhealthy")
            .should_respect_grace_period(false)
            .send()
            .await
            .map_err(|e| AwsError::sdk(AwsOp::SetInstanceHealth, instance_id, e))?;
        Ok(())
    }

    /// The group's running members as EC2 sees them (`DescribeInstances`
    /// filtered on the `aws:autoscaling:groupName` tag), all pages.
    pub async fn instances(&self, group: &str) -> Result<Vec<InstanceInfo>, AwsError> {
        use aws_sdk_ec2::types::Filter;
        let mut out = Vec::new();
        let mut pages = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:aws:autoscaling:groupName")
                    .values(group)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::sdk(AwsOp::DescribeInstances, group, e))?;
            for r in page.reservations() {
                for i in r.instances() {
                    let Some(id) = i.instance_id() else { continue };
                    out.push(InstanceInfo {
                        instance_id: id.to_string(),
                        launch_time: i.launch_time().map_or(0, |t| t.secs().max(0) as u64),
                        tags: i
                            .tags()
                            .iter()
                            .filter_map(|t| {
                                Some((
                                    t.key()?.to_string(),
                                    t.value().unwrap_or_default().to_string(),
                                ))
                            })
                            .collect(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Terminates this instance in its group without lowering the desired
    /// capacity, so the group launches a replacement.
    pub async fn terminate(&self, instance_id: &str) -> Result<(), AwsError> {
        self.asg
            .terminate_instance_in_auto_scaling_group()
            .instance_id(instance_id)
            .should_decrement_desired_capacity(false)
            .send()
            .await
            .map_err(|e| {
                AwsError::sdk(AwsOp::TerminateInstanceInAutoScalingGroup, instance_id, e)
            })?;
        Ok(())
    }

    /// Sets tags on the instance (EC2 `CreateTags` overwrites existing keys).
    pub async fn tag_instance(
        &self,
        instance_id: &str,
        tags: &[(&str, &str)],
    ) -> Result<(), AwsError> {
        let mut req = self.ec2.create_tags().resources(instance_id);
        for (k, v) in tags {
            req = req.tags(aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build());
        }
        req.send()
            .await
            .map_err(|e| AwsError::sdk(AwsOp::CreateTags, instance_id, e))?;
        Ok(())
    }

    /// Sets the same tags on many instances: one `CreateTags` per 1,000.
    pub async fn tag_instances(
        &self,
        instance_ids: &[String],
        tags: &[(&str, &str)],
    ) -> Result<(), AwsError> {
        for chunk in instance_ids.chunks(CREATE_TAGS_MAX_RESOURCES) {
            let mut req = self.ec2.create_tags().set_resources(Some(chunk.to_vec()));
            for (k, v) in tags {
                req = req.tags(aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build());
            }
            let target = format!("{} instances", chunk.len());
            req.send()
                .await
                .map_err(|e| AwsError::sdk(AwsOp::CreateTags, target, e))?;
        }
        Ok(())
    }

    /// Sets tags on the group (`CreateOrUpdateTags`), not propagated to
    /// new instances.
    pub async fn tag_group(&self, group: &str, tags: &[(String, String)]) -> Result<(), AwsError> {
        let mut req = self.asg.create_or_update_tags();
        for (k, v) in tags {
            req = req.tags(
                aws_sdk_autoscaling::types::Tag::builder()
                    .resource_id(group)
                    .resource_type("auto-scaling-group")
                    .key(k)
                    .value(v)
                    .propagate_at_launch(false)
                    .build(),
            );
        }
        req.send()
            .await
            .map_err(|e| AwsError::sdk(AwsOp::CreateOrUpdateTags, group, e))?;
        Ok(())
    }

    /// The alarms each request names or prefixes, with their state value
    /// (`OK`, `ALARM`, `INSUFFICIENT_DATA`): one `DescribeAlarms` per
    /// request (up to 100 names, or one prefix), every page, metric and
    /// composite alarms.
    pub async fn alarms(
        &self,
        requests: &[crate::rollout::AlarmRequest],
    ) -> Result<Vec<(String, String)>, AwsError> {
        use crate::rollout::AlarmRequest;
        let mut found = Vec::new();
        for r in requests {
            let req = match r {
                AlarmRequest::Names(n) => {
                    self.cw.describe_alarms().set_alarm_names(Some(n.clone()))
                }
                AlarmRequest::Prefix(p) => self.cw.describe_alarms().alarm_name_prefix(p),
            }
            .alarm_types(aws_sdk_cloudwatch::types::AlarmType::MetricAlarm)
            .alarm_types(aws_sdk_cloudwatch::types::AlarmType::CompositeAlarm);
            let mut token: Option<String> = None;
            loop {
                let out = req
                    .clone()
                    .set_next_token(token.take())
                    .send()
                    .await
                    .map_err(|e| AwsError::sdk(AwsOp::DescribeAlarms, "alarms", e))?;
                let pair = |n: Option<&str>, s: Option<&aws_sdk_cloudwatch::types::StateValue>| {
                    Some((n?.to_string(), s?.as_str().to_string()))
                };
                found.extend(
                    out.metric_alarms()
                        .iter()
                        .filter_map(|a| pair(a.alarm_name(), a.state_value())),
                );
                found.extend(
                    out.composite_alarms()
                        .iter()
                        .filter_map(|a| pair(a.alarm_name(), a.state_value())),
                );
                match out.next_token() {
                    Some(t) if !t.is_empty() => token = Some(t.to_string()),
                    _ => break,
                }
            }
        }
        Ok(found)
    }
}

/// The group as the daemon uses it: the seam its EC2 tasks and rollout
/// driver are generic over. [`Group`] implements it against the real APIs;
/// unit tests use in-process fakes.
pub trait GroupApi: Clone + Send + Sync + 'static {
    /// One snapshot of the group: tags, desired capacity, members.
    fn describe(&self, group: &str)
    -> impl Future<Output = Result<GroupSnapshot, AwsError>> + Send;
    /// The group's running members as EC2 sees them (launch times, tags).
    fn instances(
        &self,
        group: &str,
    ) -> impl Future<Output = Result<Vec<InstanceInfo>, AwsError>> + Send;
    /// The group's lifecycle hooks.
    fn hooks(&self, group: &str) -> impl Future<Output = Result<Vec<Hook>, AwsError>> + Send;
    /// Completes a lifecycle action with `CONTINUE` or `ABANDON`.
    fn complete_lifecycle_action(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
        result: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Extends a lifecycle hook's timeout.
    fn heartbeat(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Marks the instance unhealthy: the group replaces it.
    fn set_unhealthy(&self, instance_id: &str)
    -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Terminates the instance, keeping the desired capacity.
    fn terminate(&self, instance_id: &str) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Sets tags on the instance.
    fn tag_instance(
        &self,
        instance_id: &str,
        tags: &[(&str, &str)],
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Sets the same tags on many instances (the nudge doorbell).
    fn tag_instances(
        &self,
        instance_ids: &[String],
        tags: &[(&str, &str)],
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Sets tags on the group (an automatic rollback).
    fn tag_group(
        &self,
        group: &str,
        tags: &[(String, String)],
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// The CloudWatch alarms the requests name, with their states.
    fn alarms(
        &self,
        requests: &[crate::rollout::AlarmRequest],
    ) -> impl Future<Output = Result<Vec<(String, String)>, AwsError>> + Send;
}

impl GroupApi for Group {
    async fn describe(&self, group: &str) -> Result<GroupSnapshot, AwsError> {
        Group::describe(self, group).await
    }
    async fn instances(&self, group: &str) -> Result<Vec<InstanceInfo>, AwsError> {
        Group::instances(self, group).await
    }
    async fn hooks(&self, group: &str) -> Result<Vec<Hook>, AwsError> {
        Group::hooks(self, group).await
    }
    async fn complete_lifecycle_action(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
        result: &str,
    ) -> Result<(), AwsError> {
        Group::complete_lifecycle_action(self, group, hook, instance_id, result).await
    }
    async fn heartbeat(&self, group: &str, hook: &str, instance_id: &str) -> Result<(), AwsError> {
        Group::heartbeat(self, group, hook, instance_id).await
    }
    async fn set_unhealthy(&self, instance_id: &str) -> Result<(), AwsError> {
        Group::set_unhealthy(self, instance_id).await
    }
    async fn terminate(&self, instance_id: &str) -> Result<(), AwsError> {
        Group::terminate(self, instance_id).await
    }
    async fn tag_instance(&self, instance_id: &str, tags: &[(&str, &str)]) -> Result<(), AwsError> {
        Group::tag_instance(self, instance_id, tags).await
    }
    async fn tag_instances(&self, ids: &[String], tags: &[(&str, &str)]) -> Result<(), AwsError> {
        Group::tag_instances(self, ids, tags).await
    }
    async fn tag_group(&self, group: &str, tags: &[(String, String)]) -> Result<(), AwsError> {
        Group::tag_group(self, group, tags).await
    }
    async fn alarms(
        &self,
        requests: &[crate::rollout::AlarmRequest],
    ) -> Result<Vec<(String, String)>, AwsError> {
        Group::alarms(self, requests).await
    }
}
