"""The one lookup convention for named parts (tasks, detector backbones, data sources, generators,
evaluators, bench suites): a `Registry` maps each name to "module:attribute" (imported only when that name is
asked for, as big_vision looks models up by module name) or to an object defined beside the table.

Every registry is a literal table next to the code that uses it, so the list of valid names is visible
in one place and nothing registers itself as a side effect of being imported.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Iterator, Mapping, MutableMapping


class UnknownNameError(ValueError):
    """A name that is not in a registry; the message lists the valid names."""


class Registry(MutableMapping[str, Any]):
    """name -> object: "package.module:attribute" strings are imported when first asked for; objects
    defined next to the table (small builder functions) are held as they are. `register` is the explicit
    way for a user's code to add an entry."""

    def __init__(self, kind: str, entries: Mapping[str, Any], *, error: type[UnknownNameError] = UnknownNameError,
                 plural: str | None = None):
        self.kind = kind
        self.plural = plural or f"{kind}s"  # as error messages name the valid entries
        self.error = error
        self._entries: dict[str, Any] = {}
        for name, target in entries.items():
            self[name] = target

    def register(self, name: str, target: Any, *, overwrite: bool = False) -> None:
        if not overwrite and name in self._entries:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self[name] = target

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def check(self, name: str) -> str:
        """NAME when it is registered, else one UnknownNameError naming the valid names."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self._entries, n=3, cutoff=0.65)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise self.error(
                f"unknown {self.kind} {name!r}{hint}; valid {self.plural}: {', '.join(self._entries)}")
        return name

    def __getitem__(self, name: str) -> Any:
        target = self._entries[self.check(name)]
        if isinstance(target, str):
            module, attribute = target.split(":")
            target = getattr(importlib.import_module(module), attribute)
        return target

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self._entries else default

    def __setitem__(self, name: str, target: Any) -> None:
        if isinstance(target, str) and target.count(":") != 1:
            raise ValueError(f"{self.kind} registry entry {name!r}: {target!r} is not 'module:attribute'")
        self._entries[name] = target

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
