//! All jobs, in memory: creation, the state changes the lifecycle asks for, describe/list/cancel.
//!
//! Jobs are scoped to the bucket and region of the Host they were submitted to. A restart forgets
//! them; past [`MAX_JOBS`] the oldest finished ones are forgotten too.

use super::faults::ObjectFaults;
use super::job::{ci_now, default_queue_id, new_job_id, Job, JobState};
use super::media::failure_for;
use super::submit::JobSpec;
use chrono::{DateTime, FixedOffset};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Jobs kept in memory; past this the oldest finished ones are dropped.
pub(crate) const MAX_JOBS: usize = 100_000;

/// The filters and page of `GET /jobs`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListFilter {
    pub queue_id: Option<String>,
    pub tag: Option<String>,
    /// `inputObject`: exact match on `Input/Object` (CI: "currently supports only exact match").
    pub input_object: Option<String>,
    /// `None` = All.
    pub states: Option<Vec<JobState>>,
    pub start: Option<DateTime<FixedOffset>>,
    pub end: Option<DateTime<FixedOffset>>,
    pub ascending: bool,
    pub size: usize,
    /// The `seq` after which (in the listing's order) this page starts.
    pub after: Option<u64>,
}

/// Why a cancel was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CancelRefusal {
    NotFound,
    Finished(JobState),
}

#[derive(Default)]
struct Inner {
    next_seq: u64,
    jobs: BTreeMap<u64, Job>,
    ids: HashMap<String, u64>,
}

