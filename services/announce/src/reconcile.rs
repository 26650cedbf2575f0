//! Reconcile: finds uploads that never reached dedup and announces them again.
//!
//! MinIO can lose notifications (across restarts, or when Kafka was unreachable longer than its
//! queue kept them). Dedup records every upload it has handled in the ledger (see
//! [`prism_core::ports::claims`]), so listing the input bucket against the ledger finds the ones it
//! never saw. Each is re-emitted as a MinIO-format event marked as a re-announcement
//! ([`prism_core::contract::reannounce`]); dedup drops a marked
//! event whose upload another event put in the ledger by the time it arrives (its own notification
//! came first after all, or an earlier reconcile's), so re-emitting never gives an upload a second
//! result.

use chrono::Utc;
use futures::{StreamExt, TryStreamExt, stream};
use prism_core::contract::SourceObject;
use prism_core::contract::reannounce::{announcement_key, reemission};
use prism_core::ports::bus::{Publication, Publisher};
use prism_core::ports::claims::{ClaimIndex, ledger_id};
use prism_core::ports::store::{Buckets, warn_unlisted};
use prism_core::runtime::trace::starting_trace;
use std::collections::HashSet;
use std::time::Duration;

/// Re-emissions awaiting Kafka's acknowledgement at once.
const PUBLISHES_IN_FLIGHT: usize = 64;

/// What one reconciliation found.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    /// Objects in the bucket.
    pub listed: usize,
    /// Of those, uploads dedup has handled.
    pub handled: usize,
    /// Changed within `min_age`: their own notification may still be on its way, so left alone.
    pub recent: usize,
    /// Uploads dedup never handled, re-emitted (or, on a dry run, that would be).
    pub missing: Vec<SourceObject>,
    /// Entries the listing set aside: keys Prism cannot read back, links, special files.
    pub unlisted: usize,
}

impl Report {
    /// One line per missing upload (tab-separated: key, ETag, size), then the counts.
    pub fn display(&self, dry_run: bool, min_age_secs: u64) -> String {
        let verb = if dry_run { "missing" } else { "re-emitted" };
        let mut text = String::new();
        for upload in &self.missing {
            text += &format!("{verb}\t{}\t{}\t{}\n", upload.key, upload.etag, upload.size);
        }
        text += &format!(
            "listed {}, handled {}, {verb} {}, recent {} (changed in the last {min_age_secs} s), \
             unlisted {}\n",
            self.listed,
            self.handled,
            self.missing.len(),
            self.recent,
            self.unlisted
        );
        text
    }
}

/// Lists `bucket`, checks every (key, ETag) against the ledger and, unless `publisher` is `None`
/// (a dry run), publishes an upload event for each one missing to `topic`.
pub async fn reconcile(
    buckets: &Buckets,
    bucket: &str,
    index: &dyn ClaimIndex,
    publisher: Option<&dyn Publisher>,
    topic: &str,
    min_age: Duration,
) -> anyhow::Result<Report> {
    let listing = buckets.list(bucket).await?;
    warn_unlisted(bucket, &listing.unlisted, &mut HashSet::new());
    let ids: Vec<String> = listing
        .objects
        .iter()
        .map(|object| ledger_id(&object.source))
        .collect();
    let handled: HashSet<String> = index
        .handled(&ids)
        .await?
        .into_iter()
        .map(|record| record.id)
        .collect();
    let now = Utc::now();
    let mut report = Report {
        listed: listing.objects.len(),
        unlisted: listing.unlisted.len(),
        ..Report::default()
    };
    for (object, id) in listing.objects.into_iter().zip(&ids) {
        if handled.contains(id) {
            report.handled += 1;
        } else if (now - object.last_modified).to_std().unwrap_or_default() < min_age {
            report.recent += 1;
        } else {
            report.missing.push(object.source);
        }
    }
    if let Some(publisher) = publisher {
        // Each publish waits for Kafka's acknowledgement: one at a time, 5000 took 33 s here, 64
        // at once 1.7 s. Retrying after a failure part-way is harmless: dedup drops re-emissions
        // of uploads it has handled.
        stream::iter(&report.missing)
            .map(|object| async move {
                let event = reemission(object, Utc::now());
                publisher
                    .publish(&starting_trace(
                        Publication::json(topic, &announcement_key(object), &event),
                        "reconcile",
                        None,
                    ))
                    .await
            })
            .buffer_unordered(PUBLISHES_IN_FLIGHT)
            .try_collect::<()>()
            .await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use prism_core::contract::ingest::UploadEvent;
    use prism_core::contract::reannounce::is_reemitted;
    use prism_core::ports::bus::memory::MemoryBus;
    use prism_core::ports::claims::HandledUpload;
    use prism_core::ports::claims::memory::MemoryIndex;

    #[tokio::test]
    async fn re_emits_exactly_the_uploads_missing_from_the_ledger() {
        let buckets = Buckets::memory();
        for key in ["a.jpg", "dir/b c.jpg", "d.jpg"] {
            buckets
                .write("in", key, Bytes::from_static(b"jpeg"), "image/jpeg")
                .await
                .unwrap();
        }
        let index = MemoryIndex::default();
        let listing = buckets.list("in").await.unwrap();
        let origin = prism_core::contract::Origin {
            topic: "uploads".into(),
            partition: 0,
            offset: 0,
        };
        index
            .record_handled(&[HandledUpload::new(&listing.objects[0].source, &origin)])
            .await
            .unwrap();
        let bus = MemoryBus::default();

        let dry = reconcile(&buckets, "in", &index, None, "uploads", Duration::ZERO)
            .await
            .unwrap();
        assert_eq!((dry.listed, dry.handled, dry.missing.len()), (3, 1, 2));
        assert!(bus.messages("uploads").is_empty());

        let report = reconcile(
            &buckets,
            "in",
            &index,
            Some(&bus),
            "uploads",
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert_eq!(report, dry);
        let events = bus.messages("uploads");
        let keys: Vec<String> = events
            .iter()
            .map(|message| {
                let event = UploadEvent::parse(&message.payload).unwrap();
                assert!(is_reemitted(&event));
                event.created_objects("in", "out").unwrap()[0].key.clone()
            })
            .collect();
        assert_eq!(keys, ["d.jpg", "dir/b c.jpg"]);
        assert_eq!(events[1].key, Some(b"in/dir/b c.jpg".to_vec()));

        // Uploaded just now: their own notification may still come; a minute's grace spares them.
        let patient = reconcile(
            &buckets,
            "in",
            &index,
            None,
            "uploads",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        assert_eq!((patient.recent, patient.missing.len()), (2, 0));
    }

    #[test]
    fn only_reconciles_own_events_count_as_re_emitted() {
        let object = SourceObject {
            bucket: "in".into(),
            key: "a.jpg".into(),
            etag: "e".into(),
            size: 1,
            batch_job: None,
        };
        assert!(is_reemitted(&reemission(&object, Utc::now())));
        assert!(!is_reemitted(&UploadEvent::for_object(
            &object,
            None,
            Utc::now()
        )));
    }
}
