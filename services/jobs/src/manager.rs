//! Driving jobs: each round, every unfinished job held by this replica (or free to take) moves one
//! step: a page of its prefix listed into the batch lane while fewer than `window` of its objects
//! are in the pipeline; once all are listed and counted, its manifest and summary written.
//!
//! Every step ends in a compare-and-swap of the job document, so two replicas never drive one job
//! at once, a cancel is never overwritten, and a replica killed mid-step leaves the job where its
//! last write put it: the next holder lists again from the last page stored (objects announced
//! twice are counted once).

use crate::report::{Digest, ManifestLine, summary};
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use futures::future::try_join_all;
use prism_core::contract::ingest::UploadEvent;
use prism_core::contract::reannounce::announcement_key;
use prism_core::ports::batch::{BatchJob, JobBook, JobItem, JobState};
use prism_core::ports::bus::{Publication, Publisher};
use prism_core::ports::store::Buckets;
use prism_core::runtime::config::{Lane, Settings};
use prism_core::runtime::trace::starting_trace;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Outcomes read per request while writing a manifest.
const ITEMS_PER_PAGE: usize = 1000;

pub struct Manager {
    settings: Settings,
    book: Arc<dyn JobBook>,
    buckets: Buckets,
    publisher: Arc<dyn Publisher>,
    /// This replica, as job documents name their holder.
    me: String,
}

/// Where a job's manifest and summary go in the output bucket.
pub fn manifest_key(job: &str) -> String {
    format!("jobs/{job}/results.jsonl")
}

pub fn summary_key(job: &str) -> String {
    format!("jobs/{job}/summary.json")
}

impl Manager {
    pub fn new(
        settings: Settings,
        book: Arc<dyn JobBook>,
        buckets: Buckets,
        publisher: Arc<dyn Publisher>,
    ) -> Self {
        Manager {
            settings,
            book,
            buckets,
            publisher,
            me: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        }
    }

