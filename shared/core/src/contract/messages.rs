//! The messages Prism publishes: jobs, results and dead letters.
//!
//! These types are the consumer contract. Each has a JSON Schema in `shared/core/schemas/` and the tests
//! validate every message they see against it, so a change here that breaks consumers fails a test.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// Bumped whenever a field changes meaning or disappears; adding an optional field does not bump it.
pub const SCHEMA_VERSION: u32 = 1;

/// The processing stages dedup routes work to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum StageName {
    Thumbnail,
    Detect,
    Classify,
}

impl StageName {
    pub const ALL: [StageName; 3] = [StageName::Thumbnail, StageName::Detect, StageName::Classify];

    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Thumbnail => "thumbnail",
            StageName::Detect => "detect",
            StageName::Classify => "classify",
        }
    }

    /// Folder of the output bucket holding this stage's outputs.
    pub fn output_prefix(self) -> &'static str {
        match self {
            StageName::Thumbnail => "thumbnails",
            StageName::Detect => "detections",
            StageName::Classify => "classifications",
        }
    }
}

impl fmt::Display for StageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that `{stage:<10}` aligns the embedded mode's summary.
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for StageName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StageName::ALL
            .into_iter()
            .find(|stage| stage.as_str() == s)
            .ok_or_else(|| format!("unknown stage {s:?} (known: thumbnail, detect, classify)"))
    }
}

/// One uploaded object, as the bucket notification described it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceObject {
    pub bucket: String,
    /// The decoded key ("a/b c.jpg", never "a%2Fb+c.jpg").
    pub key: String,
    pub etag: String,
    pub size: u64,
    /// The batch job that listed this object (`prism job submit`); `None` for an upload. Part of
    /// the identity: a job's request for an object is not the upload of it, so each gets its own
    /// result (the later one deduplicated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_job: Option<String>,
}

/// One object a stage wrote to the output bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputObject {
    pub bucket: String,
    pub key: String,
    pub content_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    pub bytes: u64,
}

/// Work for one stage on one distinct content, published by dedup on `prism.jobs.<stage>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub schema_version: u32,
    pub stage: StageName,
    pub fingerprint: String,
    /// The CouchDB `_id` of the claim this job fulfils.
    pub claim_id: String,
    pub content_hash: String,
    pub source: SourceObject,
    /// When dedup received the upload event; carried through so results report end-to-end time.
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub received_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Time spent producing this result (the stage's work, or dedup's look-up for a copy).
    pub processing_ms: u64,
    /// How many inputs the stage ran together with this one (a detect forward pass); only on the
    /// result that did the work. A rerun after a redelivery may batch differently, so it sits
    /// here with the timings rather than among the stage's findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
}

/// A stage's result for one upload, on `prism.results.<stage>`, keyed by content hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageResult {
    pub schema_version: u32,
    pub source: SourceObject,
    pub content_hash: String,
    pub stage: StageName,
    pub fingerprint: String,
    /// True when the outputs were made earlier for the same content and reused.
    pub deduplicated: bool,
    pub outputs: Vec<OutputObject>,
    /// Stage-specific fields (detect: `detections`, classify: `classes`).
    #[serde(flatten)]
    pub payload: Map<String, Value>,
    pub timings: Timings,
}

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// A server was unreachable or busy: retried with backoff, never dead-lettered.
    Transient,
    /// The input itself is bad: dead-lettered at once.
    Permanent,
}

/// One classification for every error an adapter or a parser reports: the stable code dead letters
/// and logs carry, and whether retrying can help. The consumer loop turns any of them into its own
/// error type with `?`.
pub trait Classify: std::error::Error {
    /// Stable snake_case code, e.g. `object_not_found`.
    fn code(&self) -> &'static str;
    /// Whether trying again later can succeed (a server away), or never (bad input).
    fn is_transient(&self) -> bool;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    pub kind: ErrorKind,
    /// Stable snake_case code, e.g. `corrupt_image`, `too_many_pixels`.
    pub code: String,
    /// What went wrong and what a person can do about it.
    pub reason: String,
}

/// Where a message came from, so a dead letter can be traced and replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A message Prism could not process, on `prism.deadletter`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub schema_version: u32,
    /// `dedup`, `thumbnail`, `detect` or `classify`.
    pub stage: String,
    pub error: ErrorReport,
    pub attempts: u32,
    /// The upload concerned, when it is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceObject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    pub origin: Origin,
    /// The original message: its JSON when it parses and is at most [`MAX_ORIGINAL_BYTES`], else
    /// its text (lossy UTF-8), cut to that length. `origin` finds the whole message.
    pub original: Value,
    /// The original message's length in bytes (absent in letters written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_bytes: Option<u64>,
    /// True when `original` is only the first [`MAX_ORIGINAL_BYTES`] of the message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub original_truncated: bool,
    pub failed_at: DateTime<Utc>,
}

/// The most of an original message a dead letter copies: enough to recognise it, while a dead
/// letter stays far below any broker's message limit however large the message was, and an event
/// naming many bad objects does not multiply a large message into as many large letters.
pub const MAX_ORIGINAL_BYTES: usize = 4096;

/// The `original` of a dead letter for `payload`, and whether it had to be cut.
pub fn original_payload(payload: &[u8]) -> (Value, bool) {
    if payload.len() <= MAX_ORIGINAL_BYTES
        && let Ok(json) = serde_json::from_slice(payload)
    {
        return (json, false);
    }
    let excerpt = &payload[..payload.len().min(MAX_ORIGINAL_BYTES)];
    let text = String::from_utf8_lossy(excerpt).into_owned();
    (Value::String(text), excerpt.len() < payload.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_round_trip() {
        for stage in StageName::ALL {
            assert_eq!(stage.as_str().parse::<StageName>().unwrap(), stage);
            assert_eq!(
                serde_json::to_value(stage).unwrap(),
                Value::String(stage.as_str().into())
            );
        }
        assert!("resize".parse::<StageName>().is_err());
    }

    #[test]
    fn original_payload_keeps_json_and_text() {
        assert_eq!(original_payload(br#"{"a":1}"#).0["a"], 1);
        assert_eq!(
            original_payload(b"not json"),
            (Value::String("not json".into()), false)
        );
    }

    #[test]
    fn large_originals_are_cut_to_an_excerpt() {
        let big_json = serde_json::to_vec(&vec!["x"; 10_000]).unwrap();
        let (original, truncated) = original_payload(&big_json);
        assert!(truncated);
        assert_eq!(original.as_str().unwrap().len(), MAX_ORIGINAL_BYTES);
        let (original, truncated) = original_payload(&vec![0xff; 200_000]);
        assert!(truncated);
        // Each invalid byte becomes U+FFFD (3 bytes): bounded all the same.
        assert_eq!(
            original.as_str().unwrap().chars().count(),
            MAX_ORIGINAL_BYTES
        );
    }
}
