//! `prism reconcile` over real servers (`deploy/local/servers.sh`): uploads whose notification was
//! lost are found by listing the input bucket against dedup's ledger, re-emitted, and handled
//! exactly once; uploads already handled are never re-emitted, and when a restarted watcher
//! re-announces the whole bucket, dedup drops every upload it has handled.
//!
//! Notifications are "lost" by uploading while no watcher runs. The bucket also holds keys Prism
//! cannot read back (`a//b`, a tab, a newline), put there with a raw S3 request: the listing must
//! set them aside instead of failing.

use bytes::Bytes;
use futures::StreamExt;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use prism_shared::config::{self, Settings};
use prism_shared::contract::{DeadLetter, StageResult};
use prism_shared::ingest::UploadEvent;
use prism_shared::store::Buckets;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: a new consumer group's first join alone takes seconds on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(180);
/// After every upload has its result, keep listening this long to catch duplicates.
const QUIET_PERIOD: Duration = Duration::from_secs(5);

/// This run's topics, buckets and database; thumbnails only (detection adds nothing here).
fn run_environment(run: &str) -> Vec<(String, String)> {
    let topic = |name: &str| format!("reconcile-{run}.{name}");
    [
        ("PRISM_TOPICS__UPLOADS", topic("uploads")),
        ("PRISM_TOPICS__THUMBNAIL_JOBS", topic("jobs.thumbnail")),
        ("PRISM_TOPICS__DETECT_JOBS", topic("jobs.detect")),
        (
            "PRISM_TOPICS__THUMBNAIL_RESULTS",
            topic("results.thumbnail"),
        ),
        ("PRISM_TOPICS__DETECT_RESULTS", topic("results.detect")),
        ("PRISM_TOPICS__DEADLETTER", topic("deadletter")),
        ("PRISM_INPUT_BUCKET", format!("reconcile-{run}-in")),
        ("PRISM_OUTPUT_BUCKET", format!("reconcile-{run}-out")),
        ("PRISM_COUCHDB__DATABASE", format!("reconcile-{run}")),
        ("PRISM_KAFKA__GROUP_PREFIX", format!("reconcile-{run}")),
        // Tansu makes a new group's first join wait half the session timeout.
        ("PRISM_KAFKA__SESSION_TIMEOUT_MS", "6000".into()),
        ("PRISM_ENABLED_STAGES", "[\"thumbnail\"]".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Settings from the real servers' environment plus this run's names; fails loudly without servers.
fn settings_for(environment: &[(String, String)]) -> Settings {
    for required in [
        "PRISM_KAFKA__BROKERS",
        "PRISM_S3__ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "PRISM_COUCHDB__URL",
        "PRISM_COUCHDB__PASSWORD",
    ] {
        assert!(
            std::env::var(required).is_ok(),
            "{required} is not set: this test needs the real servers. Run `deploy/local/test.sh`, or \
             `deploy/local/servers.sh start && eval \"$(deploy/local/servers.sh env)\"` first."
        );
    }
    // SAFETY: set before any thread of this test reads the environment.
    for (key, value) in environment {
        unsafe { std::env::set_var(key, value) };
    }
    config::load().expect("configuration")
}

/// A `prism serve …` process, stopped (and its log shown if the test failed) when dropped.
struct Service {
    child: Child,
    log: std::path::PathBuf,
}

impl Service {
    fn start(environment: &[(String, String)], args: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!(
            "prism-reconcile-{}-{}.log",
            std::process::id(),
            args.join("-")
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_prism"))
            .args(args)
            .envs(environment.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prism {args:?}: {e}"));
        Service { child, log }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // SIGTERM, so consumers leave their groups at once.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} ---\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Runs `prism reconcile` and returns its last line, the counts.
fn reconcile(environment: &[(String, String)], args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_prism"))
        .arg("reconcile")
        .args(args)
        .envs(environment.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("cannot run prism reconcile");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "prism reconcile {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("prism reconcile {args:?}:\n{stdout}");
    stdout.lines().last().unwrap_or_default().to_string()
}

/// A small PNG no other seed makes.
fn picture(seed: u32) -> Bytes {
    let image = RgbImage::from_fn(96, 64, |x, y| {
        Rgb([(x * 2 + seed * 40) as u8, (y * 3) as u8, (seed * 71) as u8])
    });
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(image)
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .unwrap();
    Bytes::from(bytes)
}

/// Puts an object under a key object_store refuses to name, with a presigned raw S3 request.
async fn put_raw(settings: &Settings, key: &str) {
    let bucket = rusty_s3::Bucket::new(
        settings.s3.endpoint.parse().unwrap(),
        rusty_s3::UrlStyle::Path,
        settings.input_bucket.clone(),
        settings.s3.region.clone(),
    )
    .unwrap();
    let credentials = rusty_s3::Credentials::from_env().expect("AWS credentials");
    let url = rusty_s3::S3Action::sign(
        &bucket.put_object(Some(&credentials), key),
        Duration::from_secs(60),
    );
    let response = reqwest::Client::new()
        .put(url)
        .body(picture(99).to_vec())
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "raw PUT of {key:?}: {}",
        response.status()
    );
}

/// Results, dead letters and upload events, per upload key.
#[derive(Default)]
struct Outcomes {
    results: BTreeMap<String, Vec<StageResult>>,
    dead_letters: Vec<DeadLetter>,
    announcements: BTreeMap<String, usize>,
}

impl Outcomes {
    fn have_results(&self, keys: &[String]) -> bool {
        keys.iter().all(|k| self.results.contains_key(k))
    }

    /// Reads until `done`, then `QUIET_PERIOD` more for duplicates.
    async fn collect(
        &mut self,
        consumer: &StreamConsumer,
        settings: &Settings,
        done: impl Fn(&Outcomes) -> bool,
        services: &mut [Service],
    ) {
        let started = Instant::now();
        let mut settled: Option<Instant> = None;
        let mut stream = consumer.stream();
        while settled.is_none_or(|at| at.elapsed() < QUIET_PERIOD) {
            for service in services.iter_mut() {
                if let Some(status) = service.child.try_wait().unwrap() {
                    panic!("a service exited with {status}");
                }
            }
            assert!(
                started.elapsed() < DEADLINE,
                "not done within {DEADLINE:?}: results {:?}, upload events {:?}",
                self.results.keys().collect::<Vec<_>>(),
                self.announcements
            );
            if settled.is_none() && done(self) {
                settled = Some(Instant::now());
            }
            let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_millis(500), stream.next()).await
            else {
                continue;
            };
            let message = message.expect("observer consumer");
            let payload = message.payload().unwrap_or_default();
            if message.topic() == settings.topics.deadletter {
                self.dead_letters
                    .push(serde_json::from_slice(payload).unwrap());
            } else if message.topic() == settings.topics.uploads {
                let event = UploadEvent::parse(payload).unwrap();
                for object in event.created_objects(&[]).unwrap() {
                    *self.announcements.entry(object.key).or_default() += 1;
                }
            } else {
                let result: StageResult = serde_json::from_slice(payload).unwrap();
                self.results
                    .entry(result.source.key.clone())
                    .or_default()
                    .push(result);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_notifications_are_re_emitted_and_handled_exactly_once() {
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let environment = run_environment(&run);
    let settings = settings_for(&environment);
    prism_loadgen::create_bucket(&settings.s3, &settings.input_bucket)
        .await
        .unwrap();
    prism_loadgen::create_bucket(&settings.s3, &settings.output_bucket)
        .await
        .unwrap();
    prism_shared::bus::kafka::ensure_topics(&settings.kafka, &settings.topics.all())
        .await
        .expect("Kafka must be reachable");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("group.id", format!("reconcile-{run}-observer"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer
        .subscribe(&[
            settings.topics.uploads.as_str(),
            settings.topics.thumbnail_results.as_str(),
            settings.topics.deadletter.as_str(),
        ])
        .unwrap();
    let buckets = Buckets::s3(&settings.s3);

    // Uploaded with a watcher running: announced and handled the usual way.
    let mut services = vec![
        Service::start(&environment, &["serve", "dedup"]),
        Service::start(&environment, &["serve", "thumbnail"]),
    ];
    let watcher = Service::start(&environment, &["watch", "--interval-ms", "200"]);
    let announced: Vec<(String, Bytes)> = (0..3)
        .map(|n| (format!("announced/{n}.png"), picture(n)))
        .collect();
    prism_loadgen::upload(&buckets, &settings.input_bucket, announced.clone(), 3)
        .await
        .unwrap();
    let announced_keys: Vec<String> = announced.iter().map(|(k, _)| k.clone()).collect();
    let mut outcomes = Outcomes::default();
    outcomes
        .collect(
            &consumer,
            &settings,
            |o| o.have_results(&announced_keys),
            &mut services,
        )
        .await;
    drop(watcher);

    // Uploaded with nobody announcing them: their notifications are lost. One is a copy of an
    // announced image (it gets the earlier result), and three have keys Prism cannot read back.
    let mut lost: Vec<(String, Bytes)> = (10..15)
        .map(|n| (format!("lost/{n} with space.png"), picture(n)))
        .collect();
    lost.push(("lost/copy of 0.png".into(), picture(0)));
    prism_loadgen::upload(&buckets, &settings.input_bucket, lost.clone(), 3)
        .await
        .unwrap();
    for odd in [
        "odd//double slash.png",
        "odd/tab\there.png",
        "odd/line\nbreak.png",
    ] {
        put_raw(&settings, odd).await;
    }
    let listed = announced.len() + lost.len();

    let dry = reconcile(&environment, &["--dry-run", "--min-age-secs", "0"]);
    assert_eq!(
        dry,
        format!(
            "listed {listed}, handled 3, missing {}, recent 0 (changed in the last 0 s), unlisted 3",
            lost.len()
        )
    );
    // The default grace period leaves just-uploaded objects to their own notification.
    let patient = reconcile(&environment, &["--dry-run"]);
    assert!(
        patient.contains(&format!("missing 0, recent {}", lost.len())),
        "{patient}"
    );

    let emitted_at = Instant::now();
    let first = reconcile(&environment, &["--min-age-secs", "0"]);
    assert_eq!(
        first,
        format!(
            "listed {listed}, handled 3, re-emitted {}, recent 0 (changed in the last 0 s), unlisted 3",
            lost.len()
        )
    );
    let lost_keys: Vec<String> = lost.iter().map(|(k, _)| k.clone()).collect();
    outcomes
        .collect(
            &consumer,
            &settings,
            |o| o.have_results(&lost_keys),
            &mut services,
        )
        .await;
    println!(
        "{} re-emitted uploads handled {:.1} s after reconcile started",
        lost.len(),
        (emitted_at.elapsed() - QUIET_PERIOD).as_secs_f64()
    );

    // A restarted watcher cannot know what it announced before: its first listing re-announces
    // every object, and dedup must drop each one (all handled) instead of giving a second result.
    let before = outcomes.announcements.clone();
    let all_keys: Vec<String> = announced_keys.iter().chain(&lost_keys).cloned().collect();
    let watcher = Service::start(&environment, &["watch", "--interval-ms", "200"]);
    outcomes
        .collect(
            &consumer,
            &settings,
            |o| {
                all_keys
                    .iter()
                    .all(|k| o.announcements.get(k) > before.get(k))
            },
            &mut services,
        )
        .await;
    drop(watcher);

    for key in announced_keys.iter().chain(&lost_keys) {
        let results = &outcomes.results[key];
        assert_eq!(results.len(), 1, "{key} got {} results", results.len());
    }
    assert_eq!(outcomes.results.len(), listed, "results for unknown keys");
    assert!(outcomes.results["lost/copy of 0.png"][0].deduplicated);
    assert!(
        outcomes.dead_letters.is_empty(),
        "{:?}",
        outcomes.dead_letters
    );

    let again = reconcile(&environment, &["--min-age-secs", "0"]);
    assert_eq!(
        again,
        format!(
            "listed {listed}, handled {listed}, re-emitted 0, recent 0 (changed in the last 0 s), unlisted 3"
        )
    );
}
