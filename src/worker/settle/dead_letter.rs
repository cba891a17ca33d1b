//! Dead letters: the original payload and properties untouched, the reason and origin added.

use crate::pulsar::consume::Delivery;
use crate::pulsar::{props, Outgoing, PulsarIoError};
use crate::worker::context::Context;
use crate::worker::io::{Broker, CiApi};

/// Longest reason kept in the properties (parser messages can quote input).
const MAX_REASON: usize = 1024;

/// Publishes `delivery` to `pulsar.dead_letter_topic`. `source` labels the metric (`request`,
/// `callback`); `reason` comes from parsers that see only the payload, so it holds no secrets.
pub async fn publish<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    delivery: &Delivery,
    source: &str,
    reason: &str,
) -> Result<(), PulsarIoError> {
    let mut msg = Outgoing::new(delivery.payload.clone());
    msg.properties = delivery.properties.clone();
    msg.key = delivery.key.clone();
    msg = msg
        .with_property(props::DLQ_REASON, truncate(reason, MAX_REASON))
        .with_property(props::SOURCE_TOPIC, delivery.topic.clone())
        .with_property(props::SOURCE_MESSAGE_ID, delivery.message_id.clone())
        .with_property(props::DLQ_AT, chrono::Utc::now().to_rfc3339());
    tracing::warn!(
        source_topic = %delivery.topic,
        source_message_id = %delivery.message_id,
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
