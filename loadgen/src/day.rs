//! `prism-loadgen day`: a day of batch jobs replayed time-compressed against the served pipeline.
//!
//! The day is a CSV (`arrival_s,images,stages,deadline_s`, see `loadgen/days/sample-day.csv`):
//! arrival offsets are divided by `--speedup`, the work is not (image counts and deadlines are
//! real). Every job's objects are uploaded under a prefix of their own before the replay: the
//! set's photos cycled, a share made new content, the rest the set's own bytes, which the jobs
//! share (dedup finds them). Per job: queue time (submission -> first outcome, the first object's
//! work included), wall time against the deadline, cost (the job summary's estimate).

use crate::charts::{Timeline, TimelineRow};
use crate::jobs::{self, FinishedJob, Photos, stage_list, submit, upload_objects};
use crate::measure::Setting;
use crate::served::{Layout, Pipeline};
use crate::table::Table;
use crate::thumbnails::Machine;
use anyhow::{Context, bail, ensure};
use futures::future::try_join_all;
use prism_core::contract::StageName;
use prism_core::ports::claims::couch::CouchIndex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The CSV's header, its columns in order.
pub const HEADER: &str = "arrival_s,images,stages,deadline_s";

pub const DESCRIPTION: &str = "A day of batch jobs replayed against the served pipeline (dedup, \
    one replica of each stage and the job manager over the real servers, on this machine's cores): \
    each job submitted at its arrival offset divided by the speedup; image counts and deadlines as \
    in the CSV. A share of each job's objects is new content, the rest are the photo set's own bytes, \
    the same in every job (dedup serves them from the first job that ran them). Queue: submission -> \
    the job's first outcome (the first object's work included); wall: submission -> last outcome; \
    cost: the job summary's estimate (its stage seconds at the vCPU-hour price).";

/// One job of the day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayJob {
    /// Seconds after the day's start.
    pub arrival_s: f64,
    pub images: usize,
    pub stages: Vec<StageName>,
    pub deadline_s: Option<u64>,
}

