//! `berth run` in EC2 mode against real emulators: moto's server for the AWS
//! APIs, the IMDSv2 emulator of the test support code, and the real Docker
//! engine.
//!
//! moto does not implement `CompleteLifecycleAction` or
//! `RecordLifecycleActionHeartbeat` (HTTP 500) and has no `Pending:Wait`
//! state, so the Auto Scaling endpoint the agent uses is a thin recording
//! proxy in front of moto (`support::lifecycle_proxy`): it forwards every
//! other call, records those two, holds chosen instances in `Pending:Wait`
//! until their launch hook completes, and can inject throttling and outages.
//! Each test has its own moto server, so no state is shared (the
//! `/moto-api/reset` between tests is not needed).

mod support;

use std::collections::BTreeMap;

use serde_json::Value;
use support::fixture::{Fx, LONG, comp};
use support::imds::{Imds, ImdsConfig};
use support::lifecycle_proxy::{Fault, LifecycleProxy};
use support::moto::{Moto, env_refs};
use support::*;

const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";
const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

/// A group of one instance in moto, its IMDS, the proxy, and a test world.
struct Ec2World {
    moto: Moto,
    proxy: LifecycleProxy,
    imds: Imds,
    group: String,
    instance: String,
    fx: Fx,
    _docker_config: tempfile::TempDir,
}

