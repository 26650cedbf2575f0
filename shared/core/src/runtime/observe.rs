//! What an operator watches: Prometheus metrics (`/metrics`), liveness (`/healthz`) and readiness
//! (`/readyz`), served on `observe.listen` by every service. Metrics are recorded where things
//! happen (the consumer loop, claims, the Kafka consumer) through the functions below, so their
//! names and labels live in this one module (the README has the table). Without [`serve`] no
//! recorder is installed and recording costs nothing (`prism run`, unit tests).

use crate::contract::StageName;
use crate::ports::bus::{Publication, Published};
use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const MESSAGES: &str = "prism_messages_total";
const RESULTS: &str = "prism_results_total";
const DEAD_LETTERS: &str = "prism_dead_letters_total";
const RETRIES: &str = "prism_retries_total";
const CLAIM_CONFLICTS: &str = "prism_claim_conflicts_total";
const PROCESSING: &str = "prism_processing_seconds";
const LATENCY: &str = "prism_latency_seconds";
const BATCH_SIZE: &str = "prism_batch_size";
const BATCHES_IN_FLIGHT: &str = "prism_batches_in_flight";
const CONSUMER_LAG: &str = "prism_consumer_lag";
const ANNOUNCED: &str = "prism_announced_total";

/// From a cache hit's few milliseconds to a large photo's detection under load.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// How often histograms are folded into their buckets even when nobody scrapes, so the samples
/// waiting for it stay few.
const UPKEEP: Duration = Duration::from_secs(5);

/// The process's recorder, installed on first use.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|builder| {
                builder.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)
            })
            .expect("bucket lists are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe();
        handle
    })
}

fn describe() {
    describe_counter!(
        MESSAGES,
        "Messages the service finished (processed and published, or dead-lettered)"
    );
    describe_counter!(
        RESULTS,
        "Stage results published, copies (deduplicated) included"
    );
    describe_counter!(DEAD_LETTERS, "Dead letters published, by error code");
    describe_counter!(
        RETRIES,
        "Messages retried after a transient failure (a server away), and publications retried"
    );
    describe_counter!(
        CLAIM_CONFLICTS,
        "Claim updates that lost a race with another writer and were read again"
    );
    describe_histogram!(
        PROCESSING,
        Unit::Seconds,
        "The stage's own time for a result that did the work (not a copy)"
    );
    describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "From dedup's receipt of the upload to its result"
    );
    describe_histogram!(
        BATCH_SIZE,
        "Messages per batch handed to the service's processing"
    );
    describe_counter!(
        ANNOUNCED,
        "Upload events published for objects the S3 server did not announce (watch), or whose \
         announcement was lost (reconcile)"
    );
    describe_gauge!(BATCHES_IN_FLIGHT, "Batches being processed now");
    describe_gauge!(
        CONSUMER_LAG,
        "Messages behind the end of each partition this replica consumes (0 once it no longer owns it)"
    );
}

/// A message the consumer loop finished.
pub fn message_finished(service: &str) {
    counter!(MESSAGES, "service" => service.to_owned()).increment(1);
}

/// A publication that reached the bus.
pub fn published(publication: &Publication) {
    match &publication.kind {
        Published::Message => {}
        Published::Result {
            stage,
            deduplicated,
            processing_ms,
            latency_ms,
        } => {
            let stage = stage.as_str();
            counter!(RESULTS, "stage" => stage, "deduplicated" => deduplicated.to_string())
                .increment(1);
            if !deduplicated {
                histogram!(PROCESSING, "stage" => stage).record(*processing_ms as f64 / 1e3);
            }
            histogram!(LATENCY, "stage" => stage).record(*latency_ms as f64 / 1e3);
        }
        Published::DeadLetter { service, code } => {
            counter!(DEAD_LETTERS, "service" => service.clone(), "code" => code.clone())
                .increment(1);
        }
    }
}

pub fn announced(by: &'static str, objects: usize) {
    counter!(ANNOUNCED, "by" => by).increment(objects as u64);
}

pub fn retried(service: &str, messages: usize) {
    counter!(RETRIES, "service" => service.to_owned()).increment(messages as u64);
}

pub fn claim_conflict(stage: StageName) {
    counter!(CLAIM_CONFLICTS, "stage" => stage.as_str()).increment(1);
}

