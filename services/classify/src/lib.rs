//! Classify: says what is in a picture, as the five likeliest of the 1000 ImageNet classes, with
//! Prism's own EfficientNet-Lite0 (weights read with candle, convolutions on the shared kernels of
//! prism-inference).
//!
//! [`model`] is the network and its preprocessing; [`ClassifyStage`] adapts it to the shared
//! stage worker, with one forward pass for as many images of a batch as fit a pixel budget;
//! [`serve`] runs it against the real backends.

pub mod model;

use bytes::Bytes;
use model::{Class, Classifier, ClassifierConfig};
use prism_core::contract::StageName;
use prism_core::contract::stages::CLASSIFY_PREPROCESSING;
use prism_core::runtime::config::Settings;
use prism_core::runtime::service;
use prism_core::runtime::worker::{OutputFile, Stage, StageFailure, StageOutput};
use prism_imaging::{self as imaging, Limits, SourceFormat, one_line};
use serde_json::json;
use tokio_util::sync::CancellationToken;

// The fingerprint names the preprocessing the model code does: they cannot drift apart.
const _: () = assert!(
    CLASSIFY_PREPROCESSING.resize_shorter == model::RESIZE_SHORTER
        && CLASSIFY_PREPROCESSING.crop == model::INPUT_SIZE
        && CLASSIFY_PREPROCESSING.mean == model::MEAN
        && CLASSIFY_PREPROCESSING.std == model::STD
);

pub struct ClassifyStage {
    classifier: Classifier,
    limits: Limits,
    fingerprint: String,
}

impl ClassifyStage {
    /// Loads the model; refuses weights or labels other than the ones the configuration
    /// fingerprints.
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let params = &settings.stages.classify;
        let defaults = ClassifierConfig::default();
        let runtime = &settings.classify;
        let config = ClassifierConfig {
            weights: runtime.weights.clone().unwrap_or(defaults.weights),
            labels: runtime.labels.clone().unwrap_or(defaults.labels),
            top_k: params.top_k,
        };
        let classifier = Classifier::load(&config)?;
        for (what, path, found, configured, key) in [
            (
                "weights",
                &config.weights,
                classifier.weights_digest(),
                &params.weights_sha256,
                "weights_sha256",
            ),
            (
                "labels",
                &config.labels,
                classifier.labels_digest(),
                &params.labels_sha256,
                "labels_sha256",
            ),
        ] {
            anyhow::ensure!(
                found == configured,
                "the {what} at {} have sha256 {found} but the configuration \
                 (stages.classify.{key}) says {configured}; results would be attributed to the \
                 wrong model",
                path.display(),
            );
        }
        Ok(ClassifyStage {
            classifier,
            limits: Limits {
                max_bytes: settings.stages.limits.max_bytes,
                max_pixels: settings.stages.limits.max_pixels,
            },
            fingerprint: settings.stages.fingerprint(StageName::Classify),
        })
    }

    /// `classes.json` and the result's `classes` and `image` fields.
    fn outputs(image: &image::RgbImage, format: SourceFormat, classes: Vec<Class>) -> StageOutput {
        let listed =
            serde_json::to_vec_pretty(&json!({ "classes": classes })).expect("classes serialise");
        let (width, height) = image.dimensions();
        let mut payload = serde_json::Map::new();
        payload.insert("classes".into(), json!(classes));
        payload.insert(
            "image".into(),
            json!({ "format": format.name().to_ascii_lowercase(), "width": width, "height": height }),
        );
        StageOutput {
            files: vec![OutputFile {
                name: "classes.json".into(),
                content_type: "application/json".into(),
                width: None,
                height: None,
                bytes: Bytes::from(listed),
            }],
            payload,
        }
    }
}

impl Stage for ClassifyStage {
    fn name(&self) -> StageName {
        StageName::Classify
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
                self.classifier
                    .classify(images)
                    .map_err(|error| StageFailure {
                        code: "model_failed".into(),
                        reason: one_line(&format!("the classifier failed on this batch: {error}")),
                    })
            },
            |image, format, classes| Ok(Self::outputs(image, format, classes)),
        )
    }
}

