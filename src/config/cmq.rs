//! `[cmq]`: the TDMQ for CMQ queue the `cmq` ingress reads (signed with the CI credentials).

use super::error::ConfigError;
use super::value::{self, duration, HttpUrl};
use crate::cmq::sign::SignatureMethod;
use serde::{Deserialize, Deserializer, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CmqSettings {
    /// CMQ API address: empty (`None`) = the public one of `ci.mq_region`,
    /// `https://cmq-<region>.public.tencenttdmq.com`; in a VPC `http://<region>.mqadapter.cmq.tencentyun.com`.
    #[serde(
        deserialize_with = "endpoint",
        serialize_with = "value::serialize_optional_url"
    )]
    pub endpoint: Option<HttpUrl>,
    /// The queue; empty = `ci.mq_name` (the queue CI writes to).
    pub queue: String,
    /// Long poll of one receive (CMQ's maximum: 30 s). Tencent notes that polls over about 3 s may
    /// raise duplicated messages and recommends 3 s; each receive loop then makes ~1,200 calls per
    /// idle hour (30 s: ~120).
    #[serde(with = "duration")]
    pub polling_wait: Duration,
    /// Messages per receive and delete (1–16).
    pub batch_size: usize,
    /// `HmacSHA256` or `HmacSHA1`.
    pub signature_method: SignatureMethod,
    /// Receives in flight at once (each long-polls on its own connection).
    pub concurrency: usize,
}

fn endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HttpUrl>, D::Error> {
    value::optional_http_url(
        d,
        "must be empty or an http(s):// address such as https://cmq-gz.public.tencenttdmq.com",
    )
}

impl Default for CmqSettings {
    fn default() -> Self {
        CmqSettings {
            endpoint: None,
            queue: String::new(),
            polling_wait: Duration::from_secs(3),
            batch_size: 16,
            signature_method: SignatureMethod::HmacSha256,
            concurrency: 2,
        }
    }
}

impl CmqSettings {
    /// Checks the bounds CMQ sets.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = ConfigError::invalid;
        if !(1..=crate::cmq::api::MAX_BATCH).contains(&self.batch_size) {
            return Err(invalid(
                "cmq.batch_size",
                &self.batch_size.to_string(),
                "must be between 1 and 16",
            ));
        }
        if self.polling_wait > Duration::from_secs(crate::cmq::api::MAX_POLLING_WAIT_SECONDS) {
            return Err(invalid(
                "cmq.polling_wait",
                &format!("{:?}", self.polling_wait),
                "must be at most 30s (CMQ's longest poll)",
            ));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(invalid(
                "cmq.concurrency",
                &self.concurrency.to_string(),
                "must be between 1 and 64",
            ));
        }
        Ok(())
    }
}
