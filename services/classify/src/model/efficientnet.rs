//! EfficientNet-Lite0 (Tan & Le's EfficientNet-B0 made friendly to integer accelerators: no
//! squeeze-excitation, ReLU6 instead of swish, stem and head not scaled), with the weight names of
//! the lukemelas/EfficientNet-PyTorch state dict. BatchNorm (eps 1e-3) is folded into each
//! convolution at load; padding is TensorFlow's "SAME". Runs on the channels-last kernels,
//! [`prism_inference::channels_last`]: its 1x1 and depthwise convolutions are fastest that way.

use prism_inference::channels_last::{ChannelsLastConv, ChannelsLastDepthwise, ChannelsLastMap};
use prism_inference::kernels::{Activation, Padding, Shape};
use rayon::prelude::*;
use std::sync::{Mutex, PoisonError};

use super::{ModelError, Weights};

/// BatchNorm's epsilon in the TensorFlow original (PyTorch's default would be 1e-5).
pub const BN_EPSILON: f32 = 1e-3;
/// ImageNet-1k.
pub const CLASSES: usize = 1000;
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

/// One stage of MBConv blocks: (repeats, kernel, stride of the first block, expansion ratio,
/// input channels, output channels). Lite0 is B0's table at width and depth 1.0.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

pub struct EfficientNetLite0 {
    stem: ChannelsLastConv,
    blocks: Vec<MbConv>,
    head: ChannelsLastConv,
    /// The classifier as a 1x1 convolution over the pooled 1x1 map.
    fc: ChannelsLastConv,
    /// The maps of the images being classified, handed back after each: a layer overwrites one
    /// instead of allocating its output.
    workspaces: Mutex<Vec<Workspace>>,
}

/// The maps one image's pass through the network reuses for all its layers.
#[derive(Default)]
struct Workspace {
    /// A block's input, then (swapped with `next`) its output.
    current: ChannelsLastMap,
    expanded: ChannelsLastMap,
    filtered: ChannelsLastMap,
    next: ChannelsLastMap,
}

impl EfficientNetLite0 {
    /// Builds the network from all of `weights`, failing on any missing, misshapen or unused one.
    pub fn load(mut weights: Weights) -> Result<Self, ModelError> {
        let w = &mut weights;
        let stem = conv_bn(w, "_conv_stem", "_bn0", [3, STEM_CHANNELS], 3, 2)?;
        let mut blocks = Vec::new();
        for (repeats, kernel, stride, expansion, in_channels, out_channels) in STAGES {
            for repeat in 0..repeats {
                let (block_in, block_stride) = if repeat == 0 {
                    (in_channels, stride)
                } else {
                    (out_channels, 1)
                };
                let prefix = format!("_blocks.{}", blocks.len());
                blocks.push(MbConv::load(
                    w,
                    &prefix,
                    [block_in, out_channels],
                    kernel,
                    block_stride,
                    expansion,
                )?);
            }
        }
        let last = STAGES[STAGES.len() - 1].5;
        let head = conv_bn(w, "_conv_head", "_bn1", [last, HEAD_CHANNELS], 1, 1)?;
        let fc = ChannelsLastConv::new(
            &w.take("_fc.weight", &[CLASSES, HEAD_CHANNELS])?,
            w.take("_fc.bias", &[CLASSES])?,
            HEAD_CHANNELS,
            1,
            1,
            Padding::TfSame,
            Activation::Identity,
        );
        weights.finish()?;
        Ok(Self {
            stem,
            blocks,
            head,
            fc,
            workspaces: Mutex::default(),
        })
    }

    /// Runs a batch of network inputs (each three `size x size` planes, see `preprocess`, one
    /// after another in `pixels`), the images in parallel: each image's 1000 logits.
    ///
    /// # Panics
    /// When `pixels` is not a whole number of such inputs.
    pub fn logits(&self, pixels: &[f32], size: usize) -> Vec<Vec<f32>> {
        let shape = Shape {
            channels: 3,
            height: size,
            width: size,
        };
        assert!(
            !pixels.is_empty() && pixels.len().is_multiple_of(shape.count()),
            "{} values are not whole {size}x{size} RGB inputs",
            pixels.len()
        );
        prism_inference::on_pool(|| {
            pixels
                .par_chunks(shape.count())
                .map(|image| self.forward_image(image, shape))
                .collect()
        })
    }

    fn forward_image(&self, image: &[f32], shape: Shape) -> Vec<f32> {
        let workspace = self
            .workspaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut maps = workspace.unwrap_or_default();
        maps.next.load_planes(image, shape);
        self.stem.run(&maps.next, None, &mut maps.current);
        for block in &self.blocks {
            block.run(&mut maps);
        }
        self.head.run(&maps.current, None, &mut maps.next);
        let pooled = ChannelsLastMap::new(
            Shape {
                channels: HEAD_CHANNELS,
                height: 1,
                width: 1,
            },
            maps.next.channel_means(),
        );
        self.workspaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(maps);
        self.fc.forward(&pooled).values().to_vec()
    }
}

