//! The ports a service works with, connected to real servers (or in-process ones for the embedded
//! mode and tests).

use crate::contract::Classify;
use crate::ports::batch::JobBook;
use crate::ports::bus::Publisher;
use crate::ports::bus::kafka::{KafkaPublisher, ensure_topics};
use crate::ports::claims::ClaimIndex;
use crate::ports::claims::couch::CouchIndex;
use crate::ports::store::Buckets;
use crate::runtime::config::Settings;
use crate::runtime::consumer::MISCONFIGURED;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The ports, connected to real servers (or in-process ones for the embedded mode).
#[derive(Clone)]
pub struct Backends {
    pub publisher: Arc<dyn Publisher>,
    pub buckets: Buckets,
    pub index: Arc<dyn ClaimIndex>,
    /// Batch jobs (kept beside the claims).
    pub book: Arc<dyn JobBook>,
}

impl Backends {
    /// Kafka, S3 and CouchDB as configured; creates the topics and the database if missing. A
    /// server that is not up yet is waited for (logged), so the order services and servers start
    /// in does not matter; only `shutdown` ends the wait.
    pub async fn connect(
        settings: &Settings,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let kafka = format!("Kafka at {}", settings.kafka.brokers);
        until_ready(&kafka, shutdown, || async {
            ensure_topics(&settings.kafka, &settings.topics.all()).await
        })
        .await?;
        let couchdb = format!("CouchDB at {}", settings.couchdb.url);
        let index = until_ready(&couchdb, shutdown, || {
            CouchIndex::connect(&settings.couchdb)
        })
        .await?;
        let index = Arc::new(index);
        Ok(Backends {
            publisher: Arc::new(KafkaPublisher::new(&settings.kafka)?),
            buckets: Buckets::s3(&settings.s3),
            index: index.clone(),
            book: index,
        })
    }

    /// Creates `bucket` unless it exists, waiting for the store like [`Backends::connect`].
    pub async fn create_bucket(
        &self,
        bucket: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let what = format!("bucket {bucket}");
        until_ready(&what, shutdown, || self.buckets.create_bucket(bucket)).await
    }
}

/// First and longest pause between two tries to reach a server at start.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const LONGEST_PAUSE: Duration = Duration::from_secs(10);

/// Tries `attempt` until it succeeds or `shutdown`. Each failure is logged: a server that refuses
/// Prism (credentials, a missing bucket) at error level, since only an operator can end it.
async fn until_ready<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> anyhow::Result<T>
where
    E: Classify + Send + Sync + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pause = FIRST_PAUSE;
    loop {
        let error = match attempt().await {
            Ok(ready) => return Ok(ready),
            Err(error) if !error.is_transient() => {
                return Err(anyhow::Error::new(error).context(format!("cannot use {what}")));
            }
            Err(error) => error,
        };
        if error.code().ends_with(MISCONFIGURED) {
            tracing::error!(%error, "{what} refuses Prism's requests; waiting for a fix");
        } else {
            tracing::warn!(%error, "{what} is not reachable yet; waiting for it");
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("stopped while waiting for {what}"),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}
