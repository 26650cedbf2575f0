//! Object storage: buckets through the `object_store` crate (S3/MinIO, a local folder, or memory).
//!
//! Objects are streamed: hashing never holds a whole object, and reading for a stage stops at the
//! byte limit instead of buffering a huge upload first.

use crate::config::S3Settings;
use bytes::Bytes;
use futures::StreamExt;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
    aws::AmazonS3Builder, local::LocalFileSystem, memory::InMemory, path::Path,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "object {key:?} no longer exists in bucket {bucket:?} (deleted before it was processed)"
    )]
    NotFound { bucket: String, key: String },
    #[error(
        "object key {key:?} cannot be stored safely (empty, `.`/`..` segments, control characters or surrounding slashes)"
    )]
    UnsupportedKey { key: String },
    #[error("object is over the {limit}-byte limit (it is at least {size} bytes)")]
    TooLarge { size: u64, limit: u64 },
    #[error("object store: {0}")]
    Unavailable(#[from] object_store::Error),
}

impl StoreError {
    /// Whether trying again later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    pub fn code(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "object_not_found",
            StoreError::UnsupportedKey { .. } => "unsupported_key",
            StoreError::TooLarge { .. } => "too_many_bytes",
            StoreError::Unavailable(_) => "object_store_unavailable",
        }
    }
}

/// Maps an S3 key to a store path, refusing keys that would not round-trip exactly (e.g. `../x`).
pub fn object_path(key: &str) -> Result<Path, StoreError> {
    match Path::parse(key) {
        Ok(path) if !key.is_empty() && path.as_ref() == key => Ok(path),
        _ => Err(StoreError::UnsupportedKey {
            key: key.to_string(),
        }),
    }
}

type Factory = dyn Fn(&str) -> Result<Arc<dyn ObjectStore>, StoreError> + Send + Sync;

