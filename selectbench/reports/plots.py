"""Report plots as pure functions of the results: each returns a matplotlib Figure (Agg, no pyplot state)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from selectbench.reports.results import REFERENCE_LABELS, Results
from selectbench.reports.selections import overlap_matrix, run_selections
from selectbench.reports.summary import CI_METHODS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 120
REFERENCE_STYLE = {"full": {"color": "black", "linestyle": "--"}, "base": {"color": "0.45", "linestyle": ":"}}
BUDGET_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class Plot:
    """A figure with the file name it is saved under and the caption shown beside it."""

    name: str
    title: str
    caption: str
    figure: Figure


def selector_colors(labels: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """One fixed colour per selector label (sorted, tab10 then tab20), the same in every plot of a report."""
    from matplotlib import colormaps

    names = sorted(set(labels) - set(REFERENCE_LABELS.values()))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def plot_metric_vs_budget(summary: pd.DataFrame, metric: str) -> Figure:
    """The metric's mean per selector against the budget, with its interval; references as horizontal lines."""
    rows = summary[summary["metric"] == metric]
    fig, ax = _figure(size=(7.6, 4.0))
    colors = selector_colors(summary["label"])
    selectors = rows[rows["kind"] == "selector"]
    budgets = sorted(int(k) for k in selectors["budget_k"].unique())
    log_x = len(budgets) > 1 and budgets[-1] / budgets[0] > 4
    labels = sorted(selectors["label"].unique())
    for i, label in enumerate(labels):
        line = selectors[selectors["label"] == label].sort_values("budget_k")
        x = line["budget_k"].to_numpy(dtype=np.float64)
        # Spread the markers of different selectors a little so their intervals do not hide each other.
        shift = (i - (len(labels) - 1) / 2) * 0.015
        x = x * (1 + shift) if log_x else x + shift * ((budgets[-1] - budgets[0]) or budgets[0])
        y = line["mean"].to_numpy()
        low, high = line["ci_low"].to_numpy(), line["ci_high"].to_numpy()
        seeds = int(line["n_seeds"].max())
        name = f"{label} ({seeds} seeds)" if seeds > 1 else label
        ax.plot(x, y, marker="o", color=colors[label], label=name, linewidth=1.6)
        finite = np.isfinite(low) & np.isfinite(high)
        if finite.any():
            yerr = np.vstack([y[finite] - low[finite], high[finite] - y[finite]])
            ax.errorbar(x[finite], y[finite], yerr=yerr, fmt="none", ecolor=colors[label], capsize=3, linewidth=1)
            if finite.sum() > 1:
                ax.fill_between(x[finite], low[finite], high[finite], color=colors[label], alpha=0.12, linewidth=0)
    for kind in ("full", "base"):
        for ref in rows[rows["kind"] == kind].itertuples():
            style = REFERENCE_STYLE[kind]
            ax.axhline(ref.mean, color=style["color"], linestyle=style["linestyle"], linewidth=1.2, label=ref.label)
    if log_x:
        ax.set_xscale("log")
    if budgets:
        ax.set_xticks(budgets)
        ax.set_xticklabels([_budget_tick(selectors, k) for k in budgets], fontsize=8)
        ax.minorticks_off()
    ax.set_xlabel("budget: selected records (as given)")
    ax.set_ylabel(f"{metric} ({_direction(rows)})")
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def plot_overlap(matrix: pd.DataFrame, budget_label: str) -> Figure:
    """Heatmap of mean Jaccard overlap between selectors at one budget, values written in the cells."""
    n = len(matrix)
    fig, ax = _figure(size=(1.6 + 0.9 * n, 1.2 + 0.8 * n))
    image = ax.imshow(matrix.to_numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(matrix.columns, rotation=30, ha="right", fontsize=9)
    ax.set_yticklabels(matrix.index, fontsize=9)
    for i in range(n):
        for j in range(n):
            value = matrix.iat[i, j]
            ax.text(
                j, i, f"{value:.2f}", ha="center", va="center", fontsize=9, color="white" if value < 0.6 else "black"
            )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Jaccard")
    ax.set_title(f"selection overlap, budget {budget_label}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_length_distributions(results: Results) -> Figure | None:
    """Box plots of selected response lengths (words) per selector, one panel per budget; None without selections."""
    frame = results.frame
    budgets = sorted(
        int(k) for k in frame[(frame["kind"] == "selector") & (frame["selection_path"] != "")]["budget_k"].unique()
    )
    if not budgets:
        return None
    reference = {k: v for k, v in run_selections(results).items() if k == REFERENCE_LABELS["full"]}
    colors = selector_colors(frame["label"])
    fig, axes = _figure(ncols=len(budgets), size=(1.0 + 3.2 * len(budgets), 4.0), sharey=True)
    for ax, k in zip(np.atleast_1d(axes), budgets, strict=True):
        groups = {**reference, **run_selections(results, k)}
        labels = list(groups)
        data = [np.concatenate([s.lengths for s in groups[label]]) for label in labels]
        box = ax.boxplot(
            data, patch_artist=True, flierprops={"markersize": 2}, medianprops={"color": "black", "linewidth": 1.2}
        )
        ax.set_xticks(range(1, len(labels) + 1))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        for patch, label in zip(box["boxes"], labels, strict=True):
            patch.set_facecolor(colors.get(label, (0.85, 0.85, 0.85, 1.0)))
            patch.set_alpha(0.6)
        ax.set_title(f"budget {_budget_tick(frame[frame['kind'] == 'selector'], k, one_line=True)}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("response length (words)")
    fig.tight_layout()
    return fig


def plot_score_distributions(results: Results) -> Figure | None:
    """Histograms of the selected records' selector scores, one panel per scoring selector, one line per budget.

    Scores live on each selector's own scale, so every panel has its own x axis. None when no selection has scores.
    """
    frame = results.frame
    budgets = sorted(
        int(k) for k in frame[(frame["kind"] == "selector") & (frame["selection_path"] != "")]["budget_k"].unique()
    )
    per_label: dict[str, dict[int, np.ndarray]] = {}
    for k in budgets:
        for label, runs in run_selections(results, k).items():
            scores = np.concatenate([s.scores for s in runs])
            scores = scores[np.isfinite(scores)]
            if len(scores):
                per_label.setdefault(label, {})[k] = scores
    if not per_label:
        return None
    from matplotlib.ticker import MaxNLocator

    colors = selector_colors(frame["label"])
    labels = sorted(per_label)
    fig, axes = _figure(ncols=len(labels), size=(1.0 + 3.2 * len(labels), 3.6))
    selectors = frame[frame["kind"] == "selector"]
    for ax, label in zip(np.atleast_1d(axes), labels, strict=True):
        pooled = np.concatenate(list(per_label[label].values()))
        # One set of bins per panel, so the budgets' histograms are comparable bar for bar.
        bins = np.histogram_bin_edges(pooled, bins=min(30, max(5, len(pooled) // 8)))
        for n, (k, scores) in enumerate(sorted(per_label[label].items())):
            ax.hist(
                scores,
                bins=bins,
                histtype="step",
                linewidth=1.5,
                color=colors[label],
                alpha=1.0 - 0.45 * n / max(1, len(per_label[label]) - 1),
                linestyle=("-", "--", ":", "-.")[n % 4],
                label=f"budget {_budget_tick(selectors, k, one_line=True)}",
            )
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("score (selector's scale)")
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    np.atleast_1d(axes)[0].set_ylabel("selected records")
    fig.tight_layout()
    return fig


def plot_cost_vs_quality(summary: pd.DataFrame, metrics: Sequence[str]) -> Figure | None:
    """Per metric, the mean (with interval) against selection + training seconds; None without any cost."""
    rows = summary[summary["metric"].isin(metrics) & summary["cost_seconds"].notna()]
    if rows.empty:
        return None
    colors = selector_colors(summary["label"])
    metrics = [m for m in metrics if m in set(rows["metric"])]
    fig, axes = _figure(ncols=len(metrics), size=(1.0 + 3.6 * len(metrics), 4.0))
    budgets = sorted(int(k) for k in rows[rows["kind"] == "selector"]["budget_k"].dropna().unique())
    markers = {k: BUDGET_MARKERS[i % len(BUDGET_MARKERS)] for i, k in enumerate(budgets)}
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        part = rows[rows["metric"] == metric]
        for row in part.itertuples():
            if row.kind == "selector":
                color, marker = colors[row.label], markers[int(row.budget_k)]
            else:
                color, marker = REFERENCE_STYLE[row.kind]["color"], "*"
            yerr = None
            if math.isfinite(row.ci_low):
                yerr = [[row.mean - row.ci_low], [row.ci_high - row.mean]]
            ax.errorbar([row.cost_seconds], [row.mean], yerr=yerr, fmt=marker, color=color, capsize=3, markersize=7)
        for ref in summary[(summary["metric"] == metric) & (summary["kind"] == "base")].itertuples():
            ax.axhline(ref.mean, **REFERENCE_STYLE["base"], linewidth=1.2)
        costs = part["cost_seconds"].to_numpy(dtype=np.float64)
        if (costs > 0).all() and costs.max() / costs.min() > 10:
            ax.set_xscale("log")
        ax.set_xlabel("selection + training time (s)")
        ax.set_ylabel(f"{metric} ({_direction(part)})")
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3)
    _cost_legend(fig, colors, markers, summary)
    width = fig.get_size_inches()[0]
    fig.tight_layout(rect=(0, 0, 1 - 1.7 / width, 1))
    return fig


def plot_differences(comparisons: pd.DataFrame, metric: str, baseline: str) -> Figure:
    """Each selector's paired difference from ``baseline`` with its interval, one group of bars per budget; the
    marker says the verdict (filled: significant after Holm; open: not)."""
    rows = comparisons[(comparisons["metric"] == metric) & (comparisons["baseline"] == baseline)]
    fig, ax = _figure(size=(7.6, 3.8))
    colors = selector_colors(rows["selector"])
    budgets = sorted(int(k) for k in rows["budget_k"].unique())
    labels = sorted(rows["selector"].unique())
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        line = rows[rows["selector"] == label]
        for row in line.to_dict("records"):
            x = budgets.index(int(row["budget_k"])) + (i - (len(labels) - 1) / 2) * width
            significant = row["verdict"] in ("better", "worse")
            if np.isfinite(row["ci_low"]):
                ax.plot([x, x], [row["ci_low"], row["ci_high"]], color=colors[label], linewidth=2)
            ax.plot(
                x,
                row["delta"],
                marker="o",
                markersize=7,
                color=colors[label],
                markerfacecolor=colors[label] if significant else "white",
                linestyle="",
            )
        ax.plot([], [], marker="o", color=colors[label], linestyle="", label=label)
    ax.axhline(0.0, color="0.3", linewidth=1)
    ax.set_xticks(range(len(budgets)))
    ax.set_xticklabels([str(k) for k in budgets])
    ax.set_xlabel("budget: selected records")
    higher = "higher" if bool(rows["higher_is_better"].iloc[0]) else "lower"
    ax.set_ylabel(f"Δ vs {baseline} ({higher} is better)")
    ax.set_title(f"{metric}: paired difference from {baseline}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def make_plots(results: Results, summary: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> list[Plot]:
    """Every plot of a report, in display order, each with a file name and a caption."""
    from selectbench.reports.compare import primary_baseline

    plots = []
    methods = ", ".join(sorted({CI_METHODS[m] for m in summary["ci_method"] if m != "none"})) or "none available"
    metrics = list(dict.fromkeys(summary["metric"]))
    main = [m for m in metrics if not m.startswith("intrinsic/")]
    intrinsic = [m for m in metrics if m.startswith("intrinsic/")]
    for metric in main + intrinsic:
        if not (summary[(summary["metric"] == metric) & (summary["kind"] == "selector")]).size:
            continue
        what = "a property of the selected records (from the pool's labels)" if metric in intrinsic else "quality"
        plots.append(
            Plot(
                name=f"metric_vs_budget-{_slug(metric)}.png",
                title=f"{metric} vs budget",
                caption=(
                    f"{metric}, {what}, against the budget, per selector: the mean over seeds with its "
                    f"{int(100 * _confidence(summary))}% interval ({methods}). Full pool and base model as "
                    f"horizontal lines. {_direction(summary[summary['metric'] == metric]).capitalize()}."
                ),
                figure=plot_metric_vs_budget(summary, metric),
            )
        )
    comparisons = comparisons if comparisons is not None else pd.DataFrame(columns=["metric", "baseline"])
    baseline = primary_baseline(comparisons)
    for metric in main + intrinsic:
        part = comparisons[(comparisons["metric"] == metric) & (comparisons["baseline"] == baseline)]
        if baseline is None or part.empty:
            continue
        plots.append(
            Plot(
                name=f"differences-{_slug(metric)}.png",
                title=f"{metric}: difference from {baseline}",
                caption=(
                    f"Each selector's paired difference in {metric} from {baseline} at the same budget (same eval "
                    f"items, seeds resampled), with its {int(100 * _confidence(summary))}% interval. Filled marker: "
                    "significant after the Holm adjustment; open: not. Zero = no difference."
                ),
                figure=plot_differences(part.assign(higher_is_better=_higher(summary, metric)), metric, baseline),
            )
        )
    frame = results.frame
    selectors = frame[(frame["kind"] == "selector") & (frame["selection_path"] != "")]
    for k in sorted(int(k) for k in selectors["budget_k"].unique()):
        selections = run_selections(results, k)
        if len(selections) < 2:
            continue
        label = _budget_tick(selectors, k, one_line=True)
        plots.append(
            Plot(
                name=f"overlap-k{k}.png",
                title=f"Selection overlap at budget {label}",
                caption=(
                    f"Jaccard overlap |A∩B| / |A∪B| of the records selected at budget {label}. Off the diagonal, "
                    "the mean over all pairs of seeds; on the diagonal, a selector's mean overlap between its own "
                    "seeds (1.00 for a single seed)."
                ),
                figure=plot_overlap(overlap_matrix(selections), label),
            )
        )
    optional = (
        (
            plot_length_distributions(results),
            "length_distributions.png",
            "Response lengths of the selected records",
            "Response length in words (the `longest` selector's measure) of the selected records, per selector and "
            "budget; seeds pooled. Boxes span the quartiles, whiskers 1.5 IQR.",
        ),
        (
            plot_score_distributions(results),
            "score_distributions.png",
            "Selector scores of the selected records",
            "Histogram of each scoring selector's own score over the records it selected, per budget; each panel "
            "has its own scale.",
        ),
        (
            plot_cost_vs_quality(summary, main),
            "cost_vs_quality.png",
            "Cost vs quality",
            "Each selector run's mean metric (with its interval) against its selection + fine-tuning wall time, "
            "averaged over seeds; colour = selector, marker = budget, star = full pool, dotted line = base model.",
        ),
    )
    plots += [Plot(name, title, caption, figure) for figure, name, title, caption in optional if figure is not None]
    return plots


def _figure(ncols: int = 1, size: tuple[float, float] = (6.4, 4.0), sharey: bool = False) -> tuple[Figure, object]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI)
    axes = fig.subplots(1, ncols, sharey=sharey, squeeze=True)
    return fig, axes


def _cost_legend(fig: Figure, colors: dict, markers: dict, summary: pd.DataFrame) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=label) for label, c in colors.items()]
    selectors = summary[summary["kind"] == "selector"]
    handles += [
        Line2D(
            [], [], color="0.3", marker=m, linestyle="", label=f"budget {_budget_tick(selectors, k, one_line=True)}"
        )
        for k, m in markers.items()
    ]
    if (summary["kind"] == "full").any():
        handles.append(Line2D([], [], color="black", marker="*", linestyle="", label="full pool"))
    if (summary["kind"] == "base").any():
        handles.append(Line2D([], [], **REFERENCE_STYLE["base"], label="base model"))
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)


def _budget_tick(rows: pd.DataFrame, k: int, one_line: bool = False) -> str:
    given = [str(b) for b in dict.fromkeys(rows[rows["budget_k"] == k]["budget"]) if b]
    if not given or given == [str(k)]:
        return str(k)
    return f"{k} ({'/'.join(given)})" if one_line else f"{k}\n({'/'.join(given)})"


def _higher(summary: pd.DataFrame, metric: str) -> bool:
    return bool(summary[summary["metric"] == metric]["higher_is_better"].iloc[0])


def _direction(rows: pd.DataFrame) -> str:
    return "higher is better" if bool(rows["higher_is_better"].iloc[0]) else "lower is better"


def _confidence(summary: pd.DataFrame) -> float:
    return float(summary.attrs.get("confidence", 0.95))


def _slug(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric.replace("/", "-").replace("@", "_at_"))
