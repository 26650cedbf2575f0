//! Announcements Prism makes itself, in MinIO's event format: the bucket watcher's and
//! reconcile's. Re-announcements (reconcile's, and a starting watcher's first listing) are marked,
//! so dedup can drop those whose upload it has handled already.

use super::ingest::UploadEvent;
use super::messages::SourceObject;
use chrono::{DateTime, Utc};

/// `eventSource` of re-announcements (MinIO writes `minio:s3`).
pub const EVENT_SOURCE: &str = "prism:reannounce";

/// The Kafka key of an announcement: `bucket/key`, as MinIO keys its Kafka events, so every
/// announcement of one object (MinIO's, the watcher's, reconcile's) lands on one partition and
/// dedup sees them in order.
pub fn announcement_key(object: &SourceObject) -> String {
    format!("{}/{}", object.bucket, object.key)
}

/// Whether this event re-announces an upload that may have been handled (rather than announcing a
/// new one).
pub fn is_reemitted(event: &UploadEvent) -> bool {
    !event.records.is_empty()
        && event
            .records
            .iter()
            .all(|record| record.event_source == EVENT_SOURCE)
}

/// The event re-announcing `object`.
pub fn reemission(object: &SourceObject, now: DateTime<Utc>) -> UploadEvent {
    let mut event = UploadEvent::for_object(object, None, now);
    for record in &mut event.records {
        record.event_source = EVENT_SOURCE.to_string();
    }
    event
}
