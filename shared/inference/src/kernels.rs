//! The CPU kernels Prism's networks (YOLOv8n, EfficientNet-Lite0) are built from, on plain `f32`
//! slices. One image's activations are a [`FeatureMap`]: `channels` planes of `height * width`
//! values (NCHW, one image at a time; the networks run the images of a batch in parallel).
//!
//! - [`Conv2d`]: a convolution as tiled GEMMs with the bias and activation (SiLU, ReLU6 or none)
//!   fused in; padding centred (`kernel / 2`, PyTorch's) or TensorFlow's "SAME" ([`Padding`]).
//! - [`max_pool_same`], [`FeatureMap::concat`], [`FeatureMap::upsample2`].
//!
//! EfficientNet-Lite0's 1x1 and depthwise convolutions run channels-last instead
//! ([`crate::channels_last`]).
//!
//! Why own kernels instead of candle's ops (measured on YOLOv8n): profiling the candle port
//! (perf, 2 cores, batch 1, 360 ms/image) showed about half the time in candle's im2col copy
//! (`Producer::fold_with`), about 10% in gemm (the AVX2 micro-kernel: candle does not enable
//! gemm's AVX-512 one), 10% in scalar `expf` for SiLU, 10% in its thread-pool barriers, and the
//! rest in page faults and memset/memcpy of freshly allocated tensors for every op (padding, cat,
//! narrow, residual add).
//! Here a convolution is one GEMM, `weights [out, in * k * k] x columns [in * k * k, pixels]`,
//! done tile by tile (a band of output rows at a time, both cores taking tiles):
//! - 1x1 convolutions (most of the network) read the input planes directly, no im2col;
//! - 3x3 ones gather their columns into a small per-thread buffer that stays in L2 and is reused
//!   across calls;
//! - bias and SiLU are applied to each tile right after its GEMM, while it is still in cache,
//!   with a vectorised `exp`.
//!
//! After (perf, same benchmark, about 50 ms/image at batch 1): gemm's AVX-512 micro-kernels
//! about 45% and its packing 5%, im2col about 17% (the stride-2 gathers and the stride-1 shifted
//! copies), the bias + SiLU epilogue 5%, page faults and memset of new maps about 6%, the rest
//! thread wake-ups, letterbox and decoding.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

/// The size of one image's activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Shape {
    pub fn plane(&self) -> usize {
        self.height * self.width
    }

    pub fn count(&self) -> usize {
        self.channels * self.plane()
    }
}

/// One image's activations, channel planes one after another.
#[derive(Debug, Clone)]
pub struct FeatureMap {
    pub shape: Shape,
    pub values: Vec<f32>,
}

impl FeatureMap {
    pub fn new(shape: Shape, values: Vec<f32>) -> Self {
        assert_eq!(values.len(), shape.count(), "values do not fill {shape:?}");
        Self { shape, values }
    }

    pub fn zeros(shape: Shape) -> Self {
        Self::new(shape, vec![0.0; shape.count()])
    }

    /// Stacks the channels of maps of the same height and width.
    pub fn concat(parts: &[&FeatureMap]) -> FeatureMap {
        let first = parts[0].shape;
        assert!(
            parts
                .iter()
                .all(|part| (part.shape.height, part.shape.width) == (first.height, first.width)),
            "concatenated maps differ in size"
        );
        let shape = Shape {
            channels: parts.iter().map(|part| part.shape.channels).sum(),
            ..first
        };
        let mut values = Vec::with_capacity(shape.count());
        for part in parts {
            values.extend_from_slice(&part.values);
        }
        FeatureMap::new(shape, values)
    }

    /// Nearest-neighbour upsampling by 2 in both directions.
    pub fn upsample2(&self) -> FeatureMap {
        let Shape { height, width, .. } = self.shape;
        let shape = Shape {
            height: 2 * height,
            width: 2 * width,
            ..self.shape
        };
        let mut values = Vec::with_capacity(shape.count());
        for row in self.values.chunks_exact(width) {
            let doubled = values.len();
            values.extend(row.iter().flat_map(|&value| [value, value]));
            values.extend_from_within(doubled..);
        }
        FeatureMap::new(shape, values)
    }
}

