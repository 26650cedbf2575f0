#!/usr/bin/env python3
"""The onnxruntime side of the detect_vs_onnxruntime benchmark.

Runs yolov8n.onnx with Ultralytics' prediction pipeline (LetterBox geometry, scale 0..1, conf
threshold, class-wise NMS, scale_boxes) on already decoded RGB images, so both sides see the same
pixels, and prints one JSON object: timings and detections. The resize is Pillow's BILINEAR, as in
Prism and in the reference numbers of shared/MODELS.md (Ultralytics itself uses OpenCV's two-tap
INTER_LINEAR, which aliases on large downscales).

Images are given as PATH:WIDTH:HEIGHT:INPUT_PATH: raw 8-bit RGB, its size, and the network input
Prism letterboxed from it (3 planes of SIZE x SIZE bytes). The timed runs letterbox with Pillow
themselves; the detections printed come from Prism's network input, so they compare the two
networks on identical tensors (Pillow and fast_image_resize round a few pixels differently).
The export has a fixed batch of 1, so a "batch" here is that many single-image runs.
"""

import argparse
import ast
import json
import statistics
import time

import numpy as np
import onnxruntime
from PIL import Image

PAD_VALUE = 114
CLASS_OFFSET = 7680  # Ultralytics' max_wh: shifts boxes of different classes apart for NMS
MAX_DETECTIONS = 300


def geometry(width, height, size):
    """Ultralytics' LetterBox numbers: scale, resized size, left and top padding."""
    gain = min(size / height, size / width)
    resized = round(width * gain), round(height * gain)
    left, top = round((size - resized[0]) / 2 - 0.1), round((size - resized[1]) / 2 - 0.1)
    return gain, resized, left, top


def letterbox(rgb, size):
    height, width = rgb.shape[:2]
    _, resized, left, top = geometry(width, height, size)
    if (width, height) != resized:
        rgb = np.asarray(Image.fromarray(rgb).resize(resized, Image.Resampling.BILINEAR))
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[top:top + resized[1], left:left + resized[0]] = rgb
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def iou(box, boxes):
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    intersection = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return intersection / (area(box) + area(boxes) - intersection)


def nms(boxes, scores, threshold):
    order = scores.argsort()[::-1]
    keep = []
    while order.size and len(keep) < MAX_DETECTIONS:
        best, rest = order[0], order[1:]
        keep.append(best)
        order = rest[iou(boxes[best], boxes[rest]) <= threshold]
    return keep


def detect(session, tensor, width, height, confidence, iou_threshold, names):
    gain, _, left, top = geometry(width, height, tensor.shape[-1])
    output = session.run(None, {session.get_inputs()[0].name: tensor})[0][0].T
    scores = output[:, 4:]
    class_ids, confidences = scores.argmax(1), scores.max(1)
    chosen = confidences > confidence
    xywh, class_ids, confidences = output[chosen, :4], class_ids[chosen], confidences[chosen]
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    keep = nms(boxes + class_ids[:, None] * CLASS_OFFSET, confidences, iou_threshold)
    detections = []
    for index in keep:
        x1, y1, x2, y2 = ((boxes[index] - [left, top, left, top]) / gain).tolist()
        detections.append({
            "class": names[int(class_ids[index])],
            "class_id": int(class_ids[index]),
            "confidence": float(confidences[index]),
            "box": {
                "x1": min(max(x1, 0.0), width), "y1": min(max(y1, 0.0), height),
                "x2": min(max(x2, 0.0), width), "y2": min(max(y2, 0.0), height),
            },
        })
    return detections


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--confidence", type=float, default=0.25)
    parser.add_argument("--iou", type=float, default=0.7)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime's intra-op threads (0: its default, one per core)")
    parser.add_argument("images", nargs="+", help="PATH:WIDTH:HEIGHT:INPUT_PATH (see above)")
    args = parser.parse_args()

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    names = ast.literal_eval(metadata["names"])  # Ultralytics writes the class names as a dict literal
    images, prism_inputs = [], []
    for spec in args.images:
        path, width, height, input_path = spec.rsplit(":", 3)
        images.append(np.fromfile(path, np.uint8).reshape(int(height), int(width), 3))
        planes = np.fromfile(input_path, np.uint8).reshape(1, 3, args.size, args.size)
        prism_inputs.append(planes.astype(np.float32) / 255.0)

    detect_in = lambda tensor, rgb: detect(
        session, tensor, rgb.shape[1], rgb.shape[0], args.confidence, args.iou, names)
    run = lambda rgb: detect_in(letterbox(rgb, args.size), rgb)
    detections = [detect_in(tensor, rgb) for tensor, rgb in zip(prism_inputs, images)]
    for rgb in images:
        run(rgb)  # warm-up

    latencies = []
    for _ in range(args.iterations):
        for rgb in images:
            start = time.perf_counter()
            run(rgb)
            latencies.append((time.perf_counter() - start) * 1000)

    batch = [images[index % len(images)] for index in range(args.batch)]
    batch_times = []
    for _ in range(args.iterations):
        start = time.perf_counter()
        for rgb in batch:
            run(rgb)
        batch_times.append((time.perf_counter() - start) * 1000)

    print(json.dumps({
        "runtime": f"onnxruntime {onnxruntime.__version__}",
        "batch1_median_ms": statistics.median(latencies),
        "batch_median_ms": statistics.median(batch_times),
        "detections": detections,
    }))


if __name__ == "__main__":
    main()
