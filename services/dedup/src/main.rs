//! `prism-dedup`: consumes upload events, publishes jobs and deduplicated results.

use prism_core::runtime::{config, service, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init();
    prism_dedup::serve(config::load()?, service::shutdown_signal()).await
}
