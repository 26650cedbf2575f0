//! Detect: finds COCO objects with Prism's own YOLOv8 on candle and draws them.
//!
//! [`model`] is the network and its pre/post-processing; [`DetectStage`] adapts it to the shared
//! stage worker, batching every decoded image of a batch into one forward pass; [`serve`] runs it
//! against the real backends.

pub mod model;

use bytes::Bytes;
use model::{Detection, Detector, DetectorConfig, annotate};
use prism_shared::config::Settings;
use prism_shared::contract::StageName;
use prism_shared::imaging::{self, Limits};
use prism_shared::service;
use prism_shared::worker::{OutputFile, Stage, StageFailure, StageOutput};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Annotated copies are for people to look at: good quality, modest size.
const ANNOTATED_JPEG_QUALITY: u8 = 85;

pub struct DetectStage {
    detector: Detector,
    limits: Limits,
    fingerprint: String,
}

impl DetectStage {
    /// Loads the model; refuses weights other than the ones the configuration fingerprints.
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let params = &settings.stages.detect;
        let config = DetectorConfig {
            weights: settings
                .detect
                .weights
                .clone()
                .unwrap_or_else(|| DetectorConfig::default().weights),
            confidence_threshold: params.confidence_threshold,
            iou_threshold: params.iou_threshold,
            input_size: params.input_size,
        };
        let detector = Detector::load(&config)?;
        anyhow::ensure!(
            detector.weights_digest() == params.weights_sha256,
            "the weights at {} have sha256 {} but the configuration (stages.detect.weights_sha256) \
             says {}; results would be attributed to the wrong model",
            config.weights.display(),
            detector.weights_digest(),
            params.weights_sha256
        );
        Ok(DetectStage {
            detector,
            limits: settings.stages.limits,
            fingerprint: settings.stages.fingerprint(StageName::Detect),
        })
    }

    fn outputs(
        image: &image::RgbImage,
        format: &str,
        detections: Vec<Detection>,
    ) -> Result<StageOutput, StageFailure> {
        let mut annotated = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut annotated, ANNOTATED_JPEG_QUALITY)
            .encode_image(&annotate(image, &detections))
            .map_err(|error| StageFailure {
                code: "encode_failed".into(),
                reason: format!("encoding the annotated image failed: {error}"),
            })?;
        let listed = serde_json::to_vec_pretty(&json!({ "detections": detections }))
            .expect("detections serialise");
        let (width, height) = image.dimensions();
        let mut payload = serde_json::Map::new();
        payload.insert("detections".into(), json!(detections));
        payload.insert(
            "image".into(),
            json!({ "format": format.to_ascii_lowercase(), "width": width, "height": height }),
        );
        Ok(StageOutput {
            files: vec![
                OutputFile {
                    name: "detections.json".into(),
                    content_type: "application/json".into(),
                    width: None,
                    height: None,
                    bytes: Bytes::from(listed),
                },
                OutputFile {
                    name: "annotated.jpg".into(),
                    content_type: "image/jpeg".into(),
                    width: Some(width),
                    height: Some(height),
                    bytes: Bytes::from(annotated),
                },
            ],
            payload,
        })
    }
}

impl Stage for DetectStage {
    fn name(&self) -> StageName {
        StageName::Detect
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn max_bytes(&self) -> u64 {
        self.limits.max_bytes
    }

    fn run(&self, inputs: &[Bytes]) -> Vec<Result<StageOutput, StageFailure>> {
        // Decoded images move into one batch for the forward pass (no copies: a batch of large
        // photos is the service's biggest memory cost); `formats` remembers which inputs failed.
        let mut images = Vec::with_capacity(inputs.len());
        let formats: Vec<Result<&'static str, StageFailure>> = inputs
            .iter()
            .map(|input| {
                let image = imaging::decode(input, &self.limits).map_err(|error| StageFailure {
                    code: error.code().into(),
                    reason: error.to_string(),
                })?;
                let format = image.format().name();
                images.push(image.into_rgb());
                Ok(format)
            })
            .collect();
        let found = match self.detector.detect(&images) {
            Ok(found) => found,
            Err(error) => {
                let failure = StageFailure {
                    code: "model_failed".into(),
                    reason: format!("the detector failed on this batch: {error}"),
                };
                return inputs.iter().map(|_| Err(failure.clone())).collect();
            }
        };
        let mut detected = images.iter().zip(found);
        formats
            .into_iter()
            .map(|format| {
                let format = format?;
                let (image, detections) = detected.next().expect("one detection list per image");
                Self::outputs(image, format, detections)
            })
            .collect()
    }
}

/// Runs the detect service against Kafka, S3 and CouchDB until `shutdown`, batching jobs.
pub async fn serve(mut settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    settings.consumer.max_batch = settings.detect.max_batch;
    settings.consumer.max_delay = settings.detect.max_delay;
    let stage = DetectStage::new(&settings)?;
    service::serve_stage(&settings, stage, shutdown).await
}
