//! The YOLOv8n network (Ultralytics `yolov8.yaml`, scale n: width 0.25, depth 0.33), with
//! BatchNorm already folded into each convolution's bias as in the ONNX export. Layer numbers in
//! the comments are the `model.N` prefixes of the weight names.

use candle_core::Tensor;
use candle_nn::{Conv2d, Conv2dConfig, Module};

use super::{COCO_CLASSES, ModelError, Weights};

/// Output channels of the five backbone stages at scale n.
const CHANNELS: [usize; 5] = [16, 32, 64, 128, 256];
/// Distribution Focal Loss bins per box side.
const DFL_BINS: usize = 16;
/// Box-branch width of the Detect head: max(16, P3 channels / 4, 4 * DFL_BINS).
const BOX_HIDDEN: usize = 64;
/// Class-branch width of the Detect head: max(P3 channels, min(classes, 100)).
const CLASS_HIDDEN: usize = 80;
/// Downsampling of the P3, P4 and P5 outputs relative to the input.
pub const STRIDES: [u32; 3] = [8, 16, 32];
/// SPPF's max-pool window.
const SPPF_KERNEL: usize = 5;

/// Raw Detect-head output for one stride: per image, `4 * bins` box-distance logits followed by
/// one logit per class, each a `height * width` plane (`[batch][channel][y * width + x]`).
#[derive(Debug, Clone)]
pub struct HeadOutput {
    pub stride: u32,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub values: Vec<f32>,
}

pub struct YoloV8 {
    stem: ConvBlock,              // 0
    down1: ConvBlock,             // 1
    stage1: C2f,                  // 2
    down2: ConvBlock,             // 3
    stage2: C2f,                  // 4: P3 skip
    down3: ConvBlock,             // 5
    stage3: C2f,                  // 6: P4 skip
    down4: ConvBlock,             // 7
    stage4: C2f,                  // 8
    sppf: Sppf,                   // 9: P5
    top_down_p4: C2f,             // 12 (after upsample 10, concat 11)
    top_down_p3: C2f,             // 15 (after upsample 13, concat 14): P3 out
    bottom_up_down_p3: ConvBlock, // 16
    bottom_up_p4: C2f,            // 18 (after concat 17): P4 out
    bottom_up_down_p4: ConvBlock, // 19
    bottom_up_p5: C2f,            // 21 (after concat 20): P5 out
    head: DetectHead,             // 22
}

impl YoloV8 {
    /// Builds the network from all of `weights`, failing on any missing, misshapen or unused one.
    pub fn load(mut weights: Weights) -> Result<Self, ModelError> {
        let w = &mut weights;
        let [c1, c2, c3, c4, c5] = CHANNELS;
        let network = Self {
            stem: ConvBlock::load(w, "model.0", 3, c1, 3, 2)?,
            down1: ConvBlock::load(w, "model.1", c1, c2, 3, 2)?,
            stage1: C2f::load(w, "model.2", c2, c2, 1, true)?,
            down2: ConvBlock::load(w, "model.3", c2, c3, 3, 2)?,
            stage2: C2f::load(w, "model.4", c3, c3, 2, true)?,
            down3: ConvBlock::load(w, "model.5", c3, c4, 3, 2)?,
            stage3: C2f::load(w, "model.6", c4, c4, 2, true)?,
            down4: ConvBlock::load(w, "model.7", c4, c5, 3, 2)?,
            stage4: C2f::load(w, "model.8", c5, c5, 1, true)?,
            sppf: Sppf::load(w, "model.9", c5, c5)?,
            top_down_p4: C2f::load(w, "model.12", c5 + c4, c4, 1, false)?,
            top_down_p3: C2f::load(w, "model.15", c4 + c3, c3, 1, false)?,
            bottom_up_down_p3: ConvBlock::load(w, "model.16", c3, c3, 3, 2)?,
            bottom_up_p4: C2f::load(w, "model.18", c3 + c4, c4, 1, false)?,
            bottom_up_down_p4: ConvBlock::load(w, "model.19", c4, c4, 3, 2)?,
            bottom_up_p5: C2f::load(w, "model.21", c4 + c5, c5, 1, false)?,
            head: DetectHead::load(w, "model.22", [c3, c4, c5])?,
        };
        weights.finish()?;
        Ok(network)
    }

