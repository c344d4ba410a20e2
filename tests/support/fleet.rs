//! A fleet on one machine: one autoscaling group in moto, and one real
//! `berth run` per member, each with its own IMDS emulator, namespace,
//! status port and data directory, all on the real Docker engine.
//!
//! A harness thread follows the group's membership (moto launches
//! replacements synchronously when an instance is terminated): it starts an
//! agent for every instance the group launches and stops the agent (and
//! removes the containers) of every instance it terminates, as EC2 would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::fixture::Fx;
use super::imds::{Imds, ImdsConfig};
use super::lifecycle_proxy::LifecycleProxy;
use super::moto::{Moto, env_refs};
use super::{Agent, unique};

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
    /// The last agent log of every terminated member.
    logs: Mutex<BTreeMap<String, String>>,
}

/// The fleet: moto, the proxy the agents use for Auto Scaling, the group,
/// and its members' agents.
pub struct Fleet {
    pub moto: Arc<Moto>,
    pub proxy: Arc<LifecycleProxy>,
    pub group: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    config: Arc<(String, String)>,
}

fn env_for(moto: &Moto, proxy: &LifecycleProxy, imds: &Imds) -> Vec<(String, String)> {
    let mut env = moto.env();
    env.extend(proxy.env());
    env.extend(imds.env());
    env
}

fn start_member(
    moto: &Moto,
    proxy: &LifecycleProxy,
    group: &str,
    id: &str,
    config: &(String, String),
) -> Member {
    let imds = Imds::start(ImdsConfig {
        instance_id: id.to_string(),
        tags: BTreeMap::from([("aws:autoscaling:groupName".to_string(), group.to_string())]),
        tags_enabled: true,
        ..Default::default()
    });
    let fx = Fx::new(&config.0, &config.1, "unused");
    let env = env_for(moto, proxy, &imds);
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
    pub fn start(size: i32, tags: &[(&str, &str)], containers: &str, agent_extra: &str) -> Fleet {
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
            logs: Mutex::new(BTreeMap::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (moto, proxy, group, shared, stop, config) = (
                moto.clone(),
                proxy.clone(),
                group.clone(),
                shared.clone(),
                stop.clone(),
                config.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let now: BTreeSet<String> =
                        moto.group_instance_ids(&group).into_iter().collect();
                    let known: BTreeSet<String> =
                        shared.members.lock().unwrap().keys().cloned().collect();
                    for id in now.difference(&known) {
                        let m = start_member(&moto, &proxy, &group, id, &config);
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
        }
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
            env_for(&self.moto, &self.proxy, &m.imds)
        });
        if let Some(env) = env_and_fx {
            self.with_member(id, |m| m.agent = Some(m.fx.agent_ec2(&env_refs(&env))));
        }
    }

    /// The containers TOML and `[agent]` extra this fleet runs.
    pub fn config(&self) -> (String, String) {
        (*self.config).clone()
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
