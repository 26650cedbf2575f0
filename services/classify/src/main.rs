//! `prism-classify`: says what images show for jobs on `prism.jobs.classify`.

use prism_core::runtime::{config, service, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init();
    prism_classify::serve(config::load()?, service::shutdown_signal()).await
}