/// All jobs, behind one lock (never held across an await).
#[derive(Default)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    pub(crate) fn new() -> Store {
        Store::default()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Creates a `Submitted` job.
    pub(crate) fn insert(&self, bucket: &str, region: &str, spec: JobSpec) -> Job {
        let mut inner = self.lock();
        let mut id = new_job_id();
        while inner.ids.contains_key(&id) {
            id = new_job_id();
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let job = Job {
            seq,
            id: id.clone(),
            bucket: bucket.to_string(),
            region: region.to_string(),
            queue_id: spec
                .queue_id
                .clone()
                .unwrap_or_else(|| default_queue_id(bucket, region)),
            faults: ObjectFaults::of(spec.fault_key()),
            spec,
            state: JobState::Submitted,
            created: ci_now(),
            started: None,
            running_for: Duration::ZERO,
            ended: None,
            failure: None,
        };
        inner.ids.insert(id, seq);
        inner.jobs.insert(seq, job.clone());
        if inner.jobs.len() > MAX_JOBS {
            let oldest_finished = inner
                .jobs
                .iter()
                .find(|(_, j)| j.state.is_final())
                .map(|(s, j)| (*s, j.id.clone()));
            if let Some((s, old_id)) = oldest_finished {
                inner.jobs.remove(&s);
                inner.ids.remove(&old_id);
            }
        }
        job
    }

    fn get_mut<'a>(inner: &'a mut Inner, id: &str) -> Option<&'a mut Job> {
        let seq = *inner.ids.get(id)?;
        inner.jobs.get_mut(&seq)
    }

    /// The job, if it exists in this bucket and region.
    pub(crate) fn get(&self, bucket: &str, region: &str, id: &str) -> Option<Job> {
        let mut inner = self.lock();
        Self::get_mut(&mut inner, id)
            .filter(|j| j.bucket == bucket && j.region == region)
            .map(|j| j.clone())
    }

    /// `Submitted → Running`, for `running` (the `Progress` it reports grows over that time); `None`
    /// if the job is no longer `Submitted` (cancelled).
    pub(crate) fn start(&self, id: &str, running: Duration) -> Option<Job> {
        let mut inner = self.lock();
        let job = Self::get_mut(&mut inner, id)?;
        if job.state != JobState::Submitted {
            return None;
        }
        job.state = JobState::Running;
        job.started = Some(ci_now());
        job.running_for = running;
        Some(job.clone())
    }

    /// `Running → Success/Failed`; `None` if the job is no longer `Running` (cancelled).
    pub(crate) fn finish(&self, id: &str) -> Option<Job> {
        let mut inner = self.lock();
        let job = Self::get_mut(&mut inner, id)?;
        if job.state != JobState::Running {
            return None;
        }
        if job.faults.fail {
            job.state = JobState::Failed;
            job.failure = Some(failure_for(&job.spec.tag));
        } else {
            job.state = JobState::Success;
        }
        job.ended = Some(ci_now());
        Some(job.clone())
    }

    /// Moves a `Submitted`/`Running` (or `Pause`) job to `Cancel`; cancelling a cancelled job again is
    /// accepted. Returns whether the state changed.
    pub(crate) fn cancel(
        &self,
        bucket: &str,
        region: &str,
        id: &str,
    ) -> Result<bool, CancelRefusal> {
        let mut inner = self.lock();
        let job = Self::get_mut(&mut inner, id)
            .filter(|j| j.bucket == bucket && j.region == region)
            .ok_or(CancelRefusal::NotFound)?;
        match job.state {
            JobState::Cancel => Ok(false),
            JobState::Success | JobState::Failed => Err(CancelRefusal::Finished(job.state)),
            JobState::Submitted | JobState::Running | JobState::Pause => {
                job.state = JobState::Cancel;
                job.ended = Some(ci_now());
                Ok(true)
            }
        }
    }

    /// One page of the bucket's jobs matching `filter`, and the token of the next page if any.
    pub(crate) fn list(
        &self,
        bucket: &str,
        region: &str,
        filter: &ListFilter,
    ) -> (Vec<Job>, Option<u64>) {
        let inner = self.lock();
        let matches = |j: &&Job| {
            j.bucket == bucket
                && j.region == region
                && filter.queue_id.as_ref().is_none_or(|q| *q == j.queue_id)
                && filter.tag.as_ref().is_none_or(|t| *t == j.spec.tag)
                && filter
                    .input_object
                    .as_ref()
                    .is_none_or(|o| Some(o) == j.spec.input_object.as_ref())
                && filter.states.as_ref().is_none_or(|s| s.contains(&j.state))
                && filter
                    .start
                    .is_none_or(|s| j.created.timestamp() >= s.timestamp())
                && filter
                    .end
                    .is_none_or(|e| j.created.timestamp() <= e.timestamp())
        };
        let iter: Box<dyn Iterator<Item = &Job>> = match (filter.ascending, filter.after) {
            (true, None) => Box::new(inner.jobs.values()),
            (true, Some(a)) => Box::new(inner.jobs.range(a + 1..).map(|(_, j)| j)),
            (false, None) => Box::new(inner.jobs.values().rev()),
            (false, Some(a)) => Box::new(inner.jobs.range(..a).rev().map(|(_, j)| j)),
        };
        let mut page: Vec<Job> = iter
            .filter(matches)
            .take(filter.size + 1)
            .cloned()
            .collect();
        let next = if page.len() > filter.size {
            page.truncate(filter.size);
            page.last().map(|j| j.seq)
        } else {
            None
        };
        (page, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::submit::parse_request;

    fn spec(object: &str) -> JobSpec {
        parse_request(&format!(
            "<Request><Tag>DigitalWatermark</Tag><Input><Object>{object}</Object></Input>\
             <Operation><DigitalWatermark><Type>Text</Type><Message>m</Message><Version>V1</Version>\
             </DigitalWatermark><Output><Region>ap-guangzhou</Region><Bucket>b-1</Bucket>\
             <Object>out.mp4</Object></Output><UserData>u</UserData></Operation></Request>"
        ))
        .unwrap()
    }

    #[test]
    fn lifecycle_transitions_and_cancel() {
        let store = Store::new();
        let job = store.insert("b-1", "ap-guangzhou", spec("in/a.mp4"));
        let d = job.detail().into_value();
        assert_eq!(d["State"], "Submitted");
        assert_eq!(d["StartTime"], "-");
        assert!(d["Operation"].get("MediaResult").is_none());
        assert!(
            store.get("b-2", "ap-guangzhou", &job.id).is_none(),
            "other bucket"
        );
        assert!(store.start(&job.id, Duration::from_secs(60)).is_some());
        assert!(store.start(&job.id, Duration::from_secs(60)).is_none());
        let done = store.finish(&job.id).unwrap();
        assert_eq!(done.state, JobState::Success);
        let d = done.detail().into_value();
        assert_ne!(d["EndTime"], "-");
        assert_eq!(
            d["Operation"]["MediaResult"]["OutputFile"]["ObjectName"],
            "out.mp4"
        );
        assert_eq!(
            store.cancel("b-1", "ap-guangzhou", &job.id),
            Err(CancelRefusal::Finished(JobState::Success))
        );
        assert_eq!(
            store.cancel("b-1", "ap-guangzhou", "jnope"),
            Err(CancelRefusal::NotFound)
        );

        let other = store.insert("b-1", "ap-guangzhou", spec("in/__fail__.mp4"));
        assert_eq!(store.cancel("b-1", "ap-guangzhou", &other.id), Ok(true));
        assert_eq!(store.cancel("b-1", "ap-guangzhou", &other.id), Ok(false));
        assert!(
            store.start(&other.id, Duration::from_secs(60)).is_none(),
            "a cancelled job never runs"
        );

        let failing = store.insert("b-1", "ap-guangzhou", spec("in/__fail__.mp4"));
        store.start(&failing.id, Duration::from_secs(60)).unwrap();
        let failed = store.finish(&failing.id).unwrap();
        assert_eq!(failed.state, JobState::Failed);
        assert_eq!(
            failed.detail().text_at(&["Code"]),
            Some("ResourceNotSupported")
        );
    }

    #[test]
    fn progress_as_ci_writes_it() {
        let store = Store::new();
        let job = store.insert("b-1", "ap-guangzhou", spec("in/a.mp4"));
        let progress = |j: &Job| j.detail().text_at(&["Progress"]).map(str::to_string);
        assert_eq!(progress(&job).as_deref(), Some("0"));
        let keys: Vec<String> = match job.detail() {
            crate::ci::tree::Node::Map(e) => e.iter().map(|(k, _)| k.to_string()).collect(),
            _ => unreachable!(),
        };
        assert_eq!(
            &keys[..6],
            [
                "Code",
                "Message",
                "JobId",
                "State",
                "Progress",
                "CreationTime"
            ]
        );
        let mut running = store.start(&job.id, Duration::from_secs(100)).unwrap();
        assert_eq!(progress(&running).as_deref(), Some("0"));
        running.started = running.started.map(|t| t - chrono::Duration::seconds(40));
        assert_eq!(progress(&running).as_deref(), Some("40"));
        running.started = running.started.map(|t| t - chrono::Duration::seconds(400));
        assert_eq!(
            progress(&running).as_deref(),
            Some("99"),
            "never 100 before it ends"
        );
        let done = store.finish(&job.id).unwrap();
        assert_eq!(progress(&done).as_deref(), Some("100"));
        assert_eq!(done.event_detail().text_at(&["Progress"]), Some("100"));

        let failing = store.insert("b-1", "ap-guangzhou", spec("in/__fail__.mp4"));
        store.start(&failing.id, Duration::from_secs(1)).unwrap();
        assert_eq!(progress(&store.finish(&failing.id).unwrap()), None);
        let cancelled = store.insert("b-1", "ap-guangzhou", spec("in/c.mp4"));
        store.cancel("b-1", "ap-guangzhou", &cancelled.id).unwrap();
        let cancelled = store.get("b-1", "ap-guangzhou", &cancelled.id).unwrap();
        assert_eq!(progress(&cancelled), None);
    }

    #[test]
    fn input_without_object_is_echoed_and_never_matches_an_input_object_filter() {
        let store = Store::new();
        let spec = parse_request(
            "<Request><Tag>Transcode</Tag><Input><Url>https://example.com/in/__fail__.mp4</Url>\
             </Input><Operation><TemplateId>t1</TemplateId></Operation></Request>",
        )
        .unwrap();
        let job = store.insert("b-1", "ap-guangzhou", spec);
        assert!(job.faults.fail, "markers are read from the Url");
        assert_eq!(
            job.detail().into_value()["Input"],
            serde_json::json!({"BucketId": "b-1", "Region": "ap-guangzhou",
                               "Url": "https://example.com/in/__fail__.mp4"})
        );
        let mut filter = ListFilter {
            size: 10,
            ..ListFilter::default()
        };
        assert_eq!(store.list("b-1", "ap-guangzhou", &filter).0.len(), 1);
        filter.input_object = Some("https://example.com/in/__fail__.mp4".into());
        assert!(store.list("b-1", "ap-guangzhou", &filter).0.is_empty());
    }

    #[test]
    fn event_detail_is_alphabetical_with_subtag() {
        let store = Store::new();
        let job = store.insert("b-1", "ap-guangzhou", spec("in/a.mp4"));
        store.start(&job.id, Duration::from_secs(60)).unwrap();
        let d = store.finish(&job.id).unwrap().event_detail().into_value();
        let keys: Vec<&String> = d.as_object().unwrap().keys().collect();
        let mut expected = keys.clone();
        expected.sort();
        assert_eq!(keys, expected);
        assert_eq!(d["SubTag"], "DigitalWatermark");
        let op: Vec<&String> = d["Operation"].as_object().unwrap().keys().collect();
        assert_eq!(
            op,
            [
                "DigitalWatermark",
                "MediaInfo",
                "MediaResult",
                "Output",
                "UserData"
            ]
        );
    }

    #[test]
    fn list_pages_in_both_orders() {
        let store = Store::new();
        let ids: Vec<String> = (0..5)
            .map(|i| {
                store
                    .insert("b-1", "ap-guangzhou", spec(&format!("in/{i}.mp4")))
                    .id
            })
            .collect();
        store.insert("b-2", "ap-guangzhou", spec("in/x.mp4"));
        let mut filter = ListFilter {
            size: 2,
            ..ListFilter::default()
        };
        let mut seen = Vec::new();
        loop {
            let (page, next) = store.list("b-1", "ap-guangzhou", &filter);
            seen.extend(page.into_iter().map(|j| j.id));
            match next {
                Some(n) => filter.after = Some(n),
                None => break,
            }
        }
        let mut desc = ids.clone();
        desc.reverse();
        assert_eq!(seen, desc);
        filter.ascending = true;
        filter.after = None;
        filter.size = 10;
        let (page, next) = store.list("b-1", "ap-guangzhou", &filter);
        assert_eq!(page.into_iter().map(|j| j.id).collect::<Vec<_>>(), ids);
        assert_eq!(next, None);
        filter.states = Some(vec![JobState::Running]);
        assert!(store.list("b-1", "ap-guangzhou", &filter).0.is_empty());
    }

    #[test]
    fn list_filters_on_the_exact_input_object() {
        let store = Store::new();
        let a1 = store.insert("b-1", "ap-guangzhou", spec("in/a b.mp4")).id;
        for other in ["in/a b.mp4x", "in/a", "IN/A B.MP4", " in/a b.mp4"] {
            store.insert("b-1", "ap-guangzhou", spec(other));
        }
        let a2 = store.insert("b-1", "ap-guangzhou", spec("in/a b.mp4")).id;
        store.insert("b-2", "ap-guangzhou", spec("in/a b.mp4"));
        let ids = |filter: &ListFilter| -> Vec<String> {
            let (page, _) = store.list("b-1", "ap-guangzhou", filter);
            page.into_iter().map(|j| j.id).collect()
        };
        let mut filter = ListFilter {
            size: 100,
            input_object: Some("in/a b.mp4".into()),
            ..ListFilter::default()
        };
        assert_eq!(ids(&filter), [a2.clone(), a1.clone()]);
        filter.tag = Some("DigitalWatermark".into());
        assert_eq!(ids(&filter), [a2.clone(), a1.clone()]);
        filter.tag = Some("Transcode".into());
        assert!(ids(&filter).is_empty());
        filter.tag = None;
        assert_eq!(store.cancel("b-1", "ap-guangzhou", &a1), Ok(true));
        filter.states = Some(vec![JobState::Cancel]);
        assert_eq!(ids(&filter), [a1.as_str()]);
        filter.states = Some(vec![JobState::Submitted]);
        assert_eq!(ids(&filter), [a2.as_str()]);
        filter.states = None;
        filter.start = Some(ci_now() + chrono::Duration::hours(1));
        assert!(ids(&filter).is_empty());
        filter.start = Some(ci_now() - chrono::Duration::hours(1));
        assert_eq!(ids(&filter), [a2, a1]);
        filter.input_object = Some("in/none.mp4".into());
        assert!(ids(&filter).is_empty());
    }
}
