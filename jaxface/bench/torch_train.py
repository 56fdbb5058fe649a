"""PyTorch eager reference for `jaxface bench --suite=train` and `--suite=predict` (same networks and steps).

Runs under any Python that has torch, numpy and Pillow, without
jaxface's other dependencies: the train and predict suites start it as a subprocess
(`--torch_python=PATH`) with a JSON list of cases on stdin, so both sides are measured in the same run on
the same idle cores. Written for speed the usual way: channels_last tensors (oneDNN's fast layout), the
thread count set to the core count, optimizers with foreach=True, inference under torch.inference_mode.

Case kinds (the keys each needs):
  * train, network "vggface": VGG-16 face network (width, resolution, batch, norm "batch"|"none", dropout,
    head_sizes) with the grouped softmax loss (sum over heads of the mean cross-entropy), the optimizer
    of the config (optimizer: name sgd|adamw, learning_rate, momentum, weight_decay, grad_clip_norm).
  * train, network "mobilenetv3_small" | "resnet18": torchvision's architecture (written out here, so
    torchvision is not needed; ResNet-18 takes `width`) with one logit, binary cross-entropy, the same
    optimizer keys.
  * predict: network and resolution as above, `folder` of images, `batch`: decode with Pillow, resize,
    batch and score every image (images/s including decode).

Prints one JSON list of records {name, step_ms, images_per_s, ...}.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def scaled(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class VGGFace(nn.Module):
    def __init__(self, width: float, resolution: int, norm: str, dropout: float, head_sizes):
        super().__init__()
        layers, cin = [], 3
        for n_conv, c in VGG16_BLOCKS:
            cout = scaled(c, width)
            for _ in range(n_conv):
                layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"))
                if norm == "batch":
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(nn.ReLU(inplace=True))
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        fc = scaled(4096, width)
        spatial = resolution // 32
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(cin * spatial * spatial, fc), nn.ReLU(inplace=True),
                                nn.Dropout(dropout), nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.heads = nn.Linear(fc, sum(head_sizes))  # one matrix; the loss splits it per head
        self.head_sizes = list(head_sizes)

    def forward(self, x):
        return self.heads(self.fc(self.features(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)), inplace=True)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 with one logit and every channel count scaled by `width`."""

    def __init__(self, width: float):
        super().__init__()
        c = [scaled(n, width) for n in (64, 128, 256, 512)]
        self.stem = nn.Sequential(nn.Conv2d(3, c[0], 7, 2, 3, bias=False), nn.BatchNorm2d(c[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], c[0]
        for i, cout in enumerate(c):
            blocks += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 1)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


# (kernel, expanded, out, SE, hard-swish, stride): MobileNetV3-Small, as jaxface.models.mobilenetv3 and
# torchvision build it.
MOBILENETV3_SMALL = (
    (3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
    (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1),
    (5, 288, 96, True, True, 2), (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1),
)


def divisible8(v: float) -> int:
    out = max(8, int(v + 4) // 8 * 8)
    return out + 8 if out < 0.9 * v else out


class InvertedResidual(nn.Module):
    def __init__(self, cin, kernel, expanded, cout, se, hard_swish, stride):
        super().__init__()
        act = nn.Hardswish if hard_swish else nn.ReLU
        layers = []
        if expanded != cin:
            layers += [nn.Conv2d(cin, expanded, 1, bias=False), nn.BatchNorm2d(expanded, eps=1e-3), act()]
        layers += [nn.Conv2d(expanded, expanded, kernel, stride, kernel // 2, groups=expanded, bias=False),
                   nn.BatchNorm2d(expanded, eps=1e-3), act()]
        self.body = nn.Sequential(*layers)
        squeeze = divisible8(expanded // 4)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(expanded, squeeze, 1), nn.ReLU(),
                                nn.Conv2d(squeeze, expanded, 1), nn.Hardsigmoid()) if se else None
        self.project = nn.Sequential(nn.Conv2d(expanded, cout, 1, bias=False), nn.BatchNorm2d(cout, eps=1e-3))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        if self.se is not None:
            y = y * self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class MobileNetV3Small(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        blocks, cin = [], 16
        for kernel, expanded, cout, se, hs, stride in MOBILENETV3_SMALL:
            blocks.append(InvertedResidual(cin, kernel, expanded, cout, se, hs, stride))
            cin = cout
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16, eps=1e-3), nn.Hardswish(), *blocks,
            nn.Conv2d(cin, 576, 1, bias=False), nn.BatchNorm2d(576, eps=1e-3), nn.Hardswish())
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(dropout), nn.Linear(1024, 1))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def build_network(case: dict) -> nn.Module:
    network = case["network"]
    if network == "vggface":
        return VGGFace(case["width"], case["resolution"], case.get("norm", "none"), case.get("dropout", 0.0),
                       case.get("head_sizes", [2]))
    if network == "resnet18":
        return ResNet18(case.get("width", 1.0))
    if network == "mobilenetv3_small":
        return MobileNetV3Small(case.get("dropout", 0.2))
    raise SystemExit(f"torch_train: unknown network {network!r}")


def build_optimizer(params, opt: dict):
    lr, wd = float(opt.get("learning_rate", 1e-3)), float(opt.get("weight_decay", 0.0))
    if opt.get("name") == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(opt.get("momentum", 0.9)), weight_decay=wd,
                               foreach=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd, foreach=True)


def train_case(case: dict, steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_network(case).to(memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model.parameters(), case.get("optimizer", {}))
    clip = float(case.get("optimizer", {}).get("grad_clip_norm", 0.0) or 0.0)
    b, r = case["batch"], case["resolution"]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, r, r, generator=g).contiguous(memory_format=torch.channels_last)
    if case["network"] == "vggface":
        sizes = model.head_sizes
        targets = [torch.randint(0, n, (b,), generator=g) for n in sizes]

        def loss_fn(out):
            return sum(F.cross_entropy(chunk, t) for chunk, t in zip(torch.split(out, sizes, dim=1), targets))
    else:
        labels = torch.randint(0, 2, (b,), generator=g).float()

        def loss_fn(out):
            return F.binary_cross_entropy_with_logits(out[:, 0], labels)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images))
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
        optimizer.step()
        return float(loss)

    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) / steps)
    median = statistics.median(times)
    return {"name": case["name"], "step_ms": round(median * 1e3, 3), "images_per_s": round(b / median, 3)}


