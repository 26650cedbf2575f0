//! The one consumer loop every Prism service runs.
//!
//! Take a batch (up to `max_batch` messages, waiting at most `max_delay` once the first is in) and
//! hand it to the service's [`Processor`], with up to `concurrency` batches in flight at once. For
//! each message: publish what it produced, and only then count it finished. A permanent failure
//! becomes a dead letter (published, then finished); a transient one is retried with exponential
//! backoff for as long as it takes, so a server outage delays work but loses none.
//!
//! Batches finish out of order, so a partition's offset is acknowledged only up to the lowest
//! message not yet finished (see [`Unfinished`]): a crash redelivers what was in flight, never
//! skips it. On shutdown the loop stops taking messages, lets the batches in flight finish (their
//! retries stop: those messages stay unacknowledged and are redelivered) and commits.

use crate::contract::{
    Classify, DeadLetter, ErrorKind, ErrorReport, Origin, SCHEMA_VERSION, SourceObject,
    original_payload,
};
use crate::ports::bus::{
    BusError, Delivery, Position, Publication, Published, Publisher, Subscriber,
};
use crate::runtime::config::{ConsumerSettings, Intake};
use crate::runtime::observe;
use crate::runtime::trace::Hop;
use async_trait::async_trait;
use futures::future::join_all;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
    /// `dedup`, `thumbnail`, `detect`, `classify`: names the service in logs and dead letters.
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
    Publication {
        kind: Published::DeadLetter {
            service: stage.to_string(),
            code: error.report.code.clone(),
        },
        ..Publication::json(topic, &key, &letter)
    }
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
    /// Batch jobs' work, taken only while `subscriber` (uploads) leaves a slot free; see
    /// [`BatchLane`].
    pub batch_lane: Option<BatchLane>,
    pub publisher: Arc<dyn Publisher>,
    pub processor: Arc<dyn Processor>,
    pub intake: Intake,
    pub settings: ConsumerSettings,
    pub deadletter_topic: String,
    pub stats: Arc<Stats>,
}

/// The lower-priority source of a service's work: batch jobs' topics
/// ([`Lane::Batch`](crate::runtime::config::Lane)). The loop takes from it only when a batch slot
/// is free and no upload is waiting, and keeps one slot more for uploads than batch work may use,
/// so an upload arriving while batch work fills every slot starts at once (sharing the cores)
/// instead of queueing behind the job.
pub struct BatchLane {
    pub subscriber: Box<dyn Subscriber>,
    /// The topics `subscriber` reads: its acknowledgements go to it.
    pub topics: Vec<String>,
}

/// Where the loop takes messages from, and where it acknowledges them.
struct Sources<'a> {
    interactive: &'a mut dyn Subscriber,
    batch: Option<&'a mut BatchLane>,
}

impl Sources<'_> {
    fn ack(&mut self, position: &Position) -> Result<(), BusError> {
        match &mut self.batch {
            Some(lane) if lane.topics.contains(&position.topic) => lane.subscriber.ack(position),
            _ => self.interactive.ack(position),
        }
    }

    fn is_batch(&self, delivery: &Delivery) -> bool {
        self.batch
            .as_ref()
            .is_some_and(|lane| lane.topics.contains(&delivery.topic))
    }
}

/// The batch lane's next message; never, without one.
async fn next_batch(lane: &mut Option<&mut BatchLane>) -> Result<Delivery, BusError> {
    match lane {
        Some(lane) => lane.subscriber.next().await,
        None => std::future::pending().await,
    }
}

/// Retries stop early only for shutdown.
struct Stopped;

/// Where the loop is: what it does next.
enum Step {
    Took(Delivery),
    Dispatch,
    Settled(Result<Vec<(Position, bool)>, tokio::task::JoinError>),
    Stop,
}

