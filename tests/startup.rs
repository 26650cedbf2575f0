//! Starting in any order: services come up before their servers and buckets exist, as they do
//! under compose or Kubernetes, and as the README's "run by hand" steps start them.
//!
//! - The stage services create the output bucket they write to, as they create their topics: an
//!   upload made before it existed still gets its thumbnails (it used to be retried for ever with a
//!   warning, `NoSuchBucket`, and never got a result).
//! - A service whose CouchDB is not there waits for it instead of exiting (it used to exit with
//!   `cannot reach CouchDB`).
//!
//! Uses the shared servers (`deploy/local/servers.sh start`), like the end-to-end test.

use prism_core::contract::StageName;
use prism_core::ports::bus::kafka::ensure_topics;
use prism_core::ports::store::Buckets;
use prism_e2e::{
    DEADLINE, Listener, Services, generated, observer, run_environment, run_name, settings_for,
    upload_until_stored,
};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stage_services_create_the_output_bucket_they_write_to() {
    let run = run_name();
    let mut environment = run_environment(&run);
    environment.push(("PRISM_ENABLED_STAGES".into(), "[\"thumbnail\"]".into()));
    let settings = settings_for(&environment);
    // Only what a user makes: the input bucket, by uploading (loadgen creates it).
    prism_loadgen::create_bucket(&settings.s3, &settings.input_bucket)
        .await
        .unwrap();
    ensure_topics(&settings.kafka, &settings.topics.all())
        .await
        .unwrap();
    let mut services = Services::start(
        &environment,
        &[
            &["serve", "dedup"],
            &["serve", "thumbnail"],
            &["watch", "--interval-ms", "200"],
        ],
    );
    let buckets = Buckets::s3(&settings.s3);
    let upload = generated("first.png", 3, (64, 48), image::ImageFormat::Png);
    upload_until_stored(&buckets, &settings.input_bucket, &upload).await;

    let mut listener = Listener::new(observer(&settings, &run), &settings.topics);
    let started = Instant::now();
    while !listener.seen.has_outcome(StageName::Thumbnail, &upload.key) {
        services.assert_running();
        assert!(
            started.elapsed() < DEADLINE,
            "no thumbnail result within {DEADLINE:?}; thumbnail's log:\n{}",
            services.log("serve-thumbnail")
        );
        listener.read().await;
    }
    let result = &listener.seen.results[&(StageName::Thumbnail, upload.key.clone())][0];
    assert!(!result.outputs.is_empty());
    assert!(
        result
            .outputs
            .iter()
            .all(|output| output.bucket == settings.output_bucket)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_waits_for_a_couchdb_that_is_not_there_yet() {
    let run = run_name();
    let mut environment = run_environment(&run);
    // Nothing listens there: the port was free a moment ago and is released at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    environment.push((
        "PRISM_COUCHDB__URL".into(),
        format!("http://127.0.0.1:{port}"),
    ));
    settings_for(&environment);
    let mut services = Services::start(&environment, &[&["serve", "dedup"]]);
    let started = Instant::now();
    while !services.log("serve-dedup").contains("waiting for it") {
        services.assert_running();
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "dedup never said it was waiting for CouchDB:\n{}",
            services.log("serve-dedup")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still up a while later: waiting, not exiting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    services.assert_running();
    assert!(services.log("serve-dedup").contains("CouchDB at"));
}
