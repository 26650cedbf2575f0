//! The real YOLOv8n weights against onnxruntime on the same ONNX file, and against the reference
//! detections in shared/MODELS.md.
//!
//! Needs `deploy/local/fetch-assets.sh` to have filled `$PRISM_HOME` (default
//! `~/.cache/prism`); fails, never skips, when it has not.
//!
//! Where the onnxruntime numbers come from: onnxruntime 1.32 running `yolov8n.onnx` on the very
//! network input Prism builds (the `image` crate's decode, its letterbox), then Ultralytics'
//! post-processing (conf 0.25, NMS IoU 0.7, scale_boxes); regenerate them with
//! `cargo bench -p prism-detect --bench detect_vs_onnxruntime`, which prints them.
//! The shared/MODELS.md numbers come from the full-quality `bus-original.jpg` (the yolov5 wheel's
//! copy; the Ultralytics wheels ship a recompressed one whose bus box differs by up to 10 px) with
//! an antialiasing bilinear resize (Pillow's `BILINEAR`), which Prism's letterbox also uses.

use std::path::PathBuf;
use std::sync::OnceLock;

use prism_detect::model::{Detection, Detector, DetectorConfig, annotate, prism_home};

const WEIGHTS_SHA256: &str = "75cc3648650bdab6baac92fcff3627148405a9a15aca86ca7117b6d1ab478726";
const BOX_TOLERANCE_PX: f32 = 0.5;
const CONFIDENCE_TOLERANCE: f32 = 0.002;

/// (class, confidence, [x1, y1, x2, y2]) in source pixels, best first.
type Reference = (&'static str, f32, [f32; 4]);

const BUS: [Reference; 5] = [
    ("person", 0.89544, [671.031, 384.444, 810.000, 879.887]),
    ("person", 0.88235, [221.509, 407.282, 343.752, 856.185]),
    ("person", 0.87272, [50.272, 397.692, 244.410, 905.357]),
    ("bus", 0.83618, [31.253, 231.200, 800.940, 777.108]),
    ("person", 0.42510, [0.468, 549.000, 59.461, 868.246]),
];

/// shared/MODELS.md's reference for the full-quality bus photo (`bus-original.jpg`).
const MODELS_MD_BUS: [Reference; 5] = [
    ("person", 0.903, [671.1, 384.2, 810.0, 880.6]),
    ("person", 0.884, [221.3, 407.2, 343.6, 856.1]),
    ("person", 0.872, [50.4, 398.2, 243.8, 905.2]),
    ("bus", 0.836, [34.7, 229.9, 794.7, 768.4]),
    ("person", 0.415, [0.3, 549.5, 60.8, 866.9]),
];

const ZIDANE: [Reference; 3] = [
    ("person", 0.82457, [112.878, 197.277, 1112.408, 711.113]),
    ("person", 0.82195, [748.631, 41.664, 1143.623, 710.947]),
    ("tie", 0.30374, [436.279, 437.529, 522.872, 714.592]),
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
        "{name}: got\n{}expected\n{reference:#?}",
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
fn original_bus_photo_gives_the_detections_in_models_md() {
    let detections = detector()
        .detect(&[image("bus-original.jpg")])
        .expect("detects");
    assert_matches("bus-original.jpg", &detections[0], &MODELS_MD_BUS);
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

#[test]
fn other_input_sizes_find_the_same_objects_in_bus() {
    for input_size in [320, 416, 1280] {
        let config = DetectorConfig {
            input_size,
            ..DetectorConfig::default()
        };
        let detector = Detector::load(&config).unwrap_or_else(|error| panic!("{error}"));
        let detections = detector.detect(&[image("bus.jpg")]).expect("detects");
        let classes: Vec<&str> = detections[0]
            .iter()
            .filter(|d| d.confidence > 0.5)
            .map(|d| d.class.as_str())
            .collect();
        assert!(
            classes.contains(&"bus") && classes.iter().filter(|c| **c == "person").count() >= 3,
            "input {input_size}: {}",
            describe(&detections[0])
        );
    }
}