impl ConsumerLoop {
    /// Runs until `shutdown` is cancelled (or the bus fails for good).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BusError> {
        let ConsumerLoop {
            mut subscriber,
            mut batch_lane,
            publisher,
            processor,
            intake,
            settings,
            deadletter_topic,
            stats,
        } = self;
        let settler = Arc::new(Settler {
            publisher,
            processor,
            settings,
            deadletter_topic,
            stats,
        });
        let sources = Sources {
            interactive: &mut *subscriber,
            batch: batch_lane.as_mut(),
        };
        let result = consume(sources, &settler, &intake, &shutdown).await;
        let mut committed = subscriber.commit().await;
        if let Some(lane) = &mut batch_lane {
            committed = committed.and(lane.subscriber.commit().await);
        }
        let stats = &settler.stats;
        tracing::info!(
            service = settler.processor.name(),
            processed = stats.processed.load(Ordering::Relaxed),
            dead_lettered = stats.dead_lettered.load(Ordering::Relaxed),
            retries = stats.retries.load(Ordering::Relaxed),
            "consumer stopped"
        );
        result.and(committed)
    }
}

async fn consume(
    mut sources: Sources<'_>,
    settler: &Arc<Settler>,
    intake: &Intake,
    shutdown: &CancellationToken,
) -> Result<(), BusError> {
    let concurrency = intake.concurrency();
    // The slot only uploads may use; see [`BatchLane`].
    let reserved = usize::from(sources.batch.is_some());
    let max_batch = intake.max_batch.max(1);
    let mut in_flight = JoinSet::new();
    let mut unfinished = Unfinished::default();
    let mut batch = Vec::with_capacity(max_batch);
    // Whether the batch being gathered holds an upload, which may take the reserved slot.
    let mut batch_has_upload = false;
    let mut deadline = Instant::now();
    let mut stopping = false;
    let service = settler.processor.name();
    let mut gauged_in_flight = None;
    loop {
        // Set only on a change: the gauge's labels cost an allocation per call.
        if gauged_in_flight != Some(in_flight.len()) {
            gauged_in_flight = Some(in_flight.len());
            observe::batches_in_flight(service, in_flight.len());
        }
        let taking = !stopping && in_flight.len() < concurrency;
        let taking_uploads = !stopping && in_flight.len() < concurrency + reserved;
        let dispatching = if batch_has_upload {
            taking_uploads
        } else {
            taking
        };
        let room = batch.len() < max_batch;
        let step = tokio::select! {
            // Finished work first: acknowledging it frees a slot and moves the offsets on.
            biased;
            Some(settled) = in_flight.join_next() => Step::Settled(settled),
            _ = shutdown.cancelled(), if !stopping => Step::Stop,
            delivery = sources.interactive.next(), if taking_uploads && room => Step::Took(delivery?),
            delivery = next_batch(&mut sources.batch), if taking && room => Step::Took(delivery?),
            _ = sleep_until(deadline), if dispatching && !batch.is_empty() => Step::Dispatch,
            // Stopping, and nothing left in flight.
            else => return Ok(()),
        };
        match step {
            Step::Took(delivery) => {
                if batch.is_empty() {
                    deadline = Instant::now() + intake.max_delay;
                }
                batch_has_upload |= !sources.is_batch(&delivery);
                unfinished.taken(&delivery.position());
                batch.push(delivery);
                // Taken means a slot was free for it: a full batch may go.
                if batch.len() == max_batch {
                    dispatch(&mut in_flight, settler, &mut batch, shutdown);
                    batch_has_upload = false;
                }
            }
            Step::Dispatch => {
                dispatch(&mut in_flight, settler, &mut batch, shutdown);
                batch_has_upload = false;
            }
            Step::Settled(settled) => {
                let settled = settled.unwrap_or_else(|failed| match failed.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(cancelled) => unreachable!("batches are never aborted: {cancelled}"),
                });
                for (position, finished) in settled {
                    if !finished {
                        continue; // stopped while retrying: redelivered after the restart
                    }
                    settler.stats.processed.fetch_add(1, Ordering::Relaxed);
                    observe::message_finished(service);
                    if let Some(acknowledged) = unfinished.finished(&position) {
                        sources.ack(&acknowledged)?;
                    }
                }
            }
            Step::Stop => {
                // The batch not yet handed over is left unacknowledged: it is redelivered.
                stopping = true;
                batch.clear();
                batch_has_upload = false;
            }
        }
    }
}

