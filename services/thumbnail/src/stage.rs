//! The thumbnail stage proper: a decoded image in, encoded thumbnails out.
//!
//! Pure: nothing here knows about Kafka or S3, so it is tested and benchmarked on its own.

use std::borrow::Cow;
use std::fmt;

use fast_image_resize::{
    FilterType, IntoImageView, IntoImageViewMut, ResizeAlg, ResizeOptions, Resizer,
};
use image::{ImageBuffer, Pixel};
use prism_imaging::{
    DecodedImage, ImageError, Limits, Pixels, decode_for_thumbnails, flatten_onto_white,
};
pub use prism_imaging::{encode_jpeg, fit_within};

pub use prism_core::contract::stages::{
    DEFAULT_JPEG_QUALITY, DEFAULT_THUMBNAIL_SIZES as DEFAULT_SIZES, DEFAULT_WEBP_QUALITY, MAX_SIZE,
    ThumbnailFormat, ThumbnailSpec,
};

/// One encoded thumbnail.
#[derive(Clone, PartialEq)]
pub struct Thumbnail {
    /// The spec's size this answers; `width`/`height` are smaller for a smaller source.
    pub size: u32,
    pub format: ThumbnailFormat,
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Thumbnail {
    // The encoded bytes are summarised: printing them helps nobody.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thumbnail")
            .field("size", &self.size)
            .field("format", &self.format)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("bytes", &format_args!("{} bytes", self.bytes.len()))
            .finish()
    }
}

#[derive(thiserror::Error, Debug)]
pub enum ThumbnailError {
    #[error("invalid thumbnail spec: {reason}")]
    InvalidSpec { reason: String },
    #[error("resizing to {width}x{height} failed: {reason}")]
    Resize {
        width: u32,
        height: u32,
        reason: String,
    },
    #[error("encoding a {width}x{height} {format} thumbnail failed: {reason}")]
    Encode {
        format: ThumbnailFormat,
        width: u32,
        height: u32,
        reason: String,
    },
}

impl ThumbnailError {
    /// A stable snake_case code for dead letters and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidSpec { .. } => "invalid_thumbnail_spec",
            Self::Resize { .. } => "resize_failed",
            Self::Encode { .. } => "encode_failed",
        }
    }
}

/// Decodes an upload only as large as `spec`'s largest size needs (JPEGs and WebPs shrink on
/// load), with the same limits and errors as a full decode.
pub fn decode_for(
    spec: &ThumbnailSpec,
    bytes: &[u8],
    limits: &Limits,
) -> Result<DecodedImage, ImageError> {
    let largest = spec.sizes.iter().copied().max().unwrap_or(u32::MAX);
    decode_for_thumbnails(bytes, limits, largest)
}

/// Renders every size of `spec` in every format, ordered as the spec lists sizes, then formats.
///
/// Sizes are rendered largest first, each from the one before: every step is then a modest
/// Lanczos3 reduction, and only the largest reads the full-size image. EXIF orientation is
/// applied to that first, small result rather than to the full-size image.
pub fn render(
    image: &DecodedImage,
    spec: &ThumbnailSpec,
) -> Result<Vec<Thumbnail>, ThumbnailError> {
    spec.validate()
        .map_err(|reason| ThumbnailError::InvalidSpec { reason })?;
    let mut sizes = spec.sizes.clone();
    sizes.sort_unstable_by(|a, b| b.cmp(a));

    let mut resizer = Resizer::new();
    let mut thumbnails = Vec::with_capacity(sizes.len() * spec.formats.len());
    let mut larger: Option<Cow<'_, Pixels>> = None;
    for size in sizes {
        // From the full size, so that shrink-on-load never changes a thumbnail's dimensions.
        let (width, height) = fit_within(image.full_width(), image.full_height(), size);
        let pixels = match larger.take() {
            Some(previous) if (previous.width(), previous.height()) == (width, height) => previous,
            Some(previous) => Cow::Owned(resize(&mut resizer, &previous, width, height)?),
            None => largest_thumbnail(&mut resizer, image, width, height)?,
        };
        for &format in &spec.formats {
            thumbnails.push(Thumbnail {
                size,
                format,
                width,
                height,
                bytes: encode(&pixels, format, spec.quality(format))?,
            });
        }
        larger = Some(pixels);
    }

    thumbnails.sort_by_key(|t| {
        let size_rank = spec.sizes.iter().position(|&s| s == t.size);
        let format_rank = spec.formats.iter().position(|&f| f == t.format);
        (size_rank, format_rank)
    });
    Ok(thumbnails)
}

/// The first thumbnail, `width` x `height` as displayed, resized from the stored pixels and then
/// oriented for display. Borrows the stored pixels when they need neither.
fn largest_thumbnail<'a>(
    resizer: &mut Resizer,
    image: &'a DecodedImage,
    width: u32,
    height: u32,
) -> Result<Cow<'a, Pixels>, ThumbnailError> {
    let stored = image.stored_pixels();
    // Resized before orientation, so with its edges swapped when the orientation swaps them
    // (for a square image the swap changes nothing).
    let unswapped = (image.width(), image.height()) == (stored.width(), stored.height());
    let (width, height) = if unswapped {
        (width, height)
    } else {
        (height, width)
    };
    let resized = if (width, height) == (stored.width(), stored.height()) {
        Cow::Borrowed(stored)
    } else {
        Cow::Owned(resize(resizer, stored, width, height)?)
    };
    Ok(match image.orientation() {
        image::metadata::Orientation::NoTransforms => resized,
        orientation => Cow::Owned(resized.into_owned().oriented(orientation)),
    })
}

