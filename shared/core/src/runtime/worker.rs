//! The stage worker: the processor both thumbnail and detect run.
//!
//! For a batch of jobs it reads each source object (checking its hash still matches), hands the bytes
//! to the pure [`Stage`] on a blocking thread, writes the outputs to content-addressed keys, records
//! the outcome on the claim, and produces the results (or dead letters) for the upload and for every
//! twin that waited on it.

use crate::contract::{ErrorKind, ErrorReport, Job, OutputObject, StageName};
use crate::ports::bus::{Delivery, Publication};
use crate::ports::claims::{self, ClaimIndex, Finished};
use crate::ports::store::{Buckets, StoreError};
use crate::runtime::backends::Backends;
use crate::runtime::config::{Settings, Topics};
use crate::runtime::consumer::{Outcome, ProcessError, Processor, dead_letter};
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Instant;

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
    /// Stage-specific result fields (detect: `detections`).
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
        }
    }

    /// Parses a job and reads its source, or says why not.
    async fn fetch(&self, delivery: &Delivery) -> Result<(Job, Bytes), ProcessError> {
        let job: Job = serde_json::from_slice(&delivery.payload).map_err(|error| {
            ProcessError::permanent(
                "malformed_job",
                format!("job is not valid JSON for the contract: {error}"),
            )
        })?;
        let about = |error: ProcessError| {
            let mut error = error.about(&job.source);
            error.content_hash = Some(job.content_hash.clone());
            error
        };
        if job.fingerprint != self.stage.fingerprint() {
            return Err(about(ProcessError::permanent(
                "fingerprint_mismatch",
                format!(
                    "job was made for {} parameters {} but this worker runs {}; finish the rollout, then re-emit the upload",
                    job.stage,
                    job.fingerprint,
                    self.stage.fingerprint()
                ),
            )));
        }
        let (bytes, hash) = self
            .buckets
            .read(&job.source.bucket, &job.source.key, self.stage.max_bytes())
            .await
            .map_err(|error| about(error.into()))?;
        if hash.0 != job.content_hash {
            return Err(about(ProcessError::permanent(
                "content_changed",
                "the object was overwritten after dedup hashed it; the new upload gets its own event",
            )));
        }
        Ok((job, bytes))
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

    /// Stores the outcome on the claim and turns it into results or dead letters for everyone waiting.
    async fn complete(
        &self,
        delivery: &Delivery,
        job: &Job,
        outcome: Result<(Vec<OutputObject>, Map<String, Value>), ErrorReport>,
        started: Instant,
    ) -> Outcome {
        let failed = outcome.as_ref().err().cloned();
        let Finished { claim, recipients } = claims::finish(&*self.index, job, outcome).await?;
        let elapsed = started.elapsed();
        let publications = recipients
            .into_iter()
            .map(|(seen, deduplicated)| match &failed {
                None => Publication::json(
                    self.topics.results(job.stage),
                    &job.content_hash,
                    &claim.result_for(&seen, deduplicated, elapsed),
                ),
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

/// Runs the stage on a blocking thread. A panic (a decoder bug on a hostile file) must not take the
/// service down: the batch is re-run one input at a time so only the culprit fails.
async fn run_guarded<S: Stage>(
    stage: Arc<S>,
    inputs: Vec<Bytes>,
) -> Vec<Result<StageOutput, StageFailure>> {
    if inputs.is_empty() {
        return Vec::new();
    }
    let whole = {
        let (stage, inputs) = (stage.clone(), inputs.clone());
        tokio::task::spawn_blocking(move || stage.run(&inputs)).await
    };
    if let Ok(outcomes) = whole {
        return outcomes;
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
    outcomes
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
        let mut ran = run_guarded(self.stage.clone(), inputs).await.into_iter();

        let mut outcomes = Vec::with_capacity(batch.len());
        for (delivery, fetched) in batch.iter().zip(fetched) {
            let outcome = match fetched {
                Err(error) => Err(error),
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
                    self.complete(delivery, &job, result, started).await
                }
            };
            outcomes.push(outcome);
        }
        outcomes
    }
}
