//! Colour management: pixels in another colour space than sRGB (a wide-gamut phone photo in
//! Display P3, an Adobe RGB or ProPhoto export) are converted to sRGB at decode, the space every
//! output and the detector assume. The space is an embedded ICC profile, or, in AVIF and HEIC,
//! code points (H.273's primaries and transfer curve in an `nclx` box). moxcms does the
//! conversion: pure Rust, so nothing to install, and already built for the image crate's own
//! colour handling.

use moxcms::{
    CicpColorPrimaries, CicpProfile, ColorProfile, DataColorSpace, Layout, MatrixCoefficients,
    TransferCharacteristics, TransformOptions,
};

use super::Pixels;

/// The colour space a file declares for its pixels.
#[derive(Clone, Copy, Debug)]
pub(super) enum ColourSpace<'a> {
    /// An embedded ICC profile.
    Icc(&'a [u8]),
    /// H.273 colour primaries and transfer characteristics (the codes of an `nclx` box).
    CodePoints { primaries: u8, transfer: u8 },
}

/// Converts `pixels` from `space` to sRGB, in place. A space that cannot be read, is not RGB
/// (a grey or CMYK profile) or is sRGB already is left alone: the pixels are then taken to be
/// sRGB, as browsers take them.
pub(super) fn convert_to_srgb(pixels: &mut Pixels, space: ColourSpace) {
    let Some(source) = source_profile(space) else {
        return;
    };
    let (layout, width, buffer) = match pixels {
        Pixels::Rgb(rgb) => (Layout::Rgb, rgb.width(), &mut **rgb),
        Pixels::Rgba(rgba) => (Layout::Rgba, rgba.width(), &mut **rgba),
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

/// The profile to convert from, or `None` where the pixels are to be taken as sRGB.
fn source_profile(space: ColourSpace) -> Option<ColorProfile> {
    match space {
        ColourSpace::Icc(icc_profile) => match ColorProfile::new_from_slice(icc_profile) {
            Ok(profile) if profile.color_space == DataColorSpace::Rgb => Some(profile),
            Ok(profile) => {
                tracing::debug!(colour_space = ?profile.color_space, "ignoring a non-RGB ICC profile");
                None
            }
            Err(error) => {
                tracing::debug!(%error, "ignoring an ICC profile that cannot be read");
                None
            }
        },
        ColourSpace::CodePoints {
            primaries,
            transfer,
        } => from_code_points(primaries, transfer),
    }
}

/// A profile for H.273 code points; `None` for sRGB's own (BT.709 primaries with the sRGB or
/// BT.709 curve, or unspecified ones, as encoders write for sRGB pictures) and for codes that
/// name no chromaticities or curve.
fn from_code_points(primaries: u8, transfer: u8) -> Option<ColorProfile> {
    let (Ok(color_primaries), Ok(transfer_characteristics)) = (
        CicpColorPrimaries::try_from(primaries),
        TransferCharacteristics::try_from(transfer),
    ) else {
        return None;
    };
    let srgb_primaries = matches!(
        color_primaries,
        CicpColorPrimaries::Bt709 | CicpColorPrimaries::Unspecified
    );
    let srgb_curve = matches!(
        transfer_characteristics,
        TransferCharacteristics::Srgb
            | TransferCharacteristics::Bt709
            | TransferCharacteristics::Bt601
            | TransferCharacteristics::Unspecified
    );
    if srgb_primaries && srgb_curve {
        return None;
    }
    let profile = ColorProfile::new_from_cicp(CicpProfile {
        color_primaries,
        transfer_characteristics,
        // The pixels are RGB by now: the matrix only mattered for decoding YCbCr.
        matrix_coefficients: MatrixCoefficients::Identity,
        full_range: true,
    });
    // moxcms leaves the profile without colorimetry or curves where the codes name none.
    let complete = profile.cicp.is_some() && profile.red_trc.is_some();
    if !complete {
        tracing::debug!(
            primaries,
            transfer,
            "ignoring colour code points without colorimetry"
        );
    }
    complete.then_some(profile)
}
