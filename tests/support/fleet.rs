//! A fleet on one machine: one autoscaling group in moto, and one real
//! `berth run` per member, each with its own IMDS emulator, namespace,
//! status port and data directory, all on the real Docker engine.
//!
//! A harness thread follows the group's membership (moto launches
//! replacements synchronously when an instance is terminated): it starts an
//! agent for every instance the group launches and stops the agent (and
//! removes the containers) of every instance it terminates, as EC2 would.
//! It records when it saw each instance go ([`Fleet::terminated_at`]).
//!
//! It also does what Auto Scaling does and moto does not: it replaces a
//! member whose health is `Unhealthy` (an agent's `SetInstanceHealth`, see
//! [`FleetOptions::health_replacement`]).
//!
//! [`FleetOptions`] choose what the members' IMDS serves under
//! `tags/instance` (by default each instance's current tags in moto, live)
//! and which APIs the agents reach through [`Fleet::proxy`] (counted,
//! faultable; by default Auto Scaling and CloudWatch, while EC2 goes straight
//! to moto). The harness's own calls ([`Fleet::nudge_all`], the tag readers)
//! go straight to moto and are never counted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::fixture::Fx;
use super::imds::{Imds, ImdsConfig};
use super::lifecycle_proxy::{LifecycleProxy, Service};
use super::moto::{GroupInstance, Moto, env_refs};
use super::{Agent, unique};

/// The instance tag an operator sets on members to make their agents look
/// at the group now.
pub const NUDGE_TAG: &str = "berth:nudge";

/// What a member's IMDS serves under `/latest/meta-data/tags/instance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetadataTags {
    /// Instance-metadata tags enabled: the instance's current tags in moto,
    /// read at every request (so `CreateTags`/`DeleteTags` show at once),
    /// over `aws:autoscaling:groupName` (served even should moto not hold
    /// it). This serves the group name as the fleet always has.
    #[default]
    Live,
    /// `InstanceMetadataTags=disabled`: every tag path is 404, so agents
    /// must find their group (and any nudge) another way.
    Disabled,
}

/// How long a member stays `Unhealthy` (and `InService`, its instance
/// running) before the harness replaces it, by default.
///
/// Auto Scaling documents only that an instance marked unhealthy is "almost
/// immediately scheduled for replacement", so that setting it healthy again
/// helps only in a suspended group; in a group with a terminating lifecycle
/// hook (berth's documented setup) the instance then keeps running in
/// `Terminating:Wait` while its agent drains. For the rollout gate both
/// look the same: a member on its versions that is Unhealthy, not ready,
/// its tags readable. Once EC2 shuts the instance down its tags are out of
/// the agents' view (they read `running` and `pending` instances only), so
/// this is how long the other members have to see it. 5 s stands for the
/// few seconds of both. It is no longer than the shortest wait between an
/// agent's looks at the group while it waits its turn (5 s,
/// `berth::rollout::POLL_FLOOR`): a member may or may not look in time on
/// its own, which is why the failing agent nudges the ones that must.
pub const HEALTH_REPLACEMENT_DELAY: Duration = Duration::from_secs(5);

/// How a [`Fleet`] is set up; `FleetOptions::default()` is what
/// [`Fleet::start`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetOptions {
    /// What the members' IMDS serves as instance tags.
    pub metadata_tags: MetadataTags,
    /// The APIs the agents reach through [`Fleet::proxy`]; the others go to
    /// moto directly. Default: Auto Scaling and CloudWatch (which must be
    /// proxied: moto cannot read the SDK's CBOR). Add [`Service::Ec2`] to
    /// count `CreateTags`/`DescribeInstances` or inject faults into EC2
    /// (then [`super::Fault::Throttle`] and `Unavailable` hit EC2 too).
    pub proxied: Vec<Service>,
    /// Replace a member once it has been `Unhealthy` this long, as Auto
    /// Scaling does (default [`HEALTH_REPLACEMENT_DELAY`]): terminate it
    /// and launch its replacement in one step (moto's
    /// `TerminateInstanceInAutoScalingGroup` without decrementing), which
    /// is Auto Scaling's default for a failed health check ("terminate and
    /// launch", no instance maintenance policy). The replacement boots
    /// whatever the group's tags say then. `None`: moto's own behaviour,
    /// an Unhealthy member stays.
    pub health_replacement: Option<Duration>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            metadata_tags: MetadataTags::Live,
            proxied: vec![Service::AutoScaling, Service::CloudWatch],
            health_replacement: Some(HEALTH_REPLACEMENT_DELAY),
        }
    }
}

