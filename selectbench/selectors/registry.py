"""The selector registry: a dict filled by ``@register`` and by the ``selectbench.selectors`` entry-point group.

Looking selectors up (which first registers the built-ins) is :mod:`selectbench.selectors.lookup`: the built-in
selector modules import this one, so it imports none of them.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import TypeVar

from selectbench.errors import SelectbenchError

ENTRY_POINT_GROUP = "selectbench.selectors"
REGISTRY: dict[str, type] = {}
ORIGIN: dict[str, str] = {}  # name -> "selectbench" or the plug-in's distribution name
_plugins_loaded = False

T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: register a selector under ``name`` (and set its ``name`` attribute)."""

    def decorate(cls: T) -> T:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise SelectbenchError(f"selector name {name!r} is already taken by {REGISTRY[name].__qualname__}")
        cls.name = name  # type: ignore[attr-defined]
        REGISTRY[name] = cls
        ORIGIN.setdefault(name, cls.__module__.split(".")[0])
        return cls

    return decorate


def load_plugins() -> None:
    """Import the selectors that installed packages declare in the ``selectbench.selectors`` entry-point group.

    Each entry point names a selector class; its entry-point name is the selector's name.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in REGISTRY:
            continue
        try:
            cls = entry.load()
        except Exception as err:  # a broken plug-in must not break the toolkit: say which and go on
            import warnings

            warnings.warn(
                f"selectbench: plug-in selector {entry.name!r} ({entry.value}) failed to load: {err}", stacklevel=2
            )
            continue
        register(entry.name)(cls)
        ORIGIN[entry.name] = entry.dist.name if entry.dist else entry.value.split(":")[0]


def describe(cls: type) -> str:
    """The first line of a selector's docstring."""
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
