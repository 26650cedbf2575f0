//! The committed decoding fixtures (made by make_fixtures.py, next to this file) and inputs
//! crafted from them, for the imaging unit tests and, through the `testsuite` feature, the stage
//! and end-to-end tests.

use image::RgbImage;

/// A progressive JPEG whose DC scans use successive approximation from the point transform
/// Al=10, libjpeg's deepest for 8-bit samples; 76 scans, valid, and lossless from
/// [`BASELINE_JPEG`].
pub const AL10_JPEG: &[u8] = include_bytes!("al10.jpg");
/// The baseline JPEG [`AL10_JPEG`] was transcoded from: the same coefficients, one scan.
pub const BASELINE_JPEG: &[u8] = include_bytes!("baseline.jpg");
/// A 4096x4096 flat grey progressive JPEG of 32 KB: 262,144 blocks, a DC scan and a 33-byte
/// AC scan that codes nothing, for [`with_last_scan_repeated`].
pub const FLAT_4096_JPEG: &[u8] = include_bytes!("flat_4096.jpg");

/// A wide-gamut image in one format with its embedded ICC profile, and what Pillow's ImageCms
/// (LittleCMS) makes of it in sRGB.
pub struct WideGamut {
    pub name: &'static str,
    pub encoded: &'static [u8],
    srgb_truth_png: &'static [u8],
}

impl WideGamut {
    pub fn srgb_truth(&self) -> RgbImage {
        image::load_from_memory(self.srgb_truth_png)
            .expect("the truth is a PNG")
            .into_rgb8()
    }
}

pub const ADOBE_RGB_JPEG: WideGamut = WideGamut {
    name: "Adobe RGB JPEG (APP2 ICC)",
    encoded: include_bytes!("adobe_rgb.jpg"),
    srgb_truth_png: include_bytes!("adobe_rgb.srgb.png"),
};
pub const DISPLAY_P3_PNG: WideGamut = WideGamut {
    name: "Display P3 PNG (iCCP)",
    encoded: include_bytes!("display_p3.png"),
    srgb_truth_png: include_bytes!("display_p3.srgb.png"),
};
pub const PROPHOTO_WEBP: WideGamut = WideGamut {
    name: "ProPhoto WebP (ICCP)",
    encoded: include_bytes!("prophoto.webp"),
    srgb_truth_png: include_bytes!("prophoto.srgb.png"),
};
pub const DISPLAY_P3_AVIF: WideGamut = WideGamut {
    name: "Display P3 AVIF (colr prof)",
    encoded: include_bytes!("display_p3.avif"),
    srgb_truth_png: include_bytes!("display_p3_avif.srgb.png"),
};
/// The PNG's pixels again, losslessly, as AVIF with no profile but nclx code points for Display
/// P3 (primaries 12, sRGB curve): the PNG's truth is its truth.
pub const DISPLAY_P3_NCLX_AVIF: WideGamut = WideGamut {
    name: "Display P3 AVIF (colr nclx 12/13)",
    encoded: include_bytes!("display_p3_nclx.avif"),
    srgb_truth_png: include_bytes!("display_p3.srgb.png"),
};
pub const PROPHOTO_16BIT_TIFF: WideGamut = WideGamut {
    name: "ProPhoto 16-bit TIFF (ICC tag)",
    encoded: include_bytes!("prophoto_16bit.tiff"),
    srgb_truth_png: include_bytes!("prophoto_tiff.srgb.png"),
};
pub const WIDE_GAMUT: [WideGamut; 6] = [
    ADOBE_RGB_JPEG,
    DISPLAY_P3_PNG,
    PROPHOTO_WEBP,
    DISPLAY_P3_AVIF,
    DISPLAY_P3_NCLX_AVIF,
    PROPHOTO_16BIT_TIFF,
];

/// [`crate::test_images::quadrants`] at 64x32 as a HEIC that displays it turned 90 degrees
/// clockwise (EXIF orientation 6), at 32x64: the turn is the container's `irot` property, and
/// the EXIF orientation 6 is there too, as phones write both.
pub const ROTATED_HEIC: &[u8] = include_bytes!("rotated.heic");
/// The same as a TIFF with Orientation tag 6.
pub const ROTATED_TIFF: &[u8] = include_bytes!("rotated.tiff");
/// A 64x48 24-bit BMP.
pub const PHOTO_BMP: &[u8] = include_bytes!("photo.bmp");

/// The first `percent` of `bytes`, as an interrupted upload leaves a file.
pub fn truncated(bytes: &[u8], percent: usize) -> Vec<u8> {
    bytes[..bytes.len() * percent / 100].to_vec()
}

/// A progressive JPEG with its last scan sent `extra` more times before the end-of-image marker:
/// valid for libjpeg-turbo when that scan is a first AC scan without point transform (as in
/// [`AL10_JPEG`]), and each copy makes the decoder go over those coefficients again.
pub fn with_last_scan_repeated(jpeg: &[u8], extra: usize) -> Vec<u8> {
    const EOI: [u8; 2] = [0xFF, 0xD9];
    assert!(
        jpeg.ends_with(&EOI),
        "the JPEG ends with its end-of-image marker"
    );
    let body = &jpeg[..jpeg.len() - EOI.len()];
    // In entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so the last
    // FF DA is the last scan's header.
    let last_scan = body
        .windows(2)
        .rposition(|pair| pair == [0xFF, 0xDA])
        .expect("a progressive JPEG has scans");
    let mut crafted = body.to_vec();
    for _ in 0..extra {
        crafted.extend_from_slice(&body[last_scan..]);
    }
    crafted.extend_from_slice(&EOI);
    crafted
}