impl Ec2World {
    fn new(
        group_tags: &[(&str, &str)],
        tags_enabled: bool,
        containers: &str,
        agent_extra: &str,
    ) -> Ec2World {
        let moto = Moto::start();
        let group = unique("asg");
        let mut tags = vec![("berth:cluster", "web")];
        tags.extend_from_slice(group_tags);
        let instance = moto.create_group(&group, 1, &tags).remove(0);
        let proxy = LifecycleProxy::start(&moto.url());
        let imds = Imds::start(ImdsConfig {
            instance_id: instance.clone(),
            tags: BTreeMap::from([("aws:autoscaling:groupName".to_string(), group.clone())]),
            tags_enabled,
            ..Default::default()
        });
        let extra = format!(
            "group_poll_interval = \"1s\"\nlifecycle_poll_interval = \"200ms\"\n{agent_extra}"
        );
        let fx = Fx::new(containers, &extra, "unused");
        Ec2World {
            moto,
            proxy,
            imds,
            group,
            instance,
            fx,
            _docker_config: tempfile::tempdir().expect("temp docker config"),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.moto.env();
        env.extend(self.proxy.env());
        env.extend(self.imds.env());
        env.push((
            "DOCKER_CONFIG".into(),
            self._docker_config.path().display().to_string(),
        ));
        env
    }

    fn agent(&self) -> Agent {
        let env = self.env();
        self.fx.agent_ec2(&env_refs(&env))
    }

    /// Rings the instance's doorbell (`berth:nudge` in IMDS), as an
    /// operator does after changing the group's tags: at rest the agent
    /// reads the group only every `berth:rest-poll`.
    fn nudge(&self, value: &str) {
        self.imds.set_tag("berth:nudge", value);
    }
}

fn forever(name: &str) -> String {
    format!(
        "[[clusters.web.containers]]\nname = \"{name}\"\nimage = \"berth-test/busybox:{{version}}\"\ncommand = [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
    )
}

#[test]
fn identity_from_imds_tags_pins_the_group_tags_and_tags_the_instance() {
    base_image();
    let w = Ec2World::new(&[("berth:version", "base")], true, &forever("web"), "");
    let mut agent = w.agent();
    let s = w.fx.wait_ready();
    assert_eq!(s["instance_id"], w.instance.as_str());
    assert_eq!(s["group"], w.group.as_str());
    assert_eq!(s["cluster"], "web");
    assert_eq!(comp(&s, "web")["version"], "base");
    let tags = wait_until("instance tagged ready", LONG, || {
        let t = w.moto.instance_tags(&w.instance);
        (t.get("berth:state").map(String::as_str) == Some("ready")).then_some(t)
    });
    assert_eq!(tags["berth:versions"], "web=base");
    // The group came from the IMDS tag: no DescribeAutoScalingInstances.
    assert_eq!(w.proxy.count("DescribeAutoScalingInstances"), 0);
    // IMDSv2 only: a token first, never a request without one.
    assert!(w.imds.token_puts() >= 1);
    assert_eq!(w.imds.requests_without_token(), 0);
    // Drift on EC2 is shown, and the instance keeps its pinned versions.
    w.moto
        .set_group_tags(&w.group, &[("berth:version", "next")]);
    w.nudge("operator-1");
    let s = w.fx.wait_status("drift shown", |s| {
        !s["drift"].as_array().unwrap().is_empty()
    });
    assert_eq!(s["drift"][0]["preferred"], "next");
    assert_eq!(comp(&s, "web")["state"], "running");
    assert!(agent.is_running());
    agent.wait_log("drift detected", LONG);
}

#[test]
fn identity_from_the_api_when_imds_tags_are_disabled() {
    base_image();
    let w = Ec2World::new(&[("berth:version", "base")], false, &forever("web"), "");
    let _agent = w.agent();
    let s = w.fx.wait_ready();
    assert_eq!(s["group"], w.group.as_str());
    assert!(w.proxy.count("DescribeAutoScalingInstances") >= 1);
    assert!(
        w.imds
            .gets("/latest/meta-data/tags/instance/aws:autoscaling:groupName")
            >= 1,
        "asked IMDS first"
    );
}

#[test]
fn an_instance_outside_any_group_exits_4() {
    let w = Ec2World::new(&[("berth:version", "base")], false, &forever("web"), "");
    let stray = Imds::start(ImdsConfig {
        instance_id: "i-0000000000000dead".into(),
        ..Default::default()
    });
    let mut env = w.env();
    env.retain(|(k, _)| k != "AWS_EC2_METADATA_SERVICE_ENDPOINT");
    env.extend(stray.env());
    let mut agent = w.fx.agent_ec2(&env_refs(&env));
    assert_eq!(agent.wait_exit(LONG), Some(4));
    assert!(
        agent.log().contains("is not in an autoscaling group"),
        "{}",
        agent.log()
    );
    assert!(container_ids_with_label(&w.fx.label()).is_empty());
}

#[test]
fn the_launch_hook_completes_only_once_every_container_is_healthy() {
    base_image();
    let containers = format!(
        "{}\n[[clusters.web.containers]]\nname = \"slow\"\nimage = \"berth-test/busybox:{{version}}\"\ncommand = [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 12; touch /ready; while true; do sleep 1; done\"]\nhealthcheck = {{ test = [\"CMD\", \"test\", \"-f\", \"/ready\"], interval = \"500ms\", retries = 100 }}\n",
        forever("web")
    );
    let w = Ec2World::new(&[("berth:version", "base")], true, &containers, "");
    w.moto.put_lifecycle_hook(&w.group, "launch", LAUNCHING, 30);
    w.proxy.hold_pending_wait(&w.instance);
    let _agent = w.agent();
    let s = w.fx.wait_status("slow is running, not yet healthy", |s| {
        comp(s, "slow")["state"] == "running" && comp(s, "slow")["health"] == "starting"
    });
    assert_ne!(s["state"], "ready");
    assert_eq!(
        w.proxy.count("CompleteLifecycleAction"),
        0,
        "not completed before healthy"
    );
    let call = wait_until("launch hook completed", LONG, || {
        w.proxy
            .calls_of("CompleteLifecycleAction")
            .into_iter()
            .next()
    });
    let s = w.fx.status().unwrap();
    assert_eq!(s["state"], "ready", "completed only once ready: {s}");
    assert_eq!(call.param("LifecycleActionResult"), Some("CONTINUE"));
    assert_eq!(call.param("LifecycleHookName"), Some("launch"));
    assert_eq!(call.param("InstanceId"), Some(w.instance.as_str()));
    assert_eq!(call.param("AutoScalingGroupName"), Some(w.group.as_str()));
    assert!(
        w.proxy.count("RecordLifecycleActionHeartbeat") >= 1,
        "heartbeats while waiting (every 10 s)"
    );
    assert!(!w.proxy.is_held(&w.instance));
    assert_eq!(
        w.proxy.count("CompleteLifecycleAction"),
        1,
        "completed once"
    );
}

#[test]
fn the_launch_hook_is_abandoned_when_containers_never_get_healthy() {
    base_image();
    let containers = "[[clusters.web.containers]]\nname = \"sick\"\nimage = \"berth-test/busybox:{version}\"\ncommand = [\"sleep\", \"3600\"]\nstop_signal = \"SIGKILL\"\nhealthcheck = { test = [\"CMD\", \"false\"], interval = \"500ms\", retries = 1 }\nrestart = { failure_budget = 100 }\n";
    let w = Ec2World::new(
        &[("berth:version", "base")],
        true,
        containers,
        "launch_timeout = \"3s\"\nunhealthy_after = \"off\"",
    );
    w.moto.put_lifecycle_hook(&w.group, "launch", LAUNCHING, 30);
    w.proxy.hold_pending_wait(&w.instance);
    let mut agent = w.agent();
    let call = wait_until("launch hook abandoned", LONG, || {
        w.proxy
            .calls_of("CompleteLifecycleAction")
            .into_iter()
            .next()
    });
    assert_eq!(call.param("LifecycleActionResult"), Some("ABANDON"));
    assert!(w.proxy.is_abandoned(&w.instance));
    agent.wait_log("abandoning the launch", LONG);
}

#[test]
fn a_terminating_target_state_drains_and_completes_the_terminate_hook() {
    base_image();
    let containers = format!("{}depends_on = [\"db\"]\n{}", forever("app"), forever("db"));
    let w = Ec2World::new(&[("berth:version", "base")], true, &containers, "");
    w.moto
        .put_lifecycle_hook(&w.group, "drain", TERMINATING, 300);
    let mut agent = w.agent();
    let s = w.fx.wait_ready();
    let ids: Vec<String> = ["app", "db"]
        .iter()
        .map(|c| comp(&s, c)["container_id"].as_str().unwrap().to_string())
        .collect();
    w.imds.set_target_lifecycle_state("Terminated");
    assert_eq!(agent.wait_exit(LONG), Some(3));
    for id in &ids {
        assert_eq!(inspect_field(id, "{{.State.Running}}"), "false");
        assert_eq!(
            inspect_field(id, "{{.State.ExitCode}}"),
            "0",
            "stopped with its signal"
        );
    }
    let calls = w.proxy.calls_of("CompleteLifecycleAction");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].param("LifecycleHookName"), Some("drain"));
    assert_eq!(calls[0].param("LifecycleActionResult"), Some("CONTINUE"));
    assert_eq!(
        w.moto
            .instance_tags(&w.instance)
            .get("berth:state")
            .map(String::as_str),
        Some("draining")
    );
    // The log says what happened: a termination, not a retirement.
    assert!(
        agent.log().contains("drained (terminated)"),
        "{}",
        agent.log()
    );
}

