//! The instance metadata service, IMDSv2 only (a token first, always).
//!
//! The SDK's IMDS client fetches and refreshes the session token, retries
//! (3 attempts, 1 s timeouts) and honours `AWS_EC2_METADATA_SERVICE_ENDPOINT`.

use aws_config::imds::client::Client;
use aws_config::imds::client::error::ImdsError;

use super::{AwsError, AwsOp};

use crate::tags::GROUP_NAME_TAG;

/// What IMDS says about this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMetadata {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub instance_type: String,
    /// The group, from the instance tag, when instance-metadata tags are enabled.
    pub group_from_tag: Option<String>,
}

/// An IMDSv2 client.
#[derive(Clone)]
pub struct Imds {
    client: Client,
}

impl Default for Imds {
    fn default() -> Self {
        Imds::new()
    }
}

impl Imds {
    /// A client for the default endpoint or `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn new() -> Imds {
        Imds {
            client: Client::builder().build(),
        }
    }

    /// GETs a metadata path; `Ok(None)` on 404.
    pub async fn get_opt(&self, path: &str) -> Result<Option<String>, AwsError> {
        match self.client.get(path).await {
            Ok(v) => Ok(Some(v.as_ref().trim().to_string())),
            Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(AwsError::new(
                AwsOp::ImdsGet,
                path,
                aws_sdk_autoscaling::error::DisplayErrorContext(&e).to_string(),
            )),
        }
    }

    async fn get(&self, path: &str) -> Result<String, AwsError> {
        self.get_opt(path)
            .await?
            .ok_or_else(|| AwsError::permanent(AwsOp::ImdsGet, path, "not found (404)"))
    }

    /// Instance id, region, zone, type, and the group if tags are visible.
    pub async fn metadata(&self) -> Result<InstanceMetadata, AwsError> {
        Ok(InstanceMetadata {
            instance_id: self.get("/latest/meta-data/instance-id").await?,
            region: self.get("/latest/meta-data/placement/region").await?,
            availability_zone: self
                .get("/latest/meta-data/placement/availability-zone")
                .await?,
            instance_type: self.get("/latest/meta-data/instance-type").await?,
            group_from_tag: self
                .get_opt(&format!("/latest/meta-data/tags/instance/{GROUP_NAME_TAG}"))
                .await?
                .filter(|g| !g.is_empty()),
        })
    }

    /// Whether instance-metadata tags are enabled: IMDS lists the
    /// instance's tag keys (404 when `InstanceMetadataTags` is disabled).
    pub async fn tags_enabled(&self) -> Result<bool, AwsError> {
        Ok(self
            .get_opt("/latest/meta-data/tags/instance")
            .await?
            .is_some())
    }

    /// One of this instance's tags, read locally (no API call); `None` when
    /// the tag is not set or instance-metadata tags are disabled.
    pub async fn instance_tag(&self, key: &str) -> Result<Option<String>, AwsError> {
        self.get_opt(&format!("/latest/meta-data/tags/instance/{key}"))
            .await
    }

    /// The group's target for this instance: `InService`, `Terminated`,
    /// `Detached`, `Warmed:*`; `None` when not in a group.
    pub async fn target_lifecycle_state(&self) -> Result<Option<String>, AwsError> {
        self.get_opt("/latest/meta-data/autoscaling/target-lifecycle-state")
            .await
    }

    /// The spot interruption notice, if one was issued (JSON body).
    pub async fn spot_instance_action(&self) -> Result<Option<String>, AwsError> {
        self.get_opt("/latest/meta-data/spot/instance-action").await
    }
}
