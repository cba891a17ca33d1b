//! Finding a job CI may already have created for a request, so that no request is submitted twice.
//!
//! `POST /jobs` is not idempotent. Three situations leave the worker unsure whether a job exists:
//! - an **ambiguous submit**: the request reached CI but the answer was lost (timeout, reset, garbled
//!   body);
//! - a **takeover**: the request's partition came to this replica from another one, which may have
//!   submitted it before it stopped or lost the partition ([`super::takeover`]);
//! - a request **held long** here: its partition may have moved meanwhile, and the new owner may have
//!   submitted it.
//!
//! In each the worker lists the request's jobs created since then (filtered on its input object, CI's
//! `inputObject`, so usually one call) and looks for the request's id in the correlation marker of
//! their `UserData` ([`Recovery::search`]). The marker is unique per request id, so a match is the
//! request's own job. The same search finds the job of a deadline record published before its job
//! existed ([`crate::worker::deadline`]), from what the record keeps ([`JobLookup`]).
//!
//! A request *in doubt* (released after an ambiguous submit) is remembered here, for its next try;
//! bounded in number and in age (`worker.recovery_lookback`).

use crate::ci::client::{CiError, ListQuery};
use crate::ci::response::JobDetail;
use crate::request::{marker, ValidRequest};
use crate::worker::bounded::Bounded;
use crate::worker::io::CiApi;
use crate::worker::pace::ci_calls::{self, CiCalls};
pub use crate::worker::record::JobLookup;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::OnceCell;

/// Pages of 100 jobs one scan reads at most (bounds the cost of a recovery).
const MAX_PAGES: usize = 50;
/// Clock skew allowed between this host and CI when choosing `startCreationTime`.
const SKEW: Duration = Duration::from_secs(120);
/// Requests in doubt remembered at most (the oldest is forgotten first).
const IN_DOUBT_MAX: usize = 100_000;

/// A bucket's default media queue, learnt once for every check that needs it.
type DefaultQueue = Arc<OnceCell<Option<String>>>;

/// Recovery state: the requests in doubt and the media queues learnt.
pub struct Recovery {
    /// Requests released while a job may exist for them, with their first attempt's time.
    in_doubt: Mutex<Bounded<String, SystemTime>>,
    /// Per (bucket, region): the media queue CI runs jobs in that name none, once learnt (a failed
    /// lookup is not kept: the next check asks again).
    default_queues: Mutex<HashMap<(String, String), DefaultQueue>>,
}

