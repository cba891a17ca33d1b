//! The value types the sections share: humane durations, http(s) addresses, listen addresses, and
//! the refusal every typed value gives.
//!
//! A typed value refuses a bad spelling while it is deserialized, with the message
//! `invalid "<value>": <rule>` (the form `closed_set!` enums use too); the loader adds the key the
//! `config` crate tracked, so the line reads `invalid <key> = "<value>": <rule>` like a refusal of
//! a section's own `validate`.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// What a typed value's deserializer answers to a bad spelling (see the module doc).
pub(crate) fn refuse<E: de::Error>(value: &str, rule: &str) -> E {
    E::custom(format!("{REFUSAL}{value:?}: {rule}"))
}

/// The start of [`refuse`]'s message, by which the loader recognises it.
pub(crate) const REFUSAL: &str = "invalid ";

/// An `http://` or `https://` address with a host: the one rule every http(s) key follows
/// (`ci.endpoint`, `ci.callback_url`, `ci.metadata_endpoint`, `cmq.endpoint`). The text is kept as
/// written (the parsed form would add a `/` that callers append paths after).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    text: String,
    url: url::Url,
}

impl HttpUrl {
    /// `text` if it is an http(s) address with a host.
    pub fn parse(text: &str) -> Option<HttpUrl> {
        let url = url::Url::parse(text).ok()?;
        (matches!(url.scheme(), "http" | "https") && url.host().is_some()).then(|| HttpUrl {
            text: text.to_string(),
            url,
        })
    }

    /// The address as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn url(&self) -> &url::Url {
        &self.url
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for HttpUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// An http(s) key that may be left empty: `""` is `None`, anything else must be an [`HttpUrl`]
/// (`rule` says what a bad value is told).
pub(crate) fn optional_http_url<'de, D: Deserializer<'de>>(
    d: D,
    rule: &str,
) -> Result<Option<HttpUrl>, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    HttpUrl::parse(&text)
        .map(Some)
        .ok_or_else(|| refuse(&text, rule))
}

/// An http(s) key that must be set.
pub(crate) fn http_url<'de, D: Deserializer<'de>>(d: D, rule: &str) -> Result<HttpUrl, D::Error> {
    let text = String::deserialize(d)?;
    HttpUrl::parse(&text).ok_or_else(|| refuse(&text, rule))
}

/// `None` as the empty string, so that `ci-worker config` and the example file show every key.
pub(crate) fn serialize_optional_url<S: Serializer>(
    url: &Option<HttpUrl>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(url.as_ref().map_or("", HttpUrl::as_str))
}

/// A listen address (`http.listen`, `emulator.listen`, `emulator.cmq_listen`).
pub(crate) mod listen {
    use crate::config::value::refuse;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    pub fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(addr)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| refuse(&text, "must be an address such as 127.0.0.1:9000"))
    }
}

/// Durations as humane strings (`"20s"`, `"500ms"`, `"10m"`); a bare number means seconds.
pub(crate) mod duration {
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(n) => Ok(Duration::from_secs(n)),
            Raw::Text(t) => match t.trim().parse::<u64>() {
                Ok(n) => Ok(Duration::from_secs(n)),
                Err(_) => humantime::parse_duration(t.trim()).map_err(|e| {
                    de::Error::custom(format!("{t:?} is not a duration like 20s or 500ms ({e})"))
                }),
            },
        }
    }
}

/// A duration shown as humane text (`ci-worker config`'s spelling of it).
pub(crate) fn humane(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The unit a deprecated key was spelled in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unit {
    Millis,
    // Only the emulator's keys were spelled in seconds.
    #[cfg_attr(not(feature = "emulator"), allow(dead_code))]
    Seconds,
}

impl Unit {
    pub fn duration(self, n: u64) -> Duration {
        match self {
            Unit::Millis => Duration::from_millis(n),
            Unit::Seconds => Duration::from_secs(n),
        }
    }
}

/// A key whose name carried its unit (`…_ms`, `…_s`, `…_secs`), renamed to a humane duration.
/// The old name is still read, in its unit and within the range it always had (refused with the
/// same words); both names at once are refused.
#[derive(Debug)]
pub(crate) struct Renamed {
    /// `section.key` as it was spelled, e.g. `pulsar.result_batch_delay_ms`.
    pub old: &'static str,
    /// `section.key` of the humane duration.
    pub new: &'static str,
    pub unit: Unit,
    /// The whole numbers the old key accepted, and what it said to one outside them; `None` = any.
    pub bounds: Option<(std::ops::RangeInclusive<u64>, &'static str)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_rule_http_or_https_with_a_host() {
        for ok in [
            "http://127.0.0.1:9000",
            "https://cmq-gz.public.tencenttdmq.com",
            "http://metadata.tencentyun.com/",
        ] {
            let u = HttpUrl::parse(ok).unwrap();
            assert_eq!(u.as_str(), ok, "kept as written");
            assert_eq!(u.to_string(), ok);
        }
        for bad in [
            "",
            "127.0.0.1:9000",
            "ftp://x",
            "http://",
            "pulsar://x:6650",
            "cmq-gz.public.tencenttdmq.com",
        ] {
            assert!(HttpUrl::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn durations_are_humane_or_bare_seconds() {
        #[derive(Deserialize)]
        struct D(#[serde(with = "duration")] Duration);
        for (text, want) in [
            ("\"20s\"", Duration::from_secs(20)),
            ("\"500ms\"", Duration::from_millis(500)),
            ("\"7\"", Duration::from_secs(7)),
            ("7", Duration::from_secs(7)),
        ] {
            let D(got) = serde_json::from_str(text).unwrap();
            assert_eq!(got, want, "{text}");
        }
        let e = serde_json::from_str::<D>("\"soon\"").err().unwrap();
        assert!(e.to_string().contains("\"soon\" is not a duration"), "{e}");
        assert_eq!(humane(Duration::from_millis(1)), "1ms");
    }
}
