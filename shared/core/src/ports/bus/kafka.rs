//! Kafka through rdkafka (bundled librdkafka).
//!
//! Offsets follow vector's recipe: auto-commit stays on but `enable.auto.offset.store` is off, and
//! an offset is stored only when the shared consumer loop acknowledges the message, i.e. after its
//! result or dead letter was published. A crash therefore means redelivery, never loss.

use super::{BusError, Delivery, Position, Publication, Publisher, Subscriber};
use crate::runtime::config::{KafkaSettings, resolve_secret};
use crate::runtime::observe;
use crate::runtime::trace::TRACEPARENT;
use async_trait::async_trait;
use rdkafka::{
    ClientConfig, Message, Offset,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::{ClientContext, DefaultClientContext},
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, KafkaResult, RDKafkaErrorCode},
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
    statistics::Statistics,
    topic_partition_list::TopicPartitionList,
    util::Timeout,
};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

/// How long a publish may wait in librdkafka (broker down included) before it fails and the loop retries.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a fetch waits for data on the broker. Kafka answers as soon as data arrives, so there
/// this only sets how often an idle consumer asks; a broker that holds every fetch for the whole
/// wait (Tansu does) adds it to each hop. librdkafka's 500 ms default made an idle pipeline's three
/// hops cost ~170 ms of a 236 ms median; 25 ms costs an idle consumer 40 small requests a second.
const FETCH_WAIT: Duration = Duration::from_millis(25);

/// How often a group consumer's statistics (each partition's lag, for the metrics) come.
const STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

/// Longest a tailing subscriber waits for each metadata or offset answer at start.
const TAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a consumer error while the broker is away, so the warnings don't flood the log.
const CONSUME_RETRY: Duration = Duration::from_millis(500);

/// Brokers and credentials; Prism's own choices are set by each client, then [`with_overrides`].
fn client_config(settings: &KafkaSettings) -> Result<ClientConfig, BusError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    let password = resolve_secret(
        &settings.sasl_password,
        settings.sasl_password_file.as_deref(),
    )
    .map_err(|error| BusError::Config(format!("cannot read the SASL password file: {error}")))?;
    if !password.is_empty() {
        config.set("sasl.password", password.expose());
    }
    Ok(config)
}

/// librdkafka properties only consumers read: a producer or admin client given one logs a
/// CONFWARN at every start, so [`with_overrides`] keeps them for consumers.
const CONSUMER_ONLY_PROPERTIES: [&str; 12] = [
    "partition.assignment.strategy",
    "group.id",
    "group.instance.id",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "auto.offset.reset",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "fetch.wait.max.ms",
    "isolation.level",
];

/// Which client a configuration is for.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Consumer,
    /// Producers and admin clients.
    Other,
}

/// The operator's `properties` win over Prism's defaults.
fn with_overrides<'a>(
    config: &'a mut ClientConfig,
    settings: &KafkaSettings,
    role: Role,
) -> &'a mut ClientConfig {
    for (key, value) in &settings.properties {
        if role == Role::Consumer || !CONSUMER_ONLY_PROPERTIES.contains(&key.as_str()) {
            config.set(key, value);
        }
    }
    config
}

pub struct KafkaPublisher {
    config: ClientConfig,
    /// Replaced after a fatal error: an idempotent producer that lost its sequence (e.g. a broker
    /// that forgot or reassigned its producer id) refuses every later message until it is recreated.
    producer: RwLock<FutureProducer>,
}

