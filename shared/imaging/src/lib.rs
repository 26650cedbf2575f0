//! Decoding uploaded images into 8-bit pixels, safely.
//!
//! Bytes in, pixels out: nothing here knows about Kafka or S3. Every upload is untrusted, so
//! [`decode`] refuses oversized files and pixel bombs from the header alone, before the decoder
//! allocates anything for pixels, and bounds the decoder's own allocations too.
//!
//! One decoding policy for every stage: JPEG goes through libjpeg-turbo ([`jpeg`]), which is
//! refused when truncated or damaged and when its scans would cost too much CPU; still WebPs
//! through libwebp ([`webp`]); HEIC/HEIF and AVIF through libheif ([`heif`]); PNG, GIF, TIFF,
//! BMP and animated WebPs through the image crate. Pixels with an ICC profile are converted to
//! sRGB ([`colour`]).

use std::fmt;
use std::io::{self, Cursor};

use image::codecs::bmp::BmpDecoder;
use image::codecs::gif::GifDecoder;
use image::codecs::png::PngDecoder;
use image::codecs::tiff::TiffDecoder;
use image::codecs::webp::WebPDecoder;
use image::error::{ImageError as CodecError, LimitErrorKind};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, RgbImage, RgbaImage};
use serde::{Deserialize, Serialize};

use colour::ColourSpace;

/// Largest upload decoded: 50 MiB is several times a high-end camera JPEG and leaves room for
/// big PNG screenshots, while bounding the memory one message can pin.
pub const DEFAULT_MAX_BYTES: u64 = 50 * 1024 * 1024;

/// Largest image decoded: 100 megapixels covers medium-format photos (about 400 MB as RGBA);
/// anything bigger is far more likely a decompression bomb than a photo.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// The widest pixel a decoder produces before we reduce it to 8 bits (16-bit RGBA). Decoders may
/// allocate at most this many bytes per allowed pixel, which bounds their working memory.
const WIDEST_DECODED_PIXEL_BYTES: u64 = 8;

/// What the PNG decoder may allocate for everything but pixels: ancillary chunks, above all the
/// ICC profile, which it inflates while reading the header (a 1 MB iCCP chunk can inflate to
/// 1 GB). Real profiles are at most a few MiB. The pixel budget is separate and set later.
const PNG_METADATA_BYTES: u64 = 16 * 1024 * 1024;

/// What an upload may cost to decode. The services take theirs from configuration; the defaults
/// are for callers without one (tools, tests, benchmarks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest encoded file accepted, in bytes.
    pub max_bytes: u64,
    /// Largest image accepted, in pixels (width x height).
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

impl Limits {
    /// The allocation bound handed to the codec: enough for an image at the pixel limit in the
    /// codec's widest pixel format, and no more. The TIFF decoder needs up to three such images:
    /// ours, a whole-image buffer of its own that it copies from, and a strip or tile, which
    /// can be the whole image.
    fn for_codec(&self, format: SourceFormat) -> image::Limits {
        let images = if format == SourceFormat::Tiff { 3 } else { 1 };
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(
            self.max_pixels
                .saturating_mul(WIDEST_DECODED_PIXEL_BYTES)
                .saturating_mul(images),
        );
        limits
    }
}

/// The encoded formats Prism accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
    /// HEIC (HEVC in a HEIF container, as phones write it) and other HEIF stills.
    Heif,
    Avif,
    Tiff,
    Bmp,
}

impl SourceFormat {
    /// The name a person knows the format by.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::Webp => "WebP",
            Self::Gif => "GIF",
            Self::Heif => "HEIC/HEIF",
            Self::Avif => "AVIF",
            Self::Tiff => "TIFF",
            Self::Bmp => "BMP",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
            Self::Gif => "image/gif",
            Self::Heif => "image/heif",
            Self::Avif => "image/avif",
            Self::Tiff => "image/tiff",
            Self::Bmp => "image/bmp",
        }
    }

    /// Recognises a format by its magic bytes; file names and content types are not trusted.
    fn sniff(bytes: &[u8]) -> Result<Self, ImageError> {
        if bytes.is_empty() {
            return Err(ImageError::Empty);
        }
        if let Some(format) = heif_format(bytes) {
            return Ok(format);
        }
        // The image crate does not know it, and it is what people upload next.
        const JPEG_XL_CODESTREAM: &[u8] = &[0xFF, 0x0A];
        const JPEG_XL_CONTAINER: &[u8] = b"\0\0\0\x0cJXL \r\n\x87\n";
        if bytes.starts_with(JPEG_XL_CODESTREAM) || bytes.starts_with(JPEG_XL_CONTAINER) {
            return Err(ImageError::UnsupportedFormat {
                detected: "a JPEG XL image".to_owned(),
            });
        }
        match image::guess_format(bytes) {
            Ok(ImageFormat::Jpeg) => Ok(Self::Jpeg),
            Ok(ImageFormat::Png) => Ok(Self::Png),
            Ok(ImageFormat::WebP) => Ok(Self::Webp),
            Ok(ImageFormat::Gif) => Ok(Self::Gif),
            Ok(ImageFormat::Tiff) => Ok(Self::Tiff),
            Ok(ImageFormat::Bmp) => Ok(Self::Bmp),
            Ok(other) => Err(ImageError::UnsupportedFormat {
                detected: format!("a {} image", other.extensions_str()[0].to_uppercase()),
            }),
            Err(_) => Err(ImageError::UnsupportedFormat {
                detected: format!(
                    "not a recognised image (it starts with bytes {})",
                    hex_prefix(bytes)
                ),
            }),
        }
    }
}

/// HEIF or AVIF, from the brands of the `ftyp` box that opens the container (the major
/// brand, then the compatible ones): an AVIF brand makes it AVIF, else a HEIF brand (HEIC photos
/// from phones, HEIF stills and sequences) makes it HEIF.
fn heif_format(bytes: &[u8]) -> Option<SourceFormat> {
    const AVIF_BRANDS: [&[u8; 4]; 2] = [b"avif", b"avis"];
    const HEIF_BRANDS: [&[u8; 4]; 10] = [
        b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1",
    ];
    let box_size = usize::try_from(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?)).ok()?;
    if bytes.get(4..8)? != b"ftyp" || box_size < 16 {
        return None;
    }
    // Major brand, minor version, then compatible brands, each four bytes.
    let brands = bytes.get(8..box_size.min(bytes.len()))?;
    let brands: Vec<&[u8]> = brands
        .chunks_exact(4)
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, brand)| brand)
        .collect();
    let any_of = |known: &[&[u8; 4]]| {
        brands
            .iter()
            .any(|brand| known.iter().any(|k| k.as_slice() == *brand))
    };
    if any_of(&AVIF_BRANDS) {
        Some(SourceFormat::Avif)
    } else if any_of(&HEIF_BRANDS) {
        Some(SourceFormat::Heif)
    } else {
        None
    }
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the header says, without decoding pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: SourceFormat,
    /// Width as displayed, after EXIF orientation.
    pub width: u32,
    /// Height as displayed, after EXIF orientation.
    pub height: u32,
}

