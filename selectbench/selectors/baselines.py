"""The two baselines every comparison needs: a seeded random subset and the longest responses."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.compute as pc

from selectbench.selectors.base import Budget, ScoreSelector, Selection, make_selection, resolve_budget
from selectbench.selectors.registry import register

if TYPE_CHECKING:
    from selectbench.data import Pool

# "Long Is More for Alignment" counts words as runs of word characters plus each other non-space character;
# this measure reproduces the released Alpaca-1k-longest cutoff.
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")
UNITS = ("words", "tokens", "chars")


@register("random")
@dataclass(kw_only=True)
class RandomSelector:
    """A seeded uniform sample: the first ``budget`` items of ``numpy.random.default_rng(seed).permutation(n)``.

    Report it at several seeds (0, 1, 2) in comparisons: one random subset says little.
    """

    def select(self, pool: Pool, budget: Budget, *, seed: int = 0) -> Selection:
        """Pick ``budget`` records uniformly at random, reproducibly for a given ``seed``."""
        k = resolve_budget(budget, len(pool))
        start = time.perf_counter()
        picked = np.random.default_rng(seed).permutation(len(pool))[:k]
        return make_selection(self, pool, budget, seed, picked, timings={"select": time.perf_counter() - start})


@register("longest")
@dataclass(kw_only=True)
class LongestSelector(ScoreSelector):
    """The longest responses (Zhao et al., "Long Is More for Alignment", ICML 2024).

    The score is the length of the response alone, never the instruction. Ties go to the lower pool index.

    Args:
        unit: ``words`` (default; regex ``\\w+|[^\\w\\s]`` matches), ``tokens`` (needs ``tokenizer``), or
            ``chars`` (Unicode code points).
        tokenizer: a model spec whose tokenizer counts tokens (only with ``unit="tokens"``).
    """

    unit: str = "words"
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if self.unit == "tokens" and not self.tokenizer:
            raise ValueError("unit='tokens' needs tokenizer=MODEL (a model spec whose tokenizer counts tokens)")
        if self.unit != "tokens" and self.tokenizer:
            raise ValueError(f"tokenizer is only used with unit='tokens' (unit is {self.unit!r})")

    def score(self, pool: Pool) -> np.ndarray:
        """Response lengths in the configured unit, as floats."""
        responses = pool.column("response")
        if self.unit == "chars":
            return pc.utf8_length(responses).to_numpy().astype(np.float64)
        if self.unit == "words":
            return np.fromiter(_word_counts(responses), dtype=np.float64, count=len(pool))
        return _token_counts(responses, self.tokenizer or "")


def count_words(text: str) -> int:
    """Words as "Long Is More" counts them: matches of ``\\w+|[^\\w\\s]``."""
    return len(WORD_PATTERN.findall(text))


def _word_counts(column: object) -> list[int]:
    counts: list[int] = []
    for chunk in column.chunks:  # type: ignore[attr-defined]
        counts.extend(len(WORD_PATTERN.findall(text)) for text in chunk.to_pylist())
    return counts


def _token_counts(column: object, spec: str, batch_size: int = 1024) -> np.ndarray:
    from selectbench.models.loading import load_tokenizer

    tokenizer = load_tokenizer(spec)
    counts: list[int] = []
    for chunk in column.chunks:  # type: ignore[attr-defined]
        texts = chunk.to_pylist()
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(texts[start : start + batch_size], add_special_tokens=False)["input_ids"]
            counts.extend(len(ids) for ids in encoded)
    return np.asarray(counts, dtype=np.float64)
