//! Prism's own YOLOv8n object detector: the Ultralytics network on Prism's CPU kernels (im2col +
//! gemm, see `prism_inference::kernels`), loaded straight from the official ONNX export's
//! weights, with Ultralytics-compatible pre- and post-processing so its detections match
//! onnxruntime's on the same file.
//!
//! The pieces, each usable (and tested) on its own:
//! - [`onnx`]: reads the weight tensors (initializers) out of an `.onnx` file.
//! - [`Weights`]: hands them to the network by their Ultralytics names, checking shapes.
//! - [`YoloV8`]: the network itself (backbone, neck, raw Detect head outputs).
//! - [`Letterbox`]: resize + pad to the square network input, and the way back to source pixels.
//! - [`decode_detections`], [`non_max_suppression`]: from raw head outputs to boxes.
//! - [`annotate`]: draws boxes and labels for people to look at.

mod annotate;
mod classes;
mod letterbox;
pub mod onnx;
mod postprocess;
mod weights;
mod yolo;

use std::path::PathBuf;

use candle_core::Device;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use annotate::{annotate, annotate_within};
pub use classes::COCO_CLASSES;
pub use letterbox::{Letterbox, PAD_VALUE, fill_letterboxed};
pub use postprocess::{
    Candidate, MAX_DETECTIONS, decode_detections, intersection_over_union, non_max_suppression,
};
pub use weights::Weights;
pub use yolo::{HeadOutput, STRIDES, YoloV8};

/// File name of the YOLOv8n weights inside `$PRISM_HOME/models`.
pub const WEIGHTS_FILE: &str = "yolov8n.onnx";
/// Ultralytics' default confidence threshold for predictions.
pub const DEFAULT_CONFIDENCE_THRESHOLD: f32 = 0.25;
/// Ultralytics' default NMS IoU threshold for predictions.
pub const DEFAULT_IOU_THRESHOLD: f32 = 0.7;
/// The resolution the weights were trained and exported at.
pub const DEFAULT_INPUT_SIZE: u32 = 640;

/// Where `deploy/local/fetch-assets.sh` puts the weights (`$PRISM_HOME`).
pub use prism_inference::prism_home;
use prism_inference::{read_model_file, sha256_hex};

#[derive(thiserror::Error, Debug)]
pub enum ModelError {
    #[error(
        "YOLOv8 weights not found at {}: run deploy/local/fetch-assets.sh \
         (it downloads them into $PRISM_HOME/models)",
        path.display()
    )]
    WeightsMissing { path: PathBuf },
    #[error("cannot read weights {}: {source}", path.display())]
    ReadWeights {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a readable ONNX model: {source}", path.display())]
    InvalidOnnx {
        path: PathBuf,
        source: prost::DecodeError,
    },
    #[error("weight tensor {name} has ONNX data type {data_type}; only float32 (1) is supported")]
    UnsupportedTensor { name: String, data_type: i32 },
    #[error("weight tensor {name} holds {found} values, its dims {dims:?} need {expected}")]
    CorruptTensor {
        name: String,
        dims: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("weight tensor {name} is missing: the file is not an Ultralytics YOLOv8n export")]
    MissingTensor { name: String },
    #[error("weight tensor {name} has shape {found:?}, the YOLOv8n network needs {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error(
        "weights file has tensors the YOLOv8n network does not use (another model?): {names:?}"
    )]
    UnusedTensors { names: Vec<String> },
    #[error("input size {0} is not a positive multiple of 32 (the network's largest stride)")]
    InvalidInputSize(u32),
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
pub struct DetectorConfig {
    /// The Ultralytics YOLOv8n ONNX export.
    pub weights: PathBuf,
    /// Detections scoring at or below this are dropped.
    pub confidence_threshold: f32,
    /// Boxes of one class overlapping a better one by more than this are dropped.
    pub iou_threshold: f32,
    /// Side of the square network input; a multiple of 32.
    pub input_size: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            weights: prism_home().join("models").join(WEIGHTS_FILE),
            confidence_threshold: DEFAULT_CONFIDENCE_THRESHOLD,
            iou_threshold: DEFAULT_IOU_THRESHOLD,
            input_size: DEFAULT_INPUT_SIZE,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct BoundingBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BoundingBox {
    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }

    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }

    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Detection {
    pub class: String,
    pub class_id: u32,
    pub confidence: f32,
    #[serde(rename = "box")]
    pub bbox: BoundingBox,
}

/// A loaded YOLOv8n ready to run; cheap to share between threads (`Send + Sync`).
pub struct Detector {
    network: YoloV8,
    config: DetectorConfig,
    weights_digest: String,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("config", &self.config)
            .field("weights_digest", &self.weights_digest)
            .finish_non_exhaustive()
    }
}

impl Detector {
    pub fn load(config: &DetectorConfig) -> Result<Self, ModelError> {
        let largest_stride = STRIDES[STRIDES.len() - 1];
        if config.input_size == 0 || !config.input_size.is_multiple_of(largest_stride) {
            return Err(ModelError::InvalidInputSize(config.input_size));
        }
        let bytes = read_model_file(
            &config.weights,
            |path| ModelError::WeightsMissing { path },
            |path, source| ModelError::ReadWeights { path, source },
        )?;
        let weights_digest = sha256_hex(&bytes);
        let initializers =
            onnx::read_initializers(&bytes).map_err(|source| ModelError::InvalidOnnx {
                path: config.weights.clone(),
                source,
            })?;
        let network = YoloV8::load(Weights::new(initializers, Device::Cpu))?;
        Ok(Self {
            network,
            config: config.clone(),
            weights_digest,
        })
    }

    /// sha256 (hex) of the ONNX file the weights came from.
    pub fn weights_digest(&self) -> &str {
        &self.weights_digest
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Detects objects in every image, with one forward pass for the whole batch. Boxes are in
    /// each source image's pixels, best first.
    pub fn detect(&self, images: &[image::RgbImage]) -> Result<Vec<Vec<Detection>>, ModelError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let size = self.config.input_size;
        let letterboxes = images
            .iter()
            .enumerate()
            .map(|(index, image)| {
                let (width, height) = image.dimensions();
                if width == 0 || height == 0 {
                    return Err(ModelError::EmptyImage {
                        index,
                        width,
                        height,
                    });
                }
                Ok(Letterbox::new(width, height, size))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let side = size as usize;
        let plane = 3 * side * side;
        let mut input = vec![0f32; images.len() * plane];
        input
            .par_chunks_mut(plane)
            .zip(images.par_iter().zip(&letterboxes))
            .for_each(|(slot, (image, letterbox))| fill_letterboxed(image, letterbox, slot));

        let heads = self.network.forward(&input, side, side);
        let detections = letterboxes
            .iter()
            .enumerate()
            .map(|(index, letterbox)| {
                let candidates = decode_detections(
                    &heads,
                    index,
                    self.network.dfl_bins(),
                    self.config.confidence_threshold,
                );
                non_max_suppression(candidates, self.config.iou_threshold)
                    .into_iter()
                    .map(|candidate| candidate.into_detection(letterbox))
                    .collect()
            })
            .collect();
        Ok(detections)
    }
}