/// Why an upload cannot be decoded. Each message says what is wrong in terms a person can act on.
#[derive(thiserror::Error, Debug)]
pub enum ImageError {
    #[error("the file is empty (0 bytes)")]
    Empty,
    #[error(
        "file is {}, over the limit of {}; compress or downscale it before uploading",
        describe_bytes(*.size),
        describe_bytes(*.limit)
    )]
    TooManyBytes { size: u64, limit: u64 },
    #[error(
        "image is {width}x{height} = {}, over the limit of {}; downscale it before uploading",
        describe_pixels(u64::from(*.width) * u64::from(*.height)),
        describe_pixels(*.limit)
    )]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error(
        "unsupported format: {detected}; Prism accepts JPEG, PNG, WebP, GIF, HEIC/HEIF, AVIF, \
         TIFF and BMP"
    )]
    UnsupportedFormat { detected: String },
    #[error(
        "this {format} uses a feature Prism cannot decode ({reason}); re-save it with standard settings"
    )]
    UnsupportedFeature {
        format: SourceFormat,
        reason: String,
    },
    #[error(
        "decoding this {format} would need more memory than allowed ({reason}); re-save or downscale it"
    )]
    MemoryLimit {
        format: SourceFormat,
        reason: String,
    },
    #[error("corrupt {format}: {reason}; the file is damaged or not really a {format}")]
    Corrupt {
        format: SourceFormat,
        reason: String,
    },
    #[error(
        "decoding this {format} would cost too much CPU ({reason}); re-save it as a baseline JPEG"
    )]
    TooCostly {
        format: SourceFormat,
        reason: String,
    },
}

impl ImageError {
    /// A stable snake_case code for dead letters and metrics; never changes once released.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty_image",
            Self::TooManyBytes { .. } => "too_many_bytes",
            Self::TooManyPixels { .. } => "too_many_pixels",
            Self::UnsupportedFormat { .. } => "unsupported_format",
            Self::UnsupportedFeature { .. } => "unsupported_feature",
            Self::MemoryLimit { .. } => "memory_limit",
            Self::Corrupt { .. } => "corrupt_image",
            Self::TooCostly { .. } => "too_costly_to_decode",
        }
    }

    fn from_codec(format: SourceFormat, error: CodecError) -> Self {
        match error {
            CodecError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => Self::Corrupt {
                format,
                reason: "the file is truncated".to_owned(),
            },
            CodecError::Limits(e) if matches!(e.kind(), LimitErrorKind::InsufficientMemory) => {
                Self::MemoryLimit {
                    format,
                    reason: one_line(&e.to_string()),
                }
            }
            CodecError::Unsupported(e) => Self::UnsupportedFeature {
                format,
                reason: one_line(&e.to_string()),
            },
            CodecError::Decoding(e) => Self::Corrupt {
                format,
                // The codec's own words, without image's "Format error decoding Png:" preamble.
                reason: one_line(
                    &std::error::Error::source(&e)
                        .map_or_else(|| e.to_string(), ToString::to_string),
                ),
            },
            other => Self::Corrupt {
                format,
                reason: one_line(&other.to_string()),
            },
        }
    }
}

/// `text` on one line: dead letters and logs carry reasons as single lines.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// 8-bit pixels: RGB, or RGBA when the source has real transparency.
#[derive(Clone)]
pub enum Pixels {
    Rgb(RgbImage),
    Rgba(RgbaImage),
}

impl Pixels {
    pub fn width(&self) -> u32 {
        match self {
            Self::Rgb(image) => image.width(),
            Self::Rgba(image) => image.width(),
        }
    }

    pub fn height(&self) -> u32 {
        match self {
            Self::Rgb(image) => image.height(),
            Self::Rgba(image) => image.height(),
        }
    }

    /// Reduces whatever the codec produced to 8-bit RGB or RGBA. Alpha that is opaque everywhere
    /// (every GIF has an alpha channel, many PNGs too) is dropped: it would only slow resizing and
    /// make encoders carry a useless channel.
    fn from_codec(image: DynamicImage) -> Self {
        if !image.color().has_alpha() {
            return Self::Rgb(image.into_rgb8());
        }
        let rgba = image.into_rgba8();
        if rgba.as_raw().chunks_exact(4).all(|p| p[3] == u8::MAX) {
            Self::Rgb(DynamicImage::ImageRgba8(rgba).into_rgb8())
        } else {
            Self::Rgba(rgba)
        }
    }

    /// Turns pixels stored as the file holds them into pixels as the EXIF orientation says to
    /// display them.
    pub fn oriented(self, orientation: Orientation) -> Self {
        if orientation == Orientation::NoTransforms {
            return self;
        }
        let mut image = DynamicImage::from(self);
        image.apply_orientation(orientation);
        match image {
            DynamicImage::ImageRgba8(rgba) => Self::Rgba(rgba),
            // Orientation moves pixels without changing their type, so this is RGB.
            other => Self::Rgb(other.into_rgb8()),
        }
    }

    /// RGB, with any transparency composited onto white (what a viewer without alpha shows).
    pub fn into_rgb(self) -> RgbImage {
        match self {
            Self::Rgb(rgb) => rgb,
            Self::Rgba(rgba) => flatten_onto_white(&rgba),
        }
    }
}

impl From<Pixels> for DynamicImage {
    fn from(pixels: Pixels) -> Self {
        match pixels {
            Pixels::Rgb(rgb) => Self::ImageRgb8(rgb),
            Pixels::Rgba(rgba) => Self::ImageRgba8(rgba),
        }
    }
}

/// Composites RGBA onto a white background, for outputs that cannot carry alpha.
pub fn flatten_onto_white(rgba: &RgbaImage) -> RgbImage {
    let mut rgb = Vec::with_capacity(rgba.as_raw().len() / 4 * 3);
    for pixel in rgba.as_raw().chunks_exact(4) {
        let alpha = u16::from(pixel[3]);
        let white_share = u16::from(u8::MAX) - alpha;
        for &channel in &pixel[..3] {
            // (c*a + 255*(255-a)) / 255, rounded; the result is at most 255.
            let blended =
                (u16::from(channel) * alpha + u16::from(u8::MAX) * white_share + 127) / 255;
            rgb.push(blended as u8);
        }
    }
    RgbImage::from_raw(rgba.width(), rgba.height(), rgb)
        .expect("three channels for every four read")
}

