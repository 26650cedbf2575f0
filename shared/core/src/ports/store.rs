//! Object storage: buckets through the `object_store` crate (S3/MinIO, a local folder, or memory).
//!
//! Objects are streamed: hashing never holds a whole object, and reading for a stage stops at the
//! byte limit instead of buffering a huge upload first.

use crate::contract::{Classify, SourceObject};
use crate::runtime::config::S3Settings;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::{
    Attribute, Attributes, GetResultPayload, ObjectStore, ObjectStoreExt, PutMultipartOptions,
    PutOptions, PutPayload, WriteMultipart,
    aws::{AmazonS3Builder, AwsCredentialProvider},
    local::LocalFileSystem,
    memory::InMemory,
    path::Path,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "object {key:?} no longer exists in bucket {bucket:?} (deleted before it was processed)"
    )]
    NotFound { bucket: String, key: String },
    #[error(
        "bucket {bucket:?} does not exist (an event naming a bucket that was never created, or was deleted)"
    )]
    NoSuchBucket { bucket: String },
    #[error(
        "object key {key:?} cannot be stored safely (empty, `.`/`..` segments, control characters or surrounding slashes)"
    )]
    UnsupportedKey { key: String },
    #[error(
        "object {key:?} is a symbolic link, or lies under one, in a folder bucket: links are not followed, since they may lead anywhere on the machine"
    )]
    SymbolicLink { key: String },
    #[error("object is over the {limit}-byte limit (it is at least {size} bytes)")]
    TooLarge { size: u64, limit: u64 },
    /// The store answers but refuses Prism: a bucket missing, credentials wrong or without the
    /// right. Retried like an outage (fixing it loses nothing), but an operator must act.
    #[error("object store refuses Prism's requests: {reason}; {fix}")]
    Misconfigured { reason: String, fix: &'static str },
    #[error(
        "object {key:?} in bucket {bucket:?} is no longer the version its event announced (ETag \
         {announced:?}, now {found:?}): it was overwritten before it was processed; the new \
         version has its own event"
    )]
    Changed {
        bucket: String,
        key: String,
        announced: String,
        found: String,
    },
    /// An upload's body ended in an error (the client went away or was too slow).
    #[error("the upload was interrupted: {reason}")]
    Interrupted { reason: String },
    #[error("object store: {0}")]
    Unavailable(object_store::Error),
}

impl From<object_store::Error> for StoreError {
    fn from(error: object_store::Error) -> Self {
        let reason = error.to_string();
        let fix = match &error {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => CREDENTIALS_FIX,
            _ if reason.contains("NoSuchBucket") => BUCKET_FIX,
            _ if [
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
            ]
            .iter()
            .any(|code| reason.contains(code)) =>
            {
                CREDENTIALS_FIX
            }
            _ => return StoreError::Unavailable(error),
        };
        StoreError::Misconfigured { reason, fix }
    }
}

const BUCKET_FIX: &str = "create the bucket (the stage services create the output bucket at \
     start) or set input_bucket / output_bucket to buckets that exist";
const CREDENTIALS_FIX: &str = "check the S3 credentials (s3.access_key_id, AWS_ACCESS_KEY_ID, \
     AWS_SECRET_ACCESS_KEY) and that their policy lets Prism read the input bucket and write the \
     output bucket";

impl Classify for StoreError {
    fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Misconfigured { .. }
        )
    }

    fn code(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "object_not_found",
            StoreError::NoSuchBucket { .. } => "bucket_not_found",
            StoreError::UnsupportedKey { .. } => "unsupported_key",
            StoreError::SymbolicLink { .. } => "symbolic_link",
            StoreError::TooLarge { .. } => "too_many_bytes",
            StoreError::Misconfigured { .. } => "object_store_misconfigured",
            StoreError::Changed { .. } => "content_changed",
            StoreError::Interrupted { .. } => "upload_interrupted",
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

/// Where buckets live.
enum Backend {
    /// With the HTTP client of the listings, kept so repeated listings reuse its connections.
    S3(S3Settings, reqwest::Client),
    /// Each bucket a folder on disk (the embedded mode's store).
    Folders(HashMap<String, std::path::PathBuf>),
    Memory,
}

/// A bucket opened once: its store and, on S3, the credentials the tolerant listing signs with.
#[derive(Clone)]
struct Opened {
    store: Arc<dyn ObjectStore>,
    s3_credentials: Option<AwsCredentialProvider>,
}

/// Opens buckets by name, once each.
#[derive(Clone)]
pub struct Buckets {
    backend: Arc<Backend>,
    opened: Arc<Mutex<HashMap<String, Opened>>>,
}

/// What [`Buckets::hash`] read.
#[derive(Debug, Clone, PartialEq)]
pub struct Hashed {
    pub hash: ContentHash,
    pub size: u64,
    /// The ETag of the version whose bytes were hashed (unquoted).
    pub etag: String,
}

/// One object found by [`Buckets::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct ListedObject {
    pub source: SourceObject,
    pub last_modified: DateTime<Utc>,
}

