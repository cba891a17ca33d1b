//! Finding a job CI may already have created for a request, so that a retry never submits it twice.
//!
//! `POST /jobs` is not idempotent. Two situations leave the worker unsure whether a job exists:
//! - an **ambiguous submit**: the request reached CI but the answer was lost (timeout, reset, garbled
//!   body). Before retrying, the worker lists the jobs created since the first attempt and looks for
//!   its correlation marker in `UserData` ([`Recovery::search`]).
//! - a **restart**: a request published before this process started may have been submitted by the
//!   previous one (killed before it acknowledged). For those the worker consults one list scan per
//!   (bucket, region, queue, tag), taken lazily and shared by all such requests ([`Recovery::lookup`]),
//!   so a backlog after a restart costs a few list calls, not one per request.
//!
//! - a **possible repeat**: a request another attempt (of any replica) may have submitted, as the
//!   attempt records tell ([`crate::worker::replica_log::attempts`]): before submitting, the worker looks for the marker
//!   among the jobs of the request's input object created since that attempt ([`Recovery::search`]).
//!
//! [`super::check::check_for`] decides which check a request needs. The marker is unique per
//! request id, so a match is the request's own job.
//!
//! A request *in doubt* (released after an ambiguous submit) is remembered here, for its
//! redelivery; bounded in number and in age (`worker.recovery_lookback`): a redelivery that goes to
//! another replica never takes it, and that replica learns of the attempt from its record.

use crate::ci::client::{CiError, ListQuery};
use crate::ci::response::JobDetail;
use crate::request::ValidRequest;
use crate::worker::bounded::Bounded;
use crate::worker::io::CiApi;
use crate::worker::pace::ci_calls::{self, CiCalls};
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

type ScanKey = (String, String, Option<String>, String);
type Scan = HashMap<String, JobDetail>;
/// A scan taken once for every request that needs it (`None`: it failed).
type SharedScan = Arc<OnceCell<Option<Scan>>>;

/// Restart recovery state: when this process started and the scans taken since.
pub struct Recovery {
    pub started_at: SystemTime,
    /// How far back a restart scan looks (`worker.job_timeout_max` bounds what can still be pending).
    pub lookback: Duration,
    /// Per queue: when the scan was asked for, and the scan.
    scans: Mutex<HashMap<ScanKey, (SystemTime, SharedScan)>>,
    /// Requests released while a job may exist for them, with their first attempt's time.
    in_doubt: Mutex<Bounded<String, SystemTime>>,
    /// Per (bucket, region): the media queue CI runs jobs in that name none, once learnt.
    default_queues: Mutex<HashMap<(String, String), Option<String>>>,
}

