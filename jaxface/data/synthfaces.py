"""`synthfaces`: procedurally rendered faces with ground-truth attributes (the embedded default data).

Every image is drawn in numpy, vectorised over a batch, from a per-image random stream seeded by
(seed, index): item i is the same whether it is rendered alone or in any batch, in any order, so the
source is random access (grain can shuffle and shard it) and needs no files.

Each image draws, from `np.random.default_rng([seed, index])`, in this fixed order:
  1. one uniform per schema head that decides that head's attribute(s),
  2. `len(NUISANCE_FIELDS)` uniforms for the variation no label describes (pose, colours, light, ...),
  3. R*R*3 uniforms of sensor noise.
The order never depends on the attribute values, so `render(attributes, [i])` draws the same pose,
colours and noise as item i: changing one label changes only what that label renders.

The 23 attributes are exactly `get_schema('synthfaces')`; each one is visible in the picture:
hair colour or a bald scalp; no eyewear, thin-framed glasses or dark lenses; oval, round or square face
outline; male faces have short hair, heavier brows and jaw; a smile curves the mouth up, an open mouth
shows a dark opening with teeth; mustache and beard in the facial-hair colour; a hat over the top of
the head; bangs over the forehead; pale skin; a big nose; narrow eyes; harsh side light with a hard
terminator; a Gaussian blur of the whole image.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from jaxface.data.schema import Schema, get_schema

MIN_RESOLUTION = 16
MAX_RESOLUTION = 512

# Rates of the default data, skewed like real face collections (CelebA, PubFig). For a binary
# attribute the value is P(present); for a group member it is a relative weight within the group.
DEFAULT_ATTRIBUTE_RATES: dict[str, float] = {
    "Black Hair": 0.30, "Blond Hair": 0.17, "Brown Hair": 0.30, "Gray Hair": 0.11, "Bald": 0.12,
    "No Eyewear": 0.70, "Eyeglasses": 0.18, "Sunglasses": 0.12,
    "Oval Face": 0.50, "Round Face": 0.25, "Square Face": 0.25,
    "Male": 0.45, "Smiling": 0.48, "Mouth Open": 0.42, "Mustache": 0.14, "Beard": 0.18,
    "Wearing Hat": 0.12, "Bangs": 0.20, "Pale Skin": 0.15, "Big Nose": 0.25, "Narrow Eyes": 0.18,
    "Harsh Lighting": 0.18, "Blurry": 0.12,
}

# Share of the positives of an attribute that fall on its "typical" condition, as in real data:
# beards, mustaches and bald heads mostly on men. The marginal rate stays the configured one.
_MALE_SHARE = {"Mustache": 0.92, "Beard": 0.92, "Bald": 0.9}

# Per-image nuisance draws, one uniform in [0, 1) each, in this order.
NUISANCE_FIELDS = (
    "shift_x", "shift_y", "scale", "rotation",
    "skin_tone", "skin_warmth", "hair_shade", "hair_length", "facial_hair_shade",
    "background_r0", "background_g0", "background_b0",
    "background_r1", "background_g1", "background_b1", "background_angle",
    "light_azimuth", "light_elevation",
    "clothing_r", "clothing_g", "clothing_b",
    "hat_r", "hat_g", "hat_b", "hat_height", "brim_width",
    "iris_shade", "lip_shade", "frame_shade", "lens_tint",
    "face_width", "eye_spacing", "eye_level", "brow_level", "nose_length", "mouth_level",
    "mouth_width", "bangs_phase", "noise_level", "blur_sigma",
    "exposure", "white_balance_r", "white_balance_b",
)
_NUISANCE_COLUMN = {name: i for i, name in enumerate(NUISANCE_FIELDS)}
POSE_FIELDS = ("shift_x", "shift_y", "scale", "rotation")

# Attribute-defined colours (RGB in [0, 1]).
_HAIR_COLOURS = {
    "Black Hair": (0.075, 0.062, 0.055),
    "Brown Hair": (0.38, 0.23, 0.12),
    "Blond Hair": (0.88, 0.74, 0.43),
    "Gray Hair": (0.68, 0.68, 0.70),
}
_BALD_FACIAL_HAIR = (0.24, 0.17, 0.12)  # brows/beard colour of a bald face
_DARK_SKIN = np.array([0.36, 0.22, 0.15], np.float32)
_LIGHT_SKIN = np.array([0.86, 0.67, 0.54], np.float32)
_PALE_SKIN = np.array([0.97, 0.89, 0.85], np.float32)

# Face outline per face-shape attribute: half width, half height, squareness (0 = ellipse).
_FACE_SHAPES = {
    "Oval Face": (0.355, 0.505, 0.0),
    "Round Face": (0.42, 0.455, 0.0),
    "Square Face": (0.40, 0.48, 0.75),
}
_FACE_CENTRE_V = -0.02
_CHUNK_PIXELS = 32768  # pixels rendered together: per-pixel planes stay in cache, numpy overhead amortised


def _split_rate(rate: float, p_condition: float, share: float) -> tuple[float, float]:
    """P(attr | condition), P(attr | not condition) putting `share` of positives on the condition,
    as far as that is possible, while keeping the marginal rate exactly `rate`."""
    if p_condition <= 0.0:
        return 0.0, rate
    if p_condition >= 1.0:
        return rate, 0.0
    lo = max(0.0, (rate - (1.0 - p_condition)) / p_condition)
    hi = min(1.0, rate / p_condition)
    p_if = min(max(share * rate / p_condition, lo), hi)
    p_if_not = (rate - p_condition * p_if) / (1.0 - p_condition)
    return p_if, min(max(p_if_not, 0.0), 1.0)


def _column(x) -> np.ndarray:
    """Per-image values (n,) -> (n, 1, 1) to broadcast against pixel planes."""
    if type(x) is not np.ndarray or x.dtype != np.float32:
        x = np.asarray(x, np.float32)
    return x.reshape(-1, 1, 1)


def _coverage(inside_measure, gain):
    """Anti-aliased coverage from a measure that is > 0 inside; `gain` converts it to pixels."""
    out = inside_measure * gain
    out += 0.5
    np.maximum(out, 0.0, out=out)  # two ufuncs: much cheaper per call than np.clip's wrappers
    return np.minimum(out, 1.0, out=out)


def _ellipse(u, v, cu, cv, ru, rv, sharp, *, bounded: bool = True):
    """Coverage of an axis-aligned ellipse in face coordinates (sharp = pixels per face unit)."""
    return _coverage(_ellipse_distance(u, v, cu, cv, ru, rv, bounded=bounded), -sharp)


def _ellipse_distance(u, v, cu, cv, ru, rv, *, bounded: bool = True):
    """Signed distance (face units, negative inside) to an axis-aligned ellipse's outline.

    Distance to the outline to first order in r = sqrt(q): (r - 1) / |grad r|, so thin ellipses
    (a closed mouth, narrow eyes) get a crisp edge that ends half a pixel outside the outline. Off
    the ends of a thin ellipse that estimate is too short; the distance to its bounding box, a
    lower bound, corrects it there (every shape must end where its window says it does). Large
    or round shapes skip that (`bounded=False`); the choice is per call site, never per batch."""
    a = (u - cu) * (1.0 / ru)
    b = (v - cv) * (1.0 / rv)
    if bounded:
        box = np.abs(a)
        box -= 1.0
        box *= ru
        box_v = np.abs(b)
        box_v -= 1.0
        box_v *= rv
        np.maximum(box, box_v, out=box)
    a *= a
    b *= b
    q = a + b
    a *= 1.0 / (ru * ru)
    b *= 1.0 / (rv * rv)
    a += b
    a += 1e-12
    np.sqrt(a, out=a)  # |grad q| / 2
    r = np.sqrt(q)
    q -= r  # (r - 1) / |grad r| = (q - r) / (|grad q| / 2)
    q /= a
    if bounded:
        np.maximum(q, box, out=q)
    return q


def _paint(target, alpha, colour):
    """Alpha-composite per-image colours (n, 3) over channel planes target (3, n, h, w) in place."""
    diff = colour.T[:, :, None, None] - target
    diff *= alpha
    target += diff


# Face-space boxes (u0, u1, v0, v1) around the parts drawn in a window of the image.
_WINDOWS = {
    "body": (-1.6, 1.6, 0.15, 2.6),
    "ears": (-0.55, 0.55, -0.2, 0.15),
    "face": (-0.5, 0.5, -0.6, 0.55),
    "beard": (-0.5, 0.5, -0.1, 0.55),
    "eyes": (-0.32, 0.32, -0.28, 0.0),
    "nose": (-0.15, 0.15, -0.08, 0.3),
    "mouth": (-0.26, 0.26, 0.05, 0.42),
    "scalp": (-0.6, 0.6, -0.8, 0.1),
    "eyewear": (-0.5, 0.5, -0.26, 0.08),
    "hat": (-0.8, 0.8, -1.1, -0.2),
}
_WINDOW_NAMES = tuple(_WINDOWS)
_WINDOW_U = np.array([[b[0], b[1], b[0], b[1]] for b in _WINDOWS.values()], np.float32)
_WINDOW_V = np.array([[b[2], b[2], b[3], b[3]] for b in _WINDOWS.values()], np.float32)


class _Frame:
    """Pixel grid of one chunk in face coordinates, and windows of it around face parts."""

    def __init__(self, resolution: int, shift_x, shift_y, scale, rotation):
        self.resolution = resolution
        self.cx, self.cy, self.scale = shift_x, shift_y, scale
        self.cos, self.sin = np.cos(rotation), np.sin(rotation)
        grid = ((np.arange(resolution, dtype=np.float32) + 0.5) * (2.0 / resolution) - 1.0)
        self.x = grid[None, None, :]
        self.y = grid[None, :, None]
        dx = self.x - _column(shift_x)
        dy = self.y - _column(shift_y)
        c, s, k = _column(self.cos), _column(self.sin), _column(1.0 / scale)
        self.u = (c * dx + s * dy) * k
        self.v = (c * dy - s * dx) * k
        self.sharp = _column(scale * resolution / 2.0)  # pixels per face unit
        # Corners of every window box in image coordinates, all images at once: (n, boxes, 4).
        s, c, k = self.sin[:, None, None], self.cos[:, None, None], self.scale[:, None, None]
        xs = shift_x[:, None, None] + k * (c * _WINDOW_U - s * _WINDOW_V)
        ys = shift_y[:, None, None] + k * (s * _WINDOW_U + c * _WINDOW_V)
        half = resolution / 2.0
        bounds = np.stack([ys.min(axis=(0, 2)), ys.max(axis=(0, 2)), xs.min(axis=(0, 2)),
                           xs.max(axis=(0, 2))], axis=1)
        lo = np.clip(np.floor((bounds[:, 0::2] + 1.0) * half - 1.5), 0, resolution).astype(int)
        hi = np.clip(np.ceil((bounds[:, 1::2] + 1.0) * half + 1.5), 0, resolution).astype(int)
        self._windows = {
            name: (slice(int(lo[b, 0]), int(hi[b, 0])), slice(int(lo[b, 1]), int(hi[b, 1])))
            for b, name in enumerate(_WINDOW_NAMES)
        }

    def window(self, name: str):
        """Row and column slices covering a named face-space box (_WINDOWS) in every image."""
        return self._windows[name]

    def uv(self, rows: slice, cols: slice):
        return self.u[:, rows, cols], self.v[:, rows, cols]


def pose_from_nuisance(nuisance_u: np.ndarray) -> dict[str, np.ndarray]:
    """Face placement from nuisance draws (n, F): centre in image units ([-1, 1], y down), scale
    (image units per face unit) and in-plane rotation (radians)."""
    f = np.asarray(nuisance_u, np.float32)
    c = _NUISANCE_COLUMN
    return {
        "shift_x": (f[:, c["shift_x"]] * 2 - 1) * 0.16,
        "shift_y": 0.07 + (f[:, c["shift_y"]] * 2 - 1) * 0.12,
        "scale": 0.92 + 0.34 * f[:, c["scale"]],
        "rotation": (f[:, c["rotation"]] * 2 - 1) * 0.22,
    }


def face_coordinates(nuisance_u: np.ndarray, resolution: int):
    """Face-space coordinates (u, v), each (n, R, R), of every pixel, and pixels per face unit (n, 1, 1).

    The face is centred near (0, 0); eyes sit near v = -0.09, the mouth near v = 0.27, the face
    outline is roughly |u| < 0.4, -0.52 < v < 0.48."""
    frame = _Frame(resolution, **pose_from_nuisance(nuisance_u))
    return frame.u, frame.v, frame.sharp


def _gaussian_blur(images: np.ndarray, sigma: np.ndarray, radius: int) -> np.ndarray:
    """Separable Gaussian blur of channel planes (3, m, h, w), one sigma (pixels) per image.

    The kernel radius is fixed by the caller (not by the batch) so an image blurs the same in any batch."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (offsets[None, :] / sigma[:, None].astype(np.float32)) ** 2)
    kernel /= kernel.sum(axis=1, keepdims=True)
    h, w = images.shape[2:4]
    padded = np.pad(images, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="edge")
    rows = np.zeros_like(images)
    for j in range(2 * radius + 1):
        rows += kernel[None, :, j, None, None] * padded[:, :, j : j + h]
    padded = np.pad(rows, ((0, 0), (0, 0), (0, 0), (radius, radius)), mode="edge")
    out = np.zeros_like(images)
    for j in range(2 * radius + 1):
        out += kernel[None, :, j, None, None] * padded[:, :, :, j : j + w]
    return out


