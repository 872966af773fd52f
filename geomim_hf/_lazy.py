"""Names of a package that import their module on first use (PEP 562), as transformers' own do."""

from __future__ import annotations

import importlib
import sys


def lazy_names(package: str, names: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for ``package``'s ``__init__``: ``names`` maps each public name to
    the submodule that defines it, imported when the name is first looked up."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{names[name]}", package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
