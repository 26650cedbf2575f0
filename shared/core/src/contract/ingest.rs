//! MinIO bucket notifications: the events on `prism.uploads`.
//!
//! MinIO publishes one JSON document per event: `EventName`, `Key` and S3-style `Records`. Object
//! keys in `Records[].s3.object.key` are URL-encoded the way Go's `url.QueryEscape` does it
//! ("a/b c+d.jpg" arrives as "a%2Fb+c%2Bd.jpg"), so they are decoded here before anything else sees
//! them; the top-level `Key` is `bucket/key` with the key as is (MinIO's Kafka target unescapes
//! it). [`UploadEvent::for_object`] writes the same format, for sources that have no notifications
//! of their own (the bucket watcher, the embedded mode).

use crate::contract::{Classify, SourceObject};
use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("upload event is not valid MinIO notification JSON: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "upload event has no Records: it is JSON but not a MinIO bucket notification, which names \
         each object in Records[].s3"
    )]
    NoRecords,
    #[error("object key {key:?} is not valid URL-encoded UTF-8")]
    BadKey { key: String },
    #[error(
        "event names object {key:?} in bucket {bucket:?}, but Prism processes only bucket \
         {input:?}; set `input_bucket` if that bucket is meant to be processed"
    )]
    ForeignBucket {
        bucket: String,
        key: String,
        input: String,
    },
}

impl Classify for EventError {
    /// The event itself is bad: it never gets better.
    fn is_transient(&self) -> bool {
        false
    }

    fn code(&self) -> &'static str {
        match self {
            EventError::Malformed(_) => "malformed_event",
            EventError::NoRecords => "no_records",
            EventError::BadKey { .. } => "bad_object_key",
            EventError::ForeignBucket { .. } => "foreign_bucket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadEvent {
    #[serde(rename = "EventName", default)]
    pub event_name: String,
    #[serde(rename = "Key", default)]
    pub key: String,
    #[serde(rename = "Records", default)]
    pub records: Vec<Record>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    #[serde(default)]
    pub event_version: String,
    #[serde(default)]
    pub event_source: String,
    #[serde(default)]
    pub event_time: String,
    pub event_name: String,
    pub s3: S3Entity,
    /// Prism's own: the batch job whose listing announces the object (see [`SourceObject`]).
    #[serde(
        rename = "prismBatchJob",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub batch_job: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Entity {
    pub bucket: BucketEntity,
    pub object: ObjectEntity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketEntity {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectEntity {
    pub key: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub e_tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequencer: Option<String>,
}

/// Go's `url.QueryEscape` leaves only these unescaped (and turns ' ' into '+').
const QUERY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b' ');

/// Encodes a key the way MinIO puts it into notifications.
pub fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, QUERY_ESCAPE)
        .to_string()
        .replace(' ', "+")
}

/// Decodes a key from a notification: '+' is a space, `%XX` an escaped byte.
pub fn decode_key(encoded: &str) -> Result<String, EventError> {
    percent_decode_str(&encoded.replace('+', " "))
        .decode_utf8()
        .map(|key| key.into_owned())
        .map_err(|_| EventError::BadKey {
            key: encoded.to_string(),
        })
}

impl UploadEvent {
    /// Parses a notification; JSON that names no object (no `Records`) is refused like non-JSON.
    pub fn parse(payload: &[u8]) -> Result<Self, EventError> {
        let event: UploadEvent = serde_json::from_slice(payload)?;
        if event.records.is_empty() {
            return Err(EventError::NoRecords);
        }
        Ok(event)
    }

