//! How completion events reach the worker in the benchmark: the [`Ingress`] each section is run
//! through, and what each source means for the figures. A leaf: the sections import it, it imports
//! none of them.

use crate::config::CallbackIngress;

/// `http.callback_token` of the benchmark's workers (the path CI is given).
pub(super) const CALLBACK_TOKEN: &str = "bench-callback-token-0123456789";

/// How completion events reach the worker (`--ingress`, `--message-ingress`): one variant per source
/// of `worker.callback_ingress`. A new source (Kafka) is one variant here; the compiler then asks for
/// its arm in each `match` on it: its name and hand-over (below), the worker's settings
/// ([`Bench::use_ingress`]), the benchmark's sender ([`Sender::open`], [`Sender::send`]) and the
/// messages section's emulator (`Bench::messages_emulator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ingress {
    /// The Pulsar callback topic (ingress `pulsar`): written by the emulator (`tdmq_delivery =
    /// "pulsar"`) or the benchmark, as a bridge of the user's own would.
    Pulsar,
    /// A TDMQ for CMQ queue (ingress `cmq`): CI's `CallBackType=TDMQ`.
    Cmq,
    /// POSTs to the worker (ingress `http`): CI's `CallBackType=Url`.
    Http,
    /// A Kafka topic (ingress `kafka`): CI's `CallBackType=Kafka`, a CKafka topic.
    Kafka,
}

impl Ingress {
    /// Its name in `worker.callback_ingress`.
    pub(super) fn source(self) -> CallbackIngress {
        match self {
            Ingress::Pulsar => CallbackIngress::Pulsar,
            Ingress::Cmq => CallbackIngress::Cmq,
            Ingress::Http => CallbackIngress::Http,
            Ingress::Kafka => CallbackIngress::Kafka,
        }
    }

    pub(super) fn name(self) -> &'static str {
        self.source().as_str()
    }

    /// Whether the event itself is a Pulsar message the worker receives (the callback topic). A Kafka
    /// record is a message too, but not one TDMQ for Pulsar bills or throttles: CKafka is billed by
    /// an instance's peak bandwidth, disk and partitions.
    pub(super) fn event_on_broker(self) -> bool {
        self.source() == CallbackIngress::Pulsar
    }

    /// Broker messages per job no worker can go below: the request delivered, `submitted` and the
    /// final result published, and the event delivered when it comes through the broker.
    pub(super) fn floor(self) -> u64 {
        3 + u64::from(self.event_on_broker())
    }

    pub(super) fn describe(self) -> &'static str {
        match self {
            Ingress::Pulsar => "events on the Pulsar callback topic",
            Ingress::Cmq => "events through the CMQ ingress",
            Ingress::Http => "events through the HTTP ingress (CallBackType=Url)",
            Ingress::Kafka => "events through the Kafka ingress (CallBackType=Kafka)",
        }
    }

    /// Whether events can wait in the source before a worker reads them (a burst is then a backlog).
    pub(super) fn holds_backlog(self) -> bool {
        match self {
            Ingress::Pulsar | Ingress::Cmq | Ingress::Kafka => true,
            Ingress::Http => false,
        }
    }

    /// What the latency is counted from.
    pub(super) fn hand_over(self) -> &'static str {
        match self {
            Ingress::Pulsar => "the broker's receipt of the event",
            Ingress::Cmq => "CMQ's answer to SendMessage",
            Ingress::Http => "the POST's start (answered 200 once the result is stored)",
            Ingress::Kafka => "the Kafka broker's acknowledgement of the produce (acks=all)",
        }
    }
}
