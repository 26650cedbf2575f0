//! Claims in CouchDB through couch_rs: `POST /db` with an `_id` is the atomic claim (409 if taken),
//! `PUT` with the current `_rev` the compare-and-swap update.

use super::{Claim, ClaimIndex, ClaimStatus, HandledUpload, IndexError};
use crate::runtime::config::{CouchSettings, resolve_secret};
use async_trait::async_trait;
use couch_rs::{Client, database::Database, document::TypedCouchDocument, error::CouchError};
use http::StatusCode;
use std::borrow::Cow;
use std::collections::HashMap;

/// Both document types carry `_id` and `_rev` as `id` and `rev`.
macro_rules! couch_document {
    ($type:ty) => {
        impl TypedCouchDocument for $type {
            fn get_id(&self) -> Cow<'_, str> {
                Cow::Borrowed(&self.id)
            }
            fn get_rev(&self) -> Cow<'_, str> {
                Cow::Borrowed(&self.rev)
            }
            fn set_rev(&mut self, rev: &str) {
                self.rev = rev.to_string();
            }
            fn set_id(&mut self, id: &str) {
                self.id = id.to_string();
            }
            fn merge_ids(&mut self, other: &Self) {
                self.id = other.id.clone();
                self.rev = other.rev.clone();
            }
        }
    };
}

couch_document!(Claim);
couch_document!(HandledUpload);

/// Batch job documents keep `_id` apart from the job's own id.
macro_rules! couch_document_by_doc_id {
    ($type:ty) => {
        impl TypedCouchDocument for $type {
            fn get_id(&self) -> Cow<'_, str> {
                Cow::Borrowed(&self.doc_id)
            }
            fn get_rev(&self) -> Cow<'_, str> {
                Cow::Borrowed(&self.rev)
            }
            fn set_rev(&mut self, rev: &str) {
                self.rev = rev.to_string();
            }
            fn set_id(&mut self, id: &str) {
                self.doc_id = id.to_string();
            }
            fn merge_ids(&mut self, other: &Self) {
                self.doc_id = other.doc_id.clone();
                self.rev = other.rev.clone();
            }
        }
    };
}

couch_document_by_doc_id!(crate::ports::batch::BatchJob);
couch_document_by_doc_id!(crate::ports::batch::JobItem);

/// Ids asked for in one `_all_docs` request: a bounded request body however many are wanted.
const IDS_PER_REQUEST: usize = 500;

/// Upper bound on one status listing; reconciliation works in passes, so this only sizes a pass.
const MAX_CLAIMS_LISTED: u64 = 100_000;

pub struct CouchIndex {
    pub(crate) client: Client,
    pub(crate) db: Database,
    pub(crate) database: String,
}

pub(crate) fn unavailable(error: CouchError) -> IndexError {
    IndexError::Unavailable(describe(&error))
}

/// couch_rs reports a request that never got an answer (connection refused, timeout) with the
/// status 501 Not Implemented, which would send a reader looking for the wrong fault.
fn describe(error: &CouchError) -> String {
    match error {
        CouchError::OperationFailed(details) if details.status == StatusCode::NOT_IMPLEMENTED => {
            format!("no answer from CouchDB: {}", details.message)
        }
        other => other.to_string(),
    }
}

impl CouchIndex {
    /// Writes documents through `_bulk_docs`: a new one is created unless its id exists, an
    /// existing one replaced if its `_rev` is current; a conflict (409) is `false`, not an error.
    pub(crate) async fn write_all<T: TypedCouchDocument + Clone>(
        &self,
        claims: &mut [T],
    ) -> Result<Vec<bool>, IndexError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        // couch_rs pairs the answers with the documents by position and sets ids and revisions
        // so; under the fault test a thumbnail claim came back with its detect twin's id (pouchdb
        // answering out of order), and the thumbnail worker finished the detect claim. Answers are
        // matched by id instead, on a copy couch_rs may scribble on.
        let mut sent = claims.to_vec();
        let outcomes = self.db.bulk_docs(&mut sent).await.map_err(unavailable)?;
        let mut answers: HashMap<String, Result<String, CouchError>> = HashMap::new();
        for outcome in outcomes {
            match outcome {
                Ok(created) => {
                    answers.insert(created.id, Ok(created.rev));
                }
                Err(CouchError::OperationFailed(details)) if details.id.is_some() => {
                    let id = details.id.clone().unwrap_or_default();
                    answers.insert(id, Err(CouchError::OperationFailed(details)));
                }
                Err(error) => return Err(unavailable(error)),
            }
        }
        claims
            .iter_mut()
            .map(|claim| match answers.remove(claim.get_id().as_ref()) {
                Some(Ok(rev)) => {
                    claim.set_rev(&rev);
                    Ok(true)
                }
                Some(Err(error)) if is_conflict(&error) => Ok(false),
                Some(Err(error)) => Err(unavailable(error)),
                None => Err(IndexError::Unavailable(format!(
                    "CouchDB gave no answer for document {}",
                    claim.get_id()
                ))),
            })
            .collect()
    }

    /// The documents with these ids that exist, through `_all_docs`, a bounded number per request.
    async fn read_all<T: TypedCouchDocument>(&self, ids: &[String]) -> Result<Vec<T>, IndexError> {
        let mut found = Vec::new();
        for chunk in ids.chunks(IDS_PER_REQUEST) {
            let documents = self
                .db
                .get_bulk::<T>(chunk.to_vec())
                .await
                .map_err(unavailable)?;
            found.extend(documents.rows);
        }
        Ok(found)
    }

    /// Claims in a status (at most a few thousand), for inspection and tests.
    pub async fn with_status(&self, status: ClaimStatus) -> Result<Vec<Claim>, IndexError> {
        let query = couch_rs::types::find::FindQuery::new(serde_json::json!({ "status": status }))
            .limit(MAX_CLAIMS_LISTED);
        let found = self.db.find::<Claim>(&query).await.map_err(unavailable)?;
        Ok(found.rows)
    }

    /// Connects and creates the database if it is missing.
    pub async fn connect(settings: &CouchSettings) -> Result<Self, IndexError> {
        let password = resolve_secret(&settings.password, settings.password_file.as_deref())
            .map_err(|error| {
                IndexError::Unavailable(format!("cannot read the CouchDB password file: {error}"))
            })?;
        let client = Client::new(&settings.url, &settings.username, password.expose())
            .map_err(unavailable)?;
        let db = match client.db(&settings.database).await {
            // Another replica created it between our look and our create: it exists, use it.
            Err(error) if error.status() == Some(StatusCode::PRECONDITION_FAILED) => {
                client.db(&settings.database).await
            }
            other => other,
        }
        .map_err(unavailable)?;
        restrict_if_open(&client, &settings.database).await?;
        let index = CouchIndex {
            client,
            db,
            database: settings.database.clone(),
        };
        index.ensure_job_views().await?;
        Ok(index)
    }
}

