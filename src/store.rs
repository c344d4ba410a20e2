//! The data directory (`agent.data_dir`, default `/var/lib/berth`): the only
//! state berth keeps on the instance, and the only module that touches it.
//!
//! It holds two files:
//!
//! - [`PIN_FILE`], the pin ([`Plan`]): written once per instance, then only
//!   completed with image ids and digests.
//! - [`RETIRING_FILE`], a retirement in progress ([`Retiring`], EC2 only),
//!   so an agent restart resumes it and never terminates the instance twice.
//!
//! # Private
//!
//! The pin holds the containers' environment, secrets included. So the
//! directory is 0700 and every file in it 0600, whoever created them:
//! [`Store::open`] creates the directory 0700 or tightens an existing one to
//! 0700, and tightens existing files to 0600; every write creates its file
//! 0600 (and creates or tightens the directory first).
//!
//! # Atomic
//!
//! Every write is atomic: a temp file (created afresh, 0600), fsync, rename
//! over the file, fsync of the directory. A reader sees the old content or
//! the new, never a mix; a crash leaves one of them.
//!
//! # Errors: who can fix them
//!
//! [`StoreError::needs_person`] tells the two kinds apart:
//!
//! - **A corrupt file** (not the JSON berth writes, or another format
//!   version) only a person can fix: the agent exits with
//!   [`crate::exit::CONFIG`] (78), which systemd does not restart on.
//! - **Everything else is I/O** (a full disk, a read-only file system, a
//!   permission, a path that is not a directory): the agent exits with a
//!   code systemd restarts on, as the condition may pass.
//!
//! # Corrupt files: one policy
//!
//! A corrupt pin and a corrupt retirement record are both fatal: the error
//! names the file and says to move it away; berth never deletes, rewrites
//! or ignores it. Ignoring a corrupt pin would pin anew, maybe other
//! versions: the instance would change what it runs. Ignoring a corrupt
//! retirement record would lose whether the termination was already sent,
//! and whether for this instance at all: the agent would start the drained
//! containers again on an instance that may be terminating, or, had it
//! guessed "retiring", retire an instance that never was (a record baked
//! into a machine image by mistake). Only a person can tell which.
//!
//! Error messages never quote a file's content: the pin holds secrets.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::{PIN_FORMAT, Plan};

/// File name of the pin inside the data directory.
pub const PIN_FILE: &str = "pin.json";
/// File name of the retirement record inside the data directory.
pub const RETIRING_FILE: &str = "retiring.json";
/// Mode of the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in the data directory.
pub const FILE_MODE: u32 = 0o600;

/// A retirement in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retiring {
    pub instance_id: String,
    /// `TerminateInstanceInAutoScalingGroup` was (about to be) sent.
    pub terminate_sent: bool,
}

/// Why the data directory or a file in it could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create or secure the data directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// `problem` never quotes the content (see the module docs); the JSON
    /// error is not kept as the source, as its message may quote a value.
    #[error("{path} is corrupt ({problem}); a person must look at it and move it away")]
    Corrupt { path: PathBuf, problem: String },
}

impl StoreError {
    /// The file or directory concerned.
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        match self {
            StoreError::Dir { path, .. }
            | StoreError::Read { path, .. }
            | StoreError::Write { path, .. }
            | StoreError::Corrupt { path, .. } => path,
        }
    }

    /// Whether only a person can fix this (a corrupt file: exit 78), rather
    /// than an I/O failure that may pass (exit with a code systemd restarts on).
    pub fn needs_person(&self) -> bool {
        match self {
            StoreError::Corrupt { .. } => true,
            StoreError::Dir { .. } | StoreError::Read { .. } | StoreError::Write { .. } => false,
        }
    }
}

/// The data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    /// The directory; 0700 once anything was opened or written through this store.
    dir: PathBuf,
}

