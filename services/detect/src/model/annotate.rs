//! Draws detections for people to look at: a box in the class's colour, thickness scaled to the
//! image like Ultralytics' plots, and a filled label with class and confidence in a built-in
//! 8x8 bitmap font (no font files needed at run time), scaled with the line width.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

use super::{BoundingBox, Detection};

const GLYPH_SIZE: u32 = 8;

/// [`annotate`] for an image that may be larger than its encoder allows: an image with an edge
/// over `max_edge` is first scaled down (aspect kept) so that its longest edge is `max_edge`,
/// and the boxes with it, so they still frame their objects.
pub fn annotate_within(image: &RgbImage, detections: &[Detection], max_edge: u32) -> RgbImage {
    let (width, height) = image.dimensions();
    let longest = width.max(height);
    if longest <= max_edge {
        return annotate(image, detections);
    }
    let scaled = |edge: u32| {
        let edge =
            (u64::from(edge) * u64::from(max_edge) + u64::from(longest) / 2) / u64::from(longest);
        // At most max_edge, which is a u32.
        edge.max(1) as u32
    };
    let mut smaller = RgbImage::new(scaled(width), scaled(height));
    // Cannot fail: both sides are RGB with at least one pixel.
    Resizer::new()
        .resize(
            image,
            &mut smaller,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        )
        .expect("an RGB image resizes into an RGB image of at least 1x1");
    let (x_scale, y_scale) = (
        smaller.width() as f32 / width as f32,
        smaller.height() as f32 / height as f32,
    );
    let moved: Vec<Detection> = detections
        .iter()
        .map(|detection| Detection {
            bbox: BoundingBox {
                x1: detection.bbox.x1 * x_scale,
                y1: detection.bbox.y1 * y_scale,
                x2: detection.bbox.x2 * x_scale,
                y2: detection.bbox.y2 * y_scale,
            },
            ..detection.clone()
        })
        .collect();
    annotate(&smaller, &moved)
}

pub fn annotate(image: &RgbImage, detections: &[Detection]) -> RgbImage {
    let mut canvas = image.clone();
    let (width, height) = canvas.dimensions();
    // Ultralytics: max(round((height + width) / 2 * 0.003), 2).
    let line_width = (((width + height) as f32 / 2.0 * 0.003).round() as u32).max(2);
    // Detections are best first: draw the best last so its label stays on top.
    for detection in detections.iter().rev() {
        let colour = class_colour(detection.class_id);
        draw_outline(&mut canvas, &detection.bbox, line_width, colour);
        let label = format!("{} {:.2}", detection.class, detection.confidence);
        draw_label(&mut canvas, &label, &detection.bbox, line_width, colour);
    }
    canvas
}

/// Distinct, stable colours per class: hues spread by the golden angle.
fn class_colour(class_id: u32) -> Rgb<u8> {
    let hue = (class_id as f32 * 0.618_034).fract() * 6.0;
    let (saturation, value) = (0.8, 0.95);
    let chroma = value * saturation;
    let x = chroma * (1.0 - (hue % 2.0 - 1.0).abs());
    let (r, g, b) = match hue as u32 {
        0 => (chroma, x, 0.0),
        1 => (x, chroma, 0.0),
        2 => (0.0, chroma, x),
        3 => (0.0, x, chroma),
        4 => (x, 0.0, chroma),
        _ => (chroma, 0.0, x),
    };
    let offset = value - chroma;
    let channel = |c: f32| ((c + offset) * 255.0).round() as u8;
    Rgb([channel(r), channel(g), channel(b)])
}

fn draw_outline(canvas: &mut RgbImage, bbox: &BoundingBox, line_width: u32, colour: Rgb<u8>) {
    let (x1, y1) = (bbox.x1.round() as i64, bbox.y1.round() as i64);
    let (x2, y2) = (bbox.x2.round() as i64, bbox.y2.round() as i64);
    let line = i64::from(line_width);
    fill_rect(canvas, x1, y1, x2, y1 + line, colour);
    fill_rect(canvas, x1, y2 - line, x2, y2, colour);
    fill_rect(canvas, x1, y1, x1 + line, y2, colour);
    fill_rect(canvas, x2 - line, y1, x2, y2, colour);
}