/// A decoded image. Pixels are kept as stored in the file together with their EXIF orientation,
/// so that a consumer which shrinks the image (thumbnails) can orient the small result instead of
/// rotating every full-size pixel; [`DecodedImage::width`] and friends describe it as displayed.
pub struct DecodedImage {
    format: SourceFormat,
    stored: Pixels,
    orientation: Orientation,
    /// The file's own (width, height) as stored, which the pixels are smaller than when the
    /// image was shrunk on load.
    full_stored_size: (u32, u32),
}

impl DecodedImage {
    /// Pixels as the file stores them, converted to sRGB from the colour space the file
    /// declares, if any.
    fn new(
        format: SourceFormat,
        full_stored_size: (u32, u32),
        mut stored: Pixels,
        orientation: Orientation,
        colour_space: Option<ColourSpace>,
    ) -> Self {
        if let Some(space) = colour_space {
            colour::convert_to_srgb(&mut stored, space);
        }
        Self {
            format,
            stored,
            orientation,
            full_stored_size,
        }
    }

    pub fn format(&self) -> SourceFormat {
        self.format
    }

    /// Width as displayed, after orientation.
    pub fn width(&self) -> u32 {
        if swaps_axes(self.orientation) {
            self.stored.height()
        } else {
            self.stored.width()
        }
    }

    /// Height as displayed, after orientation.
    pub fn height(&self) -> u32 {
        if swaps_axes(self.orientation) {
            self.stored.width()
        } else {
            self.stored.height()
        }
    }

    /// Width as displayed at the file's full size, however small it was decoded.
    pub fn full_width(&self) -> u32 {
        self.full_displayed_size().0
    }

    /// Height as displayed at the file's full size, however small it was decoded.
    pub fn full_height(&self) -> u32 {
        self.full_displayed_size().1
    }

    fn full_displayed_size(&self) -> (u32, u32) {
        let (width, height) = self.full_stored_size;
        if swaps_axes(self.orientation) {
            (height, width)
        } else {
            (width, height)
        }
    }

    pub fn has_alpha(&self) -> bool {
        matches!(self.stored, Pixels::Rgba(_))
    }

    /// Pixels as stored in the file, before orientation.
    pub fn stored_pixels(&self) -> &Pixels {
        &self.stored
    }

    /// The transformation that turns stored pixels into displayed ones.
    pub fn orientation(&self) -> Orientation {
        self.orientation
    }

    /// RGB as displayed, transparency composited onto white.
    pub fn into_rgb(self) -> RgbImage {
        // Flatten first so that orientation moves three channels, not four.
        Pixels::Rgb(self.stored.into_rgb())
            .oriented(self.orientation)
            .into_rgb()
    }
}

impl fmt::Debug for DecodedImage {
    // Deliberately not the pixels: a debug print of a 12 MP image would be 36 MB.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecodedImage")
            .field("format", &self.format)
            .field("width", &self.width())
            .field("height", &self.height())
            .field("has_alpha", &self.has_alpha())
            .field("orientation", &self.orientation)
            .finish()
    }
}

/// Reads format and displayed dimensions from the header; no pixels are decoded.
pub fn probe(bytes: &[u8]) -> Result<ImageInfo, ImageError> {
    let format = SourceFormat::sniff(bytes)?;
    let ((width, height), orientation) = match format {
        SourceFormat::Jpeg => {
            let jpeg = jpeg::Jpeg::parse(bytes)?;
            (jpeg.size(), jpeg.orientation())
        }
        // libheif reports the size as displayed.
        SourceFormat::Heif | SourceFormat::Avif => {
            (heif::probe(format, bytes)?, Orientation::NoTransforms)
        }
        _ => {
            let mut decoder = open(format, bytes)?;
            let orientation = decoder
                .orientation()
                .map_err(|e| ImageError::from_codec(format, e))?;
            (decoder.dimensions(), orientation)
        }
    };
    let (width, height) = if swaps_axes(orientation) {
        (height, width)
    } else {
        (width, height)
    };
    Ok(ImageInfo {
        format,
        width,
        height,
    })
}

/// Decodes an upload into 8-bit sRGB pixels, refusing it early when it breaks `limits`.
///
/// GIFs and animated WebPs yield their first frame.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<DecodedImage, ImageError> {
    decode_at_least(bytes, limits, None)
}

/// Decodes an upload for a consumer that shrinks it anyway (thumbnails), possibly smaller than
/// full size but never with its longest edge below `min_longest_edge` (nor above full size).
///
/// JPEGs and WebPs shrink on load, which skips most of the decoding work and memory: a JPEG's
/// inverse DCT is computed at 1/2, 1/4 or 1/8 scale, the smallest that keeps the longest edge at
/// least `min_longest_edge`; a still WebP is rescaled by libwebp while it decodes, to exactly
/// that longest edge. Everything else is as in [`decode`]: the limits apply to the full-size
/// image, checked from the header, and the same files are refused for the same reasons. Other
/// formats decode at full size.
pub fn decode_for_thumbnails(
    bytes: &[u8],
    limits: &Limits,
    min_longest_edge: u32,
) -> Result<DecodedImage, ImageError> {
    decode_at_least(bytes, limits, Some(min_longest_edge))
}

/// [`decode`], or [`decode_for_thumbnails`] with a `min_longest_edge`.
fn decode_at_least(
    bytes: &[u8],
    limits: &Limits,
    min_longest_edge: Option<u32>,
) -> Result<DecodedImage, ImageError> {
    check_byte_limit(bytes, limits)?;
    match SourceFormat::sniff(bytes)? {
        SourceFormat::Jpeg => decode_jpeg(bytes, limits, min_longest_edge),
        format @ (SourceFormat::Heif | SourceFormat::Avif) => heif::decode(format, bytes, limits),
        format => decode_with_image_crate(format, bytes, limits, min_longest_edge),
    }
}

/// Decodes what the image crate reads the header of: PNG, WebP, GIF, TIFF and BMP. Still WebPs
/// are decoded by libwebp, scaled to `min_longest_edge` when given.
fn decode_with_image_crate(
    format: SourceFormat,
    bytes: &[u8],
    limits: &Limits,
    min_longest_edge: Option<u32>,
) -> Result<DecodedImage, ImageError> {
    let mut decoder = open(format, bytes)?;
    let codec_error = |e| ImageError::from_codec(format, e);

    // The header's dimensions decide before a single pixel buffer exists.
    let (width, height) = decoder.dimensions();
    check_dimensions(format, width, height, limits)?;

    let orientation = decoder.orientation().map_err(codec_error)?;
    let icc_profile = decoder.icc_profile().map_err(codec_error)?;
    let stored = if format == SourceFormat::Webp && !webp::is_animated(bytes) {
        let size = min_longest_edge.map_or((width, height), |edge| fit_within(width, height, edge));
        let alpha = decoder.color_type().has_alpha();
        webp::decode_still(bytes, (width, height), size, alpha)?
    } else {
        let mut codec_limits = limits.for_codec(format);
        // The output buffer counts against the codec's budget, as image::ImageReader does it.
        codec_limits
            .reserve(decoder.total_bytes())
            .map_err(codec_error)?;
        decoder.set_limits(codec_limits).map_err(codec_error)?;
        Pixels::from_codec(DynamicImage::from_decoder(decoder).map_err(codec_error)?)
    };
    Ok(DecodedImage::new(
        format,
        (width, height),
        stored,
        orientation,
        icc_profile.as_deref().map(ColourSpace::Icc),
    ))
}

