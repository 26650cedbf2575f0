//! What the API answers: the pipeline's own messages with links added, so a page can show the
//! outputs without knowing where buckets live.

use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use prism_core::contract::{DeadLetter, ErrorReport, StageName, StageResult};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Key characters left as they are in a URL path: `/` keeps a key's folders readable.
const KEY_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `/api/objects/<bucket>/<key>`, the key percent-encoded (unicode and all).
pub fn object_url(bucket: &str, key: &str) -> String {
    format!(
        "/api/objects/{}/{}",
        utf8_percent_encode(bucket, KEY_PATH),
        utf8_percent_encode(key, KEY_PATH)
    )
}

/// `/api/uploads/<bucket>/<key>`: where an upload's results can be read again.
pub fn upload_url(bucket: &str, key: &str) -> String {
    format!(
        "/api/uploads/{}/{}",
        utf8_percent_encode(bucket, KEY_PATH),
        utf8_percent_encode(key, KEY_PATH)
    )
}

/// The file name of detect's annotated copy of the image, among its outputs.
pub const ANNOTATED_IMAGE: &str = "annotated.jpg";

/// A stage result as published (`StageResult`), with a `url` on each output.
pub fn result_view(result: &StageResult) -> Value {
    let mut view = serde_json::to_value(result).expect("contract types always serialise");
    if let Some(outputs) = view.get_mut("outputs").and_then(Value::as_array_mut) {
        for output in outputs {
            let url = object_url(
                output["bucket"].as_str().unwrap_or_default(),
                output["key"].as_str().unwrap_or_default(),
            );
            output["url"] = Value::String(url);
        }
    }
    view
}

/// Where detect's annotated image of `result` is served.
pub fn annotated_url(result: &StageResult) -> Option<String> {
    result
        .outputs
        .iter()
        .find(|output| output.key.ends_with(&format!("/{ANNOTATED_IMAGE}")))
        .map(|output| object_url(&output.bucket, &output.key))
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ObjectRef {
    pub bucket: String,
    pub key: String,
}

/// Why an upload went to the dead-letter topic.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct DeadLetterView {
    /// `dedup`, `thumbnail` or `detect`.
    pub stage: String,
    pub code: String,
    pub reason: String,
    pub source: Option<ObjectRef>,
    pub content_hash: Option<String>,
    pub failed_at: DateTime<Utc>,
}

impl DeadLetterView {
    pub fn of(letter: &DeadLetter) -> Self {
        DeadLetterView {
            stage: letter.stage.clone(),
            code: letter.error.code.clone(),
            reason: letter.error.reason.clone(),
            source: letter.source.as_ref().map(|source| ObjectRef {
                bucket: source.bucket.clone(),
                key: source.key.clone(),
            }),
            content_hash: letter.content_hash.clone(),
            failed_at: letter.failed_at,
        }
    }

    /// A failure remembered in a claim (the dead letter itself is not kept).
    pub fn from_claim(
        stage: StageName,
        error: &ErrorReport,
        source: ObjectRef,
        content_hash: &str,
        failed_at: DateTime<Utc>,
    ) -> Self {
        DeadLetterView {
            stage: stage.to_string(),
            code: error.code.clone(),
            reason: error.reason.clone(),
            source: Some(source),
            content_hash: Some(content_hash.to_string()),
            failed_at,
        }
    }
}

/// One upload and what became of it so far.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadView {
    pub bucket: String,
    pub key: String,
    pub content_hash: Option<String>,
    /// Stage name -> its result (`StageResult` with a `url` on each output).
    #[schema(value_type = Object)]
    pub results: BTreeMap<StageName, Value>,
    pub dead_letter: Option<DeadLetterView>,
}

/// Every stage's result for one content.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContentView {
    pub content_hash: String,
    #[schema(value_type = Object)]
    pub results: BTreeMap<StageName, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_urls_keep_folders_and_encode_the_rest() {
        assert_eq!(
            object_url("in", "web/s1/ab/été 1+1.jpg"),
            "/api/objects/in/web/s1/ab/%C3%A9t%C3%A9%201%2B1.jpg"
        );
        assert_eq!(object_url("in", "a?b#c"), "/api/objects/in/a%3Fb%23c");
    }
}
