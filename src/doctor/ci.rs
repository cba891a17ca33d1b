//! The CI checks of one bucket (`--bucket B --region R`), read-only calls only:
//! - `binding`: `GET /queue` (DescribeMediaQueues): CI accepts the signature, knows the bucket in
//!   that region (CI bound to it) and lets the caller list its media queues;
//! - `media queue`: the queue `ci.queue_id` names (or the bucket's default, the first listed) is
//!   listed and `Active`;
//! - `submit permission`: `POST /jobs` with an empty `<Request>`, which CI cannot make a job of:
//!   an `AccessDenied` names the missing actions, a refusal of the request itself shows the
//!   permission check was passed;
//! - `job queries`: `GET /jobs?tag=…&size=1` and `GET /jobs/<an id no job has>`.
//!
//! CI's refusal names no action (error-codes.md: `AccessDenied`, "No permission" / "The operation
//! is prohibited"), so a line names the actions the refused call needs ([`crate::ci::cam`]).

use super::check::Check;
use crate::ci::cam::{self, Call};
use crate::ci::client::{CiClient, CiError, ListQuery};
use crate::ci::response::QueueInfo;
use crate::ci::tree::Node;

/// A bucket and its region, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub bucket: String,
    pub region: String,
}

impl Target {
    fn name(&self, what: &str) -> String {
        format!("ci {} ({}) {what}", self.bucket, self.region)
    }
}

/// Codes CI answers for a signature it does not accept (error-codes.md's 401s but
/// `AccessDenied`, and COS's `SignatureDoesNotMatch`).
const SIGNATURE_CODES: [&str; 6] = [
    "MissingAuthorization",
    "InvalidAuthorization",
    "SecretidNotExist",
    "SignatureExpired",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
];

/// Why a refused call failed and what to do, from the call and CI's answer.
pub fn refusal(call: Call, error: &CiError, target: &Target) -> (String, String) {
    let (bucket, region) = (&target.bucket, &target.region);
    match error {
        CiError::Api { status, body } if body.code == "AccessDenied" => {
            let named: Vec<&str> = cam::ALL
                .iter()
                .copied()
                .filter(|a| body.message.to_ascii_lowercase().contains(&a.to_ascii_lowercase()))
                .collect();
            let actions = if named.is_empty() {
                call.actions().to_vec()
            } else {
                named
            };
            (
                format!(
                    "CI refused with HTTP {status} AccessDenied ({}): the credentials' CAM user or role lacks {}",
                    body.message,
                    actions.join(" or ")
                ),
                format!(
                    "grant {} on qcs::ci:{region}:uid/<APPID>:bucket/{bucket}/* to the CAM user or role the credentials belong to",
                    actions.join(" and ")
                ),
            )
        }
        CiError::Api { status, body }
            if *status == 401 || SIGNATURE_CODES.contains(&body.code.as_str()) =>
        {
            (
                format!(
                    "CI refused the signature: HTTP {status} {} ({})",
                    body.code, body.message
                ),
                "use keys of the account that owns the bucket (a temporary key with its session token), and keep the clock within minutes of real time".into(),
            )
        }
        CiError::Api { status, body } if *status == 404 || body.code.starts_with("NoSuch") => (
            format!(
                "CI does not know bucket {bucket} in {region} (HTTP {status} {}): CI is not bound to it there, or the region is wrong",
                body.code
            ),
            format!(
                "bind the bucket to Cloud Infinite in {region} (CI console: Bucket management → Bind bucket), or give the bucket's own region with --region"
            ),
        ),
        CiError::Api { status, body } => (
            format!(
                "CI refused {}: HTTP {status} {} ({})",
                describe(call),
                body.code,
                body.message
            ),
            format!("see CI's error codes for {}", body.code),
        ),
        CiError::Transport { message, .. } => (
            format!(
                "CI unreachable at {}: {message}",
                crate::ci::ci_host(bucket, region)
            ),
            "check --region (CI's host is <bucket>.ci.<region>.myqcloud.com), ci.endpoint and the network".into(),
        ),
        CiError::Protocol(message) => (
            format!("CI's answer to {} is not CI's: {message}", describe(call)),
            "check that ci.endpoint (if set) is Cloud Infinite".into(),
        ),
        CiError::Config(message) => (
            message.clone(),
            "give the bucket as <name>-<APPID> and the region as ap-<city>".into(),
        ),
    }
}

