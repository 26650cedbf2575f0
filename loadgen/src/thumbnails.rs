//! `prism-loadgen thumbnails`: the end-to-end thumbnail benchmark. Every method makes the same
//! outputs from the same photo set (each source's longest edge 512, 256 and 128, each as JPEG q85
//! and WebP q80: Prism's defaults, `ThumbnailSpec`), one method after another, round after round:
//!
//! - `pillow-seq`: `baselines/pillow_thumbnails.py`, one image after another (the seed paper's way);
//! - `pillow-mp`: the same script with a multiprocessing.Pool of one process per core;
//! - `vips`: `vipsthumbnail`, one single-threaded process per core (VIPS_CONCURRENCY=1), each over
//!   its share of the sources. vipsthumbnail writes one size and format per run, so, to decode each
//!   source once as its users do, the first run shrinks every source on load to 512 into vips' own
//!   uncompressed format (`.v`), and six more runs make the JPEG and WebP of each size from those;
//! - `prism`: `prism run IMAGES --out OUT --stages thumbnail`, the embedded single-process mode;
//! - `served`: `prism serve dedup` and 1, 2, 4... `prism serve thumbnail` replicas over the real
//!   servers (`served.rs`), every photo uploaded, then every notification published at once; wall
//!   time from the first notification to the last result, CPU time of the service processes (not
//!   of the Kafka, S3 and CouchDB servers).
//!
//! Every output of every local method is checked (it exists, its longest edge is the size, its
//! shape the photo's after EXIF orientation): a method that silently produced nothing fails the
//! run; the served pipeline's results must name every size in every format.
//!
//! Per-image time is each image's own work, without queueing: Pillow's from open to last save
//! (the script's `--times`), Prism's the stage's `processing_ms` in its results.

use crate::charts;
use crate::dataset::{IMAGES_DIR, Manifest, Photo};
use crate::measure::{self, Usage};
use crate::served::{Layout, Pipeline};
use crate::table::Table;
use anyhow::{Context, bail, ensure};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every method makes Prism's default thumbnails (`ThumbnailSpec::default()`).
pub use prism_core::contract::stages::{
    DEFAULT_JPEG_QUALITY as JPEG_QUALITY, DEFAULT_WEBP_QUALITY as WEBP_QUALITY,
};

/// Prism's default sizes, largest first: every tool makes each smaller size from the larger.
pub fn sizes() -> [u32; 3] {
    let mut sizes = prism_core::contract::stages::DEFAULT_THUMBNAIL_SIZES;
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes
}
/// The default price of a vCPU-hour: AWS Fargate, Linux/x86, us-east-1, on demand, $0.04048
/// (https://aws.amazon.com/fargate/pricing/, the price listed 2023-2025). Memory is billed apart.
pub const VCPU_HOUR_USD: f64 = 0.04048;
const FORMATS: [&str; 2] = ["jpg", "webp"];
const PILLOW_SCRIPT: &str = include_str!("../baselines/pillow_thumbnails.py");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    PillowSeq,
    PillowMp,
    Vips,
    Prism,
    Served,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Self::PillowSeq => "pillow-seq",
            Self::PillowMp => "pillow-mp",
            Self::Vips => "vips",
            Self::Prism => "prism",
            Self::Served => "served",
        }
    }

    fn description(self, workers: usize) -> String {
        match self {
            Self::PillowSeq => {
                "Pillow, one image after another (draft + thumbnail, one decode, 512->256->128)"
                    .into()
            }
            Self::PillowMp => {
                format!("Pillow, multiprocessing.Pool of {workers} over the same function")
            }
            Self::Vips => format!(
                "vipsthumbnail, {workers} single-threaded processes; one shrink-on-load decode to 512 (.v), sizes from it"
            ),
            Self::Prism => "prism run --stages thumbnail (embedded, one process)".into(),
            Self::Served => "prism serve dedup + thumbnail replicas over Kafka, S3, CouchDB".into(),
        }
    }
}

/// One method as run: the served pipeline once per replica count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Variant {
    method: Method,
    replicas: Option<usize>,
}

impl Variant {
    fn name(self) -> String {
        match self.replicas {
            Some(replicas) => format!("{}-{replicas}", self.method.name()),
            None => self.method.name().to_string(),
        }
    }
}

pub struct Tools {
    /// Python with Pillow (the venv that deploy/local/bench-thumbnail.sh makes).
    pub python: PathBuf,
    pub prism: PathBuf,
    pub vipsthumbnail: PathBuf,
}

pub struct BenchOptions {
    pub dataset: PathBuf,
    pub methods: Vec<Method>,
    pub rounds: usize,
    pub workers: usize,
    /// Thumbnail replicas of the served pipeline, one layout each.
    pub replicas: Vec<usize>,
    /// Scratch folder for the outputs; each round's are checked, then deleted.
    pub work: PathBuf,
    pub tools: Tools,
    pub vcpu_hour_usd: f64,
}

