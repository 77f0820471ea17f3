"""Writes the tiny checkpoint fixtures used by `src/model/weights` unit tests.

Run once (needs torch; the Rust tests never do):
    /work/cache/torchvenv/bin/python tests/parity/make_checkpoints.py

Produces, in tests/fixtures/checkpoints/:
    tiny_zip.pth      the state dict saved by torch >= 1.6 (zip container)
    tiny_legacy.pth   the same object saved in the legacy (pre-1.6) stream format
    tiny_expected.json  every weight the loader must return, after name
                        normalisation, as f32 values in row-major order,
                        plus names that must NOT be returned.

The object deliberately exercises the awkward corners of real checkpoints:
nesting under "state_dict" next to non-tensor entries and an optimizer dict,
DataParallel "module." prefixes, non-contiguous views (transposed, permuted
channels-last conv weights like EfficientNet-Lite's depthwise convs), a slice
with a storage offset, two tensors sharing one storage, f16/bf16/f64 storages,
an int64 num_batches_tracked, an nn.Parameter and a 0-d tensor.

Re-running rewrites the .pth files with other storage keys (legacy torch.save
names storages by memory address); the tensors and the JSON stay the same.
"""

import collections
import json
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "checkpoints")


def build():
    g = torch.Generator().manual_seed(1234)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    sd = collections.OrderedDict()
    sd["module.conv.weight"] = randn(4, 3, 3, 3)
    sd["module.conv.bias"] = randn(4)
    # Transposed: shape [6, 5], stride [1, 6].
    sd["module.fc.weight"] = randn(5, 6).t()
    # Depthwise conv stored channels-last: shape [8, 1, 3, 3], stride [1, 1, 24, 8].
    sd["module.dw.weight"] = randn(3, 3, 1, 8).permute(3, 2, 0, 1)
    # Slice with a storage offset and a row stride larger than its width.
    big = randn(6, 7)
    sd["module.sliced"] = big[2:5, 1:4]
    # Two views of one storage.
    shared = randn(3, 4)
    sd["module.shared.full"] = shared
    sd["module.shared.row"] = shared[1]
    sd["module.half"] = randn(2, 3, dtype=torch.float16)
    sd["module.bf16"] = randn(2, 3, dtype=torch.bfloat16)
    sd["module.double"] = randn(5, dtype=torch.float64)
    sd["module.bn.weight"] = randn(4)
    sd["module.bn.bias"] = randn(4)
    sd["module.bn.running_mean"] = randn(4)
    sd["module.bn.running_var"] = randn(4).abs()
    sd["module.bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    sd["module.param"] = torch.nn.Parameter(randn(3))
    sd["module.scale"] = torch.tensor(0.5)
    # A transposed f16 view: the gather must honour strides for every dtype.
    sd["module.half_t"] = randn(3, 2, dtype=torch.float16).t()

    obj = {
        "epoch": 12,
        "arch": "tiny",
        # A tensor next to the state dict (torchvision's ImageNet example does this).
        "best_acc1": torch.tensor(0.75),
        "state_dict": sd,
        "optimizer": {
            "state": {0: {"momentum_buffer": randn(4, 3, 3, 3)}},
            "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}],
        },
    }
    return obj, sd


def main():
    os.makedirs(OUT, exist_ok=True)
    obj, sd = build()
    torch.save(obj, os.path.join(OUT, "tiny_zip.pth"))
    torch.save(obj, os.path.join(OUT, "tiny_legacy.pth"), _use_new_zipfile_serialization=False)

    tensors = {}
    for name, t in sd.items():
        if not t.dtype.is_floating_point:
            continue
        name = name[len("module."):]
        t = t.detach().to(torch.float32).contiguous()
        tensors[name] = {"shape": list(t.shape), "values": t.flatten().tolist()}
    expected = {
        "tensors": tensors,
        "absent": ["bn.num_batches_tracked", "best_acc1", "momentum_buffer", "epoch"],
    }
    with open(os.path.join(OUT, "tiny_expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")

    # Sanity: torch reads both back identically.
    for fname in ("tiny_zip.pth", "tiny_legacy.pth"):
        back = torch.load(os.path.join(OUT, fname), weights_only=True)["state_dict"]
        for name, t in sd.items():
            assert torch.equal(back[name], t.detach()), (fname, name)
            assert back[name].stride() == t.stride(), (fname, name)


if __name__ == "__main__":
    main()
