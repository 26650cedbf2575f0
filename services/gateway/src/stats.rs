//! The admin page's statistics, from the outcomes this replica heard since it started (each
//! replica hears every outcome, so any replica answers for the whole pipeline). Pure: time is
//! passed in, so the windows and percentiles are tested without waiting.

use crate::hub::Outcome;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Per-minute history kept for the charts.
const HISTORY_MINUTES: i64 = 60;
/// Dead-letter reasons kept per stage.
const RECENT_REASONS: usize = 20;
/// Timing samples kept per stage and minute; past it a reservoir keeps a fair sample, so memory
/// stays bounded however busy the pipeline.
const SAMPLES_PER_MINUTE: usize = 2048;

/// One minute of one stage.
#[derive(Debug, Default, Clone)]
struct Minute {
    /// Minutes since the epoch.
    at: i64,
    results: u64,
    deduplicated: u64,
    dead_letters: u64,
    /// Upload-to-result times (ms), sampled.
    latency: Reservoir,
    /// The stage's own processing times (ms) of results that were not deduplicated, sampled.
    processing: Reservoir,
    /// Second of the minute -> results, for the last-minute count.
    per_second: BTreeMap<u32, u64>,
}

/// A uniform sample of at most [`SAMPLES_PER_MINUTE`] values (Vitter's algorithm R).
#[derive(Debug, Default, Clone)]
struct Reservoir {
    seen: u64,
    values: Vec<u64>,
}

impl Reservoir {
    fn add(&mut self, value: u64) {
        self.seen += 1;
        if self.values.len() < SAMPLES_PER_MINUTE {
            self.values.push(value);
        } else {
            let slot = fastrand::u64(0..self.seen) as usize;
            if slot < SAMPLES_PER_MINUTE {
                self.values[slot] = value;
            }
        }
    }
}

