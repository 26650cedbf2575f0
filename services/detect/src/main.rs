//! `prism-detect`: finds objects in images for jobs on `prism.jobs.detect`.

use prism_core::runtime::{config, service, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init();
    prism_detect::serve(config::load()?, service::shutdown_signal()).await
}
