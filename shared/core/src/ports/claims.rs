//! Dedup claims: one document per (stage fingerprint, content hash), created atomically.
//!
//! Creating the document is the claim: the store refuses a second create with the same `_id`
//! (CouchDB answers 409), so exactly one upload of a content runs each stage. The document then
//! records the outcome, the sources seen, and the uploads waiting for a result in flight.
//!
//! The protocol lives here, over the small [`ClaimIndex`] port, so dedup and the stage workers share
//! it and it can be tested without a server.
//!
//! Beside the claims the index keeps a ledger of uploads dedup has handled (one small document per
//! bucket, key and ETag), which `prism reconcile` checks the input bucket against to find uploads
//! whose notification was lost. Dedup records an upload as it admits it, before the consumer loop
//! publishes its messages: should those not go out, the event is redelivered (its offset was never
//! committed), so such an upload needs no reconcile.

pub mod couch;
pub mod memory;

use crate::contract::{
    Classify, ErrorReport, Job, Origin, OutputObject, SCHEMA_VERSION, SourceObject, StageName,
    StageResult, Timings,
};
use crate::runtime::observe;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Sources listed on a claim; past this only the count grows, so a popular image can't bloat it.
pub const MAX_LISTED_SOURCES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimStatus {
    Processing,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenSource {
    pub source: SourceObject,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_rev", default, skip_serializing_if = "String::is_empty")]
    pub rev: String,
    pub stage: StageName,
    pub fingerprint: String,
    pub content_hash: String,
    pub status: ClaimStatus,
    /// While processing: after this, the claim may be taken over.
    pub lease_expires_at: DateTime<Utc>,
    /// How many times work on this content was started.
    pub attempts: u32,
    pub first_source: SeenSource,
    /// Uploads of this content (the first [`MAX_LISTED_SOURCES`]).
    pub sources: Vec<SeenSource>,
    pub sources_seen: u64,
    /// Uploads that arrived while processing; the worker publishes their results when it finishes.
    pub waiters: Vec<SeenSource>,
    pub outputs: Vec<OutputObject>,
    /// Stage-specific result fields, kept in the index as JSON text: pouchdb-server stores
    /// numbers as JavaScript doubles and gives `810.0` back as `810`, and a result issued from
    /// the claim must read exactly as the fresh one.
    #[serde(with = "payload_text")]
    pub payload: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReport>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// An upload dedup has admitted: its jobs, results or dead letters are published, or will be when
/// the event in `origin` is (re)delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandledUpload {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_rev", default, skip_serializing_if = "String::is_empty")]
    pub rev: String,
    pub upload: SourceObject,
    /// The event dedup admitted the upload from: its redelivery is admitted again, any other
    /// re-emission of the upload is not.
    pub origin: Origin,
    pub handled_at: DateTime<Utc>,
}

impl HandledUpload {
    pub fn new(upload: &SourceObject, origin: &Origin) -> Self {
        HandledUpload {
            id: ledger_id(upload),
            rev: String::new(),
            upload: upload.clone(),
            origin: origin.clone(),
            handled_at: Utc::now(),
        }
    }
}

/// `upload:<blake3 of bucket, key and ETag>`: short and safe as a CouchDB `_id` whatever the key
/// (keys may be 1 KiB long or start with `_`, which CouchDB reserves). The ETag makes an
/// overwritten object a new upload.
pub fn ledger_id(upload: &SourceObject) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [&upload.bucket, &upload.key, &upload.etag] {
        // Length-prefixed, so no two (bucket, key, ETag) triples hash the same bytes.
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    format!("upload:{}", hasher.finalize().to_hex())
}

/// `<stage>:<fingerprint>:<blake3>`: the same content under other parameters is other work.
pub fn claim_id(stage: StageName, fingerprint: &str, content_hash: &str) -> String {
    format!("{stage}:{fingerprint}:{content_hash}")
}

impl Claim {
    /// A claim on `work` for the upload `seen`, processing until `lease_expires_at`.
    fn new(id: &str, work: &Work<'_>, seen: &SeenSource, lease_expires_at: DateTime<Utc>) -> Self {
        let now = Utc::now();
        Claim {
            id: id.to_string(),
            rev: String::new(),
            stage: work.stage,
            fingerprint: work.fingerprint.to_string(),
            content_hash: work.content_hash.to_string(),
            status: ClaimStatus::Processing,
            lease_expires_at,
            attempts: 1,
            first_source: seen.clone(),
            sources: vec![seen.clone()],
            sources_seen: 1,
            waiters: Vec::new(),
            outputs: Vec::new(),
            payload: Map::new(),
            error: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
        }
    }

    /// What this existing claim means for one more upload of its content, noting the upload on
    /// the claim (to be stored before the admission counts).
    fn admit(
        &mut self,
        work: &Work<'_>,
        seen: &SeenSource,
        now: DateTime<Utc>,
        lease: Duration,
        elapsed: Duration,
    ) -> Admission {
        self.updated_at = now;
        match self.status {
            ClaimStatus::Done => {
                self.note_source(seen);
                // The upload that was processed, redelivered (its consumer died before committing),
                // gets the same result again: not deduplicated.
                let deduplicated = self.first_source.source != seen.source;
                Admission::Done(Box::new(self.result_for(seen, deduplicated, elapsed)))
            }
            ClaimStatus::Failed => {
                self.note_source(seen);
                let earlier = self.error.clone().unwrap_or_else(|| ErrorReport {
                    kind: crate::contract::ErrorKind::Permanent,
                    code: "failed_earlier".into(),
                    reason: String::new(),
                });
                Admission::Failed(ErrorReport {
                    reason: format!(
                        "the same content failed earlier in stage {}: {}",
                        work.stage, earlier.reason
                    ),
                    ..earlier
                })
            }
            ClaimStatus::Processing => {
                let redelivered = self.first_source.source == seen.source;
                let expired = self.lease_expires_at <= now;
                if !redelivered && !self.waiters.iter().any(|w| w.source == seen.source) {
                    self.note_source(seen);
                    self.waiters.push(seen.clone());
                }
                if redelivered || expired {
                    // Whoever held the work may have died before publishing it: run it again.
                    self.lease_expires_at = now + lease;
                    self.attempts += 1;
                    Admission::Run(self.job())
                } else {
                    Admission::Waiting
                }
            }
        }
    }

    fn note_source(&mut self, seen: &SeenSource) {
        self.sources_seen += 1;
        if self.sources.len() < MAX_LISTED_SOURCES
            && !self.sources.iter().any(|s| s.source == seen.source)
        {
            self.sources.push(seen.clone());
        }
    }

    fn job(&self) -> Job {
        Job {
            schema_version: SCHEMA_VERSION,
            stage: self.stage,
            fingerprint: self.fingerprint.clone(),
            claim_id: self.id.clone(),
            content_hash: self.content_hash.clone(),
            source: self.first_source.source.clone(),
            received_at: self.first_source.received_at,
        }
    }

    /// The result for `seen`, from this claim's finished outputs.
    pub fn result_for(
        &self,
        seen: &SeenSource,
        deduplicated: bool,
        processing: Duration,
    ) -> StageResult {
        StageResult {
            schema_version: SCHEMA_VERSION,
            source: seen.source.clone(),
            content_hash: self.content_hash.clone(),
            stage: self.stage,
            fingerprint: self.fingerprint.clone(),
            deduplicated,
            outputs: self.outputs.clone(),
            payload: self.payload.clone(),
            timings: Timings {
                received_at: seen.received_at,
                finished_at: Utc::now(),
                processing_ms: processing.as_millis() as u64,
                batch_size: None,
            },
        }
    }
}

/// A claim's payload as a JSON string inside the claim document.
mod payload_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use serde_json::{Map, Value};

    pub fn serialize<S: Serializer>(
        payload: &Map<String, Value>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&Value::Object(payload.clone()).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Map<String, Value>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Text(String),
            /// Claims written before payloads were kept as text.
            Fields(Map<String, Value>),
        }
        match Stored::deserialize(deserializer)? {
            Stored::Text(text) => serde_json::from_str(&text).map_err(D::Error::custom),
            Stored::Fields(fields) => Ok(fields),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("dedup index (CouchDB) unavailable: {0}")]
    Unavailable(String),
    #[error("claim {0:?} disappeared while it was being updated")]
    Vanished(String),
}

