//! Uploads from the page: each file streamed to the input bucket under `web/<session>/`, then
//! announced like any upload; and the session's live stream of results and dead letters.

use crate::App;
use crate::error::{ApiError, ErrorBody};
use crate::hub::Outcome;
use crate::views::{DeadLetterView, result_view, upload_url};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use prism_core::contract::SourceObject;
use prism_core::ports::store::object_path;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use tokio_stream::wrappers::BroadcastStream;

/// Longest file name kept in a key, in bytes (S3 keys are at most 1024).
const MAX_NAME_BYTES: usize = 200;
/// Session ids are the page's own random ids: short, and safe in a key as they are.
const MAX_SESSION_CHARS: usize = 64;

#[derive(Deserialize)]
pub struct UploadQuery {
    name: String,
    session: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub content_hash: String,
    /// Where the upload's results can be read again: `/api/uploads/<bucket>/<key>`.
    pub url: String,
}

/// `POST /api/uploads?name=&session=`: 201 once the file is stored and announced.
#[utoipa::path(
    post,
    path = "/api/uploads",
    params(
        ("name" = String, Query, description = "The file's name; its last path segment ends the key"),
        ("session" = String, Query, description = "The page's session: 1-64 of [A-Za-z0-9_-]"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes, streamed"),
    responses(
        (status = 201, body = Uploaded),
        (status = 400, body = ErrorBody, description = "Bad name or session"),
        (status = 408, body = ErrorBody, description = "The client stalled"),
        (status = 413, body = ErrorBody, description = "Over the byte limit"),
    )
)]
pub async fn upload(
    State(app): State<Arc<App>>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let session = valid_session(&query.session)?;
    let name = sanitised_name(&query.name)?;
    let key = format!("web/{session}/{}/{name}", uuid::Uuid::new_v4().simple());
    let stored = app.store_upload(&key, &name, &headers, body).await?;
    Ok((
        StatusCode::CREATED,
        Json(Uploaded {
            url: upload_url(&stored.0.bucket, &stored.0.key),
            bucket: stored.0.bucket,
            key: stored.0.key,
            size: stored.0.size,
            content_hash: stored.1,
        }),
    ))
}

impl App {
    /// Streams `body` to `key` in the input bucket (refusing it early when its declared length
    /// is over the limit), then publishes its upload event unless the store does
    /// (`gateway.announce_uploads`). Returns the object and its hash.
    pub async fn store_upload(
        &self,
        key: &str,
        name: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(SourceObject, String), ApiError> {
        let limit = self.max_upload_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if let Some(length) = declared.filter(|&length| length > limit) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_bytes",
                format!("the upload is {length} bytes, over the {limit}-byte limit"),
            ));
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                mime_guess::from_path(name)
                    .first_or_octet_stream()
                    .to_string()
            });
        let bucket = &self.settings.input_bucket;
        let hashed = self
            .backends
            .buckets
            .write_stream(bucket, key, &content_type, limit, body.into_data_stream())
            .await?;
        let object = SourceObject {
            bucket: bucket.clone(),
            key: key.to_string(),
            etag: hashed.etag,
            size: hashed.size,
            batch_job: None,
        };
        if self.settings.gateway.announce_uploads {
            self.announce(&object, Some(&content_type), headers).await?;
        }
        Ok((object, hashed.hash.0))
    }
}

fn valid_session(session: &str) -> Result<&str, ApiError> {
    let valid = !session.is_empty()
        && session.chars().count() <= MAX_SESSION_CHARS
        && session
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(session)
    } else {
        Err(ApiError::bad_request(
            "bad_session",
            "session must be 1 to 64 letters, digits, '-' or '_'",
        ))
    }
}

/// The file name as a key's last segment: only its last path component, control characters
/// dropped, cut to [`MAX_NAME_BYTES`]. Unicode is kept: keys are UTF-8.
pub fn sanitised_name(name: &str) -> Result<String, ApiError> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut clean: String = last.chars().filter(|c| !c.is_control()).collect();
    let trimmed = clean.trim();
    if trimmed.len() != clean.len() {
        clean = trimmed.to_string();
    }
    while clean.len() > MAX_NAME_BYTES {
        clean.pop();
    }
    if clean.is_empty() || clean == "." || clean == ".." || object_path(&clean).is_err() {
        return Err(ApiError::bad_request(
            "bad_name",
            format!("{name:?} is not a usable file name"),
        ));
    }
    Ok(clean)
}

/// `GET /api/sessions/<session>/events`: every result (`event: result`) and dead letter
/// (`event: dead_letter`) of the session's uploads, as they arrive.
#[utoipa::path(
    get,
    path = "/api/sessions/{session}/events",
    params(("session" = String, Path)),
    responses(
        (status = 200, content_type = "text/event-stream", description = "`event: result` (data: a stage result with output URLs) and `event: dead_letter` (data: DeadLetterView)"),
        (status = 400, body = ErrorBody),
    )
)]
pub async fn events(
    State(app): State<Arc<App>>,
    Path(session): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let prefix = format!("web/{}/", valid_session(&session)?);
    let bucket = app.settings.input_bucket.clone();
    let stream = BroadcastStream::new(app.hub.subscribe()).filter_map(move |outcome| {
        // A receiver that fell behind skips what it missed; the page's reload finds it.
        let event = outcome.ok().and_then(|outcome| {
            let source = outcome.source()?;
            if source.bucket != bucket || !source.key.starts_with(&prefix) {
                return None;
            }
            Some(match &*outcome {
                Outcome::Result(result) => Event::default()
                    .event("result")
                    .json_data(result_view(result)),
                Outcome::DeadLetter(letter) => Event::default()
                    .event("dead_letter")
                    .json_data(DeadLetterView::of(letter)),
            })
        });
        std::future::ready(event.and_then(Result::ok).map(Ok))
    });
    let stream = stream.take_until(app.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_last_segment_and_unicode() {
        assert_eq!(sanitised_name("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(
            sanitised_name("C:\\photos\\été 北京.jpg").unwrap(),
            "été 北京.jpg"
        );
        assert_eq!(sanitised_name(" a\tb.jpg ").unwrap(), "ab.jpg");
        for bad in ["", "..", "dir/", "\u{7}"] {
            assert!(sanitised_name(bad).is_err(), "{bad:?}");
        }
        let long = "é".repeat(300);
        let cut = sanitised_name(&long).unwrap();
        assert!(cut.len() <= MAX_NAME_BYTES && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn sessions_are_plain_ids() {
        assert!(valid_session("a1-B_2").is_ok());
        for bad in ["", "../x", "a/b", "été", &"a".repeat(65)] {
            assert!(valid_session(bad).is_err(), "{bad:?}");
        }
    }
}
