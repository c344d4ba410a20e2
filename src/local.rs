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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::desired::{Identity, check_version};
use crate::manifest::parse_toml;

/// The parsed local file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFile {
    pub instance_id: String,
    pub group: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
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
