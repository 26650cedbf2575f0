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
    let generation: u64 = rev.split('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
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
        Ok(claims.values().filter(|c| c.status == status).cloned().collect())
    }
}
