"""Self-made fakes: generator traces manufactured from real photographs, so a detector can learn what
generation does to pixels without one example of the generator it will be tested on.

Each kind takes a real photo at its native resolution, halves it (2x2 box average), and brings it back
to full size the way a generator's decoder would:

- `reup_nearest`   nearest-neighbour upsampling: every 2x2 block constant (NPR's ideal trace);
- `reup_bilinear`  bilinear upsampling: smooth, with the periodic correlations interpolation leaves;
- `reup_tconv`     a stride-2 transposed convolution with fixed random kernels and an unsharp mask, the
                   synthfakes `upsample` generator's decoder applied to real photos;
- `reup_sharp`     bicubic upsampling then a strong unsharp mask: crisper than the photo it came from,
                   as decoders' outputs often are (the other kinds are all softer than their source).

`WithSelfMadeFakes` wraps a real/fake detection source: every real photo of the split gains one fake
per kind (same content, so the only difference a detector can use is the trace), and generators named
in `unseen` are dropped from the training and validation splits (the unseen-generator protocol: the
test split keeps them, so a detector is scored on a generator it never saw).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from jaxface.data import sources, synthfakes

SELF_MADE_KINDS = ("reup_nearest", "reup_bilinear", "reup_tconv", "reup_sharp")
_KERNEL_STREAM = 0x5E1F


class SelfMadeConfigError(ValueError):
    """A bad data.self_made / data.unseen_generators setting."""


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    kinds = tuple(str(k) for k in kinds)
    unknown = [k for k in kinds if k not in SELF_MADE_KINDS]
    if unknown:
        raise SelfMadeConfigError(
            f"unknown self-made fake kind(s) {', '.join(map(repr, unknown))}; valid: {', '.join(SELF_MADE_KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise SelfMadeConfigError(f"data.self_made lists a kind twice: {kinds}")
    return kinds


def _halve(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3), H and W even -> float32 (H/2, W/2, 3) by 2x2 box averaging."""
    x = image.astype(np.float32)
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def reupsample(image: np.ndarray, kind: str, *, kernels: np.ndarray | None = None,
               sharpen: float = 0.9) -> np.ndarray:
    """A real uint8 (H, W, 3) photo -> its self-made fake of `kind`, same size (an odd last row or column
    is cropped first, then restored by edge replication)."""
    check_kinds([kind])
    h, w = image.shape[:2]
    even = np.asarray(image[: h - h % 2, : w - w % 2], np.uint8)
    low = _halve(even)
    if kind == "reup_nearest":
        up = np.repeat(np.repeat(low, 2, axis=0), 2, axis=1)
    elif kind == "reup_bilinear":
        pil = Image.fromarray(np.clip(low + 0.5, 0, 255).astype(np.uint8))
        up = np.asarray(pil.resize((even.shape[1], even.shape[0]), Image.Resampling.BILINEAR), np.float32)
    elif kind == "reup_sharp":
        pil = Image.fromarray(np.clip(low + 0.5, 0, 255).astype(np.uint8))
        up = np.asarray(pil.resize((even.shape[1], even.shape[0]), Image.Resampling.BICUBIC), np.float32)
        up = up + 2.0 * sharpen * (up - synthfakes._blur(up, sigma=1.0))
    else:
        if kernels is None:
            kernels = tconv_kernels(0)
        up = synthfakes.transposed_conv_upsample(low, kernels)
        up = up + sharpen * (up - synthfakes._blur(up, sigma=1.0))
    out = np.clip(up + 0.5, 0, 255).astype(np.uint8)
    if out.shape[:2] != (h, w):
        out = np.pad(out, ((0, h - out.shape[0]), (0, w - out.shape[1]), (0, 0)), mode="edge")
    return out


def tconv_kernels(seed: int) -> np.ndarray:
    """The fixed transposed-convolution kernels of `reup_tconv` for one seed (one fingerprint)."""
    return synthfakes._upsample_kernels(np.random.default_rng([_KERNEL_STREAM, int(seed)]))


