//! Which of CI's elements repeat: the list fields of Tencent's Go SDK (cos-go-sdk-v5 v0.7.70,
//! `ci_media.go` and the files it uses), reachable from a media job's `JobsDetail`
//! (`MediaProcessJobDetail`) and a workflow event's `WorkflowExecution` (`WorkflowExecutionNotifyBody`),
//! plus the two `SpeechRecognitionResult` children CI's own page types "Container array"
//! (`FlashResult`, `ResultDetail`) where the SDK keeps one.
//!
//! CI's XML writes one element once and several repeated; its JSON form writes one as an object and
//! several as an array (and sometimes one as `[{…}]`). A result built on that would change type with
//! the number of outputs; [`is_list`] says which children the result always publishes as an array
//! ([`crate::ci::tree::Node::canonicalize_in`] with [`list_children`]).
//!
//! Keyed by (parent element, child element): no pair is a list in one place of the SDK's types and a
//! single value in another, so the parent's name is enough context. An element the SDK does not model
//! keeps CI's own rule (one an object, several an array).

/// The children of `parent` that are lists in Tencent's SDK (see the module doc); empty for most
/// elements. One lookup per element, not per child: the completion path asks it of every map.
pub fn list_children(parent: &str) -> &'static [&'static str] {
    match parent {
        // MediaResult.OutputFile (and its SpriteOutputFile): every Tag that writes files.
        "OutputFile" | "SpriteOutputFile" => &["Md5Info", "ObjectName"],
        // MediaInfo.Stream.
        "Stream" => &["Audio", "Video"],
        // JobsDetail, its Input; WorkflowExecution and its Tasks' ResultInfo.
        "JobsDetail" => &["Workflow"],
        "Input" => &["CosHeaders"],
        "WorkflowExecution" => &["CosHeaders", "Tasks"],
        "ResultInfo" => &["ObjectInfo", "SpriteObjectInfo"],
        // Operation: the request's own lists, echoed.
        "Operation" => &["Watermark", "WatermarkTemplateId"],
        "Output" => &["StreamExtract"],
        "ConcatTemplate" => &["AudioMixArray", "ConcatFragment"],
        "Transcode" | "VideoMontage" => &["AudioMixArray"],
        "FillConcat" => &["FillInput"],
        "VideoSynthesis" => &["SpliceInfo"],
        "Subtitles" => &["Subtitle"],
        // VideoTagResult.StreamData.Data.
        "Data" => &[
            "ActionTags",
            "Labels",
            "ObjectTags",
            "PersonTags",
            "PlaceTags",
            "Tags",
        ],
        "ActionTags" => &["Tags"],
        "PlaceTags" => &["ClipFrameResult", "Tags"],
        "ObjectTags" => &["Objects"],
        "Objects" | "DetailPerSecond" => &["BBox"],
        "PersonTags" => &["DetailPerSecond"],
        // SpeechRecognitionResult (`FlashResult` and `ResultDetail`: CI's page; the SDK has one).
        "SpeechRecognitionResult" => &["FlashResult", "Result", "ResultDetail"],
        "ResultDetail" => &["Words"],
        "FlashResult" => &["sentence_list"],
        "sentence_list" => &["word_list"],
        // QualityEstimate.VqaPlusResult.
        "VqaPlusResult" => &["DetailedResult"],
        "DetailedResult" => &["Items"],
        "Items" => &["AreaCoordSet"],
        // DnaResult, SplitVideoInfoResult, VocalScoreResult, WordsGeneralizeResult.
        "Detection" => &["MatchDetail", "TextDetections"],
        "SplitVideoInfoResult" => &["TimeInfo"],
        "PitchScore" | "RhythemScore" => &["SentenceScores"],
        "WordsGeneralizeResult" => &["WordsGeneralizeLable", "WordsGeneralizeToken"],
        // VideoTargetRecResult.
        "VideoTargetRecResult" => &[
            "BodyRecognition",
            "CarRecognition",
            "FaceRecognition",
            "LicenseRecognitionResult",
            "PetRecognition",
        ],
        "BodyRecognition" => &["BodyInfo"],
        "CarRecognition" => &["CarInfo"],
        "FaceRecognition" => &["FaceInfo"],
        "PetRecognition" => &["PetInfo"],
        "LicenseRecognitionResult" => &["PlateInfo"],
        // ImageOCR detections (Operation.Detection, a task's ObjectInfo[].ImageOcrResult).
        "ImageOcrResult" => &["TextDetections"],
        "TextDetections" => &["ItemPolygon", "Polygon", "WordPolygon", "Words"],
        "WordPolygon" => &["LeftBottom", "LeftTop", "RightBottom", "RightTop"],
        "Words" => &["WordCoordPoint"],
        "WordCoordPoint" => &["WordCoordinate"],
        _ => &[],
    }
}

