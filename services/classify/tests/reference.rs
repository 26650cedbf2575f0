//! The real EfficientNet-Lite0 weights against onnxruntime, and against shared/MODELS.md's
//! figures for the scikit-image sample photos.
//!
//! Needs `deploy/local/fetch-assets.sh --onnxruntime` to have filled `$PRISM_HOME` (default
//! `~/.cache/prism`): the weights, labels and sample images, and the Python venv with onnx and
//! onnxruntime in which `tools/onnxruntime_classify.py` builds an ONNX graph from the same
//! safetensors file (BatchNorm folded, TF "SAME" padding) and runs it. Fails, never skips, when
//! they are missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use prism_classify::model::{
    Class, Classifier, ClassifierConfig, INPUT_VALUES, fill_input, prism_home,
};
use prism_core::contract::stages::EFFICIENTNET_LITE0_SHA256;
use serde::Deserialize;

/// On the same network input, Prism and onnxruntime differ only in the order of float sums.
const SAME_INPUT_TOLERANCE: f32 = 1e-4;
/// From the picture, Pillow's and fast_image_resize's bilinear resizes round a few values apart.
const END_TO_END_TOLERANCE: f32 = 0.01;
const IMAGES: [&str; 2] = ["chelsea.png", "coffee.png"];

/// shared/MODELS.md (onnxruntime on the Pillow-preprocessed pictures): (index, label, score).
const MODELS_MD_CHELSEA: [(u32, &str, f32); 3] = [
    (282, "tiger cat", 0.383),
    (285, "Egyptian cat", 0.370),
    (281, "tabby", 0.161),
];
const MODELS_MD_COFFEE: [(u32, &str, f32); 1] = [(967, "espresso", 0.957)];

fn fetched(relative: &str) -> PathBuf {
    let path = prism_home().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run deploy/local/fetch-assets.sh --onnxruntime (it fills PRISM_HOME={})",
        path.display(),
        prism_home().display()
    );
    path
}

fn classifier() -> &'static Classifier {
    static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
    CLASSIFIER.get_or_init(|| {
        fetched("models/efficientnet-lite0.safetensors");
        fetched("models/imagenet1k-labels.json");
        Classifier::load(&ClassifierConfig::default()).unwrap_or_else(|error| panic!("{error}"))
    })
}