/// An entry a listing left out: its name (lossy if it is not UTF-8) and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Unlisted {
    pub name: String,
    pub reason: &'static str,
}

/// One page of a listing ([`Buckets::list_page`]).
#[derive(Debug, Default)]
pub struct Page {
    pub listing: Listing,
    /// The last key this page covered, when more may follow: where the next page starts.
    pub next: Option<String>,
}

/// Keys S3 returns per listing page (its maximum).
pub const LIST_PAGE_KEYS: usize = 1000;

/// Which keys a listing asks for.
#[derive(Debug, Clone, Copy)]
struct KeyRange<'a> {
    prefix: &'a str,
    after: Option<&'a str>,
    max_keys: usize,
}

/// The page of the first `max_keys` keys of a whole listing (objects and unlisted names alike).
fn first_keys(mut listing: Listing, max_keys: usize) -> Page {
    let mut keys: Vec<&str> = listing
        .objects
        .iter()
        .map(|object| object.source.key.as_str())
        .chain(listing.unlisted.iter().map(|entry| entry.name.as_str()))
        .collect();
    keys.sort_unstable();
    let next = (keys.len() > max_keys).then(|| keys[max_keys.max(1) - 1].to_string());
    if let Some(last) = &next {
        listing.objects.retain(|object| object.source.key <= *last);
        listing.unlisted.retain(|entry| entry.name <= *last);
    }
    listing
        .objects
        .sort_by(|a, b| a.source.key.cmp(&b.source.key));
    Page { listing, next }
}

/// A whole bucket listed, sorted by key, with what could not be listed set aside.
#[derive(Debug, Default)]
pub struct Listing {
    pub objects: Vec<ListedObject>,
    pub unlisted: Vec<Unlisted>,
}

const NOT_A_KEY: &str = "not an object key Prism can read back (`.`/`..` or empty segments, control characters, surrounding slashes)";

/// Logs what a listing set aside, each entry once per `warned` set (the watcher lists every
/// half second; one odd object must not fill the log).
pub fn warn_unlisted(bucket: &str, unlisted: &[Unlisted], warned: &mut HashSet<Unlisted>) {
    for entry in unlisted {
        if warned.insert(entry.clone()) {
            tracing::warn!(
                %bucket,
                name = ?entry.name,
                reason = entry.reason,
                "skipping an object that cannot be processed"
            );
        }
    }
}

impl Buckets {
    fn new(backend: Backend) -> Self {
        Buckets {
            backend: Arc::new(backend),
            opened: Default::default(),
        }
    }

    /// S3 or MinIO. Credentials come from the settings, else the standard `AWS_*` variables (or the
    /// instance role).
    pub fn s3(settings: &S3Settings) -> Self {
        Buckets::new(Backend::S3(settings.clone(), reqwest::Client::new()))
    }

    /// Each bucket is a folder on disk (the embedded mode's store); other bucket names are refused.
    pub fn folders(folders: HashMap<String, std::path::PathBuf>) -> Self {
        Buckets::new(Backend::Folders(folders))
    }

    /// Buckets in memory, for tests.
    pub fn memory() -> Self {
        Buckets::new(Backend::Memory)
    }

