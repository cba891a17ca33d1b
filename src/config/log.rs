//! `[log]`: the format and filter of the process's log lines.

use crate::ci::rules::closed_set;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (human, for terminals) or `json` (one object per line, for collectors).
    pub format: LogFormat,
    /// `RUST_LOG`-style filter; the `RUST_LOG` variable wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

closed_set! {
    /// `log.format`.
    pub enum LogFormat: "must be text or json" {
        Text = "text",
        Json = "json",
    }
}
