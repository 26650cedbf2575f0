//! The outcomes the gateway hears: every stage result and dead letter, passed to whoever waits
//! for them in this replica (live streams, /predict) and to the statistics.

use crate::stats::Stats;
use chrono::Utc;
use prism_core::contract::{DeadLetter, SourceObject, StageResult};
use prism_core::ports::bus::Subscriber;
use prism_core::runtime::config::Topics;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Outcomes kept for a listener that fell behind; one that falls further misses some (a live
/// page then finds them by reloading, /predict by its look-up at the deadline).
const BACKLOG: usize = 4096;

#[derive(Debug, Clone)]
pub enum Outcome {
    Result(Box<StageResult>),
    DeadLetter(Box<DeadLetter>),
}

impl Outcome {
    /// The upload this outcome is about, when known.
    pub fn source(&self) -> Option<&SourceObject> {
        match self {
            Outcome::Result(result) => Some(&result.source),
            Outcome::DeadLetter(letter) => letter.source.as_ref(),
        }
    }

    /// Whether this outcome is about the object `bucket/key`.
    pub fn is_about(&self, bucket: &str, key: &str) -> bool {
        self.source()
            .is_some_and(|source| source.bucket == bucket && source.key == key)
    }
}

#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Arc<Outcome>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            sender: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Hub {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Outcome>> {
        self.sender.subscribe()
    }

    /// Reads the result and dead-letter topics until `shutdown`, handing each outcome on.
    pub async fn listen(
        self,
        mut subscriber: Box<dyn Subscriber>,
        topics: Topics,
        stats: Arc<Mutex<Stats>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                delivery = subscriber.next() => delivery?,
            };
            let outcome = if delivery.topic == topics.deadletter {
                serde_json::from_slice(&delivery.payload).map(|l| Outcome::DeadLetter(Box::new(l)))
            } else {
                serde_json::from_slice(&delivery.payload).map(|r| Outcome::Result(Box::new(r)))
            };
            match outcome {
                Ok(outcome) => {
                    stats
                        .lock()
                        .expect("stats lock")
                        .record(&outcome, Utc::now());
                    // No receiver is fine: nobody is waiting.
                    let _ = self.sender.send(Arc::new(outcome));
                }
                Err(error) => tracing::warn!(
                    topic = %delivery.topic,
                    offset = delivery.offset,
                    %error,
                    "ignoring a message that is not a result or dead letter"
                ),
            }
        }
    }
}
