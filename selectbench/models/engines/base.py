"""The engine contracts: one Protocol per model-backed operation, the one :class:`Decoding`, and the one ``auto``.

Every backend (``hf``, ``vllm``, ``openai``) implements the operations it can: answer-token losses (IFD,
heldout-nll), generation with an optional adapter (benchmarks, SCAR data), first-token log-probabilities (local
judges) and per-sequence embeddings (selectors). A backend serves one base model; adapters are switched per request.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np

from selectbench.errors import SelectbenchError

ENGINES = ("auto", "hf", "vllm", "openai")
POOLINGS = ("last", "mean")
Conversation = list[dict[str, str]]


def _help(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class Decoding:
    """Decoding parameters, identical for every run of a benchmark and recorded in ``meta.json``.

    Generating benchmarks' options subclass it, so ``--param max_new_tokens=...`` sets it and the options object
    is passed to an engine as is. Invalid values are an error naming every problem at once.
    """

    max_new_tokens: int = _help(512, "generated tokens per completion, at most")
    temperature: float = _help(0.0, "0 = greedy (default); > 0 samples")
    top_p: float = _help(1.0, "nucleus sampling mass")
    seed: int = _help(0, "sampling seed")
    n: int = _help(1, "completions per prompt (n > 1 needs temperature > 0)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise one :class:`SelectbenchError` listing every invalid parameter."""
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            problems.append(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.seed, int):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.n, int) or self.n < 1:
            problems.append(f"n must be an integer >= 1, got {self.n!r}")
        elif self.n > 1 and self.temperature == 0:
            problems.append(f"n={self.n} completions need sampling: set temperature > 0 (greedy gives n copies)")
        if problems:
            raise SelectbenchError("bad decoding parameters: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (temperature 0)."""
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        """The decoding parameters alone (a subclass's own options left out), for ``meta.json`` and cache keys."""
        return {f.name: getattr(self, f.name) for f in fields(Decoding)}


class LossEngine(Protocol):
    """Answer-token losses of tokenised sequences."""

    name: str

    def answer_losses(
        self, sequences: Sequence[Sequence[int]], starts: Sequence[int], *, adapter: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(nll_sums, counts)``: per sequence, the summed NLL of tokens ``ids[max(start, 1):]`` (each predicted
        from everything before it) and their count."""
        ...


class Generator(Protocol):
    """Turns chat conversations into completions."""

    name: str
    model: str

    @property
    def fingerprint(self) -> str:
        """Identifies the model weights (or endpoint and model name), for generation caches."""
        ...

    def generate(
        self, conversations: Sequence[Conversation], decoding: Decoding, *, adapter: str | None = None
    ) -> list[list[str]]:
        """One list of ``decoding.n`` completions per conversation, in order."""
        ...

    def describe(self) -> dict[str, Any]:
        """Engine name, model and options, for ``meta.json``."""
        ...

    def close(self) -> None:
        """Free the engine (weights, KV cache, worker processes)."""
        ...


class NextTokenScorer(Protocol):
    """What a local judge needs: the tokenizer and first-token log-probabilities of the assistant turn."""

    name: str
    tokenizer: Any

    @property
    def fingerprint(self) -> str:
        """Identifies the model weights."""
        ...

    def next_token_logprobs(
        self, conversations: Sequence[Conversation], token_ids: Sequence[int], *, adapter: str | None = None
    ) -> list[list[float]]:
        """Per conversation, the log-probability of each of ``token_ids`` as the first token of the reply."""
        ...


# What an embedder takes: texts, or token-id sequences already tokenised.
Texts = Sequence[str] | Sequence[Sequence[int]]


class Embedder(Protocol):
    """Per-sequence embeddings from the last layer's hidden states."""

    name: str

    def embed(self, texts_or_ids: Texts, *, adapter: str | None = None, pooling: str = "last") -> np.ndarray:
        """One row per text (or token-id list): the last token's hidden state (``last``) or the mean over all
        tokens (``mean``)."""
        ...


def scored_positions(length: int, start: int) -> range:
    """Positions whose token is scored: from ``start`` (at least 1: token 0 has no context) to the end."""
    return range(max(start, 1), length)


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def vllm_usable() -> bool:
    """Whether ``auto`` takes vLLM: vLLM is installed and a GPU is present."""
    return importlib.util.find_spec("vllm") is not None and cuda_available()


def resolve_engine(engine: str, *, allowed: Sequence[str] = ENGINES) -> str:
    """``auto`` -> ``vllm`` where vLLM is installed and a GPU is present, else ``hf``; other names are checked
    against ``allowed`` (e.g. ``("auto", "hf", "vllm")`` where only local models make sense)."""
    if engine not in allowed:
        raise SelectbenchError(f"unknown engine {engine!r}; engines: {', '.join(allowed)}")
    if engine != "auto":
        return engine
    return "vllm" if vllm_usable() else "hf"


def identity(engine: Any) -> dict[str, Any]:
    """The first entries of every engine's ``describe()``: its name, model and weights fingerprint."""
    return {"engine": engine.name, "model": engine.model, "fingerprint": engine.fingerprint}
