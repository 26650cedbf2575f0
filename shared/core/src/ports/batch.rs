//! Batch jobs' state: one document per job, and one per (job, object, stage) outcome.
//!
//! The job document is written by one party at a time (the manager holding its lease, or `prism
//! job cancel`), each write a compare-and-swap on `_rev`. Progress is never a counter in it:
//! each outcome is a document of its own whose id names the job, object and stage, created once
//! (a redelivered result finds it there), and the index counts them (a CouchDB view). So
//! concurrent writers cannot lose an update, and every object counts exactly once however often
//! its result arrives.

pub mod couch;
pub mod memory;

use crate::contract::{ErrorReport, OutputObject, StageName};
use crate::ports::claims::IndexError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Its prefix is being listed (objects go out as they are listed).
    Listing,
    /// Listed; waiting for the last outcomes.
    Running,
    Completed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Completed | JobState::Cancelled)
    }
}

/// How far the listing of a job's prefix got; stored after the objects it counts went out, so a
/// manager that died resumes after `after` and announces at most one page twice (counted once).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListingProgress {
    /// The last key announced.
    pub after: Option<String>,
    /// Objects announced.
    pub listed: u64,
    /// Objects Prism cannot read back by key (odd names), left out.
    pub unlisted: u64,
    pub done: bool,
}

