//! Whether an ingress of `worker.callback_ingress` reads the completion events `ci.callback_type`
//! sends: `ci-worker run` warns at start-up, `ci-worker doctor` fails on it. Pure, over the
//! settings alone.

use super::ci::CiSettings;
use super::worker::{CallbackIngress, WorkerSettings};
use crate::ci::rules::CallbackType;

/// CI is told to send completion events where no configured ingress reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackMismatch {
    /// `ci.callback_type = "Url"` without the `http` ingress.
    UrlWithoutHttp,
    /// `ci.callback_type = "TDMQ"` with neither the `cmq` nor the `pulsar` ingress.
    TdmqWithoutReader,
}

/// The mismatch between `ci.callback_type` and `worker.callback_ingress`, if any
/// ([`super::Settings::callback_mismatch`]).
pub fn callback_mismatch(ci: &CiSettings, worker: &WorkerSettings) -> Option<CallbackMismatch> {
    match ci.callback_type {
        CallbackType::Url if !worker.has_ingress(CallbackIngress::Http) => {
            Some(CallbackMismatch::UrlWithoutHttp)
        }
        CallbackType::Tdmq
            if !worker.has_ingress(CallbackIngress::Cmq)
                && !worker.has_ingress(CallbackIngress::Pulsar) =>
        {
            Some(CallbackMismatch::TdmqWithoutReader)
        }
        _ => None,
    }
}

impl CallbackMismatch {
    /// What goes wrong, in the words the worker logs.
    pub fn consequence(self) -> &'static str {
        match self {
            CallbackMismatch::UrlWithoutHttp => {
                "ci.callback_type = Url but worker.callback_ingress has no http: events reach this worker only if something at ci.callback_url stores them in the callback topic"
            }
            CallbackMismatch::TdmqWithoutReader => {
                "ci.callback_type = TDMQ but worker.callback_ingress has neither cmq nor pulsar: results will come only from the deadline's describe calls"
            }
        }
    }

    /// How to make the two agree.
    pub fn fix(self) -> &'static str {
        match self {
            CallbackMismatch::UrlWithoutHttp => {
                "add http to worker.callback_ingress (and point ci.callback_url at this worker's /ci/callback/<http.callback_token>), or set ci.callback_type = \"TDMQ\" with the cmq ingress"
            }
            CallbackMismatch::TdmqWithoutReader => {
                "add cmq to worker.callback_ingress (the worker reads the TDMQ for CMQ queue CI writes to), or pulsar when something else copies those events into pulsar.callback_topic"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mismatch(
        callback_type: CallbackType,
        ingress: &[CallbackIngress],
    ) -> Option<CallbackMismatch> {
        let ci = CiSettings {
            callback_type,
            ..CiSettings::default()
        };
        let worker = WorkerSettings {
            callback_ingress: ingress.to_vec(),
            ..WorkerSettings::default()
        };
        callback_mismatch(&ci, &worker)
    }

    #[test]
    fn each_callback_type_needs_its_reader() {
        use CallbackIngress::{Cmq, Http, Pulsar};
        use CallbackType::{Tdmq, Url};
        let cases = [
            (Tdmq, vec![Cmq], None),
            (Tdmq, vec![Pulsar], None),
            (Tdmq, vec![Http], Some(CallbackMismatch::TdmqWithoutReader)),
            (Url, vec![Http], None),
            (
                Url,
                vec![Cmq, Pulsar],
                Some(CallbackMismatch::UrlWithoutHttp),
            ),
        ];
        for (t, ingress, want) in cases {
            assert_eq!(mismatch(t, &ingress), want, "{t:?} {ingress:?}");
        }
    }
}