def _even_offsets(length: int, size: int, count: int) -> list[int]:
    top = max(length - size, 0)
    starts = np.linspace(0, top, count) if count > 1 else np.array([top / 2])
    return [int(v) // 2 * 2 for v in starts]


def _decode(path: str, size: int, crop: str, grid: int) -> np.ndarray:
    """(patches, size, size, 3) float32 in [0, 1]: the centre square resized (1 patch) or the grid of
    native-resolution patches, as jaxface's image preparer cuts them."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if crop != "patches":
            w, h = im.size
            side = min(w, h)
            box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
            return np.asarray(im.resize((size, size), Image.BILINEAR, box=box), np.float32)[None] / 255.0
        image = np.asarray(im, np.float32) / 255.0
    h, w = image.shape[:2]
    return np.stack([image[y:y + size, x:x + size] for y in _even_offsets(h, size, grid)
                     for x in _even_offsets(w, size, grid)])


def _npr(x):
    """0.5 + 4 (x - the top-left pixel of its 2x2 block), NCHW (jaxface.models.layers.input_transform)."""
    corner = x[:, :, ::2, ::2].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return 0.5 + 4.0 * (x - corner[:, :, :x.shape[2], :x.shape[3]])


def predict_case(case: dict, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_network(case).to(memory_format=torch.channels_last).eval()
    folder, size, b = case["folder"], case["resolution"], case["batch"]
    crop, grid, transform = case.get("crop", "resize"), int(case.get("patch_grid", 1)), case.get("input_transform")
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))

    def score_all():
        scores = []
        with torch.inference_mode():
            for s in range(0, len(paths), b):
                patches = np.stack([_decode(p, size, crop, grid) for p in paths[s: s + b]])  # (B, P, H, W, 3)
                n, p = patches.shape[:2]
                x = torch.from_numpy(patches.reshape((n * p,) + patches.shape[2:])).permute(0, 3, 1, 2)
                x = x.contiguous(memory_format=torch.channels_last)
                if transform == "npr":
                    x = _npr(x)
                logits = model(x)[:, 0].reshape(n, p).mean(1)  # an image scores the mean of its patches
                scores.append(torch.sigmoid(logits))
        return torch.cat(scores)

    score_all()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        score_all()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"name": case["name"], "seconds": round(median, 4), "images": len(paths),
            "images_per_s": round(len(paths) / median, 3), "step_ms": round(median / len(paths) * 1e3, 3)}


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    request = json.load(sys.stdin)
    steps, repeats = int(request.get("steps", 3)), int(request.get("repeats", 5))
    records = []
    for case in request["cases"]:
        record = predict_case(case, repeats) if case["kind"] == "predict" else train_case(case, steps, repeats)
        record.update(torch_version=torch.__version__, threads=torch.get_num_threads())
        records.append(record)
        print(f"  torch {case['name']}: {record['images_per_s']:.4g} images/s", file=sys.stderr, flush=True)
    json.dump(records, sys.stdout)


if __name__ == "__main__":
    main()
