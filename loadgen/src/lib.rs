//! Load for Prism: uploading to its input bucket through the S3 API, as a user or a test would;
//! benchmark photo sets (`dataset`); the end-to-end thumbnail benchmark (`thumbnails`); the seed's
//! load plan against the gateway's /predict (`predict`).

pub mod charts;
pub mod dataset;
pub mod day;
pub mod dedup;
pub mod jobs;
pub mod latency;
pub mod measure;
pub mod predict;
pub mod report;
pub mod saturation;
pub mod served;
pub mod table;
pub mod thumbnails;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use prism_core::ports::store::Buckets;
use prism_core::runtime::config::S3Settings;
use std::path::{Path, PathBuf};

/// Creates `name` if it does not exist.
pub async fn create_bucket(settings: &S3Settings, name: &str) -> anyhow::Result<()> {
    Ok(Buckets::s3(settings).create_bucket(name).await?)
}

/// Every regular, non-hidden file under `dir`, as (key relative to `dir`, path).
pub fn files_under(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else if entry.file_type()?.is_file() {
                let relative = path.strip_prefix(dir).expect("found under dir");
                let key = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                found.push((key, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn content_type(key: &str) -> &'static str {
    match key
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        _ => "application/octet-stream",
    }
}

/// Uploads `(key, bytes)` pairs with up to `concurrency` requests in flight.
pub async fn upload(
    buckets: &Buckets,
    bucket: &str,
    objects: Vec<(String, Bytes)>,
    concurrency: usize,
) -> anyhow::Result<()> {
    stream::iter(objects)
        .map(|(key, bytes)| async move {
            buckets
                .write(bucket, &key, bytes, content_type(&key))
                .await
                .map_err(|error| anyhow::anyhow!("uploading {key}: {error}"))
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await
}
