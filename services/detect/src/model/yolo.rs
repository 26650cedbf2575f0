//! The YOLOv8n network (Ultralytics `yolov8.yaml`, scale n: width 0.25, depth 0.33), with
//! BatchNorm already folded into each convolution's bias as in the ONNX export. Layer numbers in
//! the comments are the `model.N` prefixes of the weight names. Runs on the shared kernels,
//! [`prism_inference::kernels`].

use rayon::prelude::*;

use super::{COCO_CLASSES, ModelError, Weights};
use prism_inference::kernels::{Activation, Conv2d, FeatureMap, Shape, max_pool_same};

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
    stem: Conv2d,              // 0
    down1: Conv2d,             // 1
    stage1: C2f,               // 2
    down2: Conv2d,             // 3
    stage2: C2f,               // 4: P3 skip
    down3: Conv2d,             // 5
    stage3: C2f,               // 6: P4 skip
    down4: Conv2d,             // 7
    stage4: C2f,               // 8
    sppf: Sppf,                // 9: P5
    top_down_p4: C2f,          // 12 (after upsample 10, concat 11)
    top_down_p3: C2f,          // 15 (after upsample 13, concat 14): P3 out
    bottom_up_down_p3: Conv2d, // 16
    bottom_up_p4: C2f,         // 18 (after concat 17): P4 out
    bottom_up_down_p4: Conv2d, // 19
    bottom_up_p5: C2f,         // 21 (after concat 20): P5 out
    head: DetectHead,          // 22
}

impl YoloV8 {
    /// Builds the network from all of `weights`, failing on any missing, misshapen or unused one.
    pub fn load(mut weights: Weights) -> Result<Self, ModelError> {
        let w = &mut weights;
        let [c1, c2, c3, c4, c5] = CHANNELS;
        let network = Self {
            stem: conv_block(w, "model.0", 3, c1, 3, 2)?,
            down1: conv_block(w, "model.1", c1, c2, 3, 2)?,
            stage1: C2f::load(w, "model.2", c2, c2, 1, true)?,
            down2: conv_block(w, "model.3", c2, c3, 3, 2)?,
            stage2: C2f::load(w, "model.4", c3, c3, 2, true)?,
            down3: conv_block(w, "model.5", c3, c4, 3, 2)?,
            stage3: C2f::load(w, "model.6", c4, c4, 2, true)?,
            down4: conv_block(w, "model.7", c4, c5, 3, 2)?,
            stage4: C2f::load(w, "model.8", c5, c5, 1, true)?,
            sppf: Sppf::load(w, "model.9", c5, c5)?,
            top_down_p4: C2f::load(w, "model.12", c5 + c4, c4, 1, false)?,
            top_down_p3: C2f::load(w, "model.15", c4 + c3, c3, 1, false)?,
            bottom_up_down_p3: conv_block(w, "model.16", c3, c3, 3, 2)?,
            bottom_up_p4: C2f::load(w, "model.18", c3 + c4, c4, 1, false)?,
            bottom_up_down_p4: conv_block(w, "model.19", c4, c4, 3, 2)?,
            bottom_up_p5: C2f::load(w, "model.21", c4 + c5, c5, 1, false)?,
            head: DetectHead::load(w, "model.22", [c3, c4, c5])?,
        };
        weights.finish()?;
        Ok(network)
    }

    /// Runs a batch of RGB images (values in 0..=1), each `3 x height x width` planes one after
    /// another in `pixels`; `height` and `width` are multiples of 32. The images run in parallel.
    ///
    /// # Panics
    /// When `pixels` is not a whole number of such images, or the sizes are not multiples of 32.
    pub fn forward(&self, pixels: &[f32], height: usize, width: usize) -> Vec<HeadOutput> {
        let shape = Shape {
            channels: 3,
            height,
            width,
        };
        let largest_stride = STRIDES[STRIDES.len() - 1] as usize;
        assert!(
            height.is_multiple_of(largest_stride) && width.is_multiple_of(largest_stride),
            "input {height}x{width} is not a multiple of {largest_stride}"
        );
        assert!(
            !pixels.is_empty() && pixels.len().is_multiple_of(shape.count()),
            "{} values are not whole {height}x{width} RGB images",
            pixels.len()
        );
        let per_image: Vec<[FeatureMap; 3]> = prism_inference::on_pool(|| {
            pixels
                .par_chunks(shape.count())
                .map(|image| self.forward_image(image, shape))
                .collect()
        });
        STRIDES
            .into_iter()
            .enumerate()
            .map(|(level, stride)| {
                let Shape {
                    channels,
                    height,
                    width,
                } = per_image[0][level].shape;
                HeadOutput {
                    stride,
                    height,
                    width,
                    channels,
                    values: per_image
                        .iter()
                        .flat_map(|levels| &levels[level].values)
                        .copied()
                        .collect(),
                }
            })
            .collect()
    }