/// The start of a HEIF container: an `ftyp` box with major brand `major` and compatible brands
/// mif1 and `major`, then an empty `meta` box.
pub fn heif_header(major: &[u8; 4]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 24];
    bytes.extend_from_slice(b"ftyp");
    bytes.extend_from_slice(major);
    bytes.extend_from_slice(b"\0\0\0\0mif1");
    bytes.extend_from_slice(major);
    bytes.extend_from_slice(&[0, 0, 0, 8]);
    bytes.extend_from_slice(b"meta");
    bytes
}

/// The start of a JPEG XL file in its ISO BMFF container, a format Prism does not decode.
pub fn jpeg_xl_header() -> Vec<u8> {
    let mut bytes = b"\0\0\0\x0cJXL \r\n\x87\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 20]);
    bytes.extend_from_slice(b"ftypjxl \0\0\0\0jxl ");
    bytes
}

/// Mean CIE 1976 colour difference (ΔE*ab) between two same-sized sRGB images: about 1 is
/// the smallest difference a person notices side by side.
pub fn mean_delta_e(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(
        a.dimensions(),
        b.dimensions(),
        "ΔE compares images of one size"
    );
    let total: f64 = a
        .pixels()
        .zip(b.pixels())
        .map(|(p, q)| {
            let (p, q) = (lab(p.0), lab(q.0));
            ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt()
        })
        .sum();
    total / f64::from(a.width() * a.height())
}

/// The image reduced to the mean colour of each `block` x `block` square (partial squares at the
/// right and bottom dropped): lossy coding moves single pixels, and colour management moves
/// every pixel of an area, so comparing these tells the two apart.
pub fn block_means(image: &RgbImage, block: u32) -> RgbImage {
    RgbImage::from_fn(image.width() / block, image.height() / block, |bx, by| {
        let mut sums = [0u32; 3];
        for y in by * block..(by + 1) * block {
            for x in bx * block..(bx + 1) * block {
                for (sum, &value) in sums.iter_mut().zip(&image[(x, y)].0) {
                    *sum += u32::from(value);
                }
            }
        }
        let pixels = block * block;
        image::Rgb(sums.map(|sum| ((sum + pixels / 2) / pixels) as u8))
    })
}

/// CIELAB (D65 white) of an 8-bit sRGB colour.
fn lab(rgb: [u8; 3]) -> [f64; 3] {
    let linear = rgb.map(|c| {
        let c = f64::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    });
    let [r, g, b] = linear;
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
    let f = |t: f64| {
        if t > 216.0 / 24389.0 {
            t.cbrt()
        } else {
            (24389.0 / 27.0 * t + 16.0) / 116.0
        }
    };
    [
        116.0 * f(y) - 16.0,
        500.0 * (f(x) - f(y)),
        200.0 * (f(y) - f(z)),
    ]
}

/// Inputs every stage must judge alike, as (key, bytes, the code of the dead letter it gets, or
/// `None` when it is processed).
pub fn verdicts() -> Vec<(&'static str, Vec<u8>, Option<&'static str>)> {
    vec![
        (
            "truncated.jpg",
            truncated(BASELINE_JPEG, 40),
            Some("corrupt_image"),
        ),
        (
            "truncated-progressive.jpg",
            truncated(AL10_JPEG, 60),
            Some("corrupt_image"),
        ),
        (
            "many-scans.jpg",
            with_last_scan_repeated(AL10_JPEG, 1000),
            Some("too_costly_to_decode"),
        ),
        ("photo.jxl", jpeg_xl_header(), Some("unsupported_format")),
        ("al10.jpg", AL10_JPEG.to_vec(), None),
        ("adobe-rgb.jpg", ADOBE_RGB_JPEG.encoded.to_vec(), None),
        ("rotated.heic", ROTATED_HEIC.to_vec(), None),
        (
            "truncated.heic",
            truncated(ROTATED_HEIC, 60),
            Some("corrupt_image"),
        ),
        ("display-p3.avif", DISPLAY_P3_AVIF.encoded.to_vec(), None),
        (
            "truncated.avif",
            truncated(DISPLAY_P3_AVIF.encoded, 60),
            Some("corrupt_image"),
        ),
        ("16-bit.tiff", PROPHOTO_16BIT_TIFF.encoded.to_vec(), None),
        (
            "truncated.tiff",
            truncated(PROPHOTO_16BIT_TIFF.encoded, 60),
            Some("corrupt_image"),
        ),
        ("photo.bmp", PHOTO_BMP.to_vec(), None),
        (
            "truncated.bmp",
            truncated(PHOTO_BMP, 60),
            Some("corrupt_image"),
        ),
    ]
}

/// Checks a stage's outcomes for [`verdicts`]' inputs, in order: processed, or refused with the
/// expected code and a one-line reason (as `(code, reason)`).
pub fn assert_verdicts(outcomes: impl IntoIterator<Item = Result<(), (String, String)>>) {
    let outcomes: Vec<_> = outcomes.into_iter().collect();
    assert_eq!(outcomes.len(), verdicts().len(), "one outcome per input");
    for ((key, _, expected), outcome) in verdicts().into_iter().zip(outcomes) {
        match (expected, outcome) {
            (None, Ok(())) => {}
            (Some(code), Err((got, reason))) => {
                assert_eq!(got, code, "{key}: {reason}");
                assert!(!reason.contains('\n'), "{key}: {reason:?}");
            }
            (expected, outcome) => panic!("{key}: expected {expected:?}, got {outcome:?}"),
        }
    }
}
