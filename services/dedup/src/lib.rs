//! Dedup: turns upload events into work, once per distinct content and stage.
//!
//! For each created object in a MinIO event it streams the object through BLAKE3, then claims
//! (stage fingerprint, hash) in the dedup index for every enabled stage: a new claim becomes a job,
//! a finished one an immediate `deduplicated: true` result, a failed one a dead letter, and one in
//! flight makes the upload wait for its twin's result.
//!
//! Dedup publishes an event's messages itself and then records its uploads in the ledger, so the
//! ledger never lists an upload whose messages are not on the bus (what `prism reconcile` relies
//! on). An event `prism reconcile` re-emitted is dropped if its upload is in the ledger by then.

use async_trait::async_trait;
use chrono::Utc;
use prism_shared::bus::{Delivery, Publication, Publisher};
use prism_shared::claims::{self, Admission, ClaimIndex, HandledUpload, SeenSource, Work};
use prism_shared::config::Settings;
use prism_shared::consumer::{Outcome, ProcessError, Processor, dead_letter};
use prism_shared::contract::{SourceObject, StageName};
use prism_shared::ingest::UploadEvent;
use prism_shared::reconcile;
use prism_shared::service::{self, Backends};
use prism_shared::store::Buckets;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub struct Dedup {
    buckets: Buckets,
    index: Arc<dyn ClaimIndex>,
    publisher: Arc<dyn Publisher>,
    settings: Settings,
    /// Each enabled stage with its fingerprint, computed once from configuration.
    stages: Vec<(StageName, String)>,
}

impl Dedup {
    pub fn new(settings: Settings, backends: &Backends) -> Self {
        let stages = settings
            .enabled_stages
            .iter()
            .map(|&stage| (stage, settings.stages.fingerprint(stage)))
            .collect();
        Dedup {
            buckets: backends.buckets.clone(),
            index: backends.index.clone(),
            publisher: backends.publisher.clone(),
            settings,
            stages,
        }
    }

    /// What one upload turns into: jobs, deduplicated results, dead letters of earlier failures.
    async fn admit(
        &self,
        delivery: &Delivery,
        source: &SourceObject,
    ) -> Result<Vec<Publication>, ProcessError> {
        let received_at = Utc::now();
        let max_bytes = self.settings.stages.limits.max_bytes;
        let (hash, _) = self
            .buckets
            .hash(&source.bucket, &source.key, max_bytes)
            .await
            .map_err(|error| {
                let error_for = if error.is_transient() {
                    ProcessError::transient
                } else {
                    ProcessError::permanent
                };
                error_for(error.code(), error.to_string()).about(source)
            })?;
        let topics = &self.settings.topics;
        let mut publications = Vec::with_capacity(self.stages.len());
        for (stage, fingerprint) in &self.stages {
            let work = Work {
                stage: *stage,
                fingerprint,
                content_hash: &hash.0,
            };
            let seen = SeenSource {
                source: source.clone(),
                received_at,
            };
            let admission = claims::admit(&*self.index, work, seen, self.settings.claim_lease)
                .await
                .map_err(index_unavailable)?;
            tracing::debug!(key = %source.key, %stage, hash = %hash, ?admission, "admitted");
            match admission {
                Admission::Run(job) => {
                    publications.push(Publication::json(topics.jobs(*stage), &hash.0, &job))
                }
                Admission::Done(result) => {
                    publications.push(Publication::json(topics.results(*stage), &hash.0, &result))
                }
                Admission::Failed(report) => {
                    let mut error = ProcessError {
                        report,
                        source: Some(Box::new(source.clone())),
                        content_hash: Some(hash.0.clone()),
                    };
                    error.report.kind = prism_shared::contract::ErrorKind::Permanent;
                    publications.push(dead_letter(
                        &topics.deadletter,
                        stage.as_str(),
                        delivery,
                        &error,
                        1,
                    ));
                }
                Admission::Waiting => {}
            }
        }
        Ok(publications)
    }

    async fn process_one(&self, delivery: &Delivery) -> Outcome {
        let event = UploadEvent::parse(&delivery.payload)
            .map_err(|error| ProcessError::permanent(error.code(), error.to_string()))?;
        let mut sources = event
            .created_objects(&[self.settings.output_bucket.as_str()])
            .map_err(|error| ProcessError::permanent(error.code(), error.to_string()))?;
        if reconcile::is_reemitted(&event) {
            let ids: Vec<String> = sources.iter().map(claims::ledger_id).collect();
            let handled = self.index.handled(&ids).await.map_err(index_unavailable)?;
            sources.retain(|source| !handled.contains(&claims::ledger_id(source)));
            if sources.is_empty() {
                tracing::info!(
                    offset = delivery.offset,
                    "re-emitted upload was handled meanwhile; dropped"
                );
            }
        }
        let mut publications = Vec::new();
        for source in &sources {
            match self.admit(delivery, source).await {
                Ok(mut made) => publications.append(&mut made),
                // Retry the whole event: admitting again is idempotent for the uploads already done.
                Err(error) if error.is_transient() => return Err(error),
                // One bad object must not hold back the others in the same event.
                Err(error) => publications.push(dead_letter(
                    &self.settings.topics.deadletter,
                    self.name(),
                    delivery,
                    &error,
                    1,
                )),
            }
        }
        // A failure from here on retries the whole event: at least once, as the loop would.
        for publication in &publications {
            self.publisher
                .publish(publication)
                .await
                .map_err(|error| ProcessError::transient("bus_unavailable", error.to_string()))?;
        }
        let handled: Vec<HandledUpload> = sources.iter().map(HandledUpload::new).collect();
        self.index
            .record_handled(&handled)
            .await
            .map_err(index_unavailable)?;
        Ok(Vec::new())
    }
}