impl KafkaPublisher {
    pub fn new(settings: &KafkaSettings) -> Result<Self, BusError> {
        let mut config = client_config(settings)?;
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                PUBLISH_TIMEOUT.as_millis().to_string(),
            );
        let config = with_overrides(&mut config, settings, Role::Other).clone();
        let producer = RwLock::new(config.create()?);
        Ok(KafkaPublisher { config, producer })
    }

    fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// After a fatal error (or a fence: the broker gave our producer id to another producer),
    /// puts a new producer with a new id in place of `failed`, unless another publish already did.
    fn replace_if_dead(&self, failed: &FutureProducer, error: &BusError) -> Result<(), BusError> {
        let fenced = matches!(
            error,
            BusError::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::ProducerFenced
            ))
        );
        let Some((code, reason)) = failed
            .client()
            .fatal_error()
            .or_else(|| fenced.then(|| (RDKafkaErrorCode::ProducerFenced, error.to_string())))
        else {
            return Ok(());
        };
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if std::ptr::eq(current.client(), failed.client()) {
            tracing::warn!(?code, %reason, "Kafka producer failed for good; starting a new one");
            *current = self.config.create()?;
        }
        Ok(())
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, publication: &Publication) -> Result<(), BusError> {
        let producer = self.producer();
        let mut record = FutureRecord::to(&publication.topic)
            .key(&publication.key)
            .payload(&publication.payload);
        if let Some(traceparent) = &publication.traceparent {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: TRACEPARENT,
                value: Some(traceparent),
            }));
        }
        let sent = producer
            .send(record, Timeout::After(PUBLISH_TIMEOUT))
            .await
            .map(|_| ())
            .map_err(|(error, _)| match error {
                KafkaError::MessageProduction(code) if never_accepted(code) => {
                    BusError::Refused(format!(
                        "{code} (topic {}, {} bytes)",
                        publication.topic,
                        publication.payload.len()
                    ))
                }
                error => BusError::Kafka(error),
            });
        if let Err(error) = &sent {
            // The caller retries; the retry must not meet the same dead producer.
            self.replace_if_dead(&producer, error)?;
        }
        sent
    }
}

/// The trace context a message carries, if its `traceparent` header is readable text.
fn traceparent_of(message: &BorrowedMessage<'_>) -> Option<String> {
    let header = message
        .headers()?
        .iter()
        .find(|header| header.key == TRACEPARENT)?;
    std::str::from_utf8(header.value?).ok().map(str::to_string)
}

/// Produce errors no retry can cure: the message itself, or the topic, is refused.
fn never_accepted(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}

/// Logs what the group coordinator does to this replica: which partitions it gained or lost, and
/// commits that failed. Without it a replica that owns nothing looks the same as an idle one.
struct GroupEvents {
    group: String,
}

impl ClientContext for GroupEvents {
    /// Each partition's lag for the metrics, from librdkafka's statistics (every
    /// `STATISTICS_INTERVAL`).
    fn stats(&self, statistics: Statistics) {
        for (topic, partitions) in &statistics.topics {
            // Partition -1 is librdkafka's internal one for messages not yet assigned a partition.
            for partition in partitions.partitions.values().filter(|p| p.partition >= 0) {
                observe::consumer_lag(&self.group, topic, partition.partition, lag(partition));
            }
        }
    }
}

/// A partition's backlog: end minus last commit; from its start while nothing is committed; 0
/// when this replica does not fetch it (another owns it now).
fn lag(partition: &rdkafka::statistics::Partition) -> i64 {
    let fetching = !matches!(
        partition.fetch_state.as_str(),
        "none" | "stopping" | "stopped"
    );
    match (fetching, partition.consumer_lag) {
        (false, _) => 0,
        (true, lag) if lag >= 0 => lag,
        (true, _) => (partition.hi_offset - partition.lo_offset.max(0)).max(0),
    }
}

impl ConsumerContext for GroupEvents {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let group = &self.group;
        match rebalance {
            Rebalance::Assign(list) => {
                tracing::info!(%group, partitions = %describe(list), "partitions assigned");
                observe::passing(observe::CONSUMER_GROUP);
            }
            Rebalance::Revoke(list) => {
                tracing::info!(%group, partitions = %describe(list), "partitions revoked");
            }
            Rebalance::Error(error) => {
                tracing::warn!(%group, %error, "rebalance failed");
                observe::failing(
                    observe::CONSUMER_GROUP,
                    format!("rebalance failed: {error}"),
                );
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(
                group = %self.group,
                %error,
                offsets = %describe(offsets),
                "offset commit failed; the messages since the last commit may be redelivered"
            ),
        }
    }
}