    /// Runs a `[batch, 3, size, size]` input (RGB in 0..=1, size a multiple of 32).
    pub fn forward(&self, input: &Tensor) -> Result<Vec<HeadOutput>, ModelError> {
        let x = self.down1.forward(&self.stem.forward(input)?)?;
        let x = self.down2.forward(&self.stage1.forward(&x)?)?;
        let p3 = self.stage2.forward(&x)?;
        let p4 = self.stage3.forward(&self.down3.forward(&p3)?)?;
        let x = self.stage4.forward(&self.down4.forward(&p4)?)?;
        let p5 = self.sppf.forward(&x)?;

        let n4 = self
            .top_down_p4
            .forward(&Tensor::cat(&[&upsample(&p5)?, &p4], 1)?)?;
        let out3 = self
            .top_down_p3
            .forward(&Tensor::cat(&[&upsample(&n4)?, &p3], 1)?)?;
        let down3 = self.bottom_up_down_p3.forward(&out3)?;
        let out4 = self
            .bottom_up_p4
            .forward(&Tensor::cat(&[&down3, &n4], 1)?)?;
        let down4 = self.bottom_up_down_p4.forward(&out4)?;
        let out5 = self
            .bottom_up_p5
            .forward(&Tensor::cat(&[&down4, &p5], 1)?)?;

        self.head.forward([&out3, &out4, &out5])
    }

    /// The value each DFL bin stands for (0, 1, ..., 15 in the released weights), in pixels of
    /// the feature map.
    pub fn dfl_bins(&self) -> &[f32] {
        &self.head.dfl_bins
    }
}

/// `{prefix}.weight` and `{prefix}.bias` as a convolution with "same" padding.
fn load_conv2d(
    weights: &mut Weights,
    prefix: &str,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
) -> Result<Conv2d, ModelError> {
    let weight = weights.take(
        &format!("{prefix}.weight"),
        &[out_channels, in_channels, kernel, kernel],
    )?;
    let bias = weights.take(&format!("{prefix}.bias"), &[out_channels])?;
    let config = Conv2dConfig {
        padding: kernel / 2,
        stride,
        ..Default::default()
    };
    Ok(Conv2d::new(weight, Some(bias), config))
}

/// Ultralytics `Conv`: convolution (BatchNorm folded in) then SiLU.
struct ConvBlock {
    conv: Conv2d,
}

impl ConvBlock {
    fn load(
        weights: &mut Weights,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
    ) -> Result<Self, ModelError> {
        let conv = load_conv2d(
            weights,
            &format!("{prefix}.conv"),
            in_channels,
            out_channels,
            kernel,
            stride,
        )?;
        Ok(Self { conv })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.conv.forward(x)?.silu()
    }
}

/// Two 3x3 convs, with a residual connection in the backbone.
struct Bottleneck {
    cv1: ConvBlock,
    cv2: ConvBlock,
    residual: bool,
}

impl Bottleneck {
    fn load(
        weights: &mut Weights,
        prefix: &str,
        channels: usize,
        residual: bool,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            cv1: ConvBlock::load(weights, &format!("{prefix}.cv1"), channels, channels, 3, 1)?,
            cv2: ConvBlock::load(weights, &format!("{prefix}.cv2"), channels, channels, 3, 1)?,
            residual,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.cv2.forward(&self.cv1.forward(x)?)?;
        if self.residual { x + y } else { Ok(y) }
    }
}

/// CSP block with two convolutions: split in halves, chain bottlenecks on the second half, and
/// fuse every intermediate result.
struct C2f {
    cv1: ConvBlock,
    cv2: ConvBlock,
    bottlenecks: Vec<Bottleneck>,
    hidden: usize,
}

