"""The Selector contract: budgets, the Selection record, and the score-then-top-k base class."""

from __future__ import annotations

import abc
import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from selectbench.errors import SelectbenchError

if TYPE_CHECKING:
    from selectbench.data import Pool

Budget = int | float


class BudgetError(SelectbenchError):
    """A budget that is not a positive count or a fraction in (0, 1], or is larger than the pool."""


def resolve_budget(budget: Budget, n: int) -> int:
    """How many records a budget selects from a pool of ``n``.

    An int is a count (1..n); a float in (0, 1] is a fraction of the pool, rounded down, at least 1.
    A budget above the pool size is an error, never clamped.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise BudgetError(f"budget must be a count (int) or a fraction in (0, 1] (float), got {budget!r}")
    if isinstance(budget, (int, np.integer)):
        if budget < 1:
            raise BudgetError(f"budget must be at least 1, got {budget}")
        if budget > n:
            raise BudgetError(f"budget {budget} is larger than the pool ({n} records)")
        return int(budget)
    if not (0.0 < budget <= 1.0) or math.isnan(budget):
        raise BudgetError(f"a fractional budget must be in (0, 1], got {budget}; for a count pass an integer")
    return max(1, math.floor(budget * n))


def parse_budget(text: str) -> Budget:
    """``"50"`` -> 50 (a count); ``"0.1"`` or ``"1.0"`` -> a fraction; anything else is an error."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise BudgetError(f"budget must be a count like 50 or a fraction like 0.1, got {text!r}") from None


@dataclass(frozen=True)
class Selection:
    """What a selector picked, in rank order, with everything needed to reproduce and report it.

    Attributes:
        selector: registered selector name.
        params: the selector's hyperparameters (JSON-serialisable).
        seed: the seed passed to ``select``.
        budget: the budget as given (count or fraction).
        k: the budget resolved to a count (``len(indices)``, unless a selector's filter kept fewer).
        pool_fingerprint: fingerprint of the pool it was selected from.
        indices: pool indices of the selected records, in rank order.
        ids: their record ids, in the same order.
        scores: their scores (higher is better), or None for selectors that do not score.
        timings: seconds spent per phase, e.g. ``{"score": 1.2, "select": 0.01}``.
        info: selector-specific counts (e.g. how many records a filter dropped).
    """

    selector: str
    params: dict[str, Any]
    seed: int
    budget: Budget
    k: int
    pool_fingerprint: str
    indices: list[int]
    ids: list[str]
    scores: list[float] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the body of ``meta.json``'s selection part)."""
        return dataclasses.asdict(self)


@runtime_checkable
class Selector(Protocol):
    """Anything with a registered ``name`` and ``select(pool, budget, *, seed=0) -> Selection``.

    Write a selector as a keyword-only dataclass: hyperparameters are its fields, no work in the constructor
    (load models lazily inside methods), and ``select`` returns a :class:`Selection`. Check it with
    :func:`selectbench.testing.check_selector`.
    """

    name: ClassVar[str]

    def select(self, pool: Pool, budget: Budget, *, seed: int = 0) -> Selection: ...


def selector_params(selector: Any) -> dict[str, Any]:
    """A selector's hyperparameters: its dataclass fields (the contract makes selectors dataclasses)."""
    if dataclasses.is_dataclass(selector):
        return {f.name: getattr(selector, f.name) for f in dataclasses.fields(selector)}
    return {}


