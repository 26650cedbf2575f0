//! `prism`: the one binary for every Prism service (`prism serve dedup|thumbnail|detect|classify`,
//! `prism serve gateway|jobs`, `prism job …`, `prism watch`, `prism reconcile`) and for the embedded mode (`prism
//! run`: the whole pipeline in one process over a folder, no servers; `--web` adds the pages);
//! `prism probe` is the health check of its container images. It holds wiring only: each service
//! lives in its own crate.

mod embedded;
mod job;
mod memory;
mod probe;

use clap::{Parser, Subcommand};
use prism_announce::{ReconcileArgs, WatchArgs};
use prism_core::contract::StageName;
use prism_core::runtime::config::{self, Settings};
use prism_core::runtime::{service, telemetry};
use prism_plan::PlanArgs;
use std::path::PathBuf;

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
        /// Where thumbnails, detections, classes and results.jsonl go.
        #[arg(long, default_value = "prism-output")]
        out: PathBuf,
        /// Stages to run, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "thumbnail,detect,classify"
        )]
        stages: Vec<StageName>,
        /// Then keep serving the upload and admin pages (the gateway) until Ctrl-C; uploads
        /// land in the input folder under `web/`.
        #[arg(long)]
        web: bool,
        /// Where `--web` listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Announce new objects of the input bucket as MinIO-format events (for S3 servers without
    /// Kafka notifications).
    Watch(WatchArgs),
    /// Re-announce uploads of the input bucket whose notification was lost.
    Reconcile(ReconcileArgs),
    /// Plan a batch job (replicas, duration, cost per 1,000 images) from a fit of the stages'
    /// measured CPU time; `--calibrate` measures and fits.
    Plan(PlanArgs),
    /// Run one service against Kafka, S3 and CouchDB (same as its own binary).
    Serve { service: Service },
    /// Batch jobs: run stages over every object under a prefix (`prism serve jobs` runs them).
    Job {
        #[command(subcommand)]
        command: job::JobCommand,
    },
    /// GET a URL (a service's /readyz or /healthz): exit 0 on a 2xx answer, else 1 with the
    /// reason on stderr. For container health checks, as the images have no curl.
    Probe { url: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Service {
    Dedup,
    Thumbnail,
    Detect,
    Classify,
    Gateway,
    /// The batch job manager.
    Jobs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    memory::return_large_buffers();
    let _telemetry = telemetry::init();
    let cli = Cli::parse();
    // A probe reads no settings: it only asks the service beside it.
    if let Command::Probe { url } = &cli.command {
        // Printed here rather than returned: an error from main may add a backtrace, and a
        // healthcheck's output should be the one line.
        match probe::probe(url).await {
            Ok(status) => println!("{url}: {status}"),
            Err(reason) => {
                eprintln!("{url}: {reason}");
                std::process::exit(1);
            }
        }
        return Ok(());
    }
    let settings: Settings = config::load()?;
    let shutdown = service::shutdown_signal();
    match cli.command {
        Command::Run {
            input,
            out,
            stages,
            web,
            listen,
        } => {
            let web = web.then_some(listen.as_str());
            embedded::run(settings, &input, &out, &stages, web, shutdown).await
        }
        Command::Watch(args) => prism_announce::watch(&settings, &args, shutdown).await,
        Command::Reconcile(args) => prism_announce::reconcile(&settings, &args, shutdown).await,
        Command::Plan(args) => prism_plan::run(&settings, &args),
        Command::Serve { service } => match service {
            Service::Dedup => prism_dedup::serve(settings, shutdown).await,
            Service::Thumbnail => prism_thumbnail::serve(settings, shutdown).await,
            Service::Detect => prism_detect::serve(settings, shutdown).await,
            Service::Classify => prism_classify::serve(settings, shutdown).await,
            Service::Gateway => prism_gateway::serve(settings, shutdown).await,
            Service::Jobs => prism_jobs::serve(settings, shutdown).await,
        },
        Command::Job { command } => job::run(&settings, command).await,
        Command::Probe { .. } => unreachable!("answered before the settings were read"),
    }
}
