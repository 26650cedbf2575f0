//! `prism-loadgen latency`: upload -> thumbnail result on an idle served pipeline (dedup and one
//! thumbnail replica over the real servers), one photo at a time, its notification published right
//! after the upload as MinIO publishes it; where the time goes; and what `prism watch` (for S3
//! servers without notifications) would add: its pause between listings, and a listing.

use crate::served::{Layout, Pipeline};
use crate::table::Table;
use crate::thumbnails::{Percentiles, median};
use anyhow::ensure;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use prism_core::ports::store::Buckets;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

pub const GOAL_MS: f64 = 150.0;
/// `prism watch --interval-ms`'s default: the pause between two listings of the input bucket.
pub const WATCH_INTERVAL_MS: f64 = 500.0;
/// Idle between uploads, so that each finds the pipeline idle.
const PAUSE: Duration = Duration::from_millis(300);

pub const DESCRIPTION: &str = "Upload start -> thumbnail result read, one photo at a time (each new content) \
    on an idle served pipeline (dedup and one thumbnail replica over the real servers), its notification \
    published right after the upload; the first photo warms connections up and is not counted. Legs are \
    medians: the upload, notification -> dedup received, dedup and the Kafka hops, the stage's own work, \
    result -> read here.";

/// Where the time of one upload goes, in ms, in order.
pub const LEGS: [&str; 5] = [
    "upload",
    "-> dedup received",
    "dedup + Kafka hops",
    "stage work",
    "-> result read",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyReport {
    pub date: String,
    pub samples: usize,
    pub upload_to_result_ms: Percentiles,
    /// Medians, in the order of [`LEGS`].
    pub legs_ms: Vec<f64>,
    /// One listing of the input bucket, what each poll of `prism watch` costs.
    pub listing_ms: Percentiles,
}

impl LatencyReport {
    pub fn goal_met(&self) -> bool {
        self.upload_to_result_ms.p50 < GOAL_MS
    }
}

/// Measures `samples` uploads of `photos` (cycled, each marked new content).
pub async fn run(
    prism: &Path,
    work: &Path,
    photos: &[(String, Bytes)],
    samples: usize,
) -> anyhow::Result<LatencyReport> {
    ensure!(samples > 0 && !photos.is_empty(), "no photos to time");
    let pipeline = Pipeline::start(prism, &Layout::thumbnails(1), work, &[]).await?;
    let (producer, results) = pipeline.warmed_up().await?;

    let mut totals = Vec::with_capacity(samples);
    let mut legs: [Vec<f64>; 5] = Default::default();
    let ms = |from: DateTime<Utc>, to: DateTime<Utc>| {
        (to - from).num_microseconds().unwrap_or_default() as f64 / 1000.0
    };
    for n in 0..samples {
        let (name, bytes) = &photos[n % photos.len()];
        let key = format!("latency/{n:03}-{name}");
        let bytes = crate::predict::with_comment(bytes, &format!("prism-loadgen latency {n}"))?;
        let started = Instant::now();
        let sources = pipeline.upload(vec![(key.clone(), bytes)]).await?;
        let uploaded = started.elapsed();
        let notified_at = Utc::now();
        pipeline.notify(&producer, &sources).await?;
        let (result, arrived) = results.collect(&[key]).await?.remove(0);
        let read_at = Utc::now();
        totals.push(arrived.duration_since(started).as_secs_f64() * 1000.0);
        let timings = &result.timings;
        let processing = timings.processing_ms as f64;
        legs[0].push(uploaded.as_secs_f64() * 1000.0);
        legs[1].push(ms(notified_at, timings.received_at));
        legs[2].push(ms(timings.received_at, timings.finished_at) - processing);
        legs[3].push(processing);
        legs[4].push(ms(timings.finished_at, read_at));
        tokio::time::sleep(PAUSE).await;
    }
    let buckets = Buckets::s3(&pipeline.settings.s3);
    let mut listings = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        buckets.list(&pipeline.settings.input_bucket).await?;
        listings.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let percentiles = |times: &[f64]| Percentiles::of(times).expect("samples > 0");
    Ok(LatencyReport {
        date: chrono::Local::now().format("%Y-%m-%d %H:%M %Z").to_string(),
        samples,
        upload_to_result_ms: percentiles(&totals),
        legs_ms: legs
            .iter()
            .map(|times| median(times.iter().copied()))
            .collect(),
        listing_ms: percentiles(&listings),
    })
}

pub fn table(report: &LatencyReport) -> Table {
    let mut headers = vec!["samples", "p50 ms", "p90 ms", "p99 ms", "max ms"];
    headers.extend(LEGS);
    let mut table = Table::new(&headers);
    let p = report.upload_to_result_ms;
    let mut row = vec![report.samples.to_string()];
    row.extend([p.p50, p.p90, p.p99, p.max].map(|ms| format!("{ms:.0}")));
    row.extend(report.legs_ms.iter().map(|ms| format!("{ms:.0}")));
    table.push(row);
    table
}

/// What `prism watch` would add instead of notifications.
pub fn poll_sentence(report: &LatencyReport) -> String {
    let listing = report.listing_ms.p50;
    format!(
        "Without notifications, `prism watch` finds an upload at its next listing: it pauses {:.0} ms \
         between listings (`--interval-ms`), and a listing of this bucket took {listing:.0} ms (p50), so \
         the watcher adds about {:.0} ms on average and up to {:.0} ms.",
        WATCH_INTERVAL_MS,
        WATCH_INTERVAL_MS / 2.0 + listing,
        WATCH_INTERVAL_MS + listing,
    )
}

pub fn render_text(report: &LatencyReport) -> String {
    format!(
        "idle latency, {}\n\n{}\ngoal: upload -> result p50 < {GOAL_MS:.0} ms: {}\n{}\n",
        report.date,
        table(report).text(),
        if report.goal_met() { "met" } else { "NOT met" },
        poll_sentence(report)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_goal_and_the_watchers_share() {
        let p = |p50: f64| Percentiles {
            count: 10,
            p50,
            p90: p50,
            p99: p50,
            max: p50,
        };
        let report = LatencyReport {
            date: String::new(),
            samples: 10,
            upload_to_result_ms: p(120.0),
            legs_ms: vec![10.0, 5.0, 20.0, 80.0, 5.0],
            listing_ms: p(10.0),
        };
        assert!(report.goal_met());
        assert!(poll_sentence(&report).contains("about 260 ms on average and up to 510 ms"));
        assert_eq!(table(&report).rows[0].len(), 5 + LEGS.len());
        let slow = LatencyReport {
            upload_to_result_ms: p(150.0),
            ..report
        };
        assert!(!slow.goal_met());
    }
}
