"""The serving peer: FastAPI + uvicorn + ONNX Runtime, doing for one model what `wick serve` does
for the same model's package (same preprocessing, same post-processing, the same JSON answer in
wick's default shape), so scripts/bench-serve-peers.sh compares like with like.

    PEER_TASK=classification|segmentation|detection PEER_ONNX=model.onnx PEER_PACKAGE=dir \
    PEER_THREADS=2 python -m uvicorn server_ort:app --app-dir scripts/peers --port 8080

PEER_PACKAGE is the wick package of the same model: its config.json (input size, crop_pct,
mean, std, letterbox, ...) and labels (label_names, id2label, labels.txt) are read from it as
wick reads them (docs/model-package.md). One uvicorn process, one ONNX Runtime session with
PEER_THREADS intra-op threads (default: every core, as wick's pool), inter-op 1, ORT_ENABLE_ALL.

What each task does per request (wick's pipeline, src/model/):
- classification: decode (Pillow, RGB); resize the shorter side to floor(size / crop_pct) with
  Pillow's antialiased bilinear (torchvision Resize); centre crop; /255, mean, std; softmax;
  top 5 as [{"label", "score"}].
- segmentation: decode; one tile (images up to segmentation.tile_size, default 512, per side),
  edge-padded to the network's multiple of 16 (and 32 at least); /255, mean, std; argmax over
  the classes (sigmoid > threshold for 1 class); per present class a base64 PNG mask (0/255,
  fast deflate) and its pixel count: [{"score": null, "label", "mask", "pixels"}].
- detection (YOLOv8): decode (OpenCV, as ultralytics); letterbox as ultralytics' predictor
  (LetterBox(auto=True): scale to fit input_size, pad to the next multiple of 32 with grey
  114, cv2.INTER_LINEAR); /255; best class per anchor above `threshold` (default 0.25, or
  `threshold=` in X-Amzn-SageMaker-Custom-Attributes as wick reads it), at most 30000 into
  class-aware NMS (IoU > 0.45 suppresses), 300 kept; boxes back to the photo's pixels:
  [{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}].
"""
import base64
import io
import json
import math
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from PIL import Image

TASK = os.environ.get("PEER_TASK", "classification")
PACKAGE = os.environ["PEER_PACKAGE"]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def find_config(package):
    """config.json in the package directory or up to three folders below (breadth first)."""
    level = [package]
    for _ in range(4):
        for d in level:
            if os.path.isfile(os.path.join(d, "config.json")):
                return os.path.join(d, "config.json")
        level = [os.path.join(d, e) for d in level for e in sorted(os.listdir(d))
                 if os.path.isdir(os.path.join(d, e)) and not e.startswith(".")]
    raise SystemExit(f"no config.json in {package}")


CONFIG_PATH = find_config(PACKAGE)
with open(CONFIG_PATH) as f:
    CONFIG = json.load(f)
PRETRAINED = CONFIG.get("pretrained_cfg", {})


def labels():
    if "label_names" in CONFIG:
        return list(CONFIG["label_names"])
    if "id2label" in CONFIG:
        return [CONFIG["id2label"][str(i)] for i in range(len(CONFIG["id2label"]))]
    path = os.path.join(os.path.dirname(CONFIG_PATH), "labels.txt")
    if os.path.isfile(path):
        with open(path) as f:
            return [line.rstrip() for line in f if line.strip()]
    return [f"class_{i}" for i in range(int(CONFIG.get("num_classes", 0)))]


LABELS = labels()


def session():
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(os.environ.get("PEER_THREADS") or len(os.sched_getaffinity(0)))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(os.environ["PEER_ONNX"], so, providers=["CPUExecutionProvider"])


SESSION = session()
INPUT = SESSION.get_inputs()[0].name


def decode_pil(data):
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as e:  # Pillow raises several kinds for a bad body
        raise HTTPException(status_code=400, detail=f"cannot decode image: {e}") from e


def normalise(rgb_u8, mean, std):
    """HWC uint8 -> 1CHW float32 (x / 255 - mean) / std."""
    x = rgb_u8.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


