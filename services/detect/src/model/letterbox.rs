//! Letterboxing as Ultralytics does it for prediction: scale to fit the square input keeping the
//! aspect ratio (Ultralytics' rounding), bilinear resize, centre on a grey canvas. The same numbers
//! map boxes back to source pixels.

use super::BoundingBox;
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

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
///
/// The resize is a bilinear convolution whose support widens with the downscale factor (Pillow's
/// `BILINEAR`, the preprocessing behind the reference detections in shared/MODELS.md), not
/// OpenCV's two-tap `INTER_LINEAR`: a 12 MP photo shrunk to 640 is averaged, not sampled, so
/// fine texture does not alias into patterns the network was never trained on.
pub fn fill_letterboxed(image: &image::RgbImage, letterbox: &Letterbox, input: &mut [f32]) {
    let size = letterbox.size as usize;
    let plane = size * size;
    assert_eq!(
        input.len(),
        3 * plane,
        "input must hold three {size}x{size} planes"
    );
    input.fill(f32::from(PAD_VALUE) / 255.0);

    let mut resized = Image::new(
        letterbox.resized_width,
        letterbox.resized_height,
        PixelType::U8x3,
    );
    // Cannot fail: both sides are RGB with at least one pixel (Letterbox keeps sides >= 1 and
    // the detector refuses empty images before letterboxing).
    Resizer::new()
        .resize(
            image,
            &mut resized,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        )
        .expect("an RGB image resizes into an RGB image of at least 1x1");

    let (left, top) = (letterbox.pad_left as usize, letterbox.pad_top as usize);
    let row_len = letterbox.resized_width as usize * 3;
    for (dy, row) in resized.buffer().chunks_exact(row_len).enumerate() {
        let offset = (top + dy) * size + left;
        for (dx, pixel) in row.chunks_exact(3).enumerate() {
            for (channel, value) in pixel.iter().enumerate() {
                input[channel * plane + offset + dx] = f32::from(*value) / 255.0;
            }
        }
    }
}