impl Recovery {
    pub fn new(lookback: Duration) -> Recovery {
        Recovery {
            started_at: SystemTime::now(),
            lookback,
            scans: Mutex::new(HashMap::new()),
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
        req: &ValidRequest,
    ) -> Option<String> {
        if let Some(queue) = text_at(req, &["QueueId"]) {
            return Some(queue);
        }
        let key = (req.bucket.clone(), req.region.clone());
        if let Some(known) = self.default_queues.lock().get(&key).cloned() {
            return known.clone();
        }
        match ci_calls::timed(calls, "queues", ci.queues(&req.bucket, &req.region)).await {
            Ok(queues) => {
                let default = queues
                    .iter()
                    .find(|q| q.state == "Active")
                    .or(queues.first())
                    .map(|q| q.queue_id.clone());
                tracing::info!(bucket = %req.bucket, region = %req.region, queue_id = default.as_deref().unwrap_or(""), "learnt the bucket's default media queue (ci.queue_id is empty)");
                self.default_queues.lock().insert(key, default.clone());
                default
            }
            Err(e) => {
                tracing::warn!(bucket = %req.bucket, region = %req.region, error = %e, "cannot learn the bucket's default media queue (set ci.queue_id); listing jobs without a queueId");
                None
            }
        }
    }

    /// Looks for `req`'s job among those created since `since`.
    pub async fn search(
        &self,
        ci: &impl CiApi,
        calls: &CiCalls,
        req: &ValidRequest,
        since: SystemTime,
    ) -> Result<Option<JobDetail>, CiError> {
        let wanted = marker(req);
        let queue = self.queue_for(ci, calls, req).await;
        Ok(scan(ci, calls, req, queue, since, Some(&wanted))
            .await?
            .remove(&wanted))
    }

    /// The job an earlier process created for `req`, from the shared scan of its queue, taken after
    /// `not_before` (a scan older than that is taken again: attempts up to then may be unknown to
    /// the attempt records). `Err` when CI cannot be listed (the caller retries later rather than
    /// risk a duplicate).
    pub async fn lookup(
        &self,
        ci: &impl CiApi,
        calls: &CiCalls,
        req: &ValidRequest,
        not_before: SystemTime,
    ) -> Result<Option<JobDetail>, CiError> {
        let key = scan_key(req);
        let cell = {
            let mut scans = self.scans.lock();
            let entry = scans
                .entry(key)
                .or_insert_with(|| (SystemTime::now(), Arc::default()));
            if entry.0 < not_before {
                *entry = (SystemTime::now(), Arc::default());
            }
            entry.1.clone()
        };
        let since = self.started_at - self.lookback;
        let scan = cell
            .get_or_init(|| async {
                let queue = self.queue_for(ci, calls, req).await;
                scan(ci, calls, req, queue, since, None).await.ok()
            })
            .await;
        match scan {
            Some(found) => Ok(found.get(&marker(req)).cloned()),
            None => {
                // A failed scan is not cached: forget it so the next request tries again.
                self.scans.lock().remove(&scan_key(req));
                Err(CiError::Protocol(
                    "could not list jobs to check for an earlier submission".into(),
                ))
            }
        }
    }
}

fn scan_key(req: &ValidRequest) -> ScanKey {
    (
        req.bucket.clone(),
        req.region.clone(),
        text_at(req, &["QueueId"]),
        text_at(req, &["Tag"]).unwrap_or_default(),
    )
}

/// The `UserData` the worker sent for `req` (marker plus the caller's data).
fn marker(req: &ValidRequest) -> String {
    text_at(req, &["Operation", "UserData"]).unwrap_or_default()
}

fn text_at(req: &ValidRequest, path: &[&str]) -> Option<String> {
    req.ci_job.text_at(path).map(str::to_string)
}

/// Lists the jobs of `req`'s bucket, queue and tag created since `since`, keyed by their `UserData`;
/// stops early once `stop_at` is found. Looking for one request's marker, the list is filtered on the
/// request's input object (CI's `inputObject`, an exact match), so it usually takes one call
/// whatever the queue holds.
async fn scan(
    ci: &impl CiApi,
    calls: &CiCalls,
    req: &ValidRequest,
    queue: Option<String>,
    since: SystemTime,
    stop_at: Option<&str>,
) -> Result<Scan, CiError> {
    let since: chrono::DateTime<chrono::Utc> = (since - SKEW).into();
    let mut query = ListQuery {
        queue_id: queue,
        tag: text_at(req, &["Tag"]).unwrap_or_default(),
        input_object: stop_at.and_then(|_| text_at(req, &["Input", "Object"])),
        states: Some("All".into()),
        order_by_time: Some("Desc".into()),
        size: Some(100),
        next_token: None,
        start_creation_time: Some(since.format("%Y-%m-%dT%H:%M:%S%z").to_string()),
        end_creation_time: None,
    };
    let mut found = Scan::new();
    for _ in 0..MAX_PAGES {
        let page =
            ci_calls::timed(calls, "list", ci.list(&req.bucket, &req.region, &query)).await?;
        for job in page.jobs {
            if let Some(user_data) = job.user_data().map(str::to_string) {
                let hit = stop_at == Some(user_data.as_str());
                // Kept for the life of the process: without the media trees (37 → 212 MiB of RSS
                // with them, for a queue of 10,000 finished jobs).
                found
                    .entry(user_data)
                    .or_insert_with(|| job.without_media());
                if hit {
                    return Ok(found);
                }
            }
        }
        match page.next_token {
            Some(token) => query.next_token = Some(token),
            None => break,
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ci::response::QueueInfo;
    use crate::request::SubmitRequest;
    use crate::worker::pace::ci_calls::CiCalls;
    use crate::worker::test_doubles::*;
    use std::time::UNIX_EPOCH;

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
            .search(&ci, &calls(), &valid("r1"), since)
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
            text_at(&valid("r1"), &["Input", "Object"]),
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
            .search(&ci, &calls(), &valid("r1"), SystemTime::now())
            .await
            .unwrap();
        assert!(found.is_none());
        assert_eq!(ci.calls(), ["list"]);
    }

    #[tokio::test]
    async fn failed_restart_scan_is_not_kept() {
        let ci = ScriptedCi::default()
            .list_answers(Err(refusal(503, "ServiceUnavailable")))
            .list_answers(Ok(jobs(&[("j1", "Running", &sent_user_data("r1"))], None)));
        let ci_calls = calls();
        let recovery = Recovery::new(Duration::from_secs(3600));
        assert!(recovery
            .lookup(&ci, &ci_calls, &valid("r1"), UNIX_EPOCH)
            .await
            .is_err());
        let found = recovery
            .lookup(&ci, &ci_calls, &valid("r1"), UNIX_EPOCH)
            .await
            .unwrap();
        assert_eq!(found.as_ref().and_then(|j| j.job_id()), Some("j1"));
        // The successful scan is kept for every later request of the queue.
        assert!(recovery
            .lookup(&ci, &ci_calls, &valid("r2"), UNIX_EPOCH)
            .await
            .unwrap()
            .is_none());
        assert_eq!(ci.calls(), ["list", "list"]);
    }

    #[tokio::test]
    async fn a_scan_older_than_what_may_be_unknown_is_taken_again() {
        let ci = ScriptedCi::default()
            .list_answers(Ok(jobs(&[], None)))
            .list_answers(Ok(jobs(&[("j1", "Running", &sent_user_data("r1"))], None)));
        let ci_calls = calls();
        let recovery = Recovery::new(Duration::from_secs(3600));
        let before = SystemTime::now();
        assert!(recovery
            .lookup(
                &ci,
                &ci_calls,
                &valid("r1"),
                before - Duration::from_secs(1)
            )
            .await
            .unwrap()
            .is_none());
        let found = recovery
            .lookup(
                &ci,
                &ci_calls,
                &valid("r1"),
                SystemTime::now() + Duration::from_secs(1),
            )
            .await
            .unwrap();
        assert_eq!(found.as_ref().and_then(|j| j.job_id()), Some("j1"));
        assert_eq!(ci.calls(), ["list", "list"]);
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
                .search(ci, &ci_calls, &valid(id), SystemTime::now())
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
