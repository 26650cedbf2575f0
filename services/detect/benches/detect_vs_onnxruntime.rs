//! Prism's detector against onnxruntime, on the same ONNX file and the same decoded pixels:
//! latency at batch 1 and throughput at batch 8, side by side (each side letterboxing for itself),
//! and how far the detections differ when onnxruntime runs on Prism's own network input.
//!
//! Needs `deploy/local/fetch-assets.sh --onnxruntime` (weights, images, and a Python venv with
//! onnxruntime under $PRISM_HOME). Run with
//! `cargo bench -p prism-detect --bench detect_vs_onnxruntime`; BENCH_ITERATIONS sets the rounds,
//! RAYON_NUM_THREADS the threads of both sides (`RAYON_NUM_THREADS=1`: per core).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, anyhow, bail, ensure};
use image::RgbImage;
use prism_detect::model::{
    Detection, Detector, DetectorConfig, Letterbox, fill_letterboxed, prism_home,
};
use prism_inference::bench::{
    BATCH, Timings, iterations, onnxruntime_python, print_table, time_batches,
};
use serde::Deserialize;

/// bike.jpg is optional in the cache.
const IMAGES: [(&str, bool); 3] = [("bus.jpg", true), ("zidane.jpg", true), ("bike.jpg", false)];

/// What onnxruntime_detect.py prints.
#[derive(Deserialize)]
struct OnnxRuntimeRun {
    runtime: String,
    batch1_median_ms: f64,
    batch_median_ms: f64,
    detections: Vec<Vec<Detection>>,
}

fn main() -> anyhow::Result<()> {
    let iterations = iterations().map_err(|error| anyhow!(error))?;
    let python = onnxruntime_python().map_err(|error| anyhow!(error))?;
    let home = prism_home();
    let config = DetectorConfig::default();
    let detector = Detector::load(&config)?;

    let mut names = Vec::new();
    let mut images = Vec::new();
    for (name, required) in IMAGES {
        let path = home.join("images").join(name);
        if !path.is_file() {
            ensure!(
                !required,
                "{} is missing: run deploy/local/fetch-assets.sh",
                path.display()
            );
            continue;
        }
        images.push(
            image::open(&path)
                .with_context(|| path.display().to_string())?
                .to_rgb8(),
        );
        names.push(name);
    }

    let prism = time_batches(&images, iterations, |batch| {
        detector.detect(batch).map(drop)
    })?;
    let prism_detections = detector.detect(&images)?;
    let onnxruntime = run_onnxruntime(&python, &config, &images, iterations)?;

    print_table(
        &format!(
            "YOLOv8n, {0}x{0} input, images {1}, median of {iterations} rounds",
            config.input_size,
            names.join(", ")
        ),
        prism,
        &onnxruntime.runtime,
        Timings {
            batch1_ms: onnxruntime.batch1_median_ms,
            batch_ms: onnxruntime.batch_median_ms,
        },
    );
    println!(
        "(onnxruntime runs the batch as {BATCH} single-image runs: the export's batch is fixed at 1)\n"
    );

    for ((name, ours), theirs) in names
        .iter()
        .zip(&prism_detections)
        .zip(&onnxruntime.detections)
    {
        println!("{name}: {}", agreement(ours, theirs));
    }
    // In the form of the reference tables in tests/reference.rs, to regenerate them.
    println!("\nonnxruntime's detections on Prism's network input:");
    for (name, detections) in names.iter().zip(&onnxruntime.detections) {
        println!("{name}");
        for d in detections {
            let b = &d.bbox;
            println!(
                "    (\"{}\", {:.5}, [{:.3}, {:.3}, {:.3}, {:.3}]),",
                d.class, d.confidence, b.x1, b.y1, b.x2, b.y2
            );
        }
    }
    Ok(())
}

fn run_onnxruntime(
    python: &Path,
    config: &DetectorConfig,
    images: &[RgbImage],
    iterations: usize,
) -> anyhow::Result<OnnxRuntimeRun> {
    // Raw pixels, so onnxruntime sees exactly what Prism decoded, and Prism's network input.
    let directory = std::env::temp_dir().join(format!("prism-detect-bench-{}", std::process::id()));
    std::fs::create_dir_all(&directory)?;
    let mut arguments: Vec<String> = Vec::new();
    for (index, image) in images.iter().enumerate() {
        let path: PathBuf = directory.join(format!("{index}.rgb"));
        std::fs::write(&path, image.as_raw())?;
        let input_path: PathBuf = directory.join(format!("{index}.input"));
        std::fs::write(&input_path, network_input(image, config.input_size))?;
        arguments.push(format!(
            "{}:{}:{}:{}",
            path.display(),
            image.width(),
            image.height(),
            input_path.display()
        ));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/onnxruntime_detect.py");
    let output = Command::new(python)
        .arg(&script)
        .arg("--model")
        .arg(&config.weights)
        .args(["--size", &config.input_size.to_string()])
        .args(["--confidence", &config.confidence_threshold.to_string()])
        .args(["--iou", &config.iou_threshold.to_string()])
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
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Prism's letterboxed network input as bytes (planes R, G, B), exactly: every value is n / 255.
fn network_input(image: &RgbImage, size: u32) -> Vec<u8> {
    let letterbox = Letterbox::new(image.width(), image.height(), size);
    let mut input = vec![0f32; 3 * (size * size) as usize];
    fill_letterboxed(image, &letterbox, &mut input);
    input
        .iter()
        .map(|value| (value * 255.0).round() as u8)
        .collect()
}

/// Largest differences between matched detections, or why they cannot be matched.
fn agreement(ours: &[Detection], theirs: &[Detection]) -> String {
    if ours.len() != theirs.len() {
        return format!(
            "{} detections vs {} from onnxruntime",
            ours.len(),
            theirs.len()
        );
    }
    let mut box_px = 0.0f32;
    let mut confidence = 0.0f32;
    for (a, b) in ours.iter().zip(theirs) {
        if a.class_id != b.class_id {
            return format!("classes differ: {} vs {}", a.class, b.class);
        }
        let (p, q) = (&a.bbox, &b.bbox);
        for difference in [p.x1 - q.x1, p.y1 - q.y1, p.x2 - q.x2, p.y2 - q.y2] {
            box_px = box_px.max(difference.abs());
        }
        confidence = confidence.max((a.confidence - b.confidence).abs());
    }
    format!(
        "{} detections, same classes; max box difference {box_px:.4} px, max confidence difference {confidence:.6}",
        ours.len()
    )
}
