//! The thumbnail stage end to end: encoded bytes in, encoded thumbnails out, each decoded again.

// A counting global allocator measures what decoding a bomb would allocate.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use prism_core::runtime::config::Settings;
use prism_core::runtime::worker::Stage;
use prism_imaging::fixtures;
use prism_imaging::test_images::*;
use prism_imaging::{DecodedImage, Limits, Pixels, SourceFormat, decode};
use prism_thumbnail::ThumbnailStage;
use prism_thumbnail::stage::{
    MAX_SIZE, Thumbnail, ThumbnailFormat, ThumbnailSpec, fit_within, psnr, render,
};

/// Counts the bytes each thread allocates, so a test can show that refusing a pixel bomb
/// allocates next to nothing.
struct CountingAllocator;

thread_local! {
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // try_with: the allocator is also called while thread-locals are being torn down.
    let _ = ALLOCATED.try_with(|total| total.set(total.get() + bytes as u64));
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `work` and returns its result with the bytes this thread allocated meanwhile.
fn allocated_by<T>(work: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATED.with(Cell::get);
    let result = work();
    (result, ALLOCATED.with(Cell::get) - before)
}

fn decoded(bytes: &[u8]) -> DecodedImage {
    decode(bytes, &Limits::default()).expect("test input decodes")
}

fn spec(sizes: &[u32]) -> ThumbnailSpec {
    ThumbnailSpec {
        sizes: sizes.to_vec(),
        ..ThumbnailSpec::default()
    }
}

/// Decodes a thumbnail again, checking it is a well-formed file of the promised size and format.
fn redecode(thumbnail: &Thumbnail) -> DecodedImage {
    let image = decode(&thumbnail.bytes, &Limits::default())
        .unwrap_or_else(|e| panic!("{thumbnail:?} does not decode: {e}"));
    let expected_format = match thumbnail.format {
        ThumbnailFormat::Jpeg => SourceFormat::Jpeg,
        ThumbnailFormat::Webp => SourceFormat::Webp,
    };
    assert_eq!(image.format(), expected_format, "{thumbnail:?}");
    assert_eq!(
        (image.width(), image.height()),
        (thumbnail.width, thumbnail.height),
        "{thumbnail:?}"
    );
    image
}

fn dimensions(thumbnails: &[Thumbnail]) -> Vec<(u32, ThumbnailFormat, u32, u32)> {
    thumbnails
        .iter()
        .map(|t| (t.size, t.format, t.width, t.height))
        .collect()
}

#[test]
fn default_spec_renders_three_sizes_in_jpeg_and_lossy_webp() {
    let image = decoded(&jpeg(&synthetic_photo(1200, 800)));
    let thumbnails = render(&image, &ThumbnailSpec::default()).unwrap();
    use ThumbnailFormat::{Jpeg, Webp};
    assert_eq!(
        dimensions(&thumbnails),
        [
            (128, Jpeg, 128, 85),
            (128, Webp, 128, 85),
            (256, Jpeg, 256, 171),
            (256, Webp, 256, 171),
            (512, Jpeg, 512, 341),
            (512, Webp, 512, 341),
        ]
    );
    for thumbnail in &thumbnails {
        redecode(thumbnail);
        if thumbnail.format == Webp {
            assert!(
                thumbnail.bytes.windows(4).any(|w| w == b"VP8 "),
                "WebP must be lossy (VP8), not lossless (VP8L)"
            );
        }
    }
}

#[test]
fn thumbnails_follow_the_order_of_the_spec() {
    let image = decoded(&jpeg(&synthetic_photo(300, 200)));
    let spec = ThumbnailSpec {
        sizes: vec![64, 200, 32],
        formats: vec![ThumbnailFormat::Webp, ThumbnailFormat::Jpeg],
        ..ThumbnailSpec::default()
    };
    let order: Vec<_> = render(&image, &spec)
        .unwrap()
        .iter()
        .map(|t| (t.size, t.format))
        .collect();
    use ThumbnailFormat::{Jpeg, Webp};
    assert_eq!(
        order,
        [
            (64, Webp),
            (64, Jpeg),
            (200, Webp),
            (200, Jpeg),
            (32, Webp),
            (32, Jpeg)
        ]
    );
}

#[test]
fn a_smaller_source_is_never_upscaled() {
    let image = decoded(&jpeg(&synthetic_photo(100, 50)));
    let thumbnails = render(&image, &spec(&[512, 256, 64])).unwrap();
    let sizes: Vec<_> = thumbnails
        .iter()
        .map(|t| (t.size, t.width, t.height))
        .collect();
    assert_eq!(
        sizes,
        [
            (512, 100, 50),
            (512, 100, 50),
            (256, 100, 50),
            (256, 100, 50),
            (64, 64, 32),
            (64, 64, 32)
        ]
    );
    thumbnails.iter().for_each(|t| drop(redecode(t)));
}

#[test]
fn extreme_aspect_ratios_keep_at_least_one_pixel() {
    let wide = decoded(&encode(
        &DynamicImage::ImageRgb8(synthetic_photo(1000, 10)),
        ImageFormat::Png,
    ));
    let thumbnails = render(&wide, &ThumbnailSpec::default()).unwrap();
    let edges: Vec<_> = thumbnails.iter().map(|t| (t.width, t.height)).collect();
    assert_eq!(
        edges,
        [(128, 1), (128, 1), (256, 3), (256, 3), (512, 5), (512, 5)]
    );
    thumbnails.iter().for_each(|t| drop(redecode(t)));

    let dot = decoded(&encode(
        &DynamicImage::ImageRgb8(RgbImage::from_pixel(1, 1, Rgb(BLUE))),
        ImageFormat::Png,
    ));
    for thumbnail in render(&dot, &ThumbnailSpec::default()).unwrap() {
        assert_eq!((thumbnail.width, thumbnail.height), (1, 1));
        let pixel = redecode(&thumbnail).into_rgb()[(0, 0)].0;
        assert_eq!(nearest_named(pixel), BLUE, "{thumbnail:?}");
    }
}

#[test]
fn fit_within_keeps_the_aspect_ratio() {
    assert_eq!(fit_within(4000, 3000, 512), (512, 384));
    assert_eq!(fit_within(3000, 4000, 512), (384, 512));
    assert_eq!(fit_within(1000, 10, 512), (512, 5));
    assert_eq!(fit_within(10, 1000, 128), (1, 128));
    assert_eq!(fit_within(512, 512, 512), (512, 512));
    assert_eq!(fit_within(1, 1, 128), (1, 1));
}

/// Renders `stored` as a JPEG with EXIF `orientation` and checks both formats come out at the
/// displayed size with the corners where EXIF puts them.
fn assert_oriented(stored: &RgbImage, orientation: u16, size: u32, corners: [[u8; 3]; 4]) {
    let image = decoded(&jpeg_with_orientation(stored, orientation));
    for thumbnail in render(&image, &spec(&[size])).unwrap() {
        let displayed = redecode(&thumbnail).into_rgb();
        let (w, h) = stored.dimensions();
        let expected = if orientation >= 5 {
            fit_within(h, w, size)
        } else {
            fit_within(w, h, size)
        };
        assert_eq!(displayed.dimensions(), expected, "{thumbnail:?}");
        assert_eq!(
            quadrant_centres(&displayed).map(nearest_named),
            corners,
            "orientation {orientation}, {thumbnail:?}"
        );
    }
}

#[test]
fn exif_rotation_by_90_swaps_the_thumbnail_edges() {
    // Orientation 6: stored row 0 goes to the right, column 0 to the top.
    let corners = [BLUE, RED, WHITE, GREEN];
    assert_oriented(&quadrants(256, 128), 6, 64, corners);
    // Smaller than the size: oriented without resizing.
    assert_oriented(&quadrants(64, 32), 6, 512, corners);
}

#[test]
fn exif_rotation_by_180_turns_the_thumbnail_over() {
    let corners = [WHITE, BLUE, GREEN, RED];
    assert_oriented(&quadrants(256, 128), 3, 64, corners);
    assert_oriented(&quadrants(64, 32), 3, 512, corners);
}

#[test]
fn every_input_format_renders() {
    let photo = synthetic_photo(300, 200);
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("JPEG", jpeg(&photo)),
        (
            "PNG",
            encode(&DynamicImage::ImageRgb8(photo.clone()), ImageFormat::Png),
        ),
        (
            "16-bit PNG",
            encode(
                &DynamicImage::ImageRgb8(photo.clone()).to_rgb16().into(),
                ImageFormat::Png,
            ),
        ),
        (
            "grayscale PNG",
            encode(
                &DynamicImage::ImageRgb8(photo.clone()).to_luma8().into(),
                ImageFormat::Png,
            ),
        ),
        (
            "palette PNG",
            palette_png(300, 200, &[RED, GREEN], None, &[0, 1].repeat(30_000)),
        ),
        (
            "WebP",
            encode(&DynamicImage::ImageRgb8(photo.clone()), ImageFormat::WebP),
        ),
        ("animated GIF", animated_gif(300, 200, &[GREEN, RED])),
        ("CMYK JPEG", cmyk_jpeg(300, 200, [0, 255, 255, 0])),
    ];
    for (name, bytes) in inputs {
        let image = decode(&bytes, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let thumbnails = render(&image, &spec(&[128, 64])).unwrap();
        assert_eq!(thumbnails.len(), 4, "{name}");
        for thumbnail in &thumbnails {
            assert_eq!(
                (thumbnail.width, thumbnail.height),
                fit_within(300, 200, thumbnail.size),
                "{name}"
            );
            redecode(thumbnail);
        }
    }
}

#[test]
fn transparency_survives_into_webp_and_is_flattened_onto_white_in_jpeg() {
    // Left half opaque red, right half fully transparent (black underneath).
    let source = RgbaImage::from_fn(200, 100, |x, _| {
        if x < 100 {
            Rgba([255, 0, 0, 255])
        } else {
            Rgba([0, 0, 0, 0])
        }
    });
    let image = decoded(&encode(&DynamicImage::ImageRgba8(source), ImageFormat::Png));
    assert!(image.has_alpha());
    for thumbnail in render(&image, &spec(&[100])).unwrap() {
        let output = redecode(&thumbnail);
        match thumbnail.format {
            ThumbnailFormat::Webp => {
                let Pixels::Rgba(rgba) = output.stored_pixels() else {
                    panic!("WebP thumbnail lost its alpha channel");
                };
                let [r, g, b, opacity] = rgba[(10, 25)].0;
                assert_eq!(opacity, 255);
                assert_eq!(nearest_named([r, g, b]), RED);
                assert_eq!(rgba[(90, 25)].0[3], 0);
            }
            ThumbnailFormat::Jpeg => {
                let rgb = output.into_rgb();
                assert_eq!(nearest_named(rgb[(10, 25)].0), RED);
                assert_eq!(nearest_named(rgb[(90, 25)].0), WHITE);
            }
        }
    }
}

#[test]
fn quality_settings_change_the_output() {
    let image = decoded(&jpeg(&synthetic_photo(600, 400)));
    let bytes_at = |quality: u8| -> Vec<usize> {
        let spec = ThumbnailSpec {
            sizes: vec![256],
            jpeg_quality: quality,
            webp_quality: quality,
            ..ThumbnailSpec::default()
        };
        render(&image, &spec)
            .unwrap()
            .iter()
            .map(|t| t.bytes.len())
            .collect()
    };
    let (low, high) = (bytes_at(20), bytes_at(95));
    assert!(low[0] < high[0], "JPEG: {low:?} vs {high:?}");
    assert!(low[1] < high[1], "WebP: {low:?} vs {high:?}");
}

#[test]
fn cascading_from_the_larger_size_matches_resizing_from_the_source() {
    let source = synthetic_photo(2000, 1500);
    let image = decoded(&encode(
        &DynamicImage::ImageRgb8(source.clone()),
        ImageFormat::Png,
    ));
    let spec = ThumbnailSpec {
        sizes: vec![512, 128],
        formats: vec![ThumbnailFormat::Jpeg],
        jpeg_quality: 100,
        ..ThumbnailSpec::default()
    };
    let cascaded = &render(&image, &spec).unwrap()[1];
    assert_eq!(cascaded.size, 128);

    let mut direct = RgbImage::new(cascaded.width, cascaded.height);
    let lanczos = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    Resizer::new()
        .resize(&source, &mut direct, &lanczos)
        .unwrap();
    let quality = psnr(&redecode(cascaded).into_rgb(), &direct);
    assert!(
        quality > 35.0,
        "cascade differs from a direct resize: PSNR {quality:.1} dB"
    );
}

#[test]
fn pixel_bomb_is_refused_before_any_pixel_buffer_exists() {
    const BOMB_BUDGET: u64 = 1 << 20;
    let bomb = pixel_bomb_png(50_000, 50_000);
    let started = Instant::now();
    let (result, allocated) = allocated_by(|| decode(&bomb, &Limits::default()));
    let error = result.expect_err("a 2.5 gigapixel image is refused");
    assert_eq!(error.code(), "too_many_pixels");
    assert!(
        allocated < BOMB_BUDGET,
        "refusing the bomb allocated {allocated} bytes"
    );
    assert!(started.elapsed() < Duration::from_millis(100));

    // The counter does see real decoding: a 1000x1000 image needs its 3 MB of pixels.
    let real = encode(
        &DynamicImage::ImageRgb8(synthetic_photo(1000, 1000)),
        ImageFormat::Png,
    );
    let (_, allocated) = allocated_by(|| decoded(&real));
    assert!(allocated > 3_000_000, "counted only {allocated} bytes");
}

#[test]
fn spec_defaults_and_serde_names() {
    let defaults = ThumbnailSpec::default();
    assert_eq!(defaults.sizes, [128, 256, 512]);
    assert_eq!(
        defaults.formats,
        [ThumbnailFormat::Jpeg, ThumbnailFormat::Webp]
    );
    assert_eq!((defaults.jpeg_quality, defaults.webp_quality), (85, 80));
    defaults.validate().unwrap();

    let partial: ThumbnailSpec =
        serde_json::from_str(r#"{"sizes": [64], "formats": ["webp"]}"#).unwrap();
    assert_eq!(partial.formats, [ThumbnailFormat::Webp]);
    assert_eq!(partial.jpeg_quality, 85);
    assert_eq!(
        serde_json::to_string(&ThumbnailFormat::Jpeg).unwrap(),
        r#""jpeg""#
    );
    assert_eq!(ThumbnailFormat::Jpeg.extension(), "jpg");
    assert_eq!(ThumbnailFormat::Webp.content_type(), "image/webp");
}

#[test]
fn invalid_specs_are_refused_with_the_reason() {
    let image = decoded(&jpeg(&synthetic_photo(40, 30)));
    let cases: [(ThumbnailSpec, &str); 8] = [
        (spec(&[]), "sizes is empty"),
        (spec(&[128, 0]), "size 0 is outside"),
        (spec(&[MAX_SIZE + 1]), "outside 1..=16383"),
        (spec(&[64, 64]), "lists a size twice"),
        (
            ThumbnailSpec {
                formats: vec![],
                ..ThumbnailSpec::default()
            },
            "formats is empty",
        ),
        (
            ThumbnailSpec {
                formats: vec![ThumbnailFormat::Webp, ThumbnailFormat::Webp],
                ..ThumbnailSpec::default()
            },
            "lists a format twice",
        ),
        (
            ThumbnailSpec {
                jpeg_quality: 0,
                ..ThumbnailSpec::default()
            },
            "jpeg_quality is 0",
        ),
        (
            ThumbnailSpec {
                webp_quality: 101,
                ..ThumbnailSpec::default()
            },
            "webp_quality is 101",
        ),
    ];
    for (spec, reason) in cases {
        let error = render(&image, &spec).expect_err(reason);
        assert_eq!(error.code(), "invalid_thumbnail_spec");
        assert!(
            error.to_string().contains(reason),
            "{error} lacks {reason:?}"
        );
    }
}

#[test]
fn sixteen_bit_source_renders_with_its_colours() {
    let deep = ImageBuffer::from_pixel(64, 64, Rgb([0u16, 0, u16::MAX]));
    let image = decoded(&encode(&DynamicImage::ImageRgb16(deep), ImageFormat::Png));
    for thumbnail in render(&image, &spec(&[32])).unwrap() {
        let pixel = redecode(&thumbnail).into_rgb()[(16, 16)].0;
        assert_eq!(nearest_named(pixel), BLUE, "{thumbnail:?}");
    }
}

#[test]
fn thumbnail_judges_damaged_and_costly_jpegs_as_every_stage_does() {
    let stage = ThumbnailStage::new(&Settings::default()).expect("default settings are valid");
    let inputs: Vec<Bytes> = fixtures::verdicts()
        .into_iter()
        .map(|v| Bytes::from(v.1))
        .collect();
    fixtures::assert_verdicts(stage.run(&inputs).into_iter().map(|outcome| {
        outcome
            .map(|_| ())
            .map_err(|failure| (failure.code, failure.reason))
    }));
}

#[test]
fn wide_gamut_jpeg_gives_colour_correct_thumbnails() {
    let fixture = fixtures::ADOBE_RGB_JPEG;
    let truth = fixture.srgb_truth();
    let spec = ThumbnailSpec {
        sizes: vec![truth.width()],
        formats: vec![ThumbnailFormat::Jpeg, ThumbnailFormat::Webp],
        ..ThumbnailSpec::default()
    };
    let image = prism_thumbnail::stage::decode_for(&spec, fixture.encoded, &Limits::default())
        .expect("decodes");
    for thumbnail in render(&image, &spec).unwrap() {
        // Over 16x16 means, so that what is measured is colour, not lossy coding's noise.
        let pixels = fixtures::block_means(&redecode(&thumbnail).into_rgb(), 16);
        let delta_e = fixtures::mean_delta_e(&pixels, &fixtures::block_means(&truth, 16));
        println!("{:?}: mean ΔE {delta_e:.2}", thumbnail.format);
        assert!(
            delta_e < 2.0,
            "{thumbnail:?}: mean ΔE {delta_e:.2} from the sRGB truth"
        );
    }
}
