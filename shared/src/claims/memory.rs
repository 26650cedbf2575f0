//! Claims in process memory, with CouchDB's revision rules, for the embedded mode and tests.

use super::{Claim, ClaimIndex, ClaimStatus, IndexError};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryIndex {
    claims: Mutex<HashMap<String, Claim>>,
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
    async fn create(&self, claim: &mut Claim) -> Result<bool, IndexError> {
        let mut claims = self.claims.lock().expect("index lock");
        if claims.contains_key(&claim.id) {
            return Ok(false);
        }
        claim.rev = next_rev("");
        claims.insert(claim.id.clone(), claim.clone());
        Ok(true)
    }

    async fn get(&self, id: &str) -> Result<Option<Claim>, IndexError> {
        Ok(self.claims.lock().expect("index lock").get(id).cloned())
    }

    async fn replace(&self, claim: &mut Claim) -> Result<bool, IndexError> {
        let mut claims = self.claims.lock().expect("index lock");
        match claims.get(&claim.id) {
            Some(current) if current.rev == claim.rev => {
                claim.rev = next_rev(&claim.rev);
                claims.insert(claim.id.clone(), claim.clone());
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Err(IndexError::Vanished(claim.id.clone())),
        }
    }

    async fn with_status(&self, status: ClaimStatus) -> Result<Vec<Claim>, IndexError> {
        let claims = self.claims.lock().expect("index lock");
        Ok(claims
            .values()
            .filter(|c| c.status == status)
            .cloned()
            .collect())
    }
}

impl MemoryIndex {
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
