//! Letterbox geometry, pixels and the way back to source pixels, against numbers worked out by
//! hand from Ultralytics' `LetterBox` and `scale_boxes`.

use image::{Rgb, RgbImage};
use prism_detect::model::{BoundingBox, Letterbox, PAD_VALUE, fill_letterboxed};

fn letterboxed(image: &RgbImage, size: u32) -> (Letterbox, Vec<f32>) {
    let letterbox = Letterbox::new(image.width(), image.height(), size);
    let mut input = vec![f32::NAN; 3 * (size * size) as usize];
    fill_letterboxed(image, &letterbox, &mut input);
    (letterbox, input)
}

/// The network input as 8-bit values: plane `channel`, row `y`.
fn row_bytes(input: &[f32], size: u32, channel: usize, y: u32) -> Vec<u8> {
    let size = size as usize;
    let start = channel * size * size + y as usize * size;
    input[start..start + size]
        .iter()
        .map(|value| (value * 255.0).round() as u8)
        .collect()
}

#[test]
fn portrait_image_is_scaled_to_full_height_and_centred_horizontally() {
    // bus.jpg: 810x1080 -> 480x640, 80 px of grey either side.
    let letterbox = Letterbox::new(810, 1080, 640);
    assert!((letterbox.scale - 640.0 / 1080.0).abs() < 1e-7);
    assert_eq!(
        (letterbox.resized_width, letterbox.resized_height),
        (480, 640)
    );
    assert_eq!((letterbox.pad_left, letterbox.pad_top), (80, 0));
}

#[test]
fn landscape_image_is_scaled_to_full_width_and_centred_vertically() {
    // zidane.jpg: 1280x720 -> 640x360, 140 px above and below.
    let letterbox = Letterbox::new(1280, 720, 640);
    assert_eq!(letterbox.scale, 0.5);
    assert_eq!(
        (letterbox.resized_width, letterbox.resized_height),
        (640, 360)
    );
    assert_eq!((letterbox.pad_left, letterbox.pad_top), (0, 140));
}

#[test]
fn odd_padding_puts_the_extra_pixel_after_the_image() {
    // 100x33 into 64: scale 0.64, height round(21.12) = 21, padding 43 = 21 above + 22 below.
    let letterbox = Letterbox::new(100, 33, 64);
    assert_eq!(
        (letterbox.resized_width, letterbox.resized_height),
        (64, 21)
    );
    assert_eq!(letterbox.pad_top, 21);
}

#[test]
fn small_images_are_scaled_up_and_slivers_keep_one_row() {
    let letterbox = Letterbox::new(20, 10, 640);
    assert_eq!(letterbox.scale, 32.0);
    assert_eq!(
        (
            letterbox.resized_width,
            letterbox.resized_height,
            letterbox.pad_top
        ),
        (640, 320, 160)
    );

    let sliver = Letterbox::new(5000, 1, 640);
    assert_eq!((sliver.resized_width, sliver.resized_height), (640, 1));
}

#[test]
fn padding_is_ultralytics_grey_and_the_image_sits_inside_it() {
    let image = RgbImage::from_pixel(40, 20, Rgb([255, 0, 10]));
    let (letterbox, input) = letterboxed(&image, 64);
    assert_eq!((letterbox.pad_top, letterbox.resized_height), (16, 32));
    for channel in 0..3 {
        assert!(
            row_bytes(&input, 64, channel, 15)
                .iter()
                .all(|&v| v == PAD_VALUE)
        );
        assert!(
            row_bytes(&input, 64, channel, 48)
                .iter()
                .all(|&v| v == PAD_VALUE)
        );
    }
    // Channels are planes in R, G, B order, values in 0..=1.
    assert!(row_bytes(&input, 64, 0, 16).iter().all(|&v| v == 255));
    assert!(row_bytes(&input, 64, 1, 30).iter().all(|&v| v == 0));
    assert!(row_bytes(&input, 64, 2, 47).iter().all(|&v| v == 10));
}

