//! Registry credentials from docker's `config.json`.
//!
//! Read once at start-up from `$DOCKER_CONFIG/config.json`, else
//! `$HOME/.docker/config.json`. Which store serves a registry follows the
//! docker CLI: the registry's entry in `credHelpers`, else the default
//! store `credsStore`, else the file's own `auths` entries (`auth`, base64
//! `user:password`; `username`/`password`; `identitytoken`). A helper
//! named by `credHelpers` or `credsStore` is the only source for its
//! registries: their `auths` entries are not used (docker keeps only e-mail
//! addresses there). An empty `credHelpers` value sends its registry back
//! to `auths`. Helpers run at pull time ([`super::credhelper`]).
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

use super::credhelper::{HELPER_PREFIX, Helpers};
pub use crate::manifest::RegistryAuthMode;
use serde::Deserialize;

/// Credentials for one registry. `Debug` never shows the password or token.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub server: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub identity_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "<hidden>");
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("identity_token", &hidden(&self.identity_token))
            .finish()
    }
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
/// the credential helpers of docker's config, plus an optional token source
/// for ECR. Clones share the helpers' cache.
#[derive(Clone, Default)]
pub struct RegistryAuth {
    by_host: BTreeMap<String, Credentials>,
    /// `credsStore`: the helper for registries `cred_helpers` does not name.
    creds_store: Option<String>,
    /// `credHelpers` by normalized host; an empty name means `auths`.
    cred_helpers: BTreeMap<String, String>,
    helpers: Arc<Helpers>,
    tokens: Option<Arc<dyn TokenSource>>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .field("creds_store", &self.creds_store)
            .field("cred_helpers", &self.cred_helpers)
            .field("tokens", &self.tokens.is_some())
            .finish()
    }
}