pub fn batch_dispatched(service: &str, messages: usize) {
    histogram!(BATCH_SIZE, "service" => service.to_owned()).record(messages as f64);
}

pub fn batches_in_flight(service: &str, batches: usize) {
    gauge!(BATCHES_IN_FLIGHT, "service" => service.to_owned()).set(batches as f64);
}

pub fn consumer_lag(group: &str, topic: &str, partition: i32, lag: i64) {
    gauge!(
        CONSUMER_LAG,
        "group" => group.to_owned(),
        "topic" => topic.to_owned(),
        "partition" => partition.to_string()
    )
    .set(lag.max(0) as f64);
}

/// The servers the service needs (Kafka, S3, CouchDB) answer, as far as its last work showed.
pub const SERVERS: &str = "servers";
/// The Kafka consumer has joined its group (an assignment came, perhaps empty).
pub const CONSUMER_GROUP: &str = "consumer group";

/// Readiness: named checks, each passing or failing with a reason.
#[derive(Debug, Default)]
struct Readiness(Mutex<BTreeMap<&'static str, Option<String>>>);

impl Readiness {
    fn set(&self, check: &'static str, failing: Option<String>) {
        self.0
            .lock()
            .expect("readiness lock")
            .insert(check, failing);
    }

    /// `Ok` when every check passes, else each failing check with its reason.
    fn report(&self) -> Result<String, String> {
        let checks = self.0.lock().expect("readiness lock");
        let failing: Vec<String> = checks
            .iter()
            .filter_map(|(check, reason)| Some(format!("{check}: {}", reason.as_ref()?)))
            .collect();
        if failing.is_empty() {
            let passed: Vec<&str> = checks.keys().copied().collect();
            Ok(format!("ready ({})\n", passed.join(", ")))
        } else {
            Err(format!("not ready\n{}\n", failing.join("\n")))
        }
    }
}

/// The process's readiness (one service per process).
fn readiness() -> &'static Readiness {
    static READINESS: OnceLock<Readiness> = OnceLock::new();
    READINESS.get_or_init(Readiness::default)
}

pub fn passing(check: &'static str) {
    readiness().set(check, None);
}

pub fn failing(check: &'static str, reason: impl Into<String>) {
    readiness().set(check, Some(reason.into()));
}

/// `/metrics`, `/healthz` (the process answers) and `/readyz` (503 with the failing checks).
pub fn routes() -> Router {
    Router::new()
        .route("/metrics", get(|| async { recorder().render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|| async {
                match readiness().report() {
                    Ok(ready) => (StatusCode::OK, ready),
                    Err(failing) => (StatusCode::SERVICE_UNAVAILABLE, failing),
                }
            }),
        )
}

/// Installs the recorder and serves [`routes`] on `listen` until `shutdown`; returns the address
/// (port 0 picks one). Registers `checks` as failing until their first pass.
pub async fn serve(
    listen: &str,
    checks: &[&'static str],
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    for check in checks {
        failing(check, "not yet");
    }
    let handle = recorder();
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!(
            "cannot listen on {listen} for /metrics (observe.listen; services sharing a host each \
             need their own port, e.g. PRISM_OBSERVE__LISTEN=127.0.0.1:0)"
        )
    })?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, routes())
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the metrics endpoint failed");
        }
    });
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut upkeep = tokio::time::interval(UPKEEP);
        while stop.run_until_cancelled(upkeep.tick()).await.is_some() {
            handle.run_upkeep();
        }
    });
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lists_what_fails_until_it_recovers() {
        let readiness = Readiness::default();
        readiness.set(SERVERS, None);
        readiness.set(CONSUMER_GROUP, Some("not yet".into()));
        assert_eq!(
            readiness.report(),
            Err("not ready\nconsumer group: not yet\n".into())
        );
        readiness.set(CONSUMER_GROUP, None);
        assert_eq!(
            readiness.report(),
            Ok("ready (consumer group, servers)\n".into())
        );
        readiness.set(SERVERS, Some("couchdb_unreachable".into()));
        assert_eq!(
            readiness.report(),
            Err("not ready\nservers: couchdb_unreachable\n".into())
        );
    }
}
