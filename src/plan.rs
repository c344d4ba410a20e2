//! Plan and pin: manifest + preferred versions = concrete container specs,
//! written once per instance to the data directory ([`crate::store`]).
//!
//! The pin is the instance's promise never to change what it runs. It is
//! re-read on every agent start, and only ever completed (image ids and
//! digests recorded after the first pull), never re-resolved. A pin written
//! for another instance id (say, a data directory baked into a machine
//! image by mistake) is ignored and replaced.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::desired::{Desired, Identity};
use crate::manifest::{self, ContainerSpec, Manifest};
use crate::store::{Store, StoreError};

/// Format version of the pin file.
pub const PIN_FORMAT: u32 = 1;

/// The pinned plan of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub format: u32,
    pub instance_id: String,
    pub group: String,
    pub cluster: String,
    /// Short hash of the components' specs and versions (label `berth.plan`).
    pub id: String,
    /// Seconds since the epoch when the pin was first written.
    pub pinned_at: u64,
    /// Components in manifest order.
    pub components: Vec<PlannedComponent>,
}

/// One component of a plan: its version, image and container spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedComponent {
    pub name: String,
    pub version: String,
    /// The image reference with the version filled in.
    pub image: String,
    /// Local image id (`sha256:…`), recorded once the image is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// `repo@sha256:…` as resolved at the first pull, when the registry gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The container template, with `image` resolved.
    pub spec: ContainerSpec,
}

impl PlannedComponent {
    /// The reference containers are created from: the digest when known, so
    /// a tag moved in the registry can never change what runs.
    pub fn create_ref(&self) -> &str {
        self.digest.as_deref().unwrap_or(&self.image)
    }

    /// Hash of everything that defines the container (label `berth.spec`).
    /// A managed container whose label differs is replaced.
    pub fn spec_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&self.spec).expect("container spec serializes"));
        h.update(self.create_ref().as_bytes());
        hex12(&h.finalize())
    }
}

