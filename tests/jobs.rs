//! Batch jobs over the real servers: `prism job` against `prism serve jobs`, dedup and the
//! thumbnail stage on Kafka, S3 and CouchDB.
//!
//! - 300 objects with 30% duplicates and 5 bad files, the manager killed (-9) mid-listing and
//!   restarted: every object is counted exactly once, the manifest lists each with its outcome
//!   (bad files with their reason), objects outside the prefix are left alone.
//! - Two jobs over overlapping prefixes at once, a third cancelled before any of its work ran,
//!   and uploads during the jobs: the overlap is processed once, the cancelled job's queued work
//!   is skipped, and the uploads overtake the queued job work.
//!
//! Uses the shared servers (`deploy/local/servers.sh start`), like the end-to-end test.

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use prism_core::contract::ingest::UploadEvent;
use prism_core::contract::reannounce::announcement_key;
use prism_core::contract::{SourceObject, StageName};
use prism_core::ports::batch::{BatchJob, ItemOutcome, JobBook, JobState};
use prism_core::ports::claims::couch::CouchIndex;
use prism_core::ports::store::Buckets;
use prism_core::runtime::config::Settings;
use prism_e2e::{
    DEADLINE, Listener, Services, generated, observer, prepare, prism_binary, run_environment,
    run_name, settings_for,
};
use prism_jobs::report::{ManifestLine, Summary};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

