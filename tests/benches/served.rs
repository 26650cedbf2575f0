//! The served pipeline over the real local servers (Kafka, S3, CouchDB), measured from outside.
//!
//! `deploy/local/servers.sh start && eval "$(deploy/local/servers.sh env)" &&
//!  cargo bench -p prism-e2e --features e2e --bench served`
//!
//! 1. Dedup's throughput: events per second of wall time and per CPU-second of the dedup process
//!    itself, which is what "per core" means here (the servers share the same cores). Two passes
//!    over the same small objects (2 KiB each, both stages enabled, so two claims per upload):
//!    first as new content (one bulk create per batch), then the same events again, as a consumer
//!    that died before committing would see them (each claim exists: create, read, update).
//! 2. Idle latency: one 1600x1200 JPEG at a time on a warm, idle pipeline (dedup, thumbnail and
//!    detect replicas), its notification published right after the upload as MinIO would; time
//!    from the start of the upload to each stage's result, and where that time goes.
//! 3. Thumbnail throughput over real photos (the set `prism-loadgen dataset` makes, the one the
//!    photo benchmark reads): every photo uploaded, then every notification published at once;
//!    time from the first notification to the last thumbnail result, with one replica at the
//!    default concurrency (a job per core), one replica taking one job at a time, and two of
//!    those (how far a second replica scales).
//!
//! Environment: PRISM_BENCH_EVENTS (default 2000), PRISM_BENCH_SOLO (uploads timed, default 30),
//! PRISM_BENCH_PHOTOS (the photo folder for part 3; without it part 3 says how to make one).

use bytes::Bytes;
use chrono::Utc;
use futures::{StreamExt, stream};
use image::ImageFormat;
use prism_core::contract::ingest::UploadEvent;
use prism_core::contract::{SourceObject, StageName, StageResult};
use prism_core::ports::store::Buckets;
use prism_core::runtime::config::Settings;
use prism_e2e::{
    DEADLINE, Services, TansuConfig, generated, prepare, run_environment, run_name, settings_for,
};
use prism_loadgen::predict::percentile;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const OBJECT_BYTES: usize = 2048;

/// Where an upload's time goes on its way to a stage's result.
const LEGS: [&str; 4] = [
    "upload start -> dedup received",
    "-> stage started (dedup, Kafka hops, batching)",
    "-> stage finished (its processing_ms)",
    "-> result read",
];

#[tokio::main]
async fn main() {
    dedup_throughput().await;
    idle_latency().await;
    thumbnail_throughput().await;
}

/// A number from the environment, or `default`.
fn count_from<T: std::str::FromStr>(variable: &str, default: T) -> T {
    std::env::var(variable).map_or(default, |n| {
        n.parse()
            .unwrap_or_else(|_| panic!("{variable} is a number"))
    })
}

/// A fresh run's names, environment and settings, its buckets and topics made; the Tansu config
/// file lives as long as the returned guard.
async fn new_run() -> (String, Vec<(String, String)>, Settings, TansuConfig) {
    let run = run_name();
    let mut environment = run_environment(&run);
    let tansu = TansuConfig::write(&run);
    environment.push(tansu.variable());
    // The benchmark times thumbnail and detect, as its earlier figures in the README did.
    environment.push((
        "PRISM_ENABLED_STAGES".into(),
        "[\"thumbnail\", \"detect\"]".into(),
    ));
    let settings = settings_for(&environment);
    prepare(&settings).await;
    (run, environment, settings, tansu)
}

async fn dedup_throughput() {
    let events: usize = count_from("PRISM_BENCH_EVENTS", 2000);
    let (run, environment, settings, _tansu) = new_run().await;

    let buckets = Buckets::s3(&settings.s3);
    let mut objects = upload_objects(&buckets, &settings.input_bucket, events + 1).await;
    let warmup = objects.split_off(events);
    let services = Services::start(&environment, &[&["serve", "dedup"]]);
    let dedup = services.pid("serve-dedup");

    let producer = producer(&settings);
    let jobs = consumer(&settings, &run, &[&settings.topics.thumbnail_jobs]);

    println!(
        "dedup over the local servers, {events} events of {OBJECT_BYTES} B objects, stages thumbnail + detect, {} cores, load {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average()
    );
    println!(
        "{:<34} {:>8} {:>10} {:>10} {:>16}",
        "pass", "wall s", "events/s", "dedup CPU s", "events/CPU-second"
    );
    // The group join and first connections are not dedup's throughput.
    publish_events(&producer, &settings.topics.uploads, &warmup).await;
    let mut seen = 0;
    wait_for_messages(&jobs, &mut seen, 1).await;
    for pass in ["new content", "existing claims (redelivered)"] {
        let cpu_before = cpu_seconds(dedup);
        let started = Instant::now();
        publish_events(&producer, &settings.topics.uploads, &objects).await;
        wait_for_messages(&jobs, &mut seen, events).await;
        let wall = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(dedup) - cpu_before;
        println!(
            "{pass:<34} {wall:>8.2} {:>10.0} {cpu:>10.2} {:>16.0}",
            events as f64 / wall,
            events as f64 / cpu
        );
    }
    drop(services);
}

