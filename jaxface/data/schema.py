"""Attribute schemas: named facial attributes grouped into classifier heads.

A group of mutually exclusive attributes is one softmax head over its members (plus a "none of these"
class when `allow_none` is set); a singleton group is a binary head (softmax over absent/present).
Labels travel as two arrays of shape (..., K) in schema order: `attributes` (1.0 present, 0.0 absent)
and `attribute_mask` (True where the label is known). Heads see integer targets, -1 where missing.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np


class UnknownAttributeError(ValueError):
    """An attribute name that the schema does not have."""


def normalize_name(name: str) -> str:
    """Lookup key: case, spaces, underscores, hyphens and apostrophes do not matter."""
    return re.sub(r"[\s_\-']+", "", str(name)).lower()


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    attributes: tuple[str, ...]
    allow_none: bool = False

    @property
    def is_binary(self) -> bool:
        return len(self.attributes) == 1

    @property
    def num_classes(self) -> int:
        if self.is_binary:
            return 2
        return len(self.attributes) + int(self.allow_none)

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.is_binary:
            return (f"not {self.attributes[0]}", self.attributes[0])
        return self.attributes + (("none",) if self.allow_none else ())


class Schema:
    """An ordered list of attributes partitioned into heads."""

    def __init__(self, name: str, groups: Sequence[Group]):
        self.name = name
        self.groups = tuple(groups)
        if not self.groups:
            raise ValueError(f"schema {name!r} has no groups")
        self.attribute_names = tuple(a for g in self.groups for a in g.attributes)
        self._index: dict[str, int] = {}
        for i, attr in enumerate(self.attribute_names):
            key = normalize_name(attr)
            if key in self._index:
                raise ValueError(f"schema {name!r} lists attribute {attr!r} twice")
            self._index[key] = i
        # For each head, the schema indices of its attributes.
        self.head_attribute_indices: tuple[tuple[int, ...], ...] = []
        start = 0
        for g in self.groups:
            self.head_attribute_indices.append(tuple(range(start, start + len(g.attributes))))
            start += len(g.attributes)
        self.head_attribute_indices = tuple(self.head_attribute_indices)
        self.attribute_head = np.array(
            [h for h, idx in enumerate(self.head_attribute_indices) for _ in idx], np.int32
        )

    # ----------------------------------------------------------------------------------------- sizes
    @property
    def num_attributes(self) -> int:
        return len(self.attribute_names)

    @property
    def num_heads(self) -> int:
        return len(self.groups)

    @property
    def head_sizes(self) -> tuple[int, ...]:
        return tuple(g.num_classes for g in self.groups)

    def __repr__(self) -> str:
        return f"Schema({self.name!r}, {self.num_attributes} attributes in {self.num_heads} heads)"

    # ---------------------------------------------------------------------------------------- lookup
    def index(self, name: str) -> int:
        """Schema index of an attribute; the error lists the closest valid names."""
        key = normalize_name(name)
        if key in self._index:
            return self._index[key]
        keys = list(self._index)
        close = difflib.get_close_matches(key, keys, n=5, cutoff=0.5)
        close_names = [self.attribute_names[self._index[k]] for k in close]
        hint = f"closest: {', '.join(close_names)}" if close_names else "no close match"
        raise UnknownAttributeError(
            f"unknown attribute {name!r} in schema {self.name!r} ({hint}); valid names: "
            + ", ".join(self.attribute_names)
        )

    def indices(self, names: Iterable[str]) -> list[int]:
        return [self.index(n) for n in names]

    def parse(self, text: str | Sequence[str]) -> list[str]:
        """Comma-separated (or listed) names -> canonical attribute names, in the given order."""
        items = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
        items = [t for t in items if t]
        if not items:
            raise UnknownAttributeError(
                "no attributes given; valid names: " + ", ".join(self.attribute_names)
            )
        return [self.attribute_names[self.index(t)] for t in items]

    def group_of(self, name: str) -> Group:
        return self.groups[int(self.attribute_head[self.index(name)])]

    # -------------------------------------------------------------------------------- label algebra
    def labels_from_scores(self, scores: np.ndarray, known: np.ndarray | None = None):
        """Real-valued scores (> 0 = present) -> (attributes, mask), resolving exclusive groups.

        Within a group exactly the arg-max attribute is present when its score is above 0; when no
        member is above 0 and the group has no "none" class, the whole group is unknown (PubFig leaves
        many images without, say, an age label).
        """
        scores = np.asarray(scores, np.float32)
        known = np.isfinite(scores) if known is None else (np.asarray(known, bool) & np.isfinite(scores))
        filled = np.where(known, scores, -np.inf)
        attributes = np.zeros(scores.shape, np.float32)
        mask = known.copy()
        for g, idx in zip(self.groups, self.head_attribute_indices):
            idx = list(idx)
            if g.is_binary:
                attributes[..., idx[0]] = (filled[..., idx[0]] > 0).astype(np.float32)
                continue
            sub = filled[..., idx]
            best = np.argmax(sub, axis=-1)
            top = np.take_along_axis(sub, best[..., None], axis=-1)[..., 0]
            present = top > 0
            onehot = (np.arange(len(idx)) == best[..., None]) & present[..., None]
            attributes[..., idx] = onehot.astype(np.float32)
            group_known = np.all(known[..., idx], axis=-1)
            if not g.allow_none:
                group_known &= present
            mask[..., idx] = group_known[..., None]
        return attributes, mask

    def head_targets(self, attributes, mask, xp=np):
        """(..., K) labels and mask -> (..., H) int32 class targets, -1 where a head has no label.

        A group target is defined when every member's label is known and exactly one member is
        present (or none, for groups with a "none" class). Works with numpy or jax.numpy (`xp`).
        """
        attributes = xp.asarray(attributes)
        mask = xp.asarray(mask).astype(bool)
        targets = []
        for g, idx in zip(self.groups, self.head_attribute_indices):
            lo, hi = idx[0], idx[-1] + 1
            sub = attributes[..., lo:hi] > 0.5
            known = xp.all(mask[..., lo:hi], axis=-1)
            if g.is_binary:
                t = xp.where(known, sub[..., 0].astype(xp.int32), -1)
            else:
                count = xp.sum(sub.astype(xp.int32), axis=-1)
                cls = xp.argmax(sub.astype(xp.int32), axis=-1).astype(xp.int32)
                if g.allow_none:
                    cls = xp.where(count == 0, len(idx), cls)
                    ok = known & (count <= 1)
                else:
                    ok = known & (count == 1)
                t = xp.where(ok, cls, -1)
            targets.append(t.astype(xp.int32))
        return xp.stack(targets, axis=-1)

    def attribute_probabilities(self, head_logits: Sequence[Any], xp=np):
        """Per-head logits -> (..., K) probability that each attribute is present."""
        import jax

        probs = []
        for g, logits in zip(self.groups, head_logits):
            p = jax.nn.softmax(xp.asarray(logits, xp.float32), axis=-1)
            probs.append(p[..., 1:2] if g.is_binary else p[..., : len(g.attributes)])
        return xp.concatenate(probs, axis=-1)

    def attribute_mask_for_evaluation(self, mask, head_targets, xp=np):
        """Per-attribute mask for accuracy: the label is known and its head has a target."""
        head_ok = xp.asarray(head_targets) >= 0
        return xp.asarray(mask).astype(bool) & head_ok[..., self.attribute_head]

    # ---------------------------------------------------------------------------------- conversion
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "groups": [
                {"name": g.name, "attributes": list(g.attributes), "allow_none": g.allow_none}
                for g in self.groups
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Schema":
        groups = []
        for g in d["groups"]:
            if isinstance(g, str):
                groups.append(Group(g, (g,)))
            else:
                attrs = tuple(g["attributes"])
                groups.append(Group(g.get("name", attrs[0]), attrs, bool(g.get("allow_none", False))))
        return cls(d.get("name", "custom"), groups)


def _binary(*names: str) -> list[Group]:
    return [Group(n, (n,)) for n in names]


# PubFig's 73 attributes in 42 heads (../shared/DESIGN.md): 16 exclusive groups + 26 binary heads.
PUBFIG73_GROUPS = [
    Group("race", ("Asian", "White", "Black", "Indian")),
    Group("age", ("Baby", "Child", "Youth", "Middle Aged", "Senior")),
    Group("hair colour", ("Black Hair", "Blond Hair", "Brown Hair", "Gray Hair")),
    Group("eyewear", ("No Eyewear", "Eyeglasses", "Sunglasses")),
    Group("expression", ("Smiling", "Frowning")),
    Group("lighting", ("Harsh Lighting", "Flash", "Soft Lighting")),
    Group("hair style", ("Curly Hair", "Wavy Hair", "Straight Hair")),
    Group("forehead", ("Fully Visible Forehead", "Partially Visible Forehead", "Obstructed Forehead")),
    Group("mouth", ("Mouth Closed", "Mouth Slightly Open", "Mouth Wide Open")),
    Group("face shape", ("Oval Face", "Square Face", "Round Face")),
    Group("attractiveness", ("Attractive Man", "Attractive Woman")),
    Group("facial hair", ("No Beard", "Goatee", "Mustache", "5 o' Clock Shadow")),
    Group("photo", ("Color Photo", "Posed Photo")),
    Group("nose", ("Big Nose", "Pointy Nose")),
    Group("eyebrows", ("Bushy Eyebrows", "Arched Eyebrows")),
    Group("eyes", ("Narrow Eyes", "Eyes Open")),
] + _binary(
    "Male", "Bald", "Chubby", "Blurry", "Outdoor", "Receding Hairline", "Bangs", "Sideburns",
    "Big Lips", "Teeth Not Visible", "Round Jaw", "Double Chin", "Wearing Hat", "Bags Under Eyes",
    "Heavy Makeup", "Rosy Cheeks", "Shiny Skin", "Pale Skin", "Strong Nose-Mouth Lines",
    "Wearing Lipstick", "Flushed Face", "High Cheekbones", "Brown Eyes", "Wearing Earrings",
    "Wearing Necktie", "Wearing Necklace",
)

# Column order of the 73 scores in the PubFig/LFW attribute files.
PUBFIG73_FILE_COLUMNS = (
    "Male", "Asian", "White", "Black", "Baby", "Child", "Youth", "Middle Aged", "Senior",
    "Black Hair", "Blond Hair", "Brown Hair", "Bald", "No Eyewear", "Eyeglasses", "Sunglasses",
    "Mustache", "Smiling", "Frowning", "Chubby", "Blurry", "Harsh Lighting", "Flash",
    "Soft Lighting", "Outdoor", "Curly Hair", "Wavy Hair", "Straight Hair", "Receding Hairline",
    "Bangs", "Sideburns", "Fully Visible Forehead", "Partially Visible Forehead",
    "Obstructed Forehead", "Bushy Eyebrows", "Arched Eyebrows", "Narrow Eyes", "Eyes Open",
    "Big Nose", "Pointy Nose", "Big Lips", "Mouth Closed", "Mouth Slightly Open",
    "Mouth Wide Open", "Teeth Not Visible", "No Beard", "Goatee", "Round Jaw", "Double Chin",
    "Wearing Hat", "Oval Face", "Square Face", "Round Face", "Color Photo", "Posed Photo",
    "Attractive Man", "Attractive Woman", "Indian", "Gray Hair", "Bags Under Eyes",
    "Heavy Makeup", "Rosy Cheeks", "Shiny Skin", "Pale Skin", "5 o' Clock Shadow",
    "Strong Nose-Mouth Lines", "Wearing Lipstick", "Flushed Face", "High Cheekbones",
    "Brown Eyes", "Wearing Earrings", "Wearing Necktie", "Wearing Necklace",
)

# CelebA's 40 attributes in the official file's column order.
CELEBA40_FILE_COLUMNS = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
# CelebA labels hair colour per attribute, and some faces have none of the four (bald, red, ...):
# one head with a "none" class; faces labelled with two colours leave the head unlabelled.
_CELEBA_HAIR = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
CELEBA40_GROUPS = [Group("hair colour", _CELEBA_HAIR, allow_none=True)] + _binary(
    *[c for c in CELEBA40_FILE_COLUMNS if c not in _CELEBA_HAIR]
)

# The embedded synthetic faces (jaxface.data.synthfaces renders exactly these).
SYNTHFACES_GROUPS = [
    Group("hair", ("Black Hair", "Blond Hair", "Brown Hair", "Gray Hair", "Bald")),
    Group("eyewear", ("No Eyewear", "Eyeglasses", "Sunglasses")),
    Group("face shape", ("Oval Face", "Round Face", "Square Face")),
] + _binary(
    "Male", "Smiling", "Mouth Open", "Mustache", "Beard", "Wearing Hat", "Bangs", "Pale Skin",
    "Big Nose", "Narrow Eyes", "Harsh Lighting", "Blurry",
)

BUILTIN_SCHEMAS = {
    "pubfig73": lambda: Schema("pubfig73", PUBFIG73_GROUPS),
    "celeba40": lambda: Schema("celeba40", CELEBA40_GROUPS),
    "synthfaces": lambda: Schema("synthfaces", SYNTHFACES_GROUPS),
}


def get_schema(spec: Any) -> Schema:
    """A built-in name, a Schema, or a mapping {'name':..., 'groups': [...]} (from a config)."""
    if isinstance(spec, Schema):
        return spec
    if isinstance(spec, str):
        if spec not in BUILTIN_SCHEMAS:
            raise ValueError(
                f"unknown schema {spec!r}; built-in schemas: {', '.join(sorted(BUILTIN_SCHEMAS))}, "
                "or define config.data.schema as {'name': ..., 'groups': [...]}"
            )
        return BUILTIN_SCHEMAS[spec]()
    if hasattr(spec, "to_dict"):  # ml_collections.ConfigDict
        spec = spec.to_dict()
    if isinstance(spec, Mapping):
        return Schema.from_dict(spec)
    raise TypeError(f"cannot build an attribute schema from {type(spec).__name__}")
