//! Jobs in memory: creation, the lifecycle timers, describe/list/cancel, and the `JobsDetail` CI shows
//! for a job (in API responses and, re-ordered, in completion events).
//!
//! Jobs are scoped to the bucket and region of the Host they were submitted to. A restart forgets
//! them; past [`MAX_JOBS`] the oldest finished ones are forgotten too.

use super::faults::{ObjectFaults, SLOW_FACTOR};
use super::submit::{CallbackTarget, JobSpec};
use super::{EmulatorEvent, Shared};
use chrono::{DateTime, FixedOffset, Utc};
use md5::{Digest, Md5};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Jobs kept in memory; past this the oldest finished ones are dropped.
pub(crate) const MAX_JOBS: usize = 100_000;

/// CI's time zone for every timestamp it writes (`2022-06-30T18:37:37+0800`).
const CI_OFFSET_SECONDS: i32 = 8 * 3600;

/// CI's `strftime`-style format, offset without a colon.
pub(crate) const CI_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%z";

/// A job's `State`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Submitted,
    Running,
    Success,
    Failed,
    Pause,
    Cancel,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Submitted,
        JobState::Running,
        JobState::Success,
        JobState::Failed,
        JobState::Pause,
        JobState::Cancel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Submitted => "Submitted",
            JobState::Running => "Running",
            JobState::Success => "Success",
            JobState::Failed => "Failed",
            JobState::Pause => "Pause",
            JobState::Cancel => "Cancel",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// `Success`, `Failed` and `Cancel` are final.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Success | JobState::Failed | JobState::Cancel
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Now, in CI's time zone.
pub(crate) fn ci_now() -> DateTime<FixedOffset> {
    let tz = FixedOffset::east_opt(CI_OFFSET_SECONDS).expect("+08:00 is a valid offset");
    Utc::now().with_timezone(&tz)
}

fn ci_time(t: &DateTime<FixedOffset>) -> String {
    t.format(CI_TIME_FORMAT).to_string()
}

/// One emulated job.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// Creation order; the list API pages on it.
    pub seq: u64,
    pub id: String,
    pub bucket: String,
    pub region: String,
    pub queue_id: String,
    pub spec: JobSpec,
    pub state: JobState,
    pub created: DateTime<FixedOffset>,
    pub started: Option<DateTime<FixedOffset>>,
    pub ended: Option<DateTime<FixedOffset>>,
    /// `(Code, Message)` of a failed job.
    pub failure: Option<(String, String)>,
    pub faults: ObjectFaults,
}

impl Job {
    /// `JobsDetail` as submit, describe and list show it: CI's order, `-` for times not yet reached,
    /// `Operation` echoed with `MediaInfo`/`MediaResult` once it succeeded, then the callback settings
    /// as the request gave them.
    pub(crate) fn detail(&self) -> Value {
        let (code, message) = match &self.failure {
            Some((c, m)) => (c.clone(), m.clone()),
            None => ("Success".to_string(), String::new()),
        };
        let time = |t: &Option<DateTime<FixedOffset>>| {
            t.as_ref().map(ci_time).unwrap_or_else(|| "-".into())
        };
        let mut operation = self.spec.operation.clone();
        if self.state == JobState::Success {
            operation.insert("MediaInfo".into(), media_info());
            if let Some(result) = self.media_result() {
                operation.insert("MediaResult".into(), result);
            }
        }
        let mut d = Map::new();
        d.insert("Code".into(), code.into());
        d.insert("Message".into(), message.into());
        d.insert("JobId".into(), self.id.clone().into());
        d.insert("State".into(), self.state.as_str().into());
        d.insert("CreationTime".into(), ci_time(&self.created).into());
        d.insert("StartTime".into(), time(&self.started).into());
        d.insert("EndTime".into(), time(&self.ended).into());
        d.insert("QueueId".into(), self.queue_id.clone().into());
        d.insert("Tag".into(), self.spec.tag.clone().into());
        d.insert(
            "Input".into(),
            json!({"BucketId": self.bucket, "Object": self.spec.input_object, "Region": self.region}),
        );
        d.insert("Operation".into(), Value::Object(operation));
        for (k, v) in &self.spec.callback_echo {
            d.insert(k.clone(), v.clone());
        }
        Value::Object(d)
    }

    /// `JobsDetail` as completion events carry it (callback-digital-watermark.md): no callback
    /// settings, `SubTag` for a DigitalWatermark job, every level's keys in alphabetical order.
    pub(crate) fn event_detail(&self) -> Value {
        let mut d = self.detail();
        if let Value::Object(map) = &mut d {
            for key in [
                "CallBackFormat",
                "CallBackType",
                "CallBack",
                "CallBackMqConfig",
            ] {
                map.shift_remove(key);
            }
            if self.spec.tag == "DigitalWatermark" {
                map.insert("SubTag".into(), "DigitalWatermark".into());
            }
        }
        sorted_keys(d)
    }

