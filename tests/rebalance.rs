//! Scaling under load over real servers: two replicas of every service, then a third joins each
//! consumer group and, once every joiner has its share of partitions, one of the first two leaves
//! (SIGTERM), all while a steady stream of uploads goes through. Nothing may be lost and no output
//! written twice with different content: every upload gets a result per stage, repeated results
//! say the same, every claim is done.
//!
//! Uses the shared servers (`deploy/local/servers.sh start`), like the end-to-end test.

use prism_e2e::{LoadTest, Services, Stream, Upload, assert_complete};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Uploads in the stream; one in [`COPY_EVERY`] is a copy of an earlier one under a new key.
const UPLOADS: u32 = 120;
const COPY_EVERY: u32 = 5;
/// Pause between two uploads of the stream.
const UPLOAD_PAUSE: Duration = Duration::from_millis(200);
/// Once every upload has its results, keep listening this long to catch redeliveries.
const QUIET_PERIOD: Duration = Duration::from_secs(5);
/// How long a joining replica may take to get its partitions.
const JOIN_DEADLINE: Duration = Duration::from_secs(60);

const STAGES: [(&str, &[&str]); 4] = [
    ("dedup", &["serve", "dedup"]),
    ("thumbnail", &["serve", "thumbnail"]),
    ("detect", &["serve", "detect"]),
    ("classify", &["serve", "classify"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_changed_under_rebalance() {
    let test_started = Instant::now();
    let extra = [("PRISM_CLAIM_LEASE", "10000")].map(|(k, v)| (k.to_string(), v.to_string()));
    let mut services = vec![("watch".to_string(), vec!["watch", "--interval-ms", "200"])];
    for (stage, args) in STAGES {
        for replica in ["a", "b"] {
            services.push((format!("{stage}-{replica}"), args.to_vec()));
        }
    }
    let mut test = LoadTest::start(
        &extra,
        &services,
        Stream {
            count: UPLOADS,
            copy_every: COPY_EVERY,
            pause: UPLOAD_PAUSE,
        },
    )
    .await;
    println!(
        "two replicas per stage, warm {:.1} s after the test started",
        test_started.elapsed().as_secs_f64()
    );
    let third = UPLOADS as usize / 3;
    let mut joined: Option<Instant> = None;
    let mut left = false;
    while !left {
        test.services.assert_running();
        let count = test.uploaded.load(Ordering::Relaxed);
        match joined {
            None if count >= third => {
                println!("{count} uploaded: a third replica joins each stage");
                for (stage, args) in STAGES {
                    test.services.spawn(&format!("{stage}-c"), args);
                }
                joined = Some(Instant::now());
            }
            // One scaling step at a time: the first replicas leave once every joiner has its
            // share. Tansu 0.6 can leave a group with no consumer for good when a member leaves
            // while the rebalance a joiner started is still going on (seen 2 runs in 8).
            Some(since) if count >= 2 * third && joiners_have_partitions(&test.services) => {
                println!(
                    "{count} uploaded, the joiners got partitions {:.1} s after they started: \
                     the first replica of each stage leaves",
                    since.elapsed().as_secs_f64()
                );
                for (stage, _) in STAGES {
                    test.services.stop(&format!("{stage}-a"));
                }
                left = true;
            }
            Some(since) => assert!(
                since.elapsed() < JOIN_DEADLINE,
                "a joiner got no partitions within {JOIN_DEADLINE:?}:\n{}",
                STAGES
                    .map(|(stage, _)| test.services.log(&format!("{stage}-c")))
                    .join("\n")
            ),
            None => {}
        }
        test.listener.read().await;
    }
    test.uploader.await.expect("uploader");
    let stream_over = Instant::now();

    let all: Vec<&Upload> = std::iter::once(&test.warmup).chain(&test.uploads).collect();
    test.listener.wait_for_all(&all, &mut test.services).await;
    let caught_up = stream_over.elapsed();
    test.listener.read_for(QUIET_PERIOD).await;
    test.services.assert_running();

    println!("--- rebalance test timings ---");
    println!(
        "last results {:.1} s after the last upload; messages per topic: {:?}; the test took {:.0} s",
        caught_up.as_secs_f64(),
        test.listener.seen.counts,
        test_started.elapsed().as_secs_f64()
    );
    assert_complete(
        "rebalance test figures",
        &test.listener.seen,
        &all,
        &test.settings,
        &test.buckets,
    )
    .await;
}

/// Whether every stage's joining replica has been given partitions (a joiner with none would
/// leave all the work to the old replicas).
fn joiners_have_partitions(services: &Services) -> bool {
    STAGES.iter().all(|(stage, _)| {
        services
            .log(&format!("{stage}-c"))
            .lines()
            .any(|line| line.contains("partitions assigned") && !line.contains("partitions=none"))
    })
}
