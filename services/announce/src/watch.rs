//! The bucket watcher: lists a bucket and announces new objects as MinIO-format upload events.
//!
//! MinIO pushes notifications itself; plain S3 servers and a local folder don't. The watcher gives
//! them the same contract: one `s3:ObjectCreated:Put` event per new (key, ETag), so an overwritten
//! object is announced again and an unchanged one never twice. It is also how the embedded mode
//! turns a folder of images into uploads.
//!
//! A watcher cannot know what an earlier one announced before it restarted, so the events of its
//! first listing are marked as re-announcements ([`reemission`]): dedup drops
//! those whose upload it has handled, and a restart costs no duplicate results.

use chrono::Utc;
use prism_core::contract::SourceObject;
use prism_core::contract::ingest::UploadEvent;
use prism_core::contract::reannounce::{announcement_key, reemission};
use prism_core::ports::bus::{BusError, Publication, Publisher};
use prism_core::ports::store::{Buckets, StoreError, Unlisted, warn_unlisted};
use prism_core::runtime::observe;
use prism_core::runtime::trace::starting_trace;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Why a poll stopped short; the next one tries again.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("listing the bucket failed: {0}")]
    Listing(StoreError),
    #[error("publishing an announcement failed: {0}")]
    Announcing(BusError),
}

pub struct Watcher {
    buckets: Buckets,
    bucket: String,
    publisher: Arc<dyn Publisher>,
    topic: String,
    /// ETag last announced per key.
    announced: HashMap<String, String>,
    /// Objects set aside by a listing, already warned about.
    unlisted: HashSet<Unlisted>,
    /// Whether the bucket was listed before: until then every object may have been announced.
    listed: bool,
}

impl Watcher {
    pub fn new(buckets: Buckets, bucket: &str, publisher: Arc<dyn Publisher>, topic: &str) -> Self {
        Watcher {
            buckets,
            bucket: bucket.to_string(),
            publisher,
            topic: topic.to_string(),
            announced: HashMap::new(),
            unlisted: HashSet::new(),
            listed: false,
        }
    }

    /// Objects the listings set aside so far (not announced, warned about once each).
    pub fn unlisted(&self) -> usize {
        self.unlisted.len()
    }

    /// Lists the bucket: what is new or changed since the last listing.
    async fn changed_objects(&mut self) -> Result<Vec<SourceObject>, StoreError> {
        let listing = self.buckets.list(&self.bucket).await?;
        self.listed = true;
        warn_unlisted(&self.bucket, &listing.unlisted, &mut self.unlisted);
        let mut changed = Vec::new();
        for object in listing.objects {
            let source = object.source;
            if self.announced.get(&source.key) != Some(&source.etag) {
                self.announced
                    .insert(source.key.clone(), source.etag.clone());
                changed.push(source);
            }
        }
        Ok(changed)
    }

    /// Treats everything in the bucket now as already announced (start from now on).
    pub async fn skip_existing(&mut self) -> Result<usize, StoreError> {
        Ok(self.changed_objects().await?.len())
    }

    /// One listing: publishes an event per new object and returns them.
    pub async fn poll(&mut self) -> Result<Vec<SourceObject>, PollError> {
        let first_listing = !self.listed;
        let changed = self.changed_objects().await.map_err(PollError::Listing)?;
        for (sent, object) in changed.iter().enumerate() {
            let event = if first_listing {
                reemission(object, Utc::now())
            } else {
                UploadEvent::for_object(object, None, Utc::now())
            };
            let publication = starting_trace(
                Publication::json(&self.topic, &announcement_key(object), &event),
                "announce",
                None,
            );
            if let Err(error) = self.publisher.publish(&publication).await {
                // Forget this object and the ones after it, so the next poll announces them (still
                // as re-announcements if this was the first listing).
                for unsent in &changed[sent..] {
                    self.announced.remove(&unsent.key);
                }
                self.listed = !first_listing;
                return Err(PollError::Announcing(error));
            }
        }
        Ok(changed)
    }

