"""The leaderboard: selectors ranked per metric at each budget, with references, as Markdown and terminal text."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from selectbench.reports.compare import MARKS, compare, primary_baseline, verdict_lines
from selectbench.reports.results import Results, load_results
from selectbench.reports.summary import CI_METHODS, summarize, underfilled

# Columns of every leaderboard table, in order.
TABLE_COLUMNS = ("budget", "rank", "selector", "mean", "ci", "ci_from", "seeds", "items", "cost", "delta")


@dataclass(frozen=True)
class Section:
    """One metric's table: formatted cells per row (keys ``TABLE_COLUMNS``), selector rows ranked per budget."""

    metric: str
    higher_is_better: bool
    rows: list[dict[str, str]]

    @property
    def direction(self) -> str:
        """``higher is better`` or ``lower is better``."""
        return "higher is better" if self.higher_is_better else "lower is better"


def rank_selectors(summary: pd.DataFrame, metric: str, budget_k: int) -> pd.DataFrame:
    """Selector rows of one metric at one budget, best first, with a ``rank`` column (ties share a rank).

    A selector that could not fill the budget is not ranked among those that did (rank 0, listed last): it
    trained on less data, so its place would compare unequal budgets.
    """
    rows = summary[(summary["metric"] == metric) & (summary["kind"] == "selector") & (summary["budget_k"] == budget_k)]
    if rows.empty:
        return rows.assign(rank=pd.Series(dtype=int))
    higher = bool(rows["higher_is_better"].iloc[0])
    # Rounded so that a mean over seeds equal to another value up to float noise counts as a tie.
    key = rows["mean"].round(12)
    short = underfilled(rows)
    rows = rows.assign(_key=key, _short=short).sort_values(
        ["_short", "_key", "label"], ascending=[True, not higher, True], kind="stable"
    )
    full = rows[~rows["_short"]]
    ranks = (-full["_key"] if higher else full["_key"]).rank(method="min").astype(int)
    rank = pd.Series(0, index=rows.index)
    rank[full.index] = ranks
    return rows.drop(columns=["_key", "_short"]).assign(rank=rank.to_numpy())


