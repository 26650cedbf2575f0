//! JPEG, for every stage alike, through libjpeg-turbo (its TurboJPEG 3 API).
//!
//! The marker structure is read here first, in one pass over the bytes: size, EXIF orientation,
//! ICC profile and every scan header. So truncation, the pixel limit and the cost of decoding are
//! judged before libjpeg-turbo sees the file, the same way in every stage. libjpeg-turbo then
//! decodes, shrinking on load by DCT scaling when asked. A warning from it (damaged data it would
//! otherwise paper over with grey) refuses the file too: no stage ever processes a half image.

use std::ops::{Range, RangeInclusive};

use image::RgbImage;
use image::metadata::Orientation;
use turbojpeg::{Colorspace, Decompressor, PixelFormat, ScalingFactor};

use super::{ImageError, SourceFormat, one_decimal, progressive};

/// The most scans a JPEG may have. Cameras and encoders write 1 to about 10; libjpeg-turbo's
/// most elaborate progressive scripts stay far below 100.
pub const MAX_SCANS: usize = 1000;

/// The most 8x8 blocks a JPEG's scans may make libjpeg-turbo decode, which bounds the CPU time
/// of any decode to a few seconds. Each scan decodes every block of the components it codes,
/// even one that codes nothing new: measured here, 11 ns a block (up to 27 for a refinement
/// scan), so 250 million take about 3 s of one core (7 s for refinement scans). That is 107
/// decodes of each block of a 100-megapixel photo (4:2:0), where a baseline file needs 1 and
/// libjpeg's standard progressive script 6; the pixel limit alone allows 1000.
pub const MAX_BLOCK_DECODES: u64 = 250_000_000;

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const APP1: u8 = 0xE1;
const APP2: u8 = 0xE2;
const APP14: u8 = 0xEE;

/// One marker segment: where it lies in the file, from its 0xFF to its end (for a scan, the end
/// of the entropy-coded data after its header).
pub(super) struct Segment {
    pub marker: u8,
    pub bytes: Range<usize>,
    pub payload: Range<usize>,
}

/// The frame header (SOF): what the image is.
struct Frame {
    marker: u8,
    width: u16,
    height: u16,
    /// (component id, horizontal sampling factor, vertical sampling factor)
    components: Vec<(u8, u8, u8)>,
}

/// A scan header (SOS): which components and which coefficients of each block the scan codes.
pub(super) struct ScanHeader {
    pub components: Vec<u8>,
    pub spectral: RangeInclusive<u8>,
}

/// A JPEG whose marker structure has been read completely, from SOI to EOI.
pub(super) struct Jpeg<'a> {
    bytes: &'a [u8],
    frame: Frame,
    scans: Vec<ScanHeader>,
    orientation: Orientation,
    icc_profile: Option<Vec<u8>>,
    /// An Adobe APP14 segment: Adobe's convention stores CMYK inverted (0 is full ink).
    adobe: bool,
}

impl<'a> Jpeg<'a> {
    /// Reads the marker structure. Refuses a file that ends before its EOI marker (truncated),
    /// breaks the marker syntax, has more than [`MAX_SCANS`] scans, or uses a kind of JPEG
    /// libjpeg-turbo does not decode to 8-bit samples.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ImageError> {
        let mut frame = None;
        let mut scans = Vec::new();
        let mut exif = None;
        let mut icc_chunks = Vec::new();
        let mut adobe = false;
        for segment in segments(bytes) {
            let segment = segment.map_err(corrupt)?;
            let payload = &bytes[segment.payload.clone()];
            match segment.marker {
                SOS => {
                    scans.push(ScanHeader::parse(payload).map_err(corrupt)?);
                    if scans.len() > MAX_SCANS {
                        return Err(too_costly(format!(
                            "it has more than {MAX_SCANS} scans, the limit"
                        )));
                    }
                }
                marker if is_frame_marker(marker) && frame.is_none() => {
                    frame = Some(Frame::parse(marker, payload)?);
                }
                APP1 if exif.is_none() => exif = payload.strip_prefix(b"Exif\0\0"),
                APP2 => {
                    if let Some(chunk) = payload.strip_prefix(b"ICC_PROFILE\0") {
                        icc_chunks.push(chunk);
                    }
                }
                APP14 => adobe |= payload.starts_with(b"Adobe"),
                _ => {}
            }
        }
        let frame = frame.ok_or_else(|| corrupt("it has no frame header (SOF marker)".into()))?;
        if scans.is_empty() {
            return Err(corrupt("it has no image data (no SOS marker)".into()));
        }
        Ok(Self {
            bytes,
            frame,
            scans,
            orientation: exif
                .and_then(Orientation::from_exif_chunk)
                .unwrap_or(Orientation::NoTransforms),
            icc_profile: assemble_icc_profile(&icc_chunks),
            adobe,
        })
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// (width, height) as stored.
    pub fn size(&self) -> (u32, u32) {
        (u32::from(self.frame.width), u32::from(self.frame.height))
    }

