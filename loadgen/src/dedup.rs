//! `prism-loadgen dedup`: what deduplication saves and what it costs.
//!
//! For each share of exact copies in a photo set of the same size, `prism run --stages thumbnail`
//! (embedded, fresh state each run) over the set as it is, where every copy is recognised, and
//! over its twin in which each copy carries a JPEG comment: the same pixels and the same work, but
//! new content to the pipeline, as if there were no deduplication. The saving is one minus their
//! ratio, in CPU-seconds and wall time.
//!
//! The overhead per event is dedup's own work for one upload, timed around the code dedup runs,
//! one event at a time: hashing the object (BLAKE3 over its bytes, read from the store) and
//! admitting it (a claim created for new content; read and updated for a copy). Twice: over the
//! embedded mode's folder and memory index, and over the served mode's S3 (Garage) and CouchDB.
//! Dedup batches its claims in the service, so the served figure is a bound per event.

use crate::dataset::{IMAGES_DIR, Manifest};
use crate::measure;
use crate::table::Table;
use crate::thumbnails::{Machine, Percentiles, median};
use anyhow::{Context, ensure};
use chrono::Utc;
use prism_core::contract::{SourceObject, StageName};
use prism_core::ports::claims::couch::CouchIndex;
use prism_core::ports::claims::memory::MemoryIndex;
use prism_core::ports::claims::{Admission, ClaimIndex, SeenSource, Work, admit_all};
use prism_core::ports::store::Buckets;
use prism_core::runtime::config::{self, Settings};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub struct DedupOptions {
    pub prism: PathBuf,
    /// (share of copies, the photo set with that share), all sets the same size.
    pub sets: Vec<(f64, PathBuf)>,
    pub rounds: usize,
    pub work: PathBuf,
}

/// Medians over the rounds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Measured {
    pub wall_s: f64,
    pub cpu_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareResult {
    pub duplicates: f64,
    pub files: usize,
    pub copies: usize,
    pub with_dedup: Measured,
    pub without_dedup: Measured,
    /// 1 - with / without.
    pub cpu_saving: f64,
    pub wall_saving: f64,
}

/// The goal: dedup's own time per event without the object download (BLAKE3 over the bytes plus
/// the claim), p99, in ms.
pub const OVERHEAD_GOAL_MS: f64 = 5.0;

/// Dedup's own time per event over one store and index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overhead {
    pub over: String,
    /// Read + hash + claim, by kind of event.
    pub new_content_ms: Option<Percentiles>,
    pub copies_ms: Option<Percentiles>,
    /// Every event's parts: BLAKE3 over its bytes in memory, the claim alone, and the two together
    /// (the overhead without the download).
    #[serde(default)]
    pub hash_ms: Option<Percentiles>,
    #[serde(default)]
    pub claim_ms: Option<Percentiles>,
    #[serde(default)]
    pub without_download_ms: Option<Percentiles>,
}

