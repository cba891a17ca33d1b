//! One job: its state, its IDs and times as CI writes them, and the `JobsDetail` CI shows for it
//! (in API responses and, re-ordered, in completion events).

use super::faults::ObjectFaults;
use super::media::{media_info, media_result};
use super::submit::JobSpec;
use crate::ci::tree::Node;
use chrono::{DateTime, FixedOffset, Utc};
use md5::{Digest, Md5};
use std::fmt;

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
    /// How long it runs once started (its `Progress` grows over that time).
    pub running_for: std::time::Duration,
    pub ended: Option<DateTime<FixedOffset>>,
    /// `(Code, Message)` of a failed job.
    pub failure: Option<(String, String)>,
    pub faults: ObjectFaults,
}

impl Job {
    /// `JobsDetail` as submit, describe and list show it: CI's order, `-` for times not yet reached,
    /// `Operation` echoed with `MediaInfo`/`MediaResult` once it succeeded, then the callback settings
    /// as the request gave them.
    pub(crate) fn detail(&self) -> Node<'static> {
        let (code, message) = match &self.failure {
            Some((c, m)) => (c.clone(), m.clone()),
            None => ("Success".to_string(), String::new()),
        };
        let time = |t: &Option<DateTime<FixedOffset>>| {
            t.as_ref().map(ci_time).unwrap_or_else(|| "-".into())
        };
        let mut operation = self.spec.operation.clone();
        if self.state == JobState::Success {
            operation.insert("MediaInfo", media_info());
            if let Some(result) = media_result(&self.id, &self.spec.operation) {
                operation.insert("MediaResult", result);
            }
        }
        // `Input` as CI shows it: the bucket and region, the `Object` if any, then the request's
        // other `Input` children (`Url`, `Vod`, `Lang`, ...) as given.
        let mut input = Node::Map(vec![("BucketId".into(), self.bucket.clone().into())]);
        if let Some(object) = &self.spec.input_object {
            input.insert("Object", object.clone().into());
        }
        input.insert("Region", self.region.clone().into());
        for (k, v) in &self.spec.input_extra {
            input.insert(k.clone(), v.clone());
        }
        let mut d = Node::Map(vec![
            ("Code".into(), code.into()),
            ("Message".into(), message.into()),
            ("JobId".into(), self.id.clone().into()),
            ("State".into(), self.state.as_str().into()),
        ]);
        if let Some(progress) = self.progress() {
            d.insert("Progress", progress.to_string().into());
        }
        for (k, v) in [
            ("CreationTime", ci_time(&self.created).into()),
            ("StartTime", time(&self.started).into()),
            ("EndTime", time(&self.ended).into()),
            ("QueueId", self.queue_id.clone().into()),
            ("Tag", self.spec.tag.clone().into()),
            ("Input", input),
            ("Operation", operation),
        ] {
            d.insert(k, v);
        }
        for (k, v) in &self.spec.callback_echo {
            d.insert(k.clone(), v.clone());
        }
        d
    }

    /// `Progress` (percent, describe-media-job.md; "returned only if `State` is `Submitted`,
    /// `Running`, `Success`, or `Pause`", callback-transcode.md): 0 while queued, the share of its
    /// running time elapsed while running (at most 99), 100 once it succeeded; none for a failed or
    /// cancelled job.
    pub(crate) fn progress(&self) -> Option<u8> {
        match self.state {
            JobState::Submitted => Some(0),
            JobState::Success => Some(100),
            JobState::Failed | JobState::Cancel => None,
            JobState::Running | JobState::Pause => {
                let elapsed = self
                    .started
                    .map(|t| (ci_now() - t).to_std().unwrap_or_default())
                    .unwrap_or_default();
                let total = self.running_for.as_millis().max(1);
                Some((elapsed.as_millis() * 100 / total).min(99) as u8)
            }
        }
    }

    /// `JobsDetail` as completion events carry it (callback-digital-watermark.md): no callback
    /// settings, `SubTag` for a DigitalWatermark job, every level's keys in alphabetical order.
    pub(crate) fn event_detail(&self) -> Node<'static> {
        let mut d = self.detail();
        for key in super::submit::CALLBACK_ELEMENTS {
            d.remove(key);
        }
        if self.spec.tag == "DigitalWatermark" {
            d.insert("SubTag", "DigitalWatermark".into());
        }
        d.sort_keys();
        d
    }
}

/// `j` + 32 hex digits shaped like CI's (a time-based UUID without dashes).
pub(crate) fn new_job_id() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
