//! Which of CI's elements repeat: the list fields of Tencent's Go SDK (cos-go-sdk-v5 v0.7.70,
//! `ci_media.go` and the files it uses), reachable from a media job's `JobsDetail`
//! (`MediaProcessJobDetail`) and a workflow event's `WorkflowExecution` (`WorkflowExecutionNotifyBody`),
//! plus the two `SpeechRecognitionResult` children CI's own page types "Container array"
//! (`FlashResult`, `ResultDetail`) where the SDK keeps one.
//!
//! CI's XML writes one element once and several repeated; its JSON form writes one as an object and
//! several as an array (and sometimes one as `[{…}]`). A result built on that would change type with
//! the number of outputs; [`is_list`] says which children the result always publishes as an array
//! ([`crate::ci::tree::Node::canonicalize_in`]).
//!
//! Keyed by (parent element, child element): no pair is a list in one place of the SDK's types and a
//! single value in another, so the parent's name is enough context. An element the SDK does not model
//! keeps CI's own rule (one an object, several an array).

/// True when `child` under `parent` is a list in Tencent's SDK (see the module doc).
pub fn is_list(parent: &str, child: &str) -> bool {
    match child {
        // MediaResult.OutputFile (and its SpriteOutputFile): every Tag that writes files.
        "ObjectName" | "Md5Info" => matches!(parent, "OutputFile" | "SpriteOutputFile"),
        // MediaInfo.Stream.
        "Audio" | "Video" => parent == "Stream",
        // JobsDetail.Input, WorkflowExecution.
        "CosHeaders" => matches!(parent, "Input" | "WorkflowExecution"),
        "Workflow" => parent == "JobsDetail",
        // WorkflowExecution.Tasks[].ResultInfo.
        "Tasks" => parent == "WorkflowExecution",
        "ObjectInfo" | "SpriteObjectInfo" => parent == "ResultInfo",
        // Operation: the request's own lists, echoed.
        "Watermark" | "WatermarkTemplateId" => parent == "Operation",
        "StreamExtract" => parent == "Output",
        "AudioMixArray" => matches!(parent, "ConcatTemplate" | "Transcode" | "VideoMontage"),
        "ConcatFragment" => parent == "ConcatTemplate",
        "FillInput" => parent == "FillConcat",
        "SpliceInfo" => parent == "VideoSynthesis",
        "Subtitle" => parent == "Subtitles",
        // VideoTagResult.StreamData.Data.
        "ActionTags" | "Labels" | "ObjectTags" | "PersonTags" | "PlaceTags" => parent == "Data",
        "Objects" => parent == "ObjectTags",
        "BBox" => matches!(parent, "DetailPerSecond" | "Objects"),
        "DetailPerSecond" => parent == "PersonTags",
        "ClipFrameResult" => parent == "PlaceTags",
        "Tags" => matches!(parent, "ActionTags" | "Data" | "PlaceTags"),
        // SpeechRecognitionResult.
        "Result" | "ResultDetail" | "FlashResult" => parent == "SpeechRecognitionResult",
        "Words" => matches!(parent, "ResultDetail" | "TextDetections"),
        "sentence_list" => parent == "FlashResult",
        "word_list" => parent == "sentence_list",
        // QualityEstimate.VqaPlusResult.
        "DetailedResult" => parent == "VqaPlusResult",
        "Items" => parent == "DetailedResult",
        "AreaCoordSet" => parent == "Items",
        // DnaResult, SplitVideoInfoResult, VocalScoreResult, WordsGeneralizeResult.
        "MatchDetail" => parent == "Detection",
        "TimeInfo" => parent == "SplitVideoInfoResult",
        "SentenceScores" => matches!(parent, "PitchScore" | "RhythemScore"),
        "WordsGeneralizeLable" | "WordsGeneralizeToken" => parent == "WordsGeneralizeResult",
        // VideoTargetRecResult.
        "BodyRecognition"
        | "CarRecognition"
        | "FaceRecognition"
        | "LicenseRecognitionResult"
        | "PetRecognition" => parent == "VideoTargetRecResult",
        "BodyInfo" => parent == "BodyRecognition",
        "CarInfo" => parent == "CarRecognition",
        "FaceInfo" => parent == "FaceRecognition",
        "PetInfo" => parent == "PetRecognition",
        "PlateInfo" => parent == "LicenseRecognitionResult",
        // ImageOCR detections (Operation.Detection, a task's ObjectInfo[].ImageOcrResult).
        "TextDetections" => matches!(parent, "Detection" | "ImageOcrResult"),
        "ItemPolygon" | "Polygon" | "WordPolygon" => parent == "TextDetections",
        "LeftBottom" | "LeftTop" | "RightBottom" | "RightTop" => parent == "WordPolygon",
        "WordCoordPoint" => parent == "Words",
        "WordCoordinate" => parent == "WordCoordPoint",
        _ => false,
    }
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