    /// `MediaResult.OutputFile` for the job's `Operation.Output`, with a stable plausible MD5.
    fn media_result(&self) -> Option<Value> {
        let output = self.spec.operation.get("Output")?.as_object()?;
        let text = |k: &str| {
            output
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let object = text("Object");
        if object.is_empty() {
            return None;
        }
        let md5 = hex::encode(Md5::digest(format!("{}/{}", self.id, object)));
        Some(json!({
            "OutputFile": {
                "Bucket": text("Bucket"),
                "Md5Info": {"Md5": md5, "ObjectName": object},
                "ObjectName": object,
                "ObjectPrefix": "",
                "Region": text("Region"),
            }
        }))
    }

    /// How long the job stays `Submitted`, then `Running`.
    fn timings(&self, job_duration_ms: u64) -> (Duration, Duration) {
        let total = if self.faults.slow {
            job_duration_ms.saturating_mul(u64::from(SLOW_FACTOR))
        } else {
            job_duration_ms
        };
        let queued = total / 10;
        (
            Duration::from_millis(queued),
            Duration::from_millis(total - queued),
        )
    }
}

/// Every object's keys in byte order, recursively (CI's events list elements alphabetically).
pub(crate) fn sorted_keys(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted_keys).collect()),
        other => other,
    }
}

/// A plausible `MediaInfo` (the shape and values of CI's documented sample: a 215.6 s 1080p
/// H.264/AAC MP4).
fn media_info() -> Value {
    json!({
        "Format": {
            "Bitrate": "2533.526000",
            "Duration": "215.638000",
            "FormatLongName": "QuickTime / MOV",
            "FormatName": "mov,mp4,m4a,3gp,3g2,mj2",
            "NumProgram": "0",
            "NumStream": "2",
            "Size": "68290577",
            "StartTime": "0.000000"
        },
        "Stream": {
            "Audio": {
                "Bitrate": "256.050000",
                "Channel": "2",
                "ChannelLayout": "stereo",
                "CodecLongName": "AAC (Advanced Audio Coding)",
                "CodecName": "aac",
                "CodecTag": "0x6134706d",
                "CodecTagString": "mp4a",
                "CodecTimeBase": "1/48000",
                "Duration": "215.637000",
                "Index": "1",
                "Language": "eng",
                "SampleFmt": "fltp",
                "SampleRate": "48000",
                "StartTime": "0.000000",
                "Timebase": "1/48000"
            },
            "Subtitle": "",
            "Video": {
                "AvgFps": "24.000000",
                "Bitrate": "2272.528000",
                "CodecLongName": "H.264 / AVC / MPEG-4 AVC / MPEG-4 part 10",
                "CodecName": "h264",
                "CodecTag": "0x31637661",
                "CodecTagString": "avc1",
                "CodecTimeBase": "1/12288",
                "ColorPrimaries": "unknown",
                "ColorRange": "unknown",
                "ColorTransfer": "unknown",
                "Duration": "215.583333",
                "Fps": "24.000000",
                "HasBFrame": "2",
                "Height": "1080",
                "Index": "0",
                "Language": "und",
                "Level": "40",
                "NumFrames": "5174",
                "PixFormat": "yuv420p",
                "Profile": "High",
                "RefFrames": "1",
                "Rotation": "0.000000",
                "StartTime": "0.000000",
                "Timebase": "1/12288",
                "Width": "1920"
            }
        }
    })
}

/// The failure a `__fail__` job ends with: a documented CI code and a message in CI's style.
fn failure_for(tag: &str) -> (String, String) {
    let message = if tag == "DigitalWatermark" {
        "The file is faulty or unsupported: the input is 13.654 s long, and a digital watermark \
         needs more than 90 s of video."
    } else {
        "The file is faulty or unsupported."
    };
    ("ResourceNotSupported".into(), message.into())
}

/// `j` + 32 hex digits shaped like CI's (a time-based UUID without dashes).
fn new_job_id() -> String {
    use rand::Rng;
    // 100 ns ticks since 1582-10-15, as in a version-1 UUID.
    const GREGORIAN_OFFSET: u64 = 0x01B2_1DD2_1381_4000;
    let now = Utc::now();
    let ticks = (now.timestamp() as u64)
        .saturating_mul(10_000_000)
        .saturating_add(u64::from(now.timestamp_subsec_nanos()) / 100)
        .saturating_add(GREGORIAN_OFFSET);
    let mut rng = rand::rng();
    let clock_seq: u16 = rng.random::<u16>() & 0x3fff | 0x8000;
    let node: u64 = rng.random::<u64>() & 0xffff_ffff_ffff;
    format!(
        "j{:08x}{:04x}1{:03x}{:04x}{:012x}",
        ticks & 0xffff_ffff,
        (ticks >> 32) & 0xffff,
        (ticks >> 48) & 0x0fff,
        clock_seq,
        node
    )
}

