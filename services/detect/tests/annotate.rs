//! Drawing boxes and labels on synthetic images.

use image::{Rgb, RgbImage};
use prism_detect::model::{BoundingBox, Detection, annotate};

const BACKGROUND: Rgb<u8> = Rgb([40, 40, 40]);

fn detection(class_id: u32, class: &str, bbox: BoundingBox) -> Detection {
    Detection {
        class: class.to_owned(),
        class_id,
        confidence: 0.87,
        bbox,
    }
}

fn label_rows_with_ink(
    image: &RgbImage,
    x_range: std::ops::Range<u32>,
    y_range: std::ops::Range<u32>,
) -> usize {
    y_range
        .filter(|&y| {
            let row: Vec<_> = x_range.clone().map(|x| *image.get_pixel(x, y)).collect();
            // A text row has at least two colours besides the background: fill and ink.
            let mut colours: Vec<_> = row.into_iter().filter(|&p| p != BACKGROUND).collect();
            colours.sort_by_key(|p| p.0);
            colours.dedup();
            colours.len() >= 2
        })
        .count()
}

#[test]
fn boxes_get_their_class_colour_and_a_label_above() {
    let image = RgbImage::from_pixel(400, 300, BACKGROUND);
    let person = detection(
        0,
        "person",
        BoundingBox {
            x1: 50.0,
            y1: 100.0,
            x2: 150.0,
            y2: 250.0,
        },
    );
    let bus = detection(
        5,
        "bus",
        BoundingBox {
            x1: 200.0,
            y1: 120.0,
            x2: 380.0,
            y2: 280.0,
        },
    );
    let annotated = annotate(&image, &[person, bus]);

    let person_edge = *annotated.get_pixel(50, 200);
    let bus_edge = *annotated.get_pixel(200, 200);
    assert_ne!(person_edge, BACKGROUND);
    assert_ne!(bus_edge, BACKGROUND);
    assert_ne!(person_edge, bus_edge, "classes get different colours");
    assert_eq!(
        *annotated.get_pixel(149, 200),
        person_edge,
        "right edge in the same colour"
    );
    assert_eq!(
        *annotated.get_pixel(100, 200),
        BACKGROUND,
        "boxes are not filled"
    );

    // Line width 2 for this size, so 8x8 glyphs at twice the size: 16 px text, 2 px padding.
    let label_rows = label_rows_with_ink(&annotated, 50..150, 80..100);
    assert!(
        label_rows >= 10,
        "text drawn above the box ({label_rows} rows)"
    );
    assert_eq!(
        *annotated.get_pixel(51, 81),
        person_edge,
        "label filled with the class colour"
    );
}

#[test]
fn label_moves_inside_a_box_touching_the_top() {
    let image = RgbImage::from_pixel(200, 200, BACKGROUND);
    let annotated = annotate(
        &image,
        &[detection(
            2,
            "car",
            BoundingBox {
                x1: 10.0,
                y1: 0.0,
                x2: 190.0,
                y2: 150.0,
            },
        )],
    );
    assert!(label_rows_with_ink(&annotated, 10..190, 0..20) >= 10);
}

#[test]
fn drawing_is_clipped_to_the_image() {
    let image = RgbImage::from_pixel(16, 12, BACKGROUND);
    let everywhere = BoundingBox {
        x1: -5.0,
        y1: -5.0,
        x2: 30.0,
        y2: 30.0,
    };
    let annotated = annotate(&image, &[detection(79, "toothbrush", everywhere)]);
    assert_eq!(annotated.dimensions(), (16, 12));
    assert!(annotate(&image, &[]).pixels().all(|&p| p == BACKGROUND));
}
