//! `prism job …`: submit batch jobs and follow them, straight against the job book (CouchDB);
//! the job manager (`prism serve jobs`) does the work.

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use prism_core::contract::StageName;
use prism_core::ports::batch::{BatchJob, ItemOutcome, JobBook, JobState};
use prism_core::ports::claims::couch::CouchIndex;
use prism_core::runtime::config::Settings;
use prism_jobs::requests::{self, JobStatus, Submission};
use std::io::IsTerminal;
use std::time::Duration;

#[derive(Subcommand)]
pub enum JobCommand {
    /// Run stages over every object under a prefix; prints the job id at once.
    Submit {
        /// The bucket (the input bucket, the only one dedup reads, if left out).
        #[arg(long)]
        bucket: Option<String>,
        #[arg(long, default_value = "")]
        prefix: String,
        /// Stages to run, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        stages: Vec<StageName>,
        /// When the job should be done by (`15m`, `2h`); the summary says whether it was.
        #[arg(long, value_parser = humantime::parse_duration)]
        deadline: Option<Duration>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Where a job stands, as JSON.
    Status { id: String },
    /// Every job, newest first.
    List,
    /// Stop a job: listing stops, its queued work is skipped.
    Cancel { id: String },
    /// Follow a job until it ends (a progress bar on a terminal, a line every few seconds
    /// otherwise); exits 0 when it completed, 1 when it was cancelled.
    Wait {
        id: String,
        /// Give up (exit 2) after this long.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
}

pub async fn run(settings: &Settings, command: JobCommand) -> anyhow::Result<()> {
    let book = CouchIndex::connect(&settings.couchdb).await?;
    match command {
        JobCommand::Submit {
            bucket,
            prefix,
            stages,
            deadline,
            name,
        } => {
            let submission = Submission {
                bucket,
                prefix,
                stages,
                deadline_s: deadline.map(|d| d.as_secs()),
                name,
            };
            let job = requests::submit(&book, settings, submission).await?;
            println!("{}", job.id);
        }
        JobCommand::Status { id } => {
            let status = requests::status(&book, &id).await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        JobCommand::List => {
            for job in requests::list(&book).await? {
                println!("{}", list_line(&job));
            }
        }
        JobCommand::Cancel { id } => {
            requests::cancel(&book, &id).await?;
            println!("{id}: cancel requested");
        }
        JobCommand::Wait { id, timeout } => {
            let state = wait(&book, &id, timeout).await?;
            std::process::exit(match state {
                Some(JobState::Completed) => 0,
                Some(_) => 1,
                None => 2,
            });
        }
    }
    Ok(())
}

fn list_line(job: &BatchJob) -> String {
    let stages: Vec<&str> = job.stages.iter().map(|s| s.as_str()).collect();
    format!(
        "{}  {:<9}  {:>7} listed  {}/{}  {}  {}",
        job.id,
        format!("{:?}", job.state).to_lowercase(),
        job.listing.listed,
        job.bucket,
        job.prefix,
        stages.join(","),
        job.name.as_deref().unwrap_or("")
    )
}

/// One line of progress: done / deduplicated / failed / rate / ETA.
fn progress_line(status: &JobStatus) -> String {
    let job = &status.job;
    let listed = match job.listing.done {
        true => job.listing.listed.to_string(),
        false => format!("{}+", job.listing.listed),
    };
    let eta = status
        .eta()
        .map(|eta| format!("{}s", eta.as_secs()))
        .unwrap_or_else(|| "?".into());
    format!(
        "{}/{listed} objects · stage outcomes: {} done, {} deduplicated, {} failed · {:.1}/s · ETA {eta}",
        status.finished,
        status.outcomes(ItemOutcome::Done),
        status.outcomes(ItemOutcome::Deduplicated),
        status.outcomes(ItemOutcome::Failed),
        status.rate(),
    )
}

/// Follows the job until it ends or `timeout`; `None` on timeout.
async fn wait(
    book: &dyn JobBook,
    id: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<Option<JobState>> {
    let started = std::time::Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {msg}").expect("a valid progress template"),
        );
        bar
    });
    let mut last_line = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        let status = requests::status(book, id).await?;
        let line = progress_line(&status);
        match &bar {
            Some(bar) => {
                bar.set_length(status.job.listing.listed);
                bar.set_position(status.finished);
                bar.set_message(line.clone());
            }
            None if last_line.elapsed() >= Duration::from_secs(5) => {
                eprintln!("{id}: {line}");
                last_line = std::time::Instant::now();
            }
            None => {}
        }
        if status.job.state.is_final() {
            if let Some(bar) = &bar {
                bar.finish();
            }
            let state = status.job.state;
            eprintln!("{id}: {:?}: {line}", state);
            if let Some(summary) = &status.job.summary {
                println!("{}", serde_json::to_string_pretty(summary)?);
            }
            return Ok(Some(state));
        }
        if timeout.is_some_and(|timeout| started.elapsed() >= timeout) {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
