//! Letterboxing exactly as Ultralytics does it for prediction: scale to fit the square input
//! keeping the aspect ratio, bilinear resize (reproducing OpenCV's `INTER_LINEAR` byte for byte),
//! centre on a grey canvas. The same numbers map boxes back to source pixels.

use super::BoundingBox;

/// The grey Ultralytics pads letterboxed images with.
pub const PAD_VALUE: u8 = 114;

/// Where a source image sits inside the square network input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub source_width: u32,
    pub source_height: u32,
    /// Side of the square network input.
    pub size: u32,
    /// Network pixels per source pixel.
    pub scale: f32,
    pub resized_width: u32,
    pub resized_height: u32,
    pub pad_left: u32,
    pub pad_top: u32,
}

impl Letterbox {
    pub fn new(source_width: u32, source_height: u32, size: u32) -> Self {
        let scale = (f64::from(size) / f64::from(source_height))
            .min(f64::from(size) / f64::from(source_width));
        // Python's round() (ties to even) and the "- 0.1" nudge are Ultralytics': an odd padding
        // puts the extra pixel right and bottom.
        let resize =
            |side: u32| ((f64::from(side) * scale).round_ties_even() as u32).clamp(1, size);
        let (resized_width, resized_height) = (resize(source_width), resize(source_height));
        let leading_pad =
            |resized: u32| (f64::from(size - resized) / 2.0 - 0.1).round_ties_even() as u32;
        Self {
            source_width,
            source_height,
            size,
            scale: scale as f32,
            resized_width,
            resized_height,
            pad_left: leading_pad(resized_width),
            pad_top: leading_pad(resized_height),
        }
    }

    /// Maps a box from network input pixels back to source pixels, clipped to the image.
    pub fn to_source(&self, bbox: BoundingBox) -> BoundingBox {
        let x = |value: f32| {
            ((value - self.pad_left as f32) / self.scale).clamp(0.0, self.source_width as f32)
        };
        let y = |value: f32| {
            ((value - self.pad_top as f32) / self.scale).clamp(0.0, self.source_height as f32)
        };
        BoundingBox {
            x1: x(bbox.x1),
            y1: y(bbox.y1),
            x2: x(bbox.x2),
            y2: y(bbox.y2),
        }
    }
}

/// Writes `image` letterboxed into `input`: three planes (R, G, B) of `size * size` values in
/// 0..=1, the layout the network takes.
pub fn fill_letterboxed(image: &image::RgbImage, letterbox: &Letterbox, input: &mut [f32]) {
    let size = letterbox.size as usize;
    let plane = size * size;
    assert_eq!(
        input.len(),
        3 * plane,
        "input must hold three {size}x{size} planes"
    );
    input.fill(f32::from(PAD_VALUE) / 255.0);

    let columns = taps(image.width(), letterbox.resized_width, Edge::Hold);
    let rows = taps(image.height(), letterbox.resized_height, Edge::Clamp);
    let mut upper = ResizedRow::new(columns.len());
    let mut lower = ResizedRow::new(columns.len());
    let (left, top) = (letterbox.pad_left as usize, letterbox.pad_top as usize);
    for (dy, row) in rows.iter().enumerate() {
        if lower.source_row == Some(row.first) {
            std::mem::swap(&mut upper, &mut lower);
        }
        upper.resize_from(image, row.first, &columns);
        lower.resize_from(image, row.second, &columns);
        let offset = (top + dy) * size + left;
        for (dx, (upper, lower)) in upper
            .values
            .chunks_exact(3)
            .zip(lower.values.chunks_exact(3))
            .enumerate()
        {
            for channel in 0..3 {
                let value = blend_vertically(upper[channel], lower[channel], row);
                input[channel * plane + offset + dx] = f32::from(value) / 255.0;
            }
        }
    }
}

/// OpenCV's fixed point: weights in 1/2048ths.
const WEIGHT_ONE: f32 = 2048.0;

/// Rounds like OpenCV's vectorised vertical pass (the path its x86 and ARM builds take), so the
/// resized bytes are exactly those Ultralytics feeds the model.
fn blend_vertically(upper: i32, lower: i32, row: &Tap) -> u8 {
    let value =
        ((row.weight_first * (upper >> 4)) >> 16) + ((row.weight_second * (lower >> 4)) >> 16);
    ((value + 2) >> 2).clamp(0, 255) as u8
}

/// One source row resized horizontally, kept in fixed point for the vertical pass.
struct ResizedRow {
    source_row: Option<usize>,
    values: Vec<i32>,
}

impl ResizedRow {
    fn new(width: usize) -> Self {
        Self {
            source_row: None,
            values: vec![0; width * 3],
        }
    }

    fn resize_from(&mut self, image: &image::RgbImage, source_row: usize, columns: &[Tap]) {
        if self.source_row == Some(source_row) {
            return;
        }
        let stride = image.width() as usize * 3;
        let pixels = &image.as_raw()[source_row * stride..(source_row + 1) * stride];
        for (resized, column) in self.values.chunks_exact_mut(3).zip(columns) {
            for (channel, value) in resized.iter_mut().enumerate() {
                let first = i32::from(pixels[column.first * 3 + channel]);
                let second = i32::from(pixels[column.second * 3 + channel]);
                *value = first * column.weight_first + second * column.weight_second;
            }
        }
        self.source_row = Some(source_row);
    }
}

/// The two source pixels (and their fixed-point weights) one resized pixel comes from.
struct Tap {
    first: usize,
    second: usize,
    weight_first: i32,
    weight_second: i32,
}

/// What OpenCV does where the sampling position falls outside the source.
#[derive(Clone, Copy, PartialEq)]
enum Edge {
    /// Horizontally: take the edge pixel at full weight.
    Hold,
    /// Vertically: keep the weights, read the edge row for both.
    Clamp,
}

/// OpenCV `INTER_LINEAR` sampling: pixel centres aligned (half-pixel offsets), positions computed
/// in single precision, weights rounded to 1/2048ths.
fn taps(source_len: u32, resized_len: u32, edge: Edge) -> Vec<Tap> {
    let scale = 1.0 / (f64::from(resized_len) / f64::from(source_len));
    let last = source_len as i64 - 1;
    (0..resized_len)
        .map(|index| {
            let position = ((f64::from(index) + 0.5) * scale - 0.5) as f32;
            let mut first = position.floor() as i64;
            let mut fraction = position - first as f32;
            if edge == Edge::Hold && (first < 0 || first >= last) {
                first = first.clamp(0, last);
                fraction = 0.0;
            }
            let weight = |w: f32| (w * WEIGHT_ONE).round_ties_even() as i32;
            Tap {
                first: first.clamp(0, last) as usize,
                second: (first + 1).clamp(0, last) as usize,
                weight_first: weight(1.0 - fraction),
                weight_second: weight(fraction),
            }
        })
        .collect()
}
