//! Upload events over the real servers (`deploy/local/servers.sh`): what dedup makes of the events
//! on `prism.uploads`, and what `prism watch` puts there.
//!
//! The events are written here, as MinIO sends them or deliberately not, and published with a
//! plain producer; each test judges by what comes out on the job, result and dead-letter topics.
//! Events that must come to nothing are followed by a good one with the same Kafka key (so on the
//! same partition, which dedup takes in order): once that one's outcome is in, and a quiet moment
//! after, nothing more is coming.

use bytes::Bytes;
use chrono::Utc;
use image::{DynamicImage, ImageFormat};
use prism_core::contract::ingest::UploadEvent;
use prism_core::contract::schemas::{MessageKind, Schemas};
use prism_core::contract::{DeadLetter, Job, SourceObject, StageName};
use prism_core::ports::store::Buckets;
use prism_core::runtime::config::Settings;
use prism_e2e::{DEADLINE, Services};
use rdkafka::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// After the awaited outcome, keep listening this long for anything that should not come.
const QUIET_PERIOD: Duration = Duration::from_secs(3);

/// `prism_e2e::settings_for` loads the settings from this process's environment, which the tests of
/// this file share: one at a time.
static CONFIGURING: Mutex<()> = Mutex::new(());

/// One message seen on a topic of this run.
struct Seen {
    topic: String,
    key: Option<String>,
    payload: Value,
}

/// Fresh topics, buckets and database, the services of one test, and what came out.
struct Pipeline {
    settings: Settings,
    buckets: Buckets,
    services: Services,
    observer: StreamConsumer,
    producer: FutureProducer,
    schemas: Schemas,
    seen: Vec<Seen>,
}

impl Pipeline {
    /// Starts `commands` (`prism` arguments) for `stages` (JSON list) over a run of their own.
    async fn start(stages: &str, commands: &[&[&str]]) -> Self {
        let run = prism_e2e::run_name();
        let mut environment = prism_e2e::run_environment(&run);
        for (key, value) in &mut environment {
            if key == "PRISM_ENABLED_STAGES" {
                *value = stages.to_string();
            }
        }
        let settings = {
            let _one_at_a_time = CONFIGURING.lock().unwrap_or_else(PoisonError::into_inner);
            prism_e2e::settings_for(&environment)
        };
        prism_e2e::prepare(&settings).await;
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka.brokers)
            .create()
            .unwrap();
        Pipeline {
            buckets: Buckets::s3(&settings.s3),
            observer: prism_e2e::observer(&settings, &run),
            services: Services::start(&environment, commands),
            settings,
            producer,
            schemas: Schemas::default(),
            seen: Vec::new(),
        }
    }

    /// Stores `bytes` as `key` in `bucket` and returns the object as S3 lists it (ETag included).
    async fn put(&self, bucket: &str, key: &str, bytes: Bytes) -> SourceObject {
        prism_loadgen::upload(&self.buckets, bucket, vec![(key.to_string(), bytes)], 1)
            .await
            .unwrap();
        let listing = self.buckets.list(bucket).await.unwrap();
        let listed = listing.objects.into_iter().find(|o| o.source.key == key);
        listed.expect("an object just stored is listed").source
    }

    /// Publishes raw bytes on the uploads topic with Kafka key `key`; returns their offset.
    async fn publish(&self, key: &str, payload: &[u8]) -> i64 {
        let record = FutureRecord::to(&self.settings.topics.uploads)
            .key(key)
            .payload(payload);
        let delivered = self.producer.send(record, Duration::from_secs(30)).await;
        delivered.map_err(|(error, _)| error).unwrap().offset
    }

    /// Publishes `event` with Kafka key `key`; returns its offset.
    async fn publish_event(&self, key: &str, event: &UploadEvent) -> i64 {
        self.publish(key, &serde_json::to_vec(event).unwrap()).await
    }

    /// The event MinIO sends for an `s3:ObjectCreated:*` event `name` on `object`.
    fn event(object: &SourceObject, name: &str) -> UploadEvent {
        let mut event = UploadEvent::for_object(object, Some("image/png"), Utc::now());
        event.event_name = format!("s3:ObjectCreated:{name}");
        event.records[0].event_name = event.event_name.clone();
        event
    }

    /// Reads every topic of the run until `done` holds, then [`QUIET_PERIOD`] more.
    async fn collect_until(&mut self, what: &str, done: impl Fn(&Pipeline) -> bool) {
        let started = Instant::now();
        let mut settled: Option<Instant> = None;
        while settled.is_none_or(|at| at.elapsed() < QUIET_PERIOD) {
            self.services.assert_running();
            assert!(
                started.elapsed() < DEADLINE,
                "not seen within {DEADLINE:?}: {what}. Seen: {}",
                self.summary()
            );
            if settled.is_none() && done(self) {
                settled = Some(Instant::now());
            }
            let next = tokio::time::timeout(Duration::from_millis(500), self.observer.recv()).await;
            let Ok(message) = next else { continue };
            let message = message.expect("observer consumer");
            let payload = message.payload().unwrap_or_default();
            let topics = &self.settings.topics;
            let kind = if message.topic() == topics.uploads {
                None
            } else if message.topic() == topics.deadletter {
                Some(MessageKind::DeadLetter)
            } else if StageName::ALL
                .iter()
                .any(|&stage| message.topic() == topics.jobs(stage))
            {
                Some(MessageKind::Job)
            } else {
                Some(MessageKind::Result)
            };
            // The uploads topic carries this file's deliberately broken events.
            if let Some(kind) = kind {
                self.schemas.check_bytes(kind, payload).unwrap();
            }
            self.seen.push(Seen {
                topic: message.topic().to_string(),
                key: message
                    .key()
                    .map(|key| String::from_utf8_lossy(key).into_owned()),
                payload: serde_json::from_slice(payload).unwrap_or(Value::Null),
            });
        }
    }

    fn on<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Seen> + 'a {
        self.seen.iter().filter(move |seen| seen.topic == topic)
    }

    fn dead_letters(&self) -> Vec<DeadLetter> {
        self.on(&self.settings.topics.deadletter)
            .map(|seen| serde_json::from_value(seen.payload.clone()).unwrap())
            .collect()
    }

    fn jobs(&self) -> Vec<Job> {
        let topics = &self.settings.topics;
        StageName::ALL
            .iter()
            .flat_map(|&stage| self.on(topics.jobs(stage)))
            .map(|seen| serde_json::from_value(seen.payload.clone()).unwrap())
            .collect()
    }

    /// Results for uploads of `key`, as published (numbers written as they came).
    fn results(&self, key: &str) -> Vec<&Value> {
        let topics = &self.settings.topics;
        StageName::ALL
            .iter()
            .flat_map(|&stage| self.on(topics.results(stage)))
            .map(|seen| &seen.payload)
            .filter(|result| result["source"]["key"] == key)
            .collect()
    }

    fn summary(&self) -> String {
        let codes: Vec<String> = self
            .dead_letters()
            .into_iter()
            .map(|letter| format!("{} at offset {}", letter.error.code, letter.origin.offset))
            .collect();
        let jobs: Vec<String> = self
            .jobs()
            .into_iter()
            .map(|job| {
                format!(
                    "{}/{} (ETag {})",
                    job.source.bucket, job.source.key, job.source.etag
                )
            })
            .collect();
        let results: Vec<&Value> = self
            .seen
            .iter()
            .filter(|seen| seen.topic.contains(".results."))
            .map(|seen| &seen.payload["source"])
            .collect();
        format!("dead letters {codes:?}; jobs {jobs:?}; results for {results:?}")
    }
}

