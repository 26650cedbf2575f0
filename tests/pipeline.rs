//! End to end over real servers: Kafka (Tansu), S3 (Garage) and CouchDB's API (pouchdb-server),
//! started by `deploy/local/servers.sh`. The services run as real processes of the `prism` binary.
//!
//! Each run uses its own topics, buckets and database, so runs never see each other's data.

use bytes::Bytes;
use futures::StreamExt;
use image::{DynamicImage, ImageFormat, Rgba, RgbaImage};
use prism_core::contract::schemas::Schemas;
use prism_core::contract::{StageName, StageResult};
use prism_core::ports::claims::{ClaimStatus, couch::CouchIndex};
use prism_core::ports::store::Buckets;
use prism_e2e::{
    DEADLINE, Seen, Services, Upload, encode, generated, observer, picture, prepare,
    run_environment, run_name, settings_for, to_pairs,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// After every upload has its outcome, keep listening this long to catch duplicates.
const QUIET_PERIOD: Duration = Duration::from_secs(4);

fn uploads() -> (Vec<Upload>, Vec<Upload>) {
    let mut distinct = Vec::new();
    let shapes = [
        (640, 480),
        (1024, 768),
        (480, 640),
        (1000, 10),
        (10, 1000),
        (300, 300),
        (100, 80),
        (2000, 1500),
        (513, 257),
        (129, 1300),
    ];
    for (n, &(width, height)) in shapes.iter().enumerate() {
        let image = DynamicImage::ImageRgb8(picture(n as u32, width, height));
        let (format, extension) = match n % 3 {
            0 => (ImageFormat::Jpeg, "jpg"),
            1 => (ImageFormat::Png, "png"),
            _ => (ImageFormat::WebP, "webp"),
        };
        distinct.push(Upload {
            key: format!("photos/img-{n:02}.{extension}"),
            bytes: encode(image, format),
            size: Some((width, height)),
        });
    }
    let transparent =
        RgbaImage::from_fn(256, 200, |x, y| Rgba([x as u8, y as u8, 90, (x ^ y) as u8]));
    distinct.push(Upload {
        key: "photos/transparent.png".into(),
        bytes: encode(DynamicImage::ImageRgba8(transparent), ImageFormat::Png),
        size: Some((256, 200)),
    });
    distinct.push(generated(
        "photos/animation.gif",
        40,
        (320, 240),
        ImageFormat::Gif,
    ));
    for n in 0..3 {
        distinct.push(generated(
            &format!("more/{n}/shot.jpg"),
            50 + n,
            (800, 600),
            ImageFormat::Jpeg,
        ));
    }
    distinct.push(generated(
        "holiday photos/day 1/beach + sun (1).jpg",
        60,
        (700, 500),
        ImageFormat::Jpeg,
    ));
    let bus = std::fs::read(prism_detect::model::prism_home().join("images/bus.jpg"))
        .expect("bus.jpg is missing from $PRISM_HOME/images: run deploy/local/fetch-assets.sh");
    distinct.push(Upload {
        key: "street/bus.jpg".into(),
        bytes: Bytes::from(bus),
        size: Some((810, 1080)),
    });
    let mut corrupt = b"\xFF\xD8\xFF\xE0 this is not really a JPEG".to_vec();
    corrupt.extend(std::iter::repeat_n(0x5A, 4000));
    distinct.push(Upload {
        key: "broken.jpg".into(),
        bytes: Bytes::from(corrupt),
        size: None,
    });
    let copies = [
        (0, "copies/img-00 again.jpg"),
        (1, "copies/deep/x/img-01.png"),
        (2, "img-02-copy.webp"),
    ]
    .into_iter()
    .map(|(n, key)| Upload {
        key: key.into(),
        bytes: distinct[n].bytes.clone(),
        size: distinct[n].size,
    })
    .collect();
    (distinct, copies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_get_exactly_one_result_each_and_identical_content_is_processed_once() {
    let run = run_name();
    let environment = run_environment(&run);
    let settings = settings_for(&environment);
    let schemas = Schemas::default();
    prepare(&settings).await;

    let mut services = Services::start(
        &environment,
        &[
            &["serve", "dedup"],
            &["serve", "thumbnail"],
            &["serve", "detect"],
            &["serve", "classify"],
            &["watch", "--interval-ms", "200"],
        ],
    );

    let consumer = observer(&settings, &run);

    // Upload: distinct contents, copies under other keys, and twins at the same moment.
    let buckets = Buckets::s3(&settings.s3);
    let (distinct, copies) = uploads();
    let twin_bytes = encode(
        DynamicImage::ImageRgb8(picture(99, 900, 600)),
        ImageFormat::Jpeg,
    );
    let twins: Vec<Upload> = ["twins/left.jpg", "twins/right.jpg"]
        .into_iter()
        .map(|key| Upload {
            key: key.into(),
            bytes: twin_bytes.clone(),
            size: Some((900, 600)),
        })
        .collect();
    // Warm-up: one image through every stage first, so the latency measured below is the pipeline's,
    // not the consumer groups' first join.
    let topics = settings.topics.clone();
    let mut seen = Seen::default();
    let mut stream = consumer.stream();
    let warmup = generated("warmup/first.png", 7, (333, 222), ImageFormat::Png);
    prism_loadgen::upload(
        &buckets,
        &settings.input_bucket,
        to_pairs(std::slice::from_ref(&warmup)),
        1,
    )
    .await
    .unwrap();
    let warming = Instant::now();
    seen.wait_for(
        &warmup.key,
        &StageName::ALL,
        &mut stream,
        &schemas,
        &topics,
        &mut services,
    )
    .await;
    println!(
        "pipeline warm after {:.1} s",
        warming.elapsed().as_secs_f64()
    );

    prism_loadgen::upload(&buckets, &settings.input_bucket, to_pairs(&distinct), 4)
        .await
        .unwrap();
    let uploaded_at = chrono::Utc::now();
    prism_loadgen::upload(&buckets, &settings.input_bucket, to_pairs(&twins), 2)
        .await
        .unwrap();
    // Copies go up once the originals could have finished, so both dedup paths are exercised.
    tokio::time::sleep(Duration::from_secs(1)).await;
    prism_loadgen::upload(&buckets, &settings.input_bucket, to_pairs(&copies), 3)
        .await
        .unwrap();

    let all: Vec<&Upload> = std::iter::once(&warmup)
        .chain(&distinct)
        .chain(&copies)
        .chain(&twins)
        .collect();
    assert!(all.len() >= 20, "at least 20 uploads");

    // Listen until every upload has its outcome, validating every message against its schema.
    let started = Instant::now();
    let mut settled_at: Option<Instant> = None;
    loop {
        services.assert_running();
        let outcome_count = |seen: &Seen| {
            all.iter()
                .flat_map(|u| StageName::ALL.map(|stage| (stage, u.key.as_str())))
                .filter(|(stage, key)| seen.has_outcome(*stage, key))
                .count()
        };
        let expected_outcomes = all.len() * StageName::ALL.len();
        if settled_at.is_none() && outcome_count(&seen) == expected_outcomes {
            settled_at = Some(Instant::now());
        }
        if settled_at.is_some_and(|at| at.elapsed() > QUIET_PERIOD) {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "only {} of {expected_outcomes} outcomes (uploads x stages) arrived within {DEADLINE:?}",
            outcome_count(&seen)
        );
        let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(500), stream.next()).await
        else {
            continue;
        };
        seen.record(&schemas, &topics, &message.expect("observer consumer"));
    }
    println!("messages per topic: {:?}", seen.counts);
    let buckets = &buckets;
    let good = all.iter().filter(|u| u.size.is_some()).count();
    // The good distinct uploads, the twins' content and the warm-up image.
    let distinct_good = distinct.iter().filter(|u| u.size.is_some()).count() + 2;

    // One upload can be followed across the services: the watcher's announcement starts a
    // trace (one per upload), and dedup and every stage continue it (Kafka `traceparent`
    // headers). A copy that waited for its original's work gets that work's results, in the
    // original's trace; an upload whose content is its own is in its own trace alone.
    assert!(
        seen.untraced.is_empty(),
        "untraced messages on {:?}",
        seen.untraced
    );
    let announced = |upload: &Upload| -> String {
        let traces = &seen.announcement_traces[&upload.key];
        assert_eq!(traces.len(), 1, "{}: announced once", upload.key);
        traces.first().unwrap().clone()
    };
    let announcements: BTreeSet<String> = all.iter().map(|u| announced(u)).collect();
    assert_eq!(announcements.len(), all.len(), "a trace per upload");
    for upload in &all {
        let same_content: BTreeSet<String> = all
            .iter()
            .filter(|other| other.bytes == upload.bytes)
            .map(|other| announced(other))
            .collect();
        let traces = &seen.outcome_traces[&upload.key];
        assert!(
            traces.is_subset(&same_content),
            "{}: outcomes in {traces:?}, not in its content's traces {same_content:?}",
            upload.key
        );
        if same_content.len() == 1 {
            assert_eq!(traces, &same_content, "{}: its own trace", upload.key);
        }
    }

    for stage in StageName::ALL {
        let results = |key: &str| {
            seen.results
                .get(&(stage, key.to_string()))
                .map(Vec::as_slice)
                .unwrap_or_default()
        };
        // Exactly one result per good upload; the corrupt file dead-lettered with a reason.
        for upload in &all {
            let id = (stage, upload.key.clone());
            if upload.size.is_none() {
                assert!(
                    results(&upload.key).is_empty(),
                    "{id:?} is corrupt but got a result"
                );
                let letters = &seen.dead_letters[&id];
                assert_eq!(letters.len(), 1, "one dead letter for {id:?}");
                let error = &letters[0].error;
                assert!(
                    ["corrupt_image", "unsupported_format"].contains(&error.code.as_str()),
                    "{error:?}"
                );
                assert!(
                    error.reason.len() > 20,
                    "a reason a person can act on: {error:?}"
                );
                continue;
            }
            let got = results(&upload.key);
            assert_eq!(got.len(), 1, "{id:?} got {} results", got.len());
            assert!(
                !seen.dead_letters.contains_key(&id),
                "{id:?} was dead-lettered"
            );
            assert_eq!(
                got[0].content_hash,
                blake3::hash(&upload.bytes).to_hex().to_string()
            );
        }

        // Per content: processed once, every other upload reuses the very same outputs. (Which
        // copy is processed depends on partition order, so only the count is asserted.)
        let mut by_content: BTreeMap<&str, Vec<&StageResult>> = BTreeMap::new();
        for ((of, _), list) in &seen.results {
            if *of == stage {
                for result in list {
                    by_content
                        .entry(&result.content_hash)
                        .or_default()
                        .push(result);
                }
            }
        }
        assert_eq!(
            by_content.len(),
            distinct_good,
            "{stage}: distinct good contents"
        );
        let fresh: usize = by_content
            .values()
            .flatten()
            .filter(|r| !r.deduplicated)
            .count();
        assert_eq!(
            fresh, distinct_good,
            "{stage}: each content processed exactly once"
        );
        for (hash, list) in &by_content {
            assert!(
                list.iter().all(|r| r.outputs == list[0].outputs),
                "{stage} {hash}: same outputs"
            );
        }
        assert_eq!(by_content.values().map(Vec::len).sum::<usize>(), good);
        let twin_flags: Vec<bool> = twins
            .iter()
            .map(|t| results(&t.key)[0].deduplicated)
            .collect();
        assert_eq!(
            twin_flags.iter().filter(|d| **d).count(),
            1,
            "{stage}: one twin reused: {twin_flags:?}"
        );

        // Every output exists and decodes at the size its result claims.
        for result in by_content.values().flatten().filter(|r| !r.deduplicated) {
            let upload = all.iter().find(|u| u.key == result.source.key).unwrap();
            let (width, height) = upload.size.unwrap();
            for output in &result.outputs {
                let (bytes, _) = buckets
                    .read(&output.bucket, &output.key, u64::MAX)
                    .await
                    .unwrap_or_else(|e| panic!("output {} missing: {e}", output.key));
                assert_eq!(bytes.len() as u64, output.bytes);
                if output.content_type == "application/json" {
                    let listed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    let field = match stage {
                        StageName::Classify => "classes",
                        _ => "detections",
                    };
                    assert_eq!(listed[field], result.payload[field], "{}", output.key);
                    continue;
                }
                let image = image::load_from_memory(&bytes).unwrap();
                assert_eq!(
                    (Some(image.width()), Some(image.height())),
                    (output.width, output.height)
                );
                let name = output.key.rsplit('/').next().unwrap();
                let expected_longest = match name.split('.').next().unwrap().parse::<u32>() {
                    Ok(size) => size.min(width.max(height)), // a thumbnail, never upscaled
                    Err(_) => width.max(height),             // the annotated copy, full size
                };
                assert_eq!(
                    image.width().max(image.height()),
                    expected_longest,
                    "{} from {width}x{height}",
                    output.key
                );
            }
            let expected_files = match stage {
                StageName::Thumbnail => {
                    settings.stages.thumbnail.sizes.len() * settings.stages.thumbnail.formats.len()
                }
                StageName::Detect => 2,
                StageName::Classify => 1,
            };
            assert_eq!(
                result.outputs.len(),
                expected_files,
                "{stage} outputs of {}",
                upload.key
            );
        }
    }

    // The real photo: YOLOv8n finds the bus and the people in it.
    let bus = &seen.results[&(StageName::Detect, "street/bus.jpg".to_string())][0];
    let classes: Vec<&str> = bus.payload["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["class"].as_str().unwrap())
        .collect();
    assert_eq!(
        classes.iter().filter(|c| **c == "person").count(),
        4,
        "{classes:?}"
    );
    assert_eq!(
        classes.iter().filter(|c| **c == "bus").count(),
        1,
        "{classes:?}"
    );

    // The same photo classified: a bus of some kind, and five classes for every picture.
    let bus = &seen.results[&(StageName::Classify, "street/bus.jpg".to_string())][0];
    let top = bus.payload["classes"][0]["label"].as_str().unwrap();
    assert!(top.ends_with("bus"), "{}", bus.payload["classes"]);
    for ((stage, key), results) in &seen.results {
        if *stage == StageName::Classify {
            let classes = results[0].payload["classes"].as_array().unwrap();
            assert_eq!(classes.len(), 5, "{key}: {classes:?}");
        }
    }

    // CouchDB: one claim per distinct content and stage, the corrupt ones failed, none in flight.
    let index = CouchIndex::connect(&settings.couchdb).await.unwrap();
    let done = index.with_status(ClaimStatus::Done).await.unwrap();
    let failed = index.with_status(ClaimStatus::Failed).await.unwrap();
    let processing = index.with_status(ClaimStatus::Processing).await.unwrap();
    assert_eq!(
        done.len(),
        distinct_good * StageName::ALL.len(),
        "done claims"
    );
    assert_eq!(failed.len(), StageName::ALL.len(), "failed claims");
    assert!(
        processing.is_empty(),
        "claims left processing: {processing:?}"
    );
    let anonymous = format!(
        "{}/{}/_all_docs",
        settings.couchdb.url, settings.couchdb.database
    );
    let status = reqwest::get(&anonymous).await.unwrap().status();
    assert_eq!(
        status,
        reqwest::StatusCode::UNAUTHORIZED,
        "claims readable without credentials"
    );
    let twin_hash = blake3::hash(&twin_bytes).to_hex().to_string();
    assert!(
        done.iter()
            .filter(|c| c.content_hash == twin_hash)
            .all(|c| c.sources_seen == 2)
    );

    // Latency from upload to thumbnail result, for the closing note (not asserted: not a benchmark).
    let mut latencies: Vec<i64> = distinct
        .iter()
        .filter_map(|u| seen.results.get(&(StageName::Thumbnail, u.key.clone())))
        .map(|r| (r[0].timings.finished_at - uploaded_at).num_milliseconds())
        .collect();
    latencies.sort();
    println!(
        "upload-to-thumbnail latency over {} distinct uploads made at once, warm pipeline: median {} ms, max {} ms",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );

    // And one upload alone on the warm, idle pipeline: the latency a user dropping one image sees.
    let solo = generated("late/solo.jpg", 77, (1600, 1200), ImageFormat::Jpeg);
    let sent = Instant::now();
    prism_loadgen::upload(
        buckets,
        &settings.input_bucket,
        to_pairs(std::slice::from_ref(&solo)),
        1,
    )
    .await
    .unwrap();
    seen.wait_for(
        &solo.key,
        &[StageName::Thumbnail],
        &mut stream,
        &schemas,
        &topics,
        &mut services,
    )
    .await;
    println!(
        "one 1600x1200 JPEG alone on the warm pipeline: thumbnail result {} ms after the upload began (bucket watcher polling every 200 ms)",
        sent.elapsed().as_millis()
    );
}
