//! The network input from a picture, as EfficientNet-Lite0 was evaluated: resize so the shorter
//! side is 256 (bilinear, averaging when shrinking: Pillow's `BILINEAR`), take the centre
//! 224 x 224, map each 8-bit value `x` to `(x - 127) / 128`, planes R, G, B.
//!
//! Rounding, chosen to match `tools/onnxruntime_classify.py` and shared/MODELS.md's figures: the
//! longer side is rounded (ties to even, Python's `round`), the crop's left and top offsets are
//! rounded down.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

/// Side of the square network input.
pub const INPUT_SIZE: u32 = 224;
/// The shorter side the picture is resized to before the centre crop.
pub const RESIZE_SHORTER: u32 = 256;
/// `(x - MEAN) / STD` per 8-bit channel value.
pub const MEAN: f32 = 127.0;
pub const STD: f32 = 128.0;

/// Values in one network input: three planes of `INPUT_SIZE x INPUT_SIZE`.
pub const INPUT_VALUES: usize = 3 * (INPUT_SIZE as usize) * (INPUT_SIZE as usize);

/// Where the network input comes from in a picture of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CenterCrop {
    pub resized_width: u32,
    pub resized_height: u32,
    /// Offsets of the crop inside the resized picture.
    pub left: u32,
    pub top: u32,
}

impl CenterCrop {
    /// # Panics
    /// When a side is 0 (the classifier refuses empty images before this).
    pub fn new(width: u32, height: u32) -> Self {
        assert!(width > 0 && height > 0, "empty image {width}x{height}");
        let longer = |long: u32, short: u32| {
            (f64::from(RESIZE_SHORTER) * f64::from(long) / f64::from(short)).round_ties_even()
                as u32
        };
        let (resized_width, resized_height) = if width <= height {
            (RESIZE_SHORTER, longer(height, width))
        } else {
            (longer(width, height), RESIZE_SHORTER)
        };
        Self {
            resized_width,
            resized_height,
            left: (resized_width - INPUT_SIZE) / 2,
            top: (resized_height - INPUT_SIZE) / 2,
        }
    }
}

/// Writes the network input for `image` into `input` ([`INPUT_VALUES`] values).
///
/// # Panics
/// When `input` has another length or the image is empty.
pub fn fill_input(image: &image::RgbImage, input: &mut [f32]) {
    assert_eq!(input.len(), INPUT_VALUES, "input must hold three planes");
    let crop = CenterCrop::new(image.width(), image.height());
    let mut resized = Image::new(crop.resized_width, crop.resized_height, PixelType::U8x3);
    // Cannot fail: both sides are RGB with at least one pixel.
    Resizer::new()
        .resize(
            image,
            &mut resized,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        )
        .expect("an RGB image resizes into an RGB image of at least 1x1");

    let size = INPUT_SIZE as usize;
    let plane = size * size;
    let row_len = crop.resized_width as usize * 3;
    let rows = resized
        .buffer()
        .chunks_exact(row_len)
        .skip(crop.top as usize)
        .take(size);
    for (y, row) in rows.enumerate() {
        let pixels = row[crop.left as usize * 3..].chunks_exact(3).take(size);
        for (x, pixel) in pixels.enumerate() {
            for (channel, value) in pixel.iter().enumerate() {
                input[channel * plane + y * size + x] = (f32::from(*value) - MEAN) / STD;
            }
        }
    }
}