    fn open(&self, bucket: &str) -> Result<Opened, StoreError> {
        Ok(match &*self.backend {
            Backend::S3(settings, _) => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_region(&settings.region)
                    .with_virtual_hosted_style_request(!settings.path_style);
                let credentials = settings.static_credentials().map_err(local_error)?;
                if let Some((key_id, secret)) = credentials {
                    builder = builder
                        .with_access_key_id(key_id)
                        .with_secret_access_key(secret.expose());
                }
                if !settings.endpoint.is_empty() {
                    builder = builder
                        .with_endpoint(&settings.endpoint)
                        .with_allow_http(settings.endpoint.starts_with("http://"));
                }
                let store = builder.build()?;
                Opened {
                    s3_credentials: Some(store.credentials().clone()),
                    store: Arc::new(store),
                }
            }
            Backend::Folders(folders) => {
                let dir = folder(folders, bucket)?;
                std::fs::create_dir_all(dir).map_err(local_error)?;
                Opened {
                    store: Arc::new(LocalFileSystem::new_with_prefix(dir)?),
                    s3_credentials: None,
                }
            }
            Backend::Memory => Opened {
                store: Arc::new(InMemory::new()),
                s3_credentials: None,
            },
        })
    }

    fn opened(&self, name: &str) -> Result<Opened, StoreError> {
        let mut opened = self.opened.lock().expect("bucket cache lock");
        if let Some(bucket) = opened.get(name) {
            return Ok(bucket.clone());
        }
        let bucket = self.open(name)?;
        opened.insert(name.to_string(), bucket.clone());
        Ok(bucket)
    }

    pub fn bucket(&self, name: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
        Ok(self.opened(name)?.store)
    }

    /// Every object in `bucket`, sorted by key. Entries Prism cannot read back by key (odd S3 keys,
    /// symbolic links, special files and names that are not UTF-8 in a folder) are set aside in
    /// [`Listing::unlisted`] instead of failing the listing: one odd object must not hide the rest.
    /// Creates `bucket` unless it exists (a folder in the embedded mode). object_store has no
    /// bucket API, so for S3 the request is signed here.
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        let opened = self.opened(bucket)?;
        match &*self.backend {
            Backend::S3(settings, client) => {
                let credentials = opened
                    .s3_credentials
                    .expect("S3 buckets are opened with their credentials");
                create_s3_bucket(settings, client, &credentials, bucket).await
            }
            // Opening a folder bucket creates its folder; memory buckets need nothing.
            Backend::Folders(_) | Backend::Memory => Ok(()),
        }
    }

    pub async fn list(&self, bucket: &str) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .list_page(bucket, "", after.as_deref(), LIST_PAGE_KEYS)
                .await?;
            listing.objects.extend(page.listing.objects);
            listing.unlisted.extend(page.listing.unlisted);
            match page.next {
                Some(last) => after = Some(last),
                None => return Ok(listing),
            }
        }
    }

    /// The objects whose keys start with `prefix` and sort after `after`, in key order, a page
    /// of at most `max_keys` (S3 gives at most [`LIST_PAGE_KEYS`]): a million keys are listed a
    /// page at a time, and a listing resumes from the last key it handled.
    pub async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        max_keys: usize,
    ) -> Result<Page, StoreError> {
        let opened = self.opened(bucket)?;
        let mut listing = match &*self.backend {
            Backend::S3(settings, client) => {
                let credentials = opened
                    .s3_credentials
                    .expect("S3 buckets are opened with their credentials");
                let range = KeyRange {
                    prefix,
                    after,
                    max_keys,
                };
                let page = list_s3(settings, client, &credentials, bucket, range).await?;
                return Ok(page);
            }
            Backend::Folders(folders) => {
                let dir = folder(folders, bucket)?.clone();
                let name = bucket.to_string();
                tokio::task::spawn_blocking(move || list_folder(&dir, &name))
                    .await
                    .map_err(|error| local_error(std::io::Error::other(error)))??
            }
            Backend::Memory => {
                // In memory every key was a valid path when it was written.
                let metas: Vec<_> = opened.store.list(None).try_collect().await?;
                let objects = metas
                    .into_iter()
                    .map(|meta| ListedObject {
                        source: SourceObject {
                            bucket: bucket.to_string(),
                            key: meta.location.to_string(),
                            etag: meta.e_tag.unwrap_or_default().trim_matches('"').to_string(),
                            size: meta.size,
                            batch_job: None,
                        },
                        last_modified: meta.last_modified,
                    })
                    .collect();
                Listing {
                    objects,
                    unlisted: Vec::new(),
                }
            }
        };
        let wanted = |key: &str| key.starts_with(prefix) && after.is_none_or(|after| key > after);
        listing.objects.retain(|object| wanted(&object.source.key));
        listing.unlisted.retain(|entry| wanted(&entry.name));
        Ok(first_keys(listing, max_keys))
    }

    /// The ETag of the version `meta` describes, unquoted (S3 quotes it, MinIO's events do not).
    fn etag(&self, meta: &object_store::ObjectMeta) -> String {
        match &*self.backend {
            Backend::Folders(_) => folder_etag(meta.last_modified, meta.size),
            _ => meta
                .e_tag
                .as_deref()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string(),
        }
    }

    /// GETs an object: not found, no such bucket and links in folder buckets told apart.
    async fn get(&self, bucket: &str, key: &str) -> Result<object_store::GetResult, StoreError> {
        let store = self.bucket(bucket)?;
        let path = self.readable_path(bucket, key)?;
        store
            .get(&path)
            .await
            .map_err(|error| not_found(error, bucket, key))
    }

    /// `key` as a store path, refusing links in folder buckets.
    fn readable_path(&self, bucket: &str, key: &str) -> Result<Path, StoreError> {
        let path = object_path(key)?;
        if let Backend::Folders(folders) = &*self.backend
            && leads_through_link(folder(folders, bucket)?, key).map_err(local_error)?
        {
            // The listing sets links aside; this holds for any event naming one, or a file
            // replaced by a link since it was listed.
            return Err(StoreError::SymbolicLink {
                key: key.to_string(),
            });
        }
        Ok(path)
    }

    /// What an object is, without reading it.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<SourceObject, StoreError> {
        let store = self.bucket(bucket)?;
        let meta = store
            .head(&self.readable_path(bucket, key)?)
            .await
            .map_err(|error| not_found(error, bucket, key))?;
        Ok(SourceObject {
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: self.etag(&meta),
            size: meta.size,
            batch_job: None,
        })
    }

    /// An object to pass on as it is read (an HTTP response), never held whole.
    pub async fn open_object(&self, bucket: &str, key: &str) -> Result<OpenedObject, StoreError> {
        let result = self.get(bucket, key).await?;
        let content_type = result
            .attributes
            .get(&Attribute::ContentType)
            .map(|value| value.to_string());
        Ok(OpenedObject {
            size: result.meta.size,
            content_type,
            bytes: result.into_stream().map_err(StoreError::from).boxed(),
        })
    }

    /// Writes `body` to `bucket/key` as it arrives (a multipart upload: at most a part or two in
    /// memory), hashing it on the way; past `max_bytes` the upload is abandoned and nothing is
    /// stored. Returns the stored version's ETag, its size and its BLAKE3.
    pub async fn write_stream<E: std::fmt::Display>(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        max_bytes: u64,
        mut body: impl futures::Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> Result<Hashed, StoreError> {
        let store = self.bucket(bucket)?;
        let path = object_path(key)?;
        let options = PutMultipartOptions {
            attributes: self.attributes(content_type),
            ..Default::default()
        };
        let upload = store.put_multipart_opts(&path, options).await?;
        let mut writer = WriteMultipart::new(upload);
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let failure = loop {
            let chunk = match body.next().await {
                None => break None,
                Some(Ok(chunk)) => chunk,
                Some(Err(error)) => {
                    break Some(StoreError::Interrupted {
                        reason: error.to_string(),
                    });
                }
            };
            size += chunk.len() as u64;
            if size > max_bytes {
                break Some(StoreError::TooLarge {
                    size,
                    limit: max_bytes,
                });
            }
            hasher.update(&chunk);
            // Backpressure: the body is read no faster than the store takes the parts.
            if let Err(error) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                break Some(error.into());
            }
            writer.put(chunk);
        };
        if let Some(error) = failure {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(%bucket, %key, error = %abort, "could not abandon a refused upload");
            }
            return Err(error);
        }
        writer.finish().await?;
        let meta = store.head(&path).await?;
        Ok(Hashed {
            hash: ContentHash::from(hasher.finalize()),
            size,
            etag: self.etag(&meta),
        })
    }

    /// The content type as an attribute, where the store can keep one (a folder cannot).
    fn attributes(&self, content_type: &str) -> Attributes {
        let mut attributes = Attributes::new();
        if !matches!(*self.backend, Backend::Folders(_)) {
            attributes.insert(Attribute::ContentType, content_type.to_string().into());
        }
        attributes
    }

    /// Streams an object through `consume`, failing once more than `max_bytes` arrived, or before
    /// reading when `announced_etag` is given and the bucket holds another version. Returns the
    /// size and the ETag of the version read.
    async fn stream(
        &self,
        bucket: &str,
        key: &str,
        announced_etag: Option<&str>,
        max_bytes: u64,
        mut consume: impl FnMut(&Bytes),
    ) -> Result<(u64, String), StoreError> {
        let result = self.get(bucket, key).await?;
        let etag = self.etag(&result.meta);
        if let Some(announced) = announced_etag
            && announced.trim_matches('"') != etag
        {
            return Err(StoreError::Changed {
                bucket: bucket.to_string(),
                key: key.to_string(),
                announced: announced.to_string(),
                found: etag,
            });
        }
        if result.meta.size > max_bytes {
            return Err(StoreError::TooLarge {
                size: result.meta.size,
                limit: max_bytes,
            });
        }
        // object_store streams a file as 8 KiB reads, each its own blocking task (a thread
        // hand-off per chunk); the size is checked above, so a file is read in one.
        let mut stream = if matches!(result.payload, GetResultPayload::File(..)) {
            futures::stream::once(result.bytes()).boxed()
        } else {
            result.into_stream()
        };
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
        Ok((total, etag))
    }

    /// BLAKE3 of an announced object's bytes, computed while streaming. Refused as
    /// [`StoreError::Changed`] when the bucket holds another version than `object.etag` (unless
    /// that is empty): one GET reads the bytes and the ETag that names them, so a result never
    /// pairs one version's ETag with another's content.
    pub async fn hash(&self, object: &SourceObject, max_bytes: u64) -> Result<Hashed, StoreError> {
        let mut hasher = blake3::Hasher::new();
        let announced = Some(object.etag.as_str()).filter(|etag| !etag.is_empty());
        let (size, etag) = self
            .stream(&object.bucket, &object.key, announced, max_bytes, |chunk| {
                hasher.update(chunk);
            })
            .await?;
        Ok(Hashed {
            hash: ContentHash::from(hasher.finalize()),
            size,
            etag,
        })
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
        self.stream(bucket, key, None, max_bytes, |chunk| {
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
        let options = PutOptions {
            attributes: self.attributes(content_type),
            ..Default::default()
        };
        store
            .put_opts(&object_path(key)?, PutPayload::from(bytes), options)
            .await?;
        Ok(())
    }
}

/// Parts of a streamed upload sent at once.
const PARTS_IN_FLIGHT: usize = 2;

/// An object opened by [`Buckets::open_object`].
pub struct OpenedObject {
    pub size: u64,
    pub content_type: Option<String>,
    pub bytes: futures::stream::BoxStream<'static, Result<Bytes, StoreError>>,
}

/// A GET or HEAD error, with a missing object or bucket named.
fn not_found(error: object_store::Error, bucket: &str, key: &str) -> StoreError {
    match error {
        object_store::Error::NotFound { .. } if error.to_string().contains("NoSuchBucket") => {
            StoreError::NoSuchBucket {
                bucket: bucket.to_string(),
            }
        }
        object_store::Error::NotFound { .. } => StoreError::NotFound {
            bucket: bucket.to_string(),
            key: key.to_string(),
        },
        other => other.into(),
    }
}

fn local_error(error: std::io::Error) -> StoreError {
    StoreError::Unavailable(object_store::Error::Generic {
        store: "local",
        source: Box::new(error),
    })
}

fn folder<'a>(
    folders: &'a HashMap<String, std::path::PathBuf>,
    bucket: &str,
) -> Result<&'a std::path::PathBuf, StoreError> {
    folders.get(bucket).ok_or_else(|| {
        StoreError::Unavailable(object_store::Error::NotImplemented {
            operation: format!(
                "open bucket {bucket:?}: only {:?} are folders here",
                folders.keys()
            ),
            implementer: "embedded folders".into(),
        })
    })
}

