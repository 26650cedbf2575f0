//! What users ask of batch jobs (`prism job …`, the gateway's `/api/jobs`), over the job book.

use chrono::Utc;
use prism_core::contract::StageName;
use prism_core::ports::batch::{BatchJob, JobBook, JobState, Tally, new_job_id};
use prism_core::ports::claims::IndexError;
use prism_core::runtime::config::Settings;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A job to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// Defaults to the input bucket, the only one dedup reads.
    #[serde(default)]
    pub bucket: Option<String>,
    #[serde(default)]
    pub prefix: String,
    pub stages: Vec<StageName>,
    #[serde(default)]
    pub deadline_s: Option<u64>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(
        "bucket {bucket:?} is not the input bucket {input:?}: dedup reads only the input bucket (so whoever can write to Kafka cannot make Prism read other buckets); copy the objects there, or point input_bucket at it"
    )]
    ForeignBucket { bucket: String, input: String },
    #[error(
        "prefix {0:?} holds control characters: no object key Prism can read has them, so the job could list nothing"
    )]
    BadPrefix(String),
    #[error("no stages: name at least one of thumbnail, detect, classify")]
    NoStages,
    #[error(
        "stage {stage} is not enabled in this deployment (enabled: {enabled}); its work would never be done"
    )]
    StageDisabled { stage: StageName, enabled: String },
    #[error("no job {0:?}")]
    NoSuchJob(String),
    #[error("job {id} has already ended ({state:?})")]
    Ended { id: String, state: JobState },
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl RequestError {
    /// Whether the request itself was wrong (rather than a server away).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, RequestError::Index(_))
    }
}

/// Stores a new job (the manager picks it up within its poll interval); returns it.
pub async fn submit(
    book: &dyn JobBook,
    settings: &Settings,
    submission: Submission,
) -> Result<BatchJob, RequestError> {
    let bucket = submission
        .bucket
        .unwrap_or_else(|| settings.input_bucket.clone());
    if bucket != settings.input_bucket {
        return Err(RequestError::ForeignBucket {
            bucket,
            input: settings.input_bucket.clone(),
        });
    }
    if submission.prefix.chars().any(char::is_control) {
        return Err(RequestError::BadPrefix(submission.prefix));
    }
    if submission.stages.is_empty() {
        return Err(RequestError::NoStages);
    }
    if let Some(&stage) = submission
        .stages
        .iter()
        .find(|stage| !settings.enabled_stages.contains(stage))
    {
        let enabled: Vec<&str> = settings.enabled_stages.iter().map(|s| s.as_str()).collect();
        return Err(RequestError::StageDisabled {
            stage,
            enabled: enabled.join(", "),
        });
    }
    let mut stages = submission.stages;
    stages.sort();
    stages.dedup();
    loop {
        let mut job = BatchJob::new(
            &new_job_id(Utc::now()),
            submission.name.clone(),
            &bucket,
            &submission.prefix,
            stages.clone(),
            submission.deadline_s,
        );
        // Two submissions in one second with the same 24 random bits: draw again.
        if book.create_job(&mut job).await? {
            return Ok(job);
        }
    }
}

/// A job and its counts so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub job: BatchJob,
    pub tally: Tally,
    /// Objects every stage has an outcome for.
    pub finished: u64,
}

impl JobStatus {
    /// Objects per second from submission to now, or to the job's end.
    pub fn rate(&self) -> f64 {
        let until = self.job.finished_at.unwrap_or_else(Utc::now);
        let elapsed = (until - self.job.submitted_at).num_milliseconds() as f64 / 1000.0;
        if elapsed > 0.0 {
            self.finished as f64 / elapsed
        } else {
            0.0
        }
    }

    /// Time left at the current rate, once the listing is done.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        let left = self.job.listing.listed.saturating_sub(self.finished);
        (self.job.listing.done && rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / rate))
    }

    /// Stage outcomes of one kind, over all stages.
    pub fn outcomes(&self, outcome: prism_core::ports::batch::ItemOutcome) -> u64 {
        self.job
            .stages
            .iter()
            .map(|&stage| self.tally.of(stage, outcome))
            .sum()
    }
}

pub async fn status(book: &dyn JobBook, id: &str) -> Result<JobStatus, RequestError> {
    let job = book
        .job(id)
        .await?
        .ok_or_else(|| RequestError::NoSuchJob(id.to_string()))?;
    let tally = book.tally(id).await?;
    let finished = tally.objects_finished(&job.stages);
    Ok(JobStatus {
        job,
        tally,
        finished,
    })
}

/// Every job, newest first.
pub async fn list(book: &dyn JobBook) -> Result<Vec<BatchJob>, RequestError> {
    let mut jobs = book.jobs().await?;
    jobs.reverse();
    Ok(jobs)
}

/// Asks the manager to stop the job: listing stops, queued work is skipped, the manifest and
/// summary say what was done. A concurrent write (the manager's) is read again, never overwritten.
pub async fn cancel(book: &dyn JobBook, id: &str) -> Result<BatchJob, RequestError> {
    loop {
        let mut job = book
            .job(id)
            .await?
            .ok_or_else(|| RequestError::NoSuchJob(id.to_string()))?;
        if job.state.is_final() {
            return Err(RequestError::Ended {
                id: id.to_string(),
                state: job.state,
            });
        }
        if job.cancel_requested {
            return Ok(job);
        }
        job.cancel_requested = true;
        if book.replace_job(&mut job).await? {
            return Ok(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_core::ports::batch::memory::MemoryJobBook;

    #[tokio::test]
    async fn a_prefix_with_control_characters_is_refused_before_anything_is_stored() {
        let book = MemoryJobBook::default();
        let submission = Submission {
            bucket: None,
            prefix: "../\u{0}weird/".into(),
            stages: vec![StageName::Thumbnail],
            deadline_s: None,
            name: None,
        };
        let refused = submit(&book, &Settings::default(), submission).await;
        assert!(
            matches!(refused, Err(RequestError::BadPrefix(_))),
            "{refused:?}"
        );
        assert!(book.jobs().await.unwrap().is_empty());
    }
}