def leaderboard_sections(summary: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> list[Section]:
    """One Section per metric (quality metrics first, then intrinsic/*), budgets ascending, references last.

    With ``comparisons`` (:func:`selectbench.reports.compare.compare`), each selector row's ``delta`` cell holds
    its paired difference from the primary baseline at that budget with the verdict's mark.
    """
    deltas = _delta_cells(summary, comparisons)
    metrics = list(dict.fromkeys(summary["metric"]))
    metrics = [m for m in metrics if not m.startswith("intrinsic/")] + [
        m for m in metrics if m.startswith("intrinsic/")
    ]
    sections = []
    for metric in metrics:
        part = summary[summary["metric"] == metric]
        decimals = metric_decimals(part)
        rows = []
        budgets = sorted(int(k) for k in part[part["kind"] == "selector"]["budget_k"].dropna().unique())
        for k in budgets:
            for n, row in enumerate(rank_selectors(summary, metric, k).to_dict("records")):
                given = row["budget"]
                budget = (f"{k} ({given})" if given and given != str(k) else str(k)) if n == 0 else ""
                name = row["label"]
                if row["rank"] == 0:  # could not fill the budget: shown, not ranked
                    name = f"{name} ({row['n_selected']} of {k})"
                cells = _cells(row, budget, str(row["rank"] or "—"), name, decimals)
                cells["delta"] = deltas.get((metric, k, row["label"]), "—")
                rows.append(cells)
        references = pd.concat([part[part["kind"] == kind] for kind in ("full", "base")])
        for n, row in enumerate(references.to_dict("records")):
            name = row["label"] + (f" (k={row['budget_k']})" if not pd.isna(row["budget_k"]) else "")
            cells = _cells(row, "references" if n == 0 else "", "", name, decimals)
            cells["delta"] = deltas.get((metric, None, row["label"]), "—")
            rows.append(cells)
        sections.append(Section(metric, bool(part["higher_is_better"].iloc[0]), rows))
    return sections


def provenance(results: Results) -> list[tuple[str, str]]:
    """(name, value) lines saying what a report compares: runs, model, recipe and eval hashes, pool, grid."""
    frame = results.frame

    def distinct(column: str, rows: pd.DataFrame = frame) -> str:
        values = [str(v) for v in dict.fromkeys(rows[column]) if str(v) not in ("", "<NA>", "nan")]
        return ", ".join(values) or "—"

    selectors = frame[frame["kind"] == "selector"]
    lines = [
        ("runs", ", ".join(str(d) for d in results.run_dirs)),
        ("model", distinct("model")),
        ("fine-tuning recipe hash", distinct("recipe_hash", frame[frame["kind"] != "base"])),
        ("evaluation config hash", distinct("eval_config_hash")),
    ]
    if (frame["pool_fingerprint"] != "").any():
        lines.append(("pool fingerprint", distinct("pool_fingerprint")))
    lines += [
        ("selectors", ", ".join(sorted(set(selectors["label"])))),
        ("budgets (records)", ", ".join(str(k) for k in sorted(set(selectors["budget_k"].dropna())))),
        ("seeds", ", ".join(str(s) for s in sorted(set(frame["seed"])))),
    ]
    return lines


def leaderboard_markdown(
    results: Results,
    summary: pd.DataFrame,
    plot_files: Sequence[str] = (),
    comparisons: pd.DataFrame | None = None,
) -> str:
    """The whole ``leaderboard.md``: provenance, one ranked table per metric (with the paired difference from the
    primary baseline), the paired comparisons and the overall view, interval methods, notes, plots."""
    confidence = round(100 * summary.attrs.get("confidence", 0.95))
    comparisons = compare(results) if comparisons is None else comparisons
    baseline = primary_baseline(comparisons)
    out = ["# selectbench leaderboard", ""]
    out += [f"- **{name}**: {value}" for name, value in provenance(results)]
    out += [
        "",
        f"Mean over seeds with its {confidence}% interval; selectors ranked per budget (ties share a rank). "
        "Cost is selection + fine-tuning wall time in seconds, averaged over seeds. "
        f"{DELTA_LEGEND.format(baseline=baseline or 'a baseline')}",
        "",
    ]
    header = table_headers(confidence, baseline)
    for section in leaderboard_sections(summary, comparisons):
        out += [f"## {section.metric} ({section.direction})", ""]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join(["---", "--:", "---", "--:", ":-:", "---", "--:", "--:", "--:", ":-:"]) + "|")
        for row in section.rows:
            out.append("| " + " | ".join(_md(row[c]) for c in TABLE_COLUMNS) + " |")
        out.append("")
    out += comparisons_markdown(summary, comparisons)
    used = [m for m in CI_METHODS if m in set(summary["ci_method"])]
    out += ["## How the intervals are computed", ""]
    out += [f"- `{m}`: {CI_METHODS[m]}" for m in used]
    out.append("")
    if results.notes:
        out += ["## Notes", ""] + [f"- {note}" for note in results.notes] + [""]
    if plot_files:
        out += ["## Plots", ""] + [f"![{name}]({name})" for name in plot_files] + [""]
    return "\n".join(out)