/// Scales (width, height) so the longest edge is `size`, keeping the aspect ratio, never
/// upscaling, and never shrinking an edge below one pixel.
pub fn fit_within(width: u32, height: u32, size: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= size {
        return (width, height);
    }
    let scale = |edge: u32| {
        let scaled =
            (u64::from(edge) * u64::from(size) + u64::from(longest) / 2) / u64::from(longest);
        // At most `size`, which is a u32.
        scaled.max(1) as u32
    };
    (scale(width), scale(height))
}

/// Decodes a JPEG, at full size or shrunk on load to at least `min_longest_edge`; the structure,
/// limits and cost are checked before any pixel is decoded.
fn decode_jpeg(
    bytes: &[u8],
    limits: &Limits,
    min_longest_edge: Option<u32>,
) -> Result<DecodedImage, ImageError> {
    let jpeg = jpeg::Jpeg::parse(bytes)?;
    let (width, height) = jpeg.size();
    check_dimensions(SourceFormat::Jpeg, width, height, limits)?;
    jpeg.check_cost()?;
    let stored = Pixels::Rgb(jpeg.decode(min_longest_edge)?);
    Ok(DecodedImage::new(
        SourceFormat::Jpeg,
        (width, height),
        stored,
        jpeg.orientation(),
        jpeg.icc_profile().map(ColourSpace::Icc),
    ))
}

fn check_byte_limit(bytes: &[u8], limits: &Limits) -> Result<(), ImageError> {
    let size = bytes.len() as u64;
    if size > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            size,
            limit: limits.max_bytes,
        });
    }
    Ok(())
}

/// Refuses pixel bombs and empty images from the header's dimensions.
fn check_dimensions(
    format: SourceFormat,
    width: u32,
    height: u32,
    limits: &Limits,
) -> Result<(), ImageError> {
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt {
            format,
            reason: format!("the header says the image is {width}x{height}"),
        });
    }
    Ok(())
}

/// The allocation bound handed to the PNG decoder when it is made. The png crate keeps it as its
/// budget for chunk data to the end, while [`ImageDecoder::set_limits`] later raises only the
/// image crate's own budget, for the pixel buffer.
fn png_metadata_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(PNG_METADATA_BYTES);
    limits
}

/// Parses the header of an image the image crate decodes.
fn open(format: SourceFormat, bytes: &[u8]) -> Result<Box<dyn ImageDecoder + '_>, ImageError> {
    fn boxed<'a>(
        decoder: image::ImageResult<impl ImageDecoder + 'a>,
    ) -> image::ImageResult<Box<dyn ImageDecoder + 'a>> {
        decoder.map(|d| Box::new(d) as Box<dyn ImageDecoder + 'a>)
    }

    let reader = Cursor::new(bytes);
    match format {
        SourceFormat::Jpeg => unreachable!("JPEG is decoded by libjpeg-turbo (imaging::jpeg)"),
        SourceFormat::Heif | SourceFormat::Avif => {
            unreachable!("HEIF and AVIF are decoded by libheif (imaging::heif)")
        }
        // PNG reads (and inflates) chunks while parsing the header, under the limit it is made with.
        SourceFormat::Png => boxed(PngDecoder::with_limits(reader, png_metadata_limits())),
        SourceFormat::Webp => boxed(WebPDecoder::new(reader)),
        SourceFormat::Gif => boxed(GifDecoder::new(reader)),
        SourceFormat::Tiff => boxed(TiffDecoder::new(reader)),
        SourceFormat::Bmp => boxed(BmpDecoder::new(reader)),
    }
    .map_err(|e| ImageError::from_codec(format, e))
}

fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

fn hex_prefix(bytes: &[u8]) -> String {
    const SHOWN: usize = 8;
    let hex: Vec<String> = bytes
        .iter()
        .take(SHOWN)
        .map(|b| format!("{b:02x}"))
        .collect();
    hex.join(" ")
}

/// "2.5 gigapixels", "12 megapixels", "640 pixels".
fn describe_pixels(pixels: u64) -> String {
    const MEGA: u64 = 1_000_000;
    const GIGA: u64 = 1_000_000_000;
    match pixels {
        GIGA.. => format!("{} gigapixels", one_decimal(pixels, GIGA)),
        MEGA.. => format!("{} megapixels", one_decimal(pixels, MEGA)),
        _ => format!("{pixels} pixels"),
    }
}

/// "50 MiB", "1.5 GiB", "300 bytes".
fn describe_bytes(bytes: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    match bytes {
        GIB.. => format!("{} GiB", one_decimal(bytes, GIB)),
        MIB.. => format!("{} MiB", one_decimal(bytes, MIB)),
        KIB.. => format!("{} KiB", one_decimal(bytes, KIB)),
        _ => format!("{bytes} bytes"),
    }
}

/// `value / unit` with one decimal, without a trailing ".0".
fn one_decimal(value: u64, unit: u64) -> String {
    let tenths = (u128::from(value) * 10 + u128::from(unit) / 2) / u128::from(unit);
    if tenths % 10 == 0 {
        format!("{}", tenths / 10)
    } else {
        format!("{}.{}", tenths / 10, tenths % 10)
    }
}

mod batch;
pub use batch::infer_within_pixel_budget;
mod colour;
mod heif;
mod jpeg;
pub use jpeg::{JPEG_MAX_EDGE, encode_jpeg};
// The FFI call into libwebp: the one place this crate needs unsafe code.
#[allow(unsafe_code)]
mod libwebp;
mod progressive;
mod webp;

#[cfg(any(test, feature = "testsuite"))]
pub mod test_images;

#[cfg(any(test, feature = "testsuite"))]
#[path = "testdata/fixtures.rs"]
pub mod fixtures;

#[cfg(test)]
mod policy_tests;

#[cfg(test)]
mod tests {
    use image::{DynamicImage, ImageBuffer, ImageFormat, LumaA, Rgb, Rgba, RgbaImage};

    use super::test_images::*;
    use super::*;
    use crate::fixtures;

    fn decode_ok(bytes: &[u8]) -> DecodedImage {
        decode(bytes, &Limits::default()).expect("decodes")
    }

    fn decode_err(bytes: &[u8]) -> ImageError {
        decode(bytes, &Limits::default()).expect_err("is refused")
    }

