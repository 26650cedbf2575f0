//! `prism-loadgen jobs`: batch jobs on the served pipeline (dedup, one replica of each stage asked
//! and `prism serve jobs`, over the real servers).
//!
//! 1. Plan vs actual: what `prism plan` predicts for an N-image job against the job run for real
//!    (its summary's wall time and stage seconds, and the stage processes' CPU time).
//! 2. Interactive latency during a job: uploads announced one every interval (open loop: each
//!    whether or not the one before is done), upload start -> result read, on the idle pipeline
//!    and again while a big job runs.
//!
//! The helpers every batch experiment uses (photos, a job's objects, submitting and following a
//! job) are here too; `day` uses them.

use crate::dataset::{IMAGES_DIR, Manifest};
use crate::measure::Setting;
use crate::predict::with_comment;
use crate::served::{Layout, Pipeline, Results};
use crate::table::Table;
use crate::thumbnails::Machine;
use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use prism_core::contract::StageName;
use prism_core::ports::batch::{BatchJob, JobBook};
use prism_core::ports::claims::couch::CouchIndex;
use prism_jobs::report::{Percentiles, Summary, percentiles};
use prism_jobs::requests::{self, Submission};
use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The issue's goal: the planned duration within this share of the measured wall time.
pub const PLAN_TOLERANCE: f64 = 0.2;
/// The issue's goal: upload p95 during a job at most this many times the p95 alone.
pub const LATENCY_GOAL: f64 = 2.0;
/// Objects uploaded at once when a job's objects are put in the input bucket.
const UPLOAD_CHUNK: usize = 32;
/// Images of the set copied into the calibration sample, spread over the set.
const CALIBRATION_SAMPLE: usize = 24;
/// How often a job's status is read while it runs.
const POLL: Duration = Duration::from_millis(500);
/// The longest any one job may take before the experiment gives up on it.
const JOB_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Outcomes of the background job before the interactive uploads start: the pipeline is busy
/// with it by then, not still listing.
const BUSY_AFTER: u64 = 20;

pub const DESCRIPTION: &str = "The served pipeline: dedup, one replica of each stage and the job \
    manager (`prism serve jobs`) over the real servers, on this machine's cores. Plan: `prism plan \
    --images N --stages S --megapixels <the set's mean> --replicas 1 --json` from the stages' \
    calibration; actual: a job over N objects under a prefix of the input bucket (the set's photos \
    cycled, each made new content by a JPEG comment), submitted and followed through the job book, \
    its summary's wall time (submission -> last outcome) and stage seconds (each stage's own timing), \
    and the CPU-seconds of the stage processes meanwhile (from /proc). Interactive latency: upload \
    start -> result read, uploads announced on the uploads topic one per interval whether or not \
    the one before is done, first on the idle pipeline, then while a big job runs (started once the \
    job has its first outcomes).";

pub struct JobsOptions {
    pub prism: PathBuf,
    /// A photo set made by `dataset`.
    pub dataset: PathBuf,
    pub work: PathBuf,
    /// The calibration file `prism plan` reads (made from a sample of the set if missing).
    pub calibration: PathBuf,
    pub stages: Vec<StageName>,
    /// Objects of the planned job.
    pub images: usize,
    /// Objects of the job the interactive uploads compete with.
    pub background_images: usize,
    /// Interactive uploads timed, alone and during the job each.
    pub samples: usize,
    /// Between two interactive uploads.
    pub interval: Duration,
}

/// The photos of a set in memory, with their mean size.
pub struct Photos {
    pub files: Vec<(String, Bytes)>,
    pub megapixels_mean: f64,
}

