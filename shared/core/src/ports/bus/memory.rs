//! An in-process bus: each topic is an append-only log, each subscriber a cursor over it.
//!
//! Used by the embedded mode (one process, no servers) and by tests. Logs live as long as the bus,
//! which suits a bounded run over a folder; it is not meant for unbounded streams.

use super::{BusError, Delivery, Position, Publication, Publisher, Subscriber};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Clone)]
pub struct MemoryBus {
    logs: Arc<Mutex<HashMap<String, Vec<Delivery>>>>,
    /// Bumped on every publish so idle subscribers wake up.
    published: Arc<watch::Sender<u64>>,
    /// Larger messages are refused, as a broker refuses messages over its limit.
    max_message_bytes: usize,
}

/// Kafka's default message limit (`message.max.bytes`), about 1 MB.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::with_max_message_bytes(DEFAULT_MAX_MESSAGE_BYTES)
    }
}

impl MemoryBus {
    /// A bus that refuses messages over `max_message_bytes`.
    pub fn with_max_message_bytes(max_message_bytes: usize) -> Self {
        MemoryBus {
            logs: Default::default(),
            published: Arc::new(watch::channel(0).0),
            max_message_bytes,
        }
    }

    /// A subscriber reading `topics` from their beginning.
    pub fn subscribe(&self, topics: &[&str]) -> MemorySubscriber {
        MemorySubscriber {
            bus: self.clone(),
            cursors: topics.iter().map(|topic| (topic.to_string(), 0)).collect(),
            changes: self.published.subscribe(),
        }
    }

    /// Every message on `topic` so far.
    pub fn messages(&self, topic: &str) -> Vec<Delivery> {
        self.logs
            .lock()
            .expect("bus lock")
            .get(topic)
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl Publisher for MemoryBus {
    async fn publish(&self, publication: &Publication) -> Result<(), BusError> {
        if publication.payload.len() > self.max_message_bytes {
            return Err(BusError::Refused(format!(
                "message of {} bytes over the limit of {}",
                publication.payload.len(),
                self.max_message_bytes
            )));
        }
        {
            let mut logs = self.logs.lock().expect("bus lock");
            let log = logs.entry(publication.topic.clone()).or_default();
            log.push(Delivery {
                topic: publication.topic.clone(),
                partition: 0,
                offset: log.len() as i64,
                key: Some(publication.key.clone().into_bytes()),
                payload: publication.payload.clone(),
                traceparent: publication.traceparent.clone(),
            });
        }
        self.published.send_modify(|count| *count += 1);
        Ok(())
    }
}

pub struct MemorySubscriber {
    bus: MemoryBus,
    cursors: Vec<(String, usize)>,
    changes: watch::Receiver<u64>,
}

impl MemorySubscriber {
    fn take_next(&mut self) -> Option<Delivery> {
        let logs = self.bus.logs.lock().expect("bus lock");
        for (topic, cursor) in &mut self.cursors {
            if let Some(delivery) = logs.get(topic.as_str()).and_then(|log| log.get(*cursor)) {
                *cursor += 1;
                return Some(delivery.clone());
            }
        }
        None
    }
}

#[async_trait]
impl Subscriber for MemorySubscriber {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            // Mark the current version seen before looking, so a publish in between wakes us.
            self.changes.borrow_and_update();
            if let Some(delivery) = self.take_next() {
                return Ok(delivery);
            }
            self.changes.changed().await.map_err(|_| BusError::Closed)?;
        }
    }

    fn ack(&mut self, _position: &Position) -> Result<(), BusError> {
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), BusError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn subscribers_see_every_message_in_order_and_wait_for_more() {
        let bus = MemoryBus::default();
        let publish = |topic: &str, n: u8| {
            let bus = bus.clone();
            let publication = Publication {
                topic: topic.into(),
                key: format!("k{n}"),
                payload: vec![n],
                kind: Default::default(),
                traceparent: None,
            };
            async move { bus.publish(&publication).await.unwrap() }
        };
        publish("a", 1).await;
        publish("b", 2).await;
        let mut both = bus.subscribe(&["a", "b"]);
        let mut only_b = bus.subscribe(&["b"]);
        assert_eq!(both.next().await.unwrap().payload, [1]);
        assert_eq!(both.next().await.unwrap().payload, [2]);
        assert_eq!(only_b.next().await.unwrap().payload, [2]);

        let waiting = tokio::spawn(async move { both.next().await.unwrap().payload });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        publish("a", 3).await;
        assert_eq!(waiting.await.unwrap(), [3]);
        assert_eq!(bus.messages("a").len(), 2);
    }
}