#[test]
fn a_spot_interruption_notice_drains() {
    base_image();
    let w = Ec2World::new(&[("berth:version", "base")], true, &forever("web"), "");
    let mut agent = w.agent();
    let s = w.fx.wait_ready();
    let id = comp(&s, "web")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    w.imds.set_spot_action(Some(
        r#"{"action": "terminate", "time": "2026-11-21T10:00:00Z"}"#,
    ));
    assert_eq!(agent.wait_exit(LONG), Some(3));
    assert_eq!(inspect_field(&id, "{{.State.Running}}"), "false");
    assert!(agent.log().contains("spot interruption"));
    assert_eq!(
        w.proxy.count("CompleteLifecycleAction"),
        0,
        "no terminate hook, no call"
    );
}

#[test]
fn an_exhausted_failure_budget_marks_the_instance_unhealthy() {
    // On the defaults: restart policy (budget 5, backoff 1 s … 30 s) and
    // unhealthy_after = 60 s. The crash loop's phase keeps changing; the
    // escalation must fire all the same (it used to never fire).
    base_image();
    let containers = "[[clusters.web.containers]]\nname = \"crashy\"\nimage = \"berth-test/busybox:{version}\"\ncommand = [\"sh\", \"-c\", \"sleep 1; exit 1\"]\n";
    let w = Ec2World::new(&[("berth:version", "base")], true, containers, "");
    assert_eq!(w.moto.instance_health(&w.group, &w.instance), "Healthy");
    let mut agent = w.agent();
    wait_until(
        "instance marked Unhealthy",
        std::time::Duration::from_secs(240),
        || (w.moto.instance_health(&w.group, &w.instance) == "Unhealthy").then_some(()),
    );
    agent.wait_log("instance marked Unhealthy", LONG);
    let s = w.fx.status().expect("status");
    assert_eq!(s["state"], "degraded", "{s}");
    assert!(s["components"][0]["failed_since"].is_string(), "{s}");
}

