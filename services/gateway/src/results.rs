//! Reading back: an upload's results, a content's results, and the objects themselves.

use crate::App;
use crate::error::{ApiError, ErrorBody};
use crate::views::{ContentView, UploadView};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

impl App {
    /// Only Prism's own buckets are served: the gateway is no open proxy to the store.
    pub fn served_bucket(&self, bucket: &str) -> Result<(), ApiError> {
        if bucket == self.settings.input_bucket || bucket == self.settings.output_bucket {
            Ok(())
        } else {
            Err(ApiError::not_found(format!("no bucket {bucket:?} here")))
        }
    }
}

/// `GET /api/uploads/<bucket>/<key>`
#[utoipa::path(
    get,
    path = "/api/uploads/{bucket}/{key}",
    params(("bucket" = String, Path), ("key" = String, Path, description = "The object key, percent-encoded per segment")),
    responses((status = 200, body = UploadView), (status = 404, body = ErrorBody))
)]
pub async fn upload(
    State(app): State<Arc<App>>,
    Path((bucket, key)): Path<(String, String)>,
) -> Result<Json<UploadView>, ApiError> {
    app.served_bucket(&bucket)?;
    Ok(Json(app.lookup.upload(&bucket, &key).await?))
}

/// `GET /api/results/<content_hash>`
#[utoipa::path(
    get,
    path = "/api/results/{content_hash}",
    params(("content_hash" = String, Path, description = "BLAKE3, 64 lowercase hex digits")),
    responses((status = 200, body = ContentView), (status = 400, body = ErrorBody))
)]
pub async fn content(
    State(app): State<Arc<App>>,
    Path(content_hash): Path<String>,
) -> Result<Json<ContentView>, ApiError> {
    let valid = content_hash.len() == 64
        && content_hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return Err(ApiError::bad_request(
            "bad_content_hash",
            "a content hash is 64 lowercase hex digits (BLAKE3)",
        ));
    }
    Ok(Json(app.lookup.content(&content_hash).await?))
}

/// `GET /api/objects/<bucket>/<key>`: the object's bytes, streamed.
#[utoipa::path(
    get,
    path = "/api/objects/{bucket}/{key}",
    params(("bucket" = String, Path), ("key" = String, Path)),
    responses(
        (status = 200, content_type = "application/octet-stream", description = "The bytes, with the stored content type"),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn object(
    State(app): State<Arc<App>>,
    Path((bucket, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    app.served_bucket(&bucket)?;
    let opened = app.backends.buckets.open_object(&bucket, &key).await?;
    let content_type = opened.content_type.unwrap_or_else(|| {
        mime_guess::from_path(&key)
            .first_or_octet_stream()
            .to_string()
    });
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, opened.size.to_string()),
            // Outputs are named by content and parameters: they never change.
            (header::CACHE_CONTROL, "public, max-age=86400".to_string()),
            // Uploads are whatever users sent: never let a browser run one as a page.
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::CONTENT_SECURITY_POLICY, "sandbox".to_string()),
        ],
        Body::from_stream(opened.bytes),
    )
        .into_response())
}
