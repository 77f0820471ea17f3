#!/usr/bin/env python3
"""The `.pth` smp users save by hand: `torch.save(model.state_dict(), "model.pth")`, for the
`config.json` + `.pth` folder test (`tests/it/smp_folder.rs`).

The model is the one of the `smp_unet_resnet34` segmentation fixture (smp `Unet`, resnet34
encoder, 3 classes) with every float tensor from `synth` (generate.py), so the reference
logits are that fixture's `samples`. torch writes the file; this keeps everything of it but
the float storages, in `tests/fixtures/smp_pth/<id>.json`:

- `records`: every zip record in torch's order, `[name, "hex", bytes]` for the pickle, the
  version, byte order and the integer storages (`num_batches_tracked`), or `[name, "synth",
  tensor name]` for a float storage the Rust test refills from `synth` (checked here to be
  exactly `synth(name, shape)`'s little-endian f32 bytes);
- `tensors`: the state dict's `[name, shape]`.

Usage: python tests/parity/generate_smp_pth.py
"""
import io
import json
import os
import sys
import zipfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import fill_state_dict, synth  # noqa: E402

ID = "smp_unet_resnet34"


def main():
    import segmentation_models_pytorch as smp

    model = smp.Unet(encoder_name="resnet34", encoder_weights=None, classes=3).eval()
    tensors = fill_state_dict(model)
    state = model.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    # torch's persistent ids number the storages in the order the pickler meets them: the
    # state dict's order, one storage per tensor here (none shared).
    keys = {}
    for name, t in state.items():
        keys.setdefault(t.untyped_storage().data_ptr(), (str(len(keys)), name, t))
    by_key = {key: (name, t) for key, name, t in keys.values()}
    shapes = dict((n, s) for n, s in tensors)
    records = []
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        for info in zf.infolist():
            data = zf.read(info)
            parts = info.filename.split("/")
            if len(parts) == 3 and parts[1] == "data" and by_key[parts[2]][1].is_floating_point():
                name, t = by_key[parts[2]]
                want = synth(name, shapes[name]).astype("<f4").tobytes()
                assert data == want, f"storage {parts[2]} is not synth({name})"
                records.append([info.filename, "synth", name])
            else:
                records.append([info.filename, "hex", data.hex()])
    doc = {
        "id": ID,
        "source": f"segmentation_models_pytorch {smp.__version__}, torch.save of torch {torch.__version__.split('+')[0]}",
        "reference": f"tests/fixtures/segmentation/{ID}.json",
        "tensors": tensors,
        "records": records,
    }
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "smp_pth")
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, f"{ID}.json")
    with open(path, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
    synth_count = sum(1 for r in records if r[1] == "synth")
    print(path, f"{len(records)} records, {synth_count} refilled from synth", flush=True)


if __name__ == "__main__":
    main()
