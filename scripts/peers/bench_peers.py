"""`wick bench` next to ONNX Runtime on every network wick serves, interleaved in one sitting, and
one markdown table of ratios. Run through scripts/bench-peers.sh, which builds the venv, the ONNX
files and wick first; this file only times (stdlib, numpy and onnxruntime).

Protocol, per network and batch size: R rounds of [`wick bench` (its N timed iterations after
its 3 warm-ups), then ONNX Runtime (3 warm-ups, the same N timed runs)]. Interleaving is what
makes a ratio mean something on a machine whose speed drifts: both sides of a round ran within
seconds of each other. Per row: wick's median = median of its round medians, the same for ORT,
wick / ORT = median of the per-round ratios, and the per-round ratios' range. Batch 8 rows are
per image.

ONNX Runtime: CPUExecutionProvider, intra-op threads = the thread count `wick bench` reports
(its pool: all cores, or RAYON_NUM_THREADS), inter-op 1, sequential execution, graph
optimisation ORT_ENABLE_ALL (the default), the same input size and batch.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

ORT_WARMUPS = 3


class Network:
    def __init__(self, name, title, size, batches, kind):
        self.name, self.title, self.size, self.batches, self.kind = name, title, size, batches, kind

    @property
    def large(self):
        return self.size > 224


# kind: "package" (wick bench --model-dir), "synthetic" (--architectures), "detector" (the
# detector table's forward column)
NETWORKS = [
    Network("efficientnet_lite0", "EfficientNet-Lite0 (ImageNet weights)", 224, (1, 8), "package"),
    Network("resnet50", "ResNet-50", 224, (1, 8), "synthetic"),
    Network("mobilenet_v2", "MobileNetV2", 224, (1, 8), "synthetic"),
    Network("mobilenet_v3_large", "MobileNetV3-Large (torchvision)", 224, (1, 8), "synthetic"),
    Network("densenet121", "DenseNet-121", 224, (1, 8), "synthetic"),
    Network("efficientnet_b0", "EfficientNet-B0 (torchvision)", 224, (1, 8), "synthetic"),
    Network("efficientnet_v2_s", "EfficientNetV2-S (torchvision)", 224, (1, 8), "synthetic"),
    Network("vit_base_patch16_224", "ViT-B/16 (timm)", 224, (1, 8), "synthetic"),
    Network("deit_small_patch16_224", "DeiT-S/16 (timm)", 224, (1, 8), "synthetic"),
    Network("convnext_tiny", "ConvNeXt-T (timm)", 224, (1, 8), "synthetic"),
    Network("deeplabv3plus_resnet50", "DeepLabV3+ ResNet-50 (smp, 21 classes)", 512, (1,), "synthetic"),
    Network("deeplabv3plus_resnet34", "DeepLabV3+ ResNet-34 (smp, 21 classes)", 512, (1,), "synthetic"),
    Network("unet_resnet34", "U-Net ResNet-34 (smp, 21 classes)", 512, (1,), "synthetic"),
    Network("unet_efficientnet_b0", "U-Net EfficientNet-B0 (smp, 21 classes)", 512, (1,), "synthetic"),
    Network("fpn_resnet34", "FPN ResNet-34 (smp, 21 classes)", 512, (1,), "synthetic"),
    Network("deeplabv3_resnet50", "DeepLabV3 ResNet-50 (torchvision, 21 classes)", 512, (1,), "synthetic"),
    Network("lraspp_mobilenet_v3_large", "LR-ASPP MobileNetV3-Large (21 classes)", 512, (1,), "synthetic"),
    Network("segformer_b0", "SegFormer-B0 (transformers, 21 classes)", 512, (1,), "synthetic"),
    Network("segformer_b2", "SegFormer-B2 (transformers, 21 classes)", 512, (1,), "synthetic"),
    Network("yolov8n", "YOLOv8n (80 classes)", 640, (1,), "detector"),
    Network("yolov8s", "YOLOv8s (80 classes)", 640, (1,), "detector"),
    Network("yolo11n", "YOLO11n (80 classes)", 640, (1,), "detector"),
    Network("yolo11s", "YOLO11s (80 classes)", 640, (1,), "detector"),
]
NAMES = [n.name for n in NETWORKS]


class Failure(Exception):
    """A step failed: the run stops and prints no ratio."""


def wick_bench(args, net, batch, iterations):
    """Runs `wick bench` for one network and batch size; returns (median ms, threads)."""
    cmd = [args.wick, "bench", "--iterations", str(iterations), "--precision", args.precision]
    if net.kind == "package":
        cmd += ["--model-dir", args.lite0_package, "--batch-sizes", str(batch)]
    elif net.kind == "synthetic":
        cmd += ["--architectures", net.name, "--batch-sizes", str(batch), "--image-size", str(net.size)]
    else:
        cmd += ["--architectures", net.name]
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise Failure(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{proc.stderr.strip()}")
    out = proc.stdout
    precision = re.search(r"^precision: (\w+)$", out, re.M)
    if precision and precision.group(1) != args.precision:
        raise Failure(f"`{' '.join(cmd)}` ran in {precision.group(1)}, not {args.precision} "
                      "(a CPU without AVX512-BF16 runs f32)")
    threads = re.search(r"^threads: (\d+)$", out, re.M)
    if not threads:
        raise Failure(f"`{' '.join(cmd)}` printed no `threads:` line:\n{out}")
    return parse_wick_table(out, net, batch, cmd), int(threads.group(1))


def table_rows(out, header_first_cell):
    """The body rows (lists of cells) of the markdown table whose header starts with the cell."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == header_first_cell:
            rows = []
            for body in lines[i + 2:]:
                if not body.startswith("|"):
                    break
                rows.append([c.strip() for c in body.strip().strip("|").split("|")])
            return cells, rows
    return None, []


