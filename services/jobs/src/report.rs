//! What a finished job tells: its manifest (`jobs/<id>/results.jsonl`, one line per object) and
//! its summary (`jobs/<id>/summary.json`). Pure: outcomes in, lines and figures out.

use chrono::{DateTime, Utc};
use prism_core::contract::{ErrorReport, OutputObject, StageName};
use prism_core::ports::batch::{BatchJob, ItemOutcome, JobItem, JobState, Tally};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One object of the job, every stage's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestLine {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    pub outcome: ItemOutcome,
    pub stages: BTreeMap<StageName, StageEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageEntry {
    pub outcome: ItemOutcome,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputObject>,
    /// `classes`, `detections`.
    #[serde(flatten)]
    pub payload: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReport>,
}

/// An object failed if any stage failed, was deduplicated if every stage was, else done.
pub fn object_outcome(outcomes: impl IntoIterator<Item = ItemOutcome>) -> ItemOutcome {
    outcomes
        .into_iter()
        .fold(ItemOutcome::Deduplicated, |object, stage| {
            match (object, stage) {
                (ItemOutcome::Failed, _) | (_, ItemOutcome::Failed) => ItemOutcome::Failed,
                (ItemOutcome::Done, _) | (_, ItemOutcome::Done) => ItemOutcome::Done,
                _ => ItemOutcome::Deduplicated,
            }
        })
}

/// The figures the summary needs, gathered one object at a time as the manifest is written.
#[derive(Debug, Default)]
pub struct Digest {
    pub objects: BTreeMap<ItemOutcome, u64>,
    /// Per object, from dedup's receipt to its last stage's outcome.
    latencies_ms: Vec<i64>,
}

impl Digest {
    /// The manifest line of one object, from its outcomes (one per stage, all of one key).
    pub fn add(&mut self, items: &[JobItem]) -> ManifestLine {
        let first = &items[0];
        let stages: BTreeMap<StageName, StageEntry> = items
            .iter()
            .map(|item| {
                let entry = StageEntry {
                    outcome: item.outcome,
                    outputs: item.outputs.clone(),
                    payload: item.payload.clone(),
                    error: item.error.clone(),
                };
                (item.stage, entry)
            })
            .collect();
        let outcome = object_outcome(stages.values().map(|entry| entry.outcome));
        *self.objects.entry(outcome).or_default() += 1;
        if outcome != ItemOutcome::Failed {
            let latency = items.iter().map(|item| item.latency_ms).max().unwrap_or(0);
            self.latencies_ms.push(latency);
        }
        ManifestLine {
            key: first.key.clone(),
            content_hash: items.iter().find_map(|item| item.content_hash.clone()),
            outcome,
            stages,
        }
    }

