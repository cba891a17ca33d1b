//! Synthetic but realistic messages for the benchmark: completion events shaped exactly as the
//! emulator publishes them (`TaskFinish`, a succeeded DigitalWatermark job with CI's documented
//! `MediaInfo` and a `MediaResult`, keys in alphabetical order, XML through [`crate::ci::xml::to_xml`]
//! and JSON as [`Node::canonicalize`] of the same tree) and job-submission requests like
//! `schemas/examples/request.json`. Deterministic in their index, so runs are comparable.

use crate::ci::tree::Node;
use crate::ci::xml;
use crate::request::marker;
use serde_json::{json, Value};

/// The wire format of a completion event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFormat {
    Xml,
    Json,
}

/// Half XML, half JSON, alternating: event `i`'s format.
pub fn format_of(i: u64) -> EventFormat {
    if i % 2 == 0 {
        EventFormat::Xml
    } else {
        EventFormat::Json
    }
}

pub const BUCKET: &str = "examplebucket-1250000000";
pub const REGION: &str = "ap-guangzhou";

/// A valid bucket name (`<name>-<appid>`) of its own for run `run`.
pub fn bucket_for(run: &str) -> String {
    format!("bench{}-1250000000", &md5_hex(run)[..12])
}

/// The `request_id` of benchmark request `i` (events carry it in their `UserData` marker).
pub fn request_id(run: &str, i: u64) -> String {
    format!("bench-{run}-{i}")
}

/// A CI-shaped job id, unique per `(run, i)`.
pub fn job_id(run: &str, i: u64) -> String {
    let h = md5_hex(&format!("{run}/{i}"));
    format!("j{h}")
}

fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(s.as_bytes()))
}

/// The `TaskFinish` event of the succeeded job for request `i`, as the emulator would publish it.
pub fn completion_event(run: &str, i: u64, format: EventFormat) -> Vec<u8> {
    let mut tree = event_tree(run, i);
    match format {
        EventFormat::Xml => xml::to_xml("Response", &tree)
            .expect("the event tree is representable as XML")
            .into_bytes(),
        EventFormat::Json => {
            tree.canonicalize();
            serde_json::to_vec(&tree).expect("a JSON tree serializes")
        }
    }
}

/// `{"EventName": "TaskFinish", "JobsDetail": {…}}` for request `i`.
pub fn event_tree(run: &str, i: u64) -> Node<'static> {
    let id = request_id(run, i);
    let user_data = marker::encode(&id, None, Some("bench caller data"))
        .expect("a bench request id fits the marker");
    let object = format!("output/{id}.mp4");
    let job = job_id(run, i);
    let md5 = md5_hex(&format!("{job}/{object}"));
    let detail = json!({
        "Code": "Success",
        "CreationTime": "2026-01-15T10:37:37+0800",
        "EndTime": "2026-01-15T10:37:39+0800",
        "Input": {"BucketId": BUCKET, "Object": format!("input/{id}.mp4"), "Region": REGION},
        "JobId": job,
        "Message": "",
        "Operation": {
            "DigitalWatermark": {"Message": "123456789ab", "Type": "Text", "Version": "V1"},
            "MediaInfo": media_info(),
            "MediaResult": {"OutputFile": {
                "Bucket": BUCKET,
                "Md5Info": {"Md5": md5, "ObjectName": object},
                "ObjectName": object,
                "ObjectPrefix": "",
                "Region": REGION
            }},
            "Output": {"Bucket": BUCKET, "Object": object, "Region": REGION},
            "UserData": user_data
        },
        "QueueId": "p2242ab62c7c94486915508540933a2c6",
        "StartTime": "2026-01-15T10:37:38+0800",
        "State": "Success",
        "SubTag": "DigitalWatermark",
        "Tag": "DigitalWatermark"
    });
    let mut detail = Node::from_value(&detail).into_owned();
    detail.sort_keys();
    Node::Map(vec![
        ("EventName".into(), "TaskFinish".into()),
        ("JobsDetail".into(), detail),
    ])
}

