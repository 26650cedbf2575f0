//! Head-output decoding and non-maximum suppression on hand-made numbers.

use prism_detect::model::{
    BoundingBox, COCO_CLASSES, Candidate, HeadOutput, Letterbox, MAX_DETECTIONS, decode_detections,
    intersection_over_union, non_max_suppression,
};

const BINS: usize = 16;
/// The DFL bin values of the released weights.
const DFL_BINS: [f32; BINS] = [
    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
];

fn bbox(x1: f32, y1: f32, x2: f32, y2: f32) -> BoundingBox {
    BoundingBox { x1, y1, x2, y2 }
}

fn candidate(class_id: u32, confidence: f32, bbox: BoundingBox) -> Candidate {
    Candidate {
        class_id,
        confidence,
        bbox,
    }
}

#[test]
fn iou_of_identical_disjoint_and_partial_boxes() {
    let a = bbox(0.0, 0.0, 10.0, 10.0);
    assert_eq!(intersection_over_union(&a, &a), 1.0);
    assert_eq!(
        intersection_over_union(&a, &bbox(20.0, 20.0, 30.0, 30.0)),
        0.0
    );
    // Half of each overlaps: 50 / (100 + 100 - 50).
    let shifted = bbox(5.0, 0.0, 15.0, 10.0);
    assert!((intersection_over_union(&a, &shifted) - 1.0 / 3.0).abs() < 1e-6);
    // Degenerate boxes overlap nothing.
    assert_eq!(
        intersection_over_union(&bbox(1.0, 1.0, 1.0, 1.0), &bbox(1.0, 1.0, 1.0, 1.0)),
        0.0
    );
}

#[test]
fn nms_drops_a_weaker_heavily_overlapping_box_of_the_same_class() {
    let strong = candidate(0, 0.9, bbox(0.0, 0.0, 100.0, 100.0));
    let weak_duplicate = candidate(0, 0.6, bbox(2.0, 2.0, 100.0, 100.0)); // IoU 0.96
    let kept = non_max_suppression(vec![weak_duplicate, strong], 0.7);
    assert_eq!(kept, vec![strong]);
}

#[test]
fn nms_keeps_same_class_boxes_overlapping_less_than_the_threshold() {
    let left = candidate(0, 0.8, bbox(0.0, 0.0, 100.0, 100.0));
    let right = candidate(0, 0.9, bbox(40.0, 0.0, 140.0, 100.0)); // IoU 60 / 140 = 0.43
    let kept = non_max_suppression(vec![left, right], 0.7);
    assert_eq!(kept, vec![right, left], "both kept, best first");
    // A stricter threshold removes the weaker one.
    assert_eq!(non_max_suppression(vec![left, right], 0.4), vec![right]);
}

#[test]
fn nms_keeps_overlapping_boxes_of_different_classes() {
    let person = candidate(0, 0.9, bbox(0.0, 0.0, 100.0, 100.0));
    let bicycle = candidate(1, 0.5, bbox(0.0, 0.0, 100.0, 100.0));
    assert_eq!(
        non_max_suppression(vec![bicycle, person], 0.7),
        vec![person, bicycle]
    );
}

#[test]
fn nms_suppresses_only_through_kept_boxes() {
    // b overlaps a (kept) heavily; c overlaps b but not a, so c survives once b is gone.
    let a = candidate(3, 0.9, bbox(0.0, 0.0, 10.0, 10.0));
    let b = candidate(3, 0.8, bbox(1.0, 0.0, 11.0, 10.0));
    let c = candidate(3, 0.7, bbox(2.5, 0.0, 12.5, 10.0));
    assert!(intersection_over_union(&b.bbox, &c.bbox) > 0.7);
    assert!(intersection_over_union(&a.bbox, &c.bbox) < 0.7);
    assert_eq!(non_max_suppression(vec![c, b, a], 0.7), vec![a, c]);
}

#[test]
fn nms_caps_the_number_of_detections() {
    let spread: Vec<Candidate> = (0..MAX_DETECTIONS + 20)
        .map(|index| {
            candidate(
                0,
                0.5,
                bbox(index as f32 * 20.0, 0.0, index as f32 * 20.0 + 10.0, 10.0),
            )
        })
        .collect();
    assert_eq!(non_max_suppression(spread, 0.7).len(), MAX_DETECTIONS);
}

/// One stride-8 head over a 4x2 grid, all logits very negative except those set by `with`.
fn head(classes: usize, with: impl Fn(&mut dyn FnMut(usize, usize, f32))) -> HeadOutput {
    let (width, height) = (4, 2);
    let cells = width * height;
    let channels = 4 * BINS + classes;
    let mut values = vec![-20.0; channels * cells];
    with(&mut |channel, cell, value| values[channel * cells + cell] = value);
    HeadOutput {
        stride: 8,
        height,
        width,
        channels,
        values,
    }
}