    pub fn orientation(&self) -> Orientation {
        self.orientation
    }

    pub fn icc_profile(&self) -> Option<&[u8]> {
        self.icc_profile.as_deref()
    }

    /// Refuses a file whose scans would make libjpeg-turbo decode more than
    /// [`MAX_BLOCK_DECODES`] blocks, whatever scale it is decoded at.
    pub fn check_cost(&self) -> Result<(), ImageError> {
        let block_decodes: u64 = self
            .scans
            .iter()
            .flat_map(|scan| &scan.components)
            .map(|&id| self.frame.blocks(id))
            .sum();
        if block_decodes > MAX_BLOCK_DECODES {
            return Err(too_costly(format!(
                "its {} scans would decode {} million blocks, over the limit of {} million",
                self.scans.len(),
                one_decimal(block_decodes, 1_000_000),
                one_decimal(MAX_BLOCK_DECODES, 1_000_000)
            )));
        }
        Ok(())
    }

    fn is_progressive(&self) -> bool {
        matches!(self.frame.marker, 0xC2 | 0xCA)
    }

    fn is_lossless(&self) -> bool {
        matches!(self.frame.marker, 0xC3 | 0xCB)
    }

    /// Decodes to 8-bit RGB at the smallest of 1/8, 1/4, 1/2 and full size whose longest edge is
    /// at least `min_longest_edge` (full size when `None`, and always for lossless JPEG, which
    /// has no DCT to scale).
    pub fn decode(&self, min_longest_edge: Option<u32>) -> Result<RgbImage, ImageError> {
        let longest = u32::from(self.frame.width.max(self.frame.height));
        let factor = match min_longest_edge {
            Some(edge) if !self.is_lossless() => [8, 4, 2]
                .into_iter()
                .map(|denominator| ScalingFactor::new(1, denominator))
                .find(|factor| factor.scale(longest as usize) >= edge as usize)
                .unwrap_or(ScalingFactor::ONE),
            _ => ScalingFactor::ONE,
        };
        // At 1/8 each block becomes one pixel, its DC coefficient: a progressive file's AC scans,
        // most of its decoding time, are nearly all dropped unread.
        let dc_only = (factor == ScalingFactor::ONE_EIGHTH && self.is_progressive() && longest > 8)
            .then(|| progressive::without_ac_scans(self));
        let data = dc_only.as_deref().unwrap_or(self.bytes);

        let mut decompressor = Decompressor::new().map_err(libjpeg_error)?;
        // The scans were counted already; this holds should that count ever disagree.
        decompressor
            .set_scan_limit(MAX_SCANS as u32)
            .map_err(libjpeg_error)?;
        decompressor
            .set_scaling_factor(factor)
            .map_err(libjpeg_error)?;
        let header = decompressor
            .read_header(data)
            .map_err(libjpeg_error)?
            .scaled(factor);
        let format = match header.colorspace {
            Colorspace::Gray => PixelFormat::GRAY,
            Colorspace::CMYK | Colorspace::YCCK => PixelFormat::CMYK,
            Colorspace::RGB | Colorspace::YCbCr => PixelFormat::RGB,
        };
        let mut decoded = turbojpeg::Image {
            pixels: vec![0; header.width * header.height * format.size()],
            width: header.width,
            pitch: header.width * format.size(),
            height: header.height,
            format,
        };
        // Returns an error for warnings too (corrupt data libjpeg-turbo decoded around).
        decompressor
            .decompress(data, decoded.as_deref_mut())
            .map_err(libjpeg_error)?;

        let rgb = match format {
            PixelFormat::GRAY => decoded.pixels.iter().flat_map(|&g| [g; 3]).collect(),
            PixelFormat::CMYK => cmyk_to_rgb(&decoded.pixels, self.adobe),
            _ => decoded.pixels,
        };
        // The buffer was sized from these dimensions, so it always fits.
        Ok(
            RgbImage::from_raw(header.width as u32, header.height as u32, rgb)
                .expect("three samples for every pixel"),
        )
    }
}