    fn stored_rgb(image: &DecodedImage) -> &RgbImage {
        match image.stored_pixels() {
            Pixels::Rgb(rgb) => rgb,
            Pixels::Rgba(_) => panic!("expected RGB, got RGBA"),
        }
    }

    fn stored_rgba(image: &DecodedImage) -> &RgbaImage {
        match image.stored_pixels() {
            Pixels::Rgba(rgba) => rgba,
            Pixels::Rgb(_) => panic!("expected RGBA, got RGB"),
        }
    }

    fn half_transparent_rgba() -> RgbaImage {
        RgbaImage::from_fn(8, 4, |x, _| Rgba([0, 0, 0, if x < 4 { 255 } else { 0 }]))
    }

    #[test]
    fn limits_default_to_50_mib_and_100_megapixels() {
        let defaults = Limits::default();
        assert_eq!(defaults.max_bytes, 50 * 1024 * 1024);
        assert_eq!(defaults.max_pixels, 100_000_000);
    }

    #[test]
    fn jpeg_decodes_to_rgb_at_its_size() {
        let image = decode_ok(&jpeg(&quadrants(64, 32)));
        assert_eq!(image.format(), SourceFormat::Jpeg);
        assert_eq!((image.width(), image.height()), (64, 32));
        assert_eq!(
            quadrant_centres(stored_rgb(&image)).map(nearest_named),
            QUADRANT_COLOURS
        );
    }

    #[test]
    fn sixteen_bit_png_is_reduced_to_eight_bits() {
        let deep = ImageBuffer::from_fn(4, 4, |x, _| {
            if x < 2 {
                Rgb([u16::MAX, 0, 0x8080])
            } else {
                Rgb([0, u16::MAX, 0])
            }
        });
        let image = decode_ok(&encode(&DynamicImage::ImageRgb16(deep), ImageFormat::Png));
        let rgb = stored_rgb(&image);
        assert_eq!(rgb[(0, 0)].0, [255, 0, 128]);
        assert_eq!(rgb[(3, 3)].0, [0, 255, 0]);
    }

    #[test]
    fn grayscale_png_becomes_rgb() {
        let grey = image::GrayImage::from_pixel(5, 3, image::Luma([100]));
        let image = decode_ok(&encode(&DynamicImage::ImageLuma8(grey), ImageFormat::Png));
        assert_eq!((image.width(), image.height()), (5, 3));
        assert_eq!(stored_rgb(&image)[(4, 2)].0, [100, 100, 100]);
    }

    #[test]
    fn grayscale_png_with_transparency_becomes_rgba() {
        let grey = ImageBuffer::from_fn(4, 4, |x, _| LumaA([200, if x == 0 { 0 } else { 255 }]));
        let image = decode_ok(&encode(&DynamicImage::ImageLumaA8(grey), ImageFormat::Png));
        let rgba = stored_rgba(&image);
        assert_eq!(rgba[(0, 0)].0[3], 0);
        assert_eq!(rgba[(1, 0)].0, [200, 200, 200, 255]);
    }

    #[test]
    fn rgba_png_keeps_real_transparency_and_drops_opaque_alpha() {
        let transparent = decode_ok(&encode(
            &DynamicImage::ImageRgba8(half_transparent_rgba()),
            ImageFormat::Png,
        ));
        assert!(transparent.has_alpha());
        assert_eq!(stored_rgba(&transparent)[(7, 0)].0[3], 0);

        let opaque = RgbaImage::from_pixel(8, 4, Rgba([10, 20, 30, 255]));
        let opaque = decode_ok(&encode(&DynamicImage::ImageRgba8(opaque), ImageFormat::Png));
        assert!(!opaque.has_alpha());
        assert_eq!(stored_rgb(&opaque)[(0, 0)].0, [10, 20, 30]);
    }

    #[test]
    fn palette_png_expands_to_rgb_or_rgba() {
        let palette = [RED, BLUE];
        let indices = [0, 1, 1, 0];
        let opaque = decode_ok(&palette_png(2, 2, &palette, None, &indices));
        assert_eq!(stored_rgb(&opaque)[(1, 0)].0, BLUE);

        let with_alpha = decode_ok(&palette_png(2, 2, &palette, Some(&[255, 0]), &indices));
        let rgba = stored_rgba(&with_alpha);
        assert_eq!(rgba[(0, 0)].0, [255, 0, 0, 255]);
        assert_eq!(rgba[(1, 0)].0[3], 0);
    }

    #[test]
    fn webp_decodes_with_and_without_alpha() {
        let opaque = decode_ok(&encode(
            &DynamicImage::ImageRgb8(quadrants(16, 8)),
            ImageFormat::WebP,
        ));
        assert_eq!(opaque.format(), SourceFormat::Webp);
        assert_eq!(quadrant_centres(stored_rgb(&opaque)), QUADRANT_COLOURS);

        let transparent = decode_ok(&encode(
            &DynamicImage::ImageRgba8(half_transparent_rgba()),
            ImageFormat::WebP,
        ));
        assert_eq!(stored_rgba(&transparent)[(7, 3)].0[3], 0);
    }

    #[test]
    fn animated_gif_yields_its_first_frame() {
        let image = decode_ok(&animated_gif(6, 4, &[RED, BLUE, GREEN]));
        assert_eq!(image.format(), SourceFormat::Gif);
        assert_eq!((image.width(), image.height()), (6, 4));
        assert!(!image.has_alpha(), "an opaque GIF needs no alpha channel");
        assert_eq!(stored_rgb(&image)[(5, 3)].0, RED);
    }

    #[test]
    fn cmyk_jpeg_decodes_to_rgb() {
        // Full magenta and yellow ink, no cyan or black: red.
        let image = decode_ok(&cmyk_jpeg(16, 16, [0, 255, 255, 0]));
        let pixel = stored_rgb(&image)[(8, 8)].0;
        assert_eq!(nearest_named(pixel), RED, "got {pixel:?}");
    }

    /// The displayed corners (top-left, top-right, bottom-left, bottom-right) of [`quadrants`]
    /// for EXIF orientations 1 to 8, worked out from the EXIF definition: which visual side the
    /// stored row 0 and column 0 go to.
    const DISPLAYED_CORNERS: [[[u8; 3]; 4]; 8] = [
        [RED, GREEN, BLUE, WHITE], // 1: row 0 top, column 0 left
        [GREEN, RED, WHITE, BLUE], // 2: row 0 top, column 0 right
        [WHITE, BLUE, GREEN, RED], // 3: row 0 bottom, column 0 right
        [BLUE, WHITE, RED, GREEN], // 4: row 0 bottom, column 0 left
        [RED, BLUE, GREEN, WHITE], // 5: row 0 left, column 0 top
        [BLUE, RED, WHITE, GREEN], // 6: row 0 right, column 0 top
        [WHITE, GREEN, BLUE, RED], // 7: row 0 right, column 0 bottom
        [GREEN, WHITE, RED, BLUE], // 8: row 0 left, column 0 bottom
    ];

