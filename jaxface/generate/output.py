"""Output folders, image grids and printed summary lines of generate, reconstruct and sweep."""
from __future__ import annotations

import math
import pathlib
import re

import numpy as np

from jaxface import files
from jaxface.generate.settings import GenerateError


GENERATE_DIR = "generate"


# --------------------------------------------------------------------------------------- output
def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "set"


def read_json(path, flag: str):
    """A JSON file named by a command-line flag; a missing or malformed file is one GenerateError."""
    import json

    path = pathlib.Path(str(path))
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise GenerateError(f"{flag}: cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GenerateError(f"{flag}: {path} is not valid JSON ({e})") from None


def check_name(name: str) -> str:
    if not name or name in (".", "..") or not re.fullmatch(r"[A-Za-z0-9._\-]+", name):
        raise GenerateError(f"--name={name!r}: use letters, digits, '.', '_' or '-' (one directory name)")
    return name


def write_images(directory: pathlib.Path, images: np.ndarray, cols: int | None = None) -> list[pathlib.Path]:
    outputs = [files.save_image(directory / "grid.png", files.image_grid(images, cols=cols))]
    for i, image in enumerate(images):
        outputs.append(files.save_image(directory / "images" / f"{i:03d}.png", image))
    return outputs


def set_line(summary: dict, label: str) -> str:
    err = summary["mean_feature_error"]
    div = summary["diversity"]
    return (f"{label}: hit rate {summary['mean_hit_rate']:.3f} (all detected {summary['all_detected_rate']:.2f}), "
            f"feature error {'n/a' if err is None else format(err, '.3f')}, "
            f"diversity {'n/a' if not math.isfinite(div) else format(div, '.4f')}"
            + ("" if summary.get("judge_hit_rate") is None else
               f"; judge: hit rate {summary['judge_hit_rate']:.3f}, KID "
               + ("n/a (no real faces with these attributes)" if summary.get("kid") is None else
                  f"{summary['kid']:.4f} +- {summary['kid_se']:.4f} (real vs real {summary['kid_floor']:.4f})"
                  if summary.get("kid_floor") is not None else f"{summary['kid']:.4f}")))
