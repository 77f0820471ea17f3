#!/usr/bin/env python3
"""Generate PyTorch parity fixtures for wick's segmentation networks.

wick's own `lraspp_[tf_]efficientnet_liteN` is checked against torchvision's real `LRASPPHead`
on timm's real EfficientNet-Lite (`LiteLRASPP` below).

Same deterministic weights as `generate.py` (`synth(name, shape)`, see README.md): every
floating-point state-dict entry of the REAL model (torchvision segmentation,
segmentation_models_pytorch DeepLabV3Plus, transformers SegFormer) is overwritten, the model runs in eval mode on
`synth("input", shape) * input_scale`, and `tests/fixtures/segmentation/<id>.json` gets:

- `tensors`: ordered `[name, shape]` of the state dict (incl. `aux_classifier.*`, which wick
  must ignore), so the Rust side rebuilds the exact weights;
- `logits_sum`, `logits_sum_sq` (float64) and 64 sampled logits `[c, y, x, value]`;
- `argmax`: the label map, one string of base-36 digits per row (a binary model's map is
  `logit > 0`, i.e. sigmoid > 0.5).

The smp U-Net and FPN run with ResNet and EfficientNet-B0 encoders (`efficientnet-b0`, smp's
lukemelas port; `timm-efficientnet-b0`, timm's). U-Net and FPN fixtures also hold `smp_config`, the `config.json` smp's own `save_pretrained`
wrote for the model, so the Rust side loads them as an smp folder. With `--photos DIR` it
instead runs smp U-Net and FPN end to end on `DIR/chelsea.png` (451x300: padded to 480x320
with zeros after normalisation, logits cropped back) into `tests/fixtures/segmentation_photo/`.

Usage: python tests/parity/generate_segmentation.py [--only SUBSTRING] [--photos DIR]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import fill_state_dict, synth  # noqa: E402

torch.set_num_threads(1)

TV_INPUT = [1, 3, 97, 131]  # torchvision models take any size: odd and non-square on purpose
SMP_INPUT = [1, 3, 96, 144]  # smp requires multiples of the output stride (16)
SMP32_INPUT = [1, 3, 96, 160]  # U-Net and FPN: multiples of 32, non-square
SAMPLES = 64


def _tv(name, num_classes):
    def build():
        import torchvision.models.segmentation as seg
        return getattr(seg, name)(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=name != "lraspp_mobilenet_v3_large" or None)
    return build


def _smp(encoder, classes, cls="DeepLabV3Plus"):
    def build():
        import segmentation_models_pytorch as smp
        return getattr(smp, cls)(encoder_name=encoder, encoder_weights=None, classes=classes)
    return build


def smp_saved_config(model):
    """The `config.json` smp's own `save_pretrained` writes for `model` (a real folder,
    written to a temporary directory and read back), and what its `model.safetensors` holds."""
    import tempfile
    from safetensors import safe_open
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        with open(os.path.join(tmp, "config.json")) as fh:
            config = json.load(fh)
        with safe_open(os.path.join(tmp, "model.safetensors"), "pt") as st:
            dtypes = sorted({str(st.get_slice(k).get_dtype()) for k in st.keys()})
            metadata = st.metadata()
    print(f"  save_pretrained: files ok, dtypes {dtypes}, metadata {metadata}", flush=True)
    return config


class LiteLRASPP(torch.nn.Module):
    """wick's `lraspp_[tf_]efficientnet_liteN`: torchvision's real LRASPPHead on timm's real
    EfficientNet-Lite trunk (head convolution and classifier removed), low = stage `blocks.2`,
    high = the last stage; logits resized to the input as torchvision's LRASPP does."""

    def __init__(self, trunk, num_classes):
        import timm
        from torchvision.models.segmentation.lraspp import LRASPPHead
        super().__init__()
        self.backbone = timm.create_model(trunk, pretrained=False)
        for name in ("conv_head", "bn2", "global_pool", "classifier"):
            setattr(self.backbone, name, torch.nn.Identity())
        low = self.backbone.blocks[2][-1].conv_pwl.out_channels
        high = self.backbone.blocks[-1][-1].conv_pwl.out_channels
        self.classifier = LRASPPHead(low, high, num_classes, 128)

    def forward(self, x):
        b = self.backbone
        y = b.bn1(b.conv_stem(x))
        low = None
        for i, stage in enumerate(b.blocks):
            y = stage(y)
            if i == 2:
                low = y
        out = self.classifier({"low": low, "high": y})
        return torch.nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _lite(trunk, classes):
    def build():
        return LiteLRASPP(trunk, classes)
    return build


