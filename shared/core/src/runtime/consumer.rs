//! The one consumer loop every Prism service runs.
//!
//! Take a batch (up to `max_batch` messages, waiting at most `max_delay` once the first is in), hand
//! it to the service's [`Processor`], then for each message in order: publish what it produced, and
//! only then acknowledge it. A permanent failure becomes a dead letter (published, then acknowledged);
//! a transient one is retried with exponential backoff for as long as it takes, so a server outage
//! delays work but loses none. On shutdown the loop stops taking messages, leaves unfinished ones
//! unacknowledged (they are redelivered) and commits.

use crate::contract::{
    Classify, DeadLetter, ErrorKind, ErrorReport, Origin, SCHEMA_VERSION, SourceObject,
    original_payload,
};
use crate::ports::bus::{BusError, Delivery, Publication, Publisher, Subscriber};
use crate::runtime::config::ConsumerSettings;
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

/// Why a message could not be processed.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessError {
    pub report: ErrorReport,
    /// Boxed to keep `Result<_, ProcessError>` small on the hot path.
    pub source: Option<Box<SourceObject>>,
    pub content_hash: Option<String>,
}

impl ProcessError {
    pub fn permanent(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, code, reason)
    }

    pub fn transient(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, code, reason)
    }

    fn new(kind: ErrorKind, code: impl Into<String>, reason: impl Into<String>) -> Self {
        ProcessError {
            report: ErrorReport {
                kind,
                code: code.into(),
                reason: reason.into(),
            },
            source: None,
            content_hash: None,
        }
    }

    /// An upload whose content failed before: the earlier report, now about this upload. Always
    /// permanent, since the content is what failed.
    pub fn earlier_failure(report: ErrorReport, source: &SourceObject, content_hash: &str) -> Self {
        ProcessError {
            report: ErrorReport {
                kind: ErrorKind::Permanent,
                ..report
            },
            source: Some(Box::new(source.clone())),
            content_hash: Some(content_hash.to_string()),
        }
    }

    pub fn about(mut self, source: &SourceObject) -> Self {
        self.source = Some(Box::new(source.clone()));
        self
    }

    pub fn is_transient(&self) -> bool {
        self.report.kind == ErrorKind::Transient
    }
}

impl<E: Classify> From<E> for ProcessError {
    fn from(error: E) -> Self {
        let kind = if error.is_transient() {
            ErrorKind::Transient
        } else {
            ErrorKind::Permanent
        };
        ProcessError::new(kind, error.code(), error.to_string())
    }
}

pub type Outcome = Result<Vec<Publication>, ProcessError>;

/// Codes ending so are transient failures only an operator can end (a bucket missing, credentials
/// refused): retried like an outage, but logged at error level.
pub const MISCONFIGURED: &str = "_misconfigured";

/// A service's work: turn a batch of messages into publications, one outcome per message.
#[async_trait]
pub trait Processor: Send + Sync {
    /// `dedup`, `thumbnail`, `detect`: names the service in logs and dead letters.
    fn name(&self) -> &str;
    async fn process(&self, batch: &[Delivery]) -> Vec<Outcome>;
}

/// Builds the dead letter for a message that failed for good.
pub fn dead_letter(
    topic: &str,
    stage: &str,
    delivery: &Delivery,
    error: &ProcessError,
    attempts: u32,
) -> Publication {
    let (original, original_truncated) = original_payload(&delivery.payload);
    let letter = DeadLetter {
        schema_version: SCHEMA_VERSION,
        stage: stage.to_string(),
        error: error.report.clone(),
        attempts,
        source: error.source.as_deref().cloned(),
        content_hash: error.content_hash.clone(),
        origin: Origin {
            topic: delivery.topic.clone(),
            partition: delivery.partition,
            offset: delivery.offset,
        },
        original,
        original_bytes: Some(delivery.payload.len() as u64),
        original_truncated,
        failed_at: chrono::Utc::now(),
    };
    let key = error
        .content_hash
        .clone()
        .or_else(|| {
            delivery
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
        })
        .unwrap_or_default();
    Publication::json(topic, &key, &letter)
}

