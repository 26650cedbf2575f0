//! Batch jobs in CouchDB, in the dedup index's database: job documents `job:<id>`, outcomes
//! `jobitem:<job>:…` created once, counted by the view `_design/prism_jobs/_view/items`
//! (built-in `_stats` reduce, so neither CouchDB nor pouchdb-server runs JavaScript to reduce).

use super::{BatchJob, Count, ITEM_KIND, ItemOutcome, JobBook, JobItem, Tally, items_prefix};
use crate::contract::StageName;
use crate::ports::claims::IndexError;
use crate::ports::claims::couch::{CouchIndex, is_conflict, unavailable};
use async_trait::async_trait;
use couch_rs::document::TypedCouchDocument;
use http::Method;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::HashMap;

const DESIGN: &str = "_design/prism_jobs";

/// The view's definition; changing it here replaces the stored one at the next start.
fn views() -> Value {
    json!({
        "language": "javascript",
        "views": {
            "items": {
                "map": format!(
                    "function (doc) {{ if (doc.kind === '{ITEM_KIND}') {{ emit([doc.job, doc.stage, doc.outcome], doc.processing_ms); }} }}"
                ),
                "reduce": "_stats"
            }
        }
    })
}

/// One row of `_all_docs` or of a view.
#[derive(serde::Deserialize)]
struct Row<K, V, D> {
    key: K,
    #[serde(default = "Option::default")]
    value: Option<V>,
    doc: Option<D>,
}

#[derive(serde::Deserialize)]
struct Rows<K, V, D> {
    rows: Vec<Row<K, V, D>>,
}

#[derive(serde::Deserialize)]
struct Stats {
    count: u64,
    sum: f64,
}

impl CouchIndex {
    /// GETs `path` (under the database) with `query`, as JSON.
    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, IndexError> {
        let query: HashMap<String, String> = query
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect();
        let path = format!("/{}/{path}", self.database);
        let failed = |error: &dyn std::fmt::Display| {
            IndexError::Unavailable(format!("CouchDB {path}: {error}"))
        };
        let response = self
            .client
            .req(Method::GET, &path, Some(&query))
            .send()
            .await
            .map_err(|e| failed(&e))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| failed(&e))?;
        if !status.is_success() {
            return Err(failed(&format!("{status}: {body}")));
        }
        serde_json::from_str(&body).map_err(|e| failed(&e))
    }

    /// Documents whose ids start with `prefix`, after `after`, at most `limit`.
    async fn documents<D: DeserializeOwned>(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<D>, IndexError> {
        let start = after.unwrap_or(prefix);
        let mut query = vec![
            ("startkey", json!(start).to_string()),
            ("endkey", json!(format!("{prefix}\u{fff0}")).to_string()),
            ("include_docs", "true".into()),
        ];
        if let Some(limit) = limit {
            // One more: `after` itself comes first.
            query.push(("limit", (limit + 1).to_string()));
        }
        let rows: Rows<String, Value, D> = self.get_json("_all_docs", &query).await?;
        Ok(rows
            .rows
            .into_iter()
            .filter(|row| after.is_none_or(|after| row.key.as_str() > after))
            .filter_map(|row| row.doc)
            .take(limit.unwrap_or(usize::MAX))
            .collect())
    }

    /// Stores the job views unless they are there as defined.
    pub(crate) async fn ensure_job_views(&self) -> Result<(), IndexError> {
        let wanted = views();
        loop {
            let current: Option<Value> = match self.db.get::<Value>(DESIGN).await {
                Ok(current) => Some(current),
                Err(error) if error.is_not_found() => None,
                Err(error) => return Err(unavailable(error)),
            };
            if current
                .as_ref()
                .is_some_and(|current| current["views"] == wanted["views"])
            {
                return Ok(());
            }
            let mut design = wanted.clone();
            design["_id"] = json!(DESIGN);
            if let Some(rev) = current.as_ref().and_then(|c| c["_rev"].as_str()) {
                design["_rev"] = json!(rev);
            }
            match self.db.upsert(&mut design).await {
                Ok(_) => return Ok(()),
                // Another replica wrote it at the same moment: look again.
                Err(error) if is_conflict(&error) => continue,
                Err(error) => return Err(unavailable(error)),
            }
        }
    }
}

#[async_trait]
impl JobBook for CouchIndex {
    async fn create_job(&self, job: &mut BatchJob) -> Result<bool, IndexError> {
        Ok(self.write_all(std::slice::from_mut(job)).await?[0])
    }

    async fn job(&self, id: &str) -> Result<Option<BatchJob>, IndexError> {
        match self.db.get::<BatchJob>(&super::job_doc_id(id)).await {
            Ok(job) => Ok(Some(job)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn jobs(&self) -> Result<Vec<BatchJob>, IndexError> {
        // Job ids start with their submission time: id order is age order.
        self.documents("job:", None, None).await
    }

    async fn replace_job(&self, job: &mut BatchJob) -> Result<bool, IndexError> {
        debug_assert!(
            !job.get_rev().is_empty(),
            "replacing needs the current _rev"
        );
        Ok(self.write_all(std::slice::from_mut(job)).await?[0])
    }

    async fn record_items(&self, items: &[JobItem]) -> Result<(), IndexError> {
        // A conflict is an outcome recorded before (a redelivered result): it stays.
        self.write_all(&mut items.to_vec()).await.map(drop)
    }

    async fn tally(&self, job: &str) -> Result<Tally, IndexError> {
        let rows: Rows<(String, StageName, ItemOutcome), Stats, Value> = self
            .get_json(
                &format!("{DESIGN}/_view/items"),
                &[
                    ("group_level", "3".into()),
                    ("startkey", json!([job]).to_string()),
                    ("endkey", json!([job, {}]).to_string()),
                ],
            )
            .await?;
        let mut tally = Tally::default();
        for row in rows.rows {
            let (_, stage, outcome) = row.key;
            let Some(stats) = row.value else { continue };
            let count = Count {
                items: stats.count,
                processing_ms: stats.sum as u64,
            };
            tally.add(stage, outcome, count);
        }
        Ok(tally)
    }

    async fn items(
        &self,
        job: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobItem>, IndexError> {
        self.documents(&items_prefix(job), after, Some(limit)).await
    }
}
