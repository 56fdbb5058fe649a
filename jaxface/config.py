"""Loading config files outside absl flag parsing (the demo, tests, benchmarks) and reading optional keys."""
from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import ml_collections

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def option(section, key: str, default: Any = None) -> Any:
    """SECTION.KEY, or DEFAULT when the section or the key is missing or None (config files leave
    optional keys out or set them to None; both mean "use the default")."""
    if section is None:
        return default
    value = section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)
    return default if value is None else value


# An installed wheel carries the repository's configs/ folder as jaxface/configs (setup.py).
PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


def configs_folder() -> pathlib.Path:
    """Where the shipped config files are: the repository's configs/, or the installed package's copy."""
    return REPO_ROOT / "configs" if (REPO_ROOT / "configs").is_dir() else PACKAGED_CONFIGS


def config_path(path: str | pathlib.Path) -> pathlib.Path:
    """A config file path as given, else relative to the repository's root, else (for a path starting
    with configs/) the copy inside an installed jaxface."""
    p = pathlib.Path(path)
    if p.exists():
        return p
    if (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    if p.parts[:1] == ("configs",) and PACKAGED_CONFIGS.joinpath(*p.parts[1:]).exists():
        return PACKAGED_CONFIGS.joinpath(*p.parts[1:])
    raise FileNotFoundError(f"config file {str(path)!r} not found (configs live in {configs_folder()})")


def load_config(path: str | pathlib.Path, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """get_config() of a config file, with dotted-key overrides such as {'data.num_train': 100}.

    `path` may end in ':ARG' (as on the command line), which is passed to get_config(ARG).
    """
    path, _, arg = str(path).partition(":")
    p = config_path(path)
    spec = importlib.util.spec_from_file_location(f"jaxface_config_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    for key, value in (overrides or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config