/// The bucket's default queue, `p` + 32 hex digits, stable across restarts.
pub(crate) fn default_queue_id(bucket: &str, region: &str) -> String {
    format!(
        "p{}",
        hex::encode(Md5::digest(format!("ci-emulator-queue/{region}/{bucket}")))
    )
}

/// The filters and page of `GET /jobs`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListFilter {
    pub queue_id: Option<String>,
    pub tag: Option<String>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a job half-written (every update is one
        // assignment), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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
            faults: ObjectFaults::of(&spec.input_object),
            spec,
            state: JobState::Submitted,
            created: ci_now(),
            started: None,
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

    /// `Submitted → Running`; `None` if the job is no longer `Submitted` (cancelled).
    fn start(&self, id: &str) -> Option<Job> {
        let mut inner = self.lock();
        let job = Self::get_mut(&mut inner, id)?;
        if job.state != JobState::Submitted {
            return None;
        }
        job.state = JobState::Running;
        job.started = Some(ci_now());
        Some(job.clone())
    }

    /// `Running → Success/Failed`; `None` if the job is no longer `Running` (cancelled).
    fn finish(&self, id: &str) -> Option<Job> {
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

/// Runs a new job's lifecycle on tokio timers: `Submitted` for a tenth of its duration, then
/// `Running`, then `Success`/`Failed` and its completion event. A cancel in between stops it; so does
/// the emulator's shutdown.
pub(crate) fn spawn_lifecycle(shared: Arc<Shared>, job: &Job) {
    let (queued, running) = job.timings(shared.settings.emulator.job_duration_ms);
    let id = job.id.clone();
    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let lifecycle = async {
            tokio::time::sleep(queued).await;
            let Some(_) = shared.store.start(&id) else {
                return;
            };
            shared.notify(EmulatorEvent::StateChanged {
                job_id: id.clone(),
                state: JobState::Running,
            });
            tokio::time::sleep(running).await;
            let Some(done) = shared.store.finish(&id) else {
                return;
            };
            tracing::info!(job_id = %id, state = %done.state, "emulator: job finished");
            shared.notify(EmulatorEvent::StateChanged {
                job_id: id.clone(),
                state: done.state,
            });
            if done.faults.lost {
                if done.spec.target != CallbackTarget::None {
                    tracing::info!(job_id = %id, "emulator: __lost__: completion event not sent");
                }
                shared.notify(EmulatorEvent::CallbackSuppressed { job_id: id.clone() });
                return;
            }
            super::events::deliver(shared.clone(), done).await;
        };
        tokio::select! {
            _ = lifecycle => {}
            _ = shutdown.wait_for(|stopped| *stopped) => {}
        }
    });
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
    fn ids_and_times_look_like_cis() {
        let id = new_job_id();
        assert_eq!(id.len(), 33);
        assert!(id.starts_with('j') && id[1..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(&id[13..14], "1", "{id}: version-1 shaped");
        let q = default_queue_id("b-1", "ap-guangzhou");
        assert_eq!(q.len(), 33);
        assert_eq!(q, default_queue_id("b-1", "ap-guangzhou"));
        let t = ci_time(&ci_now());
        assert!(t.ends_with("+0800") && t.len() == 24, "{t}");
    }

    #[test]
    fn lifecycle_transitions_and_cancel() {
        let store = Store::new();
        let job = store.insert("b-1", "ap-guangzhou", spec("in/a.mp4"));
        let d = job.detail();
        assert_eq!(d["State"], "Submitted");
        assert_eq!(d["StartTime"], "-");
        assert!(d["Operation"].get("MediaResult").is_none());
        assert!(
            store.get("b-2", "ap-guangzhou", &job.id).is_none(),
            "other bucket"
        );
        assert!(store.start(&job.id).is_some());
        assert!(store.start(&job.id).is_none());
        let done = store.finish(&job.id).unwrap();
        assert_eq!(done.state, JobState::Success);
        let d = done.detail();
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
            store.start(&other.id).is_none(),
            "a cancelled job never runs"
        );

        let failing = store.insert("b-1", "ap-guangzhou", spec("in/__fail__.mp4"));
        store.start(&failing.id).unwrap();
        let failed = store.finish(&failing.id).unwrap();
        assert_eq!(failed.state, JobState::Failed);
        assert_eq!(failed.detail()["Code"], "ResourceNotSupported");
    }

    #[test]
    fn event_detail_is_alphabetical_with_subtag() {
        let store = Store::new();
        let job = store.insert("b-1", "ap-guangzhou", spec("in/a.mp4"));
        store.start(&job.id).unwrap();
        let d = store.finish(&job.id).unwrap().event_detail();
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
}
