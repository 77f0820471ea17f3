#!/usr/bin/env python3
"""Generate the YOLO11 detection parity fixtures for wick.

The REAL ultralytics `DetectionModel` is built from ultralytics' own `yolo11.yaml` (no download),
and every floating-point state-dict entry except the DFL integral weights is overwritten with
`synth(name, shape)` from generate.py (see `fill` in generate_detection.py). Written to
`tests/fixtures/detection/`:

- `yolo11n.json`, `yolo11s.json`: the raw head output `model(x)[0]` on a non-square synthetic
  input (checksums and sampled values); for yolo11n also one real photo on the predictor's
  minimal canvas (`LetterBox(auto=True)`) with the boxes after ultralytics'
  `non_max_suppression`, mapped back with `scale_boxes`.
- `tiny_yolo11.pt` + `tiny_yolo11.json`: a very small YOLO11 (width 1/16, 4 DFL bins, C3k and plain
  bottleneck blocks, C2PSA, the DWConv class branch) saved with ultralytics' own `Model.save`
  (a pickled module object in half precision), its class names and raw output.

Usage: VENV/bin/python tests/parity/generate_yolo11.py [--only yolo11n|yolo11s|tiny]
CI never runs this; only the committed files are used.
"""

import argparse
import hashlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from generate_detection import OUT, RAW_INPUT, fill, input_tensor, photo_case, raw_summary  # noqa: E402

torch.set_num_threads(1)


def scale(name):
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(f"{name}.yaml", nc=80, verbose=False)
    tensors = fill(model)
    model.eval()
    eps = sorted({m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)})
    with torch.no_grad():
        y = model(input_tensor(RAW_INPUT))[0]
    doc = {
        "architecture": name,
        "generator": f"ultralytics {__import__('ultralytics').__version__}, torch {torch.__version__}",
        "bn_eps": eps,
        "tensors": tensors,
        "input_shape": RAW_INPUT,
        "raw": raw_summary(y),
        "photos": [photo_case(model, "chelsea.png", 640, 80, True)] if name == "yolo11n" else [],
    }
    with open(os.path.join(OUT, f"{name}.json"), "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
    print(name, [(p["photo"], len(p["boxes"]), p["candidates"]) for p in doc["photos"]])


# yolo11.yaml's layer list at 1/16 width with 4 DFL bins (a small file); the `True` rows keep
# their C3k blocks at this scale.
TINY_YAML = """
nc: 3
reg_max: 4
scales:
  t: [0.50, 0.0625, 256]
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 2, C3k2, [256, False, 0.25]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [-1, 2, C3k2, [512, False, 0.25]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [-1, 2, C3k2, [512, True]]
  - [-1, 1, Conv, [1024, 3, 2]]
  - [-1, 2, C3k2, [1024, True]]
  - [-1, 1, SPPF, [1024, 5]]
  - [-1, 2, C2PSA, [1024]]
head:
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 6], 1, Concat, [1]]
  - [-1, 2, C3k2, [512, False]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 4], 1, Concat, [1]]
  - [-1, 2, C3k2, [256, False]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [[-1, 13], 1, Concat, [1]]
  - [-1, 2, C3k2, [512, False]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [[-1, 10], 1, Concat, [1]]
  - [-1, 2, C3k2, [1024, True]]
  - [[16, 19, 22], 1, Detect, [nc]]
"""


def tiny_checkpoint():
    """A 1/16-width YOLO11 saved by ultralytics' own Model.save (half precision)."""
    import tempfile

    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as tmp:
        yaml_path = os.path.join(tmp, "tiny-yolo11t.yaml")
        with open(yaml_path, "w") as fh:
            fh.write(TINY_YAML)
        yolo = YOLO(yaml_path, task="detect")
    model = yolo.model
    model.names = {0: "cat", 1: "cup", 2: "saucer"}
    fill(model)
    model.eval()
    pt = os.path.join(OUT, "tiny_yolo11.pt")
    yolo.save(pt)
    # What the file holds: half-precision weights. The reference runs those same values in f32.
    model = model.half().float().eval()
    with torch.no_grad():
        y = model(input_tensor(RAW_INPUT))[0]
    doc = {
        "checkpoint": "tiny_yolo11.pt",
        "sha256": hashlib.sha256(open(pt, "rb").read()).hexdigest(),
        "names": ["cat", "cup", "saucer"],
        "input_shape": RAW_INPUT,
        "raw": raw_summary(y),
    }
    with open(os.path.join(OUT, "tiny_yolo11.json"), "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
    print("tiny_yolo11.pt:", os.path.getsize(pt), "bytes")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["yolo11n", "yolo11s", "tiny"])
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    for name in ["yolo11n", "yolo11s"]:
        if args.only in (None, name):
            scale(name)
    if args.only in (None, "tiny"):
        tiny_checkpoint()


if __name__ == "__main__":
    main()
