//! Uploading to Prism's input bucket through the S3 API, as a user or a test would.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use prism_core::ports::store::Buckets;
use prism_core::runtime::config::S3Settings;
use rusty_s3::{Credentials, S3Action};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a presigned bucket request stays valid; it is used at once.
const PRESIGN_TTL: Duration = Duration::from_secs(60);

/// Creates `name` if it does not exist (object_store has no bucket API, so this signs the request
/// itself). Credentials come from the settings, else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
pub async fn create_bucket(settings: &S3Settings, name: &str) -> anyhow::Result<()> {
    let bucket = prism_core::ports::store::signing_bucket(settings, name)?;
    let credentials = match settings.static_credentials()? {
        Some((key_id, secret)) => Credentials::new(key_id, secret.expose()),
        None => Credentials::from_env()
            .ok_or_else(|| anyhow::anyhow!("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"))?,
    };
    let url = bucket.create_bucket(&credentials).sign(PRESIGN_TTL);
    let response = reqwest::Client::new().put(url).send().await?;
    let status = response.status();
    // 409: it exists already (BucketAlreadyOwnedByYou), which is what we want.
    if status.is_success() || status == reqwest::StatusCode::CONFLICT {
        Ok(())
    } else {
        anyhow::bail!(
            "creating bucket {name}: {status}: {}",
            response.text().await?
        )
    }
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
