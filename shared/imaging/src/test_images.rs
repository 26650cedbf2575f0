//! Test inputs made on the spot, so no test depends on image files being present.
//!
//! Shared by the unit tests of this crate and, through the `testsuite` feature, by other crates'
//! tests and benchmarks.

use std::io::Cursor;

use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, Frame, ImageFormat, Rgb, RgbImage, RgbaImage};

pub const RED: [u8; 3] = [255, 0, 0];
pub const GREEN: [u8; 3] = [0, 255, 0];
pub const BLUE: [u8; 3] = [0, 0, 255];
pub const WHITE: [u8; 3] = [255, 255, 255];

/// Colours of [`quadrants`] as stored: top-left, top-right, bottom-left, bottom-right.
pub const QUADRANT_COLOURS: [[u8; 3]; 4] = [RED, GREEN, BLUE, WHITE];

/// An image of four flat quadrants, so that where each corner went survives lossy coding.
pub fn quadrants(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let right = usize::from(x >= width / 2);
        let bottom = usize::from(y >= height / 2);
        Rgb(QUADRANT_COLOURS[bottom * 2 + right])
    })
}

/// The colour at the centre of each quadrant: top-left, top-right, bottom-left, bottom-right.
pub fn quadrant_centres(image: &RgbImage) -> [[u8; 3]; 4] {
    let (w, h) = image.dimensions();
    let (left, right, top, bottom) = (w / 4, w * 3 / 4, h / 4, h * 3 / 4);
    [(left, top), (right, top), (left, bottom), (right, bottom)].map(|(x, y)| image[(x, y)].0)
}

/// Which of the named colours `pixel` is closest to, so lossy output can be compared exactly.
pub fn nearest_named(pixel: [u8; 3]) -> [u8; 3] {
    let distance = |c: [u8; 3]| -> u32 {
        c.iter()
            .zip(pixel)
            .map(|(&a, b)| u32::from(a.abs_diff(b)).pow(2))
            .sum()
    };
    *[RED, GREEN, BLUE, WHITE, [0, 0, 0]]
        .iter()
        .min_by_key(|&&c| distance(c))
        .expect("non-empty")
}

/// A photo-like image: smooth gradients with fine texture, which JPEG codes at realistic sizes.
pub fn synthetic_photo(width: u32, height: u32) -> RgbImage {
    let mut state = 0x2545_f491_u32;
    RgbImage::from_fn(width, height, |x, y| {
        // xorshift: cheap texture that is deterministic across runs
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let grain = (state % 24) as u8;
        let r = (x * 200 / width) as u8;
        let g = (y * 200 / height) as u8;
        let b = ((x + y) * 100 / (width + height)) as u8 + 80;
        Rgb([r + grain, g + grain, b + grain])
    })
}

/// Encodes with the image crate; WebP from it is lossless, GIF a single frame.
pub fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .expect("test image encodes");
    bytes
}

pub fn jpeg(image: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 95)
        .encode_image(image)
        .expect("test JPEG encodes");
    bytes
}

/// A JPEG carrying an EXIF APP1 segment whose only tag is Orientation (1..=8).
pub fn jpeg_with_orientation(image: &RgbImage, orientation: u16) -> Vec<u8> {
    let plain = jpeg(image);
    let mut app1 = vec![0xFF, 0xE1, 0, 0];
    app1.extend_from_slice(b"Exif\0\0");
    // TIFF header, big-endian ("MM"), magic 42, first IFD right after the 8-byte header.
    app1.extend_from_slice(b"MM\0\x2A\0\0\0\x08");
    // IFD0: one entry, tag 0x0112 Orientation, type 3 SHORT, count 1, value left-justified.
    app1.extend_from_slice(&1u16.to_be_bytes());
    app1.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]);
    app1.extend_from_slice(&orientation.to_be_bytes());
    app1.extend_from_slice(&[0, 0]);
    // No next IFD.
    app1.extend_from_slice(&[0, 0, 0, 0]);
    // The segment length counts itself but not the marker.
    let length = u16::try_from(app1.len() - 2).expect("small segment");
    app1[2..4].copy_from_slice(&length.to_be_bytes());

    // Right after SOI, where cameras put it.
    let mut bytes = plain[..2].to_vec();
    bytes.extend_from_slice(&app1);
    bytes.extend_from_slice(&plain[2..]);
    bytes
}

/// A four-channel CMYK JPEG (as print workflows produce) of one flat colour.
pub fn cmyk_jpeg(width: u16, height: u16, cmyk: [u8; 4]) -> Vec<u8> {
    let pixels = cmyk.repeat(usize::from(width) * usize::from(height));
    let mut bytes = Vec::new();
    jpeg_encoder::Encoder::new(&mut bytes, 95)
        .encode(&pixels, width, height, jpeg_encoder::ColorType::Cmyk)
        .expect("test CMYK JPEG encodes");
    bytes
}

/// An animated GIF whose frames are flat `colours`.
pub fn animated_gif(width: u32, height: u32, colours: &[[u8; 3]]) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        let frames = colours.iter().map(|&[r, g, b]| {
            Frame::new(RgbaImage::from_pixel(
                width,
                height,
                image::Rgba([r, g, b, 255]),
            ))
        });
        encoder.encode_frames(frames).expect("test GIF encodes");
    }
    bytes
}

/// A palette PNG: `indices` into `palette`, with per-entry alpha when `alpha` is given.
pub fn palette_png(
    width: u32,
    height: u32,
    palette: &[[u8; 3]],
    alpha: Option<&[u8]>,
    indices: &[u8],
) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(palette.concat());
    if let Some(alpha) = alpha {
        encoder.set_trns(alpha.to_vec());
    }
    let mut writer = encoder.write_header().expect("PNG header");
    writer.write_image_data(indices).expect("PNG data");
    writer.finish().expect("PNG end");
    bytes
}

/// A tiny PNG claiming to be `width` x `height` RGB: a decompression bomb's header, to be refused
/// before any pixel is inflated. Its one IDAT holds an empty zlib stream.
pub fn pixel_bomb_png(width: u32, height: u32) -> Vec<u8> {
    const EMPTY_ZLIB_STREAM: [u8; 11] = [0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0, 0, 0, 1];
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("PNG header");
    writer
        .write_chunk(png::chunk::IDAT, &EMPTY_ZLIB_STREAM)
        .expect("PNG data");
    drop(writer);
    bytes
}

/// An RGB PNG of `image` carrying an ICC profile of `profile_bytes` zeros. The format stores the
/// profile deflated, so even a huge profile makes a small file.
pub fn png_with_icc_profile(image: &RgbImage, profile_bytes: usize) -> Vec<u8> {
    let mut info = png::Info::with_size(image.width(), image.height());
    info.color_type = png::ColorType::Rgb;
    info.bit_depth = png::BitDepth::Eight;
    info.icc_profile = Some(vec![0; profile_bytes].into());
    let mut bytes = Vec::new();
    let encoder = png::Encoder::with_info(&mut bytes, info).expect("PNG info");
    let mut writer = encoder.write_header().expect("PNG header");
    writer.write_image_data(image.as_raw()).expect("PNG data");
    writer.finish().expect("PNG end");
    bytes
}
