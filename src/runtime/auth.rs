//! Registry credentials from docker's `config.json`.
//!
//! Read once at start-up from `$DOCKER_CONFIG/config.json`, else
//! `$HOME/.docker/config.json`. Entries of `auths` with `auth`
//! (base64 `user:password`), `username`/`password` or `identitytoken` are
//! used; credential helpers (`credsStore`, `credHelpers`) are not run, and a
//! warning says so.
//!
//! Registries that hand out short-lived tokens (ECR) plug in through
//! [`TokenSource`]; which source serves an image is decided per container by
//! its `registry_auth` mode ([`RegistryAuthMode`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;

pub use crate::manifest::RegistryAuthMode;
use serde::Deserialize;

/// Credentials for one registry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub server: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub identity_token: Option<String>,
}

/// A source of short-lived registry credentials (ECR tokens).
pub trait TokenSource: Send + Sync {
    /// Credentials for the registry at `host`.
    fn credentials<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Credentials, String>> + Send + 'a>>;
}

/// Credentials by registry host (`registry.example.com:5000`, `docker.io`),
/// plus an optional token source for ECR.
#[derive(Clone, Default)]
pub struct RegistryAuth {
    by_host: BTreeMap<String, Credentials>,
    tokens: Option<Arc<dyn TokenSource>>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .field("tokens", &self.tokens.is_some())
            .finish()
    }
}

/// The region of an ECR registry host, e.g. `123456789012.dkr.ecr.eu-west-1.amazonaws.com`.
pub fn ecr_region(host: &str) -> Option<&str> {
    let mut parts = host.split('.');
    let account = parts.next()?;
    let ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    let (dkr, ecr) = (parts.next()?, parts.next()?);
    if !ok || dkr != "dkr" || !ecr.starts_with("ecr") {
        return None;
    }
    let region = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    matches!(
        rest.as_slice(),
        ["amazonaws", "com"] | ["amazonaws", "com", "cn"]
    )
    .then_some(region)
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// The docker CLI's Docker Hub key, which means `docker.io`.
const HUB_KEY: &str = "https://index.docker.io/v1/";

impl RegistryAuth {
    /// The default config path: `$DOCKER_CONFIG/config.json` or `$HOME/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
    }

    /// Loads credentials; a missing file means none. A malformed file is an error.
    pub fn load(path: &Path) -> Result<RegistryAuth, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RegistryAuth::default());
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        RegistryAuth::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the text of a `config.json`.
    pub fn parse(text: &str) -> Result<RegistryAuth, String> {
        let file: ConfigFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if file.creds_store.is_some() || !file.cred_helpers.is_empty() {
            tracing::warn!(
                "docker config names credential helpers; berth does not run them, only `auths` entries are used"
            );
        }
        let mut by_host = BTreeMap::new();
        for (key, entry) in file.auths {
            let host = normalize_host(&key);
            let (mut username, mut password) = (entry.username, entry.password);
            if let Some(a) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .map_err(|e| format!("auths.{key:?}.auth is not base64: {e}"))?;
                let decoded = String::from_utf8(decoded)
                    .map_err(|_| format!("auths.{key:?}.auth is not UTF-8"))?;
                let (u, p) = decoded
                    .split_once(':')
                    .ok_or_else(|| format!("auths.{key:?}.auth is not base64 of user:password"))?;
                username = Some(u.to_string());
                password = Some(p.to_string());
            }
            by_host.insert(
                host.clone(),
                Credentials {
                    server: if host == "docker.io" {
                        HUB_KEY.to_string()
                    } else {
                        host
                    },
                    username,
                    password,
                    identity_token: entry.identitytoken,
                },
            );
        }
        Ok(RegistryAuth {
            by_host,
            tokens: None,
        })
    }

    /// Adds a token source (ECR) for hosts that need one.
    pub fn with_tokens(mut self, tokens: Arc<dyn TokenSource>) -> RegistryAuth {
        self.tokens = Some(tokens);
        self
    }

    /// The credentials to pull `image` with, by `mode`; `None` means anonymous.
    pub async fn credentials(
        &self,
        image: &str,
        mode: RegistryAuthMode,
    ) -> Result<Option<Credentials>, String> {
        let host = registry_host(image);
        let ecr = match mode {
            RegistryAuthMode::None => return Ok(None),
            RegistryAuthMode::Docker => false,
            RegistryAuthMode::Ecr => true,
            RegistryAuthMode::Auto => ecr_region(&host).is_some() && self.tokens.is_some(),
        };
        if !ecr {
            return Ok(self.for_image(image).cloned());
        }
        match &self.tokens {
            Some(t) => t.credentials(&host).await.map(Some),
            None => Err(format!(
                "registry_auth = \"ecr\" for {host} needs AWS (EC2 mode)"
            )),
        }
    }

    /// Credentials for the registry that serves `image`, if any.
    pub fn for_image(&self, image: &str) -> Option<&Credentials> {
        self.by_host.get(&registry_host(image))
    }
}