    /// One image through backbone, neck and head: the head's output at each stride.
    fn forward_image(&self, image: &[f32], shape: Shape) -> [FeatureMap; 3] {
        let mut x = FeatureMap::zeros(self.stem.output_shape(shape));
        self.stem.run(image, shape, &mut x.values);
        let x = self.down1.forward(&x);
        let x = self.down2.forward(&self.stage1.forward(&x));
        let p3 = self.stage2.forward(&x);
        let p4 = self.stage3.forward(&self.down3.forward(&p3));
        let x = self.stage4.forward(&self.down4.forward(&p4));
        let p5 = self.sppf.forward(&x);

        let n4 = self
            .top_down_p4
            .forward(&FeatureMap::concat(&[&p5.upsample2(), &p4]));
        let out3 = self
            .top_down_p3
            .forward(&FeatureMap::concat(&[&n4.upsample2(), &p3]));
        let down3 = self.bottom_up_down_p3.forward(&out3);
        let out4 = self
            .bottom_up_p4
            .forward(&FeatureMap::concat(&[&down3, &n4]));
        let down4 = self.bottom_up_down_p4.forward(&out4);
        let out5 = self
            .bottom_up_p5
            .forward(&FeatureMap::concat(&[&down4, &p5]));

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
    [in_channels, out_channels]: [usize; 2],
    kernel: usize,
    stride: usize,
    activation: Activation,
) -> Result<Conv2d, ModelError> {
    let weight = weights.take(
        &format!("{prefix}.weight"),
        &[out_channels, in_channels, kernel, kernel],
    )?;
    let bias = weights.take(&format!("{prefix}.bias"), &[out_channels])?;
    Ok(Conv2d::new(
        weight.flatten_all()?.to_vec1()?,
        bias.to_vec1()?,
        in_channels,
        kernel,
        stride,
        activation,
    ))
}

/// Ultralytics `Conv`: convolution (BatchNorm folded in) then SiLU.
fn conv_block(
    weights: &mut Weights,
    prefix: &str,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
) -> Result<Conv2d, ModelError> {
    load_conv2d(
        weights,
        &format!("{prefix}.conv"),
        [in_channels, out_channels],
        kernel,
        stride,
        Activation::Silu,
    )
}

/// Two 3x3 convs, with a residual connection in the backbone.
struct Bottleneck {
    cv1: Conv2d,
    cv2: Conv2d,
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
            cv1: conv_block(weights, &format!("{prefix}.cv1"), channels, channels, 3, 1)?,
            cv2: conv_block(weights, &format!("{prefix}.cv2"), channels, channels, 3, 1)?,
            residual,
        })
    }

    /// Runs `input` (of `shape`) into `output`, which has the same size.
    fn run(&self, input: &[f32], shape: Shape, output: &mut [f32]) {
        let mut hidden = vec![0.0; shape.count()];
        self.cv1.run(input, shape, &mut hidden);
        self.cv2.run(&hidden, shape, output);
        if self.residual {
            for (value, addend) in output.iter_mut().zip(input) {
                *value += addend;
            }
        }
    }
}

/// CSP block with two convolutions: split in halves, chain bottlenecks on the second half, and
/// fuse every intermediate result. The halves and the bottleneck outputs are written one after
/// another into one map, so the split and the concatenation cost nothing.
struct C2f {
    cv1: Conv2d,
    cv2: Conv2d,
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
        let cv1 = conv_block(
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
        let cv2 = conv_block(
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

    fn forward(&self, input: &FeatureMap) -> FeatureMap {
        let part = Shape {
            channels: self.hidden,
            ..input.shape
        };
        let mut parts = FeatureMap::zeros(Shape {
            channels: (2 + self.bottlenecks.len()) * self.hidden,
            ..input.shape
        });
        let part_len = part.count();
        self.cv1.run(
            &input.values,
            input.shape,
            &mut parts.values[..2 * part_len],
        );
        for (index, bottleneck) in self.bottlenecks.iter().enumerate() {
            let (done, rest) = parts.values.split_at_mut((2 + index) * part_len);
            bottleneck.run(&done[(1 + index) * part_len..], part, &mut rest[..part_len]);
        }
        self.cv2.forward(&parts)
    }
}

/// Spatial pyramid pooling, fast: three chained 5x5 max-pools stand for 5, 9 and 13 windows.
struct Sppf {
    cv1: Conv2d,
    cv2: Conv2d,
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
            cv1: conv_block(weights, &format!("{prefix}.cv1"), in_channels, hidden, 1, 1)?,
            cv2: conv_block(
                weights,
                &format!("{prefix}.cv2"),
                4 * hidden,
                out_channels,
                1,
                1,
            )?,
        })
    }

    /// Pools into consecutive quarters of one map: `[x, pool(x), pool²(x), pool³(x)]`.
    fn forward(&self, input: &FeatureMap) -> FeatureMap {
        let part = self.cv1.output_shape(input.shape);
        let part_len = part.count();
        let mut pyramid = FeatureMap::zeros(Shape {
            channels: 4 * part.channels,
            ..part
        });
        self.cv1
            .run(&input.values, input.shape, &mut pyramid.values[..part_len]);
        for level in 1..4 {
            let (done, rest) = pyramid.values.split_at_mut(level * part_len);
            max_pool_same(
                &done[(level - 1) * part_len..],
                part,
                SPPF_KERNEL,
                &mut rest[..part_len],
            );
        }
        self.cv2.forward(&pyramid)
    }
}