impl Frame {
    fn parse(marker: u8, payload: &[u8]) -> Result<Self, ImageError> {
        let unsupported = |reason: String| ImageError::UnsupportedFeature {
            format: SourceFormat::Jpeg,
            reason,
        };
        if matches!(marker, 0xC5..=0xC7 | 0xCD..=0xCF) {
            return Err(unsupported("hierarchical coding".into()));
        }
        let [precision, h1, h0, w1, w0, count, rest @ ..] = payload else {
            return Err(corrupt("its frame header is cut short".into()));
        };
        if *precision != 8 {
            return Err(unsupported(format!("{precision}-bit samples")));
        }
        let components: Vec<(u8, u8, u8)> = rest
            .chunks_exact(3)
            .take(usize::from(*count))
            .map(|c| (c[0], c[1] >> 4, c[1] & 0x0F))
            .collect();
        let sampling_ok = |&(_, h, v): &(u8, u8, u8)| (1..=4).contains(&h) && (1..=4).contains(&v);
        if components.len() != usize::from(*count) || !components.iter().all(sampling_ok) {
            return Err(corrupt("its frame header is malformed".into()));
        }
        Ok(Self {
            marker,
            width: u16::from_be_bytes([*w1, *w0]),
            height: u16::from_be_bytes([*h1, *h0]),
            components,
        })
    }

    /// The 8x8 blocks component `id` has (0 for an id the frame does not have).
    fn blocks(&self, id: u8) -> u64 {
        let Some(&(_, h, v)) = self.components.iter().find(|c| c.0 == id) else {
            return 0;
        };
        let max_h = self.components.iter().map(|c| c.1).max().unwrap_or(1);
        let max_v = self.components.iter().map(|c| c.2).max().unwrap_or(1);
        let samples = |size: u16, factor: u8, max: u8| {
            (u64::from(size) * u64::from(factor)).div_ceil(u64::from(max))
        };
        samples(self.width, h, max_h).div_ceil(8) * samples(self.height, v, max_v).div_ceil(8)
    }
}

impl ScanHeader {
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        let short = || "a scan header is cut short".to_string();
        let count = usize::from(*payload.first().ok_or_else(short)?);
        let components = payload.get(1..1 + 2 * count).ok_or_else(short)?;
        let spectral = payload
            .get(1 + 2 * count..3 + 2 * count)
            .ok_or_else(short)?;
        Ok(Self {
            components: components.chunks_exact(2).map(|c| c[0]).collect(),
            spectral: spectral[0]..=spectral[1],
        })
    }
}

/// The marker segments of a JPEG, SOI to EOI; an error (the reason) where the structure breaks.
pub(super) fn segments(jpeg: &[u8]) -> impl Iterator<Item = Result<Segment, String>> + '_ {
    let mut position = 0;
    let mut finished = false;
    std::iter::from_fn(move || {
        if finished {
            return None;
        }
        let segment = next_segment(jpeg, position);
        match &segment {
            Ok(segment) => {
                position = segment.bytes.end;
                finished = segment.marker == EOI;
            }
            Err(_) => finished = true,
        }
        Some(segment)
    })
}

fn next_segment(jpeg: &[u8], start: usize) -> Result<Segment, String> {
    const TRUNCATED: &str = "the file is truncated";
    match jpeg.get(start) {
        None => return Err(TRUNCATED.into()),
        Some(0xFF) => {}
        Some(byte) => {
            return Err(format!(
                "byte {start} is 0x{byte:02x} where a marker should begin"
            ));
        }
    }
    // Any number of 0xFF may pad before a marker.
    let mut marker_at = start + 1;
    while jpeg.get(marker_at) == Some(&0xFF) {
        marker_at += 1;
    }
    let marker = *jpeg.get(marker_at).ok_or(TRUNCATED)?;
    let standalone = |end: usize| Segment {
        marker,
        bytes: start..end,
        payload: end..end,
    };
    match marker {
        SOI if start == 0 => return Ok(standalone(marker_at + 1)),
        EOI | 0x01 | 0xD0..=0xD7 if start > 0 => return Ok(standalone(marker_at + 1)),
        SOI | EOI | 0x00 => return Err(format!("marker 0x{marker:02x} is out of place")),
        _ if start == 0 => return Err("it does not begin with a start-of-image marker".into()),
        _ => {}
    }
    let length = jpeg.get(marker_at + 1..marker_at + 3).ok_or(TRUNCATED)?;
    let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
    if length < 2 {
        return Err(format!("marker 0x{marker:02x} has an impossible length"));
    }
    let payload = marker_at + 3..marker_at + 1 + length;
    if payload.end > jpeg.len() {
        return Err(TRUNCATED.into());
    }
    let end = if marker == SOS {
        entropy_coded_end(jpeg, payload.end).ok_or(TRUNCATED)?
    } else {
        payload.end
    };
    Ok(Segment {
        marker,
        bytes: start..end,
        payload,
    })
}

