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
//! - a depthwise convolution adds whole pixels (all channels, contiguous) times a tap's filter
//!   values, stride 2 included, with AVX-512 or AVX2;
//! - bias, activation and a residual are applied to each tile while it is in cache.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::kernels::{Activation, Padding, Shape, inside, silu};

/// One image's activations, pixel after pixel in rows, each pixel's `channels` values together.
#[derive(Debug, Clone)]
pub struct ChannelsLastMap {
    pub shape: Shape,
    pub values: Vec<f32>,
}

impl ChannelsLastMap {
    pub fn new(shape: Shape, values: Vec<f32>) -> Self {
        assert_eq!(values.len(), shape.count(), "values do not fill {shape:?}");
        Self { shape, values }
    }

    /// The same activations from channel planes (NCHW, as images are preprocessed).
    pub fn from_planes(planes: &[f32], shape: Shape) -> Self {
        assert_eq!(planes.len(), shape.count(), "planes do not fill {shape:?}");
        let mut values = Vec::with_capacity(shape.count());
        for pixel in 0..shape.plane() {
            values
                .extend((0..shape.channels).map(|channel| planes[channel * shape.plane() + pixel]));
        }
        Self::new(shape, values)
    }

    /// The mean of each channel over all pixels (global average pooling).
    pub fn channel_means(&self) -> Vec<f32> {
        let mut sums = vec![0.0; self.shape.channels];
        for pixel in self.values.chunks_exact(self.shape.channels) {
            sums.iter_mut()
                .zip(pixel)
                .for_each(|(sum, value)| *sum += value);
        }
        let pixels = self.shape.plane() as f32;
        sums.iter_mut().for_each(|sum| *sum /= pixels);
        sums
    }
}

/// A convolution on channels-last maps as a GEMM, then bias, an optional residual and the
/// activation. 1x1 stride-1 convolutions read the map directly; others gather each output
/// pixel's taps (im2col) into a per-thread buffer, one tile at a time.
pub struct ChannelsLastConv {
    /// `[kernel][kernel][in_channels][out_channels]`: the GEMM's right side, one row per value of
    /// a pixel's gathered taps.
    weight: Vec<f32>,
    bias: Vec<f32>,
    in_channels: usize,
    kernel: usize,
    stride: usize,
    padding: Padding,
    activation: Activation,
}

