//! Secrets by reference: a container's `secrets` table maps environment
//! names to references into a secret store, resolved when the container is
//! created.
//!
//! | reference | reads |
//! |---|---|
//! | `ssm:/prod/db/password` | an SSM Parameter Store parameter, SecureStrings decrypted |
//! | `secretsmanager:<name or ARN>` | a Secrets Manager secret's text |
//! | `secretsmanager:<name or ARN>#<key>` | one top-level key of a secret whose text is a JSON object |
//!
//! [`SecretRef::parse`] checks the syntax (the manifest's validation calls
//! it for every reference). The pin keeps references, never values.
//!
//! [`Resolver`] reads the values through the [`SecretStore`] seam (AWS in
//! [`crate::aws::secrets`], the local file in [`crate::local`], fakes in
//! tests), in batches of at most [`Kind::batch`] items per call, retrying
//! what can pass with [`crate::backoff::retry`] and [`AWS_CALL`], and
//! keeps what it read for [`SECRETS_CACHE_TTL`], so a component created
//! again and again does not call the store each time.
//!
//! # Values are never shown
//!
//! A value is a [`Secret`], whose `Debug` prints [`REDACTED`] and which has
//! no `Display` and no `Serialize`: it reaches the engine's create call
//! ([`SecretEnv::expose`]) and nothing else. Errors ([`ResolveError`]) name
//! the environment name, the reference and what is wrong, never a value,
//! and the syntax errors of [`SecretRef::parse`] do not quote what they
//! check (a value written where a reference goes by mistake stays unseen).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::{AWS_CALL, GaveUp, Retryable, retry};
use crate::manifest::REDACTED;

/// How long a value read from a store is reused for later creates.
pub const SECRETS_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// How long one resolution retries a store that fails in a way that can pass
/// (throttling, a 5xx, a timeout) before it reports the component unresolved.
pub const SECRETS_RESOLVE_DEADLINE: Duration = Duration::from_secs(60);
/// The prefix of a Parameter Store reference.
pub const SSM_PREFIX: &str = "ssm:";
/// The prefix of a Secrets Manager reference.
pub const SECRETS_MANAGER_PREFIX: &str = "secretsmanager:";

/// The longest parameter name SSM takes.
const SSM_NAME_MAX: usize = 1011;
/// The longest secret name Secrets Manager takes.
const SECRET_NAME_MAX: usize = 512;

/// Which store a reference reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// SSM Parameter Store.
    Ssm,
    /// Secrets Manager.
    SecretsManager,
}

impl Kind {
    /// The most items one call reads: `GetParameters` takes 10 names,
    /// `BatchGetSecretValue` 20 secret ids.
    pub fn batch(self) -> usize {
        match self {
            Kind::Ssm => 10,
            Kind::SecretsManager => 20,
        }
    }

    /// The reference prefix, with its colon.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Ssm => SSM_PREFIX,
            Kind::SecretsManager => SECRETS_MANAGER_PREFIX,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix().trim_end_matches(':'))
    }
}

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretRef {
    pub kind: Kind,
    /// The parameter name, or the secret's name or ARN.
    pub id: String,
    /// Secrets Manager only: the JSON key to read from the secret's text.
    pub key: Option<String>,
}

const REFERENCE_FORMS: &str =
    "ssm:<parameter name>, secretsmanager:<name or ARN> or secretsmanager:<name or ARN>#<json key>";

impl SecretRef {
    /// Parses a reference. The message never quotes `text`: a value written
    /// here by mistake must not be printed.
    pub fn parse(text: &str) -> Result<SecretRef, String> {
        if let Some(name) = text.strip_prefix(SSM_PREFIX) {
            check_parameter_name(name)?;
            return Ok(SecretRef {
                kind: Kind::Ssm,
                id: name.to_string(),
                key: None,
            });
        }
        if let Some(rest) = text.strip_prefix(SECRETS_MANAGER_PREFIX) {
            let (id, key) = match rest.split_once('#') {
                Some((id, key)) => (id, Some(key)),
                None => (rest, None),
            };
            check_secret_id(id)?;
            if key.is_some_and(str::is_empty) {
                return Err("the JSON key after '#' is empty".into());
            }
            return Ok(SecretRef {
                kind: Kind::SecretsManager,
                id: id.to_string(),
                key: key.map(str::to_string),
            });
        }
        Err(format!("not a secret reference: write {REFERENCE_FORMS}"))
    }

