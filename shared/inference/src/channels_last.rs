//! Channels-last (NHWC) kernels, for networks made of 1x1 and depthwise convolutions
//! (EfficientNet-Lite0). A [`ChannelsLastMap`] keeps each pixel's channels together.
//!
//! Why a second layout (measured on EfficientNet-Lite0, 2 cores): in channel planes (NCHW) a
//! 1x1 convolution's GEMM is vectorised along the pixels, and the late 14x14 and 7x7 maps split
//! into tiles of a few dozen pixels leave most of gemm's 48- or 64-row micro-kernel empty; a
//! depthwise convolution walks every plane row by row, stride 2 as a gather. Channels-last:
//! - a 1x1 convolution is one GEMM straight over the map, `pixels x in` times `in x out`,
//!   vectorised along the output channels (multiples of 16 in these networks) whatever the map's
//!   size, and tiles of pixels split it between the cores;
//! - a depthwise convolution sums, for each output pixel, its taps' input pixels (all channels,
//!   contiguous) times the taps' filter values in registers, several vectors of channels at a
//!   time, then adds the bias, applies the activation and stores the pixel once;
//! - bias, activation and a residual are applied to the GEMM's sums in registers
//!   ([`crate::matmul`]).
//!
//! Every kernel writes its whole output into a map the caller owns ([`ChannelsLastConv::run`],
//! [`ChannelsLastDepthwise::run`]): a network reuses a few maps for all its layers, so no layer
//! allocates, zeroes or page-faults in a fresh buffer (that was a tenth of the time at batch 1).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::kernels::{Activation, Padding, Shape, TileOutput};
use crate::matmul::{self, PackedWeights};
#[cfg(target_arch = "x86_64")]
use crate::simd::x86;
use crate::simd::{Portable, Scalar, Vector};

/// One image's activations, pixel after pixel in rows, each pixel's `channels` values together.
/// A map reused for layers of different sizes keeps the largest buffer it has needed.
#[derive(Debug, Clone, Default)]
pub struct ChannelsLastMap {
    shape: Shape,
    /// At least `shape.count()` values; those past it are left over from a larger layer.
    values: Vec<f32>,
}

impl ChannelsLastMap {
    pub fn new(shape: Shape, values: Vec<f32>) -> Self {
        assert_eq!(values.len(), shape.count(), "values do not fill {shape:?}");
        Self { shape, values }
    }

