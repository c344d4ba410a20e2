//! Registry credentials for Amazon ECR from `GetAuthorizationToken`.
//!
//! A token is valid for 12 hours; it is cached per region and fetched anew
//! [`ECR_REFRESH_BEFORE`] before it expires (or on every pull if the service
//! returns one already expired). ECR's token is `base64("AWS:<password>")`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::{Region, SdkConfig};
use base64::Engine as _;
use tokio::sync::Mutex;

use crate::runtime::auth::{Credentials, TokenSource, ecr_region};

/// How long before expiry a cached token is replaced.
pub const ECR_REFRESH_BEFORE: Duration = Duration::from_secs(3600);

struct Cached {
    creds: Credentials,
    expires: SystemTime,
}

/// ECR tokens, cached per region.
pub struct Ecr {
    config: SdkConfig,
    default_region: String,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Ecr {
    /// `default_region` serves registries whose host names no region (`auth = "ecr"` on another host).
    pub fn new(config: SdkConfig, default_region: String) -> Arc<Ecr> {
        Arc::new(Ecr {
            config,
            default_region,
            cache: Mutex::new(HashMap::new()),
        })
    }

    async fn fetch(&self, host: &str) -> Result<Credentials, String> {
        let region = ecr_region(host).unwrap_or(&self.default_region).to_string();
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.get(&region)
            && SystemTime::now() + ECR_REFRESH_BEFORE < c.expires
        {
            return Ok(Credentials {
                server: host.to_string(),
                ..c.creds.clone()
            });
        }
        let conf = self
            .config
            .to_builder()
            .region(Region::new(region.clone()))
            .build();
        let out = aws_sdk_ecr::Client::new(&conf)
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| {
                format!(
                    "ECR GetAuthorizationToken ({region}): {}",
                    aws_sdk_ecr::error::DisplayErrorContext(&e)
                )
            })?;
        let data = out
            .authorization_data()
            .first()
            .ok_or_else(|| format!("ECR GetAuthorizationToken ({region}) returned no token"))?;
        let token = data.authorization_token().unwrap_or_default();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| "ECR token is not base64 text".to_string())?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| "ECR token is not user:password".to_string())?;
        let expires = data
            .expires_at()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .unwrap_or_else(SystemTime::now);
        let creds = Credentials {
            server: host.to_string(),
            username: Some(user.to_string()),
            password: Some(password.to_string()),
            identity_token: None,
        };
        tracing::info!(region = %region, expires = %humantime::format_rfc3339_seconds(expires), "ECR token fetched");
        cache.insert(
            region,
            Cached {
                creds: creds.clone(),
                expires,
            },
        );
        Ok(creds)
    }
}

impl TokenSource for Ecr {
    fn credentials<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Credentials, String>> + Send + 'a>> {
        Box::pin(self.fetch(host))
    }
}
