//! The message bus port: publish and subscribe, with explicit acknowledgement.
//!
//! Kafka ([`kafka`]) is the real adapter; [`memory`] is the in-process one for the embedded mode
//! and fast tests. Both give at-least-once delivery: a message that was not acknowledged before a
//! crash is delivered again.

pub mod kafka;
pub mod memory;

use crate::contract::{Classify, StageName, StageResult};
use async_trait::async_trait;

/// A message taken from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The W3C trace context of the upload this message is about (its `traceparent` header).
    pub traceparent: Option<String>,
}

impl Delivery {
    pub fn position(&self) -> Position {
        Position {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// Where a message sits: what an acknowledgement names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A message to put on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub topic: String,
    /// Kafka key: the content hash, so every message about one content lands on one partition.
    pub key: String,
    pub payload: Vec<u8>,
    /// What it is, for the metrics recorded once it is out (not sent).
    pub kind: Published,
    /// Sent as the `traceparent` header. The consumer loop fills it in for what a message
    /// produced (a child of that message's trace); producers of new uploads start a trace.
    pub traceparent: Option<String>,
}

/// What a publication is, as far as the metrics care.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Published {
    #[default]
    Message,
    Result {
        stage: StageName,
        deduplicated: bool,
        processing_ms: u64,
        /// From dedup's receipt of the upload to the result.
        latency_ms: i64,
    },
    DeadLetter {
        service: String,
        code: String,
    },
}

impl Publication {
    pub fn json<T: serde::Serialize>(topic: &str, key: &str, message: &T) -> Self {
        Publication {
            topic: topic.to_string(),
            key: key.to_string(),
            payload: serde_json::to_vec(message).expect("contract types always serialise"),
            kind: Published::Message,
            traceparent: None,
        }
    }

    /// A stage's result, keyed by its content hash.
    pub fn result(topic: &str, result: &StageResult) -> Self {
        let timings = &result.timings;
        Publication {
            kind: Published::Result {
                stage: result.stage,
                deduplicated: result.deduplicated,
                processing_ms: timings.processing_ms,
                latency_ms: (timings.finished_at - timings.received_at).num_milliseconds(),
            },
            ..Publication::json(topic, &result.content_hash, result)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("message bus: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("message bus configuration: {0}")]
    Config(String),
    #[error("message bus closed")]
    Closed,
    /// The bus will never take this message (too large, no such topic, not authorised): retrying
    /// would hold up every later message of its partition for good.
    #[error("the message bus refused the message for good: {0}")]
    Refused(String),
}

impl Classify for BusError {
    fn is_transient(&self) -> bool {
        matches!(self, BusError::Kafka(_))
    }

    fn code(&self) -> &'static str {
        match self {
            BusError::Kafka(_) => "bus_unavailable",
            BusError::Config(_) => "bus_misconfigured",
            BusError::Closed => "bus_closed",
            BusError::Refused(_) => "publish_refused",
        }
    }
}

#[async_trait]
pub trait Publisher: Send + Sync {
    /// Returns once the bus has stored the message (Kafka: acknowledged by the leader).
    async fn publish(&self, publication: &Publication) -> Result<(), BusError>;
}

#[async_trait]
pub trait Subscriber: Send + Sync {
    /// The next message. Cancel-safe: a dropped call loses no message.
    async fn next(&mut self) -> Result<Delivery, BusError>;
    /// Marks the message at `position`, and every earlier one of its partition, handled, so the
    /// offset may be committed.
    fn ack(&mut self, position: &Position) -> Result<(), BusError>;
    /// Commits acknowledged offsets now (at shutdown).
    async fn commit(&mut self) -> Result<(), BusError>;
}
