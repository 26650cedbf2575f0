//! `prism-dedup`: consumes upload events, publishes jobs and deduplicated results.

use prism_dedup::Dedup;
use prism_shared::{config, service, telemetry};
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let settings: config::Settings = config::load()?;
    let backends = service::Backends::connect(&settings).await?;
    let dedup = Dedup::new(settings.clone(), backends.buckets.clone(), backends.index.clone());
    let shutdown = service::shutdown_signal();
    service::serve(&settings, &backends, &settings.topics.uploads, Arc::new(dedup), shutdown).await
}