impl Store {
    /// The store at `dir`, touching nothing on disk (for reading, as `berth
    /// plan` does; a write still creates the directory 0700).
    pub fn at(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    /// Opens the store for the agent: creates the directory 0700, or
    /// tightens an existing one to 0700, and tightens its files to 0600.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let store = Store::at(dir);
        store.ensure_dir()?;
        for name in [PIN_FILE, RETIRING_FILE] {
            let path = store.dir.join(name);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o777 != FILE_MODE => {
                    fs::set_permissions(&path, Permissions::from_mode(FILE_MODE))
                        .map_err(|source| StoreError::Write { path, source })?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Read { path, source }),
            }
        }
        Ok(store)
    }

    /// The directory.
    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the pin.
    pub fn pin_path(&self) -> PathBuf {
        self.dir.join(PIN_FILE)
    }

    /// Path of the retirement record.
    pub fn retiring_path(&self) -> PathBuf {
        self.dir.join(RETIRING_FILE)
    }

    /// The pin, if there is one (whichever instance it was written for).
    pub fn load_pin(&self) -> Result<Option<Plan>, StoreError> {
        let path = self.pin_path();
        let Some(plan) = read_json::<Plan>(&path)? else {
            return Ok(None);
        };
        if plan.format != PIN_FORMAT {
            return Err(StoreError::Corrupt {
                path,
                problem: format!("format {} is not {PIN_FORMAT}", plan.format),
            });
        }
        Ok(Some(plan))
    }

    /// Writes the pin (atomically, 0600).
    pub fn save_pin(&self, plan: &Plan) -> Result<(), StoreError> {
        self.write_json(PIN_FILE, plan)
    }

    /// The retirement in progress for `instance_id`, if any. A record
    /// written for another instance is none of this one's business.
    pub fn load_retiring(&self, instance_id: &str) -> Result<Option<Retiring>, StoreError> {
        Ok(read_json::<Retiring>(&self.retiring_path())?.filter(|r| r.instance_id == instance_id))
    }

    /// Records a retirement in progress (atomically, 0600).
    pub fn save_retiring(&self, retiring: &Retiring) -> Result<(), StoreError> {
        self.write_json(RETIRING_FILE, retiring)
    }

    /// Removes the retirement record (an aborted retirement).
    pub fn clear_retiring(&self) -> Result<(), StoreError> {
        match std::fs::remove_file(self.retiring_path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Write {
                path: self.retiring_path(),
                source,
            }),
        }
    }

    /// Creates the directory 0700 (with any missing parents), or tightens it to 0700.
    fn ensure_dir(&self) -> Result<(), StoreError> {
        let err = |source| StoreError::Dir {
            path: self.dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.dir)
            .map_err(err)?;
        // Created under a umask, or by someone else: make it exactly private.
        let mode = fs::metadata(&self.dir).map_err(err)?.permissions().mode();
        if mode & 0o777 != DIR_MODE {
            fs::set_permissions(&self.dir, Permissions::from_mode(DIR_MODE)).map_err(err)?;
        }
        Ok(())
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let mut body = serde_json::to_vec_pretty(value).expect("berth's records serialize");
        body.push(b'\n');
        self.ensure_dir()?;
        atomic_write(&self.dir, name, &body).map_err(|source| StoreError::Write {
            path: self.dir.join(name),
            source,
        })
    }
}

/// Reads and parses `path`; `None` if it does not exist.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            problem: crate::manifest::without_values(&e.to_string()),
        })
}