/// Counters a service exposes (logs now, an admin page later).
#[derive(Debug, Default)]
pub struct Stats {
    pub processed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retries: AtomicU64,
}

pub struct ConsumerLoop {
    pub subscriber: Box<dyn Subscriber>,
    pub publisher: Arc<dyn Publisher>,
    pub processor: Arc<dyn Processor>,
    pub settings: ConsumerSettings,
    pub deadletter_topic: String,
    pub stats: Arc<Stats>,
}

/// Retries stop early only for shutdown.
struct Stopped;

impl ConsumerLoop {
    /// Runs until `shutdown` is cancelled (or the bus fails for good).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), BusError> {
        let result = self.consume(&shutdown).await;
        let committed = self.subscriber.commit().await;
        tracing::info!(
            service = self.processor.name(),
            processed = self.stats.processed.load(Ordering::Relaxed),
            dead_lettered = self.stats.dead_lettered.load(Ordering::Relaxed),
            retries = self.stats.retries.load(Ordering::Relaxed),
            "consumer stopped"
        );
        result.and(committed)
    }

    async fn consume(&mut self, shutdown: &CancellationToken) -> Result<(), BusError> {
        while let Some(batch) = self.next_batch(shutdown).await? {
            let outcomes = self.processor.process(&batch).await;
            debug_assert_eq!(outcomes.len(), batch.len());
            for (delivery, outcome) in batch.iter().zip(outcomes) {
                if self.settle(delivery, outcome, shutdown).await.is_err() {
                    return Ok(()); // shutting down: the rest of the batch is redelivered
                }
                self.subscriber.ack(delivery)?;
                self.stats.processed.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn next_batch(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<Delivery>>, BusError> {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            delivery = self.subscriber.next() => delivery?,
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + self.settings.max_delay;
        while batch.len() < self.settings.max_batch.max(1) {
            tokio::select! {
                _ = sleep_until(deadline) => break,
                delivery = self.subscriber.next() => batch.push(delivery?),
            }
        }
        Ok(Some(batch))
    }

    /// Turns one outcome into published messages, retrying transient failures.
    async fn settle(
        &self,
        delivery: &Delivery,
        mut outcome: Outcome,
        shutdown: &CancellationToken,
    ) -> Result<(), Stopped> {
        let mut attempts = 1;
        let mut backoff = Backoff::new(&self.settings);
        let publications = loop {
            match outcome {
                Ok(publications) => break publications,
                Err(error) if !error.is_transient() => {
                    tracing::warn!(
                        service = self.processor.name(),
                        code = %error.report.code,
                        reason = %error.report.reason,
                        topic = %delivery.topic,
                        offset = delivery.offset,
                        "dead-lettering message"
                    );
                    break vec![dead_letter(
                        &self.deadletter_topic,
                        self.processor.name(),
                        delivery,
                        &error,
                        attempts,
                    )];
                }
                Err(error) => {
                    if error.report.code.ends_with(MISCONFIGURED) {
                        tracing::error!(
                            service = self.processor.name(),
                            code = %error.report.code,
                            reason = %error.report.reason,
                            attempts,
                            "a server refuses Prism's requests: fix its configuration; retrying"
                        );
                    } else {
                        tracing::warn!(
                            service = self.processor.name(),
                            code = %error.report.code,
                            reason = %error.report.reason,
                            attempts,
                            "transient failure, retrying"
                        );
                    }
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    backoff.wait(shutdown).await?;
                    attempts += 1;
                    outcome = self
                        .processor
                        .process(std::slice::from_ref(delivery))
                        .await
                        .pop()
                        .expect("one outcome per message");
                }
            }
        };
        for publication in &publications {
            if let Err(refused) = self.publish(publication, shutdown).await? {
                self.refused(delivery, publication, refused, attempts, shutdown)
                    .await?;
            }
        }
        self.count_dead_letters(&publications);
        Ok(())
    }

    /// Publishes, retrying while the bus is away; the bus's refusal for good is handed back.
    async fn publish(
        &self,
        publication: &Publication,
        shutdown: &CancellationToken,
    ) -> Result<Result<(), BusError>, Stopped> {
        let mut backoff = Backoff::new(&self.settings);
        loop {
            match self.publisher.publish(publication).await {
                Ok(()) => return Ok(Ok(())),
                Err(error) if !error.is_transient() => return Ok(Err(error)),
                Err(error) => {
                    tracing::warn!(%error, topic = %publication.topic, "publish failed, retrying");
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    backoff.wait(shutdown).await?;
                }
            }
        }
    }

    /// A publication the bus will never take: a result becomes a dead letter saying why; a dead
    /// letter the bus refuses is logged and dropped (its message's origin is in the log), since
    /// holding it would hold up its partition for good.
    async fn refused(
        &self,
        delivery: &Delivery,
        publication: &Publication,
        refused: BusError,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> Result<(), Stopped> {
        tracing::error!(
            service = self.processor.name(),
            error = %refused,
            topic = %publication.topic,
            origin_topic = %delivery.topic,
            origin_partition = delivery.partition,
            origin_offset = delivery.offset,
            "the bus refused a message for good"
        );
        if publication.topic == self.deadletter_topic {
            return Ok(());
        }
        let letter = dead_letter(
            &self.deadletter_topic,
            self.processor.name(),
            delivery,
            &ProcessError::from(refused),
            attempts,
        );
        match self.publish(&letter, shutdown).await? {
            Ok(()) => {
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => tracing::error!(%error, "the bus refused the dead letter too; dropped"),
        }
        Ok(())
    }

    /// Counts dead letters, whether the loop made them or the processor did (one message can hold
    /// several uploads, e.g. a failed job and its waiting twins).
    fn count_dead_letters(&self, publications: &[Publication]) {
        let letters = publications
            .iter()
            .filter(|p| p.topic == self.deadletter_topic)
            .count();
        self.stats
            .dead_lettered
            .fetch_add(letters as u64, Ordering::Relaxed);
    }
}

/// Exponential backoff between `retry_initial` and `retry_max`, cut short by shutdown. Each pause
/// is drawn from its upper half, so replicas that failed together do not retry in lockstep.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(settings: &ConsumerSettings) -> Self {
        Backoff {
            next: settings.retry_initial,
            max: settings.retry_max,
        }
    }

    async fn wait(&mut self, shutdown: &CancellationToken) -> Result<(), Stopped> {
        tokio::select! {
            _ = shutdown.cancelled() => return Err(Stopped),
            _ = sleep(self.next.mul_f64(fastrand::f64().mul_add(0.5, 0.5))) => {}
        }
        self.next = (self.next * 2).min(self.max);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::bus::memory::MemoryBus;
    use std::sync::Mutex;

    /// Fails transiently `transient_failures` times, dead-letters payload "bad", echoes the rest
    /// (a payload starting `big` as 2 MB, over the bus's limit).
    struct Echo {
        transient_failures: Mutex<u32>,
        batch_sizes: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl Processor for Echo {
        fn name(&self) -> &str {
            "echo"
        }
        async fn process(&self, batch: &[Delivery]) -> Vec<Outcome> {
            self.batch_sizes.lock().unwrap().push(batch.len());
            batch
                .iter()
                .map(|delivery| {
                    let mut failures = self.transient_failures.lock().unwrap();
                    if *failures > 0 {
                        *failures -= 1;
                        return Err(ProcessError::transient("down", "server down"));
                    }
                    if delivery.payload == b"bad" {
                        return Err(ProcessError::permanent("bad_input", "payload is bad"));
                    }
                    Ok(vec![Publication {
                        topic: "out".into(),
                        key: "k".into(),
                        payload: if delivery.payload.starts_with(b"big") {
                            vec![b'x'; 2_000_000]
                        } else {
                            delivery.payload.clone()
                        },
                    }])
                })
                .collect()
        }
    }

    async fn run_over(
        inputs: &[&[u8]],
        transient_failures: u32,
        max_batch: usize,
    ) -> (MemoryBus, Arc<Stats>, Arc<Echo>) {
        let bus = MemoryBus::default();
        for input in inputs {
            bus.publish(&Publication {
                topic: "in".into(),
                key: "k".into(),
                payload: input.to_vec(),
            })
            .await
            .unwrap();
        }
        let processor = Arc::new(Echo {
            transient_failures: Mutex::new(transient_failures),
            batch_sizes: Mutex::default(),
        });
        let stats = Arc::new(Stats::default());
        let consumer = ConsumerLoop {
            subscriber: Box::new(bus.subscribe(&["in"])),
            publisher: Arc::new(bus.clone()),
            processor: processor.clone(),
            settings: ConsumerSettings {
                max_batch,
                max_delay: Duration::from_millis(5),
                retry_initial: Duration::from_millis(1),
                retry_max: Duration::from_millis(4),
            },
            deadletter_topic: "dead".into(),
            stats: stats.clone(),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(consumer.run(shutdown.clone()));
        let expected = inputs.len() as u64;
        while stats.processed.load(Ordering::Relaxed) < expected {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        shutdown.cancel();
        task.await.unwrap().unwrap();
        (bus, stats, processor)
    }

    #[tokio::test]
    async fn publishes_in_order_dead_letters_bad_input_and_retries_outages() {
        let (bus, stats, _) = run_over(&[b"1", b"bad", b"2"], 3, 1).await;
        let out: Vec<Vec<u8>> = bus.messages("out").into_iter().map(|d| d.payload).collect();
        assert_eq!(out, [b"1".to_vec(), b"2".to_vec()]);
        let dead = bus.messages("dead");
        assert_eq!(dead.len(), 1);
        let letter: DeadLetter = serde_json::from_slice(&dead[0].payload).unwrap();
        assert_eq!(letter.error.code, "bad_input");
        assert_eq!(letter.stage, "echo");
        assert_eq!(letter.origin.offset, 1);
        assert_eq!(letter.original, serde_json::Value::String("bad".into()));
        assert_eq!(stats.retries.load(Ordering::Relaxed), 3);
        assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_message_the_bus_refuses_becomes_a_bounded_dead_letter_and_the_rest_flows() {
        // What Echo makes of a message starting `big` is over the bus's limit; the dead letter
        // for that 200 KB message is not.
        let mut big = b"big".to_vec();
        big.resize(200_000, b'x');
        let (bus, stats, _) = run_over(&[&big, b"after"], 0, 1).await;
        let out: Vec<Vec<u8>> = bus.messages("out").into_iter().map(|d| d.payload).collect();
        assert_eq!(out, [b"after".to_vec()]);
        let dead = bus.messages("dead");
        assert_eq!(dead.len(), 1);
        let letter: DeadLetter = serde_json::from_slice(&dead[0].payload).unwrap();
        assert_eq!(letter.error.code, "publish_refused");
        assert_eq!(letter.error.kind, ErrorKind::Permanent);
        assert_eq!(letter.original_bytes, Some(200_000));
        assert!(letter.original_truncated);
        assert!(
            dead[0].payload.len() < 8 * 1024,
            "{} bytes",
            dead[0].payload.len()
        );
        assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn batches_up_to_max_batch() {
        let inputs: Vec<&[u8]> = vec![b"x"; 10];
        let (bus, _, processor) = run_over(&inputs, 0, 4).await;
        assert_eq!(bus.messages("out").len(), 10);
        assert_eq!(*processor.batch_sizes.lock().unwrap(), [4, 4, 2]);
    }
}