/// Mobile inverted bottleneck: 1x1 expansion (absent at ratio 1), depthwise convolution, 1x1
/// projection without activation, and the input added back when the shape is kept.
struct MbConv {
    expand: Option<ChannelsLastConv>,
    depthwise: ChannelsLastDepthwise,
    project: ChannelsLastConv,
    residual: bool,
}

impl MbConv {
    fn load(
        weights: &mut Weights,
        prefix: &str,
        [in_channels, out_channels]: [usize; 2],
        kernel: usize,
        stride: usize,
        expansion: usize,
    ) -> Result<Self, ModelError> {
        let hidden = in_channels * expansion;
        let expand = if expansion == 1 {
            None
        } else {
            Some(conv_bn(
                weights,
                &format!("{prefix}._expand_conv"),
                &format!("{prefix}._bn0"),
                [in_channels, hidden],
                1,
                1,
            )?)
        };
        let (weight, bias) = folded(
            weights,
            &format!("{prefix}._depthwise_conv"),
            &format!("{prefix}._bn1"),
            [hidden, 1, kernel, kernel],
        )?;
        let depthwise = ChannelsLastDepthwise::new(
            &weight,
            bias,
            kernel,
            stride,
            Padding::TfSame,
            Activation::Relu6,
        );
        let (weight, bias) = folded(
            weights,
            &format!("{prefix}._project_conv"),
            &format!("{prefix}._bn2"),
            [out_channels, hidden, 1, 1],
        )?;
        let project = ChannelsLastConv::new(
            &weight,
            bias,
            hidden,
            1,
            1,
            Padding::TfSame,
            Activation::Identity,
        );
        Ok(Self {
            expand,
            depthwise,
            project,
            residual: stride == 1 && in_channels == out_channels,
        })
    }

    /// From `maps.current` to the next `maps.current`.
    fn run(&self, maps: &mut Workspace) {
        let hidden = match &self.expand {
            Some(expand) => {
                expand.run(&maps.current, None, &mut maps.expanded);
                &maps.expanded
            }
            None => &maps.current,
        };
        self.depthwise.run(hidden, &mut maps.filtered);
        let residual = self.residual.then_some(&maps.current);
        self.project.run(&maps.filtered, residual, &mut maps.next);
        std::mem::swap(&mut maps.current, &mut maps.next);
    }
}

/// A convolution (`{conv}.weight`, no bias) and the BatchNorm after it (`{bn}.*`) as one
/// convolution with a bias, ReLU6 after: TF "SAME" padding.
fn conv_bn(
    weights: &mut Weights,
    conv: &str,
    bn: &str,
    [in_channels, out_channels]: [usize; 2],
    kernel: usize,
    stride: usize,
) -> Result<ChannelsLastConv, ModelError> {
    let (weight, bias) = folded(
        weights,
        conv,
        bn,
        [out_channels, in_channels, kernel, kernel],
    )?;
    Ok(ChannelsLastConv::new(
        &weight,
        bias,
        in_channels,
        kernel,
        stride,
        Padding::TfSame,
        Activation::Relu6,
    ))
}