fn hex12(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl Plan {
    /// Builds the plan for `desired` from the manifest. `desired` must come
    /// from [`crate::desired::resolve`] against the same manifest.
    pub fn build(
        identity: &Identity,
        desired: &Desired,
        manifest: &Manifest,
        now_unix: u64,
    ) -> Plan {
        let cluster = manifest
            .cluster(&desired.cluster)
            .expect("resolve() checked the cluster exists");
        let components: Vec<PlannedComponent> = cluster
            .containers
            .iter()
            .map(|c| {
                let version = desired.versions[&c.name].clone();
                let image = manifest::fill_version(&c.image, &version);
                let mut spec = c.clone();
                spec.image = image.clone();
                PlannedComponent {
                    name: c.name.clone(),
                    version,
                    image,
                    image_id: None,
                    digest: None,
                    spec,
                }
            })
            .collect();
        let mut h = Sha256::new();
        h.update(desired.cluster.as_bytes());
        for c in &components {
            h.update(serde_json::to_vec(&c.spec).expect("container spec serializes"));
        }
        Plan {
            format: PIN_FORMAT,
            instance_id: identity.instance_id.clone(),
            group: identity.group.clone(),
            cluster: desired.cluster.clone(),
            id: hex12(&h.finalize()),
            pinned_at: now_unix,
            components,
        }
    }

    /// This plan for output (`berth plan`): environment values redacted
    /// ([`ContainerSpec::redacted`]). Never run or pin it.
    pub fn redacted(&self) -> Plan {
        let mut plan = self.clone();
        for c in &mut plan.components {
            c.spec = c.spec.redacted();
        }
        plan
    }

    /// The pinned version of each component.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.components
            .iter()
            .map(|c| (c.name.clone(), c.version.clone()))
            .collect()
    }

    /// `web=1.4.2,proxy=0.9.1`, the form of the `berth:versions` instance tag.
    pub fn versions_tag(&self) -> String {
        self.components
            .iter()
            .map(|c| format!("{}={}", c.name, c.version))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Start waves (see [`manifest::start_order`]) as component indices.
    pub fn waves(&self) -> Vec<Vec<usize>> {
        let specs: Vec<ContainerSpec> = self.components.iter().map(|c| c.spec.clone()).collect();
        let waves = manifest::start_order(&specs).expect("validated manifests have no cycles");
        waves
            .into_iter()
            .map(|w| {
                w.into_iter()
                    .map(|n| {
                        self.components
                            .iter()
                            .position(|c| c.name == n)
                            .expect("known")
                    })
                    .collect()
            })
            .collect()
    }

    /// Writes the pin into `data_dir`: [`Store::save_pin`], for callers
    /// that hold only the directory.
    pub fn save(&self, data_dir: &Path) -> Result<(), StoreError> {
        Store::at(data_dir).save_pin(self)
    }
}

/// A plan for tests: instance `i-1` in group `web`, every component at
/// `version`, from a manifest's TOML text.
#[cfg(test)]
pub(crate) fn for_tests(manifest_toml: &str, version: &str) -> Plan {
    let m = Manifest::parse(manifest_toml, Path::new("m.toml")).expect("test manifest parses");
    let id = Identity {
        instance_id: "i-1".into(),
        group: "web".into(),
    };
    let tags = [("berth:version".to_string(), version.to_string())].into();
    let d = crate::desired::resolve(&id, &tags, &m).expect("test tags resolve");
    Plan::build(&id, &d, &m, 7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::resolve;

    fn setup() -> (Identity, Desired, Manifest) {
        let m = Manifest::parse(
            r#"
[clusters.web]
[[clusters.web.containers]]
name = "app"
image = "reg:5000/app:v{version}"
depends_on = ["db"]
[[clusters.web.containers]]
name = "db"
image = "db:{version}"
"#,
            Path::new("m.toml"),
        )
        .unwrap();
        let id = Identity {
            instance_id: "i-1".into(),
            group: "web".into(),
        };
        let tags = [("berth:version".to_string(), "1.0".to_string())].into();
        let d = resolve(&id, &tags, &m).unwrap();
        (id, d, m)
    }

    #[test]
    fn build_fills_images_and_orders_waves() {
        let (id, d, m) = setup();
        let p = Plan::build(&id, &d, &m, 7);
        assert_eq!(p.components[0].image, "reg:5000/app:v1.0");
        assert_eq!(p.components[0].spec.image, "reg:5000/app:v1.0");
        assert_eq!(p.waves(), vec![vec![1], vec![0]]);
        assert_eq!(p.versions_tag(), "app=1.0,db=1.0");
        assert_eq!(p.id.len(), 12);
    }

    #[test]
    fn spec_hash_changes_with_digest_and_spec() {
        let (id, d, m) = setup();
        let p = Plan::build(&id, &d, &m, 7);
        let mut c = p.components[0].clone();
        let h0 = c.spec_hash();
        c.digest = Some("reg:5000/app@sha256:00".into());
        assert_ne!(h0, c.spec_hash());
        assert_eq!(c.create_ref(), "reg:5000/app@sha256:00");
        let h1 = c.spec_hash();
        c.spec.env.insert("A".into(), "B".into());
        assert_ne!(h1, c.spec_hash());
    }

    #[test]
    fn redacted_hides_environment_values_only() {
        let (id, d, mut m) = setup();
        m.clusters.get_mut("web").unwrap().containers[0]
            .env
            .insert("DB_PASSWORD".into(), "hunter2".into());
        let p = Plan::build(&id, &d, &m, 7);
        let shown = p.redacted();
        assert_eq!(
            shown.components[0].spec.env["DB_PASSWORD"],
            manifest::REDACTED
        );
        assert!(!serde_json::to_string(&shown).unwrap().contains("hunter2"));
        let mut back = shown.clone();
        back.components[0].spec.env = p.components[0].spec.env.clone();
        assert_eq!(back, p, "only the values differ");
    }
}
