//! A test's world for `berth run`: its own namespace (container names and
//! labels), status port, data directory, manifest and local file, so tests
//! run in parallel without seeing each other's containers.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{Agent, free_port, http_get_json, remove_containers_with_label, unique, wait_until};

pub const LONG: Duration = Duration::from_secs(90);

/// One test's world: manifest, local file, data dir, status address.
pub struct Fx {
    pub ns: String,
    pub dir: tempfile::TempDir,
    pub status_addr: String,
}

impl Fx {
    /// `containers` is the TOML of `[[clusters.web.containers]]` entries;
    /// `agent_extra` adds lines to `[agent]`.
    pub fn new(containers: &str, agent_extra: &str, version: &str) -> Fx {
        let ns = unique("t");
        let dir = tempfile::Builder::new()
            .prefix("berth-it-")
            .tempdir()
            .expect("temp dir");
        let status_addr = format!("127.0.0.1:{}", free_port());
        let fx = Fx {
            ns,
            dir,
            status_addr,
        };
        fx.write_manifest(containers, agent_extra);
        fx.write_local(&format!(
            "instance_id = \"i-{}\"\ngroup = \"web\"\n[tags]\n\"berth:version\" = \"{version}\"\n",
            fx.ns
        ));
        fx
    }

    pub fn write_manifest(&self, containers: &str, agent_extra: &str) {
        let m = format!(
            "[agent]\nnamespace = \"{}\"\nstatus_addr = \"{}\"\ndata_dir = \"{}\"\n{agent_extra}\n\n[clusters.web]\n{containers}\n",
            self.ns,
            self.status_addr,
            self.data_dir().display()
        );
        std::fs::write(self.manifest(), m).expect("write manifest");
    }

    pub fn write_local(&self, text: &str) {
        // Write-then-rename so the agent never reads a half-written file.
        let tmp = self.dir.path().join("local.toml.tmp");
        std::fs::write(&tmp, text).expect("write local file");
        std::fs::rename(&tmp, self.local()).expect("rename local file");
    }

    pub fn manifest(&self) -> PathBuf {
        self.dir.path().join("berth.toml")
    }
    pub fn local(&self) -> PathBuf {
        self.dir.path().join("local.toml")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn label(&self) -> String {
        format!("berth.namespace={}", self.ns)
    }
    pub fn name(&self, component: &str) -> String {
        format!("{}-{component}", self.ns)
    }

    pub fn args(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--config".into(),
            self.manifest().display().to_string(),
            "--local".into(),
            self.local().display().to_string(),
        ]
    }

    pub fn agent(&self, envs: &[(&str, &str)]) -> Agent {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::spawn(&args, envs)
    }

    /// `berth run` in EC2 mode (no `--local`); `envs` point it at IMDS and AWS.
    pub fn agent_ec2(&self, envs: &[(&str, &str)]) -> Agent {
        let manifest = self.manifest().display().to_string();
        Agent::spawn(&["run", "--config", &manifest], envs)
    }

    pub fn status(&self) -> Option<Value> {
        http_get_json(&self.status_addr, "/status")
    }

    /// Waits until `/status` satisfies `pred`; returns that status.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_until(what, LONG, || self.status().filter(|s| pred(s)))
    }

    pub fn wait_ready(&self) -> Value {
        self.wait_status("agent ready", |s| s["state"] == "ready")
    }
}

impl Drop for Fx {
    fn drop(&mut self) {
        remove_containers_with_label(&self.label());
    }
}

/// Component `name` of a `/status` document, or `null` when it is not there
/// (yet): safe to call inside a wait predicate.
pub fn comp<'a>(s: &'a Value, name: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    s["components"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&NULL)
}