/// One member: its IMDS, its world, its agent (None once stopped).
pub struct Member {
    pub imds: Imds,
    pub fx: Fx,
    pub agent: Option<Agent>,
}

struct Shared {
    members: Mutex<BTreeMap<String, Member>>,
    /// Every instance id the group has had, in order of appearance.
    seen: Mutex<Vec<String>>,
    terminated: Mutex<BTreeSet<String>>,
    /// When the harness saw each terminated instance leave the group.
    terminated_at: Mutex<BTreeMap<String, SystemTime>>,
    /// The members the harness replaced because they were `Unhealthy`.
    health_replaced: Mutex<BTreeSet<String>>,
    /// The last agent log of every terminated member.
    logs: Mutex<BTreeMap<String, String>>,
}

/// The fleet: moto, the proxy the agents use (see [`FleetOptions::proxied`]),
/// the group, and its members' agents.
pub struct Fleet {
    pub moto: Arc<Moto>,
    pub proxy: Arc<LifecycleProxy>,
    pub group: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    config: Arc<(String, String)>,
    options: Arc<FleetOptions>,
}

fn env_for(
    moto: &Moto,
    proxy: &LifecycleProxy,
    imds: &Imds,
    options: &FleetOptions,
) -> Vec<(String, String)> {
    let mut env = moto.env();
    env.extend(proxy.env_for(&options.proxied));
    env.extend(imds.env());
    env
}

fn start_member(
    moto: &Moto,
    proxy: &LifecycleProxy,
    group: &str,
    id: &str,
    config: &(String, String),
    options: &FleetOptions,
) -> Member {
    let imds = Imds::start(ImdsConfig {
        instance_id: id.to_string(),
        tags: BTreeMap::from([("aws:autoscaling:groupName".to_string(), group.to_string())]),
        tags_enabled: options.metadata_tags == MetadataTags::Live,
        live_tags_from: (options.metadata_tags == MetadataTags::Live).then(|| moto.url()),
        ..Default::default()
    });
    let fx = Fx::new(&config.0, &config.1, "unused");
    let env = env_for(moto, proxy, &imds, options);
    let agent = fx.agent_ec2(&env_refs(&env));
    Member {
        imds,
        fx,
        agent: Some(agent),
    }
}

impl Fleet {
    /// A group of `size` members with `tags`; every member runs `containers`
    /// (TOML of `[[clusters.web.containers]]`) with `agent_extra` in `[agent]`.
    /// With [`FleetOptions::default`].
    pub fn start(size: i32, tags: &[(&str, &str)], containers: &str, agent_extra: &str) -> Fleet {
        Fleet::start_with(FleetOptions::default(), size, tags, containers, agent_extra)
    }