#[test]
fn same_size_image_is_copied_unchanged() {
    let image = RgbImage::from_fn(32, 32, |x, y| {
        Rgb([(x * 8) as u8, (y * 8) as u8, (x ^ y) as u8])
    });
    let (_, input) = letterboxed(&image, 32);
    for y in 0..32 {
        let reds = row_bytes(&input, 32, 0, y);
        let blues = row_bytes(&input, 32, 2, y);
        for x in 0..32 {
            assert_eq!(reds[x as usize], image.get_pixel(x, y)[0]);
            assert_eq!(blues[x as usize], image.get_pixel(x, y)[2]);
        }
    }
}

#[test]
fn resize_is_bilinear_with_aligned_pixel_centres() {
    // A 2x1 ramp doubled to 4x2 (size 4, one grey row above and below): samples at source
    // x = -0.25, 0.25, 0.75, 1.25 give 0, 63.75, 191.25, 255 (edge taps renormalised).
    let image = RgbImage::from_fn(2, 1, |x, _| Rgb([(x * 255) as u8, 0, 0]));
    let (letterbox, input) = letterboxed(&image, 4);
    assert_eq!((letterbox.pad_top, letterbox.resized_height), (1, 2));
    assert_eq!(row_bytes(&input, 4, 0, 1), [0, 64, 191, 255]);
    assert_eq!(row_bytes(&input, 4, 0, 2), [0, 64, 191, 255]);
    assert_eq!(row_bytes(&input, 4, 0, 0), [PAD_VALUE; 4]);
}

#[test]
fn downscaling_averages_fine_detail_instead_of_sampling_it() {
    // One-pixel stripes shrunk 3x: a two-tap resize would land on single stripes and keep them
    // (0 or 255); a filter as wide as the scale factor averages them to mid grey.
    let stripes = RgbImage::from_fn(48, 48, |x, _| Rgb([if x % 2 == 1 { 255 } else { 0 }; 3]));
    let (letterbox, input) = letterboxed(&stripes, 16);
    assert_eq!(
        (letterbox.resized_width, letterbox.resized_height),
        (16, 16)
    );
    for y in 0..16 {
        let reds = row_bytes(&input, 16, 0, y);
        assert!(
            reds.iter().all(|&v| (100..=155).contains(&v)),
            "row {y}: {reds:?}"
        );
    }
}

#[test]
fn boxes_map_back_to_source_pixels() {
    let letterbox = Letterbox::new(810, 1080, 640);
    // The whole resized area is the whole image.
    let whole = letterbox.to_source(BoundingBox {
        x1: 80.0,
        y1: 0.0,
        x2: 560.0,
        y2: 640.0,
    });
    assert_close(
        whole,
        BoundingBox {
            x1: 0.0,
            y1: 0.0,
            x2: 810.0,
            y2: 1080.0,
        },
    );
    // Network pixels are 1.6875 source pixels, offset by the left padding.
    let inner = letterbox.to_source(BoundingBox {
        x1: 100.0,
        y1: 64.0,
        x2: 180.0,
        y2: 320.0,
    });
    assert_close(
        inner,
        BoundingBox {
            x1: 33.75,
            y1: 108.0,
            x2: 168.75,
            y2: 540.0,
        },
    );
}

#[test]
fn mapped_boxes_are_clipped_to_the_image() {
    let letterbox = Letterbox::new(1280, 720, 640);
    let spilling = letterbox.to_source(BoundingBox {
        x1: -12.0,
        y1: 100.0,
        x2: 700.0,
        y2: 520.0,
    });
    assert_close(
        spilling,
        BoundingBox {
            x1: 0.0,
            y1: 0.0,
            x2: 1280.0,
            y2: 720.0,
        },
    );
}

fn assert_close(actual: BoundingBox, expected: BoundingBox) {
    let pairs = [
        (actual.x1, expected.x1),
        (actual.y1, expected.y1),
        (actual.x2, expected.x2),
        (actual.y2, expected.y2),
    ];
    assert!(
        pairs.iter().all(|(a, e)| (a - e).abs() < 1e-3),
        "got {actual:?}, expected {expected:?}"
    );
}
