"""Aggregate results into one row per (selector, budget, metric): the mean across seeds and a confidence interval."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np
import pandas as pd

from selectbench.reports.results import ItemValues, Results

CONFIDENCE = 0.95
N_BOOT = 2000
# How a row's interval was computed, most informative first (see summarize()).
CI_METHODS = {
    "items x seeds": "bootstrap over eval items and seeds",
    "items": "bootstrap over eval items (one seed)",
    "seeds": "Student t over seeds (no per-item results), kept inside the metric's range",
    "stderr": "normal interval from the benchmark's stderr (one seed, no per-item results)",
    "wilson": "Wilson score interval of a share over its n items (one seed, no per-item results)",
    "none": "no interval: one seed, no per-item results, no stderr",
}
SUMMARY_COLUMNS = (
    "kind",
    "selector",
    "label",
    "budget",
    "budget_k",
    "metric",
    "higher_is_better",
    "mean",
    "ci_low",
    "ci_high",
    "ci_method",
    "seed_sd",
    "n_seeds",
    "seeds",
    "n_items",
    "n_selected",
    "select_seconds",
    "train_seconds",
    "cost_seconds",
    "eval_seconds",
    "tokens_trained",
)


def summarize(
    results: Results, *, confidence: float = CONFIDENCE, n_boot: int = N_BOOT, seed: int = 0
) -> pd.DataFrame:
    """One row per (kind, selector, budget_k, metric): mean over seeds, interval, seeds, items and costs.

    The interval (``ci_low``, ``ci_high``) at ``confidence`` is, by what the runs provide:

    - per-item results for every seed, several seeds: a two-level percentile bootstrap. Each replicate resamples
      the eval items (one draw shared by all seeds, which answered the same items) and then the seeds, and takes
      the mean over the drawn seeds of each seed's (weighted) item mean. It covers both eval-set and seed noise.
    - per-item results, one seed: the same bootstrap over items only.
    - no per-item results, several seeds: mean +- t(confidence, seeds-1) * sd / sqrt(seeds).
    - no per-item results, one seed with ``stderr``: value +- z(confidence) * stderr.
    - otherwise no interval (NaN).

    The bootstrap uses ``numpy.random.default_rng(seed)`` per row, so a report is reproducible. Costs are means
    over seeds; ``cost_seconds`` is selection plus training time.
    """
    frame = results.frame
    rows = []
    keys = ["kind", "selector", "budget_k", "metric"]
    for (kind, selector, budget_k, metric), group in frame.groupby(keys, dropna=False, sort=False):
        group = group.sort_values("seed")
        values = group["value"].to_numpy(dtype=np.float64)
        items = [results.items(s, r, metric) for s, r in zip(group["source"], group["run_id"], strict=True)]
        have_items = not metric.startswith("intrinsic/") and all(i is not None for i in items)
        rng = np.random.default_rng(seed)
        if have_items:
            low, high = bootstrap_ci(items, confidence=confidence, n_boot=n_boot, rng=rng)  # type: ignore[arg-type]
            method = "items x seeds" if len(values) > 1 else "items"
        elif len(values) > 1:
            low, high = t_interval(values, confidence)
            method = "seeds"
        elif _bounded(group) and int(group["n"].iloc[0]) > 0:
            lo, hi = float(group["value_min"].iloc[0]), float(group["value_max"].iloc[0])
            share_low, share_high = wilson_interval((values[0] - lo) / (hi - lo), int(group["n"].iloc[0]), confidence)
            low, high, method = lo + share_low * (hi - lo), lo + share_high * (hi - lo), "wilson"
        elif not math.isnan(group["stderr"].iloc[0]):
            z = _normal_quantile((1 + confidence) / 2)
            low, high = values[0] - z * group["stderr"].iloc[0], values[0] + z * group["stderr"].iloc[0]
            method = "stderr"
        else:
            low, high, method = math.nan, math.nan, "none"
        low, high = _inside(group, low, high)
        select_s, train_s = _mean(group["select_seconds"]), _mean(group["train_seconds"])
        rows.append(
            {
                "kind": kind,
                "selector": selector,
                "label": group["label"].iloc[0],
                "budget": "/".join(dict.fromkeys(b for b in group["budget"] if b)),
                "budget_k": budget_k,
                "metric": metric,
                "higher_is_better": bool(group["higher_is_better"].iloc[0]),
                "mean": float(values.mean()),
                "ci_low": float(low),
                "ci_high": float(high),
                "ci_method": method,
                "seed_sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                "n_seeds": len(values),
                "seeds": " ".join(str(s) for s in group["seed"]),
                "n_items": len(items[0].ids) if have_items else int(group["n"].max()),
                # The fewest records any seed's selection held (below budget_k: the selector could not fill it).
                "n_selected": group["n_selected"].min() if group["n_selected"].notna().any() else pd.NA,
                "select_seconds": select_s,
                "train_seconds": train_s,
                "cost_seconds": math.nan
                if math.isnan(select_s) and math.isnan(train_s)
                else float(np.nansum([select_s, train_s])),
                "eval_seconds": _mean(group["eval_seconds"]),
                "tokens_trained": _mean(group["tokens_trained"].astype("Float64")),
            }
        )
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    out["budget_k"] = out["budget_k"].astype("Int64")
    out["n_selected"] = out["n_selected"].astype("Int64")
    out.attrs.update(confidence=confidence, n_boot=n_boot)
    return out


def wilson_interval(share: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion ``share`` observed over ``n`` items; always inside [0, 1]."""
    z = _normal_quantile((1 + confidence) / 2)
    share = min(1.0, max(0.0, share))
    denominator = 1 + z * z / n
    centre = (share + z * z / (2 * n)) / denominator
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def underfilled(rows: pd.DataFrame) -> pd.Series:
    """Summary rows whose selector kept fewer records than the budget (its filter passed too few)."""
    selected = rows["n_selected"]
    return (selected.notna() & (selected.fillna(0) < rows["budget_k"].fillna(0))).astype(bool)