/// Walks a bucket folder without following symbolic links: a link could lead anywhere on the
/// machine (`photo.jpg -> /etc/passwd`), so links are set aside, like special files (reading a FIFO
/// would block) and names that do not map back to exactly this file.
fn list_folder(dir: &std::path::Path, bucket: &str) -> Result<Listing, StoreError> {
    // The store resolves its root; walk the same resolved folder so paths compare equal.
    let dir = &std::fs::canonicalize(dir).map_err(local_error)?;
    let store = LocalFileSystem::new_with_prefix(dir)?;
    let mut listing = Listing::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            // Removed while we walked: nothing left to list there.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            // One folder we may not read must not hide the rest of the bucket.
            Err(_) if &current != dir => {
                listing.unlisted.push(Unlisted {
                    name: current
                        .strip_prefix(dir)
                        .expect("walked under dir")
                        .to_string_lossy()
                        .into_owned(),
                    reason: "folder cannot be read",
                });
                continue;
            }
            Err(error) => return Err(local_error(error)),
        };
        for entry in entries {
            let entry = entry.map_err(local_error)?;
            let path = entry.path();
            let relative = path.strip_prefix(dir).expect("walked under dir");
            let mut unlisted = |reason| {
                listing.unlisted.push(Unlisted {
                    name: relative.to_string_lossy().into_owned(),
                    reason,
                })
            };
            // `DirEntry::file_type` describes the entry itself, never a link's target.
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(local_error(error)),
            };
            if kind.is_symlink() {
                unlisted("symbolic link (not followed)");
                continue;
            }
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            if !kind.is_file() {
                unlisted("not a regular file");
                continue;
            }
            let Some(key) = relative.to_str().map(str::to_string) else {
                unlisted("name is not UTF-8");
                continue;
            };
            let readable = object_path(&key)
                .ok()
                .and_then(|location| store.path_to_filesystem(&location).ok())
                .is_some_and(|mapped| mapped == path);
            if !readable {
                unlisted(NOT_A_KEY);
                continue;
            }
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(local_error(error)),
            };
            let last_modified: DateTime<Utc> =
                metadata.modified().map(DateTime::from).unwrap_or_default();
            listing.objects.push(ListedObject {
                source: SourceObject {
                    bucket: bucket.to_string(),
                    key,
                    etag: folder_etag(last_modified, metadata.len()),
                    size: metadata.len(),
                    batch_job: None,
                },
                last_modified,
            });
        }
    }
    Ok(listing)
}