#[derive(Debug, Default)]
struct StageStats {
    results: u64,
    deduplicated: u64,
    /// Batch size -> results inferred in a batch of that size (results that did the work).
    batch_sizes: BTreeMap<u64, u64>,
    dead_letters: u64,
    dead_letters_by_code: BTreeMap<String, u64>,
    recent_reasons: VecDeque<Reason>,
    minutes: VecDeque<Minute>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reason {
    pub code: String,
    pub reason: String,
    pub key: Option<String>,
    pub failed_at: DateTime<Utc>,
}

/// Everything the admin page shows but consumer lag.
#[derive(Debug, Default)]
pub struct Stats {
    started_at: Option<DateTime<Utc>>,
    stages: BTreeMap<String, StageStats>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: Option<u64>,
    pub p95: Option<u64>,
    pub p99: Option<u64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct MinutePoint {
    pub minute: DateTime<Utc>,
    pub results: u64,
    pub dead_letters: u64,
    pub latency_p50_ms: Option<u64>,
    pub latency_p95_ms: Option<u64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct StageReport {
    pub results_last_minute: u64,
    pub results_last_15_minutes: u64,
    pub results_since_start: u64,
    /// Share of results that reused earlier outputs, since start (0 to 1; null before any).
    pub deduplicated_share: Option<f64>,
    pub dead_letters_since_start: u64,
    pub dead_letters_by_code: BTreeMap<String, u64>,
    /// The last 20, newest first.
    pub recent_dead_letters: Vec<Reason>,
    /// Upload (dedup's receipt) to result, over the last 15 minutes, in ms.
    pub latency_ms: Percentiles,
    /// The stage's own work per result not deduplicated, over the last 15 minutes, in ms.
    pub processing_ms: Percentiles,
    /// Since start, batch size -> results inferred in a batch of that size; null for stages
    /// that do not batch.
    pub batch_sizes: Option<BTreeMap<u64, u64>>,
    /// The last hour, oldest first; minutes without outcomes are left out.
    pub per_minute: Vec<MinutePoint>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Report {
    pub started_at: Option<DateTime<Utc>>,
    pub generated_at: DateTime<Utc>,
    pub stages: BTreeMap<String, StageReport>,
}

impl Stats {
    pub fn new(started_at: DateTime<Utc>) -> Self {
        Stats {
            started_at: Some(started_at),
            stages: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, outcome: &Outcome, now: DateTime<Utc>) {
        match outcome {
            Outcome::Result(result) => {
                let stage = self.stage(result.stage.as_str());
                stage.results += 1;
                stage.deduplicated += u64::from(result.deduplicated);
                if let Some(size) = result.timings.batch_size {
                    *stage.batch_sizes.entry(u64::from(size)).or_default() += 1;
                }
                let minute = stage.minute(now);
                minute.results += 1;
                minute.deduplicated += u64::from(result.deduplicated);
                *minute.per_second.entry(second_of(now)).or_default() += 1;
                let latency = (result.timings.finished_at - result.timings.received_at)
                    .num_milliseconds()
                    .max(0) as u64;
                minute.latency.add(latency);
                if !result.deduplicated {
                    minute.processing.add(result.timings.processing_ms);
                }
            }
            Outcome::DeadLetter(letter) => {
                let stage = self.stage(&letter.stage);
                stage.dead_letters += 1;
                *stage
                    .dead_letters_by_code
                    .entry(letter.error.code.clone())
                    .or_default() += 1;
                stage.recent_reasons.push_front(Reason {
                    code: letter.error.code.clone(),
                    reason: letter.error.reason.clone(),
                    key: letter.source.as_ref().map(|source| source.key.clone()),
                    failed_at: letter.failed_at,
                });
                stage.recent_reasons.truncate(RECENT_REASONS);
                stage.minute(now).dead_letters += 1;
            }
        }
    }

    fn stage(&mut self, name: &str) -> &mut StageStats {
        self.stages.entry(name.to_string()).or_default()
    }

    pub fn report(&self, now: DateTime<Utc>) -> Report {
        Report {
            started_at: self.started_at,
            generated_at: now,
            stages: self
                .stages
                .iter()
                .map(|(name, stage)| (name.clone(), stage.report(now)))
                .collect(),
        }
    }
}

fn minute_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(60)
}

fn second_of(at: DateTime<Utc>) -> u32 {
    at.timestamp().rem_euclid(60) as u32
}

impl StageStats {
    /// The bucket of `now`'s minute, dropping those older than the history.
    fn minute(&mut self, now: DateTime<Utc>) -> &mut Minute {
        let at = minute_of(now);
        if self.minutes.back().is_none_or(|last| last.at < at) {
            self.minutes.push_back(Minute {
                at,
                ..Minute::default()
            });
        }
        while self
            .minutes
            .front()
            .is_some_and(|first| first.at <= at - HISTORY_MINUTES)
        {
            self.minutes.pop_front();
        }
        // Outcomes arrive in time order; one from a clock step backwards joins the last minute.
        self.minutes.back_mut().expect("pushed above")
    }

    fn within(&self, now: DateTime<Utc>, minutes: i64) -> impl Iterator<Item = &Minute> {
        let now = minute_of(now);
        self.minutes
            .iter()
            .filter(move |minute| minute.at > now - minutes && minute.at <= now)
    }

    /// Results in the 60 seconds up to `now`.
    fn last_minute(&self, now: DateTime<Utc>) -> u64 {
        let this_minute = minute_of(now);
        let second = second_of(now);
        self.minutes
            .iter()
            .map(|minute| {
                if minute.at == this_minute {
                    minute.per_second.range(..=second).map(|(_, n)| n).sum()
                } else if minute.at == this_minute - 1 {
                    minute.per_second.range(second + 1..).map(|(_, n)| n).sum()
                } else {
                    0
                }
            })
            .sum()
    }

    fn report(&self, now: DateTime<Utc>) -> StageReport {
        let recent: Vec<&Minute> = self.within(now, 15).collect();
        let samples = |pick: fn(&Minute) -> &Reservoir| {
            recent
                .iter()
                .flat_map(|minute| pick(minute).values.iter().copied())
                .collect::<Vec<u64>>()
        };
        StageReport {
            results_last_minute: self.last_minute(now),
            results_last_15_minutes: recent.iter().map(|minute| minute.results).sum(),
            results_since_start: self.results,
            deduplicated_share: (self.results > 0)
                .then(|| self.deduplicated as f64 / self.results as f64),
            dead_letters_since_start: self.dead_letters,
            dead_letters_by_code: self.dead_letters_by_code.clone(),
            recent_dead_letters: self.recent_reasons.iter().cloned().collect(),
            latency_ms: percentiles(samples(|minute| &minute.latency)),
            processing_ms: percentiles(samples(|minute| &minute.processing)),
            batch_sizes: (!self.batch_sizes.is_empty()).then(|| self.batch_sizes.clone()),
            per_minute: self
                .within(now, HISTORY_MINUTES)
                .map(|minute| {
                    let mut latency = minute.latency.values.clone();
                    latency.sort_unstable();
                    MinutePoint {
                        minute: DateTime::from_timestamp(minute.at * 60, 0).unwrap_or_default(),
                        results: minute.results,
                        dead_letters: minute.dead_letters,
                        latency_p50_ms: rank(&latency, 50),
                        latency_p95_ms: rank(&latency, 95),
                    }
                })
                .collect(),
        }
    }
}

pub fn percentiles(mut values: Vec<u64>) -> Percentiles {
    values.sort_unstable();
    Percentiles {
        p50: rank(&values, 50),
        p95: rank(&values, 95),
        p99: rank(&values, 99),
    }
}

/// The nearest-rank percentile of sorted `values`: the smallest value with at least `percent`%
/// of them at or below it.
fn rank(sorted: &[u64], percent: usize) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use prism_core::contract::{
        DeadLetter, ErrorKind, ErrorReport, Origin, SourceObject, StageName, StageResult, Timings,
    };

    /// `seconds` after the start of a minute (1 800 000 000 s since the epoch is one).
    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn source(key: &str) -> SourceObject {
        SourceObject {
            bucket: "in".into(),
            key: key.into(),
            etag: "e".into(),
            size: 1,
            batch_job: None,
        }
    }

    fn result(
        stage: StageName,
        deduplicated: bool,
        latency_ms: i64,
        processing_ms: u64,
        now: DateTime<Utc>,
    ) -> Outcome {
        Outcome::Result(Box::new(StageResult {
            schema_version: 1,
            source: source("a.jpg"),
            content_hash: "h".into(),
            stage,
            fingerprint: "f".into(),
            deduplicated,
            outputs: vec![],
            payload: Default::default(),
            timings: Timings {
                received_at: now - TimeDelta::milliseconds(latency_ms),
                finished_at: now,
                processing_ms,
                batch_size: None,
            },
        }))
    }

    fn dead_letter(stage: &str, code: &str, n: usize) -> Outcome {
        Outcome::DeadLetter(Box::new(DeadLetter {
            schema_version: 1,
            stage: stage.into(),
            error: ErrorReport {
                kind: ErrorKind::Permanent,
                code: code.into(),
                reason: format!("reason {n}"),
            },
            attempts: 1,
            source: Some(source(&format!("{n}.jpg"))),
            content_hash: None,
            origin: Origin {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            original: serde_json::Value::Null,
            original_bytes: None,
            original_truncated: false,
            failed_at: at(0),
        }))
    }

    /// A detect result that ran in a batch of `size`.
    fn batched(size: u32) -> Outcome {
        let mut outcome = result(StageName::Detect, false, 100, 50, at(10));
        if let Outcome::Result(result) = &mut outcome {
            result.timings.batch_size = Some(size);
        }
        outcome
    }

    #[test]
    fn batch_sizes_count_the_results_that_did_the_work() {
        let mut stats = Stats::new(at(0));
        for outcome in [
            batched(1),
            batched(3),
            batched(3),
            batched(3),
            // A copy ran in no batch.
            result(StageName::Detect, true, 100, 50, at(10)),
        ] {
            stats.record(&outcome, at(10));
        }
        stats.record(&result(StageName::Thumbnail, false, 10, 5, at(10)), at(10));
        let report = stats.report(at(20));
        assert_eq!(
            report.stages["detect"].batch_sizes,
            Some(BTreeMap::from([(1, 1), (3, 3)]))
        );
        assert_eq!(report.stages["thumbnail"].batch_sizes, None, "no batches");
    }

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(rank(&[], 50), None);
        assert_eq!(rank(&[7], 99), Some(7));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(
            percentiles(hundred.clone()),
            Percentiles {
                p50: Some(50),
                p95: Some(95),
                p99: Some(99)
            }
        );
        let mut shuffled = hundred;
        shuffled.reverse();
        assert_eq!(percentiles(shuffled).p95, Some(95));
        assert_eq!(rank(&[1, 2, 3, 4], 50), Some(2));
    }

    #[test]
    fn counts_fall_out_of_their_windows() {
        let mut stats = Stats::new(at(0));
        // 3 results at 0:10, 2 at 1:30 (one deduplicated), 1 at 20:00.
        for _ in 0..3 {
            stats.record(&result(StageName::Detect, false, 100, 50, at(10)), at(10));
        }
        stats.record(&result(StageName::Detect, false, 300, 70, at(90)), at(90));
        stats.record(&result(StageName::Detect, true, 5, 1, at(90)), at(90));

        let report = stats.report(at(95));
        let detect = &report.stages["detect"];
        assert_eq!(
            detect.results_last_minute, 2,
            "0:10 is more than 60 s before 1:35"
        );
        assert_eq!(detect.results_last_15_minutes, 5);
        assert_eq!(detect.results_since_start, 5);
        assert_eq!(detect.deduplicated_share, Some(0.2));
        assert_eq!(detect.latency_ms.p50, Some(100));
        assert_eq!(detect.latency_ms.p99, Some(300));
        // Deduplicated results did no work: not in processing times.
        assert_eq!(
            detect.processing_ms,
            Percentiles {
                p50: Some(50),
                p95: Some(70),
                p99: Some(70)
            }
        );
        assert_eq!(detect.per_minute.len(), 2);
        assert_eq!(
            (detect.per_minute[0].results, detect.per_minute[1].results),
            (3, 2)
        );

        // Seen from 1:05, 0:10 is within the last minute (and 1:30 not yet).
        assert_eq!(stats.report(at(65)).stages["detect"].results_last_minute, 3);

        stats.record(
            &result(StageName::Detect, false, 10, 10, at(1200)),
            at(1200),
        );
        let later = stats.report(at(1200));
        let detect = &later.stages["detect"];
        assert_eq!(detect.results_last_15_minutes, 1);
        assert_eq!(detect.results_since_start, 6);
        assert_eq!(detect.latency_ms.p50, Some(10));
        // An hour on, the chart forgets minute 0 and keeps minute 1 (the last 60 minutes).
        stats.record(
            &result(StageName::Detect, false, 10, 10, at(3600 + 30)),
            at(3600 + 30),
        );
        let hour = stats.report(at(3600 + 30));
        let first = hour.stages["detect"].per_minute[0].minute;
        assert_eq!(first, at(60));
    }

    #[test]
    fn dead_letters_are_counted_by_code_and_the_last_twenty_kept() {
        let mut stats = Stats::new(at(0));
        for n in 0..25 {
            let code = if n % 5 == 0 {
                "too_many_pixels"
            } else {
                "corrupt_image"
            };
            stats.record(&dead_letter("detect", code, n), at(1));
        }
        stats.record(&dead_letter("dedup", "object_not_found", 99), at(1));
        let report = stats.report(at(2));
        let detect = &report.stages["detect"];
        assert_eq!(detect.dead_letters_since_start, 25);
        assert_eq!(detect.dead_letters_by_code["corrupt_image"], 20);
        assert_eq!(detect.dead_letters_by_code["too_many_pixels"], 5);
        assert_eq!(detect.recent_dead_letters.len(), 20);
        assert_eq!(
            detect.recent_dead_letters[0].reason, "reason 24",
            "newest first"
        );
        assert_eq!(detect.deduplicated_share, None);
        assert_eq!(report.stages["dedup"].dead_letters_since_start, 1);
    }

    #[test]
    fn samples_stay_bounded() {
        let mut stats = Stats::new(at(0));
        for n in 0..10_000 {
            stats.record(&result(StageName::Thumbnail, false, n, 1, at(5)), at(5));
        }
        let minute = &stats.stages["thumbnail"].minutes[0];
        assert_eq!(minute.latency.values.len(), SAMPLES_PER_MINUTE);
        assert_eq!(minute.results, 10_000);
        let p50 = stats.report(at(6)).stages["thumbnail"]
            .latency_ms
            .p50
            .unwrap();
        assert!(
            (3_500..6_500).contains(&p50),
            "a fair sample's median: {p50}"
        );
    }
}
