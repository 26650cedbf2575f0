//! One decoding policy for every stage: the full decode (detect) and the shrink-on-load decode
//! (thumbnails, at every scale) accept and refuse the same files, for the same reasons, and
//! both give sRGB.

use image::RgbImage;

use super::fixtures::*;
use super::test_images::{jpeg, synthetic_photo};
use super::{DecodedImage, ImageError, Limits, Pixels, decode, decode_for_thumbnails};

/// Longest edges that make the thumbnail path decode at 1/8, 1/4, 1/2 and full size (for a
/// source of at most 320 pixels) besides the full decode.
const THUMBNAIL_EDGES: [u32; 4] = [16, 64, 160, 100_000];

/// Every decode path's outcome for `bytes`: the full decode first, then the thumbnail path at
/// each of [`THUMBNAIL_EDGES`].
fn every_path(bytes: &[u8]) -> Vec<(String, Result<DecodedImage, ImageError>)> {
    let limits = Limits::default();
    let mut outcomes = vec![("decode".to_string(), decode(bytes, &limits))];
    for edge in THUMBNAIL_EDGES {
        outcomes.push((
            format!("decode_for_thumbnails at {edge}"),
            decode_for_thumbnails(bytes, &limits, edge),
        ));
    }
    outcomes
}

/// Asserts that every decode path refuses `bytes` with `code`; returns the full decode's reason.
fn refused_everywhere(bytes: &[u8], code: &str) -> String {
    let outcomes = every_path(bytes);
    for (path, outcome) in &outcomes {
        match outcome {
            Ok(image) => panic!("{path} accepted it: {image:?}"),
            Err(error) => assert_eq!(error.code(), code, "{path}: {error}"),
        }
    }
    let reason = outcomes[0].1.as_ref().unwrap_err().to_string();
    assert!(!reason.contains('\n'), "one line: {reason:?}");
    reason
}

fn rgb(image: &DecodedImage) -> &RgbImage {
    match image.stored_pixels() {
        Pixels::Rgb(rgb) => rgb,
        Pixels::Rgba(_) => panic!("expected RGB"),
    }
}

#[test]
fn truncated_jpeg_is_corrupt_in_every_decode_path() {
    let baseline = jpeg(&synthetic_photo(320, 240));
    for (name, whole) in [
        ("baseline", baseline.as_slice()),
        ("progressive", AL10_JPEG),
    ] {
        for percent in [40, 90, 99] {
            let reason = refused_everywhere(&truncated(whole, percent), "corrupt_image");
            assert!(
                reason.starts_with("corrupt JPEG"),
                "{name} at {percent}%: {reason}"
            );
        }
    }
    let reason = refused_everywhere(&truncated(&baseline, 40), "corrupt_image");
    assert!(reason.contains("truncated"), "{reason}");
}

#[test]
fn jpeg_with_more_scans_than_the_limit_is_too_costly_in_every_decode_path() {
    let scans = AL10_JPEG
        .windows(2)
        .filter(|pair| *pair == [0xFF, 0xDA])
        .count();
    let many = with_last_scan_repeated(AL10_JPEG, 1001 - scans);
    let reason = refused_everywhere(&many, "too_costly_to_decode");
    assert!(reason.contains("more than 1000 scans"), "{reason}");
}

#[test]
fn jpeg_whose_scans_would_decode_too_many_blocks_is_too_costly_in_every_decode_path() {
    // 262,144 blocks decoded by each of 1000 scans: 262.1 million, over the limit of 250.
    let costly = with_last_scan_repeated(FLAT_4096_JPEG, 998);
    assert!(costly.len() < 100_000, "{} bytes", costly.len());
    let reason = refused_everywhere(&costly, "too_costly_to_decode");
    assert!(
        reason.contains("would decode 262.1 million blocks"),
        "{reason}"
    );
    // 100 scans: within the limit, valid, if wasteful.
    let within = with_last_scan_repeated(FLAT_4096_JPEG, 98);
    let image = decode(&within, &Limits::default()).expect("decodes");
    assert_eq!(rgb(&image)[(2048, 2048)].0, [128; 3]);
}

#[test]
fn progressive_jpeg_with_dc_point_transform_10_decodes_like_its_baseline_source() {
    let outcomes = every_path(AL10_JPEG).into_iter();
    for ((path, progressive), (_, baseline)) in outcomes.zip(every_path(BASELINE_JPEG)) {
        let progressive = progressive.unwrap_or_else(|error| panic!("{path}: {error}"));
        let baseline = baseline.expect("the baseline source decodes");
        let (progressive, baseline) = (rgb(&progressive), rgb(&baseline));
        assert_eq!(progressive.dimensions(), baseline.dimensions(), "{path}");
        // The same coefficients give the same pixels, at 1/8 too, where the progressive file
        // is decoded from its DC scans and one low AC scan per component.
        assert!(progressive == baseline, "{path}: the pixels differ");
    }
}

#[test]
fn wide_gamut_images_are_converted_to_srgb_like_littlecms_does() {
    for fixture in WIDE_GAMUT {
        let truth = fixture.srgb_truth();
        let limits = Limits::default();
        let decoded = [
            ("decode", decode(fixture.encoded, &limits)),
            // At full size: shrink-on-load would make a smaller image than the truth.
            (
                "decode_for_thumbnails",
                decode_for_thumbnails(fixture.encoded, &limits, 100_000),
            ),
        ];
        for (path, image) in decoded {
            let image = image.unwrap_or_else(|error| panic!("{}: {error}", fixture.name));
            let delta_e = mean_delta_e(rgb(&image), &truth);
            println!("{} via {path}: mean ΔE {delta_e:.2}", fixture.name);
            assert!(
                delta_e < 2.0,
                "{} via {path}: mean ΔE {delta_e:.2}",
                fixture.name
            );
        }
    }
}

/// One valid file of every format, with its name in reasons.
fn one_of_each_format() -> [(&'static str, &'static [u8]); 7] {
    [
        ("JPEG", BASELINE_JPEG),
        ("PNG", DISPLAY_P3_PNG.encoded),
        ("WebP", PROPHOTO_WEBP.encoded),
        ("HEIC/HEIF", ROTATED_HEIC),
        ("AVIF", DISPLAY_P3_AVIF.encoded),
        ("TIFF", PROPHOTO_16BIT_TIFF.encoded),
        ("BMP", PHOTO_BMP),
    ]
}

#[test]
fn truncated_files_of_every_format_are_corrupt_in_every_decode_path() {
    for (name, whole) in one_of_each_format() {
        let reason = refused_everywhere(&truncated(whole, 60), "corrupt_image");
        assert!(
            reason.starts_with(&format!("corrupt {name}: ")),
            "{name}: {reason}"
        );
    }
}

#[test]
fn every_format_is_held_to_the_pixel_limit_before_decoding() {
    for (name, bytes) in one_of_each_format() {
        let info = super::probe(bytes).unwrap_or_else(|error| panic!("{name}: {error}"));
        let pixels = u64::from(info.width) * u64::from(info.height);
        let exact = Limits {
            max_pixels: pixels,
            ..Limits::default()
        };
        decode(bytes, &exact).unwrap_or_else(|error| panic!("{name}: {error}"));
        let below = Limits {
            max_pixels: pixels - 1,
            ..Limits::default()
        };
        for outcome in [
            decode(bytes, &below),
            decode_for_thumbnails(bytes, &below, 16),
        ] {
            let error = outcome.expect_err(name);
            assert_eq!(error.code(), "too_many_pixels", "{name}: {error}");
        }
    }
}