/// A small PNG no other seed makes.
fn picture(seed: u32) -> Bytes {
    prism_e2e::encode(
        DynamicImage::ImageRgb8(prism_e2e::picture(seed, 64, 48)),
        ImageFormat::Png,
    )
}

fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_another_bucket_is_dead_lettered_unread() {
    let mut pipeline = Pipeline::start(r#"["thumbnail"]"#, &[&["serve", "dedup"]]).await;
    let other = format!("{}-other", pipeline.settings.input_bucket);
    prism_loadgen::create_bucket(&pipeline.settings.s3, &other)
        .await
        .unwrap();
    let private = pipeline.put(&other, "private.png", picture(1)).await;
    let event = Pipeline::event(&private, "Put");
    let offset = pipeline.publish_event("elsewhere", &event).await;

    pipeline
        .collect_until("an outcome for the other bucket's event", |p| {
            p.dead_letters().iter().any(|l| l.origin.offset == offset)
                || p.jobs().iter().any(|job| job.source.bucket == other)
        })
        .await;
    let made: Vec<Job> = pipeline.jobs();
    assert!(
        made.is_empty(),
        "dedup read an object of bucket {other:?}, which it was not configured for, and made \
         jobs of it: {:?}",
        made.iter().map(|job| &job.source).collect::<Vec<_>>()
    );
    let letters = pipeline.dead_letters();
    assert_eq!(letters.len(), 1, "{}", pipeline.summary());
    assert_eq!(
        (letters[0].stage.as_str(), letters[0].error.code.as_str()),
        ("dedup", "foreign_bucket")
    );
    assert!(
        letters[0].error.reason.contains(&other),
        "{}",
        letters[0].error.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_events_that_name_no_object_are_dead_lettered() {
    let mut pipeline = Pipeline::start(r#"["thumbnail"]"#, &[&["serve", "dedup"]]).await;
    let mut offsets = Vec::new();
    for payload in [
        "{}",
        r#"{"EventName":"s3:ObjectCreated:Put","Key":"prism-input/a.jpg","Records":[]}"#,
        r#"{"EventName":"s3:ObjectCreated:Put","Key":"prism-input/a.jpg"}"#,
    ] {
        offsets.push((
            pipeline.publish("broken", payload.as_bytes()).await,
            payload,
        ));
    }
    let bucket = pipeline.settings.input_bucket.clone();
    let good = pipeline.put(&bucket, "good.png", picture(2)).await;
    pipeline
        .publish_event("broken", &Pipeline::event(&good, "Put"))
        .await;

    pipeline
        .collect_until("the job of the good event after the broken ones", |p| {
            p.jobs().iter().any(|job| job.source.key == "good.png")
        })
        .await;
    let letters = pipeline.dead_letters();
    for (offset, payload) in offsets {
        let letter = letters.iter().find(|l| l.origin.offset == offset);
        let letter = letter.unwrap_or_else(|| {
            panic!(
                "{payload} was consumed without a dead letter: {}",
                pipeline.summary()
            )
        });
        assert_eq!(letter.error.code, "no_records", "{payload}");
        assert_eq!(
            letter.original,
            serde_json::from_str::<Value>(payload).unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_overwritten_before_dedup_reads_it_is_never_processed_under_the_old_etag() {
    let mut pipeline = Pipeline::start(
        r#"["thumbnail"]"#,
        &[&["serve", "dedup"], &["serve", "thumbnail"]],
    )
    .await;
    let bucket = pipeline.settings.input_bucket.clone();
    let (old_bytes, new_bytes) = (picture(3), picture(4));
    let old = pipeline.put(&bucket, "photo.png", old_bytes.clone()).await;
    let new = pipeline.put(&bucket, "photo.png", new_bytes.clone()).await;
    assert_ne!(old.etag, new.etag);
    // MinIO's event for the first PUT reaches dedup after the second PUT; then the second's.
    let kafka_key = format!("{bucket}/photo.png");
    let old_offset = pipeline
        .publish_event(&kafka_key, &Pipeline::event(&old, "Put"))
        .await;
    pipeline
        .publish_event(&kafka_key, &Pipeline::event(&new, "Put"))
        .await;

    pipeline
        .collect_until("a result for the second version", |p| {
            p.results("photo.png")
                .iter()
                .any(|r| r["source"]["etag"] == new.etag.as_str())
        })
        .await;
    // Which ETag names which bytes.
    let etag_of = |content_hash: &str| {
        if content_hash == hash(&old_bytes) {
            old.etag.as_str()
        } else if content_hash == hash(&new_bytes) {
            new.etag.as_str()
        } else {
            panic!("a result for bytes never uploaded: {content_hash}")
        }
    };
    let results = pipeline.results("photo.png");
    for result in &results {
        let content_hash = result["content_hash"].as_str().unwrap();
        assert_eq!(
            result["source"]["etag"],
            etag_of(content_hash),
            "a result names ETag {} but its content is that of another version",
            result["source"]["etag"]
        );
    }
    let old_outcome = pipeline
        .dead_letters()
        .into_iter()
        .find(|l| l.origin.offset == old_offset);
    let old_result = results
        .iter()
        .any(|r| r["source"]["etag"] == old.etag.as_str());
    match old_outcome {
        Some(letter) => {
            assert_eq!(letter.error.code, "content_changed");
            assert_eq!(letter.source, Some(old));
        }
        None => assert!(
            old_result,
            "the first version's event got no outcome: {}",
            pipeline.summary()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_edit_gets_no_second_result() {
    let mut pipeline = Pipeline::start(
        r#"["thumbnail"]"#,
        &[&["serve", "dedup"], &["serve", "thumbnail"]],
    )
    .await;
    let bucket = pipeline.settings.input_bucket.clone();
    let tagged = pipeline.put(&bucket, "tagged.png", picture(5)).await;
    let kafka_key = format!("{bucket}/tagged.png");
    pipeline
        .publish_event(&kafka_key, &Pipeline::event(&tagged, "Put"))
        .await;
    pipeline
        .collect_until("the upload's result", |p| {
            !p.results("tagged.png").is_empty()
        })
        .await;

    // `mc tag set` and `mc tag remove`, then a new upload on the same partition.
    for edit in ["PutTagging", "DeleteTagging"] {
        pipeline
            .publish_event(&kafka_key, &Pipeline::event(&tagged, edit))
            .await;
    }
    let later = pipeline.put(&bucket, "later.png", picture(6)).await;
    pipeline
        .publish_event(&kafka_key, &Pipeline::event(&later, "Put"))
        .await;
    pipeline
        .collect_until("the result of the upload after the tag edits", |p| {
            !p.results("later.png").is_empty()
        })
        .await;
    assert_eq!(
        pipeline.results("tagged.png").len(),
        1,
        "a tag edit was taken for a new upload: {}",
        pipeline.summary()
    );
    assert!(pipeline.dead_letters().is_empty(), "{}", pipeline.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_announces_objects_as_minio_does() {
    let mut pipeline = Pipeline::start(r#"["thumbnail"]"#, &[&["watch"]]).await;
    let bucket = pipeline.settings.input_bucket.clone();
    let key = "Ferien 2024/Straße & Café+1.png";
    let object = pipeline.put(&bucket, key, picture(7)).await;

    pipeline
        .collect_until("the watcher's event", |p| {
            p.on(&p.settings.topics.uploads).next().is_some()
        })
        .await;
    let uploads: Vec<&Seen> = pipeline.on(&pipeline.settings.topics.uploads).collect();
    assert_eq!(uploads.len(), 1);
    let event = &uploads[0].payload;
    let as_minio_writes_it = format!("{bucket}/{key}");
    // MinIO's Kafka target: Key = bucket + "/" + url.QueryUnescape(s3.object.key), also the
    // message key; s3.object.key stays url.QueryEscape(key).
    assert_eq!(event["Key"], as_minio_writes_it.as_str());
    assert_eq!(uploads[0].key.as_deref(), Some(as_minio_writes_it.as_str()));
    let record = &event["Records"][0];
    assert_eq!(
        record["s3"]["object"]["key"],
        "Ferien+2024%2FStra%C3%9Fe+%26+Caf%C3%A9%2B1.png"
    );
    assert_eq!(record["s3"]["bucket"]["name"], bucket.as_str());
    assert_eq!(record["s3"]["object"]["eTag"], object.etag.as_str());
    assert_eq!(event["EventName"], "s3:ObjectCreated:Put");
    assert_eq!(record["eventName"], "s3:ObjectCreated:Put");
    pipeline
        .schemas
        .check(MessageKind::Upload, event)
        .expect("the upload schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deduplicated_result_writes_its_payload_as_the_fresh_one() {
    let mut pipeline = Pipeline::start(
        r#"["detect", "classify"]"#,
        &[
            &["serve", "dedup"],
            &["serve", "detect"],
            &["serve", "classify"],
        ],
    )
    .await;
    let bus = std::fs::read(prism_detect::model::prism_home().join("images/bus.jpg"))
        .expect("bus.jpg is missing from $PRISM_HOME/images: run deploy/local/fetch-assets.sh");
    let bucket = pipeline.settings.input_bucket.clone();
    for key in ["fresh/bus.jpg", "copy/bus.jpg"] {
        let object = pipeline.put(&bucket, key, Bytes::from(bus.clone())).await;
        pipeline
            .publish_event(&format!("{bucket}/{key}"), &Pipeline::event(&object, "Put"))
            .await;
        // The copy must find the claims finished, so its results come from the stored claims.
        pipeline
            .collect_until("the detect and classify results", |p| {
                p.results(key).len() == 2
            })
            .await;
    }
    let field_of = |key: &str, stage: &str, field: &str| {
        let results: Vec<&Value> = pipeline
            .results(key)
            .into_iter()
            .filter(|result| result["stage"] == stage)
            .collect();
        assert_eq!(results.len(), 1, "{key}: {}", pipeline.summary());
        if key.starts_with("copy/") {
            assert_eq!(results[0]["deduplicated"], true, "{key} {stage}");
        }
        results[0][field].clone()
    };
    // A person's box ends at the photo's right edge: a whole number, the case that was written
    // `810.0` fresh and `810` from the stored claim.
    let detections = field_of("fresh/bus.jpg", "detect", "detections");
    let boxes = detections.as_array().unwrap().iter().map(|d| &d["box"]);
    let at_the_edge = boxes.into_iter().any(|b| b["x2"].as_f64() == Some(810.0));
    assert!(
        at_the_edge,
        "no box ends at the edge any more: {detections}"
    );
    for (stage, field) in [("detect", "detections"), ("classify", "classes")] {
        // serde_json's Value keeps `810.0` and `810` apart: compare the text as published.
        let fresh = field_of("fresh/bus.jpg", stage, field).to_string();
        let copy = field_of("copy/bus.jpg", stage, field).to_string();
        assert_eq!(
            fresh, copy,
            "the deduplicated {stage} result writes its {field} otherwise"
        );
    }
}