/// Writes `dir/name` atomically and privately: a fresh temp file (0600,
/// never one left behind or planted), fsync, rename, fsync of the directory.
pub(crate) fn atomic_write(dir: &Path, name: &str, body: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    // Exactly 0600 whatever the umask.
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    f.write_all(body)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        crate::plan::for_tests(
            r#"
[clusters.web]
[[clusters.web.containers]]
name = "app"
image = "app:{version}"
env = { DB_PASSWORD = "hunter2-secret" }
"#,
            "1.0",
        )
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, Permissions::from_mode(mode)).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_new_data_dir_and_its_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/data");
        let store = Store::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700, "missing parents too");
        assert!(store.load_pin().unwrap().is_none());
        let mut p = plan();
        store.save_pin(&p).unwrap();
        assert_eq!(mode(&store.pin_path()), 0o600);
        assert_eq!(store.load_pin().unwrap(), Some(p.clone()));
        p.components[0].image_id = Some("sha256:abc".into());
        store.save_pin(&p).unwrap();
        assert_eq!(store.load_pin().unwrap(), Some(p));
        let r = Retiring {
            instance_id: "i-1".into(),
            terminate_sent: true,
        };
        store.save_retiring(&r).unwrap();
        assert_eq!(mode(&store.retiring_path()), 0o600);
        assert_eq!(store.load_retiring("i-1").unwrap(), Some(r));
        assert_eq!(
            store.load_retiring("i-2").unwrap(),
            None,
            "another instance's"
        );
        assert_eq!(names(&dir), [PIN_FILE, RETIRING_FILE], "no temp file left");
    }

    #[test]
    fn a_write_through_an_unopened_store_creates_the_dir_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let store = Store::at(&dir);
        assert!(!dir.exists(), "at() touches nothing");
        // As the supervisor records image ids: through the plan, with only the directory.
        plan().save(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&store.pin_path()), 0o600);
    }

    #[test]
    fn an_existing_readable_dir_and_files_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let store = Store::open(&dir).unwrap();
        store.save_pin(&plan()).unwrap();
        store
            .save_retiring(&Retiring {
                instance_id: "i-1".into(),
                terminate_sent: false,
            })
            .unwrap();
        chmod(&dir, 0o755);
        chmod(&store.pin_path(), 0o644);
        chmod(&store.retiring_path(), 0o666);
        Store::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&store.pin_path()), 0o600);
        assert_eq!(mode(&store.retiring_path()), 0o600);
        // A write replaces a readable file with a private one, opened or not.
        chmod(&dir, 0o755);
        chmod(&store.pin_path(), 0o644);
        Store::at(&dir).save_pin(&plan()).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&store.pin_path()), 0o600);
    }

    #[test]
    fn a_planted_or_left_temp_file_is_replaced_not_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("data")).unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"").unwrap();
        chmod(&outside, 0o644);
        let planted = store.dir().join(format!(".{PIN_FILE}.tmp"));
        std::os::unix::fs::symlink(&outside, &planted).unwrap();
        store.save_pin(&plan()).unwrap();
        assert_eq!(
            fs::read(&outside).unwrap(),
            b"",
            "nothing written through the link"
        );
        assert!(store.load_pin().unwrap().is_some());
        assert_eq!(names(store.dir()), [PIN_FILE]);
    }

    #[test]
    fn a_corrupt_pin_and_a_corrupt_retirement_record_are_the_same_kind_of_error() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut other_format = serde_json::to_value(plan()).unwrap();
        other_format["format"] = 99.into();
        let mut secret_in_wrong_place = serde_json::to_value(plan()).unwrap();
        secret_in_wrong_place["pinned_at"] = "hunter2-secret".into();
        let cases: [(&str, Vec<u8>); 5] = [
            (PIN_FILE, b"{ half".to_vec()),
            (PIN_FILE, serde_json::to_vec(&other_format).unwrap()),
            (
                PIN_FILE,
                serde_json::to_vec(&secret_in_wrong_place).unwrap(),
            ),
            (RETIRING_FILE, b"{ half".to_vec()),
            (
                RETIRING_FILE,
                br#"{"instance_id": "i-1", "terminate_sent": "hunter2-secret"}"#.to_vec(),
            ),
        ];
        for (name, body) in cases {
            fs::write(store.dir().join(name), &body).unwrap();
            let e = if name == PIN_FILE {
                store.load_pin().unwrap_err()
            } else {
                store.load_retiring("i-1").unwrap_err()
            };
            assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
            assert!(e.needs_person(), "{e}");
            // As main shows it: the whole chain.
            let e = format!("{:#}", anyhow::Error::from(e));
            assert!(e.contains(name) && e.contains("move it away"), "{e}");
            assert!(!e.contains("hunter2"), "quotes the file: {e}");
            fs::remove_file(store.dir().join(name)).unwrap();
        }
    }

    /// A data dir that cannot be created or written, for root too: its
    /// parent is a regular file (ENOTDIR). Root bypasses permission bits,
    /// and a full or read-only file system cannot be made in a unit test;
    /// this fails the same calls with an I/O error, which is what matters.
    #[test]
    fn an_unusable_data_dir_is_an_io_error_not_a_person_s() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        fs::write(&file, b"").unwrap();
        let dir = file.join("data");
        let errors = [
            Store::open(&dir).unwrap_err(),
            Store::at(&dir).save_pin(&plan()).unwrap_err(),
            Store::at(&dir)
                .save_retiring(&Retiring {
                    instance_id: "i-1".into(),
                    terminate_sent: false,
                })
                .unwrap_err(),
            Store::at(&dir).load_pin().unwrap_err(),
            Store::at(&dir).load_retiring("i-1").unwrap_err(),
        ];
        for e in errors {
            assert!(!e.needs_person(), "{e}");
            assert!(e.path().starts_with(&dir), "{e}");
            let io = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<io::Error>())
                .unwrap_or_else(|| panic!("keeps its io::Error: {e:?}"));
            assert_eq!(io.kind(), io::ErrorKind::NotADirectory, "{e}");
        }
    }
}
