//! Desired state: who this instance is, and what its group's tags ask it to run.
//!
//! Pure code. The sources (the local file now, IMDS and the autoscaling group
//! later) produce an [`Identity`] and the group's tags; [`resolve`] turns the
//! tags plus the manifest into a [`Desired`]: the cluster and one preferred
//! version per component.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::manifest::Manifest;

pub use crate::tags::{TAG_CLUSTER, TAG_VERSION, TAG_VERSION_PREFIX};

/// Who this instance is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub instance_id: String,
    /// The autoscaling group (or its local stand-in).
    pub group: String,
}

/// What the group's tags ask this instance to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Desired {
    pub cluster: String,
    /// Preferred version per component, for every component of the cluster.
    pub versions: BTreeMap<String, String>,
}

/// A problem with one tag (or a missing one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagError {
    pub tag: String,
    pub message: String,
}

impl fmt::Display for TagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tag {}: {}", self.tag, self.message)
    }
}

/// All the problems found in a group's tags.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("group {group}: {}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct TagErrors {
    pub group: String,
    pub errors: Vec<TagError>,
}

/// A version is a Docker tag fragment: `[A-Za-z0-9_.-]`, not starting with `.` or `-`, at most 128 characters.
pub fn check_version(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && !v.starts_with(['.', '-'])
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a valid version (letters, digits, '_', '.', '-'; not starting with '.' or '-'; at most 128 characters)"
        ))
    }
}

/// Resolves the group's tags against the manifest. Reports every problem at once.
pub fn resolve(
    identity: &Identity,
    tags: &BTreeMap<String, String>,
    manifest: &Manifest,
) -> Result<Desired, TagErrors> {
    let mut errors = Vec::new();
    let mut err = |tag: &str, message: String| {
        errors.push(TagError {
            tag: tag.to_string(),
            message,
        })
    };
    let cluster_name = tags
        .get(TAG_CLUSTER)
        .cloned()
        .unwrap_or_else(|| identity.group.clone());
    let Some(cluster) = manifest.cluster(&cluster_name) else {
        let known = manifest
            .clusters
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let source = if tags.contains_key(TAG_CLUSTER) {
            ""
        } else {
            " (the group's name; set berth:cluster to choose another)"
        };
        err(
            TAG_CLUSTER,
            format!("cluster {cluster_name:?}{source} is not in the manifest (known: {known})"),
        );
        return Err(TagErrors {
            group: identity.group.clone(),
            errors,
        });
    };
    let default = tags.get(TAG_VERSION);
    if let Some(v) = default
        && let Err(m) = check_version(v)
    {
        err(TAG_VERSION, m);
    }
    for tag in tags.keys() {
        if let Some(component) = tag.strip_prefix(TAG_VERSION_PREFIX)
            && !cluster.containers.iter().any(|c| c.name == component)
        {
            let known = cluster
                .containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            err(
                tag,
                format!("cluster {cluster_name:?} has no component {component:?} (known: {known})"),
            );
        }
    }
    let mut versions = BTreeMap::new();
    for c in &cluster.containers {
        let own = format!("{TAG_VERSION_PREFIX}{}", c.name);
        match tags.get(&own).or(default) {
            Some(v) => match check_version(v) {
                Ok(()) => {
                    let image = crate::manifest::fill_version(&c.image, v);
                    let tag_len = image
                        .rsplit('/')
                        .next()
                        .and_then(|l| l.split_once(':'))
                        .map_or(0, |(_, t)| t.len());
                    if tag_len > 128 {
                        err(
                            &own,
                            format!("image tag of {image:?} is longer than 128 characters"),
                        );
                    }
                    versions.insert(c.name.clone(), v.clone());
                }
                Err(m) if tags.contains_key(&own) => err(&own, m),
                Err(_) => {} // already reported on berth:version
            },
            None => err(
                TAG_VERSION,
                format!(
                    "missing: no preferred version for component {:?} (set {TAG_VERSION} or {own})",
                    c.name
                ),
            ),
        }
    }
    if errors.is_empty() {
        Ok(Desired {
            cluster: cluster_name,
            versions,
        })
    } else {
        Err(TagErrors {
            group: identity.group.clone(),
            errors,
        })
    }
}

/// A component (or the cluster) whose preferred value differs from the pinned one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DriftEntry {
    /// The component, or [`CLUSTER_ENTRY`] for the cluster itself.
    pub component: String,
    pub pinned: String,
    pub preferred: String,
}

