//! The secret stores on AWS: SSM Parameter Store (`GetParameters`, with
//! decryption) and Secrets Manager (`BatchGetSecretValue`), behind
//! [`SecretStore`]. The resolution itself (batching, cache, retries, JSON
//! keys) is [`crate::secrets::Resolver`]'s.
//!
//! The values never leave as text: the SDK's `Debug` of the outputs
//! redacts them (sensitive members), and the SDK's own logs are capped at
//! `info` ([`crate::telemetry`]).

use aws_config::SdkConfig;
use aws_sdk_secretsmanager::types::SecretValueEntry;

use super::{AwsError, AwsOp};
use crate::secrets::{Fetched, Kind, Secret, SecretStore};

/// Both stores' clients, from the shared configuration ([`super::sdk_config`]).
pub struct AwsSecrets {
    ssm: aws_sdk_ssm::Client,
    sm: aws_sdk_secretsmanager::Client,
}

impl AwsSecrets {
    pub fn new(config: &SdkConfig) -> AwsSecrets {
        AwsSecrets {
            ssm: aws_sdk_ssm::Client::new(config),
            sm: aws_sdk_secretsmanager::Client::new(config),
        }
    }

    /// Up to 10 parameters, SecureStrings decrypted. Names SSM does not
    /// know come back in `InvalidParameters`.
    async fn parameters(&self, names: &[String]) -> Result<Fetched, AwsError> {
        let out = self
            .ssm
            .get_parameters()
            .set_names(Some(names.to_vec()))
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| AwsError::sdk(AwsOp::GetParameters, names.join(", "), e))?;
        let mut got = Fetched::default();
        for p in out.parameters() {
            if let (Some(name), Some(value)) = (p.name(), p.value()) {
                got.values.insert(name.to_string(), Secret::new(value));
            }
        }
        for name in out.invalid_parameters() {
            got.problems
                .insert(name.clone(), "parameter not found (GetParameters)".into());
        }
        Ok(got)
    }

    /// Up to 20 secrets, by name or ARN, every page.
    async fn secrets(&self, ids: &[String]) -> Result<Fetched, AwsError> {
        let mut entries = Vec::new();
        let mut errors = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .sm
                .batch_get_secret_value()
                .set_secret_id_list(Some(ids.to_vec()))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| AwsError::sdk(AwsOp::BatchGetSecretValue, ids.join(", "), e))?;
            entries.extend(out.secret_values().iter().cloned());
            errors.extend(out.errors().iter().cloned());
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        let mut got = Fetched::default();
        for id in ids {
            if let Some(e) = entries.iter().find(|e| is_entry_of(id, e)) {
                match e.secret_string() {
                    Some(text) => {
                        got.values.insert(id.clone(), Secret::new(text));
                    }
                    None => {
                        got.problems.insert(
                            id.clone(),
                            "the secret holds binary data, not text (SecretBinary)".into(),
                        );
                    }
                }
            } else if let Some(err) = errors.iter().find(|x| x.secret_id() == Some(id.as_str())) {
                let why = match (err.error_code(), err.message()) {
                    (Some(c), Some(m)) => format!("{c}: {m}"),
                    (Some(c), None) => c.to_string(),
                    (None, m) => m.unwrap_or("failed").to_string(),
                };
                got.problems
                    .insert(id.clone(), format!("{why} (BatchGetSecretValue)"));
            }
        }
        Ok(got)
    }
}

/// Whether `entry` answers the request for `id`: its name, its ARN, or a
/// partial ARN (without the six random characters AWS appends).
fn is_entry_of(id: &str, entry: &SecretValueEntry) -> bool {
    if !id.starts_with("arn:") {
        return entry.name() == Some(id);
    }
    entry.arn().is_some_and(|arn| {
        arn == id
            || arn
                .strip_prefix(id)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|suffix| suffix.len() == 6)
    })
}

impl SecretStore for AwsSecrets {
    type Error = AwsError;

    async fn fetch(&self, kind: Kind, ids: &[String]) -> Result<Fetched, AwsError> {
        match kind {
            Kind::Ssm => self.parameters(ids).await,
            Kind::SecretsManager => self.secrets(ids).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_by_name_arn_or_partial_arn() {
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf";
        let e = SecretValueEntry::builder().name("prod/db").arn(arn).build();
        assert!(is_entry_of("prod/db", &e));
        assert!(is_entry_of(arn, &e));
        assert!(is_entry_of(
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db",
            &e
        ));
        assert!(!is_entry_of("prod/d", &e));
        assert!(!is_entry_of(
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/d",
            &e
        ));
        assert!(!is_entry_of("prod/db-AbCdEf", &e));
    }
}
