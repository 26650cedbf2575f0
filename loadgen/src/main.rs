//! `prism-loadgen upload DIR`: puts a folder of images into the input bucket.

use clap::{Parser, Subcommand};
use prism_core::ports::store::Buckets;
use prism_core::runtime::config::{self, Settings};
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Uploads images to Prism's input bucket")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upload every file under DIR (keys are paths relative to DIR), creating the bucket if needed.
    Upload {
        dir: PathBuf,
        /// Defaults to the configured input bucket.
        #[arg(long)]
        bucket: Option<String>,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    prism_core::runtime::telemetry::init();
    let settings: Settings = config::load()?;
    match Cli::parse().command {
        Command::Upload {
            dir,
            bucket,
            concurrency,
        } => {
            let bucket = bucket.unwrap_or(settings.input_bucket.clone());
            prism_loadgen::create_bucket(&settings.s3, &bucket).await?;
            let mut objects = Vec::new();
            for (key, path) in prism_loadgen::files_under(&dir)? {
                objects.push((key, bytes::Bytes::from(std::fs::read(path)?)));
            }
            let count = objects.len();
            let started = std::time::Instant::now();
            prism_loadgen::upload(&Buckets::s3(&settings.s3), &bucket, objects, concurrency)
                .await?;
            println!(
                "uploaded {count} files to s3://{bucket} in {:.2} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}
