//! `prism-thumbnail`: renders thumbnails for jobs on `prism.jobs.thumbnail`.

use prism_core::runtime::{config, service, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init();
    prism_thumbnail::serve(config::load()?, service::shutdown_signal()).await
}
