//! `prism-loadgen`: uploads a folder of images to the input bucket, makes benchmark photo sets,
//! runs the end-to-end thumbnail benchmark and the seed's load plan against the gateway's /predict.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use prism_core::contract::StageName;
use prism_core::ports::store::Buckets;
use prism_core::runtime::config::{self, Settings};
use prism_loadgen::dataset::{self, CAMERAS, DatasetOptions};
use prism_loadgen::predict::{self, PredictOptions, Send, Uploaded};
use prism_loadgen::thumbnails::{self, BenchOptions, Method, Tools};
use prism_loadgen::{day, dedup, jobs, latency, report, saturation};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(version, about = "Load and benchmarks for Prism")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upload every file under DIR (keys are paths relative to DIR), creating the bucket if needed.
    Upload {
        dir: PathBuf,
        /// Defaults to the configured input bucket.
        #[arg(long)]
        bucket: Option<String>,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Make a set of distinct camera-like JPEG photos (2-20 MP) from real photographs, the same
    /// bytes for the same seed: OUT/images/ and OUT/manifest.json (every file's sha256 and recipe).
    Dataset(DatasetArgs),
    /// Thumbnails of a photo set by Pillow (sequential and multiprocessing), vipsthumbnail and
    /// `prism run`, the same outputs each: wall time, images/s, CPU seconds, peak RSS.
    Thumbnails(ThumbnailsArgs),
    /// The seed's JMeter plan against a running gateway's `POST /predict`: CLIENTS requests at
    /// once, BATCHES times, over DISTINCT images; then the same again with every image seen
    /// before. Prints per-batch mean / p95 response times and each batch's series.
    Predict(PredictArgs),
    /// CPU-seconds and wall time of `prism run` with and without deduplication for shares of
    /// exact copies, and dedup's own time per event (hash + claim), p50/p99.
    Dedup(DedupArgs),
    /// The pipeline's throughput at saturation against the thumbnail stage's code in a plain loop
    /// on the same cores.
    Saturation(SaturationArgs),
    /// Upload -> thumbnail result on an idle served pipeline, one photo at a time, where the time
    /// goes, and what `prism watch`'s polling would add.
    Latency(LatencyArgs),
    /// Batch jobs on the served pipeline with the job manager: `prism plan`'s prediction for an
    /// N-image job against the job run for real, and interactive upload latency alone and while
    /// a big job runs.
    Jobs(JobsArgs),
    /// Replays a CSV of batch jobs (arrival_s,images,stages,deadline_s) time-compressed against
    /// the served pipeline: per job its queue time, wall time against its deadline and cost; a
    /// timeline chart.
    Day(DayArgs),
    /// Runs thumbnails, dedup, saturation, latency, jobs and day and writes docs/experiments.md
    /// with their tables, charts (docs/experiments/*.svg) and goals, the machine, the commit and
    /// the date.
    Report(ReportArgs),
}