    /// The same activations from channel planes (NCHW, as images are preprocessed).
    pub fn from_planes(planes: &[f32], shape: Shape) -> Self {
        let mut map = Self::default();
        map.load_planes(planes, shape);
        map
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub fn values(&self) -> &[f32] {
        &self.values[..self.shape.count()]
    }

    /// Makes this map `shape`'s and gives its values to overwrite, growing the buffer only when
    /// it is too small.
    fn reshape(&mut self, shape: Shape) -> &mut [f32] {
        let count = shape.count();
        if self.values.len() < count {
            self.values.resize(count, 0.0);
        }
        self.shape = shape;
        &mut self.values[..count]
    }

    /// Overwrites this map with channel planes (NCHW) of `shape`.
    pub fn load_planes(&mut self, planes: &[f32], shape: Shape) {
        assert_eq!(planes.len(), shape.count(), "planes do not fill {shape:?}");
        let plane = shape.plane();
        for (pixel, values) in self
            .reshape(shape)
            .chunks_exact_mut(shape.channels)
            .enumerate()
        {
            for (channel, value) in values.iter_mut().enumerate() {
                *value = planes[channel * plane + pixel];
            }
        }
    }

    /// The mean of each channel over all pixels (global average pooling).
    pub fn channel_means(&self) -> Vec<f32> {
        let mut sums = vec![0.0; self.shape.channels];
        for pixel in self.values().chunks_exact(self.shape.channels) {
            sums.iter_mut()
                .zip(pixel)
                .for_each(|(sum, value)| *sum += value);
        }
        let pixels = self.shape.plane() as f32;
        sums.iter_mut().for_each(|sum| *sum /= pixels);
        sums
    }
}

/// A convolution on channels-last maps as a GEMM with the bias, an optional residual and the
/// activation fused in ([`crate::matmul`]). 1x1 stride-1 convolutions read the map directly;
/// others gather each output pixel's taps (im2col) into a per-thread buffer, one tile at a time.
pub struct ChannelsLastConv {
    /// The GEMM's right side: one row per value of a pixel's gathered taps,
    /// `[kernel][kernel][in_channels]`, times the output channels.
    weights: PackedWeights,
    in_channels: usize,
    kernel: usize,
    stride: usize,
    padding: Padding,
    activation: Activation,
}

/// GEMM left-side values per tile (a tile's gathered taps or input pixels): 256 KiB, in L2.
const TILE_VALUES: usize = 64 * 1024;
/// Pieces of work per convolution at least, per thread, so a core that was busy elsewhere can
/// catch up.
const TASKS_PER_THREAD: usize = 2;
/// Pixels per tile at least: the kernel's blocks are 6 pixels.
const MIN_TILE_PIXELS: usize = 12;

thread_local! {
    /// Per-thread im2col buffer, grown to the largest tile and reused by every convolution.
    static GATHERED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl ChannelsLastConv {
    /// `weight` in the ONNX layout `[out_channels, in_channels, kernel, kernel]` flattened, `bias`
    /// one value per output channel.
    pub fn new(
        weight: &[f32],
        bias: Vec<f32>,
        in_channels: usize,
        kernel: usize,
        stride: usize,
        padding: Padding,
        activation: Activation,
    ) -> Self {
        let out_channels = bias.len();
        assert_eq!(
            weight.len(),
            out_channels * in_channels * kernel * kernel,
            "weight shape"
        );
        assert!(
            kernel > 0 && stride > 0,
            "kernel and stride must be positive"
        );
        let taps = kernel * kernel;
        let mut transposed = vec![0.0; weight.len()];
        for (out_channel, filter) in weight.chunks_exact(in_channels * taps).enumerate() {
            for (in_channel, taps_of_channel) in filter.chunks_exact(taps).enumerate() {
                for (tap, &value) in taps_of_channel.iter().enumerate() {
                    transposed[(tap * in_channels + in_channel) * out_channels + out_channel] =
                        value;
                }
            }
        }
        Self {
            weights: PackedWeights::new(&transposed, &bias, in_channels * taps),
            in_channels,
            kernel,
            stride,
            padding,
            activation,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.weights.out_channels()
    }

    pub fn output_shape(&self, input: Shape) -> Shape {
        output_shape(
            input,
            self.out_channels(),
            self.kernel,
            self.stride,
            self.padding,
        )
    }

    /// [`run`](Self::run) into a new map.
    pub fn forward(&self, input: &ChannelsLastMap) -> ChannelsLastMap {
        let mut output = ChannelsLastMap::default();
        self.run(input, None, &mut output);
        output
    }

    /// Overwrites `output` with the convolution of `input`, `residual` (of the output's shape)
    /// added before the activation. The work is split into tiles of pixels or, when there are
    /// fewer pixels than output channels (the late 14x14 and 7x7 maps), into groups of output
    /// channels, so each core reads only its share of the weights.
    pub fn run(
        &self,
        input: &ChannelsLastMap,
        residual: Option<&ChannelsLastMap>,
        output: &mut ChannelsLastMap,
    ) {
        assert_eq!(input.shape.channels, self.in_channels, "input channels");
        let out = self.output_shape(input.shape);
        let residual = residual.map(|residual| {
            assert_eq!(residual.shape, out, "residual shape");
            residual.values()
        });
        let out_channels = out.channels;
        let depth = self.weights.depth();
        let pixels = out.plane();
        let tasks = TASKS_PER_THREAD * rayon::current_num_threads();
        // More output channels than pixels: the weights outweigh the pixels, so the cores split
        // the output channels (each reads its share of the weights) rather than the pixels
        // (each would read all of them).
        let tile_pixels = if out_channels > pixels {
            TILE_VALUES / depth
        } else {
            (TILE_VALUES / depth).min(pixels.div_ceil(tasks))
        }
        .max(MIN_TILE_PIXELS);
        let tiles = pixels.div_ceil(tile_pixels);
        let panels = self.weights.panel_count();
        // Too few tiles for every core: a task per tile and panel, for rayon to balance.
        let panels_per_group = if tiles >= tasks { panels } else { 1 };
        let groups = panels.div_ceil(panels_per_group);
        let direct = self.kernel == 1 && self.stride == 1;
        let input_values = input.values();
        let destination = TileOutput(output.reshape(out).as_mut_ptr());

        (0..tiles * groups).into_par_iter().for_each(|task| {
            let (tile, group) = (task / groups, task % groups);
            let first = tile * tile_pixels;
            let count = tile_pixels.min(pixels - first);
            let group_panels =
                group * panels_per_group..((group + 1) * panels_per_group).min(panels);
            GATHERED.with_borrow_mut(|gathered| {
                let lhs = if direct {
                    &input_values[first * depth..][..count * depth]
                } else {
                    gathered.resize(count * depth, 0.0);
                    self.im2col(input, first, &mut gathered[..count * depth]);
                    &gathered[..count * depth]
                };
                let residual =
                    residual.map(|values| &values[first * out_channels..][..count * out_channels]);
                // SAFETY: this task alone writes these pixels' channels of these panels, inside
                // the output map, which outlives the loop.
                unsafe {
                    matmul::multiply(
                        lhs,
                        &self.weights,
                        group_panels,
                        residual,
                        self.activation,
                        destination.at(first * out_channels),
                    );
                }
            });
        });
    }

    /// Gathers the GEMM's left side for output pixels `first..first + rows`, where `gathered`
    /// has `rows` rows: each output pixel's taps `(ky, kx)` one after another, each the input
    /// pixel's channels under that tap, zeros in the padding. A filter row's taps over the
    /// input are one contiguous run of pixels, copied at once.
    fn im2col(&self, input: &ChannelsLastMap, first: usize, gathered: &mut [f32]) {
        let shape = input.shape;
        let values = input.values();
        let (kernel, stride, channels) = (self.kernel, self.stride, self.in_channels);
        let out = self.output_shape(shape);
        let pad_top = self.padding.axis(shape.height, kernel, stride).1;
        let pad_left = self.padding.axis(shape.width, kernel, stride).1;
        let run = kernel * channels;
        let (mut oy, mut ox) = (first / out.width, first % out.width);
        for row in gathered.chunks_exact_mut(kernel * run) {
            // The taps kx inside the input row: first_kx..end_kx.
            let left = ox * stride;
            let first_kx = pad_left.saturating_sub(left).min(kernel);
            let end_kx = (shape.width + pad_left)
                .saturating_sub(left)
                .clamp(first_kx, kernel);
            for (ky, taps) in row.chunks_exact_mut(run).enumerate() {
                let y = (oy * stride + ky)
                    .checked_sub(pad_top)
                    .filter(|&y| y < shape.height);
                let Some(y) = y.filter(|_| first_kx < end_kx) else {
                    taps.fill(0.0);
                    continue;
                };
                let x = left + first_kx - pad_left;
                taps[..first_kx * channels].fill(0.0);
                copy_short(
                    &mut taps[first_kx * channels..end_kx * channels],
                    &values[(y * shape.width + x) * channels..][..(end_kx - first_kx) * channels],
                );
                taps[end_kx * channels..].fill(0.0);
            }
            ox += 1;
            if ox == out.width {
                (oy, ox) = (oy + 1, 0);
            }
        }
    }
}

/// `target.copy_from_slice(source)` for the short runs of im2col (a stem's 3x3 taps of 3
/// channels are 9 values): whole vectors of 8, the last one overlapping, instead of a call to
/// `memcpy` per run.
fn copy_short(target: &mut [f32], source: &[f32]) {
    const VECTOR: usize = 8;
    let len = source.len();
    if len < VECTOR {
        target.copy_from_slice(source);
        return;
    }
    let mut copy = |at: usize| {
        let values: [f32; VECTOR] = source[at..at + VECTOR].try_into().expect("a vector");
        target[at..at + VECTOR].copy_from_slice(&values);
    };
    (0..len - VECTOR).step_by(VECTOR).for_each(&mut copy);
    copy(len - VECTOR);
}

/// A depthwise convolution on channels-last maps: every channel convolved with its own
/// `kernel x kernel` filter (ONNX `Conv` with `group = channels`), then bias and the activation.
/// Output rows run in parallel.
pub struct ChannelsLastDepthwise {
    /// `[kernel][kernel][channels]`: a tap's values for all channels together, like a pixel's.
    weight: Vec<f32>,
    bias: Vec<f32>,
    kernel: usize,
    stride: usize,
    padding: Padding,
    activation: Activation,
}

impl ChannelsLastDepthwise {
    /// `weight` in the ONNX layout `[channels, 1, kernel, kernel]` flattened, `bias` one value
    /// per channel.
    pub fn new(
        weight: &[f32],
        bias: Vec<f32>,
        kernel: usize,
        stride: usize,
        padding: Padding,
        activation: Activation,
    ) -> Self {
        let channels = bias.len();
        assert_eq!(weight.len(), channels * kernel * kernel, "weight shape");
        assert!(
            kernel > 0 && stride > 0,
            "kernel and stride must be positive"
        );
        let taps = kernel * kernel;
        let mut transposed = vec![0.0; weight.len()];
        for (channel, filter) in weight.chunks_exact(taps).enumerate() {
            for (tap, &value) in filter.iter().enumerate() {
                transposed[tap * channels + channel] = value;
            }
        }
        Self {
            weight: transposed,
            bias,
            kernel,
            stride,
            padding,
            activation,
        }
    }

    pub fn channels(&self) -> usize {
        self.bias.len()
    }

    pub fn output_shape(&self, input: Shape) -> Shape {
        output_shape(
            input,
            self.channels(),
            self.kernel,
            self.stride,
            self.padding,
        )
    }

    /// [`run`](Self::run) into a new map.
    pub fn forward(&self, input: &ChannelsLastMap) -> ChannelsLastMap {
        let mut output = ChannelsLastMap::default();
        self.run(input, &mut output);
        output
    }

    /// Overwrites `output` with the convolution of `input`.
    pub fn run(&self, input: &ChannelsLastMap, output: &mut ChannelsLastMap) {
        self.run_rows(input, output, depthwise_row);
    }

    /// [`run`](Self::run), each output row computed by `row_kernel`.
    fn run_rows(
        &self,
        input: &ChannelsLastMap,
        output: &mut ChannelsLastMap,
        row_kernel: impl Fn(&mut [f32], &[(usize, &[f32])], &DepthwiseFilter<'_>) + Sync,
    ) {
        let shape = input.shape;
        assert_eq!(shape.channels, self.channels(), "input channels");
        let out = self.output_shape(shape);
        let (kernel, stride) = (self.kernel, self.stride);
        let pad_top = self.padding.axis(shape.height, kernel, stride).1;
        let row_values = shape.width * shape.channels;
        let values = input.values();
        let filter = DepthwiseFilter {
            weight: &self.weight,
            bias: &self.bias,
            kernel,
            stride,
            pad_left: self.padding.axis(shape.width, kernel, stride).1,
            in_width: shape.width,
            activation: self.activation,
        };
        output
            .reshape(out)
            .par_chunks_mut(out.width * out.channels)
            .enumerate()
            .for_each(|(oy, row)| {
                // The filter's rows that fall inside the input, with the input row under each.
                let rows: Vec<(usize, &[f32])> = (0..kernel)
                    .filter_map(|ky| {
                        let y = (oy * stride + ky).checked_sub(pad_top)?;
                        (y < shape.height).then(|| (ky, &values[y * row_values..][..row_values]))
                    })
                    .collect();
                row_kernel(row, &rows, &filter);
            });
    }
}

fn output_shape(
    input: Shape,
    channels: usize,
    kernel: usize,
    stride: usize,
    padding: Padding,
) -> Shape {
    let size = |extent: usize| padding.axis(extent, kernel, stride).0;
    Shape {
        channels,
        height: size(input.height),
        width: size(input.width),
    }
}

/// What every output row of a depthwise convolution needs besides its input rows.
struct DepthwiseFilter<'a> {
    /// `[kernel][kernel][channels]`.
    weight: &'a [f32],
    bias: &'a [f32],
    kernel: usize,
    stride: usize,
    pad_left: usize,
    in_width: usize,
    activation: Activation,
}

/// Computes one output row of a depthwise convolution from `rows`, the filter rows `ky` inside
/// the input with the input row under each. Dispatched once per row to the widest instructions
/// the CPU has: the sums are held in vectors of that width.
fn depthwise_row(output: &mut [f32], rows: &[(usize, &[f32])], filter: &DepthwiseFilter<'_>) {
    // SAFETY (each): the CPU has the instructions.
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return unsafe { depthwise_row_avx512(output, rows, filter) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return unsafe { depthwise_row_avx2(output, rows, filter) };
        }
    }
    unsafe { depthwise_row_with::<Portable>(output, rows, filter) };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn depthwise_row_avx512(
    output: &mut [f32],
    rows: &[(usize, &[f32])],
    filter: &DepthwiseFilter<'_>,
) {
    // SAFETY: the CPU has the instructions.
    unsafe { depthwise_row_with::<x86::Avx512>(output, rows, filter) };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_row_avx2(
    output: &mut [f32],
    rows: &[(usize, &[f32])],
    filter: &DepthwiseFilter<'_>,
) {
    // SAFETY: the CPU has the instructions.
    unsafe { depthwise_row_with::<x86::Avx2>(output, rows, filter) };
}

/// Independent chains of fused multiply-adds kept going at once, enough to hide their latency:
/// vectors of channels at an edge pixel, pixels of one vector inside the row.
const CHAINS: usize = 4;
/// Output pixels summed together inside a row: each tap's weights are loaded once for all.
const SPAN: usize = 8;

/// One output row: the pixels whose taps all lie inside the input row a vector of channels at
/// a time over [`SPAN`] pixels, the edge pixels (and channels past the last whole vector) one
/// pixel at a time.
///
/// # Safety
/// The CPU has `V`'s instructions.
#[inline(always)]
unsafe fn depthwise_row_with<V: Vector>(
    output: &mut [f32],
    rows: &[(usize, &[f32])],
    filter: &DepthwiseFilter<'_>,
) {
    let channels = filter.bias.len();
    let out_width = output.len() / channels;
    let (first, end) = filter.interior(out_width);
    // SAFETY (all below): as the caller's.
    for ox in (0..first).chain(end..out_width) {
        unsafe { depthwise_pixel::<V>(output, rows, filter, ox, 0) };
    }
    let vectors = channels / V::LANES * V::LANES;
    for channel in (0..vectors).step_by(V::LANES) {
        let mut ox = first;
        while end - ox >= SPAN {
            unsafe { depthwise_span::<V, SPAN>(output, rows, filter, ox, channel) };
            ox += SPAN;
        }
        if end - ox >= 4 {
            unsafe { depthwise_span::<V, 4>(output, rows, filter, ox, channel) };
            ox += 4;
        }
        if end - ox >= 2 {
            unsafe { depthwise_span::<V, 2>(output, rows, filter, ox, channel) };
            ox += 2;
        }
        if end > ox {
            unsafe { depthwise_span::<V, 1>(output, rows, filter, ox, channel) };
        }
    }
    if vectors < channels {
        for ox in first..end {
            unsafe { depthwise_pixel::<V>(output, rows, filter, ox, vectors) };
        }
    }
}

impl DepthwiseFilter<'_> {
    /// The output columns `first..end` whose every tap column lies inside the input row.
    fn interior(&self, out_width: usize) -> (usize, usize) {
        let first = self.pad_left.div_ceil(self.stride).min(out_width);
        // The last such column: ox * stride + kernel - pad_left <= in_width.
        let end = (self.in_width + self.pad_left)
            .checked_sub(self.kernel)
            .map_or(0, |last| last / self.stride + 1)
            .clamp(first, out_width);
        (first, end)
    }
}

/// `PIXELS` output pixels from `ox` on, all inside the row, one vector of channels from
/// `channel`: the bias plus every tap's input times its weight, then the activation.
///
/// # Safety
/// The CPU has `V`'s instructions.
#[inline(always)]
unsafe fn depthwise_span<V: Vector, const PIXELS: usize>(
    output: &mut [f32],
    rows: &[(usize, &[f32])],
    filter: &DepthwiseFilter<'_>,
    ox: usize,
    channel: usize,
) {
    let channels = filter.bias.len();
    let (kernel, stride) = (filter.kernel, filter.stride);
    // Bounds for every load below, checked once.
    assert!(channel + V::LANES <= channels && filter.weight.len() == kernel * kernel * channels);
    assert!((ox + PIXELS) * channels <= output.len());
    let first_x = (ox * stride)
        .checked_sub(filter.pad_left)
        .expect("a pixel inside the row");
    assert!(first_x + (PIXELS - 1) * stride + kernel <= filter.in_width);
    // SAFETY (all loads and stores): inside the slices by the assertions above (x < in_width
    // for the last pixel and tap), and the caller's promise of the instructions.
    let bias = unsafe { V::load(filter.bias[channel..].as_ptr()) };
    let mut sums = [bias; PIXELS];
    for &(ky, row) in rows {
        assert_eq!(row.len(), filter.in_width * channels);
        for kx in 0..kernel {
            let weight = unsafe {
                V::load(
                    filter
                        .weight
                        .as_ptr()
                        .add((ky * kernel + kx) * channels + channel),
                )
            };
            for (pixel, sum) in sums.iter_mut().enumerate() {
                let x = first_x + pixel * stride + kx;
                let input = unsafe { V::load(row.as_ptr().add(x * channels + channel)) };
                *sum = unsafe { input.mul_add(weight, *sum) };
            }
        }
    }
    for (pixel, sum) in sums.into_iter().enumerate() {
        unsafe {
            sum.activate(filter.activation)
                .store(output.as_mut_ptr().add((ox + pixel) * channels + channel));
        }
    }
}

/// Output pixel `ox`'s channels from `from` on, in groups of [`CHAINS`] vectors, then what is
/// left in fewer vectors, then one channel at a time; the taps outside the input row left out.
///
/// # Safety
/// The CPU has `V`'s instructions.
#[inline(always)]
unsafe fn depthwise_pixel<V: Vector>(
    output: &mut [f32],
    rows: &[(usize, &[f32])],
    filter: &DepthwiseFilter<'_>,
    ox: usize,
    from: usize,
) {
    let channels = filter.bias.len();
    let pixel = &mut output[ox * channels..][..channels];
    let left = ox * filter.stride;
    let taps = PixelTaps {
        rows,
        left,
        first_kx: filter.pad_left.saturating_sub(left),
        end_kx: (filter.in_width + filter.pad_left)
            .saturating_sub(left)
            .min(filter.kernel),
    };
    let mut channel = from;
    // SAFETY (all below): as the caller's.
    while channels - channel >= CHAINS * V::LANES {
        channel += unsafe { depthwise_channels::<V, CHAINS>(pixel, &taps, filter, channel) };
    }
    channel += match (channels - channel) / V::LANES {
        3 => unsafe { depthwise_channels::<V, 3>(pixel, &taps, filter, channel) },
        2 => unsafe { depthwise_channels::<V, 2>(pixel, &taps, filter, channel) },
        1 => unsafe { depthwise_channels::<V, 1>(pixel, &taps, filter, channel) },
        _ => 0,
    };
    for channel in channel..channels {
        unsafe { depthwise_channels::<Scalar, 1>(pixel, &taps, filter, channel) };
    }
}

/// One output pixel's taps: the filter rows and the tap columns `first_kx..end_kx` inside the
/// input, input column `left + kx - pad_left` under tap `kx`.
struct PixelTaps<'a, 'b> {
    rows: &'b [(usize, &'a [f32])],
    left: usize,
    first_kx: usize,
    end_kx: usize,
}

/// `VECTORS` vectors of channels from `channel` on, of one output pixel: the bias plus every
/// tap's input times its weight, then the activation, stored once. Returns the channels done.
///
/// # Safety
/// The CPU has `V`'s instructions.
#[inline(always)]
unsafe fn depthwise_channels<V: Vector, const VECTORS: usize>(
    pixel: &mut [f32],
    taps: &PixelTaps<'_, '_>,
    filter: &DepthwiseFilter<'_>,
    channel: usize,
) -> usize {
    let channels = filter.bias.len();
    let width = VECTORS * V::LANES;
    // The loads and stores below stay inside these slices.
    let bias = &filter.bias[channel..channel + width];
    let pixel = &mut pixel[channel..channel + width];
    // SAFETY (all below): inside the slices (checked by slicing), and the caller's promise of
    // the instructions.
    let mut sums: [V; VECTORS] =
        std::array::from_fn(|vector| unsafe { V::load(bias[vector * V::LANES..].as_ptr()) });
    for &(ky, row) in taps.rows {
        for kx in taps.first_kx..taps.end_kx {
            let x = taps.left + kx - filter.pad_left;
            let weights = &filter.weight[(ky * filter.kernel + kx) * channels + channel..][..width];
            let inputs = &row[x * channels + channel..][..width];
            for (vector, sum) in sums.iter_mut().enumerate() {
                let at = vector * V::LANES;
                unsafe {
                    let product = V::load(inputs[at..].as_ptr());
                    *sum = product.mul_add(V::load(weights[at..].as_ptr()), *sum);
                }
            }
        }
    }
    for (vector, sum) in sums.into_iter().enumerate() {
        unsafe {
            sum.activate(filter.activation)
                .store(pixel[vector * V::LANES..].as_mut_ptr())
        };
    }
    width
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{SHAPES, assert_close, reference_conv, values};

    /// Channel planes (the reference's layout) to channels-last values.
    fn channels_last(planes: &[f32], shape: Shape) -> Vec<f32> {
        ChannelsLastMap::from_planes(planes, shape)
            .values()
            .to_vec()
    }

    /// A map left over from a larger layer, its values NaN: a kernel that misses one shows.
    fn reused_map() -> ChannelsLastMap {
        let shape = Shape {
            channels: 7,
            height: 40,
            width: 40,
        };
        ChannelsLastMap::new(shape, vec![f32::NAN; shape.count()])
    }

    #[test]
    fn from_planes_interleaves_the_channels() {
        let shape = Shape {
            channels: 2,
            height: 1,
            width: 3,
        };
        let map = ChannelsLastMap::from_planes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], shape);
        assert_eq!(map.values(), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    #[test]
    fn convolutions_match_the_definition() {
        for (channels, height, width) in SHAPES {
            let shape = Shape {
                channels,
                height,
                width,
            };
            let input = values(shape.count(), 11);
            let map = ChannelsLastMap::from_planes(&input, shape);
            for padding in [Padding::Centered, Padding::TfSame] {
                for (kernel, stride) in [(1, 1), (3, 1), (3, 2), (1, 2), (5, 2), (5, 1)] {
                    // 19: not a multiple of any vector width.
                    for out_channels in [19, 32] {
                        let weight = values(out_channels * channels * kernel * kernel, 12);
                        let bias = values(out_channels, 13);
                        let conv = ChannelsLastConv::new(
                            &weight,
                            bias.clone(),
                            channels,
                            kernel,
                            stride,
                            padding,
                            Activation::Identity,
                        );
                        let mut output = reused_map();
                        conv.run(&map, None, &mut output);
                        let expected = reference_conv(
                            &weight, &bias, &input, shape, kernel, stride, padding, false,
                        );
                        let case =
                            format!("{shape:?} to {out_channels} k{kernel} s{stride} {padding:?}");
                        assert_eq!(output.shape(), conv.output_shape(shape), "{case}");
                        let expected = channels_last(&expected, output.shape());
                        assert_close(&case, output.values(), &expected);
                    }
                }
            }
        }
    }

    #[test]
    fn depthwise_convolutions_match_the_definition() {
        // Channel counts below, at and past a vector's 16 lanes, odd ones included; rows with
        // whole spans of pixels inside them and rows with none.
        let more = [(17, 9, 12), (48, 7, 7), (32, 4, 29), (40, 3, 3)];
        for (channels, height, width) in SHAPES.into_iter().chain(more) {
            let shape = Shape {
                channels,
                height,
                width,
            };
            let input = values(shape.count(), 14);
            let map = ChannelsLastMap::from_planes(&input, shape);
            for padding in [Padding::Centered, Padding::TfSame] {
                for (kernel, stride) in [(3, 1), (3, 2), (5, 1), (5, 2), (1, 1)] {
                    let weight = values(channels * kernel * kernel, 15);
                    let bias = values(channels, 16);
                    let conv = ChannelsLastDepthwise::new(
                        &weight,
                        bias.clone(),
                        kernel,
                        stride,
                        padding,
                        Activation::Identity,
                    );
                    let mut output = reused_map();
                    conv.run(&map, &mut output);
                    let expected = reference_conv(
                        &weight, &bias, &input, shape, kernel, stride, padding, true,
                    );
                    let case = format!("depthwise {shape:?} k{kernel} s{stride} {padding:?}");
                    assert_eq!(output.shape(), conv.output_shape(shape), "{case}");
                    let expected = channels_last(&expected, output.shape());
                    assert_close(&case, output.values(), &expected);
                }
            }
        }
    }

    #[test]
    fn every_instruction_set_computes_the_same_depthwise_rows() {
        // 37 channels: two AVX-512 vectors, four AVX2 ones, nine of four lanes, and a tail.
        let shape = Shape {
            channels: 37,
            height: 6,
            width: 23,
        };
        let map = ChannelsLastMap::new(shape, values(shape.count(), 17));
        for (kernel, stride) in [(3, 1), (5, 2)] {
            let weight = values(shape.channels * kernel * kernel, 18);
            let conv = ChannelsLastDepthwise::new(
                &weight,
                values(shape.channels, 19),
                kernel,
                stride,
                Padding::TfSame,
                Activation::Relu6,
            );
            let expected = conv.forward(&map);
            let mut output = reused_map();
            // SAFETY (each): only run where the CPU has the instructions.
            conv.run_rows(&map, &mut output, |row, rows, filter| unsafe {
                depthwise_row_with::<Portable>(row, rows, filter)
            });
            assert_close("portable", output.values(), expected.values());
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                conv.run_rows(&map, &mut output, |row, rows, filter| unsafe {
                    depthwise_row_avx2(row, rows, filter)
                });
                assert_close("avx2", output.values(), expected.values());
            }
        }
    }

