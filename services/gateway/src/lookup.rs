//! Results read back from what Prism already stores: the claims in the dedup index hold every
//! finished stage's outputs and payload, and every failure's reason, by content hash. So an
//! upload's results survive the page, the gateway and the pipeline restarting.

use crate::error::ApiError;
use crate::views::{ContentView, DeadLetterView, ObjectRef, UploadView, result_view};
use prism_core::contract::{SourceObject, StageName, StageResult};
use prism_core::ports::claims::{ClaimIndex, ClaimStatus, SeenSource, claim_id};
use prism_core::ports::store::{Buckets, StoreError};
use prism_core::runtime::config::Settings;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct Lookup {
    pub buckets: Buckets,
    pub index: std::sync::Arc<dyn ClaimIndex>,
    /// Each enabled stage with its fingerprint: the claims' names.
    pub stages: Vec<(StageName, String)>,
    pub max_bytes: u64,
}

/// What the claims say of one content, as seen by one upload (when one is given).
pub struct Found {
    pub content_hash: Option<String>,
    pub results: BTreeMap<StageName, StageResult>,
    pub dead_letter: Option<DeadLetterView>,
}

fn views(results: BTreeMap<StageName, StageResult>) -> BTreeMap<StageName, Value> {
    results
        .into_iter()
        .map(|(stage, result)| (stage, result_view(&result)))
        .collect()
}

impl Lookup {
    pub fn new(
        settings: &Settings,
        buckets: Buckets,
        index: std::sync::Arc<dyn ClaimIndex>,
    ) -> Self {
        Lookup {
            buckets,
            index,
            stages: settings
                .enabled_stages
                .iter()
                .map(|&stage| (stage, settings.stages.fingerprint(stage)))
                .collect(),
            max_bytes: settings.stages.limits.max_bytes,
        }
    }

    /// Every finished stage's result for `content_hash`.
    pub async fn content(&self, content_hash: &str) -> Result<ContentView, ApiError> {
        let found = self.claims(content_hash, None).await?;
        Ok(ContentView {
            content_hash: content_hash.to_string(),
            results: views(found.results),
        })
    }

    /// An upload's results: its bytes are hashed again (streamed, never decoded) to find its
    /// content's claims. An object over the byte limit has no content hash: the pipeline
    /// refused it before hashing.
    pub async fn upload(&self, bucket: &str, key: &str) -> Result<UploadView, ApiError> {
        let found = self.upload_outcome(bucket, key).await?;
        Ok(UploadView {
            bucket: bucket.to_string(),
            key: key.to_string(),
            content_hash: found.content_hash,
            results: views(found.results),
            dead_letter: found.dead_letter,
        })
    }

    /// [`Lookup::upload`], as the pipeline's own types.
    pub async fn upload_outcome(&self, bucket: &str, key: &str) -> Result<Found, ApiError> {
        let object = SourceObject {
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: String::new(),
            size: 0,
            batch_job: None,
        };
        let hashed = match self.buckets.hash(&object, self.max_bytes).await {
            Ok(hashed) => hashed,
            Err(StoreError::TooLarge { .. }) => {
                return Ok(Found {
                    content_hash: None,
                    results: BTreeMap::new(),
                    dead_letter: None,
                });
            }
            Err(error) => return Err(error.into()),
        };
        let upload = SourceObject {
            etag: hashed.etag,
            ..object
        };
        self.claims(&hashed.hash.0, Some(&upload)).await
    }

    async fn claims(
        &self,
        content_hash: &str,
        upload: Option<&SourceObject>,
    ) -> Result<Found, ApiError> {
        let ids: Vec<String> = self
            .stages
            .iter()
            .map(|(stage, fingerprint)| claim_id(*stage, fingerprint, content_hash))
            .collect();
        let claims = self.index.get_all(&ids).await?;
        let mut found = Found {
            content_hash: Some(content_hash.to_string()),
            results: BTreeMap::new(),
            dead_letter: None,
        };
        for claim in claims.into_iter().flatten() {
            // As this upload saw it: deduplicated unless it is the upload that was processed.
            let seen = upload
                .and_then(|upload| {
                    claim
                        .sources
                        .iter()
                        .find(|seen| same_object(&seen.source, upload))
                        .cloned()
                })
                .unwrap_or_else(|| SeenSource {
                    source: upload
                        .cloned()
                        .unwrap_or_else(|| claim.first_source.source.clone()),
                    received_at: claim.first_source.received_at,
                });
            let deduplicated = !same_object(&claim.first_source.source, &seen.source);
            match claim.status {
                ClaimStatus::Done => {
                    let mut result = claim.result_for(&seen, deduplicated, Duration::ZERO);
                    // When it was made, not when it was read back.
                    result.timings.finished_at = claim.finished_at.unwrap_or(claim.updated_at);
                    found.results.insert(claim.stage, result);
                }
                ClaimStatus::Failed => {
                    if let Some(error) = &claim.error
                        && found.dead_letter.is_none()
                    {
                        found.dead_letter = Some(DeadLetterView::from_claim(
                            claim.stage,
                            error,
                            ObjectRef {
                                bucket: seen.source.bucket.clone(),
                                key: seen.source.key.clone(),
                            },
                            content_hash,
                            claim.finished_at.unwrap_or(claim.updated_at),
                        ));
                    }
                }
                ClaimStatus::Processing => {}
            }
        }
        Ok(found)
    }
}

fn same_object(a: &SourceObject, b: &SourceObject) -> bool {
    a.bucket == b.bucket && a.key == b.key
}
