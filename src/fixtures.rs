//! The literal examples of CI's documents (tests/fixtures/ci-docs/), shared by the unit tests. The
//! per-Tag callbacks (`callback-<tag>.xml` / `.json`) are the samples of the pages copied in
//! `../shared/reference/ci-docs/callback-<tag>.md`: for Transcode and Snapshot sample 2 (XML) and 3
//! (JSON), for VideoTag 1 and 2, for SpeechRecognition 2 and 3 (each pair the same job).

pub const DESCRIBE_NODES: &str =
    include_str!("../tests/fixtures/ci-docs/describe-job-response-nodes.xml");
pub const DESCRIBE_RESP: &str = include_str!("../tests/fixtures/ci-docs/describe-job-response.xml");
pub const DW_JSON: &str = include_str!("../tests/fixtures/ci-docs/callback-digital-watermark.json");
pub const DW_XML: &str = include_str!("../tests/fixtures/ci-docs/callback-digital-watermark.xml");
pub const ERROR_XML: &str = include_str!("../tests/fixtures/ci-docs/error.xml");
pub const JOB_CB_NODES: &str =
    include_str!("../tests/fixtures/ci-docs/job-callback-content-nodes.xml");
pub const JOB_CB_XML: &str = include_str!("../tests/fixtures/ci-docs/job-callback-content.xml");
pub const LIST_NODES: &str = include_str!("../tests/fixtures/ci-docs/list-jobs-response-nodes.xml");
pub const LIST_RESP: &str = include_str!("../tests/fixtures/ci-docs/list-jobs-response.xml");
pub const SUBMIT_REQ: &str =
    include_str!("../tests/fixtures/ci-docs/submit-digital-watermark-request.xml");
pub const SUBMIT_REQ_SYNTAX: &str =
    include_str!("../tests/fixtures/ci-docs/submit-digital-watermark-request-body.xml");
pub const SUBMIT_RESP: &str =
    include_str!("../tests/fixtures/ci-docs/submit-digital-watermark-response.xml");
pub const WF_CONTENT_NODES: &str =
    include_str!("../tests/fixtures/ci-docs/workflow-callback-content-nodes.xml");
pub const WF_CONTENT_XML: &str =
    include_str!("../tests/fixtures/ci-docs/workflow-callback-content.xml");
pub const WF_JSON: &str = include_str!("../tests/fixtures/ci-docs/workflow-callback-api.json");
pub const WF_XML: &str = include_str!("../tests/fixtures/ci-docs/workflow-callback-api.xml");
pub const SNAPSHOT_JSON: &str = include_str!("../tests/fixtures/ci-docs/callback-snapshot.json");
pub const SNAPSHOT_XML: &str = include_str!("../tests/fixtures/ci-docs/callback-snapshot.xml");
pub const ASR_JSON: &str =
    include_str!("../tests/fixtures/ci-docs/callback-speech-recognition.json");
pub const ASR_XML: &str = include_str!("../tests/fixtures/ci-docs/callback-speech-recognition.xml");
pub const TRANSCODE_JSON: &str = include_str!("../tests/fixtures/ci-docs/callback-transcode.json");
pub const TRANSCODE_XML: &str = include_str!("../tests/fixtures/ci-docs/callback-transcode.xml");
pub const VIDEO_TAG_JSON: &str = include_str!("../tests/fixtures/ci-docs/callback-video-tag.json");
pub const VIDEO_TAG_XML: &str = include_str!("../tests/fixtures/ci-docs/callback-video-tag.xml");