    #[test]
    fn every_exif_orientation_is_honoured() {
        let stored = quadrants(64, 32);
        for (exif, expected) in (1..=8).zip(DISPLAYED_CORNERS) {
            let bytes = jpeg_with_orientation(&stored, exif);
            let image = decode_ok(&bytes);
            let swapped = exif >= 5;
            let size = if swapped { (32, 64) } else { (64, 32) };
            assert_eq!((image.width(), image.height()), size, "orientation {exif}");
            let info = probe(&bytes).unwrap();
            assert_eq!((info.width, info.height), size, "probe, orientation {exif}");

            let displayed = image.into_rgb();
            assert_eq!(displayed.dimensions(), size, "orientation {exif}");
            assert_eq!(
                quadrant_centres(&displayed).map(nearest_named),
                expected,
                "orientation {exif}"
            );
        }
    }

    #[test]
    fn into_rgb_flattens_transparency_onto_white() {
        let image = decode_ok(&encode(
            &DynamicImage::ImageRgba8(half_transparent_rgba()),
            ImageFormat::Png,
        ));
        let rgb = image.into_rgb();
        assert_eq!(rgb[(0, 0)].0, [0, 0, 0]);
        assert_eq!(rgb[(7, 0)].0, WHITE);
    }

    #[test]
    fn flattening_blends_partial_alpha() {
        let rgba = RgbaImage::from_pixel(1, 1, Rgba([0, 255, 100, 128]));
        assert_eq!(flatten_onto_white(&rgba)[(0, 0)].0, [127, 255, 177]);
    }

    #[test]
    fn probe_reads_the_header_only() {
        let info = probe(&pixel_bomb_png(50_000, 40_000)).unwrap();
        assert_eq!(
            info,
            ImageInfo {
                format: SourceFormat::Png,
                width: 50_000,
                height: 40_000
            }
        );
    }

    #[test]
    fn empty_input_is_refused() {
        let error = decode_err(&[]);
        assert_eq!(error.code(), "empty_image");
        assert_eq!(probe(&[]).unwrap_err().code(), "empty_image");
    }

    #[test]
    fn text_is_not_an_image() {
        let error = decode_err(b"Hello, this is a text file.\n");
        assert_eq!(error.code(), "unsupported_format");
        let message = error.to_string();
        assert!(message.contains("48 65 6c 6c"), "{message}");
        assert!(
            message.contains("JPEG, PNG, WebP, GIF, HEIC/HEIF, AVIF, TIFF and BMP"),
            "{message}"
        );
    }

    #[test]
    fn other_image_formats_are_named_when_refused() {
        let codestream = [0xFF, 0x0A, 0xFA, 0x7F, 0x01, 0x90, 0x08];
        for jpeg_xl in [fixtures::jpeg_xl_header(), codestream.to_vec()] {
            let error = decode_err(&jpeg_xl);
            assert_eq!(error.code(), "unsupported_format");
            assert!(error.to_string().contains("a JPEG XL image"), "{error}");
        }
        let icon = decode_err(b"\0\0\x01\0\x01\0\x10\x10\0\0\x01\0\x20\0");
        assert_eq!(icon.code(), "unsupported_format");
        assert!(icon.to_string().contains("ICO"), "{icon}");
    }

    #[test]
    fn heif_brands_tell_heic_from_avif() {
        // Phones' HEIC, a HEIF still with the generic brand, and AVIF, which shares the container.
        let cases = [
            (b"heic", SourceFormat::Heif),
            (b"mif1", SourceFormat::Heif),
            (b"avif", SourceFormat::Avif),
        ];
        for (brand, format) in cases {
            assert_eq!(
                SourceFormat::sniff(&fixtures::heif_header(brand)).unwrap(),
                format
            );
        }
        assert_eq!(heif_format(b"\0\0\0\x18ftypisom\0\0\0\0mp41isom"), None);
        // A container with no image properties is damaged, not an unknown format.
        let error = decode_err(&fixtures::heif_header(b"heic"));
        assert_eq!(error.code(), "corrupt_image", "{error}");
    }

    /// The corners of [`fixtures::ROTATED_HEIC`] and [`fixtures::ROTATED_TIFF`] as displayed.
    const ROTATED_CORNERS: [[u8; 3]; 4] = DISPLAYED_CORNERS[5];