    /// The objects this event announces new content for in `input_bucket`. Events that write no
    /// content (tags, retention, removals) are skipped, as are those for `output_bucket` (Prism's
    /// own outputs: processing them would loop forever). Any other bucket is an error: whoever can
    /// write to the topic must not turn Prism into a reader of other buckets.
    pub fn created_objects(
        &self,
        input_bucket: &str,
        output_bucket: &str,
    ) -> Result<Vec<SourceObject>, EventError> {
        let mut objects = Vec::with_capacity(self.records.len());
        for record in &self.records {
            let bucket = &record.s3.bucket.name;
            let object = &record.s3.object;
            if !writes_content(&record.event_name) {
                tracing::debug!(event = %record.event_name, %bucket, key = %object.key,
                    "skipping an event that writes no new content");
                continue;
            }
            if bucket == output_bucket {
                tracing::debug!(%bucket, key = %object.key,
                    "skipping an event for the output bucket (Prism's own outputs)");
                continue;
            }
            if bucket != input_bucket {
                return Err(EventError::ForeignBucket {
                    bucket: bucket.clone(),
                    key: decode_key(&object.key).unwrap_or_else(|_| object.key.clone()),
                    input: input_bucket.to_string(),
                });
            }
            objects.push(SourceObject {
                bucket: bucket.clone(),
                key: decode_key(&object.key)?,
                etag: object.e_tag.trim_matches('"').to_string(),
                size: object.size,
                batch_job: record.batch_job.clone(),
            });
        }
        Ok(objects)
    }

