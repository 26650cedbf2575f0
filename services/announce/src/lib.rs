//! Announce: what turns objects into upload events when no notification did.
//!
//! - [`watch`] — the bucket watcher, for S3 servers without Kafka notifications (and the embedded
//!   mode's folders): lists the input bucket and announces new objects in MinIO's format.
//! - [`reconcile`] — finds uploads whose notification was lost and announces them again.
//!
//! [`watch()`] and [`reconcile()`] run them as services (`prism watch`, `prism reconcile`).

pub mod reconcile;
pub mod watch;

use prism_core::ports::bus::Publisher;
use prism_core::ports::bus::kafka::{KafkaPublisher, ensure_topics};
use prism_core::ports::claims::couch::CouchIndex;
use prism_core::ports::store::Buckets;
use prism_core::runtime::config::Settings;
use prism_core::runtime::observe;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use watch::Watcher;

/// Announce new objects of the input bucket as MinIO-format events (for S3 servers without
/// Kafka notifications).
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Pause between listings, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,
    /// Announce only objects uploaded after the watcher started.
    #[arg(long)]
    pub skip_existing: bool,
}

/// Re-announce uploads of the input bucket that dedup never handled (their notification was
/// lost): lists the bucket, checks each object against dedup's ledger in CouchDB, and publishes
/// a MinIO-format event for each one missing. Uploads that have their results are left alone.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconcileArgs {
    /// Print the missing uploads without publishing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Leave objects changed within this many seconds alone: their own notification may still
    /// be on its way.
    #[arg(long, default_value_t = 60)]
    pub min_age_secs: u64,
    /// Keep running and reconcile every this many seconds (a sidecar next to the services);
    /// a failed round is logged and tried again at the next one. Without it: one round.
    #[arg(long)]
    pub every_secs: Option<u64>,
}

/// Runs the bucket watcher on the input bucket until `shutdown`.
pub async fn watch(
    settings: &Settings,
    args: &WatchArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    observe::serve(&settings.observe.listen, &[observe::SERVERS], &shutdown).await?;
    ensure_topics(&settings.kafka, &[settings.topics.uploads.as_str()]).await?;
    let publisher = Arc::new(KafkaPublisher::new(&settings.kafka)?);
    let mut watcher = Watcher::new(
        Buckets::s3(&settings.s3),
        &settings.input_bucket,
        publisher,
        &settings.topics.uploads,
    );
    if args.skip_existing {
        let skipped = watcher.skip_existing().await?;
        tracing::info!(skipped, "skipping objects already in the bucket");
    }
    watcher
        .run(Duration::from_millis(args.interval_ms), shutdown)
        .await;
    Ok(())
}

/// One reconciliation of the input bucket, or one every `--every-secs` until `shutdown`.
pub async fn reconcile(
    settings: &Settings,
    args: &ReconcileArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Only the repeating reconciler is a service to watch; a single round is a command.
    if args.every_secs.is_some() {
        observe::serve(&settings.observe.listen, &[observe::SERVERS], &shutdown).await?;
    }
    let index = CouchIndex::connect(&settings.couchdb).await?;
    let publisher = if args.dry_run {
        None
    } else {
        ensure_topics(&settings.kafka, &[settings.topics.uploads.as_str()]).await?;
        Some(KafkaPublisher::new(&settings.kafka)?)
    };
    let buckets = Buckets::s3(&settings.s3);
    let min_age = Duration::from_secs(args.min_age_secs);
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
        print!("{}", report.display(args.dry_run, args.min_age_secs));
        anyhow::Ok(report)
    };
    let Some(every_secs) = args.every_secs else {
        return round().await.map(drop);
    };
    while !shutdown.is_cancelled() {
        match round().await {
            Ok(report) => {
                observe::passing(observe::SERVERS);
                if !args.dry_run {
                    observe::announced("reconcile", report.missing.len());
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "reconcile failed, trying again next round");
                observe::failing(observe::SERVERS, error.to_string());
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(every_secs)) => {}
        }
    }
    Ok(())
}
