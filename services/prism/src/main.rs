//! `prism`: run the whole pipeline in one process over a folder, or any one service.

mod embedded;

use clap::{Parser, Subcommand};
use prism_shared::bus::kafka::{KafkaPublisher, ensure_topics};
use prism_shared::config::{self, Settings};
use prism_shared::contract::StageName;
use prism_shared::store::Buckets;
use prism_shared::watch::Watcher;
use prism_shared::{service, telemetry};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "Prism: an event-driven image pipeline", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Process a folder of images in this process alone: no servers needed.
    Run {
        /// The images (searched recursively).
        input: PathBuf,
        /// Where thumbnails, detections and results.jsonl go.
        #[arg(long, default_value = "prism-output")]
        out: PathBuf,
        /// Stages to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "thumbnail,detect")]
        stages: Vec<StageName>,
    },
    /// Announce new objects of the input bucket as MinIO-format events (for S3 servers without
    /// Kafka notifications).
    Watch {
        /// Pause between listings, in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        /// Announce only objects uploaded after the watcher started.
        #[arg(long)]
        skip_existing: bool,
    },
    /// Run one service against Kafka, S3 and CouchDB (same as its own binary).
    Serve { service: Service },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Service {
    Dedup,
    Thumbnail,
    Detect,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let cli = Cli::parse();
    let settings: Settings = config::load()?;
    let shutdown = service::shutdown_signal();
    match cli.command {
        Command::Run { input, out, stages } => {
            let summary = embedded::run(settings, &input, &out, &stages, shutdown).await?;
            print!("{summary}");
            Ok(())
        }
        Command::Watch {
            interval_ms,
            skip_existing,
        } => {
            ensure_topics(&settings.kafka, &[settings.topics.uploads.as_str()]).await?;
            let publisher = Arc::new(KafkaPublisher::new(&settings.kafka)?);
            let mut watcher = Watcher::new(
                Buckets::s3(&settings.s3),
                &settings.input_bucket,
                publisher,
                &settings.topics.uploads,
            );
            if skip_existing {
                let skipped = watcher.skip_existing().await?;
                tracing::info!(skipped, "skipping objects already in the bucket");
            }
            watcher
                .run(Duration::from_millis(interval_ms), shutdown)
                .await;
            Ok(())
        }
        Command::Serve { service } => match service {
            Service::Dedup => prism_dedup::serve(settings, shutdown).await,
            Service::Thumbnail => prism_thumbnail::serve(settings, shutdown).await,
            Service::Detect => prism_detect::serve(settings, shutdown).await,
        },
    }
}