fn image(name: &str) -> image::RgbImage {
    let path = fetched(&format!("images/{name}"));
    image::open(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .to_rgb8()
}

/// What tools/onnxruntime_classify.py prints.
#[derive(Deserialize)]
struct OnnxRuntimeRun {
    runtime: String,
    results: Vec<OnnxRuntimeResult>,
}

#[derive(Deserialize)]
struct OnnxRuntimeResult {
    top: Vec<Class>,
    probabilities: Vec<f32>,
}

/// Runs the onnxruntime tool on `arguments` (`--image PATH`, `--input PATH`, ...).
fn onnxruntime(arguments: &[String]) -> OnnxRuntimeRun {
    let python = fetched("venv-onnxruntime/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/onnxruntime_classify.py");
    let config = ClassifierConfig::default();
    let output = Command::new(python)
        .arg(&script)
        .arg("--weights")
        .arg(&config.weights)
        .arg("--labels")
        .arg(&config.labels)
        .args(arguments)
        .output()
        .unwrap_or_else(|error| panic!("running {}: {error}", script.display()));
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{} printed no result ({error}): {}",
            script.display(),
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// A fresh temporary folder for one test's files.
fn scratch(test: &str) -> PathBuf {
    let directory =
        std::env::temp_dir().join(format!("prism-classify-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temporary folder");
    directory
}

fn raw(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn describe(classes: &[Class]) -> String {
    classes
        .iter()
        .map(|c| format!("{} {} {:.5}", c.index, c.label, c.score))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn weights_are_the_pinned_conversion() {
    // What fetch-assets.sh's conversion writes (see LITE0_SAFETENSORS_SHA256 there).
    assert_eq!(classifier().weights_digest(), EFFICIENTNET_LITE0_SHA256);
}

#[test]
fn on_prisms_own_input_tensors_probabilities_match_onnxruntime() {
    let directory = scratch("prism-input");
    let mut arguments = Vec::new();
    let mut ours = Vec::new();
    for name in IMAGES {
        let mut input = vec![0.0; INPUT_VALUES];
        fill_input(&image(name), &mut input);
        let path = directory.join(format!("{name}.input"));
        std::fs::write(&path, raw(&input)).expect("write input");
        arguments.extend(["--input".to_owned(), path.display().to_string()]);
        ours.push(classifier().probabilities_of_inputs(&input).remove(0));
    }
    let run = onnxruntime(&arguments);
    std::fs::remove_dir_all(&directory).ok();
    for ((name, ours), theirs) in IMAGES.iter().zip(&ours).zip(&run.results) {
        let difference = max_difference(ours, &theirs.probabilities);
        println!(
            "{name}: max |Prism - {}| = {difference:.2e} over 1000 probabilities",
            run.runtime
        );
        assert!(
            difference <= SAME_INPUT_TOLERANCE,
            "{name}: probabilities differ by up to {difference} from onnxruntime's on the same input"
        );
    }
}

#[test]
fn on_pillows_input_tensors_probabilities_match_onnxruntime() {
    // The other way round: the network inputs the tool makes with Pillow, through Prism's network.
    let directory = scratch("pillow-input");
    let mut arguments = vec!["--save-inputs".to_owned(), directory.display().to_string()];
    for name in IMAGES {
        arguments.extend([
            "--image".to_owned(),
            fetched(&format!("images/{name}")).display().to_string(),
        ]);
    }
    let theirs = onnxruntime(&arguments);
    for (name, theirs) in IMAGES.iter().zip(&theirs.results) {
        let stem = name.trim_end_matches(".png");
        let bytes = std::fs::read(directory.join(format!("{stem}.input"))).expect("saved input");
        let input: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(input.len(), INPUT_VALUES);
        let ours = classifier().probabilities_of_inputs(&input).remove(0);
        let difference = max_difference(&ours, &theirs.probabilities);
        println!("{name} (Pillow's input): max |diff| = {difference:.2e}");
        assert!(difference <= SAME_INPUT_TOLERANCE, "{name}: {difference}");
    }
    std::fs::remove_dir_all(&directory).ok();
}

#[test]
fn from_the_pictures_top5_matches_onnxruntime_with_pillow() {
    let arguments: Vec<String> = IMAGES
        .iter()
        .flat_map(|name| {
            [
                "--image".to_owned(),
                fetched(&format!("images/{name}")).display().to_string(),
            ]
        })
        .collect();
    let theirs = onnxruntime(&arguments);
    let images: Vec<_> = IMAGES.iter().map(|name| image(name)).collect();
    let ours = classifier().classify(&images).expect("classifies");
    for ((name, ours), theirs) in IMAGES.iter().zip(&ours).zip(&theirs.results) {
        let report = format!(
            "{name}: Prism {}\nonnxruntime {}",
            describe(ours),
            describe(&theirs.top)
        );
        println!("{report}");
        assert_eq!(ours.len(), 5, "{report}");
        for (a, b) in ours.iter().zip(&theirs.top) {
            assert_eq!((a.index, &a.label), (b.index, &b.label), "{report}");
            assert!(
                (a.score - b.score).abs() <= END_TO_END_TOLERANCE,
                "{report}"
            );
        }
    }
}

#[test]
fn sample_pictures_give_the_classes_in_models_md() {
    let images = [image("chelsea.png"), image("coffee.png")];
    let results = classifier().classify(&images).expect("classifies");
    for (result, expected) in results
        .iter()
        .zip([&MODELS_MD_CHELSEA[..], &MODELS_MD_COFFEE[..]])
    {
        for (class, (index, label, score)) in result.iter().zip(expected) {
            assert_eq!(
                (class.index, class.label.as_str()),
                (*index, *label),
                "{}",
                describe(result)
            );
            assert!(
                (class.score - score).abs() <= END_TO_END_TOLERANCE,
                "{}",
                describe(result)
            );
        }
    }
}

#[test]
fn a_batch_gives_what_each_image_gives_alone() {
    let images = [
        image("coffee.png"),
        image("chelsea.png"),
        image("coffee.png"),
    ];
    let batched = classifier().probabilities(&images).expect("classifies");
    for (image, in_batch) in images.iter().zip(&batched) {
        let alone = classifier()
            .probabilities(std::slice::from_ref(image))
            .expect("classifies");
        assert!(max_difference(&alone[0], in_batch) < 1e-6);
    }
}