fn index_unavailable(error: claims::IndexError) -> ProcessError {
    ProcessError::transient("dedup_index_unavailable", error.to_string())
}

#[async_trait]
impl Processor for Dedup {
    fn name(&self) -> &str {
        "dedup"
    }

    async fn process(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for delivery in batch {
            outcomes.push(self.process_one(delivery).await);
        }
        outcomes
    }
}

/// Runs the dedup service against Kafka, S3 and CouchDB until `shutdown`.
pub async fn serve(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let backends = Backends::connect(&settings).await?;
    let dedup = Dedup::new(settings.clone(), &backends);
    service::serve(
        &settings,
        &backends,
        &settings.topics.uploads,
        Arc::new(dedup),
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_shared::bus::BusError;
    use prism_shared::bus::memory::MemoryBus;
    use prism_shared::claims::memory::MemoryIndex;
    use prism_shared::reconcile::reemission;

    struct Fixture {
        dedup: Dedup,
        bus: MemoryBus,
        index: Arc<MemoryIndex>,
        buckets: Buckets,
        jobs_topic: String,
    }

    fn fixture(publisher: Option<Arc<dyn Publisher>>) -> Fixture {
        let settings = Settings {
            enabled_stages: vec![StageName::Thumbnail],
            ..Settings::default()
        };
        let bus = MemoryBus::default();
        let index = Arc::new(MemoryIndex::default());
        let backends = Backends {
            publisher: publisher.unwrap_or_else(|| Arc::new(bus.clone())),
            buckets: Buckets::memory(),
            index: index.clone(),
        };
        Fixture {
            jobs_topic: settings.topics.thumbnail_jobs.clone(),
            dedup: Dedup::new(settings, &backends),
            bus,
            index,
            buckets: backends.buckets,
        }
    }

    async fn upload(buckets: &Buckets, key: &str, body: &'static [u8]) -> SourceObject {
        buckets
            .write("in", key, bytes::Bytes::from_static(body), "image/jpeg")
            .await
            .unwrap();
        SourceObject {
            bucket: "in".into(),
            key: key.into(),
            etag: format!("etag-of-{key}"),
            size: body.len() as u64,
        }
    }

    fn delivery(event: &UploadEvent) -> Delivery {
        Delivery {
            topic: "uploads".into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: serde_json::to_vec(event).unwrap(),
        }
    }

    fn notification(object: &SourceObject) -> Delivery {
        delivery(&UploadEvent::for_object(object, None, Utc::now()))
    }

    async fn handled(index: &MemoryIndex, object: &SourceObject) -> bool {
        let id = claims::ledger_id(object);
        index
            .handled(std::slice::from_ref(&id))
            .await
            .unwrap()
            .contains(&id)
    }

    #[tokio::test]
    async fn uploads_are_recorded_once_their_messages_are_published() {
        let f = fixture(None);
        let a = upload(&f.buckets, "a.jpg", b"first").await;
        let outcome = f.dedup.process(&[notification(&a)]).await.pop().unwrap();
        assert_eq!(
            outcome,
            Ok(Vec::new()),
            "dedup publishes its messages itself"
        );
        assert_eq!(f.bus.messages(&f.jobs_topic).len(), 1);
        assert!(handled(&f.index, &a).await);

        // Re-emitted by reconcile after its notification was handled: dropped.
        let again = delivery(&reemission(&a, Utc::now()));
        f.dedup.process(&[again]).await.pop().unwrap().unwrap();
        assert_eq!(f.bus.messages(&f.jobs_topic).len(), 1);

        // Re-emitted and never handled (its notification was lost): admitted and recorded.
        let b = upload(&f.buckets, "b.jpg", b"second").await;
        let lost = delivery(&reemission(&b, Utc::now()));
        f.dedup.process(&[lost]).await.pop().unwrap().unwrap();
        assert_eq!(f.bus.messages(&f.jobs_topic).len(), 2);
        assert!(handled(&f.index, &b).await);
    }

    struct DownBus;

    #[async_trait]
    impl Publisher for DownBus {
        async fn publish(&self, _: &Publication) -> Result<(), BusError> {
            Err(BusError::Closed)
        }
    }

    #[tokio::test]
    async fn an_upload_whose_messages_did_not_go_out_is_not_recorded() {
        let f = fixture(Some(Arc::new(DownBus)));
        let a = upload(&f.buckets, "a.jpg", b"first").await;
        let error = f
            .dedup
            .process(&[notification(&a)])
            .await
            .pop()
            .unwrap()
            .unwrap_err();
        assert!(error.is_transient(), "{error:?}");
        assert!(!handled(&f.index, &a).await, "reconcile must still see it");
    }
}