/// One batch job: `prism job submit`'s request and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchJob {
    /// `job:<id>`.
    #[serde(rename = "_id")]
    pub doc_id: String,
    #[serde(rename = "_rev", default, skip_serializing_if = "String::is_empty")]
    pub rev: String,
    /// Always [`JOB_KIND`]: tells job documents from claims in the database.
    pub kind: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub bucket: String,
    pub prefix: String,
    pub stages: Vec<StageName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<u64>,
    pub state: JobState,
    #[serde(default)]
    pub cancel_requested: bool,
    pub listing: ListingProgress,
    pub submitted_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The manager replica driving the job, and until when; another may take over after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Written when the job ends (also to `jobs/<id>/summary.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Value>,
}

pub const JOB_KIND: &str = "batch_job";
pub const ITEM_KIND: &str = "batch_job_item";

impl BatchJob {
    pub fn new(
        id: &str,
        name: Option<String>,
        bucket: &str,
        prefix: &str,
        stages: Vec<StageName>,
        deadline_s: Option<u64>,
    ) -> Self {
        BatchJob {
            doc_id: job_doc_id(id),
            rev: String::new(),
            kind: JOB_KIND.into(),
            id: id.into(),
            name,
            bucket: bucket.into(),
            prefix: prefix.into(),
            stages,
            deadline_s,
            state: JobState::Listing,
            cancel_requested: false,
            listing: ListingProgress::default(),
            submitted_at: Utc::now(),
            finished_at: None,
            owner: None,
            lease_expires_at: None,
            summary: None,
        }
    }
}

pub fn job_doc_id(id: &str) -> String {
    format!("job:{id}")
}

/// A new job id: its submission time (so ids sort by age) and 6 random hex digits.
pub fn new_job_id(now: DateTime<Utc>) -> String {
    format!(
        "{}-{:06x}",
        now.format("%Y%m%d-%H%M%S"),
        fastrand::u32(..0x100_0000)
    )
}

/// What became of one object in one stage of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemOutcome {
    Done,
    Deduplicated,
    Failed,
}

impl ItemOutcome {
    pub const ALL: [ItemOutcome; 3] = [
        ItemOutcome::Done,
        ItemOutcome::Deduplicated,
        ItemOutcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemOutcome::Done => "done",
            ItemOutcome::Deduplicated => "deduplicated",
            ItemOutcome::Failed => "failed",
        }
    }
}

/// One object's outcome in one stage of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobItem {
    /// [`item_id`]: created once, so a result delivered twice counts once.
    #[serde(rename = "_id")]
    pub doc_id: String,
    #[serde(rename = "_rev", default, skip_serializing_if = "String::is_empty")]
    pub rev: String,
    /// Always [`ITEM_KIND`].
    pub kind: String,
    pub job: String,
    pub key: String,
    pub stage: StageName,
    pub outcome: ItemOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputObject>,
    /// The stage's findings (`classes`, `detections`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub payload: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReport>,
    /// Work this outcome cost (0 when deduplicated), as the stage timed it.
    pub processing_ms: u64,
    /// From dedup's receipt of the object to the outcome.
    pub latency_ms: i64,
    pub finished_at: DateTime<Utc>,
}

impl JobItem {
    /// `outcome` of `stage` for `key` in `job`, with no outputs, findings, error or timings yet.
    pub fn new(
        job: &str,
        key: &str,
        stage: StageName,
        outcome: ItemOutcome,
        finished_at: DateTime<Utc>,
    ) -> Self {
        JobItem {
            doc_id: item_id(job, key, stage),
            rev: String::new(),
            kind: ITEM_KIND.into(),
            job: job.into(),
            key: key.into(),
            stage,
            outcome,
            content_hash: None,
            outputs: Vec::new(),
            payload: Map::new(),
            error: None,
            processing_ms: 0,
            latency_ms: 0,
            finished_at,
        }
    }
}

/// `jobitem:<job>:<blake3 of the key>:<stage>`: safe whatever the key, one object's stages side
/// by side (the manifest reads them in this order).
pub fn item_id(job: &str, key: &str, stage: StageName) -> String {
    format!(
        "{}{}:{stage}",
        items_prefix(job),
        blake3::hash(key.as_bytes()).to_hex()
    )
}

pub fn items_prefix(job: &str) -> String {
    format!("jobitem:{job}:")
}

/// A job's outcomes counted: per stage and outcome, how many and the work they cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub counts: BTreeMap<StageName, BTreeMap<ItemOutcome, Count>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Count {
    pub items: u64,
    pub processing_ms: u64,
}

impl Tally {
    pub fn of(&self, stage: StageName, outcome: ItemOutcome) -> u64 {
        self.counts
            .get(&stage)
            .and_then(|outcomes| outcomes.get(&outcome))
            .map_or(0, |count| count.items)
    }

    /// Outcomes of `stage`, whatever they were.
    pub fn finished(&self, stage: StageName) -> u64 {
        ItemOutcome::ALL.iter().map(|&o| self.of(stage, o)).sum()
    }

    /// Objects every stage of `stages` has an outcome for, at least (each stage's outcomes are
    /// counted apart, so this is their least).
    pub fn objects_finished(&self, stages: &[StageName]) -> u64 {
        stages
            .iter()
            .map(|&stage| self.finished(stage))
            .min()
            .unwrap_or(0)
    }

    /// Milliseconds of stage work, all outcomes.
    pub fn processing_ms(&self) -> u64 {
        self.counts
            .values()
            .flat_map(|outcomes| outcomes.values())
            .map(|count| count.processing_ms)
            .sum()
    }

    pub(crate) fn add(&mut self, stage: StageName, outcome: ItemOutcome, count: Count) {
        let entry = self
            .counts
            .entry(stage)
            .or_default()
            .entry(outcome)
            .or_default();
        entry.items += count.items;
        entry.processing_ms += count.processing_ms;
    }
}

/// Where batch jobs are kept: CouchDB, or memory for tests.
#[async_trait]
pub trait JobBook: Send + Sync {
    /// Stores a new job; `false` if its id is taken.
    async fn create_job(&self, job: &mut BatchJob) -> Result<bool, IndexError>;
    async fn job(&self, id: &str) -> Result<Option<BatchJob>, IndexError>;
    /// Every job, oldest first.
    async fn jobs(&self) -> Result<Vec<BatchJob>, IndexError>;
    /// Replaces the job if its `rev` is current (setting the new one); `false` if someone else
    /// changed it meanwhile.
    async fn replace_job(&self, job: &mut BatchJob) -> Result<bool, IndexError>;
    /// Stores outcomes; one stored before stays as it was.
    async fn record_items(&self, items: &[JobItem]) -> Result<(), IndexError>;
    async fn tally(&self, job: &str) -> Result<Tally, IndexError>;
    /// Up to `limit` of a job's outcomes in id order, after the id `after`.
    async fn items(
        &self,
        job: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobItem>, IndexError>;
}

/// Counts `items` as the index's view does: the reference the adapters are tested against.
pub fn tally_of<'a>(items: impl IntoIterator<Item = &'a JobItem>) -> Tally {
    let mut tally = Tally::default();
    for item in items {
        let count = Count {
            items: 1,
            processing_ms: item.processing_ms,
        };
        tally.add(item.stage, item.outcome, count);
    }
    tally
}
