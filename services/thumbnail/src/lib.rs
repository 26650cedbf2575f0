//! Thumbnail: decodes an image and renders it at every configured size and format.
//!
//! [`stage`] is the pure image work; [`ThumbnailStage`] adapts it to the shared stage worker, and
//! [`serve`] runs it against the real backends.

pub mod stage;

use bytes::Bytes;
use prism_core::contract::StageName;
use prism_core::contract::stages::ThumbnailSpec;
use prism_core::runtime::config::Settings;
use prism_core::runtime::service;
use prism_core::runtime::worker::{OutputFile, Stage, StageFailure, StageOutput};
use prism_imaging::{Limits, one_line};
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub struct ThumbnailStage {
    spec: ThumbnailSpec,
    limits: Limits,
    fingerprint: String,
}

impl ThumbnailStage {
    /// Fails on a spec that could never render (sizes, qualities), before any work is taken.
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let spec = settings.stages.thumbnail.clone();
        spec.validate()
            .map_err(|reason| anyhow::anyhow!("invalid thumbnail configuration: {reason}"))?;
        Ok(ThumbnailStage {
            spec,
            limits: Limits {
                max_bytes: settings.stages.limits.max_bytes,
                max_pixels: settings.stages.limits.max_pixels,
            },
            fingerprint: settings.stages.fingerprint(StageName::Thumbnail),
        })
    }

    fn render_one(&self, input: &[u8]) -> Result<StageOutput, StageFailure> {
        // Only as large as the largest thumbnail needs: JPEGs and WebPs shrink while decoding.
        let image =
            stage::decode_for(&self.spec, input, &self.limits).map_err(|error| StageFailure {
                code: error.code().into(),
                reason: error.to_string(),
            })?;
        let thumbnails = stage::render(&image, &self.spec).map_err(|error| StageFailure {
            code: error.code().into(),
            // Encoders' messages may span lines; dead letters carry one.
            reason: one_line(&error.to_string()),
        })?;
        let files = thumbnails
            .into_iter()
            .map(|thumbnail| OutputFile {
                name: format!("{}.{}", thumbnail.size, thumbnail.format.extension()),
                content_type: thumbnail.format.content_type().into(),
                width: Some(thumbnail.width),
                height: Some(thumbnail.height),
                bytes: Bytes::from(thumbnail.bytes),
            })
            .collect();
        let mut payload = serde_json::Map::new();
        payload.insert(
            "image".into(),
            json!({ "format": image.format(), "width": image.full_width(), "height": image.full_height() }),
        );
        Ok(StageOutput { files, payload })
    }
}

impl Stage for ThumbnailStage {
    fn name(&self) -> StageName {
        StageName::Thumbnail
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn max_bytes(&self) -> u64 {
        self.limits.max_bytes
    }

    fn run(&self, inputs: &[Bytes]) -> Vec<Result<StageOutput, StageFailure>> {
        inputs.iter().map(|input| self.render_one(input)).collect()
    }
}

/// Runs the thumbnail service against Kafka, S3 and CouchDB until `shutdown`.
pub async fn serve(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let stage = ThumbnailStage::new(&settings)?;
    service::serve_stage(&settings, stage, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_core::contract::stages::InputLimits;

    #[test]
    fn configured_limits_default_to_the_decoders_own() {
        let configured = InputLimits::default();
        let decoder = Limits::default();
        assert_eq!(
            (configured.max_bytes, configured.max_pixels),
            (decoder.max_bytes, decoder.max_pixels)
        );
    }
}
