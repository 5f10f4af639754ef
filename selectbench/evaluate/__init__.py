"""Evaluation: benchmarks (HumanEval, AlpacaEval, held-out NLL), generation engines and the sandbox that runs code."""

from typing import Any

__all__ = ["evaluate", "make_generator"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a submodule (the sandbox, humaneval) does not import the whole stage.
    if name == "evaluate":
        from selectbench.evaluate.benchmarks import evaluate

        return evaluate
    if name == "make_generator":
        from selectbench.evaluate.generation import make_generator

        return make_generator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