/// The [`DriftEntry::component`] of a changed cluster.
pub const CLUSTER_ENTRY: &str = "(cluster)";

/// The one definition of drift, used by status, the local watch and the
/// rollout gate: the cluster changed (a different container set), or a
/// pinned component's preferred version differs. A component the
/// preferred versions do not mention is not drift.
pub fn drift(
    pinned_cluster: &str,
    pinned: &BTreeMap<String, String>,
    preferred: &Desired,
) -> Vec<DriftEntry> {
    if preferred.cluster != pinned_cluster {
        return vec![DriftEntry {
            component: CLUSTER_ENTRY.into(),
            pinned: pinned_cluster.to_string(),
            preferred: preferred.cluster.clone(),
        }];
    }
    pinned
        .iter()
        .filter_map(|(c, v)| match preferred.versions.get(c) {
            Some(p) if p != v => Some(DriftEntry {
                component: c.clone(),
                pinned: v.clone(),
                preferred: p.clone(),
            }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn manifest() -> Manifest {
        Manifest::parse(
            r#"
[clusters.web]
[[clusters.web.containers]]
name = "app"
image = "app:{version}"
[[clusters.web.containers]]
name = "proxy"
image = "proxy:{version}"
"#,
            Path::new("m.toml"),
        )
        .unwrap()
    }

    fn id(group: &str) -> Identity {
        Identity {
            instance_id: "i-1".into(),
            group: group.into(),
        }
    }

    fn tags(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cluster_defaults_to_group_name_and_versions_fall_back() {
        let d = resolve(
            &id("web"),
            &tags(&[("berth:version", "1.0"), ("berth:version:proxy", "2.0")]),
            &manifest(),
        )
        .unwrap();
        assert_eq!(d.cluster, "web");
        assert_eq!(d.versions["app"], "1.0");
        assert_eq!(d.versions["proxy"], "2.0");
    }

    #[test]
    fn cluster_tag_selects_cluster() {
        let d = resolve(
            &id("web-eu-1"),
            &tags(&[("berth:cluster", "web"), ("berth:version", "3")]),
            &manifest(),
        )
        .unwrap();
        assert_eq!(d.cluster, "web");
    }

    #[test]
    fn every_tag_problem_is_named() {
        let e = resolve(
            &id("web"),
            &tags(&[
                ("berth:version:app", "bad version"),
                ("berth:version:ghost", "1"),
            ]),
            &manifest(),
        )
        .unwrap_err();
        let tags: Vec<&str> = e.errors.iter().map(|e| e.tag.as_str()).collect();
        assert!(tags.contains(&"berth:version:app"), "{e}");
        assert!(tags.contains(&"berth:version:ghost"), "{e}");
        assert!(
            tags.contains(&"berth:version"),
            "missing version for proxy: {e}"
        );
    }

    #[test]
    fn unknown_cluster_is_named() {
        let e = resolve(&id("api"), &tags(&[("berth:version", "1")]), &manifest()).unwrap_err();
        assert_eq!(e.errors[0].tag, "berth:cluster");
        assert!(e.to_string().contains("\"api\""), "{e}");
    }

    #[test]
    fn drift_lists_changed_components() {
        let pinned: BTreeMap<String, String> =
            [("app".into(), "1".into()), ("proxy".into(), "2".into())].into();
        let d = Desired {
            cluster: "web".into(),
            versions: [("app".into(), "1".into()), ("proxy".into(), "3".into())].into(),
        };
        assert_eq!(
            drift("web", &pinned, &d),
            vec![DriftEntry {
                component: "proxy".into(),
                pinned: "2".into(),
                preferred: "3".into()
            }]
        );
        // A changed cluster is drift even when every version is the same.
        let moved = Desired {
            cluster: "api".into(),
            versions: pinned.clone(),
        };
        assert_eq!(drift("web", &pinned, &moved)[0].component, CLUSTER_ENTRY);
        assert!(
            drift(
                "web",
                &pinned,
                &Desired {
                    cluster: "web".into(),
                    versions: pinned.clone()
                }
            )
            .is_empty()
        );
    }

    #[test]
    fn versions() {
        for ok in ["1", "1.4.2", "v2_rc-1", "sha-abc123"] {
            assert!(check_version(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-1", ".1", "1/2", "a b", &"x".repeat(129)] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }
}
