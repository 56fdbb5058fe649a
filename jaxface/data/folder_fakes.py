"""Fakes from folders: image files made elsewhere (for example the faces `jaxface generate` wrote) added
to a real/fake detection source as generators of their own names.

    config.data.fake_folders = {"demo_generated": "runs/demo/attributes/generate"}

Every image under a folder (recursively) is a fake of that generator. The files are split into train,
val and test by hashing their path relative to the folder (data.split_fractions, data.seed), so a file
stays in its split when others are added and the test split holds images the detector never trained on.
"""
from __future__ import annotations

import os
import pathlib
from typing import Mapping, Sequence

import numpy as np

from jaxface.data import sources


class FolderFakesError(ValueError):
    """A data.fake_folders entry that names no usable folder, or a generator name already taken."""


def folder_paths(folder, split: str, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> list[str]:
    """The image files of `folder` in `split` ('all': every one), as absolute paths, sorted."""
    root = pathlib.Path(os.path.expanduser(str(folder)))
    if not root.is_dir():
        raise FolderFakesError(f"data.fake_folders: {root} is not a folder")
    names = sources._list_images(root)
    if not names:
        raise FolderFakesError(f"data.fake_folders: {root} holds no image files "
                               f"({', '.join(sorted(sources.IMAGE_EXTENSIONS))})")
    if split != "all":
        assignment = sources.hash_split(names, fractions, seed)
        names = [n for n, s in zip(names, assignment) if sources.SPLITS[s] == split]
    return [str(root / n) for n in names]


class WithFolderFakes:
    """A detection source plus the files of named folders as fakes (label 1, a generator id of their own).

    Records: the base's, then one {"path", "label", "generator_id", "index"} per file, decoded and resized
    by the pipeline like any photo. `labels` and `generator_ids` cover both, so metrics, class balancing
    and the robustness suite see the new generators by name.
    """

    def __init__(self, base, folders: Mapping[str, str], *, split: str, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 seed: int = 0):
        self.base = base
        base_names = tuple(base.generator_names)
        clash = [n for n in folders if n == "real" or n in base_names]
        if clash:
            raise FolderFakesError(f"data.fake_folders names {', '.join(map(repr, clash))}, which the data already "
                                   f"uses ({', '.join(base_names)}); choose another generator name")
        self.folders = {str(k): str(v) for k, v in folders.items()}
        self.generator_names = base_names + tuple(self.folders)
        self._paths, ids = [], []
        for k, (name, folder) in enumerate(self.folders.items()):
            paths = folder_paths(folder, split, fractions, seed)
            self._paths += paths
            ids += [len(base_names) + k] * len(paths)
        self._base_len = len(base)
        self.labels = np.concatenate([np.asarray(base.labels, np.int32), np.ones(len(ids), np.int32)])
        self.generator_ids = np.concatenate([np.asarray(base.generator_ids, np.int32), np.asarray(ids, np.int32)])
        if hasattr(base, "resolution"):
            self.resolution = base.resolution

    def __len__(self) -> int:
        return self._base_len + len(self._paths)

    def __repr__(self) -> str:
        return f"WithFolderFakes({self.base!r}, folders={self.folders}, n={len(self)})"

    def _folder_record(self, index: int) -> dict:
        return {"path": self._paths[index - self._base_len], "label": np.int32(1),
                "generator_id": np.int32(self.generator_ids[index]), "index": np.int64(index)}

    def __getitem__(self, index) -> dict:
        index = sources.checked_index(index, self)
        return self.base[index] if index < self._base_len else self._folder_record(index)

    def _getitems(self, indices: Sequence[int]) -> list[dict]:
        """Batched read: the base's items through its own batched reader (a rendered source renders them
        together), the files as path records."""
        indices = [sources.checked_index(i, self) for i in indices]
        inside = [i for i in indices if i < self._base_len]
        read = dict(zip(inside, self.base._getitems(inside) if hasattr(self.base, "_getitems")
                        else [self.base[i] for i in inside])) if inside else {}
        return [read[i] if i in read else self._folder_record(i) for i in indices]

    @property
    def paths(self) -> list[str]:
        base = list(self.base.paths) if hasattr(self.base, "paths") else [str(i) for i in range(self._base_len)]
        return base + self._paths
