"""Public conformance suite for selectors: ``check_selector(selector, pool)`` (like scikit-learn's check_estimator).

Plug-in authors run it in their own tests; selectbench runs it over every registered selector.
"""

from __future__ import annotations

import dataclasses
import json
import math
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


def check_selector(selector: Any, pool: Pool | None = None) -> None:
    """Check that ``selector`` keeps the Selector contract; raise AssertionError naming the first broken rule.

    Checked: it is a keyword-only dataclass with a registered ``name``; count and fraction budgets give that
    many unique, in-range indices whose ids match the pool; the same seed gives the same selection; bad
    budgets (0, negative, above the pool, fraction outside (0, 1], bool) raise ``BudgetError``; params are
    JSON-serialisable and equal the constructor's fields; a ``ScoreSelector`` returns one finite-or-NaN float
    per record and its selection is the stable top-k of its scores among the candidates.

    Args:
        selector: a selector instance.
        pool: the pool to check on (default: :func:`tiny_pool`). Use at least 10 records.
    """
    pool = pool if pool is not None else tiny_pool()
    n = len(pool)
    label = f"{type(selector).__name__}"
    assert dataclasses.is_dataclass(selector), f"{label}: a selector must be a dataclass (hyperparameters as fields)"
    assert isinstance(getattr(selector, "name", None), str) and selector.name, f"{label}: missing registered name"
    assert callable(getattr(selector, "select", None)), f"{label}: missing select(pool, budget, *, seed=0)"

    for budget, expected in [(3, 3), (n, n), (0.5, max(1, math.floor(0.5 * n))), (1.0, n), (1e-9, 1)]:
        selection = selector.select(pool, budget, seed=0)
        _check_selection(label, selection, selector, pool, budget, expected)

    again = selector.select(pool, 5, seed=0)
    assert again.indices == selector.select(pool, 5, seed=0).indices, f"{label}: same seed, different selection"

    for bad in (0, -1, n + 1, 0.0, 1.5, -0.2, float("nan"), True, "10"):
        try:
            selector.select(pool, bad, seed=0)
        except BudgetError:
            continue
        raise AssertionError(f"{label}: budget {bad!r} must raise BudgetError (never clamp or guess)")

    if isinstance(selector, ScoreSelector):
        scores = np.asarray(selector.score(pool), dtype=np.float64)
        assert scores.shape == (n,), f"{label}: score() must return one float per record, got shape {scores.shape}"
        assert not np.isinf(scores).any(), f"{label}: score() returned infinite values"
        selection = selector.select(pool, 7, seed=0)
        candidates, k, _ = selector.candidates(pool, scores, 7)
        expected_order = top_k(scores, k, candidates=candidates).tolist()
        assert selection.indices == expected_order, f"{label}: select() is not the stable top-k of score()"
        assert selection.scores == [float(scores[i]) for i in selection.indices], f"{label}: wrong scores in Selection"


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