/// Where the entropy-coded data starting at `start` ends: at the first marker that is neither a
/// stuffed zero (FF 00) nor a restart marker (FF D0..D7), which belong to the data.
fn entropy_coded_end(jpeg: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    loop {
        at += jpeg.get(at..)?.iter().position(|&b| b == 0xFF)?;
        match *jpeg.get(at + 1)? {
            0x00 | 0xD0..=0xD7 | 0xFF => at += 1,
            _ => return Some(at),
        }
    }
}

/// SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC), which share the range.
fn is_frame_marker(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// The ICC profile from its APP2 chunks (each "ICC_PROFILE\0", sequence number from 1, count,
/// data), or `None` when the chunks do not make up one whole profile.
fn assemble_icc_profile(chunks: &[&[u8]]) -> Option<Vec<u8>> {
    let count = usize::from(*chunks.first()?.get(1)?);
    if chunks.len() != count {
        return None;
    }
    let mut ordered: Vec<Option<&[u8]>> = vec![None; count];
    for chunk in chunks {
        let [sequence, chunk_count, data @ ..] = chunk else {
            return None;
        };
        let slot = ordered.get_mut(usize::from(*sequence).checked_sub(1)?)?;
        if usize::from(*chunk_count) != count || slot.replace(data).is_some() {
            return None;
        }
    }
    ordered
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .map(|parts| parts.concat())
}

/// CMYK samples to RGB by the naive formula (no print profile): each ink darkens its channel,
/// black darkens all three.
fn cmyk_to_rgb(samples: &[u8], adobe_inverted: bool) -> Vec<u8> {
    samples
        .chunks_exact(4)
        .flat_map(|pixel| {
            // The share of light each ink lets through, 0..=255.
            let clear = |sample: u8| if adobe_inverted { sample } else { 255 - sample };
            let black = u16::from(clear(pixel[3]));
            let channel = |sample: u8| ((u16::from(clear(sample)) * black + 127) / 255) as u8;
            [channel(pixel[0]), channel(pixel[1]), channel(pixel[2])]
        })
        .collect()
}

/// The longest edge [`encode_jpeg`] takes: libjpeg-turbo's limit (the format's is 65535).
pub const JPEG_MAX_EDGE: u32 = 65_500;

/// Prism's JPEG encoder (thumbnails, annotated copies): libjpeg-turbo, already linked for
/// decoding and SIMD throughout (measured against jpeg-encoder and the `image` crate's encoder at
/// equal settings by the thumbnail stage's vs_libvips bench). Chroma is
/// subsampled 4:2:0 below quality 90 and kept whole from 90, as libvips chooses; standard
/// Huffman tables.
pub fn encode_jpeg(rgb: &image::RgbImage, quality: u8) -> Result<Vec<u8>, String> {
    let failed = |e: turbojpeg::Error| format!("libjpeg-turbo: {e}");
    let mut compressor = turbojpeg::Compressor::new().map_err(failed)?;
    compressor.set_quality(i32::from(quality)).map_err(failed)?;
    let subsampling = if quality < 90 {
        turbojpeg::Subsamp::Sub2x2
    } else {
        turbojpeg::Subsamp::None
    };
    compressor.set_subsamp(subsampling).map_err(failed)?;
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    let image = turbojpeg::Image {
        pixels: rgb.as_raw().as_slice(),
        width,
        pitch: width * 3,
        height,
        format: turbojpeg::PixelFormat::RGB,
    };
    compressor.compress_to_vec(image).map_err(failed)
}

fn corrupt(reason: String) -> ImageError {
    ImageError::Corrupt {
        format: SourceFormat::Jpeg,
        reason,
    }
}

fn too_costly(reason: String) -> ImageError {
    ImageError::TooCostly {
        format: SourceFormat::Jpeg,
        reason,
    }
}

/// libjpeg-turbo's errors and warnings, in its own words (first letter lowered to read on).
fn libjpeg_error(error: turbojpeg::Error) -> ImageError {
    let message = match error {
        turbojpeg::Error::TurboJpegError(message) => message.trim().to_owned(),
        other => other.to_string(),
    };
    if message.contains("more than") && message.contains("scans") {
        return too_costly(format!("it has more than {MAX_SCANS} scans, the limit"));
    }
    let mut chars = message.chars();
    let reason = chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    });
    corrupt(reason)
}