#[derive(Args, Clone)]
struct DedupArgs {
    #[command(flatten)]
    shared: Shared,
    /// Shares of exact copies in the set, one set each.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.25, 0.5, 0.75])]
    duplicates: Vec<f64>,
    /// Files in every set (copies included).
    #[arg(long, default_value_t = 200)]
    files: usize,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    charts: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct SaturationArgs {
    #[command(flatten)]
    shared: Shared,
    /// Distinct photos.
    #[arg(long, default_value_t = 200)]
    images: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct LatencyArgs {
    #[command(flatten)]
    shared: Shared,
    /// Uploads timed (the photos of a set of this size, cycled).
    #[arg(long, default_value_t = 30)]
    samples: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct JobsArgs {
    #[command(flatten)]
    shared: Shared,
    /// Distinct photos of the set the jobs' objects are made from (cycled).
    #[arg(long, default_value_t = 200)]
    photos: usize,
    /// Objects of the job planned and run.
    #[arg(long, default_value_t = 1000)]
    images: usize,
    /// Stages of the jobs (thumbnail among them: the interactive uploads are timed to it).
    #[arg(long, value_delimiter = ',', default_value = "thumbnail")]
    stages: Vec<StageName>,
    /// Objects of the job the interactive uploads compete with.
    #[arg(long, default_value_t = 2000)]
    background_images: usize,
    /// Interactive uploads timed, alone and during the job each.
    #[arg(long, default_value_t = 40)]
    samples: usize,
    /// Between two interactive uploads, in ms.
    #[arg(long, default_value_t = Self::DEFAULT_INTERVAL_MS)]
    interval_ms: u64,
    /// Also print the figures as Markdown (a section of docs/experiments.md).
    #[arg(long)]
    markdown: bool,
    /// The calibration `prism plan` reads; made from a sample of the set when missing
    /// [default: $PRISM_HOME/calibration.json, prism plan's own].
    #[arg(long)]
    calibration: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

impl JobsArgs {
    const DEFAULT_INTERVAL_MS: u64 = 500;
}

#[derive(Args, Clone)]
struct DayArgs {
    #[command(flatten)]
    shared: Shared,
    /// The day: `arrival_s,images,stages,deadline_s` (stages joined by +), as
    /// loadgen/days/sample-day.csv.
    #[arg(long)]
    csv: PathBuf,
    /// Arrival offsets are divided by this (the work and the deadlines are not).
    #[arg(long, default_value_t = 240.0)]
    speedup: f64,
    /// Share of each job's objects made new content; the rest are the set's own bytes, the same
    /// in every job.
    #[arg(long, default_value_t = Self::DEFAULT_FRESH)]
    fresh: f64,
    /// Distinct photos of the set the jobs' objects are made from (cycled).
    #[arg(long, default_value_t = 200)]
    photos: usize,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the timeline chart as day.svg into this folder.
    #[arg(long)]
    charts: Option<PathBuf>,
    /// Also print the figures as Markdown (a section of docs/experiments.md), the chart linked
    /// as experiments/day.svg.
    #[arg(long)]
    markdown: bool,
}

impl DayArgs {
    const DEFAULT_FRESH: f64 = 0.5;
}

#[derive(Args)]
struct ReportArgs {
    #[command(flatten)]
    thumbnails: ThumbnailsArgs,
    /// Shares of exact copies for the dedup experiment.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.25, 0.5, 0.75])]
    duplicates: Vec<f64>,
    /// Files in every set of the dedup experiment.
    #[arg(long, default_value_t = 200)]
    dedup_files: usize,
    /// Photos of the saturation experiment.
    #[arg(long, default_value_t = 200)]
    saturation_images: usize,
    /// Uploads timed by the latency experiment.
    #[arg(long, default_value_t = 30)]
    latency_samples: usize,
    /// Objects of the job `jobs` plans and runs.
    #[arg(long, default_value_t = 1000)]
    job_images: usize,
    /// Objects of the job the interactive uploads of `jobs` compete with.
    #[arg(long, default_value_t = 2000)]
    job_background_images: usize,
    /// Interactive uploads `jobs` times, alone and during the job each.
    #[arg(long, default_value_t = 40)]
    job_samples: usize,
    /// The day of batch jobs `day` replays.
    #[arg(long, default_value = "loadgen/days/sample-day.csv")]
    day: PathBuf,
    /// The day's arrival offsets are divided by this.
    #[arg(long, default_value_t = 240.0)]
    day_speedup: f64,
    /// A smoke run: every experiment at the smallest sizes (3 photos, one round, a day of two
    /// small jobs); the page says so, and its figures mean nothing.
    #[arg(long)]
    quick: bool,
    /// Where experiments.md and experiments/ go.
    #[arg(long, default_value = "docs")]
    docs: PathBuf,
}

impl ReportArgs {
    /// The smallest sizes that still run every method and experiment; the day is written to the
    /// temporary folder (each experiment clears its work folder, so not there).
    fn make_quick(&mut self) -> anyhow::Result<()> {
        self.thumbnails.images = vec![3];
        self.thumbnails.dataset = None;
        self.thumbnails.replicas = vec![1, 2];
        self.thumbnails.shared.rounds = 1;
        self.duplicates = vec![0.0, 0.5];
        self.dedup_files = 4;
        self.saturation_images = 3;
        self.latency_samples = 3;
        self.job_images = 6;
        self.job_background_images = 12;
        self.job_samples = 2;
        self.day = std::env::temp_dir().join(format!(
            "prism-loadgen-{}-quick-day.csv",
            std::process::id()
        ));
        std::fs::write(
            &self.day,
            format!("{}\n0,3,thumbnail,300\n2,3,thumbnail,300\n", day::HEADER),
        )?;
        self.day_speedup = 1.0;
        Ok(())
    }
}

#[derive(Args)]
struct PredictArgs {
    /// The gateway's base URL.
    #[arg(
        long,
        env = "PRISM_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    gateway: String,
    /// A folder of JPEG photos (cycled if fewer than --distinct) [default: $PRISM_HOME/images].
    #[arg(long)]
    images: Option<PathBuf>,
    #[arg(long, default_value_t = 9)]
    clients: usize,
    #[arg(long, default_value_t = 4)]
    batches: usize,
    #[arg(long, default_value_t = 20)]
    distinct: usize,
    /// `body` needs only the gateway; `key` uploads the images to the input bucket first (the
    /// configured S3 settings) and sends `{"bucket", "key"}`, as the seed's clients did. Where
    /// the bucket notifies Prism of uploads itself, `key` starts the work before the requests.
    #[arg(long, value_enum, default_value_t = Send::Body)]
    send: Send,
    /// The `?timeout=` of each request, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// How long to wait for the gateway to answer before the first batch, in seconds: start the
    /// services and this together to measure the cold batch.
    #[arg(long, default_value_t = 300)]
    wait_ready_secs: u64,
    /// Also print the figures as a Markdown table.
    #[arg(long)]
    markdown: bool,
    /// Also write every response time as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct DatasetArgs {
    /// Distinct photos.
    #[arg(long, default_value_t = 200)]
    count: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
    /// Share of the whole set that are exact copies of other photos under other names (0.3: 30%
    /// of the files are copies; the distinct photos are still --count).
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Real photographs to make the set from [default: $PRISM_HOME/photos, which
    /// deploy/local/fetch-photos.sh fills].
    #[arg(long)]
    sources: Option<PathBuf>,
}

/// Options every experiment shares.
#[derive(Args, Clone)]
struct Shared {
    /// The `prism` binary [default: beside this one, or release/prism under $CARGO_TARGET_DIR].
    #[arg(long)]
    prism: Option<PathBuf>,
    /// Where the photo sets are made and kept between runs [default: $PRISM_HOME/datasets].
    #[arg(long)]
    datasets: Option<PathBuf>,
    /// The photo sets' seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scratch folder for the outputs [default: a new folder under the temporary directory].
    #[arg(long)]
    work: Option<PathBuf>,
    /// Runs of each method; the figures are medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

impl Shared {
    fn prism(&self) -> PathBuf {
        self.prism.clone().unwrap_or_else(default_prism_binary)
    }

    fn work(&self) -> PathBuf {
        self.work.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("prism-loadgen-{}", std::process::id()))
        })
    }

    /// The set of `count` distinct photos with `duplicates` copies, made if needed.
    fn photo_set(&self, count: usize, duplicates: f64) -> anyhow::Result<PathBuf> {
        dataset::ensure_set(
            &self
                .datasets
                .clone()
                .unwrap_or_else(|| prism_home().join("datasets")),
            &prism_home().join("photos"),
            count,
            self.seed,
            duplicates,
        )
    }
}

#[derive(Args, Clone)]
struct ThumbnailsArgs {
    #[command(flatten)]
    shared: Shared,
    /// Photo set sizes, one run each (sets made by `dataset` and kept under --datasets).
    #[arg(long, value_delimiter = ',', default_values_t = [50, 200])]
    images: Vec<usize>,
    /// A folder made by `prism-loadgen dataset`, instead of --images.
    #[arg(long, conflicts_with = "images")]
    dataset: Option<PathBuf>,
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Method::PillowSeq, Method::PillowMp, Method::Prism, Method::Served])]
    methods: Vec<Method>,
    /// Thumbnail replicas of the served pipeline, one layout each.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4])]
    replicas: Vec<usize>,
    /// Processes for the parallel methods [default: the cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Price of a vCPU-hour for the cost per 1,000 images [default: AWS Fargate's, us-east-1].
    #[arg(long, default_value_t = thumbnails::VCPU_HOUR_USD)]
    vcpu_hour_usd: f64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the charts as SVG files into this folder.
    #[arg(long)]
    charts: Option<PathBuf>,
    /// Python with Pillow [default: $PRISM_HOME/venv-pillow/bin/python].
    #[arg(long)]
    python: Option<PathBuf>,
    #[arg(long, default_value = "vipsthumbnail")]
    vipsthumbnail: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let _telemetry = prism_core::runtime::telemetry::init();
    match Cli::parse().command {
        Command::Upload {
            dir,
            bucket,
            concurrency,
        } => tokio::runtime::Runtime::new()?.block_on(upload(dir, bucket, concurrency)),
        Command::Dataset(args) => make_dataset(args),
        Command::Thumbnails(args) => benchmark_thumbnails(args),
        Command::Predict(args) => tokio::runtime::Runtime::new()?.block_on(load_predict(args)),
        Command::Dedup(args) => {
            let report = run_dedup(&args)?;
            print!("{}", dedup::render_text(&report));
            if let Some(folder) = &args.charts {
                write_charts(folder, &dedup::charts(&report)?)?;
            }
            args.json.map_or(Ok(()), |path| write_json(&path, &report))
        }
        Command::Saturation(args) => {
            let report = run_saturation(&args)?;
            print!("{}", saturation::render_text(&report));
            args.json.map_or(Ok(()), |path| write_json(&path, &report))
        }
        Command::Latency(args) => {
            let report = run_latency(&args)?;
            print!("{}", latency::render_text(&report));
            args.json.map_or(Ok(()), |path| write_json(&path, &report))
        }
        Command::Jobs(args) => {
            let report = run_jobs(&args)?;
            print!("{}", jobs::render_text(&report));
            if args.markdown {
                print!("\n{}", jobs::render_markdown(&report));
            }
            args.json.map_or(Ok(()), |path| write_json(&path, &report))
        }
        Command::Day(args) => {
            let report = run_day(&args)?;
            print!("{}", day::render_text(&report));
            if args.markdown {
                print!("\n{}", day::render_markdown(&report, "experiments/day.svg"));
            }
            if let Some(folder) = &args.charts {
                write_charts(folder, &[("day".into(), day::chart(&report)?)])?;
            }
            args.json.map_or(Ok(()), |path| write_json(&path, &report))
        }
        Command::Report(args) => write_report(args),
    }
}