fn dispatch(
    in_flight: &mut JoinSet<Vec<(Position, bool)>>,
    settler: &Arc<Settler>,
    batch: &mut Vec<Delivery>,
    shutdown: &CancellationToken,
) {
    let batch = std::mem::take(batch);
    observe::batch_dispatched(settler.processor.name(), batch.len());
    let (settler, shutdown) = (settler.clone(), shutdown.clone());
    in_flight.spawn(async move {
        let finished = settler.settle(&batch, &shutdown).await;
        batch.iter().map(Delivery::position).zip(finished).collect()
    });
}

/// Messages taken but not yet acknowledged, per partition, each marked finished or not. With
/// several batches in flight, messages finish out of order; a partition's offset may only move
/// past messages that are all finished (the caveat of rust-rdkafka's at-least-once example).
#[derive(Debug, Default)]
struct Unfinished {
    partitions: HashMap<(String, i32), BTreeMap<i64, bool>>,
}

impl Unfinished {
    fn taken(&mut self, position: &Position) {
        self.partitions
            .entry((position.topic.clone(), position.partition))
            .or_default()
            .insert(position.offset, false);
    }

    /// Marks `position` finished; returns the position to acknowledge when that let its
    /// partition's run of finished messages grow.
    fn finished(&mut self, position: &Position) -> Option<Position> {
        let key = (position.topic.clone(), position.partition);
        let offsets = self.partitions.get_mut(&key)?;
        *offsets.get_mut(&position.offset)? = true;
        let mut acknowledged = None;
        while let Some(first) = offsets.first_entry() {
            if !*first.get() {
                break;
            }
            acknowledged = Some(first.remove_entry().0);
        }
        if offsets.is_empty() {
            self.partitions.remove(&key);
        }
        let (topic, partition) = key;
        acknowledged.map(|offset| Position {
            topic,
            partition,
            offset,
        })
    }
}

/// What a batch in flight needs: turns outcomes into published messages.
struct Settler {
    publisher: Arc<dyn Publisher>,
    processor: Arc<dyn Processor>,
    settings: ConsumerSettings,
    deadletter_topic: String,
    stats: Arc<Stats>,
}

impl Settler {
    /// Processes `batch` and publishes its outcomes, retrying the messages that failed for now
    /// (together, as a smaller batch). Says for each message whether it finished; only shutdown
    /// leaves one unfinished.
    async fn settle(&self, batch: &[Delivery], shutdown: &CancellationToken) -> Vec<bool> {
        let mut finished = vec![false; batch.len()];
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut hops: Vec<Option<Hop>> = batch
            .iter()
            .map(|delivery| Some(Hop::handling(self.processor.name(), delivery)))
            .collect();
        let mut outcomes = self.processor.process(batch).await;
        debug_assert_eq!(outcomes.len(), batch.len());
        let mut attempts = 1;
        let mut backoff = Backoff::new(&self.settings);
        loop {
            let mut retry = Vec::new();
            let mut publishing = Vec::new();
            for (index, outcome) in pending.into_iter().zip(outcomes) {
                match outcome {
                    Err(error) if error.is_transient() => retry.push((index, error)),
                    outcome => {
                        let hop = hops[index]
                            .as_ref()
                            .expect("a hop ends once its message is");
                        let failure = outcome
                            .as_ref()
                            .err()
                            .map(|error| format!("{}: {}", error.report.code, error.report.reason));
                        let logged = tracing::info_span!("message", trace_id = %hop.trace_id());
                        let published = self
                            .publish_outcome(&batch[index], hop, outcome, attempts, shutdown)
                            .instrument(logged);
                        publishing.push(async move { (index, failure, published.await.is_ok()) });
                    }
                }
            }
            for (index, failure, published) in join_all(publishing).await {
                finished[index] = published;
                if let Some(hop) = hops[index].take() {
                    hop.end(failure.as_deref());
                }
            }
            let Some((_, error)) = retry.first() else {
                observe::passing(observe::SERVERS);
                return finished;
            };
            self.log_retry(error, retry.len(), attempts);
            observe::failing(observe::SERVERS, error.report.code.clone());
            self.count_retries(retry.len());
            if backoff.wait(shutdown).await.is_err() {
                return finished;
            }
            attempts += 1;
            pending = retry.into_iter().map(|(index, _)| index).collect();
            let again: Vec<Delivery> = pending.iter().map(|&index| batch[index].clone()).collect();
            outcomes = self.processor.process(&again).await;
        }
    }

