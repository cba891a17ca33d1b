//! What becomes of a due job, from what CI says about it and how old it is ([`decide`]), and the
//! deadline or result that follows. Pure (the clock is read only for the next due time).

use crate::ci::response::JobDetail;
use crate::result::normalize::normalize_job;
use crate::result::{JobResult, ResultState};
use crate::worker::record::{now_ms, Deadline};
use std::time::Duration;

/// What becomes of one due job, given what CI said about it (`None`: CI does not know it, or refused
/// to say).
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// CI has its final state: publish it (the completion event was lost).
    Final(Box<JobResult>),
    /// Past `worker.job_timeout_max`: publish `timed_out`, cancelling the job at CI first unless
    /// it is already cancelled (by this worker, before a restart cut it short).
    TimedOut { cancel: bool },
    /// Not finished: check again after this long.
    CheckAgain(Duration),
}

/// The choice for a due job `age` after its submission.
pub fn decide(
    deadline: &Deadline,
    detail: Option<&JobDetail>,
    age: Duration,
    job_timeout: Duration,
    job_timeout_max: Duration,
) -> Decision {
    if let Some(detail) = detail {
        let mut result = normalize_job(detail.tree());
        // Past job_timeout_max a cancelled job is the worker's own cancel, whose `timed_out` did not
        // get out (a restart between the cancel and the publish): finish what it started.
        if result.state == ResultState::Cancelled && age >= job_timeout_max {
            return Decision::TimedOut { cancel: false };
        }
        if result.state.is_final() {
            result.request_id = Some(deadline.request_id.clone());
            result.user_data = deadline.submitted.user_data.clone();
            return Decision::Final(Box::new(result));
        }
    }
    if age >= job_timeout_max {
        return Decision::TimedOut { cancel: true };
    }
    Decision::CheckAgain(job_timeout.min(job_timeout_max - age))
}

/// The deadline's next check, `after` from now.
pub fn next(deadline: &Deadline, after: Duration) -> Deadline {
    Deadline {
        checks: deadline.checks + 1,
        due_at_ms: now_ms().saturating_add(after.as_millis() as u64),
        ..deadline.clone()
    }
}

pub fn timed_out(deadline: &Deadline, age: Duration) -> JobResult {
    let mut r = deadline.submitted.clone();
    r.state = ResultState::TimedOut;
    r.code = "TimedOut".into();
    r.message = format!(
        "no final state from CI after {}s (worker.job_timeout_max); the job was cancelled at CI",
        age.as_secs()
    );
    r.started_at = None;
    r.finished_at = None;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::deadline::schedule::first;
    use crate::worker::test_doubles::*;

    fn deadline() -> Deadline {
        let mut submitted = JobResult::new(ResultState::Submitted);
        submitted.request_id = Some("r1".into());
        submitted.job_id = Some("j1".into());
        submitted.user_data = Some("mine".into());
        first(BUCKET, REGION, &submitted, Duration::ZERO)
    }

    #[test]
    fn decisions() {
        let d = deadline();
        let (t, max) = (Duration::from_secs(600), Duration::from_secs(3600));
        let running = jobs(&[("j1", "Running", "")], None).jobs;
        let cancelled = jobs(&[("j1", "Cancel", "")], None).jobs;
        let ok = jobs(&[("j1", "Success", "")], None).jobs;
        let at = Duration::from_secs;
        assert_eq!(
            decide(&d, Some(&running[0]), at(600), t, max),
            Decision::CheckAgain(t)
        );
        assert_eq!(
            decide(&d, None, at(3500), t, max),
            Decision::CheckAgain(at(100)),
            "never past job_timeout_max"
        );
        assert_eq!(
            decide(&d, None, at(3600), t, max),
            Decision::TimedOut { cancel: true }
        );
        assert_eq!(
            decide(&d, Some(&cancelled[0]), at(3601), t, max),
            Decision::TimedOut { cancel: false }
        );
        assert!(matches!(
            decide(&d, Some(&cancelled[0]), at(600), t, max),
            Decision::Final(r) if r.state == ResultState::Cancelled
        ));
        match decide(&d, Some(&ok[0]), at(3601), t, max) {
            Decision::Final(r) => {
                assert_eq!(r.state, ResultState::Succeeded);
                assert_eq!(r.request_id.as_deref(), Some("r1"));
                assert_eq!(r.user_data.as_deref(), Some("mine"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_timed_out_result_is_the_submitted_event_ended() {
        let d = deadline();
        let r = timed_out(&d, Duration::from_secs(7200));
        assert_eq!(
            (r.state, r.code.as_str()),
            (ResultState::TimedOut, "TimedOut")
        );
        assert!(r.message.contains("7200s"), "{}", r.message);
        assert_eq!(r.user_data.as_deref(), Some("mine"));
        let again = next(&d, Duration::from_secs(60));
        assert_eq!(again.checks, 1);
        assert!(again.due_at_ms >= now_ms() + 59_000);
    }
}
