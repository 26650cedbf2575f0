//! HEIC/HEIF (every iPhone photo) and AVIF, through the system's libheif (the libheif-rs
//! binding), which decodes HEVC with libde265 and AV1 with dav1d.
//!
//! libheif cannot scale while decoding, so these formats decode at full size and are resized
//! afterwards. libheif applies the container's rotation and mirroring (`irot`, `imir`) as it
//! decodes: the HEIF standard makes those the orientation, and phones that also write an EXIF
//! orientation write the same turn there, which must not be applied a second time.

use std::sync::LazyLock;

use image::metadata::Orientation;
use image::{DynamicImage, RgbImage, RgbaImage};
use libheif_rs::{
    ColorSpace, HeifContext, HeifError, HeifErrorCode, HeifErrorSubCode, ImageHandle, LibHeif,
    RgbChroma,
};

use super::colour::ColourSpace;
use super::{DecodedImage, ImageError, Limits, Pixels, SourceFormat, check_dimensions, one_line};

/// libheif's registry of codecs, set up once for the process.
static LIBHEIF: LazyLock<LibHeif> = LazyLock::new(LibHeif::new);

/// The displayed size of the primary image, from the container alone.
pub(super) fn probe(format: SourceFormat, bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    let context = read(format, bytes)?;
    let handle = primary_image(format, &context)?;
    Ok((handle.width(), handle.height()))
}

/// Decodes the primary image at full size, as displayed, in sRGB.
pub(super) fn decode(
    format: SourceFormat,
    bytes: &[u8],
    limits: &Limits,
) -> Result<DecodedImage, ImageError> {
    let context = read(format, bytes)?;
    let handle = primary_image(format, &context)?;
    // The size after rotation, from the container's properties: before any pixel is decoded.
    check_dimensions(format, handle.width(), handle.height(), limits)?;

    let alpha = handle.has_alpha_channel();
    let chroma = if alpha {
        RgbChroma::Rgba
    } else {
        RgbChroma::Rgb
    };
    // Interleaved 8-bit RGB(A): 10- and 12-bit images come out as 8-bit, like every format.
    // No decoding options: libheif-rs 0.20 frees them before libheif reads them.
    let decoded = LIBHEIF
        .decode(&handle, ColorSpace::Rgb(chroma), None)
        .map_err(|error| refusal(format, error))?;
    let (width, height) = (decoded.width(), decoded.height());
    let plane = decoded
        .planes()
        .interleaved
        .expect("libheif decodes to the interleaved RGB(A) it was asked for");
    // libheif pads rows; the image crate's buffers are tightly packed.
    let row_bytes = width as usize * if alpha { 4 } else { 3 };
    let packed: Vec<u8> = plane
        .data
        .chunks(plane.stride)
        .take(height as usize)
        .flat_map(|row| &row[..row_bytes])
        .copied()
        .collect();
    let image = if alpha {
        RgbaImage::from_raw(width, height, packed).map(DynamicImage::ImageRgba8)
    } else {
        RgbImage::from_raw(width, height, packed).map(DynamicImage::ImageRgb8)
    };
    let stored = Pixels::from_codec(image.expect("one packed row per image row"));

    // An ICC profile ('prof' or 'rICC'), else the code points of an nclx description.
    let icc_profile = handle.color_profile_raw().map(|profile| profile.data);
    // The nclx box is read only where there is no profile.
    let code_points = || {
        handle
            .color_profile_nclx()
            .map(|nclx| ColourSpace::CodePoints {
                primaries: nclx.color_primaries() as u8,
                transfer: nclx.transfer_characteristics() as u8,
            })
    };
    let colour_space = icc_profile
        .as_deref()
        .map(ColourSpace::Icc)
        .or_else(code_points);
    Ok(DecodedImage::new(
        format,
        (width, height),
        stored,
        Orientation::NoTransforms,
        colour_space,
    ))
}

/// Parses the container; its pixel data is only read when decoding.
fn read(format: SourceFormat, bytes: &[u8]) -> Result<HeifContext<'_>, ImageError> {
    let mut context = HeifContext::read_from_bytes(bytes).map_err(|e| refusal(format, e))?;
    // Grid tiles in this thread: every decode keeps to one core, the stage runs one per core.
    context.set_max_decoding_threads(0);
    Ok(context)
}

fn primary_image(format: SourceFormat, context: &HeifContext) -> Result<ImageHandle, ImageError> {
    context
        .primary_image_handle()
        .map_err(|error| refusal(format, error))
}

/// libheif's error in terms a person can act on.
fn refusal(format: SourceFormat, error: HeifError) -> ImageError {
    let reason = one_line(&error.message);
    match (error.code, error.sub_code) {
        (_, HeifErrorSubCode::EndOfData) => ImageError::Corrupt {
            format,
            reason: "the file is truncated".to_owned(),
        },
        (HeifErrorCode::UnsupportedFeature | HeifErrorCode::UnsupportedFileType, _) => {
            ImageError::UnsupportedFeature { format, reason }
        }
        (HeifErrorCode::MemoryAllocationError, _) => ImageError::MemoryLimit { format, reason },
        _ => ImageError::Corrupt { format, reason },
    }
}
