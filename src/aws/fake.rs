//! An in-process fake of the group ([`GroupApi`]) for unit tests: answers
//! from its state, records every call, and returns scripted errors.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::AwsError;
use super::asg::{GroupApi, GroupSnapshot, Hook, InstanceInfo, Member};

#[derive(Default)]
pub struct Fake {
    pub calls: Vec<String>,
    /// Errors the next calls to the named operation return, in order.
    pub errors: std::collections::HashMap<&'static str, VecDeque<AwsError>>,
    /// This instance's (`i-1`) lifecycle state in the default snapshot.
    pub lifecycle: String,
    pub hooks: Vec<Hook>,
    /// The group, when set; else one member `i-1` in `lifecycle`.
    pub snapshot: Option<GroupSnapshot>,
    /// What `DescribeInstances` answers.
    pub instances: Vec<InstanceInfo>,
    /// The alarms `DescribeAlarms` knows: (name, state value).
    pub alarms: Vec<(String, String)>,
}

#[derive(Clone, Default)]
pub struct FakeGroup(Arc<Mutex<Fake>>);

impl FakeGroup {
    /// The fake's state, to set up or inspect.
    pub fn state(&self) -> std::sync::MutexGuard<'_, Fake> {
        self.0.lock().unwrap()
    }

    pub fn call(&self, what: &'static str, detail: String) -> Result<(), AwsError> {
        let mut f = self.0.lock().unwrap();
        f.calls.push(format!("{what} {detail}"));
        match f.errors.get_mut(what).and_then(VecDeque::pop_front) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    pub fn fail(&self, what: &'static str, e: AwsError, times: usize) {
        let mut f = self.0.lock().unwrap();
        f.errors
            .entry(what)
            .or_default()
            .extend(std::iter::repeat_n(e, times));
    }
    /// Sets `tags` on the instances `ids` (as EC2's `CreateTags` does).
    fn apply_tags(&self, ids: &[String], tags: &[(&str, &str)]) {
        for i in self.state().instances.iter_mut() {
            if ids.contains(&i.instance_id) {
                for (k, v) in tags {
                    i.tags.insert(k.to_string(), v.to_string());
                }
            }
        }
    }

    pub fn calls(&self, prefix: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.starts_with(prefix))
            .cloned()
            .collect()
    }
}

impl GroupApi for FakeGroup {
    async fn describe(&self, group: &str) -> Result<GroupSnapshot, AwsError> {
        self.call("DescribeAutoScalingGroups", group.into())?;
        if let Some(s) = self.state().snapshot.clone() {
            return Ok(s);
        }
        let state = self.0.lock().unwrap().lifecycle.clone();
        Ok(GroupSnapshot {
            name: group.into(),
            tags: Default::default(),
            desired_capacity: 1,
            members: vec![Member {
                instance_id: "i-1".into(),
                lifecycle_state: state,
                health_status: "Healthy".into(),
            }],
        })
    }
    async fn instances(&self, group: &str) -> Result<Vec<InstanceInfo>, AwsError> {
        self.call("DescribeInstances", group.into())?;
        Ok(self.state().instances.clone())
    }
    async fn hooks(&self, group: &str) -> Result<Vec<Hook>, AwsError> {
        self.call("DescribeLifecycleHooks", group.into())?;
        Ok(self.0.lock().unwrap().hooks.clone())
    }
    async fn complete_lifecycle_action(
        &self,
        _group: &str,
        hook: &str,
        _id: &str,
        result: &str,
    ) -> Result<(), AwsError> {
        self.call("CompleteLifecycleAction", format!("{hook} {result}"))
    }
    async fn heartbeat(&self, _g: &str, hook: &str, _id: &str) -> Result<(), AwsError> {
        self.call("RecordLifecycleActionHeartbeat", hook.into())
    }
    async fn set_unhealthy(&self, id: &str) -> Result<(), AwsError> {
        self.call("SetInstanceHealth", id.into())
    }
    async fn terminate(&self, id: &str) -> Result<(), AwsError> {
        self.call("TerminateInstanceInAutoScalingGroup", id.into())
    }
    async fn tag_instance(&self, id: &str, tags: &[(&str, &str)]) -> Result<(), AwsError> {
        let kv: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.call("CreateTags", format!("{id} {}", kv.join(",")))?;
        self.apply_tags(&[id.to_string()], tags);
        Ok(())
    }
    async fn tag_instances(&self, ids: &[String], tags: &[(&str, &str)]) -> Result<(), AwsError> {
        let kv: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.call("CreateTags", format!("{} {}", ids.join(","), kv.join(",")))?;
        self.apply_tags(ids, tags);
        Ok(())
    }
    async fn tag_group(&self, group: &str, tags: &[(String, String)]) -> Result<(), AwsError> {
        let kv: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.call("CreateOrUpdateTags", format!("{group} {}", kv.join(",")))?;
        if let Some(s) = self.state().snapshot.as_mut() {
            s.tags.extend(tags.iter().cloned());
        }
        Ok(())
    }
    async fn alarms(
        &self,
        requests: &[crate::rollout::AlarmRequest],
    ) -> Result<Vec<(String, String)>, AwsError> {
        use crate::rollout::AlarmRequest;
        self.call("DescribeAlarms", format!("{requests:?}"))?;
        Ok(self
            .state()
            .alarms
            .iter()
            .filter(|(a, _)| {
                requests.iter().any(|r| match r {
                    AlarmRequest::Names(n) => n.contains(a),
                    AlarmRequest::Prefix(p) => a.starts_with(p.as_str()),
                })
            })
            .cloned()
            .collect())
    }
}
