//! Counting: every result and dead letter about a batch job's object becomes that object's
//! outcome for its stage, stored once (see [`prism_core::ports::batch`]).

use async_trait::async_trait;
use prism_core::contract::{DeadLetter, StageName, StageResult};
use prism_core::ports::batch::{ItemOutcome, JobBook, JobItem};
use prism_core::ports::bus::Delivery;
use prism_core::runtime::batch_jobs::BatchJobs;
use prism_core::runtime::config::Topics;
use prism_core::runtime::consumer::{Outcome, ProcessError, Processor};
use std::sync::Arc;

pub struct Tally {
    book: Arc<dyn JobBook>,
    jobs: BatchJobs,
    topics: Topics,
}

impl Tally {
    pub fn new(book: Arc<dyn JobBook>, topics: Topics) -> Self {
        Tally {
            jobs: BatchJobs::new(book.clone()),
            book,
            topics,
        }
    }

    /// The outcomes a message records: none for an upload's, one for a job's result, one per
    /// stage for a dead letter of dedup's (the object never reached a stage).
    async fn outcomes(&self, delivery: &Delivery) -> Result<Vec<JobItem>, ProcessError> {
        if delivery.topic == self.topics.deadletter {
            let letter: DeadLetter = parse(delivery)?;
            let Some(source) = &letter.source else {
                return Ok(Vec::new());
            };
            let Some(job) = &source.batch_job else {
                return Ok(Vec::new());
            };
            let stages = match letter.stage.parse::<StageName>() {
                Ok(stage) => vec![stage],
                Err(_) => match self.jobs.facts(job).await? {
                    Some(facts) => facts.stages,
                    None => return Ok(Vec::new()),
                },
            };
            return Ok(stages
                .into_iter()
                .map(|stage| JobItem {
                    content_hash: letter.content_hash.clone(),
                    error: Some(letter.error.clone()),
                    ..JobItem::new(
                        job,
                        &source.key,
                        stage,
                        ItemOutcome::Failed,
                        letter.failed_at,
                    )
                })
                .collect());
        }
        let result: StageResult = parse(delivery)?;
        let Some(job) = &result.source.batch_job else {
            return Ok(Vec::new());
        };
        let timings = &result.timings;
        // A batched run's time is the batch's: each input's share is its part of it.
        let processing_ms = match result.deduplicated {
            true => 0,
            false => timings.processing_ms / u64::from(timings.batch_size.unwrap_or(1).max(1)),
        };
        let outcome = match result.deduplicated {
            true => ItemOutcome::Deduplicated,
            false => ItemOutcome::Done,
        };
        Ok(vec![JobItem {
            content_hash: Some(result.content_hash.clone()),
            outputs: result.outputs.clone(),
            payload: result.payload.clone(),
            processing_ms,
            latency_ms: (timings.finished_at - timings.received_at).num_milliseconds(),
            ..JobItem::new(
                job,
                &result.source.key,
                result.stage,
                outcome,
                timings.finished_at,
            )
        }])
    }
}

fn parse<T: serde::de::DeserializeOwned>(delivery: &Delivery) -> Result<T, ProcessError> {
    serde_json::from_slice(&delivery.payload).map_err(|error| {
        ProcessError::permanent(
            "malformed_message",
            format!("not a Prism message of {}: {error}", delivery.topic),
        )
    })
}

#[async_trait]
impl Processor for Tally {
    fn name(&self) -> &str {
        "jobs"
    }

    /// One write for the batch's outcomes; a message that does not parse is left alone (it is
    /// not this service's to dead-letter: the topics are other services' outputs).
    async fn process(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut items = Vec::new();
        for delivery in batch {
            match self.outcomes(delivery).await {
                Ok(outcomes) => items.extend(outcomes),
                Err(error) if error.is_transient() => {
                    return batch.iter().map(|_| Err(error.clone())).collect();
                }
                Err(error) => tracing::warn!(
                    topic = %delivery.topic,
                    offset = delivery.offset,
                    reason = %error.report.reason,
                    "not counted"
                ),
            }
        }
        match self.book.record_items(&items).await {
            Ok(()) => batch.iter().map(|_| Ok(Vec::new())).collect(),
            Err(error) => {
                let error = ProcessError::from(error);
                batch.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }
}
