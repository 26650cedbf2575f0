//! Prism's classifier against onnxruntime on a graph built from the same weights, on the same
//! decoded pictures: latency at batch 1 and throughput at batch 8, side by side (each side
//! preprocessing for itself), and how far the probabilities differ on Prism's own network input.
//!
//! Needs `deploy/local/fetch-assets.sh --onnxruntime` (weights, labels, sample pictures, and a
//! Python venv with onnx and onnxruntime under $PRISM_HOME). Run with
//! `cargo bench -p prism-classify --bench classify_vs_onnxruntime`; BENCH_ITERATIONS sets the
//! rounds.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use image::RgbImage;
use prism_classify::model::{Classifier, ClassifierConfig, INPUT_VALUES, fill_input, prism_home};
use serde::Deserialize;

const BATCH: usize = 8;
const DEFAULT_ITERATIONS: usize = 10;
const IMAGES: [&str; 2] = ["chelsea.png", "coffee.png"];

/// What tools/onnxruntime_classify.py prints.
#[derive(Deserialize)]
struct OnnxRuntimeRun {
    runtime: String,
    batch1_median_ms: f64,
    batch_median_ms: f64,
    results: Vec<OnnxRuntimeResult>,
}

#[derive(Deserialize)]
struct OnnxRuntimeResult {
    probabilities: Vec<f32>,
}

fn main() -> anyhow::Result<()> {
    let iterations = match std::env::var("BENCH_ITERATIONS") {
        Ok(value) => value.parse().context("BENCH_ITERATIONS must be a number")?,
        Err(_) => DEFAULT_ITERATIONS,
    };
    let home = prism_home();
    let python = home.join("venv-onnxruntime/bin/python");
    ensure!(
        python.is_file(),
        "{} is missing: run deploy/local/fetch-assets.sh --onnxruntime",
        python.display()
    );
    let config = ClassifierConfig::default();
    let classifier = Classifier::load(&config)?;
    let mut images = Vec::new();
    for name in IMAGES {
        let path = home.join("images").join(name);
        images.push(
            image::open(&path)
                .with_context(|| format!("{}: run deploy/local/fetch-assets.sh", path.display()))?
                .to_rgb8(),
        );
    }

    let (batch1_ms, batch_ms) = time_prism(&classifier, &images, iterations)?;
    let onnxruntime = run_onnxruntime(&python, &config, &images, iterations)?;

    println!(
        "EfficientNet-Lite0, 224x224 input, images {}, median of {iterations} rounds, {} CPU threads\n",
        IMAGES.join(", "),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<34} {:>16} {:>18} {:>8}",
        "", "Prism", onnxruntime.runtime, "ratio"
    );
    let row = |label: &str, prism: f64, other: f64| {
        println!(
            "{label:<34} {prism:>16.1} {other:>18.1} {:>7.2}x",
            prism / other
        );
    };
    row(
        "batch 1 latency (ms/image)",
        batch1_ms,
        onnxruntime.batch1_median_ms,
    );
    let throughput = |batch_ms: f64| BATCH as f64 * 1000.0 / batch_ms;
    row(
        &format!("batch {BATCH} throughput (images/s)"),
        throughput(batch_ms),
        throughput(onnxruntime.batch_median_ms),
    );
    println!();
    for (index, name) in IMAGES.iter().enumerate() {
        let mut input = vec![0.0; INPUT_VALUES];
        fill_input(&images[index], &mut input);
        let ours = classifier.probabilities_of_inputs(&input).remove(0);
        // The tool lists pictures first, then the network inputs.
        let theirs = &onnxruntime.results[IMAGES.len() + index].probabilities;
        let difference = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        println!("{name}: max |probability difference| on Prism's input {difference:.2e}");
    }
    Ok(())
}

fn time_prism(
    classifier: &Classifier,
    images: &[RgbImage],
    iterations: usize,
) -> anyhow::Result<(f64, f64)> {
    classifier.classify(&images[..1])?; // warm-up: first-touch allocations
    let mut latencies = Vec::new();
    for _ in 0..iterations {
        for image in images {
            let start = Instant::now();
            classifier.classify(std::slice::from_ref(image))?;
            latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let batch: Vec<RgbImage> = images.iter().cycle().take(BATCH).cloned().collect();
    let mut batch_times = Vec::new();
    for _ in 0..iterations {
        let start = Instant::now();
        classifier.classify(&batch)?;
        batch_times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((median(&mut latencies), median(&mut batch_times)))
}

/// onnxruntime decodes the same files with Pillow (the timings start after decoding) and also
/// runs Prism's network inputs, written to a temporary folder, for the comparison of
/// probabilities.
fn run_onnxruntime(
    python: &Path,
    config: &ClassifierConfig,
    images: &[RgbImage],
    iterations: usize,
) -> anyhow::Result<OnnxRuntimeRun> {
    let directory =
        std::env::temp_dir().join(format!("prism-classify-bench-{}", std::process::id()));
    std::fs::create_dir_all(&directory)?;
    let mut arguments: Vec<String> = Vec::new();
    for (index, image) in images.iter().enumerate() {
        let mut input = vec![0.0f32; INPUT_VALUES];
        fill_input(image, &mut input);
        let path = directory.join(format!("{index}.input"));
        let bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, bytes)?;
        arguments.extend(["--input".to_owned(), path.display().to_string()]);
    }
    for name in IMAGES {
        let path = prism_home().join("images").join(name);
        arguments.extend(["--image".to_owned(), path.display().to_string()]);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/onnxruntime_classify.py");
    let output = Command::new(python)
        .arg(&script)
        .arg("--weights")
        .arg(&config.weights)
        .arg("--labels")
        .arg(&config.labels)
        .args(["--iterations", &iterations.to_string()])
        .args(["--batch", &BATCH.to_string()])
        .args(&arguments)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    std::fs::remove_dir_all(&directory).ok();
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("reading the onnxruntime tool's output")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