/// `https://reg.example.com:5000/v2/` → `reg.example.com:5000`; the Hub's keys → `docker.io`.
fn normalize_host(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

/// The registry host of an image reference, as Docker decides it: the first
/// path component if it has a `.` or `:` or is `localhost`, else `docker.io`.
pub fn registry_host(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_entries_map_to_registry_hosts() {
        let cfg = r#"{"auths": {
            "127.0.0.1:5000": {"auth": "dXNlcjpwYXNz"},
            "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
            "https://reg.example.com/v2/": {"identitytoken": "tok"}
        }}"#;
        let a = RegistryAuth::parse(cfg).unwrap();
        let c = a.for_image("127.0.0.1:5000/web:1").unwrap();
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("user"), Some("pass"))
        );
        assert_eq!(a.for_image("nginx:1").unwrap().server, HUB_KEY);
        assert_eq!(
            a.for_image("library/nginx:1").unwrap().username.as_deref(),
            Some("hub")
        );
        assert_eq!(
            a.for_image("reg.example.com/team/web:1")
                .unwrap()
                .identity_token
                .as_deref(),
            Some("tok")
        );
        assert!(a.for_image("other.example.com/web:1").is_none());
    }

    #[test]
    fn malformed_auth_is_an_error() {
        assert!(RegistryAuth::parse(r#"{"auths": {"r.io": {"auth": "!!"}}}"#).is_err());
        assert!(RegistryAuth::parse("not json").is_err());
        assert!(
            RegistryAuth::parse("{}")
                .unwrap()
                .for_image("x/y:1")
                .is_none()
        );
    }

    #[test]
    fn ecr_hosts() {
        assert_eq!(
            ecr_region("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some("eu-west-1")
        );
        assert_eq!(
            ecr_region("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com"),
            Some("us-east-1")
        );
        assert_eq!(
            ecr_region("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
            Some("cn-north-1")
        );
        assert_eq!(ecr_region("public.ecr.aws"), None);
        assert_eq!(ecr_region("127.0.0.1:5000"), None);
        assert_eq!(ecr_region("12345.dkr.ecr.eu-west-1.amazonaws.com"), None);
    }

    struct Fixed;
    impl TokenSource for Fixed {
        fn credentials<'a>(
            &'a self,
            host: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<Credentials, String>> + Send + 'a>> {
            Box::pin(async move {
                Ok(Credentials {
                    server: host.to_string(),
                    username: Some("AWS".into()),
                    ..Default::default()
                })
            })
        }
    }

    #[tokio::test]
    async fn modes_choose_the_source() {
        let cfg = r#"{"auths": {"127.0.0.1:5000": {"auth": "dXNlcjpwYXNz"}}}"#;
        let plain = RegistryAuth::parse(cfg).unwrap();
        let with = plain.clone().with_tokens(Arc::new(Fixed));
        let ecr_img = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web:1";
        let user = |c: Option<Credentials>| c.and_then(|c| c.username);
        assert_eq!(
            user(
                with.credentials(ecr_img, RegistryAuthMode::Auto)
                    .await
                    .unwrap()
            )
            .as_deref(),
            Some("AWS")
        );
        assert_eq!(
            user(
                plain
                    .credentials(ecr_img, RegistryAuthMode::Auto)
                    .await
                    .unwrap()
            ),
            None
        );
        assert!(
            plain
                .credentials("127.0.0.1:5000/web:1", RegistryAuthMode::Ecr)
                .await
                .is_err()
        );
        assert_eq!(
            user(
                with.credentials("127.0.0.1:5000/web:1", RegistryAuthMode::Ecr)
                    .await
                    .unwrap()
            )
            .as_deref(),
            Some("AWS")
        );
        assert_eq!(
            user(
                with.credentials("127.0.0.1:5000/web:1", RegistryAuthMode::Auto)
                    .await
                    .unwrap()
            )
            .as_deref(),
            Some("user")
        );
        assert_eq!(
            with.credentials("127.0.0.1:5000/web:1", RegistryAuthMode::None)
                .await
                .unwrap(),
            None
        );
    }

    #[test]
    fn hosts() {
        assert_eq!(registry_host("localhost/web:1"), "localhost");
        assert_eq!(registry_host("team/web:1"), "docker.io");
        assert_eq!(registry_host("web:1"), "docker.io");
        assert_eq!(registry_host("1.2.3.4:5000/web@sha256:00"), "1.2.3.4:5000");
    }
}
