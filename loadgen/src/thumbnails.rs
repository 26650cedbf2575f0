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
//! - `prism`: `prism run IMAGES --out OUT --stages thumbnail`, the embedded single-process mode.
//!
//! Every output of every method is checked (it exists, its longest edge is the size, its shape the
//! photo's after EXIF orientation): a method that silently produced nothing fails the run.

use crate::dataset::{IMAGES_DIR, Manifest, Photo};
use crate::measure::{self, Usage};
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
const FORMATS: [&str; 2] = ["jpg", "webp"];
const PILLOW_SCRIPT: &str = include_str!("../baselines/pillow_thumbnails.py");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    PillowSeq,
    PillowMp,
    Vips,
    Prism,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Self::PillowSeq => "pillow-seq",
            Self::PillowMp => "pillow-mp",
            Self::Vips => "vips",
            Self::Prism => "prism",
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
    /// Scratch folder for the outputs; each round's are checked, then deleted.
    pub work: PathBuf,
    pub tools: Tools,
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
}

impl Run {
    fn from_usage(usage: Usage, load_before: Option<f64>, load_after: Option<f64>) -> Run {
        Run {
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
    pub description: String,
    pub runs: Vec<Run>,
    pub wall_s: f64,
    pub images_per_s: f64,
    pub cpu_s: f64,
    pub cpu_s_per_image: f64,
    pub peak_rss_mib: f64,
    pub sum_of_process_peaks_mib: f64,
}

impl MethodResult {
    pub fn new(method: Method, description: String, images: usize, runs: Vec<Run>) -> Self {
        let wall_s = median(runs.iter().map(|r| r.wall_s));
        let cpu_s = median(runs.iter().map(|r| r.cpu_s));
        MethodResult {
            method,
            description,
            wall_s,
            images_per_s: images as f64 / wall_s,
            cpu_s,
            cpu_s_per_image: cpu_s / images as f64,
            peak_rss_mib: median(runs.iter().map(|r| r.peak_rss_mib)),
            sum_of_process_peaks_mib: median(runs.iter().map(|r| r.sum_of_process_peaks_mib)),
            runs,
        }
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

    let mut runs: HashMap<Method, Vec<Run>> = HashMap::new();
    for round in 1..=options.rounds {
        for &method in &options.methods {
            let out = options.work.join(format!("{}-{round}", method.name()));
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out)?;
            let commands = commands(method, options, &images, &out, &script, &manifest.photos);
            let load_before = measure::load_average();
            let usage = measure::run_measured(
                commands,
                &options.work.join(format!("{}.log", method.name())),
            )
            .with_context(|| format!("{} (round {round})", method.name()))?;
            let run = Run::from_usage(usage, load_before, measure::load_average());
            let outputs = match method {
                Method::Prism => prism_outputs(&out)?,
                _ => named_outputs(&out, &manifest.photos),
            };
            verify(&manifest.photos, &outputs).with_context(|| {
                format!(
                    "{} (round {round}) made wrong or missing thumbnails",
                    method.name()
                )
            })?;
            eprintln!(
                "round {round}/{}: {:<10} {:>7.2} s wall {:>7.2} s CPU {:>7.1} MiB (load {:.2})",
                options.rounds,
                method.name(),
                run.wall_s,
                run.cpu_s,
                run.peak_rss_mib,
                run.load_before.unwrap_or(f64::NAN)
            );
            runs.entry(method).or_default().push(run);
            std::fs::remove_dir_all(&out)?;
        }
    }
    let methods: Vec<MethodResult> = options
        .methods
        .iter()
        .map(|&method| {
            MethodResult::new(
                method,
                method.description(options.workers),
                manifest.photos.len(),
                runs.remove(&method).unwrap_or_default(),
            )
        })
        .collect();
    Ok(Report {
        date: chrono::Local::now().format("%Y-%m-%d %H:%M %Z").to_string(),
        machine: Machine::this_one(),
        dataset: DatasetSummary::of(&options.dataset, &manifest),
        rounds: options.rounds,
        workers: options.workers,
        sizes: sizes().to_vec(),
        jpeg_quality: JPEG_QUALITY,
        webp_quality: WEBP_QUALITY,
        goals: goals(&methods),
        methods,
    })
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
            Method::Prism => ensure!(
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
            .arg(images);
        vec![vec![command]]
    };
    match method {
        Method::PillowSeq => pillow(1),
        Method::PillowMp => pillow(options.workers),
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

/// Prism's outputs, from the results it wrote to OUT/results.jsonl (a deduplicated upload names
/// the same objects as its twin's).
fn prism_outputs(out: &Path) -> anyhow::Result<Outputs> {
    let path = out.join("results.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_prism_results(&text, out)
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

/// The table and the goals, as printed.
pub fn render_table(report: &Report) -> String {
    let mut text = format!(
        "{} images ({} distinct, {:.1}-{:.1} MP, mean {:.1} MP, {:.0} MiB), thumbnails {:?} px as JPEG q{} + WebP q{}, \
         {} workers, medians of {} rounds\n{} ({} cores, {:.0} GiB), {}\n\n",
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
    );
    text.push_str(&format!(
        "{:<11} {:>7} {:>9} {:>7} {:>11} {:>12} {:>9}\n",
        "method", "wall s", "images/s", "CPU s", "CPU s/image", "peak RSS MiB", "load"
    ));
    for m in &report.methods {
        let load = median(m.runs.iter().filter_map(|r| r.load_before));
        text.push_str(&format!(
            "{:<11} {:>7.2} {:>9.1} {:>7.2} {:>11.4} {:>12.1} {:>9.2}\n",
            m.method.name(),
            m.wall_s,
            m.images_per_s,
            m.cpu_s,
            m.cpu_s_per_image,
            m.peak_rss_mib,
            load
        ));
    }
    text.push_str(
        "\npeak RSS: the largest sum of the resident sets of a method's processes, sampled every 20 ms; \
         load: 1-minute load average before each run (median)\n",
    );
    for goal in &report.goals {
        text.push_str(&format!(
            "goal: {} = {:.2}x ({} {}x): {}\n",
            goal.name,
            goal.ratio,
            goal.comparison,
            goal.bound,
            if goal.met { "met" } else { "NOT met" }
        ));
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
        };
        let result = |method, r: Run| MethodResult::new(method, String::new(), 100, vec![r]);
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
}