/// GEMM left-side values per tile (a tile's gathered taps or input pixels): 256 KiB, in L2.
const TILE_VALUES: usize = 64 * 1024;
/// Tiles per convolution at least, per thread, so a core that was busy elsewhere can catch up.
const TILES_PER_THREAD: usize = 2;
/// Fewer pixels per tile than this and gemm spends more time packing the weights than
/// multiplying.
const MIN_TILE_PIXELS: usize = 8;

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
            weight: transposed,
            bias,
            in_channels,
            kernel,
            stride,
            padding,
            activation,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.bias.len()
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

    pub fn forward(&self, input: &ChannelsLastMap) -> ChannelsLastMap {
        self.convolve(input, None)
    }

    /// `forward`, with `residual` (of the output's shape) added before the activation.
    pub fn forward_adding(
        &self,
        input: &ChannelsLastMap,
        residual: &ChannelsLastMap,
    ) -> ChannelsLastMap {
        assert_eq!(
            residual.shape,
            self.output_shape(input.shape),
            "residual shape"
        );
        self.convolve(input, Some(&residual.values))
    }

    fn convolve(&self, input: &ChannelsLastMap, residual: Option<&[f32]>) -> ChannelsLastMap {
        assert_eq!(input.shape.channels, self.in_channels, "input channels");
        let out = self.output_shape(input.shape);
        let out_channels = out.channels;
        let depth = self.in_channels * self.kernel * self.kernel;
        let pixels = out.plane();
        let tile_pixels = (TILE_VALUES / depth)
            .min(pixels.div_ceil(TILES_PER_THREAD * rayon::current_num_threads()))
            .max(MIN_TILE_PIXELS);
        let direct = self.kernel == 1 && self.stride == 1;
        let mut output = ChannelsLastMap::new(out, vec![0.0; out.count()]);

        output
            .values
            .par_chunks_mut(tile_pixels * out_channels)
            .enumerate()
            .for_each(|(tile, target)| {
                let first = tile * tile_pixels;
                let count = target.len() / out_channels;
                GATHERED.with_borrow_mut(|gathered| {
                    let lhs = if direct {
                        &input.values[first * depth..][..count * depth]
                    } else {
                        gathered.resize(count * depth, 0.0);
                        self.im2col(input, first, &mut gathered[..count * depth]);
                        &gathered[..count * depth]
                    };
                    // SAFETY: lhs is [count, depth] (rows `depth` apart), the weight
                    // [depth, out_channels] and target [count, out_channels], all inside their
                    // slices, which outlive the call.
                    unsafe {
                        gemm::gemm(
                            count,
                            out_channels,
                            depth,
                            target.as_mut_ptr(),
                            1,
                            out_channels as isize,
                            false,
                            lhs.as_ptr(),
                            1,
                            depth as isize,
                            self.weight.as_ptr(),
                            1,
                            out_channels as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                });
                let residual =
                    residual.map(|values| &values[first * out_channels..][..target.len()]);
                finish_pixels(target, &self.bias, residual, self.activation);
            });
        output
    }

    /// Gathers the GEMM's left side for output pixels `first..first + rows`, where `gathered`
    /// has `rows` rows: each output pixel's taps `(ky, kx)` one after another, each the input
    /// pixel's channels under that tap, zeros in the padding.
    fn im2col(&self, input: &ChannelsLastMap, first: usize, gathered: &mut [f32]) {
        let shape = input.shape;
        let (kernel, stride, channels) = (self.kernel, self.stride, self.in_channels);
        let out = self.output_shape(shape);
        let pad_top = self.padding.axis(shape.height, kernel, stride).1;
        let pad_left = self.padding.axis(shape.width, kernel, stride).1;
        for (index, row) in gathered
            .chunks_exact_mut(kernel * kernel * channels)
            .enumerate()
        {
            let (oy, ox) = ((first + index) / out.width, (first + index) % out.width);
            for (tap, values) in row.chunks_exact_mut(channels).enumerate() {
                let y = (oy * stride + tap / kernel).checked_sub(pad_top);
                let x = (ox * stride + tap % kernel).checked_sub(pad_left);
                match (y, x) {
                    (Some(y), Some(x)) if y < shape.height && x < shape.width => values
                        .copy_from_slice(
                            &input.values[(y * shape.width + x) * channels..][..channels],
                        ),
                    _ => values.fill(0.0),
                }
            }
        }
    }
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

    pub fn forward(&self, input: &ChannelsLastMap) -> ChannelsLastMap {
        let shape = input.shape;
        assert_eq!(shape.channels, self.channels(), "input channels");
        let out = self.output_shape(shape);
        let (kernel, stride, channels) = (self.kernel, self.stride, self.channels());
        let pad_top = self.padding.axis(shape.height, kernel, stride).1;
        let pad_left = self.padding.axis(shape.width, kernel, stride).1;
        // Per column of taps: the output columns it reaches (inside the input row).
        let reach: Vec<(usize, usize)> = (0..kernel)
            .map(|kx| inside(shape.width, out.width, kx, stride, pad_left))
            .collect();
        let mut output = ChannelsLastMap::new(out, vec![0.0; out.count()]);
        output
            .values
            .par_chunks_mut(out.width * channels)
            .enumerate()
            .for_each(|(oy, row)| {
                let mut taps = Vec::with_capacity(kernel * kernel);
                for ky in 0..kernel {
                    let Some(y) = (oy * stride + ky)
                        .checked_sub(pad_top)
                        .filter(|&y| y < shape.height)
                    else {
                        continue;
                    };
                    let input_row =
                        &input.values[y * shape.width * channels..][..shape.width * channels];
                    for (kx, &(first, end)) in reach.iter().enumerate() {
                        if first < end {
                            taps.push(DepthwiseTap {
                                weights: &self.weight[(ky * kernel + kx) * channels..][..channels],
                                input_row,
                                first,
                                end,
                                source: first * stride + kx - pad_left,
                            });
                        }
                    }
                }
                depthwise_row(row, &taps, channels, stride);
                finish_pixels(row, &self.bias, None, self.activation);
            });
        output
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

/// Accumulates one output row of a depthwise convolution into `row` (zeros on entry): for each
/// tap, its weights times the input pixel under it, for every output pixel the tap reaches.
/// Dispatched once per row to the widest instructions the CPU has, so the per-pixel loop over
/// channels is vectorised with them.
fn depthwise_row(row: &mut [f32], taps: &[DepthwiseTap<'_>], channels: usize, stride: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature.
            return unsafe { depthwise_row_avx512(row, taps, channels, stride) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has the feature.
            return unsafe { depthwise_row_avx2(row, taps, channels, stride) };
        }
    }
    depthwise_row_portable(row, taps, channels, stride);
}

/// One tap of a depthwise filter on one input row: its weights (all channels), the input row,
/// and the output columns `first..end` it reaches, the first of them from input column `source`.
struct DepthwiseTap<'a> {
    weights: &'a [f32],
    input_row: &'a [f32],
    first: usize,
    end: usize,
    source: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn depthwise_row_avx512(
    row: &mut [f32],
    taps: &[DepthwiseTap<'_>],
    channels: usize,
    stride: usize,
) {
    depthwise_row_portable(row, taps, channels, stride);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn depthwise_row_avx2(row: &mut [f32], taps: &[DepthwiseTap<'_>], channels: usize, stride: usize) {
    depthwise_row_portable(row, taps, channels, stride);
}

#[inline(always)]
fn depthwise_row_portable(
    row: &mut [f32],
    taps: &[DepthwiseTap<'_>],
    channels: usize,
    stride: usize,
) {
    for tap in taps {
        let outputs = row[tap.first * channels..tap.end * channels].chunks_exact_mut(channels);
        let inputs = tap.input_row[tap.source * channels..]
            .chunks(channels)
            .step_by(stride);
        for (sum, pixel) in outputs.zip(inputs) {
            for ((sum, &value), &weight) in sum.iter_mut().zip(pixel).zip(tap.weights) {
                *sum += value * weight;
            }
        }
    }
}

/// Pixels of `bias.len()` channels each: `value = activation(value + bias (+ residual))`.
fn finish_pixels(
    values: &mut [f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    activation: Activation,
) {
    match activation {
        Activation::Silu => finish_pixels_with(values, bias, residual, silu),
        Activation::Relu6 => finish_pixels_with(values, bias, residual, |x| x.clamp(0.0, 6.0)),
        Activation::Identity => finish_pixels_with(values, bias, residual, |x| x),
    }
}

/// One loop per activation and residual case, so each vectorises.
#[inline(always)]
fn finish_pixels_with(
    values: &mut [f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    activation: impl Fn(f32) -> f32,
) {
    let pixels = values.chunks_exact_mut(bias.len());
    match residual {
        Some(residual) => {
            for (pixel, skip) in pixels.zip(residual.chunks_exact(bias.len())) {
                for ((value, bias), skip) in pixel.iter_mut().zip(bias).zip(skip) {
                    *value = activation(*value + bias + skip);
                }
            }
        }
        None => {
            for pixel in pixels {
                for (value, bias) in pixel.iter_mut().zip(bias) {
                    *value = activation(*value + bias);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{SHAPES, assert_close, reference_conv, values};

    /// Channel planes (the reference's layout) to channels-last values.
    fn channels_last(planes: &[f32], shape: Shape) -> Vec<f32> {
        ChannelsLastMap::from_planes(planes, shape).values
    }

    #[test]
    fn from_planes_interleaves_the_channels() {
        let shape = Shape {
            channels: 2,
            height: 1,
            width: 3,
        };
        let map = ChannelsLastMap::from_planes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], shape);
        assert_eq!(map.values, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
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
                        let output = conv.forward(&map);
                        let expected = reference_conv(
                            &weight, &bias, &input, shape, kernel, stride, padding, false,
                        );
                        let case =
                            format!("{shape:?} to {out_channels} k{kernel} s{stride} {padding:?}");
                        assert_eq!(output.shape, conv.output_shape(shape), "{case}");
                        let expected = channels_last(&expected, output.shape);
                        assert_close(&case, &output.values, &expected);
                    }
                }
            }
        }
    }

    #[test]
    fn depthwise_convolutions_match_the_definition() {
        // Channel counts below, at and past a vector's 16 lanes, odd ones included.
        for (channels, height, width) in SHAPES.into_iter().chain([(17, 9, 12), (48, 7, 7)]) {
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
                    let output = conv.forward(&map);
                    let expected = reference_conv(
                        &weight, &bias, &input, shape, kernel, stride, padding, true,
                    );
                    let case = format!("depthwise {shape:?} k{kernel} s{stride} {padding:?}");
                    assert_eq!(output.shape, conv.output_shape(shape), "{case}");
                    let expected = channels_last(&expected, output.shape);
                    assert_close(&case, &output.values, &expected);
                }
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
            relu6(Padding::TfSame).forward(&input).values,
            [0.0, 0.5, 2.5, 6.0]
        );
        let depthwise =
            ChannelsLastDepthwise::new(&[2.0], vec![0.5], 1, 1, Padding::TfSame, Activation::Relu6);
        assert_eq!(depthwise.forward(&input).values, [0.0, 0.5, 2.5, 6.0]);
        // The residual is added before the activation clamps.
        let residual = ChannelsLastMap::new(shape, vec![1.0, -1.0, 4.0, -7.0]);
        assert_eq!(
            relu6(Padding::TfSame)
                .forward_adding(&input, &residual)
                .values,
            [0.0, 0.0, 6.0, 6.0]
        );
        let silu = ChannelsLastConv::new(
            &[1.0],
            vec![0.0],
            1,
            1,
            1,
            Padding::TfSame,
            Activation::Silu,
        );
        let output = silu.forward(&input).values;
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