/// `{conv}.weight` of `shape` with the BatchNorm `{bn}` folded in: every output channel's filter
/// scaled by `gamma / sqrt(var + eps)`, and the bias `beta - mean * that scale`.
fn folded(
    weights: &mut Weights,
    conv: &str,
    bn: &str,
    shape: [usize; 4],
) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
    let channels = shape[0];
    let mut weight = weights.take(&format!("{conv}.weight"), &shape)?;
    let gamma = weights.take(&format!("{bn}.weight"), &[channels])?;
    let beta = weights.take(&format!("{bn}.bias"), &[channels])?;
    let mean = weights.take(&format!("{bn}.running_mean"), &[channels])?;
    let variance = weights.take(&format!("{bn}.running_var"), &[channels])?;
    let per_channel = weight.len() / channels;
    let mut bias = Vec::with_capacity(channels);
    for (channel, filter) in weight.chunks_exact_mut(per_channel).enumerate() {
        let scale = gamma[channel] / (variance[channel] + BN_EPSILON).sqrt();
        filter.iter_mut().for_each(|value| *value *= scale);
        bias.push(beta[channel] - mean[channel] * scale);
    }
    Ok((weight, bias))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor};

    use super::*;

    /// Every tensor the real state dict has, with made-up values of the right shapes.
    fn synthetic_tensors() -> HashMap<String, Tensor> {
        let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
        let mut conv_bn = |conv: &str, bn: &str, shape: [usize; 4]| {
            shapes.push((format!("{conv}.weight"), shape.to_vec()));
            for part in ["weight", "bias", "running_mean", "running_var"] {
                shapes.push((format!("{bn}.{part}"), vec![shape[0]]));
            }
        };
        conv_bn("_conv_stem", "_bn0", [STEM_CHANNELS, 3, 3, 3]);
        let mut index = 0;
        for (repeats, kernel, _, expansion, in_channels, out_channels) in STAGES {
            for repeat in 0..repeats {
                let block_in = if repeat == 0 {
                    in_channels
                } else {
                    out_channels
                };
                let hidden = block_in * expansion;
                let prefix = format!("_blocks.{index}");
                if expansion != 1 {
                    conv_bn(
                        &format!("{prefix}._expand_conv"),
                        &format!("{prefix}._bn0"),
                        [hidden, block_in, 1, 1],
                    );
                }
                conv_bn(
                    &format!("{prefix}._depthwise_conv"),
                    &format!("{prefix}._bn1"),
                    [hidden, 1, kernel, kernel],
                );
                conv_bn(
                    &format!("{prefix}._project_conv"),
                    &format!("{prefix}._bn2"),
                    [out_channels, hidden, 1, 1],
                );
                index += 1;
            }
        }
        conv_bn("_conv_head", "_bn1", [HEAD_CHANNELS, 320, 1, 1]);
        shapes.push(("_fc.weight".into(), vec![CLASSES, HEAD_CHANNELS]));
        shapes.push(("_fc.bias".into(), vec![CLASSES]));
        shapes
            .into_iter()
            .map(|(name, shape)| {
                let count: usize = shape.iter().product();
                // Positive, so variances are valid; small, so activations stay finite.
                let values: Vec<f32> = (0..count).map(|i| 0.01 + (i % 7) as f32 * 0.001).collect();
                let tensor = Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor");
                (name, tensor)
            })
            .collect()
    }

    #[test]
    fn the_state_dict_has_247_float_tensors_all_used() {
        let tensors = synthetic_tensors();
        // fetch-assets.sh checks the converted file has exactly this many.
        assert_eq!(tensors.len(), 247);
        let network = EfficientNetLite0::load(Weights::new(tensors)).expect("loads");
        assert_eq!(network.blocks.len(), 16);
        let residuals = network.blocks.iter().filter(|b| b.residual).count();
        assert_eq!(
            residuals, 9,
            "16 blocks less the first of each of the 7 stages"
        );
        let logits = network.logits(&vec![0.5; 2 * 3 * 64 * 64], 64);
        assert_eq!(logits.len(), 2);
        assert_eq!(logits[0].len(), CLASSES);
        assert!(logits[0].iter().all(|value| value.is_finite()));
    }

    #[test]
    fn missing_and_extra_tensors_are_refused() {
        let mut tensors = synthetic_tensors();
        tensors.remove("_blocks.7._bn1.running_var");
        let error = EfficientNetLite0::load(Weights::new(tensors))
            .err()
            .expect("refused");
        assert!(
            matches!(&error, ModelError::MissingTensor { name } if name == "_blocks.7._bn1.running_var"),
            "{error}"
        );

        let mut tensors = synthetic_tensors();
        let extra = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).expect("tensor");
        tensors.insert("_blocks.16._bn0.weight".into(), extra);
        let error = EfficientNetLite0::load(Weights::new(tensors))
            .err()
            .expect("refused");
        assert!(
            matches!(&error, ModelError::UnusedTensors { names } if names == &["_blocks.16._bn0.weight"]),
            "{error}"
        );
    }

    #[test]
    fn batchnorm_folds_into_scale_and_bias() {
        let tensor = |values: Vec<f32>, shape: &[usize]| {
            Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor")
        };
        let mut weights = Weights::new(HashMap::from([
            (
                "c.weight".to_owned(),
                tensor(vec![1.0, 2.0, 3.0, 4.0], &[2, 2, 1, 1]),
            ),
            ("b.weight".to_owned(), tensor(vec![2.0, 3.0], &[2])),
            ("b.bias".to_owned(), tensor(vec![0.5, -1.0], &[2])),
            ("b.running_mean".to_owned(), tensor(vec![1.0, -2.0], &[2])),
            ("b.running_var".to_owned(), tensor(vec![4.0, 9.0], &[2])),
        ]));
        let (weight, bias) = folded(&mut weights, "c", "b", [2, 2, 1, 1]).expect("folds");
        let scale = [
            2.0 / (4.0 + f64::from(BN_EPSILON)).sqrt(),
            3.0 / (9.0 + f64::from(BN_EPSILON)).sqrt(),
        ];
        let want_weight = [scale[0], 2.0 * scale[0], 3.0 * scale[1], 4.0 * scale[1]];
        let want_bias = [0.5 - scale[0], -1.0 + 2.0 * scale[1]];
        for (got, want) in weight
            .iter()
            .chain(&bias)
            .zip(want_weight.iter().chain(&want_bias))
        {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
        weights.finish().expect("all used");
    }
}