    /// Rounds until `shutdown`; a round that fails (a server away) is logged and tried again.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.round().await {
                tracing::warn!(error = %format!("{error:#}"), "job round failed; trying again");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.jobs.poll) => {}
            }
        }
    }

    /// One step for every unfinished job this replica holds or may take. One job's failure
    /// (its manifest refused, say) does not hold up the others; it is tried again next round.
    pub async fn round(&self) -> anyhow::Result<()> {
        for job in self.book.jobs().await? {
            if job.state.is_final() {
                continue;
            }
            let id = job.id.clone();
            let stepped = match self.take(job).await? {
                Some(job) => self.step(job).await,
                None => Ok(()),
            };
            if let Err(error) = stepped {
                tracing::warn!(job = %id, error = %format!("{error:#}"), "job step failed; trying again");
            }
        }
        Ok(())
    }

    /// Takes or renews the job's lease; `None` while another replica holds it.
    async fn take(&self, mut job: BatchJob) -> anyhow::Result<Option<BatchJob>> {
        let now = Utc::now();
        let held_elsewhere = job.owner.as_ref().is_some_and(|owner| *owner != self.me)
            && job.lease_expires_at.is_some_and(|until| until > now);
        if held_elsewhere {
            return Ok(None);
        }
        if job.owner.as_ref() != Some(&self.me) {
            tracing::info!(job = %job.id, previous = ?job.owner, "taking the job");
        }
        job.owner = Some(self.me.clone());
        job.lease_expires_at = Some(now + self.settings.jobs.lease);
        Ok(self.book.replace_job(&mut job).await?.then_some(job))
    }

    async fn step(&self, mut job: BatchJob) -> anyhow::Result<()> {
        if job.cancel_requested {
            return self.finish(job, JobState::Cancelled).await;
        }
        let tally = self.book.tally(&job.id).await?;
        let finished = tally.objects_finished(&job.stages);
        match job.state {
            JobState::Listing => {
                let in_pipeline = job.listing.listed.saturating_sub(finished);
                if in_pipeline < self.settings.jobs.window {
                    self.list_page(&mut job).await?;
                }
                Ok(())
            }
            JobState::Running if finished >= job.listing.listed => {
                self.finish(job, JobState::Completed).await
            }
            _ => Ok(()),
        }
    }

    /// Announces the next page of the job's prefix on the batch lane, then records how far the
    /// listing got.
    async fn list_page(&self, job: &mut BatchJob) -> anyhow::Result<()> {
        let page = self
            .buckets
            .list_page(
                &job.bucket,
                &job.prefix,
                job.listing.after.as_deref(),
                self.settings.jobs.page_keys,
            )
            .await?;
        let topic = Lane::Batch.topic(&self.settings.topics.uploads);
        let now = Utc::now();
        let announcements = page.listing.objects.iter().map(|listed| {
            let object = prism_core::contract::SourceObject {
                batch_job: Some(job.id.clone()),
                ..listed.source.clone()
            };
            let event = UploadEvent::for_object(&object, None, now);
            let publication = Publication::json(&topic, &announcement_key(&object), &event);
            let publication = starting_trace(publication, "job listing", None);
            async move { self.publisher.publish(&publication).await }
        });
        try_join_all(announcements).await?;
        let last = page
            .listing
            .objects
            .iter()
            .map(|listed| listed.source.key.as_str())
            .chain(page.listing.unlisted.iter().map(|u| u.name.as_str()))
            .max()
            .map(str::to_string);
        let listing = &mut job.listing;
        listing.listed += page.listing.objects.len() as u64;
        listing.unlisted += page.listing.unlisted.len() as u64;
        if last.is_some() {
            listing.after = last;
        }
        listing.done = page.next.is_none();
        if listing.done {
            job.state = JobState::Running;
            tracing::info!(job = %job.id, listed = listing.listed, "listing done");
        }
        if !self.book.replace_job(job).await? {
            // Cancelled meanwhile: the next round sees it. The page may go out again then.
            tracing::info!(job = %job.id, "the job changed while a page was listed");
        }
        Ok(())
    }

    /// Writes the manifest and the summary, then marks the job `state`.
    async fn finish(&self, mut job: BatchJob, state: JobState) -> anyhow::Result<()> {
        let finished_at = Utc::now();
        let digest = self.write_manifest(&job).await?;
        let tally = self.book.tally(&job.id).await?;
        let vcpu_hour_usd = self.settings.jobs.vcpu_hour_usd;
        let summary = summary(&job, state, finished_at, digest, tally, vcpu_hour_usd);
        let text = serde_json::to_vec_pretty(&summary)?;
        self.buckets
            .write(
                &self.settings.output_bucket,
                &summary_key(&job.id),
                Bytes::from(text),
                "application/json",
            )
            .await?;
        tracing::info!(
            job = %job.id,
            ?state,
            done = summary.objects.done,
            deduplicated = summary.objects.deduplicated,
            failed = summary.objects.failed,
            skipped = summary.objects.skipped,
            wall_s = summary.wall_s,
            "job finished"
        );
        job.state = state;
        job.finished_at = Some(finished_at);
        job.summary = Some(serde_json::to_value(&summary)?);
        if !self.book.replace_job(&mut job).await? {
            tracing::info!(job = %job.id, "the job changed while it was summed up; again next round");
        }
        Ok(())
    }

    /// Streams every outcome of the job, one object's together, into `jobs/<id>/results.jsonl`.
    async fn write_manifest(&self, job: &BatchJob) -> anyhow::Result<Digest> {
        let (chunks, received) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(2);
        let book = self.book.clone();
        let id = job.id.clone();
        let producer = tokio::spawn(async move { manifest_chunks(&*book, &id, chunks).await });
        let mut received = received;
        let (bucket, key) = (&self.settings.output_bucket, manifest_key(&job.id));
        const CONTENT_TYPE: &str = "application/x-ndjson";
        // S3 refuses a multipart upload of nothing: a job of no objects gets a plain empty file.
        let written = match received.recv().await {
            None => {
                self.buckets
                    .write(bucket, &key, Bytes::new(), CONTENT_TYPE)
                    .await
            }
            Some(first) => {
                let rest = futures::stream::poll_fn(move |cx| received.poll_recv(cx));
                let body = futures::stream::once(async { first }).chain(rest);
                let body = Box::pin(body);
                let written = self
                    .buckets
                    .write_stream(bucket, &key, CONTENT_TYPE, u64::MAX, body);
                written.await.map(drop)
            }
        };
        let digest = producer.await??;
        written?;
        Ok(digest)
    }
}

