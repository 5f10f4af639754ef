"""Public conformance suite for selectors: ``check_selector(selector, pool)`` (like scikit-learn's check_estimator).

The suite is a list of named checks (:data:`CHECKS`); plug-in authors run it whole in their own tests, or check by
check (``for check in checks_for(selector): check(selector, pool)``, one test per ``check.name``). selectbench runs
it over every registered selector.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from selectbench.data import Pool, pool_from_records
from selectbench.selectors.base import BudgetError, ScoreSelector, Selection, top_k


def tiny_pool(n: int = 24) -> Pool:
    """A small deterministic Alpaca-style pool with varied lengths (for checks and examples)."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    rows = []
    for i in range(n):
        length = 3 + (i * 7) % 17
        response = " ".join(words[(i + j) % len(words)] for j in range(length)) + "."
        rows.append(
            {
                "instruction": f"Task {i}: describe item {i}.",
                "input": "" if i % 3 else f"context {i}",
                "output": response,
            }
        )
    return pool_from_records(rows, name="<tiny pool>")


@dataclass(frozen=True)
class Check:
    """One rule of the Selector contract: ``check(selector, pool)`` raises AssertionError when it is broken.

    Attributes:
        name: what the rule says, shown on failure (``"select equals select_from_scores on the same scores"``).
        run: the check itself.
        score_selectors_only: the rule is about scores, so it applies to a :class:`ScoreSelector` only.
    """

    name: str
    run: Callable[[Any, Pool], None]
    score_selectors_only: bool = False

    def __call__(self, selector: Any, pool: Pool | None = None) -> None:
        """Run the check on ``selector`` (over :func:`tiny_pool` by default); the error names the check."""
        try:
            self.run(selector, pool if pool is not None else tiny_pool())
        except AssertionError as exc:
            raise AssertionError(f"[{self.name}] {exc}") from exc


def check_is_a_named_dataclass(selector: Any, pool: Pool) -> None:
    """A selector is a dataclass (hyperparameters as fields) with a registered ``name`` and a ``select``."""
    label = type(selector).__name__
    assert dataclasses.is_dataclass(selector), f"{label}: a selector must be a dataclass (hyperparameters as fields)"
    assert isinstance(getattr(selector, "name", None), str) and selector.name, f"{label}: missing registered name"
    assert callable(getattr(selector, "select", None)), f"{label}: missing select(pool, budget, *, seed=0)"


def check_budgets_select_that_many(selector: Any, pool: Pool) -> None:
    """Count and fraction budgets give that many unique, in-range indices whose ids match the pool; the Selection
    records the selector, budget, pool and params (JSON-serialisable, equal to the fields)."""
    n = len(pool)
    for budget, expected in [(3, 3), (n, n), (0.5, max(1, math.floor(0.5 * n))), (1.0, n), (1e-9, 1)]:
        selection = selector.select(pool, budget, seed=0)
        _check_selection(type(selector).__name__, selection, selector, pool, budget, expected)


def check_same_seed_same_selection(selector: Any, pool: Pool) -> None:
    """The same seed gives the same selection."""
    again = selector.select(pool, 5, seed=0)
    assert again.indices == selector.select(pool, 5, seed=0).indices, (
        f"{type(selector).__name__}: same seed, different selection"
    )


def check_bad_budgets_raise(selector: Any, pool: Pool) -> None:
    """Bad budgets (0, negative, above the pool, fraction outside (0, 1], NaN, bool, str) raise ``BudgetError``."""
    for bad in (0, -1, len(pool) + 1, 0.0, 1.5, -0.2, float("nan"), True, "10"):
        try:
            selector.select(pool, bad, seed=0)
        except BudgetError:
            continue
        raise AssertionError(
            f"{type(selector).__name__}: budget {bad!r} must raise BudgetError (never clamp or guess)"
        )


def check_one_finite_score_per_record(selector: Any, pool: Pool) -> None:
    """``score`` returns one float per record, finite or NaN (never infinite)."""
    label = type(selector).__name__
    scores = np.asarray(selector.score(pool), dtype=np.float64)
    assert scores.shape == (len(pool),), f"{label}: score() must return one float per record, got shape {scores.shape}"
    assert not np.isinf(scores).any(), f"{label}: score() returned infinite values"


def check_select_is_the_stable_top_k(selector: Any, pool: Pool) -> None:
    """The selection is the stable top-k of ``score`` among the candidates, with those scores."""
    label = type(selector).__name__
    scores = np.asarray(selector.score(pool), dtype=np.float64)
    selection = selector.select(pool, 7, seed=0)
    candidates, k, _ = selector.candidates(pool, scores, 7)
    expected_order = top_k(scores, k, candidates=candidates).tolist()
    assert selection.indices == expected_order, f"{label}: select() is not the stable top-k of score()"
    assert selection.scores == [float(scores[i]) for i in selection.indices], f"{label}: wrong scores in Selection"