impl Classify for IndexError {
    /// The server comes back; a vanished claim is read again on the retry.
    fn is_transient(&self) -> bool {
        true
    }

    fn code(&self) -> &'static str {
        match self {
            IndexError::Unavailable(_) => "dedup_index_unavailable",
            IndexError::Vanished(_) => "claim_vanished",
        }
    }
}

/// The storage a claim lives in: CouchDB, or memory for the embedded mode. Claims are read and
/// written in bulk, so dedup pays a few round trips per batch of uploads, not per upload.
#[async_trait]
pub trait ClaimIndex: Send + Sync {
    /// Stores new claims (ids distinct); for each, `false` when a claim with its id exists. Sets
    /// `rev` on those stored.
    async fn create_all(&self, claims: &mut [Claim]) -> Result<Vec<bool>, IndexError>;
    /// The claims with these ids, `None` for those that do not exist.
    async fn get_all(&self, ids: &[String]) -> Result<Vec<Option<Claim>>, IndexError>;
    /// Replaces each claim (ids distinct) if its `rev` is still current; for each, `false` if
    /// someone else changed or removed it.
    async fn replace_all(&self, claims: &mut [Claim]) -> Result<Vec<bool>, IndexError>;
    /// Removes the claim if its `rev` is still current (or it is gone already); `Ok(false)` if
    /// someone else changed it.
    async fn remove(&self, claim: &Claim) -> Result<bool, IndexError>;
    /// Adds uploads to the ledger; one recorded before stays as it was.
    async fn record_handled(&self, uploads: &[HandledUpload]) -> Result<(), IndexError>;
    /// The ledger's records of these ids ([`ledger_id`]); ids never recorded are left out.
    async fn handled(&self, ids: &[String]) -> Result<Vec<HandledUpload>, IndexError>;

