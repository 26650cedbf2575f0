//! WebP pixels through libwebp ([`libwebp`](super::libwebp)), which shrinks while it decodes.
//!
//! The header and metadata (size, alpha, EXIF orientation, ICC profile) are read by the image
//! crate's pure-Rust parser like every other format's; libwebp only decodes the pixels of a
//! still image. Animated WebPs, which libwebp's still-image API refuses, yield their first frame
//! through the image crate at full size.

use image::{DynamicImage, RgbImage, RgbaImage};
use libwebp_sys::VP8StatusCode;

use super::{ImageError, Pixels, SourceFormat, libwebp};

/// Whether the file is an animation, from its VP8X chunk's flags (the WebP container spec: only
/// the extended format can animate, and says so in bit 1 of the byte after the chunk header).
pub(super) fn is_animated(bytes: &[u8]) -> bool {
    const ANIMATION_FLAG: u8 = 0x02;
    bytes.get(12..16) == Some(b"VP8X") && bytes.get(20).is_some_and(|f| f & ANIMATION_FLAG != 0)
}

/// Decodes a still WebP of `full_size` at `size`, RGBA when the header says it has alpha.
pub(super) fn decode_still(
    bytes: &[u8],
    full_size: (u32, u32),
    size: (u32, u32),
    alpha: bool,
) -> Result<Pixels, ImageError> {
    let raw = libwebp::decode(bytes, full_size, size, alpha).map_err(refusal)?;
    let (width, height) = size;
    let image = if alpha {
        RgbaImage::from_raw(width, height, raw).map(DynamicImage::ImageRgba8)
    } else {
        RgbImage::from_raw(width, height, raw).map(DynamicImage::ImageRgb8)
    };
    let image = image.expect("libwebp fills a buffer of exactly width x height pixels");
    Ok(Pixels::from_codec(image))
}

/// libwebp's status in terms a person can act on.
fn refusal(status: VP8StatusCode) -> ImageError {
    let format = SourceFormat::Webp;
    let corrupt = |reason: &str| ImageError::Corrupt {
        format,
        reason: reason.to_owned(),
    };
    match status {
        VP8StatusCode::VP8_STATUS_NOT_ENOUGH_DATA => corrupt("the file is truncated"),
        VP8StatusCode::VP8_STATUS_UNSUPPORTED_FEATURE => ImageError::UnsupportedFeature {
            format,
            reason: "libwebp does not decode this kind of WebP bitstream".to_owned(),
        },
        VP8StatusCode::VP8_STATUS_OUT_OF_MEMORY => ImageError::MemoryLimit {
            format,
            reason: "libwebp ran out of memory".to_owned(),
        },
        VP8StatusCode::VP8_STATUS_BITSTREAM_ERROR => corrupt("libwebp found invalid image data"),
        other => corrupt(&format!("libwebp refused it ({other:?})")),
    }
}

#[cfg(test)]
mod tests {
    use super::is_animated;

    /// A RIFF WebP header followed by a VP8X chunk with `flags`.
    fn extended(flags: u8) -> Vec<u8> {
        let mut bytes = b"RIFF\x24\0\0\0WEBPVP8X\x0a\0\0\0".to_vec();
        bytes.extend_from_slice(&[flags, 0, 0, 0, 15, 0, 0, 15, 0, 0]);
        bytes
    }

    #[test]
    fn only_the_extended_format_with_its_animation_flag_is_animated() {
        assert!(is_animated(&extended(0x02)));
        assert!(is_animated(&extended(0x12)));
        assert!(!is_animated(&extended(0x10)), "alpha alone");
        assert!(!is_animated(b"RIFF\x24\0\0\0WEBPVP8L\x0a\0\0\0\x2f\x02"));
        assert!(!is_animated(b"RIFF"));
    }
}
