//! Dead letters: the original payload untouched, the reason and origin in properties.

use super::Context;
use crate::pulsar_io::{props, Outgoing, PulsarIoError};
use std::collections::HashMap;

/// Publishes `payload` to `pulsar.dead_letter_topic`. `reason` must not contain secrets (it never does:
/// it comes from parsers that see only the payload).
pub async fn publish(
    ctx: &Context,
    payload: &[u8],
    original_properties: &HashMap<String, String>,
    reason: &str,
    source_topic: &str,
    source_message_id: &str,
) -> Result<(), PulsarIoError> {
    let mut msg = Outgoing::new(payload.to_vec());
    msg.properties = original_properties.clone();
    msg = msg
        .with_property(props::DLQ_REASON, truncate(reason, 1024))
        .with_property(props::SOURCE_TOPIC, source_topic)
        .with_property(props::SOURCE_MESSAGE_ID, source_message_id)
        .with_property(props::DLQ_AT, chrono::Utc::now().to_rfc3339());
    tracing::warn!(
        source_topic,
        source_message_id,
        reason,
        "dead-lettering message"
    );
    ctx.publisher
        .publish(&ctx.settings.pulsar.dead_letter_topic, msg)
        .await
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