/// One run of one method.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub wall_s: f64,
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
    pub sum_of_process_peaks_mib: f64,
    /// 1-minute load average just before and just after: other work on the machine shows here.
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    /// Each image's own time in ms, where the method reports it (not vips).
    #[serde(default)]
    pub image_ms: Vec<f64>,
}

impl Run {
    fn from_usage(usage: Usage, load_before: Option<f64>, load_after: Option<f64>) -> Run {
        Run {
            image_ms: Vec::new(),
            wall_s: usage.wall.as_secs_f64(),
            cpu_s: usage.cpu.as_secs_f64(),
            peak_rss_mib: usage.peak_rss_kib as f64 / 1024.0,
            sum_of_process_peaks_mib: usage.sum_of_process_peaks_kib as f64 / 1024.0,
            load_before,
            load_after,
        }
    }
}

/// A method's runs and the median of each figure over them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodResult {
    pub method: Method,
    /// The method's name, with the replica count for the served pipeline (`served-2`).
    pub name: String,
    pub replicas: Option<usize>,
    pub description: String,
    pub runs: Vec<Run>,
    pub wall_s: f64,
    pub images_per_s: f64,
    pub cpu_s: f64,
    pub cpu_s_per_image: f64,
    /// CPU-seconds per 1,000 images at the price per vCPU-hour.
    pub usd_per_1000_images: f64,
    pub peak_rss_mib: f64,
    pub sum_of_process_peaks_mib: f64,
    /// Per-image time over every round, where the method reports it.
    pub image_ms: Option<Percentiles>,
}

impl MethodResult {
    pub fn new(
        method: Method,
        replicas: Option<usize>,
        description: String,
        images: usize,
        vcpu_hour_usd: f64,
        runs: Vec<Run>,
    ) -> Self {
        let wall_s = median(runs.iter().map(|r| r.wall_s));
        let cpu_s = median(runs.iter().map(|r| r.cpu_s));
        let image_ms: Vec<f64> = runs
            .iter()
            .flat_map(|r| r.image_ms.iter().copied())
            .collect();
        MethodResult {
            method,
            name: Variant { method, replicas }.name(),
            replicas,
            description,
            wall_s,
            images_per_s: images as f64 / wall_s,
            cpu_s,
            cpu_s_per_image: cpu_s / images as f64,
            usd_per_1000_images: cpu_s / images as f64 * 1000.0 / 3600.0 * vcpu_hour_usd,
            peak_rss_mib: median(runs.iter().map(|r| r.peak_rss_mib)),
            sum_of_process_peaks_mib: median(runs.iter().map(|r| r.sum_of_process_peaks_mib)),
            image_ms: Percentiles::of(&image_ms),
            runs,
        }
    }
}

/// Percentiles of times in ms, from an HDR histogram (three significant digits, 1 µs to 1 h).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(times_ms: &[f64]) -> Option<Percentiles> {
        if times_ms.is_empty() {
            return None;
        }
        let mut histogram =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
        for &ms in times_ms {
            histogram.saturating_record((ms * 1000.0).round().max(1.0) as u64);
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(Percentiles {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        })
    }
}

/// A goal of issue #13, as a ratio of two methods' medians.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    pub name: String,
    pub ratio: f64,
    /// "at least" or "at most" `bound`.
    pub comparison: String,
    pub bound: f64,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
}

impl Machine {
    pub fn this_one() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpu_model: cpuinfo
                .lines()
                .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
                .map_or_else(|| "unknown".into(), |(_, model)| model.trim().to_string()),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_gib: measure::status_kib(&meminfo, "MemTotal").unwrap_or(0) as f64
                / (1024.0 * 1024.0),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub date: String,
    pub machine: Machine,
    pub dataset: DatasetSummary,
    pub rounds: usize,
    pub workers: usize,
    pub vcpu_hour_usd: f64,
    pub sizes: Vec<u32>,
    pub jpeg_quality: u8,
    pub webp_quality: u8,
    pub methods: Vec<MethodResult>,
    pub goals: Vec<Goal>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub dir: PathBuf,
    pub generator: String,
    pub seed: u64,
    pub images: usize,
    pub distinct: usize,
    pub megapixels_mean: f64,
    pub megapixels_min: f64,
    pub megapixels_max: f64,
    pub bytes_total: u64,
}

impl DatasetSummary {
    fn of(dir: &Path, manifest: &Manifest) -> DatasetSummary {
        let megapixels: Vec<f64> = manifest
            .photos
            .iter()
            .map(|p| f64::from(p.width) * f64::from(p.height) / 1e6)
            .collect();
        DatasetSummary {
            dir: dir.to_path_buf(),
            generator: manifest.generator.clone(),
            seed: manifest.seed,
            images: manifest.photos.len(),
            distinct: manifest.distinct,
            megapixels_mean: megapixels.iter().sum::<f64>() / megapixels.len() as f64,
            megapixels_min: megapixels.iter().copied().fold(f64::INFINITY, f64::min),
            megapixels_max: megapixels.iter().copied().fold(0.0, f64::max),
            bytes_total: manifest.photos.iter().map(|p| p.bytes).sum(),
        }
    }
}

