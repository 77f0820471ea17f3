"""Tiny YOLOv2 reference outputs from OpenCV's darknet reader (imported by generate_detection.py).

The `.weights` file is written from `synth(name, shape)` in darknet order under wick's tensor
names (`layers.{i}.bn.{bias,weight,running_mean,running_var}`, `layers.{i}.conv.{bias,weight}`),
after a version 0.2.0 header with `seen` = 0 as u64; the Rust test rebuilds the same bytes, so
no binary is committed. OpenCV (< 5: 5.0 dropped `readNetFromDarknet`) runs the cfg + weights:
- on a synthetic input: the last convolution's output (`conv_14`, before the region layer) and
  the region layer's rows `[cx, cy, w, h, objectness, class scores]` (relative coordinates,
  class scores = objectness x softmax). OpenCV's region layer also runs darknet's per-class
  `do_nms_sort` with its fixed `nms_threshold` of 0.4: a class score of a box that another box of
  higher score suppresses is written as 0. Those zeros are not network outputs; the test compares
  the box columns and every class score OpenCV kept.
- on chelsea.png (lossless, so the comparison sees the letterbox and the network, not two JPEG
  decoders) letterboxed like darknet (0.5 grey): every row with a class score above `threshold`,
  as boxes in original pixels, after that same NMS at IoU 0.4.
"""

import json
import os
import tempfile

import numpy as np

from generate import synth

SAMPLES = 256


def parse_layers(cfg_text):
    sections = []
    for raw in cfg_text.splitlines():
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            sections.append((line[1:-1], {}))
        else:
            k, v = line.split("=", 1)
            sections[-1][1][k] = v
    return sections


def tensor_layout(cfg_text):
    sections = parse_layers(cfg_text)
    c_in = int(sections[0][1].get("channels", 3))
    out = []
    for i, (name, s) in enumerate(sections[1:]):
        if name != "convolutional":
            continue
        f, k = int(s["filters"]), int(s.get("size", 1))
        if s.get("batch_normalize") == "1":
            out += [(f"layers.{i}.bn.{leaf}", [f]) for leaf in ["bias", "weight", "running_mean", "running_var"]]
        else:
            out.append((f"layers.{i}.conv.bias", [f]))
        out.append((f"layers.{i}.conv.weight", [f, c_in, k, k]))
        c_in = f
    return out


def write_weights(cfg_text, path):
    with open(path, "wb") as fh:
        np.array([0, 2, 0], dtype="<i4").tofile(fh)
        np.array([0], dtype="<u8").tofile(fh)
        for name, shape in tensor_layout(cfg_text):
            synth(name, shape).astype("<f4").tofile(fh)


def letterbox_darknet(bgr, size):
    import cv2

    h, w = bgr.shape[:2]
    r = min(size / h, size / w)
    nw, nh = max(round(w * r), 1), max(round(h * r), 1)
    resized = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)[..., ::-1]
    left, top = round((size - nw) / 2 - 0.1), round((size - nh) / 2 - 0.1)
    canvas = np.full((size, size, 3), 0.5, dtype=np.float32)
    canvas[top : top + nh, left : left + nw] = resized.astype(np.float32) / 255.0
    return canvas, (r, nw, nh, left, top)


def darknet_fixture(out_dir, photos):
    import sys

    sys.path.insert(0, os.environ.get("CV4_PATH", "/var/tmp/cv4"))  # opencv-python-headless < 5, pip --target
    import cv2

    cfg_path = os.path.join(out_dir, "tiny_yolov2.cfg")
    cfg_text = open(cfg_path).read()
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "tiny_yolov2.weights")
        write_weights(cfg_text, weights)
        net = cv2.dnn.readNetFromDarknet(cfg_path, weights)
    size = 416
    x = ((synth("input", [1, 3, size, size]) + 1.0) / 2.0).astype(np.float32)
    net.setInput(x)
    rows, conv = net.forward(["detection_out", "conv_14"])
    flat = rows.astype(np.float64).flatten()
    idx = np.linspace(0, flat.size - 1, SAMPLES).round().astype(np.int64)
    conv_flat = conv.astype(np.float64).flatten()
    conv_idx = np.linspace(0, conv_flat.size - 1, SAMPLES).round().astype(np.int64)

    bgr = cv2.imread(os.path.join(photos, "chelsea.png"))
    canvas, (r, nw, nh, left, top) = letterbox_darknet(bgr, size)
    net.setInput(canvas.transpose(2, 0, 1)[None].copy())
    photo_rows = net.forward()
    best = photo_rows[:, 5:].max(1)
    order = np.sort(best)[::-1]
    gaps = [(order[i] - order[i + 1], i) for i in range(5, 40)]
    _, i = max(gaps)
    threshold = float((order[i] + order[i + 1]) / 2)
    boxes = []
    for row in photo_rows[best > threshold]:
        cx, cy, w, h = row[:4] * size
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        gx, gy = nw / bgr.shape[1], nh / bgr.shape[0]
        clip = lambda v, hi: float(min(max(v, 0.0), hi))
        boxes.append(
            [
                clip((x1 - left) / gx, bgr.shape[1]),
                clip((y1 - top) / gy, bgr.shape[0]),
                clip((x2 - left) / gx, bgr.shape[1]),
                clip((y2 - top) / gy, bgr.shape[0]),
                float(row[5:].max()),
                int(row[5:].argmax()),
            ]
        )
    boxes.sort(key=lambda b: -b[4])
    doc = {
        "generator": f"opencv-python-headless {cv2.__version__} cv2.dnn.readNetFromDarknet",
        "cfg": "tiny_yolov2.cfg",
        "input_shape": [1, 3, size, size],
        "conv_shape": list(conv.shape),
        "conv_abs_sum": float(np.abs(conv_flat).sum()),
        "conv_sample_index": conv_idx.tolist(),
        "conv_sample_value": [float(conv_flat[i]) for i in conv_idx],
        "region_rows_shape": list(rows.shape),
        "region_sum": float(flat.sum()),
        "region_sample_index": idx.tolist(),
        "region_sample_value": [float(flat[i]) for i in idx],
        "photo": "chelsea.png",
        "threshold": threshold,
        "nms_iou": 0.4,
        "boxes": boxes,
    }
    with open(os.path.join(out_dir, "tiny_yolov2.json"), "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
    print("tiny_yolov2:", rows.shape, len(boxes), "boxes above", threshold)
