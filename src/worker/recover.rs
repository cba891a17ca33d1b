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
//!   attempt records tell ([`super::attempts`]): before submitting, the worker looks for the marker
//!   among the jobs of the request's input object created since that attempt ([`Recovery::search`]).
//!
//! [`check_for`] decides which check a request needs. The marker is unique per request id, so a
//! match is the request's own job.

use super::attempts::Claim;
use super::ci_calls;
use super::ci_calls::CiCalls;
use super::io::CiApi;
use crate::ci::client::{CiError, ListQuery};
use crate::ci::response::JobDetail;
use crate::request::ValidRequest;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{Mutex, OnceCell};

/// Pages of 100 jobs one scan reads at most (bounds the cost of a recovery).
const MAX_PAGES: usize = 50;
/// Clock skew allowed between this host and CI when choosing `startCreationTime`.
const SKEW: Duration = Duration::from_secs(120);

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
    in_doubt: Mutex<HashMap<String, SystemTime>>,
    /// Per (bucket, region): the media queue CI runs jobs in that name none, once learnt.
    default_queues: Mutex<HashMap<(String, String), Option<String>>>,
}

impl Recovery {
    pub fn new(lookback: Duration) -> Recovery {
        Recovery {
            started_at: SystemTime::now(),
            lookback,
            scans: Mutex::new(HashMap::new()),
            in_doubt: Mutex::new(HashMap::new()),
            default_queues: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers that `request_id` was released after an attempt whose answer was lost.
    pub async fn put_in_doubt(&self, request_id: &str, first_attempt: SystemTime) {
        self.in_doubt
            .lock()
            .await
            .insert(request_id.to_string(), first_attempt);
    }

    /// If `request_id` is in doubt: since when (and it no longer is, until put back).
    pub async fn take_in_doubt(&self, request_id: &str) -> Option<SystemTime> {
        self.in_doubt.lock().await.remove(request_id)
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
        if let Some(known) = self.default_queues.lock().await.get(&key) {
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
                self.default_queues
                    .lock()
                    .await
                    .insert(key, default.clone());
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
            let mut scans = self.scans.lock().await;
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
                self.scans.lock().await.remove(&scan_key(req));
                Err(CiError::Protocol(
                    "could not list jobs to check for an earlier submission".into(),
                ))
            }
        }
    }
}

/// Clock difference allowed between the pipeline's producers and the worker's hosts, when comparing
/// a request's publish time with what the attempt records cover.
pub const PUBLISH_SKEW: Duration = Duration::from_secs(2);

/// How a request must be checked against CI before it is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Nothing suggests a job may exist: submit.
    None,
    /// A job may exist: look for the marker among the jobs created since then ([`Recovery::search`]).
    Marker(SystemTime),
    /// Published before this process knew every attempt (it started, or may have missed or
    /// forgotten records, at that time): the shared scan of its queue taken since
    /// ([`Recovery::lookup`]), one for a whole backlog.
    RestartScan(SystemTime),
}

/// Which check a request published at `published` needs, given what the attempt records said
/// (`claim`) and whether an earlier attempt of this process lost its answer (`in_doubt`).
pub fn check_for(claim: &Claim, in_doubt: Option<SystemTime>, published: SystemTime) -> Check {
    if let Some(since) = [claim.earlier_attempt, in_doubt]
        .into_iter()
        .flatten()
        .min()
    {
        return Check::Marker(since);
    }
    match claim.known_since {
        // Nothing is sure: any attempt came after the request was published.
        None => Check::Marker(published),
        Some(known) => {
            let horizon = known.max(claim.forgotten_until);
            if published < horizon + PUBLISH_SKEW {
                Check::RestartScan(horizon)
            } else {
                Check::None
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

    #[test]
    fn which_check_a_request_needs() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let secs = |s: u64| t0 + Duration::from_secs(s);
        let claim = |earlier: Option<SystemTime>, known: Option<SystemTime>| Claim {
            earlier_attempt: earlier,
            known_since: known,
            forgotten_until: UNIX_EPOCH,
        };
        let started = claim(None, Some(t0));
        assert_eq!(
            check_for(&started, None, secs(60)),
            Check::None,
            "a fresh request"
        );
        assert_eq!(
            check_for(&claim(Some(secs(50)), Some(t0)), None, secs(40)),
            Check::Marker(secs(50)),
            "another attempt was recorded"
        );
        assert_eq!(
            check_for(&claim(Some(secs(50)), Some(t0)), Some(secs(45)), secs(40)),
            Check::Marker(secs(45)),
            "the earliest of the attempts"
        );
        assert_eq!(
            check_for(&started, Some(secs(70)), secs(60)),
            Check::Marker(secs(70)),
            "a lost answer"
        );
        assert_eq!(
            check_for(&started, None, t0 - Duration::from_secs(3600)),
            Check::RestartScan(t0),
            "published before attempts were known here"
        );
        assert_eq!(
            check_for(&started, None, secs(1)),
            Check::RestartScan(t0),
            "within the clock skew allowed"
        );
        assert_eq!(
            check_for(&claim(None, None), None, secs(60)),
            Check::Marker(secs(60)),
            "own record not read back: nothing is sure"
        );
        let forgetful = Claim {
            forgotten_until: secs(100),
            ..started
        };
        assert_eq!(
            check_for(&forgetful, None, secs(90)),
            Check::RestartScan(secs(100)),
            "records forgotten or missed: a scan taken since"
        );
        assert_eq!(check_for(&forgetful, None, secs(200)), Check::None);
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

    #[tokio::test]
    async fn in_doubt_is_taken_once() {
        let recovery = Recovery::new(Duration::from_secs(3600));
        let t = SystemTime::now();
        recovery.put_in_doubt("r1", t).await;
        assert_eq!(recovery.take_in_doubt("r1").await, Some(t));
        assert_eq!(recovery.take_in_doubt("r1").await, None);
    }
}
