"""Build an engine by name: ``hf``, ``vllm``, ``openai`` or ``auto`` (see :func:`~.base.resolve_engine`)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from selectbench.errors import SelectbenchError
from selectbench.models.engines.base import ENGINES, resolve_engine
from selectbench.models.engines.hf import HFEngine
from selectbench.models.engines.openai import OpenAIEngine
from selectbench.models.engines.vllm import VLLMEngine
from selectbench.models.spec import ResolvedModel

ENGINE_CLASSES: dict[str, type] = {"hf": HFEngine, "vllm": VLLMEngine, "openai": OpenAIEngine}


def engine_options(engine: str) -> list[str]:
    """The options an engine accepts (``make_engine(engine, model, **options)``)."""
    cls = ENGINE_CLASSES[resolve_engine(engine)]
    return [f.name for f in fields(cls) if not f.name.startswith("_") and f.name not in ("model", "name")]


def make_engine(engine: str, model: str | ResolvedModel, *, allowed: tuple[str, ...] = ENGINES, **options: Any) -> Any:
    """Build an engine: ``hf``, ``vllm``, ``openai``, or ``auto`` (vLLM with a GPU, else hf).

    Args:
        engine: the engine name; ``allowed`` limits the names (e.g. to local engines where losses are needed).
        model: a model spec or a :class:`~selectbench.models.spec.ResolvedModel` (resolved once, here or before);
            for ``openai``, the model name the endpoint serves.
        **options: the engine's options (:func:`engine_options`).

    Raises:
        SelectbenchError: unknown engine, or options the engine does not take (the message lists the valid ones).
    """
    name = resolve_engine(engine, allowed=allowed)
    valid = engine_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SelectbenchError(
            f"engine {name!r} does not take option(s) {', '.join(unknown)}; its options: {', '.join(valid)}"
        )
    if name == "openai" and isinstance(model, ResolvedModel):
        model = model.spec
    return ENGINE_CLASSES[name](model=model, **options)


class EnginePool:
    """Engines built once and shared: a request for the same engine, model and options gets the same instance, so a
    stage holds one base model for every run (each run's adapter is switched per request). Closed together."""

    def __init__(self) -> None:
        self._engines: dict[str, Any] = {}

    def get(
        self, engine: str, model: str | ResolvedModel, *, allowed: tuple[str, ...] = ENGINES, **options: Any
    ) -> Any:
        """The pooled engine for these arguments, built on first request (see :func:`make_engine`)."""
        name = resolve_engine(engine, allowed=allowed)
        spec = model.spec if isinstance(model, ResolvedModel) else str(model)
        key = repr((name, spec, sorted(options.items())))
        if key not in self._engines:
            self._engines[key] = make_engine(name, model, allowed=allowed, **options)
        return self._engines[key]

    def __len__(self) -> int:
        return len(self._engines)

    def close(self) -> None:
        """Close every engine of the pool (weights, KV caches, worker processes)."""
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.close()