    /// [`Fleet::start`] with `options`.
    pub fn start_with(
        options: FleetOptions,
        size: i32,
        tags: &[(&str, &str)],
        containers: &str,
        agent_extra: &str,
    ) -> Fleet {
        let options = Arc::new(options);
        let moto = Arc::new(Moto::start());
        let group = unique("fleet");
        let mut all = vec![("berth:cluster", "web")];
        all.extend_from_slice(tags);
        moto.create_group(&group, size, &all);
        let proxy = Arc::new(LifecycleProxy::start(&moto.url()));
        let extra = format!(
            "group_poll_interval = \"1s\"\nlifecycle_poll_interval = \"500ms\"\n{agent_extra}"
        );
        let config = Arc::new((containers.to_string(), extra));
        let shared = Arc::new(Shared {
            members: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(Vec::new()),
            terminated: Mutex::new(BTreeSet::new()),
            terminated_at: Mutex::new(BTreeMap::new()),
            health_replaced: Mutex::new(BTreeSet::new()),
            logs: Mutex::new(BTreeMap::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (moto, proxy, group, shared, stop, config, options) = (
                moto.clone(),
                proxy.clone(),
                group.clone(),
                shared.clone(),
                stop.clone(),
                config.clone(),
                options.clone(),
            );
            std::thread::spawn(move || {
                // When each member was first seen Unhealthy.
                let mut unhealthy = BTreeMap::new();
                while !stop.load(Ordering::SeqCst) {
                    let listed = moto.group_instances(&group);
                    if let Some(after) = options.health_replacement {
                        replace_unhealthy(&moto, &shared, &listed, &mut unhealthy, after);
                    }
                    let now: BTreeSet<String> = listed.into_iter().map(|i| i.id).collect();
                    let known: BTreeSet<String> =
                        shared.members.lock().unwrap().keys().cloned().collect();
                    for id in now.difference(&known) {
                        let m = start_member(&moto, &proxy, &group, id, &config, &options);
                        shared.seen.lock().unwrap().push(id.clone());
                        shared.members.lock().unwrap().insert(id.clone(), m);
                    }
                    for id in known.difference(&now) {
                        // Terminated by the group: the instance is gone, and its agent and containers with it.
                        if let Some(mut m) = shared.members.lock().unwrap().remove(id) {
                            if let Some(mut a) = m.agent.take() {
                                a.kill();
                                shared.logs.lock().unwrap().insert(id.clone(), a.log());
                            }
                            drop(m);
                        }
                        shared.terminated.lock().unwrap().insert(id.clone());
                        shared
                            .terminated_at
                            .lock()
                            .unwrap()
                            .insert(id.clone(), SystemTime::now());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        Fleet {
            moto,
            proxy,
            group,
            shared,
            stop,
            thread: Some(thread),
            config,
            options,
        }
    }

    /// The options this fleet was started with.
    pub fn options(&self) -> &FleetOptions {
        &self.options
    }

    /// Current member ids (as the harness follows them).
    pub fn member_ids(&self) -> Vec<String> {
        self.shared
            .members
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// Instance ids the group has terminated so far.
    pub fn terminated(&self) -> BTreeSet<String> {
        self.shared.terminated.lock().unwrap().clone()
    }

    /// When the harness saw each terminated instance leave the group (within
    /// a fifth of a second and one `DescribeAutoScalingGroups` of it).
    pub fn terminated_at(&self) -> BTreeMap<String, SystemTime> {
        self.shared.terminated_at.lock().unwrap().clone()
    }

    /// The members the harness replaced because they were `Unhealthy`
    /// ([`FleetOptions::health_replacement`]).
    pub fn health_replaced(&self) -> BTreeSet<String> {
        self.shared.health_replaced.lock().unwrap().clone()
    }

    /// The last agent log of a terminated member.
    pub fn log_of_terminated(&self, id: &str) -> Option<String> {
        self.shared.logs.lock().unwrap().get(id).cloned()
    }

    /// Every instance id the group has had.
    pub fn seen(&self) -> Vec<String> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// `/status` of every current member that answers.
    pub fn statuses(&self) -> BTreeMap<String, serde_json::Value> {
        self.shared
            .members
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(id, m)| m.fx.status().map(|s| (id.clone(), s)))
            .collect()
    }

    /// Members whose status says ready and whose pinned version of `web` is `version`.
    pub fn ready_on(&self, version: &str) -> usize {
        self.statuses()
            .values()
            .filter(|s| {
                s["state"] == "ready"
                    && s["components"]
                        .as_array()
                        .is_some_and(|c| c.iter().all(|c| c["version"] == version))
            })
            .count()
    }

    /// How many members are not ready in the gate's eyes: desired − (InService,
    /// Healthy and tagged `berth:state=ready`), from moto.
    pub fn unavailable(&self, desired: usize) -> usize {
        let ids = self.moto.group_instance_ids(&self.group);
        let ready = ids
            .iter()
            .filter(|id| {
                self.moto
                    .instance_tags(id)
                    .get("berth:state")
                    .map(String::as_str)
                    == Some("ready")
                    && self.moto.instance_health(&self.group, id) == "Healthy"
            })
            .count();
        desired.saturating_sub(ready)
    }

    /// Runs `f` on a member (if it is still a member).
    pub fn with_member<T>(&self, id: &str, f: impl FnOnce(&mut Member) -> T) -> Option<T> {
        self.shared.members.lock().unwrap().get_mut(id).map(f)
    }

    /// Starts the agent of a member again (same IMDS, data dir and namespace),
    /// as systemd would after the agent was killed.
    pub fn restart_agent(&self, id: &str) {
        let env_and_fx = self.with_member(id, |m| {
            if let Some(mut a) = m.agent.take() {
                a.kill();
            }
            env_for(&self.moto, &self.proxy, &m.imds, &self.options)
        });
        if let Some(env) = env_and_fx {
            self.with_member(id, |m| m.agent = Some(m.fx.agent_ec2(&env_refs(&env))));
        }
    }

    /// The containers TOML and `[agent]` extra this fleet runs.
    pub fn config(&self) -> (String, String) {
        (*self.config).clone()
    }

    /// Sets [`NUDGE_TAG`] to `value` on every member of the group (as moto
    /// has them now) with one `CreateTags` call, the way an operator would,
    /// straight to moto (not counted by the proxy). Returns the ids tagged.
    pub fn nudge_all(&self, value: &str) -> Vec<String> {
        let ids = self.moto.group_instance_ids(&self.group);
        if !ids.is_empty() {
            self.moto.tag_instances(&ids, &[(NUDGE_TAG, value)]);
        }
        ids
    }

    /// The EC2 tags of every member of the group (as moto has them now),
    /// e.g. `berth:state`, `berth:ready-since`, `berth:versions`, read with
    /// one `DescribeTags`.
    pub fn member_tags(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let ids = self.moto.group_instance_ids(&self.group);
        self.moto.instances_tags(&ids)
    }

    /// The EC2 tags of instance `id` (a member or a terminated one).
    pub fn instance_tags(&self, id: &str) -> BTreeMap<String, String> {
        self.moto.instance_tags(id)
    }

    /// The group's tags, e.g. `berth:version` and, after an automatic
    /// rollback, `berth:rolled-back-from`.
    pub fn group_tags(&self) -> BTreeMap<String, String> {
        self.moto.group_tags(&self.group)
    }
}

/// Auto Scaling's health replacement, which moto lacks: a member listed
/// `Unhealthy` for `after` (first seen at `since[id]`) is terminated and its
/// replacement launched in the same call. The next round of the harness's
/// thread sees both, like any termination.
fn replace_unhealthy(
    moto: &Moto,
    shared: &Shared,
    listed: &[GroupInstance],
    since: &mut BTreeMap<String, Instant>,
    after: Duration,
) {
    let sick: Vec<&GroupInstance> = listed
        .iter()
        .filter(|i| i.health_status == "Unhealthy")
        .collect();
    since.retain(|id, _| sick.iter().any(|i| &i.id == id));
    for i in sick {
        let first = *since.entry(i.id.clone()).or_insert_with(Instant::now);
        if first.elapsed() < after {
            continue;
        }
        since.remove(&i.id);
        match moto.terminate_in_group(&i.id, false) {
            Ok(()) => {
                shared.health_replaced.lock().unwrap().insert(i.id.clone());
            }
            Err(e) => eprintln!("fleet: cannot replace the Unhealthy member {}: {e}", i.id),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut members = self.shared.members.lock().unwrap();
        for (_, m) in members.iter_mut() {
            if let Some(mut a) = m.agent.take() {
                a.kill();
            }
        }
        members.clear();
    }
}