    fn log_retry(&self, error: &ProcessError, messages: usize, attempts: u32) {
        let service = self.processor.name();
        let (code, reason) = (&error.report.code, &error.report.reason);
        if code.ends_with(MISCONFIGURED) {
            tracing::error!(
                service,
                %code,
                %reason,
                messages,
                attempts,
                "a server refuses Prism's requests: fix its configuration; retrying"
            );
        } else {
            tracing::warn!(service, %code, %reason, messages, attempts, "transient failure, retrying");
        }
    }

    /// Publishes what one message produced, or its dead letter.
    async fn publish_outcome(
        &self,
        delivery: &Delivery,
        hop: &Hop,
        outcome: Outcome,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> Result<(), Stopped> {
        let mut publications = outcome.unwrap_or_else(|error| {
            tracing::warn!(
                service = self.processor.name(),
                code = %error.report.code,
                reason = %error.report.reason,
                topic = %delivery.topic,
                offset = delivery.offset,
                "dead-lettering message"
            );
            vec![dead_letter(
                &self.deadletter_topic,
                self.processor.name(),
                delivery,
                &error,
                attempts,
            )]
        });
        let traceparent = hop.traceparent();
        for publication in &mut publications {
            publication
                .traceparent
                .get_or_insert_with(|| traceparent.clone());
        }
        tracing::debug!(
            service = self.processor.name(),
            topic = %delivery.topic,
            partition = delivery.partition,
            offset = delivery.offset,
            publications = publications.len(),
            "message handled"
        );
        // Together: the bus batches them (one linger, not one per message).
        let published = join_all(publications.iter().map(|publication| async move {
            if let Err(refused) = self.publish(publication, shutdown).await? {
                self.refused(delivery, publication, refused, attempts, shutdown)
                    .await?;
            }
            Ok(())
        }))
        .await;
        self.count_dead_letters(&publications);
        published.into_iter().collect()
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
                Ok(()) => {
                    observe::published(publication);
                    return Ok(Ok(()));
                }
                Err(error) if !error.is_transient() => return Ok(Err(error)),
                Err(error) => {
                    tracing::warn!(%error, topic = %publication.topic, "publish failed, retrying");
                    observe::failing(observe::SERVERS, format!("publishing: {error}"));
                    self.count_retries(1);
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
        let letter = Publication {
            traceparent: publication.traceparent.clone(),
            ..dead_letter(
                &self.deadletter_topic,
                self.processor.name(),
                delivery,
                &ProcessError::from(refused),
                attempts,
            )
        };
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
    fn count_retries(&self, messages: usize) {
        self.stats
            .retries
            .fetch_add(messages as u64, Ordering::Relaxed);
        observe::retried(self.processor.name(), messages);
    }

    fn count_dead_letters(&self, publications: &[Publication]) {
        let letters = publications
            .iter()
            .filter(|p| matches!(p.kind, Published::DeadLetter { .. }))
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
                        kind: Default::default(),
                        traceparent: None,
                    }])
                })
                .collect()
        }
    }

    /// The trace context input `index` arrives with: trace id `index + 1`.
    fn upstream_trace(index: usize) -> String {
        format!("00-{:032x}-00f067aa0ba902b7-01", index + 1)
    }

    /// The trace id and the parent span id a message's `traceparent` names.
    fn trace_of(delivery: &Delivery) -> (String, String) {
        let traceparent = delivery.traceparent.as_deref().expect("a traceparent");
        let parts: Vec<&str> = traceparent.split('-').collect();
        (parts[1].to_string(), parts[2].to_string())
    }

    async fn run_over(
        inputs: &[&[u8]],
        transient_failures: u32,
        max_batch: usize,
    ) -> (MemoryBus, Arc<Stats>, Arc<Echo>) {
        let bus = MemoryBus::default();
        for (index, input) in inputs.iter().enumerate() {
            bus.publish(&Publication {
                topic: "in".into(),
                key: "k".into(),
                payload: input.to_vec(),
                kind: Default::default(),
                traceparent: Some(upstream_trace(index)),
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
            batch_lane: None,
            publisher: Arc::new(bus.clone()),
            processor: processor.clone(),
            intake: Intake {
                max_batch,
                max_delay: Duration::from_millis(5),
                concurrency: Some(1),
            },
            settings: ConsumerSettings {
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
    async fn what_a_message_produces_continues_its_trace_with_a_span_of_the_service() {
        let (bus, _, _) = run_over(&[b"1", b"bad", b"2"], 1, 2).await;
        let out = bus.messages("out");
        let dead = bus.messages("dead");
        let upstream_of = |index: usize| format!("{:032x}", index + 1);
        let (first, first_span) = trace_of(&out[0]);
        let (second, second_span) = trace_of(&out[1]);
        let (letter, letter_span) = trace_of(&dead[0]);
        assert_eq!(first, upstream_of(0));
        assert_eq!(letter, upstream_of(1));
        assert_eq!(second, upstream_of(2));
        let spans = [first_span, second_span, letter_span];
        assert!(
            spans.iter().all(|span| span != "00f067aa0ba902b7"),
            "{spans:?}"
        );
        assert!(spans[0] != spans[1] && spans[1] != spans[2] && spans[0] != spans[2]);
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
        assert_eq!(
            trace_of(&dead[0]).0,
            format!("{:032x}", 1),
            "the input's trace"
        );
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

    fn at(partition: i32, offset: i64) -> Position {
        Position {
            topic: "in".into(),
            partition,
            offset,
        }
    }

    #[test]
    fn offsets_move_only_past_messages_all_finished() {
        let mut unfinished = Unfinished::default();
        for offset in 0..5 {
            unfinished.taken(&at(0, offset));
        }
        unfinished.taken(&at(1, 7));
        assert_eq!(unfinished.finished(&at(0, 2)), None);
        assert_eq!(unfinished.finished(&at(0, 3)), None);
        assert_eq!(unfinished.finished(&at(1, 7)), Some(at(1, 7)));
        assert_eq!(unfinished.finished(&at(0, 0)), Some(at(0, 0)));
        assert_eq!(unfinished.finished(&at(0, 1)), Some(at(0, 3)));
        assert_eq!(unfinished.finished(&at(0, 4)), Some(at(0, 4)));
        assert!(unfinished.partitions.is_empty());
        // A finish for something not taken (a duplicate after a rebalance) changes nothing.
        assert_eq!(unfinished.finished(&at(0, 9)), None);
    }

    /// Hands out `deliveries` in order, then waits; records what is acknowledged and committed.
    struct Scripted {
        deliveries: std::collections::VecDeque<Delivery>,
        acks: Arc<Mutex<Vec<Position>>>,
        commits: Arc<AtomicU64>,
    }

    #[async_trait]
    impl Subscriber for Scripted {
        async fn next(&mut self) -> Result<Delivery, BusError> {
            match self.deliveries.pop_front() {
                Some(delivery) => Ok(delivery),
                None => std::future::pending().await,
            }
        }
        fn ack(&mut self, position: &Position) -> Result<(), BusError> {
            self.acks.lock().unwrap().push(position.clone());
            Ok(())
        }
        async fn commit(&mut self) -> Result<(), BusError> {
            self.commits.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    /// Holds payload `slow` until released; fails payload `down` for now, every time; echoes
    /// the rest.
    struct Gated {
        release: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl Processor for Gated {
        fn name(&self) -> &str {
            "gated"
        }
        async fn process(&self, batch: &[Delivery]) -> Vec<Outcome> {
            let mut outcomes = Vec::new();
            for delivery in batch {
                outcomes.push(match &delivery.payload[..] {
                    b"down" => Err(ProcessError::transient("down", "server down")),
                    payload => {
                        if payload == b"slow" {
                            self.release.acquire().await.unwrap().forget();
                        }
                        Ok(vec![Publication {
                            topic: "out".into(),
                            key: "k".into(),
                            payload: payload.to_vec(),
                            kind: Default::default(),
                            traceparent: None,
                        }])
                    }
                });
            }
            outcomes
        }
    }

    struct Running {
        bus: MemoryBus,
        processor: Arc<Gated>,
        acks: Arc<Mutex<Vec<Position>>>,
        commits: Arc<AtomicU64>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), BusError>>,
    }

    impl Running {
        /// The loop over `payloads` (offsets 0.. of partition 0), `concurrency` jobs at once.
        fn start(payloads: &[&[u8]], concurrency: usize) -> Self {
            let bus = MemoryBus::default();
            let processor = Arc::new(Gated {
                release: tokio::sync::Semaphore::new(0),
            });
            let acks = Arc::new(Mutex::new(Vec::new()));
            let commits = Arc::new(AtomicU64::new(0));
            let deliveries = payloads
                .iter()
                .enumerate()
                .map(|(offset, payload)| Delivery {
                    topic: "in".into(),
                    partition: 0,
                    offset: offset as i64,
                    key: None,
                    payload: payload.to_vec(),
                    traceparent: None,
                })
                .collect();
            let consumer = ConsumerLoop {
                subscriber: Box::new(Scripted {
                    deliveries,
                    acks: acks.clone(),
                    commits: commits.clone(),
                }),
                batch_lane: None,
                publisher: Arc::new(bus.clone()),
                processor: processor.clone(),
                intake: Intake {
                    max_batch: 1,
                    max_delay: Duration::ZERO,
                    concurrency: Some(concurrency),
                },
                settings: ConsumerSettings {
                    retry_initial: Duration::from_millis(1),
                    retry_max: Duration::from_millis(4),
                },
                deadletter_topic: "dead".into(),
                stats: Arc::new(Stats::default()),
            };
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(consumer.run(shutdown.clone()));
            Running {
                bus,
                processor,
                acks,
                commits,
                shutdown,
                task,
            }
        }

        async fn published(&self, count: usize) -> Vec<Vec<u8>> {
            loop {
                let out: Vec<Vec<u8>> = self
                    .bus
                    .messages("out")
                    .into_iter()
                    .map(|d| d.payload)
                    .collect();
                if out.len() >= count {
                    return out;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }

        fn acks(&self) -> Vec<i64> {
            self.acks.lock().unwrap().iter().map(|p| p.offset).collect()
        }
    }

    #[tokio::test]
    async fn jobs_finishing_out_of_order_are_acknowledged_only_up_to_the_first_unfinished() {
        let running = Running::start(&[b"slow", b"1", b"2", b"3"], 4);
        // The three after the slow one finish while it is still running...
        let out = running.published(3).await;
        assert_eq!(out, [b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            running.acks(),
            Vec::<i64>::new(),
            "acknowledged past a job in flight"
        );
        // ...and once it finishes, everything up to the last is acknowledged at once.
        running.processor.release.add_permits(1);
        running.published(4).await;
        while running.acks().is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(running.acks(), [3]);
        running.shutdown.cancel();
        running.task.await.unwrap().unwrap();
        assert_eq!(running.commits.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn one_job_at_a_time_when_concurrency_is_one() {
        let running = Running::start(&[b"slow", b"1"], 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(running.bus.messages("out").is_empty(), "took a second job");
        running.processor.release.add_permits(1);
        assert_eq!(
            running.published(2).await,
            [b"slow".to_vec(), b"1".to_vec()]
        );
        running.shutdown.cancel();
        running.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_waits_for_jobs_in_flight_and_never_commits_past_an_unfinished_one() {
        let running = Running::start(&[b"down", b"slow", b"2"], 4);
        running.published(1).await;
        running.shutdown.cancel();
        // The slow job is still running: the loop waits for it rather than abandon its result.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!running.task.is_finished(), "stopped with a job in flight");
        running.processor.release.add_permits(1);
        let (acks, commits) = (running.acks.clone(), running.commits.clone());
        running.task.await.unwrap().unwrap();
        let out: Vec<Vec<u8>> = running
            .bus
            .messages("out")
            .into_iter()
            .map(|d| d.payload)
            .collect();
        assert_eq!(out, [b"2".to_vec(), b"slow".to_vec()]);
        // Offset 0 was still failing when the loop stopped: nothing may be acknowledged, so all
        // three are redelivered to whoever takes the partition over.
        assert_eq!(*acks.lock().unwrap(), []);
        assert_eq!(commits.load(Ordering::Relaxed), 1);
    }

    /// Logs when each message's processing starts and ends; each takes `work`.
    struct Timeline {
        events: Mutex<Vec<String>>,
        work: Duration,
    }

    #[async_trait]
    impl Processor for Timeline {
        fn name(&self) -> &str {
            "timeline"
        }

        async fn process(&self, batch: &[Delivery]) -> Vec<Outcome> {
            let names: Vec<String> = batch
                .iter()
                .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
                .collect();
            let log = |what: &str| {
                let mut events = self.events.lock().unwrap();
                events.extend(names.iter().map(|name| format!("{what} {name}")));
            };
            log("start");
            tokio::time::sleep(self.work).await;
            log("end");
            batch.iter().map(|_| Ok(Vec::new())).collect()
        }
    }

    #[tokio::test]
    async fn an_upload_overtakes_a_batch_jobs_queue_and_starts_at_once() {
        let bus = MemoryBus::default();
        let publish = |topic: &'static str, payload: &'static str| {
            let bus = bus.clone();
            async move {
                bus.publish(&Publication::json(topic, "k", &payload))
                    .await
                    .unwrap()
            }
        };
        for payload in ["b1", "b2", "b3", "b4"] {
            publish("in.batch", payload).await;
        }
        let processor = Arc::new(Timeline {
            events: Mutex::default(),
            work: Duration::from_millis(60),
        });
        let stats = Arc::new(Stats::default());
        let consumer = ConsumerLoop {
            subscriber: Box::new(bus.subscribe(&["in"])),
            batch_lane: Some(BatchLane {
                subscriber: Box::new(bus.subscribe(&["in.batch"])),
                topics: vec!["in.batch".into()],
            }),
            publisher: Arc::new(bus.clone()),
            processor: processor.clone(),
            intake: Intake {
                max_batch: 1,
                max_delay: Duration::ZERO,
                concurrency: Some(1),
            },
            settings: ConsumerSettings::default(),
            deadletter_topic: "dead".into(),
            stats: stats.clone(),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(consumer.run(shutdown.clone()));
        // The job's first message is being processed when the upload arrives.
        tokio::time::sleep(Duration::from_millis(20)).await;
        publish("in", "upload").await;
        while stats.processed.load(Ordering::Relaxed) < 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shutdown.cancel();
        task.await.unwrap().unwrap();
        let events = processor.events.lock().unwrap().clone();
        let at = |event: &str| events.iter().position(|e| e == event).unwrap();
        // The upload took the reserved slot beside the job's message in flight, and the job's
        // queue waited for both: never two job messages at once.
        assert!(at("start \"upload\"") < at("end \"b1\""), "{events:?}");
        assert!(at("start \"b2\"") > at("end \"b1\""), "{events:?}");
        for pair in ["\"b2\"", "\"b3\"", "\"b4\""].windows(2) {
            assert!(at(&format!("start {}", pair[1])) > at(&format!("end {}", pair[0])));
        }
    }
}