    async fn get(&self, id: &str) -> Result<Option<Claim>, IndexError> {
        Ok(self.get_all(&[id.to_string()]).await?.pop().flatten())
    }

    /// [`ClaimIndex::replace_all`] for one claim.
    async fn replace(&self, claim: &mut Claim) -> Result<bool, IndexError> {
        Ok(self.replace_all(std::slice::from_mut(claim)).await?[0])
    }
}

/// What dedup does with an upload for one stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// New content (or a claim taken over): publish this job.
    Run(Job),
    /// Processed before: publish this result, marked deduplicated.
    Done(Box<StageResult>),
    /// Failed before: dead-letter the upload with this error.
    Failed(ErrorReport),
    /// A twin is in flight; its worker will publish this upload's result.
    Waiting,
}

/// The identity of one piece of work: a stage, its parameters, a content.
#[derive(Debug, Clone, Copy)]
pub struct Work<'a> {
    pub stage: StageName,
    pub fingerprint: &'a str,
    pub content_hash: &'a str,
}

/// Claims each piece of work for its upload, or finds out what became of the earlier claim, in a
/// few bulk round trips however many uploads: one create for every claim, then one read and one
/// update for those that existed. Uploads of one content share their claim's document in a round.
pub async fn admit_all(
    index: &dyn ClaimIndex,
    requests: &[(Work<'_>, SeenSource)],
    lease: Duration,
) -> Result<Vec<Admission>, IndexError> {
    let started = std::time::Instant::now();
    let mut admissions: Vec<Option<Admission>> = vec![None; requests.len()];
    let mut pending: Vec<usize> = (0..requests.len()).collect();
    while !pending.is_empty() {
        let now = Utc::now();
        let groups = by_claim(requests, &pending);
        let mut fresh: Vec<Claim> = groups
            .iter()
            .map(|(id, members)| {
                let (work, seen) = &requests[members[0]];
                Claim::new(id, work, seen, now + lease)
            })
            .collect();
        let created = index.create_all(&mut fresh).await?;
        let existing: Vec<String> = groups
            .iter()
            .zip(&created)
            .filter(|(_, created)| !**created)
            .map(|((id, _), _)| id.clone())
            .collect();
        let mut found = match existing.is_empty() {
            true => Vec::new(),
            false => index.get_all(&existing).await?,
        }
        .into_iter();

        pending = Vec::new();
        let mut updated = Vec::new();
        let mut decided = Vec::new();
        for ((_, members), (claim, created)) in
            groups.into_iter().zip(fresh.into_iter().zip(created))
        {
            let (mut claim, arrivals) = if created {
                admissions[members[0]] = Some(Admission::Run(claim.job()));
                (claim, &members[1..])
            } else {
                match found.next().expect("one lookup per claim that existed") {
                    Some(existing) => (existing, &members[..]),
                    None => {
                        // Removed between our create and our read: create it again.
                        pending.extend(members);
                        continue;
                    }
                }
            };
            if arrivals.is_empty() {
                continue;
            }
            let admitted: Vec<(usize, Admission)> = arrivals
                .iter()
                .map(|&index| {
                    let (work, seen) = &requests[index];
                    (
                        index,
                        claim.admit(work, seen, now, lease, started.elapsed()),
                    )
                })
                .collect();
            updated.push(claim);
            decided.push(admitted);
        }
        let replaced = match updated.is_empty() {
            true => Vec::new(),
            false => index.replace_all(&mut updated).await?,
        };
        for ((admitted, replaced), claim) in decided.into_iter().zip(replaced).zip(&updated) {
            if replaced {
                for (index, admission) in admitted {
                    admissions[index] = Some(admission);
                }
            } else {
                // Someone changed the claim meanwhile (a worker finished, another twin arrived):
                // look again.
                observe::claim_conflict(claim.stage);
                pending.extend(admitted.into_iter().map(|(index, _)| index));
            }
        }
    }
    Ok(admissions
        .into_iter()
        .map(|admission| admission.expect("every request admitted"))
        .collect())
}

/// [`admit_all`] for one upload.
#[cfg(test)]
pub(crate) async fn admit(
    index: &dyn ClaimIndex,
    work: Work<'_>,
    seen: SeenSource,
    lease: Duration,
) -> Result<Admission, IndexError> {
    Ok(admit_all(index, &[(work, seen)], lease).await?.remove(0))
}

/// The pending requests grouped by claim id, in order of first appearance.
fn by_claim(requests: &[(Work<'_>, SeenSource)], pending: &[usize]) -> Vec<(String, Vec<usize>)> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    let mut positions: HashMap<String, usize> = HashMap::new();
    for &index in pending {
        let work = &requests[index].0;
        let id = claim_id(work.stage, work.fingerprint, work.content_hash);
        match positions.get(&id) {
            Some(&group) => groups[group].1.push(index),
            None => {
                positions.insert(id.clone(), groups.len());
                groups.push((id, vec![index]));
            }
        }
    }
    groups
}

/// Passes on the claim of a job whose upload cannot be read (deleted or overwritten before the
/// stage got to it: a fault of that upload, not of its content). The first twin waiting on the
/// claim takes it over, and its job is returned to be published; with nobody waiting the claim is
/// removed, so the next upload of the content starts afresh. A job that no longer holds its claim
/// (a redelivery after the hand-over) changes nothing.
pub async fn hand_over(
    index: &dyn ClaimIndex,
    job: &Job,
    lease: Duration,
) -> Result<Option<Job>, IndexError> {
    loop {
        let Some(mut claim) = index.get(&job.claim_id).await? else {
            return Ok(None);
        };
        if claim.status != ClaimStatus::Processing || claim.first_source.source != job.source {
            return Ok(None);
        }
        if claim.waiters.is_empty() {
            if index.remove(&claim).await? {
                return Ok(None);
            }
            continue;
        }
        let now = Utc::now();
        claim.first_source = claim.waiters.remove(0);
        claim.attempts += 1;
        claim.lease_expires_at = now + lease;
        claim.updated_at = now;
        if index.replace(&mut claim).await? {
            return Ok(Some(claim.job()));
        }
        observe::claim_conflict(job.stage);
    }
}

/// Who gets a result when a claim finishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub claim: Claim,
    /// The upload the job was for (`deduplicated: false`) and then every waiter (`true`).
    pub recipients: Vec<(SeenSource, bool)>,
}

/// Records a job's outcome on its claim and says whom to tell.
pub async fn finish(
    index: &dyn ClaimIndex,
    job: &Job,
    outcome: Result<(Vec<OutputObject>, Map<String, Value>), ErrorReport>,
) -> Result<Finished, IndexError> {
    loop {
        let mut claim = index
            .get(&job.claim_id)
            .await?
            .ok_or_else(|| IndexError::Vanished(job.claim_id.clone()))?;
        let now = Utc::now();
        match &outcome {
            Ok((outputs, payload)) => {
                claim.status = ClaimStatus::Done;
                claim.outputs = outputs.clone();
                claim.payload = payload.clone();
                claim.error = None;
            }
            Err(error) => {
                claim.status = ClaimStatus::Failed;
                claim.error = Some(error.clone());
            }
        }
        claim.updated_at = now;
        claim.finished_at = Some(now);
        if index.replace(&mut claim).await? {
            let first = SeenSource {
                source: job.source.clone(),
                received_at: job.received_at,
            };
            let recipients = std::iter::once((first, false))
                .chain(claim.waiters.iter().cloned().map(|w| (w, true)))
                .collect();
            return Ok(Finished { claim, recipients });
        }
        observe::claim_conflict(job.stage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::ErrorKind;
    use crate::ports::claims::memory::MemoryIndex;

    const LEASE: Duration = Duration::from_secs(60);

    fn seen(key: &str) -> SeenSource {
        SeenSource {
            source: SourceObject {
                bucket: "in".into(),
                key: key.into(),
                etag: "e".into(),
                size: 3,
                batch_job: None,
            },
            received_at: Utc::now(),
        }
    }

    fn work() -> Work<'static> {
        Work {
            stage: StageName::Thumbnail,
            fingerprint: "fp",
            content_hash: "hash",
        }
    }

    #[tokio::test]
    async fn an_unreadable_upload_hands_its_claim_to_the_first_waiting_twin() {
        let index = MemoryIndex::default();
        let Admission::Run(first_job) = admit(&index, work(), seen("a.jpg"), LEASE).await.unwrap()
        else {
            panic!("new content runs");
        };
        for twin in ["b.jpg", "c.jpg"] {
            let admission = admit(&index, work(), seen(twin), LEASE).await.unwrap();
            assert_eq!(admission, Admission::Waiting);
        }
        // a.jpg was deleted before the stage read it: b.jpg takes over, c.jpg waits on.
        let next = hand_over(&index, &first_job, LEASE).await.unwrap().unwrap();
        assert_eq!(next.source.key, "b.jpg");
        assert_eq!(next.claim_id, first_job.claim_id);
        // The same failed job, redelivered, hands nothing over again.
        assert_eq!(hand_over(&index, &first_job, LEASE).await.unwrap(), None);

        let finished = finish(&index, &next, Ok((vec![output()], Map::new())))
            .await
            .unwrap();
        let recipients: Vec<(&str, bool)> = finished
            .recipients
            .iter()
            .map(|(seen, deduplicated)| (seen.source.key.as_str(), *deduplicated))
            .collect();
        assert_eq!(recipients, [("b.jpg", false), ("c.jpg", true)]);
    }

    #[tokio::test]
    async fn an_unreadable_upload_with_no_twin_releases_its_claim() {
        let index = MemoryIndex::default();
        let Admission::Run(job) = admit(&index, work(), seen("a.jpg"), LEASE).await.unwrap() else {
            panic!("new content runs");
        };
        assert_eq!(hand_over(&index, &job, LEASE).await.unwrap(), None);
        assert_eq!(index.get(&job.claim_id).await.unwrap(), None);
        let again = admit(&index, work(), seen("b.jpg"), LEASE).await.unwrap();
        assert!(matches!(again, Admission::Run(job) if job.source.key == "b.jpg"));
    }

    fn output() -> OutputObject {
        OutputObject {
            bucket: "out".into(),
            key: "thumbnails/hash/fp/128.jpg".into(),
            content_type: "image/jpeg".into(),
            width: Some(128),
            height: Some(96),
            bytes: 999,
        }
    }

    #[tokio::test]
    async fn first_upload_runs_twins_wait_and_all_get_the_result() {
        let index = MemoryIndex::default();
        let Admission::Run(job) = admit(&index, work(), seen("a.jpg"), LEASE).await.unwrap() else {
            panic!("first upload must run");
        };
        assert_eq!(job.claim_id, "thumbnail:fp:hash");
        assert_eq!(
            admit(&index, work(), seen("b.jpg"), LEASE).await.unwrap(),
            Admission::Waiting
        );
        // The same twin redelivered is not listed twice.
        assert_eq!(
            admit(&index, work(), seen("b.jpg"), LEASE).await.unwrap(),
            Admission::Waiting
        );

        let finished = finish(&index, &job, Ok((vec![output()], Map::new())))
            .await
            .unwrap();
        let recipients: Vec<(&str, bool)> = finished
            .recipients
            .iter()
            .map(|(s, dedup)| (s.source.key.as_str(), *dedup))
            .collect();
        assert_eq!(recipients, [("a.jpg", false), ("b.jpg", true)]);

        let Admission::Done(result) = admit(&index, work(), seen("c.jpg"), LEASE).await.unwrap()
        else {
            panic!("later copies get the earlier result");
        };
        assert!(result.deduplicated);
        assert_eq!(result.outputs, vec![output()]);
        assert_eq!(result.source.key, "c.jpg");
        // The processed upload redelivered gets its own result again, not a deduplicated one.
        let Admission::Done(again) = admit(&index, work(), seen("a.jpg"), LEASE).await.unwrap()
        else {
            panic!("a redelivered upload gets its result");
        };
        assert!(!again.deduplicated);
        assert_eq!(again.source.key, "a.jpg");
        let claim = index.get("thumbnail:fp:hash").await.unwrap().unwrap();
        assert_eq!(claim.sources_seen, 4);
        assert_eq!(claim.sources.len(), 3);
    }

    /// What JavaScript's JSON.stringify makes of `value`: a whole number has no fraction.
    fn as_javascript_writes_it(value: &mut Value) {
        match value {
            Value::Number(number) if number.as_f64().is_some_and(|n| n.fract() == 0.0) => {
                *value = Value::from(number.as_f64().unwrap() as i64);
            }
            Value::Array(items) => items.iter_mut().for_each(as_javascript_writes_it),
            Value::Object(fields) => fields.values_mut().for_each(as_javascript_writes_it),
            _ => {}
        }
    }

    #[tokio::test]
    async fn a_result_from_a_stored_claim_reads_the_same_as_the_fresh_one() {
        let index = MemoryIndex::default();
        let Admission::Run(job) = admit(&index, work(), seen("a.jpg"), LEASE).await.unwrap() else {
            panic!("first upload must run");
        };
        // As detect makes it: f32 corners, one clipped to the image's edge.
        let corners = serde_json::json!({"x1": 0.5f32, "y1": 228.75f32, "x2": 810.0f32, "y2": 0.0});
        let payload = Map::from_iter([(
            "detections".to_string(),
            serde_json::json!([{"class": "bus", "confidence": 0.87f32, "box": corners}]),
        )]);
        let finished = finish(&index, &job, Ok((vec![output()], payload)))
            .await
            .unwrap();
        let fresh = finished.claim.result_for(&seen("a.jpg"), false, LEASE);
        // The claim through pouchdb-server, which keeps documents as JavaScript objects.
        let mut document = serde_json::to_value(&finished.claim).unwrap();
        as_javascript_writes_it(&mut document);
        let stored: Claim = serde_json::from_value(document).unwrap();
        let deduplicated = stored.result_for(&seen("b.jpg"), true, LEASE);
        let payload = |result: &StageResult| serde_json::to_string(&result.payload).unwrap();
        assert_eq!(payload(&fresh), payload(&deduplicated));
        assert!(
            payload(&fresh).contains(r#""x2":810.0,"#),
            "{}",
            payload(&fresh)
        );
    }

    #[tokio::test]
    async fn claims_stored_with_their_payload_as_fields_still_read() {
        let index = MemoryIndex::default();
        admit(&index, work(), seen("a.jpg"), LEASE).await.unwrap();
        let claim = Claim {
            payload: Map::from_iter([("detections".to_string(), serde_json::json!([]))]),
            ..index.get("thumbnail:fp:hash").await.unwrap().unwrap()
        };
        let mut document = serde_json::to_value(&claim).unwrap();
        assert!(document["payload"].is_string(), "{}", document["payload"]);
        document["payload"] = serde_json::json!({"detections": []});
        let read: Claim = serde_json::from_value(document).unwrap();
        assert_eq!(read, claim);
    }

    #[tokio::test]
    async fn redelivered_and_expired_claims_run_again() {
        let index = MemoryIndex::default();
        // A lease of zero has always expired by the time anyone looks.
        let expired = Duration::ZERO;
        let Admission::Run(first) = admit(&index, work(), seen("a.jpg"), expired).await.unwrap()
        else {
            panic!()
        };
        // The same upload again (dedup crashed before publishing the job): run it again.
        let Admission::Run(again) = admit(&index, work(), seen("a.jpg"), expired).await.unwrap()
        else {
            panic!("a redelivered upload must re-publish its job")
        };
        assert_eq!(again.source, first.source);

        // A twin finds the lease expired and takes the work over, for the first source.
        let Admission::Run(taken) = admit(&index, work(), seen("b.jpg"), LEASE).await.unwrap()
        else {
            panic!("an expired claim must be taken over")
        };
        assert_eq!(taken.source.key, "a.jpg");
        // Now the lease is fresh: the next twin waits.
        assert_eq!(
            admit(&index, work(), seen("c.jpg"), LEASE).await.unwrap(),
            Admission::Waiting
        );
        let claim = index.get(&first.claim_id).await.unwrap().unwrap();
        assert_eq!(claim.attempts, 3);
        assert_eq!(claim.waiters.len(), 2);
    }

    #[tokio::test]
    async fn failures_are_remembered_for_later_copies() {
        let index = MemoryIndex::default();
        let Admission::Run(job) = admit(&index, work(), seen("bad.jpg"), LEASE).await.unwrap()
        else {
            panic!()
        };
        let error = ErrorReport {
            kind: ErrorKind::Permanent,
            code: "corrupt_image".into(),
            reason: "JPEG ends early".into(),
        };
        finish(&index, &job, Err(error)).await.unwrap();
        let Admission::Failed(report) = admit(&index, work(), seen("copy.jpg"), LEASE)
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(report.code, "corrupt_image");
        assert!(
            report.reason.contains("JPEG ends early"),
            "{}",
            report.reason
        );
        assert_eq!(
            index.with_status(ClaimStatus::Failed).await.unwrap().len(),
            1
        );
    }

    #[tokio::test]
    async fn concurrent_twins_produce_one_run() {
        let index = std::sync::Arc::new(MemoryIndex::default());
        let admissions = futures::future::join_all((0..16).map(|n| {
            let index = index.clone();
            async move {
                admit(&*index, work(), seen(&format!("{n}.jpg")), LEASE)
                    .await
                    .unwrap()
            }
        }))
        .await;
        let runs = admissions
            .iter()
            .filter(|a| matches!(a, Admission::Run(_)))
            .count();
        assert_eq!(runs, 1);
        let claim = index.get("thumbnail:fp:hash").await.unwrap().unwrap();
        assert_eq!(claim.waiters.len(), 15);
    }

    /// A [`MemoryIndex`] that counts the requests a server would get.
    #[derive(Default)]
    struct Counting {
        index: MemoryIndex,
        requests: std::sync::Mutex<Vec<&'static str>>,
    }

    #[async_trait]
    impl ClaimIndex for Counting {
        async fn create_all(&self, claims: &mut [Claim]) -> Result<Vec<bool>, IndexError> {
            self.requests.lock().unwrap().push("create");
            self.index.create_all(claims).await
        }
        async fn get_all(&self, ids: &[String]) -> Result<Vec<Option<Claim>>, IndexError> {
            self.requests.lock().unwrap().push("get");
            self.index.get_all(ids).await
        }
        async fn replace_all(&self, claims: &mut [Claim]) -> Result<Vec<bool>, IndexError> {
            self.requests.lock().unwrap().push("replace");
            self.index.replace_all(claims).await
        }
        async fn remove(&self, claim: &Claim) -> Result<bool, IndexError> {
            self.index.remove(claim).await
        }
        async fn record_handled(&self, uploads: &[HandledUpload]) -> Result<(), IndexError> {
            self.index.record_handled(uploads).await
        }
        async fn handled(&self, ids: &[String]) -> Result<Vec<HandledUpload>, IndexError> {
            self.index.handled(ids).await
        }
    }

    fn work_on(content_hash: &'static str) -> Work<'static> {
        Work {
            content_hash,
            ..work()
        }
    }

    #[tokio::test]
    async fn a_batch_is_admitted_in_bulk_and_twins_in_it_share_one_claim() {
        let index = Counting::default();
        let requests = [
            (work_on("a"), seen("a.jpg")),
            (work_on("b"), seen("b.jpg")),
            (work_on("a"), seen("a-copy.jpg")),
            (work_on("c"), seen("c.jpg")),
        ];
        let admissions = admit_all(&index, &requests, LEASE).await.unwrap();
        assert!(matches!(&admissions[0], Admission::Run(job) if job.source.key == "a.jpg"));
        assert!(matches!(&admissions[1], Admission::Run(job) if job.source.key == "b.jpg"));
        assert_eq!(admissions[2], Admission::Waiting);
        assert!(matches!(&admissions[3], Admission::Run(job) if job.source.key == "c.jpg"));
        // One create for the three claims; the twin is added to its claim in one update.
        assert_eq!(*index.requests.lock().unwrap(), ["create", "replace"]);
        let claim = index.get("thumbnail:fp:a").await.unwrap().unwrap();
        assert_eq!(claim.waiters.len(), 1);
        assert_eq!(claim.sources_seen, 2);

        // The same batch again (a redelivery): every claim exists; one create, one read, one
        // update for all of them, and the redelivered uploads run again.
        index.requests.lock().unwrap().clear();
        let again = admit_all(&index, &requests, LEASE).await.unwrap();
        assert_eq!(
            *index.requests.lock().unwrap(),
            ["create", "get", "replace"]
        );
        assert!(matches!(&again[0], Admission::Run(job) if job.source.key == "a.jpg"));
        assert_eq!(again[2], Admission::Waiting);
    }
}
