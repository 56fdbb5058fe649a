"""Synthetic real/fake data: synthfaces as the real class, and "generators" that leave the kinds of
traces real face generators leave.

- `upsample`: the face is rendered at half resolution and brought to full size by a stride-2
  transposed convolution with fixed random kernels (one set per generator seed, so one consistent
  fingerprint), like a GAN decoder: periodic (checkerboard) peaks in the spectrum, and the
  sensor noise is no longer white.
- `faceswap`: the inner face of another face, rendered in the same pose, is blended into the target
  through a soft elliptical mask, with a partial colour correction that leaves a colour mismatch,
  a slightly softer inner face and its own lighting: seams along the mask.

More generators register in `GENERATORS` (name -> function(rng, index, resolution, context) ->
uint8 (R, R, 3) image), e.g. faces produced by this project's own feature inversion.
Every fake carries its generator's id, so leave-one-generator-out evaluation is possible.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxface.data.synthfaces import (
    NUISANCE_FIELDS,
    POSE_FIELDS,
    SynthFaces,
    face_coordinates,
)
from jaxface.registry import Registry

# Stream tags: the assignment of items to real/generators and each generator's per-item randomness
# come from streams independent of the faces' own (seed, index) streams.
_ASSIGNMENT_STREAM = 0x5EA1
_GENERATOR_STREAM = 0xFA4E
_KERNEL_STREAM = 0xC0DE
MIN_UPSAMPLE_RESOLUTION = 32  # renders at half size, and synthfaces needs at least 16


@dataclasses.dataclass
class GeneratorContext:
    """What a generator may use: the face source and fixed per-generator-seed parameters."""

    faces: SynthFaces  # real-face source at the dataset resolution (content of every fake)
    generator_seed: int
    options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    def faces_at(self, resolution: int) -> SynthFaces:
        """The same faces (same seed, rates, items) rendered at another resolution."""
        key = ("faces", resolution)
        if key not in self._cache:
            self._cache[key] = SynthFaces(
                self.faces.num_images,
                resolution=resolution,
                seed=self.faces.seed,
                attribute_rates=self.faces.attribute_rates,
            )
        return self._cache[key]

    def fixed(self, name: str, make: Callable[[np.random.Generator], Any]):
        """A generator's fixed parameters, drawn once from the generator seed (its fingerprint)."""
        key = ("fixed", name)
        if key not in self._cache:
            tag = sum(ord(c) * 131**i for i, c in enumerate(name)) % (2**31)
            self._cache[key] = make(np.random.default_rng([self.generator_seed, _KERNEL_STREAM, tag]))
        return self._cache[key]


GeneratorFn = Callable[[np.random.Generator, int, int, GeneratorContext], np.ndarray]


def register_generator(name: str, fn: GeneratorFn, *, overwrite: bool = False) -> None:
    """Add a fake-image generator: fn(rng, index, resolution, context) -> uint8 (R, R, 3)."""
    if name == "real":
        raise ValueError("'real' names the real class; choose another generator name")
    GENERATORS.register(name, fn, overwrite=overwrite)


# ------------------------------------------------------------------------------------ upsample
def _upsample_kernels(rng: np.random.Generator) -> np.ndarray:
    """Phase kernels (2, 2, 2, 2, 3) of a stride-2 transposed convolution: output phase (py, px),
    input tap (ty, tx), channel. Bilinear interpolation perturbed at random, each phase with its own
    small gain: smooth pictures, but a fixed periodic pattern a detector can learn."""
    taps = np.array([[0.25, 0.75], [0.75, 0.25]])  # phase 0 reads rows (y-1, y); phase 1 (y, y+1)
    bilinear = taps[:, None, :, None] * taps[None, :, None, :]  # (py, px, ty, tx)
    kernels = bilinear[..., None] + 0.06 * rng.standard_normal((2, 2, 2, 2, 3))
    gains = 1.0 + 0.012 * rng.standard_normal((2, 2, 1, 1, 3))
    kernels *= gains / kernels.sum(axis=(2, 3), keepdims=True)
    return kernels.astype(np.float32)


