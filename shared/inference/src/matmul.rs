//! The GEMM under the channels-last convolutions: `pixels x depth` (a map's pixels, or their
//! gathered taps) times `depth x out_channels` (the weights), plus the bias, an optional
//! residual and the activation, written once per output value.
//!
//! Why not the `gemm` crate here (measured on EfficientNet-Lite0, 2 cores, batch 1): it packs
//! the right side for every call, and a 7x7 map's 1x1 convolution is a few dozen pixels times up
//! to 1.6 MB of weights, so packing cost about as much as multiplying; the epilogue (bias,
//! residual, ReLU6) was a second pass over the output. Here the weights are packed once, at
//! load, into panels of [`PANEL`] output channels, `[depth][PANEL]` each; the kernel keeps a
//! block of pixels times one panel in registers (12 x 2 AVX-512 vectors), broadcasts each input
//! value once per pixel and reads each panel row once per block, and finishes the sums in
//! registers.

use std::ops::Range;

use crate::kernels::Activation;
#[cfg(target_arch = "x86_64")]
use crate::simd::x86;
use crate::simd::{Portable, Vector};

/// Output channels per panel: two AVX-512 vectors, four AVX2 ones.
pub(crate) const PANEL: usize = 32;

/// A GEMM's right side, `[depth][out_channels]`, packed into panels of [`PANEL`] output
/// channels, each `[depth][PANEL]`; the last panel, and the bias, padded with zeros.
pub(crate) struct PackedWeights {
    panels: Vec<f32>,
    bias: Vec<f32>,
    depth: usize,
    out_channels: usize,
}

impl PackedWeights {
    /// `weight` is `[depth][out_channels]`, `bias` one value per output channel.
    pub(crate) fn new(weight: &[f32], bias: &[f32], depth: usize) -> Self {
        let out_channels = bias.len();
        assert_eq!(weight.len(), depth * out_channels, "weight shape");
        let count = out_channels.div_ceil(PANEL);
        let mut panels = vec![0.0; count * depth * PANEL];
        for (index, panel) in panels.chunks_exact_mut(depth * PANEL).enumerate() {
            let first = index * PANEL;
            let width = PANEL.min(out_channels - first);
            for (row, target) in panel.chunks_exact_mut(PANEL).enumerate() {
                target[..width].copy_from_slice(&weight[row * out_channels + first..][..width]);
            }
        }
        let mut padded = bias.to_vec();
        padded.resize(count * PANEL, 0.0);
        Self {
            panels,
            bias: padded,
            depth,
            out_channels,
        }
    }

    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    pub(crate) fn out_channels(&self) -> usize {
        self.out_channels
    }

    pub(crate) fn panel_count(&self) -> usize {
        self.out_channels.div_ceil(PANEL)
    }
}

/// One tile of the product: rows `lhs` (`depth` values each) times the panels `panels`, into
/// those panels' channels of `output`'s rows (`out_channels` values each), `residual` (the
/// output's shape) added before the activation.
///
/// # Safety
/// `output` points at `rows` rows of `out_channels` values, valid for writes of the channels of
/// `panels`, which nothing else reads or writes during the call.
pub(crate) unsafe fn multiply(
    lhs: &[f32],
    weights: &PackedWeights,
    panels: Range<usize>,
    residual: Option<&[f32]>,
    activation: Activation,
    output: *mut f32,
) {
    let depth = weights.depth;
    assert!(
        lhs.len().is_multiple_of(depth) && panels.end <= weights.panel_count(),
        "tile shape"
    );
    if let Some(residual) = residual {
        assert_eq!(residual.len(), lhs.len() / depth * weights.out_channels);
    }
    let tile = Tile {
        lhs,
        weights,
        residual,
        activation,
        output,
    };
    // SAFETY: the caller's promise about `output`, and the shapes asserted above.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return tile.run_avx512(panels);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return tile.run_avx2(panels);
            }
        }
        tile.run::<Portable, 8, 4>(panels)
    }
}