fn describe(call: Call) -> &'static str {
    match call {
        Call::Submit => "POST /jobs",
        Call::Describe => "GET /jobs/<id>",
        Call::List => "GET /jobs",
        Call::Cancel => "PUT /jobs/<id>?cancel",
        Call::Queues => "GET /queue",
    }
}

/// The `media queue` line: the queue jobs go to (`queue_id`, or the first listed) is listed and
/// `Active`.
pub fn judge_queue(target: &Target, queues: &[QueueInfo], queue_id: &str) -> Check {
    let name = target.name("media queue");
    let listed = || {
        queues
            .iter()
            .map(|q| format!("{} ({})", q.queue_id, q.state))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = if queue_id.is_empty() {
        match queues.first() {
            Some(q) => q,
            None => {
                return Check::fail(
                    name,
                    "the bucket has no media processing queue: media processing is not activated for it",
                    "activate media processing for the bucket in the CI console (it creates the default queue)",
                )
            }
        }
    } else {
        match queues.iter().find(|q| q.queue_id == queue_id) {
            Some(q) => q,
            None => {
                return Check::fail(
                    name,
                    format!(
                        "ci.queue_id = {queue_id} is not a media queue of this bucket (its queues: {}): a queue of another bucket or region?",
                        listed()
                    ),
                    "set ci.queue_id to one of the bucket's queues, or leave it empty for the bucket's default queue",
                )
            }
        }
    };
    let which = if queue_id.is_empty() {
        "the default queue"
    } else {
        "ci.queue_id"
    };
    if chosen.state == "Active" {
        Check::ok(
            name,
            format!("{which} {} ({}) is Active", chosen.queue_id, chosen.name),
        )
    } else {
        Check::fail(
            name,
            format!(
                "{which} {} is {}: CI refuses new jobs with 403 QueuePaused",
                chosen.queue_id, chosen.state
            ),
            "resume the queue (CI console: Media Processing → Queue → enable it, or UpdateMediaQueue with State = Active)",
        )
    }
}

/// What the empty submit says about the permission to submit.
pub fn judge_submit(target: &Target, outcome: Result<(), &CiError>) -> Check {
    let name = target.name("submit permission");
    match outcome {
        Ok(()) => Check::ok(name, "CI accepted POST /jobs"),
        Err(CiError::Api { status, body })
            if body.code != "AccessDenied"
                && *status != 401
                && !SIGNATURE_CODES.contains(&body.code.as_str())
                && (400..500).contains(status)
                && *status != 404 =>
        {
            Check::ok(
                name,
                format!(
                    "CI refused an empty POST /jobs for its content ({}), past the permission check: {} granted ({} is proven only by a job that runs)",
                    body.code,
                    cam::CREATE_MEDIA_JOBS,
                    cam::PASS_ROLE
                ),
            )
        }
        Err(e) => {
            let (problem, fix) = refusal(Call::Submit, e, target);
            Check::fail(name, problem, fix)
        }
    }
}

/// An id no job has: a describe of it changes nothing and answers `NonExistJobIds`.
const NO_SUCH_JOB: &str = "j00000000000000000000000000000000";

/// The bucket's lines, in order.
pub async fn checks(ci: &CiClient, target: &Target, queue_id: &str) -> Vec<Check> {
    let (bucket, region) = (target.bucket.as_str(), target.region.as_str());
    let mut out = Vec::new();
    match ci.queues(bucket, region).await {
        Ok(queues) => {
            out.push(Check::ok(
                target.name("binding"),
                format!(
                    "CI accepted the signature and lists {} media queue(s)",
                    queues.len()
                ),
            ));
            out.push(judge_queue(target, &queues, queue_id));
        }
        Err(e) => {
            let (problem, fix) = refusal(Call::Queues, &e, target);
            out.push(Check::fail(target.name("binding"), problem, fix));
            out.push(Check::skipped(
                target.name("media queue"),
                "needs the queue list",
            ));
        }
    }
    let empty = Node::Map(Vec::new());
    let submitted = ci.submit(bucket, region, &empty).await;
    out.push(judge_submit(target, submitted.as_ref().map(drop)));
    let list = ListQuery {
        tag: "DigitalWatermark".into(),
        size: Some(1),
        ..ListQuery::default()
    };
    let queried = match ci.list(bucket, region, &list).await {
        Ok(_) => ci
            .describe(bucket, region, &[NO_SUCH_JOB])
            .await
            .map(drop)
            .map_err(|e| (Call::Describe, e)),
        Err(e) => Err((Call::List, e)),
    };
    out.push(match queried {
        Ok(()) => Check::ok(
            target.name("job queries"),
            format!(
                "GET /jobs and GET /jobs/<id> answered ({} and {} granted)",
                cam::DESCRIBE_MEDIA_JOBS,
                cam::DESCRIBE_MEDIA_JOB
            ),
        ),
        Err((call, e)) => {
            let (problem, fix) = refusal(call, &e, target);
            Check::fail(target.name("job queries"), problem, fix)
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ci::response::CiErrorBody;
    use crate::doctor::check::Status;

    fn target() -> Target {
        Target {
            bucket: "b-1250000000".into(),
            region: "ap-guangzhou".into(),
        }
    }

    fn api(status: u16, code: &str, message: &str) -> CiError {
        CiError::Api {
            status,
            body: CiErrorBody {
                code: code.into(),
                message: message.into(),
                ..CiErrorBody::default()
            },
        }
    }

    #[test]
    fn access_denied_names_the_actions_of_the_call() {
        let denied = api(403, "AccessDenied", "The operation is prohibited.");
        let (problem, fix) = refusal(Call::Submit, &denied, &target());
        assert!(
            problem.contains("lacks ci:CreateMediaJobs or cam:PassRole"),
            "{problem}"
        );
        assert!(fix.starts_with("grant ci:CreateMediaJobs and cam:PassRole on qcs::ci:ap-guangzhou:uid/<APPID>:bucket/b-1250000000/*"), "{fix}");
        let (problem, _) = refusal(Call::Queues, &denied, &target());
        assert!(
            problem.ends_with("lacks ci:DescribeMediaQueues"),
            "{problem}"
        );
        // A message that names the action narrows it down.
        let named = api(
            403,
            "AccessDenied",
            "not authorized to perform cam:PassRole",
        );
        let (problem, _) = refusal(Call::Submit, &named, &target());
        assert!(problem.ends_with("lacks cam:PassRole"), "{problem}");
    }

    #[test]
    fn signature_binding_and_network_refusals_say_so() {
        let (p, _) = refusal(Call::Queues, &api(401, "SecretidNotExist", "x"), &target());
        assert!(p.starts_with("CI refused the signature"), "{p}");
        let (p, fix) = refusal(Call::Queues, &api(404, "NoSuchBucket", "x"), &target());
        assert!(
            p.contains("CI is not bound to it there, or the region is wrong"),
            "{p}"
        );
        assert!(fix.contains("Bind bucket"));
        let down = CiError::Transport {
            message: "dns".into(),
            ambiguous: false,
        };
        let (p, _) = refusal(Call::Queues, &down, &target());
        assert!(p.starts_with("CI unreachable at b-1250000000.ci.ap-guangzhou.myqcloud.com"));
    }

    fn queue(id: &str, state: &str) -> QueueInfo {
        QueueInfo {
            queue_id: id.into(),
            name: "queue-default".into(),
            state: state.into(),
        }
    }

    #[test]
    fn the_queue_must_be_listed_and_active() {
        let t = target();
        let active = [queue("p1", "Active")];
        assert_eq!(judge_queue(&t, &active, "").status, Status::Ok);
        assert_eq!(judge_queue(&t, &active, "p1").status, Status::Ok);
        let other = judge_queue(&t, &active, "p9");
        assert_eq!(other.status, Status::Fail);
        assert!(
            other
                .detail
                .contains("ci.queue_id = p9 is not a media queue"),
            "{}",
            other.detail
        );
        let paused = judge_queue(&t, &[queue("p1", "Paused")], "");
        assert_eq!(paused.status, Status::Fail);
        assert!(paused.detail.contains("is Paused"));
        assert!(paused.fix.unwrap().contains("resume the queue"));
        assert_eq!(judge_queue(&t, &[], "").status, Status::Fail);
    }

    #[test]
    fn an_empty_submit_refused_for_its_content_passed_the_permission_check() {
        let t = target();
        let content = api(400, "InvalidArgument", "no Tag");
        assert_eq!(judge_submit(&t, Err(&content)).status, Status::Ok);
        let denied = api(403, "AccessDenied", "The operation is prohibited.");
        assert_eq!(judge_submit(&t, Err(&denied)).status, Status::Fail);
        let signature = api(403, "SignatureDoesNotMatch", "x");
        assert_eq!(judge_submit(&t, Err(&signature)).status, Status::Fail);
        let unbound = api(404, "NoSuchBucket", "x");
        assert_eq!(judge_submit(&t, Err(&unbound)).status, Status::Fail);
    }
}