/// Reads the job's outcomes page by page and sends the manifest's lines a page at a time.
async fn manifest_chunks(
    book: &dyn JobBook,
    job: &str,
    chunks: tokio::sync::mpsc::Sender<Result<Bytes, String>>,
) -> anyhow::Result<Digest> {
    let mut digest = Digest::default();
    let mut after: Option<String> = None;
    let mut object: Vec<JobItem> = Vec::new();
    loop {
        let page = match book.items(job, after.as_deref(), ITEMS_PER_PAGE).await {
            Ok(page) => page,
            Err(error) => {
                let _ = chunks.send(Err(error.to_string())).await;
                return Err(error.into());
            }
        };
        let last_page = page.len() < ITEMS_PER_PAGE;
        after = page.last().map(|item| item.doc_id.clone()).or(after);
        let mut text = Vec::new();
        for item in page {
            if object.first().is_some_and(|first| first.key != item.key) {
                write_line(&mut text, &digest.add(&object))?;
                object.clear();
            }
            object.push(item);
        }
        if last_page && !object.is_empty() {
            write_line(&mut text, &digest.add(&object))?;
        }
        if !text.is_empty() && chunks.send(Ok(Bytes::from(text))).await.is_err() {
            anyhow::bail!("the manifest's upload stopped");
        }
        if last_page {
            return Ok(digest);
        }
    }
}