    /// Polls every `interval` until `shutdown`; a failed listing is logged and tried again.
    pub async fn run(
        mut self,
        interval: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        tracing::info!(bucket = %self.bucket, topic = %self.topic, "watching");
        while !shutdown.is_cancelled() {
            match self.poll().await {
                Ok(new) => {
                    observe::passing(observe::SERVERS);
                    observe::announced("watch", new.len());
                    if !new.is_empty() {
                        tracing::info!(announced = new.len(), "new objects");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "retrying at the next poll");
                    observe::failing(observe::SERVERS, error.to_string());
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys one poll announced.
    async fn polled_keys(watcher: &mut Watcher) -> Vec<String> {
        let announced = watcher.poll().await.unwrap();
        announced.into_iter().map(|object| object.key).collect()
    }
    use bytes::Bytes;
    use prism_core::contract::reannounce::is_reemitted;
    use prism_core::ports::bus::memory::MemoryBus;

    #[tokio::test]
    async fn announces_new_and_overwritten_objects_once() {
        let buckets = Buckets::memory();
        let bus = MemoryBus::default();
        let mut watcher = Watcher::new(buckets.clone(), "in", Arc::new(bus.clone()), "uploads");
        let put = |key: &'static str, body: &'static [u8]| {
            let buckets = buckets.clone();
            async move {
                buckets
                    .write("in", key, Bytes::from_static(body), "image/jpeg")
                    .await
                    .unwrap()
            }
        };
        put("old.jpg", b"old").await;
        assert_eq!(watcher.skip_existing().await.unwrap(), 1);
        // Started after the first listing: what it finds is new, not re-announced.

        put("a b/c.jpg", b"one").await;
        put("d.jpg", b"two").await;
        let keys = polled_keys(&mut watcher).await;
        assert_eq!(keys, ["a b/c.jpg", "d.jpg"]);
        assert!(watcher.poll().await.unwrap().is_empty());

        put("d.jpg", b"changed").await;
        let again = watcher.poll().await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].size, 7);

        let events = bus.messages("uploads");
        assert_eq!(events.len(), 3);
        let first = UploadEvent::parse(&events[0].payload).unwrap();
        assert_eq!(
            first.created_objects("in", "out").unwrap()[0].key,
            "a b/c.jpg"
        );
        assert!(!is_reemitted(&first));
        // Keyed as MinIO keys its events, so every announcement of an object shares a partition;
        // the event's own `Key` is the same, the object key unescaped as MinIO writes it.
        assert_eq!(events[0].key, Some(b"in/a b/c.jpg".to_vec()));
        assert_eq!(first.key, "in/a b/c.jpg");
    }

    /// Refuses the publish numbered `fail_at` (from 0), passes the others on.
    struct FailingOnce {
        bus: MemoryBus,
        fail_at: usize,
        count: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Publisher for FailingOnce {
        async fn publish(&self, publication: &Publication) -> Result<(), BusError> {
            let n = self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == self.fail_at {
                return Err(BusError::Closed);
            }
            self.bus.publish(publication).await
        }
    }

    #[tokio::test]
    async fn a_failed_publish_loses_no_object_of_the_listing() {
        let buckets = Buckets::memory();
        for key in ["a.jpg", "b.jpg", "c.jpg"] {
            buckets
                .write("in", key, Bytes::from_static(b"x"), "image/jpeg")
                .await
                .unwrap();
        }
        let bus = MemoryBus::default();
        let publisher = FailingOnce {
            bus: bus.clone(),
            fail_at: 1,
            count: Default::default(),
        };
        let mut watcher = Watcher::new(buckets, "in", Arc::new(publisher), "uploads");
        assert!(watcher.poll().await.is_err());
        let retried = polled_keys(&mut watcher).await;
        assert_eq!(retried, ["b.jpg", "c.jpg"]);
        let events: Vec<UploadEvent> = bus
            .messages("uploads")
            .iter()
            .map(|m| UploadEvent::parse(&m.payload).unwrap())
            .collect();
        assert_eq!(events.len(), 3, "each object announced once");
        assert!(
            events.iter().all(is_reemitted),
            "all from the first listing"
        );
    }

    #[tokio::test]
    async fn an_object_it_cannot_read_does_not_hold_back_the_others() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        std::fs::write(dir.join("a.jpg"), b"a").unwrap();
        std::fs::write(dir.join("line\nbreak.jpg"), b"odd").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd.jpg")).unwrap();
        std::fs::write(dir.join("z.jpg"), b"z").unwrap();
        let buckets = Buckets::folders(HashMap::from([("in".to_string(), dir.to_path_buf())]));
        let bus = MemoryBus::default();
        let mut watcher = Watcher::new(buckets, "in", Arc::new(bus.clone()), "uploads");
        let keys = polled_keys(&mut watcher).await;
        assert_eq!(keys, ["a.jpg", "z.jpg"]);
        // A first listing re-announces: an earlier watcher may have announced these.
        let event = UploadEvent::parse(&bus.messages("uploads")[0].payload).unwrap();
        assert!(is_reemitted(&event));
        assert_eq!(watcher.unlisted(), 2);
        assert!(watcher.poll().await.unwrap().is_empty());
        assert_eq!(watcher.unlisted(), 2, "set aside once, not once per poll");
        assert_eq!(bus.messages("uploads").len(), 2);
    }
}
