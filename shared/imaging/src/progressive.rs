//! A progressive JPEG decoded at 1/8 scale needs only its DC coefficients: the 1x1 inverse DCT
//! of a block is its DC term. Most of such a file's decoding time goes to the AC scans, so they
//! are dropped before decoding.

/// The JPEG with every scan that carries only AC coefficients (spectral start above 0) removed,
/// or `None` when its marker structure cannot be followed (the decoder then sees the original
/// bytes and reports what is wrong with them).
pub(super) fn without_ac_scans(jpeg: &[u8]) -> Option<Vec<u8>> {
    const SOI: [u8; 2] = [0xFF, 0xD8];
    const EOI: u8 = 0xD9;
    const SOS: u8 = 0xDA;

    if !jpeg.starts_with(&SOI) {
        return None;
    }
    let mut kept = Vec::with_capacity(jpeg.len() / 4);
    kept.extend_from_slice(&SOI);
    let mut position = SOI.len();
    loop {
        if *jpeg.get(position)? != 0xFF {
            return None;
        }
        // Any number of 0xFF may pad before a marker.
        let mut marker_at = position + 1;
        while *jpeg.get(marker_at)? == 0xFF {
            marker_at += 1;
        }
        let marker = jpeg[marker_at];
        if marker == EOI {
            break;
        }
        let length = usize::from(u16::from_be_bytes([
            *jpeg.get(marker_at + 1)?,
            *jpeg.get(marker_at + 2)?,
        ]));
        let header_end = marker_at.checked_add(1 + length)?;
        let header = jpeg.get(marker_at - 1..header_end)?;
        if marker != SOS {
            kept.extend_from_slice(header);
            position = header_end;
            continue;
        }
        // SOS: FF DA, length, component count, two bytes per component, then spectral start.
        let components = usize::from(*header.get(4)?);
        let spectral_start = *header.get(5 + 2 * components)?;
        let data_end = entropy_coded_end(jpeg, header_end)?;
        if spectral_start == 0 {
            kept.extend_from_slice(jpeg.get(marker_at - 1..data_end)?);
        }
        position = data_end;
    }
    kept.extend_from_slice(&[0xFF, EOI]);
    Some(kept)
}

/// Where the entropy-coded data starting at `start` ends: at the first marker that is neither a
/// stuffed zero (FF 00) nor a restart marker (FF D0..D7), which belong to the data.
fn entropy_coded_end(jpeg: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    loop {
        at += jpeg.get(at..)?.iter().position(|&b| b == 0xFF)?;
        match *jpeg.get(at + 1)? {
            0x00 | 0xD0..=0xD7 | 0xFF => at += 1,
            _ => return Some(at),
        }
    }
}
