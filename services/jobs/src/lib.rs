//! Batch jobs: "run these stages over every object under this prefix", on the running pipeline.
//!
//! - [`manager`] — the service (`prism serve jobs`): lists each job's prefix into the batch lane
//!   a window at a time, and writes the manifest and summary when the last outcome is in.
//! - [`tally`] — counts every result and dead letter of a job's object, exactly once.
//! - [`report`] — the manifest's lines and the summary's figures (pure).
//! - [`requests`] — what `prism job` and the gateway ask: submit, status, list, cancel.
//!
//! A job's objects travel through dedup and the stages like uploads, on topics of their own (the
//! batch lane, see [`prism_core::runtime::config::Lane`]) that workers serve after uploads, so a
//! big job never makes an upload wait behind it.

pub mod manager;
pub mod report;
pub mod requests;
pub mod tally;

use prism_core::runtime::config::Settings;
use prism_core::runtime::{observe, service};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs the job manager until `shutdown`: the counting consumer and the job rounds side by side.
pub async fn serve(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let backends =
        service::observe_and_connect(&settings, &[observe::CONSUMER_GROUP], &shutdown).await?;
    backends
        .create_bucket(&settings.output_bucket, &shutdown)
        .await?;
    let manager = manager::Manager::new(
        settings.clone(),
        backends.book.clone(),
        backends.buckets.clone(),
        backends.publisher.clone(),
    );
    let rounds = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { manager.run(shutdown).await })
    };
    let topics = &settings.topics;
    let counted: Vec<String> = prism_core::contract::StageName::ALL
        .iter()
        .map(|&stage| topics.results(stage).to_string())
        .chain([topics.deadletter.clone()])
        .collect();
    let tally = Arc::new(tally::Tally::new(backends.book.clone(), topics.clone()));
    let intake = &settings.intake.jobs;
    let counting = service::serve(
        &settings, &backends, &counted, false, tally, intake, shutdown,
    )
    .await;
    rounds.await?;
    counting
}
