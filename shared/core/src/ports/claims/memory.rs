//! Claims in process memory, with CouchDB's revision rules, for the embedded mode and tests.

use super::{Claim, ClaimIndex, ClaimStatus, HandledUpload, IndexError};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

/// Claims, saved between runs, and the ledger of handled uploads, kept for one run only: each
/// `prism run` announces its whole folder again and wants an outcome for every file.
#[derive(Default)]
pub struct MemoryIndex {
    claims: Mutex<HashMap<String, Claim>>,
    handled: Mutex<HashMap<String, HandledUpload>>,
}

fn next_rev(rev: &str) -> String {
    let generation: u64 = rev
        .split('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    format!("{}-memory", generation + 1)
}

#[async_trait]
impl ClaimIndex for MemoryIndex {
    async fn create_all(&self, new: &mut [Claim]) -> Result<Vec<bool>, IndexError> {
        let mut claims = self.claims.lock().expect("index lock");
        Ok(new
            .iter_mut()
            .map(|claim| {
                if claims.contains_key(&claim.id) {
                    return false;
                }
                claim.rev = next_rev("");
                claims.insert(claim.id.clone(), claim.clone());
                true
            })
            .collect())
    }

    async fn get_all(&self, ids: &[String]) -> Result<Vec<Option<Claim>>, IndexError> {
        let claims = self.claims.lock().expect("index lock");
        Ok(ids.iter().map(|id| claims.get(id).cloned()).collect())
    }

    async fn replace_all(&self, updated: &mut [Claim]) -> Result<Vec<bool>, IndexError> {
        let mut claims = self.claims.lock().expect("index lock");
        Ok(updated
            .iter_mut()
            .map(|claim| match claims.get(&claim.id) {
                Some(current) if current.rev == claim.rev => {
                    claim.rev = next_rev(&claim.rev);
                    claims.insert(claim.id.clone(), claim.clone());
                    true
                }
                _ => false,
            })
            .collect())
    }

    async fn remove(&self, claim: &Claim) -> Result<bool, IndexError> {
        let mut claims = self.claims.lock().expect("index lock");
        match claims.get(&claim.id) {
            Some(current) if current.rev != claim.rev => Ok(false),
            _ => {
                claims.remove(&claim.id);
                Ok(true)
            }
        }
    }

    async fn record_handled(&self, uploads: &[HandledUpload]) -> Result<(), IndexError> {
        let mut handled = self.handled.lock().expect("ledger lock");
        for upload in uploads {
            handled
                .entry(upload.id.clone())
                .or_insert_with(|| upload.clone());
        }
        Ok(())
    }

    async fn handled(&self, ids: &[String]) -> Result<Vec<HandledUpload>, IndexError> {
        let handled = self.handled.lock().expect("ledger lock");
        Ok(ids
            .iter()
            .filter_map(|id| handled.get(id))
            .cloned()
            .collect())
    }
}

impl MemoryIndex {
    /// Claims in a status, for inspection and tests.
    pub async fn with_status(&self, status: ClaimStatus) -> Result<Vec<Claim>, IndexError> {
        let claims = self.claims.lock().expect("index lock");
        Ok(claims
            .values()
            .filter(|c| c.status == status)
            .cloned()
            .collect())
    }

    /// Claims saved by an earlier run, or none if `path` does not exist yet.
    pub fn load(path: &std::path::Path) -> std::io::Result<Self> {
        let claims: Vec<Claim> = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        let claims = claims.into_iter().map(|c| (c.id.clone(), c)).collect();
        Ok(MemoryIndex {
            claims: Mutex::new(claims),
            handled: Mutex::default(),
        })
    }

    /// Writes every claim to `path` (through a temporary file, so a crash never leaves half a file).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let claims: Vec<Claim> = self
            .claims
            .lock()
            .expect("index lock")
            .values()
            .cloned()
            .collect();
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, serde_json::to_vec(&claims)?)?;
        std::fs::rename(temporary, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Origin, SourceObject};
    use crate::ports::claims::ledger_id;

    fn upload(key: &str, etag: &str) -> SourceObject {
        SourceObject {
            bucket: "in".into(),
            key: key.into(),
            etag: etag.into(),
            size: 1,
            batch_job: None,
        }
    }

    fn origin(offset: i64) -> Origin {
        Origin {
            topic: "uploads".into(),
            partition: 0,
            offset,
        }
    }

    #[tokio::test]
    async fn the_ledger_knows_each_handled_upload_by_bucket_key_and_etag() {
        let index = MemoryIndex::default();
        let first = HandledUpload::new(&upload("a.jpg", "e1"), &origin(1));
        index
            .record_handled(std::slice::from_ref(&first))
            .await
            .unwrap();
        // Recording again (another event for the same upload) keeps the first record.
        let again = HandledUpload::new(&upload("a.jpg", "e1"), &origin(2));
        index.record_handled(&[again]).await.unwrap();

        let asked = [
            ledger_id(&upload("a.jpg", "e1")),
            // Overwritten: a new upload.
            ledger_id(&upload("a.jpg", "e2")),
            ledger_id(&upload("b.jpg", "e1")),
        ];
        assert_eq!(index.handled(&asked).await.unwrap(), [first]);
        assert!(index.handled(&[]).await.unwrap().is_empty());
    }

    #[test]
    fn ledger_ids_never_collide_across_field_boundaries() {
        assert_ne!(ledger_id(&upload("a", "bc")), ledger_id(&upload("ab", "c")));
        let id = ledger_id(&upload("_design/evil", "e"));
        assert!(id.starts_with("upload:") && id.len() == "upload:".len() + 64);
    }

    #[tokio::test]
    async fn the_ledger_is_not_saved_between_runs() {
        let dir = std::env::temp_dir().join(format!("prism-ledger-{}", uuid::Uuid::new_v4()));
        let path = dir.join("claims.json");
        let index = MemoryIndex::default();
        let handled = HandledUpload::new(&upload("a", "e"), &origin(0));
        index
            .record_handled(std::slice::from_ref(&handled))
            .await
            .unwrap();
        index.save(&path).unwrap();
        let loaded = MemoryIndex::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(loaded.handled(&[handled.id]).await.unwrap().is_empty());
    }
}
