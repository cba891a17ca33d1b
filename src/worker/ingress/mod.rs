//! Ingress: where CI's completion events come in when something other than the broker carries them
//! (`worker.callback_ingress`). Each source stores an event, as it came, in `pulsar.callback_topic`
//! and only then lets go of it (CMQ delete, HTTP 200), so that every event takes the one completion
//! path ([`crate::worker::complete`]) whatever brought it.
//!
//! - [`event`]: what an ingress decides about an event before storing it (its bytes, its key), pure;
//! - [`cmq`]: the reader of the TDMQ for CMQ queue CI writes to (`cmq`);
//! - [`http`]: `POST /ci/callback/<token>`, for `CallBackType=Url` (`http`).
//!
//! The third setting, `pulsar`, runs nothing here: something else writes the callback topic.

pub mod cmq;
pub mod event;
pub mod http;