impl Photos {
    pub fn load(dataset: &Path) -> anyhow::Result<Photos> {
        let manifest = Manifest::load(dataset)?;
        ensure!(
            !manifest.photos.is_empty(),
            "{} has no photos",
            dataset.display()
        );
        let megapixels: f64 = manifest
            .photos
            .iter()
            .map(|p| f64::from(p.width) * f64::from(p.height) / 1e6)
            .sum();
        let files = manifest
            .photos
            .iter()
            .map(|photo| {
                let bytes = std::fs::read(dataset.join(IMAGES_DIR).join(&photo.file))?;
                Ok((photo.file.clone(), Bytes::from(bytes)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Photos {
            megapixels_mean: megapixels / files.len() as f64,
            files,
        })
    }
}

/// What `prism plan --json` answers, the figures compared here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedJob {
    pub images: u64,
    pub megapixels: f64,
    pub duration_s: f64,
    pub cpu_s: f64,
    pub stages: Vec<PlannedStage>,
    pub costs: PlannedCosts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedStage {
    pub stage: StageName,
    pub cpu_s: f64,
    pub duration_s: f64,
    pub replicas: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedCosts {
    pub vm_usd: f64,
}

/// One stage of the planned job: planned against measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageComparison {
    pub stage: StageName,
    pub planned_cpu_s: f64,
    pub planned_duration_s: f64,
    /// The summary's stage seconds of this stage (each stage's own timing of its work).
    pub stage_seconds: f64,
    /// User + system time of the stage's processes during the job.
    pub process_cpu_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanVsActual {
    pub plan: PlannedJob,
    pub summary: Summary,
    /// User + system time of dedup during the job: pipeline work the plan does not model.
    pub dedup_cpu_s: f64,
    pub jobs_cpu_s: f64,
    pub stages: Vec<StageComparison>,
}

impl PlanVsActual {
    /// Measured wall time over planned duration.
    pub fn ratio(&self) -> f64 {
        ratio(self.summary.wall_s, self.plan.duration_s)
    }

    pub fn goal_met(&self) -> bool {
        within(self.ratio(), PLAN_TOLERANCE)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyDuringJob {
    pub samples: usize,
    pub interval_ms: u64,
    pub alone_ms: Percentiles,
    pub during_ms: Percentiles,
    /// The job the uploads competed with.
    pub job: Summary,
    /// Whether the job was still running when the last interactive result came.
    pub job_ran_throughout: bool,
}

impl LatencyDuringJob {
    /// p95 during the job over p95 alone.
    pub fn ratio(&self) -> f64 {
        ratio(self.during_ms.p95 as f64, self.alone_ms.p95 as f64)
    }

    pub fn goal_met(&self) -> bool {
        self.ratio() <= LATENCY_GOAL
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobsReport {
    #[serde(flatten)]
    pub setting: Setting,
    pub dataset: String,
    pub stages: Vec<StageName>,
    pub plan_vs_actual: PlanVsActual,
    pub latency: LatencyDuringJob,
}

/// `measured / planned`; 0 when nothing was planned.
pub fn ratio(measured: f64, planned: f64) -> f64 {
    if planned > 0.0 {
        measured / planned
    } else {
        0.0
    }
}

/// Whether a ratio is within `tolerance` of 1.
pub fn within(ratio: f64, tolerance: f64) -> bool {
    (ratio - 1.0).abs() <= tolerance
}

pub async fn run(options: &JobsOptions) -> anyhow::Result<JobsReport> {
    ensure!(
        options.images > 0 && options.background_images > 0 && options.samples > 0,
        "--images, --background-images and --samples must be positive"
    );
    ensure!(
        options.stages.contains(&StageName::Thumbnail),
        "the interactive uploads are timed to their thumbnail result: --stages must hold thumbnail"
    );
    let date = chrono::Local::now().format("%Y-%m-%d %H:%M %Z").to_string();
    let load_before = crate::measure::load_average();
    let photos = Photos::load(&options.dataset)?;
    if !options.calibration.exists() {
        calibrate(options, &photos)?;
    }
    let plan = plan(
        &options.prism,
        &options.calibration,
        options.images,
        &options.stages,
        photos.megapixels_mean,
    )?;
    let layout = Layout {
        stages: options.stages.clone(),
        replicas: 1,
        jobs: true,
    };
    let pipeline = Pipeline::start(&options.prism, &layout, &options.work, &[]).await?;
    let book = CouchIndex::connect(&pipeline.settings.couchdb).await?;
    eprintln!(
        "uploading {} + {} objects…",
        options.images, options.background_images
    );
    upload_objects(
        &pipeline,
        "planned/",
        &photos,
        options.images,
        "planned",
        1.0,
    )
    .await?;
    upload_objects(
        &pipeline,
        "background/",
        &photos,
        options.background_images,
        "background",
        1.0,
    )
    .await?;
    let (producer, results) = pipeline.warmed_up().await?;

    eprintln!("the planned job: {} objects…", options.images);
    let cpu_before = ServiceCpu::of(&pipeline, &options.stages)?;
    let planned = submit(
        &book,
        &pipeline,
        "planned/",
        &options.stages,
        None,
        "planned",
    )
    .await?;
    let finished = follow(&book, &pipeline, &planned.id).await?;
    let cpu = ServiceCpu::of(&pipeline, &options.stages)?.since(&cpu_before);
    let stages = compare_stages(&plan, &finished.summary, &cpu);
    let plan_vs_actual = PlanVsActual {
        plan,
        summary: finished.summary,
        dedup_cpu_s: cpu.dedup,
        jobs_cpu_s: cpu.jobs,
        stages,
    };

    eprintln!("interactive uploads alone…");
    let interactive = Interactive {
        pipeline: &pipeline,
        producer: &producer,
        results: &results,
        photos: &photos,
        samples: options.samples,
        interval: options.interval,
    };
    let mut alone = interactive.time("alone").await?;
    eprintln!(
        "interactive uploads during a {}-object job…",
        options.background_images
    );
    let background = submit(
        &book,
        &pipeline,
        "background/",
        &options.stages,
        None,
        "background",
    )
    .await?;
    wait_for_outcomes(&book, &pipeline, &background.id, BUSY_AFTER).await?;
    let mut during = interactive.time("during").await?;
    let job_ran_throughout = !requests::status(&book, &background.id)
        .await?
        .job
        .state
        .is_final();
    let background = follow(&book, &pipeline, &background.id).await?;
    let percentiles = |values: &mut [i64]| percentiles(values).expect("samples > 0");
    Ok(JobsReport {
        setting: Setting {
            date,
            machine: Machine::this_one(),
            load_before,
            photos: photos.files.len(),
            megapixels_mean: photos.megapixels_mean,
        },
        dataset: options.dataset.display().to_string(),
        stages: options.stages.clone(),
        plan_vs_actual,
        latency: LatencyDuringJob {
            samples: options.samples,
            interval_ms: options.interval.as_millis() as u64,
            alone_ms: percentiles(&mut alone),
            during_ms: percentiles(&mut during),
            job: background.summary,
            job_ran_throughout,
        },
    })
}

/// `prism plan --calibrate` on a sample of the set spread over its sizes.
fn calibrate(options: &JobsOptions, photos: &Photos) -> anyhow::Result<()> {
    let sample = options.work.join("calibration-sample");
    std::fs::create_dir_all(&sample)?;
    let step = (photos.files.len() / CALIBRATION_SAMPLE).max(1);
    for (name, bytes) in photos.files.iter().step_by(step).take(CALIBRATION_SAMPLE) {
        std::fs::write(sample.join(name), bytes)?;
    }
    eprintln!(
        "no calibration at {}: calibrating on {}…",
        options.calibration.display(),
        sample.display()
    );
    let stages = stage_list(&options.stages);
    let status = Command::new(&options.prism)
        .arg("plan")
        .arg("--calibrate")
        .arg("--sample")
        .arg(&sample)
        .args(["--stages", &stages])
        .arg("--calibration")
        .arg(&options.calibration)
        .status()
        .context("running prism plan --calibrate")?;
    ensure!(status.success(), "prism plan --calibrate failed: {status}");
    Ok(())
}

/// `prism plan --json` for `images` of `megapixels` through `stages` on one replica each.
pub fn plan(
    prism: &Path,
    calibration: &Path,
    images: usize,
    stages: &[StageName],
    megapixels: f64,
) -> anyhow::Result<PlannedJob> {
    let output = Command::new(prism)
        .arg("plan")
        .args(["--images", &images.to_string()])
        .args(["--stages", &stage_list(stages)])
        .args(["--megapixels", &format!("{megapixels:.3}")])
        .args(["--replicas", "1", "--json"])
        .arg("--calibration")
        .arg(calibration)
        .output()
        .context("running prism plan")?;
    if !output.status.success() {
        bail!(
            "prism plan failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("prism plan's JSON")
}

pub fn stage_list(stages: &[StageName]) -> String {
    stages
        .iter()
        .map(|stage| stage.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Uploads `count` objects under `prefix`: the set's photos cycled from the start, the first
/// `fresh` share of them made new content (a JPEG comment naming `tag` and the object), the rest
/// the set's own bytes (copies of what other objects may hold).
pub async fn upload_objects(
    pipeline: &Pipeline,
    prefix: &str,
    photos: &Photos,
    count: usize,
    tag: &str,
    fresh: f64,
) -> anyhow::Result<()> {
    let fresh = fresh_objects(count, fresh);
    let all: Vec<usize> = (0..count).collect();
    for chunk in all.chunks(UPLOAD_CHUNK) {
        let objects = chunk
            .iter()
            .map(|&n| {
                let (name, bytes) = &photos.files[n % photos.files.len()];
                let bytes = if n < fresh {
                    with_comment(bytes, &format!("prism-loadgen {tag} {n}"))?
                } else {
                    bytes.clone()
                };
                Ok((format!("{prefix}{n:05}-{name}"), bytes))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        pipeline.upload(objects).await?;
    }
    Ok(())
}

/// How many of `count` objects are made new content for a `share` of fresh ones.
pub fn fresh_objects(count: usize, share: f64) -> usize {
    ((count as f64) * share.clamp(0.0, 1.0)).round() as usize
}

/// Submits a job over `prefix` as `prism job submit` does.
pub async fn submit(
    book: &CouchIndex,
    pipeline: &Pipeline,
    prefix: &str,
    stages: &[StageName],
    deadline_s: Option<u64>,
    name: &str,
) -> anyhow::Result<BatchJob> {
    Ok(requests::submit(
        book,
        &pipeline.settings,
        Submission {
            bucket: None,
            prefix: prefix.into(),
            stages: stages.to_vec(),
            deadline_s,
            name: Some(name.into()),
        },
    )
    .await?)
}

/// A job that ended, as its summary tells it.
pub struct FinishedJob {
    pub job: BatchJob,
    pub summary: Summary,
    /// Its first outcome's time, if it had one.
    pub first_outcome: Option<DateTime<Utc>>,
}

/// Follows the job until it ends (failing if a service exits meanwhile); its summary and first
/// outcome.
pub async fn follow(
    book: &CouchIndex,
    pipeline: &Pipeline,
    id: &str,
) -> anyhow::Result<FinishedJob> {
    let deadline = Instant::now() + JOB_TIMEOUT;
    let job = loop {
        let job = requests::status(book, id).await?.job;
        if job.state.is_final() && job.summary.is_some() {
            break job;
        }
        ensure!(
            Instant::now() < deadline,
            "job {id} did not end within {JOB_TIMEOUT:?}"
        );
        pipeline.check_alive()?;
        tokio::time::sleep(POLL).await;
    };
    let summary: Summary = serde_json::from_value(job.summary.clone().expect("ended"))
        .with_context(|| format!("job {id}'s summary"))?;
    let first_outcome = first_outcome(book, id).await?;
    Ok(FinishedJob {
        job,
        summary,
        first_outcome,
    })
}

/// Waits until `outcomes` objects of the job have every stage's outcome.
async fn wait_for_outcomes(
    book: &CouchIndex,
    pipeline: &Pipeline,
    id: &str,
    outcomes: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let status = requests::status(book, id).await?;
        if status.finished >= outcomes || status.job.state.is_final() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "job {id} had no outcomes after {JOB_TIMEOUT:?}"
        );
        pipeline.check_alive()?;
        tokio::time::sleep(POLL).await;
    }
}

/// The earliest outcome of the job, read through all of them.
async fn first_outcome(book: &CouchIndex, id: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
    let mut first: Option<DateTime<Utc>> = None;
    let mut after: Option<String> = None;
    loop {
        let items = book.items(id, after.as_deref(), 1000).await?;
        let Some(last) = items.last() else {
            return Ok(first);
        };
        after = Some(last.doc_id.clone());
        for item in &items {
            first = Some(first.map_or(item.finished_at, |at| at.min(item.finished_at)));
        }
    }
}

/// CPU-seconds so far of the pipeline's processes, by role.
struct ServiceCpu {
    dedup: f64,
    jobs: f64,
    stages: Vec<(StageName, f64)>,
}

impl ServiceCpu {
    fn of(pipeline: &Pipeline, stages: &[StageName]) -> anyhow::Result<ServiceCpu> {
        Ok(ServiceCpu {
            dedup: pipeline.cpu_seconds("dedup")?,
            jobs: pipeline.cpu_seconds("jobs")?,
            stages: stages
                .iter()
                .map(|&stage| Ok((stage, pipeline.cpu_seconds(stage.as_str())?)))
                .collect::<anyhow::Result<_>>()?,
        })
    }

    fn since(&self, before: &ServiceCpu) -> ServiceCpu {
        ServiceCpu {
            dedup: self.dedup - before.dedup,
            jobs: self.jobs - before.jobs,
            stages: self
                .stages
                .iter()
                .zip(&before.stages)
                .map(|(&(stage, now), &(_, then))| (stage, now - then))
                .collect(),
        }
    }
}

fn compare_stages(plan: &PlannedJob, summary: &Summary, cpu: &ServiceCpu) -> Vec<StageComparison> {
    plan.stages
        .iter()
        .map(|planned| {
            let stage_ms: u64 = summary
                .per_stage
                .counts
                .get(&planned.stage)
                .map_or(0, |outcomes| {
                    outcomes.values().map(|c| c.processing_ms).sum()
                });
            StageComparison {
                stage: planned.stage,
                planned_cpu_s: planned.cpu_s,
                planned_duration_s: planned.duration_s,
                stage_seconds: stage_ms as f64 / 1000.0,
                process_cpu_s: cpu
                    .stages
                    .iter()
                    .find(|(stage, _)| *stage == planned.stage)
                    .map_or(0.0, |(_, s)| *s),
            }
        })
        .collect()
}

/// Interactive uploads timed to their thumbnail result.
struct Interactive<'a> {
    pipeline: &'a Pipeline,
    producer: &'a FutureProducer,
    results: &'a Results,
    photos: &'a Photos,
    samples: usize,
    interval: Duration,
}

impl Interactive<'_> {
    /// Uploads `samples` new contents, one per interval whether or not the one before is done;
    /// each one's upload start -> result read, in ms.
    async fn time(&self, tag: &str) -> anyhow::Result<Vec<i64>> {
        let keys: Vec<String> = (0..self.samples)
            .map(|n| format!("interactive/{tag}/{n:03}.jpg"))
            .collect();
        let sender = async {
            let mut started = Vec::with_capacity(keys.len());
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for (n, key) in keys.iter().enumerate() {
                tick.tick().await;
                let (_, bytes) = &self.photos.files[n % self.photos.files.len()];
                let bytes = with_comment(bytes, &format!("prism-loadgen interactive {tag} {n}"))?;
                let at = Instant::now();
                let sources = self.pipeline.upload(vec![(key.clone(), bytes)]).await?;
                self.pipeline.notify(self.producer, &sources).await?;
                started.push((key.as_str(), at));
            }
            anyhow::Ok(started)
        };
        let (started, arrived) = tokio::try_join!(sender, self.results.collect(&keys))?;
        Ok(started
            .into_iter()
            .map(|(key, at)| {
                let (_, came) = arrived
                    .iter()
                    .find(|(result, _)| result.source.key == key)
                    .expect("collect returns every key");
                came.duration_since(at).as_millis() as i64
            })
            .collect())
    }
}

pub fn plan_table(report: &PlanVsActual) -> Table {
    let mut table = Table::new(&["", "planned", "measured", "measured / planned"]);
    let summary = &report.summary;
    let row = |name: &str, planned: f64, measured: f64| {
        // Dollars of a small job are fractions of a cent.
        let digits = if planned < 1.0 { 5 } else { 1 };
        vec![
            name.to_string(),
            format!("{planned:.digits$}"),
            format!("{measured:.digits$}"),
            format!("{:.2}", ratio(measured, planned)),
        ]
    };
    table.push(row(
        "duration s (measured: the job's wall time)",
        report.plan.duration_s,
        summary.wall_s,
    ));
    for stage in &report.stages {
        table.push(row(
            &format!("{} CPU-s (measured: stage seconds)", stage.stage),
            stage.planned_cpu_s,
            stage.stage_seconds,
        ));
        table.push(row(
            &format!("{} CPU-s (measured: its process, /proc)", stage.stage),
            stage.planned_cpu_s,
            stage.process_cpu_s,
        ));
    }
    table.push(row(
        "cost USD (measured: the summary's estimate)",
        report.plan.costs.vm_usd,
        summary.estimated_cost_usd,
    ));
    table
}

pub fn plan_lines(report: &PlanVsActual) -> String {
    let summary = &report.summary;
    format!(
        "{} objects ({} done, {} deduplicated, {} failed), {:.1} MP mean, {:.1} objects/s; beside the \
         stages, dedup used {:.1} CPU-s and the job manager {:.1} CPU-s\n\
         goal: planned duration within {:.0}% of the measured wall time: {} ({:+.0}%)\n",
        summary.objects.listed,
        summary.objects.done,
        summary.objects.deduplicated,
        summary.objects.failed,
        report.plan.megapixels,
        summary.throughput_per_s,
        report.dedup_cpu_s,
        report.jobs_cpu_s,
        PLAN_TOLERANCE * 100.0,
        if report.goal_met() { "met" } else { "NOT met" },
        (report.ratio() - 1.0) * 100.0,
    )
}

pub fn latency_table(report: &LatencyDuringJob) -> Table {
    let mut table = Table::new(&["uploads", "samples", "p50 ms", "p95 ms", "p99 ms", "max ms"]);
    let row = |name: &str, p: &Percentiles| {
        vec![
            name.to_string(),
            report.samples.to_string(),
            p.p50.to_string(),
            p.p95.to_string(),
            p.p99.to_string(),
            p.max.to_string(),
        ]
    };
    table.push(row("alone (idle pipeline)", &report.alone_ms));
    table.push(row(
        &format!("during a {}-object job", report.job.objects.listed),
        &report.during_ms,
    ));
    table
}

pub fn latency_lines(report: &LatencyDuringJob) -> String {
    format!(
        "one upload every {} ms; the job ran throughout: {}; the job took {:.1} s ({:.1} objects/s)\n\
         goal: p95 during the job <= {LATENCY_GOAL:.0}x p95 alone: {} ({:.2}x)\n",
        report.interval_ms,
        if report.job_ran_throughout {
            "yes"
        } else {
            "NO"
        },
        report.job.wall_s,
        report.job.throughput_per_s,
        if report.goal_met() { "met" } else { "NOT met" },
        report.ratio(),
    )
}

pub fn render_text(report: &JobsReport) -> String {
    format!(
        "batch jobs, stages {}, {}\n\nplan vs actual\n{}\n{}\ninteractive latency\n{}\n{}",
        stage_list(&report.stages),
        report.setting.text(),
        plan_table(&report.plan_vs_actual).text(),
        plan_lines(&report.plan_vs_actual),
        latency_table(&report.latency).text(),
        latency_lines(&report.latency),
    )
}

/// The report as a Markdown section body for docs/experiments.md.
pub fn render_markdown(report: &JobsReport) -> String {
    format!(
        "{DESCRIPTION}\n\nStages {}, {}.\n\n### Plan vs actual: a {}-object job\n\n{}\n{}\n\
         ### Interactive uploads during a job\n\n{}\n{}",
        stage_list(&report.stages),
        report.setting.text(),
        report.plan_vs_actual.summary.objects.listed,
        plan_table(&report.plan_vs_actual).markdown(),
        plan_lines(&report.plan_vs_actual).replace('\n', "\n\n"),
        latency_table(&report.latency).markdown(),
        latency_lines(&report.latency).replace('\n', "\n\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_the_tolerance() {
        assert_eq!(ratio(12.0, 10.0), 1.2);
        assert_eq!(ratio(5.0, 0.0), 0.0);
        assert!(within(1.2, PLAN_TOLERANCE));
        assert!(within(0.8, PLAN_TOLERANCE));
        assert!(!within(1.21, PLAN_TOLERANCE));
        assert!(!within(0.79, PLAN_TOLERANCE));
    }

    #[test]
    fn a_share_of_fresh_objects() {
        assert_eq!(fresh_objects(10, 1.0), 10);
        assert_eq!(fresh_objects(10, 0.25), 3);
        assert_eq!(fresh_objects(10, 0.0), 0);
        assert_eq!(fresh_objects(10, 7.0), 10);
    }

    #[test]
    fn reads_the_figures_of_prism_plans_json() {
        let json = r#"{"images":1000,"megapixels":10.1,"cores_per_replica":2,"deadline_s":null,
            "stages":[{"stage":"thumbnail","cpu_s_per_image":0.08,"cpu_s":80.0,"replicas":1,
            "duration_s":40.0,"one_image_s":0.05,"deadline_met":null,"extrapolated":false}],
            "duration_s":40.0,"cpu_s":80.0,"deadline_met":null,"memory_gb":1.0,
            "prices":{"vcpu_hour_usd":0.04,"gb_second_usd":0.0,"request_usd":0.0},
            "costs":{"vm_usd":0.001,"vm_usd_per_1000_images":0.001,"requests":1000,
            "gb_seconds":80.0,"serverless_usd":0.002,"serverless_usd_per_1000_images":0.002}}"#;
        let plan: PlannedJob = serde_json::from_str(json).unwrap();
        assert_eq!(plan.stages[0].stage, StageName::Thumbnail);
        assert_eq!(plan.duration_s, 40.0);
        assert_eq!(
            stage_list(&[StageName::Thumbnail, StageName::Classify]),
            "thumbnail,classify"
        );
    }
}