/// The jobs of a day CSV: a header line ([`HEADER`]), then one job a line; stages joined by `+`,
/// an empty deadline for none; `#` starts a comment line. Sorted by arrival.
pub fn parse_day(text: &str) -> anyhow::Result<Vec<DayJob>> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(at, line)| (at + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'));
    match lines.next() {
        Some((_, header)) if header.replace(' ', "") == HEADER => {}
        other => bail!(
            "the first line of a day must be the header {HEADER:?}, not {:?}",
            other.map_or("", |(_, line)| line)
        ),
    }
    let mut jobs = lines
        .map(|(at, line)| parse_line(line).with_context(|| format!("line {at}: {line:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(!jobs.is_empty(), "the day has no jobs");
    jobs.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    Ok(jobs)
}

fn parse_line(line: &str) -> anyhow::Result<DayJob> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [arrival, images, stages, deadline] = fields[..] else {
        bail!("{} fields, not 4 ({HEADER})", fields.len());
    };
    let arrival_s: f64 = arrival.parse().context("arrival_s")?;
    ensure!(
        arrival_s >= 0.0 && arrival_s.is_finite(),
        "arrival_s must be 0 or more"
    );
    let images: usize = images.parse().context("images")?;
    ensure!(images > 0, "a job needs images");
    let stages = stages
        .split('+')
        .map(|stage| {
            stage
                .trim()
                .parse::<StageName>()
                .map_err(anyhow::Error::msg)
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .context("stages (thumbnail, detect, classify, joined by +)")?;
    let deadline_s = match deadline {
        "" => None,
        seconds => Some(seconds.parse().context("deadline_s")?),
    };
    Ok(DayJob {
        arrival_s,
        images,
        stages,
        deadline_s,
    })
}

/// Every stage any job of the day runs, in order.
pub fn stages_of(day: &[DayJob]) -> Vec<StageName> {
    let mut stages: Vec<StageName> = day.iter().flat_map(|job| job.stages.clone()).collect();
    stages.sort();
    stages.dedup();
    stages
}

pub struct DayOptions {
    pub prism: PathBuf,
    pub dataset: PathBuf,
    pub work: PathBuf,
    pub csv: PathBuf,
    pub speedup: f64,
    /// Share of each job's objects made new content.
    pub fresh: f64,
}

/// One job as it went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobOutcome {
    pub name: String,
    pub planned: DayJob,
    /// Seconds after the replay's start it was submitted.
    pub submitted_s: f64,
    pub queue_s: Option<f64>,
    pub wall_s: f64,
    pub deadline_met: Option<bool>,
    pub cost_usd: f64,
    pub stage_seconds: f64,
    pub done: u64,
    pub deduplicated: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DayReport {
    /// Its date: when the replay's run started.
    #[serde(flatten)]
    pub setting: Setting,
    pub csv: String,
    pub speedup: f64,
    pub fresh: f64,
    /// From the replay's start to the last job's end.
    pub replay_s: f64,
    pub jobs: Vec<JobOutcome>,
}

impl DayReport {
    /// (met, jobs with a deadline).
    pub fn deadlines(&self) -> (usize, usize) {
        let with: Vec<bool> = self.jobs.iter().filter_map(|j| j.deadline_met).collect();
        (with.iter().filter(|met| **met).count(), with.len())
    }
}

/// The day in `csv`, read and parsed.
pub fn load_day(csv: &Path) -> anyhow::Result<Vec<DayJob>> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    parse_day(&text).with_context(|| format!("in {}", csv.display()))
}

pub async fn run(options: &DayOptions) -> anyhow::Result<DayReport> {
    ensure!(
        options.speedup > 0.0 && options.speedup.is_finite(),
        "--speedup must be positive"
    );
    let day = load_day(&options.csv)?;
    let date = chrono::Local::now().format("%Y-%m-%d %H:%M %Z").to_string();
    let load_before = crate::measure::load_average();
    let photos = Photos::load(&options.dataset)?;
    let layout = Layout {
        stages: stages_of(&day),
        replicas: 1,
        jobs: true,
    };
    let pipeline = Pipeline::start(&options.prism, &layout, &options.work, &[]).await?;
    let book = CouchIndex::connect(&pipeline.settings.couchdb).await?;
    let total: usize = day.iter().map(|job| job.images).sum();
    eprintln!("uploading {total} objects of {} jobs…", day.len());
    for (index, job) in day.iter().enumerate() {
        let name = job_name(index);
        upload_objects(
            &pipeline,
            &format!("{name}/"),
            &photos,
            job.images,
            &name,
            options.fresh,
        )
        .await?;
    }
    eprintln!(
        "replaying {} jobs over {:.0} s…",
        day.len(),
        day.last().map_or(0.0, |job| job.arrival_s) / options.speedup
    );
    let started = Instant::now();
    let replays = day.iter().enumerate().map(|(index, job)| {
        let (book, pipeline) = (&book, &pipeline);
        async move {
            let at = started + Duration::from_secs_f64(job.arrival_s / options.speedup);
            tokio::time::sleep_until(at.into()).await;
            let name = job_name(index);
            let submitted_s = started.elapsed().as_secs_f64();
            let submitted = submit(
                book,
                pipeline,
                &format!("{name}/"),
                &job.stages,
                job.deadline_s,
                &name,
            )
            .await?;
            eprintln!(
                "{submitted_s:6.1} s  submitted {name}: {} images, {}",
                job.images,
                stage_list(&job.stages)
            );
            let finished = jobs::follow(book, pipeline, &submitted.id).await?;
            eprintln!(
                "{:6.1} s  {name} ended in {:.1} s",
                started.elapsed().as_secs_f64(),
                finished.summary.wall_s
            );
            anyhow::Ok(outcome(name, job.clone(), submitted_s, &finished))
        }
    });
    let outcomes = try_join_all(replays).await?;
    Ok(DayReport {
        setting: Setting {
            date,
            machine: Machine::this_one(),
            load_before,
            photos: photos.files.len(),
            megapixels_mean: photos.megapixels_mean,
        },
        csv: options.csv.display().to_string(),
        speedup: options.speedup,
        fresh: options.fresh,
        replay_s: started.elapsed().as_secs_f64(),
        jobs: outcomes,
    })
}

fn job_name(index: usize) -> String {
    format!("day-{:02}", index + 1)
}

fn outcome(name: String, planned: DayJob, submitted_s: f64, finished: &FinishedJob) -> JobOutcome {
    let summary = &finished.summary;
    JobOutcome {
        name,
        planned,
        submitted_s,
        queue_s: finished
            .first_outcome
            .map(|at| (at - finished.job.submitted_at).num_milliseconds().max(0) as f64 / 1000.0),
        wall_s: summary.wall_s,
        deadline_met: summary.deadline_met,
        cost_usd: summary.estimated_cost_usd,
        stage_seconds: summary.stage_seconds,
        done: summary.objects.done,
        deduplicated: summary.objects.deduplicated,
        failed: summary.objects.failed,
    }
}

pub fn table(report: &DayReport) -> Table {
    let mut table = Table::new(&[
        "job",
        "arrives (day)",
        "submitted s",
        "images",
        "stages",
        "done",
        "dedup",
        "failed",
        "queue s",
        "wall s",
        "deadline s",
        "met",
        "stage s",
        "cost USD",
    ]);
    for job in &report.jobs {
        let arrival = job.planned.arrival_s as u64;
        table.push(vec![
            job.name.clone(),
            format!("{:02}:{:02}", arrival / 3600, arrival / 60 % 60),
            format!("{:.1}", job.submitted_s),
            job.planned.images.to_string(),
            stage_list(&job.planned.stages),
            job.done.to_string(),
            job.deduplicated.to_string(),
            job.failed.to_string(),
            job.queue_s
                .map_or_else(|| "-".into(), |s| format!("{s:.1}")),
            format!("{:.1}", job.wall_s),
            job.planned
                .deadline_s
                .map_or_else(|| "-".into(), |s| s.to_string()),
            match job.deadline_met {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "-".into(),
            },
            format!("{:.1}", job.stage_seconds),
            format!("{:.5}", job.cost_usd),
        ]);
    }
    table
}

/// The day in a few figures.
pub fn summary_line(report: &DayReport) -> String {
    let (met, with) = report.deadlines();
    let images: usize = report.jobs.iter().map(|j| j.planned.images).sum();
    let deduplicated: u64 = report.jobs.iter().map(|j| j.deduplicated).sum();
    let cost: f64 = report.jobs.iter().map(|j| j.cost_usd).sum();
    let stage_seconds: f64 = report.jobs.iter().map(|j| j.stage_seconds).sum();
    let mut queues: Vec<f64> = report.jobs.iter().filter_map(|j| j.queue_s).collect();
    let mut walls: Vec<f64> = report.jobs.iter().map(|j| j.wall_s).collect();
    format!(
        "{} jobs, {images} images ({deduplicated} deduplicated) in {:.0} s of replay (speedup {}x); \
         deadlines met: {met} of {with}; queue s p50 {:.1}, max {:.1}; wall s p50 {:.1}, max {:.1}; \
         {stage_seconds:.0} stage seconds, cost {cost:.4} USD in all ({:.5} USD per 1,000 images)\n",
        report.jobs.len(),
        report.replay_s,
        report.speedup,
        median(&mut queues),
        queues.last().copied().unwrap_or_default(),
        median(&mut walls),
        walls.last().copied().unwrap_or_default(),
        cost / images.max(1) as f64 * 1000.0,
    )
}

/// The median of `values`, which it sorts; 0 for none.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Each job's queue and run against its deadline, on the replay's clock.
pub fn chart(report: &DayReport) -> anyhow::Result<String> {
    crate::charts::timeline(&Timeline {
        title: "A day of jobs: queued, running, deadline",
        x_label: "seconds since the replay started",
        rows: report
            .jobs
            .iter()
            .map(|job| {
                let queued_until = job.submitted_s + job.queue_s.unwrap_or_default();
                TimelineRow {
                    name: format!("{} ({})", job.name, job.planned.images),
                    queued: (job.submitted_s, queued_until),
                    running: (queued_until, job.submitted_s + job.wall_s),
                    deadline: job.planned.deadline_s.map(|s| job.submitted_s + s as f64),
                    late: job.deadline_met == Some(false),
                }
            })
            .collect(),
    })
}

pub fn render_text(report: &DayReport) -> String {
    format!(
        "a day of jobs from {}, {:.0}% of each job new content, {}\n\n{}\n{}",
        report.csv,
        report.fresh * 100.0,
        report.setting.text(),
        table(report).text(),
        summary_line(report),
    )
}

/// The report as a Markdown section body for docs/experiments.md; `chart` is the timeline's
/// path from the document.
pub fn render_markdown(report: &DayReport, chart: &str) -> String {
    format!(
        "{DESCRIPTION}\n\n`{}` at {}x, {:.0}% of each job's objects new content, {}.\n\n{}\n{}\n\
         ![each job: queued, running, its deadline]({chart})\n",
        report.csv,
        report.speedup,
        report.fresh * 100.0,
        report.setting.text(),
        table(report).markdown(),
        summary_line(report),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_day_sorted_by_arrival() {
        let day = parse_day(
            "# a comment\n\
             arrival_s, images, stages, deadline_s\n\
             3600,200,thumbnail+classify,300\n\
             \n\
             60,40,thumbnail,\n",
        )
        .unwrap();
        assert_eq!(
            day,
            vec![
                DayJob {
                    arrival_s: 60.0,
                    images: 40,
                    stages: vec![StageName::Thumbnail],
                    deadline_s: None,
                },
                DayJob {
                    arrival_s: 3600.0,
                    images: 200,
                    stages: vec![StageName::Thumbnail, StageName::Classify],
                    deadline_s: Some(300),
                },
            ]
        );
        assert_eq!(
            stages_of(&day),
            vec![StageName::Thumbnail, StageName::Classify]
        );
    }

    #[test]
    fn refuses_what_is_not_a_day() {
        assert!(parse_day("").is_err(), "no header");
        assert!(parse_day(HEADER).is_err(), "no jobs");
        for line in [
            "60,40,thumbnail",
            "60,0,thumbnail,",
            "-1,40,thumbnail,",
            "60,40,resize,",
            "60,40,thumbnail,soon",
        ] {
            assert!(parse_day(&format!("{HEADER}\n{line}")).is_err(), "{line}");
        }
    }

    #[test]
    fn the_shipped_sample_day_parses() {
        let text = include_str!("../days/sample-day.csv");
        let day = parse_day(text).unwrap();
        assert!(day.len() >= 10);
        assert!(day.iter().all(|job| job.arrival_s < 24.0 * 3600.0));
    }

    #[test]
    fn the_day_in_figures() {
        let job = |name: &str, queue_s, wall_s, deadline_met: Option<bool>| JobOutcome {
            name: name.into(),
            planned: DayJob {
                arrival_s: 8.0 * 3600.0 + 90.0,
                images: 100,
                stages: vec![StageName::Thumbnail],
                deadline_s: deadline_met.map(|_| 60),
            },
            submitted_s: 120.0,
            queue_s: Some(queue_s),
            wall_s,
            deadline_met,
            cost_usd: 0.001,
            stage_seconds: 10.0,
            done: 80,
            deduplicated: 20,
            failed: 0,
        };
        let report = DayReport {
            setting: Setting {
                date: String::new(),
                machine: Machine::this_one(),
                load_before: Some(1.0),
                photos: 200,
                megapixels_mean: 10.0,
            },
            csv: "day.csv".into(),
            speedup: 240.0,
            fresh: 0.5,
            replay_s: 300.0,
            jobs: vec![
                job("day-01", 1.0, 30.0, Some(true)),
                job("day-02", 3.0, 90.0, Some(false)),
                job("day-03", 2.0, 40.0, None),
            ],
        };
        assert_eq!(report.deadlines(), (1, 2));
        let line = summary_line(&report);
        assert!(
            line.contains("3 jobs, 300 images (60 deduplicated)"),
            "{line}"
        );
        assert!(line.contains("deadlines met: 1 of 2"), "{line}");
        assert!(
            line.contains("queue s p50 2.0, max 3.0; wall s p50 40.0, max 90.0"),
            "{line}"
        );
        assert!(line.contains("(0.01000 USD per 1,000 images)"), "{line}");
        assert!(table(&report).text().contains("08:01"));
        let markdown = render_markdown(&report, "experiments/day.svg");
        assert!(markdown.contains("| day-02 |") && markdown.contains("(experiments/day.svg)"));
        assert!(chart(&report).unwrap().contains("day-03 (100)"));
        // The setting's fields stay top-level keys of results.json.
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["photos"], 200);
        assert_eq!(json["load_before"], 1.0);
        assert!(json.get("setting").is_none(), "{json}");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
