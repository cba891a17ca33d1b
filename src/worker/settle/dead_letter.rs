//! Dead letters: the original payload and properties untouched, the reason and origin added.

use super::inbound::Inbound;
use crate::pulsar::{props, Outgoing, PulsarIoError};
use crate::worker::context::Context;
use crate::worker::io::{Broker, CiApi};

/// Longest reason kept in the properties (parser messages can quote input).
const MAX_REASON: usize = 1024;

/// Publishes `message` to `pulsar.dead_letter_topic`. `source` labels the metric (`request`,
/// `callback`, `cmq`, …); `reason` comes from parsers that see only the payload, so it holds no
/// secrets.
pub async fn publish<'a, B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    message: impl Into<Inbound<'a>>,
    source: &str,
    reason: &str,
) -> Result<(), PulsarIoError> {
    let message = message.into();
    let mut msg = Outgoing::new(message.payload.to_vec());
    msg.properties = message.properties.clone();
    msg.key = message.key.map(str::to_string);
    msg = msg
        .with_property(props::DLQ_REASON, truncate(reason, MAX_REASON))
        .with_property(props::SOURCE_TOPIC, message.origin)
        .with_property(props::SOURCE_MESSAGE_ID, message.id)
        .with_property(props::DLQ_AT, chrono::Utc::now().to_rfc3339());
    tracing::warn!(
        source_topic = %message.origin,
        source_message_id = %message.id,
        reason,
        "dead-lettering message"
    );
    ctx.broker
        .publish(&ctx.settings.pulsar.dead_letter_topic, msg)
        .await?;
    ctx.metrics.dead_letter(source);
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(super::truncate("abc", 5), "abc");
        assert_eq!(super::truncate("ééé", 3), "é…");
    }
}