/// A run's environment with only the thumbnail stage (the cheapest) and the manager's knobs.
fn environment(run: &str, jobs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut environment = run_environment(run);
    environment.push(("PRISM_ENABLED_STAGES".into(), "[\"thumbnail\"]".into()));
    environment.push(("PRISM_JOBS__POLL".into(), "200".into()));
    environment.extend(jobs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    environment
}

/// Runs `prism ARGS` to the end; returns its standard output, failing loudly on an error.
fn prism(environment: &[(String, String)], args: &[&str]) -> String {
    let output = Command::new(prism_binary())
        .args(args)
        .envs(environment.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "prism {args:?} failed with {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn submit(environment: &[(String, String)], prefix: &str) -> String {
    let id = prism(
        environment,
        &["job", "submit", "--prefix", prefix, "--stages", "thumbnail"],
    );
    id.trim().to_string()
}

/// Stores the objects, 16 at a time.
async fn store(settings: &Settings, objects: Vec<(String, Bytes)>) {
    let buckets = Buckets::s3(&settings.s3);
    prism_loadgen::upload(&buckets, &settings.input_bucket, objects, 16)
        .await
        .unwrap();
}

/// `count` distinct small photos under `prefix`, seeds from `first_seed`.
fn photos(prefix: &str, first_seed: u32, count: u32) -> Vec<(String, Bytes)> {
    (0..count)
        .map(|i| {
            let key = format!("{prefix}photo-{i:03}.jpg");
            let photo = generated(&key, first_seed + i, (96, 64), image::ImageFormat::Jpeg);
            (key, photo.bytes)
        })
        .collect()
}

async fn wait_for_job(
    book: &CouchIndex,
    services: &mut Services,
    id: &str,
    what: &str,
    condition: impl Fn(&BatchJob) -> bool,
) -> BatchJob {
    let started = Instant::now();
    loop {
        services.assert_running();
        if let Some(job) = book.job(id).await.unwrap()
            && condition(&job)
        {
            return job;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "job {id}: {what} not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn manifest(settings: &Settings, id: &str) -> Vec<ManifestLine> {
    let buckets = Buckets::s3(&settings.s3);
    let key = prism_jobs::manager::manifest_key(id);
    let (text, _) = buckets
        .read(&settings.output_bucket, &key, u64::MAX)
        .await
        .unwrap();
    text.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect()
}

fn summary_of(job: &BatchJob) -> Summary {
    serde_json::from_value(job.summary.clone().expect("a finished job has a summary")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_counts_every_object_once_through_duplicates_bad_files_and_a_killed_manager() {
    let run = run_name();
    let environment = environment(
        &run,
        &[
            ("PRISM_JOBS__PAGE_KEYS", "25"),
            ("PRISM_JOBS__WINDOW", "60"),
            ("PRISM_JOBS__LEASE", "2000"),
        ],
    );
    let settings = settings_for(&environment);
    prepare(&settings).await;
    let book = CouchIndex::connect(&settings.couchdb).await.unwrap();

    // 205 distinct photos, 90 copies of them (30% of 300) and 5 files that are no image.
    let distinct = photos("batch/", 0, 205);
    let copies: Vec<(String, Bytes)> = distinct[..90]
        .iter()
        .map(|(key, bytes)| (key.replace("photo-", "copy-of-"), bytes.clone()))
        .collect();
    let bad: Vec<(String, Bytes)> = (0..5)
        .map(|i| {
            let bytes = Bytes::from(format!("\u{ff}\u{d8} not a JPEG, file {i}"));
            (format!("batch/bad-{i}.jpg"), bytes)
        })
        .collect();
    let outside = photos("elsewhere/", 1000, 5);
    let all: Vec<(String, Bytes)> = [distinct, copies, bad.clone(), outside].concat();
    store(&settings, all).await;

    let mut services = Services::start(
        &environment,
        &[
            &["serve", "dedup"],
            &["serve", "thumbnail"],
            &["serve", "jobs"],
        ],
    );
    let id = submit(&environment, "batch/");
    wait_for_job(&book, &mut services, &id, "listing under way", |job| {
        job.listing.listed >= 50
    })
    .await;
    services.kill("serve-jobs");
    let stopped = book.job(&id).await.unwrap().unwrap();
    assert!(
        !stopped.listing.done,
        "killed mid-listing: {:?}",
        stopped.listing
    );
    services.spawn("serve-jobs", &["serve", "jobs"]);

    let output = prism(&environment, &["job", "wait", &id, "--timeout", "170s"]);
    let job = book.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed);
    let summary = summary_of(&job);
    assert_eq!(
        serde_json::from_str::<Summary>(&output).unwrap(),
        summary,
        "`prism job wait` prints the summary"
    );
    let objects = &summary.objects;
    assert_eq!(
        (
            objects.listed,
            objects.done,
            objects.deduplicated,
            objects.failed,
            objects.skipped
        ),
        (300, 205, 90, 5, 0),
        "{summary:?}"
    );
    assert_eq!(summary.per_stage.finished(StageName::Thumbnail), 300);
    assert!(summary.latency_ms.is_some() && summary.stage_seconds > 0.0);

    let lines = manifest(&settings, &id).await;
    let keys: BTreeSet<&str> = lines.iter().map(|line| line.key.as_str()).collect();
    assert_eq!(lines.len(), 300, "one line per object");
    assert_eq!(keys.len(), 300, "no object twice");
    assert!(keys.iter().all(|key| key.starts_with("batch/")));
    for (key, _) in &bad {
        let line = lines.iter().find(|line| line.key == *key).unwrap();
        assert_eq!(line.outcome, ItemOutcome::Failed);
        let error = line.stages[&StageName::Thumbnail].error.as_ref().unwrap();
        assert!(!error.reason.is_empty(), "{key}: a reason");
    }
    let copy = lines
        .iter()
        .find(|l| l.key == "batch/copy-of-007.jpg")
        .unwrap();
    let original = lines
        .iter()
        .find(|l| l.key == "batch/photo-007.jpg")
        .unwrap();
    assert_eq!(copy.content_hash, original.content_hash);
    assert_eq!(
        copy.stages[&StageName::Thumbnail].outputs,
        original.stages[&StageName::Thumbnail].outputs
    );
    let deduplicated = [copy, original]
        .iter()
        .filter(|line| line.outcome == ItemOutcome::Deduplicated)
        .count();
    assert_eq!(
        deduplicated, 1,
        "of two copies one ran, one was deduplicated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_jobs_run_once_a_cancelled_job_is_skipped_and_uploads_go_first() {
    let run = run_name();
    let environment = environment(&run, &[("PRISM_JOBS__WINDOW", "1000")]);
    let settings = settings_for(&environment);
    prepare(&settings).await;
    let book = CouchIndex::connect(&settings.couchdb).await.unwrap();
    // Photos large enough that the job's queue takes the thumbnail replica several seconds.
    let large = |prefix: &str, first_seed: u32, count: u32| -> Vec<(String, Bytes)> {
        (0..count)
            .map(|i| {
                let key = format!("{prefix}photo-{i:03}.jpg");
                let photo = generated(&key, first_seed + i, (1200, 900), image::ImageFormat::Jpeg);
                (key, photo.bytes)
            })
            .collect()
    };
    store(&settings, large("set/", 0, 100)).await;
    store(&settings, large("set/sub/", 100, 50)).await;
    store(&settings, photos("cancelled/", 200, 60)).await;

    // A job cancelled before any replica could run its work.
    let mut services = Services::start(&environment, &[&["serve", "dedup"], &["serve", "jobs"]]);
    let cancelled = submit(&environment, "cancelled/");
    wait_for_job(&book, &mut services, &cancelled, "listed", |job| {
        job.listing.done
    })
    .await;
    prism(&environment, &["job", "cancel", &cancelled]);
    let job = wait_for_job(&book, &mut services, &cancelled, "cancelled", |job| {
        job.state == JobState::Cancelled
    })
    .await;
    assert_eq!(
        summary_of(&job).objects.skipped,
        60,
        "nothing ran before the cancel"
    );

    // A replica, ready: an upload's result comes back.
    let mut listener = Listener::new(observer(&settings, &run), &settings.topics);
    services.spawn("thumbnail", &["serve", "thumbnail"]);
    let warm_up = photos("warm-up/", 400, 1);
    store(&settings, warm_up.clone()).await;
    announce(&settings, &warm_up).await;
    wait_for_results(&mut listener, &mut services, &warm_up).await;

    // Two overlapping jobs; uploads once their work is flowing.
    let whole = submit(&environment, "set/");
    let part = submit(&environment, "set/sub/");
    wait_for_job(&book, &mut services, &whole, "listed", |job| {
        job.listing.done
    })
    .await;
    let uploads = photos("uploads/", 500, 3);
    store(&settings, uploads.clone()).await;
    announce(&settings, &uploads).await;
    wait_for_results(&mut listener, &mut services, &uploads).await;
    let tally = book.tally(&whole).await.unwrap();
    let queued_job_work = 150 - tally.finished(StageName::Thumbnail);
    assert!(
        queued_job_work > 50,
        "the uploads were done while most of the jobs' work still waited ({queued_job_work} left)"
    );

    for id in [&whole, &part] {
        wait_for_job(&book, &mut services, id, "completed", |job| {
            job.state == JobState::Completed
        })
        .await;
    }
    let whole = summary_of(&book.job(&whole).await.unwrap().unwrap());
    let part = summary_of(&book.job(&part).await.unwrap().unwrap());
    assert_eq!(whole.objects.listed, 150);
    assert_eq!(part.objects.listed, 50);
    assert_eq!(whole.objects.failed + part.objects.failed, 0);
    assert_eq!(
        whole.objects.done + part.objects.done,
        150,
        "each of the 150 contents ran once over both jobs: {whole:?} {part:?}"
    );
    assert_eq!(whole.objects.deduplicated + part.objects.deduplicated, 50);

    // The cancelled job's queued work reached the replica and was skipped, not done.
    listener.read_for(Duration::from_secs(2)).await;
    let cancelled_results = listener
        .seen
        .results
        .keys()
        .filter(|(_, key)| key.starts_with("cancelled/"))
        .count();
    assert_eq!(cancelled_results, 0, "a cancelled job's work ran");
    let counted = book.tally(&cancelled).await.unwrap();
    assert_eq!(counted.of(StageName::Thumbnail, ItemOutcome::Done), 0);
}

async fn wait_for_results(
    listener: &mut Listener,
    services: &mut Services,
    uploads: &[(String, Bytes)],
) {
    let started = Instant::now();
    while !uploads
        .iter()
        .all(|(key, _)| listener.seen.has_outcome(StageName::Thumbnail, key))
    {
        services.assert_running();
        assert!(
            started.elapsed() < DEADLINE,
            "the uploads' results never came"
        );
        listener.read().await;
    }
}

/// Announces uploads on the uploads topic, as MinIO's notifications would.
async fn announce(settings: &Settings, uploads: &[(String, Bytes)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .create()
        .unwrap();
    let buckets = Buckets::s3(&settings.s3);
    let objects: Vec<SourceObject> = futures::stream::iter(uploads)
        .then(|(key, _)| buckets.head(&settings.input_bucket, key))
        .map(Result::unwrap)
        .collect()
        .await;
    for object in objects {
        let event =
            serde_json::to_vec(&UploadEvent::for_object(&object, None, Utc::now())).unwrap();
        let key = announcement_key(&object);
        let record = FutureRecord::to(&settings.topics.uploads)
            .key(&key)
            .payload(&event);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)
            .unwrap();
    }
}
