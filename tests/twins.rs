//! Twins of an upload that cannot be read are never stranded. a.jpg is admitted, then deleted
//! before the thumbnail stage reads it; b.jpg and c.jpg, the same bytes, arrive meanwhile and wait
//! on a.jpg's claim. a.jpg must be dead-lettered (`object_not_found`), and the first of them to
//! wait must take the work over, so that b.jpg and c.jpg each get their result and the claim ends
//! done. Before the hand-over existed, the claim stayed `processing` with b and c waiting for good.
//!
//! Uses the shared servers (`deploy/local/servers.sh start`), like the end-to-end test.

use object_store::ObjectStoreExt;
use prism_core::contract::StageName;
use prism_core::ports::claims::couch::CouchIndex;
use prism_core::ports::claims::{ClaimIndex, ClaimStatus, claim_id};
use prism_core::ports::store::{Buckets, ContentHash, object_path};
use prism_e2e::{
    DEADLINE, Listener, Services, generated, observer, prepare, run_environment, run_name,
    settings_for, upload_until_stored,
};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_of_an_upload_deleted_before_processing_get_their_results() {
    let run = run_name();
    let mut environment = run_environment(&run);
    environment.push(("PRISM_ENABLED_STAGES".into(), "[\"thumbnail\"]".into()));
    let settings = settings_for(&environment);
    prepare(&settings).await;
    let index = CouchIndex::connect(&settings.couchdb).await.unwrap();
    let buckets = Buckets::s3(&settings.s3);
    // No thumbnail replica yet: a.jpg's job waits on its topic until b and c are waiting too.
    let mut services = Services::start(
        &environment,
        &[&["serve", "dedup"], &["watch", "--interval-ms", "200"]],
    );

    let first = generated("a.jpg", 31, (320, 240), image::ImageFormat::Jpeg);
    let hash = ContentHash::of(&first.bytes).0;
    let fingerprint = settings.stages.fingerprint(StageName::Thumbnail);
    let claim = claim_id(StageName::Thumbnail, &fingerprint, &hash);
    upload_until_stored(&buckets, &settings.input_bucket, &first).await;
    wait_until(&mut services, "a.jpg's claim", || async {
        index.get(&claim).await.unwrap().is_some()
    })
    .await;
    let input = buckets.bucket(&settings.input_bucket).unwrap();
    input.delete(&object_path("a.jpg").unwrap()).await.unwrap();
    for twin in ["b.jpg", "c.jpg"] {
        let mut copy = first.clone();
        copy.key = twin.into();
        upload_until_stored(&buckets, &settings.input_bucket, &copy).await;
    }
    wait_until(&mut services, "b and c waiting on the claim", || async {
        index.get(&claim).await.unwrap().unwrap().waiters.len() == 2
    })
    .await;
    // Their events may reach dedup in either order (other keys, other partitions): the first
    // to wait is the one that takes over.
    let waiters = index.get(&claim).await.unwrap().unwrap().waiters;
    let (first, second) = (&waiters[0].source.key, &waiters[1].source.key);

    services.spawn("thumbnail", &["serve", "thumbnail"]);
    let mut listener = Listener::new(observer(&settings, &run), &settings.topics);
    let keys = ["a.jpg", "b.jpg", "c.jpg"];
    let started = Instant::now();
    while !keys
        .iter()
        .all(|key| listener.seen.has_outcome(StageName::Thumbnail, key))
    {
        services.assert_running();
        assert!(
            started.elapsed() < DEADLINE,
            "no outcome for every upload within {DEADLINE:?}: results {:?}, dead letters {:?}",
            listener.seen.results.keys().collect::<Vec<_>>(),
            listener.seen.dead_letters.keys().collect::<Vec<_>>()
        );
        listener.read().await;
    }

    let seen = &listener.seen;
    let letter = &seen.dead_letters[&(StageName::Thumbnail, "a.jpg".to_string())][0];
    assert_eq!(letter.error.code, "object_not_found");
    let processed = &seen.results[&(StageName::Thumbnail, first.clone())][0];
    let copied = &seen.results[&(StageName::Thumbnail, second.clone())][0];
    assert!(
        !processed.deduplicated,
        "{first}, the first waiting, took the work over"
    );
    assert!(copied.deduplicated);
    assert_eq!(processed.outputs, copied.outputs);
    let claim = index.get(&claim).await.unwrap().unwrap();
    assert_eq!(claim.status, ClaimStatus::Done);
    assert_eq!(&claim.first_source.source.key, first);
}

/// Polls `condition` every 100 ms until it holds; fails after [`DEADLINE`].
async fn wait_until<F, Fut>(services: &mut Services, what: &str, condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        services.assert_running();
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
