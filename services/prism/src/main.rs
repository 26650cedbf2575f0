//! `prism`: run the whole pipeline in one process over a folder, or any one service.

mod embedded;

use clap::{Parser, Subcommand};
use prism_shared::bus::Publisher;
use prism_shared::bus::kafka::{KafkaPublisher, ensure_topics};
use prism_shared::claims::couch::CouchIndex;
use prism_shared::config::{self, Settings};
use prism_shared::contract::StageName;
use prism_shared::store::Buckets;
use prism_shared::watch::Watcher;
use prism_shared::{reconcile, service, telemetry};
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
    /// Re-announce uploads of the input bucket that dedup never handled (their notification was
    /// lost): lists the bucket, checks each object against dedup's ledger in CouchDB, and publishes
    /// a MinIO-format event for each one missing. Uploads that have their results are left alone.
    Reconcile {
        /// Print the missing uploads without publishing anything.
        #[arg(long)]
        dry_run: bool,
        /// Leave objects changed within this many seconds alone: their own notification may still
        /// be on its way.
        #[arg(long, default_value_t = 60)]
        min_age_secs: u64,
        /// Keep running and reconcile every this many seconds (a sidecar next to the services);
        /// a failed round is logged and tried again at the next one. Without it: one round.
        #[arg(long)]
        every_secs: Option<u64>,
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
        Command::Reconcile {
            dry_run,
            min_age_secs,
            every_secs,
        } => {
            let index = CouchIndex::connect(&settings.couchdb).await?;
            let publisher = if dry_run {
                None
            } else {
                ensure_topics(&settings.kafka, &[settings.topics.uploads.as_str()]).await?;
                Some(KafkaPublisher::new(&settings.kafka)?)
            };
            let buckets = Buckets::s3(&settings.s3);
            let min_age = Duration::from_secs(min_age_secs);
            let round = || async {
                let report = reconcile::reconcile(
                    &buckets,
                    &settings.input_bucket,
                    &index,
                    publisher.as_ref().map(|p| p as &dyn Publisher),
                    &settings.topics.uploads,
                    min_age,
                )
                .await?;
                print_reconcile_report(&report, dry_run, min_age_secs);
                anyhow::Ok(())
            };
            let Some(every_secs) = every_secs else {
                return round().await;
            };
            while !shutdown.is_cancelled() {
                if let Err(error) = round().await {
                    tracing::warn!(
                        error = %error,
                        "reconcile failed, trying again next round"
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(every_secs)) => {}
                }
            }
            Ok(())
        }
        Command::Serve { service } => match service {
            Service::Dedup => prism_dedup::serve(settings, shutdown).await,
            Service::Thumbnail => prism_thumbnail::serve(settings, shutdown).await,
            Service::Detect => prism_detect::serve(settings, shutdown).await,
        },
    }
}

/// One line per missing upload (tab-separated: key, ETag, size), then the counts.
fn print_reconcile_report(report: &reconcile::Report, dry_run: bool, min_age_secs: u64) {
    let verb = if dry_run { "missing" } else { "re-emitted" };
    for upload in &report.missing {
        println!("{verb}\t{}\t{}\t{}", upload.key, upload.etag, upload.size);
    }
    println!(
        "listed {}, handled {}, {verb} {}, recent {} (changed in the last {min_age_secs} s), unlisted {}",
        report.listed,
        report.handled,
        report.missing.len(),
        report.recent,
        report.unlisted
    );
}