def render_leaderboard_text(
    results: Results | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    summary: pd.DataFrame | None = None,
    comparisons: pd.DataFrame | None = None,
) -> str:
    """The leaderboard as plain text for a terminal: per metric, each budget's selectors ranked (with the paired
    difference from the primary baseline and its mark), then references; last, what the verdicts say.

    Args:
        results: loaded Results, or one or more run folders (each holding results.csv).
        summary: the summarize() table, when the caller has computed it already.
        comparisons: the compare() table, likewise.
    """
    if not isinstance(results, Results):
        results = load_results([results] if isinstance(results, (str, os.PathLike)) else list(results))
    summary = summarize(results) if summary is None else summary
    comparisons = compare(results) if comparisons is None else comparisons
    baseline = primary_baseline(comparisons)
    confidence = round(100 * summary.attrs.get("confidence", 0.95))
    lines = []
    for section in leaderboard_sections(summary, comparisons):
        lines.append(f"{section.metric}  ({section.direction}; mean [{confidence}% CI])")
        name_width = max(len(row["selector"]) for row in section.rows)
        mean_width = max(len(row["mean"]) for row in section.rows)
        for row in section.rows:
            if row["budget"]:
                lines.append(f"  budget {row['budget']}" if row["budget"] != "references" else "  references")
            seeds = f"  {row['seeds']} seeds" if row["seeds"] not in ("1", "") else ""
            ci = f"  [{row['ci']}]" if row["ci"] != "—" else ""
            delta = f"  Δ {row['delta']}" if row["delta"] not in ("—", "baseline") else ""
            lines.append(
                f"    {row['rank']:>2}  {row['selector']:<{name_width}}  {row['mean']:>{mean_width}}{ci}{seeds}{delta}"
            )
        lines.append("")
    if baseline is not None:
        lines.append(
            f"paired comparisons with {baseline} (Holm-adjusted, alpha {comparisons.attrs.get('alpha', 0.05)}):"
        )
        lines += [f"  {line}" for line in verdict_lines(comparisons, baseline)]
        lines.append("")
    lines += [f"note: {note}" for note in results.notes]
    return "\n".join(lines).rstrip() + "\n"


def table_headers(confidence: int, baseline: str | None = None) -> list[str]:
    """Column headers of a leaderboard table (``TABLE_COLUMNS`` order)."""
    delta = f"Δ vs {baseline}" if baseline else "Δ"
    return ["budget", "rank", "selector", "mean", f"{confidence}% CI", "CI from", "seeds", "items", "cost (s)", delta]


DELTA_LEGEND = (
    "Δ is the paired difference from {baseline} at the same budget (same eval items, seeds resampled), with its "
    "interval: ▲ better, ▼ worse (Holm-adjusted p < alpha), ≈ no significant difference."
)


def delta_cell(row: dict, decimals: int) -> str:
    """``▲ -0.021 (-0.027 – -0.016)``: the verdict's mark, the difference and its interval."""
    mark = MARKS.get(row["verdict"], "")
    delta = f"{row['delta']:+.{decimals}f}"
    if math.isnan(row["ci_low"]):
        return f"{delta} (no test)"
    return f"{mark} {delta} ({row['ci_low']:+.{decimals}f} – {row['ci_high']:+.{decimals}f})"


def _delta_cells(summary: pd.DataFrame, comparisons: pd.DataFrame | None) -> dict[tuple, str]:
    """{(metric, budget_k, label): cell} against the primary baseline; the baseline's own rows say so."""
    if comparisons is None or comparisons.empty:
        return {}
    baseline = primary_baseline(comparisons)
    cells: dict[tuple, str] = {}
    for metric, part in comparisons[comparisons["baseline"] == baseline].groupby("metric", sort=False):
        decimals = metric_decimals(summary[summary["metric"] == metric])
        for row in part.to_dict("records"):
            cells[(metric, int(row["budget_k"]), row["selector"])] = delta_cell(row, decimals)
            cells.setdefault((metric, int(row["budget_k"]), baseline), "baseline")
    return cells


def comparison_cells(row: dict, decimals: int) -> dict[str, str]:
    """The cells of one comparison row that every rendering shows alike: p-values, verdict, seeds, and the
    detectable difference (or the note that replaces it)."""
    detectable = "" if math.isnan(row["detectable"]) else f"{row['detectable']:.{decimals + 1}f}"
    return {
        "p": "—" if math.isnan(row["p_value"]) else f"{row['p_value']:.3g}",
        "p_adjusted": "—" if math.isnan(row["p_adjusted"]) else f"{row['p_adjusted']:.3g}",
        "verdict": f"{MARKS[row['verdict']]} {row['verdict']}" if row["verdict"] else "no verdict",
        "seeds": f"{row['n_seeds']} vs {row['baseline_seeds']}",
        "extra": row["note"] or detectable,
    }


