"""Paired comparisons: each selector's difference from a baseline run at the same budget, with a verdict.

Every run of a grid answers the same eval items from the same base model, so the question "is X better than
random at k?" is answered by the *paired* difference: item by item, seed by seed. An unpaired interval per run
mostly measures how hard the eval items are, and hides differences far smaller than that spread.

For one metric, budget and selector against one baseline (``comparisons.csv``, contract columns
``COMPARISON_COLUMNS``):

- with per-item results for every run of both arms: a two-level paired bootstrap. Each replicate draws the eval
  items once (the same draw for both arms), takes every run's weighted item mean over that draw, then resamples each
  arm's seeds, and records the difference of the arms' means over their drawn seeds. The percentile interval of
  the replicates is the interval; the two-sided p-value is twice the smaller share of replicates on either side of
  zero. It covers eval-set noise and seed (selection and training) noise.
- without per-item results, with at least two seeds in each arm: a permutation test over seeds
  (``scipy.stats.permutation_test``; paired by seed where both arms ran the same seeds) and a Student t interval.
- otherwise no verdict, and the row says why.

p-values are Holm-adjusted over the comparisons of one metric; ``verdict`` is ``better`` or ``worse`` (by the
metric's direction) where the adjusted p-value is below ``alpha``, else ``n.s.``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np
import pandas as pd

from selectbench.reports.results import ItemValues, Results
from selectbench.reports.summary import underfilled

# (contract) The columns of comparisons.csv, in order.
COMPARISON_COLUMNS = (
    "metric",
    "budget_k",
    "selector",
    "baseline",
    "delta",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "verdict",
    "n_items",
    "n_seeds",
    "baseline_seeds",
)
# Shown beside the contract columns in the report, not written to comparisons.csv.
EXTRA_COLUMNS = ("method", "k_selected", "detectable", "note")
DEFAULT_BASELINES = ("random", "full", "base")
ALPHA = 0.05
N_BOOT = 4000
POWER = 0.8
BETTER, WORSE, NS = "better", "worse", "n.s."


def compare(
    results: Results,
    *,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    confidence: float = 0.95,
    alpha: float = ALPHA,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> pd.DataFrame:
    """Every selector's paired difference from each baseline present, per metric and budget.

    Args:
        results: the loaded runs (per-item values are read from their items files).
        baselines: labels to compare against, in order: a selector label (compared at the same ``budget_k``) or a
            reference (``full``, ``base``: compared at every budget). Absent ones are skipped.
        confidence: coverage of the intervals.
        alpha: the family-wise error rate per metric (Holm).
        n_boot: bootstrap replicates.
        seed: seeds ``numpy.random.default_rng`` per comparison, so a report is reproducible.

    Returns:
        One row per comparison: ``COMPARISON_COLUMNS`` then ``EXTRA_COLUMNS`` (``method`` says which test,
        ``k_selected`` how many records the selector actually kept, ``detectable`` the smallest difference the
        comparison would detect at 80% power, ``note`` why there is no verdict).
    """
    frame = results.frame
    higher = frame.groupby("metric", sort=False)["higher_is_better"].first().astype(bool)
    rows = []
    for metric in higher.index:
        part = frame[frame["metric"] == metric]
        selectors = part[part["kind"] == "selector"]
        for baseline in baselines:
            reference = part[part["kind"] == baseline]  # full, base
            for k in sorted(int(v) for v in selectors["budget_k"].dropna().unique()):
                at_k = selectors[selectors["budget_k"] == k]
                base_runs = reference if not reference.empty else at_k[at_k["label"] == baseline]
                if base_runs.empty:
                    continue
                for label in dict.fromkeys(at_k["label"]):
                    if label == baseline:
                        continue
                    arm = at_k[at_k["label"] == label]
                    rng = np.random.default_rng([seed, len(rows)])
                    row = _compare_arms(results, metric, arm, base_runs, confidence, n_boot, rng)
                    if row["n_seeds"] == 1 < row["baseline_seeds"] and row["method"] != "none":
                        one = "one seed: its own training noise is not in the interval"
                        row["note"] = f"{row['note']}; {one}" if row["note"] else one
                    if row["k_selected"] is not None and row["k_selected"] < k:
                        short = f"kept {row['k_selected']} of {k} records (could not fill the budget)"
                        row["note"] = f"{row['note']}; {short}" if row["note"] else short
                    rows.append({"metric": metric, "budget_k": k, "selector": label, "baseline": baseline, **row})
    out = pd.DataFrame(rows, columns=[*COMPARISON_COLUMNS, *EXTRA_COLUMNS, "higher_is_better"])
    if out.empty:
        out.attrs.update(baselines=tuple(baselines))
        return out.drop(columns="higher_is_better")
    out["higher_is_better"] = out["metric"].map(higher)
    out["p_adjusted"] = np.nan
    for _, index in out.groupby("metric", sort=False).groups.items():
        out.loc[index, "p_adjusted"] = holm(out.loc[index, "p_value"].to_numpy(dtype=np.float64))
    out["verdict"] = [_verdict(r, alpha) for r in out.to_dict("records")]
    out["budget_k"] = out["budget_k"].astype("Int64")
    out.attrs.update(confidence=confidence, alpha=alpha, n_boot=n_boot, baselines=tuple(baselines))
    return out.drop(columns="higher_is_better")


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (NaN stays NaN and does not count as a test).

    The i-th smallest of m p-values becomes ``max_{j<=i} min(1, (m - j + 1) * p_(j))``.
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def paired_bootstrap(
    arm: Sequence[ItemValues],
    baseline: Sequence[ItemValues],
    *,
    confidence: float = 0.95,
    n_boot: int = N_BOOT,
    rng: np.random.Generator,
) -> tuple[float, float, float, float, float]:
    """The two-level paired bootstrap of ``mean(arm) - mean(baseline)`` (see the module docstring).

    Args:
        arm: one ItemValues per seed of the arm; all over the same item ids as ``baseline``'s.
        baseline: one ItemValues per seed of the baseline.

    Returns:
        ``(delta, low, high, p_value, se)``: the observed difference of the means over seeds, its percentile
        interval, the two-sided bootstrap p-value and the replicates' standard deviation (the difference's
        standard error, item and seed noise together).
    """
    a_vals, a_w = np.stack([i.values for i in arm]), np.stack([i.weights for i in arm])
    b_vals, b_w = np.stack([i.values for i in baseline]), np.stack([i.weights for i in baseline])
    n_items = a_vals.shape[1]
    delta = float(np.mean([i.mean for i in arm]) - np.mean([i.mean for i in baseline]))
    stats = np.empty(n_boot)
    block = max(1, 2_000_000 // max(n_items, 1))  # never an n_boot x n_items matrix at once
    for start in range(0, n_boot, block):
        size = min(block, n_boot - start)
        counts = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=size)  # shared by both arms
        stats[start : start + size] = _seed_resampled(counts, a_vals, a_w, rng) - _seed_resampled(
            counts, b_vals, b_w, rng
        )
    low, high = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    below, above = int((stats <= 0).sum()), int((stats >= 0).sum())
    p_value = min(1.0, (2 * min(below, above) + 1) / (n_boot + 1))
    return delta, float(low), float(high), p_value, float(stats.std(ddof=1))


def _seed_resampled(
    counts: np.ndarray, values: np.ndarray, weights: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Per replicate: the mean over resampled seeds of each seed's weighted mean over the drawn items."""
    per_seed = (counts @ (values * weights).T) / (counts @ weights.T)  # replicates x seeds
    n_seeds = values.shape[0]
    if n_seeds == 1:
        return per_seed[:, 0]
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=len(counts))
    return (seed_counts * per_seed).sum(axis=1) / n_seeds


