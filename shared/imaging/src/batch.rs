//! A batch of uploads decoded for a model (detect, classify): one forward pass per group of
//! consecutive uploads whose pixels fit a budget, so that a batch of large photos never holds
//! more than one image's worth of pixels at the limit in memory (eight at the 100 MP limit would
//! be 2.4 GB of RGB), while a batch of phone photos still runs as one.

use std::ops::Range;

use image::RgbImage;

use crate::{ImageError, Limits, SourceFormat, decode, probe};

/// Decodes `inputs` in groups holding at most `limits.max_pixels` pixels together, runs `infer`
/// once per group on its decoded images (RGB as displayed) and `finish` on each image with its
/// source format and what `infer` made of it. One outcome per input, in order: `undecodable`
/// for an input that does not decode, `infer`'s error for every image of a group it failed on.
///
/// # Panics
/// When `infer` returns other than one value per image.
pub fn infer_within_pixel_budget<M, T, E: Clone>(
    inputs: &[impl AsRef<[u8]>],
    limits: &Limits,
    undecodable: impl Fn(ImageError) -> E,
    mut infer: impl FnMut(&[RgbImage]) -> Result<Vec<M>, E>,
    mut finish: impl FnMut(&RgbImage, SourceFormat, M) -> Result<T, E>,
) -> Vec<Result<T, E>> {
    let pixels = inputs.iter().map(|input| header_pixels(input.as_ref()));
    let mut outcomes = Vec::with_capacity(inputs.len());
    for group in groups_within(pixels, limits.max_pixels) {
        // Decoded images move into one batch for the forward pass (no copies: it is the
        // service's biggest memory cost); `formats` remembers which inputs failed.
        let mut images = Vec::with_capacity(group.len());
        let formats: Vec<Result<SourceFormat, E>> = inputs[group]
            .iter()
            .map(|input| {
                let image = decode(input.as_ref(), limits).map_err(&undecodable)?;
                let format = image.format();
                images.push(image.into_rgb());
                Ok(format)
            })
            .collect();
        let inferred = if images.is_empty() {
            Ok(Vec::new())
        } else {
            infer(&images)
        };
        match inferred {
            Ok(inferred) => {
                assert_eq!(inferred.len(), images.len(), "one inference per image");
                let mut made = images.iter().zip(inferred);
                outcomes.extend(formats.into_iter().map(|format| {
                    let format = format?;
                    let (image, inference) = made.next().expect("one inference per image");
                    finish(image, format, inference)
                }));
            }
            Err(error) => outcomes.extend(
                formats
                    .into_iter()
                    .map(|format| format.and_then(|_| Err(error.clone()))),
            ),
        }
    }
    outcomes
}

/// The pixels an input decodes to, read from its header alone; 0 for one that will not decode
/// (its error comes from decoding, which costs no pixels).
fn header_pixels(input: &[u8]) -> u64 {
    probe(input).map_or(0, |info| u64::from(info.width) * u64::from(info.height))
}

/// Splits a batch into runs of consecutive inputs whose pixels add up to at most `budget`; an
/// input over the budget on its own gets a group of its own.
fn groups_within(pixels: impl IntoIterator<Item = u64>, budget: u64) -> Vec<Range<usize>> {
    let mut groups: Vec<Range<usize>> = Vec::new();
    let mut group_pixels = 0u64;
    for (index, pixels) in pixels.into_iter().enumerate() {
        match groups.last_mut() {
            Some(group) if group_pixels.saturating_add(pixels) <= budget => {
                group.end = index + 1;
                group_pixels += pixels;
            }
            _ => {
                groups.push(index..index + 1);
                group_pixels = pixels;
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_images::*;

    #[test]
    fn a_batch_is_split_where_its_pixels_would_exceed_the_budget() {
        let megapixels = |sizes: &[u64]| sizes.iter().map(|mp| mp * 1_000_000).collect::<Vec<_>>();
        let budget = 100_000_000;
        // Eight photos at the limit: one at a time.
        assert_eq!(
            groups_within(megapixels(&[100; 8]), budget),
            (0..8).map(|i| i..i + 1).collect::<Vec<_>>()
        );
        // Eight 12 MP phone photos: one forward pass.
        assert_eq!(groups_within(megapixels(&[12; 8]), budget), vec![0..8]);
        assert_eq!(
            groups_within(megapixels(&[40, 40, 30, 12, 100, 0, 1]), budget),
            vec![0..2, 2..4, 4..6, 6..7]
        );
        // Inputs that will not decode (0 pixels) ride along with their neighbours.
        assert_eq!(groups_within(megapixels(&[0, 100, 0]), budget), vec![0..3]);
        assert_eq!(groups_within(megapixels(&[101]), budget), vec![0..1]);
        assert!(groups_within(Vec::new(), budget).is_empty());
    }

    #[test]
    fn each_input_gets_its_outcome_in_order_and_groups_respect_the_budget() {
        let png = |width, height| {
            encode(
                &image::DynamicImage::ImageRgb8(synthetic_photo(width, height)),
                image::ImageFormat::Png,
            )
        };
        let (small, large) = (png(10, 10), png(20, 10));
        let inputs = [small.clone(), b"not an image".to_vec(), large, small];
        // Room for 300 pixels: the 100-pixel image, the broken one, then the 200-pixel one
        // together; the last on its own.
        let limits = Limits {
            max_bytes: 1 << 20,
            max_pixels: 300,
        };
        let mut groups = Vec::new();
        let outcomes = infer_within_pixel_budget(
            &inputs,
            &limits,
            |error| error.code().to_owned(),
            |images| {
                groups.push(images.iter().map(|i| i.width()).collect::<Vec<_>>());
                Ok(images.iter().map(|i| i.width() * i.height()).collect())
            },
            |image, format, pixels| Ok((image.width(), format, pixels)),
        );
        assert_eq!(groups, vec![vec![10, 20], vec![10]]);
        assert_eq!(outcomes[0], Ok((10, SourceFormat::Png, 100)));
        assert!(outcomes[1].is_err());
        assert_eq!(outcomes[2], Ok((20, SourceFormat::Png, 200)));
        assert_eq!(outcomes[3], Ok((10, SourceFormat::Png, 100)));

        // A failed forward pass fails its group's images; undecodable inputs keep their reason.
        let outcomes: Vec<Result<(), String>> = infer_within_pixel_budget(
            &inputs[..2],
            &Limits::default(),
            |error| error.code().to_owned(),
            |_| Err::<Vec<()>, _>("model_failed".to_owned()),
            |_, _, ()| Ok(()),
        );
        assert_eq!(outcomes[0], Err("model_failed".to_owned()));
        assert_ne!(outcomes[1], Err("model_failed".to_owned()));
        assert!(outcomes[1].is_err());
    }
}
