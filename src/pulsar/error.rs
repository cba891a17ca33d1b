//! [`PulsarIoError`]: what went wrong talking to the broker, and whether waiting can fix it.

use super::lookup::LookupError;
use pulsar::error::ConnectionError;

#[derive(Debug, thiserror::Error)]
pub enum PulsarIoError {
    #[error("cannot connect to Pulsar at {url}: {source}{}", refused_hint(.source))]
    Connect {
        url: String,
        #[source]
        source: pulsar::Error,
    },
    #[error("cannot create a producer on {topic}: {source}")]
    Producer {
        topic: String,
        #[source]
        source: pulsar::Error,
    },
    #[error("publishing to {topic} failed: {message}")]
    Publish { topic: String, message: String },
    #[error("the producer on {topic} is not connected: {source}")]
    Check {
        topic: String,
        #[source]
        source: pulsar::Error,
    },
    #[error("cannot subscribe to {topic} as {subscription}: {source}")]
    Subscribe {
        topic: String,
        subscription: String,
        #[source]
        source: pulsar::Error,
    },
    #[error("cannot tell how many partitions {topic} has: {source}")]
    Partitions {
        topic: String,
        #[source]
        source: pulsar::Error,
    },
    #[error("cannot list the topics of namespace {namespace}: {source}")]
    ListTopics {
        namespace: String,
        #[source]
        source: pulsar::Error,
    },
    /// The HTTP lookup (`pulsar.url` `http://` or `https://`) found no broker for a topic.
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

impl PulsarIoError {
    /// Whether the broker refused us for a reason that waiting cannot fix (authentication,
    /// authorization, a bad or missing topic), as opposed to being slow, restarting or out of reach.
    /// Start-up gives up at once on a refusal and keeps retrying everything else.
    pub fn is_refusal(&self) -> bool {
        match self {
            PulsarIoError::Connect { source, .. } if handshake_refused(source) => true,
            PulsarIoError::Connect { source, .. }
            | PulsarIoError::Producer { source, .. }
            | PulsarIoError::Check { source, .. }
            | PulsarIoError::Subscribe { source, .. }
            | PulsarIoError::Partitions { source, .. }
            | PulsarIoError::ListTopics { source, .. } => is_refusal(source),
            PulsarIoError::Publish { .. } => false,
            PulsarIoError::Lookup(e) => e.is_refusal(),
        }
    }
}

/// The crate reports every refused handshake as this one `Other` I/O error (and logs the broker's
/// reason just before); a connection that was refused or timed out it would have kept retrying.
fn handshake_refused(e: &pulsar::Error) -> bool {
    matches!(e, pulsar::Error::Connection(ConnectionError::Io(io))
        if io.kind() == std::io::ErrorKind::Other)
}

/// What the crate's error hides: it drops the broker's reason for a refused handshake.
fn refused_hint(e: &pulsar::Error) -> &'static str {
    if handshake_refused(e) {
        " (the broker refused the handshake: check pulsar.token; the broker's reason is logged \
         just above)"
    } else {
        ""
    }
}

fn is_refusal(e: &pulsar::Error) -> bool {
    use pulsar::error::{ConsumerError, ProducerError, ServiceDiscoveryError};
    use pulsar::message::proto::ServerError;
    let connection = |c: &ConnectionError| match c {
        ConnectionError::PulsarError(Some(code), _) => Some(*code),
        ConnectionError::Authentication(_) => Some(ServerError::AuthenticationError),
        _ => None,
    };
    let code = match e {
        pulsar::Error::Authentication(_) => Some(ServerError::AuthenticationError),
        pulsar::Error::Connection(c)
        | pulsar::Error::Producer(ProducerError::Connection(c))
        | pulsar::Error::Consumer(ConsumerError::Connection(c))
        | pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Connection(c)) => connection(c),
        pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Query(code, _)) => *code,
        _ => None,
    };
    matches!(
        code,
        Some(
            ServerError::AuthenticationError
                | ServerError::AuthorizationError
                | ServerError::TopicNotFound
                | ServerError::InvalidTopicName
                | ServerError::NotAllowedError
                | ServerError::UnsupportedVersionError
                | ServerError::IncompatibleSchema
                | ServerError::TopicTerminatedError
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulsar::error::{ProducerError, ServiceDiscoveryError};
    use pulsar::message::proto::ServerError;

    fn producer_error(source: pulsar::Error) -> PulsarIoError {
        PulsarIoError::Producer {
            topic: "t".into(),
            source,
        }
    }

    #[test]
    fn refusals_are_told_apart_from_a_broker_that_is_not_ready() {
        let server = |code| {
            pulsar::Error::Producer(ProducerError::Connection(ConnectionError::PulsarError(
                Some(code),
                None,
            )))
        };
        for code in [
            ServerError::AuthenticationError,
            ServerError::AuthorizationError,
            ServerError::TopicNotFound,
            ServerError::NotAllowedError,
        ] {
            assert!(producer_error(server(code)).is_refusal(), "{code:?}");
        }
        let lookup = pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Query(
            Some(ServerError::AuthorizationError),
            Some("role has no produce permission".into()),
        ));
        assert!(producer_error(lookup).is_refusal());

        for waitable in [
            server(ServerError::ServiceNotReady),
            server(ServerError::TooManyRequests),
            server(ServerError::MetadataError),
            pulsar::Error::Connection(ConnectionError::Disconnected),
            pulsar::Error::Producer(ProducerError::Connection(ConnectionError::Io(
                std::io::Error::from(std::io::ErrorKind::TimedOut),
            ))),
        ] {
            let e = producer_error(waitable);
            assert!(!e.is_refusal(), "{e}");
        }
    }

    #[test]
    fn a_refused_handshake_says_so() {
        let fatal = pulsar::Error::Connection(ConnectionError::Io(std::io::Error::other(
            "fatal error when connecting to the Pulsar server",
        )));
        let e = PulsarIoError::Connect {
            url: "pulsar://b:6650".into(),
            source: fatal,
        };
        assert!(e.is_refusal());
        assert!(e.to_string().contains("refused the handshake"), "{e}");
        let unreachable = PulsarIoError::Connect {
            url: "pulsar://b:6650".into(),
            source: pulsar::Error::Connection(ConnectionError::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))),
        };
        assert!(!unreachable.is_refusal());
        assert!(!unreachable.to_string().contains("refused the handshake"));
    }
}