impl Overhead {
    pub fn goal_met(&self) -> bool {
        self.without_download_ms
            .is_some_and(|p| p.p99 < OVERHEAD_GOAL_MS)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DedupReport {
    pub date: String,
    pub machine: Machine,
    pub rounds: usize,
    pub shares: Vec<ShareResult>,
    pub overhead: Vec<Overhead>,
}

pub fn run(options: &DedupOptions) -> anyhow::Result<DedupReport> {
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    ensure!(
        options.prism.exists(),
        "{} is missing: cargo build --release -p prism-cli, or name it with --prism",
        options.prism.display()
    );
    std::fs::create_dir_all(&options.work)?;
    let mut shares = Vec::new();
    for (share, set) in &options.sets {
        let manifest = Manifest::load(set)?;
        let images = set.join(IMAGES_DIR);
        let unique = options.work.join(format!("unique-{share}"));
        without_copies(&images, &manifest, &unique)?;
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for round in 1..=options.rounds {
            with.push(embedded_run(&options.prism, &images, &options.work)?);
            without.push(embedded_run(&options.prism, &unique, &options.work)?);
            eprintln!(
                "copies {:.0}%, round {round}/{}: with dedup {:.2} s wall {:.2} s CPU, without {:.2} s wall {:.2} s CPU",
                share * 100.0,
                options.rounds,
                with[round - 1].wall_s,
                with[round - 1].cpu_s,
                without[round - 1].wall_s,
                without[round - 1].cpu_s
            );
        }
        let (with_dedup, without_dedup) = (medians(&with), medians(&without));
        shares.push(ShareResult {
            duplicates: *share,
            files: manifest.photos.len(),
            copies: manifest.duplicates,
            with_dedup,
            without_dedup,
            cpu_saving: 1.0 - with_dedup.cpu_s / without_dedup.cpu_s,
            wall_saving: 1.0 - with_dedup.wall_s / without_dedup.wall_s,
        });
    }
    // The set with the most copies times both kinds of admission.
    let (_, set) = options
        .sets
        .iter()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .context("no photo sets")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let overhead = vec![
        runtime.block_on(embedded_overhead(set))?,
        runtime.block_on(served_overhead(set))?,
    ];
    Ok(DedupReport {
        date: chrono::Local::now().format("%Y-%m-%d %H:%M %Z").to_string(),
        machine: Machine::this_one(),
        rounds: options.rounds,
        shares,
        overhead,
    })
}

fn medians(runs: &[Measured]) -> Measured {
    Measured {
        wall_s: median(runs.iter().map(|r| r.wall_s)),
        cpu_s: median(runs.iter().map(|r| r.cpu_s)),
    }
}

/// `prism run IMAGES --stages thumbnail` into a fresh folder (so no claim of an earlier run).
fn embedded_run(prism: &Path, images: &Path, work: &Path) -> anyhow::Result<Measured> {
    let out = work.join("dedup-out");
    let _ = std::fs::remove_dir_all(&out);
    let mut command = Command::new(prism);
    command
        .arg("run")
        .arg(images)
        .arg("--out")
        .arg(&out)
        .args(["--stages", "thumbnail"]);
    let usage = measure::run_measured(vec![vec![command]], &work.join("dedup.log"))?;
    std::fs::remove_dir_all(&out)?;
    Ok(Measured {
        wall_s: usage.wall.as_secs_f64(),
        cpu_s: usage.cpu.as_secs_f64(),
    })
}

/// The set in `out` with every copy made new content by a JPEG comment naming the copy (its
/// pixels unchanged; one comment per copy, since copies of one original given the same comment
/// would be copies of each other again); the originals are the same files.
fn without_copies(images: &Path, manifest: &Manifest, out: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out)?;
    for photo in &manifest.photos {
        let bytes = std::fs::read(images.join(&photo.file))?;
        let bytes = match &photo.duplicate_of {
            Some(original) => crate::predict::with_comment(
                &bytes,
                &format!("prism-loadgen dedup: {}, a copy of {original}", photo.file),
            )?
            .to_vec(),
            None => bytes,
        };
        std::fs::write(out.join(&photo.file), bytes)?;
    }
    Ok(())
}

/// Times hash + admission for each file of `files` in `bucket`, one event at a time, split into
/// new content and copies.
async fn time_admissions(
    over: &str,
    buckets: &Buckets,
    bucket: &str,
    index: &dyn ClaimIndex,
    files: &[(String, u64)],
) -> anyhow::Result<Overhead> {
    let settings = Settings::default();
    let fingerprint = settings.stages.fingerprint(StageName::Thumbnail);
    let (mut new_content, mut copies) = (Vec::new(), Vec::new());
    let (mut hashing, mut claims, mut without_download) = (Vec::new(), Vec::new(), Vec::new());
    for (key, size) in files {
        let source = SourceObject {
            bucket: bucket.to_string(),
            key: key.clone(),
            etag: String::new(),
            size: *size,
            batch_job: None,
        };
        let started = Instant::now();
        let hashed = buckets
            .hash(&source, settings.stages.limits.max_bytes)
            .await?;
        let work = Work {
            stage: StageName::Thumbnail,
            fingerprint: &fingerprint,
            content_hash: &hashed.hash.0,
        };
        let seen = SeenSource {
            source,
            received_at: Utc::now(),
        };
        let claimed = Instant::now();
        let admission = admit_all(index, &[(work, seen)], settings.claim_lease)
            .await?
            .remove(0);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let claim_ms = claimed.elapsed().as_secs_f64() * 1000.0;
        match admission {
            Admission::Run(_) => new_content.push(ms),
            _ => copies.push(ms),
        }
        // The hash alone, over bytes already in memory (read again, untimed): what dedup adds to
        // the download it streams them from.
        let (bytes, _) = buckets
            .read(bucket, key, settings.stages.limits.max_bytes)
            .await?;
        let hashed = Instant::now();
        std::hint::black_box(blake3::hash(&bytes));
        let hash_ms = hashed.elapsed().as_secs_f64() * 1000.0;
        hashing.push(hash_ms);
        claims.push(claim_ms);
        without_download.push(hash_ms + claim_ms);
    }
    Ok(Overhead {
        over: over.into(),
        new_content_ms: Percentiles::of(&new_content),
        copies_ms: Percentiles::of(&copies),
        hash_ms: Percentiles::of(&hashing),
        claim_ms: Percentiles::of(&claims),
        without_download_ms: Percentiles::of(&without_download),
    })
}

fn set_files(set: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    Ok(Manifest::load(set)?
        .photos
        .into_iter()
        .map(|photo| (photo.file, photo.bytes))
        .collect())
}

/// The embedded mode's path: the folder as its bucket, the memory claim index.
async fn embedded_overhead(set: &Path) -> anyhow::Result<Overhead> {
    let bucket = "input";
    let buckets = Buckets::folders(HashMap::from([(bucket.to_string(), set.join(IMAGES_DIR))]));
    let index = MemoryIndex::default();
    time_admissions(
        "embedded: folder + memory index",
        &buckets,
        bucket,
        &index,
        &set_files(set)?,
    )
    .await
}

/// The served mode's path: the set uploaded to a fresh bucket on the S3 server, claims in a
/// fresh CouchDB database.
async fn served_overhead(set: &Path) -> anyhow::Result<Overhead> {
    let mut settings: Settings = config::load().context("Prism's configuration")?;
    ensure!(
        std::env::var_os("PRISM_COUCHDB__URL").is_some()
            && std::env::var_os("PRISM_S3__ENDPOINT").is_some(),
        "PRISM_COUCHDB__URL and PRISM_S3__ENDPOINT are not set: the served overhead needs the real servers \
         (deploy/local/servers.sh start && eval \"$(deploy/local/servers.sh env)\")"
    );
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let bucket = format!("loadgen-{run}-dedup");
    settings.couchdb.database = format!("loadgen-{run}-dedup");
    let buckets = Buckets::s3(&settings.s3);
    buckets.create_bucket(&bucket).await?;
    let files = set_files(set)?;
    let objects = files
        .iter()
        .map(|(file, _)| {
            Ok((
                file.clone(),
                std::fs::read(set.join(IMAGES_DIR).join(file))?.into(),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    crate::upload(&buckets, &bucket, objects, 8).await?;
    let index = CouchIndex::connect(&settings.couchdb).await?;
    time_admissions(
        "served: S3 (Garage) + CouchDB",
        &buckets,
        &bucket,
        &index,
        &files,
    )
    .await
}

pub fn shares_table(report: &DedupReport) -> Table {
    let mut table = Table::new(&[
        "copies",
        "files",
        "CPU s with dedup",
        "CPU s without",
        "CPU saved",
        "wall s with dedup",
        "wall s without",
        "wall saved",
    ]);
    for share in &report.shares {
        table.push(vec![
            format!("{:.0}% ({})", share.duplicates * 100.0, share.copies),
            share.files.to_string(),
            format!("{:.2}", share.with_dedup.cpu_s),
            format!("{:.2}", share.without_dedup.cpu_s),
            format!("{:.0}%", share.cpu_saving * 100.0),
            format!("{:.2}", share.with_dedup.wall_s),
            format!("{:.2}", share.without_dedup.wall_s),
            format!("{:.0}%", share.wall_saving * 100.0),
        ]);
    }
    table
}

pub fn overhead_table(report: &DedupReport) -> Table {
    let mut table = Table::new(&[
        "hash + claim over",
        "event",
        "count",
        "p50 ms",
        "p99 ms",
        "max ms",
    ]);
    for overhead in &report.overhead {
        for (kind, times) in [
            ("new content", overhead.new_content_ms),
            ("copy", overhead.copies_ms),
        ] {
            if let Some(p) = times {
                table.push(vec![
                    overhead.over.clone(),
                    kind.into(),
                    p.count.to_string(),
                    format!("{:.2}", p.p50),
                    format!("{:.2}", p.p99),
                    format!("{:.2}", p.max),
                ]);
            }
        }
    }
    table
}

/// Every event's overhead without the download, in parts, against the goal.
pub fn without_download_table(report: &DedupReport) -> Table {
    let mut table = Table::new(&[
        "without the download, over",
        "events",
        "BLAKE3 p50 ms",
        "BLAKE3 p99 ms",
        "claim p50 ms",
        "claim p99 ms",
        "both p50 ms",
        "both p99 ms",
        "goal",
    ]);
    let cell = |p: Option<Percentiles>, pick: fn(&Percentiles) -> f64| {
        p.map_or("-".into(), |p| format!("{:.2}", pick(&p)))
    };
    for overhead in &report.overhead {
        table.push(vec![
            overhead.over.clone(),
            overhead
                .without_download_ms
                .map_or("0".into(), |p| p.count.to_string()),
            cell(overhead.hash_ms, |p| p.p50),
            cell(overhead.hash_ms, |p| p.p99),
            cell(overhead.claim_ms, |p| p.p50),
            cell(overhead.claim_ms, |p| p.p99),
            cell(overhead.without_download_ms, |p| p.p50),
            cell(overhead.without_download_ms, |p| p.p99),
            format!(
                "p99 < {OVERHEAD_GOAL_MS} ms: {}",
                if overhead.goal_met() {
                    "met"
                } else {
                    "NOT met"
                }
            ),
        ]);
    }
    table
}

/// Whether every store and index meets the overhead goal.
pub fn overhead_goal_met(report: &DedupReport) -> bool {
    !report.overhead.is_empty() && report.overhead.iter().all(Overhead::goal_met)
}

/// CPU-seconds and wall time with and without deduplication against the share of copies.
pub fn charts(report: &DedupReport) -> anyhow::Result<Vec<(String, String)>> {
    let series = |name: &str, value: fn(&ShareResult) -> f64| crate::charts::Series {
        name: name.into(),
        points: report
            .shares
            .iter()
            .map(|s| (s.duplicates * 100.0, value(s)))
            .collect(),
        reference: false,
    };
    let svg = crate::charts::line_chart(&crate::charts::LineChart {
        title: "Deduplication: prism run --stages thumbnail",
        x_label: "copies in the set, %",
        y_label: "seconds",
        series: vec![
            series("CPU s with dedup", |s| s.with_dedup.cpu_s),
            series("CPU s without", |s| s.without_dedup.cpu_s),
            series("wall s with dedup", |s| s.with_dedup.wall_s),
            series("wall s without", |s| s.without_dedup.wall_s),
        ],
    })?;
    Ok(vec![("dedup".into(), svg)])
}

pub fn render_text(report: &DedupReport) -> String {
    format!(
        "deduplication, medians of {} rounds, {} ({} cores), {}\n\n{}\n{}\n{}",
        report.rounds,
        report.machine.cpu_model,
        report.machine.cores,
        report.date,
        shares_table(report).text(),
        overhead_table(report).text(),
        without_download_table(report).text(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Photo;

    #[test]
    fn copies_become_new_content_with_the_same_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let (_, jpeg) = crate::thumbnails::warmup_jpeg();
        for name in ["a.jpg", "b.jpg", "c.jpg"] {
            std::fs::write(images.join(name), &jpeg).unwrap();
        }
        let photo = |file: &str, duplicate_of: Option<&str>| Photo {
            file: file.into(),
            sha256: String::new(),
            bytes: jpeg.len() as u64,
            width: 64,
            height: 48,
            duplicate_of: duplicate_of.map(str::to_string),
            recipe: None,
        };
        let manifest = Manifest {
            generator: String::new(),
            seed: 1,
            distinct: 1,
            duplicates: 2,
            sources: Vec::new(),
            photos: vec![
                photo("a.jpg", None),
                photo("b.jpg", Some("a.jpg")),
                photo("c.jpg", Some("a.jpg")),
            ],
        };
        let out = dir.path().join("unique");
        without_copies(&images, &manifest, &out).unwrap();
        let original = std::fs::read(out.join("a.jpg")).unwrap();
        let copy = std::fs::read(out.join("b.jpg")).unwrap();
        assert_eq!(original, jpeg, "originals unchanged");
        assert_ne!(copy, original, "the copy is new content");
        let other_copy = std::fs::read(out.join("c.jpg")).unwrap();
        assert_ne!(
            other_copy, copy,
            "two copies of one original are not copies of each other"
        );
        let pixels = |bytes: &[u8]| image::load_from_memory(bytes).unwrap().to_rgb8();
        assert_eq!(pixels(&copy), pixels(&original));
    }

    #[tokio::test]
    async fn times_new_content_and_copies_apart() {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [("a", "one"), ("b", "two"), ("c", "one")] {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        let buckets = Buckets::folders(HashMap::from([("in".to_string(), dir.path().into())]));
        let files: Vec<(String, u64)> = ["a", "b", "c"].map(|f| (f.to_string(), 3)).into();
        let overhead = time_admissions("test", &buckets, "in", &MemoryIndex::default(), &files)
            .await
            .unwrap();
        assert_eq!(overhead.new_content_ms.unwrap().count, 2);
        assert_eq!(overhead.copies_ms.unwrap().count, 1);
        let (hash, claim, both) = (
            overhead.hash_ms.unwrap(),
            overhead.claim_ms.unwrap(),
            overhead.without_download_ms.unwrap(),
        );
        assert_eq!((hash.count, claim.count, both.count), (3, 3, 3));
        assert!(
            both.max >= hash.max.max(claim.max),
            "both parts are counted"
        );
    }
}
