"""Pixel fixtures: Pillow's JPEG decoding and ultralytics' (OpenCV's) letterbox, byte for byte.

Writes `tests/fixtures/pixels/`:
- `jpeg/*.jpg`: small JPEGs that Pillow encodes here from a synthetic picture (no downloaded
  file), one per mode wick must decode as Pillow does: baseline and progressive, chroma 4:4:4,
  4:2:2 and 4:2:0, greyscale, an odd size (partial MCUs), an EXIF orientation.
- `jpeg.json`: for each of them and for the shared photos `chelsea.jpg` / `coffee.jpg`, the
  sha256 of `ImageOps.exif_transpose(Image.open(f)).convert("RGB").tobytes()`.
- `letterbox.json`: ultralytics' `LetterBox` (cv2.resize INTER_LINEAR on uint8, then
  copyMakeBorder with 114) of synthetic pictures (the formula `synth_picture` below, which the
  Rust test rebuilds) and of the shared `chelsea.png` / `coffee.png`: canvas size, padding and
  the sha256 of the canvas bytes (HWC, RGB order).

CI never runs this; the Rust tests read only the JSON and the JPEGs.
Run: python tests/parity/generate_pixels.py [--shared ../shared/fixtures]
"""

import argparse
import hashlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import PIL
from PIL import Image, ImageOps, features
import ultralytics
from ultralytics.data.augment import LetterBox

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "pixels"


def synth_picture(width, height):
    """A smooth gradient under hash noise, integer-only so Rust rebuilds it exactly:
    v = (3x + 2y + 60c + ((73856093x) ^ (19349663y) ^ (83492791c)) % 61) % 256."""
    x = np.arange(width, dtype=np.uint64)[None, :, None]
    y = np.arange(height, dtype=np.uint64)[:, None, None]
    c = np.arange(3, dtype=np.uint64)[None, None, :]
    noise = ((x * np.uint64(73856093)) ^ (y * np.uint64(19349663)) ^ (c * np.uint64(83492791))) % np.uint64(61)
    v = (x * np.uint64(3) + y * np.uint64(2) + c * np.uint64(60) + noise) % np.uint64(256)
    return v.astype(np.uint8)


def jpeg_source(width, height):
    """A photo-like picture for the JPEG encoder: colour ramps, a disc with sharp chroma edges
    and mild noise (JPEG's errors show at edges and in chroma)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    g = 255 * xx / max(width - 1, 1)
    b = 255 * yy / max(height - 1, 1)
    disc = (xx - width * 0.6) ** 2 + (yy - height * 0.4) ** 2 < (min(width, height) * 0.3) ** 2
    r[disc], g[disc], b[disc] = 230, 30, 60
    rng = np.random.default_rng(20)
    img = np.stack([r, g, b], -1) + rng.normal(0, 6, (height, width, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def pillow_rgb(path):
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        return im.size, im.tobytes()


def jpegs(shared):
    out_dir = OUT / "jpeg"
    out_dir.mkdir(parents=True, exist_ok=True)
    odd = Image.fromarray(jpeg_source(61, 43))
    big = Image.fromarray(jpeg_source(200, 150))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to display
    made = {
        "baseline_444.jpg": (odd, dict(subsampling=0, quality=90)),
        "baseline_422.jpg": (odd, dict(subsampling=1, quality=90)),
        "baseline_420.jpg": (odd, dict(subsampling=2, quality=75)),
        "progressive_444.jpg": (odd, dict(subsampling=0, quality=90, progressive=True)),
        "progressive_422.jpg": (odd, dict(subsampling=1, quality=90, progressive=True)),
        "progressive_420.jpg": (big, dict(subsampling=2, quality=75, progressive=True, optimize=True)),
        "baseline_420_large.jpg": (big, dict(subsampling=2, quality=95)),
        "grey.jpg": (odd.convert("L"), dict(quality=85)),
        "exif_rotated_420.jpg": (odd, dict(subsampling=2, quality=80, exif=exif.tobytes())),
    }
    cases = []
    for name, (img, options) in made.items():
        buf = io.BytesIO()
        img.save(buf, "JPEG", **options)
        (out_dir / name).write_bytes(buf.getvalue())
        size, rgb = pillow_rgb(out_dir / name)
        cases.append({"file": f"jpeg/{name}", "width": size[0], "height": size[1], "sha256": sha256(rgb)})
    for name in ["chelsea.jpg", "coffee.jpg"]:
        size, rgb = pillow_rgb(shared / name)
        cases.append({"shared": name, "width": size[0], "height": size[1], "sha256": sha256(rgb)})
    return cases


def letterbox_cases(shared):
    synthetic = [
        # (width, height, new_shape (h, w), auto)
        (451, 300, (640, 640), False),
        (300, 451, (640, 640), False),
        (61, 43, (640, 640), False),  # upscaling 10x
        (1920, 1080, (640, 640), False),  # 1080p, 3x down
        (1920, 1080, (640, 640), True),  # ultralytics' predictor: 640x384
        (1280, 720, (640, 640), True),  # exactly 2x down
        (641, 479, (640, 640), False),  # barely down, odd
        (639, 641, (320, 320), False),
        (17, 1280, (640, 640), False),  # extreme aspect
        (999, 333, (384, 640), False),  # non-square network input
        (1, 1, (640, 640), False),
    ]
    cases = []
    for w, h, shape, auto in synthetic:
        cases.append(({"synthetic": [w, h]}, synth_picture(w, h), shape, auto))
    for name in ["chelsea.png", "coffee.png"]:
        rgb = np.asarray(Image.open(shared / name).convert("RGB"))
        cases.append(({"shared": name}, rgb, (640, 640), True))
        cases.append(({"shared": name}, rgb, (416, 416), False))
    out = []
    for source, img, shape, auto in cases:
        boxed = LetterBox(new_shape=shape, auto=auto, stride=32)(image=np.ascontiguousarray(img))
        out.append({
            **source,
            "new_shape": list(shape),
            "auto": auto,
            "stride": 32,
            "canvas": list(boxed.shape[:2]),
            "sha256": sha256(np.ascontiguousarray(boxed).tobytes()),
        })
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "fixtures")
    args = parser.parse_args()
    versions = {
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "opencv": cv2.__version__,
        "ultralytics": ultralytics.__version__,
        "numpy": np.__version__,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    for name, cases in [("jpeg.json", jpegs(args.shared)), ("letterbox.json", letterbox_cases(args.shared))]:
        lines = ",\n  ".join(json.dumps(case) for case in cases)
        text = f'{{\n "generated_with": {json.dumps(versions)},\n "cases": [\n  {lines}\n ]\n}}\n'

        (OUT / name).write_text(text)
        print(f"{name}: {len(cases)} cases")


if __name__ == "__main__":
    main()
