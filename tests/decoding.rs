//! End to end over real servers (see pipeline.rs): one decoding policy for every stage. Damaged
//! and too costly JPEGs are dead-lettered by thumbnail and detect alike, with the same code; a
//! valid but unusual progressive JPEG gets results from both; a wide-gamut photo's thumbnail is
//! converted to sRGB. The inputs are the imaging fixtures (shared/imaging/src/testdata).

use bytes::Bytes;
use prism_core::contract::StageName;
use prism_core::ports::store::Buckets;
use prism_e2e::{
    Listener, Services, Upload, observer, prepare, run_environment, run_name, settings_for,
    to_pairs, warm_up,
};
use prism_imaging::fixtures;
use std::time::Duration;

/// After every upload has its outcome, keep listening this long to catch a second one.
const QUIET_PERIOD: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_accepts_and_refuses_the_same_images() {
    let run = run_name();
    let environment = run_environment(&run);
    let settings = settings_for(&environment);
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
    let mut listener = Listener::new(observer(&settings, &run), &settings.topics);
    let buckets = Buckets::s3(&settings.s3);
    warm_up(&buckets, &settings, &mut listener, &mut services).await;

    let verdicts = fixtures::verdicts();
    let uploads: Vec<Upload> = verdicts
        .iter()
        .map(|(key, bytes, _)| Upload {
            key: format!("decoding/{key}"),
            bytes: Bytes::from(bytes.clone()),
            size: None,
        })
        .collect();
    prism_loadgen::upload(&buckets, &settings.input_bucket, to_pairs(&uploads), 3)
        .await
        .unwrap();
    let all: Vec<&Upload> = uploads.iter().collect();
    listener.wait_for_all(&all, &mut services).await;
    listener.read_for(QUIET_PERIOD).await;
    let seen = &listener.seen;

    for ((_, _, expected), upload) in verdicts.iter().zip(&uploads) {
        for stage in StageName::ALL {
            let id = (stage, upload.key.clone());
            let results = seen.results.get(&id).map_or(0, Vec::len);
            let letters = seen
                .dead_letters
                .get(&id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            match expected {
                Some(code) => {
                    assert_eq!(
                        results, 0,
                        "{id:?} should be dead-lettered, yet got a result"
                    );
                    assert_eq!(letters.len(), 1, "one dead letter for {id:?}");
                    let error = &letters[0].error;
                    assert_eq!(error.code, *code, "{id:?}: {}", error.reason);
                    assert!(!error.reason.contains('\n'), "{id:?}: {:?}", error.reason);
                }
                None => {
                    assert!(letters.is_empty(), "{id:?} was dead-lettered: {letters:?}");
                    assert_eq!(results, 1, "one result for {id:?}");
                }
            }
        }
    }

    // The wide-gamut photo's 256 px thumbnail (its own size: it is 256x192) against
    // LittleCMS's sRGB conversion of it.
    let result = &seen.results[&(StageName::Thumbnail, "decoding/adobe-rgb.jpg".to_string())][0];
    let output = result
        .outputs
        .iter()
        .find(|output| output.key.ends_with("/256.jpg"))
        .expect("a 256 px JPEG thumbnail");
    let (bytes, _) = buckets
        .read(&output.bucket, &output.key, u64::MAX)
        .await
        .unwrap();
    let thumbnail = image::load_from_memory(&bytes).unwrap().into_rgb8();
    // Over 16x16 means, so that what is measured is colour, not JPEG's noise.
    let delta_e = fixtures::mean_delta_e(
        &fixtures::block_means(&thumbnail, 16),
        &fixtures::block_means(&fixtures::ADOBE_RGB_JPEG.srgb_truth(), 16),
    );
    println!("Adobe RGB photo's thumbnail: mean ΔE {delta_e:.2} from the sRGB truth");
    assert!(
        delta_e < 2.0,
        "mean ΔE {delta_e:.2}: the thumbnail is not sRGB"
    );
}
