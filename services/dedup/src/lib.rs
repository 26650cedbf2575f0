//! Dedup: turns upload events into work, once per distinct content and stage.
//!
//! For each created object in a MinIO event it streams the object through BLAKE3, then claims
//! (stage fingerprint, hash) in the dedup index for every enabled stage: a new claim becomes a job,
//! a finished one an immediate `deduplicated: true` result, a failed one a dead letter, and one in
//! flight makes the upload wait for its twin's result.
//!
//! Every admitted upload is recorded in the ledger `prism reconcile` checks the bucket against. An
//! event re-announcing an upload (reconcile's, or a starting watcher's first listing) is dropped if
//! another event put the upload in the ledger, so an upload never gets a second result that way.

use async_trait::async_trait;
use chrono::Utc;
use futures::stream::{self, StreamExt};
use prism_core::contract::ingest::UploadEvent;
use prism_core::contract::reannounce;
use prism_core::contract::{Classify, Origin, SourceObject, StageName};
use prism_core::ports::bus::{Delivery, Publication};
use prism_core::ports::claims::{self, Admission, ClaimIndex, HandledUpload, SeenSource, Work};
use prism_core::ports::store::{Buckets, ContentHash};
use prism_core::runtime::backends::Backends;
use prism_core::runtime::batch_jobs::BatchJobs;
use prism_core::runtime::config::Settings;
use prism_core::runtime::consumer::{Outcome, ProcessError, Processor, dead_letter};
use prism_core::runtime::{observe, service};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub struct Dedup {
    buckets: Buckets,
    index: Arc<dyn ClaimIndex>,
    jobs: BatchJobs,
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
            jobs: BatchJobs::new(backends.book.clone()),
            settings,
            stages,
        }
    }

    /// The uploads an event announces (dropping re-announced ones another event admitted), or
    /// why it is not an upload event.
    fn read<'a>(&self, delivery: &'a Delivery) -> Event<'a> {
        let mut event = Event {
            delivery,
            origin: Origin {
                topic: delivery.topic.clone(),
                partition: delivery.partition,
                offset: delivery.offset,
            },
            reemitted: false,
            uploads: Vec::new(),
            publications: Vec::new(),
            failed: None,
        };
        let announced = UploadEvent::parse(&delivery.payload).and_then(|parsed| {
            let uploads = parsed
                .created_objects(&self.settings.input_bucket, &self.settings.output_bucket)?;
            Ok((reannounce::is_reemitted(&parsed), uploads))
        });
        match announced {
            Ok((reemitted, uploads)) => {
                event.reemitted = reemitted;
                event.uploads = uploads;
            }
            Err(error) => event.failed = Some(error.into()),
        }
        event
    }

    /// Drops the uploads of re-emitted events that another event put in the ledger; one ledger
    /// lookup for the batch.
    async fn drop_handled_elsewhere(&self, events: &mut [Event<'_>]) -> Result<(), ProcessError> {
        let ids: Vec<String> = events
            .iter()
            .filter(|event| event.reemitted)
            .flat_map(|event| event.uploads.iter().map(claims::ledger_id))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let records: HashMap<String, Origin> = self
            .index
            .handled(&ids)
            .await?
            .into_iter()
            .map(|record| (record.id, record.origin))
            .collect();
        for event in events.iter_mut().filter(|event| event.reemitted) {
            // A record made from this very event means it is being redelivered, perhaps before
            // its messages went out: admit it again.
            let origin = &event.origin;
            event.uploads.retain(|upload| {
                records
                    .get(&claims::ledger_id(upload))
                    .is_none_or(|recorded| recorded == origin)
            });
            if event.uploads.is_empty() {
                tracing::info!(
                    offset = event.delivery.offset,
                    "re-emitted upload was handled meanwhile; dropped"
                );
            }
        }
        Ok(())
    }

    /// Drops the objects of batch jobs that were cancelled (their work is skipped, not done),
    /// and says which stages each other job of the batch asked for.
    async fn read_jobs(
        &self,
        events: &mut [Event<'_>],
    ) -> Result<HashMap<String, Vec<StageName>>, ProcessError> {
        let jobs: BTreeSet<String> = events
            .iter()
            .flat_map(|event| &event.uploads)
            .filter_map(|upload| upload.batch_job.clone())
            .collect();
        let mut stages = HashMap::new();
        let mut cancelled = HashSet::new();
        for job in jobs {
            match self.jobs.facts(&job).await? {
                Some(facts) if facts.cancelled => {
                    cancelled.insert(job);
                }
                Some(facts) => {
                    stages.insert(job, facts.stages);
                }
                None => {}
            }
        }
        for event in events.iter_mut() {
            event.uploads.retain(|upload| {
                upload
                    .batch_job
                    .as_ref()
                    .is_none_or(|job| !cancelled.contains(job))
            });
        }
        Ok(stages)
    }

    /// The enabled stages `source` asks for: a batch job's own, an upload all.
    fn stages_for<'s>(
        &'s self,
        source: &SourceObject,
        job_stages: &'s HashMap<String, Vec<StageName>>,
    ) -> impl Iterator<Item = &'s (StageName, String)> + 's {
        let wanted = source
            .batch_job
            .as_ref()
            .and_then(|job| job_stages.get(job));
        self.stages
            .iter()
            .filter(move |(stage, _)| wanted.is_none_or(|wanted| wanted.contains(stage)))
    }

    /// Hashes every upload of the batch, a few at a time. A failure for good dead-letters that
    /// upload; one for now makes its whole event retried (admitting again is idempotent).
    async fn hash_all(&self, events: &mut [Event<'_>]) -> Vec<(usize, SourceObject, ContentHash)> {
        let max_bytes = self.settings.stages.limits.max_bytes;
        let uploads: Vec<(usize, SourceObject)> = events
            .iter()
            .enumerate()
            .flat_map(|(at, event)| event.uploads.iter().map(move |upload| (at, upload.clone())))
            .collect();
        let hashed: Vec<_> = stream::iter(uploads)
            .map(|(at, upload)| async move {
                let hashed = self.buckets.hash(&upload, max_bytes).await;
                (at, upload, hashed)
            })
            .buffered(HASHES_IN_FLIGHT)
            .collect()
            .await;
        let mut admissible = Vec::with_capacity(hashed.len());
        for (at, upload, hashed) in hashed {
            let event = &mut events[at];
            match hashed {
                // The results name the version that was hashed; an event without an ETag learns
                // it here.
                Ok(hashed) => admissible.push((
                    at,
                    SourceObject {
                        etag: hashed.etag,
                        ..upload
                    },
                    hashed.hash,
                )),
                Err(error) if error.is_transient() => {
                    event.failed = Some(ProcessError::from(error).about(&upload));
                }
                // One bad object must not hold back the others in the same event.
                Err(error) => event.publications.push(dead_letter(
                    &self.settings.topics.deadletter,
                    self.name(),
                    event.delivery,
                    &ProcessError::from(error).about(&upload),
                    1,
                )),
            }
        }
        admissible.retain(|(at, _, _)| events[*at].failed.is_none());
        admissible
    }

    /// Admits the batch's events: what each upload turns into (jobs, deduplicated results, dead
    /// letters of earlier failures) lands in its event's publications. The claims are made in
    /// bulk and the uploads recorded in the ledger at the same time, before anything is
    /// published: should publishing fail, the events come again.
    async fn admit(&self, events: &mut [Event<'_>]) -> Result<(), ProcessError> {
        self.drop_handled_elsewhere(events).await?;
        let job_stages = self.read_jobs(events).await?;
        let received_at = Utc::now();
        let admissible = self.hash_all(events).await;
        // Each request's upload (its index in `admissible`) and stage.
        let mut asked: Vec<(usize, StageName)> = Vec::new();
        let requests: Vec<(Work<'_>, SeenSource)> = admissible
            .iter()
            .enumerate()
            .flat_map(|(upload, (_, source, hash))| {
                let stages = self.stages_for(source, &job_stages);
                stages.map(move |(stage, fingerprint)| {
                    let work = Work {
                        stage: *stage,
                        fingerprint,
                        content_hash: &hash.0,
                    };
                    let seen = SeenSource {
                        source: source.clone(),
                        received_at,
                    };
                    (upload, work, seen)
                })
            })
            .map(|(upload, work, seen)| {
                asked.push((upload, work.stage));
                (work, seen)
            })
            .collect();
        let handled: Vec<HandledUpload> = events
            .iter()
            .filter(|event| event.failed.is_none())
            .flat_map(|event| {
                event
                    .uploads
                    .iter()
                    .map(|upload| HandledUpload::new(upload, &event.origin))
            })
            .collect();
        let (admissions, ()) = tokio::try_join!(
            claims::admit_all(&*self.index, &requests, self.settings.claim_lease),
            self.index.record_handled(&handled),
        )?;

        let topics = &self.settings.topics;
        for ((upload, stage), admission) in asked.into_iter().zip(admissions) {
            let (at, source, hash) = &admissible[upload];
            let event = &mut events[*at];
            tracing::debug!(key = %source.key, %stage, %hash, ?admission, "admitted");
            let publication = match admission {
                Admission::Run(job) => {
                    Publication::json(&topics.jobs_for(stage, &job.source), &hash.0, &job)
                }
                Admission::Done(result) => Publication::result(topics.results(stage), &result),
                Admission::Failed(report) => dead_letter(
                    &topics.deadletter,
                    stage.as_str(),
                    event.delivery,
                    &ProcessError::earlier_failure(report, source, &hash.0),
                    1,
                ),
                Admission::Waiting => continue,
            };
            event.publications.push(publication);
        }
        Ok(())
    }
}

/// Uploads hashed at once per batch: enough to hide S3's latency, few enough to bound memory.
const HASHES_IN_FLIGHT: usize = 16;

/// One upload event on its way through a batch.
struct Event<'a> {
    delivery: &'a Delivery,
    origin: Origin,
    reemitted: bool,
    uploads: Vec<SourceObject>,
    publications: Vec<Publication>,
    /// Not an upload event (dead-lettered), or one of its uploads failed for now (the whole
    /// event is retried).
    failed: Option<ProcessError>,
}

impl Event<'_> {
    fn outcome(self) -> Outcome {
        match self.failed {
            Some(error) => Err(error),
            None => Ok(self.publications),
        }
    }
}

#[async_trait]
impl Processor for Dedup {
    fn name(&self) -> &str {
        "dedup"
    }

    async fn process(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut events: Vec<Event> = batch.iter().map(|delivery| self.read(delivery)).collect();
        if let Err(error) = self.admit(&mut events).await {
            for event in events.iter_mut().filter(|event| event.failed.is_none()) {
                event.failed = Some(error.clone());
            }
        }
        events.into_iter().map(Event::outcome).collect()
    }
}

/// Runs the dedup service against Kafka, S3 and CouchDB until `shutdown`.
pub async fn serve(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let backends =
        service::observe_and_connect(&settings, &[observe::CONSUMER_GROUP], &shutdown).await?;
    let dedup = Dedup::new(settings.clone(), &backends);
    service::serve(
        &settings,
        &backends,
        std::slice::from_ref(&settings.topics.uploads),
        true,
        Arc::new(dedup),
        &settings.intake.dedup,
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_core::contract::reannounce::reemission;
    use prism_core::contract::{DeadLetter, Job};
    use prism_core::ports::batch::memory::MemoryJobBook;
    use prism_core::ports::batch::{BatchJob, JobBook};
    use prism_core::ports::claims::ClaimStatus;
    use prism_core::ports::claims::memory::MemoryIndex;
    use prism_core::ports::store::ContentHash;

    struct Fixture {
        dedup: Dedup,
        index: Arc<MemoryIndex>,
        book: Arc<MemoryJobBook>,
        buckets: Buckets,
    }

    fn fixture() -> Fixture {
        fixture_with(vec![StageName::Thumbnail])
    }

    fn fixture_with(enabled_stages: Vec<StageName>) -> Fixture {
        let settings = Settings {
            enabled_stages,
            input_bucket: "in".into(),
            output_bucket: "out".into(),
            ..Settings::default()
        };
        let index = Arc::new(MemoryIndex::default());
        let book = Arc::new(MemoryJobBook::default());
        let backends = Backends {
            publisher: Arc::new(prism_core::ports::bus::memory::MemoryBus::default()),
            buckets: Buckets::memory(),
            index: index.clone(),
            book: book.clone(),
        };
        Fixture {
            dedup: Dedup::new(settings, &backends),
            index,
            book,
            buckets: backends.buckets,
        }
    }

    /// Writes `body` as `key` in `bucket`: the object as its notification names it.
    async fn upload_to(
        buckets: &Buckets,
        bucket: &str,
        key: &str,
        body: &'static [u8],
    ) -> SourceObject {
        buckets
            .write(bucket, key, bytes::Bytes::from_static(body), "image/jpeg")
            .await
            .unwrap();
        let listing = buckets.list(bucket).await.unwrap();
        let listed = listing.objects.into_iter().find(|o| o.source.key == key);
        listed.unwrap().source
    }

    async fn upload(buckets: &Buckets, key: &str, body: &'static [u8]) -> SourceObject {
        upload_to(buckets, "in", key, body).await
    }

    fn delivery(event: &UploadEvent, offset: i64) -> Delivery {
        Delivery {
            topic: "uploads".into(),
            partition: 0,
            offset,
            key: None,
            payload: serde_json::to_vec(event).unwrap(),
            traceparent: None,
        }
    }

    fn notification(object: &SourceObject, offset: i64) -> Delivery {
        delivery(&UploadEvent::for_object(object, None, Utc::now()), offset)
    }

    fn reemitted(object: &SourceObject, offset: i64) -> Delivery {
        delivery(&reemission(object, Utc::now()), offset)
    }

    async fn publications(dedup: &Dedup, delivery: Delivery) -> Vec<Publication> {
        dedup.process(&[delivery]).await.pop().unwrap().unwrap()
    }

    /// The error a whole event is dead-lettered with.
    async fn refusal(dedup: &Dedup, payload: &[u8]) -> ProcessError {
        let delivery = Delivery {
            topic: "uploads".into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: payload.to_vec(),
            traceparent: None,
        };
        let error = dedup.process(&[delivery]).await.pop().unwrap().unwrap_err();
        assert!(!error.is_transient(), "{error:?}");
        error
    }

    #[tokio::test]
    async fn an_event_for_another_bucket_is_dead_lettered_unread() {
        let f = fixture();
        let foreign = upload_to(&f.buckets, "payroll", "salaries.jpg", b"secret").await;
        let event = UploadEvent::for_object(&foreign, None, Utc::now());
        let error = refusal(&f.dedup, &serde_json::to_vec(&event).unwrap()).await;
        assert_eq!(error.report.code, "foreign_bucket");
        assert!(error.report.reason.contains("payroll"), "{error:?}");
        assert!(
            f.index
                .with_status(ClaimStatus::Processing)
                .await
                .unwrap()
                .is_empty()
        );

        // The output bucket's own events are skipped quietly (processing them would loop).
        let output = upload_to(&f.buckets, "out", "thumbnails/x.jpg", b"thumb").await;
        assert!(
            publications(&f.dedup, notification(&output, 1))
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn json_that_names_no_object_is_dead_lettered() {
        let f = fixture();
        for payload in [
            "{}",
            r#"{"Records":[]}"#,
            r#"{"EventName":"s3:ObjectCreated:Put"}"#,
        ] {
            let error = refusal(&f.dedup, payload.as_bytes()).await;
            assert_eq!(error.report.code, "no_records", "{payload}");
        }
        for payload in [
            "42",
            "null",
            r#"{"Records":[{"eventName":"s3:ObjectCreated:Put"}]}"#,
        ] {
            let error = refusal(&f.dedup, payload.as_bytes()).await;
            assert_eq!(error.report.code, "malformed_event", "{payload}");
        }
    }

    #[tokio::test]
    async fn a_tag_edit_is_not_a_new_upload() {
        let f = fixture();
        let a = upload(&f.buckets, "a.jpg", b"first").await;
        assert_eq!(publications(&f.dedup, notification(&a, 0)).await.len(), 1);
        for (offset, edit) in [(1, "PutTagging"), (2, "DeleteTagging")] {
            let mut event = UploadEvent::for_object(&a, None, Utc::now());
            event.event_name = format!("s3:ObjectCreated:{edit}");
            event.records[0].event_name = event.event_name.clone();
            let published = publications(&f.dedup, delivery(&event, offset)).await;
            assert!(published.is_empty(), "{edit}: {published:?}");
        }
    }

    #[tokio::test]
    async fn an_object_overwritten_before_dedup_reads_it_is_dead_lettered() {
        let f = fixture();
        let first = upload(&f.buckets, "a.jpg", b"first").await;
        let second = upload(&f.buckets, "a.jpg", b"second").await;

        // The first version's event arrives after the overwrite.
        let published = publications(&f.dedup, notification(&first, 0)).await;
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].topic, f.dedup.settings.topics.deadletter);
        let letter: DeadLetter = serde_json::from_slice(&published[0].payload).unwrap();
        assert_eq!(letter.error.code, "content_changed");
        assert_eq!(letter.source, Some(first));

        // The second version's own event: its bytes, under its ETag.
        let published = publications(&f.dedup, notification(&second, 1)).await;
        let job: Job = serde_json::from_slice(&published[0].payload).unwrap();
        assert_eq!(job.source, second);
        assert_eq!(job.content_hash, ContentHash::of(b"second").0);
    }

    #[tokio::test]
    async fn an_event_without_an_etag_is_given_the_etag_of_what_was_hashed() {
        let f = fixture();
        let a = upload(&f.buckets, "a.jpg", b"first").await;
        let unversioned = SourceObject {
            etag: String::new(),
            ..a.clone()
        };
        let published = publications(&f.dedup, notification(&unversioned, 0)).await;
        let job: Job = serde_json::from_slice(&published[0].payload).unwrap();
        assert_eq!(job.source, a);
    }

    #[tokio::test]
    async fn a_re_emission_of_an_upload_handled_meanwhile_is_dropped() {
        let f = fixture();
        let a = upload(&f.buckets, "a.jpg", b"first").await;
        assert_eq!(publications(&f.dedup, notification(&a, 0)).await.len(), 1);
        let records = f.index.handled(&[claims::ledger_id(&a)]).await.unwrap();
        assert_eq!(records.len(), 1, "admitted uploads are in the ledger");
        assert_eq!(records[0].origin.offset, 0);

        // Reconcile listed the bucket before dedup had handled it.
        assert!(publications(&f.dedup, reemitted(&a, 1)).await.is_empty());

        // Never handled (its notification was lost): admitted, and recorded.
        let b = upload(&f.buckets, "b.jpg", b"second").await;
        assert_eq!(publications(&f.dedup, reemitted(&b, 2)).await.len(), 1);
        // Two reconciles in a row: the second re-emission is dropped.
        assert!(publications(&f.dedup, reemitted(&b, 3)).await.is_empty());
        assert_eq!(
            f.index.handled(&[claims::ledger_id(&b)]).await.unwrap()[0]
                .origin
                .offset,
            2
        );
    }

    #[tokio::test]
    async fn a_redelivered_re_emission_is_admitted_again() {
        let f = fixture();
        let a = upload(&f.buckets, "a.jpg", b"first").await;
        let first = publications(&f.dedup, reemitted(&a, 7)).await;
        // The loop did not get to publish or acknowledge it (a crash): Kafka delivers it again.
        let again = publications(&f.dedup, reemitted(&a, 7)).await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].payload, first[0].payload, "the same job");
    }

    #[tokio::test]
    async fn notifications_are_always_admitted() {
        // MinIO announces every PUT, even of the same bytes to the same key: each is an upload.
        let f = fixture();
        let a = upload(&f.buckets, "a.jpg", b"first").await;
        assert_eq!(publications(&f.dedup, notification(&a, 0)).await.len(), 1);
        assert_eq!(publications(&f.dedup, notification(&a, 1)).await.len(), 1);
    }

    #[tokio::test]
    async fn a_batch_jobs_objects_go_to_the_batch_lane_until_it_is_cancelled() {
        let f = fixture();
        let mut job = BatchJob::new("j1", None, "in", "", vec![StageName::Thumbnail], None);
        f.book.create_job(&mut job).await.unwrap();
        let listed = |key: &str, body: &'static [u8]| {
            let buckets = f.buckets.clone();
            let key = key.to_string();
            async move {
                let object = upload(&buckets, &key, body).await;
                SourceObject {
                    batch_job: Some("j1".into()),
                    ..object
                }
            }
        };
        let a = listed("a.jpg", b"first").await;
        let published = publications(&f.dedup, notification(&a, 0)).await;
        assert_eq!(published[0].topic, "prism.jobs.thumbnail.batch");
        let work: Job = serde_json::from_slice(&published[0].payload).unwrap();
        assert_eq!(work.source, a, "the job's id travels with the work");

        job.cancel_requested = true;
        assert!(f.book.replace_job(&mut job).await.unwrap());
        let b = listed("b.jpg", b"second").await;
        let fresh = Dedup::new(
            f.dedup.settings.clone(),
            &Backends {
                publisher: Arc::new(prism_core::ports::bus::memory::MemoryBus::default()),
                buckets: f.buckets.clone(),
                index: f.index.clone(),
                book: f.book.clone(),
            },
        );
        assert!(publications(&fresh, notification(&b, 1)).await.is_empty());
        // An upload is no job's: it goes on.
        let c = upload(&f.buckets, "c.jpg", b"third").await;
        let published = publications(&fresh, notification(&c, 2)).await;
        assert_eq!(published[0].topic, "prism.jobs.thumbnail");
    }

    #[tokio::test]
    async fn a_batch_job_gets_only_the_stages_it_asked_for() {
        let f = fixture_with(vec![StageName::Thumbnail, StageName::Detect]);
        let mut job = BatchJob::new("j2", None, "in", "", vec![StageName::Detect], None);
        f.book.create_job(&mut job).await.unwrap();
        let object = SourceObject {
            batch_job: Some("j2".into()),
            ..upload(&f.buckets, "a.jpg", b"first").await
        };
        let topics: Vec<String> = publications(&f.dedup, notification(&object, 0))
            .await
            .into_iter()
            .map(|p| p.topic)
            .collect();
        assert_eq!(topics, ["prism.jobs.detect.batch"]);
        // An upload of the same object gets every enabled stage, detect's work shared.
        let upload = upload(&f.buckets, "b.jpg", b"first").await;
        let published = publications(&f.dedup, notification(&upload, 1)).await;
        let topics: Vec<&str> = published.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(
            topics,
            ["prism.jobs.thumbnail"],
            "detect waits for the job's run"
        );
    }
}