impl C2f {
    fn load(
        weights: &mut Weights,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        depth: usize,
        residual: bool,
    ) -> Result<Self, ModelError> {
        let hidden = out_channels / 2;
        let cv1 = ConvBlock::load(
            weights,
            &format!("{prefix}.cv1"),
            in_channels,
            2 * hidden,
            1,
            1,
        )?;
        let bottlenecks = (0..depth)
            .map(|index| {
                Bottleneck::load(weights, &format!("{prefix}.m.{index}"), hidden, residual)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cv2 = ConvBlock::load(
            weights,
            &format!("{prefix}.cv2"),
            (2 + depth) * hidden,
            out_channels,
            1,
            1,
        )?;
        Ok(Self {
            cv1,
            cv2,
            bottlenecks,
            hidden,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.cv1.forward(x)?;
        let mut parts = vec![
            x.narrow(1, 0, self.hidden)?,
            x.narrow(1, self.hidden, self.hidden)?,
        ];
        for bottleneck in &self.bottlenecks {
            let next = bottleneck.forward(&parts[parts.len() - 1])?;
            parts.push(next);
        }
        self.cv2.forward(&Tensor::cat(&parts, 1)?)
    }
}

/// Spatial pyramid pooling, fast: three chained 5x5 max-pools stand for 5, 9 and 13 windows.
struct Sppf {
    cv1: ConvBlock,
    cv2: ConvBlock,
}

impl Sppf {
    fn load(
        weights: &mut Weights,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
    ) -> Result<Self, ModelError> {
        let hidden = in_channels / 2;
        Ok(Self {
            cv1: ConvBlock::load(weights, &format!("{prefix}.cv1"), in_channels, hidden, 1, 1)?,
            cv2: ConvBlock::load(
                weights,
                &format!("{prefix}.cv2"),
                4 * hidden,
                out_channels,
                1,
                1,
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.cv1.forward(x)?;
        let pooled1 = max_pool_same(&x)?;
        let pooled2 = max_pool_same(&pooled1)?;
        let pooled3 = max_pool_same(&pooled2)?;
        self.cv2
            .forward(&Tensor::cat(&[&x, &pooled1, &pooled2, &pooled3], 1)?)
    }
}

/// Stride-1 max-pool keeping the size. Pads with -inf like PyTorch's MaxPool2d: zero padding
/// would beat the (possibly negative, SiLU goes down to -0.28) values at the border.
fn max_pool_same(x: &Tensor) -> candle_core::Result<Tensor> {
    let pad = SPPF_KERNEL / 2;
    let (batch, channels, height, width) = x.dims4()?;
    let columns = Tensor::full(
        f32::NEG_INFINITY,
        (batch, channels, height, pad),
        x.device(),
    )?;
    let x = Tensor::cat(&[&columns, x, &columns], 3)?;
    let rows = Tensor::full(
        f32::NEG_INFINITY,
        (batch, channels, pad, width + 2 * pad),
        x.device(),
    )?;
    let x = Tensor::cat(&[&rows, &x, &rows], 2)?;
    x.max_pool2d_with_stride(SPPF_KERNEL, 1)
}

fn upsample(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, height, width) = x.dims4()?;
    x.upsample_nearest2d(2 * height, 2 * width)
}

/// Conv, conv, then a plain 1x1 projection (no activation): one head branch at one stride.
struct Branch {
    first: ConvBlock,
    second: ConvBlock,
    projection: Conv2d,
}

impl Branch {
    fn load(
        weights: &mut Weights,
        prefix: &str,
        in_channels: usize,
        hidden: usize,
        out_channels: usize,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            first: ConvBlock::load(weights, &format!("{prefix}.0"), in_channels, hidden, 3, 1)?,
            second: ConvBlock::load(weights, &format!("{prefix}.1"), hidden, hidden, 3, 1)?,
            projection: load_conv2d(weights, &format!("{prefix}.2"), hidden, out_channels, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.projection
            .forward(&self.second.forward(&self.first.forward(x)?)?)
    }
}

/// Ultralytics `Detect`: per stride a box branch (`cv2`, DFL logits) and a class branch (`cv3`).
struct DetectHead {
    box_branches: Vec<Branch>,
    class_branches: Vec<Branch>,
    dfl_bins: Vec<f32>,
}

impl DetectHead {
    fn load(
        weights: &mut Weights,
        prefix: &str,
        in_channels: [usize; 3],
    ) -> Result<Self, ModelError> {
        let classes = COCO_CLASSES.len();
        let mut box_branches = Vec::new();
        let mut class_branches = Vec::new();
        for (level, channels) in in_channels.into_iter().enumerate() {
            let box_prefix = format!("{prefix}.cv2.{level}");
            box_branches.push(Branch::load(
                weights,
                &box_prefix,
                channels,
                BOX_HIDDEN,
                4 * DFL_BINS,
            )?);
            let class_prefix = format!("{prefix}.cv3.{level}");
            class_branches.push(Branch::load(
                weights,
                &class_prefix,
                channels,
                CLASS_HIDDEN,
                classes,
            )?);
        }
        // The DFL "convolution" is a fixed dot product with the bin values; kept as loaded.
        let dfl_bins = weights
            .take(&format!("{prefix}.dfl.conv.weight"), &[1, DFL_BINS, 1, 1])?
            .flatten_all()?
            .to_vec1()?;
        Ok(Self {
            box_branches,
            class_branches,
            dfl_bins,
        })
    }

    fn forward(&self, levels: [&Tensor; 3]) -> Result<Vec<HeadOutput>, ModelError> {
        levels
            .into_iter()
            .zip(&self.box_branches)
            .zip(&self.class_branches)
            .zip(STRIDES)
            .map(|(((x, box_branch), class_branch), stride)| {
                let output = Tensor::cat(&[&box_branch.forward(x)?, &class_branch.forward(x)?], 1)?;
                let (_, channels, height, width) = output.dims4()?;
                Ok(HeadOutput {
                    stride,
                    height,
                    width,
                    channels,
                    values: output.flatten_all()?.to_vec1()?,
                })
            })
            .collect()
    }
}
