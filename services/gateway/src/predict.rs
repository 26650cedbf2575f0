//! `POST /predict`: the serverful twin of the seed's detection microservice. The image (already
//! in the input bucket, or sent as the body) goes through the pipeline like any upload, dedup
//! included, and the answer is detect's result with the annotated image's URL.

use crate::App;
use crate::error::{ApiError, ErrorBody};
use crate::hub::Outcome;
use crate::views::{DeadLetterView, annotated_url, result_view, upload_url};
use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use prism_core::contract::ingest::UploadEvent;
use prism_core::contract::reannounce::announcement_key;
use prism_core::contract::{SourceObject, StageName, StageResult};
use prism_core::ports::bus::Publication;
use prism_core::ports::store::{StoreError, object_path};
use prism_core::runtime::trace::{TRACEPARENT, starting_trace};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

/// Largest JSON request (`{"bucket", "key"}`).
const MAX_JSON_BYTES: usize = 64 * 1024;
/// Longest wait a request may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
pub struct PredictQuery {
    /// `30s`, `500ms` or plain seconds.
    timeout: Option<String>,
    /// The file name of an image sent as the body.
    name: Option<String>,
}

/// An object already in the input bucket.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ByKey {
    bucket: String,
    key: String,
}

/// Detect's answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Prediction {
    content_hash: String,
    deduplicated: bool,
    /// `[{class, class_id, confidence, box: {x1, y1, x2, y2}}]` in source pixels.
    #[schema(value_type = Vec<Object>)]
    detections: Value,
    annotated_url: Option<String>,
    #[schema(value_type = Object)]
    source: Value,
    /// Detect's whole result (`StageResult` with URLs).
    #[schema(value_type = Object)]
    result: Value,
    elapsed_ms: u64,
}

/// No result in time: poll `poll` for it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Pending {
    /// `<bucket>/<key>` of the upload.
    id: String,
    /// `/api/uploads/<bucket>/<key>`.
    poll: String,
    reason: String,
}

#[utoipa::path(
    post,
    path = "/predict",
    params(
        ("timeout" = Option<String>, Query, description = "How long to wait: 30s, 1500ms, 2m (at most 300 s)"),
        ("name" = Option<String>, Query, description = "The file name of an image sent as the body"),
    ),
    request_body(content(
        (ByKey = "application/json"),
        (Vec<u8> = "application/octet-stream"),
    ), description = "An object already in the input bucket, or the image itself"),
    responses(
        (status = 200, body = Prediction),
        (status = 400, body = ErrorBody, description = "Bad JSON, key or timeout"),
        (status = 404, body = ErrorBody, description = "No such object"),
        (status = 413, body = ErrorBody, description = "Over the byte limit"),
        (status = 422, body = DeadLetterView, description = "The pipeline refused it (not an image, ...)"),
        (status = 504, body = Pending, description = "No result in time"),
    )
)]
pub async fn predict(
    State(app): State<Arc<App>>,
    Query(query): Query<PredictQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let wait = match &query.timeout {
        Some(text) => parse_timeout(text)?,
        None => app.settings.gateway.predict_timeout,
    };
    if !app.settings.enabled_stages.contains(&StageName::Detect) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "detect_disabled",
            "the detect stage is not enabled in this deployment",
        ));
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    // Listening starts before the upload is announced, so no outcome can slip past.
    let mut outcomes = app.hub.subscribe();
    let object = if is_json {
        let object = existing_object(&app, body).await?;
        app.announce(&object, None, &headers).await?;
        object
    } else {
        let name = crate::uploads::sanitised_name(query.name.as_deref().unwrap_or("upload"))?;
        let key = format!("web/predict/{}/{name}", uuid::Uuid::new_v4().simple());
        app.store_upload(&key, &name, &headers, body).await?.0
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let outcome = match tokio::time::timeout_at(deadline, outcomes.recv()).await {
            Err(_elapsed) => break,
            Ok(Ok(outcome)) => outcome,
            // Missed outcomes may include ours: the look-up at the deadline finds it stored.
            Ok(Err(RecvError::Lagged(_))) => continue,
            Ok(Err(RecvError::Closed)) => break,
        };
        if !outcome.is_about(&object.bucket, &object.key) {
            continue;
        }
        match &*outcome {
            Outcome::Result(result) if result.stage == StageName::Detect => {
                return Ok(Json(Prediction::of(result, &object, started)).into_response());
            }
            Outcome::Result(_) => {}
            Outcome::DeadLetter(letter) => {
                // Another stage's failure says nothing of detect's, but dedup's ends the upload.
                if letter.stage == StageName::Detect.as_str() || letter.stage == "dedup" {
                    return Ok(refusal(DeadLetterView::of(letter)));
                }
            }
        }
    }
    // Out of time: perhaps the outcome went by while this request lagged; else poll later.
    let mut stored = app
        .lookup
        .upload_outcome(&object.bucket, &object.key)
        .await?;
    if let Some(result) = stored.results.remove(&StageName::Detect) {
        return Ok(Json(Prediction::of(&result, &object, started)).into_response());
    }
    if let Some(letter) = stored.dead_letter {
        return Ok(refusal(letter));
    }
    let pending = Pending {
        id: format!("{}/{}", object.bucket, object.key),
        poll: upload_url(&object.bucket, &object.key),
        reason: format!(
            "no result within {} ms; the upload's results will appear at `poll`",
            wait.as_millis()
        ),
    };
    Ok((StatusCode::GATEWAY_TIMEOUT, Json(pending)).into_response())
}

