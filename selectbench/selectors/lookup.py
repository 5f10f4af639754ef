"""Selector lookup by name: the built-ins (registered on import of their modules) and the entry-point plug-ins."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from selectbench.errors import SelectbenchError
from selectbench.selectors import baselines, ifd, scar  # noqa: F401  (registers random, longest, ifd, presets, scar)
from selectbench.selectors.registry import REGISTRY, load_plugins


def available() -> dict[str, type]:
    """All selectors, built-in and plug-in, by name."""
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