fn producer(settings: &Settings) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("linger.ms", "1")
        .create()
        .expect("producer")
}

fn consumer(settings: &Settings, run: &str, topics: &[&str]) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("group.id", format!("bench-{run}"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    consumer.subscribe(topics).unwrap();
    consumer
}

async fn idle_latency() {
    let solo: u32 = count_from("PRISM_BENCH_SOLO", 30);
    let (run, environment, settings, _tansu) = new_run().await;
    let services = Services::start(
        &environment,
        &[
            &["serve", "dedup"],
            &["serve", "thumbnail"],
            &["serve", "detect"],
        ],
    );
    let buckets = Buckets::s3(&settings.s3);
    let producer = producer(&settings);
    let topics = &settings.topics;
    let results = consumer(
        &settings,
        &run,
        &[&topics.thumbnail_results, &topics.detect_results],
    );
    let mut stream = results.stream();
    // Per stage: the whole time, and where it goes (legs, in the order of LEGS).
    let mut times: [Vec<f64>; 2] = Default::default();
    let mut legs: [[Vec<f64>; 4]; 2] = Default::default();
    // The first upload warms every group join and connection up; it is not counted.
    for n in 0..=solo {
        let upload = generated(
            &format!("solo/{n:03}.jpg"),
            n,
            (1600, 1200),
            ImageFormat::Jpeg,
        );
        let started = Instant::now();
        let started_at = Utc::now();
        let object = put(&buckets, &settings.input_bucket, upload.key, upload.bytes).await;
        publish_events(&producer, &topics.uploads, std::slice::from_ref(&object)).await;
        let mut pending = [StageName::Thumbnail, StageName::Detect].to_vec();
        while !pending.is_empty() {
            let message = tokio::time::timeout(DEADLINE, stream.next())
                .await
                .unwrap_or_else(|_| panic!("no result for {} within {DEADLINE:?}", object.key))
                .expect("stream")
                .expect("consume");
            let result: StageResult =
                serde_json::from_slice(message.payload().unwrap_or_default()).expect("a result");
            if result.source.key != object.key {
                continue;
            }
            pending.retain(|stage| *stage != result.stage);
            if n == 0 {
                continue;
            }
            let at = usize::from(result.stage == StageName::Detect);
            times[at].push(started.elapsed().as_secs_f64() * 1000.0);
            let timings = &result.timings;
            let ms = |from: chrono::DateTime<Utc>, to: chrono::DateTime<Utc>| {
                (to - from).num_microseconds().unwrap_or_default() as f64 / 1000.0
            };
            let processing = timings.processing_ms as f64;
            let after_dedup = ms(timings.received_at, timings.finished_at);
            legs[at][0].push(ms(started_at, timings.received_at));
            legs[at][1].push(after_dedup - processing);
            legs[at][2].push(processing);
            legs[at][3].push(ms(timings.finished_at, Utc::now()));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "idle latency, upload start to result, {solo} 1600x1200 JPEGs one at a time, load {}",
        load_average()
    );
    println!(
        "{:<10} {:>7} {:>7} {:>7}   medians: {}",
        "stage",
        "p50 ms",
        "p95 ms",
        "max ms",
        LEGS.join(", ")
    );
    for ((stage, mut times), legs) in ["thumbnail", "detect"].into_iter().zip(times).zip(legs) {
        times.sort_by(f64::total_cmp);
        let legs = legs.map(|mut times| {
            times.sort_by(f64::total_cmp);
            format!("{:.0}", percentile(&times, 0.5))
        });
        println!(
            "{stage:<10} {:>7.0} {:>7.0} {:>7.0}   {}",
            percentile(&times, 0.50),
            percentile(&times, 0.95),
            times.last().copied().unwrap_or_default(),
            legs.join(", ")
        );
    }
    drop(services);
}

async fn thumbnail_throughput() {
    let Ok(folder) = std::env::var("PRISM_BENCH_PHOTOS") else {
        println!(
            "thumbnail throughput: set PRISM_BENCH_PHOTOS to a folder of photos, e.g. the `images` folder `prism-loadgen dataset` makes"
        );
        return;
    };
    let mut photos: Vec<_> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("PRISM_BENCH_PHOTOS={folder}: {e}"))
        .map(|entry| entry.expect("a folder entry").path())
        .collect();
    photos.sort();
    println!(
        "thumbnail throughput over the local servers, {} photos from {folder} (stage thumbnail alone), load {}",
        photos.len(),
        load_average()
    );
    println!(
        "{:<36} {:>8} {:>10} {:>16}",
        "replicas", "wall s", "images/s", "thumbnail CPU s"
    );
    let layouts: [(&str, usize, Option<&str>); 3] = [
        ("1, a job per core (default)", 1, None),
        ("1, one job at a time", 1, Some("1")),
        ("2, one job at a time each", 2, Some("1")),
    ];
    for (label, replicas, concurrency) in layouts {
        let (run, mut environment, settings, _tansu) = new_run().await;
        environment.push(("PRISM_ENABLED_STAGES".into(), "[\"thumbnail\"]".into()));
        if let Some(concurrency) = concurrency {
            environment.push((
                "PRISM_INTAKE__THUMBNAIL__CONCURRENCY".into(),
                concurrency.into(),
            ));
        }
        let buckets = Buckets::s3(&settings.s3);
        let objects = upload_photos(&buckets, &settings.input_bucket, &photos).await;
        let mut services = Services::start(&environment, &[&["serve", "dedup"]]);
        let names: Vec<String> = (1..=replicas).map(|n| format!("thumbnail-{n}")).collect();
        for name in &names {
            services.spawn(name, &["serve", "thumbnail"]);
        }
        let producer = producer(&settings);
        let results = consumer(&settings, &run, &[&settings.topics.thumbnail_results]);
        // Group joins and first connections are not throughput: one small image goes first.
        let warmup = generated("warmup.jpg", 0, (640, 480), ImageFormat::Jpeg);
        let warmup = put(&buckets, &settings.input_bucket, warmup.key, warmup.bytes).await;
        publish_events(&producer, &settings.topics.uploads, &[warmup]).await;
        let mut seen = 0;
        wait_for_messages(&results, &mut seen, 1).await;

        let cpu = || -> f64 {
            names
                .iter()
                .map(|name| cpu_seconds(services.pid(name)))
                .sum()
        };
        let cpu_before = cpu();
        let started = Instant::now();
        publish_events(&producer, &settings.topics.uploads, &objects).await;
        wait_for_messages(&results, &mut seen, objects.len()).await;
        let wall = started.elapsed().as_secs_f64();
        println!(
            "{label:<36} {wall:>8.2} {:>10.1} {:>16.1}",
            objects.len() as f64 / wall,
            cpu() - cpu_before
        );
    }
}

/// `count` distinct small objects, uploaded 32 at a time.
async fn upload_objects(buckets: &Buckets, bucket: &str, count: usize) -> Vec<SourceObject> {
    stream::iter(0..count)
        .map(|n| async move {
            let mut body = vec![0u8; OBJECT_BYTES];
            let seed = blake3::hash(&n.to_le_bytes());
            for (chunk, byte) in body.chunks_mut(32).zip(seed.as_bytes().iter().cycle()) {
                chunk.fill(*byte);
            }
            body[..8].copy_from_slice(&(n as u64).to_le_bytes());
            put(
                buckets,
                bucket,
                format!("bench/{n:06}.bin"),
                Bytes::from(body),
            )
            .await
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// Every photo uploaded under its file name, 8 at a time.
async fn upload_photos(buckets: &Buckets, bucket: &str, photos: &[PathBuf]) -> Vec<SourceObject> {
    stream::iter(photos)
        .map(|path| async move {
            let bytes = Bytes::from(std::fs::read(path).expect("a readable photo"));
            let key = format!("photos/{}", path.file_name().unwrap().to_string_lossy());
            put(buckets, bucket, key, bytes).await
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// Uploads `bytes` as `key`.
async fn put(buckets: &Buckets, bucket: &str, key: String, bytes: Bytes) -> SourceObject {
    let size = bytes.len() as u64;
    buckets
        .write(bucket, &key, bytes, "application/octet-stream")
        .await
        .expect("S3 must take the upload");
    SourceObject {
        bucket: bucket.to_string(),
        key,
        // Dedup learns the ETag of what it hashes.
        etag: String::new(),
        size,
        batch_job: None,
    }
}

/// One MinIO-format notification per object, as fast as the producer takes them.
async fn publish_events(producer: &FutureProducer, topic: &str, objects: &[SourceObject]) {
    let sends = objects.iter().map(|object| {
        let event = UploadEvent::for_object(object, None, Utc::now());
        let payload = serde_json::to_vec(&event).unwrap();
        async move {
            let record = FutureRecord::to(topic).key(&object.key).payload(&payload);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(error, _)| error)
                .expect("Kafka must take the event");
        }
    });
    stream::iter(sends)
        .buffer_unordered(1000)
        .collect::<()>()
        .await;
}

/// Reads `count` more messages (jobs or results); `seen` counts every one read so far.
async fn wait_for_messages(consumer: &StreamConsumer, seen: &mut usize, count: usize) {
    let mut stream = consumer.stream();
    let deadline = Instant::now() + DEADLINE;
    for _ in 0..count {
        let message = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {seen} messages within {DEADLINE:?}"));
        message.expect("stream").expect("consume");
        *seen += 1;
    }
}

/// User plus system time of a process so far, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process runs");
    // Fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux reports these in USER_HZ, 100 on every architecture.
    ticks as f64 / 100.0
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
