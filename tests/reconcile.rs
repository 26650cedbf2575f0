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
use image::{DynamicImage, ImageFormat};
use prism_core::contract::ingest::UploadEvent;
use prism_core::contract::{DeadLetter, StageResult};
use prism_core::ports::store::Buckets;
use prism_core::runtime::config::Settings;
use prism_e2e::{DEADLINE, Services};
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// After every upload has its result, keep listening this long to catch duplicates.
const QUIET_PERIOD: Duration = Duration::from_secs(5);

/// This run's topics, buckets and database; thumbnails only (detection adds nothing here).
fn run_environment(run: &str) -> Vec<(String, String)> {
    let mut environment = prism_e2e::run_environment(run);
    for (key, value) in &mut environment {
        if key == "PRISM_ENABLED_STAGES" {
            *value = "[\"thumbnail\"]".into();
        }
    }
    environment
}

/// Runs `prism reconcile` and returns its last line, the counts.
fn reconcile(environment: &[(String, String)], args: &[&str]) -> String {
    let output = Command::new(prism_e2e::prism_binary())
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
    prism_e2e::encode(
        DynamicImage::ImageRgb8(prism_e2e::picture(seed, 96, 64)),
        ImageFormat::Png,
    )
}

/// Puts an object under a key object_store refuses to name, with a presigned raw S3 request.
async fn put_raw(settings: &Settings, key: &str) {
    let bucket =
        prism_core::ports::store::signing_bucket(&settings.s3, &settings.input_bucket).unwrap();
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
        services: &mut Services,
    ) {
        let started = Instant::now();
        let mut settled: Option<Instant> = None;
        let mut stream = consumer.stream();
        while settled.is_none_or(|at| at.elapsed() < QUIET_PERIOD) {
            services.assert_running();
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
                for object in event
                    .created_objects(&settings.input_bucket, &settings.output_bucket)
                    .unwrap()
                {
                    *self.announcements.entry(object.key).or_default() += 1;
                }
            } else if message.topic() == settings.topics.thumbnail_results {
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
    let run = prism_e2e::run_name();
    let environment = run_environment(&run);
    let settings = prism_e2e::settings_for(&environment);
    prism_e2e::prepare(&settings).await;
    let consumer = prism_e2e::observer(&settings, &run);
    let buckets = Buckets::s3(&settings.s3);

    // Uploaded with a watcher running: announced and handled the usual way.
    let mut services = Services::start(
        &environment,
        &[&["serve", "dedup"], &["serve", "thumbnail"]],
    );
    services.spawn("watch", &["watch", "--interval-ms", "200"]);
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
    services.stop("watch");

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
    services.spawn("watch", &["watch", "--interval-ms", "200"]);
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
    services.stop("watch");

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
