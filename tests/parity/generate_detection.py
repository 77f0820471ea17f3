#!/usr/bin/env python3
"""Generate the detection parity fixtures for wick (YOLOv8 from ultralytics, Tiny YOLOv2 via
OpenCV's darknet reader).

YOLOv8: the REAL ultralytics `DetectionModel` is built from its yaml (no download). Every
floating-point state-dict entry except the DFL integral weights (a fixed `arange(16)` in every
real checkpoint) is overwritten with `synth(name, shape)` from generate.py. Written to
`tests/fixtures/detection/`:

- `yolov8n.json`: the raw head output `model(x)[0]` on a synthetic input (checksums and sampled
  values), then on real photos letterboxed by ultralytics' own `LetterBox` (`auto=False`, the
  square canvas, and `auto=True`, the predictor's minimal one): the boxes
  after ultralytics' `non_max_suppression` mapped back with `scale_boxes`, and samples of the
  letterboxed pixels (to compare wick's letterbox with ultralytics').
- `tiny_yolov8.pt` + `tiny_yolov8.json`: a very small YOLOv8 (custom width) saved with
  ultralytics' own `Model.save` (a pickled module object in half precision) and its raw output.

Tiny YOLOv2 (`--darknet`, needs OpenCV < 5 on PYTHONPATH for `cv2.dnn.readNetFromDarknet`):
see `darknet_fixture` below.

Usage: VENV/bin/python tests/parity/generate_detection.py [--only yolov8n|tiny] [--darknet]
(venv: pip install torch ultralytics opencv-python-headless; for --darknet also
`pip install --target /var/tmp/cv4 "opencv-python-headless<5"`, or set CV4_PATH)
CI never runs this; only the committed files are used.
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from generate import synth  # noqa: E402

torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "detection")
PHOTOS = os.path.join(ROOT, "..", "shared", "fixtures")
RAW_INPUT = [1, 3, 256, 320]  # non-square on purpose: the anchor grid must be row-major
SAMPLES = 256


def fill(model):
    """synth() every float entry except the DFL bins; returns the [name, shape] list."""
    sd = model.state_dict()
    new_sd, tensors = {}, []
    for name, t in sd.items():
        if t.is_floating_point() and not name.endswith("dfl.conv.weight"):
            new_sd[name] = torch.from_numpy(synth(name, list(t.shape)))
            tensors.append([name, list(t.shape)])
        else:
            new_sd[name] = t.clone()
    model.load_state_dict(new_sd, strict=True)
    return tensors


def raw_summary(y):
    """Checksums and SAMPLES evenly spread values of a (1, C, A) raw output."""
    flat = y.double().flatten()
    idx = np.linspace(0, flat.numel() - 1, SAMPLES).round().astype(np.int64)
    return {
        "shape": list(y.shape),
        "sum": float(flat.sum()),
        "abs_sum": float(flat.abs().sum()),
        "sample_index": idx.tolist(),
        "sample_value": [float(flat[i]) for i in idx],
    }


def input_tensor(shape):
    # Image-like values in [0, 1].
    return torch.from_numpy((synth("input", shape) + 1.0) / 2.0)


def photo_case(model, name, size, nc, auto=False):
    import cv2
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes

    bgr = cv2.imread(os.path.join(PHOTOS, name))
    lb = LetterBox(new_shape=(size, size), auto=auto, scaleup=True, center=True)
    boxed = lb(image=bgr)
    rgb = boxed[..., ::-1].copy()
    h, w = rgb.shape[:2]
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        y = model(x)[0]
    best = y[0, 4:].max(0).values.sort(descending=True).values
    # A threshold in the middle of a wide gap among the top scores: a few dozen candidates, and
    # none close enough to the threshold to flip with a one-level pixel difference.
    gaps = [(float(best[i] - best[i + 1]), i) for i in range(10, 60)]
    _, i = max(gaps)
    conf = float((best[i] + best[i + 1]) / 2)
    iou = 0.45
    det = non_max_suppression(y, conf_thres=conf, iou_thres=iou, max_det=300, nc=nc)[0]
    det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], bgr.shape[:2])
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, h, 512), rng.integers(0, w, 512)
    return {
        "photo": name,
        "letterbox_mode": "rect" if auto else "square",
        "size": [h, w],
        "original": [bgr.shape[0], bgr.shape[1]],
        "letterbox": {
            "shape": [h, w],
            "pixel_y": ys.tolist(),
            "pixel_x": xs.tolist(),
            "pixel_rgb": rgb[ys, xs].tolist(),
            "mean_rgb": rgb.reshape(-1, 3).mean(0).tolist(),
        },
        "raw": raw_summary(y),
        "threshold": conf,
        "iou": iou,
        "candidates": int((best > conf).sum()),
        "boxes": [[float(v) for v in row[:4]] + [float(row[4]), int(row[5])] for row in det],
    }


def yolov8n():
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    tensors = fill(model)
    model.eval()
    eps = sorted({m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)})
    with torch.no_grad():
        y = model(input_tensor(RAW_INPUT))[0]
    doc = {
        "architecture": "yolov8n",
        "generator": f"ultralytics {__import__('ultralytics').__version__}, torch {torch.__version__}",
        "bn_eps": eps,
        "tensors": tensors,
        "input_shape": RAW_INPUT,
        "raw": raw_summary(y),
        # The validator's square canvas and the predictor's minimal one (`auto=True`).
        "photos": [
            photo_case(model, p, 640, 80, auto)
            for auto in [False, True]
            for p in ["chelsea.png", "coffee.png"]
        ],
    }
    with open(os.path.join(OUT, "yolov8n.json"), "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
    print("yolov8n:", [(p["photo"], len(p["boxes"]), p["candidates"]) for p in doc["photos"]])


TINY_YAML = """
nc: 3
reg_max: 4
scales:
  t: [0.33, 0.0625, 256]
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 3, C2f, [128, True]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [-1, 6, C2f, [256, True]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [-1, 6, C2f, [512, True]]
  - [-1, 1, Conv, [1024, 3, 2]]
  - [-1, 3, C2f, [1024, True]]
  - [-1, 1, SPPF, [1024, 5]]
head:
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 6], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 4], 1, Concat, [1]]
  - [-1, 3, C2f, [256]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [[-1, 12], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [[-1, 9], 1, Concat, [1]]
  - [-1, 3, C2f, [1024]]
  - [[15, 18, 21], 1, Detect, [nc]]
"""


def tiny_checkpoint():
    """A YOLOv8 with 1/16 width and 4 DFL bins (a small file) saved by ultralytics' own Model.save (half precision)."""
    import tempfile

    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as tmp:
        yaml_path = os.path.join(tmp, "tiny-yolov8t.yaml")
        with open(yaml_path, "w") as fh:
            fh.write(TINY_YAML)
        yolo = YOLO(yaml_path, task="detect")
    model = yolo.model
    model.names = {0: "cat", 1: "cup", 2: "saucer"}
    fill(model)
    model.eval()
    pt = os.path.join(OUT, "tiny_yolov8.pt")
    yolo.save(pt)
    # What the file holds: half-precision weights. The reference runs those same values in f32.
    model = model.half().float().eval()
    with torch.no_grad():
        y = model(input_tensor(RAW_INPUT))[0]
    doc = {
        "checkpoint": "tiny_yolov8.pt",
        "sha256": hashlib.sha256(open(pt, "rb").read()).hexdigest(),
        "names": ["cat", "cup", "saucer"],
        "input_shape": RAW_INPUT,
        "raw": raw_summary(y),
    }
    with open(os.path.join(OUT, "tiny_yolov8.json"), "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
    print("tiny_yolov8.pt:", os.path.getsize(pt), "bytes")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--darknet", action="store_true", help="only the Tiny YOLOv2 fixture")
    ap.add_argument("--only", choices=["yolov8n", "tiny"], help="only one YOLOv8 fixture")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if args.darknet:
        from generate_darknet import darknet_fixture

        darknet_fixture(OUT, PHOTOS)
        return
    if args.only != "tiny":
        yolov8n()
    if args.only != "yolov8n":
        tiny_checkpoint()


if __name__ == "__main__":
    main()