/// True when `child` under `parent` is a list in Tencent's SDK.
pub fn is_list(parent: &str, child: &str) -> bool {
    list_children(parent).contains(&child)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (parent, child) list pair of the SDK's types, extracted from its sources (v0.7.70).
    const SDK_LISTS: &[(&str, &str)] = &[
        ("ActionTags", "Tags"),
        ("BodyRecognition", "BodyInfo"),
        ("CarRecognition", "CarInfo"),
        ("ConcatTemplate", "AudioMixArray"),
        ("ConcatTemplate", "ConcatFragment"),
        ("Data", "ActionTags"),
        ("Data", "Labels"),
        ("Data", "ObjectTags"),
        ("Data", "PersonTags"),
        ("Data", "PlaceTags"),
        ("Data", "Tags"),
        ("DetailPerSecond", "BBox"),
        ("DetailedResult", "Items"),
        ("Detection", "MatchDetail"),
        ("Detection", "TextDetections"),
        ("FaceRecognition", "FaceInfo"),
        ("FillConcat", "FillInput"),
        ("FlashResult", "sentence_list"),
        ("ImageOcrResult", "TextDetections"),
        ("Input", "CosHeaders"),
        ("Items", "AreaCoordSet"),
        ("JobsDetail", "Workflow"),
        ("LicenseRecognitionResult", "PlateInfo"),
        ("ObjectTags", "Objects"),
        ("Objects", "BBox"),
        ("Operation", "Watermark"),
        ("Operation", "WatermarkTemplateId"),
        ("Output", "StreamExtract"),
        ("OutputFile", "Md5Info"),
        ("OutputFile", "ObjectName"),
        ("PersonTags", "DetailPerSecond"),
        ("PetRecognition", "PetInfo"),
        ("PitchScore", "SentenceScores"),
        ("PlaceTags", "ClipFrameResult"),
        ("PlaceTags", "Tags"),
        ("ResultDetail", "Words"),
        ("ResultInfo", "ObjectInfo"),
        ("ResultInfo", "SpriteObjectInfo"),
        ("RhythemScore", "SentenceScores"),
        ("SpeechRecognitionResult", "FlashResult"),
        ("SpeechRecognitionResult", "Result"),
        ("SpeechRecognitionResult", "ResultDetail"),
        ("SplitVideoInfoResult", "TimeInfo"),
        ("SpriteOutputFile", "Md5Info"),
        ("SpriteOutputFile", "ObjectName"),
        ("Stream", "Audio"),
        ("Stream", "Video"),
        ("Subtitles", "Subtitle"),
        ("TextDetections", "ItemPolygon"),
        ("TextDetections", "Polygon"),
        ("TextDetections", "WordPolygon"),
        ("TextDetections", "Words"),
        ("Transcode", "AudioMixArray"),
        ("VideoMontage", "AudioMixArray"),
        ("VideoSynthesis", "SpliceInfo"),
        ("VideoTargetRecResult", "BodyRecognition"),
        ("VideoTargetRecResult", "CarRecognition"),
        ("VideoTargetRecResult", "FaceRecognition"),
        ("VideoTargetRecResult", "LicenseRecognitionResult"),
        ("VideoTargetRecResult", "PetRecognition"),
        ("VqaPlusResult", "DetailedResult"),
        ("WordCoordPoint", "WordCoordinate"),
        ("WordPolygon", "LeftBottom"),
        ("WordPolygon", "LeftTop"),
        ("WordPolygon", "RightBottom"),
        ("WordPolygon", "RightTop"),
        ("Words", "WordCoordPoint"),
        ("WordsGeneralizeResult", "WordsGeneralizeLable"),
        ("WordsGeneralizeResult", "WordsGeneralizeToken"),
        ("WorkflowExecution", "CosHeaders"),
        ("WorkflowExecution", "Tasks"),
        ("sentence_list", "word_list"),
    ];

    #[test]
    fn the_sdk_list_fields() {
        for &(parent, child) in SDK_LISTS {
            assert!(is_list(parent, child), "{parent}.{child}");
        }
        // And nothing else for those parents.
        let mut parents: Vec<&str> = SDK_LISTS.iter().map(|&(p, _)| p).collect();
        parents.dedup();
        let listed: usize = parents.iter().map(|p| list_children(p).len()).sum();
        assert_eq!(listed, SDK_LISTS.len());
        for (parent, child) in [
            ("OutputFile", "ObjectName"),
            ("OutputFile", "Md5Info"),
            ("SpriteOutputFile", "ObjectName"),
            ("SpriteOutputFile", "Md5Info"),
            ("Stream", "Video"),
            ("Stream", "Audio"),
            ("Input", "CosHeaders"),
            ("WorkflowExecution", "CosHeaders"),
            ("JobsDetail", "Workflow"),
            ("WorkflowExecution", "Tasks"),
            ("ResultInfo", "ObjectInfo"),
            ("Data", "Tags"),
            ("PlaceTags", "ClipFrameResult"),
            ("ResultDetail", "Words"),
            ("SpeechRecognitionResult", "ResultDetail"),
        ] {
            assert!(is_list(parent, child), "{parent}.{child}");
        }
        // Same names, single values elsewhere.
        for (parent, child) in [
            ("Md5Info", "ObjectName"),
            ("ObjectInfo", "ObjectName"),
            ("SpeechRecognitionResult", "ObjectName"),
            ("Stream", "Subtitle"),
            ("Transcode", "Video"),
            ("Transcode", "Audio"),
            ("Tasks", "ResultInfo"),
            ("Operation", "Output"),
            ("Data", "Unknown"),
        ] {
            assert!(!is_list(parent, child), "{parent}.{child}");
        }
    }
}