fn write_line(text: &mut Vec<u8>, line: &ManifestLine) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *text, line)?;
    text.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_core::contract::StageName;
    use prism_core::ports::batch::ItemOutcome;
    use prism_core::ports::batch::memory::MemoryJobBook;
    use prism_core::ports::bus::memory::MemoryBus;
    use std::time::Duration;

    struct Fixture {
        book: Arc<MemoryJobBook>,
        bus: MemoryBus,
        buckets: Buckets,
        settings: Settings,
    }

    impl Fixture {
        async fn new(keys: &[&str], window: u64) -> Self {
            let mut settings = Settings {
                input_bucket: "in".into(),
                output_bucket: "out".into(),
                ..Settings::default()
            };
            settings.jobs.window = window;
            settings.jobs.lease = Duration::from_millis(50);
            let buckets = Buckets::memory();
            for key in keys {
                let body = Bytes::from(format!("bytes of {key}"));
                buckets.write("in", key, body, "image/jpeg").await.unwrap();
            }
            Fixture {
                book: Arc::new(MemoryJobBook::default()),
                bus: MemoryBus::default(),
                buckets,
                settings,
            }
        }

        fn manager(&self) -> Manager {
            Manager::new(
                self.settings.clone(),
                self.book.clone(),
                self.buckets.clone(),
                Arc::new(self.bus.clone()),
            )
        }

        /// The keys announced on the batch lane so far.
        fn announced(&self) -> Vec<String> {
            self.bus
                .messages("prism.uploads.batch")
                .iter()
                .map(|delivery| {
                    let event = UploadEvent::parse(&delivery.payload).unwrap();
                    let objects = event.created_objects("in", "out").unwrap();
                    assert_eq!(objects[0].batch_job.as_deref(), Some("j"));
                    objects[0].key.clone()
                })
                .collect()
        }

        /// Every stage's outcome for `key`, as the tally would record it.
        async fn finish(&self, key: &str, outcome: ItemOutcome) {
            let items: Vec<JobItem> = [StageName::Classify]
                .into_iter()
                .map(|stage| JobItem {
                    processing_ms: 10,
                    latency_ms: 5,
                    ..JobItem::new("j", key, stage, outcome, Utc::now())
                })
                .collect();
            self.book.record_items(&items).await.unwrap();
        }

        async fn job(&self) -> BatchJob {
            self.book.job("j").await.unwrap().unwrap()
        }

        async fn submit(&self) {
            let mut job = BatchJob::new("j", None, "in", "p/", vec![StageName::Classify], None);
            assert!(self.book.create_job(&mut job).await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_job_lists_its_prefix_counts_outcomes_and_writes_its_manifest() {
        let f = Fixture::new(&["p/a.jpg", "p/b.jpg", "p/c.jpg", "q/other.jpg"], 100).await;
        f.submit().await;
        let manager = f.manager();
        manager.round().await.unwrap();
        assert_eq!(f.announced(), ["p/a.jpg", "p/b.jpg", "p/c.jpg"]);
        assert_eq!(f.job().await.state, JobState::Running);

        f.finish("p/a.jpg", ItemOutcome::Done).await;
        f.finish("p/b.jpg", ItemOutcome::Deduplicated).await;
        // A redelivered result: counted once.
        f.finish("p/b.jpg", ItemOutcome::Deduplicated).await;
        manager.round().await.unwrap();
        assert_eq!(f.job().await.state, JobState::Running, "c is not in yet");
        f.finish("p/c.jpg", ItemOutcome::Failed).await;
        manager.round().await.unwrap();
        let job = f.job().await;
        assert_eq!(job.state, JobState::Completed);

        let (manifest, _) = f
            .buckets
            .read("out", "jobs/j/results.jsonl", u64::MAX)
            .await
            .unwrap();
        let lines: Vec<ManifestLine> = manifest
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).unwrap())
            .collect();
        let mut keys: Vec<&str> = lines.iter().map(|line| line.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["p/a.jpg", "p/b.jpg", "p/c.jpg"]);
        let (summary, _) = f
            .buckets
            .read("out", "jobs/j/summary.json", u64::MAX)
            .await
            .unwrap();
        let summary: crate::report::Summary = serde_json::from_slice(&summary).unwrap();
        let objects = &summary.objects;
        assert_eq!(
            (
                objects.listed,
                objects.done,
                objects.deduplicated,
                objects.failed,
                objects.skipped
            ),
            (3, 1, 1, 1, 0)
        );
    }

    #[tokio::test]
    async fn a_cancel_ends_the_job_and_counts_what_never_ran_as_skipped() {
        let f = Fixture::new(&["p/a.jpg", "p/b.jpg"], 1).await;
        f.submit().await;
        let manager = f.manager();
        manager.round().await.unwrap();
        assert_eq!(f.announced().len(), 2);
        crate::requests::cancel(&*f.book, "j").await.unwrap();
        manager.round().await.unwrap();
        let job = f.job().await;
        assert_eq!(job.state, JobState::Cancelled);
        let summary: crate::report::Summary = serde_json::from_value(job.summary.unwrap()).unwrap();
        assert_eq!(summary.objects.skipped, 2);
    }

    #[tokio::test]
    async fn a_job_held_by_a_live_replica_is_left_alone_and_taken_over_when_its_lease_ends() {
        let f = Fixture::new(&["p/a.jpg"], 100).await;
        f.submit().await;
        let (first, second) = (f.manager(), f.manager());
        let job = first.take(f.job().await).await.unwrap().unwrap();
        assert_eq!(job.owner.as_deref(), Some(first.me.as_str()));
        assert!(second.take(f.job().await).await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(60)).await;
        let job = second.take(f.job().await).await.unwrap().unwrap();
        assert_eq!(job.owner.as_deref(), Some(second.me.as_str()));
    }

    #[tokio::test]
    async fn listing_goes_a_page_at_a_time_and_waits_while_the_window_is_full() {
        let mut f = Fixture::new(&["p/a.jpg", "p/b.jpg", "p/c.jpg"], 1).await;
        f.settings.jobs.page_keys = 1;
        f.submit().await;
        let manager = f.manager();
        manager.round().await.unwrap();
        manager.round().await.unwrap();
        assert_eq!(
            f.announced(),
            ["p/a.jpg"],
            "one object in the pipeline: the window"
        );
        f.finish("p/a.jpg", ItemOutcome::Done).await;
        manager.round().await.unwrap();
        assert_eq!(f.announced(), ["p/a.jpg", "p/b.jpg"]);
        let job = f.job().await;
        assert_eq!(job.listing.after.as_deref(), Some("p/b.jpg"));
        assert_eq!((job.listing.listed, job.listing.done), (2, false));
        // Another replica resumes where the stored listing stopped.
        f.finish("p/b.jpg", ItemOutcome::Done).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        let successor = f.manager();
        successor.round().await.unwrap();
        assert_eq!(f.announced(), ["p/a.jpg", "p/b.jpg", "p/c.jpg"]);
    }
}
