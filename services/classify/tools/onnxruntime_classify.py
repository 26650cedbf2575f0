#!/usr/bin/env python3
"""The onnxruntime side of classify's reference test and benchmark.

Builds an ONNX graph of EfficientNet-Lite0 from the same safetensors file Prism loads (onnx and
numpy only; BatchNorm folded into the convolutions, eps 1e-3; TF "SAME" padding as SAME_UPPER;
ReLU6 as Clip(0, 6); depthwise convolutions as grouped Conv; global average pool, Gemm, Softmax)
and runs it with onnxruntime. Prints one JSON object.

Two kinds of input, any number of each:
  --image PATH    a picture, preprocessed here with Pillow the way Prism does it: RGB, resized so
                  its shorter side is 256 (BILINEAR, which averages when shrinking; the longer
                  side rounded, ties to even), centre crop 224 (left and top offsets rounded
                  down), (x - 127) / 128, planes R, G, B. This gives shared/MODELS.md's figures
                  (chelsea.png: tiger cat 0.383, Egyptian cat 0.370, tabby 0.161; coffee.png:
                  espresso 0.957); truncating the longer side instead (384 for chelsea's 385)
                  moves chelsea's by up to 0.007.
  --input PATH    a network input Prism made: 3 x 224 x 224 little-endian float32 values.
For each it prints the top-k classes and all 1000 probabilities, pictures first, then inputs, each
in the order given; --save-inputs DIR also writes the Pillow-made tensors (name.input, same raw
layout), --save-onnx PATH the graph. --iterations N times single runs and --batch runs: of the
pictures with their preprocessing (batch1_median_ms, batch_median_ms; of the inputs when there are
no pictures) and of the inputs alone, the network only (network_batch1_median_ms,
network_batch_median_ms).

Needs the venv that `deploy/local/fetch-assets.sh --onnxruntime` makes.
"""

import argparse
import json
import os
import statistics
import struct
import time

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

INPUT_SIZE = 224
RESIZE_SHORTER = 256
MEAN, STD = 127.0, 128.0
BN_EPS = 1e-3
# EfficientNet-Lite0's blocks that halve the resolution (the first block of stages 2, 3, 4, 6);
# kernel sizes, expansion and channels are read from the weights' shapes.
STRIDE_TWO_BLOCKS = {1, 3, 5, 11}


def read_safetensors(path):
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
        data = file.read()
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] != "F32":
            raise ValueError(f"{name}: {entry['dtype']}, expected F32")
        start, end = entry["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], "<f4").reshape(entry["shape"]).astype(np.float32)
    return tensors


class GraphBuilder:
    def __init__(self, weights):
        self.weights = weights
        self.nodes, self.initializers = [], []
        self.count = 0

    def name(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def constant(self, prefix, array):
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def conv_bn(self, x, conv, bn, stride, relu6):
        """Conv (no bias) then BatchNorm, folded into one Conv with a bias; ReLU6 if asked."""
        weight = self.weights[f"{conv}.weight"]
        gamma, beta = self.weights[f"{bn}.weight"], self.weights[f"{bn}.bias"]
        mean, var = self.weights[f"{bn}.running_mean"], self.weights[f"{bn}.running_var"]
        scale = gamma / np.sqrt(var + BN_EPS)
        folded_weight = weight * scale[:, None, None, None]
        folded_bias = beta - mean * scale
        out_channels, in_per_group, kernel, _ = weight.shape
        group = out_channels if in_per_group == 1 and out_channels > 1 else 1
        y = self.name("conv")
        self.nodes.append(helper.make_node(
            "Conv", [x, self.constant("w", folded_weight), self.constant("b", folded_bias)], [y],
            kernel_shape=[kernel, kernel], strides=[stride, stride], group=group, auto_pad="SAME_UPPER"))
        if relu6:
            clipped = self.name("relu6")
            self.nodes.append(helper.make_node(
                "Clip", [y, self.constant("zero", np.array(0.0)), self.constant("six", np.array(6.0))], [clipped]))
            y = clipped
        return y

    def block(self, x, index):
        prefix = f"_blocks.{index}"
        stride = 2 if index in STRIDE_TWO_BLOCKS else 1
        y = x
        if f"{prefix}._expand_conv.weight" in self.weights:
            y = self.conv_bn(y, f"{prefix}._expand_conv", f"{prefix}._bn0", 1, True)
        y = self.conv_bn(y, f"{prefix}._depthwise_conv", f"{prefix}._bn1", stride, True)
        y = self.conv_bn(y, f"{prefix}._project_conv", f"{prefix}._bn2", 1, False)
        in_channels = self.weights[f"{prefix}._expand_conv.weight"].shape[1] \
            if f"{prefix}._expand_conv.weight" in self.weights \
            else self.weights[f"{prefix}._depthwise_conv.weight"].shape[0]
        out_channels = self.weights[f"{prefix}._project_conv.weight"].shape[0]
        if stride == 1 and in_channels == out_channels:
            summed = self.name("add")
            self.nodes.append(helper.make_node("Add", [y, x], [summed]))
            y = summed
        return y

    def build(self):
        blocks = sorted({int(name.split(".")[1]) for name in self.weights if name.startswith("_blocks.")})
        if blocks != list(range(16)):
            raise ValueError(f"expected blocks 0..15, found {blocks}")
        x = self.conv_bn("input", "_conv_stem", "_bn0", 2, True)
        for index in blocks:
            x = self.block(x, index)
        x = self.conv_bn(x, "_conv_head", "_bn1", 1, True)
        pooled, flat, logits = self.name("pool"), self.name("flat"), self.name("logits")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat], axis=1))
        self.nodes.append(helper.make_node(
            "Gemm", [flat, self.constant("fc_w", self.weights["_fc.weight"]), self.constant("fc_b", self.weights["_fc.bias"])],
            [logits], transB=1))
        self.nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=1))
        graph = helper.make_graph(
            self.nodes, "efficientnet_lite0",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 1000])],
            self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def decode(path):
    return Image.open(path).convert("RGB")


