//! Which batch jobs were cancelled: dedup and the stages skip a cancelled job's queued work.

use crate::ports::batch::JobBook;
use crate::ports::claims::IndexError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How stale a job's cancellation may be: a cancel takes effect within this, at the cost of one
/// lookup per job and interval however many of its messages pass.
const RECHECK: Duration = Duration::from_secs(2);

pub struct CancelledJobs {
    book: Arc<dyn JobBook>,
    known: Mutex<HashMap<String, (bool, Instant)>>,
}

impl CancelledJobs {
    pub fn new(book: Arc<dyn JobBook>) -> Self {
        CancelledJobs {
            book,
            known: Mutex::default(),
        }
    }

    /// Whether `job` was cancelled. A job the book does not know is not: its work goes on.
    pub async fn is_cancelled(&self, job: &str) -> Result<bool, IndexError> {
        if let Some((cancelled, checked)) = self.known.lock().expect("cache lock").get(job)
            && (*cancelled || checked.elapsed() < RECHECK)
        {
            return Ok(*cancelled);
        }
        let cancelled = self
            .book
            .job(job)
            .await?
            .is_some_and(|job| job.cancel_requested);
        let mut known = self.known.lock().expect("cache lock");
        known.insert(job.to_string(), (cancelled, Instant::now()));
        Ok(cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::batch::BatchJob;
    use crate::ports::batch::memory::MemoryJobBook;

    #[tokio::test]
    async fn a_cancel_is_seen_and_unknown_jobs_go_on() {
        let book = Arc::new(MemoryJobBook::default());
        let mut job = BatchJob::new("j", None, "in", "", vec![], None);
        book.create_job(&mut job).await.unwrap();
        let cancelled = CancelledJobs::new(book.clone());
        assert!(!cancelled.is_cancelled("j").await.unwrap());
        assert!(!cancelled.is_cancelled("unknown").await.unwrap());
        job.cancel_requested = true;
        assert!(book.replace_job(&mut job).await.unwrap());
        // Forget the cached answer, as RECHECK passing would.
        cancelled.known.lock().unwrap().clear();
        assert!(cancelled.is_cancelled("j").await.unwrap());
    }
}
