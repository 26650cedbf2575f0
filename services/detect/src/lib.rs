//! Detect: finds COCO objects with Prism's own YOLOv8 (weights read with candle, convolutions as
//! GEMMs on our CPU kernels) and draws them.
//!
//! [`model`] is the network and its pre/post-processing; [`DetectStage`] adapts it to the shared
//! stage worker, with one forward pass for as many images of a batch as fit a pixel budget;
//! [`serve`] runs it against the real backends.

pub mod model;

use std::ops::Range;

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

    /// Decodes every input, detects in one forward pass, and builds each input's outputs.
    fn run_group(&self, inputs: &[Bytes]) -> Vec<Result<StageOutput, StageFailure>> {
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
                    reason: one_line(&format!("the detector failed on this batch: {error}")),
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

    /// Runs the batch in groups of consecutive images holding at most `max_pixels` pixels
    /// together, so that a batch of large photos never has more than one image's worth of
    /// pixels at the limit in memory (eight at the 100 MP limit would be 2.4 GB of RGB).
    fn run(&self, inputs: &[Bytes]) -> Vec<Result<StageOutput, StageFailure>> {
        let pixels = inputs.iter().map(|input| header_pixels(input));
        groups_within(pixels, self.limits.max_pixels)
            .into_iter()
            .flat_map(|group| self.run_group(&inputs[group]))
            .collect()
    }
}

/// The pixels an input decodes to, read from its header alone; 0 for one that will not decode
/// (its error comes from decoding, which costs no pixels).
fn header_pixels(input: &[u8]) -> u64 {
    imaging::probe(input).map_or(0, |info| u64::from(info.width) * u64::from(info.height))
}

/// Splits a batch into runs of consecutive inputs whose pixels add up to at most `budget`; an
/// input over the budget on its own gets a group of its own.
fn groups_within(pixels: impl IntoIterator<Item = u64>, budget: u64) -> Vec<Range<usize>> {
    let mut groups: Vec<Range<usize>> = Vec::new();
    let mut group_pixels = 0u64;
    for (index, pixels) in pixels.into_iter().enumerate() {
        match groups.last_mut() {
            Some(group) if group_pixels.saturating_add(pixels) <= budget => {
                group.end = index + 1;
                group_pixels += pixels;
            }
            _ => {
                groups.push(index..index + 1);
                group_pixels = pixels;
            }
        }
    }
    groups
}

/// Runs the detect service against Kafka, S3 and CouchDB until `shutdown`, batching jobs.
pub async fn serve(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let stage = DetectStage::new(&settings)?;
    service::serve_stage(&settings, stage, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::groups_within;

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

    #[test]
    fn a_batch_is_split_where_its_pixels_would_exceed_the_budget() {
        let megapixels = |sizes: &[u64]| sizes.iter().map(|mp| mp * 1_000_000).collect::<Vec<_>>();
        let budget = 100_000_000;
        // Eight photos at the limit: one at a time.
        assert_eq!(
            groups_within(megapixels(&[100; 8]), budget),
            (0..8).map(|i| i..i + 1).collect::<Vec<_>>()
        );
        // Eight 12 MP phone photos: one forward pass.
        assert_eq!(groups_within(megapixels(&[12; 8]), budget), vec![0..8]);
        assert_eq!(
            groups_within(megapixels(&[40, 40, 30, 12, 100, 0, 1]), budget),
            vec![0..2, 2..4, 4..6, 6..7]
        );
        // Inputs that will not decode (0 pixels) ride along with their neighbours.
        assert_eq!(groups_within(megapixels(&[0, 100, 0]), budget), vec![0..3]);
        assert_eq!(groups_within(megapixels(&[101]), budget), vec![0..1]);
        assert!(groups_within(Vec::new(), budget).is_empty());
    }
}
