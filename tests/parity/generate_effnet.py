#!/usr/bin/env python3
"""Generate PyTorch parity fixtures for wick's EfficientNet B0-B7 and EfficientNetV2-S.

The REAL torchvision and timm models, every floating-point state-dict entry overwritten with
`synth(name, shape)` (README.md), logits of `synth("input", shape)` and of the input x8, written
to `tests/fixtures/parity/<id>.json` with the schema of `generate.py` (whose `run_model` this
reuses). Inputs are non-square; the TF-ported ones odd-sized, so TF "same" padding splits
unevenly at every stride-2 convolution.

The B models' second input is x1024, not x8: with these weights each block's squeeze-excitation
halves the input's share of the activations (gates near sigmoid(0)), so after 16+ blocks the
logits of `synth("input")` and of 8x it differ by 1e-5, below the test's 1e-4 tolerance. At
x1024 the input moves the logits by 0.14, TF-vs-PyTorch padding by 0.05 and a BN eps of 1e-5
instead of 1e-3 by 5e-3 (tf_efficientnet_b0), all well above it.

Usage: python tests/parity/generate_effnet.py [--only SUBSTRING] [--list]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate  # noqa: E402
from generate import NUM_CLASSES, _timm, _tv, run_model  # noqa: E402

torch.set_num_threads(1)

EVEN = [2, 3, 160, 128]  # the classification fixtures' usual input
ODD = [1, 3, 161, 127]  # odd and non-square: TF "same" pads differently on each side
SMALL = [1, 3, 96, 80]  # the larger networks, kept quick
B_INPUT_SCALE = 1024.0  # power of two: exact in f32 (see above)
V2_INPUT_SCALE = 8.0  # V2 has SE in its last three stages only; x8 already moves logits by 1


def registry():
    """(id, architecture, package, builder, input shape, classifier module)"""
    return [
        ("torchvision_efficientnet_b0", "efficientnet_b0", "torchvision", _tv("efficientnet_b0"), EVEN, "classifier.1"),
        ("torchvision_efficientnet_b3", "efficientnet_b3", "torchvision", _tv("efficientnet_b3"), SMALL, "classifier.1"),
        ("torchvision_efficientnet_b5", "efficientnet_b5", "torchvision", _tv("efficientnet_b5"), SMALL, "classifier.1"),
        ("torchvision_efficientnet_v2_s", "efficientnet_v2_s", "torchvision", _tv("efficientnet_v2_s"), SMALL, "classifier.1"),
        ("timm_efficientnet_b0", "efficientnet_b0", "timm", _timm("efficientnet_b0"), EVEN, "classifier"),
        ("timm_tf_efficientnet_b0", "tf_efficientnet_b0", "timm", _timm("tf_efficientnet_b0"), ODD, "classifier"),
        ("timm_tf_efficientnet_b3", "tf_efficientnet_b3", "timm", _timm("tf_efficientnet_b3"), ODD, "classifier"),
        ("timm_tf_efficientnetv2_s", "tf_efficientnetv2_s", "timm", _timm("tf_efficientnetv2_s"), ODD, "classifier"),
        ("timm_efficientnetv2_rw_s", "efficientnetv2_rw_s", "timm", _timm("efficientnetv2_rw_s"), SMALL, "classifier"),
    ]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.normpath(os.path.join(here, "..", "fixtures", "parity"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=default_out, help="output directory (default: %(default)s)")
    ap.add_argument("--only", action="append", default=[], help="substring filter on model id (repeatable)")
    ap.add_argument("--list", action="store_true", help="list model ids and exit")
    args = ap.parse_args()
    entries = registry()
    if args.list:
        for e in entries:
            print(e[0], e[4])
        return 0
    assert NUM_CLASSES == 16
    os.makedirs(args.out, exist_ok=True)
    selected = [e for e in entries if not args.only or any(s in e[0] for s in args.only)]
    if not selected:
        print("no model matches", args.only, file=sys.stderr)
        return 1
    for e in selected:
        generate.INPUT_SCALE = V2_INPUT_SCALE if "v2" in e[0] else B_INPUT_SCALE
        run_model(e, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