async fn load_predict(args: PredictArgs) -> anyhow::Result<()> {
    let folder = args.images.unwrap_or_else(|| prism_home().join("images"));
    let photos: Vec<PathBuf> = prism_loadgen::files_under(&folder)
        .with_context(|| format!("listing {}", folder.display()))?
        .into_iter()
        .map(|(_, path)| path)
        .filter(|path| {
            path.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
        })
        .collect();
    let invocation = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let images = predict::distinct_images(&photos, args.distinct, &invocation)?;
    let uploaded = match args.send {
        Send::Body => None,
        Send::Key => {
            let settings: Settings = config::load()?;
            let keys: Vec<String> = images
                .iter()
                .map(|(name, _)| format!("loadgen/predict/{invocation}/{name}"))
                .collect();
            let objects = keys
                .iter()
                .cloned()
                .zip(images.iter().map(|(_, b)| b.clone()));
            prism_loadgen::upload(
                &Buckets::s3(&settings.s3),
                &settings.input_bucket,
                objects.collect(),
                args.clients,
            )
            .await?;
            Some(Uploaded {
                bucket: settings.input_bucket,
                keys,
            })
        }
    };
    let options = PredictOptions {
        gateway: args.gateway,
        photos,
        clients: args.clients,
        batches: args.batches,
        distinct: args.distinct,
        request_timeout: std::time::Duration::from_secs(args.timeout_secs),
        wait_ready: std::time::Duration::from_secs(args.wait_ready_secs),
    };
    let runs = predict::run(&options, &images, uploaded.as_ref()).await?;
    let report = predict::Report {
        gateway: options.gateway.clone(),
        clients: options.clients,
        distinct: options.distinct,
        send: format!("{:?}", args.send).to_lowercase(),
        photos: options.photos.len(),
        image_bytes_mean: images.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
            / images.len() as u64,
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        runs,
    };
    print!("{}", predict::render_text(&report));
    if args.markdown {
        print!("\n{}", predict::render_markdown(&report));
    }
    if let Some(path) = args.json {
        write_json(&path, &report)?;
    }
    Ok(())
}