/// The ETag of a file in a folder bucket, from what both a listing and a read see of it. Changes
/// whenever the file is rewritten: all an ETag is used for here.
fn folder_etag(last_modified: DateTime<Utc>, size: u64) -> String {
    format!(
        "{:x}-{:x}",
        last_modified.timestamp_nanos_opt().unwrap_or_default(),
        size
    )
}

/// Whether `key` in the folder `dir`, or a folder on the way to it, is a symbolic link.
fn leads_through_link(dir: &std::path::Path, key: &str) -> std::io::Result<bool> {
    let mut path = dir.to_path_buf();
    for segment in key.split('/') {
        path.push(segment);
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.file_type().is_symlink() => return Ok(true),
            Ok(_) => {}
            // Reading it will say it is not there.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(error),
        }
    }
    Ok(false)
}

/// How long a request Prism signs itself stays valid; it is sent at once.
const LIST_REQUEST_TTL: std::time::Duration = std::time::Duration::from_secs(60);

fn s3_error(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(object_store::Error::Generic {
        store: "S3",
        source: Box::new(error),
    })
}

/// `bucket` as rusty-s3 addresses it, for the few S3 requests Prism signs itself (the tolerant
/// listing, creating buckets): same endpoint (AWS when unset), region and URL style as the store.
pub fn signing_bucket(settings: &S3Settings, bucket: &str) -> Result<rusty_s3::Bucket, StoreError> {
    let endpoint = if settings.endpoint.is_empty() {
        format!("https://s3.{}.amazonaws.com", settings.region)
    } else {
        settings.endpoint.clone()
    };
    let style = if settings.path_style {
        rusty_s3::UrlStyle::Path
    } else {
        rusty_s3::UrlStyle::VirtualHost
    };
    let endpoint = endpoint.parse().map_err(s3_error)?;
    rusty_s3::Bucket::new(endpoint, style, bucket.to_string(), settings.region.clone())
        .map_err(s3_error)
}