# ---- classification -------------------------------------------------------------------------

def classify(data):
    img = decode_pil(data)
    _, h, w = PRETRAINED.get("input_size", [3, 224, 224])
    crop_pct = PRETRAINED.get("crop_pct", 0.875)
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[PRETRAINED.get("interpolation", "bilinear")]
    iw, ih = img.size
    if h == w:
        # torchvision Resize(int): the shorter side to `scale`, the longer truncated.
        scale = math.floor(h / crop_pct)
        if iw <= ih:
            size = (scale, int(scale * ih / iw))
        else:
            size = (int(scale * iw / ih), scale)
    else:
        # timm ResizeKeepRatio: cover floor(h / crop_pct) x floor(w / crop_pct).
        sh, sw = math.floor(h / crop_pct), math.floor(w / crop_pct)
        ratio = max(sh / ih, sw / iw)
        size = (round(iw * ratio), round(ih * ratio))
    if size != img.size:
        img = img.resize(size, resample)
    top = int(round((size[1] - h) / 2.0))
    left = int(round((size[0] - w) / 2.0))
    img = img.crop((left, top, left + w, top + h))
    x = normalise(np.asarray(img), PRETRAINED.get("mean", IMAGENET_MEAN), PRETRAINED.get("std", IMAGENET_STD))
    logits = SESSION.run(None, {INPUT: x})[0][0].astype(np.float64)
    if CONFIG.get("multi_label"):
        scores = 1.0 / (1.0 + np.exp(-logits))
    else:
        e = np.exp(logits - logits.max())
        scores = e / e.sum()
    best = np.argsort(-scores, kind="stable")[:5]
    return [{"label": LABELS[i], "score": float(np.float32(scores[i]))} for i in best]


# ---- segmentation ---------------------------------------------------------------------------

SEG = CONFIG.get("segmentation", {})
SEG_MULTIPLE = 16  # smp DeepLabV3+'s output stride
SEG_MIN_SIDE = 32


def png_mask(mask_bool):
    out = io.BytesIO()
    Image.fromarray(mask_bool.astype(np.uint8) * np.uint8(255), mode="L").save(out, format="PNG", compress_level=1)
    return base64.b64encode(out.getvalue()).decode("ascii")


