//! The fake media processing: what a finished job reports about its input and output.
//!
//! No media is read or written; the values are plausible and stable, so that clients can parse and
//! compare them: every succeeded job shows the same `MediaInfo`, and its `MediaResult` an MD5 derived
//! from the job ID and output object. A `__fail__` job fails as CI fails an unsupported input.

use crate::ci::tree::Node;
use md5::{Digest, Md5};
use serde_json::json;

/// A plausible `MediaInfo` (the shape and values of CI's documented sample: a 215.6 s 1080p
/// H.264/AAC MP4).
pub(crate) fn media_info() -> Node<'static> {
    let info = json!({
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
    });
    Node::from_value(&info).into_owned()
}

/// `MediaResult.OutputFile` for a job's `Operation.Output`, with a stable plausible MD5.
pub(crate) fn media_result(job_id: &str, operation: &Node) -> Option<Node<'static>> {
    let output = operation.get("Output").filter(|o| o.is_map())?;
    let text = |k: &str| {
        output
            .get(k)
            .and_then(Node::as_str)
            .unwrap_or("")
            .to_string()
    };
    let object = text("Object");
    if object.is_empty() {
        return None;
    }
    let md5 = hex::encode(Md5::digest(format!("{job_id}/{object}")));
    let file = Node::Map(vec![
        ("Bucket".into(), text("Bucket").into()),
        (
            "Md5Info".into(),
            Node::Map(vec![
                ("Md5".into(), md5.into()),
                ("ObjectName".into(), object.clone().into()),
            ]),
        ),
        ("ObjectName".into(), object.into()),
        ("ObjectPrefix".into(), "".into()),
        ("Region".into(), text("Region").into()),
    ]);
    Some(Node::Map(vec![("OutputFile".into(), file)]))
}

/// The failure a `__fail__` job ends with: a documented CI code and a message in CI's style.
pub(crate) fn failure_for(tag: &str) -> (String, String) {
    let message = if tag == "DigitalWatermark" {
        "The file is faulty or unsupported: the input is 13.654 s long, and a digital watermark \
         needs more than 90 s of video."
    } else {
        "The file is faulty or unsupported."
    };
    ("ResourceNotSupported".into(), message.into())
}
