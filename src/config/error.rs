//! [`ConfigError`]: the one line a bad configuration stops the program with.

use super::value;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration: invalid {key} = {value:?}: {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
    /// A typed value refused while it was read; `refusal` is `"<value>": <rule>`.
    #[error("configuration: invalid {key} = {refusal}")]
    Refused { key: String, refusal: String },
    #[error(
        "configuration: {old} and {new} are both set: {old} is the deprecated spelling of {new}; \
         keep {new} only"
    )]
    BothSpellings {
        old: &'static str,
        new: &'static str,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: &'static str, value: &str, allowed: &str) -> ConfigError {
        ConfigError::Invalid {
            key,
            value: value.to_string(),
            allowed: allowed.to_string(),
        }
    }

    /// A `config` crate error in the configuration's words: a typed value's refusal (see
    /// `value::refuse`) as `invalid <key> = …`, anything else as the crate worded it.
    pub(super) fn from_loading(e: config::ConfigError) -> ConfigError {
        if let config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } = &e
        {
            if let config::ConfigError::Message(message) = error.as_ref() {
                if let Some(refusal) = message.strip_prefix(value::REFUSAL) {
                    return ConfigError::Refused {
                        key: key.clone(),
                        refusal: refusal.to_string(),
                    };
                }
            }
        }
        ConfigError::Load(e.to_string())
    }
}