# transformers' SegformerConfig arguments of the MiT variants wick names segformer_bN
# (the defaults are B0's).
SEGFORMER_VARIANTS = {
    "b0": {},
    "b1": {"hidden_sizes": [64, 128, 320, 512]},
    "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
}


def _segformer(variant, classes):
    """transformers' real SegformerForSemanticSegmentation, its quarter-size logits resized to
    the input as post_process_semantic_segmentation does. transformers 5 renames the weights
    in memory (`segformer.stages.*`, `q_proj`, ...) but reads and writes the Hub's names
    (`segformer.encoder.block.*`, `attention.self.query`, ...), which wick reads: the synth
    weights are made under the Hub's names and loaded with from_pretrained (see `run`)."""

    def build():
        import tempfile

        from safetensors.torch import load_file, save_file
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        class Upsampled(torch.nn.Module):
            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, x):
                logits = self.model(pixel_values=x).logits
                return torch.nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

        # The plain class: transformers picks its renaming by the class name.
        config = SegformerConfig(num_labels=classes, **SEGFORMER_VARIANTS[variant])
        with tempfile.TemporaryDirectory() as tmp:
            SegformerForSemanticSegmentation(config).save_pretrained(tmp)
            path = os.path.join(tmp, "model.safetensors")
            hub = load_file(path)
            filled = {k: (torch.from_numpy(synth(k, list(v.shape))) if v.is_floating_point() else v) for k, v in hub.items()}
            save_file(filled, path, metadata={"format": "pt"})
            model = Upsampled(SegformerForSemanticSegmentation.from_pretrained(tmp))
        model.hub_tensors = [[k, list(v.shape)] for k, v in sorted(filled.items()) if v.is_floating_point()]
        return model
    return build