/// Where docker's config takes a registry's credentials from.
#[derive(Debug, PartialEq, Eq)]
enum Store<'a> {
    /// Run `docker-credential-<name>`.
    Helper(&'a str),
    /// The `auths` entry, if there is one.
    File(Option<&'a Credentials>),
}

/// The credentials a pull uses, and why there are none when a helper said so.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    pub credentials: Option<Credentials>,
    /// Set when the pull is anonymous because a credential helper has
    /// nothing for the registry: a sentence for the pull's error.
    pub anonymous: Option<String>,
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

/// The server address docker keys a registry's credentials by, and hands a
/// credential helper: the host, or [`HUB_KEY`] for Docker Hub.
fn server_address(host: &str) -> String {
    if host == "docker.io" {
        HUB_KEY.to_string()
    } else {
        host.to_string()
    }
}

/// A helper name is the end of a program name: never a path.
fn check_helper_name(path: &str, name: &str) -> Result<(), String> {
    if name.contains('/') || name.contains('\0') {
        return Err(format!(
            "{path} = {name:?} must name a program {HELPER_PREFIX}<name> on PATH, not a path"
        ));
    }
    Ok(())
}

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

    /// Parses the text of a `config.json`; the error names every problem.
    pub fn parse(text: &str) -> Result<RegistryAuth, String> {
        let file: ConfigFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut errors = Vec::new();
        let mut by_host = BTreeMap::new();
        for (key, entry) in file.auths {
            match auth_entry(&key, entry) {
                Ok(c) => {
                    by_host.insert(normalize_host(&key), c);
                }
                Err(e) => errors.push(e),
            }
        }
        let creds_store = file.creds_store.filter(|s| !s.is_empty());
        if let Some(s) = &creds_store
            && let Err(e) = check_helper_name("credsStore", s)
        {
            errors.push(e);
        }
        let mut cred_helpers = BTreeMap::new();
        for (key, name) in file.cred_helpers {
            if let Err(e) = check_helper_name(&format!("credHelpers.{key:?}"), &name) {
                errors.push(e);
            }
            let host = normalize_host(&key);
            match cred_helpers.insert(host.clone(), name.clone()) {
                Some(other) if other != name => errors.push(format!(
                    "credHelpers name {other:?} and {name:?} for the same registry {host}"
                )),
                _ => {}
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(RegistryAuth {
            by_host,
            creds_store,
            cred_helpers,
            helpers: Arc::default(),
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
        Ok(self.lookup(image, mode).await?.credentials)
    }

    /// [`RegistryAuth::credentials`], saying why a helper left the pull anonymous.
    pub async fn lookup(&self, image: &str, mode: RegistryAuthMode) -> Result<Lookup, String> {
        let host = registry_host(image);
        let ecr = match mode {
            RegistryAuthMode::None => return Ok(Lookup::default()),
            RegistryAuthMode::Docker => false,
            RegistryAuthMode::Ecr => true,
            RegistryAuthMode::Auto => ecr_region(&host).is_some() && self.tokens.is_some(),
        };
        if ecr {
            return match &self.tokens {
                Some(t) => t.credentials(&host).await.map(|c| Lookup {
                    credentials: Some(c),
                    anonymous: None,
                }),
                None => Err(format!(
                    "registry_auth = \"ecr\" for {host} needs AWS (EC2 mode)"
                )),
            };
        }
        match self.store(&host) {
            Store::File(c) => Ok(Lookup {
                credentials: c.cloned(),
                anonymous: None,
            }),
            Store::Helper(name) => {
                let server = server_address(&host);
                match self.helpers.get(name, &server).await {
                    Ok(Some(c)) => Ok(Lookup {
                        credentials: Some(c),
                        anonymous: None,
                    }),
                    Ok(None) => Ok(Lookup {
                        credentials: None,
                        anonymous: Some(format!(
                            "pulled anonymously: credential helper {HELPER_PREFIX}{name} has no credentials for {server}"
                        )),
                    }),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    /// Docker's precedence for `host`: its `credHelpers` entry, else
    /// `credsStore`, else `auths`.
    fn store(&self, host: &str) -> Store<'_> {
        let helper = match self.cred_helpers.get(host) {
            Some(name) => Some(name.as_str()).filter(|n| !n.is_empty()),
            None => self.creds_store.as_deref(),
        };
        match helper {
            Some(name) => Store::Helper(name),
            None => Store::File(self.by_host.get(host)),
        }
    }
}

/// One `auths` entry's credentials.
fn auth_entry(key: &str, entry: AuthEntry) -> Result<Credentials, String> {
    let (mut username, mut password) = (entry.username, entry.password);
    if let Some(a) = entry.auth.filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|_| format!("auths.{key:?}.auth is not base64"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| format!("auths.{key:?}.auth is not UTF-8"))?;
        let (u, p) = decoded
            .split_once(':')
            .ok_or_else(|| format!("auths.{key:?}.auth is not base64 of user:password"))?;
        username = Some(u.to_string());
        password = Some(p.to_string());
    }
    Ok(Credentials {
        server: server_address(&normalize_host(key)),
        username,
        password,
        identity_token: entry.identitytoken,
    })
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

    /// The `auths` credentials for `image`'s registry, when `auths` serves it.
    fn file<'a>(a: &'a RegistryAuth, image: &str) -> Option<&'a Credentials> {
        match a.store(&registry_host(image)) {
            Store::File(c) => c,
            Store::Helper(h) => panic!("{image} is served by helper {h}"),
        }
    }

    #[test]
    fn auth_entries_map_to_registry_hosts() {
        let cfg = r#"{"auths": {
            "127.0.0.1:5000": {"auth": "dXNlcjpwYXNz"},
            "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
            "https://reg.example.com/v2/": {"identitytoken": "tok"}
        }}"#;
        let a = RegistryAuth::parse(cfg).unwrap();
        let c = file(&a, "127.0.0.1:5000/web:1").unwrap();
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("user"), Some("pass"))
        );
        assert_eq!(file(&a, "nginx:1").unwrap().server, HUB_KEY);
        assert_eq!(
            file(&a, "library/nginx:1").unwrap().username.as_deref(),
            Some("hub")
        );
        assert_eq!(
            file(&a, "reg.example.com/team/web:1")
                .unwrap()
                .identity_token
                .as_deref(),
            Some("tok")
        );
        assert!(file(&a, "other.example.com/web:1").is_none());
    }

    #[test]
    fn malformed_config_is_an_error_naming_every_problem() {
        assert!(RegistryAuth::parse("not json").is_err());
        assert!(file(&RegistryAuth::parse("{}").unwrap(), "x/y:1").is_none());
        let e = RegistryAuth::parse(
            r#"{"auths": {"r.io": {"auth": "!!"}, "s.io": {"auth": "bm9jb2xvbg=="}},
                "credsStore": "../bin/evil",
                "credHelpers": {"docker.io": "a", "https://index.docker.io/v1/": "b", "t.io": "x/y"}}"#,
        )
        .err()
        .unwrap();
        for needle in [
            r#"auths."r.io".auth is not base64"#,
            r#"auths."s.io".auth is not base64 of user:password"#,
            r#"credsStore = "../bin/evil""#,
            r#"credHelpers."t.io" = "x/y""#,
            "for the same registry docker.io",
        ] {
            assert!(e.contains(needle), "{needle} in {e}");
        }
        // Helper names are names, never paths; nothing of a secret is quoted.
        assert!(!e.contains("nocolon"), "{e}");
    }

    #[test]
    fn precedence_is_cred_helpers_then_creds_store_then_auths() {
        let cfg = r#"{
            "auths": {
                "a.io": {"auth": "dXNlcjpwYXNz"},
                "b.io": {"auth": "dXNlcjpwYXNz"},
                "c.io": {"auth": "dXNlcjpwYXNz"}
            },
            "credsStore": "store",
            "credHelpers": {"a.io": "per-registry", "https://index.docker.io/v1/": "hub", "c.io": ""}
        }"#;
        let a = RegistryAuth::parse(cfg).unwrap();
        // credHelpers wins over credsStore and over the `auths` entry.
        assert_eq!(a.store("a.io"), Store::Helper("per-registry"));
        // credsStore wins over the `auths` entry.
        assert_eq!(a.store("b.io"), Store::Helper("store"));
        // and serves registries nobody names.
        assert_eq!(a.store("d.io"), Store::Helper("store"));
        // An empty credHelpers value means the file's own entry.
        assert!(
            matches!(a.store("c.io"), Store::File(Some(c)) if c.username.as_deref() == Some("user"))
        );
        // Docker Hub's keys all mean docker.io.
        assert_eq!(a.store(&registry_host("nginx:1")), Store::Helper("hub"));
        // Without helpers, `auths`; an empty credsStore is none.
        let a = RegistryAuth::parse(
            r#"{"auths": {"a.io": {"auth": "dXNlcjpwYXNz"}}, "credsStore": ""}"#,
        )
        .unwrap();
        assert!(matches!(a.store("a.io"), Store::File(Some(_))));
        assert_eq!(a.store("d.io"), Store::File(None));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials {
            server: "r.io".into(),
            username: Some("u".into()),
            password: Some("hunter2".into()),
            identity_token: Some("tok-secret".into()),
        };
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && !d.contains("tok-secret"), "{d}");
        assert!(d.contains("r.io") && d.contains("<hidden>"), "{d}");
    }

    /// A config whose helpers live in a temp dir of scripts.
    fn with_helpers(cfg: &str, dir: &tempfile::TempDir) -> RegistryAuth {
        let mut a = RegistryAuth::parse(cfg).unwrap();
        a.helpers = Arc::new(Helpers::in_dir(
            dir.path().to_path_buf(),
            std::time::Duration::from_secs(30),
        ));
        a
    }

    fn script(dir: &tempfile::TempDir, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.path().join(format!("{HELPER_PREFIX}{name}"));
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn helpers_serve_pulls_by_docker_mode() {
        let dir = tempfile::tempdir().unwrap();
        let asked = dir.path().join("asked");
        script(
            &dir,
            "echo",
            &format!(
                "server=$(cat)\necho \"$server\" >> {}\n\
                 printf '{{\"ServerURL\":\"%s\",\"Username\":\"<token>\",\"Secret\":\"id-%s\"}}' \"$server\" \"$server\"",
                asked.display()
            ),
        );
        script(
            &dir,
            "none",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        let a = with_helpers(
            r#"{"credsStore": "echo", "credHelpers": {"n.io": "none"},
                "auths": {"n.io": {"auth": "dXNlcjpwYXNz"}}}"#,
            &dir,
        );
        // Docker Hub's server address is the CLI's key.
        let l = a.lookup("nginx:1", RegistryAuthMode::Auto).await.unwrap();
        let c = l.credentials.unwrap();
        assert_eq!(c.server, HUB_KEY);
        assert_eq!(
            c.identity_token.as_deref(),
            Some("id-https://index.docker.io/v1/")
        );
        assert_eq!((c.username, c.password), (None, None));
        let c = a
            .credentials("r.io:5000/web:1", RegistryAuthMode::Docker)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.server, "r.io:5000");
        assert_eq!(
            std::fs::read_to_string(&asked).unwrap(),
            format!("{HUB_KEY}\nr.io:5000\n")
        );
        // Not found: anonymous, saying why; the `auths` entry is not used.
        let l = a
            .lookup("n.io/web:1", RegistryAuthMode::Auto)
            .await
            .unwrap();
        assert_eq!(l.credentials, None);
        assert_eq!(
            l.anonymous.as_deref(),
            Some(
                "pulled anonymously: credential helper docker-credential-none has no credentials for n.io"
            )
        );
        // `none` runs nothing.
        assert_eq!(
            a.lookup("q.io/web:1", RegistryAuthMode::None)
                .await
                .unwrap(),
            Lookup::default()
        );
        assert_eq!(std::fs::read_to_string(&asked).unwrap().lines().count(), 2);
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
