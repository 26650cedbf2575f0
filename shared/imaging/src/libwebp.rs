//! The one call into libwebp's C API: decoding a still WebP, optionally scaled while it decodes.
//!
//! libwebp's advanced decoding API rescales row by row as it decodes (its shrink-on-load, what
//! libvips' webpload uses), so a thumbnail source never exists at full size: memory is the
//! scaled pixels plus a few rows (a lossless WebP still needs its full-size ARGB, which the
//! pixel limit bounds). This module is the crate's only unsafe code, kept to the FFI call.

use std::ffi::c_int;

use libwebp_sys::{
    VP8StatusCode, WEBP_CSP_MODE, WebPDecode, WebPDecoderConfig, WebPFreeDecBuffer, WebPRGBABuffer,
};

/// Decodes a still WebP to tightly packed 8-bit RGB, or RGBA with `alpha`, of `size`
/// (width, height). libwebp rescales when `size` differs from the bitstream's own `full_size`.
pub(super) fn decode(
    bytes: &[u8],
    full_size: (u32, u32),
    size: (u32, u32),
    alpha: bool,
) -> Result<Vec<u8>, VP8StatusCode> {
    let invalid = |_| VP8StatusCode::VP8_STATUS_INVALID_PARAM;
    let (width, height) = size;
    let channels = if alpha { 4 } else { 3 };
    let stride = width as usize * channels;
    let mut pixels = vec![0; stride * height as usize];

    // Fails only when this binding and the compiled libwebp disagree on the ABI version.
    let mut config =
        WebPDecoderConfig::new().map_err(|()| VP8StatusCode::VP8_STATUS_INVALID_PARAM)?;
    if size != full_size {
        config.options.use_scaling = 1;
        config.options.scaled_width = c_int::try_from(width).map_err(invalid)?;
        config.options.scaled_height = c_int::try_from(height).map_err(invalid)?;
    }
    // Each decode runs on one core; the stage parallelises across images, not inside one.
    config.options.use_threads = 0;
    config.output.colorspace = if alpha {
        WEBP_CSP_MODE::MODE_RGBA
    } else {
        WEBP_CSP_MODE::MODE_RGB
    };
    // libwebp writes into our buffer, after checking that `size` covers `stride` x height.
    config.output.is_external_memory = 1;
    config.output.u.RGBA = WebPRGBABuffer {
        rgba: pixels.as_mut_ptr(),
        stride: c_int::try_from(stride).map_err(invalid)?,
        size: pixels.len(),
    };
    // SAFETY: `bytes` is read for `bytes.len()` bytes and `pixels`, which outlives the call, is
    // written within the `size` bytes the output buffer declares; `config` was initialised by
    // WebPInitDecoderConfig for this libwebp's ABI.
    let status = unsafe { WebPDecode(bytes.as_ptr(), bytes.len(), &mut config) };
    // SAFETY: releases whatever libwebp allocated for the output itself (nothing with external
    // memory, but the API asks for the call); `pixels` is ours and stays valid.
    unsafe { WebPFreeDecBuffer(&mut config.output) };
    match status {
        VP8StatusCode::VP8_STATUS_OK => Ok(pixels),
        failure => Err(failure),
    }
}