def comparisons_markdown(summary: pd.DataFrame, comparisons: pd.DataFrame) -> list[str]:
    """The ``Paired comparisons`` and ``Overall`` sections of leaderboard.md."""
    from selectbench.reports.compare import overall

    if comparisons.empty:
        return ["## Paired comparisons", "", "No baseline run (random, full or base) to compare with.", ""]
    alpha = comparisons.attrs.get("alpha", 0.05)
    out = [
        "## Paired comparisons",
        "",
        f"Each selector against each baseline at the same budget; p-values Holm-adjusted per metric, verdict at "
        f"alpha = {alpha}. *detectable* is the smallest true difference the comparison finds with 80% power "
        "(from the observed paired variance): an `n.s.` row says no difference of at least that size.",
        "",
    ]
    for metric, part in comparisons.groupby("metric", sort=False):
        decimals = metric_decimals(summary[summary["metric"] == metric])
        out += [f"### {metric}", ""]
        out.append(
            "| budget | selector | vs | Δ | interval | p | p (Holm) | verdict | items | seeds | detectable / note |"
        )
        out.append("|--:|---|---|--:|:-:|--:|--:|:-:|--:|--:|---|")
        for row in part.to_dict("records"):
            interval = (
                "—" if math.isnan(row["ci_low"]) else f"{row['ci_low']:+.{decimals}f} – {row['ci_high']:+.{decimals}f}"
            )
            c = comparison_cells(row, decimals)
            cells = [str(row["budget_k"]), _md(row["selector"]), _md(row["baseline"]), f"{row['delta']:+.{decimals}f}"]
            cells += [
                interval,
                c["p"],
                c["p_adjusted"],
                c["verdict"],
                str(row["n_items"]),
                c["seeds"],
                _md(c["extra"]),
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    view = overall(summary, comparisons)
    out += [
        f"## Overall (against {view.attrs['baseline']})",
        "",
        "Wins, ties and losses are verdicts over every metric and budget; mean rank is over the (metric, budget) "
        "cells a selector ran in (1 = best), its interval from resampling the cells.",
        "",
        "| selector | wins | ties | losses | no verdict | mean rank | 95% interval | cells |",
        "|---|--:|--:|--:|--:|--:|:-:|--:|",
    ]
    for row in view.to_dict("records"):
        interval = "—" if math.isnan(row["rank_low"]) else f"{row['rank_low']:.2f} – {row['rank_high']:.2f}"
        out.append(
            f"| {_md(row['selector'])} | {row['wins']} | {row['ties']} | {row['losses']} | {row['untested']} "
            f"| {row['mean_rank']:.2f} | {interval} | {row['cells']} |"
        )
    out.append("")
    return out


def _cells(row: dict, budget: str, rank: str, name: str, decimals: int) -> dict[str, str]:
    ci = "—" if math.isnan(row["ci_low"]) else f"{row['ci_low']:.{decimals}f} – {row['ci_high']:.{decimals}f}"
    cost = row["cost_seconds"]
    return {
        "budget": budget,
        "rank": rank,
        "selector": name,
        "mean": f"{row['mean']:.{decimals}f}",
        "ci": ci,
        "ci_from": "—" if row["ci_method"] == "none" else row["ci_method"],
        "seeds": str(row["n_seeds"]),
        "items": str(row["n_items"]),
        "cost": "—" if pd.isna(cost) else f"{cost:.3g}",
        "delta": "—",
    }


def metric_decimals(rows: pd.DataFrame) -> int:
    """Three decimals below 10, fewer for larger numbers, one scale per metric so a column lines up."""
    biggest = float(rows["mean"].abs().max())
    return 3 if biggest < 10 else 2 if biggest < 100 else 1


def _md(text: str) -> str:
    return text.replace("|", "\\|")
