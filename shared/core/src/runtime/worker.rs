//! The stage worker: the processor every stage (thumbnail, detect, classify) runs.
//!
//! For a batch of jobs it reads each source object (checking its hash still matches), hands the bytes
//! to the pure [`Stage`] on a blocking thread, writes the outputs to content-addressed keys, records
//! the outcome on the claim, and produces the results (or dead letters) for the upload and for every
//! twin that waited on it.

use crate::contract::{Classify, ErrorKind, ErrorReport, Job, OutputObject, StageName};
use crate::ports::bus::{Delivery, Publication};
use crate::ports::claims::{self, ClaimIndex, Finished};
use crate::ports::store::{Buckets, StoreError};
use crate::runtime::backends::Backends;
use crate::runtime::batch_jobs::BatchJobs;
use crate::runtime::config::{Settings, Topics};
use crate::runtime::consumer::{Outcome, ProcessError, Processor, dead_letter};
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One file a stage made, named relative to its output folder (`256.jpg`, `annotated.jpg`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputFile {
    pub name: String,
    pub content_type: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub bytes: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StageOutput {
    pub files: Vec<OutputFile>,
    /// Stage-specific result fields (detect: `detections`, classify: `classes`).
    pub payload: Map<String, Value>,
}

/// Why a stage could not use an input. Always the input's fault: retrying cannot help.
#[derive(Debug, Clone, PartialEq)]
pub struct StageFailure {
    pub code: String,
    pub reason: String,
}

/// Pure processing: bytes in, files out. Knows nothing of Kafka, S3 or CouchDB.
pub trait Stage: Send + Sync + 'static {
    fn name(&self) -> StageName;
    fn fingerprint(&self) -> &str;
    /// Larger objects are dead-lettered without being read whole.
    fn max_bytes(&self) -> u64;
    /// Processes a batch (blocking, CPU-bound); one outcome per input, in order.
    fn run(&self, inputs: &[Bytes]) -> Vec<Result<StageOutput, StageFailure>>;
}

pub struct StageWorker<S> {
    stage: Arc<S>,
    buckets: Buckets,
    index: Arc<dyn ClaimIndex>,
    topics: Topics,
    output_bucket: String,
    claim_lease: Duration,
    cancelled: BatchJobs,
}

/// Why a job's input could not be had.
enum Unfetched {
    /// The job itself is unusable, or a server is away: the loop dead-letters or retries it.
    Job(ProcessError),
    /// This upload's object cannot be read (gone, overwritten, refused): a fault of the upload,
    /// not of its content, so a twin waiting on the claim may take the work over.
    Upload(Box<Job>, ProcessError),
    /// The batch job that listed the object was cancelled: skipped, its claim passed on.
    Cancelled(Box<Job>),
}

impl<S: Stage> StageWorker<S> {
    /// The worker for `stage` over `backends`, writing to the configured output bucket.
    pub fn over(stage: S, settings: &Settings, backends: &Backends) -> Self {
        StageWorker {
            stage: Arc::new(stage),
            buckets: backends.buckets.clone(),
            index: backends.index.clone(),
            topics: settings.topics.clone(),
            output_bucket: settings.output_bucket.clone(),
            claim_lease: settings.claim_lease,
            cancelled: BatchJobs::new(backends.book.clone()),
        }
    }

    /// Parses a job and reads its source, or says why not.
    async fn fetch(&self, delivery: &Delivery) -> Result<(Job, Bytes), Unfetched> {
        let job: Job = serde_json::from_slice(&delivery.payload).map_err(|error| {
            Unfetched::Job(ProcessError::permanent(
                "malformed_job",
                format!("job is not valid JSON for the contract: {error}"),
            ))
        })?;
        let about = |error: ProcessError| {
            let mut error = error.about(&job.source);
            error.content_hash = Some(job.content_hash.clone());
            error
        };
        if job.fingerprint != self.stage.fingerprint() {
            return Err(Unfetched::Job(about(ProcessError::permanent(
                "fingerprint_mismatch",
                format!(
                    "job was made for {} parameters {} but this worker runs {}; finish the rollout, then re-emit the upload",
                    job.stage,
                    job.fingerprint,
                    self.stage.fingerprint()
                ),
            ))));
        }
        if let Some(batch_job) = &job.source.batch_job {
            match self.cancelled.is_cancelled(batch_job).await {
                Ok(true) => return Err(Unfetched::Cancelled(Box::new(job))),
                Ok(false) => {}
                Err(error) => return Err(Unfetched::Job(about(error.into()))),
            }
        }
        let read = self
            .buckets
            .read(&job.source.bucket, &job.source.key, self.stage.max_bytes())
            .await;
        let error = match read {
            Ok((bytes, hash)) if hash.0 == job.content_hash => return Ok((job, bytes)),
            Ok(_) => ProcessError::permanent(
                "content_changed",
                "the object was overwritten after dedup hashed it; the new upload gets its own event",
            ),
            Err(error) if error.is_transient() => return Err(Unfetched::Job(about(error.into()))),
            Err(error) => error.into(),
        };
        let error = about(error);
        Err(Unfetched::Upload(Box::new(job), error))
    }

    /// Passes the claim of a job not run (its upload cannot be read: dead-lettered with `error`;
    /// its batch job was cancelled: skipped) to the first twin waiting on it, whose job is
    /// published; see [`claims::hand_over`].
    async fn hand_over(
        &self,
        delivery: &Delivery,
        job: &Job,
        error: Option<ProcessError>,
    ) -> Outcome {
        let next = claims::hand_over(&*self.index, job, self.claim_lease).await?;
        let mut publications: Vec<Publication> = error
            .iter()
            .map(|error| {
                dead_letter(
                    &self.topics.deadletter,
                    job.stage.as_str(),
                    delivery,
                    error,
                    1,
                )
            })
            .collect();
        if let Some(next) = next {
            tracing::info!(
                passed = %job.source.key,
                next = %next.source.key,
                "the upload is not run; a twin waiting on it takes the work over"
            );
            let topic = self.topics.jobs_for(job.stage, &next.source);
            publications.push(Publication::json(&topic, &next.content_hash, &next));
        }
        Ok(publications)
    }

    async fn write_outputs(
        &self,
        job: &Job,
        files: Vec<OutputFile>,
    ) -> Result<Vec<OutputObject>, StoreError> {
        let prefix = format!(
            "{}/{}/{}",
            job.stage.output_prefix(),
            job.content_hash,
            job.fingerprint
        );
        let prefix = &prefix;
        let writes = files.into_iter().map(|file| async move {
            let key = format!("{prefix}/{}", file.name);
            let output = OutputObject {
                bucket: self.output_bucket.clone(),
                key: key.clone(),
                content_type: file.content_type.clone(),
                width: file.width,
                height: file.height,
                bytes: file.bytes.len() as u64,
            };
            self.buckets
                .write(&self.output_bucket, &key, file.bytes, &file.content_type)
                .await
                .map(|()| output)
        });
        join_all(writes).await.into_iter().collect()
    }

    /// Stores the outcome on the claim and turns it into results or dead letters for everyone
    /// waiting; the upload that did the work is told `batch_size`, how many inputs it ran with.
    async fn complete(
        &self,
        delivery: &Delivery,
        job: &Job,
        outcome: Result<(Vec<OutputObject>, Map<String, Value>), ErrorReport>,
        started: Instant,
        batch_size: u32,
    ) -> Outcome {
        let failed = outcome.as_ref().err().cloned();
        let Finished { claim, recipients } = claims::finish(&*self.index, job, outcome).await?;
        let elapsed = started.elapsed();
        let publications = recipients
            .into_iter()
            .map(|(seen, deduplicated)| match &failed {
                None => {
                    let mut result = claim.result_for(&seen, deduplicated, elapsed);
                    if !deduplicated {
                        result.timings.batch_size = Some(batch_size);
                    }
                    Publication::result(self.topics.results(job.stage), &result)
                }
                Some(report) => dead_letter(
                    &self.topics.deadletter,
                    job.stage.as_str(),
                    delivery,
                    &ProcessError::earlier_failure(report.clone(), &seen.source, &job.content_hash),
                    1,
                ),
            })
            .collect();
        Ok(publications)
    }
}

/// Runs the stage on a blocking thread; returns the outcomes and how many inputs ran together. A
/// panic (a decoder bug on a hostile file) must not take the service down: the batch is re-run one
/// input at a time so only the culprit fails.
async fn run_guarded<S: Stage>(
    stage: Arc<S>,
    inputs: Vec<Bytes>,
) -> (Vec<Result<StageOutput, StageFailure>>, u32) {
    if inputs.is_empty() {
        return (Vec::new(), 0);
    }
    let whole = {
        let (stage, inputs) = (stage.clone(), inputs.clone());
        tokio::task::spawn_blocking(move || stage.run(&inputs)).await
    };
    if let Ok(outcomes) = whole {
        return (outcomes, inputs.len() as u32);
    }
    let mut outcomes = Vec::with_capacity(inputs.len());
    for input in inputs {
        let stage = stage.clone();
        let single =
            tokio::task::spawn_blocking(move || stage.run(std::slice::from_ref(&input))).await;
        outcomes.push(match single {
            Ok(mut outcome) => outcome.pop().expect("one outcome per input"),
            Err(_) => Err(StageFailure {
                code: "stage_crashed".into(),
                reason: "the stage crashed on this input (a decoder bug); the input is kept here for a bug report".into(),
            }),
        });
    }
    (outcomes, 1)
}

#[async_trait]
impl<S: Stage> Processor for StageWorker<S> {
    fn name(&self) -> &str {
        self.stage.name().as_str()
    }

    async fn process(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let started = Instant::now();
        let fetched = join_all(batch.iter().map(|delivery| self.fetch(delivery))).await;

        let inputs: Vec<Bytes> = fetched
            .iter()
            .filter_map(|f| f.as_ref().ok().map(|(_, bytes)| bytes.clone()))
            .collect();
        let (ran, batch_size) = run_guarded(self.stage.clone(), inputs).await;
        let mut ran = ran.into_iter();

        let mut outcomes = Vec::with_capacity(batch.len());
        for (delivery, fetched) in batch.iter().zip(fetched) {
            let outcome = match fetched {
                Err(Unfetched::Job(error)) => Err(error),
                Err(Unfetched::Upload(job, error)) => {
                    self.hand_over(delivery, &job, Some(error)).await
                }
                Err(Unfetched::Cancelled(job)) => {
                    tracing::debug!(key = %job.source.key, batch_job = ?job.source.batch_job, "skipped: its batch job was cancelled");
                    self.hand_over(delivery, &job, None).await
                }
                Ok((job, _)) => {
                    let result = match ran.next().expect("one stage outcome per input") {
                        Ok(output) => match self.write_outputs(&job, output.files).await {
                            Ok(outputs) => Ok((outputs, output.payload)),
                            Err(error) => {
                                outcomes.push(Err(ProcessError::from(error).about(&job.source)));
                                continue;
                            }
                        },
                        Err(failure) => Err(ErrorReport {
                            kind: ErrorKind::Permanent,
                            code: failure.code,
                            reason: failure.reason,
                        }),
                    };
                    self.complete(delivery, &job, result, started, batch_size)
                        .await
                }
            };
            outcomes.push(outcome);
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{DeadLetter, SourceObject, StageResult};
    use crate::ports::bus::memory::MemoryBus;
    use crate::ports::claims::memory::MemoryIndex;
    use crate::ports::claims::{Admission, SeenSource, Work};
    use crate::ports::store::ContentHash;
    use chrono::Utc;

    /// Echoes its input as `echo.txt`; refuses `bad`; panics on `panic`, as a decoder bug would.
    struct Echo;

    impl Stage for Echo {
        fn name(&self) -> StageName {
            StageName::Thumbnail
        }
        fn fingerprint(&self) -> &str {
            "echo-1"
        }
        fn max_bytes(&self) -> u64 {
            1024
        }
        fn run(&self, inputs: &[Bytes]) -> Vec<Result<StageOutput, StageFailure>> {
            assert!(!inputs.iter().any(|input| input == "panic"), "decoder bug");
            inputs
                .iter()
                .map(|input| match &input[..] {
                    b"bad" => Err(StageFailure {
                        code: "corrupt_image".into(),
                        reason: "not an image".into(),
                    }),
                    _ => Ok(StageOutput {
                        files: vec![OutputFile {
                            name: "echo.txt".into(),
                            content_type: "text/plain".into(),
                            width: None,
                            height: None,
                            bytes: input.clone(),
                        }],
                        payload: Map::new(),
                    }),
                })
                .collect()
        }
    }

    struct Fixture {
        worker: StageWorker<Echo>,
        backends: Backends,
        settings: Settings,
    }

    fn fixture() -> Fixture {
        let settings = Settings::default();
        let backends = Backends {
            publisher: Arc::new(MemoryBus::default()),
            buckets: Buckets::memory(),
            index: Arc::new(MemoryIndex::default()),
            book: Arc::new(crate::ports::batch::memory::MemoryJobBook::default()),
        };
        Fixture {
            worker: StageWorker::over(Echo, &settings, &backends),
            backends,
            settings,
        }
    }

    /// Uploads `body` as `key` and lets dedup's claim logic make its job, as a delivery.
    async fn job_for(f: &Fixture, key: &str, body: &'static [u8], offset: i64) -> Delivery {
        let Admission::Run(job) = admit(f, key, body).await else {
            panic!("new content becomes a job");
        };
        Delivery {
            topic: "jobs".into(),
            partition: 0,
            offset,
            key: None,
            payload: serde_json::to_vec(&job).unwrap(),
            traceparent: None,
        }
    }

    /// Uploads `body` as `key` while its content is being processed: a waiting twin.
    async fn waiter_for(f: &Fixture, key: &str, body: &'static [u8]) -> SourceObject {
        assert_eq!(admit(f, key, body).await, Admission::Waiting);
        SourceObject {
            bucket: f.settings.input_bucket.clone(),
            key: key.into(),
            etag: format!("etag-{key}"),
            size: body.len() as u64,
            batch_job: None,
        }
    }

    async fn admit(f: &Fixture, key: &str, body: &'static [u8]) -> Admission {
        let bucket = &f.settings.input_bucket;
        let bytes = Bytes::from_static(body);
        f.backends
            .buckets
            .write(bucket, key, bytes, "application/octet-stream")
            .await
            .unwrap();
        let work = Work {
            stage: StageName::Thumbnail,
            fingerprint: "echo-1",
            content_hash: &ContentHash::of(body).0,
        };
        let seen = SeenSource {
            source: SourceObject {
                bucket: bucket.clone(),
                key: key.into(),
                etag: format!("etag-{key}"),
                size: body.len() as u64,
                batch_job: None,
            },
            received_at: Utc::now(),
        };
        let lease = f.settings.claim_lease;
        claims::admit(&*f.backends.index, work, seen, lease)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_batch_gives_results_and_dead_letters_and_survives_a_panicking_stage() {
        let f = fixture();
        let batch = [
            job_for(&f, "a.txt", b"hello", 0).await,
            job_for(&f, "b.txt", b"panic", 1).await,
            job_for(&f, "c.txt", b"bad", 2).await,
        ];
        let outcomes = f.worker.process(&batch).await;
        let published: Vec<Vec<Publication>> = outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap())
            .collect();
        let topics = &f.settings.topics;

        let [result] = &published[0][..] else {
            panic!("one result: {:?}", published[0]);
        };
        assert_eq!(result.topic, topics.thumbnail_results);
        let result: StageResult = serde_json::from_slice(&result.payload).unwrap();
        assert!(!result.deduplicated);
        assert_eq!(
            result.timings.batch_size,
            Some(1),
            "re-run alone after the panic"
        );
        let output = &result.outputs[0];
        let (written, _) = f
            .backends
            .buckets
            .read(&output.bucket, &output.key, 1024)
            .await
            .unwrap();
        assert_eq!(written, "hello");

        for (published, code) in [
            (&published[1], "stage_crashed"),
            (&published[2], "corrupt_image"),
        ] {
            let [letter] = &published[..] else {
                panic!("one dead letter: {published:?}");
            };
            assert_eq!(letter.topic, topics.deadletter);
            let letter: DeadLetter = serde_json::from_slice(&letter.payload).unwrap();
            assert_eq!(letter.error.code, code);
            assert_eq!(letter.stage, "thumbnail");
        }
    }

    #[tokio::test]
    async fn the_results_that_did_the_work_say_how_many_inputs_ran_together() {
        let f = fixture();
        let batch = [
            job_for(&f, "a.txt", b"one", 0).await,
            job_for(&f, "b.txt", b"two", 1).await,
        ];
        waiter_for(&f, "c.txt", b"one").await;
        let mut batch_sizes: Vec<(String, bool, Option<u32>)> = f
            .worker
            .process(&batch)
            .await
            .into_iter()
            .flat_map(|outcome| outcome.unwrap())
            .map(|publication| {
                let result: StageResult = serde_json::from_slice(&publication.payload).unwrap();
                let key = result.source.key;
                (key, result.deduplicated, result.timings.batch_size)
            })
            .collect();
        batch_sizes.sort();
        assert_eq!(
            batch_sizes,
            [
                ("a.txt".into(), false, Some(2)),
                ("b.txt".into(), false, Some(2)),
                ("c.txt".into(), true, None),
            ]
        );
    }

    #[tokio::test]
    async fn a_job_whose_object_changed_is_dead_lettered_as_content_changed() {
        let f = fixture();
        let delivery = job_for(&f, "a.txt", b"first", 0).await;
        f.backends
            .buckets
            .write(
                &f.settings.input_bucket,
                "a.txt",
                Bytes::from_static(b"second"),
                "text/plain",
            )
            .await
            .unwrap();
        let published = f.worker.process(&[delivery]).await.pop().unwrap().unwrap();
        let [letter] = &published[..] else {
            panic!("one dead letter: {published:?}");
        };
        let letter: DeadLetter = serde_json::from_slice(&letter.payload).unwrap();
        assert_eq!(letter.error.code, "content_changed");
    }

    #[tokio::test]
    async fn an_overwritten_upload_hands_the_work_to_its_waiting_twin() {
        let f = fixture();
        let first = job_for(&f, "a.txt", b"same", 0).await;
        let twin = waiter_for(&f, "b.txt", b"same").await;
        f.backends
            .buckets
            .write(
                &f.settings.input_bucket,
                "a.txt",
                Bytes::from_static(b"other"),
                "text/plain",
            )
            .await
            .unwrap();

        let published = f.worker.process(&[first]).await.pop().unwrap().unwrap();
        let [letter, next] = &published[..] else {
            panic!("a dead letter and the twin's job: {published:?}");
        };
        let letter: DeadLetter = serde_json::from_slice(&letter.payload).unwrap();
        assert_eq!(letter.error.code, "content_changed");
        assert_eq!(letter.source.unwrap().key, "a.txt");
        assert_eq!(next.topic, f.settings.topics.thumbnail_jobs);
        let next_job: Job = serde_json::from_slice(&next.payload).unwrap();
        assert_eq!(next_job.source, twin);

        let delivery = Delivery {
            topic: "jobs".into(),
            partition: 0,
            offset: 1,
            key: None,
            payload: next.payload.clone(),
            traceparent: None,
        };
        let published = f.worker.process(&[delivery]).await.pop().unwrap().unwrap();
        let result: StageResult = serde_json::from_slice(&published[0].payload).unwrap();
        assert_eq!(result.source.key, "b.txt");
        assert!(!result.deduplicated);
    }
}