def check_select_equals_select_from_scores(selector: Any, pool: Pool) -> None:
    """``select`` is ``select_from_scores`` on the same scores: what a Ray shard path selects from scores computed
    elsewhere. From ``score_fields`` the whole Selection matches (info included, timings aside); from ``score``
    alone the pick does; and ``score_fields``'s ``score`` column is ``score``."""
    label = type(selector).__name__
    fields = selector.score_fields(pool)
    scores = np.asarray(selector.score(pool), dtype=np.float64)
    assert np.array_equal(np.asarray(fields["score"], dtype=np.float64), scores, equal_nan=True), (
        f"{label}: score_fields()['score'] differs from score()"
    )
    for budget in (3, 0.5, 1.0):
        direct = selector.select(pool, budget, seed=2).to_dict()
        given = selector.select_from_scores(pool, fields, budget, seed=2).to_dict()
        del direct["timings"], given["timings"]  # measured anew by each call
        differ = sorted(key for key in direct if direct[key] != given[key])
        assert not differ, (
            f"{label}: select() and select_from_scores(score_fields()) differ in {differ} (budget {budget!r})"
        )
        alone = selector.select_from_scores(pool, scores, budget, seed=2)
        assert (alone.indices, alone.ids, alone.scores, alone.k) == (
            direct["indices"],
            direct["ids"],
            direct["scores"],
            direct["k"],
        ), f"{label}: select() and select_from_scores(score()) pick differently (budget {budget!r})"


#: The Selector contract, rule by rule, in the order :func:`check_selector` runs them.
CHECKS: tuple[Check, ...] = (
    Check("a selector is a named dataclass with select()", check_is_a_named_dataclass),
    Check("budgets select that many valid records", check_budgets_select_that_many),
    Check("the same seed gives the same selection", check_same_seed_same_selection),
    Check("bad budgets raise BudgetError", check_bad_budgets_raise),
    Check("score gives one finite-or-NaN float per record", check_one_finite_score_per_record, True),
    Check("select is the stable top-k of the scores", check_select_is_the_stable_top_k, True),
    Check("select equals select_from_scores on the same scores", check_select_equals_select_from_scores, True),
)


def checks_for(selector: Any) -> list[Check]:
    """The checks of :data:`CHECKS` that apply to ``selector`` (the score checks only to a ScoreSelector)."""
    return [check for check in CHECKS if not check.score_selectors_only or isinstance(selector, ScoreSelector)]


def check_selector(selector: Any, pool: Pool | None = None) -> None:
    """Check that ``selector`` keeps the Selector contract; raise AssertionError naming the first broken check.

    Runs every check of :func:`checks_for` (see :data:`CHECKS`): it is a dataclass with a registered ``name``;
    count and fraction budgets give that many unique, in-range indices whose ids match the pool; the same seed
    gives the same selection; bad budgets (0, negative, above the pool, fraction outside (0, 1], bool) raise
    ``BudgetError``; params are JSON-serialisable and equal the constructor's fields; a ``ScoreSelector`` returns
    one finite-or-NaN float per record, its selection is the stable top-k of its scores among the candidates, and
    ``select`` equals ``select_from_scores`` on the same scores.

    Args:
        selector: a selector instance.
        pool: the pool to check on (default: :func:`tiny_pool`). Use at least 10 records.
    """
    pool = pool if pool is not None else tiny_pool()
    for check in checks_for(selector):
        check(selector, pool)


def _check_selection(label: str, sel: Selection, selector: Any, pool: Pool, budget: Any, expected: int) -> None:
    n = len(pool)
    assert isinstance(sel, Selection), f"{label}: select() must return a Selection, got {type(sel).__name__}"
    assert sel.selector == selector.name, f"{label}: Selection.selector {sel.selector!r} != name {selector.name!r}"
    assert sel.budget == budget, f"{label}: Selection.budget must be the budget as given"
    assert sel.pool_fingerprint == pool.fingerprint, f"{label}: wrong pool fingerprint in Selection"
    assert len(sel.indices) <= expected, f"{label}: budget {budget!r} selected {len(sel.indices)} > {expected}"
    if not isinstance(selector, ScoreSelector) or type(selector).candidates is ScoreSelector.candidates:
        assert len(sel.indices) == expected, f"{label}: budget {budget!r} selected {len(sel.indices)}, not {expected}"
    assert len(set(sel.indices)) == len(sel.indices), f"{label}: duplicate indices in a selection"
    assert all(isinstance(i, int) and 0 <= i < n for i in sel.indices), f"{label}: indices must be ints in range"
    assert sel.ids == [pool.ids[i] for i in sel.indices], f"{label}: Selection.ids do not match the pool's ids"
    if sel.scores is not None:
        assert len(sel.scores) == len(sel.indices), f"{label}: one score per selected record"
    fields = {f.name: getattr(selector, f.name) for f in dataclasses.fields(selector)}
    assert sel.params == fields, f"{label}: Selection.params must equal the selector's fields"
    json.dumps(sel.to_dict())  # params, scores, timings and info must be JSON-serialisable
