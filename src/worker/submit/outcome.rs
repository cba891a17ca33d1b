//! What a submission publishes, built from the request and CI's answer: the `submitted` event, a
//! `rejected` result, the rejection CI's refusal amounts to. Pure.

use crate::ci::client::CiError;
use crate::ci::response::JobDetail;
use crate::ci::tree::Node;
use crate::request::{Rejection, SubmitRequest, ValidRequest};
use crate::result::normalize::normalize_job;
use crate::result::{JobResult, ObjectRef, ResultState};

/// The rejection of a request CI refused: CI's error code (`CiError` when it gave none) and message.
pub fn rejection_of(e: &CiError) -> Rejection {
    match e {
        CiError::Api { body, .. } => Rejection {
            code: if body.code.is_empty() {
                "CiError".into()
            } else {
                body.code.clone()
            },
            message: body.message.clone(),
        },
        other => Rejection {
            code: "CiError".into(),
            message: other.to_string(),
        },
    }
}

/// The `submitted` progress event from CI's answer.
pub fn submitted(req: &ValidRequest, detail: &JobDetail) -> JobResult {
    let mut result = normalize_job(detail.tree());
    result.state = ResultState::Submitted;
    result.request_id = Some(req.request_id.clone());
    result.user_data = req.user_data.clone();
    if result.output.is_none() {
        result.output = output_of(&req.ci_job);
    }
    result
}

/// What is known of a request's job before CI answers (the `submitted` event without CI's part):
/// the base of the deadline published before the job exists.
pub fn pending(req: &ValidRequest) -> JobResult {
    let mut result = JobResult::new(ResultState::Submitted);
    result.request_id = Some(req.request_id.clone());
    result.user_data = req.user_data.clone();
    let text = |path: &[&str]| req.ci_job.text_at(path).map(str::to_string);
    result.tag = text(&["Tag"]);
    result.queue_id = text(&["QueueId"]);
    result.input = Some(ObjectRef {
        bucket: Some(req.bucket.clone()),
        region: Some(req.region.clone()),
        object: text(&["Input", "Object"]),
    });
    result.output = output_of(&req.ci_job);
    result
}

/// A `rejected` result, filled from the request as far as it goes.
pub fn rejected(req: &SubmitRequest, rejection: &Rejection) -> JobResult {
    let mut result = JobResult::new(ResultState::Rejected);
    result.request_id = Some(req.request_id.clone());
    result.code = rejection.code.clone();
    result.message = rejection.message.clone();
    let job = Node::from_value(&req.job);
    let text = |path: &[&str]| job.text_at(path).map(str::to_string);
    result.tag = text(&["Tag"]);
    result.queue_id = text(&["QueueId"]);
    result.input = Some(ObjectRef {
        bucket: req.bucket.clone(),
        region: req.region.clone(),
        object: text(&["Input", "Object"]),
    });
    result.output = output_of(&job);
    result.user_data = text(&["Operation", "UserData"]);
    result
}

fn output_of(job: &Node) -> Option<ObjectRef> {
    let text = |key: &str| {
        job.text_at(&["Operation", "Output", key])
            .map(str::to_string)
    };
    let o = ObjectRef {
        bucket: text("Bucket"),
        region: text("Region"),
        object: text("Object"),
    };
    (o != ObjectRef::default()).then_some(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::test_doubles::*;

    #[test]
    fn a_rejected_result_carries_what_the_request_said() {
        let req = SubmitRequest::parse(request("r1").as_bytes()).unwrap();
        let rejection = rejection_of(&refusal(400, "InvalidParameter"));
        assert_eq!(rejection.code, "InvalidParameter");
        let r = rejected(&req, &rejection);
        assert_eq!(r.state, ResultState::Rejected);
        assert_eq!(r.request_id.as_deref(), Some("r1"));
        assert_eq!(r.tag.as_deref(), Some("DigitalWatermark"));
        assert_eq!(r.user_data.as_deref(), Some("mine"));
        assert_eq!(r.output.unwrap().object.as_deref(), Some("output/out.mp4"));
    }

    #[test]
    fn a_refusal_without_a_code_is_a_ci_error() {
        let timeout = CiError::Protocol("garbled".into());
        assert_eq!(rejection_of(&timeout).code, "CiError");
    }
}