def top_k(scores: np.ndarray, k: int, *, candidates: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` highest scores, ties to the lower index; NaN is an error, not a silent rank.

    Args:
        scores: one score per pool record.
        k: how many to take (at most the number of candidates).
        candidates: optional pool indices to rank among (a filter's survivors); default all.
    """
    scores = np.asarray(scores, dtype=np.float64)
    pick = np.arange(len(scores)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    values = scores[pick]
    if np.isnan(values).any():
        raise ValueError(f"{int(np.isnan(values).sum())} NaN scores among the candidates: filter them out first")
    order = np.argsort(-values, kind="stable")[:k]
    return pick[order]


@dataclass(kw_only=True)
class ScoreSelector(abc.ABC):
    """Base for selectors that score every record (higher is better) and keep the stable top-k.

    Subclasses implement :meth:`score`; ``select`` is derived and never overridden: it is
    :meth:`select_from_scores` on the scores, so a selection made from scores computed elsewhere (in shards on a
    Ray cluster) is the one ``select`` makes. A subclass with a filter (records that must never be selected)
    overrides :meth:`candidates`; one that records more about a selection than the scores say (why records could
    not be scored) names the :meth:`score_fields` columns it reads in ``info_fields`` and overrides
    :meth:`selection_info`.
    """

    name: ClassVar[str] = ""
    #: :meth:`score_fields` columns, beyond ``score``, that :meth:`selection_info` reads; when there are any,
    #: ``select`` scores with :meth:`score_fields` instead of :meth:`score`.
    info_fields: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def score(self, pool: Pool) -> np.ndarray:
        """One float per record, in pool order; higher is better."""

    def score_fields(self, pool: Pool) -> dict[str, np.ndarray]:
        """Per-record columns for ``selectbench score``: ``score`` plus any selector-specific fields."""
        return {"score": np.asarray(self.score(pool), dtype=np.float64)}

    def candidates(self, pool: Pool, scores: np.ndarray, budget: Budget) -> tuple[np.ndarray, int, dict[str, Any]]:
        """Which records may be selected and how many to take: ``(candidate indices, k, info)``.

        The default: every record, with the budget resolved against the whole pool.
        """
        return np.arange(len(pool)), resolve_budget(budget, len(pool)), {}

    def selection_info(self, pool: Pool, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Selector-specific entries for ``Selection.info``, from the score fields; added after those of
        :meth:`candidates`. The default adds none.

        Args:
            pool: the whole pool.
            fields: ``score`` and, when ``select_from_scores`` was given them, the ``info_fields`` columns.
        """
        return {}

    def select(self, pool: Pool, budget: Budget, *, seed: int = 0) -> Selection:
        """Score the pool, then keep the ``budget`` best records (stable: ties go to the lower pool index)."""
        resolve_budget(budget, len(pool))  # fail on a bad budget before paying for scoring
        start = time.perf_counter()
        scores = self.score_fields(pool) if self.info_fields else self.score(pool)
        return self.select_from_scores(pool, scores, budget, seed=seed, timings={"score": time.perf_counter() - start})

    def select_from_scores(
        self,
        pool: Pool,
        scores: np.ndarray | Mapping[str, Any],
        budget: Budget,
        *,
        seed: int = 0,
        timings: dict[str, float] | None = None,
    ) -> Selection:
        """What :meth:`select` does once the scores exist: filter (:meth:`candidates`), then the stable top-k.

        For scores computed elsewhere, e.g. in shards on a Ray cluster: the selection is the one ``select`` makes
        from the same scores. Pass the :meth:`score_fields` columns (at least ``score`` and the ``info_fields``)
        to get the whole ``info`` too; from the scores alone, what :meth:`selection_info` reads from the other
        columns is missing.

        Args:
            pool: the whole pool the scores belong to.
            scores: one score per record, in pool order; or the mapping :meth:`score_fields` returns.
            budget: a count or a fraction, as for ``select``.
            seed: recorded in the Selection (scores decide the pick).
            timings: phases already timed (e.g. ``{"score": 12.3}``); ``select`` is added.
        """
        scored = time.perf_counter()
        fields = dict(scores) if isinstance(scores, Mapping) else {"score": scores}
        if "score" not in fields:
            raise ValueError(f"{self.name}: the score fields have no 'score' column (got {sorted(fields)})")
        scores = np.asarray(fields["score"], dtype=np.float64)
        if scores.shape != (len(pool),):
            raise ValueError(f"{self.name}: score() returned shape {scores.shape}, expected ({len(pool)},)")
        candidates, k, info = self.candidates(pool, scores, budget)
        info.update(self.selection_info(pool, {**fields, "score": scores}))
        picked = top_k(scores, k, candidates=candidates)
        return make_selection(
            self,
            pool,
            budget,
            seed,
            picked,
            scores[picked],
            k=k,
            info=info,
            timings={**(timings or {}), "select": time.perf_counter() - scored},
        )


def make_selection(
    selector: Any,
    pool: Pool,
    budget: Budget,
    seed: int,
    indices: np.ndarray | list[int],
    scores: np.ndarray | list[float] | None = None,
    *,
    k: int | None = None,
    timings: dict[str, float] | None = None,
    info: dict[str, Any] | None = None,
) -> Selection:
    """Build a :class:`Selection` from picked pool indices (a helper for ``select`` implementations)."""
    picked = [int(i) for i in indices]
    ids = pool.ids
    return Selection(
        selector=selector.name,
        params=selector_params(selector),
        seed=seed,
        budget=budget,
        k=resolve_budget(budget, len(pool)) if k is None else k,
        pool_fingerprint=pool.fingerprint,
        indices=picked,
        ids=[ids[i] for i in picked],
        scores=None if scores is None else [float(s) for s in scores],
        timings=dict(timings or {}),
        info=dict(info or {}),
    )