def transposed_conv_upsample(image: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """(h, w, 3) float -> (2h, 2w, 3) through the stride-2 phase kernels, edges replicated."""
    h, w, _ = image.shape
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    out = np.empty((2 * h, 2 * w, 3), np.float32)
    for py in range(2):
        for px in range(2):
            acc = np.zeros((h, w, 3), np.float32)
            for ty in range(2):
                for tx in range(2):
                    # Phase 0 reads input rows y-1, y (padded y, y+1); phase 1 reads y, y+1.
                    oy, ox = py + ty, px + tx
                    acc += kernels[py, px, ty, tx] * padded[oy : oy + h, ox : ox + w]
            out[py::2, px::2] = acc
    return out


def upsample_generator(rng, index: int, resolution: int, context: GeneratorContext) -> np.ndarray:
    """Render at half resolution, then a fixed-kernel transposed convolution to full size."""
    if resolution < MIN_UPSAMPLE_RESOLUTION:
        raise ValueError(
            f"the upsample generator needs a resolution of at least {MIN_UPSAMPLE_RESOLUTION}, "
            f"got {resolution}"
        )
    low_resolution = (resolution + 1) // 2
    low = context.faces_at(low_resolution).render_batch([index])[0][0].astype(np.float32)
    kernels = context.fixed("upsample", _upsample_kernels)
    up = transposed_conv_upsample(low, kernels)[:resolution, :resolution]
    # Decoders output crisp edges, not an interpolated look: an unsharp mask restores sharpness
    # (and amplifies the periodic pattern, as a decoder's last layers do).
    amount = 0.7 + 0.5 * rng.random()
    up = up + amount * (up - _blur(up, sigma=1.0))
    return np.clip(up + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ faceswap
# Attributes the donor keeps (its own identity and expression); the rest follows the target, as
# swaps pair similar faces and keep the target's hair, accessories and photo conditions.
_DONOR_ATTRIBUTES = ("Smiling", "Mouth Open", "Big Nose", "Narrow Eyes", "Pale Skin", "Mustache")
_DONOR_NUISANCE = (
    "skin_tone", "skin_warmth", "iris_shade", "lip_shade", "eye_spacing", "eye_level", "brow_level",
    "nose_length", "mouth_level", "mouth_width", "light_azimuth", "light_elevation", "noise_level",
)


def faceswap_parts(rng: np.random.Generator, index: int, resolution: int, context: GeneratorContext):
    """The swap and what it is made of: (fake uint8 (R, R, 3), blend mask (R, R), target uint8)."""
    faces = context.faces
    schema = faces.schema
    attributes, nuisance, noise = faces.draws([index], resolution)
    donor_key = int(rng.integers(2**40, 2**62))  # a face outside the dataset's items
    donor_attributes, donor_nuisance, donor_noise = faces.draws([donor_key], resolution)
    # Donor: its own identity and expression, in the target's pose (slightly misaligned).
    swapped_attributes = attributes.copy()
    for name in _DONOR_ATTRIBUTES:
        swapped_attributes[:, schema.index(name)] = donor_attributes[:, schema.index(name)]
    swapped_nuisance = nuisance.copy()
    for name in _DONOR_NUISANCE:
        col = NUISANCE_FIELDS.index(name)
        swapped_nuisance[:, col] = donor_nuisance[:, col]
    for name in POSE_FIELDS:
        col = NUISANCE_FIELDS.index(name)
        swapped_nuisance[:, col] = np.clip(swapped_nuisance[:, col] + rng.normal(0, 0.04), 0, 1)
    target = faces.render_from_draws(attributes, nuisance, noise)[0].astype(np.float32)
    donor = faces.render_from_draws(swapped_attributes, swapped_nuisance, donor_noise)[0]
    donor = donor.astype(np.float32)
    # Swap networks output a softer face than the camera.
    donor = _blur(donor, sigma=(0.4 + 0.5 * rng.random()) * resolution / 64.0)

    # Soft elliptical mask over the inner face (brows to chin) in the target's pose.
    u, v, sharp = face_coordinates(nuisance, resolution)
    rx, ry = 0.27 + 0.03 * rng.random(), 0.33 + 0.03 * rng.random()
    r = np.sqrt((u[0] / rx) ** 2 + ((v[0] - 0.04) / ry) ** 2)
    feather_px = 1.0 + 2.0 * rng.random()
    mask = np.clip(0.5 - (r - 1.0) * min(rx, ry) * sharp[0] / feather_px, 0.0, 1.0)

    # Partial colour correction towards the target inside the mask: a residual mismatch remains.
    weight = mask[..., None]
    inside = weight.sum() + 1e-6
    shift = ((target - donor) * weight).sum((0, 1)) / inside
    correction = 0.3 + 0.4 * rng.random()
    residual = rng.normal(0.0, 6.0, 3)  # a few grey levels of colour cast
    donor = donor + correction * shift + residual
    fake = weight * donor + (1.0 - weight) * target
    fake = np.clip(fake + 0.5, 0, 255).astype(np.uint8)
    return fake, mask.astype(np.float32), target.astype(np.uint8)


def faceswap_generator(rng, index: int, resolution: int, context: GeneratorContext) -> np.ndarray:
    return faceswap_parts(rng, index, resolution, context)[0]


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    h, w, _ = image.shape
    padded = np.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    rows = sum(k * padded[j : j + h] for j, k in enumerate(kernel))
    padded = np.pad(rows, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(k * padded[:, j : j + w] for j, k in enumerate(kernel))


GENERATORS = Registry("generator", {"upsample": upsample_generator, "faceswap": faceswap_generator})


# ------------------------------------------------------------------------------------- dataset
class SynthRealFake:
    """Random-access real/fake source (grain `RandomAccessDataSource`; picklable).

    Items: dict(image uint8 (R, R, 3), label int32 (0 real, 1 fake), generator_id int32 (0 real,
    k = generator_names[k]), index int64). Exactly round(fake_fraction * num_images) items are fake,
    spread evenly over the generators not in `exclude_generators`; which items are fake is a fixed
    pseudo-random choice per seed. Excluded generators keep their ids (so a model trained without
    one can be tested on a dataset made only of it: leave-one-generator-out).

    Args:
      generator_seed: seed of the generators' fixed parameters (their fingerprints, e.g. the
        upsampling kernels). A generator is one fixed model, so this does not follow `seed`:
        train/val/test sets built with different seeds share the fingerprints. Change it to get
        "another model" of the same generator family (a cross-model test).
      generator_options: per-generator keyword options, readable by generators via the context.
    """

    def __init__(
        self,
        num_images: int,
        *,
        resolution: int = 64,
        seed: int = 0,
        generators: Sequence[str] = ("upsample", "faceswap"),
        fake_fraction: float = 0.5,
        exclude_generators: Sequence[str] = (),
        generator_seed: int = 0,
        attribute_rates: Mapping[str, float] | None = None,
        generator_options: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        if isinstance(generators, str):
            generators = (generators,)
        if isinstance(exclude_generators, str):
            exclude_generators = (exclude_generators,)
        generators = tuple(generators)
        exclude_generators = tuple(exclude_generators)
        if not generators:
            raise ValueError(f"generators is empty; available generators: {', '.join(GENERATORS)}")
        unknown = [g for g in generators if g not in GENERATORS]
        if unknown:
            raise ValueError(
                f"unknown generator(s) {', '.join(map(repr, unknown))}; available generators: "
                f"{', '.join(GENERATORS)}"
            )
        if len(set(generators)) != len(generators):
            raise ValueError(f"generators lists a name twice: {generators}")
        not_used = [g for g in exclude_generators if g not in generators]
        if not_used:
            raise ValueError(
                f"exclude_generators names {', '.join(map(repr, not_used))}, which is not among the "
                f"generators {generators}"
            )
        if not 0.0 <= float(fake_fraction) <= 1.0:
            raise ValueError(f"fake_fraction must be in [0, 1], got {fake_fraction!r}")
        active = [g for g in generators if g not in exclude_generators]
        if fake_fraction > 0 and not active:
            raise ValueError(
                "every generator is excluded but fake_fraction > 0; keep at least one generator or "
                "set fake_fraction=0"
            )
        self._config = dict(
            num_images=num_images, resolution=resolution, seed=seed, generators=generators,
            fake_fraction=float(fake_fraction), exclude_generators=exclude_generators,
            generator_seed=generator_seed, attribute_rates=attribute_rates,
            generator_options=dict(generator_options or {}),
        )
        self.faces = SynthFaces(num_images, resolution=resolution, seed=seed, attribute_rates=attribute_rates)
        if self.faces.resolution < MIN_UPSAMPLE_RESOLUTION and "upsample" in active:
            raise ValueError(
                f"the upsample generator needs a resolution of at least {MIN_UPSAMPLE_RESOLUTION}, "
                f"got {resolution}; exclude it or raise the resolution"
            )
        self.num_images = self.faces.num_images
        self.resolution = self.faces.resolution
        self.seed = self.faces.seed
        self.generators = generators
        self.exclude_generators = exclude_generators
        self.fake_fraction = float(fake_fraction)
        self.generator_seed = int(generator_seed)
        self.context = GeneratorContext(self.faces, self.generator_seed, self._config["generator_options"])
        # Which items are fake, and by which generator: a seeded permutation, so the counts are exact.
        order = np.random.default_rng([self.seed, _ASSIGNMENT_STREAM]).permutation(self.num_images)
        num_fake = int(round(self.fake_fraction * self.num_images))
        ids = np.zeros(self.num_images, np.int32)
        fake = order < num_fake
        if num_fake:
            active_ids = np.array([1 + generators.index(g) for g in active], np.int32)
            ids[fake] = active_ids[order[fake] % len(active_ids)]
        self.generator_ids = ids  # (N,) per item: 0 real, k = generator_names[k]
        self.labels = (ids > 0).astype(np.int32)  # (N,) 0 real, 1 fake

    @property
    def generator_names(self) -> tuple[str, ...]:
        return ("real",) + self.generators

    def __getstate__(self):
        return dict(self._config)

    def __setstate__(self, state):
        self.__init__(**state)

    def __repr__(self) -> str:
        return (
            f"SynthRealFake(num_images={self.num_images}, resolution={self.resolution}, "
            f"seed={self.seed}, generators={self.generators}, fake_fraction={self.fake_fraction}, "
            f"exclude_generators={self.exclude_generators})"
        )

    def __len__(self) -> int:
        return self.num_images

    def _check_index(self, index) -> int:
        if isinstance(index, (bool, slice)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"SynthRealFake indices are integers, got {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for SynthRealFake of {self.num_images} images")
        return index

    def _fake_image(self, index: int, generator_id: int) -> np.ndarray:
        name = self.generator_names[generator_id]
        rng = np.random.default_rng([self.seed, _GENERATOR_STREAM, index])
        image = GENERATORS[name](rng, index, self.resolution, self.context)
        if image.shape != (self.resolution, self.resolution, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"generator {name!r} returned {image.dtype} {image.shape}; generators must return "
                f"uint8 ({self.resolution}, {self.resolution}, 3)"
            )
        return image

    def _item(self, index: int, image: np.ndarray) -> dict:
        gid = int(self.generator_ids[index])
        return {
            "image": image,
            "label": np.int32(gid > 0),
            "generator_id": np.int32(gid),
            "index": np.int64(index),
        }

    def __getitem__(self, index) -> dict:
        index = self._check_index(index)
        gid = int(self.generator_ids[index])
        if gid == 0:
            image = self.faces.render_batch([index])[0][0]
        else:
            image = self._fake_image(index, gid)
        return self._item(index, image)

    def _getitems(self, indices: Sequence[int]) -> list[dict]:
        """Batched read for grain: real faces rendered together, fakes one by one."""
        indices = [self._check_index(i) for i in indices]
        real = [i for i in indices if self.generator_ids[i] == 0]
        images = {}
        if real:
            rendered, _ = self.faces.render_batch(real)
            images.update(zip(real, rendered))
        for i in indices:
            if i not in images:
                images[i] = self._fake_image(i, int(self.generator_ids[i]))
        return [self._item(i, images[i]) for i in indices]