    /// What the store holds: the parameter or the secret, without the key.
    pub fn item(&self) -> Item {
        (self.kind, self.id.clone())
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind.prefix(), self.id)?;
        if let Some(k) = &self.key {
            write!(f, "#{k}")?;
        }
        Ok(())
    }
}

/// One stored item: its store and its id.
pub type Item = (Kind, String);

fn check_parameter_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the parameter name after ssm: is empty".into());
    }
    if name.len() > SSM_NAME_MAX {
        return Err(format!(
            "the parameter name is longer than {SSM_NAME_MAX} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
    {
        return Err(
            "a parameter name has only letters, digits and _ . - / (e.g. ssm:/prod/db/password)"
                .into(),
        );
    }
    if name.contains('/') && !name.starts_with('/') {
        return Err("a parameter path starts with '/' (e.g. ssm:/prod/db/password)".into());
    }
    if name.contains("//") || (name.len() > 1 && name.ends_with('/')) || name == "/" {
        return Err("a parameter path has no empty level and does not end with '/'".into());
    }
    Ok(())
}

fn is_secret_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b)
}

fn check_secret_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the secret name after secretsmanager: is empty".into());
    }
    if let Some(rest) = id.strip_prefix("arn:") {
        // arn:<partition>:secretsmanager:<region>:<account>:secret:<name>
        let parts: Vec<&str> = rest.splitn(6, ':').collect();
        let ok = match parts.as_slice() {
            [partition, "secretsmanager", region, account, "secret", name] => {
                !partition.is_empty()
                    && partition
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'-')
                    && !region.is_empty()
                    && region
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && account.len() == 12
                    && account.bytes().all(|b| b.is_ascii_digit())
                    && !name.is_empty()
                    && name.len() <= SECRET_NAME_MAX + 7
                    && name.bytes().all(is_secret_name_char)
            }
            _ => false,
        };
        return if ok {
            Ok(())
        } else {
            Err(
                "not a secret ARN like arn:aws:secretsmanager:<region>:<account>:secret:<name>"
                    .into(),
            )
        };
    }
    if id.len() > SECRET_NAME_MAX {
        return Err(format!(
            "the secret name is longer than {SECRET_NAME_MAX} characters"
        ));
    }
    if !id.bytes().all(is_secret_name_char) {
        return Err("a secret name has only letters, digits and / _ + = . @ -".into());
    }
    Ok(())
}

/// A secret's value. `Debug` shows [`REDACTED`]; there is no `Display` and
/// no `Serialize`, so it cannot end up in a log line, the status or the pin
/// by accident. Read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: for the engine's create call, and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A component's resolved secrets: environment name → value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretEnv(BTreeMap<String, Secret>);

impl SecretEnv {
    /// `NAME=value` pairs, for the engine's create call only.
    pub fn expose(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.expose()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What one store call answered, by item id.
#[derive(Debug, Default)]
pub struct Fetched {
    pub values: BTreeMap<String, Secret>,
    /// Items the store could not give (missing, denied), and why: never a value.
    pub problems: BTreeMap<String, String>,
}

/// The secret stores, as the resolver reads them: the seam that the AWS
/// adapter, the local file and the tests' fakes implement.
pub trait SecretStore: Send + Sync + 'static {
    type Error: Retryable + std::error::Error + Send + Sync + 'static;

    /// Reads at most [`Kind::batch`] items of one store in one call. An
    /// item the store answers for but cannot give is in
    /// [`Fetched::problems`]; `Err` means the call as a whole failed.
    fn fetch(
        &self,
        kind: Kind,
        ids: &[String],
    ) -> impl Future<Output = Result<Fetched, Self::Error>> + Send;
}

/// One reference that could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The environment name.
    pub env: String,
    /// The reference (a validated one: not a value).
    pub reference: String,
    /// What is wrong, never a value.
    pub why: String,
}

/// Why a component's secrets could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Every reference that failed, in environment-name order.
    #[error("{}", render(.0))]
    Unresolved(Vec<Problem>),
    /// Shutdown came first.
    #[error("cancelled")]
    Cancelled,
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("secret {} ({}): {}", p.env, p.reference, p.why))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads a component's secrets, in batches, through a per-boot cache.
pub struct Resolver<S> {
    store: S,
    ttl: Duration,
    deadline: Duration,
    /// Values read, with when: entries older than `ttl` are read again.
    cache: Mutex<HashMap<Item, (Secret, Instant)>>,
}