/// The label sits on the box's top edge, outside when there is room above, inside otherwise.
fn draw_label(
    canvas: &mut RgbImage,
    text: &str,
    bbox: &BoundingBox,
    scale: u32,
    background: Rgb<u8>,
) {
    let (scale, padding) = (i64::from(scale), i64::from(scale));
    let glyph = i64::from(GLYPH_SIZE) * scale;
    let label_width = glyph * text.chars().count() as i64 + 2 * padding;
    let label_height = glyph + 2 * padding;
    let (canvas_width, canvas_height) = (i64::from(canvas.width()), i64::from(canvas.height()));

    let left = (bbox.x1.round() as i64)
        .min(canvas_width - label_width)
        .max(0);
    let box_top = bbox.y1.round() as i64;
    let top = if box_top >= label_height {
        box_top - label_height
    } else {
        box_top.min(canvas_height - label_height).max(0)
    };
    fill_rect(
        canvas,
        left,
        top,
        left + label_width,
        top + label_height,
        background,
    );

    let ink = contrasting_ink(background);
    for (index, character) in text.chars().enumerate() {
        let rows = font8x8::BASIC_FONTS
            .get(character)
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or_default();
        let glyph_left = left + padding + index as i64 * glyph;
        for (row, bits) in rows.iter().enumerate() {
            for column in 0..GLYPH_SIZE {
                // Bit 0 is the leftmost pixel of the row.
                if bits >> column & 1 == 1 {
                    let x = glyph_left + i64::from(column) * scale;
                    let y = top + padding + row as i64 * scale;
                    fill_rect(canvas, x, y, x + scale, y + scale, ink);
                }
            }
        }
    }
}

fn contrasting_ink(background: Rgb<u8>) -> Rgb<u8> {
    let [r, g, b] = background.0.map(f32::from);
    let luma = 0.299 * r + 0.587 * g + 0.114 * b;
    if luma > 150.0 {
        Rgb([0, 0, 0])
    } else {
        Rgb([255, 255, 255])
    }
}

/// Fills `[x1, x2) x [y1, y2)`, clipped to the canvas.
fn fill_rect(canvas: &mut RgbImage, x1: i64, y1: i64, x2: i64, y2: i64, colour: Rgb<u8>) {
    let (width, height) = (i64::from(canvas.width()), i64::from(canvas.height()));
    for y in y1.max(0)..y2.min(height) {
        for x in x1.max(0)..x2.min(width) {
            canvas.put_pixel(x as u32, y as u32, colour);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_imaging::JPEG_MAX_EDGE;

    fn boat(x1: f32, y1: f32, x2: f32, y2: f32) -> Detection {
        Detection {
            class: "boat".into(),
            class_id: 8,
            confidence: 0.9,
            bbox: BoundingBox { x1, y1, x2, y2 },
        }
    }

    #[test]
    fn an_image_over_the_edge_limit_is_scaled_down_with_its_boxes() {
        // 1000x200 into 500 pixels: half size, the box from (400, 20)-(600, 180) to
        // (200, 10)-(300, 90), drawn 2 pixels wide, its label inside along the top.
        let annotated = annotate_within(
            &RgbImage::new(1000, 200),
            &[boat(400.0, 20.0, 600.0, 180.0)],
            500,
        );
        assert_eq!(annotated.dimensions(), (500, 100));
        let colour = class_colour(8);
        for x in [200, 201, 298, 299] {
            assert_eq!(annotated[(x, 60)], colour, "box edge at x={x}");
        }
        for x in [197, 250, 302] {
            assert_eq!(annotated[(x, 60)], Rgb([0, 0, 0]), "no box edge at x={x}");
        }
        assert_eq!(annotated[(250, 89)], colour, "bottom edge");

        let fits = RgbImage::new(640, 480);
        let unchanged = annotate_within(&fits, &[boat(10.0, 10.0, 50.0, 50.0)], JPEG_MAX_EDGE);
        assert_eq!(unchanged, annotate(&fits, &[boat(10.0, 10.0, 50.0, 50.0)]));
    }

    #[test]
    fn a_panorama_wider_than_a_jpeg_allows_is_scaled_to_fit_one() {
        let panorama = RgbImage::new(66_000, 1_000);
        let annotated = annotate_within(&panorama, &[], JPEG_MAX_EDGE);
        assert_eq!(annotated.dimensions(), (65_500, 992));
    }
}
