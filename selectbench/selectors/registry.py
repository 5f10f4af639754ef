"""The selector registry: a dict filled by ``@register`` and by the ``selectbench.selectors`` entry-point group."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
from collections.abc import Callable
from typing import Any, TypeVar

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


def available() -> dict[str, type]:
    """All selectors, built-in and plug-in, by name."""
    import selectbench.selectors  # noqa: F401  (registers the built-ins)

    load_plugins()
    return dict(sorted(REGISTRY.items()))


def get_selector_class(name: str) -> type:
    """The class registered as ``name``; an unknown name is an error with "did you mean" and the list."""
    known = available()
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise SelectbenchError(f"unknown selector {name!r}.{hint} Available: {', '.join(known)}")


def make_selector(name: str, **params: Any) -> Any:
    """Build the selector ``name`` with ``params``; unknown parameters are an error listing the valid ones."""
    cls = get_selector_class(name)
    if dataclasses.is_dataclass(cls):
        valid = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(params) - set(valid))
        if unknown:
            close = {u: difflib.get_close_matches(u, valid, n=1) for u in unknown}
            hints = "; ".join(f"{u!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for u, c in close.items())
            raise SelectbenchError(
                f"selector {name!r} has no parameter {hints}. Valid parameters: {', '.join(valid) or '(none)'}"
            )
    try:
        return cls(**params)
    except (TypeError, ValueError) as err:
        raise SelectbenchError(f"selector {name!r}: {err}") from None


def describe(cls: type) -> str:
    """The first line of a selector's docstring."""
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