def preprocess(image):
    """Prism's preprocessing with Pillow, from a decoded RGB picture: 3 x 224 x 224 float32."""
    width, height = image.size
    if width <= height:
        resized = RESIZE_SHORTER, round(RESIZE_SHORTER * height / width)
    else:
        resized = round(RESIZE_SHORTER * width / height), RESIZE_SHORTER
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.BILINEAR)
    left, top = (resized[0] - INPUT_SIZE) // 2, (resized[1] - INPUT_SIZE) // 2
    crop = np.asarray(image, dtype=np.float32)[top:top + INPUT_SIZE, left:left + INPUT_SIZE]
    return np.ascontiguousarray(((crop - MEAN) / STD).transpose(2, 0, 1), dtype=np.float32)


def read_input(path):
    return np.fromfile(path, "<f4").reshape(3, INPUT_SIZE, INPUT_SIZE)


def top_k(probabilities, labels, k):
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i], "score": float(probabilities[i])} for i in order]


def time_sources(session, sources, iterations, batch_size):
    """Median milliseconds of one source at a time and of a batch of `batch_size` (cycled)."""
    prepare = lambda kind, source: preprocess(source) if kind == "image" else source
    run_one = lambda kind, source: session.run(None, {"input": prepare(kind, source)[None]})
    for source in sources:
        run_one(*source)  # warm-up
    latencies = []
    for _ in range(iterations):
        for source in sources:
            start = time.perf_counter()
            run_one(*source)
            latencies.append((time.perf_counter() - start) * 1000)
    batch = [sources[index % len(sources)] for index in range(batch_size)]
    batch_times = []
    for _ in range(iterations):
        start = time.perf_counter()
        inputs = np.stack([prepare(kind, source) for kind, source in batch])
        session.run(None, {"input": inputs})
        batch_times.append((time.perf_counter() - start) * 1000)
    return statistics.median(latencies), statistics.median(batch_times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="efficientnet-lite0.safetensors")
    parser.add_argument("--labels", required=True, help="imagenet1k-labels.json")
    parser.add_argument("--image", action="append", default=[])
    parser.add_argument("--input", action="append", default=[])
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--save-inputs", help="folder for the Pillow-made network inputs")
    parser.add_argument("--save-onnx", help="where to write the ONNX graph")
    parser.add_argument("--iterations", type=int, default=0,
                        help="timing rounds (0: none): median latency of single runs, and of one batch")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime's intra-op threads (0: its default, one per core)")
    args = parser.parse_args()

    with open(args.labels) as file:
        names = json.load(file)
    labels = [names[str(index)].split(",")[0].strip() for index in range(len(names))]
    model = GraphBuilder(read_safetensors(args.weights)).build()
    if args.save_onnx:
        onnx.save(model, args.save_onnx)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    results = []
    pictures = {path: decode(path) for path in args.image}
    tensors = [("image", path, preprocess(pictures[path])) for path in args.image] + \
        [("input", path, read_input(path)) for path in args.input]
    for kind, path, tensor in tensors:
        probabilities = session.run(None, {"input": tensor[None]})[0][0]
        results.append({kind: path, "top": top_k(probabilities, labels, args.top_k),
                        "probabilities": probabilities.tolist()})
        if args.save_inputs and kind == "image":
            stem = os.path.splitext(os.path.basename(path))[0]
            tensor.astype("<f4").tofile(os.path.join(args.save_inputs, f"{stem}.input"))

    output = {"runtime": f"onnxruntime {onnxruntime.__version__}", "results": results}
    if args.iterations and tensors:
        # Pictures are timed with their preprocessing (already decoded), as Prism's side does;
        # network inputs given as files are read beforehand and timed alone (the network only).
        # The top-level figures are the pictures' when there are any, else the inputs'.
        pictures_timed = [("image", pictures[path]) for path in args.image]
        inputs_timed = [("input", tensor) for kind, _, tensor in tensors if kind == "input"]
        timings = {kind: time_sources(session, sources, args.iterations, args.batch)
                   for kind, sources in (("image", pictures_timed), ("input", inputs_timed)) if sources}
        output["batch1_median_ms"], output["batch_median_ms"] = timings.get("image", timings.get("input"))
        if "input" in timings:
            output["network_batch1_median_ms"], output["network_batch_median_ms"] = timings["input"]
    print(json.dumps(output))


if __name__ == "__main__":
    main()
