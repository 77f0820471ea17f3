"""Small preparation steps of scripts/bench-serve-peers.sh (runs in the peers' venv, no torch).

    python prepare.py photo SRC OUT.jpg [--size WxH]
        SRC as a JPEG (quality 90); with --size, first scaled (bicubic) to cover WxH and
        centre-cropped to it: the 512x512 photo of the segmentation scenario, the 1920x1080
        one of the detection scenario. Written under a temporary name, then renamed.
    python prepare.py threshold --onnx M.onnx --package DIR --image IMG [--boxes 100]
        A detection threshold that lets about --boxes candidates of IMG into NMS, computed with
        the peer server's own letterbox (server_ort.py) on the ONNX model. A random-weight
        YOLOv8 scores every box far below the default 0.25, so without it neither server would
        run any post-processing.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image


def photo(args):
    img = Image.open(args.src).convert("RGB")
    if args.size:
        w, h = (int(v) for v in args.size.lower().split("x"))
        scale = max(w / img.width, h / img.height)
        size = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
        img = img.resize(size, Image.BICUBIC)
        left, top = (size[0] - w) // 2, (size[1] - h) // 2
        img = img.crop((left, top, left + w, top + h))
    tmp = args.out + ".partial"
    img.save(tmp, format="JPEG", quality=90)
    os.replace(tmp, args.out)


def threshold(args):
    os.environ.update(PEER_TASK="detection", PEER_ONNX=args.onnx, PEER_PACKAGE=args.package)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cv2
    import server_ort

    bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read {args.image}")
    x, _, _ = server_ort.letterbox(bgr)
    raw = server_ort.SESSION.run(None, {server_ort.INPUT: x})[0][0]
    best = np.sort(raw[4:].max(axis=0))[::-1]
    k = min(args.boxes, len(best) - 1)
    if not best[k - 1] > best[k]:
        raise SystemExit(f"the {k}th and {k + 1}th best box scores tie ({best[k]}): no threshold "
                         "lets exactly {k} boxes through")
    # Halfway between the k-th and the (k+1)-th best score: exactly k candidates pass.
    print(f"{(float(best[k - 1]) + float(best[k])) / 2:.6g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("photo")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--size")
    t = sub.add_parser("threshold")
    t.add_argument("--onnx", required=True)
    t.add_argument("--package", required=True)
    t.add_argument("--image", required=True)
    t.add_argument("--boxes", type=int, default=100)
    args = ap.parse_args()
    photo(args) if args.what == "photo" else threshold(args)


if __name__ == "__main__":
    main()