class SynthFaces:
    """Random-access source of rendered faces (grain `RandomAccessDataSource`; picklable).

    Args:
      num_images: length of the source.
      resolution: square image side in pixels (16..512; default 64).
      seed: data seed; item i depends only on (seed, i).
      attribute_rates: overrides of DEFAULT_ATTRIBUTE_RATES, keyed by any spelling the schema
        accepts: a binary attribute maps to P(present), a group member to its relative weight
        within its group (the other members keep their default weights).
    """

    def __init__(
        self,
        num_images: int,
        *,
        resolution: int = 64,
        seed: int = 0,
        attribute_rates: Mapping[str, float] | None = None,
    ):
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        if (
            isinstance(resolution, bool)
            or not isinstance(resolution, (int, np.integer))
            or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION
        ):
            raise ValueError(
                f"resolution must be an integer from {MIN_RESOLUTION} to {MAX_RESOLUTION} pixels, "
                f"got {resolution!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.num_images = int(num_images)
        self.resolution = int(resolution)
        self.seed = int(seed)
        self._schema = get_schema("synthfaces")
        self.attribute_rates = self._resolve_rates(attribute_rates or {})
        self._build_sampling_tables()

    # ------------------------------------------------------------------------------ configuration
    @property
    def schema(self) -> Schema:
        return self._schema

    @property
    def num_attribute_draws(self) -> int:
        return self._schema.num_heads

    def _resolve_rates(self, overrides: Mapping[str, float]) -> dict[str, float]:
        if not isinstance(overrides, Mapping):
            raise ValueError(
                "attribute_rates must be a mapping {attribute name: rate}, got "
                f"{type(overrides).__name__}"
            )
        rates = dict(DEFAULT_ATTRIBUTE_RATES)
        for name, value in overrides.items():
            canonical = self._schema.attribute_names[self._schema.index(name)]
            group = self._schema.group_of(canonical)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"attribute_rates[{name!r}] must be a number, got {value!r}") from None
            if group.is_binary and not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"attribute_rates[{name!r}] = {value} is not a probability; binary attributes "
                    "take P(present) in [0, 1]"
                )
            if not group.is_binary and not (math.isfinite(value) and value >= 0.0):
                raise ValueError(
                    f"attribute_rates[{name!r}] = {value}: members of the {group.name!r} group take "
                    "non-negative relative weights"
                )
            rates[canonical] = value
        for group in self._schema.groups:
            if not group.is_binary and sum(rates[a] for a in group.attributes) <= 0.0:
                raise ValueError(
                    f"attribute_rates give every member of the {group.name!r} group "
                    f"({', '.join(group.attributes)}) weight 0; at least one must be positive"
                )
        return rates

    def _build_sampling_tables(self) -> None:
        """Thresholds that turn each image's attribute uniforms into labels (one per head)."""
        r = self.attribute_rates
        schema = self._schema
        hair_group = schema.group_of("Bald")
        p_male = r["Male"]
        p_bald = r["Bald"] / sum(r[a] for a in hair_group.attributes)
        self._p_bald = np.array(_split_rate(p_bald, p_male, _MALE_SHARE["Bald"]))  # (male, female)
        # Hair colour: when not bald, the rest of the same uniform picks a colour by weight.
        self._hair_slot = schema.groups.index(hair_group)
        colours = [a for a in hair_group.attributes if a != "Bald"]
        weights = np.array([r[a] for a in colours], np.float64)
        self._hair_colour_cols = np.array(schema.indices(colours))
        self._hair_colour_cdf = (
            np.cumsum(weights) / weights.sum() if weights.sum() > 0 else np.ones(len(colours))
        )
        self._bald_col = schema.index("Bald")
        # Other exclusive groups: a categorical draw by weight.
        self._categorical = []  # (slot, schema columns, cdf)
        for slot, group in enumerate(schema.groups):
            if not group.is_binary and group is not hair_group:
                w = np.array([r[a] for a in group.attributes], np.float64)
                self._categorical.append(
                    (slot, np.array(schema.indices(group.attributes)), np.cumsum(w) / w.sum())
                )
        # Binary heads: P(present) for men and for women; bangs only where there is hair.
        binary = [(slot, g.attributes[0]) for slot, g in enumerate(schema.groups) if g.is_binary]
        self._binary_slots = np.array([slot for slot, _ in binary])
        self._binary_cols = np.array([schema.index(name) for _, name in binary])
        p_men, p_women = [], []
        for _, name in binary:
            if name in _MALE_SHARE:
                p_m, p_w = _split_rate(r[name], p_male, _MALE_SHARE[name])
            elif name == "Bangs":
                p_m = p_w = min(1.0, r["Bangs"] / (1.0 - p_bald)) if p_bald < 1.0 else 0.0
            else:
                p_m = p_w = r[name]
            p_men.append(p_m)
            p_women.append(p_w)
        self._binary_p = np.array([p_men, p_women])  # (2, binary heads)
        self._male_slot = self._binary_slots[[n for _, n in binary].index("Male")]
        self._bangs_position = [n for _, n in binary].index("Bangs")

    def __getstate__(self):
        return {
            "num_images": self.num_images,
            "resolution": self.resolution,
            "seed": self.seed,
            "attribute_rates": self.attribute_rates,
        }

    def __setstate__(self, state):
        self.__init__(
            state["num_images"],
            resolution=state["resolution"],
            seed=state["seed"],
            attribute_rates=state["attribute_rates"],
        )

    def __repr__(self) -> str:
        return (
            f"SynthFaces(num_images={self.num_images}, resolution={self.resolution}, "
            f"seed={self.seed})"
        )

    # ------------------------------------------------------------------------------ random streams
    def _check_indices(self, indices) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.ndim == 0:
            idx = idx[None]
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"indices must be a 1-D sequence of integers, got {indices!r}")
        idx = idx.astype(np.int64)
        bad = (idx < 0) | (idx >= self.num_images)
        if bad.any():
            raise IndexError(
                f"index {int(idx[bad][0])} out of range for SynthFaces of {self.num_images} images"
            )
        return idx

    def _stream(self, key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(key)])

    def _draw(self, keys: Sequence[int], resolution: int):
        """Attribute uniforms (n, H), nuisance uniforms (n, F) and noise (n, 3, R, R) per key."""
        n = len(keys)
        heads = self.num_attribute_draws
        attribute_u = np.empty((n, heads), np.float64)
        nuisance_u = np.empty((n, len(NUISANCE_FIELDS)), np.float64)
        noise = np.empty((n, 3, resolution, resolution), np.float32)
        for i, key in enumerate(keys):
            rng = self._stream(key)
            attribute_u[i] = rng.random(heads)
            nuisance_u[i] = rng.random(len(NUISANCE_FIELDS))
            rng.random(out=noise[i], dtype=np.float32)
        return attribute_u, nuisance_u, noise

    # ----------------------------------------------------------------------------------- labels
    def _attributes_from_uniforms(self, u: np.ndarray) -> np.ndarray:
        n = u.shape[0]
        out = np.zeros((n, self._schema.num_attributes), np.float32)
        male = u[:, self._male_slot] < self.attribute_rates["Male"]
        sex = np.where(male, 0, 1)
        hair_u = u[:, self._hair_slot]
        p_bald = self._p_bald[sex]
        bald = hair_u < p_bald
        rest = (hair_u - p_bald) / np.maximum(1.0 - p_bald, 1e-12)
        colour = np.searchsorted(self._hair_colour_cdf, rest, side="right")
        colour = np.minimum(colour, len(self._hair_colour_cols) - 1)
        one_hot = colour[:, None] == np.arange(len(self._hair_colour_cols))
        out[:, self._hair_colour_cols] = one_hot & ~bald[:, None]
        out[:, self._bald_col] = bald
        for slot, cols, cdf in self._categorical:
            pick = np.minimum(np.searchsorted(cdf, u[:, slot], side="right"), len(cols) - 1)
            out[:, cols] = pick[:, None] == np.arange(len(cols))
        p = self._binary_p[sex]
        p[:, self._bangs_position] *= ~bald
        out[:, self._binary_cols] = u[:, self._binary_slots] < p
        return out

    def sample_attributes(self, indices) -> np.ndarray:
        """Labels of the given items, (N, K) float32, without rendering."""
        idx = self._check_indices(indices)
        u = np.empty((len(idx), self.num_attribute_draws), np.float64)
        for i, key in enumerate(idx):
            u[i] = self._stream(key).random(self.num_attribute_draws)
        return self._attributes_from_uniforms(u)

    # ---------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index) -> dict:
        if isinstance(index, slice) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"SynthFaces indices are integers, got {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += self.num_images
        images, attributes = self.render_batch([index])
        return {
            "image": images[0],
            "attributes": attributes[0],
            "attribute_mask": np.ones(self._schema.num_attributes, bool),
            "index": np.int64(index),
        }

    def _getitems(self, indices: Sequence[int]) -> list[dict]:
        """Batched read for grain (SupportsBatchedReadRandomAccessDataSource)."""
        images, attributes = self.render_batch(indices)
        mask = np.ones(self._schema.num_attributes, bool)
        return [
            {"image": images[i], "attributes": attributes[i], "attribute_mask": mask.copy(),
             "index": np.int64(k)}
            for i, k in enumerate(np.asarray(indices, np.int64))
        ]

    def render_batch(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 (N, R, R, 3) and labels float32 (N, K) of the given items."""
        idx = self._check_indices(indices)
        attribute_u, nuisance_u, noise = self._draw(idx, self.resolution)
        attributes = self._attributes_from_uniforms(attribute_u)
        return self._render_all(attributes, nuisance_u, noise), attributes

    def render(self, attributes, rng_or_seeds) -> np.ndarray:
        """Render faces with given labels (N, K); everything else comes from `rng_or_seeds`.

        `rng_or_seeds` is either a sequence of N integer seeds, used like item indices (seed i gives
        item i's pose, colours and noise, so `render(sample_attributes([i]), [i])` equals item i's
        image), or a `np.random.Generator` / an int seeding one, drawn from in order.
        Exclusive groups must be one-hot; Bangs is not drawn on a bald head.
        """
        attributes = self._check_attributes(attributes)
        n = attributes.shape[0]
        if isinstance(rng_or_seeds, (np.random.Generator, int, np.integer)) and not isinstance(
            rng_or_seeds, bool
        ):
            rng = np.random.default_rng(rng_or_seeds)
            nuisance_u = rng.random((n, len(NUISANCE_FIELDS)))
            noise = rng.random((n, 3, self.resolution, self.resolution), dtype=np.float32)
        else:
            seeds = np.asarray(rng_or_seeds)
            if seeds.ndim != 1 or len(seeds) != n or not np.issubdtype(seeds.dtype, np.integer):
                raise ValueError(
                    f"rng_or_seeds must be a numpy Generator, an int, or {n} integer seeds (one per "
                    f"attribute row), got {rng_or_seeds!r}"
                )
            _, nuisance_u, noise = self._draw(seeds, self.resolution)
        return self._render_all(attributes, nuisance_u, noise)

    def draws(self, keys, resolution: int | None = None):
        """The random draws behind items `keys` (any non-negative integers, also beyond len):
        labels (N, K), nuisance uniforms (N, len(NUISANCE_FIELDS)) and noise (N, 3, R, R).

        With `render_from_draws` this lets derived data (synthfakes) re-render a face with some
        draws changed, e.g. another face in the same pose."""
        keys = np.asarray(keys, np.int64).reshape(-1)
        if (keys < 0).any():
            raise ValueError(f"draw keys must be non-negative integers, got {keys[keys < 0][:3]}")
        attribute_u, nuisance_u, noise = self._draw(keys, resolution or self.resolution)
        return self._attributes_from_uniforms(attribute_u), nuisance_u, noise

    def render_from_draws(self, attributes, nuisance_u, noise) -> np.ndarray:
        """Render labels (N, K) with given nuisance uniforms (N, F) and noise (N, 3, R, R)."""
        attributes = self._check_attributes(attributes)
        nuisance_u = np.asarray(nuisance_u, np.float64)
        noise = np.asarray(noise, np.float32)
        n = attributes.shape[0]
        if nuisance_u.shape != (n, len(NUISANCE_FIELDS)) or noise.ndim != 4 or noise.shape[:2] != (n, 3):
            raise ValueError(
                f"render_from_draws needs nuisance (N, {len(NUISANCE_FIELDS)}) and noise (N, 3, R, R) "
                f"for N = {n} label rows, got {nuisance_u.shape} and {noise.shape}"
            )
        return self._render_all(attributes, nuisance_u, noise, noise.shape[-1])

    def _check_attributes(self, attributes) -> np.ndarray:
        a = np.asarray(attributes, np.float32)
        k = self._schema.num_attributes
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != k:
            raise ValueError(
                f"attributes must have shape (N, {k}) in the order of get_schema('synthfaces')"
                f".attribute_names, got shape {np.shape(attributes)}"
            )
        a = (a > 0.5).astype(np.float32)
        for group, cols in zip(self._schema.groups, self._schema.head_attribute_indices):
            if group.is_binary:
                continue
            counts = a[:, list(cols)].sum(axis=1)
            if np.any(counts != 1):
                row = int(np.nonzero(counts != 1)[0][0])
                raise ValueError(
                    f"attributes row {row}: exactly one of the {group.name!r} group "
                    f"({', '.join(group.attributes)}) must be present, got {int(counts[row])}"
                )
        return a

    # --------------------------------------------------------------------------------- rendering
    def _render_all(self, attributes, nuisance_u, noise, resolution: int | None = None):
        resolution = self.resolution if resolution is None else resolution
        n = attributes.shape[0]
        out = np.empty((n, resolution, resolution, 3), np.uint8)
        chunk = max(1, _CHUNK_PIXELS // (resolution * resolution))
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            rendered = self._render_chunk(
                attributes[start:end], nuisance_u[start:end], noise[start:end], resolution
            )
            np.copyto(out[start:end], rendered, casting="unsafe")  # truncation: +0.5 rounded
        return out

    def _render_chunk(self, attributes, nuisance_u, noise, resolution):
        a = dict(zip(self._schema.attribute_names, (attributes > 0.5).T))
        nuisance = nuisance_u.astype(np.float32)
        f = dict(zip(NUISANCE_FIELDS, nuisance.T))

        def colour_draws(first_field):  # three consecutive nuisance draws as an (n, 3) colour
            start = _NUISANCE_COLUMN[first_field]
            return nuisance[:, start : start + 3]

        n = attributes.shape[0]
        male, bald = a["Male"], a["Bald"]
        has_hair = ~bald

        frame = _Frame(resolution, **pose_from_nuisance(nuisance))
        sharp = frame.sharp
        u, v = frame.u, frame.v

        # ---- colours
        hair = np.zeros((n, 3), np.float32)
        for name, rgb in _HAIR_COLOURS.items():
            hair[a[name]] = rgb
        hair *= (0.85 + 0.3 * f["hair_shade"])[:, None]
        bald_facial_hair = np.asarray(_BALD_FACIAL_HAIR, np.float32) * (0.6 + 0.8 * f["facial_hair_shade"])[:, None]
        # Brows, mustache and beard: darker than the hair, so they show on any skin.
        facial_hair = np.where(bald[:, None], bald_facial_hair, hair * 0.6)
        tone = f["skin_tone"][:, None]
        skin = _DARK_SKIN + tone * (_LIGHT_SKIN - _DARK_SKIN)
        warmth = (f["skin_warmth"] - 0.5) * 0.08
        skin[:, 0] += warmth
        skin[:, 2] -= warmth
        pale_scale = (0.97 + 0.03 * f["skin_tone"])[:, None]
        skin = np.where(a["Pale Skin"][:, None], _PALE_SKIN * pale_scale, skin)
        lips = skin * np.array([0.78, 0.5, 0.5], np.float32) * (0.8 + 0.25 * f["lip_shade"])[:, None]
        background0 = 0.04 + 0.92 * colour_draws("background_r0")
        background1 = 0.04 + 0.92 * colour_draws("background_r1")
        clothing = 0.1 + 0.8 * colour_draws("clothing_r")
        hat_colour = 0.08 + 0.85 * colour_draws("hat_r")

        # ---- background: linear gradient between two colours in a random direction
        angle = f["background_angle"] * (2 * np.pi)
        t = (frame.x * _column(np.cos(angle)) + frame.y * _column(np.sin(angle))) * 0.5 + 0.5
        # Channel planes (3, n, h, w): painting then broadcasts per-image colours along whole rows.
        img = background0.T[:, :, None, None] + t[None] * (background1 - background0).T[:, :, None, None]

        # ---- torso and neck
        foreground = np.zeros((n, resolution, resolution), np.float32)  # coverage by the person
        rows, cols = frame.window("body")
        uw, vw = frame.uv(rows, cols)
        part = img[:, :, rows, cols]
        torso = _ellipse(uw, vw, 0.0, 1.12, 0.95, 0.58, sharp, bounded=False)
        _paint(part, torso, clothing)
        neck_half_width = np.where(male, 0.2, 0.165)
        neck = _coverage(_column(neck_half_width) - np.abs(uw), sharp)
        neck *= _coverage(vw - 0.2, sharp)
        _paint(part, neck, skin * 0.82)
        foreground[:, rows, cols] = np.maximum(torso, neck)

        # ---- face outline parameters
        rx = np.zeros(n, np.float32)
        ry = np.zeros(n, np.float32)
        square = np.zeros(n, np.float32)
        for name, (sx, sy, sq) in _FACE_SHAPES.items():
            rx[a[name]], ry[a[name]], square[a[name]] = sx, sy, sq
        rx *= 0.95 + 0.1 * f["face_width"]
        taper = np.where(male, 0.1, 0.32).astype(np.float32)

        # ---- ears (long hair covers them)
        rows, cols = frame.window("ears")
        uw, vw = frame.uv(rows, cols)
        ears = _ellipse(np.abs(uw), vw, _column(rx * 0.97), -0.02, 0.055, 0.095, sharp)
        _paint(img[:, :, rows, cols], ears, skin * 0.88)
        foreground[:, rows, cols] = np.maximum(foreground[:, rows, cols], ears)

        # ---- hair behind the head: short cap for men, long hair to the shoulders for women
        hair_long = f["hair_length"]
        back_cv = np.where(male, -0.12, 0.04 + 0.06 * hair_long)
        back_rx = np.where(male, rx + 0.05, rx + 0.16 + 0.05 * hair_long)
        back_ry = np.where(male, 0.56, 0.66 + 0.1 * hair_long)
        back_bottom = np.where(male, -0.06, 0.42 + 0.25 * hair_long)
        back = _ellipse(u, v, 0.0, _column(back_cv), _column(back_rx), _column(back_ry), sharp, bounded=False)
        back *= _coverage(_column(back_bottom) - v, sharp)
        back *= _column(has_hair)
        _paint(img, back, hair)
        foreground = np.maximum(foreground, back)

        # ---- face
        face_rows, face_cols = frame.window("face")
        uf, vf = frame.uv(face_rows, face_cols)
        fy = (vf - _FACE_CENTRE_V) / _column(ry)
        lower = np.clip(fy, 0.0, 1.0)
        fx = uf / (_column(rx) * (1.0 - _column(taper) * lower * lower))
        fx2, fy2 = fx * fx, fy * fy
        sq = _column(square)
        q = (fx2 + fy2) * (1.0 - sq) + (fx2 * fx2 + fy2 * fy2) * sq
        face = _coverage(1.0 - q, _column(0.5 * rx * (1.0 - 0.5 * square)) * sharp)
        face_img = img[:, :, face_rows, face_cols]
        _paint(face_img, face, skin)
        foreground[:, face_rows, face_cols] = np.maximum(foreground[:, face_rows, face_cols], face)

        eye_u = _column(0.15 + 0.03 * f["eye_spacing"])
        eye_v = _column(-0.09 + 0.03 * (f["eye_level"] - 0.5))
        mouth_v = _column(0.27 + 0.03 * (f["mouth_level"] - 0.5))

        # ---- beard: lower face below a line that rises towards the ears, leaving the lips free
        if a["Beard"].any():
            rows, cols = frame.window("beard")
            uw, vw = frame.uv(rows, cols)
            sub = (slice(None), slice(rows.start - face_rows.start, rows.stop - face_rows.start),
                   slice(cols.start - face_cols.start, cols.stop - face_cols.start))
            beard = face[sub] * _coverage(vw - (0.17 - 1.0 * uw * uw), sharp)
            beard *= 1.0 - _ellipse(uw, vw, 0.0, mouth_v, 0.13, 0.06, sharp)
            beard *= _column(a["Beard"] * 0.92)
            _paint(img[:, :, rows, cols], beard, facial_hair)

        # ---- eyes: dark socket line, white, iris
        rows, cols = frame.window("eyes")
        uw, vw = frame.uv(rows, cols)
        au = np.abs(uw)
        eye_h = _column(np.where(a["Narrow Eyes"], 0.014, 0.042))
        part = img[:, :, rows, cols]
        white_distance = _ellipse_distance(au, vw, eye_u, eye_v, 0.072, eye_h)
        socket = _coverage(white_distance - 0.013, -sharp)  # a dark rim (lids, lashes) around the white
        _paint(part, socket, skin * 0.35)
        white = _coverage(white_distance, -sharp)
        _paint(part, white, np.full((n, 3), 0.93, np.float32))
        iris_colour = np.stack([0.1 + 0.3 * f["iris_shade"], 0.08 + 0.22 * f["iris_shade"],
                                0.06 + 0.12 * f["iris_shade"]], 1)
        iris = _ellipse(au, vw, eye_u, eye_v, 0.032, 0.032, sharp, bounded=False) * white
        _paint(part, iris, iris_colour)

        # ---- brows: heavier for men
        brow_v = eye_v - _column(0.09 + 0.03 * f["brow_level"])
        brow_h = _column(np.where(male, 0.03, 0.016))
        brow = _ellipse(au, vw - 0.9 * (au - eye_u) ** 2, eye_u, brow_v, 0.095, brow_h, sharp)
        _paint(part, brow, facial_hair)

        # ---- nose: a darker ridge and nostrils; bigger for Big Nose
        big = a["Big Nose"]
        nose_scale = _column(np.where(big, 2.0, 1.0))
        nose_len = _column(0.12 + 0.04 * f["nose_length"]) * _column(np.where(big, 1.35, 1.0))
        rows, cols = frame.window("nose")
        uw, vw = frame.uv(rows, cols)
        part = img[:, :, rows, cols]
        ridge = _ellipse(uw, vw, 0.0, -0.03 + nose_len * 0.5, 0.04 * nose_scale, nose_len * 0.6, sharp)
        _paint(part, ridge * 0.8, skin * 0.58)
        tip = _ellipse(uw, vw, 0.0, -0.03 + nose_len, 0.052 * nose_scale, 0.034 * nose_scale, sharp)
        _paint(part, tip * 0.9, skin * 0.66)
        shine = _ellipse(uw, vw, 0.0, -0.04 + nose_len, 0.022 * nose_scale, 0.014 * nose_scale, sharp)
        _paint(part, shine * 0.8, np.minimum(skin * 1.3, 1.0))
        nostrils = _ellipse(np.abs(uw), vw, 0.03 * nose_scale, -0.025 + nose_len + 0.02 * nose_scale,
                            0.018 * nose_scale, 0.012 * nose_scale, sharp)
        _paint(part, nostrils, skin * 0.15)

        # ---- mouth: lips, dark opening (a thin line when closed), teeth; smiles curve upward
        smile = _column(a["Smiling"])
        open_ = _column(a["Mouth Open"])
        mouth_rx = _column(0.1 + 0.02 * f["mouth_width"]) + 0.04 * smile - 0.025 * open_ * (1 - smile)
        open_ry = 0.007 + 0.05 * open_
        rows, cols = frame.window("mouth")
        uw, vw = frame.uv(rows, cols)
        part = img[:, :, rows, cols]
        vm = vw - mouth_v + (3.6 * smile) * uw * uw + 0.015 * smile
        opening_distance = _ellipse_distance(uw, vm, 0.0, 0.0, mouth_rx, open_ry)
        lip = _coverage(opening_distance - 0.021, -sharp)  # lips: a band around the opening
        _paint(part, lip, lips)
        opening = _coverage(opening_distance, -sharp)
        _paint(part, opening, np.tile(np.array([[0.22, 0.05, 0.07]], np.float32), (n, 1)))
        teeth = opening * _coverage(-0.25 * open_ry - vm, sharp) * open_
        _paint(part, teeth, np.full((n, 3), 0.9, np.float32))

        # ---- mustache above the upper lip, drooping at the ends
        if a["Mustache"].any():
            must_v = mouth_v - open_ry - 0.055
            droop = (1.6 - 2.6 * smile) * uw * uw  # follows the mouth corners
            mustache = _ellipse(uw, vw - droop, 0.0, must_v, 0.15, 0.042, sharp)
            _paint(part, mustache * _column(a["Mustache"]), facial_hair)

        # ---- hair over the head and forehead: a hairline, lowered to a fringe for Bangs
        rows, cols = frame.window("scalp")
        uw, vw = frame.uv(rows, cols)
        part = img[:, :, rows, cols]
        cap = _ellipse(uw, vw, 0.0, -0.08, _column(rx + 0.05), 0.6, sharp, bounded=False)
        side = _column(np.where(male, 0.8, 1.6))
        fringe = 0.018 * np.sin(uw * 38.0 + _column(f["bangs_phase"] * 2 * np.pi))  # a ragged edge
        hairline = np.where(
            _column(a["Bangs"]), brow_v - 0.045 + fringe + 0.4 * uw * uw, -0.37 + side * uw * uw
        )
        front = cap * _coverage(hairline - vw, sharp) * _column(has_hair)
        _paint(part, front, hair)
        fg = foreground[:, rows, cols]
        np.maximum(fg, front, out=fg)

        # ---- eyewear: frames for both kinds, dark filled lenses for sunglasses
        glasses = a["Eyeglasses"] | a["Sunglasses"]
        if glasses.any():
            rows, cols = frame.window("eyewear")
            uw, vw = frame.uv(rows, cols)
            part = img[:, :, rows, cols]
            au = np.abs(uw)
            lens_rx, lens_ry = 0.11, 0.085
            du = (au - eye_u) / lens_rx
            dv = (vw - eye_v) / lens_ry
            radius = np.sqrt(du * du + dv * dv)
            lens = _coverage(1.0 - radius, lens_ry * sharp)
            frame_shade = (0.04 + 0.3 * f["frame_shade"])[:, None]
            frame_colour = np.concatenate([frame_shade, frame_shade * 0.9, frame_shade * 0.85], 1)
            tint = (f["lens_tint"] * 0.12)[:, None]
            lens_colour = np.concatenate([0.05 + tint, 0.05 + 0.5 * tint, 0.06 + 0.2 * tint], 1)
            _paint(part, lens * _column(a["Sunglasses"] * 0.93), lens_colour)
            thickness = 0.014
            rim = _coverage(thickness - np.abs(radius - 1.0) * lens_ry, sharp)
            bar_v = eye_v - 0.02
            bar = _coverage(0.012 - np.abs(vw - bar_v), sharp)
            bridge = _coverage(eye_u - lens_rx + 0.01 - au, sharp) * bar
            arm = _coverage(au - eye_u - lens_rx + 0.01, sharp) * bar
            arm *= _coverage(_column(rx) + 0.02 - au, sharp)
            _paint(part, np.maximum(np.maximum(rim, bridge), arm) * _column(glasses), frame_colour)

        # ---- hat over the top of the head: crown and brim
        hat = a["Wearing Hat"]
        if hat.any():
            rows, cols = frame.window("hat")
            uw, vw = frame.uv(rows, cols)
            part = img[:, :, rows, cols]
            brim_v = -0.36
            crown_ry = _column(0.4 + 0.14 * f["hat_height"])
            crown = _ellipse(uw, vw, 0.0, brim_v, _column(rx + 0.07), crown_ry, sharp, bounded=False)
            crown *= _coverage(brim_v + 0.02 - vw, sharp)
            brim_rx = _column(rx + 0.1 + 0.2 * f["brim_width"])
            brim = _ellipse(uw, vw, 0.0, brim_v, brim_rx, 0.045, sharp)
            band = crown * _coverage(0.05 - np.abs(vw - brim_v + 0.07), sharp)
            hat_alpha = np.maximum(crown, brim) * _column(hat)
            _paint(part, hat_alpha, hat_colour)
            _paint(part, band * _column(hat), hat_colour * 0.55)
            fg = foreground[:, rows, cols]
            np.maximum(fg, hat_alpha, out=fg)

        # ---- light: diffuse shading of a head-shaped surface; harsh light comes hard from the side
        harsh = a["Harsh Lighting"]
        side_angle = np.where(
            harsh,
            np.sign(f["light_azimuth"] - 0.5) * (0.9 + 0.5 * np.abs(2 * f["light_azimuth"] - 1)),
            (2 * f["light_azimuth"] - 1) * 0.65,
        )
        up_angle = np.where(harsh, -0.55 + 0.6 * f["light_elevation"], -0.6 + 0.8 * f["light_elevation"])
        lx = np.sin(side_angle) * np.cos(up_angle)
        ly = np.sin(up_angle)
        lz = np.cos(side_angle) * np.cos(up_angle)
        # Surface normal of a rounded head, n ~ (u / 0.45, (v + 0.08) / 0.6, 1), normalised.
        nx = u * (1.0 / 0.45)
        ny = v * (1.0 / 0.6)
        ny += 0.08 / 0.6
        norm = nx * nx
        norm += ny * ny
        norm += 1.0
        np.sqrt(norm, out=norm)
        nx *= _column(lx)
        ny *= _column(ly)
        shade = nx
        shade += ny
        shade += _column(lz)
        shade /= norm
        # Harsh light: a hard terminator (steep ramp), little ambient light, overexposed lit side.
        shade *= _column(np.where(harsh, 3.0, 1.0))
        np.maximum(shade, 0.0, out=shade)
        np.minimum(shade, 1.0, out=shade)
        shade *= _column(np.where(harsh, 1.15, 0.45))
        shade += _column(np.where(harsh, 0.2, 0.6))
        # The background gets a mild falloff along the same direction.
        bg_strength = np.where(harsh, 0.25, 0.07)
        shade_bg = frame.x * _column(bg_strength * lx) + 1.0
        shade_bg = shade_bg + frame.y * _column(bg_strength * ly)
        shade -= shade_bg
        shade *= foreground
        shade += shade_bg
        img *= shade[None]

        # ---- blur, sensor noise, quantisation
        blurry = a["Blurry"]
        if blurry.any():
            sigma = (0.9 + 0.7 * f["blur_sigma"][blurry]) * (resolution / 64.0)
            radius = int(math.ceil(3.0 * 1.6 * resolution / 64.0))
            img[:, blurry] = _gaussian_blur(img[:, blurry], sigma, radius)
        # Camera exposure and white balance scale everything; then zero-mean sensor noise
        # ((noise - 0.5) * sigma, written as noise * sigma + offset) and the 0.5 that rounds.
        gain = 255.0 * (0.72 + 0.5 * f["exposure"])
        balance = np.stack([1.0 + 0.12 * (f["white_balance_r"] - 0.5), np.ones(n, np.float32),
                            1.0 + 0.12 * (f["white_balance_b"] - 0.5)]) * gain
        img *= balance[:, :, None, None]
        noise_sigma = (0.006 + 0.02 * f["noise_level"]) * math.sqrt(12.0) * 255.0
        img += noise.transpose(1, 0, 2, 3) * noise_sigma[None, :, None, None]
        img += (0.5 - 0.5 * noise_sigma)[None, :, None, None]
        np.clip(img, 0.0, 255.0, out=img)
        return np.moveaxis(img, 0, -1)  # (n, h, w, 3) floats in [0, 255]; the caller casts