/// Stride-1 max-pool over a `kernel x kernel` window keeping the size. Positions outside the
/// map are left out of the window, as PyTorch's -inf padding does (zero padding would beat the
/// negative values SiLU can give at the border).
pub fn max_pool_same(input: &[f32], shape: Shape, kernel: usize, output: &mut [f32]) {
    assert_eq!(input.len(), shape.count());
    assert_eq!(output.len(), shape.count());
    let Shape { height, width, .. } = shape;
    let reach = kernel / 2;
    let window =
        |center: usize, size: usize| center.saturating_sub(reach)..(center + reach + 1).min(size);
    let mut row_max = vec![0.0; shape.plane()];
    for (plane, pooled) in input
        .chunks_exact(shape.plane())
        .zip(output.chunks_exact_mut(shape.plane()))
    {
        for (row, maxima) in plane
            .chunks_exact(width)
            .zip(row_max.chunks_exact_mut(width))
        {
            for (x, maximum) in maxima.iter_mut().enumerate() {
                *maximum = row[window(x, width)]
                    .iter()
                    .copied()
                    .fold(f32::MIN, f32::max);
            }
        }
        for y in 0..height {
            let target = &mut pooled[y * width..][..width];
            target.fill(f32::MIN);
            for source in window(y, height) {
                for (value, maximum) in target.iter_mut().zip(&row_max[source * width..][..width]) {
                    *value = value.max(*maximum);
                }
            }
        }
    }
}

/// What follows a convolution's bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// `min(max(x, 0), 6)` (MobileNet, EfficientNet-Lite).
    Relu6,
    Identity,
}

impl Activation {
    /// The activation of each value, in place.
    #[inline(always)]
    pub(crate) fn activate(self, values: &mut [f32]) {
        match self {
            Activation::Silu => values.iter_mut().for_each(|value| *value = silu(*value)),
            Activation::Relu6 => values
                .iter_mut()
                .for_each(|value| *value = value.clamp(0.0, 6.0)),
            Activation::Identity => {}
        }
    }

    /// `value = activation(value + bias)` over a tile still in cache.
    fn apply(self, values: &mut [f32], bias: f32) {
        match self {
            Activation::Silu => add_bias_silu(values, bias),
            Activation::Relu6 => values
                .iter_mut()
                .for_each(|value| *value = (*value + bias).clamp(0.0, 6.0)),
            Activation::Identity => values.iter_mut().for_each(|value| *value += bias),
        }
    }
}

/// Where a convolution's zero padding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// `kernel / 2` zeros on every side (PyTorch's `padding=k // 2`, Ultralytics'): the output is
    /// `(extent - 1) / stride + 1` for odd kernels.
    #[default]
    Centered,
    /// TensorFlow's "SAME" (ONNX `SAME_UPPER`): the output is `ceil(extent / stride)`, padded by
    /// `max((output - 1) * stride + kernel - extent, 0)` zeros in all, the odd one after. For a
    /// stride-2 3x3 convolution of an even extent that is none before and one after.
    TfSame,
}

impl Padding {
    /// Output extent and the zeros before the input along one axis.
    pub(crate) fn axis(self, extent: usize, kernel: usize, stride: usize) -> (usize, usize) {
        match self {
            Padding::Centered => {
                let before = kernel / 2;
                ((extent + 2 * before - kernel) / stride + 1, before)
            }
            Padding::TfSame => {
                let output = extent.div_ceil(stride);
                let total = ((output - 1) * stride + kernel).saturating_sub(extent);
                (output, total / 2)
            }
        }
    }
}

/// Output positions `first..end` along one axis whose input position `out * stride + tap - pad`
/// lies inside `0..extent` (an empty range when none does).
pub(crate) fn inside(
    extent: usize,
    out_extent: usize,
    tap: usize,
    stride: usize,
    pad: usize,
) -> (usize, usize) {
    let first = pad.saturating_sub(tap).div_ceil(stride).min(out_extent);
    let end = (extent + pad)
        .saturating_sub(tap)
        .div_ceil(stride)
        .clamp(first, out_extent);
    (first, end)
}

/// A convolution, then bias and the activation; padding [`Padding::Centered`] unless
/// [`Conv2d::with_padding`] says otherwise.
pub struct Conv2d {
    /// `[out_channels][in_channels * kernel * kernel]`: the ONNX layout, and the GEMM's left side.
    weight: Vec<f32>,
    bias: Vec<f32>,
    in_channels: usize,
    kernel: usize,
    stride: usize,
    padding: Padding,
    activation: Activation,
}