/// Runs every method `rounds` times (round by round, so that a change in the machine's load
/// touches every method alike) and returns the medians.
pub fn run(options: &BenchOptions) -> anyhow::Result<Report> {
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    let manifest = Manifest::load(&options.dataset)?;
    let images = options.dataset.join(IMAGES_DIR);
    check_tools(options)?;
    std::fs::create_dir_all(&options.work)?;
    let script = options.work.join("pillow_thumbnails.py");
    std::fs::write(&script, PILLOW_SCRIPT)?;
    // Read every photo once first: no method pays for the first read from disk.
    for photo in &manifest.photos {
        std::fs::read(images.join(&photo.file))
            .with_context(|| format!("reading {} of the set", photo.file))?;
    }

    let variants: Vec<Variant> = options
        .methods
        .iter()
        .flat_map(|&method| match method {
            Method::Served => options
                .replicas
                .iter()
                .map(|&replicas| Variant {
                    method,
                    replicas: Some(replicas),
                })
                .collect(),
            _ => vec![Variant {
                method,
                replicas: None,
            }],
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new()?;
    let mut runs: HashMap<Variant, Vec<Run>> = HashMap::new();
    for round in 1..=options.rounds {
        for &variant in &variants {
            let name = variant.name();
            let run = match variant.replicas {
                Some(replicas) => runtime
                    .block_on(served_round(options, replicas, &images, &manifest.photos))
                    .with_context(|| format!("{name} (round {round})"))?,
                None => local_round(variant.method, options, &images, &script, &manifest, round)
                    .with_context(|| format!("{name} (round {round})"))?,
            };
            eprintln!(
                "round {round}/{}: {:<10} {:>7.2} s wall {:>7.2} s CPU {:>7.1} MiB (load {:.2})",
                options.rounds,
                name,
                run.wall_s,
                run.cpu_s,
                run.peak_rss_mib,
                run.load_before.unwrap_or(f64::NAN)
            );
            runs.entry(variant).or_default().push(run);
        }
    }
    let methods: Vec<MethodResult> = variants
        .iter()
        .map(|&variant| {
            MethodResult::new(
                variant.method,
                variant.replicas,
                variant.method.description(options.workers),
                manifest.photos.len(),
                options.vcpu_hour_usd,
                runs.remove(&variant).unwrap_or_default(),
            )
        })
        .collect();
    Ok(Report {
        date: chrono::Local::now().format("%Y-%m-%d %H:%M %Z").to_string(),
        machine: Machine::this_one(),
        dataset: DatasetSummary::of(&options.dataset, &manifest),
        rounds: options.rounds,
        workers: options.workers,
        vcpu_hour_usd: options.vcpu_hour_usd,
        sizes: sizes().to_vec(),
        jpeg_quality: JPEG_QUALITY,
        webp_quality: WEBP_QUALITY,
        goals: goals(&methods),
        methods,
    })
}

/// One round of a method that runs on this machine alone: its processes measured, its outputs
/// checked, then deleted.
fn local_round(
    method: Method,
    options: &BenchOptions,
    images: &Path,
    script: &Path,
    manifest: &Manifest,
    round: usize,
) -> anyhow::Result<Run> {
    let out = options.work.join(format!("{}-{round}", method.name()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let times = options
        .work
        .join(format!("{}-{round}.times", method.name()));
    let commands = commands(
        method,
        options,
        images,
        &out,
        script,
        &times,
        &manifest.photos,
    );
    let load_before = measure::load_average();
    let usage = measure::run_measured(
        commands,
        &options.work.join(format!("{}.log", method.name())),
    )?;
    let mut run = Run::from_usage(usage, load_before, measure::load_average());
    let outputs = match method {
        Method::Prism => {
            let results = out.join("results.jsonl");
            let text = std::fs::read_to_string(&results)
                .with_context(|| format!("reading {}", results.display()))?;
            run.image_ms = prism_image_ms(&text)?;
            parse_prism_results(&text, &out)?
        }
        _ => named_outputs(&out, &manifest.photos),
    };
    if matches!(method, Method::PillowSeq | Method::PillowMp) {
        run.image_ms = pillow_image_ms(&std::fs::read_to_string(&times)?)?;
    }
    verify(&manifest.photos, &outputs).context("wrong or missing thumbnails")?;
    std::fs::remove_dir_all(&out)?;
    Ok(run)
}

/// One round of the served pipeline with `replicas` thumbnail replicas, on names of its own.
async fn served_round(
    options: &BenchOptions,
    replicas: usize,
    images: &Path,
    photos: &[Photo],
) -> anyhow::Result<Run> {
    let pipeline = Pipeline::start(
        &options.tools.prism,
        &Layout::thumbnails(replicas),
        &options.work,
        &[],
    )
    .await?;
    let (producer, results) = pipeline.warmed_up().await?;

    let objects = photos
        .iter()
        .map(|photo| {
            Ok((
                photo.file.clone(),
                std::fs::read(images.join(&photo.file))?.into(),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sources = pipeline.upload(objects).await?;
    let keys: Vec<String> = sources.iter().map(|s| s.key.clone()).collect();
    let load_before = measure::load_average();
    let cpu_before = pipeline.cpu_seconds("")?;
    let started = std::time::Instant::now();
    pipeline.notify(&producer, &sources).await?;
    let found = results.collect(&keys).await?;
    let wall = started.elapsed();
    let cpu = pipeline.cpu_seconds("")? - cpu_before;
    let expected = sizes().len() * FORMATS.len();
    let incomplete: Vec<&str> = found
        .iter()
        .filter(|(result, _)| result.outputs.len() != expected)
        .map(|(result, _)| result.source.key.as_str())
        .collect();
    ensure!(
        incomplete.is_empty(),
        "{} results without {expected} thumbnails, such as {:?}",
        incomplete.len(),
        incomplete.first()
    );
    let peaks_mib = pipeline.sum_of_peaks_kib("") as f64 / 1024.0;
    Ok(Run {
        wall_s: wall.as_secs_f64(),
        cpu_s: cpu,
        peak_rss_mib: peaks_mib,
        sum_of_process_peaks_mib: peaks_mib,
        load_before,
        load_after: measure::load_average(),
        image_ms: found
            .iter()
            .filter(|(result, _)| !result.deduplicated)
            .map(|(result, _)| result.timings.processing_ms as f64)
            .collect(),
    })
}

/// A small JPEG (the served pipeline's warm-up), under a key no photo has.
pub(crate) fn warmup_jpeg() -> (String, bytes::Bytes) {
    let picture =
        image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
    let mut jpeg = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .expect("encoding to memory");
    ("loadgen-warmup.jpg".into(), jpeg.into_inner().into())
}

/// Per-image ms from the Pillow script's `--times` file ("SECONDS<TAB>PATH" lines).
fn pillow_image_ms(text: &str) -> anyhow::Result<Vec<f64>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (seconds, _) = line.split_once('\t').context("a line of --times")?;
            Ok(seconds.parse::<f64>()? * 1000.0)
        })
        .collect()
}

/// Per-image ms from `prism run`'s results: the stage's own time for each image it worked on.
fn prism_image_ms(results_jsonl: &str) -> anyhow::Result<Vec<f64>> {
    #[derive(Deserialize)]
    struct Timed {
        deduplicated: bool,
        timings: Timings,
    }
    #[derive(Deserialize)]
    struct Timings {
        processing_ms: u64,
    }
    let mut times = Vec::new();
    for line in results_jsonl.lines().filter(|line| !line.trim().is_empty()) {
        let result: Timed = serde_json::from_str(line).context("a line of results.jsonl")?;
        if !result.deduplicated {
            times.push(result.timings.processing_ms as f64);
        }
    }
    Ok(times)
}

fn check_tools(options: &BenchOptions) -> anyhow::Result<()> {
    let setup = "run deploy/local/bench-thumbnail.sh first";
    for &method in &options.methods {
        match method {
            Method::PillowSeq | Method::PillowMp => ensure!(
                options.tools.python.exists(),
                "{} is missing: {setup}, or name a Python with Pillow with --python",
                options.tools.python.display()
            ),
            Method::Vips => ensure!(
                Command::new(&options.tools.vipsthumbnail)
                    .arg("--version")
                    .output()
                    .is_ok(),
                "{} does not run: {setup}",
                options.tools.vipsthumbnail.display()
            ),
            Method::Prism | Method::Served => ensure!(
                options.tools.prism.exists(),
                "{} is missing: cargo build --release -p prism-cli, or name it with --prism",
                options.tools.prism.display()
            ),
        }
    }
    Ok(())
}

/// The processes of one method: one sequence of commands per worker, all workers at once.
fn commands(
    method: Method,
    options: &BenchOptions,
    images: &Path,
    out: &Path,
    script: &Path,
    times: &Path,
    photos: &[Photo],
) -> Vec<Vec<Command>> {
    let pillow = |processes: usize| {
        let mut command = Command::new(&options.tools.python);
        command
            .arg(script)
            .arg("--out")
            .arg(out)
            .arg("--processes")
            .arg(processes.to_string())
            .arg("--sizes")
            .arg(sizes().map(|s| s.to_string()).join(","))
            .arg("--jpeg-quality")
            .arg(JPEG_QUALITY.to_string())
            .arg("--webp-quality")
            .arg(WEBP_QUALITY.to_string())
            .arg("--times")
            .arg(times)
            .arg(images);
        vec![vec![command]]
    };
    match method {
        Method::PillowSeq => pillow(1),
        Method::PillowMp => pillow(options.workers),
        Method::Served => unreachable!("the served pipeline is not a local command"),
        Method::Prism => {
            let mut command = Command::new(&options.tools.prism);
            command
                .arg("run")
                .arg(images)
                .arg("--out")
                .arg(out)
                .args(["--stages", "thumbnail"]);
            vec![vec![command]]
        }
        Method::Vips => (0..options.workers)
            .map(|worker| {
                // Round-robin shares, so that every worker gets large and small photos.
                let share: Vec<PathBuf> = photos
                    .iter()
                    .skip(worker)
                    .step_by(options.workers)
                    .map(|p| images.join(&p.file))
                    .collect();
                let decoded = out.join(format!(".decoded-{worker}"));
                vips_sequence(&options.tools.vipsthumbnail, &share, &decoded, out)
            })
            .filter(|sequence| !sequence.is_empty())
            .collect(),
    }
}

/// One decode per source (shrink-on-load to 512, EXIF orientation applied, into `.v` files), then
/// one run per size and format over those.
fn vips_sequence(
    vipsthumbnail: &Path,
    sources: &[PathBuf],
    decoded: &Path,
    out: &Path,
) -> Vec<Command> {
    if sources.is_empty() {
        return Vec::new();
    }
    let vips = |size: u32, output: String, inputs: &[PathBuf]| {
        let mut command = Command::new(vipsthumbnail);
        // One thread per process, one process per core: no library's helper threads take a second.
        command.env("VIPS_CONCURRENCY", "1");
        if inputs
            .first()
            .is_some_and(|input| input.starts_with(decoded))
        {
            // Already upright, but libvips 8.14 keeps the orientation tag in the .v file and
            // would turn them a second time.
            command.arg("--no-rotate");
        }
        command
            .arg("--size")
            .arg(size.to_string())
            .arg("-o")
            .arg(output)
            .args(inputs);
        command
    };
    let _ = std::fs::create_dir_all(decoded);
    let largest = sizes()[0];
    let mut sequence = vec![vips(
        largest,
        format!("{}/%s.v", decoded.display()),
        sources,
    )];
    let intermediates: Vec<PathBuf> = sources
        .iter()
        .map(|source| {
            decoded
                .join(source.file_stem().unwrap())
                .with_extension("v")
        })
        .collect();
    for size in sizes() {
        sequence.push(vips(
            size,
            format!("{}/%s_{size}.jpg[Q={JPEG_QUALITY},strip]", out.display()),
            &intermediates,
        ));
        sequence.push(vips(
            size,
            format!("{}/%s_{size}.webp[Q={WEBP_QUALITY},strip]", out.display()),
            &intermediates,
        ));
    }
    sequence
}

/// Where a method's thumbnails are: per source file, (size, format) -> path.
type Outputs = HashMap<String, HashMap<(u32, String), PathBuf>>;

/// Pillow's and vips' outputs, OUT/<stem>_<size>.<jpg|webp>.
fn named_outputs(out: &Path, photos: &[Photo]) -> Outputs {
    photos
        .iter()
        .map(|photo| {
            let stem = Path::new(&photo.file)
                .file_stem()
                .unwrap()
                .to_string_lossy();
            let files = sizes()
                .into_iter()
                .flat_map(|size| FORMATS.map(|format| (size, format)))
                .map(|(size, format)| {
                    let path = out.join(format!("{stem}_{size}.{format}"));
                    ((size, format.to_string()), path)
                })
                .collect();
            (photo.file.clone(), files)
        })
        .collect()
}

#[derive(Deserialize)]
struct PrismResult {
    source: PrismSource,
    #[serde(default)]
    outputs: Vec<PrismOutput>,
}

#[derive(Deserialize)]
struct PrismSource {
    key: String,
}

#[derive(Deserialize)]
struct PrismOutput {
    key: String,
}

pub(crate) fn parse_prism_results(text: &str, out: &Path) -> anyhow::Result<Outputs> {
    let mut outputs = Outputs::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let result: PrismResult = serde_json::from_str(line).context("a line of results.jsonl")?;
        let files = outputs.entry(result.source.key).or_default();
        for output in result.outputs {
            // thumbnails/<hash>/<fingerprint>/<size>.<jpg|webp>
            let name = output.key.rsplit('/').next().unwrap_or_default();
            let Some((size, format)) = name.split_once('.') else {
                continue;
            };
            let Ok(size) = size.parse() else { continue };
            files.insert((size, format.to_string()), out.join(&output.key));
        }
    }
    Ok(outputs)
}

/// Every photo has every size in every format, with the expected dimensions.
fn verify(photos: &[Photo], outputs: &Outputs) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for photo in photos {
        let files = outputs.get(&photo.file);
        for size in sizes() {
            for format in FORMATS {
                let Some(path) = files.and_then(|f| f.get(&(size, format.to_string()))) else {
                    problems.push(format!("{}: no {size} {format}", photo.file));
                    continue;
                };
                match image::image_dimensions(path) {
                    Ok(found) if fits(found, (photo.width, photo.height), size) => {}
                    Ok(found) => problems.push(format!(
                        "{}: {size} {format} is {}x{}, expected the shape of {}x{} within {size}",
                        photo.file, found.0, found.1, photo.width, photo.height
                    )),
                    Err(error) => {
                        problems.push(format!("{}: {}: {error}", photo.file, path.display()))
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        let shown = problems
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ");
        bail!("{} problems, such as:\n  {shown}", problems.len());
    }
    Ok(())
}

/// Whether a thumbnail of `source` (as displayed) for `size` has the right dimensions: its
/// longest edge is the size (or the source's, never upscaled) and its shorter edge the source's
/// proportion, give or take a pixel of rounding (tools round, and cascade, differently).
pub fn fits(found: (u32, u32), source: (u32, u32), size: u32) -> bool {
    let (width, height) = source;
    let longest = width.max(height);
    let target = longest.min(size);
    let scale =
        |edge: u32| (f64::from(edge) * f64::from(target) / f64::from(longest)).round() as i64;
    let close = |found: u32, expected: i64| (i64::from(found) - expected).abs() <= 1;
    let (expected_width, expected_height) = (scale(width), scale(height));
    found.0.max(found.1) == target
        && close(found.0, expected_width)
        && close(found.1, expected_height)
}

pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// Issue #13's goals for Prism, where the methods they compare were run.
fn goals(methods: &[MethodResult]) -> Vec<Goal> {
    let find = |method| methods.iter().find(|m| m.method == method);
    let (Some(prism), pillow_seq, pillow_mp) = (
        find(Method::Prism),
        find(Method::PillowSeq),
        find(Method::PillowMp),
    ) else {
        return Vec::new();
    };
    let goal = |name: &str, ratio: f64, at_least: bool, bound: f64| Goal {
        name: name.into(),
        ratio,
        comparison: if at_least { "at least" } else { "at most" }.into(),
        bound,
        met: if at_least {
            ratio >= bound
        } else {
            ratio <= bound
        },
    };
    let mut goals = Vec::new();
    if let Some(mp) = pillow_mp {
        goals.push(goal(
            "images/s, prism / pillow-mp",
            prism.images_per_s / mp.images_per_s,
            true,
            1.5,
        ));
    }
    // Pillow's own cost per image is its sequential run's: no pool, no process start-ups.
    if let Some(seq) = pillow_seq {
        goals.push(goal(
            "CPU s per image, prism / pillow-seq",
            prism.cpu_s_per_image / seq.cpu_s_per_image,
            false,
            0.7,
        ));
    }
    if let Some(mp) = pillow_mp {
        goals.push(goal(
            "peak RSS, prism / pillow-mp (all its processes)",
            prism.peak_rss_mib / mp.peak_rss_mib,
            false,
            2.0,
        ));
    }
    goals
}

/// The charts of a run, as (file stem, SVG): per-image time per method, and, with more than one
/// replica count, the served pipeline's images/s against its replicas beside the ideal line.
pub fn charts(report: &Report) -> anyhow::Result<Vec<(String, String)>> {
    let images = report.dataset.images;
    let with_times: Vec<(String, Vec<f64>)> = report
        .methods
        .iter()
        .filter(|m| m.image_ms.is_some())
        .map(|m| {
            let times = m.runs.iter().flat_map(|r| r.image_ms.iter().copied());
            (m.name.clone(), times.collect())
        })
        .collect();
    let mut charts = Vec::new();
    if !with_times.is_empty() {
        let title = format!("Per-image time, {images} photos");
        let svg = charts::box_plot(&charts::BoxPlot {
            title: &title,
            y_label: "ms per image (own work)",
            groups: with_times,
        })?;
        charts.push((format!("thumbnails-{images}-per-image"), svg));
    }
    let served: Vec<(f64, f64)> = report
        .methods
        .iter()
        .filter_map(|m| Some((m.replicas? as f64, m.images_per_s)))
        .collect();
    if let [(one, rate), _, ..] = served[..] {
        let last = served.iter().map(|p| p.0).fold(one, f64::max);
        let title = format!("Served pipeline scalability, {images} photos");
        let svg = charts::line_chart(&charts::LineChart {
            title: &title,
            x_label: "thumbnail replicas",
            y_label: "images/s",
            series: vec![
                charts::Series {
                    name: "measured".into(),
                    points: served,
                    reference: false,
                },
                charts::Series {
                    name: "ideal (linear from the first)".into(),
                    points: vec![(one, rate), (last, rate * last / one)],
                    reference: true,
                },
            ],
        })?;
        charts.push((format!("thumbnails-{images}-scalability"), svg));
    }
    Ok(charts)
}

/// What was measured, in a sentence.
pub fn describe(report: &Report) -> String {
    format!(
        "{} images ({} distinct, {:.1}-{:.1} MP, mean {:.1} MP, {:.0} MiB), thumbnails {:?} px as JPEG q{} + WebP q{}, \
         {} workers, medians of {} rounds; {} ({} cores, {:.0} GiB), {}",
        report.dataset.images,
        report.dataset.distinct,
        report.dataset.megapixels_min,
        report.dataset.megapixels_max,
        report.dataset.megapixels_mean,
        report.dataset.bytes_total as f64 / (1024.0 * 1024.0),
        report.sizes,
        report.jpeg_quality,
        report.webp_quality,
        report.workers,
        report.rounds,
        report.machine.cpu_model,
        report.machine.cores,
        report.machine.memory_gib,
        report.date,
    )
}

/// The figures of every method, one row each.
pub fn table(report: &Report) -> Table {
    let mut table = Table::new(&[
        "method",
        "wall s",
        "images/s",
        "CPU s",
        "CPU s/image",
        &format!("$/1000 images at ${}/vCPU-h", report.vcpu_hour_usd),
        "per image p50 ms",
        "p99 ms",
        "peak RSS MiB",
        "load",
    ]);
    for m in &report.methods {
        let (p50, p99) = m.image_ms.map_or_else(
            || ("-".into(), "-".into()),
            |p| (format!("{:.0}", p.p50), format!("{:.0}", p.p99)),
        );
        table.push(vec![
            m.name.clone(),
            format!("{:.2}", m.wall_s),
            format!("{:.1}", m.images_per_s),
            format!("{:.2}", m.cpu_s),
            format!("{:.4}", m.cpu_s_per_image),
            format!("{:.5}", m.usd_per_1000_images),
            p50,
            p99,
            format!("{:.1}", m.peak_rss_mib),
            format!("{:.2}", median(m.runs.iter().filter_map(|r| r.load_before))),
        ]);
    }
    table
}

pub const NOTES: &str = "per image: each image's own work (Pillow: open to last save; Prism: the stage's processing_ms), \
     over every round; $/1000 images: CPU-seconds at the price per vCPU-hour; peak RSS: the largest sum of the resident sets of \
     a method's processes, sampled every 20 ms (served: the sum of the services' own peaks; the servers are not counted); \
     load: 1-minute load average before each run (median)";

/// The goal: the served pipeline with n thumbnail replicas makes at least this share of n times
/// one replica's images/s, for n up to the cores.
pub const SCALING_GOAL: f64 = 0.8;

/// For each served layout of 2 up to the cores replicas: (replicas, images/s over replicas times
/// one replica's images/s). Empty without a one-replica run.
pub fn scaling(report: &Report) -> Vec<(usize, f64)> {
    let Some(one) = report.methods.iter().find(|m| m.replicas == Some(1)) else {
        return Vec::new();
    };
    report
        .methods
        .iter()
        .filter_map(|m| {
            let replicas = m.replicas.filter(|&n| n > 1 && n <= report.machine.cores)?;
            Some((
                replicas,
                m.images_per_s / (replicas as f64 * one.images_per_s),
            ))
        })
        .collect()
}

/// The goals of issue #13, one line each.
pub fn goal_lines(report: &Report) -> Vec<String> {
    report
        .goals
        .iter()
        .map(|goal| {
            format!(
                "goal: {} = {:.2}x ({} {}x): {}",
                goal.name,
                goal.ratio,
                goal.comparison,
                goal.bound,
                if goal.met { "met" } else { "NOT met" }
            )
        })
        .collect()
}

/// The table and the goals, as printed.
pub fn render_table(report: &Report) -> String {
    let mut text = format!(
        "{}\n\n{}\n{NOTES}\n",
        describe(report),
        table(report).text()
    );
    for line in goal_lines(report) {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnail_dimensions_follow_the_displayed_shape() {
        assert!(fits((512, 384), (4032, 3024), 512));
        assert!(fits((384, 512), (3024, 4032), 512));
        assert!(fits((128, 72), (1920, 1080), 128));
        assert!(fits((128, 71), (1920, 1080), 128), "a pixel of rounding");
        assert!(!fits((384, 512), (4032, 3024), 512), "not rotated");
        assert!(!fits((511, 383), (4032, 3024), 512));
        assert!(!fits((128, 96), (4032, 3024), 256));
        assert!(fits((300, 200), (300, 200), 512), "never upscaled");
    }

    #[test]
    fn reads_prism_outputs_from_its_results() {
        let results = concat!(
            r#"{"source":{"bucket":"prism-input","key":"IMG_0001.jpg","etag":"x","size":1},"stage":"thumbnail","outputs":["#,
            r#"{"bucket":"prism-output","key":"thumbnails/ab/cd/512.jpg","content_type":"image/jpeg","width":512,"height":384,"bytes":9},"#,
            r#"{"bucket":"prism-output","key":"thumbnails/ab/cd/512.webp","content_type":"image/webp","width":512,"height":384,"bytes":9}]}"#,
            "\n\n",
            r#"{"source":{"bucket":"prism-input","key":"IMG_0002.jpg","etag":"y","size":1},"stage":"thumbnail","outputs":[]}"#,
        );
        let outputs = parse_prism_results(results, Path::new("/out")).unwrap();
        let first = &outputs["IMG_0001.jpg"];
        assert_eq!(
            first[&(512, "jpg".to_string())],
            Path::new("/out/thumbnails/ab/cd/512.jpg")
        );
        assert_eq!(first.len(), 2);
        assert!(outputs["IMG_0002.jpg"].is_empty());
    }

    #[test]
    fn per_image_times_from_pillow_and_prism_skip_copies() {
        let pillow = "0.095000\t/set/IMG_0001.jpg\n0.120500\t/set/IMG_0002.jpg\n";
        assert_eq!(pillow_image_ms(pillow).unwrap(), [95.0, 120.5]);
        assert!(pillow_image_ms("0.1 no tab\n").is_err());
        let prism = concat!(
            r#"{"deduplicated":false,"timings":{"processing_ms":87}}"#,
            "\n",
            r#"{"deduplicated":true,"timings":{"processing_ms":2}}"#,
        );
        assert_eq!(prism_image_ms(prism).unwrap(), [87.0]);
    }

    #[test]
    fn percentiles_and_cost_per_thousand_images() {
        let times: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&times).unwrap();
        assert_eq!(p.count, 100);
        assert!(
            (p.p50 - 50.0).abs() < 0.1 && (p.p99 - 99.0).abs() < 0.1,
            "{p:?}"
        );
        assert!(Percentiles::of(&[]).is_none());
        let run = Run {
            wall_s: 10.0,
            cpu_s: 36.0,
            peak_rss_mib: 1.0,
            sum_of_process_peaks_mib: 1.0,
            load_before: None,
            load_after: None,
            image_ms: Vec::new(),
        };
        // 36 CPU-s for 100 images: 360 CPU-s, a tenth of a vCPU-hour, per 1,000.
        let result =
            MethodResult::new(Method::Served, Some(2), String::new(), 100, 0.05, vec![run]);
        assert!((result.usd_per_1000_images - 0.005).abs() < 1e-12);
        assert_eq!(result.name, "served-2");
        assert!(result.image_ms.is_none());
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }

    #[test]
    fn goals_compare_prism_with_pillow() {
        let run = |wall_s: f64, cpu_s: f64, peak_rss_mib: f64| Run {
            wall_s,
            cpu_s,
            peak_rss_mib,
            sum_of_process_peaks_mib: peak_rss_mib,
            load_before: None,
            load_after: None,
            image_ms: vec![wall_s * 10.0],
        };
        let result =
            |method, r: Run| MethodResult::new(method, None, String::new(), 100, 0.04, vec![r]);
        let methods = [
            result(Method::PillowSeq, run(10.0, 10.0, 40.0)),
            result(Method::PillowMp, run(5.0, 10.5, 100.0)),
            result(Method::Prism, run(2.5, 6.0, 150.0)),
        ];
        let goals = goals(&methods);
        assert_eq!(goals.len(), 3);
        assert!((goals[0].ratio - 2.0).abs() < 1e-9 && goals[0].met);
        assert!((goals[1].ratio - 0.6).abs() < 1e-9 && goals[1].met);
        assert!((goals[2].ratio - 1.5).abs() < 1e-9 && goals[2].met);
        assert!(super::goals(&methods[..2]).is_empty(), "no prism, no goals");
    }

    #[test]
    fn scaling_is_each_layout_against_linear_from_one_replica_up_to_the_cores() {
        let served = |replicas: usize, wall_s: f64| {
            let run = Run {
                wall_s,
                cpu_s: wall_s,
                peak_rss_mib: 100.0,
                sum_of_process_peaks_mib: 100.0,
                load_before: None,
                load_after: None,
                image_ms: Vec::new(),
            };
            MethodResult::new(
                Method::Served,
                Some(replicas),
                String::new(),
                100,
                0.04,
                vec![run],
            )
        };
        let report = |methods: Vec<MethodResult>| Report {
            date: String::new(),
            machine: Machine {
                cpu_model: String::new(),
                cores: 2,
                memory_gib: 1.0,
            },
            dataset: DatasetSummary {
                dir: PathBuf::new(),
                generator: String::new(),
                seed: 1,
                images: 100,
                distinct: 100,
                megapixels_mean: 1.0,
                megapixels_min: 1.0,
                megapixels_max: 1.0,
                bytes_total: 0,
            },
            rounds: 1,
            workers: 2,
            vcpu_hour_usd: 0.04,
            sizes: Vec::new(),
            jpeg_quality: 85,
            webp_quality: 80,
            methods,
            goals: Vec::new(),
        };
        // 10 images/s with one replica, 16 with two (0.8 of 20), 4 replicas past the 2 cores.
        let scaled = scaling(&report(vec![
            served(1, 10.0),
            served(2, 6.25),
            served(4, 5.0),
        ]));
        assert_eq!(scaled.len(), 1, "{scaled:?}");
        assert_eq!(scaled[0].0, 2);
        assert!((scaled[0].1 - 0.8).abs() < 1e-9, "{scaled:?}");
        assert!(
            scaling(&report(vec![served(2, 5.0)])).is_empty(),
            "no one-replica run"
        );
    }
}