fn resize(
    resizer: &mut Resizer,
    source: &Pixels,
    width: u32,
    height: u32,
) -> Result<Pixels, ThumbnailError> {
    let resized = match source {
        Pixels::Rgb(rgb) => resize_buffer(resizer, rgb, width, height).map(Pixels::Rgb),
        Pixels::Rgba(rgba) => resize_buffer(resizer, rgba, width, height).map(Pixels::Rgba),
    };
    resized.map_err(|e| ThumbnailError::Resize {
        width,
        height,
        reason: e.to_string(),
    })
}

fn resize_buffer<P>(
    resizer: &mut Resizer,
    source: &ImageBuffer<P, Vec<u8>>,
    width: u32,
    height: u32,
) -> Result<ImageBuffer<P, Vec<u8>>, fast_image_resize::ResizeError>
where
    P: Pixel<Subpixel = u8>,
    ImageBuffer<P, Vec<u8>>: IntoImageView + IntoImageViewMut,
{
    let mut target = ImageBuffer::new(width, height);
    // Lanczos3 is the default, named here because the choice matters; alpha is premultiplied
    // during the resize so transparent pixels do not bleed their colour into their neighbours.
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    resizer.resize(source, &mut target, &options)?;
    Ok(target)
}

fn encode(
    pixels: &Pixels,
    format: ThumbnailFormat,
    quality: u8,
) -> Result<Vec<u8>, ThumbnailError> {
    let (width, height) = (pixels.width(), pixels.height());
    let failed = |reason: String| ThumbnailError::Encode {
        format,
        width,
        height,
        reason,
    };
    match (format, pixels) {
        (ThumbnailFormat::Jpeg, Pixels::Rgb(rgb)) => encode_jpeg(rgb, quality).map_err(failed),
        // JPEG has no alpha: composite onto white, as a browser shows a transparent image.
        (ThumbnailFormat::Jpeg, Pixels::Rgba(rgba)) => {
            encode_jpeg(&flatten_onto_white(rgba), quality).map_err(failed)
        }
        (ThumbnailFormat::Webp, Pixels::Rgb(rgb)) => {
            encode_webp(webp::Encoder::from_rgb(rgb, width, height), quality).map_err(failed)
        }
        (ThumbnailFormat::Webp, Pixels::Rgba(rgba)) => {
            encode_webp(webp::Encoder::from_rgba(rgba, width, height), quality).map_err(failed)
        }
    }
}

fn encode_webp(encoder: webp::Encoder<'_>, quality: u8) -> Result<Vec<u8>, String> {
    let lossless = false;
    let encoded = encoder
        .encode_simple(lossless, f32::from(quality))
        .map_err(|e| format!("libwebp: {e:?}"))?;
    Ok(encoded.to_vec())
}

/// Peak signal-to-noise ratio of two same-sized 8-bit RGB images, in dB (infinite when identical):
/// the quality guard of the benchmark and the tests.
pub fn psnr(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(
        a.dimensions(),
        b.dimensions(),
        "PSNR compares images of one size"
    );
    let squared: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let mse = squared / a.as_raw().len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

#[cfg(test)]
mod tests {
    use prism_imaging::decode;
    use prism_imaging::test_images::{jpeg, jpeg_with_orientation, synthetic_photo};

    use super::*;

    fn sizes(thumbnails: &[Thumbnail]) -> Vec<(u32, u32, u32)> {
        thumbnails
            .iter()
            .map(|t| (t.size, t.width, t.height))
            .collect()
    }

    #[test]
    fn shrink_on_load_gives_the_thumbnail_sizes_of_a_full_decode() {
        let spec = ThumbnailSpec {
            sizes: vec![25, 12],
            formats: vec![ThumbnailFormat::Jpeg],
            ..ThumbnailSpec::default()
        };
        let photo = synthetic_photo(200, 105);
        for (bytes, expected) in [
            (jpeg(&photo), [(25, 25, 13), (12, 12, 6)]),
            (
                jpeg_with_orientation(&photo, 6),
                [(25, 13, 25), (12, 6, 12)],
            ),
        ] {
            let limits = Limits::default();
            let shrunk = decode_for(&spec, &bytes, &limits).unwrap();
            // 200x105 at 1/8 is 25x14, yet 25 px of the full image is 25x13.
            assert_eq!(shrunk.stored_pixels().width(), 25);
            assert_eq!(shrunk.stored_pixels().height(), 14);
            let full = decode(&bytes, &limits).unwrap();
            assert_eq!(sizes(&render(&shrunk, &spec).unwrap()), expected);
            assert_eq!(sizes(&render(&full, &spec).unwrap()), expected);
        }
    }

    #[test]
    fn lossy_webp_shrinks_on_load_to_the_largest_thumbnail() {
        let spec = ThumbnailSpec {
            sizes: vec![64, 32],
            formats: vec![ThumbnailFormat::Jpeg],
            ..ThumbnailSpec::default()
        };
        let bytes = encode(
            &Pixels::Rgb(synthetic_photo(400, 210)),
            ThumbnailFormat::Webp,
            90,
        )
        .unwrap();
        let limits = Limits::default();
        let shrunk = decode_for(&spec, &bytes, &limits).unwrap();
        let stored = shrunk.stored_pixels();
        assert_eq!((stored.width(), stored.height()), fit_within(400, 210, 64));
        let full = decode(&bytes, &limits).unwrap();
        assert_eq!(
            sizes(&render(&shrunk, &spec).unwrap()),
            sizes(&render(&full, &spec).unwrap())
        );
    }
}