def segment(data):
    rgb = np.asarray(decode_pil(data))
    h, w, _ = rgb.shape
    tile = SEG.get("tile_size", 512)
    if h > tile or w > tile or "resize_shorter_side" in SEG:
        raise HTTPException(status_code=400, detail=f"this peer runs one tile: images up to {tile} pixels a side")

    def pad(n):
        return -(-max(n, SEG_MIN_SIDE) // SEG_MULTIPLE) * SEG_MULTIPLE

    padded = np.pad(rgb, ((0, pad(h) - h), (0, pad(w) - w), (0, 0)), mode="edge")
    x = normalise(padded, PRETRAINED.get("mean", IMAGENET_MEAN), PRETRAINED.get("std", IMAGENET_STD))
    logits = SESSION.run(None, {INPUT: x})[0][0, :, :h, :w]
    if logits.shape[0] == 1:
        t = SEG.get("threshold", 0.5)
        label_map = (logits[0] > math.log(t / (1 - t))).astype(np.uint8)
        names = ["background", LABELS[0]] if len(LABELS) == 1 else LABELS
    else:
        label_map = logits.argmax(axis=0).astype(np.uint8)
        names = LABELS
    counts = np.bincount(label_map.ravel(), minlength=max(len(names), 256))
    entries = []
    for c in np.flatnonzero(counts):
        entries.append({
            "score": None,
            "label": names[c] if c < len(names) else f"class_{c}",
            "mask": png_mask(label_map == c),
            "pixels": int(counts[c]),
        })
    return entries


# ---- detection ------------------------------------------------------------------------------

MAX_NMS = 30000
MAX_STRIDE = 32


def options(header):
    """`threshold`, `iou`, `max_detections` from Custom-Attributes (`key=value;...`)."""
    opts = {"threshold": 0.25, "iou": 0.45, "max_detections": 300}
    for pair in (header or "").replace(",", ";").split(";"):
        key, _, value = pair.partition("=")
        key = key.strip().lower().replace("-", "_")
        if key in opts:
            try:
                opts[key] = type(opts[key])(value.strip())
            except ValueError as e:
                raise HTTPException(status_code=400, detail=f"bad {key}: {value}") from e
    return opts


def letterbox(bgr):
    """ultralytics LetterBox(auto=CONFIG letterbox == rect, scaleup, centre) on a BGR image ->
    (1, 3, H, W) RGB float32 in [0, 1], gains (x, y) and pads (left, top)."""
    import cv2

    _, th, tw = PRETRAINED.get("input_size", [3, 640, 640])
    h, w = bgr.shape[:2]
    r = min(th / h, tw / w)
    new_w, new_h = min(max(round(w * r), 1), tw), min(max(round(h * r), 1), th)
    dw, dh = tw - new_w, th - new_h
    if CONFIG.get("letterbox", "rect") == "rect":
        dw, dh = dw % MAX_STRIDE, dh % MAX_STRIDE
    if (new_w, new_h) != (w, h):
        bgr = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh / 2 - 0.1), round(dh / 2 + 0.1)
    left, right = round(dw / 2 - 0.1), round(dw / 2 + 0.1)
    bgr = cv2.copyMakeBorder(bgr, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    x = bgr[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(x), (new_w / w, new_h / h), (left, top)


def nms(boxes, scores, classes, iou_limit, max_det):
    """Greedy class-aware NMS over boxes sorted best first; returns the kept indices."""
    offset = boxes + (classes.astype(np.float32) * 8192.0)[:, None]  # classes never overlap
    x1, y1, x2, y2 = offset.T
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.arange(len(boxes))
    keep = []
    while order.size and len(keep) < max_det:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        ih = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = iw * ih
        union = area[i] + area[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
        order = rest[iou <= iou_limit]
    return keep


def detect(data, header):
    import cv2

    opts = options(header)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise HTTPException(status_code=400, detail="cannot decode image")
    h, w = bgr.shape[:2]
    x, (gx, gy), (left, top) = letterbox(bgr)
    raw = SESSION.run(None, {INPUT: x})[0][0]  # (4 + nc, anchors)
    cls = raw[4:]
    best = cls.argmax(axis=0)
    score = cls[best, np.arange(cls.shape[1])]
    idx = np.flatnonzero(score > opts["threshold"])
    idx = idx[np.argsort(-score[idx], kind="stable")][:MAX_NMS]
    cx, cy, bw, bh = raw[0, idx], raw[1, idx], raw[2, idx], raw[3, idx]
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    keep = nms(boxes, score[idx], best[idx], opts["iou"], opts["max_detections"])
    def pixel(v, pad, gain, limit):
        """Canvas coordinate -> the photo's pixel, clipped, rounded half away from zero."""
        return int(math.floor(min(max((float(v) - pad) / gain, 0.0), limit) + 0.5))

    out = []
    for k in keep:
        x1, y1, x2, y2 = boxes[k]
        out.append({
            "score": float(score[idx[k]]),
            "label": LABELS[best[idx[k]]],
            "box": {"xmin": pixel(x1, left, gx, w), "ymin": pixel(y1, top, gy, h),
                    "xmax": pixel(x2, left, gx, w), "ymax": pixel(y2, top, gy, h)},
        })
    return out


# ---- the app --------------------------------------------------------------------------------

app = FastAPI()


@app.get("/ping")
async def ping():
    return {"status": "ok"}


@app.post("/invocations")
async def invocations(request: Request):
    data = await request.body()
    if TASK == "classification":
        answer = classify(data)
    elif TASK == "segmentation":
        answer = segment(data)
    elif TASK == "detection":
        answer = detect(data, request.headers.get("x-amzn-sagemaker-custom-attributes"))
    else:
        raise HTTPException(status_code=500, detail=f"unknown PEER_TASK {TASK}")
    return Response(content=json.dumps(answer, separators=(",", ":")), media_type="application/json")
