//! `prism-loadgen saturation`: how much the pipeline costs on top of its work.
//!
//! The limit is the thumbnail stage's own code (`ThumbnailStage`, the code the service runs)
//! called in a plain loop on one thread per core over the photos already in memory: no store, no
//! bus, no claims. Against it, the pipeline with every photo queued at once: embedded (`prism run
//! --stages thumbnail`, reading and writing files) and served (dedup and one thumbnail replica,
//! a job per core, over the real servers, as `thumbnails` runs it).

use crate::dataset::{IMAGES_DIR, Manifest};
use crate::table::Table;
use crate::thumbnails::{self, BenchOptions, Machine, Method, Tools, median};
use anyhow::{Context, ensure};
use bytes::Bytes;
use nix::sys::resource::{UsageWho, getrusage};
use prism_core::runtime::config::Settings;
use prism_core::runtime::worker::Stage;
use prism_thumbnail::ThumbnailStage;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The goal: the pipeline at saturation makes at least this share of the limit's images/s.
pub const GOAL: f64 = 0.9;

pub struct SaturationOptions {
    pub dataset: PathBuf,
    pub prism: PathBuf,
    pub rounds: usize,
    pub work: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    pub name: String,
    pub images_per_s: f64,
    pub cpu_s: f64,
    /// images/s over the plain loop's.
    pub of_limit: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaturationReport {
    pub date: String,
    pub machine: Machine,
    pub images: usize,
    pub threads: usize,
    pub rounds: usize,
    pub rows: Vec<Throughput>,
    pub goal_met: bool,
}

pub fn run(options: &SaturationOptions) -> anyhow::Result<SaturationReport> {
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    let manifest = Manifest::load(&options.dataset)?;
    let images = options.dataset.join(IMAGES_DIR);
    let photos: Vec<Bytes> = manifest
        .photos
        .iter()
        .map(|photo| Ok(std::fs::read(images.join(&photo.file))?.into()))
        .collect::<anyhow::Result<_>>()?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let stage = ThumbnailStage::new(&Settings::default())?;
    let loops: Vec<(f64, f64)> = (0..options.rounds)
        .map(|_| plain_loop(&stage, &photos, threads))
        .collect::<anyhow::Result<_>>()?;
    let limit = median(loops.iter().map(|(rate, _)| *rate));
    let mut rows = vec![Throughput {
        name: format!("limit: ThumbnailStage in a plain loop, {threads} threads"),
        images_per_s: limit,
        cpu_s: median(loops.iter().map(|(_, cpu)| *cpu)),
        of_limit: 1.0,
    }];
    let pipeline = thumbnails::run(&BenchOptions {
        dataset: options.dataset.clone(),
        methods: vec![Method::Prism, Method::Served],
        rounds: options.rounds,
        workers: threads,
        replicas: vec![1],
        work: options.work.clone(),
        tools: Tools {
            python: PathBuf::new(),
            prism: options.prism.clone(),
            vipsthumbnail: PathBuf::new(),
        },
        vcpu_hour_usd: thumbnails::VCPU_HOUR_USD,
    })?;
    rows.extend(pipeline.methods.iter().map(|m| Throughput {
        name: m.name.clone(),
        images_per_s: m.images_per_s,
        cpu_s: m.cpu_s,
        of_limit: m.images_per_s / limit,
    }));
    let goal_met = rows[1..].iter().all(|row| row.of_limit >= GOAL);
    Ok(SaturationReport {
        date: chrono::Local::now().format("%Y-%m-%d %H:%M %Z").to_string(),
        machine: Machine::this_one(),
        images: photos.len(),
        threads,
        rounds: options.rounds,
        rows,
        goal_met,
    })
}

/// Every photo through the stage on `threads` threads, each taking the next photo; returns
/// (images/s, CPU-seconds of this process meanwhile). Fails if the stage fails on any.
fn plain_loop(
    stage: &ThumbnailStage,
    photos: &[Bytes],
    threads: usize,
) -> anyhow::Result<(f64, f64)> {
    let next = AtomicUsize::new(0);
    let cpu_before = own_cpu()?;
    let started = Instant::now();
    let failures: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut failures = 0;
                    while let Some(photo) = photos.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let outcome = stage.run(std::slice::from_ref(photo));
                        failures += outcome.iter().filter(|o| o.is_err()).count();
                    }
                    failures
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let wall = started.elapsed().as_secs_f64();
    ensure!(
        failures == 0,
        "the thumbnail stage failed on {failures} photos"
    );
    Ok((
        photos.len() as f64 / wall,
        (own_cpu()? - cpu_before).as_secs_f64(),
    ))
}

fn own_cpu() -> anyhow::Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let seconds = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}

pub fn table(report: &SaturationReport) -> Table {
    let mut table = Table::new(&["run", "images/s", "CPU s", "of the limit"]);
    for row in &report.rows {
        table.push(vec![
            row.name.clone(),
            format!("{:.2}", row.images_per_s),
            format!("{:.2}", row.cpu_s),
            format!("{:.0}%", row.of_limit * 100.0),
        ]);
    }
    table
}

pub fn goal_line(report: &SaturationReport) -> String {
    format!(
        "goal: pipeline throughput at saturation >= {:.0}% of the plain-loop limit on the same cores: {}",
        GOAL * 100.0,
        if report.goal_met { "met" } else { "NOT met" }
    )
}

pub fn render_text(report: &SaturationReport) -> String {
    format!(
        "saturation, {} photos, medians of {} rounds, {} ({} cores), {}\n\n{}\n{}\n",
        report.images,
        report.rounds,
        report.machine.cpu_model,
        report.machine.cores,
        report.date,
        table(report).text(),
        goal_line(report)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_loop_runs_every_photo_and_fails_on_a_bad_one() {
        let (_, jpeg) = thumbnails::warmup_jpeg();
        let stage = ThumbnailStage::new(&Settings::default()).unwrap();
        let (rate, _) = plain_loop(&stage, &[jpeg.clone(), jpeg.clone(), jpeg], 2).unwrap();
        assert!(rate > 0.0);
        let broken = Bytes::from_static(b"not an image");
        assert!(plain_loop(&stage, &[broken], 2).is_err());
    }
}