impl Recovery {
    pub fn new(lookback: Duration) -> Recovery {
        Recovery {
            in_doubt: Mutex::new(Bounded::new(IN_DOUBT_MAX, Some(lookback))),
            default_queues: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers that `request_id` was released after an attempt whose answer was lost.
    pub fn put_in_doubt(&self, request_id: &str, first_attempt: SystemTime) {
        self.in_doubt
            .lock()
            .insert(request_id.to_string(), first_attempt);
    }

    /// Whether `request_id` is in doubt (a job of an earlier try of this replica may exist).
    pub fn is_in_doubt(&self, request_id: &str) -> bool {
        self.in_doubt.lock().contains(request_id)
    }

    /// If `request_id` is in doubt: since when (and it no longer is, until put back).
    pub fn take_in_doubt(&self, request_id: &str) -> Option<SystemTime> {
        self.in_doubt.lock().remove(request_id)
    }

    /// The queue `req`'s job runs in: its `QueueId` (the request's or `ci.queue_id`), else the
    /// bucket's default media queue, learnt once from CI (`GET /queue`, the first active one), as
    /// CI's list wants a `queueId`. If CI cannot tell, `None`: the list is sent without one (CI's
    /// page marks it required; the emulator, and CI as observed by the SDKs' users, list the
    /// bucket's jobs then), and the next check asks again.
    pub async fn queue_for(
        &self,
        ci: &impl CiApi,
        calls: &CiCalls,
        job: &JobAt<'_>,
    ) -> Option<String> {
        if let Some(queue) = &job.lookup.queue_id {
            return Some(queue.clone());
        }
        let key = (job.bucket.to_string(), job.region.to_string());
        // One `GET /queue` for all the checks waiting on it (after a takeover, many at once).
        let cell = self.default_queues.lock().entry(key).or_default().clone();
        let learnt = cell
            .get_or_try_init(|| async {
                let queues =
                    ci_calls::timed(calls, "queues", ci.queues(job.bucket, job.region)).await?;
                let default = queues
                    .iter()
                    .find(|q| q.state == "Active")
                    .or(queues.first())
                    .map(|q| q.queue_id.clone());
                tracing::info!(bucket = %job.bucket, region = %job.region, queue_id = default.as_deref().unwrap_or(""), "learnt the bucket's default media queue (ci.queue_id is empty)");
                Ok::<_, CiError>(default)
            })
            .await;
        match learnt {
            Ok(queue) => queue.clone(),
            Err(e) => {
                tracing::warn!(bucket = %job.bucket, region = %job.region, error = %e, "cannot learn the bucket's default media queue (set ci.queue_id); listing jobs without a queueId");
                None
            }
        }
    }

    /// Looks for the job of `job.request_id` among those created since `since`.
    pub async fn search(
        &self,
        ci: &impl CiApi,
        calls: &CiCalls,
        job: &JobAt<'_>,
        since: SystemTime,
    ) -> Result<Option<JobDetail>, CiError> {
        let queue = self.queue_for(ci, calls, job).await;
        scan(ci, calls, job, queue, since).await
    }

    /// [`Recovery::search`] for `req`'s job.
    pub async fn search_request(
        &self,
        ci: &impl CiApi,
        calls: &CiCalls,
        req: &ValidRequest,
        since: SystemTime,
    ) -> Result<Option<JobDetail>, CiError> {
        let lookup = JobLookup::of(req);
        let job = JobAt {
            request_id: &req.request_id,
            bucket: &req.bucket,
            region: &req.region,
            lookup: &lookup,
        };
        self.search(ci, calls, &job, since).await
    }
}

/// Where a request's job is and what finds it in CI's list.
#[derive(Debug, Clone, Copy)]
pub struct JobAt<'a> {
    pub request_id: &'a str,
    pub bucket: &'a str,
    pub region: &'a str,
    pub lookup: &'a JobLookup,
}

impl JobLookup {
    /// What finds `req`'s job.
    pub fn of(req: &ValidRequest) -> JobLookup {
        let text = |path: &[&str]| req.ci_job.text_at(path).map(str::to_string);
        JobLookup {
            queue_id: text(&["QueueId"]),
            tag: text(&["Tag"]).unwrap_or_default(),
            input_object: text(&["Input", "Object"]),
        }
    }
}

/// Lists the jobs of the request's bucket, queue, tag and input object created since `since` and
/// returns the one whose marker names the request.
async fn scan(
    ci: &impl CiApi,
    calls: &CiCalls,
    job: &JobAt<'_>,
    queue: Option<String>,
    since: SystemTime,
) -> Result<Option<JobDetail>, CiError> {
    let since: chrono::DateTime<chrono::Utc> = (since - SKEW).into();
    let mut query = ListQuery {
        queue_id: queue,
        tag: job.lookup.tag.clone(),
        input_object: job.lookup.input_object.clone(),
        states: Some("All".into()),
        order_by_time: Some("Desc".into()),
        size: Some(100),
        next_token: None,
        start_creation_time: Some(since.format("%Y-%m-%dT%H:%M:%S%z").to_string()),
        end_creation_time: None,
    };
    for _ in 0..MAX_PAGES {
        let page = ci_calls::timed(calls, "list", ci.list(job.bucket, job.region, &query)).await?;
        let mine = page.jobs.into_iter().find(|found| {
            marker::decode(found.user_data()).request_id.as_deref() == Some(job.request_id)
        });
        if mine.is_some() {
            return Ok(mine);
        }
        match page.next_token {
            Some(token) => query.next_token = Some(token),
            None => break,
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ci::response::QueueInfo;
    use crate::request::SubmitRequest;
    use crate::worker::pace::ci_calls::CiCalls;
    use crate::worker::test_doubles::*;

    fn calls() -> CiCalls {
        CiCalls::unpaced(Arc::new(crate::telemetry::Metrics::new()))
    }

    fn valid(request_id: &str) -> ValidRequest {
        SubmitRequest::parse(request(request_id).as_bytes())
            .unwrap()
            .validate(&settings().ci)
            .unwrap()
    }

    #[tokio::test]
    async fn search_reads_pages_until_it_finds_the_marker() {
        let ci = ScriptedCi::default()
            .list_answers(Ok(jobs(
                &[("j0", "Success", &sent_user_data("r0"))],
                Some("page-2"),
            )))
            .list_answers(Ok(jobs(
                &[("j1", "Running", &sent_user_data("r1"))],
                Some("page-3"),
            )));
        let since = SystemTime::now() - Duration::from_secs(60);
        let found = Recovery::new(Duration::from_secs(3600))
            .search_request(&ci, &calls(), &valid("r1"), since)
            .await
            .unwrap();
        assert_eq!(found.as_ref().and_then(|j| j.job_id()), Some("j1"));
        assert_eq!(ci.calls(), ["list", "list"], "stops at the marker");
        let queries = ci.list_queries.lock().unwrap();
        assert_eq!(queries[0].next_token, None);
        assert_eq!(queries[1].next_token.as_deref(), Some("page-2"));
        assert_eq!(queries[0].tag, "DigitalWatermark");
        assert_eq!(
            queries[0].input_object,
            JobLookup::of(&valid("r1")).input_object,
            "only the request's input object"
        );
        assert!(queries[0].input_object.is_some());
        assert_eq!(queries[0].states.as_deref(), Some("All"));
    }

    #[tokio::test]
    async fn search_without_the_marker_finds_nothing() {
        let ci = ScriptedCi::default()
            .list_answers(Ok(jobs(&[("j0", "Success", &sent_user_data("r0"))], None)));
        let found = Recovery::new(Duration::from_secs(3600))
            .search_request(&ci, &calls(), &valid("r1"), SystemTime::now())
            .await
            .unwrap();
        assert!(found.is_none());
        assert_eq!(ci.calls(), ["list"]);
    }

    fn queue(queue_id: &str, state: &str) -> QueueInfo {
        QueueInfo {
            queue_id: queue_id.into(),
            name: "queue-default".into(),
            state: state.into(),
        }
    }

    /// Looks for r1's job, then r2's, through one `Recovery`.
    async fn search_r1_and_r2(ci: &ScriptedCi) {
        let recovery = Recovery::new(Duration::from_secs(3600));
        let ci_calls = calls();
        for id in ["r1", "r2"] {
            recovery
                .search_request(ci, &ci_calls, &valid(id), SystemTime::now())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn the_default_queue_is_learnt_once_per_bucket_and_listed() {
        let ci = ScriptedCi::default()
            .queue_answers(Ok(vec![
                queue("p-paused", "Paused"),
                queue("p-default", "Active"),
            ]))
            .list_answers(Ok(jobs(&[], None)))
            .list_answers(Ok(jobs(&[], None)));
        search_r1_and_r2(&ci).await;
        assert_eq!(ci.calls(), ["queues", "list", "list"], "learnt once");
        let queries = ci.list_queries.lock().unwrap();
        assert!(queries
            .iter()
            .all(|q| q.queue_id.as_deref() == Some("p-default")));
    }

    #[tokio::test]
    async fn a_queue_ci_cannot_tell_is_left_out_and_asked_again() {
        let ci = ScriptedCi::default()
            .queue_answers(Err(refusal(503, "ServiceUnavailable")))
            .list_answers(Ok(jobs(&[], None)))
            .queue_answers(Ok(vec![queue("p-default", "Active")]))
            .list_answers(Ok(jobs(&[], None)));
        search_r1_and_r2(&ci).await;
        assert_eq!(ci.calls(), ["queues", "list", "queues", "list"]);
        let queries = ci.list_queries.lock().unwrap();
        assert_eq!(queries[0].queue_id, None);
        assert_eq!(queries[1].queue_id.as_deref(), Some("p-default"));
    }

    #[test]
    fn in_doubt_is_taken_once() {
        let recovery = Recovery::new(Duration::from_secs(3600));
        let t = SystemTime::now();
        recovery.put_in_doubt("r1", t);
        assert_eq!(recovery.take_in_doubt("r1"), Some(t));
        assert_eq!(recovery.take_in_doubt("r1"), None);
    }

    #[test]
    fn in_doubt_holds_the_newest_requests_within_its_bound() {
        let recovery = Recovery::new(Duration::from_secs(3600));
        let t = SystemTime::now();
        for i in 0..=IN_DOUBT_MAX {
            recovery.put_in_doubt(&format!("r{i}"), t);
        }
        assert_eq!(recovery.in_doubt.lock().len(), IN_DOUBT_MAX);
        assert_eq!(recovery.take_in_doubt("r0"), None, "the oldest went");
        assert_eq!(recovery.take_in_doubt("r1"), Some(t));
    }

    #[test]
    fn in_doubt_is_forgotten_after_the_lookback() {
        // A lookback of zero: every entry is already too old when it is next looked at.
        let recovery = Recovery::new(Duration::ZERO);
        recovery.put_in_doubt("r1", SystemTime::now());
        assert_eq!(recovery.take_in_doubt("r1"), None);
    }
}