/// A database with no `_security` document is readable by anyone on pouchdb-server (CouchDB 3 makes
/// it admin-only). Give such a database CouchDB 3's default, admins only; a security document an
/// operator wrote (compose's init does, for its least-privilege user) is left alone.
async fn restrict_if_open(client: &Client, database: &str) -> Result<(), IndexError> {
    let path = format!("/{database}/_security");
    let failed =
        |error: &dyn std::fmt::Display| IndexError::Unavailable(format!("{path}: {error}"));
    let current = client
        .req(http::Method::GET, &path, None)
        .send()
        .await
        .map_err(|e| failed(&e))?
        .text()
        .await
        .map_err(|e| failed(&e))?;
    let current: serde_json::Value = serde_json::from_str(&current).map_err(|e| failed(&e))?;
    if current.as_object().is_some_and(|fields| !fields.is_empty()) {
        return Ok(());
    }
    let restricted = serde_json::json!({
        "admins": { "names": [], "roles": [] },
        "members": { "names": [], "roles": ["_admin"] },
    });
    let response = client
        .req(http::Method::PUT, &path, None)
        .body(restricted.to_string())
        .send()
        .await
        .map_err(|e| failed(&e))?;
    if !response.status().is_success() {
        // Not a server admin: whoever set up the database owns its security.
        tracing::warn!(%database, status = %response.status(), "database has no _security and we may not set one");
    }
    Ok(())
}

pub(crate) fn is_conflict(error: &CouchError) -> bool {
    error.status() == Some(StatusCode::CONFLICT)
}

#[async_trait]
impl ClaimIndex for CouchIndex {
    async fn create_all(&self, claims: &mut [Claim]) -> Result<Vec<bool>, IndexError> {
        self.write_all(claims).await
    }

    async fn get_all(&self, ids: &[String]) -> Result<Vec<Option<Claim>>, IndexError> {
        let mut found: HashMap<String, Claim> = self
            .read_all::<Claim>(ids)
            .await?
            .into_iter()
            .map(|claim| (claim.id.clone(), claim))
            .collect();
        Ok(ids.iter().map(|id| found.remove(id)).collect())
    }

    async fn replace_all(&self, claims: &mut [Claim]) -> Result<Vec<bool>, IndexError> {
        self.write_all(claims).await
    }

    async fn remove(&self, claim: &Claim) -> Result<bool, IndexError> {
        match self.db.remove(claim).await {
            Ok(()) => Ok(true),
            Err(error) if error.is_not_found() => Ok(true),
            Err(error) if is_conflict(&error) => Ok(false),
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn record_handled(&self, uploads: &[HandledUpload]) -> Result<(), IndexError> {
        if uploads.is_empty() {
            return Ok(());
        }
        let mut documents = uploads.to_vec();
        let outcomes = self
            .db
            .bulk_docs(&mut documents)
            .await
            .map_err(unavailable)?;
        for outcome in outcomes {
            match outcome {
                // A conflict: recorded before (a redelivered or re-emitted upload).
                Err(error) if !is_conflict(&error) => return Err(unavailable(error)),
                _ => {}
            }
        }
        Ok(())
    }

    async fn handled(&self, ids: &[String]) -> Result<Vec<HandledUpload>, IndexError> {
        self.read_all(ids).await
    }
}
