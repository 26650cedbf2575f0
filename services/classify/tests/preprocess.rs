//! The network input: geometry of the resize and centre crop, and the value mapping.

use image::{Rgb, RgbImage};
use prism_classify::model::{CenterCrop, INPUT_SIZE, INPUT_VALUES, fill_input};

#[test]
fn shorter_side_becomes_256_and_the_longer_is_rounded() {
    // chelsea.png: 451 x 300 -> 384.85 -> 385 wide (the figures in shared/MODELS.md need 385).
    assert_eq!(
        CenterCrop::new(451, 300),
        CenterCrop {
            resized_width: 385,
            resized_height: 256,
            left: 80,
            top: 16
        }
    );
    // coffee.png: 600 x 400 -> 384 x 256.
    assert_eq!(
        CenterCrop::new(600, 400),
        CenterCrop {
            resized_width: 384,
            resized_height: 256,
            left: 80,
            top: 16
        }
    );
    // Portrait, square, tiny (upscaled), extreme.
    assert_eq!(
        CenterCrop::new(300, 451),
        CenterCrop {
            resized_width: 256,
            resized_height: 385,
            left: 16,
            top: 80
        }
    );
    assert_eq!(CenterCrop::new(1000, 1000).resized_width, 256);
    assert_eq!(
        CenterCrop::new(1, 1),
        CenterCrop {
            resized_width: 256,
            resized_height: 256,
            left: 16,
            top: 16
        }
    );
    assert_eq!(CenterCrop::new(4000, 10).resized_width, 102_400);
}

#[test]
fn ties_round_to_even_as_python_does() {
    // 256 * 641 / 512 = 320.5 -> 320; 256 * 643 / 512 = 321.5 -> 322.
    assert_eq!(CenterCrop::new(641, 512).resized_width, 320);
    assert_eq!(CenterCrop::new(643, 512).resized_width, 322);
}

#[test]
fn values_map_to_x_minus_127_over_128_in_rgb_planes() {
    let image = RgbImage::from_pixel(300, 200, Rgb([0, 127, 255]));
    let mut input = vec![f32::NAN; INPUT_VALUES];
    fill_input(&image, &mut input);
    let plane = (INPUT_SIZE * INPUT_SIZE) as usize;
    assert!(input[..plane].iter().all(|&v| v == -127.0 / 128.0));
    assert!(input[plane..2 * plane].iter().all(|&v| v == 0.0));
    assert!(input[2 * plane..].iter().all(|&v| v == 1.0));
}

#[test]
fn the_crop_is_the_centre_of_the_resized_picture() {
    // 512 x 512 halves to 256 x 256; the crop starts 16 pixels in. A picture whose left half
    // is black and right half white: the bilinear filter (2 source pixels each side when
    // halving) mixes resized columns 127 and 128, crop columns 111 and 112.
    let image = RgbImage::from_fn(512, 512, |x, _| {
        if x < 256 {
            Rgb([0, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    });
    let mut input = vec![0.0; INPUT_VALUES];
    fill_input(&image, &mut input);
    let row = &input[..INPUT_SIZE as usize];
    assert!(row[..111].iter().all(|&v| v == -127.0 / 128.0), "{row:?}");
    assert!(row[113..].iter().all(|&v| v == 1.0), "{row:?}");
}
