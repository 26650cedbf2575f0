//! Colour management: pixels described by an embedded ICC profile (a wide-gamut phone photo in
//! Display P3, an Adobe RGB or ProPhoto export) are converted to sRGB at decode, the space every
//! output and the detector assume. moxcms does the conversion: pure Rust, so nothing to install,
//! and already built for the image crate's own colour handling.

use moxcms::{ColorProfile, DataColorSpace, Layout, TransformOptions};

use super::Pixels;

/// Converts `pixels` from the colour space `icc_profile` describes to sRGB, in place. A profile
/// that cannot be read, or that is not an RGB profile (grey, CMYK), is ignored: the pixels are
/// then taken to be sRGB already, as browsers take them.
pub(super) fn convert_to_srgb(pixels: &mut Pixels, icc_profile: &[u8]) {
    let (layout, width, buffer) = match pixels {
        Pixels::Rgb(rgb) => (Layout::Rgb, rgb.width(), &mut **rgb),
        Pixels::Rgba(rgba) => (Layout::Rgba, rgba.width(), &mut **rgba),
    };
    let source = match ColorProfile::new_from_slice(icc_profile) {
        Ok(profile) if profile.color_space == DataColorSpace::Rgb => profile,
        Ok(profile) => {
            tracing::debug!(colour_space = ?profile.color_space, "ignoring a non-RGB ICC profile");
            return;
        }
        Err(error) => {
            tracing::debug!(%error, "ignoring an ICC profile that cannot be read");
            return;
        }
    };
    let srgb = ColorProfile::new_srgb();
    let transform =
        match source.create_transform_8bit(layout, &srgb, layout, TransformOptions::default()) {
            Ok(transform) => transform,
            Err(error) => {
                tracing::debug!(%error, "ignoring an ICC profile that cannot convert to sRGB");
                return;
            }
        };
    // Row by row through one small buffer, so a large image needs no second copy of its pixels.
    let row_len = width as usize * layout.channels();
    let mut converted = vec![0; row_len];
    for row in buffer.chunks_exact_mut(row_len) {
        transform
            .transform(row, &mut converted)
            .expect("source and destination rows have the same layout and length");
        row.copy_from_slice(&converted);
    }
}