/// Conv, conv, then a plain 1x1 projection (no activation): one head branch at one stride. The
/// first conv is kept apart so the box and class branches of a stride can share it (see
/// [`DetectHead`]).
struct Branch {
    second: Conv2d,
    projection: Conv2d,
}

impl Branch {
    /// The branch's first conv and the rest.
    fn load(
        weights: &mut Weights,
        prefix: &str,
        in_channels: usize,
        hidden: usize,
        out_channels: usize,
    ) -> Result<(Conv2d, Self), ModelError> {
        let first = conv_block(weights, &format!("{prefix}.0"), in_channels, hidden, 3, 1)?;
        let rest = Self {
            second: conv_block(weights, &format!("{prefix}.1"), hidden, hidden, 3, 1)?,
            projection: load_conv2d(
                weights,
                &format!("{prefix}.2"),
                [hidden, out_channels],
                1,
                1,
                Activation::Identity,
            )?,
        };
        Ok((first, rest))
    }

    /// Runs the first conv's output `hidden` (of `shape`) into `output`, the branch's channels.
    fn run(&self, hidden: &[f32], shape: Shape, output: &mut [f32]) {
        let second_shape = self.second.output_shape(shape);
        let mut second = vec![0.0; second_shape.count()];
        self.second.run(hidden, shape, &mut second);
        self.projection.run(&second, second_shape, output);
    }
}

/// Ultralytics `Detect`: per stride a box branch (`cv2`, DFL logits) and a class branch (`cv3`).
/// Both start with a 3x3 conv of the same input, run as one stacked conv.
struct DetectHead {
    first_convs: Vec<Conv2d>,
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
        let mut first_convs = Vec::new();
        let mut box_branches = Vec::new();
        let mut class_branches = Vec::new();
        for (level, channels) in in_channels.into_iter().enumerate() {
            let box_prefix = format!("{prefix}.cv2.{level}");
            let (box_first, box_branch) =
                Branch::load(weights, &box_prefix, channels, BOX_HIDDEN, 4 * DFL_BINS)?;
            let class_prefix = format!("{prefix}.cv3.{level}");
            let (class_first, class_branch) =
                Branch::load(weights, &class_prefix, channels, CLASS_HIDDEN, classes)?;
            first_convs.push(box_first.stack(class_first));
            box_branches.push(box_branch);
            class_branches.push(class_branch);
        }
        // The DFL "convolution" is a fixed dot product with the bin values; kept as loaded.
        let dfl_bins = weights
            .take(&format!("{prefix}.dfl.conv.weight"), &[1, DFL_BINS, 1, 1])?
            .flatten_all()?
            .to_vec1()?;
        Ok(Self {
            first_convs,
            box_branches,
            class_branches,
            dfl_bins,
        })
    }

    /// Per stride, the box logits then the class logits, as channels of one map.
    fn forward(&self, levels: [&FeatureMap; 3]) -> [FeatureMap; 3] {
        std::array::from_fn(|level| {
            let hidden = self.first_convs[level].forward(levels[level]);
            let plane = hidden.shape.plane();
            let branches = [&self.box_branches[level], &self.class_branches[level]];
            let mut output = FeatureMap::zeros(Shape {
                channels: branches.iter().map(|b| b.projection.out_channels()).sum(),
                ..hidden.shape
            });
            let (mut hidden_rest, mut output_rest) = (&hidden.values[..], &mut output.values[..]);
            for branch in branches {
                let hidden_shape = Shape {
                    channels: branch.second.out_channels(),
                    ..hidden.shape
                };
                let (input, next_input) = hidden_rest.split_at(hidden_shape.count());
                let (out, next_out) =
                    output_rest.split_at_mut(branch.projection.out_channels() * plane);
                branch.run(input, hidden_shape, out);
                (hidden_rest, output_rest) = (next_input, next_out);
            }
            output
        })
    }
}
