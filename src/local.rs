//! Local mode: a small TOML file stands in for the instance identity (IMDS)
//! and for the autoscaling group's tags.
//!
//! ```toml
//! instance_id = "i-local-1"
//! group = "web"
//!
//! [tags]
//! "berth:version" = "1.0"
//! "berth:version:proxy" = "0.9"
//! ```
//!
//! The agent re-reads the file while running; a changed preferred version is
//! drift, exactly as a changed group tag is on EC2.
//!
//! Its `[secrets]` table stands in for the secret stores ([`LocalSecrets`]):
//! each key is a stored item's reference, without a `#key`, and its value
//! is the item's text (JSON, for references that read a key of it):
//!
//! ```toml
//! [secrets]
//! "ssm:/prod/db/password" = "hunter2"
//! "secretsmanager:prod/api" = '{"token": "t0k3n"}'
//! ```
//!
//! It is read anew at each resolution (through the resolver's cache), so a
//! secret added to the file is picked up by the next create.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backoff::Retryable;
use crate::desired::{Identity, check_version};
use crate::manifest::parse_toml;
use crate::secrets::{Fetched, Kind, Secret, SecretRef, SecretStore};

/// The parsed local file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFile {
    pub instance_id: String,
    pub group: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Stand-ins for the secret stores: reference (no `#key`) → value.
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
}

/// Why the local file could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LocalError {
    #[error("cannot read local file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("local file {path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl LocalFile {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<LocalFile, LocalError> {
        let text = std::fs::read_to_string(path).map_err(|e| LocalError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |field: &str, message: String| LocalError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        let file: LocalFile =
            parse_toml(&text).map_err(|(field, message)| invalid(&field, message))?;
        if file.instance_id.trim().is_empty() || file.instance_id.contains(char::is_whitespace) {
            return Err(invalid(
                "instance_id",
                "must be a non-empty id without spaces".into(),
            ));
        }
        if file.group.trim().is_empty() {
            return Err(invalid("group", "must not be empty".into()));
        }
        for (k, v) in &file.tags {
            if k.starts_with(crate::desired::TAG_VERSION)
                && let Err(m) = check_version(v)
            {
                return Err(invalid(&format!("tags.\"{k}\""), m));
            }
        }
        for k in file.secrets.keys() {
            let field = format!("secrets.\"{k}\"");
            match SecretRef::parse(k) {
                Err(m) => return Err(invalid(&field, m)),
                Ok(r) if r.key.is_some() => {
                    return Err(invalid(
                        &field,
                        "name the stored secret without a #key: its value is the secret's JSON, and #key references read one key of it".into(),
                    ));
                }
                Ok(_) => {}
            }
        }
        Ok(file)
    }

    /// The identity this file stands in for.
    pub fn identity(&self) -> Identity {
        Identity {
            instance_id: self.instance_id.clone(),
            group: self.group.clone(),
        }
    }
}

impl Retryable for LocalError {
    /// An unreadable file may pass (it is being replaced); an invalid one
    /// needs a person.
    fn is_retryable(&self) -> bool {
        matches!(self, LocalError::Read { .. })
    }
}

/// Local mode's secret store: the local file's `[secrets]` table, read anew
/// at every call.
pub struct LocalSecrets {
    path: PathBuf,
}

impl LocalSecrets {
    pub fn new(path: PathBuf) -> LocalSecrets {
        LocalSecrets { path }
    }
}

impl SecretStore for LocalSecrets {
    type Error = LocalError;

    async fn fetch(&self, kind: Kind, ids: &[String]) -> Result<Fetched, LocalError> {
        let file = LocalFile::load(&self.path)?;
        let mut got = Fetched::default();
        for id in ids {
            match file.secrets.get(&format!("{}{id}", kind.prefix())) {
                Some(v) => {
                    got.values.insert(id.clone(), v.clone());
                }
                None => {
                    got.problems.insert(
                        id.clone(),
                        format!(
                            "not in the [secrets] table of the local file {}",
                            self.path.display()
                        ),
                    );
                }
            }
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<LocalFile, LocalError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("local.toml");
        std::fs::write(&p, text).unwrap();
        LocalFile::load(&p)
    }

    #[test]
    fn parses_identity_and_tags() {
        let f =
            load("instance_id = \"i-1\"\ngroup = \"web\"\n[tags]\n\"berth:version\" = \"1.2\"\n")
                .unwrap();
        assert_eq!(f.identity().group, "web");
        assert_eq!(f.tags["berth:version"], "1.2");
    }

    #[test]
    fn the_secrets_table_stands_in_for_the_stores() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("local.toml");
        std::fs::write(
            &p,
            "instance_id = \"i-1\"\ngroup = \"web\"\n[secrets]\n\"ssm:/db\" = \"pw-1\"\n\"secretsmanager:api\" = '{\"k\": \"v-2\"}'\n",
        )
        .unwrap();
        let f = LocalFile::load(&p).unwrap();
        assert!(!format!("{f:?}").contains("pw-1"), "Debug hides values");
        let store = LocalSecrets::new(p.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt
            .block_on(store.fetch(Kind::Ssm, &["/db".into(), "/nope".into()]))
            .unwrap();
        assert_eq!(got.values["/db"].expose(), "pw-1");
        assert!(got.problems["/nope"].contains("[secrets]"), "{got:?}");
        let env = rt
            .block_on(crate::secrets::Resolver::new(store).resolve(
                &[("K".to_string(), "secretsmanager:api#k".to_string())].into(),
                &tokio_util::sync::CancellationToken::new(),
            ))
            .unwrap();
        assert_eq!(env.expose().collect::<Vec<_>>(), [("K", "v-2")]);
    }

    #[test]
    fn secrets_keys_are_references_without_a_json_key_and_values_are_not_quoted() {
        let head = "instance_id = \"i-1\"\ngroup = \"web\"\n[secrets]\n";
        for (line, want) in [
            ("\"vault:db\" = \"hunter2\"", "not a secret reference"),
            ("\"secretsmanager:api#k\" = \"hunter2\"", "without a #key"),
            ("\"ssm:/db\" = [\"hunter2\"]", "invalid type"),
            ("\"ssm:/db\" = 4242", "invalid type"),
        ] {
            let e = load(&format!("{head}{line}\n")).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("secrets"), "{line}: {e}");
            assert!(!e.contains("hunter2") && !e.contains("4242"), "{e}");
        }
    }

    #[test]
    fn bad_values_name_the_field() {
        let e =
            load("instance_id = \"i-1\"\ngroup = \"web\"\n[tags]\n\"berth:version\" = \"1 2\"\n")
                .unwrap_err();
        assert!(e.to_string().contains("tags.\"berth:version\""), "{e}");
        let e = load("instance_id = \"i-1\"\ngroup = \"web\"\nzone = \"a\"\n").unwrap_err();
        assert!(e.to_string().contains("zone"), "{e}");
        let e = load("group = \"web\"\n").unwrap_err();
        assert!(e.to_string().contains("instance_id"), "{e}");
    }
}
