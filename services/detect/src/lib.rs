//! Detect: finds COCO objects with Prism's own YOLOv8 (weights read with candle, convolutions as
//! GEMMs on our CPU kernels) and draws them.
//!
//! [`model`] is the network and its pre/post-processing; [`DetectStage`] adapts it to the shared
//! stage worker, with one forward pass for as many images of a batch as fit a pixel budget;
//! [`serve`] runs it against the real backends.

pub mod model;

use bytes::Bytes;
use model::{Detection, Detector, DetectorConfig, annotate_within};
use prism_core::contract::StageName;
use prism_core::runtime::config::Settings;
use prism_core::runtime::service;
use prism_core::runtime::worker::{OutputFile, Stage, StageFailure, StageOutput};
use prism_imaging::{self as imaging, JPEG_MAX_EDGE, Limits, one_line};
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
            limits: Limits {
                max_bytes: settings.stages.limits.max_bytes,
                max_pixels: settings.stages.limits.max_pixels,
            },
            fingerprint: settings.stages.fingerprint(StageName::Detect),
        })
    }

    /// One input's outputs.
    fn outputs(
        image: &image::RgbImage,
        format: &str,
        detections: Vec<Detection>,
    ) -> Result<StageOutput, StageFailure> {
        // Boxes stay in source pixels; only the picture of them is scaled to fit a JPEG.
        let annotated_image = annotate_within(image, &detections, JPEG_MAX_EDGE);
        let annotated =
            imaging::encode_jpeg(&annotated_image, ANNOTATED_JPEG_QUALITY).map_err(|error| {
                StageFailure {
                    code: "encode_failed".into(),
                    reason: one_line(&format!("encoding the annotated image failed: {error}")),
                }
            })?;
        let listed = serde_json::to_vec_pretty(&json!({ "detections": detections }))
            .expect("detections serialise");
        let (width, height) = image.dimensions();
        let (annotated_width, annotated_height) = annotated_image.dimensions();
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
                    width: Some(annotated_width),
                    height: Some(annotated_height),
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

    /// One forward pass per group of images within the pixel budget (see
    /// [`imaging::infer_within_pixel_budget`]).
    fn run(&self, inputs: &[Bytes]) -> Vec<Result<StageOutput, StageFailure>> {
        imaging::infer_within_pixel_budget(
            inputs,
            &self.limits,
            |error| StageFailure {
                code: error.code().into(),
                reason: error.to_string(),
            },
            |images| {
                self.detector.detect(images).map_err(|error| StageFailure {
                    code: "model_failed".into(),
                    reason: one_line(&format!("the detector failed on this batch: {error}")),
                })
            },
            |image, format, detections| Self::outputs(image, format.name(), detections),
        )
    }
}

/// Runs the detect service against Kafka, S3 and CouchDB until `shutdown`, batching jobs.
pub async fn serve(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let stage = DetectStage::new(&settings)?;
    service::serve_stage(&settings, stage, shutdown).await
}

#[cfg(test)]
mod tests {
    /// The tests that run the stage on the real weights (`deploy/local/fetch-assets.sh`).
    #[cfg(feature = "weights")]
    mod with_weights {
        use std::sync::OnceLock;

        use bytes::Bytes;
        use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
        use prism_core::runtime::config::Settings;
        use prism_core::runtime::worker::Stage;
        use prism_imaging::fixtures::{assert_verdicts, verdicts};

        use crate::DetectStage;

        /// The stage with the real weights (deploy/local/fetch-assets.sh), loaded once.
        fn stage() -> &'static DetectStage {
            static STAGE: OnceLock<DetectStage> = OnceLock::new();
            STAGE.get_or_init(|| {
                DetectStage::new(&Settings::default()).expect(
                    "the YOLOv8n weights are missing from $PRISM_HOME/models: run \
                     deploy/local/fetch-assets.sh",
                )
            })
        }

        #[test]
        fn detect_judges_damaged_and_costly_jpegs_as_every_stage_does() {
            let inputs: Vec<Bytes> = verdicts().into_iter().map(|v| Bytes::from(v.1)).collect();
            assert_verdicts(stage().run(&inputs).into_iter().map(|outcome| {
                outcome
                    .map(|_| ())
                    .map_err(|failure| (failure.code, failure.reason))
            }));
        }

        #[test]
        fn panorama_wider_than_a_jpeg_gets_an_annotated_copy_that_fits_one() {
            let panorama = RgbImage::from_fn(66_000, 1_000, |x, y| {
                Rgb([(x / 300 % 256) as u8, (y / 4) as u8, 120])
            });
            let mut png = Vec::new();
            DynamicImage::ImageRgb8(panorama)
                .write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
                .unwrap();
            let outcome = stage().run(&[Bytes::from(png)]).remove(0);
            let output = outcome.unwrap_or_else(|failure| panic!("{failure:?}"));
            assert_eq!(output.payload["image"]["width"], 66_000);
            let annotated = output
                .files
                .iter()
                .find(|file| file.name == "annotated.jpg")
                .expect("an annotated copy");
            assert_eq!(
                (annotated.width, annotated.height),
                (Some(65_500), Some(992))
            );
            let decoded = image::load_from_memory(&annotated.bytes).expect("a valid JPEG");
            assert_eq!((decoded.width(), decoded.height()), (65_500, 992));
        }
    }
}