/// The store's current credentials (static, from the environment, or the instance role's), for
/// the requests Prism signs itself.
async fn signing_credentials(
    credentials: &AwsCredentialProvider,
) -> Result<rusty_s3::Credentials, StoreError> {
    let credential = credentials.get_credential().await?;
    Ok(match &credential.token {
        Some(token) => {
            rusty_s3::Credentials::new_with_token(&credential.key_id, &credential.secret_key, token)
        }
        None => rusty_s3::Credentials::new(&credential.key_id, &credential.secret_key),
    })
}

/// Creates an S3 bucket; one that exists already (409 BucketAlreadyOwnedByYou) is fine.
async fn create_s3_bucket(
    settings: &S3Settings,
    client: &reqwest::Client,
    credentials: &AwsCredentialProvider,
    bucket: &str,
) -> Result<(), StoreError> {
    let credentials = signing_credentials(credentials).await?;
    let target = signing_bucket(settings, bucket)?;
    let action = target.create_bucket(&credentials);
    let url = rusty_s3::S3Action::sign(&action, LIST_REQUEST_TTL);
    let response = client.put(url).send().await.map_err(s3_error)?;
    let status = response.status();
    if status.is_success() || status == reqwest::StatusCode::CONFLICT {
        return Ok(());
    }
    let body = response.text().await.map_err(s3_error)?;
    Err(object_store::Error::Generic {
        store: "S3",
        source: format!("creating bucket {bucket}: {status}: {body}").into(),
    }
    .into())
}