def registry():
    # (id, wick architecture, package, builder, classes, input shape, input scale)
    # MobileNetV3 runs at x4 input so hardswish / hardsigmoid leave their linear range; the Lite
    # trunks too, so ReLU6 clips and the logits spread beyond the tolerance.
    return [
        ("torchvision_deeplabv3_resnet50", "deeplabv3_resnet50", "torchvision", _tv("deeplabv3_resnet50", 21), 21, TV_INPUT, 1.0),
        ("torchvision_deeplabv3_resnet101", "deeplabv3_resnet101", "torchvision", _tv("deeplabv3_resnet101", 3), 3, TV_INPUT, 1.0),
        ("torchvision_deeplabv3_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "torchvision", _tv("deeplabv3_mobilenet_v3_large", 4), 4, TV_INPUT, 4.0),
        ("torchvision_lraspp_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "torchvision", _tv("lraspp_mobilenet_v3_large", 21), 21, TV_INPUT, 4.0),
        ("smp_deeplabv3plus_resnet50", "deeplabv3plus_resnet50", "segmentation_models_pytorch", _smp("resnet50", 3), 3, SMP_INPUT, 1.0),
        ("smp_deeplabv3plus_resnet34", "deeplabv3plus_resnet34", "segmentation_models_pytorch", _smp("resnet34", 5), 5, SMP_INPUT, 1.0),
        ("smp_deeplabv3plus_resnet50_binary", "deeplabv3plus_resnet50", "segmentation_models_pytorch", _smp("resnet50", 1), 1, SMP_INPUT, 1.0),
        ("smp_unet_resnet34", "unet_resnet34", "segmentation_models_pytorch", _smp("resnet34", 3, "Unet"), 3, SMP32_INPUT, 1.0),
        ("smp_unet_resnet50_binary", "unet_resnet50", "segmentation_models_pytorch", _smp("resnet50", 1, "Unet"), 1, SMP32_INPUT, 1.0),
        ("smp_fpn_resnet34", "fpn_resnet34", "segmentation_models_pytorch", _smp("resnet34", 4, "FPN"), 4, SMP32_INPUT, 1.0),
        ("smp_fpn_resnet50", "fpn_resnet50", "segmentation_models_pytorch", _smp("resnet50", 2, "FPN"), 2, SMP32_INPUT, 1.0),
        ("smp_unet_efficientnet_b0", "unet_efficientnet_b0", "segmentation_models_pytorch", _smp("efficientnet-b0", 3, "Unet"), 3, SMP32_INPUT, 1.0),
        ("smp_fpn_efficientnet_b0", "fpn_efficientnet_b0", "segmentation_models_pytorch", _smp("efficientnet-b0", 2, "FPN"), 2, SMP32_INPUT, 1.0),
        ("smp_unet_timm_efficientnet_b0_binary", "unet_timm_efficientnet_b0", "segmentation_models_pytorch", _smp("timm-efficientnet-b0", 1, "Unet"), 1, SMP32_INPUT, 1.0),
        ("smp_fpn_timm_efficientnet_b0", "fpn_timm_efficientnet_b0", "segmentation_models_pytorch", _smp("timm-efficientnet-b0", 3, "FPN"), 3, SMP32_INPUT, 1.0),
        ("timm_lraspp_efficientnet_lite0", "lraspp_efficientnet_lite0", "timm", _lite("efficientnet_lite0", 3), 3, TV_INPUT, 4.0),
        ("timm_lraspp_tf_efficientnet_lite0", "lraspp_tf_efficientnet_lite0", "timm", _lite("tf_efficientnet_lite0", 4), 4, TV_INPUT, 4.0),
        ("timm_lraspp_tf_efficientnet_lite2_binary", "lraspp_tf_efficientnet_lite2", "timm", _lite("tf_efficientnet_lite2", 1), 1, TV_INPUT, 4.0),
        ("hf_segformer_b0", "segformer_b0", "transformers", _segformer("b0", 5), 5, TV_INPUT, 1.0),
        ("hf_segformer_b2", "segformer_b2", "transformers", _segformer("b2", 3), 3, TV_INPUT, 1.0),
    ]


def _version(pkg):
    if pkg == "torchvision":
        import torchvision as m
    elif pkg == "timm":
        import timm
        import torchvision
        return f"timm {timm.__version__} + torchvision {torchvision.__version__} LRASPPHead"
    elif pkg == "transformers":
        import transformers as m
    else:
        import segmentation_models_pytorch as m
    return f"{pkg} {m.__version__}"


def run(entry, out_dir):
    mid, arch, pkg, build, classes, shape, scale = entry
    torch.manual_seed(0)
    model = build()
    # A model built from Hub-named files is filled already (`_segformer`).
    tensors = getattr(model, "hub_tensors", None) or fill_state_dict(model)
    model.eval()
    hs = {"n": 0, "sat": 0}

    def hs_hook(_m, args):
        hs["n"] += args[0].numel()
        hs["sat"] += int((args[0].abs() > 3).sum())

    hooks = [m.register_forward_pre_hook(hs_hook) for m in model.modules() if isinstance(m, (torch.nn.Hardswish, torch.nn.Hardsigmoid))]
    x = torch.from_numpy(synth("input", shape)) * scale
    with torch.inference_mode():
        out = model(x)
    for h in hooks:
        h.remove()
    logits = (out["out"] if isinstance(out, dict) else out)[0].double()
    assert tuple(logits.shape) == (classes, shape[2], shape[3]), logits.shape
    assert torch.isfinite(logits).all()
    if classes == 1:
        labels = (logits[0] > 0).to(torch.int64)
        gap = logits[0].abs()
    else:
        top2 = logits.topk(2, dim=0).values
        labels = logits.argmax(dim=0)
        gap = top2[0] - top2[1]
    rng = np.random.RandomState(0)
    samples = []
    for _ in range(SAMPLES):
        c, y, xx = rng.randint(classes), rng.randint(shape[2]), rng.randint(shape[3])
        samples.append([int(c), int(y), int(xx), float(logits[c, y, xx])])
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    doc = {
        "id": mid,
        "architecture": arch,
        "source": _version(pkg),
        "torch": torch.__version__.split("+")[0],
        "num_classes": classes,
        "input_shape": shape,
        "input_scale": scale,
        "tensors": tensors,
        "logits_sum": float(logits.sum()),
        "logits_sum_sq": float((logits * logits).sum()),
        "samples": samples,
        "argmax": ["".join(digits[v] for v in row) for row in labels.tolist()],
    }
    if shape is SMP32_INPUT:
        doc["smp_config"] = smp_saved_config(model)
    with open(os.path.join(out_dir, f"{mid}.json"), "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
    counts = np.bincount(labels.flatten().numpy(), minlength=max(classes, 2))
    print(
        f"{mid:40s} tensors={len(tensors):4d} max|logit|={float(logits.abs().max()):.4g} "
        f"classes present={counts.tolist()} near ties(<1e-4)={int((gap < 1e-4).sum())} "
        + (f"hardswish |x|>3: {hs['sat'] / hs['n']:.2f}" if hs["n"] else ""),
        flush=True,
    )


# (id, smp class, encoder, classes): run end to end on a real photo.
PHOTO_MODELS = [
    ("smp_unet_resnet34_chelsea", "Unet", "resnet34", 3),
    ("smp_fpn_resnet34_chelsea", "FPN", "resnet34", 3),
    ("smp_unet_efficientnet_b0_chelsea", "Unet", "efficientnet-b0", 3),
]
PHOTO = "chelsea.png"
# Pixels whose two best logits are closer than this are listed as ties: wick's f32 logits may
# order them either way.
PHOTO_TIE_GAP = 1e-3


def run_photo(entry, photos_dir, out_dir):
    """smp's way on a whole photo: /255, ImageNet mean/std, zeros (the mean colour) padded at
    the bottom and right up to a multiple of 32, the model, logits cropped back; the label map
    and its near ties are saved with the config smp's `save_pretrained` writes."""
    from PIL import Image
    mid, cls, encoder, classes = entry
    torch.manual_seed(0)
    model = _smp(encoder, classes, cls)()
    tensors = fill_state_dict(model)
    model.eval()
    rgb = np.asarray(Image.open(os.path.join(photos_dir, PHOTO)).convert("RGB"), dtype=np.float32) / np.float32(255.0)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    x = torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1)[None].copy())
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (0, -w % 32, 0, -h % 32))
    with torch.inference_mode():
        logits = model(padded)[0, :, :h, :w].double()
    top2 = logits.topk(2, dim=0).values
    gap = top2[0] - top2[1]
    ties = [[int(y), int(xx)] for y, xx in (gap < PHOTO_TIE_GAP).nonzero().tolist()]
    labels = logits.argmax(dim=0)
    doc = {
        "id": mid,
        "source": _version("segmentation_models_pytorch"),
        "torch": torch.__version__.split("+")[0],
        "photo": PHOTO,
        "padded_size": list(padded.shape[-2:]),
        "smp_config": smp_saved_config(model),
        "tensors": tensors,
        "ties": ties,
        "argmax": ["".join(str(v) for v in row) for row in labels.tolist()],
    }
    with open(os.path.join(out_dir, f"{mid}.json"), "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
    counts = np.bincount(labels.flatten().numpy(), minlength=classes)
    print(f"{mid:40s} {w}x{h} padded to {list(padded.shape[-2:])} classes present={counts.tolist()} ties={len(ties)}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures", "segmentation"))
    ap.add_argument("--photos", help="folder holding chelsea.png: run the photo fixtures instead")
    ap.add_argument("--photo-out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures", "segmentation_photo"))
    args = ap.parse_args()
    if args.photos:
        os.makedirs(args.photo_out, exist_ok=True)
        for entry in PHOTO_MODELS:
            if not args.only or any(s in entry[0] for s in args.only):
                run_photo(entry, args.photos, args.photo_out)
        return
    os.makedirs(args.out, exist_ok=True)
    for entry in registry():
        if args.only and not any(s in entry[0] for s in args.only):
            continue
        run(entry, args.out)


if __name__ == "__main__":
    main()