    #[test]
    fn activations_and_the_residual_follow_the_bias() {
        let shape = Shape {
            channels: 1,
            height: 1,
            width: 4,
        };
        let input = ChannelsLastMap::new(shape, vec![-1.0, 0.0, 1.0, 10.0]);
        let relu6 = |conv_padding| {
            ChannelsLastConv::new(&[2.0], vec![0.5], 1, 1, 1, conv_padding, Activation::Relu6)
        };
        assert_eq!(
            relu6(Padding::TfSame).forward(&input).values(),
            [0.0, 0.5, 2.5, 6.0]
        );
        let depthwise =
            ChannelsLastDepthwise::new(&[2.0], vec![0.5], 1, 1, Padding::TfSame, Activation::Relu6);
        assert_eq!(depthwise.forward(&input).values(), [0.0, 0.5, 2.5, 6.0]);
        // The residual is added before the activation clamps.
        let residual = ChannelsLastMap::new(shape, vec![1.0, -1.0, 4.0, -7.0]);
        let mut output = reused_map();
        relu6(Padding::TfSame).run(&input, Some(&residual), &mut output);
        assert_eq!(output.values(), [0.0, 0.0, 6.0, 6.0]);
        let silu = ChannelsLastConv::new(
            &[1.0],
            vec![0.0],
            1,
            1,
            1,
            Padding::TfSame,
            Activation::Silu,
        );
        let output = silu.forward(&input).values().to_vec();
        for (x, got) in [-1.0f32, 0.0, 1.0, 10.0].iter().zip(output) {
            let want = x / (1.0 + (-x).exp());
            assert!((got - want).abs() < 1e-6, "silu({x}) = {got}, not {want}");
        }
    }

    #[test]
    fn channel_means_pool_every_pixel() {
        let map = ChannelsLastMap::new(
            Shape {
                channels: 2,
                height: 2,
                width: 2,
            },
            vec![1.0, -1.0, 2.0, -1.0, 3.0, -1.0, 6.0, -1.0],
        );
        assert_eq!(map.channel_means(), [3.0, -1.0]);
    }
}
