//! Prism's classifier against onnxruntime on a graph built from the same weights: latency at
//! batch 1 and throughput at batch 8, side by side, from the same decoded pictures (each side
//! preprocessing for itself) and for the network alone on the same input tensors; and how far
//! the probabilities differ on Prism's own network input.
//!
//! Needs `deploy/local/fetch-assets.sh --onnxruntime` (weights, labels, sample pictures, and a
//! Python venv with onnx and onnxruntime under $PRISM_HOME). Run with
//! `cargo bench -p prism-classify --bench classify_vs_onnxruntime`; BENCH_ITERATIONS sets the
//! rounds, RAYON_NUM_THREADS the threads of both sides (`RAYON_NUM_THREADS=1`: per core).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, anyhow, bail};
use prism_classify::model::{Classifier, ClassifierConfig, INPUT_VALUES, fill_input, prism_home};
use prism_inference::bench::{
    BATCH, Timings, iterations, onnxruntime_python, print_table, time_batches,
};
use serde::Deserialize;

const IMAGES: [&str; 2] = ["chelsea.png", "coffee.png"];

/// What tools/onnxruntime_classify.py prints.
#[derive(Deserialize)]
struct OnnxRuntimeRun {
    runtime: String,
    batch1_median_ms: f64,
    batch_median_ms: f64,
    network_batch1_median_ms: f64,
    network_batch_median_ms: f64,
    results: Vec<OnnxRuntimeResult>,
}

#[derive(Deserialize)]
struct OnnxRuntimeResult {
    probabilities: Vec<f32>,
}

fn main() -> anyhow::Result<()> {
    let iterations = iterations().map_err(|error| anyhow!(error))?;
    let python = onnxruntime_python().map_err(|error| anyhow!(error))?;
    let home = prism_home();
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

    let prism = time_batches(&images, iterations, |batch| {
        classifier.classify(batch).map(drop)
    })?;
    // The network alone: both sides run the same input tensors, made by Prism's preprocessing.
    let inputs: Vec<Vec<f32>> = images
        .iter()
        .map(|image| {
            let mut input = vec![0.0; INPUT_VALUES];
            fill_input(image, &mut input);
            input
        })
        .collect();
    let prism_network = time_batches(&inputs, iterations, |batch| {
        classifier.probabilities_of_inputs(&batch.concat());
        Ok::<_, anyhow::Error>(())
    })?;
    let onnxruntime = run_onnxruntime(&python, &config, &inputs, iterations)?;

    print_table(
        &format!(
            "EfficientNet-Lite0 from decoded pictures (preprocessing included), 224x224 input, \
             images {}, median of {iterations} rounds",
            IMAGES.join(", ")
        ),
        prism,
        &onnxruntime.runtime,
        Timings {
            batch1_ms: onnxruntime.batch1_median_ms,
            batch_ms: onnxruntime.batch_median_ms,
        },
    );
    println!();
    print_table(
        "The network alone, on the same input tensors",
        prism_network,
        &onnxruntime.runtime,
        Timings {
            batch1_ms: onnxruntime.network_batch1_median_ms,
            batch_ms: onnxruntime.network_batch_median_ms,
        },
    );
    println!();
    for (index, name) in IMAGES.iter().enumerate() {
        let ours = classifier.probabilities_of_inputs(&inputs[index]).remove(0);
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

/// onnxruntime decodes the same files with Pillow (the timings start after decoding) and also
/// runs Prism's network inputs, written to a temporary folder, for the network-only timings and
/// the comparison of probabilities.
fn run_onnxruntime(
    python: &Path,
    config: &ClassifierConfig,
    inputs: &[Vec<f32>],
    iterations: usize,
) -> anyhow::Result<OnnxRuntimeRun> {
    let directory =
        std::env::temp_dir().join(format!("prism-classify-bench-{}", std::process::id()));
    std::fs::create_dir_all(&directory)?;
    let mut arguments: Vec<String> = Vec::new();
    for (index, input) in inputs.iter().enumerate() {
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
        .args(["--threads", &rayon::current_num_threads().to_string()])
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