#[test]
fn ecr_images_are_pulled_with_a_token_from_get_authorization_token() {
    // moto's GetAuthorizationToken hands out base64("AWS:123456789012-auth-token").
    let reg = support::auth_registry::AuthRegistry::start("AWS", "123456789012-auth-token");
    let repo = unique("ecr");
    reg.push_image(&repo, "1.0");
    let containers = format!(
        "[[clusters.web.containers]]\nname = \"viaecr\"\nimage = \"{a}/{repo}:{{version}}\"\nregistry_auth = \"ecr\"\ncommand = [\"sleep\", \"3600\"]\n\
         [[clusters.web.containers]]\nname = \"anonymous\"\nimage = \"{a}/{repo}:{{version}}\"\nregistry_auth = \"none\"\ncommand = [\"sleep\", \"3600\"]\n",
        a = reg.addr()
    );
    let w = Ec2World::new(
        &[("berth:version", "1.0")],
        true,
        &containers,
        "pull_attempts = 1",
    );
    let mut agent = w.agent();
    let s =
        w.fx.wait_status("ECR-authenticated pull ran; anonymous one refused", |s| {
            comp(s, "viaecr")["state"] == "running"
                && comp(s, "anonymous")["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("pull"))
        });
    assert!(comp(&s, "viaecr")["image_id"].as_str().is_some());
    agent.wait_log("ECR token fetched", LONG);
    agent.kill();
}

#[test]
fn bad_group_tags_are_named_and_nothing_starts_until_fixed() {
    base_image();
    let w = Ec2World::new(&[], true, &forever("web"), "");
    let mut agent = w.agent();
    // Before anything is pinned, why the agent waits is its `reason`.
    let wait_msg = |needle: &str| {
        w.fx.wait_status(&format!("status names {needle}"), |s| {
            s["reason"].as_str().is_some_and(|m| m.contains(needle))
        })
    };
    wait_msg("berth:version");
    for (tags, needle) in [
        (
            vec![("berth:version", "base"), ("berth:version:ghost", "1")],
            "berth:version:ghost",
        ),
        (
            vec![("berth:version", "not a version")],
            "not a valid version",
        ),
        (
            vec![("berth:version", "base"), ("berth:cluster", "nope")],
            "\"nope\"",
        ),
    ] {
        w.moto.delete_group_tag(&w.group, "berth:version:ghost");
        w.moto.set_group_tags(&w.group, &tags);
        wait_msg(needle);
        assert!(
            container_ids_with_label(&w.fx.label()).is_empty(),
            "nothing starts on {needle}"
        );
        assert!(
            !w.fx.data_dir().join("pin.json").exists(),
            "nothing pinned on {needle}"
        );
        assert!(agent.is_running());
    }
    w.moto.set_group_tags(
        &w.group,
        &[("berth:version", "base"), ("berth:cluster", "web")],
    );
    let s = w.fx.wait_ready();
    let id = comp(&s, "web")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    // After pinning, a bad tag is reported and changes nothing.
    w.moto
        .set_group_tags(&w.group, &[("berth:version", "-bad")]);
    w.nudge("operator-1");
    let s = w.fx.wait_status("error shown", |s| {
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("berth:version"))
    });
    assert_eq!(comp(&s, "web")["container_id"], id.as_str());
    assert_eq!(comp(&s, "web")["state"], "running");
    assert!(agent.log().contains("nothing is retired"));
}

#[test]
fn aws_throttling_or_outage_changes_nothing_and_recovers() {
    base_image();
    let w = Ec2World::new(&[("berth:version", "base")], true, &forever("web"), "");
    // Down at boot: nothing is pinned or started until AWS answers.
    w.proxy.set_fault(Fault::Unavailable);
    let mut agent = w.agent();
    // Before anything is pinned, why the agent waits is its `reason`.
    w.fx.wait_status("waiting on AWS at boot", |s| {
        s["reason"]
            .as_str()
            .is_some_and(|m| m.contains("DescribeAutoScalingGroups"))
    });
    assert!(container_ids_with_label(&w.fx.label()).is_empty());
    w.proxy.set_fault(Fault::None);
    let s = w.fx.wait_ready();
    let id = comp(&s, "web")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    for (i, fault) in [Fault::Throttle, Fault::Unavailable]
        .into_iter()
        .enumerate()
    {
        w.proxy.set_fault(fault);
        // At rest the agent looks every berth:rest-poll: ring it.
        w.nudge(&format!("operator-{i}"));
        let s: Value = w.fx.wait_status("error shown", |s| {
            s["message"]
                .as_str()
                .is_some_and(|m| m.contains("desired state unreadable"))
        });
        assert_eq!(comp(&s, "web")["state"], "running");
        assert_eq!(comp(&s, "web")["container_id"], id.as_str());
        assert!(agent.is_running());
        w.proxy.set_fault(Fault::None);
        w.fx.wait_status("recovered", |s| s["message"].is_null());
    }
    assert!(
        agent.log().contains("Throttling"),
        "throttling named in the log"
    );
    assert_eq!(w.moto.instance_health(&w.group, &w.instance), "Healthy");
    assert_eq!(
        w.moto.group_instance_ids(&w.group),
        vec![w.instance.clone()],
        "nothing terminated"
    );
}
