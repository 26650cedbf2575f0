//! The real YOLOv8n weights against onnxruntime on the same ONNX file.
//!
//! Needs `deploy/local/fetch-assets.sh` to have filled `$PRISM_HOME` (default
//! `~/.cache/prism`); fails, never skips, when it has not.
//!
//! Where the reference numbers come from: onnxruntime 1.32 running `yolov8n.onnx` with
//! Ultralytics' own pre- and post-processing (OpenCV `INTER_LINEAR` letterbox, conf 0.25, NMS
//! IoU 0.7) on the very pixels the `image` crate decodes from the JPEGs; regenerate them with
//! `cargo bench -p prism-detect --bench detect_vs_onnxruntime`, which prints both sides.
//! The pixels matter: the bus box touches the image edge and moves by up to 4 px between JPEG
//! decoders (libjpeg-turbo vs the image crate's). The numbers in shared/MODELS.md (person 0.903,
//! bus [34.7, 229.9, 794.7, 768.4]) could not be reproduced by onnxruntime with any common
//! decoder and resize tried (OpenCV, PIL, image, fast_image_resize; best within 1.7 px, 0.018).

use std::path::PathBuf;
use std::sync::OnceLock;

use prism_detect::model::{Detection, Detector, DetectorConfig, annotate, prism_home};

const WEIGHTS_SHA256: &str = "75cc3648650bdab6baac92fcff3627148405a9a15aca86ca7117b6d1ab478726";
const BOX_TOLERANCE_PX: f32 = 0.5;
const CONFIDENCE_TOLERANCE: f32 = 0.002;

/// (class, confidence, [x1, y1, x2, y2]) in source pixels, best first.
type Reference = (&'static str, f32, [f32; 4]);

const BUS: [Reference; 5] = [
    ("person", 0.88924, [670.412, 380.204, 809.932, 879.561]),
    ("person", 0.88263, [221.703, 407.493, 343.803, 856.202]),
    ("person", 0.87919, [50.656, 397.286, 244.431, 905.415]),
    ("bus", 0.84135, [34.684, 229.548, 797.432, 767.172]),
    ("person", 0.43452, [0.460, 549.837, 57.994, 868.331]),
];

const ZIDANE: [Reference; 3] = [
    ("person", 0.82559, [113.210, 197.046, 1112.588, 711.244]),
    ("person", 0.82471, [748.773, 41.975, 1143.794, 711.061]),
    ("tie", 0.28897, [435.723, 437.424, 523.676, 714.785]),
];

fn fetched(relative: &str) -> PathBuf {
    let path = prism_home().join(relative);
    assert!(
        path.is_file(),
        "{} is missing: run deploy/local/fetch-assets.sh (it fills PRISM_HOME={})",
        path.display(),
        prism_home().display()
    );
    path
}

fn detector() -> &'static Detector {
    static DETECTOR: OnceLock<Detector> = OnceLock::new();
    DETECTOR.get_or_init(|| {
        fetched("models/yolov8n.onnx");
        Detector::load(&DetectorConfig::default()).unwrap_or_else(|error| panic!("{error}"))
    })
}

fn image(name: &str) -> image::RgbImage {
    let path = fetched(&format!("images/{name}"));
    image::open(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .to_rgb8()
}

fn describe(detections: &[Detection]) -> String {
    detections
        .iter()
        .map(|d| {
            let b = &d.bbox;
            format!(
                "  {} {:.5} [{:.3}, {:.3}, {:.3}, {:.3}]\n",
                d.class, d.confidence, b.x1, b.y1, b.x2, b.y2
            )
        })
        .collect()
}

fn assert_matches(name: &str, detections: &[Detection], reference: &[Reference]) {
    let report = format!(
        "{name}: got\n{}expected (onnxruntime)\n{reference:#?}",
        describe(detections)
    );
    assert_eq!(detections.len(), reference.len(), "{report}");
    for (detection, (class, confidence, [x1, y1, x2, y2])) in detections.iter().zip(reference) {
        assert_eq!(detection.class, *class, "{report}");
        assert!(
            (detection.confidence - confidence).abs() <= CONFIDENCE_TOLERANCE,
            "{report}"
        );
        let b = &detection.bbox;
        let worst = [b.x1 - x1, b.y1 - y1, b.x2 - x2, b.y2 - y2]
            .map(f32::abs)
            .into_iter()
            .fold(0.0, f32::max);
        assert!(
            worst <= BOX_TOLERANCE_PX,
            "{name}: {class} box off by {worst:.3} px\n{report}"
        );
    }
}

#[test]
fn weights_are_the_pinned_ultralytics_export() {
    assert_eq!(detector().weights_digest(), WEIGHTS_SHA256);
}

#[test]
fn bus_and_zidane_in_one_batch_match_onnxruntime() {
    let detections = detector()
        .detect(&[image("bus.jpg"), image("zidane.jpg")])
        .expect("detects");
    assert_eq!(detections.len(), 2);
    assert_matches("bus.jpg", &detections[0], &BUS);
    assert_matches("zidane.jpg", &detections[1], &ZIDANE);
}

#[test]
fn a_batch_gives_what_each_image_gives_alone() {
    let images = [image("zidane.jpg"), image("bus.jpg"), image("zidane.jpg")];
    let batched = detector().detect(&images).expect("detects");
    for (image, in_batch) in images.iter().zip(&batched) {
        let alone = detector()
            .detect(std::slice::from_ref(image))
            .expect("detects");
        assert_eq!(alone[0].len(), in_batch.len());
        for (a, b) in alone[0].iter().zip(in_batch) {
            assert_eq!(a.class, b.class);
            assert!((a.confidence - b.confidence).abs() < 1e-4);
            assert!((a.bbox.x1 - b.bbox.x1).abs() < 1e-2 && (a.bbox.y2 - b.bbox.y2).abs() < 1e-2);
        }
    }
}

#[test]
fn annotated_bus_has_class_coloured_boxes_and_labels() {
    let bus = image("bus.jpg");
    let detections = detector()
        .detect(std::slice::from_ref(&bus))
        .expect("detects");
    let annotated = annotate(&bus, &detections[0]);
    assert_eq!(annotated.dimensions(), bus.dimensions());
    // The bus's left edge line runs through its box's left side, away from other boxes.
    let bus_box = detections[0]
        .iter()
        .find(|d| d.class == "bus")
        .expect("a bus")
        .bbox;
    let (x, y) = (
        bus_box.x1.round() as u32 + 1,
        ((bus_box.y1 + bus_box.y2) / 2.0) as u32,
    );
    assert_ne!(annotated.get_pixel(x, y), bus.get_pixel(x, y));
    let changed = annotated
        .pixels()
        .zip(bus.pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert!(changed > 10_000, "only {changed} pixels drawn");
}