async fn upload(dir: PathBuf, bucket: Option<String>, concurrency: usize) -> anyhow::Result<()> {
    let settings: Settings = config::load()?;
    let bucket = bucket.unwrap_or(settings.input_bucket.clone());
    prism_loadgen::create_bucket(&settings.s3, &bucket).await?;
    let mut objects = Vec::new();
    for (key, path) in prism_loadgen::files_under(&dir)? {
        objects.push((key, bytes::Bytes::from(std::fs::read(path)?)));
    }
    let count = objects.len();
    let started = std::time::Instant::now();
    prism_loadgen::upload(&Buckets::s3(&settings.s3), &bucket, objects, concurrency).await?;
    println!(
        "uploaded {count} files to s3://{bucket} in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn make_dataset(args: DatasetArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let manifest = dataset::generate(&DatasetOptions {
        sources: args.sources.unwrap_or_else(|| prism_home().join("photos")),
        out: args.out.clone(),
        count: args.count,
        seed: args.seed,
        duplicates: args.duplicates,
        cameras: CAMERAS,
    })?;
    let bytes: u64 = manifest.photos.iter().map(|p| p.bytes).sum();
    println!(
        "{} photos ({} distinct, {} copies, {:.0} MiB) from {} sources in {:.1} s: {}",
        manifest.photos.len(),
        manifest.distinct,
        manifest.duplicates,
        bytes as f64 / (1024.0 * 1024.0),
        manifest.sources.len(),
        started.elapsed().as_secs_f64(),
        args.out.join(dataset::MANIFEST_FILE).display()
    );
    Ok(())
}

