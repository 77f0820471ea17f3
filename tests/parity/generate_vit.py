#!/usr/bin/env python3
"""Generate the ViT / DeiT parity fixtures (timm and Hugging Face transformers).

Same method as generate.py (whose `synth` and `fill_state_dict` this imports): every float
tensor of the REAL model is overwritten with `synth(name, shape)`, the model runs in eval mode
on `synth("input", shape)` (and 8x that), and the logits are saved with the `[name, shape]`
list. Hugging Face fixtures also carry the `config` fields the Rust builder reads.

It also writes `tests/fixtures/hf_vit_chelsea.json`: the `config.json` and
`preprocessor_config.json` transformers' `save_pretrained` writes for a small ViT, and the logits
that transformers' own `ViTImageProcessor` + `ViTForImageClassification` give on the photo
`chelsea.jpg` (synth weights). The Rust end-to-end test rebuilds that folder and serves it.

Usage (venv with torch, timm, transformers, pillow, numpy):
    python tests/parity/generate_vit.py --photo /work/shared/fixtures/chelsea.jpg
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
    # (timm name, input shape): the trained size (other sizes: RESAMPLED below).
    ("vit_tiny_patch16_224", [2, 3, 224, 224]),
    ("vit_small_patch32_384", [1, 3, 384, 384]),
    ("deit_tiny_patch16_224", [1, 3, 224, 224]),
    ("deit_small_patch16_224", [1, 3, 224, 224]),
    # DeiT distilled (VisionTransformerDistilled): a distillation token and a second head.
    ("deit_tiny_distilled_patch16_224", [2, 3, 224, 224]),
    ("deit_small_distilled_patch16_224", [1, 3, 224, 224]),
]

# A timm model created at another img_size than its checkpoint's, the checkpoint's pos_embed
# resampled by timm's own checkpoint_filter_fn (bicubic, antialiased, prefix tokens aside):
# (timm name, img_size, input shape). Up, down and non-square; one with two prefix tokens.
RESAMPLED = [
    ("vit_tiny_patch16_224", (384, 384), [1, 3, 384, 384]),
    ("vit_small_patch32_384", (224, 288), [1, 3, 224, 288]),
    # 6x24 patches: as many as the trained 12x12, resampled all the same by timm 1.0.31.
    ("vit_small_patch32_384", (192, 768), [1, 3, 192, 768]),
    ("deit_tiny_distilled_patch16_224", (288, 288), [1, 3, 288, 288]),
]

# Hugging Face configs: a small one with every size off its default, and the real base size
# (google/vit-base-patch16-224's config is ViTConfig's defaults).
HF_KEYS = [
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "patch_size",
    "image_size",
    "layer_norm_eps",
    "hidden_act",
    "qkv_bias",
]
HF = [
    ("hf_vit_small_config", dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                 intermediate_size=160, patch_size=8, image_size=48), [2, 3, 48, 48]),
    ("hf_vit_base_patch16_224", dict(), [1, 3, 224, 224]),
]


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


def timm_resampled_fixture(name, img_size, shape, out_dir):
    """The checkpoint of `name` at its trained size, loaded into a model at `img_size` the way
    timm loads pretrained weights (`checkpoint_filter_fn` resamples `pos_embed`)."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    trained = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES).eval()
    tensors = fill_state_dict(trained)
    checkpoint = trained.state_dict()
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, img_size=img_size).eval()
    filtered = checkpoint_filter_fn(checkpoint, model)
    assert not torch.equal(filtered["pos_embed"], checkpoint["pos_embed"]), "nothing resampled"
    model.load_state_dict(filtered, strict=True)
    fid = f"timm_{name}_at_{img_size[0]}x{img_size[1]}"
    doc = {
        "id": fid,
        "architecture": name,
        "source": f"timm {timm.__version__}",
        "torch": torch.__version__.split("+")[0],
        "num_classes": NUM_CLASSES,
        "img_size": list(img_size),
        "input_shape": shape,
        "tensors": tensors,
        **logits_of(model, shape),
    }
    write(os.path.join(out_dir, f"{fid}.json"), doc)
    print(fid, "max|logit|", max(abs(v) for row in doc["logits"] for v in row), flush=True)


def hf_model(overrides):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(num_labels=NUM_CLASSES, **overrides)
    model = ViTForImageClassification(config).eval()
    tensors = fill_state_dict(model)
    return model, tensors


def hf_fixture(fid, overrides, shape, out_dir):
    import transformers

    model, tensors = hf_model(overrides)
    config = model.config.to_dict()
    doc = {
        "id": fid,
        "architecture": "ViTForImageClassification",
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


def chelsea_fixture(photo, path):
    """A small ViT saved as transformers saves it, and its logits on the photo."""
    import tempfile

    import transformers
    from PIL import Image
    from transformers import ViTImageProcessor

    model, tensors = hf_model(dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=128, patch_size=16, image_size=224))
    model.config.id2label = {i: f"synth_{i}" for i in range(NUM_CLASSES)}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    # What `model.save_pretrained` records (saving the config alone leaves it out).
    model.config.architectures = [type(model).__name__]
    # google/vit-base-patch16-224's processor: squash to 224x224, bilinear, mean/std 0.5.
    processor = ViTImageProcessor(size={"height": 224, "width": 224}, resample=2,
                                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    with tempfile.TemporaryDirectory() as tmp:
        model.config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        files = {name: open(os.path.join(tmp, name)).read()
                 for name in ["config.json", "preprocessor_config.json"]}
    image = Image.open(photo).convert("RGB")
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    doc = {
        "source": f"transformers {transformers.__version__}",
        "processor": type(processor).__name__,
        "photo": os.path.basename(photo),
        "files": files,
        "tensors": tensors,
        "pixel_values_shape": list(pixels.shape),
        "pixel_values_mean": float(pixels.double().mean()),
        "logits": [float(v) for v in logits[0]],
    }
    write(path, doc)
    print(path, "logits[:4]", doc["logits"][:4], flush=True)


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
    for name, img_size, shape in RESAMPLED:
        if keep(f"timm_{name}_at_{img_size[0]}x{img_size[1]}"):
            timm_resampled_fixture(name, img_size, shape, args.out)
    for fid, overrides, shape in HF:
        if keep(fid):
            hf_fixture(fid, overrides, shape, args.out)
    if args.photo:
        chelsea_fixture(args.photo, os.path.join(root, "hf_vit_chelsea.json"))


if __name__ == "__main__":
    main()