/// Lists one page of an S3 bucket with ListObjectsV2 directly. object_store's listing turns each
/// key into a `Path` and fails the whole page on one it cannot represent (`a//b`, `../x`, a tab),
/// so this asks for URL-encoded keys (any key survives XML), then sets aside the ones Prism cannot
/// read back. Pages are chained by `start-after` rather than continuation tokens, so a listing
/// can resume from a stored key after a restart.
async fn list_s3(
    settings: &S3Settings,
    client: &reqwest::Client,
    credentials: &AwsCredentialProvider,
    bucket: &str,
    range: KeyRange<'_>,
) -> Result<Page, StoreError> {
    let credentials = signing_credentials(credentials).await?;
    let target = signing_bucket(settings, bucket)?;
    let mut action = target.list_objects_v2(Some(&credentials));
    if !range.prefix.is_empty() {
        action.with_prefix(range.prefix);
    }
    if let Some(after) = range.after {
        action.with_start_after(after);
    }
    action.with_max_keys(range.max_keys.clamp(1, LIST_PAGE_KEYS));
    let url = rusty_s3::S3Action::sign(&action, LIST_REQUEST_TTL);
    let response = client.get(url).send().await.map_err(s3_error)?;
    let status = response.status();
    let body = response.text().await.map_err(s3_error)?;
    if !status.is_success() {
        return Err(s3_error(std::io::Error::other(format!(
            "listing bucket {bucket:?}: {status}: {body}"
        ))));
    }
    let page = rusty_s3::actions::ListObjectsV2::parse_response(&body).map_err(|error| {
        s3_error(std::io::Error::other(format!(
            "listing bucket {bucket:?}: unreadable response: {error}"
        )))
    })?;
    let truncated = page.next_continuation_token.is_some();
    let next = page
        .contents
        .last()
        .map(|content| content.key.clone())
        .filter(|_| truncated);
    let mut listing = Listing::default();
    for content in page.contents {
        if object_path(&content.key).is_err() {
            listing.unlisted.push(Unlisted {
                name: content.key,
                reason: NOT_A_KEY,
            });
            continue;
        }
        let last_modified = content
            .last_modified
            .as_deref()
            .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
            .map(|at| at.with_timezone(&Utc))
            .unwrap_or_default();
        listing.objects.push(ListedObject {
            source: SourceObject {
                bucket: bucket.to_string(),
                key: content.key,
                etag: content
                    .etag
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_string(),
                size: content.size.unwrap_or_default(),
                batch_job: None,
            },
            last_modified,
        });
    }
    Ok(Page { listing, next })
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
pub(crate) mod tests {
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

    /// A folder under the system temp dir, removed at the end of the test.
    pub(crate) struct ScratchDir(pub std::path::PathBuf);

    impl ScratchDir {
        pub(crate) fn new() -> Self {
            let dir =
                std::env::temp_dir().join(format!("prism-store-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            ScratchDir(dir)
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn folder_listing_sets_aside_what_it_cannot_read_back_and_never_follows_links() {
        use std::os::unix::ffi::OsStrExt;
        let scratch = ScratchDir::new();
        let dir = scratch.0.join("in");
        std::fs::create_dir_all(dir.join("sub dir")).unwrap();
        std::fs::write(dir.join("good.jpg"), b"good").unwrap();
        std::fs::write(dir.join("sub dir/ok %20+.png"), b"ok").unwrap();
        std::fs::write(dir.join("tab\there.jpg"), b"x").unwrap();
        std::fs::write(dir.join("new\nline.jpg"), b"x").unwrap();
        // object_store keeps unfinished writes as `name#<n>` and cannot read such a name back.
        std::fs::write(dir.join("upload.jpg#1"), b"x").unwrap();
        std::fs::write(
            dir.join(std::ffi::OsStr::from_bytes(b"latin1-\xe9.jpg")),
            b"x",
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd.jpg")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("etc")).unwrap();
        std::os::unix::fs::symlink("good.jpg", dir.join("inside-link.jpg")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(dir.join("pipe.jpg"))
            .status()
            .expect("mkfifo (coreutils) is needed for this test");
        assert!(fifo.success());

        let buckets = Buckets::folders(HashMap::from([("in".to_string(), dir.clone())]));
        let listing = buckets.list("in").await.unwrap();
        let keys: Vec<&str> = listing
            .objects
            .iter()
            .map(|o| o.source.key.as_str())
            .collect();
        assert_eq!(keys, ["good.jpg", "sub dir/ok %20+.png"]);
        let good = &listing.objects[0].source;
        assert_eq!((good.bucket.as_str(), good.size), ("in", 4));
        let mut unlisted: Vec<(&str, &str)> = listing
            .unlisted
            .iter()
            .map(|u| (u.name.as_str(), u.reason))
            .collect();
        unlisted.sort();
        assert_eq!(
            unlisted,
            [
                ("etc", "symbolic link (not followed)"),
                ("inside-link.jpg", "symbolic link (not followed)"),
                ("latin1-\u{fffd}.jpg", "name is not UTF-8"),
                ("new\nline.jpg", NOT_A_KEY),
                ("passwd.jpg", "symbolic link (not followed)"),
                ("pipe.jpg", "not a regular file"),
                ("tab\there.jpg", NOT_A_KEY),
                ("upload.jpg#1", NOT_A_KEY),
            ]
        );
        // Every listed key reads back; an event naming a link is refused, not followed.
        for object in &listing.objects {
            buckets.read("in", &object.source.key, 100).await.unwrap();
        }
        for link in ["passwd.jpg", "etc/passwd", "inside-link.jpg"] {
            let error = buckets.read("in", link, 1 << 20).await.unwrap_err();
            assert_eq!(error.code(), "symbolic_link", "{link}: {error}");
            assert!(!error.is_transient());
        }
        // A rewrite changes the ETag, so the watcher announces it again.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(dir.join("good.jpg"), b"better").unwrap();
        let again = buckets.list("in").await.unwrap();
        assert_ne!(again.objects[0].source.etag, good.etag);
    }

    #[tokio::test]
    async fn memory_listing_is_sorted_and_complete() {
        let buckets = Buckets::memory();
        for key in ["b/c.jpg", "a.jpg", "b c.jpg"] {
            buckets
                .write("in", key, Bytes::from_static(b"x"), "image/jpeg")
                .await
                .unwrap();
        }
        let listing = buckets.list("in").await.unwrap();
        let keys: Vec<&str> = listing
            .objects
            .iter()
            .map(|o| o.source.key.as_str())
            .collect();
        assert_eq!(keys, ["a.jpg", "b c.jpg", "b/c.jpg"]);
        assert!(listing.unlisted.is_empty());
        assert!(listing.objects.iter().all(|o| !o.source.etag.is_empty()));
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

        let listed = buckets.list("in").await.unwrap().objects.remove(0).source;
        let hashed = buckets.hash(&listed, 10_000).await.unwrap();
        assert_eq!(
            (hashed.hash, hashed.size, hashed.etag),
            (expected.clone(), 10_000, listed.etag.clone())
        );
        let (bytes, hash) = buckets.read("in", "dir/x y.bin", 10_000).await.unwrap();
        assert_eq!((bytes, hash), (content, expected));

        let error = buckets.read("in", "dir/x y.bin", 9_999).await.unwrap_err();
        assert_eq!(error.code(), "too_many_bytes");
        let missing = SourceObject {
            key: "missing".into(),
            ..listed
        };
        let error = buckets.hash(&missing, 10).await.unwrap_err();
        assert_eq!(error.code(), "object_not_found");
        assert!(!error.is_transient());
    }

    /// A streamed write stores what arrived, hashed, with the ETag a read sees; past the limit or
    /// after a broken body nothing is stored.
    async fn assert_streamed_writes_store_whole_uploads_only(buckets: Buckets) {
        let chunks = || {
            futures::stream::iter(
                [&b"hello "[..], b"streamed ", b"world"]
                    .map(|chunk| Ok::<_, std::io::Error>(Bytes::from_static(chunk))),
            )
        };
        let written = buckets
            .write_stream("in", "web/s/1/a b.jpg", "image/jpeg", 100, chunks())
            .await
            .unwrap();
        assert_eq!(written.hash, ContentHash::of(b"hello streamed world"));
        assert_eq!(written.size, 20);
        let head = buckets.head("in", "web/s/1/a b.jpg").await.unwrap();
        assert_eq!((head.size, &head.etag), (20, &written.etag));
        let opened = buckets.open_object("in", "web/s/1/a b.jpg").await.unwrap();
        assert_eq!(opened.size, 20);
        let bytes: Vec<Bytes> = opened.bytes.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), b"hello streamed world");

        let error = buckets
            .write_stream("in", "too-big.jpg", "image/jpeg", 10, chunks())
            .await
            .unwrap_err();
        assert_eq!(error.code(), "too_many_bytes");
        let broken = futures::stream::iter([
            Ok(Bytes::from_static(b"part")),
            Err(std::io::Error::other("client went away")),
        ]);
        let error = buckets
            .write_stream("in", "broken.jpg", "image/jpeg", 100, broken)
            .await
            .unwrap_err();
        assert_eq!(error.code(), "upload_interrupted");
        for refused in ["too-big.jpg", "broken.jpg"] {
            let error = buckets.head("in", refused).await.unwrap_err();
            assert_eq!(error.code(), "object_not_found", "{refused}");
        }
        assert_eq!(
            buckets
                .open_object("in", "missing.jpg")
                .await
                .err()
                .unwrap()
                .code(),
            "object_not_found"
        );
    }

    #[tokio::test]
    async fn streamed_writes_in_memory() {
        assert_streamed_writes_store_whole_uploads_only(Buckets::memory()).await;
    }

    #[tokio::test]
    async fn streamed_writes_in_a_folder() {
        let scratch = ScratchDir::new();
        let buckets = Buckets::folders(HashMap::from([("in".to_string(), scratch.0.clone())]));
        assert_streamed_writes_store_whole_uploads_only(buckets).await;
    }

    /// Writes `body` as `key` in bucket `in` and lists it back, ETag included.
    async fn put_and_list(buckets: &Buckets, key: &str, body: &'static [u8]) -> SourceObject {
        buckets
            .write("in", key, Bytes::from_static(body), "image/jpeg")
            .await
            .unwrap();
        let listing = buckets.list("in").await.unwrap();
        let listed = listing.objects.into_iter().find(|o| o.source.key == key);
        listed.unwrap().source
    }

    /// The version an event announced is hashed, or none: never another version's bytes under its
    /// ETag.
    async fn assert_hashes_only_the_announced_version(buckets: Buckets) {
        let first = put_and_list(&buckets, "a.jpg", b"first").await;
        assert_eq!(
            buckets.hash(&first, 100).await.unwrap().hash,
            ContentHash::of(b"first")
        );
        // Folder ETags change with the modification time, which must move on.
        std::thread::sleep(std::time::Duration::from_millis(10));
        let second = put_and_list(&buckets, "a.jpg", b"second").await;
        assert_ne!(first.etag, second.etag);

        let error = buckets.hash(&first, 100).await.unwrap_err();
        assert_eq!(error.code(), "content_changed");
        assert!(!error.is_transient());
        assert!(error.to_string().contains("overwritten"), "{error}");

        let hashed = buckets.hash(&second, 100).await.unwrap();
        assert_eq!(
            (hashed.hash, hashed.etag.as_str()),
            (ContentHash::of(b"second"), second.etag.as_str())
        );
        // An event without an ETag cannot be checked: it learns the ETag of what was hashed.
        let unversioned = SourceObject {
            etag: String::new(),
            ..second.clone()
        };
        assert_eq!(
            buckets.hash(&unversioned, 100).await.unwrap().etag,
            second.etag
        );
        // S3 quotes ETags, MinIO's events do not: both name the same version.
        let quoted = SourceObject {
            etag: format!("\"{}\"", second.etag),
            ..second
        };
        assert!(buckets.hash(&quoted, 100).await.is_ok());
    }

    #[tokio::test]
    async fn an_object_overwritten_after_its_event_is_refused_in_memory() {
        assert_hashes_only_the_announced_version(Buckets::memory()).await;
    }

    #[tokio::test]
    async fn an_object_overwritten_after_its_event_is_refused_in_a_folder() {
        let scratch = ScratchDir::new();
        let folders = HashMap::from([("in".to_string(), scratch.0.clone())]);
        assert_hashes_only_the_announced_version(Buckets::folders(folders)).await;
    }
}
