"""PyTorch eager reference for `jaxface bench --suite=inversion` (same network, step and settings).

Runs under any Python that has torch and numpy, without jaxface's other dependencies: the inversion
bench starts it as a subprocess (`--torch-python=PATH`), so both are measured in the same run on the
same idle cores. The step matches jaxface.bench.inversion_bench.build_problem: VGG-16 up to conv5_3
(3x3 convolutions, ReLU, 2x2 max pools), sigmoid pixel parameters, per-item random translation of up
to 4 px with reflect padding, normalised feature matching + 0.05 x squared-gradient TV, Adam (lr
0.05), and a Gaussian blur (sigma 0.5) of the image every 4 steps. Written for speed the usual way:
weights without gradients, channels_last tensors (oneDNN's fast convolution layout), in-place
updates, torch.optim.Adam(foreach=True), and the thread count set to the core count.

    python -m jaxface.bench.torch_inversion --configs=tiny,full64 --steps=4 --repeats=8
prints one JSON list of records {name, resolution, batch, width, image_steps_per_s, step_ms, ...}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

# name -> (width multiplier, resolution, batch): the inversion bench's CONFIGS.
CONFIGS = {"tiny": (0.25, 64, 8), "full64": (1.0, 64, 8), "full112": (1.0, 112, 4), "smoke": (0.0625, 32, 8)}
VGG16_TO_CONV5_3 = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512)
JITTER, BLUR_EVERY, BLUR_SIGMA, TV_WEIGHT, LR = 4, 4, 0.5, 0.05, 0.05


def vgg_weights(width: float, generator: torch.Generator) -> list:
    weights, cin = [], 3
    for item in VGG16_TO_CONV5_3:
        if item == "P":
            weights.append(None)
            continue
        cout = max(1, int(round(item * width)))
        w = torch.randn(cout, cin, 3, 3, generator=generator) * math.sqrt(2.0 / (9 * cin))
        weights.append((w.contiguous(memory_format=torch.channels_last), torch.zeros(cout)))
        cin = cout
    return weights


def features(weights, x):
    for wb in weights:
        x = F.max_pool2d(x, 2) if wb is None else F.relu(F.conv2d(x, wb[0], wb[1], padding=1), inplace=True)
    return x


def gaussian_taps(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return torch.tensor(k / k.sum(), dtype=torch.float32)


def blur(images: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    c, r = images.shape[1], (len(taps) - 1) // 2
    x = F.pad(images, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def jitter(images: torch.Tensor, offsets: np.ndarray) -> torch.Tensor:
    h, w = images.shape[2:]
    padded = F.pad(images, (JITTER,) * 4, mode="reflect")
    crops = [padded[b : b + 1, :, JITTER + dy : JITTER + dy + h, JITTER + dx : JITTER + dx + w]
             for b, (dy, dx) in enumerate(offsets)]
    return torch.cat(crops)


def bench(name: str, steps: int, repeats: int) -> dict:
    width, size, batch = CONFIGS[name]
    generator = torch.Generator().manual_seed(0)
    weights = vgg_weights(width, generator)
    with torch.no_grad():
        start_images = torch.rand(batch, 3, size, size, generator=generator)
        target = features(weights, start_images.contiguous(memory_format=torch.channels_last))
        target_norm = target.pow(2).sum(dim=(1, 2, 3))
    logits = torch.randn(batch, 3, size, size, generator=generator).mul_(0.1)
    logits = logits.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=LR, foreach=True)
    taps = gaussian_taps(BLUR_SIGMA)
    rng = np.random.default_rng(0)
    step_count = 0

    def step():
        nonlocal step_count
        optimizer.zero_grad(set_to_none=True)
        images = torch.sigmoid(logits)
        seen = jitter(images, rng.integers(-JITTER, JITTER + 1, size=(batch, 2)))
        out = features(weights, seen.contiguous(memory_format=torch.channels_last))
        match = (out - target).pow(2).sum(dim=(1, 2, 3)) / target_norm
        dy = images[:, :, 1:, :-1] - images[:, :, :-1, :-1]
        dx = images[:, :, :-1, 1:] - images[:, :, :-1, :-1]
        tv = (dx * dx + dy * dy).mean(dim=(1, 2, 3))
        (match + TV_WEIGHT * tv).sum().backward()
        optimizer.step()
        step_count += 1
        if step_count % BLUR_EVERY == 0:
            with torch.no_grad():
                p = blur(torch.sigmoid(logits), taps).clamp_(1e-4, 1 - 1e-4)
                logits.copy_(torch.log(p) - torch.log1p(-p))

    for _ in range(steps):  # warm-up (oneDNN primitive creation)
        step()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) / steps)
        cpu_times.append((time.process_time() - cpu_start) / steps)
    step_s = statistics.median(times)
    return dict(
        suite="inversion", name=name, loop="torch-eager", framework=f"torch {torch.__version__}",
        threads=torch.get_num_threads(), resolution=size, batch=batch, width=width, layer="conv5_3",
        steps=steps * repeats, step_ms=round(step_s * 1e3, 2),
        cpu_ms_per_step=round(statistics.median(cpu_times) * 1e3, 2),
        image_steps_per_s=round(batch / step_s, 2),
    )


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--steps", type=int, default=4, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    records = [bench(name, args.steps, args.repeats) for name in args.configs.split(",")]
    print(json.dumps(records))
    return records


if __name__ == "__main__":
    main()
