#!/usr/bin/env python3
"""Generate the ConvNeXt parity fixtures (timm and Hugging Face transformers).

Same method as generate.py (whose `synth` and `fill_state_dict` this imports): every float
tensor of the REAL model is overwritten with `synth(name, shape)`, the model runs in eval mode
on `synth("input", shape)` (and 8x that), and the logits are saved with the `[name, shape]`
list. Hugging Face fixtures also carry the `config` fields the Rust builder reads.

timm's atto (its MLP as 1x1 convolutions, `conv_mlp=True`) and tiny (linear layers) both run,
on non-square inputs whose sides are not multiples of 32 (the stem and every downsampling
floor them). The Hugging Face ones: a small config with every size off its default, and
facebook/convnext-tiny-224's (ConvNextConfig's defaults).

It also writes `tests/fixtures/hf_convnext_chelsea.json`: the `config.json` and
`preprocessor_config.json` transformers' `save_pretrained` writes for a small ConvNeXt, the
`preprocessor_config.json` facebook/convnext-tiny-224 has on the hub (integer `size`), and the
logits transformers' own `ConvNextImageProcessor` + `ConvNextForImageClassification` give on the
photo `chelsea.jpg` (synth weights), at 224 (resize to 256 then crop) and at 384 (squashed,
no crop). The Rust end-to-end test rebuilds those folders and serves them.

Usage (venv with torch, timm, transformers, pillow, numpy):
    python tests/parity/generate_convnext.py --photo /work/shared/fixtures/chelsea.jpg
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import INPUT_SCALE, NUM_CLASSES, fill_state_dict, synth  # noqa: E402

torch.set_num_threads(1)

TIMM = [
    # (timm name, input shape)
    ("convnext_atto", [2, 3, 160, 128]),
    ("convnext_tiny", [1, 3, 161, 127]),
]

HF_KEYS = [
    "hidden_sizes",
    "depths",
    "num_stages",
    "patch_size",
    "layer_norm_eps",
    "layer_scale_init_value",
    "hidden_act",
    "num_channels",
]
HF = [
    ("hf_convnext_small_config", dict(hidden_sizes=[16, 24, 40, 56], depths=[1, 2, 3, 1],
                                      layer_norm_eps=1e-5), [2, 3, 96, 72]),
    ("hf_convnext_tiny_224", dict(), [1, 3, 224, 224]),
]

# facebook/convnext-tiny-224's preprocessor_config.json as the hub serves it (integer `size`,
# the feature extractor's era), which transformers reads as {"shortest_edge": 224}.
HUB_PROCESSOR = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": 224,
}


def write(path, doc):
    with open(path, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")


def logits_of(forward, shape):
    x = torch.from_numpy(synth("input", shape))
    with torch.no_grad():
        plain = forward(x)
        scaled = forward(x * INPUT_SCALE)
    assert torch.isfinite(plain).all() and torch.isfinite(scaled).all()
    as_list = lambda t: [[float(v) for v in row] for row in t.numpy().astype(np.float32)]  # noqa: E731
    return {"logits": as_list(plain), "input_scale": INPUT_SCALE, "logits_scaled": as_list(scaled)}


def timm_fixture(name, shape, out_dir):
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES).eval()
    tensors = fill_state_dict(model)
    doc = {
        "id": f"timm_{name}",
        "architecture": name,
        "source": f"timm {timm.__version__}",
        "torch": torch.__version__.split("+")[0],
        "num_classes": NUM_CLASSES,
        "input_shape": shape,
        "tensors": tensors,
        **logits_of(model, shape),
    }
    write(os.path.join(out_dir, f"{doc['id']}.json"), doc)
    print(doc["id"], "max|logit|", max(abs(v) for row in doc["logits"] for v in row), flush=True)


def hf_model(overrides):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(num_labels=NUM_CLASSES, **overrides)
    model = ConvNextForImageClassification(config).eval()
    tensors = fill_state_dict(model)
    return model, tensors


def hf_fixture(fid, overrides, shape, out_dir):
    import transformers

    model, tensors = hf_model(overrides)
    config = model.config.to_dict()
    doc = {
        "id": fid,
        "architecture": "ConvNextForImageClassification",
        "source": f"transformers {transformers.__version__}",
        "torch": torch.__version__.split("+")[0],
        "num_classes": NUM_CLASSES,
        "config": {k: config[k] for k in HF_KEYS},
        "input_shape": shape,
        "tensors": tensors,
        **logits_of(lambda x: model(pixel_values=x).logits, shape),
    }
    write(os.path.join(out_dir, f"{fid}.json"), doc)
    print(fid, "max|logit|", max(abs(v) for row in doc["logits"] for v in row), flush=True)


def photo_logits(model, processor, image):
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    return pixels, [float(v) for v in logits[0]]


def chelsea_fixture(photo, path):
    """A small ConvNeXt saved as transformers saves it, and its logits on the photo."""
    import tempfile

    import transformers
    from PIL import Image
    from transformers import ConvNextImageProcessor

    model, tensors = hf_model(dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 2, 1]))
    model.config.id2label = {i: f"synth_{i}" for i in range(NUM_CLASSES)}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    # What `model.save_pretrained` records (saving the config alone leaves it out).
    model.config.architectures = [type(model).__name__]
    image = Image.open(photo).convert("RGB")
    cases = {}
    for name, processor in [
        # facebook/convnext-tiny-224's: shorter side to 224 / 0.875 = 256, centre crop 224.
        ("crop_224", ConvNextImageProcessor.from_dict(HUB_PROCESSOR)),
        # facebook/convnext-base-384's: 384 and above squash to the size, no crop.
        ("squash_384", ConvNextImageProcessor(size={"shortest_edge": 384}, resample=3,
                                              crop_pct=None)),
    ]:
        with tempfile.TemporaryDirectory() as tmp:
            model.config.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            files = {name: open(os.path.join(tmp, name)).read()
                     for name in ["config.json", "preprocessor_config.json"]}
        pixels, logits = photo_logits(model, processor, image)
        cases[name] = {
            "files": files,
            "pixel_values_shape": list(pixels.shape),
            "pixel_values_mean": float(pixels.double().mean()),
            "logits": logits,
        }
        print(name, type(processor).__name__, list(pixels.shape), "logits[:4]", logits[:4], flush=True)
    # The hub's own file: transformers reads the integer size as the shortest edge.
    hub_pixels, hub_logits = photo_logits(model, ConvNextImageProcessor.from_dict(HUB_PROCESSOR), image)
    assert hub_logits == cases["crop_224"]["logits"], "the hub file is the same transform"
    doc = {
        "source": f"transformers {transformers.__version__}",
        "processor": "ConvNextImageProcessor",
        "photo": os.path.basename(photo),
        "hub_preprocessor_config": HUB_PROCESSOR,
        "tensors": tensors,
        "cases": cases,
    }
    write(path, doc)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
    parser.add_argument("--out", default=os.path.join(root, "parity"))
    parser.add_argument("--photo", help="chelsea.jpg (the shared fixtures); omit to skip the end-to-end fixture")
    parser.add_argument("--only", action="append", default=[], help="substring filter on fixture id")
    args = parser.parse_args()
    keep = lambda fid: not args.only or any(s in fid for s in args.only)  # noqa: E731
    for name, shape in TIMM:
        if keep(f"timm_{name}"):
            timm_fixture(name, shape, args.out)
    for fid, overrides, shape in HF:
        if keep(fid):
            hf_fixture(fid, overrides, shape, args.out)
    if args.photo:
        chelsea_fixture(args.photo, os.path.join(root, "hf_convnext_chelsea.json"))


if __name__ == "__main__":
    main()
