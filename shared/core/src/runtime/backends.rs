//! The ports a service works with, connected to real servers (or in-process ones for the embedded
//! mode and tests).

use crate::ports::bus::Publisher;
use crate::ports::bus::kafka::{KafkaPublisher, ensure_topics};
use crate::ports::claims::ClaimIndex;
use crate::ports::claims::couch::CouchIndex;
use crate::ports::store::Buckets;
use crate::runtime::config::Settings;
use anyhow::Context;
use std::sync::Arc;

/// The ports, connected to real servers (or in-process ones for the embedded mode).
#[derive(Clone)]
pub struct Backends {
    pub publisher: Arc<dyn Publisher>,
    pub buckets: Buckets,
    pub index: Arc<dyn ClaimIndex>,
}

impl Backends {
    /// Kafka, S3 and CouchDB as configured; creates the topics and the database if missing.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        ensure_topics(&settings.kafka, &settings.topics.all())
            .await
            .with_context(|| format!("cannot reach Kafka at {}", settings.kafka.brokers))?;
        let index = CouchIndex::connect(&settings.couchdb)
            .await
            .with_context(|| format!("cannot reach CouchDB at {}", settings.couchdb.url))?;
        Ok(Backends {
            publisher: Arc::new(KafkaPublisher::new(&settings.kafka)?),
            buckets: Buckets::s3(&settings.s3),
            index: Arc::new(index),
        })
    }
}