def _bounded(group: pd.DataFrame) -> bool:
    """Whether the metric has a range on both sides (a share or a percentage): Wilson applies."""
    return not (math.isnan(group["value_min"].iloc[0]) or math.isnan(group["value_max"].iloc[0]))


def _inside(group: pd.DataFrame, low: float, high: float) -> tuple[float, float]:
    """The interval cut to the metric's range, where results.csv gives one: no share interval past 0 or 1."""
    if not math.isnan(group["value_min"].iloc[0]):
        low, high = max(low, float(group["value_min"].iloc[0])), max(high, float(group["value_min"].iloc[0]))
    if not math.isnan(group["value_max"].iloc[0]):
        low, high = min(low, float(group["value_max"].iloc[0])), min(high, float(group["value_max"].iloc[0]))
    return low, high


def bootstrap_ci(
    items: Sequence[ItemValues], *, confidence: float = CONFIDENCE, n_boot: int = N_BOOT, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds of each seed's weighted item mean.

    Args:
        items: one ItemValues per seed, all over the same item ids.
        confidence: the interval's coverage, e.g. 0.95.
        n_boot: bootstrap replicates.
        rng: the random generator (seeded by the caller for reproducible reports).

    Returns:
        (low, high). Items are resampled with one draw shared by all seeds; with several seeds the seeds are then
        resampled too.
    """
    values = np.stack([i.values for i in items])  # seeds x items
    weights = np.stack([i.weights for i in items])
    n_seeds, n_items = values.shape
    weighted = (values * weights).T
    stats = np.empty(n_boot)
    # Draw item counts in blocks so a large eval set never needs an n_boot x n_items matrix at once.
    block = max(1, 2_000_000 // max(n_items, 1))
    for start in range(0, n_boot, block):
        size = min(block, n_boot - start)
        counts = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=size)
        per_seed = (counts @ weighted) / (counts @ weights.T)  # replicates x seeds
        if n_seeds > 1:
            seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=size)
            stats[start : start + size] = (seed_counts * per_seed).sum(axis=1) / n_seeds
        else:
            stats[start : start + size] = per_seed[:, 0]
    low, high = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (at least two): mean +- t * sd / sqrt(n)."""
    # scipy.special, not scipy.stats: the latter takes seconds to import.
    from scipy.special import stdtrit

    values = np.asarray(values, dtype=np.float64)
    half = stdtrit(len(values) - 1, (1 + confidence) / 2) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def _normal_quantile(p: float) -> float:
    return statistics.NormalDist().inv_cdf(p)


def _mean(column: pd.Series) -> float:
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return float(np.nanmean(numbers)) if not np.isnan(numbers).all() else math.nan