    /// A MinIO-format `s3:ObjectCreated:Put` event for one object.
    pub fn for_object(
        object: &SourceObject,
        content_type: Option<&str>,
        event_time: DateTime<Utc>,
    ) -> Self {
        const EVENT_NAME: &str = "s3:ObjectCreated:Put";
        UploadEvent {
            event_name: EVENT_NAME.to_string(),
            key: format!("{}/{}", object.bucket, object.key),
            records: vec![Record {
                event_version: "2.0".to_string(),
                event_source: "minio:s3".to_string(),
                event_time: event_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                event_name: EVENT_NAME.to_string(),
                batch_job: object.batch_job.clone(),
                s3: S3Entity {
                    bucket: BucketEntity {
                        name: object.bucket.clone(),
                    },
                    object: ObjectEntity {
                        key: encode_key(&object.key),
                        size: object.size,
                        e_tag: object.etag.clone(),
                        content_type: content_type.map(str::to_string),
                        sequencer: None,
                    },
                },
            }],
        }
    }
}

/// The `s3:ObjectCreated:*` events that write an object's bytes. MinIO sends the same prefix for
/// metadata edits (`PutTagging`, `DeleteTagging`, `PutRetention`, `PutLegalHold`): no new content.
fn writes_content(event_name: &str) -> bool {
    let name = event_name.strip_prefix("s3:").unwrap_or(event_name);
    matches!(
        name,
        "ObjectCreated:Put"
            | "ObjectCreated:Post"
            | "ObjectCreated:Copy"
            | "ObjectCreated:CompleteMultipartUpload"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What MinIO RELEASE.2024 sends to Kafka for `mc cp` of "Ferien 2024/Straße & Café+1.jpg"
    /// into bucket `images`, byte for byte as Go's encoding/json writes it: struct fields in
    /// declaration order, map keys sorted, `&` as `\u0026`, other UTF-8 as is. The Kafka target
    /// (internal/event/target/kafka.go) sets `Key` (and the message key) to bucket + "/" +
    /// `url.QueryUnescape(s3.object.key)`; `s3.object.key` stays `url.QueryEscape`d.
    const MINIO_PUT: &str = r#"{"EventName":"s3:ObjectCreated:Put","Key":"images/Ferien 2024/Straße \u0026 Café+1.jpg","Records":[{"eventVersion":"2.0","eventSource":"minio:s3","awsRegion":"","eventTime":"2024-05-01T10:00:00.123Z","eventName":"s3:ObjectCreated:Put","userIdentity":{"principalId":"minioadmin"},"requestParameters":{"principalId":"minioadmin","region":"","sourceIPAddress":"127.0.0.1"},"responseElements":{"x-amz-id-2":"dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8","x-amz-request-id":"17CB3C3F0A1E1A3C","x-minio-deployment-id":"5d7f3a8e-0c1d-4b5e-9f6a-7b8c9d0e1f2a","x-minio-origin-endpoint":"http://127.0.0.1:9000"},"s3":{"s3SchemaVersion":"1.0","configurationId":"Config","bucket":{"name":"images","ownerIdentity":{"principalId":"minioadmin"},"arn":"arn:aws:s3:::images"},"object":{"key":"Ferien+2024%2FStra%C3%9Fe+%26+Caf%C3%A9%2B1.jpg","size":48213,"eTag":"5d41402abc4b2a76b9719d911017c592","contentType":"image/jpeg","userMetadata":{"content-type":"image/jpeg"},"sequencer":"17CB3C3F0B2C4D5E"}},"source":{"host":"127.0.0.1","port":"","userAgent":"MinIO (linux; amd64) minio-go/v7.0.70 mc/RELEASE.2024-04-18T16-45-29Z"}}]}"#;

    const KEY: &str = "Ferien 2024/Straße & Café+1.jpg";

    fn minio_put() -> UploadEvent {
        UploadEvent::parse(MINIO_PUT.as_bytes()).unwrap()
    }

    #[test]
    fn parses_minio_put_and_decodes_the_key() {
        let objects = minio_put().created_objects("images", "output").unwrap();
        assert_eq!(
            objects,
            vec![SourceObject {
                bucket: "images".into(),
                key: KEY.into(),
                etag: "5d41402abc4b2a76b9719d911017c592".into(),
                size: 48213,
                batch_job: None,
            }]
        );
    }

    #[test]
    fn generated_events_say_what_minio_says() {
        let object = &minio_put().created_objects("images", "output").unwrap()[0];
        let generated = serde_json::to_value(UploadEvent::for_object(
            object,
            Some("image/jpeg"),
            Utc::now(),
        ))
        .unwrap();
        let minio: serde_json::Value = serde_json::from_str(MINIO_PUT).unwrap();
        for field in [
            "/EventName",
            "/Key",
            "/Records/0/eventVersion",
            "/Records/0/eventSource",
            "/Records/0/eventName",
            "/Records/0/s3/bucket/name",
            "/Records/0/s3/object/key",
            "/Records/0/s3/object/size",
            "/Records/0/s3/object/eTag",
            "/Records/0/s3/object/contentType",
        ] {
            assert_eq!(generated.pointer(field), minio.pointer(field), "{field}");
        }
        assert_eq!(generated["Key"], format!("images/{KEY}"));
    }

    #[test]
    fn keys_round_trip_through_minio_encoding() {
        for key in [
            "a/b c.jpg",
            "ünï cödé/北京.png",
            "x+y=z&w?.jpg",
            "../up/./x.jpg",
            "%41.jpg",
        ] {
            let encoded = encode_key(key);
            assert!(
                !encoded.contains(' ') && !encoded.contains('/'),
                "{encoded}"
            );
            assert_eq!(decode_key(&encoded).unwrap(), key);
        }
        assert_eq!(encode_key("a/b c.jpg"), "a%2Fb+c.jpg");
        assert_eq!(
            encode_key(KEY),
            "Ferien+2024%2FStra%C3%9Fe+%26+Caf%C3%A9%2B1.jpg"
        );
    }

    #[test]
    fn reads_several_records_and_skips_other_events_and_the_output_bucket() {
        let mut event = minio_put();
        let template = event.records[0].clone();
        let with = |event_name: &str, bucket: &str, key: &str| {
            let mut record = template.clone();
            record.event_name = event_name.into();
            record.s3.bucket.name = bucket.into();
            record.s3.object.key = key.into();
            record
        };
        event.records.extend([
            with(
                "s3:ObjectCreated:CompleteMultipartUpload",
                "images",
                "big.jpg",
            ),
            with("s3:ObjectCreated:Copy", "images", "copied.jpg"),
            with("s3:ObjectCreated:Post", "images", "posted.jpg"),
            with("s3:ObjectRemoved:Delete", "images", "removed.jpg"),
            with("s3:ObjectCreated:Put", "output", "thumbnails/x.jpg"),
            with("s3:ObjectAccessed:Get", "images", "read.jpg"),
        ]);
        let keys: Vec<String> = event
            .created_objects("images", "output")
            .unwrap()
            .into_iter()
            .map(|object| object.key)
            .collect();
        assert_eq!(keys, [KEY, "big.jpg", "copied.jpg", "posted.jpg"]);
    }

    #[test]
    fn tag_retention_and_legal_hold_edits_are_not_uploads() {
        // MinIO's `--event put` (s3:ObjectCreated:*) includes these: metadata only, no new bytes.
        for edit in [
            "s3:ObjectCreated:PutTagging",
            "s3:ObjectCreated:DeleteTagging",
            "s3:ObjectCreated:PutRetention",
            "s3:ObjectCreated:PutLegalHold",
        ] {
            let mut event = minio_put();
            event.event_name = edit.into();
            event.records[0].event_name = edit.into();
            let objects = event.created_objects("images", "output").unwrap();
            assert!(objects.is_empty(), "{edit} taken for an upload");
        }
    }

    #[test]
    fn events_for_another_bucket_are_refused() {
        let error = minio_put().created_objects("photos", "output").unwrap_err();
        assert_eq!(error.code(), "foreign_bucket");
        let reason = error.to_string();
        assert!(
            reason.contains("\"images\"") && reason.contains("\"photos\"") && reason.contains(KEY),
            "{reason}"
        );
    }

    #[test]
    fn json_that_names_no_object_is_refused() {
        for payload in [
            "{}",
            // serde reads a struct from an array too: all its fields defaulted.
            "[]",
            r#"{"Records":[]}"#,
            r#"{"EventName":"s3:ObjectCreated:Put","Key":"images/a.jpg"}"#,
        ] {
            let error = UploadEvent::parse(payload.as_bytes()).unwrap_err();
            assert_eq!(error.code(), "no_records", "{payload}");
        }
        for payload in [
            "42",
            "null",
            r#""s3:ObjectCreated:Put""#,
            r#"{"Records":null}"#,
            r#"{"Records":[{}]}"#,
            r#"{"Records":[{"eventName":"s3:ObjectCreated:Put","s3":{"bucket":{}}}]}"#,
        ] {
            let error = UploadEvent::parse(payload.as_bytes()).unwrap_err();
            assert_eq!(error.code(), "malformed_event", "{payload}");
        }
    }

    #[test]
    fn malformed_events_and_keys_are_errors() {
        assert_eq!(
            UploadEvent::parse(b"{not json").unwrap_err().code(),
            "malformed_event"
        );
        let mut event = minio_put();
        event.records[0].s3.object.key = "%FF%FE.jpg".into();
        assert_eq!(
            event
                .created_objects("images", "output")
                .unwrap_err()
                .code(),
            "bad_object_key"
        );
    }

    #[test]
    fn generated_events_parse_back_to_the_same_object() {
        let object = SourceObject {
            bucket: "in".into(),
            key: "dir/with space/ü.jpg".into(),
            etag: "abc".into(),
            size: 7,
            batch_job: None,
        };
        let event = UploadEvent::for_object(&object, Some("image/jpeg"), Utc::now());
        let bytes = serde_json::to_vec(&event).unwrap();
        let parsed = UploadEvent::parse(&bytes).unwrap();
        assert_eq!(parsed.created_objects("in", "out").unwrap(), vec![object]);
        assert_eq!(parsed.key, "in/dir/with space/ü.jpg");
        assert_eq!(
            parsed.records[0].s3.object.key,
            "dir%2Fwith+space%2F%C3%BC.jpg"
        );
    }
}