struct Tile<'a> {
    lhs: &'a [f32],
    weights: &'a PackedWeights,
    residual: Option<&'a [f32]>,
    activation: Activation,
    output: *mut f32,
}

impl Tile<'_> {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(&self, panels: Range<usize>) {
        // SAFETY: as `multiply`'s; the CPU has the feature.
        unsafe { self.run::<x86::Avx512, 2, 12>(panels) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, panels: Range<usize>) {
        // SAFETY: as `multiply`'s; the CPU has the features.
        unsafe { self.run::<x86::Avx2, 4, 2>(panels) }
    }

    /// Blocks of `ROWS` rows, then of 4 and of 1 for the last rows, times one panel of up to
    /// `VECTORS` vectors: the last panel only as many vectors as it has channels for.
    #[inline(always)]
    unsafe fn run<V: Vector, const VECTORS: usize, const ROWS: usize>(&self, panels: Range<usize>) {
        const { assert!(V::LANES * VECTORS == PANEL) };
        let rows = self.lhs.len() / self.weights.depth;
        for panel in panels {
            let width = PANEL.min(self.weights.out_channels - panel * PANEL);
            // SAFETY: rows of the tile, one of its panels.
            unsafe {
                // A narrow last panel: a single vector of channels, or two.
                match width.div_ceil(V::LANES) {
                    1 => self.panel::<V, 1, ROWS>(rows, panel),
                    2 => self.panel::<V, 2, ROWS>(rows, panel),
                    _ => self.panel::<V, VECTORS, ROWS>(rows, panel),
                }
            }
        }
    }

    /// All `rows` of the tile times the first `VECTORS` vectors of panel `panel`.
    #[inline(always)]
    unsafe fn panel<V: Vector, const VECTORS: usize, const ROWS: usize>(
        &self,
        rows: usize,
        panel: usize,
    ) {
        let mut first = 0;
        // SAFETY (each block): rows first.. of the tile, inside it.
        while rows - first >= ROWS {
            unsafe { self.block::<V, VECTORS, ROWS>(first, panel) };
            first += ROWS;
        }
        while rows - first >= 4 {
            unsafe { self.block::<V, VECTORS, 4>(first, panel) };
            first += 4;
        }
        while rows > first {
            unsafe { self.block::<V, VECTORS, 1>(first, panel) };
            first += 1;
        }
    }

    /// Rows `first..first + ROWS` times the first `VECTORS` vectors of panel `panel`: the sums
    /// in registers over the whole depth, then bias, residual and activation, then one store
    /// per value.
    #[inline(always)]
    unsafe fn block<V: Vector, const VECTORS: usize, const ROWS: usize>(
        &self,
        first: usize,
        panel: usize,
    ) {
        let depth = self.weights.depth;
        let weights = self.weights.panels[panel * depth * PANEL..][..depth * PANEL].as_ptr();
        let lhs = self.lhs[first * depth..][..ROWS * depth].as_ptr();
        // SAFETY (all loads): k < depth, row < ROWS and vector * LANES < PANEL, inside the
        // block and the panel.
        let mut sums = [[unsafe { V::splat(0.0) }; VECTORS]; ROWS];
        for k in 0..depth {
            let mut weight = [unsafe { V::splat(0.0) }; VECTORS];
            for (vector, value) in weight.iter_mut().enumerate() {
                *value = unsafe { V::load(weights.add(k * PANEL + vector * V::LANES)) };
            }
            for (row, sums) in sums.iter_mut().enumerate() {
                let input = unsafe { V::splat(*lhs.add(row * depth + k)) };
                for (sum, &weight) in sums.iter_mut().zip(&weight) {
                    *sum = unsafe { input.mul_add(weight, *sum) };
                }
            }
        }
        let out_channels = self.weights.out_channels;
        let channel = panel * PANEL;
        let width = PANEL.min(out_channels - channel);
        // SAFETY: the bias is padded to whole panels.
        let bias: [V; VECTORS] = std::array::from_fn(|vector| unsafe {
            V::load(self.weights.bias[channel + vector * V::LANES..].as_ptr())
        });
        // Rows of constant count, unrolled: `sums` stays in registers.
        for (row, sums) in sums.iter().enumerate() {
            let offset = (first + row) * out_channels + channel;
            if width == VECTORS * V::LANES {
                for (vector, (&sum, &bias)) in sums.iter().zip(&bias).enumerate() {
                    let at = offset + vector * V::LANES;
                    // SAFETY: whole vectors of this row's channels of the panel: inside the
                    // residual (its length asserted by `multiply`) and, by the caller's
                    // promise, ours to write in the output.
                    unsafe {
                        let mut sum = sum.add(bias);
                        if let Some(residual) = self.residual {
                            sum = sum.add(V::load(residual.as_ptr().add(at)));
                        }
                        sum.activate(self.activation).store(self.output.add(at));
                    }
                }
            } else {
                // The last panel, not a whole number of vectors wide: value by value.
                let mut values = [0.0f32; PANEL];
                for (vector, (&sum, &bias)) in sums.iter().zip(&bias).enumerate() {
                    // SAFETY: a whole vector inside `values`.
                    unsafe {
                        sum.add(bias)
                            .store(values[vector * V::LANES..].as_mut_ptr())
                    };
                }
                let values = &mut values[..width];
                if let Some(residual) = self.residual {
                    for (value, skip) in values.iter_mut().zip(&residual[offset..]) {
                        *value += skip;
                    }
                }
                self.activation.activate(values);
                // SAFETY: this row's channels of the panel, ours by the caller's promise.
                unsafe {
                    std::ptr::copy_nonoverlapping(values.as_ptr(), self.output.add(offset), width)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{assert_close, values};

    /// Every instruction set this CPU has gives the definition's result. 13 rows: blocks of 12,
    /// 4 and 1; 70 channels: two whole panels and one of 6, less than a vector.
    #[test]
    fn every_instruction_set_computes_the_product() {
        let (rows, depth, out_channels) = (13, 19, 70);
        let lhs = values(rows * depth, 21);
        let weight = values(depth * out_channels, 22);
        let bias = values(out_channels, 23);
        let residual = values(rows * out_channels, 24);
        let expected: Vec<f32> = (0..rows * out_channels)
            .map(|index| {
                let (row, channel) = (index / out_channels, index % out_channels);
                let sum: f32 = (0..depth)
                    .map(|k| lhs[row * depth + k] * weight[k * out_channels + channel])
                    .sum();
                (sum + bias[channel] + residual[index]).clamp(0.0, 6.0)
            })
            .collect();
        let weights = PackedWeights::new(&weight, &bias, depth);
        let panels = 0..weights.panel_count();
        let product = |run: &dyn Fn(&Tile<'_>)| {
            let mut output = vec![f32::NAN; rows * out_channels];
            run(&Tile {
                lhs: &lhs,
                weights: &weights,
                residual: Some(&residual),
                activation: Activation::Relu6,
                output: output.as_mut_ptr(),
            });
            output
        };
        // SAFETY (each): the tile's output is a whole `output`; only run where the CPU has the
        // instructions.
        let portable = product(&|tile| unsafe { tile.run::<Portable, 8, 4>(panels.clone()) });
        assert_close("portable", &portable, &expected);
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                let avx2 = product(&|tile| unsafe { tile.run_avx2(panels.clone()) });
                assert_close("avx2", &avx2, &expected);
            }
            if is_x86_feature_detected!("avx512f") {
                let avx512 = product(&|tile| unsafe { tile.run_avx512(panels.clone()) });
                assert_close("avx512", &avx512, &expected);
            }
        }
    }
}