def detectable(se: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference that a two-sided test at ``alpha`` finds with probability ``power``, for a
    difference estimated with standard error ``se``: ``(z_{1-alpha/2} + z_power) * se``."""
    z = statistics.NormalDist()
    return (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * se


def minimum_detectable(
    differences: np.ndarray, weights: np.ndarray | None = None, *, alpha: float = ALPHA, power: float = POWER
) -> float:
    """:func:`detectable` for the weighted mean of paired per-item ``differences`` (item noise only)."""
    d = np.asarray(differences, dtype=np.float64)
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(d) < 2 or w.sum() <= 0:
        return math.nan
    share = w / w.sum()
    mean = float((share * d).sum())
    # Standard error of a weighted (ratio) mean over items, as the benchmarks report it.
    se = math.sqrt(float((share**2 * (d - mean) ** 2).sum()) * len(d) / (len(d) - 1))
    return detectable(se, alpha=alpha, power=power)


def _compare_arms(
    results: Results,
    metric: str,
    arm: pd.DataFrame,
    baseline: pd.DataFrame,
    confidence: float,
    n_boot: int,
    rng: np.random.Generator,
) -> dict[str, object]:
    arm, baseline = arm.sort_values("seed"), baseline.sort_values("seed")
    row: dict[str, object] = {
        "n_seeds": len(arm),
        "baseline_seeds": len(baseline),
        "k_selected": _k_selected(arm),
        "note": "",
    }
    a_items = [results.items(s, r, metric) for s, r in zip(arm["source"], arm["run_id"], strict=True)]
    b_items = [results.items(s, r, metric) for s, r in zip(baseline["source"], baseline["run_id"], strict=True)]
    if not metric.startswith("intrinsic/") and all(i is not None for i in [*a_items, *b_items]):
        delta, low, high, p, se = paired_bootstrap(a_items, b_items, confidence=confidence, n_boot=n_boot, rng=rng)  # type: ignore[arg-type]
        return {
            **row,
            "delta": delta,
            "ci_low": low,
            "ci_high": high,
            "p_value": p,
            "n_items": len(a_items[0].ids),  # type: ignore[union-attr]
            "method": "paired bootstrap (items x seeds)",
            "detectable": detectable(se),
        }
    a, b = arm["value"].to_numpy(np.float64), baseline["value"].to_numpy(np.float64)
    n_items = int(min(arm["n"].min(), baseline["n"].min()))
    delta = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        why = "no per-item results, and fewer than 2 seeds in " + ("both arms" if len(a) < 2 > len(b) else "an arm")
        return {**row, "delta": delta, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
                "n_items": n_items, "method": "none", "detectable": math.nan, "note": why}  # fmt: skip
    paired = list(arm["seed"]) == list(baseline["seed"])
    p, low, high = _seed_test(a, b, paired=paired, confidence=confidence, rng=rng)
    return {
        **row,
        "delta": delta,
        "ci_low": low,
        "ci_high": high,
        "p_value": p,
        "n_items": n_items,
        "method": "permutation over seeds" + (" (paired by seed)" if paired else ""),
        "detectable": math.nan,
    }


def _seed_test(
    a: np.ndarray, b: np.ndarray, *, paired: bool, confidence: float, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Permutation p-value and Student t interval of ``mean(a) - mean(b)`` over seeds."""
    from scipy import stats

    def difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    test = stats.permutation_test(
        (a, b),
        difference,
        permutation_type="samples" if paired else "independent",
        vectorized=True,
        n_resamples=9999,
        alternative="two-sided",
        rng=rng,
    )
    if paired:
        d = a - b
        se, dof = d.std(ddof=1) / math.sqrt(len(d)), len(d) - 1
    else:  # Welch
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = math.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else 1.0
    half = float(stats.t.ppf((1 + confidence) / 2, dof)) * se
    delta = float(a.mean() - b.mean())
    return float(test.pvalue), delta - half, delta + half


def _k_selected(arm: pd.DataFrame) -> int | None:
    """Records the selector actually kept (fewer than budget_k when its filter passed too few), where known."""
    values = pd.to_numeric(arm["n_selected"], errors="coerce").dropna()
    return int(values.min()) if len(values) else None


def _verdict(row: dict[str, object], alpha: float) -> str:
    p = row["p_adjusted"]
    if not isinstance(p, float) or math.isnan(p):
        return ""
    if p >= alpha:
        return NS
    gain = float(row["delta"]) if row["higher_is_better"] else -float(row["delta"])  # type: ignore[arg-type]
    return BETTER if gain > 0 else WORSE


# ----------------------------------------------------------------------------------------------- overall view

MARKS = {BETTER: "▲", WORSE: "▼", NS: "≈", "": ""}
OVERALL_COLUMNS = ("selector", "wins", "ties", "losses", "untested", "mean_rank", "rank_low", "rank_high", "cells")


def primary_baseline(comparisons: pd.DataFrame) -> str | None:
    """The first baseline, in the order :func:`compare` was given them, that the comparisons use (the one the
    leaderboard's Δ column shows)."""
    baselines = comparisons.attrs.get("baselines", DEFAULT_BASELINES)
    present = set(comparisons["baseline"]) if not comparisons.empty else set()
    return next((b for b in baselines if b in present), None)


def overall(
    summary: pd.DataFrame,
    comparisons: pd.DataFrame,
    *,
    baseline: str | None = None,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per selector, across every metric and budget: wins, ties and losses against ``baseline`` (default: the
    primary baseline), and its mean rank among the selectors with a bootstrap interval over the (metric, budget)
    cells.

    A win is a ``better`` verdict, a loss a ``worse`` one, a tie ``n.s.``; ``untested`` counts comparisons without
    a verdict. Ranks are 1 = best within a cell (ties share the mean rank); a selector's mean rank is over the cells
    it ran in, and its interval comes from resampling the cells with replacement.
    """
    baseline = baseline or primary_baseline(comparisons)
    selectors = summary[summary["kind"] == "selector"]
    selectors = selectors[~underfilled(selectors)]  # a selector that could not fill a budget is not ranked there
    ranks: dict[tuple[str, int], dict[str, float]] = {}
    for (metric, k), cell in selectors.groupby(["metric", "budget_k"], sort=False):
        higher = bool(cell["higher_is_better"].iloc[0])
        ranked = (-cell["mean"] if higher else cell["mean"]).round(12).rank(method="average")
        ranks[(metric, int(k))] = dict(zip(cell["label"], ranked, strict=True))
    cells = list(ranks)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(cells), size=(n_boot, len(cells))) if cells else np.zeros((0, 0), dtype=int)
    rows = []
    for label in dict.fromkeys(selectors["label"]):
        mine = np.array([ranks[c].get(label, np.nan) for c in cells], dtype=np.float64)
        verdicts = comparisons[(comparisons["selector"] == label) & (comparisons["baseline"] == baseline)]["verdict"]
        with np.errstate(invalid="ignore"):
            boot = np.nanmean(mine[draws], axis=1) if len(cells) else np.array([np.nan])
        boot = boot[~np.isnan(boot)]
        low, high = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2]) if len(boot) else (np.nan,) * 2
        rows.append(
            {
                "selector": label,
                "wins": int((verdicts == BETTER).sum()),
                "ties": int((verdicts == NS).sum()),
                "losses": int((verdicts == WORSE).sum()),
                "untested": int((verdicts == "").sum()),
                "mean_rank": float(np.nanmean(mine)) if (~np.isnan(mine)).any() else math.nan,
                "rank_low": float(low),
                "rank_high": float(high),
                "cells": int((~np.isnan(mine)).sum()),
            }
        )
    out = pd.DataFrame(rows, columns=list(OVERALL_COLUMNS)).sort_values(["mean_rank", "selector"], kind="stable")
    out.attrs.update(baseline=baseline)
    return out.reset_index(drop=True)


def verdict_lines(comparisons: pd.DataFrame, baseline: str | None = None) -> list[str]:
    """One line per metric saying which selectors beat ``baseline``, lost to it, or are within noise of it."""
    baseline = baseline or primary_baseline(comparisons)
    if baseline is None:
        return ["no paired comparison: the grid has no baseline run (random, full or base) to compare with"]
    lines = []
    for metric, rows in comparisons[comparisons["baseline"] == baseline].groupby("metric", sort=False):
        parts = []
        for verdict in (BETTER, WORSE, NS):
            hits = rows[rows["verdict"] == verdict]
            if not hits.empty:
                runs = ", ".join(
                    f"{r['selector']} k={r['budget_k']} ({r['delta']:+.3g})" for r in hits.to_dict("records")
                )
                parts.append(f"{MARKS[verdict]} {verdict}: {runs}")
        untested = rows[rows["verdict"] == ""]
        if not untested.empty:
            parts.append(f"no test for {len(untested)} ({untested['note'].iloc[0]})")
        lines.append(f"{metric}: " + "; ".join(parts))
    return lines or [f"nothing was compared with {baseline}"]