/// `topic[partition]@offset, ...` (the offset only where one is set).
fn describe(list: &TopicPartitionList) -> String {
    let parts: Vec<String> = list
        .elements()
        .iter()
        .map(|element| match element.offset().to_raw() {
            Some(offset) if offset >= 0 => {
                format!("{}[{}]@{offset}", element.topic(), element.partition())
            }
            _ => format!("{}[{}]", element.topic(), element.partition()),
        })
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

pub struct KafkaSubscriber {
    consumer: StreamConsumer<GroupEvents>,
}

impl KafkaSubscriber {
    /// Joins `group` on `topics`. Replicas with the same group split the partitions between them.
    pub fn new(settings: &KafkaSettings, group: &str, topics: &[&str]) -> Result<Self, BusError> {
        let mut config = client_config(settings)?;
        config
            .set("group.id", group)
            .set(
                "session.timeout.ms",
                settings.session_timeout_ms.to_string(),
            )
            .set(
                "max.poll.interval.ms",
                settings.max_poll_interval_ms.to_string(),
            )
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("fetch.wait.max.ms", FETCH_WAIT.as_millis().to_string())
            .set(
                "statistics.interval.ms",
                STATISTICS_INTERVAL.as_millis().to_string(),
            );
        let consumer: StreamConsumer<GroupEvents> =
            with_overrides(&mut config, settings, Role::Consumer).create_with_context(
                GroupEvents {
                    group: group.to_string(),
                },
            )?;
        consumer.subscribe(topics)?;
        Ok(KafkaSubscriber { consumer })
    }
    /// Follows every partition of `topics` from its end as it is now, joining no consumer group: a
    /// listener that must see every message published from now on rather than share them with
    /// replicas (the gateway), and that can start at once, with no group to join. It commits
    /// nothing. Partitions added to the topics later are not followed. Blocking (metadata and
    /// offset requests).
    pub fn tail(
        settings: &KafkaSettings,
        listener: &str,
        topics: &[&str],
    ) -> Result<Self, BusError> {
        let mut config = client_config(settings)?;
        // librdkafka assigns partitions only to a consumer with a group id; this one is never
        // joined (no subscribe) and nothing is committed under it.
        let group = format!(
            "{}-{listener}-{}",
            settings.group_prefix,
            uuid::Uuid::new_v4().simple()
        );
        config
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", FETCH_WAIT.as_millis().to_string());
        let consumer: StreamConsumer<GroupEvents> =
            with_overrides(&mut config, settings, Role::Consumer)
                .create_with_context(GroupEvents { group })?;
        let mut ends = TopicPartitionList::new();
        for &topic in topics {
            let metadata = consumer.fetch_metadata(Some(topic), TAIL_TIMEOUT)?;
            for found in metadata.topics() {
                for partition in found.partitions() {
                    // The end as a number, not `Offset::End`: resolved later, that could skip
                    // what is published between now and the first fetch.
                    let (_, end) =
                        consumer.fetch_watermarks(topic, partition.id(), TAIL_TIMEOUT)?;
                    ends.add_partition_offset(topic, partition.id(), Offset::Offset(end))?;
                }
            }
        }
        consumer.assign(&ends)?;
        Ok(KafkaSubscriber { consumer })
    }
}

#[async_trait]
impl Subscriber for KafkaSubscriber {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let message = loop {
            match self.consumer.recv().await {
                Ok(message) => break message,
                // The broker is unreachable or restarting: librdkafka reconnects by itself.
                Err(KafkaError::MessageConsumption(code)) => {
                    tracing::warn!(
                        ?code,
                        "cannot consume for now; librdkafka keeps reconnecting"
                    );
                    tokio::time::sleep(CONSUME_RETRY).await;
                }
                Err(error) => return Err(error.into()),
            }
        };
        Ok(Delivery {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            traceparent: traceparent_of(&message),
        })
    }

    fn ack(&mut self, position: &Position) -> Result<(), BusError> {
        match self
            .consumer
            .store_offset(&position.topic, position.partition, position.offset)
        {
            // The partition moved to another replica mid-batch: it will redeliver, nothing is lost.
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                tracing::warn!(
                    topic = %position.topic,
                    partition = position.partition,
                    offset = position.offset,
                    "partition was revoked before its offset could be stored; it will be redelivered"
                );
                Ok(())
            }
            other => other.map_err(BusError::from),
        }
    }

    async fn commit(&mut self) -> Result<(), BusError> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            other => other.map_err(BusError::from),
        }
    }
}