class WithSelfMadeFakes:
    """A detection source plus one self-made fake per real photo and kind; `unseen` generators of the
    base source are left out of the training and validation splits.

    Records: the base's records (their `index` unchanged), then for real record r and kind k an in-memory
    fake {"image", "label": 1, "generator_id", "index": base_total + r * K + k}. Fakes are made when read,
    deterministically (no randomness but the fixed kernels), so exact resume and worker processes agree.
    """

    def __init__(self, base, kinds: Sequence[str] = SELF_MADE_KINDS, *, unseen: Sequence[str] = (),
                 seed: int = 0, base_total: int | None = None):
        self.base = base
        self.kinds = check_kinds(kinds)
        self.unseen = tuple(str(g) for g in unseen)
        self.split = getattr(base, "split", "all")
        base_names = tuple(base.generator_names)
        missing = [g for g in self.unseen if g not in base_names[1:]]
        if missing:
            raise SelfMadeConfigError(
                f"data.unseen_generators names {', '.join(map(repr, missing))}, which the data does not have; "
                f"its generators: {', '.join(base_names[1:]) or '(none: no fake images)'}")
        drop_ids = {base_names.index(g) for g in self.unseen} if self.split in ("train", "val") else set()
        base_ids = np.asarray(base.generator_ids, np.int32)
        base_labels = np.asarray(base.labels, np.int32)
        self._keep = np.flatnonzero(~np.isin(base_ids, list(drop_ids))) if drop_ids else np.arange(len(base))
        self._reals = np.flatnonzero(base_labels == 0)
        self.generator_names = base_names + tuple(f"selfmade_{k}" for k in self.kinds)
        self._base_total = int(base_total if base_total is not None
                               else len(getattr(base, "_paths", ())) or len(base))
        self._kernels = tconv_kernels(seed)
        self._base_paths = list(base.paths) if hasattr(base, "paths") else None
        self.labels = np.concatenate([base_labels[self._keep], np.ones(len(self._reals) * len(self.kinds), np.int32)])
        fake_ids = np.tile(np.arange(len(base_names), len(self.generator_names), dtype=np.int32), len(self._reals))
        self.generator_ids = np.concatenate([base_ids[self._keep], fake_ids])

    def __len__(self) -> int:
        return len(self._keep) + len(self._reals) * len(self.kinds)

    def __repr__(self) -> str:
        return (f"WithSelfMadeFakes({self.base!r}, kinds={list(self.kinds)}, unseen={list(self.unseen)}, "
                f"n={len(self)})")

    def _locate(self, index: int) -> tuple[int, int | None]:
        """-> (base position, None) for a base record, or (base position of the real photo, kind)."""
        index = sources.checked_index(index, self)
        if index < len(self._keep):
            return int(self._keep[index]), None
        r, k = divmod(index - len(self._keep), len(self.kinds))
        return int(self._reals[r]), k

    def __getitem__(self, index) -> dict:
        from jaxface.data import imageio

        position, kind = self._locate(index)
        record = self.base[position]
        if kind is None:
            return record
        try:
            image = record["image"] if "image" in record else imageio.decode_image(record["path"])
        except imageio.ImageDecodeError:  # the pipeline's decoder reports and skips it, as for the real one
            return {"path": record["path"], "label": np.int32(1),
                    "generator_id": np.int32(len(self.base.generator_names) + kind), "index": record["index"]}
        fake = reupsample(np.asarray(image, np.uint8), self.kinds[kind], kernels=self._kernels)
        return {
            "image": fake,
            "label": np.int32(1),
            "generator_id": np.int32(len(self.base.generator_names) + kind),
            "index": np.int32(self._base_total + int(record["index"]) * len(self.kinds) + kind),
        }

    @property
    def paths(self) -> list[str]:
        """One name per record: the file, or `FILE#selfmade_KIND` for a self-made fake."""
        if self._base_paths is None:
            return [str(i) for i in range(len(self))]
        out = [self._base_paths[i] for i in self._keep]
        out += [f"{self._base_paths[r]}#selfmade_{k}" for r in self._reals for k in self.kinds]
        return out