impl<S: SecretStore> Resolver<S> {
    /// A resolver with the default cache lifetime and retry deadline.
    pub fn new(store: S) -> Resolver<S> {
        Resolver {
            store,
            ttl: SECRETS_CACHE_TTL,
            deadline: SECRETS_RESOLVE_DEADLINE,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The value of every reference of `secrets` (environment name →
    /// reference), or every reference that failed.
    pub async fn resolve(
        &self,
        secrets: &BTreeMap<String, String>,
        cancel: &CancellationToken,
    ) -> Result<SecretEnv, ResolveError> {
        let mut problems = Vec::new();
        let mut refs = Vec::new();
        for (env, text) in secrets {
            match SecretRef::parse(text) {
                Ok(r) => refs.push((env, r)),
                // The manifest's validation refuses these; a pin edited by
                // hand may still hold one.
                Err(why) => problems.push(Problem {
                    env: env.clone(),
                    reference: "(invalid)".into(),
                    why,
                }),
            }
        }
        let wanted: BTreeSet<Item> = refs.iter().map(|(_, r)| r.item()).collect();
        let mut found = self.cached(&wanted);
        let mut failed: BTreeMap<Item, String> = BTreeMap::new();
        for kind in [Kind::Ssm, Kind::SecretsManager] {
            let ids: Vec<String> = wanted
                .iter()
                .filter(|(k, id)| *k == kind && !found.contains_key(&(*k, id.clone())))
                .map(|(_, id)| id.clone())
                .collect();
            for chunk in ids.chunks(kind.batch()) {
                let got = self.fetch(kind, chunk, cancel).await?;
                for id in chunk {
                    let item = (kind, id.clone());
                    if let Some(v) = got.values.get(id) {
                        found.insert(item, v.clone());
                    } else {
                        let why = got.problems.get(id).cloned().unwrap_or_else(|| {
                            format!("the store did not return it ({kind} read)")
                        });
                        failed.insert(item, why);
                    }
                }
                self.remember(kind, got.values);
            }
        }
        let mut env = BTreeMap::new();
        for (name, r) in refs {
            let item = r.item();
            let value = match (found.get(&item), &r.key) {
                (Some(v), None) => Ok(v.clone()),
                (Some(v), Some(key)) => json_key(v, key),
                (None, _) => Err(failed
                    .get(&item)
                    .cloned()
                    .unwrap_or_else(|| "not read".into())),
            };
            match value {
                Ok(v) => {
                    env.insert(name.clone(), v);
                }
                Err(why) => problems.push(Problem {
                    env: name.clone(),
                    reference: r.to_string(),
                    why,
                }),
            }
        }
        if problems.is_empty() {
            Ok(SecretEnv(env))
        } else {
            problems.sort_by(|a, b| a.env.cmp(&b.env));
            Err(ResolveError::Unresolved(problems))
        }
    }

    /// The fresh cached values of `wanted`; drops stale entries.
    fn cached(&self, wanted: &BTreeSet<Item>) -> BTreeMap<Item, Secret> {
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("secrets cache lock");
        cache.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
        wanted
            .iter()
            .filter_map(|i| cache.get(i).map(|(v, _)| (i.clone(), v.clone())))
            .collect()
    }

    fn remember(&self, kind: Kind, values: BTreeMap<String, Secret>) {
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("secrets cache lock");
        for (id, v) in values {
            cache.insert((kind, id), (v, now));
        }
    }

    /// One batch, retried while the failure can pass. A call that fails for
    /// good makes every item of the batch a problem with the call's error.
    async fn fetch(
        &self,
        kind: Kind,
        ids: &[String],
        cancel: &CancellationToken,
    ) -> Result<Fetched, ResolveError> {
        let deadline = Instant::now() + self.deadline;
        let what = format!("reading {} {kind} secret(s)", ids.len());
        match retry(&AWS_CALL, &what, cancel, Some(deadline), || {
            self.store.fetch(kind, ids)
        })
        .await
        {
            Ok(f) => Ok(f),
            Err(GaveUp::Cancelled) => Err(ResolveError::Cancelled),
            Err(e) => Ok(Fetched {
                values: BTreeMap::new(),
                problems: ids.iter().map(|id| (id.clone(), e.to_string())).collect(),
            }),
        }
    }
}

/// The value of `key` in a secret whose text is a JSON object: a string as
/// it is, a number or a boolean as its JSON text. Messages name the key,
/// never the text.
pub fn json_key(secret: &Secret, key: &str) -> Result<Secret, String> {
    use serde_json::Value;
    let not_object = || "the secret is not a JSON object, so it has no keys".to_string();
    let v: Value = serde_json::from_str(secret.expose()).map_err(|_| not_object())?;
    let obj = v.as_object().ok_or_else(not_object)?;
    match obj.get(key) {
        None => Err(format!("the secret's JSON has no key {key:?}")),
        Some(Value::String(s)) => Ok(Secret(s.clone())),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Secret(v.to_string())),
        Some(_) => Err(format!(
            "the secret's JSON key {key:?} holds null, an array or an object, not text"
        )),
    }
}

/// A resolver as the supervisor holds it, whatever its store.
pub trait ResolveSecrets: Send + Sync + 'static {
    /// See [`Resolver::resolve`].
    fn resolve<'a>(
        &'a self,
        secrets: &'a BTreeMap<String, String>,
        cancel: &'a CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Result<SecretEnv, ResolveError>> + Send + 'a>>;
}

impl<S: SecretStore> ResolveSecrets for Resolver<S> {
    fn resolve<'a>(
        &'a self,
        secrets: &'a BTreeMap<String, String>,
        cancel: &'a CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Result<SecretEnv, ResolveError>> + Send + 'a>> {
        Box::pin(Resolver::resolve(self, secrets, cancel))
    }
}

/// A store that has nothing: what a supervisor uses until it is given one.
pub struct NoStore;

/// [`NoStore`]'s error (never returned).
#[derive(Debug, thiserror::Error)]
#[error("no secret store")]
pub struct NoStoreError;

impl Retryable for NoStoreError {
    fn is_retryable(&self) -> bool {
        false
    }
}

impl SecretStore for NoStore {
    type Error = NoStoreError;
    async fn fetch(&self, _kind: Kind, ids: &[String]) -> Result<Fetched, NoStoreError> {
        Ok(Fetched {
            values: BTreeMap::new(),
            problems: ids
                .iter()
                .map(|id| (id.clone(), "no secret store is configured".to_string()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A store in memory that records every call and can fail the next ones.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<FakeState>>);

    #[derive(Default)]
    struct FakeState {
        values: BTreeMap<Item, String>,
        calls: Vec<(Kind, Vec<String>)>,
        /// Errors for the next calls, in order.
        errors: Vec<FakeError>,
    }

    #[derive(Debug, Clone, thiserror::Error)]
    #[error("fake store: {message}")]
    struct FakeError {
        message: String,
        retryable: bool,
    }

    impl Retryable for FakeError {
        fn is_retryable(&self) -> bool {
            self.retryable
        }
    }

    impl Fake {
        fn with(values: &[(&str, &str)]) -> Fake {
            let f = Fake::default();
            for (r, v) in values {
                f.put(r, v);
            }
            f
        }
        fn put(&self, reference: &str, value: &str) {
            let r = SecretRef::parse(reference).unwrap();
            self.0
                .lock()
                .unwrap()
                .values
                .insert(r.item(), value.to_string());
        }
        fn calls(&self) -> Vec<(Kind, Vec<String>)> {
            self.0.lock().unwrap().calls.clone()
        }
        fn fail(&self, message: &str, retryable: bool, times: usize) {
            let e = FakeError {
                message: message.into(),
                retryable,
            };
            self.0
                .lock()
                .unwrap()
                .errors
                .extend(std::iter::repeat_n(e, times));
        }
    }

    impl SecretStore for Fake {
        type Error = FakeError;
        async fn fetch(&self, kind: Kind, ids: &[String]) -> Result<Fetched, FakeError> {
            let mut s = self.0.lock().unwrap();
            assert!(ids.len() <= kind.batch(), "{} ids in one call", ids.len());
            s.calls.push((kind, ids.to_vec()));
            if !s.errors.is_empty() {
                return Err(s.errors.remove(0));
            }
            let mut f = Fetched::default();
            for id in ids {
                match s.values.get(&(kind, id.clone())) {
                    Some(v) => {
                        f.values.insert(id.clone(), Secret::new(v.clone()));
                    }
                    None => {
                        f.problems.insert(id.clone(), "not found".into());
                    }
                }
            }
            Ok(f)
        }
    }

    fn table(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn exposed(env: &SecretEnv) -> Vec<(String, String)> {
        env.expose()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn references_parse_strictly_and_errors_never_quote_the_text() {
        let ok = [
            (
                "ssm:/prod/db/password",
                Kind::Ssm,
                "/prod/db/password",
                None,
            ),
            ("ssm:plain_name-1.x", Kind::Ssm, "plain_name-1.x", None),
            ("ssm:/a", Kind::Ssm, "/a", None),
            (
                "secretsmanager:prod/api+key=@.x-y_z",
                Kind::SecretsManager,
                "prod/api+key=@.x-y_z",
                None,
            ),
            (
                "secretsmanager:prod/api#token",
                Kind::SecretsManager,
                "prod/api",
                Some("token"),
            ),
            (
                "secretsmanager:prod/api#a key#with hash",
                Kind::SecretsManager,
                "prod/api",
                Some("a key#with hash"),
            ),
            (
                "secretsmanager:arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf",
                Kind::SecretsManager,
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf",
                None,
            ),
            (
                "secretsmanager:arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:x#k",
                Kind::SecretsManager,
                "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:x",
                Some("k"),
            ),
        ];
        for (text, kind, id, key) in ok {
            let r = SecretRef::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((r.kind, r.id.as_str(), r.key.as_deref()), (kind, id, key));
            assert_eq!(r.to_string(), text, "round trip");
        }
        let secret = "hunter2";
        let bad = [
            (secret.to_string(), "not a secret reference"),
            (format!("SSM:/{secret}"), "not a secret reference"),
            (format!("ssm {secret}"), "not a secret reference"),
            (format!("env:{secret}"), "not a secret reference"),
            ("ssm:".to_string(), "empty"),
            (format!("ssm:/{secret} x"), "only letters"),
            (format!("ssm:/{secret}$"), "only letters"),
            (format!("ssm:prod/{secret}"), "starts with '/'"),
            (format!("ssm://{secret}"), "empty level"),
            (format!("ssm:/{secret}/"), "empty level"),
            ("ssm:/".to_string(), "empty level"),
            (format!("ssm:/{}", "a".repeat(1100)), "longer than"),
            ("secretsmanager:".to_string(), "empty"),
            ("secretsmanager:#key".to_string(), "empty"),
            (
                format!("secretsmanager:{secret}#"),
                "key after '#' is empty",
            ),
            (format!("secretsmanager:{secret} x"), "only letters"),
            (format!("secretsmanager:{secret}!"), "only letters"),
            (format!("secretsmanager:{}", "a".repeat(600)), "longer than"),
            (
                format!("secretsmanager:arn:aws:s3:::{secret}"),
                "not a secret ARN",
            ),
            (
                format!("secretsmanager:arn:aws:secretsmanager:eu-west-1:1234:secret:{secret}"),
                "not a secret ARN",
            ),
            (
                "secretsmanager:arn:aws:secretsmanager:eu-west-1:123456789012:secret:".to_string(),
                "not a secret ARN",
            ),
        ];
        for (text, want) in bad {
            let e = SecretRef::parse(&text).expect_err(&text);
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains(secret), "{text}: the message quotes it: {e}");
        }
    }

    #[tokio::test]
    async fn resolves_every_kind_into_the_environment() {
        let fake = Fake::with(&[
            ("ssm:/prod/db/password", "db-pass"),
            (
                "secretsmanager:prod/api",
                r#"{"token":"tok","port":8443,"tls":true}"#,
            ),
            ("secretsmanager:prod/plain", "plain text"),
        ]);
        let r = Resolver::new(fake.clone());
        let env = r
            .resolve(
                &table(&[
                    ("DB", "ssm:/prod/db/password"),
                    ("TOKEN", "secretsmanager:prod/api#token"),
                    ("PORT", "secretsmanager:prod/api#port"),
                    ("TLS", "secretsmanager:prod/api#tls"),
                    ("WHOLE", "secretsmanager:prod/api"),
                    ("PLAIN", "secretsmanager:prod/plain"),
                ]),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        let get = |k: &str| {
            exposed(&env)
                .into_iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v)
        };
        assert_eq!(get("DB").as_deref(), Some("db-pass"));
        assert_eq!(get("TOKEN").as_deref(), Some("tok"));
        assert_eq!(get("PORT").as_deref(), Some("8443"));
        assert_eq!(get("TLS").as_deref(), Some("true"));
        assert_eq!(
            get("WHOLE").as_deref(),
            Some(r#"{"token":"tok","port":8443,"tls":true}"#)
        );
        assert_eq!(get("PLAIN").as_deref(), Some("plain text"));
        // One call per store: the JSON secret is read once for its three keys.
        assert_eq!(
            fake.calls(),
            vec![
                (Kind::Ssm, vec!["/prod/db/password".to_string()]),
                (
                    Kind::SecretsManager,
                    vec!["prod/api".to_string(), "prod/plain".to_string()]
                ),
            ]
        );
        // Debug never shows a value.
        let shown = format!("{env:?}");
        for v in ["db-pass", "tok", "8443", "plain text"] {
            assert!(!shown.contains(v), "{shown}");
        }
        assert!(shown.contains("DB") && shown.contains(REDACTED), "{shown}");
    }

    #[tokio::test]
    async fn batches_at_most_ten_parameters_and_twenty_secrets_per_call() {
        let fake = Fake::default();
        let mut refs = Vec::new();
        for i in 0..25 {
            let r = format!("ssm:/prod/p{i:02}");
            fake.put(&r, &format!("v{i}"));
            refs.push((format!("P{i:02}"), r));
        }
        for i in 0..21 {
            let r = format!("secretsmanager:prod/s{i:02}");
            fake.put(&r, &format!("s{i}"));
            refs.push((format!("S{i:02}"), r));
        }
        let secrets: BTreeMap<String, String> = refs.into_iter().collect();
        let env = Resolver::new(fake.clone())
            .resolve(&secrets, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(env.expose().count(), 46);
        let sizes: Vec<(Kind, usize)> = fake
            .calls()
            .iter()
            .map(|(k, ids)| (*k, ids.len()))
            .collect();
        assert_eq!(
            sizes,
            vec![
                (Kind::Ssm, 10),
                (Kind::Ssm, 10),
                (Kind::Ssm, 5),
                (Kind::SecretsManager, 20),
                (Kind::SecretsManager, 1),
            ],
            "25 parameters in 3 calls, 21 secrets in 2"
        );
        // Every parameter was asked for exactly once.
        let asked: BTreeSet<String> = fake
            .calls()
            .into_iter()
            .filter(|(k, _)| *k == Kind::Ssm)
            .flat_map(|(_, ids)| ids)
            .collect();
        assert_eq!(asked.len(), 25);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_serves_creates_until_it_expires_then_reads_again() {
        let fake = Fake::with(&[("ssm:/a", "one"), ("secretsmanager:b", r#"{"k":"x"}"#)]);
        let r = Resolver::new(fake.clone());
        let secrets = table(&[("A", "ssm:/a"), ("B", "secretsmanager:b#k")]);
        let cancel = CancellationToken::new();
        r.resolve(&secrets, &cancel).await.unwrap();
        assert_eq!(fake.calls().len(), 2);
        // A crash loop's recreations within the lifetime: no calls.
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(30)).await;
            let env = r.resolve(&secrets, &cancel).await.unwrap();
            assert_eq!(exposed(&env)[0], ("A".into(), "one".into()));
        }
        assert_eq!(fake.calls().len(), 2, "served from the cache");
        // Rotated in the store: the next create after the lifetime reads it.
        fake.put("ssm:/a", "two");
        tokio::time::advance(SECRETS_CACHE_TTL).await;
        let env = r.resolve(&secrets, &cancel).await.unwrap();
        assert_eq!(exposed(&env)[0], ("A".into(), "two".into()));
        assert_eq!(fake.calls().len(), 4);
        // Only what is missing from the cache is read.
        let more = table(&[("A", "ssm:/a"), ("C", "ssm:/c")]);
        fake.put("ssm:/c", "three");
        r.resolve(&more, &cancel).await.unwrap();
        assert_eq!(
            fake.calls().last().unwrap(),
            &(Kind::Ssm, vec!["/c".to_string()])
        );
    }

    #[tokio::test]
    async fn failures_name_the_reference_never_a_value_and_are_not_cached() {
        let fake = Fake::with(&[
            ("ssm:/ok", "value-ok-1"),
            ("secretsmanager:json", r#"{"a":"value-a-2","n":null}"#),
            ("secretsmanager:text", "value-text-3"),
        ]);
        let r = Resolver::new(fake.clone());
        let secrets = table(&[
            ("OK", "ssm:/ok"),
            ("GONE", "ssm:/gone"),
            ("NOKEY", "secretsmanager:json#b"),
            ("NULL", "secretsmanager:json#n"),
            ("TEXT", "secretsmanager:text#a"),
        ]);
        let cancel = CancellationToken::new();
        let e = r.resolve(&secrets, &cancel).await.unwrap_err();
        let ResolveError::Unresolved(problems) = &e else {
            panic!("{e:?}")
        };
        let names: Vec<&str> = problems.iter().map(|p| p.env.as_str()).collect();
        assert_eq!(names, ["GONE", "NOKEY", "NULL", "TEXT"], "all at once");
        let msg = e.to_string();
        for want in [
            "secret GONE (ssm:/gone): not found",
            "secret NOKEY (secretsmanager:json#b): the secret's JSON has no key \"b\"",
            "secret NULL (secretsmanager:json#n): the secret's JSON key \"n\" holds null",
            "secret TEXT (secretsmanager:text#a): the secret is not a JSON object",
        ] {
            assert!(msg.contains(want), "{want}: {msg}");
        }
        let debug = format!("{e:?}");
        for v in ["value-ok-1", "value-a-2", "value-text-3"] {
            assert!(!msg.contains(v) && !debug.contains(v), "{msg}\n{debug}");
        }
        // Created later: the next resolution reads it (a miss is not cached).
        fake.put("ssm:/gone", "here");
        let ok = r
            .resolve(&table(&[("GONE", "ssm:/gone")]), &cancel)
            .await
            .unwrap();
        assert_eq!(exposed(&ok), [("GONE".into(), "here".into())]);
    }

    #[test]
    fn json_keys_read_text_numbers_and_booleans_only() {
        let s = Secret::new(r#"{"s":"x y","i":-3,"f":1.5,"b":false,"o":{},"a":[1],"z":null}"#);
        assert_eq!(json_key(&s, "s").unwrap().expose(), "x y");
        assert_eq!(json_key(&s, "i").unwrap().expose(), "-3");
        assert_eq!(json_key(&s, "f").unwrap().expose(), "1.5");
        assert_eq!(json_key(&s, "b").unwrap().expose(), "false");
        for k in ["o", "a", "z"] {
            assert!(json_key(&s, k).unwrap_err().contains("not text"), "{k}");
        }
        assert!(json_key(&s, "missing").unwrap_err().contains("no key"));
        for text in ["[1,2]", "\"just text\"", "not json at all", ""] {
            let e = json_key(&Secret::new(text), "k").unwrap_err();
            assert!(e.contains("not a JSON object"), "{text}: {e}");
            assert!(text.is_empty() || !e.contains(text), "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_failure_that_can_pass_is_retried_one_that_cannot_is_reported() {
        let fake = Fake::with(&[("ssm:/a", "v")]);
        let r = Resolver::new(fake.clone());
        let secrets = table(&[("A", "ssm:/a")]);
        let cancel = CancellationToken::new();
        fake.fail("throttled", true, 2);
        let env = r.resolve(&secrets, &cancel).await.unwrap();
        assert_eq!(exposed(&env), [("A".into(), "v".into())]);
        assert_eq!(fake.calls().len(), 3, "two retries, then the value");
        let r = Resolver::new(fake.clone());
        fake.fail("AccessDeniedException: not allowed", false, 1);
        let e = r.resolve(&secrets, &cancel).await.unwrap_err();
        assert_eq!(fake.calls().len(), 4, "a permanent error is not retried");
        assert_eq!(
            e.to_string(),
            "secret A (ssm:/a): fake store: AccessDeniedException: not allowed"
        );
        // Still failing at the deadline: reported, with the last error.
        fake.fail("unavailable", true, 1000);
        let e = r.resolve(&secrets, &cancel).await.unwrap_err();
        assert!(
            e.to_string().contains("still failing at the deadline"),
            "{e}"
        );
        // Cancelled while waiting to retry.
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert_eq!(
            r.resolve(&secrets, &cancelled).await.unwrap_err(),
            ResolveError::Cancelled
        );
    }

    #[tokio::test]
    async fn an_empty_table_reads_nothing() {
        let fake = Fake::default();
        let env = Resolver::new(fake.clone())
            .resolve(&BTreeMap::new(), &CancellationToken::new())
            .await
            .unwrap();
        assert!(env.is_empty());
        assert!(fake.calls().is_empty());
    }
}