def parse_wick_table(out, net, batch, cmd):
    """Median ms per call from `wick bench`'s table for this network and batch."""
    if net.kind == "detector":
        # | detector | input | forward median ms | min | max | detect median ms | min | max |
        header, rows = table_rows(out, "detector")
        want = [r for r in rows if r[0] == net.name and r[1] == f"{net.size}x{net.size}"]
        column = "forward median ms"
    else:
        # | model | batch | median ms | min ms | max ms | median ms / image |
        header, rows = table_rows(out, "model")
        want = [r for r in rows
                if r[0] == f"{net.name} {net.size}x{net.size}" and r[1] == str(batch)]
        column = "median ms"
    if header is None or column not in header or len(want) != 1:
        raise Failure(f"no row for {net.name} {net.size}x{net.size} batch {batch} in the output of "
                      f"`{' '.join(cmd)}`:\n{out}")
    try:
        return float(want[0][header.index(column)])
    except (ValueError, IndexError) as e:
        raise Failure(f"unreadable `{column}` in `{' | '.join(want[0])}`: {e}") from e


def ort_session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_median_ms(session, net, batch, iterations, rng):
    shape = (batch, 3, net.size, net.size)
    if net.kind == "detector":
        x = rng.random(shape, dtype=np.float32)  # letterboxed RGB in [0, 1]
    else:
        x = rng.standard_normal(shape, dtype=np.float32)  # a normalised image
    feed = {session.get_inputs()[0].name: x}
    for _ in range(ORT_WARMUPS):
        session.run(None, feed)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        out = session.run(None, feed)[0]
        times.append(1e3 * (time.perf_counter() - t0))
    if not np.isfinite(out).all():
        raise Failure(f"ONNX Runtime gave non-finite outputs for {net.name}")
    return statistics.median(times)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run(args):
    only = NAMES if not args.only else args.only.split(",")
    unknown = [n for n in only if n not in NAMES]
    if unknown:
        raise Failure(f"unknown network(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    rng = np.random.default_rng(0)
    results = []
    threads_seen = set()
    for net in (n for n in NETWORKS if n.name in only):
        path = os.path.join(args.onnx_dir, f"{net.name}.onnx")
        if not os.path.isfile(path):
            raise Failure(f"missing ONNX file {path} (scripts/bench-peers.sh exports it)")
        iterations = args.iterations_large if net.large else args.iterations
        session = None
        for batch in net.batches:
            rounds = []
            for r in range(args.rounds):
                wick_ms, threads = wick_bench(args, net, batch, iterations)
                threads_seen.add(threads)
                if session is None:
                    session = ort_session(path, threads)
                ort_ms = ort_median_ms(session, net, batch, iterations, rng)
                rounds.append({"wick_ms": wick_ms / batch, "ort_ms": ort_ms / batch})
                print(f"  {net.name} {net.size} batch {batch} round {r + 1}/{args.rounds}: "
                      f"wick {wick_ms / batch:.2f} ms, ORT {ort_ms / batch:.2f} ms"
                      f"{' per image' if batch > 1 else ''}", file=sys.stderr, flush=True)
            ratios = [x["wick_ms"] / x["ort_ms"] for x in rounds]
            results.append({
                "network": net.name, "title": net.title, "size": net.size, "batch": batch,
                "iterations": iterations, "per_image": batch > 1,
                "wick_ms": statistics.median(x["wick_ms"] for x in rounds),
                "ort_ms": statistics.median(x["ort_ms"] for x in rounds),
                "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "rounds": rounds,
            })
    if len(threads_seen) > 1:
        raise Failure(f"wick bench reported different thread counts across runs: {sorted(threads_seen)}")
    return results, threads_seen.pop()


def fmt_ms(ms):
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def report(args, results, threads):
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "wick_commit": args.commit,
        "wick_binary": args.wick,
        "threads": threads,
        "rounds": args.rounds,
        "iterations": args.iterations,
        "iterations_large": args.iterations_large,
        "precision": args.precision,
    }
    print(f"wick bench vs ONNX Runtime, {meta['date']}; {meta['cpu']}, {meta['cores']} cores; "
          f"onnxruntime {meta['onnxruntime']} (CPU EP, {threads} intra-op threads, inter-op 1, "
          f"ORT_ENABLE_ALL); wick {meta['wick_commit']} ({threads} threads, {args.precision}); {args.rounds} "
          f"interleaved rounds of {args.iterations} iterations ({args.iterations_large} at 512/640)")
    print()
    print("| network | input | batch | wick ms | ORT ms | wick / ORT | per-round wick / ORT |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        batch = f"{r['batch']}, per image" if r["per_image"] else str(r["batch"])
        print(f"| {r['title']} | {r['size']} | {batch} | {fmt_ms(r['wick_ms'])} | {fmt_ms(r['ort_ms'])} "
              f"| {r['ratio']:.2f} | {r['ratio_min']:.2f}-{r['ratio_max']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": results}, f, indent=1)
            f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wick", required=True, help="the wick binary")
    ap.add_argument("--onnx-dir", required=True, help="where NAME.onnx are")
    ap.add_argument("--lite0-package", required=True, help="wick's EfficientNet-Lite0 package")
    ap.add_argument("--commit", default="unknown", help="wick's git commit, for the header")
    ap.add_argument("--only", help="comma-separated network names")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=20, help="timed iterations at 224")
    ap.add_argument("--iterations-large", type=int, default=8, help="timed iterations at 512 and 640")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"],
                    help="wick's precision (`wick bench --precision`); ONNX Runtime runs f32")
    args = ap.parse_args()
    if args.rounds < 1 or args.iterations < 1 or args.iterations_large < 1:
        ap.error("--rounds and the iteration counts must be at least 1")
    try:
        results, threads = run(args)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        print("error: benchmark failed; no ratios printed", file=sys.stderr)
        sys.exit(1)
    report(args, results, threads)


if __name__ == "__main__":
    main()
