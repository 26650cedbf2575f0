//! Wiring shared by every service binary: connect the real backends, subscribe, run the consumer
//! loop until SIGTERM or Ctrl-C.

use crate::ports::bus::kafka::KafkaSubscriber;
use crate::runtime::backends::Backends;
use crate::runtime::config::{Intake, Lane, Settings};
use crate::runtime::consumer::{BatchLane, ConsumerLoop, Processor, Stats};
use crate::runtime::observe;
use crate::runtime::worker::{Stage, StageWorker};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Cancelled on SIGTERM (Docker, Kubernetes) or SIGINT (Ctrl-C).
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down: finishing the current batch");
        cancel.cancel();
    });
    token
}

/// Serves `/metrics`, `/healthz` and `/readyz` (see [`observe`]), then connects the real backends:
/// readiness waits for them and for `checks`.
pub async fn observe_and_connect(
    settings: &Settings,
    checks: &[&'static str],
    shutdown: &CancellationToken,
) -> anyhow::Result<Backends> {
    let checks: Vec<&'static str> = [observe::SERVERS].iter().chain(checks).copied().collect();
    observe::serve(&settings.observe.listen, &checks, shutdown).await?;
    let backends = Backends::connect(settings, shutdown).await?;
    observe::passing(observe::SERVERS);
    Ok(backends)
}

/// Runs `processor` on `topics` in consumer group `prism-<service>` until shutdown, taking work as
/// `intake` says. With `batch_lane`, the batch jobs' copy of each topic ([`Lane::Batch`]) is read
/// too, in group `prism-<service>-batch`, at lower priority (see [`BatchLane`]).
pub async fn serve(
    settings: &Settings,
    backends: &Backends,
    topics: &[String],
    batch_lane: bool,
    processor: Arc<dyn Processor>,
    intake: &Intake,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let group = format!("{}-{}", settings.kafka.group_prefix, processor.name());
    let subscribe = |group: &str, topics: &[String]| {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        KafkaSubscriber::new(&settings.kafka, group, &names)
    };
    let subscriber = subscribe(&group, topics)?;
    let batch_lane = match batch_lane {
        true => {
            let topics: Vec<String> = topics.iter().map(|t| Lane::Batch.topic(t)).collect();
            let subscriber = subscribe(&format!("{group}-batch"), &topics)?;
            Some(BatchLane {
                subscriber: Box::new(subscriber),
                topics,
            })
        }
        false => None,
    };
    tracing::info!(
        service = processor.name(),
        ?topics,
        %group,
        batch_lane = batch_lane.is_some(),
        max_batch = intake.max_batch,
        concurrency = intake.concurrency(),
        "consuming"
    );
    ConsumerLoop {
        subscriber: Box::new(subscriber),
        batch_lane,
        publisher: backends.publisher.clone(),
        processor,
        intake: intake.clone(),
        settings: settings.consumer.clone(),
        deadletter_topic: settings.topics.deadletter.clone(),
        stats: Arc::new(Stats::default()),
    }
    .run(shutdown)
    .await?;
    Ok(())
}

/// Runs a stage's worker on the stage's jobs topic until shutdown.
pub async fn serve_stage<S: Stage>(
    settings: &Settings,
    stage: S,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let backends = observe_and_connect(settings, &[observe::CONSUMER_GROUP], &shutdown).await?;
    // The stages own the output bucket, as the services own their topics.
    backends
        .create_bucket(&settings.output_bucket, &shutdown)
        .await?;
    let topics = [settings.topics.jobs(stage.name()).to_string()];
    let intake = settings.intake.stage(stage.name()).clone();
    let worker = Arc::new(StageWorker::over(stage, settings, &backends));
    serve(
        settings, &backends, &topics, true, worker, &intake, shutdown,
    )
    .await
}