    #[test]
    fn heic_and_tiff_are_displayed_as_their_orientation_says() {
        for (name, bytes) in [
            ("HEIC", fixtures::ROTATED_HEIC),
            ("TIFF", fixtures::ROTATED_TIFF),
        ] {
            let info = probe(bytes).unwrap();
            assert_eq!((info.width, info.height), (32, 64), "{name}: probe");
            for image in [decode_ok(bytes), thumbnail_source(bytes, 16)] {
                assert_eq!((image.width(), image.height()), (32, 64), "{name}");
                let displayed = image.into_rgb();
                assert_eq!(
                    quadrant_centres(&displayed).map(nearest_named),
                    ROTATED_CORNERS,
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn bmp_decodes_to_rgb() {
        let image = decode_ok(fixtures::PHOTO_BMP);
        assert_eq!(image.format(), SourceFormat::Bmp);
        assert_eq!((image.width(), image.height()), (64, 48));
        assert!(!image.has_alpha());
    }

    #[test]
    fn corrupt_jpeg_is_refused() {
        let mut garbage = vec![0xFF, 0xD8, 0xFF];
        garbage.extend((0..200u8).map(|i| i.wrapping_mul(37)));
        let error = decode_err(&garbage);
        assert_eq!(error.code(), "corrupt_image", "{error}");
        assert!(error.to_string().starts_with("corrupt JPEG"), "{error}");

        let header_cut = &jpeg(&quadrants(64, 32))[..100];
        assert_eq!(decode_err(header_cut).code(), "corrupt_image");
    }

    #[test]
    fn truncated_png_is_refused() {
        let whole = encode(
            &DynamicImage::ImageRgb8(synthetic_photo(64, 64)),
            ImageFormat::Png,
        );
        let error = decode_err(&whole[..whole.len() / 2]);
        assert_eq!(error.code(), "corrupt_image", "{error}");
        assert!(error.to_string().contains("PNG"), "{error}");
    }

    #[test]
    fn pixel_bomb_is_refused_with_a_readable_reason() {
        let error = decode_err(&pixel_bomb_png(50_000, 50_000));
        assert_eq!(error.code(), "too_many_pixels");
        assert_eq!(
            error.to_string(),
            "image is 50000x50000 = 2.5 gigapixels, over the limit of 100 megapixels; \
             downscale it before uploading"
        );
    }

    /// The size of the ICC profile the PNG decoder read, if any.
    fn png_icc_profile_bytes(bytes: &[u8]) -> Option<usize> {
        let mut decoder = open(SourceFormat::Png, bytes).expect("opens");
        let profile = decoder.icc_profile().expect("PNG supports ICC profiles");
        profile.map(|profile| profile.len())
    }

    #[test]
    fn png_icc_profile_over_the_metadata_budget_is_dropped_not_inflated() {
        let profile_bytes = usize::try_from(PNG_METADATA_BYTES).unwrap() + 1024 * 1024;
        let bomb = png_with_icc_profile(&quadrants(16, 16), profile_bytes);
        assert!(bomb.len() < profile_bytes / 100, "{} bytes", bomb.len());
        // The png crate drops a profile it cannot read, as it drops a corrupt one.
        assert_eq!(png_icc_profile_bytes(&bomb), None);
        let image = decode_ok(&bomb);
        assert_eq!(quadrant_centres(stored_rgb(&image)), QUADRANT_COLOURS);

        let real_sized = png_with_icc_profile(&quadrants(16, 16), 4 * 1024 * 1024);
        assert_eq!(png_icc_profile_bytes(&real_sized), Some(4 * 1024 * 1024));
    }

    #[test]
    fn pixel_limit_is_inclusive() {
        let bytes = jpeg(&quadrants(40, 25));
        let exact = Limits {
            max_pixels: 1000,
            ..Limits::default()
        };
        assert!(decode(&bytes, &exact).is_ok());
        let below = Limits {
            max_pixels: 999,
            ..Limits::default()
        };
        assert_eq!(
            decode(&bytes, &below).unwrap_err().code(),
            "too_many_pixels"
        );
    }

    #[test]
    fn byte_limit_is_checked_first() {
        let bytes = jpeg(&quadrants(64, 32));
        let limits = Limits {
            max_bytes: 100,
            ..Limits::default()
        };
        let error = decode(&bytes, &limits).unwrap_err();
        assert_eq!(error.code(), "too_many_bytes");
        assert!(
            error.to_string().contains("over the limit of 100 bytes"),
            "{error}"
        );
        let huge = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert_eq!(
            decode(&[0; 11], &huge).unwrap_err().code(),
            "too_many_bytes"
        );
    }

    fn thumbnail_source(bytes: &[u8], min_longest_edge: u32) -> DecodedImage {
        decode_for_thumbnails(bytes, &Limits::default(), min_longest_edge).expect("decodes")
    }

    #[test]
    fn jpeg_shrinks_on_load_to_the_smallest_scale_that_keeps_the_longest_edge() {
        let bytes = jpeg(&synthetic_photo(800, 600));
        let cases = [
            (100, (100, 75)),
            (101, (200, 150)),
            (400, (400, 300)),
            (401, (800, 600)),
        ];
        for (min_longest_edge, size) in cases {
            let image = thumbnail_source(&bytes, min_longest_edge);
            assert_eq!(image.format(), SourceFormat::Jpeg);
            assert_eq!(
                (image.width(), image.height()),
                size,
                "at least {min_longest_edge}"
            );
        }
        let shrunk = thumbnail_source(&bytes, 100);
        assert_eq!((shrunk.full_width(), shrunk.full_height()), (800, 600));
        let never_upscaled = thumbnail_source(&bytes, 100_000);
        assert_eq!(
            (never_upscaled.width(), never_upscaled.height()),
            (800, 600)
        );
    }

    #[test]
    fn shrunk_jpeg_keeps_its_colours() {
        let image = thumbnail_source(&jpeg(&quadrants(256, 128)), 32);
        assert_eq!((image.width(), image.height()), (32, 16));
        assert_eq!(
            quadrant_centres(stored_rgb(&image)).map(nearest_named),
            QUADRANT_COLOURS
        );

        let grey = image::GrayImage::from_pixel(64, 64, image::Luma([100]));
        let grey = thumbnail_source(
            &encode(&DynamicImage::ImageLuma8(grey), ImageFormat::Jpeg),
            8,
        );
        assert_eq!((grey.width(), grey.height()), (8, 8));
        let [r, g, b] = stored_rgb(&grey)[(4, 4)].0;
        assert!(r.abs_diff(100) <= 2 && r == g && g == b, "{:?}", [r, g, b]);
    }

    #[test]
    fn shrunk_jpeg_honours_every_exif_orientation() {
        let stored = quadrants(256, 128);
        for (exif, expected) in (1..=8).zip(DISPLAYED_CORNERS) {
            let image = thumbnail_source(&jpeg_with_orientation(&stored, exif), 32);
            let size = if exif >= 5 { (16, 32) } else { (32, 16) };
            assert_eq!((image.width(), image.height()), size, "orientation {exif}");
            let full_size = if exif >= 5 { (128, 256) } else { (256, 128) };
            assert_eq!((image.full_width(), image.full_height()), full_size);
            let displayed = image.into_rgb();
            assert_eq!(
                quadrant_centres(&displayed).map(nearest_named),
                expected,
                "orientation {exif}"
            );
        }
    }

    #[test]
    fn formats_without_shrink_on_load_decode_at_full_size() {
        let png = encode(
            &DynamicImage::ImageRgb8(synthetic_photo(300, 200)),
            ImageFormat::Png,
        );
        let image = thumbnail_source(&png, 16);
        assert_eq!(image.format(), SourceFormat::Png);
        assert_eq!((image.width(), image.height()), (300, 200));
        for (bytes, format, size) in [
            (
                fixtures::DISPLAY_P3_AVIF.encoded,
                SourceFormat::Avif,
                (256, 192),
            ),
            (
                fixtures::PROPHOTO_16BIT_TIFF.encoded,
                SourceFormat::Tiff,
                (128, 96),
            ),
            (fixtures::PHOTO_BMP, SourceFormat::Bmp, (64, 48)),
        ] {
            let image = thumbnail_source(bytes, 16);
            assert_eq!(image.format(), format);
            assert_eq!((image.width(), image.height()), size, "{format}");
        }

        // CMYK JPEGs shrink on load too (libjpeg-turbo scales any JPEG but lossless ones).
        let cmyk = thumbnail_source(&cmyk_jpeg(64, 64, [0, 255, 255, 0]), 8);
        assert_eq!((cmyk.width(), cmyk.height()), (8, 8));
        assert_eq!(nearest_named(stored_rgb(&cmyk)[(4, 4)].0), RED);
    }

    #[test]
    fn webp_shrinks_on_load_to_exactly_the_longest_edge() {
        let bytes = encode(
            &DynamicImage::ImageRgb8(synthetic_photo(800, 600)),
            ImageFormat::WebP,
        );
        for (min_longest_edge, size) in [
            (100, (100, 75)),
            (101, (101, 76)),
            (800, (800, 600)),
            (100_000, (800, 600)),
        ] {
            let image = thumbnail_source(&bytes, min_longest_edge);
            assert_eq!(image.format(), SourceFormat::Webp);
            assert_eq!(stored_rgb(&image).dimensions(), size, "{min_longest_edge}");
            assert_eq!((image.full_width(), image.full_height()), (800, 600));
        }

        let shrunk = thumbnail_source(
            &encode(
                &DynamicImage::ImageRgb8(quadrants(256, 128)),
                ImageFormat::WebP,
            ),
            32,
        );
        assert_eq!(quadrant_centres(stored_rgb(&shrunk)), QUADRANT_COLOURS);
        let transparent = thumbnail_source(
            &encode(
                &DynamicImage::ImageRgba8(half_transparent_rgba()),
                ImageFormat::WebP,
            ),
            4,
        );
        let rgba = stored_rgba(&transparent);
        assert_eq!(rgba.dimensions(), (4, 2));
        assert_eq!((rgba[(0, 0)].0[3], rgba[(3, 1)].0[3]), (255, 0));
    }

    #[test]
    fn shrink_on_load_refuses_what_decode_refuses() {
        let refused = |bytes: &[u8], limits: &Limits| {
            decode_for_thumbnails(bytes, limits, 64)
                .expect_err("is refused")
                .code()
        };
        let defaults = Limits::default();
        assert_eq!(refused(&[], &defaults), "empty_image");
        assert_eq!(
            refused(b"plain text, not a picture", &defaults),
            "unsupported_format"
        );

        let mut garbage = vec![0xFF, 0xD8, 0xFF];
        garbage.extend((0..200u8).map(|i| i.wrapping_mul(37)));
        let error = decode_for_thumbnails(&garbage, &defaults, 64).unwrap_err();
        assert_eq!(error.code(), "corrupt_image", "{error}");
        assert!(error.to_string().starts_with("corrupt JPEG"), "{error}");
        let whole = jpeg(&synthetic_photo(640, 480));
        assert_eq!(refused(&whole[..100], &defaults), "corrupt_image");

        let small_bytes = Limits {
            max_bytes: 100,
            ..defaults
        };
        assert_eq!(refused(&whole, &small_bytes), "too_many_bytes");
        // The pixel limit is about the full-size image, however small it is decoded.
        let small_pixels = Limits {
            max_pixels: 640 * 480 - 1,
            ..defaults
        };
        let error = decode_for_thumbnails(&whole, &small_pixels, 64).unwrap_err();
        assert_eq!(error.code(), "too_many_pixels");
        assert!(error.to_string().starts_with("image is 640x480"), "{error}");
    }

    fn progressive_jpeg(image: &RgbImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, 90);
        // Seven AC scans per component, the first of coefficients 1 to 9, as a typical
        // progressive script starts with a narrow low band.
        encoder.set_progressive_scans(8);
        let (width, height) = (image.width() as u16, image.height() as u16);
        encoder
            .encode(image.as_raw(), width, height, jpeg_encoder::ColorType::Rgb)
            .expect("test JPEG encodes");
        bytes
    }

    #[test]
    fn progressive_jpeg_at_one_eighth_decodes_from_its_dc_scans_alone() {
        let bytes = progressive_jpeg(&synthetic_photo(256, 192));
        let dc_only = progressive::without_ac_scans(&jpeg::Jpeg::parse(&bytes).unwrap());
        assert!(
            dc_only.len() < bytes.len() / 2,
            "{} of {} bytes kept",
            dc_only.len(),
            bytes.len()
        );

        // What libjpeg-turbo makes of the whole file at 1/8 scale, pixel for pixel.
        let eighth = turbojpeg::ScalingFactor::ONE_EIGHTH;
        let mut whole = turbojpeg::Decompressor::new().unwrap();
        whole.set_scaling_factor(eighth).unwrap();
        let size = whole.read_header(&bytes).unwrap().scaled(eighth);
        let mut expected = turbojpeg::Image {
            pixels: vec![0; size.width * size.height * 3],
            width: size.width,
            pitch: size.width * 3,
            height: size.height,
            format: turbojpeg::PixelFormat::RGB,
        };
        whole.decompress(&bytes, expected.as_deref_mut()).unwrap();

        let image = thumbnail_source(&bytes, 32);
        assert_eq!((image.width(), image.height()), (32, 24));
        assert_eq!(stored_rgb(&image).as_raw(), &expected.pixels);

        // At 1/4 scale AC coefficients count, so the whole file is decoded.
        let quarter = thumbnail_source(&bytes, 33);
        assert_eq!((quarter.width(), quarter.height()), (64, 48));
        let baseline = thumbnail_source(&jpeg(&synthetic_photo(256, 192)), 33);
        let difference = mean_difference(
            stored_rgb(&quarter).as_raw(),
            stored_rgb(&baseline).as_raw(),
        );
        assert!(difference < 8.0, "mean difference {difference}");
    }

    fn mean_difference(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        let total: u64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| u64::from(x.abs_diff(y)))
            .sum();
        total as f64 / a.len() as f64
    }

    #[test]
    fn broken_marker_structure_is_refused_before_decoding() {
        let bytes = progressive_jpeg(&synthetic_photo(64, 64));
        let reason = |bytes: &[u8]| match jpeg::Jpeg::parse(bytes) {
            Err(ImageError::Corrupt { reason, .. }) => reason,
            Err(other) => panic!("not refused as corrupt: {other}"),
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(reason(&bytes[..bytes.len() / 2]), "the file is truncated");
        assert_eq!(
            reason(&[0xFF, 0xD8, 0x00]),
            "byte 2 is 0x00 where a marker should begin"
        );
        assert_eq!(
            reason(b"not a jpeg"),
            "byte 0 is 0x6e where a marker should begin"
        );
        let mut stray = bytes.clone();
        stray.splice(2..2, [0x12, 0x34]);
        assert_eq!(reason(&stray), "byte 2 is 0x12 where a marker should begin");
        let error = decode_for_thumbnails(&bytes[..bytes.len() / 2], &Limits::default(), 8);
        assert_eq!(error.unwrap_err().code(), "corrupt_image");
    }

    #[test]
    fn sizes_read_as_a_person_would_say_them() {
        assert_eq!(describe_pixels(2_500_000_000), "2.5 gigapixels");
        assert_eq!(describe_pixels(100_000_000), "100 megapixels");
        assert_eq!(describe_pixels(12_000_000), "12 megapixels");
        assert_eq!(describe_pixels(640), "640 pixels");
        assert_eq!(describe_bytes(50 * 1024 * 1024), "50 MiB");
        assert_eq!(describe_bytes(1536), "1.5 KiB");
        assert_eq!(describe_bytes(3 << 30), "3 GiB");
        assert_eq!(describe_bytes(7), "7 bytes");
    }
}
