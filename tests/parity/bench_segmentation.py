#!/usr/bin/env python3
"""PyTorch reference timings for docs/performance.md "Segmentation": DeepLabV3+ ResNet-50
(segmentation_models_pytorch) and LR-ASPP MobileNetV3-Large (torchvision) at 512x512, batch 1,
21 classes, eval + inference_mode, median of N runs after 3 warm-up runs.

Usage: python tests/parity/bench_segmentation.py [--threads 2] [--iterations 10]
"""
import argparse
import statistics
import time

import torch


def build(name):
    if name == "deeplabv3plus_resnet50":
        import segmentation_models_pytorch as smp
        return smp.DeepLabV3Plus(encoder_name="resnet50", encoder_weights=None, classes=21)
    import torchvision.models.segmentation as seg
    return getattr(seg, name)(weights=None, weights_backbone=None, num_classes=21)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in ["deeplabv3plus_resnet50", "lraspp_mobilenet_v3_large"]:
        model = build(name).eval()
        x = torch.rand(1, 3, args.size, args.size)
        with torch.inference_mode():
            for _ in range(3):
                model(x)
            samples = []
            for _ in range(args.iterations):
                started = time.perf_counter()
                model(x)
                samples.append((time.perf_counter() - started) * 1e3)
        print(f"| {name} {args.size}x{args.size} | 1 | {statistics.median(samples):.1f} | {min(samples):.1f} | {max(samples):.1f} |", flush=True)


if __name__ == "__main__":
    main()
