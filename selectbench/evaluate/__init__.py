"""Evaluation: benchmarks (HumanEval, AlpacaEval, held-out NLL) and the sandbox that runs code. Engines live in
:mod:`selectbench.models.engines`."""

from typing import Any

__all__ = ["evaluate"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a submodule (the sandbox, humaneval) does not import the whole stage.
    if name == "evaluate":
        from selectbench.evaluate.benchmarks import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
