//! Faults over real servers: while a steady stream of uploads (some of them copies) goes through
//! the pipeline, the test kills (SIGKILL) a thumbnail replica, the dedup service, the detect
//! service and the classify service, freezes the broker, and restarts the S3 server and CouchDB,
//! one at a time. After recovery every upload must have a result per stage, every output must
//! exist, no claim may be left processing, and redelivered results must say the same as the
//! first.
//!
//! Recovery time is measured per fault: from the fault to the moment an upload made right after
//! it has all its results (so it includes the backlog the fault left).
//!
//! The servers are this test's own ([`PrivateServers`]): other tests use the shared ones meanwhile.

use image::ImageFormat;
use prism_e2e::{
    LoadTest, PrivateServers, Services, Stream, Upload, assert_complete, generated,
    upload_until_stored,
};
use std::time::{Duration, Instant};

/// Uploads in the stream; one in [`COPY_EVERY`] is a copy of an earlier one under a new key.
const UPLOADS: u32 = 200;
const COPY_EVERY: u32 = 5;
/// Pause between two uploads of the stream.
const UPLOAD_PAUSE: Duration = Duration::from_millis(500);
/// Calm between two faults, the stream flowing.
const BETWEEN_FAULTS: Duration = Duration::from_secs(3);
/// Once every upload has its results, keep listening this long to catch redeliveries.
const QUIET_PERIOD: Duration = Duration::from_secs(5);

/// How long the broker stays frozen.
const BROKER_PAUSE: Duration = Duration::from_secs(10);

/// What the test does to the system, in order.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL a service process, then start a new one in its place.
    Kill(&'static str),
    /// Stop a server, then start it again (`servers.sh restart`).
    Restart(&'static str),
    /// SIGSTOP a server for a while, then SIGCONT: it neither answers nor closes connections.
    Freeze(&'static str, Duration),
}

const FAULTS: [Fault; 7] = [
    Fault::Kill("thumbnail-a"),
    Fault::Kill("dedup"),
    Fault::Kill("detect"),
    Fault::Kill("classify"),
    // Not a restart: Tansu 0.6 forgets its partitions' offsets when it restarts (memory storage
    // loses the topics; S3 storage numbers new messages from 0 again, below the consumers'
    // committed offsets), which no client can survive. Frozen, it keeps its log.
    Fault::Freeze("kafka", BROKER_PAUSE),
    Fault::Restart("s3"),
    Fault::Restart("couchdb"),
];

const SERVICES: [(&str, &[&str]); 6] = [
    ("dedup", &["serve", "dedup"]),
    ("thumbnail-a", &["serve", "thumbnail"]),
    ("thumbnail-b", &["serve", "thumbnail"]),
    ("detect", &["serve", "detect"]),
    ("classify", &["serve", "classify"]),
    ("watch", &["watch", "--interval-ms", "200"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upload_gets_its_results_under_faults() {
    let test_started = Instant::now();
    let servers = PrivateServers::start("faults");
    let mut extra = servers.environment.clone();
    extra.extend(
        [
            // Short, so that work a killed replica held is taken over within the test.
            ("PRISM_CLAIM_LEASE", "10000"),
            ("PRISM_CONSUMER__RETRY_MAX", "2000"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let services: Vec<(String, Vec<&str>)> = SERVICES
        .iter()
        .map(|(name, args)| (name.to_string(), args.to_vec()))
        .collect();
    // Warm: every group joined and every stage working before the first fault.
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
        "pipeline warm {:.1} s after the test started",
        test_started.elapsed().as_secs_f64()
    );

    // One fault at a time; it is over when an upload made after it has all its results.
    let mut recoveries = Vec::new();
    let mut probes = Vec::new();
    for (n, fault) in FAULTS.into_iter().enumerate() {
        test.listener.read_for(BETWEEN_FAULTS).await;
        let injected = Instant::now();
        inject(fault, &mut test.services, &servers).await;
        let probe = generated(
            &format!("probe/after-fault-{n}.png"),
            20_000 + n as u32,
            (64, 48),
            ImageFormat::Png,
        );
        upload_until_stored(&test.buckets, &test.settings.input_bucket, &probe).await;
        test.listener
            .wait_for_all(&[&probe], &mut test.services)
            .await;
        let recovery = injected.elapsed();
        println!(
            "{fault:?}: an upload made after it had all its results {:.1} s after the fault ({} of the stream uploaded)",
            recovery.as_secs_f64(),
            test.uploaded.load(std::sync::atomic::Ordering::Relaxed)
        );
        recoveries.push((fault, recovery));
        probes.push(probe);
    }
    test.uploader.await.expect("uploader");
    let last_upload = Instant::now();

    let all: Vec<&Upload> = std::iter::once(&test.warmup)
        .chain(&test.uploads)
        .chain(&probes)
        .collect();
    test.listener.wait_for_all(&all, &mut test.services).await;
    let all_results = Instant::now();
    test.listener.read_for(QUIET_PERIOD).await;
    test.services.assert_running();

    println!("--- fault test timings ---");
    for (fault, recovery) in &recoveries {
        println!(
            "time to recover from {fault:?}: {:.1} s",
            recovery.as_secs_f64()
        );
    }
    println!(
        "the last upload went up {:.1} s after the test started, the last result came {:.1} s later",
        (last_upload - test_started).as_secs_f64(),
        (all_results - last_upload).as_secs_f64()
    );
    println!(
        "messages per topic: {:?}; the test took {:.0} s",
        test.listener.seen.counts,
        test_started.elapsed().as_secs_f64()
    );
    assert_complete(
        "fault test figures",
        &test.listener.seen,
        &all,
        &test.settings,
        &test.buckets,
    )
    .await;
}

async fn inject(fault: Fault, services: &mut Services, servers: &PrivateServers) {
    println!("fault: {fault:?}");
    match fault {
        Fault::Kill(name) => {
            services.kill(name);
            // The replacement comes up a moment later, as after a crash and a supervisor restart.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (_, args) = SERVICES
                .into_iter()
                .find(|(service, _)| *service == name)
                .expect("a known service");
            services.spawn(name, args);
        }
        // servers.sh waits until the server answers again; the uploads go on meanwhile.
        Fault::Restart(name) => tokio::task::block_in_place(|| servers.control(&["restart", name])),
        Fault::Freeze(name, pause) => {
            servers.control(&["kill", "-STOP", name]);
            tokio::time::sleep(pause).await;
            servers.control(&["kill", "-CONT", name]);
        }
    }
}