impl Prediction {
    fn of(result: &StageResult, object: &SourceObject, started: Instant) -> Self {
        Prediction {
            content_hash: result.content_hash.clone(),
            deduplicated: result.deduplicated,
            detections: result
                .payload
                .get("detections")
                .cloned()
                .unwrap_or(json!([])),
            annotated_url: annotated_url(result),
            source: json!({ "bucket": object.bucket, "key": object.key }),
            result: result_view(result),
            elapsed_ms: started.elapsed().as_millis() as u64,
        }
    }
}

/// A dead letter as an answer: a missing object 404, one too large 413, any other bad input 422.
fn refusal(letter: DeadLetterView) -> Response {
    let status = match letter.code.as_str() {
        "object_not_found" | "bucket_not_found" => StatusCode::NOT_FOUND,
        "too_many_bytes" => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, Json(letter)).into_response()
}

/// The object a JSON request names, checked before anything is announced.
async fn existing_object(app: &App, body: Body) -> Result<SourceObject, ApiError> {
    let bytes = to_bytes(body, MAX_JSON_BYTES).await.map_err(|error| {
        ApiError::bad_request("bad_json", format!("cannot read the request: {error}"))
    })?;
    let request: ByKey = serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::bad_request(
            "bad_json",
            format!("expected {{\"bucket\": \"...\", \"key\": \"...\"}}: {error}"),
        )
    })?;
    if request.bucket != app.settings.input_bucket {
        return Err(ApiError::not_found(format!(
            "bucket {:?} is not the input bucket",
            request.bucket
        )));
    }
    object_path(&request.key)?;
    let object = app
        .backends
        .buckets
        .head(&request.bucket, &request.key)
        .await?;
    if object.size > app.max_upload_bytes {
        return Err(StoreError::TooLarge {
            size: object.size,
            limit: app.max_upload_bytes,
        }
        .into());
    }
    Ok(object)
}

impl App {
    /// Publishes the upload event of an object already stored, the first message of its trace
    /// (a child of the caller's, when the request carried a `traceparent`).
    pub async fn announce(
        &self,
        object: &SourceObject,
        content_type: Option<&str>,
        caller: &HeaderMap,
    ) -> Result<(), ApiError> {
        let event = UploadEvent::for_object(object, content_type, Utc::now());
        let parent = caller
            .get(TRACEPARENT)
            .and_then(|value| value.to_str().ok());
        self.backends
            .publisher
            .publish(&starting_trace(
                Publication::json(
                    &self.settings.topics.uploads,
                    &announcement_key(object),
                    &event,
                ),
                "upload",
                parent,
            ))
            .await?;
        Ok(())
    }
}

/// `30s`, `1500ms`, `2m` or plain seconds, at most [`MAX_TIMEOUT`].
fn parse_timeout(text: &str) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "bad_timeout",
            format!("timeout {text:?}: expected e.g. 30s, 1500ms or 2m, at most 300s"),
        )
    };
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let value: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(value),
        "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if duration > MAX_TIMEOUT {
        return Err(bad());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_like_the_seed_wrote_them() {
        assert_eq!(parse_timeout("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_timeout("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_timeout("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_timeout("7").unwrap(), Duration::from_secs(7));
        for bad in ["", "s", "-1s", "10h", "1e3s", "301s"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }
}
