//! Where CI's completion events come in (`worker.callback_ingress`), each source with its own
//! acknowledgement, all feeding [`super::handle`]:
//!
//! - [`pulsar`]: `pulsar.callback_topic`, which something else writes (a bridge of the user's own);
//!   Key_Shared by job id, ack / nack (`pulsar`);
//! - [`cmq`]: the TDMQ for CMQ queue CI writes to for `CallBackType=TDMQ`; delete by receipt handle
//!   (`cmq`);
//! - [`http`]: `POST /ci/callback/<token>`, for `CallBackType=Url`; answered 200 or 503 (`http`);
//! - [`kafka`]: the CKafka topic CI writes to for `CallBackType=Kafka`, in a consumer group; offsets
//!   committed over the settled prefix of each partition ([`offsets`]) (`kafka`);
//! - [`body`]: what a CMQ message's body holds (the event as it came, or Base64 of it), pure.

pub mod body;
pub mod cmq;
pub mod http;
pub mod kafka;
pub mod offsets;
pub mod pulsar;