/// Creates any of `topics` that do not exist yet, so consumers never wait on auto-creation.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[impl AsRef<str>],
) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> =
        with_overrides(&mut client_config(settings)?, settings, Role::Other).create()?;
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|topic| {
            NewTopic::new(
                topic.as_ref(),
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::Kafka(KafkaError::AdminOp(code))).inspect_err(|_| {
                    tracing::error!(%topic, ?code, "could not create topic");
                });
            }
        }
    }
    Ok(())
}

/// How far a consumer group is behind on one partition.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset; None before its first commit.
    pub committed: Option<i64>,
    /// The partition's end (the offset the next message will get).
    pub end: i64,
    /// Messages not yet handled (from the start of the partition when nothing is committed).
    pub lag: i64,
}

/// One member of a consumer group, as the coordinator describes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupMember {
    pub id: String,
    pub client_id: String,
    pub host: String,
}

/// A consumer group's lag per partition of `topics`, and its members (or why the broker did not
/// describe them). Blocking: call it off the async runtime.
#[allow(clippy::type_complexity)] // a pair of plain results, named by the doc
pub fn group_lag(
    settings: &KafkaSettings,
    group: &str,
    topics: &[&str],
    timeout: Duration,
) -> Result<(Vec<PartitionLag>, Result<Vec<GroupMember>, String>), BusError> {
    // A consumer of the group that never subscribes: it reads the group's offsets without
    // joining it, so the workers' assignment is left alone.
    let mut config = client_config(settings)?;
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = with_overrides(&mut config, settings, Role::Consumer).create()?;
    let mut wanted = TopicPartitionList::new();
    let mut ends = Vec::new();
    for &topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        for found in metadata.topics() {
            for partition in found.partitions() {
                let (low, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
                wanted.add_partition(topic, partition.id());
                ends.push((topic.to_string(), partition.id(), low, high));
            }
        }
    }
    let committed = consumer.committed_offsets(wanted, timeout)?;
    let lags = ends
        .into_iter()
        .map(|(topic, partition, low, end)| {
            let offset = committed
                .find_partition(&topic, partition)
                .and_then(|element| element.offset().to_raw())
                .filter(|&offset| offset >= 0);
            PartitionLag {
                lag: (end - offset.unwrap_or(low)).max(0),
                topic,
                partition,
                committed: offset,
                end,
            }
        })
        .collect();
    let members = match consumer.fetch_group_list(Some(group), timeout) {
        Ok(list) => match list.groups().iter().find(|g| g.name() == group) {
            Some(found) => Ok(found
                .members()
                .iter()
                .map(|member| GroupMember {
                    id: member.id().to_string(),
                    client_id: member.client_id().to_string(),
                    host: member.client_host().to_string(),
                })
                .collect()),
            None => Err(format!("the broker does not describe group {group}")),
        },
        Err(error) => Err(format!("describing group {group}: {error}")),
    };
    Ok((lags, members))
}