/// CI's documented sample `MediaInfo` (a 215.6 s 1080p H.264/AAC MP4), as the emulator reports it.
fn media_info() -> Value {
    json!({
        "Format": {
            "Bitrate": "2533.526000", "Duration": "215.638000", "FormatLongName": "QuickTime / MOV",
            "FormatName": "mov,mp4,m4a,3gp,3g2,mj2", "NumProgram": "0", "NumStream": "2",
            "Size": "68290577", "StartTime": "0.000000"
        },
        "Stream": {
            "Audio": {
                "Bitrate": "256.050000", "Channel": "2", "ChannelLayout": "stereo",
                "CodecLongName": "AAC (Advanced Audio Coding)", "CodecName": "aac",
                "CodecTag": "0x6134706d", "CodecTagString": "mp4a", "CodecTimeBase": "1/48000",
                "Duration": "215.637000", "Index": "1", "Language": "eng", "SampleFmt": "fltp",
                "SampleRate": "48000", "StartTime": "0.000000", "Timebase": "1/48000"
            },
            "Subtitle": "",
            "Video": {
                "AvgFps": "24.000000", "Bitrate": "2272.528000",
                "CodecLongName": "H.264 / AVC / MPEG-4 AVC / MPEG-4 part 10", "CodecName": "h264",
                "CodecTag": "0x31637661", "CodecTagString": "avc1", "CodecTimeBase": "1/12288",
                "ColorPrimaries": "unknown", "ColorRange": "unknown", "ColorTransfer": "unknown",
                "Duration": "215.583333", "Fps": "24.000000", "HasBFrame": "2", "Height": "1080",
                "Index": "0", "Language": "und", "Level": "40", "NumFrames": "5174",
                "PixFormat": "yuv420p", "Profile": "High", "RefFrames": "1", "Rotation": "0.000000",
                "StartTime": "0.000000", "Timebase": "1/12288", "Width": "1920"
            }
        }
    })
}

/// Request `i` (the README's example request), its completion event in `format`.
///
/// `lost`: the input object carries the emulator's `__lost__` marker, so the job succeeds but no
/// completion event is published (the submission-path figures measure submission alone).
pub fn request(run: &str, i: u64, format: EventFormat, lost: bool) -> Vec<u8> {
    request_in(BUCKET, run, i, format, lost)
}

/// [`request`] for a job in `bucket` (the benchmark gives each run a bucket of its own, so that the
/// worker's restart-recovery scan of the queue at start-up finds no jobs of earlier runs).
pub fn request_in(bucket: &str, run: &str, i: u64, format: EventFormat, lost: bool) -> Vec<u8> {
    let id = request_id(run, i);
    let object = if lost {
        format!("input/__lost__/{id}.mp4")
    } else {
        format!("input/{id}.mp4")
    };
    let callback_format = match format {
        EventFormat::Xml => "XML",
        EventFormat::Json => "JSON",
    };
    json!({
        "request_id": id,
        "bucket": bucket,
        "region": REGION,
        "job": {
            "Tag": "DigitalWatermark",
            "Input": {"Object": object},
            "Operation": {
                "DigitalWatermark": {"Type": "Text", "Message": "123456789ab", "Version": "V1"},
                "Output": {"Region": REGION, "Bucket": bucket, "Object": format!("output/{id}.mp4")},
                "UserData": "caller data",
                "JobLevel": "0"
            },
            "CallBackFormat": callback_format
        }
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::event::parse_event;
    use crate::request::SubmitRequest;
    use crate::result::normalize::normalize_event;
    use crate::result::ResultState;

    #[test]
    fn both_formats_normalize_to_the_same_result() {
        let results: Vec<_> = [EventFormat::Xml, EventFormat::Json]
            .into_iter()
            .map(|f| {
                let payload = completion_event("t", 7, f);
                let event = parse_event(&payload).unwrap();
                let mut r = normalize_event(&event);
                assert_eq!(r.len(), 1);
                r.remove(0)
            })
            .collect();
        assert_eq!(results[0].request_id.as_deref(), Some("bench-t-7"));
        assert_eq!(results[0].state, ResultState::Succeeded);
        assert_eq!(results[0].user_data.as_deref(), Some("bench caller data"));
        assert!(results[0].media_info.is_some());
        assert_eq!(results[0].to_json(), results[1].to_json());
    }

    #[test]
    fn events_are_realistically_sized() {
        let xml = completion_event("t", 1, EventFormat::Xml).len();
        let json = completion_event("t", 1, EventFormat::Json).len();
        assert!((2500..5000).contains(&xml), "{xml}");
        assert!((2000..5000).contains(&json), "{json}");
    }

    #[test]
    fn requests_are_valid() {
        let req = SubmitRequest::parse(&request("t", 3, EventFormat::Json, true)).unwrap();
        assert_eq!(req.request_id, "bench-t-3");
        req.validate(&crate::config::Settings::default().ci)
            .unwrap();
        let req = request_in(&bucket_for("t"), "t", 4, EventFormat::Xml, false);
        let req = SubmitRequest::parse(&req).unwrap();
        let bucket = req.bucket.clone().unwrap_or_default();
        assert!(crate::request::is_bucket_name(&bucket), "{bucket}");
        req.validate(&crate::config::Settings::default().ci)
            .unwrap();
    }
}