#[test]
fn decoding_turns_dfl_distributions_into_box_sides_around_the_anchor() {
    // Cell 6 is x = 2, y = 1: anchor (2.5, 1.5) grid units. Its class-5 logit is 2.0
    // (sigmoid 0.8808); distances peak sharply at 1, 2, 3 and 4 bins for left, top, right, bottom.
    let output = head(COCO_CLASSES.len(), |set| {
        set(4 * BINS + 5, 6, 2.0);
        for (side, bin) in [1, 2, 3, 4].into_iter().enumerate() {
            set(side * BINS + bin, 6, 30.0);
        }
    });
    let candidates = decode_detections(&[output], 0, &DFL_BINS, 0.25);
    assert_eq!(candidates.len(), 1);
    let found = candidates[0];
    assert_eq!(found.class_id, 5);
    assert!((found.confidence - 0.880_797).abs() < 1e-5);
    let expected = bbox(
        (2.5 - 1.0) * 8.0,
        (1.5 - 2.0) * 8.0,
        (2.5 + 3.0) * 8.0,
        (1.5 + 4.0) * 8.0,
    );
    for (got, want) in [
        (found.bbox.x1, expected.x1),
        (found.bbox.y1, expected.y1),
        (found.bbox.x2, expected.x2),
        (found.bbox.y2, expected.y2),
    ] {
        assert!(
            (got - want).abs() < 1e-3,
            "{:?} vs {expected:?}",
            found.bbox
        );
    }
}

#[test]
fn decoding_averages_bins_under_the_softmax() {
    // Equal logits on bins 2 and 3: the expected distance is 2.5 bins.
    let output = head(COCO_CLASSES.len(), |set| {
        set(4 * BINS, 0, 5.0);
        for side in 0..4 {
            set(side * BINS + 2, 0, 10.0);
            set(side * BINS + 3, 0, 10.0);
        }
    });
    let found = decode_detections(&[output], 0, &DFL_BINS, 0.25)[0];
    assert!((found.bbox.x1 - (0.5 - 2.5) * 8.0).abs() < 1e-3);
    assert!((found.bbox.x2 - (0.5 + 2.5) * 8.0).abs() < 1e-3);
}

#[test]
fn decoding_keeps_only_confidences_above_the_threshold_with_the_best_class() {
    // Cell 0: best class 7 at sigmoid(0) = 0.5; cell 1: sigmoid(-1.2) = 0.23 is too low.
    let output = head(COCO_CLASSES.len(), |set| {
        set(4 * BINS + 3, 0, -1.0);
        set(4 * BINS + 7, 0, 0.0);
        set(4 * BINS + 1, 1, -1.2);
    });
    let candidates = decode_detections(&[output], 0, &DFL_BINS, 0.25);
    assert_eq!(candidates.len(), 1);
    assert_eq!((candidates[0].class_id, candidates[0].confidence), (7, 0.5));
    assert!(decode_detections(&[head(COCO_CLASSES.len(), |_| {})], 0, &DFL_BINS, 0.25).is_empty());
}

#[test]
fn decoding_reads_the_requested_image_of_a_batch() {
    let first = head(2, |set| set(4 * BINS, 0, 3.0));
    let second = head(2, |set| set(4 * BINS + 1, 5, 3.0));
    let batch = HeadOutput {
        values: [first.values.clone(), second.values].concat(),
        ..first
    };
    let in_first = decode_detections(std::slice::from_ref(&batch), 0, &DFL_BINS, 0.25);
    let in_second = decode_detections(std::slice::from_ref(&batch), 1, &DFL_BINS, 0.25);
    assert_eq!((in_first.len(), in_first[0].class_id), (1, 0));
    assert_eq!((in_second.len(), in_second[0].class_id), (1, 1));
}

#[test]
fn candidates_become_named_detections_in_source_pixels() {
    let letterbox = Letterbox::new(1280, 720, 640);
    let detection = candidate(5, 0.75, bbox(100.0, 140.0, 300.0, 500.0)).into_detection(&letterbox);
    assert_eq!(
        (
            detection.class.as_str(),
            detection.class_id,
            detection.confidence
        ),
        ("bus", 5, 0.75)
    );
    assert_eq!(detection.bbox, bbox(200.0, 0.0, 600.0, 720.0));
}

#[test]
fn detections_serialize_with_a_box_field() {
    let letterbox = Letterbox::new(640, 640, 640);
    let detection = candidate(0, 0.5, bbox(1.0, 2.0, 3.0, 4.0)).into_detection(&letterbox);
    let json = serde_json::to_value(&detection).expect("serializable");
    assert_eq!(
        json,
        serde_json::json!({"class": "person", "class_id": 0, "confidence": 0.5, "box": {"x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0}})
    );
}