/// Every photo set's thumbnail benchmark, in order of size.
fn run_thumbnails(args: &ThumbnailsArgs) -> anyhow::Result<Vec<thumbnails::Report>> {
    let sets = match &args.dataset {
        Some(dataset) => vec![dataset.clone()],
        None => args
            .images
            .iter()
            .map(|&count| args.shared.photo_set(count, 0.0))
            .collect::<anyhow::Result<_>>()?,
    };
    let work = args.shared.work();
    let reports = sets
        .into_iter()
        .map(|dataset| {
            let options = BenchOptions {
                dataset,
                methods: args.methods.clone(),
                rounds: args.shared.rounds,
                workers: args
                    .workers
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
                replicas: args.replicas.clone(),
                work: work.clone(),
                tools: Tools {
                    python: args
                        .python
                        .clone()
                        .unwrap_or_else(|| prism_home().join("venv-pillow/bin/python")),
                    prism: args.shared.prism(),
                    vipsthumbnail: args.vipsthumbnail.clone(),
                },
                vcpu_hour_usd: args.vcpu_hour_usd,
            };
            thumbnails::run(&options)
        })
        .collect();
    let _ = std::fs::remove_dir_all(&work);
    reports
}

fn benchmark_thumbnails(args: ThumbnailsArgs) -> anyhow::Result<()> {
    let reports = run_thumbnails(&args)?;
    for report in &reports {
        println!("{}", thumbnails::render_table(report));
        if let Some(folder) = &args.charts {
            write_charts(folder, &thumbnails::charts(report)?)?;
        }
    }
    if let Some(path) = args.json {
        write_json(&path, &reports)?;
    }
    Ok(())
}

