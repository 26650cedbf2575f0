//! MinIO bucket notifications: the events on `prism.uploads`.
//!
//! MinIO publishes one JSON document per event with S3-style `Records`. Object keys in it are
//! URL-encoded the way Go's `url.QueryEscape` does it ("a/b c+d.jpg" arrives as "a%2Fb+c%2Bd.jpg"), so
//! they are decoded here before anything else sees them. [`UploadEvent::for_object`] writes the same
//! format, for sources that have no notifications of their own (the bucket watcher, the embedded mode).

use crate::contract::{Classify, SourceObject};
use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("upload event is not valid MinIO notification JSON: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("object key {key:?} is not valid URL-encoded UTF-8")]
    BadKey { key: String },
}

impl Classify for EventError {
    /// The event itself is bad: it never gets better.
    fn is_transient(&self) -> bool {
        false
    }

    fn code(&self) -> &'static str {
        match self {
            EventError::Malformed(_) => "malformed_event",
            EventError::BadKey { .. } => "bad_object_key",
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
    pub fn parse(payload: &[u8]) -> Result<Self, EventError> {
        Ok(serde_json::from_slice(payload)?)
    }

    /// The created objects this event announces, skipping other event kinds and the buckets in
    /// `ignored_buckets` (Prism's own output bucket: processing it would loop forever).
    pub fn created_objects(
        &self,
        ignored_buckets: &[&str],
    ) -> Result<Vec<SourceObject>, EventError> {
        let mut objects = Vec::with_capacity(self.records.len());
        for record in &self.records {
            if !is_object_created(&record.event_name) {
                continue;
            }
            let bucket = &record.s3.bucket.name;
            if ignored_buckets.contains(&bucket.as_str()) {
                continue;
            }
            let object = &record.s3.object;
            objects.push(SourceObject {
                bucket: bucket.clone(),
                key: decode_key(&object.key)?,
                etag: object.e_tag.trim_matches('"').to_string(),
                size: object.size,
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
        let encoded_key = encode_key(&object.key);
        UploadEvent {
            event_name: EVENT_NAME.to_string(),
            key: format!("{}/{}", object.bucket, encoded_key),
            records: vec![Record {
                event_version: "2.0".to_string(),
                event_source: "minio:s3".to_string(),
                event_time: event_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                event_name: EVENT_NAME.to_string(),
                s3: S3Entity {
                    bucket: BucketEntity {
                        name: object.bucket.clone(),
                    },
                    object: ObjectEntity {
                        key: encoded_key,
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

/// MinIO says `s3:ObjectCreated:Put`, `…:CompleteMultipartUpload`, `…:Copy`, `…:PutRetention` etc.
fn is_object_created(event_name: &str) -> bool {
    let name = event_name.strip_prefix("s3:").unwrap_or(event_name);
    name.starts_with("ObjectCreated:")
        && !name.ends_with(":PutRetention")
        && !name.ends_with(":PutLegalHold")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notification as MinIO RELEASE.2024 sends it to Kafka for `mc cp` of "a/b c+d.jpg".
    const MINIO_PUT: &str = r#"{"EventName":"s3:ObjectCreated:Put","Key":"images/a%2Fb+c%2Bd.jpg","Records":[{"eventVersion":"2.0","eventSource":"minio:s3","awsRegion":"","eventTime":"2024-05-01T10:00:00.123Z","eventName":"s3:ObjectCreated:Put","userIdentity":{"principalId":"minioadmin"},"requestParameters":{"principalId":"minioadmin","region":"","sourceIPAddress":"127.0.0.1"},"responseElements":{"x-amz-id-2":"dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8","x-amz-request-id":"17CB3C3F0A1E1A3C","x-minio-deployment-id":"5d7f3a8e","x-minio-origin-endpoint":"http://127.0.0.1:9000"},"s3":{"s3SchemaVersion":"1.0","configurationId":"Config","bucket":{"name":"images","ownerIdentity":{"principalId":"minioadmin"},"arn":"arn:aws:s3:::images"},"object":{"key":"a%2Fb+c%2Bd.jpg","size":48213,"eTag":"5d41402abc4b2a76b9719d911017c592","contentType":"image/jpeg","userMetadata":{"content-type":"image/jpeg"},"sequencer":"17CB3C3F0B2C4D5E"}},"source":{"host":"127.0.0.1","port":"","userAgent":"MinIO (linux; amd64) minio-go/v7.0.70 mc/RELEASE.2024-04-18T16-45-29Z"}}]}"#;

    #[test]
    fn parses_minio_put_and_decodes_the_key() {
        let event = UploadEvent::parse(MINIO_PUT.as_bytes()).unwrap();
        let objects = event.created_objects(&["output"]).unwrap();
        assert_eq!(
            objects,
            vec![SourceObject {
                bucket: "images".into(),
                key: "a/b c+d.jpg".into(),
                etag: "5d41402abc4b2a76b9719d911017c592".into(),
                size: 48213,
            }]
        );
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
    }

    #[test]
    fn reads_several_records_and_skips_other_events_and_the_output_bucket() {
        let mut event = UploadEvent::parse(MINIO_PUT.as_bytes()).unwrap();
        let template = event.records[0].clone();
        let mut copy = template.clone();
        copy.event_name = "s3:ObjectCreated:CompleteMultipartUpload".into();
        copy.s3.object.key = "big.jpg".into();
        let mut removed = template.clone();
        removed.event_name = "s3:ObjectRemoved:Delete".into();
        let mut output = template.clone();
        output.s3.bucket.name = "output".into();
        let mut accessed = template;
        accessed.event_name = "s3:ObjectAccessed:Get".into();
        event.records.extend([copy, removed, output, accessed]);

        let keys: Vec<String> = event
            .created_objects(&["output"])
            .unwrap()
            .into_iter()
            .map(|object| object.key)
            .collect();
        assert_eq!(keys, ["a/b c+d.jpg", "big.jpg"]);
    }

    #[test]
    fn malformed_events_and_keys_are_errors() {
        assert_eq!(
            UploadEvent::parse(b"{not json").unwrap_err().code(),
            "malformed_event"
        );
        let mut event = UploadEvent::parse(MINIO_PUT.as_bytes()).unwrap();
        event.records[0].s3.object.key = "%FF%FE.jpg".into();
        assert_eq!(
            event.created_objects(&[]).unwrap_err().code(),
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
        };
        let event = UploadEvent::for_object(&object, Some("image/jpeg"), Utc::now());
        let bytes = serde_json::to_vec(&event).unwrap();
        let parsed = UploadEvent::parse(&bytes).unwrap();
        assert_eq!(parsed.created_objects(&[]).unwrap(), vec![object]);
        assert_eq!(parsed.key, "in/dir%2Fwith+space%2F%C3%BC.jpg");
    }
}
