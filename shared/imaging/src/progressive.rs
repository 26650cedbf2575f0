//! A progressive JPEG decoded at 1/8 scale needs little more than its DC coefficients: the 1x1
//! inverse DCT of a block is its DC term. Most of such a file's decoding time goes to the AC
//! scans, so nearly all of them are dropped before decoding.

use super::jpeg::{Jpeg, ScanHeader, segments};

const SOS: u8 = 0xDA;

/// The lowest AC coefficients (zig-zag 1 to 9): libjpeg-turbo smooths blocks from their
/// neighbours' DC terms where these are missing, and alters the DC terms themselves (blurring
/// the picture) where none of them arrived for a component.
const LOW_AC: std::ops::RangeInclusive<u8> = 1..=9;

/// The JPEG without its AC scans, except for each component the first that carries any of its
/// [`LOW_AC`] coefficients. With those, libjpeg-turbo keeps every DC term as coded, and a
/// subsampled component, which it scales by a 2x2 inverse DCT (its three lowest AC terms)
/// rather than upsampling, keeps what it needs of them.
pub(super) fn without_ac_scans(jpeg: &Jpeg<'_>) -> Vec<u8> {
    let bytes = jpeg.bytes();
    let mut kept = Vec::with_capacity(bytes.len() / 4);
    let mut components_with_low_ac = Vec::new();
    // Parsing the file walked these very segments without an error.
    for segment in segments(bytes).map_while(Result::ok) {
        if segment.marker == SOS {
            let scan = ScanHeader::parse(&bytes[segment.payload.clone()])
                .expect("parsing the file read every scan header");
            let (start, end) = (*scan.spectral.start(), *scan.spectral.end());
            if start > 0 {
                // AC scans have one component each.
                let carries_low_ac = start <= *LOW_AC.end() && end >= *LOW_AC.start();
                let needed = carries_low_ac
                    && scan
                        .components
                        .iter()
                        .any(|id| !components_with_low_ac.contains(id));
                if !needed {
                    continue;
                }
                components_with_low_ac.extend_from_slice(&scan.components);
            }
        }
        kept.extend_from_slice(&bytes[segment.bytes]);
    }
    kept
}