    fn counted(&self) -> u64 {
        self.objects.values().sum()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: i64,
    pub p95: i64,
    pub p99: i64,
    pub max: i64,
}

/// Nearest-rank percentiles; `None` for no values.
pub fn percentiles(values: &mut [i64]) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank =
        |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    Some(Percentiles {
        p50: rank(0.50),
        p95: rank(0.95),
        p99: rank(0.99),
        max: values[values.len() - 1],
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectCounts {
    pub listed: u64,
    /// Keys Prism cannot read back (odd names): not sent, not counted below.
    pub unlisted: u64,
    pub done: u64,
    pub deduplicated: u64,
    pub failed: u64,
    /// Listed but never run: the job was cancelled first.
    pub skipped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub job: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub bucket: String,
    pub prefix: String,
    pub stages: Vec<StageName>,
    pub state: JobState,
    pub submitted_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub wall_s: f64,
    pub objects: ObjectCounts,
    /// Outcomes per stage: how many, and the stage work they cost.
    pub per_stage: Tally,
    /// Objects finished per second of wall time.
    pub throughput_per_s: f64,
    /// Upload to last result, per object that did not fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Percentiles>,
    /// Seconds of stage work (each stage's own timing; a batch's time split between its
    /// inputs; deduplicated outcomes cost none). What `prism plan` fits its model to.
    pub stage_seconds: f64,
    /// `stage_seconds` at the configured price of a vCPU-hour.
    pub estimated_cost_usd: f64,
    pub vcpu_hour_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_met: Option<bool>,
}

/// The summary of `job`, ended (`state`) at `finished_at`, from its digest and tally.
pub fn summary(
    job: &BatchJob,
    state: JobState,
    finished_at: DateTime<Utc>,
    mut digest: Digest,
    tally: Tally,
    vcpu_hour_usd: f64,
) -> Summary {
    let wall_s = (finished_at - job.submitted_at).num_milliseconds().max(0) as f64 / 1000.0;
    let count = |outcome| digest.objects.get(&outcome).copied().unwrap_or(0);
    let counted = digest.counted();
    let stage_seconds = tally.processing_ms() as f64 / 1000.0;
    Summary {
        job: job.id.clone(),
        name: job.name.clone(),
        bucket: job.bucket.clone(),
        prefix: job.prefix.clone(),
        stages: job.stages.clone(),
        state,
        submitted_at: job.submitted_at,
        finished_at,
        wall_s,
        objects: ObjectCounts {
            listed: job.listing.listed,
            unlisted: job.listing.unlisted,
            done: count(ItemOutcome::Done),
            deduplicated: count(ItemOutcome::Deduplicated),
            failed: count(ItemOutcome::Failed),
            skipped: job.listing.listed.saturating_sub(counted),
        },
        per_stage: tally,
        throughput_per_s: if wall_s > 0.0 {
            counted as f64 / wall_s
        } else {
            0.0
        },
        latency_ms: percentiles(&mut digest.latencies_ms),
        stage_seconds,
        estimated_cost_usd: stage_seconds / 3600.0 * vcpu_hour_usd,
        vcpu_hour_usd,
        deadline_s: job.deadline_s,
        deadline_met: job.deadline_s.map(|deadline| wall_s <= deadline as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_core::ports::batch::tally_of;

    fn item(key: &str, stage: StageName, outcome: ItemOutcome, latency_ms: i64) -> JobItem {
        JobItem {
            content_hash: Some(format!("hash-of-{key}")),
            processing_ms: if outcome == ItemOutcome::Done {
                1500
            } else {
                0
            },
            latency_ms,
            ..JobItem::new("j", key, stage, outcome, Utc::now())
        }
    }

    #[test]
    fn an_object_fails_with_any_stage_and_is_deduplicated_only_with_all() {
        use ItemOutcome::*;
        assert_eq!(object_outcome([Done, Deduplicated]), Done);
        assert_eq!(object_outcome([Deduplicated, Deduplicated]), Deduplicated);
        assert_eq!(object_outcome([Deduplicated, Failed, Done]), Failed);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<i64> = (1..=100).rev().collect();
        let p = percentiles(&mut values).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50, 95, 99, 100));
        assert_eq!(percentiles(&mut []), None);
    }

    #[test]
    fn the_summary_counts_objects_once_and_the_skipped_rest() {
        use ItemOutcome::*;
        use StageName::*;
        let objects = [
            vec![item("a", Classify, Done, 100), item("a", Detect, Done, 300)],
            vec![
                item("b", Classify, Deduplicated, 10),
                item("b", Detect, Deduplicated, 20),
            ],
            vec![item("c", Classify, Failed, 0), item("c", Detect, Done, 50)],
        ];
        let mut digest = Digest::default();
        let lines: Vec<ManifestLine> = objects.iter().map(|items| digest.add(items)).collect();
        assert_eq!(lines[2].outcome, Failed);
        assert_eq!(lines[0].stages[&Detect].outcome, Done);
        let mut job = BatchJob::new("j", None, "in", "p/", vec![Classify, Detect], Some(60));
        job.listing.listed = 5;
        let finished_at = job.submitted_at + chrono::Duration::seconds(10);
        let tally = tally_of(objects.iter().flatten());
        let summary = summary(&job, JobState::Cancelled, finished_at, digest, tally, 3.6);
        let objects = &summary.objects;
        assert_eq!(
            (
                objects.done,
                objects.deduplicated,
                objects.failed,
                objects.skipped
            ),
            (1, 1, 1, 2)
        );
        assert_eq!(summary.wall_s, 10.0);
        assert!((summary.throughput_per_s - 0.3).abs() < 1e-9);
        // The failed object's latency is left out: a (300), b (20).
        assert_eq!(summary.latency_ms.unwrap().max, 300);
        assert_eq!(summary.stage_seconds, 4.5);
        assert!((summary.estimated_cost_usd - 0.0045).abs() < 1e-12);
        assert_eq!(summary.deadline_met, Some(true));
    }
}
