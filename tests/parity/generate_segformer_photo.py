#!/usr/bin/env python3
"""Generate the end-to-end SegFormer fixture: a Hugging Face folder as transformers writes it,
and what transformers' own pipeline makes of a real photo.

`SegformerForSemanticSegmentation` (MiT-B0, 5 labels) gets the deterministic `synth` weights
under the Hub's key names (see generate_segmentation.py), `save_pretrained` writes its
`config.json` and `SegformerImageProcessor().save_pretrained` its `preprocessor_config.json`
into tests/fixtures/hf/segformer_b0/ (the weights are not committed: the Rust test rebuilds
them from the formula). The photo, ../shared/fixtures/chelsea.png (Pillow's decoded pixels of
chelsea.jpg), goes through the processor, the model and `post_process_semantic_segmentation`
at its own size; `expected.json` gets the label map at every 4th pixel of every 4th row.

Usage: python tests/parity/generate_segformer_photo.py [--photo PATH]
CI never runs this; only the committed JSON is used.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import synth  # noqa: E402

torch.set_num_threads(1)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "hf", "segformer_b0")
LABELS = ["background", "cat", "dog", "grass", "sky"]
STEP = 4


def main():
    import transformers
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoImageProcessor, SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    ap = argparse.ArgumentParser()
    ap.add_argument("--photo", default=os.path.join(HERE, "..", "..", "..", "shared", "fixtures", "chelsea.png"))
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    config = SegformerConfig(num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    with tempfile.TemporaryDirectory() as tmp:
        SegformerForSemanticSegmentation(config).save_pretrained(tmp)
        SegformerImageProcessor().save_pretrained(tmp)
        path = os.path.join(tmp, "model.safetensors")
        hub = load_file(path)
        filled = {k: (torch.from_numpy(synth(k, list(v.shape))) if v.is_floating_point() else v) for k, v in hub.items()}
        save_file(filled, path, metadata={"format": "pt"})
        model = SegformerForSemanticSegmentation.from_pretrained(tmp).eval()
        processor = AutoImageProcessor.from_pretrained(tmp)
        for name in ("config.json", "preprocessor_config.json"):
            with open(os.path.join(tmp, name)) as src, open(os.path.join(OUT, name), "w") as dst:
                dst.write(src.read())
    image = Image.open(args.photo).convert("RGB")
    with torch.inference_mode():
        inputs = processor(images=image, return_tensors="pt")
        outputs = model(**inputs)
        labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])[0]
    labels = labels.numpy()
    sampled = labels[::STEP, ::STEP]
    doc = {
        "source": f"transformers {transformers.__version__}, {type(processor).__name__}",
        "torch": torch.__version__.split("+")[0],
        "photo": os.path.basename(args.photo),
        "size": [image.width, image.height],
        "step": STEP,
        "tensors": [[k, list(v.shape)] for k, v in sorted(filled.items()) if v.is_floating_point()],
        "labels": ["".join(str(int(v)) for v in row) for row in sampled],
    }
    with open(os.path.join(OUT, "expected.json"), "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
    print(f"{args.photo}: {image.width}x{image.height}, classes present {np.bincount(labels.flatten(), minlength=len(LABELS)).tolist()}")


if __name__ == "__main__":
    main()
