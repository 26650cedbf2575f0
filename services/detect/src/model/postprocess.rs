//! From raw Detect-head outputs to detections, as Ultralytics' `non_max_suppression` does it:
//! best class per anchor, confidence threshold, DFL box decoding, class-wise NMS.

use super::{BoundingBox, COCO_CLASSES, Detection, HeadOutput, Letterbox};

/// Ultralytics' `max_det`: more than this many detections in one image are dropped.
pub const MAX_DETECTIONS: usize = 300;

/// A detection in network-input pixels, before mapping back to the source image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub class_id: u32,
    pub confidence: f32,
    pub bbox: BoundingBox,
}

impl Candidate {
    pub fn into_detection(self, letterbox: &Letterbox) -> Detection {
        Detection {
            class: COCO_CLASSES[self.class_id as usize].to_owned(),
            class_id: self.class_id,
            confidence: self.confidence,
            bbox: letterbox.to_source(self.bbox),
        }
    }
}

/// Every anchor of image `image` in the batch whose best class scores above
/// `confidence_threshold`, with its box decoded from the DFL distributions.
pub fn decode_detections(
    heads: &[HeadOutput],
    image: usize,
    dfl_bins: &[f32],
    confidence_threshold: f32,
) -> Vec<Candidate> {
    let bins = dfl_bins.len();
    let mut candidates = Vec::new();
    for head in heads {
        let cells = head.height * head.width;
        let per_image = head.channels * cells;
        let values = &head.values[image * per_image..(image + 1) * per_image];
        let plane = |channel: usize| &values[channel * cells..(channel + 1) * cells];
        let class_planes: Vec<&[f32]> = (4 * bins..head.channels).map(plane).collect();
        let side_planes: Vec<&[f32]> = (0..4 * bins).map(plane).collect();
        let stride = head.stride as f32;
        for cell in 0..cells {
            // The first of equal maxima wins, as with torch.max.
            let (class_id, logit) = class_planes
                .iter()
                .map(|plane| plane[cell])
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (id, logit)| {
                    if logit > best.1 { (id, logit) } else { best }
                });
            let confidence = sigmoid(logit);
            if confidence <= confidence_threshold {
                continue;
            }
            // Distances from the anchor to the left, top, right and bottom sides.
            let [left, top, right, bottom] = std::array::from_fn(|side| {
                expected_bin(
                    side_planes[side * bins..(side + 1) * bins]
                        .iter()
                        .map(|plane| plane[cell]),
                    dfl_bins,
                )
            });
            let anchor_x = (cell % head.width) as f32 + 0.5;
            let anchor_y = (cell / head.width) as f32 + 0.5;
            candidates.push(Candidate {
                class_id: class_id as u32,
                confidence,
                bbox: BoundingBox {
                    x1: (anchor_x - left) * stride,
                    y1: (anchor_y - top) * stride,
                    x2: (anchor_x + right) * stride,
                    y2: (anchor_y + bottom) * stride,
                },
            });
        }
    }
    candidates
}

/// Keeps the best candidates, dropping any that overlaps an already kept one of the same class
/// by more than `iou_threshold`; best first, at most [`MAX_DETECTIONS`].
pub fn non_max_suppression(mut candidates: Vec<Candidate>, iou_threshold: f32) -> Vec<Candidate> {
    candidates.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    let mut kept: Vec<Candidate> = Vec::new();
    for candidate in candidates {
        if kept.len() == MAX_DETECTIONS {
            break;
        }
        let overlaps_better = kept.iter().any(|better| {
            better.class_id == candidate.class_id
                && intersection_over_union(&better.bbox, &candidate.bbox) > iou_threshold
        });
        if !overlaps_better {
            kept.push(candidate);
        }
    }
    kept
}

pub fn intersection_over_union(a: &BoundingBox, b: &BoundingBox) -> f32 {
    let intersection = BoundingBox {
        x1: a.x1.max(b.x1),
        y1: a.y1.max(b.y1),
        x2: a.x2.min(b.x2),
        y2: a.y2.min(b.y2),
    }
    .area();
    let union = a.area() + b.area() - intersection;
    if union > 0.0 {
        intersection / union
    } else {
        0.0
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The expected bin value under the softmax of the logits.
fn expected_bin(logits: impl Iterator<Item = f32> + Clone, bins: &[f32]) -> f32 {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let (weighted, total) = logits
        .zip(bins)
        .fold((0.0, 0.0), |(weighted, total), (logit, bin)| {
            let weight = (logit - max).exp();
            (weighted + weight * bin, total + weight)
        });
    weighted / total
}
