//! `[http]`: the worker's HTTP endpoint (probes, metrics, the `http` ingress).

use super::error::ConfigError;
use super::value::listen;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Health and metrics endpoint of `ci-worker run`, and the HTTP ingress
    /// (`POST /ci/callback/<callback_token>`).
    #[serde(with = "listen")]
    pub listen: SocketAddr,
    /// The secret path segment CI's callbacks must carry (ingress `http`); at least 16 characters of
    /// `A-Z a-z 0-9 - _ .`.
    pub callback_token: Secret,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
            callback_token: Secret::default(),
        }
    }
}

impl HttpSettings {
    /// `callback_token`, which the `http` ingress (`with_ingress`) needs well-formed.
    pub(super) fn validate(&self, with_ingress: bool) -> Result<(), ConfigError> {
        if !with_ingress {
            return Ok(());
        }
        let token = self.callback_token.expose();
        let ok = token.len() >= 16
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(ConfigError::invalid(
                "http.callback_token",
                if token.is_empty() { "" } else { "(set)" },
                "must be at least 16 characters of A-Z a-z 0-9 - _ . when worker.callback_ingress has http",
            ));
        }
        Ok(())
    }
}
