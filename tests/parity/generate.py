#!/usr/bin/env python3
"""Generate PyTorch parity fixtures for wick.

Every floating-point state-dict entry of the REAL PyTorch model (torchvision,
timm, efficientnet_lite_pytorch) is overwritten with a deterministic value
computed by `synth(name, shape)` (see README.md for the formula; the Rust test
implements the same function bit for bit). The model is run in eval mode on
`synth("input", [B, 3, H, W])` and the logits are written to
`<out>/<id>.json` together with the ordered list of `[name, shape]` so the Rust
side can rebuild the exact state dict without any weight file.

Usage (the venv needs torch, torchvision, timm, numpy, efficientnet_lite_pytorch):
    python tests/parity/generate.py                       # all models -> tests/fixtures/parity
    python tests/parity/generate.py --only resnet         # ids containing "resnet"
    python tests/parity/generate.py --describe            # print lite block configs (README)
    python tests/parity/generate.py --crosscheck          # timm tf_lite vs lukemelas lite equivalence

CI never runs this; only the committed JSON is used.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

torch.set_num_threads(1)

# ---------------------------------------------------------------------------
# Deterministic weights
# ---------------------------------------------------------------------------

_M64 = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def fnv1a64(name: str) -> int:
    h = _FNV_OFFSET
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * _FNV_PRIME) & _M64
    return h


def _uniform(name: str, numel: int) -> np.ndarray:
    """u in [0,1) as float64, exact multiples of 2^-24 (splitmix64 finaliser)."""
    seed = np.uint64(fnv1a64(name))
    with np.errstate(over="ignore"):
        i = np.arange(1, numel + 1, dtype=np.uint64)
        z = seed + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def synth(name: str, shape) -> np.ndarray:
    shape = [int(d) for d in shape]
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    u = _uniform(name, numel)
    s = 2.0 * u - 1.0
    leaf = name.rsplit(".", 1)[-1]
    ndim = len(shape)
    if leaf == "running_var":
        v = 0.5 + u
    elif leaf == "running_mean":
        v = 0.1 * s
    elif leaf == "bias":
        v = 0.1 * s
    elif leaf == "weight" and ndim == 1:
        v = 1.0 + 0.25 * s
    elif name == "input":
        v = s
    else:
        fan_in = numel // shape[0] if ndim > 1 else numel
        v = s * math.sqrt(3.0 / float(fan_in))
    return v.astype(np.float32).reshape(shape)


def fill_state_dict(model):
    """Overwrite every floating-point entry; returns the ordered [name, shape] list."""
    sd = model.state_dict()
    new_sd = {}
    tensors = []
    for name, t in sd.items():
        if t.is_floating_point():
            assert t.dtype == torch.float32, (name, t.dtype)
            new_sd[name] = torch.from_numpy(synth(name, list(t.shape)))
            tensors.append([name, list(t.shape)])
        else:
            new_sd[name] = t.clone()
    model.load_state_dict(new_sd, strict=True)
    return tensors


# ---------------------------------------------------------------------------
# Model registry
# ---------------------------------------------------------------------------

NUM_CLASSES = 16
TV_INPUT = [2, 3, 160, 128]  # non-square on purpose (H=160, W=128)
INPUT_SCALE = 8.0  # logits_scaled = model(INPUT_SCALE * synth("input", shape))
LITE_NATIVE = {0: 224, 1: 240, 2: 260, 3: 280, 4: 300}  # TF efficientnet_lite_builder resolutions


def _tv(arch):
    def build():
        import torchvision

        return getattr(torchvision.models, arch)(weights=None, num_classes=NUM_CLASSES)

    return build


def _timm(arch):
    def build():
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES)

    return build


def _luke(i):
    def build():
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(f"efficientnet-lite{i}", num_classes=NUM_CLASSES)

    return build


def _version(pkg):
    if pkg == "efficientnet_lite_pytorch":
        import efficientnet_lite_pytorch as m
    elif pkg == "timm":
        import timm as m
    elif pkg == "torchvision":
        import torchvision as m
    return f"{pkg} {m.__version__}"


def registry():
    models = []  # (id, architecture, package, builder, input_shape, classifier module)
    for a in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]:
        models.append((f"torchvision_{a}", a, "torchvision", _tv(a), TV_INPUT, "fc"))
    models.append(("torchvision_densenet121", "densenet121", "torchvision", _tv("densenet121"), TV_INPUT, "classifier"))
    models.append(("torchvision_mobilenet_v2", "mobilenet_v2", "torchvision", _tv("mobilenet_v2"), TV_INPUT, "classifier.1"))
    for a in ["mobilenet_v3_large", "mobilenet_v3_small"]:
        models.append((f"torchvision_{a}", a, "torchvision", _tv(a), TV_INPUT, "classifier.3"))
    models.append(("timm_resnet50", "resnet50", "timm", _timm("resnet50"), TV_INPUT, "fc"))
    for a in ["mobilenetv3_large_100", "mobilenetv3_small_100"]:
        models.append((f"timm_{a}", a, "timm", _timm(a), TV_INPUT, "classifier"))
    for pre in ["", "tf_"]:
        a = f"{pre}efficientnet_lite0"
        models.append((f"timm_{a}", a, "timm", _timm(a), TV_INPUT, "classifier"))
    for pre in ["", "tf_"]:
        for i in range(1, 5):
            a = f"{pre}efficientnet_lite{i}"
            s = LITE_NATIVE[i]
            models.append((f"timm_{a}", a, "timm", _timm(a), [1, 3, s, s], "classifier"))
    for i in range(5):
        s = LITE_NATIVE[i]
        # Static "same" padding is computed for the native size: input MUST be SxS.
        models.append(
            (f"lukemelas_efficientnet_lite{i}", f"efficientnet_lite{i}", "efficientnet_lite_pytorch", _luke(i), [1, 3, s, s], "_fc")
        )
    return models


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


def run_model(entry, out_dir):
    mid, arch, pkg, build, input_shape, head = entry
    torch.manual_seed(0)
    model = build()
    tensors = fill_state_dict(model)
    model.eval()
    bn_eps = sorted({m.eps for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)})

    feats = {}
    head_mod = model.get_submodule(head)
    assert isinstance(head_mod, torch.nn.Linear), (mid, type(head_mod))
    hook = head_mod.register_forward_pre_hook(lambda m, args: feats.__setitem__("x", args[0].detach().clone()))
    # Count ReLU6 inputs above 6 (is the upper clamp exercised at all?).
    clamp = {"n": 0, "gt6": 0}

    def _relu6_hook(_m, args):
        clamp["n"] += args[0].numel()
        clamp["gt6"] += int((args[0] > 6).sum())

    r6 = [m.register_forward_pre_hook(_relu6_hook) for m in model.modules() if isinstance(m, torch.nn.ReLU6)]
    x = torch.from_numpy(synth("input", input_shape))
    with torch.no_grad():
        logits = model(x)
    hook.remove()
    clamp1 = dict(clamp)
    clamp.update(n=0, gt6=0)
    # Second run on INPUT_SCALE * input (power of two: exact in f32). With the plain input the
    # ReLU6 upper clamp is never hit in mobilenet_v2 / lite0, so ReLU-vs-ReLU6 bugs would pass.
    with torch.no_grad():
        logits_scaled = model(x * INPUT_SCALE)
    for h in r6:
        h.remove()
    assert torch.isfinite(logits_scaled).all(), f"{mid}: non-finite scaled logits"
    assert tuple(logits.shape) == (input_shape[0], NUM_CLASSES), logits.shape
    assert torch.isfinite(logits).all(), f"{mid}: non-finite logits"
    f = feats["x"].double()
    assert torch.isfinite(f).all()

    doc = {
        "id": mid,
        "architecture": arch,
        "source": _version(pkg),
        "torch": torch.__version__.split("+")[0],
        "num_classes": NUM_CLASSES,
        "input_shape": input_shape,
        "bn_eps": bn_eps,
        "tensors": tensors,
        "logits": [[float(v) for v in row] for row in logits.numpy().astype(np.float32)],
        "input_scale": INPUT_SCALE,
        "logits_scaled": [[float(v) for v in row] for row in logits_scaled.numpy().astype(np.float32)],
        # Pre-classifier (pooled) features, per batch item: sum and sum of |x|, float64.
        "features_checksum": {
            "shape": list(f.shape),
            "sum": [float(v) for v in f.sum(dim=1)],
            "abs_sum": [float(v) for v in f.abs().sum(dim=1)],
        },
    }
    path = os.path.join(out_dir, f"{mid}.json")
    with open(path, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
    maxabs = float(logits.abs().max())
    featmax = float(f.abs().max())
    flag = "  <-- LARGE" if maxabs > 1e4 else ""
    print(
        f"{mid:40s} in={input_shape} tensors={len(tensors):4d} bn_eps={bn_eps} "
        f"max|logit|={maxabs:.4g} max|feat|={featmax:.4g} max|logit_x{INPUT_SCALE:g}|={float(logits_scaled.abs().max()):.4g}"
        + (f" relu6>6: {clamp1['gt6'] / clamp1['n']:.1e} / x{INPUT_SCALE:g}: {clamp['gt6'] / clamp['n']:.1e}" if r6 else "")
        + flag,
        flush=True,
    )
    return maxabs


def print_synth_examples(path=None):
    cases = [
        ("conv1.weight", [4, 3, 3, 3]),
        ("bn1.running_var", [4]),
        ("bn1.running_mean", [4]),
        ("bn1.weight", [4]),
        ("bn1.bias", [4]),
        ("fc.weight", [16, 512]),
        ("input", [1, 3, 2, 2]),
    ]
    out = []
    print(f"fnv1a64('conv1.weight') = {fnv1a64('conv1.weight'):#018x}")
    print(f"fnv1a64('') = {fnv1a64(''):#018x}")
    for name, shape in cases:
        v = synth(name, shape).reshape(-1)[:5]
        vals = [float(x) for x in v]
        bits = [f"{int(b):#010x}" for b in v.view(np.uint32)]
        print(f"synth({name!r}, {shape})[:5] = {vals}  bits={bits}")
        out.append({"name": name, "shape": shape, "first": vals, "first_bits": bits})
    if path:
        doc = {
            "fnv1a64": {n: f"{fnv1a64(n):#018x}" for n in ["", "input", "conv1.weight"]},
            "cases": out,
        }
        with open(path, "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")


# ---------------------------------------------------------------------------
# Descriptions for README (printed from instantiated models)
# ---------------------------------------------------------------------------


def _pad_desc(conv):
    name = type(conv).__name__
    if hasattr(conv, "static_padding"):  # lukemelas Conv2dStaticSamePadding
        sp = conv.static_padding
        return f"static{tuple(sp.padding)}" if isinstance(sp, torch.nn.ZeroPad2d) else "none"
    if name == "Conv2dSame":
        return "tf-same(dyn)"
    return f"sym{tuple(conv.padding)}"


def describe_timm(arch):
    import timm

    m = timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES)
    print(f"\n#### timm `{arch}`")
    print(f"stem: conv_stem {m.conv_stem.in_channels}->{m.conv_stem.out_channels} k3 s2 pad={_pad_desc(m.conv_stem)}; "
          f"bn1 eps={m.bn1.eps} act={type(m.bn1.act).__name__}; head: conv_head {m.conv_head.in_channels}->"
          f"{m.conv_head.out_channels} 1x1, bn2 eps={m.bn2.eps}; classifier {m.classifier.in_features}->{m.classifier.out_features}")
    print("| stage | block type | k | s | expand | in | mid | out | repeats | dw pad (first / rest) | skip (rest) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for si, stage in enumerate(m.blocks):
        b0 = stage[0]
        dw = b0.conv_dw
        if hasattr(b0, "conv_pw") and not hasattr(b0, "conv_pwl"):
            btype, cin, mid, cout = "DS", dw.in_channels, dw.in_channels, b0.conv_pw.out_channels
        else:
            btype, cin, mid, cout = "IR", b0.conv_pw.in_channels, b0.conv_pw.out_channels, b0.conv_pwl.out_channels
        rest = [_pad_desc(b.conv_dw) for b in stage[1:]]
        print(f"| {si} | {btype} | {dw.kernel_size[0]} | {dw.stride[0]} | {mid // cin} | {cin} | {mid} | {cout} | {len(stage)} | "
              f"{_pad_desc(dw)} / {rest[0] if rest else '-'} | first={b0.has_skip} rest={[b.has_skip for b in stage[1:]][:1]} |")


def describe_luke(i):
    m = _luke(i)()
    gp = m._global_params
    print(f"\n#### efficientnet_lite_pytorch `efficientnet-lite{i}` (image_size={gp.image_size}, width={gp.width_coefficient}, "
          f"depth={gp.depth_coefficient}, bn_eps={gp.batch_norm_epsilon}, act={type(m._swish).__name__})")
    print(f"stem: _conv_stem {m._conv_stem.in_channels}->{m._conv_stem.out_channels} k3 s2 pad={_pad_desc(m._conv_stem)}; "
          f"head: _conv_head {m._conv_head.in_channels}->{m._conv_head.out_channels} 1x1; _fc {m._fc.in_features}->{m._fc.out_features}")
    print("| stage | blocks (flat idx) | k | s | expand | in | mid | out | repeats | dw pad (first / rest) | skip (rest) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    stages = []
    for bi, b in enumerate(m._blocks):
        if not stages or stages[-1][-1][1]._block_args.output_filters != b._block_args.output_filters:
            stages.append([])
        stages[-1].append((bi, b))
    for si, st in enumerate(stages):
        bi0, b0 = st[0]
        a = b0._block_args
        dw = b0._depthwise_conv
        rest = [_pad_desc(b._depthwise_conv) for _, b in st[1:]]

        def skip(b):
            ba = b._block_args
            return bool(ba.id_skip and ba.stride == 1 and ba.input_filters == ba.output_filters)

        print(f"| {si} | {bi0}..{st[-1][0]} | {a.kernel_size} | {dw.stride[0]} | {a.expand_ratio} | {a.input_filters} | "
              f"{dw.in_channels} | {a.output_filters} | {len(st)} | {_pad_desc(dw)} / {rest[0] if rest else '-'} | "
              f"first={skip(b0)} rest={[skip(b) for _, b in st[1:]][:1]} |")


def describe_mobilenet_v2():
    import torchvision

    m = torchvision.models.mobilenet_v2(weights=None, num_classes=NUM_CLASSES)
    print("\n#### torchvision `mobilenet_v2`")
    print("features.0: Conv 3->32 k3 s2 pad1 + BN + ReLU6; features.18: Conv 1x1 320->1280 + BN + ReLU6; classifier.1 Linear")
    print("| features idx | expand | in | mid | out | dw stride | residual | keys |")
    print("|---|---|---|---|---|---|---|---|")
    for i, b in enumerate(m.features[1:18], start=1):
        convs = [c for c in b.conv.modules() if isinstance(c, torch.nn.Conv2d)]
        dw = [c for c in convs if c.groups > 1][0]
        cin, cout = convs[0].in_channels, convs[-1].out_channels
        keys = "conv.0.0=dw, conv.0.1=bn, conv.1=pw-linear, conv.2=bn" if len(convs) == 2 else \
            "conv.0.0=pw, conv.0.1=bn, conv.1.0=dw, conv.1.1=bn, conv.2=pw-linear, conv.3=bn"
        print(f"| {i} | {dw.in_channels // cin} | {cin} | {dw.in_channels} | {cout} | {dw.stride[0]} | {b.use_res_connect} | {keys} |")


def crosscheck():
    """timm tf_efficientnet_liteN and lukemelas efficientnet-liteN: same math?  Map keys and compare."""
    import timm

    for i in range(5):
        t = timm.create_model(f"tf_efficientnet_lite{i}", pretrained=False, num_classes=NUM_CLASSES)
        fill_state_dict(t)
        t.eval()
        l = _luke(i)()
        tsd = t.state_dict()
        lsd = l.state_dict()
        tk = [k for k in tsd if not k.endswith("num_batches_tracked")]
        lk = [k for k in lsd if not k.endswith("num_batches_tracked")]
        assert len(tk) == len(lk), (len(tk), len(lk))
        new = dict(lsd)
        for a, b in zip(tk, lk):
            assert tsd[a].shape == lsd[b].shape, (a, b)
            new[b] = tsd[a]
        l.load_state_dict(new, strict=True)
        l.eval()
        s = LITE_NATIVE[i]
        x = torch.from_numpy(synth("input", [1, 3, s, s]))
        with torch.no_grad():
            yt, yl = t(x), l(x)
        print(f"lite{i}: keys map 1:1 in order ({len(tk)}), max|timm_tf - lukemelas| = {float((yt - yl).abs().max()):.3g} "
              f"(max|y|={float(yt.abs().max()):.4g})")
        if i == 0:
            for a, b in list(zip(tk, lk))[:12]:
                print(f"    {a:32s} <- {b}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.normpath(os.path.join(here, "..", "fixtures", "parity"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=default_out, help="output directory for <id>.json (default: %(default)s)")
    ap.add_argument("--only", action="append", default=[], help="substring filter on model id (repeatable)")
    ap.add_argument("--synth-out", default=os.path.normpath(os.path.join(here, "..", "fixtures", "synth_reference.json")),
                    help="where to write synth() reference values ('' to skip)")
    ap.add_argument("--describe", action="store_true", help="print lite block configs and exit")
    ap.add_argument("--crosscheck", action="store_true", help="check timm tf_lite == lukemelas lite with mapped keys, exit")
    ap.add_argument("--list", action="store_true", help="list model ids and exit")
    args = ap.parse_args()

    if args.list:
        for e in registry():
            print(e[0], e[4])
        return 0
    if args.describe:
        describe_mobilenet_v2()
        for i in range(5):
            describe_timm(f"efficientnet_lite{i}")
            describe_timm(f"tf_efficientnet_lite{i}")
            describe_luke(i)
        return 0
    if args.crosscheck:
        crosscheck()
        return 0

    os.makedirs(args.out, exist_ok=True)
    if args.synth_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.synth_out)), exist_ok=True)
    print_synth_examples(args.synth_out or None)
    sel = [e for e in registry() if not args.only or any(s in e[0] for s in args.only)]
    if not sel:
        print("no model matches", args.only, file=sys.stderr)
        return 1
    large = []
    for e in sel:
        if run_model(e, args.out) > 1e4:
            large.append(e[0])
    if large:
        print("WARNING: max|logit| > 1e4 for:", ", ".join(large))
    return 0


if __name__ == "__main__":
    sys.exit(main())