/// Runs the classify service against Kafka, S3 and CouchDB until `shutdown`, batching jobs.
pub async fn serve(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let stage = ClassifyStage::new(&settings)?;
    service::serve_stage(&settings, stage, shutdown).await
}

#[cfg(test)]
mod tests {
    /// The tests that run the stage on the real weights and sample pictures
    /// (`deploy/local/fetch-assets.sh`).
    #[cfg(feature = "weights")]
    mod with_weights {
        use std::sync::OnceLock;

        use bytes::Bytes;
        use prism_core::runtime::config::Settings;
        use prism_core::runtime::worker::{Stage, StageOutput};
        use prism_imaging::fixtures::{assert_verdicts, verdicts};

        use crate::ClassifyStage;
        use crate::model::prism_home;

        /// The stage with the real weights, loaded once.
        fn stage() -> &'static ClassifyStage {
            static STAGE: OnceLock<ClassifyStage> = OnceLock::new();
            STAGE.get_or_init(|| {
                ClassifyStage::new(&Settings::default()).expect(
                    "the EfficientNet-Lite0 weights or labels are missing from \
                     $PRISM_HOME/models: run deploy/local/fetch-assets.sh",
                )
            })
        }

        fn sample(name: &str) -> Bytes {
            let path = prism_home().join("images").join(name);
            Bytes::from(std::fs::read(&path).unwrap_or_else(|error| {
                panic!(
                    "{}: {error}; run deploy/local/fetch-assets.sh",
                    path.display()
                )
            }))
        }

        /// The result's classes as (label, score), best first.
        fn classes(output: &StageOutput) -> Vec<(String, f64)> {
            output.payload["classes"]
                .as_array()
                .expect("a classes list")
                .iter()
                .map(|class| {
                    let label = class["label"].as_str().expect("a label").to_owned();
                    (label, class["score"].as_f64().expect("a score"))
                })
                .collect()
        }

        #[test]
        fn the_sample_pictures_are_a_cat_and_an_espresso_and_a_corrupt_one_is_refused() {
            let inputs = [
                sample("chelsea.png"),
                Bytes::from_static(b"\x89PNG\r\n\x1a\n but the rest is missing"),
                sample("coffee.png"),
            ];
            let mut outcomes = stage().run(&inputs).into_iter();

            let chelsea = outcomes.next().unwrap().expect("chelsea is classified");
            let chelsea_classes = classes(&chelsea);
            assert_eq!(chelsea_classes.len(), 5);
            let cats = ["tiger cat", "Egyptian cat", "tabby"];
            assert!(
                cats.contains(&chelsea_classes[0].0.as_str()),
                "chelsea.png: {chelsea_classes:?}"
            );
            assert_eq!(chelsea.payload["image"]["format"], "png");
            let listed: serde_json::Value =
                serde_json::from_slice(&chelsea.files[0].bytes).expect("classes.json is JSON");
            assert_eq!(chelsea.files[0].name, "classes.json");
            assert_eq!(listed["classes"], chelsea.payload["classes"]);

            let corrupt = outcomes.next().unwrap().expect_err("a corrupt PNG fails");
            assert_eq!(corrupt.code, "corrupt_image");
            assert!(!corrupt.reason.is_empty());

            let coffee = classes(&outcomes.next().unwrap().expect("coffee is classified"));
            assert_eq!(coffee[0].0, "espresso", "coffee.png: {coffee:?}");
            assert!((coffee[0].1 - 0.957).abs() < 0.01, "coffee.png: {coffee:?}");
            let total: f64 = coffee.iter().map(|(_, score)| score).sum();
            assert!(total <= 1.0 + 1e-6, "probabilities: {coffee:?}");
        }

        #[test]
        fn classify_judges_damaged_and_costly_jpegs_as_every_stage_does() {
            let inputs: Vec<Bytes> = verdicts().into_iter().map(|v| Bytes::from(v.1)).collect();
            assert_verdicts(stage().run(&inputs).into_iter().map(|outcome| {
                outcome
                    .map(|_| ())
                    .map_err(|failure| (failure.code, failure.reason))
            }));
        }
    }
}
