//! `prism-announce`: the bucket watcher and reconcile as a binary of their own (also `prism watch`
//! and `prism reconcile`).

use clap::{Parser, Subcommand};
use prism_announce::{ReconcileArgs, WatchArgs};
use prism_core::runtime::{config, service, telemetry};

#[derive(Parser)]
#[command(
    version,
    about = "Announces uploads to Prism for S3 servers without notifications"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Watch(WatchArgs),
    Reconcile(ReconcileArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init();
    let cli = Cli::parse();
    let settings = config::load()?;
    let shutdown = service::shutdown_signal();
    match cli.command {
        Command::Watch(args) => prism_announce::watch(&settings, &args, shutdown).await,
        Command::Reconcile(args) => prism_announce::reconcile(&settings, &args, shutdown).await,
    }
}
