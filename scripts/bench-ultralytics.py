#!/usr/bin/env python3
"""YOLOv8 speed in ultralytics/PyTorch on this machine, for docs/performance.md next to `wick bench`.

Same thread count as wick (--threads, default 2), inference mode, median after warm-up:
- forward: the (Conv+BN fused, as ultralytics' predictor does) model on a 1x3x640x640 tensor;
- predict: `YOLO.predict` on an already decoded 1920x1080 image (letterbox, forward, NMS,
  scaling back). ultralytics' predictor letterboxes a PyTorch model onto the smallest
  stride-32 rectangle (640x384 for 16:9), as wick does by default (`letterbox: rect`).
Weights are random (built from the yaml; speed does not depend on the values).

Usage: /work/cache/torchvenv/bin/python scripts/bench-ultralytics.py [--threads 2] [--iterations 20]
"""

import argparse
import statistics
import time

import numpy as np
import torch


def timed(fn, iterations, warmup=3):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples), min(samples), max(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--models", default="yolov8n,yolov8s")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ultralytics import YOLO

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| model | forward median ms | min | max | predict median ms | min | max |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        yolo = YOLO(f"{name}.yaml", task="detect")
        model = yolo.model.fuse().eval()
        x = torch.rand(1, 3, 640, 640)
        with torch.inference_mode():
            fwd = timed(lambda: model(x), args.iterations)
        pred = timed(lambda: yolo.predict(image, imgsz=640, conf=0.25, iou=0.45, verbose=False), args.iterations)
        print(f"| {name} | {fwd[0]:.1f} | {fwd[1]:.1f} | {fwd[2]:.1f} | {pred[0]:.1f} | {pred[1]:.1f} | {pred[2]:.1f} |")


if __name__ == "__main__":
    main()