/// Opens buckets by name, once each.
#[derive(Clone)]
pub struct Buckets {
    open: Arc<Factory>,
    /// Whether objects carry a content type (S3 does; a local folder has nowhere to keep it).
    content_types: bool,
    opened: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl Buckets {
    fn new(
        content_types: bool,
        open: impl Fn(&str) -> Result<Arc<dyn ObjectStore>, StoreError> + Send + Sync + 'static,
    ) -> Self {
        Buckets {
            open: Arc::new(open),
            content_types,
            opened: Default::default(),
        }
    }

    /// S3 or MinIO. Credentials come from the standard `AWS_*` variables (or the instance role).
    pub fn s3(settings: &S3Settings) -> Self {
        let settings = settings.clone();
        Buckets::new(true, move |bucket| {
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_region(&settings.region)
                .with_virtual_hosted_style_request(!settings.path_style);
            if !settings.endpoint.is_empty() {
                builder = builder
                    .with_endpoint(&settings.endpoint)
                    .with_allow_http(settings.endpoint.starts_with("http://"));
            }
            Ok(Arc::new(builder.build()?))
        })
    }

    /// Each bucket is a folder on disk (the embedded mode's store); other bucket names are refused.
    pub fn folders(folders: HashMap<String, std::path::PathBuf>) -> Self {
        Buckets::new(false, move |bucket| {
            let not_configured = || object_store::Error::NotImplemented {
                operation: format!(
                    "open bucket {bucket:?}: only {:?} are folders here",
                    folders.keys()
                ),
                implementer: "embedded folders".into(),
            };
            let dir = folders.get(bucket).ok_or_else(not_configured)?;
            std::fs::create_dir_all(dir).map_err(|error| object_store::Error::Generic {
                store: "local",
                source: Box::new(error),
            })?;
            Ok(Arc::new(LocalFileSystem::new_with_prefix(dir)?))
        })
    }

    /// Buckets in memory, for tests.
    pub fn memory() -> Self {
        Buckets::new(true, |_| Ok(Arc::new(InMemory::new())))
    }

    pub fn bucket(&self, name: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let mut opened = self.opened.lock().expect("bucket cache lock");
        if let Some(store) = opened.get(name) {
            return Ok(store.clone());
        }
        let store = (self.open)(name)?;
        opened.insert(name.to_string(), store.clone());
        Ok(store)
    }

    /// Streams an object through `consume`, failing once more than `max_bytes` arrived.
    async fn stream(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
        mut consume: impl FnMut(&Bytes),
    ) -> Result<u64, StoreError> {
        let store = self.bucket(bucket)?;
        let path = object_path(key)?;
        let result = store.get(&path).await.map_err(|error| match error {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                bucket: bucket.to_string(),
                key: key.to_string(),
            },
            other => StoreError::Unavailable(other),
        })?;
        if result.meta.size > max_bytes {
            return Err(StoreError::TooLarge {
                size: result.meta.size,
                limit: max_bytes,
            });
        }
        let mut stream = result.into_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            total += chunk.len() as u64;
            if total > max_bytes {
                return Err(StoreError::TooLarge {
                    size: total,
                    limit: max_bytes,
                });
            }
            consume(&chunk);
        }
        Ok(total)
    }

    /// BLAKE3 of an object's bytes, computed while streaming, and its size.
    pub async fn hash(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> Result<(ContentHash, u64), StoreError> {
        let mut hasher = blake3::Hasher::new();
        let size = self
            .stream(bucket, key, max_bytes, |chunk| {
                hasher.update(chunk);
            })
            .await?;
        Ok((ContentHash::from(hasher.finalize()), size))
    }

    /// An object's bytes (up to `max_bytes`) and their BLAKE3.
    pub async fn read(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> Result<(Bytes, ContentHash), StoreError> {
        let mut hasher = blake3::Hasher::new();
        let mut bytes = Vec::new();
        self.stream(bucket, key, max_bytes, |chunk| {
            hasher.update(chunk);
            bytes.extend_from_slice(chunk);
        })
        .await?;
        Ok((Bytes::from(bytes), ContentHash::from(hasher.finalize())))
    }

    pub async fn write(
        &self,
        bucket: &str,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), StoreError> {
        let store = self.bucket(bucket)?;
        let mut attributes = Attributes::new();
        if self.content_types {
            attributes.insert(Attribute::ContentType, content_type.to_string().into());
        }
        let options = PutOptions {
            attributes,
            ..Default::default()
        };
        store
            .put_opts(&object_path(key)?, PutPayload::from(bytes), options)
            .await?;
        Ok(())
    }
}

/// BLAKE3 of an object's content, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContentHash(pub String);

impl From<blake3::Hash> for ContentHash {
    fn from(hash: blake3::Hash) -> Self {
        ContentHash(hash.to_hex().to_string())
    }
}

impl ContentHash {
    pub fn of(bytes: &[u8]) -> Self {
        blake3::hash(bytes).into()
    }
}

impl std::fmt::Display for ContentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_would_not_round_trip_are_refused() {
        for good in [
            "a.jpg",
            "a/b c.jpg",
            "ünï/北京.png",
            "x+y%20z.jpg",
            "..a/b..",
        ] {
            assert_eq!(object_path(good).unwrap().as_ref(), good);
        }
        for bad in [
            "",
            "../x.jpg",
            "a/./b.jpg",
            "a//b.jpg",
            "/abs.jpg",
            "dir/",
            "tab\there",
        ] {
            assert!(object_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn hashes_reads_and_enforces_the_byte_limit() {
        let buckets = Buckets::memory();
        let content = Bytes::from(vec![7u8; 10_000]);
        buckets
            .write(
                "in",
                "dir/x y.bin",
                content.clone(),
                "application/octet-stream",
            )
            .await
            .unwrap();
        let expected = ContentHash::of(&content);

        let (hash, size) = buckets.hash("in", "dir/x y.bin", 10_000).await.unwrap();
        assert_eq!((hash.clone(), size), (expected.clone(), 10_000));
        let (bytes, hash) = buckets.read("in", "dir/x y.bin", 10_000).await.unwrap();
        assert_eq!((bytes, hash), (content, expected));

        let error = buckets.read("in", "dir/x y.bin", 9_999).await.unwrap_err();
        assert_eq!(error.code(), "too_many_bytes");
        let error = buckets.hash("in", "missing", 10).await.unwrap_err();
        assert_eq!(error.code(), "object_not_found");
        assert!(!error.is_transient());
    }
}
