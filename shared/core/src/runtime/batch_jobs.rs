//! What the services need to know of a batch job, looked up once in a while: whether it was
//! cancelled (dedup and the stages skip its queued work) and which stages it asked for.

use crate::contract::StageName;
use crate::ports::batch::JobBook;
use crate::ports::claims::IndexError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How stale a job's cancellation may be: a cancel takes effect within this, at the cost of one
/// lookup per job and interval however many of its messages pass.
const RECHECK: Duration = Duration::from_secs(2);

pub struct BatchJobs {
    book: Arc<dyn JobBook>,
    known: Mutex<HashMap<String, (Option<JobFacts>, Instant)>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobFacts {
    pub cancelled: bool,
    pub stages: Vec<StageName>,
}

impl BatchJobs {
    pub fn new(book: Arc<dyn JobBook>) -> Self {
        BatchJobs {
            book,
            known: Mutex::default(),
        }
    }

    /// Whether `job` was cancelled. A job the book does not know is not: its work goes on.
    pub async fn is_cancelled(&self, job: &str) -> Result<bool, IndexError> {
        Ok(self.facts(job).await?.is_some_and(|facts| facts.cancelled))
    }

    /// What the book says of `job` (`None`: it does not know it), at most [`RECHECK`] old; a
    /// cancellation, being final, is never looked up again.
    pub async fn facts(&self, job: &str) -> Result<Option<JobFacts>, IndexError> {
        if let Some((facts, checked)) = self.known.lock().expect("cache lock").get(job)
            && (facts.as_ref().is_some_and(|f| f.cancelled) || checked.elapsed() < RECHECK)
        {
            return Ok(facts.clone());
        }
        let facts = self.book.job(job).await?.map(|job| JobFacts {
            cancelled: job.cancel_requested,
            stages: job.stages,
        });
        let mut known = self.known.lock().expect("cache lock");
        known.insert(job.to_string(), (facts.clone(), Instant::now()));
        Ok(facts)
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
        let cancelled = BatchJobs::new(book.clone());
        assert!(!cancelled.is_cancelled("j").await.unwrap());
        assert!(!cancelled.is_cancelled("unknown").await.unwrap());
        job.cancel_requested = true;
        assert!(book.replace_job(&mut job).await.unwrap());
        // Forget the cached answer, as RECHECK passing would.
        cancelled.known.lock().unwrap().clear();
        assert!(cancelled.is_cancelled("j").await.unwrap());
    }
}