/// Values of im2col columns per tile: 512 KiB, so a tile's columns stay in L2 through its GEMM
/// (and gemm repacks the weights for fewer tiles).
const TILE_VALUES: usize = 128 * 1024;
/// Fewer output pixels than this per tile would leave gemm's micro-kernel mostly idle.
const MIN_TILE_PIXELS: usize = 256;
/// Tiles per convolution at least (when there are enough rows), so both cores get a share.
const MIN_TILES: usize = 4;

thread_local! {
    /// Per-thread im2col buffer, grown to the largest tile and reused by every convolution.
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The output buffer shared by the tiles of one convolution, each writing only its own pixels.
#[derive(Clone, Copy)]
pub(crate) struct TileOutput(pub(crate) *mut f32);
// SAFETY: tiles write disjoint pixel ranges of the buffer, which outlives the parallel loop.
unsafe impl Send for TileOutput {}
unsafe impl Sync for TileOutput {}

impl TileOutput {
    /// A method, so closures capture the whole (`Send`) wrapper rather than its pointer field.
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

impl Conv2d {
    /// `weight` is `[out_channels, in_channels, kernel, kernel]` flattened, `bias` has one value
    /// per output channel.
    pub fn new(
        weight: Vec<f32>,
        bias: Vec<f32>,
        in_channels: usize,
        kernel: usize,
        stride: usize,
        activation: Activation,
    ) -> Self {
        assert_eq!(
            weight.len(),
            bias.len() * in_channels * kernel * kernel,
            "weight shape"
        );
        Self {
            weight,
            bias,
            in_channels,
            kernel,
            stride,
            padding: Padding::Centered,
            activation,
        }
    }

    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// One convolution computing both `self`'s and `other`'s output channels (in that order) from
    /// the same input: one im2col and one larger GEMM instead of two.
    pub fn stack(mut self, other: Conv2d) -> Conv2d {
        assert_eq!(
            (
                self.in_channels,
                self.kernel,
                self.stride,
                self.padding,
                self.activation
            ),
            (
                other.in_channels,
                other.kernel,
                other.stride,
                other.padding,
                other.activation
            ),
            "only convolutions of the same input can be stacked"
        );
        self.weight.extend(other.weight);
        self.bias.extend(other.bias);
        self
    }

    pub fn out_channels(&self) -> usize {
        self.bias.len()
    }

    pub fn output_shape(&self, input: Shape) -> Shape {
        let size = |extent: usize| self.padding.axis(extent, self.kernel, self.stride).0;
        Shape {
            channels: self.out_channels(),
            height: size(input.height),
            width: size(input.width),
        }
    }

    /// Zeros before the input rows and columns.
    fn pads(&self, input: Shape) -> (usize, usize) {
        let pad = |extent: usize| self.padding.axis(extent, self.kernel, self.stride).1;
        (pad(input.height), pad(input.width))
    }

    pub fn forward(&self, input: &FeatureMap) -> FeatureMap {
        let shape = self.output_shape(input.shape);
        // Not zeroed first: filling a fresh map would be a serial pass as long as the output.
        let mut values = Vec::with_capacity(shape.count());
        self.convolve(
            &input.values,
            input.shape,
            &mut values.spare_capacity_mut()[..shape.count()],
        );
        // SAFETY: `convolve` wrote every value.
        unsafe { values.set_len(shape.count()) };
        FeatureMap::new(shape, values)
    }

    /// Convolves one image of `shape` into `output` (`output_shape(shape).count()` values).
    pub fn run(&self, input: &[f32], shape: Shape, output: &mut [f32]) {
        // SAFETY: same layout; `convolve` only writes valid floats through it.
        let output = unsafe { &mut *(output as *mut [f32] as *mut [MaybeUninit<f32>]) };
        self.convolve(input, shape, output);
    }

    /// Writes every value of `output`: gemm stores each output pixel without reading it first.
    fn convolve(&self, input: &[f32], shape: Shape, output: &mut [MaybeUninit<f32>]) {
        assert_eq!(shape.channels, self.in_channels, "input channels");
        assert_eq!(input.len(), shape.count(), "input size");
        let out = self.output_shape(shape);
        assert_eq!(output.len(), out.count(), "output size");
        let depth = self.in_channels * self.kernel * self.kernel;
        let tile_pixels = (TILE_VALUES / depth).max(MIN_TILE_PIXELS);
        let rows_per_tile =
            (tile_pixels / out.width).clamp(1, out.height.div_ceil(MIN_TILES).max(1));
        let direct = self.kernel == 1 && self.stride == 1;
        let destination = TileOutput(output.as_mut_ptr().cast::<f32>());

        (0..out.height.div_ceil(rows_per_tile))
            .into_par_iter()
            .for_each(|tile| {
                let first_row = tile * rows_per_tile;
                let rows = rows_per_tile.min(out.height - first_row);
                let first = first_row * out.width;
                let pixels = rows * out.width;
                COLUMNS.with_borrow_mut(|columns| {
                    let (rhs, rhs_row_stride) = if direct {
                        (&input[first..], shape.plane())
                    } else {
                        columns.resize(depth * pixels, 0.0);
                        self.im2col(
                            input,
                            shape,
                            first_row,
                            rows,
                            &mut columns[..depth * pixels],
                        );
                        (&columns[..], pixels)
                    };
                    // SAFETY: the operands are [out, depth] (weight), [depth, pixels] (rhs, rows
                    // `rhs_row_stride` apart) and [out, pixels] (this tile's pixels of each output
                    // plane), all inside their buffers; no other tile writes these pixels.
                    unsafe {
                        gemm::gemm(
                            out.channels,
                            pixels,
                            depth,
                            destination.at(first),
                            1,
                            out.plane() as isize,
                            false,
                            self.weight.as_ptr(),
                            1,
                            depth as isize,
                            rhs.as_ptr(),
                            1,
                            rhs_row_stride as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                });
                for (channel, &bias) in self.bias.iter().enumerate() {
                    // SAFETY: as above, this tile's pixels of one output plane.
                    let values = unsafe {
                        std::slice::from_raw_parts_mut(
                            destination.at(channel * out.plane() + first),
                            pixels,
                        )
                    };
                    self.activation.apply(values, bias);
                }
            });
    }

    /// Gathers the GEMM's right side for output rows `first_row..first_row + rows`:
    /// `columns[(channel, ky, kx)][pixel]` is the input value under kernel tap (ky, kx) for that
    /// output pixel, 0 in the padding.
    fn im2col(
        &self,
        input: &[f32],
        shape: Shape,
        first_row: usize,
        rows: usize,
        columns: &mut [f32],
    ) {
        let Shape { height, width, .. } = shape;
        let (kernel, stride) = (self.kernel, self.stride);
        let (pad_top, pad_left) = self.pads(shape);
        let out_width = self.output_shape(shape).width;
        let pixels = rows * out_width;
        let mut taps = columns.chunks_exact_mut(pixels);
        for plane in input.chunks_exact(shape.plane()) {
            for ky in 0..kernel {
                for kx in 0..kernel {
                    let tap = taps.next().expect("one column row per tap");
                    if stride == 1 {
                        // Odd kernels: both paddings keep the size, so rows line up.
                        let first_y = (first_row + ky) as isize - pad_top as isize;
                        shifted_copy(plane, width, first_y, kx as isize - pad_left as isize, tap);
                        continue;
                    }
                    // Output x whose input x (x * stride + kx - pad_left) is inside the row.
                    let (first_x, end_x) = inside(width, out_width, kx, stride, pad_left);
                    for (row, target) in tap.chunks_exact_mut(out_width).enumerate() {
                        let y = ((first_row + row) * stride + ky).checked_sub(pad_top);
                        let Some(source) = y
                            .filter(|&y| y < height)
                            .map(|y| &plane[y * width..][..width])
                        else {
                            target.fill(0.0);
                            continue;
                        };
                        target[..first_x].fill(0.0);
                        target[end_x..].fill(0.0);
                        if first_x == end_x {
                            continue;
                        }
                        let source = &source[first_x * stride + kx - pad_left..];
                        for (value, &pixel) in target[first_x..end_x]
                            .iter_mut()
                            .zip(source.iter().step_by(stride))
                        {
                            *value = pixel;
                        }
                    }
                }
            }
        }
    }
}

/// One stride-1 im2col row: `target[(y, x)] = plane[(first_y + y, x + dx)]`, 0 outside the plane.
/// Output and input rows have the same width, so this is one copy of the plane shifted by
/// `first_y * width + dx` instead of a copy per row.
fn shifted_copy(plane: &[f32], width: usize, first_y: isize, dx: isize, target: &mut [f32]) {
    let shift = first_y * width as isize + dx;
    let len = target.len() as isize;
    let start = (-shift).clamp(0, len);
    let end = (plane.len() as isize - shift).clamp(start, len);
    target[..start as usize].fill(0.0);
    target[end as usize..].fill(0.0);
    if start < end {
        target[start as usize..end as usize]
            .copy_from_slice(&plane[(shift + start) as usize..(shift + end) as usize]);
    }
    // Zero what lies outside the plane: rows above or below it, and in the others the edge
    // columns that picked up the neighbouring row's end.
    for (row, target) in target.chunks_exact_mut(width).enumerate() {
        let y = first_y + row as isize;
        if y < 0 || y >= (plane.len() / width) as isize {
            target.fill(0.0);
        } else if dx < 0 {
            target[..dx.unsigned_abs()].fill(0.0);
        } else if dx > 0 {
            target[width - dx as usize..].fill(0.0);
        }
    }
}

/// `value = silu(value + bias)`, vectorised with the widest instructions the CPU has.
fn add_bias_silu(values: &mut [f32], bias: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature.
            return unsafe { add_bias_silu_avx512(values, bias) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features.
            return unsafe { add_bias_silu_avx2(values, bias) };
        }
    }
    add_bias_silu_portable(values, bias);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn add_bias_silu_avx512(values: &mut [f32], bias: f32) {
    add_bias_silu_portable(values, bias);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn add_bias_silu_avx2(values: &mut [f32], bias: f32) {
    add_bias_silu_portable(values, bias);
}

/// Written so the compiler vectorises it (no branches, no library calls); inlined into the
/// feature-specific copies above.
#[inline(always)]
fn add_bias_silu_portable(values: &mut [f32], bias: f32) {
    for value in values {
        *value = silu(*value + bias);
    }
}

/// `x * sigmoid(x)`, branch-free so loops over it vectorise.
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `e^x` within about 2 ulp, as a polynomial (Cephes' `expf`): `2^n * e^r` with
/// `n = round(x / ln 2)` and `|r| <= ln 2 / 2`. Inputs are clamped to where the result is a
/// normal float, which is all SiLU needs (`x / (1 + e^-x)` is then 0 or x to f32 precision).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so `n * LN2_HIGH` is exact.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    e_r * f32::from_bits(((n_bits + 127) << 23) as u32)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Direct definition of a padded convolution, to check the GEMM and depthwise versions
    /// against; `depthwise` gives each output channel only its own input channel.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reference_conv(
        weight: &[f32],
        bias: &[f32],
        input: &[f32],
        shape: Shape,
        kernel: usize,
        stride: usize,
        padding: Padding,
        depthwise: bool,
    ) -> Vec<f32> {
        // Written out independently of `Padding::axis`.
        let (out_height, out_width, pad_top, pad_left) = match padding {
            Padding::Centered => {
                let pad = kernel / 2;
                let size = |extent: usize| (extent + 2 * pad - kernel) / stride + 1;
                (size(shape.height), size(shape.width), pad, pad)
            }
            Padding::TfSame => {
                let size = |extent: usize| extent.div_ceil(stride);
                let pad = |extent: usize| {
                    let total = (size(extent) - 1) * stride + kernel;
                    total.saturating_sub(extent) / 2
                };
                (
                    size(shape.height),
                    size(shape.width),
                    pad(shape.height),
                    pad(shape.width),
                )
            }
        };
        let in_channels = if depthwise { 1 } else { shape.channels };
        let mut output = Vec::new();
        for (out_channel, bias) in bias.iter().enumerate() {
            for oy in 0..out_height {
                for ox in 0..out_width {
                    let mut sum = *bias;
                    for weight_channel in 0..in_channels {
                        let channel = if depthwise {
                            out_channel
                        } else {
                            weight_channel
                        };
                        for ky in 0..kernel {
                            for kx in 0..kernel {
                                let y = (oy * stride + ky) as isize - pad_top as isize;
                                let x = (ox * stride + kx) as isize - pad_left as isize;
                                if y < 0
                                    || x < 0
                                    || y >= shape.height as isize
                                    || x >= shape.width as isize
                                {
                                    continue;
                                }
                                let w = weight[((out_channel * in_channels + weight_channel)
                                    * kernel
                                    + ky)
                                    * kernel
                                    + kx];
                                sum += w * input[(channel * shape.height + y as usize)
                                    * shape.width
                                    + x as usize];
                            }
                        }
                    }
                    output.push(sum);
                }
            }
        }
        output
    }

    /// Deterministic values in -1..1.
    pub(crate) fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count as u32)
            .map(|i| {
                let hash = (i ^ seed)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(13)
                    .wrapping_mul(40_503);
                (hash % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    pub(crate) fn assert_close(case: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{case}");
        for (index, (got, want)) in got.iter().zip(want).enumerate() {
            assert!(
                (got - want).abs() < 1e-4,
                "{case} at {index}: {got} vs {want}"
            );
        }
    }

    /// Odd and even sizes and several tiles, so both paddings, strides and tile edges all show;
    /// and maps smaller than the kernel's reach.
    pub(crate) const SHAPES: [(usize, usize, usize); 4] =
        [(5, 37, 23), (3, 1, 2), (4, 14, 14), (2, 16, 9)];

    #[test]
    fn convolutions_match_the_definition() {
        for (channels, height, width) in SHAPES {
            let shape = Shape {
                channels,
                height,
                width,
            };
            let input = values(shape.count(), 1);
            for padding in [Padding::Centered, Padding::TfSame] {
                for (kernel, stride) in [(1, 1), (3, 1), (3, 2), (1, 2), (5, 2), (5, 1)] {
                    let out_channels = 7;
                    let weight = values(out_channels * shape.channels * kernel * kernel, 2);
                    let bias = values(out_channels, 3);
                    let conv = Conv2d::new(
                        weight.clone(),
                        bias.clone(),
                        shape.channels,
                        kernel,
                        stride,
                        Activation::Identity,
                    )
                    .with_padding(padding);
                    let output = conv.forward(&FeatureMap::new(shape, input.clone()));
                    let expected = reference_conv(
                        &weight, &bias, &input, shape, kernel, stride, padding, false,
                    );
                    let case = format!("{shape:?} k{kernel} s{stride} {padding:?}");
                    assert_close(&case, &output.values, &expected);
                }
            }
        }
    }

    #[test]
    fn tf_same_pads_after_when_odd() {
        // 224 -> 112 with a stride-2 3x3: one zero row and column after, none before.
        assert_eq!(Padding::TfSame.axis(224, 3, 2), (112, 0));
        // 56 -> 28 with a stride-2 5x5: three in all, one before and two after.
        assert_eq!(Padding::TfSame.axis(56, 5, 2), (28, 1));
        assert_eq!(Padding::TfSame.axis(7, 5, 1), (7, 2));
        assert_eq!(Padding::Centered.axis(224, 3, 2), (112, 1));
    }

    #[test]
    fn relu6_clamps_after_the_bias() {
        let shape = Shape {
            channels: 1,
            height: 1,
            width: 4,
        };
        let conv = Conv2d::new(vec![2.0], vec![0.5], 1, 1, 1, Activation::Relu6);
        let output = conv.forward(&FeatureMap::new(shape, vec![-1.0, 0.0, 1.0, 10.0]));
        assert_eq!(output.values, [0.0, 0.5, 2.5, 6.0]);
    }

    #[test]
    fn silu_matches_the_definition() {
        let mut inputs: Vec<f32> = (-2000..=2000).map(|i| i as f32 / 20.0).collect();
        inputs.extend([-1e30, -200.0, 200.0, 1e30]);
        let mut outputs = inputs.clone();
        add_bias_silu(&mut outputs, 0.5);
        for (x, got) in inputs.iter().zip(outputs) {
            let x = f64::from(x + 0.5);
            let want = x / (1.0 + (-x).exp());
            let error = (f64::from(got) - want).abs();
            assert!(
                error <= 1e-6 * want.abs().max(1.0),
                "silu({x}) = {got}, not {want}"
            );
        }
    }

    #[test]
    fn max_pool_leaves_the_border_out_of_the_window() {
        let shape = Shape {
            channels: 1,
            height: 3,
            width: 4,
        };
        // All negative: zero padding would give 0 at every border position.
        let input = [
            -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0, -10.0, -11.0, -12.0,
        ];
        let mut output = [0.0; 12];
        max_pool_same(&input, shape, 3, &mut output);
        assert_eq!(
            output,
            [
                -1.0, -1.0, -2.0, -3.0, -1.0, -1.0, -2.0, -3.0, -5.0, -5.0, -6.0, -7.0
            ]
        );
    }

    #[test]
    fn upsampling_repeats_each_value_in_a_2x2_block() {
        let map = FeatureMap::new(
            Shape {
                channels: 2,
                height: 1,
                width: 2,
            },
            vec![1.0, 2.0, 3.0, 4.0],
        );
        let up = map.upsample2();
        assert_eq!(
            up.shape,
            Shape {
                channels: 2,
                height: 2,
                width: 4
            }
        );
        assert_eq!(
            up.values,
            [
                1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0
            ]
        );
    }
}
