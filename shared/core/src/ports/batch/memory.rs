//! Batch jobs in process memory, with CouchDB's revision and create-once rules, for tests.

use super::{BatchJob, JobBook, JobItem, Tally, items_prefix, tally_of};
use crate::ports::claims::IndexError;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryJobBook {
    jobs: Mutex<BTreeMap<String, BatchJob>>,
    items: Mutex<BTreeMap<String, JobItem>>,
}

#[async_trait]
impl JobBook for MemoryJobBook {
    async fn create_job(&self, job: &mut BatchJob) -> Result<bool, IndexError> {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        if jobs.contains_key(&job.id) {
            return Ok(false);
        }
        job.rev = "1-memory".into();
        jobs.insert(job.id.clone(), job.clone());
        Ok(true)
    }

    async fn job(&self, id: &str) -> Result<Option<BatchJob>, IndexError> {
        Ok(self.jobs.lock().expect("jobs lock").get(id).cloned())
    }

    async fn jobs(&self) -> Result<Vec<BatchJob>, IndexError> {
        Ok(self
            .jobs
            .lock()
            .expect("jobs lock")
            .values()
            .cloned()
            .collect())
    }

    async fn replace_job(&self, job: &mut BatchJob) -> Result<bool, IndexError> {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        match jobs.get(&job.id) {
            Some(current) if current.rev == job.rev => {
                let generation: u64 = job
                    .rev
                    .split('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                job.rev = format!("{}-memory", generation + 1);
                jobs.insert(job.id.clone(), job.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn record_items(&self, new: &[JobItem]) -> Result<(), IndexError> {
        let mut items = self.items.lock().expect("items lock");
        for item in new {
            items
                .entry(item.doc_id.clone())
                .or_insert_with(|| item.clone());
        }
        Ok(())
    }

    async fn tally(&self, job: &str) -> Result<Tally, IndexError> {
        let items = self.items.lock().expect("items lock");
        let prefix = items_prefix(job);
        Ok(tally_of(
            items
                .range(prefix.clone()..)
                .take_while(|(id, _)| id.starts_with(&prefix))
                .map(|(_, item)| item),
        ))
    }

    async fn items(
        &self,
        job: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobItem>, IndexError> {
        let items = self.items.lock().expect("items lock");
        let prefix = items_prefix(job);
        Ok(items
            .range(prefix.clone()..)
            .take_while(|(id, _)| id.starts_with(&prefix))
            .filter(|(id, _)| after.is_none_or(|after| id.as_str() > after))
            .take(limit)
            .map(|(_, item)| item.clone())
            .collect())
    }
}