/// Each chart as FOLDER/<stem>.svg.
fn write_charts(folder: &Path, charts: &[(String, String)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(folder)?;
    for (stem, svg) in charts {
        let path = folder.join(format!("{stem}.svg"));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn run_dedup(args: &DedupArgs) -> anyhow::Result<dedup::DedupReport> {
    let sets = args
        .duplicates
        .iter()
        .map(|&share| {
            // The same number of files in every set: fewer distinct photos as copies grow.
            let distinct = ((args.files as f64) * (1.0 - share)).round().max(1.0) as usize;
            Ok((share, args.shared.photo_set(distinct, share)?))
        })
        .collect::<anyhow::Result<_>>()?;
    let work = args.shared.work();
    let report = dedup::run(&dedup::DedupOptions {
        prism: args.shared.prism(),
        sets,
        rounds: args.shared.rounds,
        work: work.clone(),
    });
    let _ = std::fs::remove_dir_all(&work);
    report
}

fn run_saturation(args: &SaturationArgs) -> anyhow::Result<saturation::SaturationReport> {
    let work = args.shared.work();
    let report = saturation::run(&saturation::SaturationOptions {
        dataset: args.shared.photo_set(args.images, 0.0)?,
        prism: args.shared.prism(),
        rounds: args.shared.rounds,
        work: work.clone(),
    });
    let _ = std::fs::remove_dir_all(&work);
    report
}

fn run_latency(args: &LatencyArgs) -> anyhow::Result<latency::LatencyReport> {
    let set = args.shared.photo_set(args.samples, 0.0)?;
    let photos = dataset::Manifest::load(&set)?
        .photos
        .into_iter()
        .map(|photo| {
            let bytes = std::fs::read(set.join(dataset::IMAGES_DIR).join(&photo.file))?;
            Ok((photo.file, bytes::Bytes::from(bytes)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let work = args.shared.work();
    let report = tokio::runtime::Runtime::new()?.block_on(latency::run(
        &args.shared.prism(),
        &work,
        &photos,
        args.samples,
    ));
    let _ = std::fs::remove_dir_all(&work);
    report
}

fn run_jobs(args: &JobsArgs) -> anyhow::Result<jobs::JobsReport> {
    let work = args.shared.work();
    let options = jobs::JobsOptions {
        prism: args.shared.prism(),
        dataset: args.shared.photo_set(args.photos, 0.0)?,
        work: work.clone(),
        calibration: args
            .calibration
            .clone()
            .unwrap_or_else(|| prism_home().join("calibration.json")),
        stages: args.stages.clone(),
        images: args.images,
        background_images: args.background_images,
        samples: args.samples,
        interval: std::time::Duration::from_millis(args.interval_ms),
    };
    let report = tokio::runtime::Runtime::new()?.block_on(jobs::run(&options));
    let _ = std::fs::remove_dir_all(&work);
    report
}

fn run_day(args: &DayArgs) -> anyhow::Result<day::DayReport> {
    let work = args.shared.work();
    let options = day::DayOptions {
        prism: args.shared.prism(),
        dataset: args.shared.photo_set(args.photos, 0.0)?,
        work: work.clone(),
        csv: args.csv.clone(),
        speedup: args.speedup,
        fresh: args.fresh,
    };
    let report = tokio::runtime::Runtime::new()?.block_on(day::run(&options));
    let _ = std::fs::remove_dir_all(&work);
    report
}

fn write_report(mut args: ReportArgs) -> anyhow::Result<()> {
    if args.quick {
        args.make_quick()?;
    }
    // The day runs last, half an hour in: a day that cannot be read fails now.
    day::load_day(&args.day)?;
    let shared = args.thumbnails.shared.clone();
    // The batch-job experiments draw their objects from the saturation experiment's photos.
    let photos = args.saturation_images;
    let experiments = report::Experiments {
        quick: args.quick,
        thumbnails: run_thumbnails(&args.thumbnails)?,
        dedup: run_dedup(&DedupArgs {
            shared: shared.clone(),
            duplicates: args.duplicates,
            files: args.dedup_files,
            json: None,
            charts: None,
        })?,
        saturation: run_saturation(&SaturationArgs {
            shared: shared.clone(),
            images: args.saturation_images,
            json: None,
        })?,
        latency: run_latency(&LatencyArgs {
            shared: shared.clone(),
            samples: args.latency_samples,
            json: None,
        })?,
        jobs: run_jobs(&JobsArgs {
            shared: shared.clone(),
            photos,
            images: args.job_images,
            stages: vec![StageName::Thumbnail],
            background_images: args.job_background_images,
            samples: args.job_samples,
            interval_ms: JobsArgs::DEFAULT_INTERVAL_MS,
            markdown: false,
            calibration: None,
            json: None,
        })?,
        day: run_day(&DayArgs {
            shared,
            csv: args.day.clone(),
            speedup: args.day_speedup,
            fresh: DayArgs::DEFAULT_FRESH,
            photos,
            json: None,
            charts: None,
            markdown: false,
        })?,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    if args.quick {
        let _ = std::fs::remove_file(&args.day);
    }
    let written = report::write(&args.docs, &experiments)?;
    println!("wrote {}", written.display());
    Ok(())
}

/// Where Prism's tools keep what they fetch: $PRISM_HOME, or ~/.cache/prism.
fn prism_home() -> PathBuf {
    std::env::var_os("PRISM_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/prism"),
        PathBuf::from,
    )
}

/// `cargo build --release -p prism-cli`'s output: beside this binary when both were built into the
/// same target folder, else under $CARGO_TARGET_DIR or the workspace's target/.
fn default_prism_binary() -> PathBuf {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("prism")))
        .filter(|path| path.exists());
    sibling.unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
            PathBuf::from,
        );
        target.join("release/prism")
    })
}
