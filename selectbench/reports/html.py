"""The self-contained ``index.html``: leaderboard tables and every plot embedded as a base64 PNG, no external files."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

import pandas as pd

from selectbench.reports.compare import compare, overall, primary_baseline
from selectbench.reports.leaderboard import (
    DELTA_LEGEND,
    TABLE_COLUMNS,
    comparison_cells,
    delta_cell,
    leaderboard_sections,
    metric_decimals,
    provenance,
    table_headers,
)
from selectbench.reports.results import Results
from selectbench.reports.summary import CI_METHODS

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2127; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 8px 0 4px; } h2 { font-size: 20px; margin-top: 36px; border-bottom: 1px solid #dde1e6; }
h3 { font-size: 16px; margin: 26px 0 8px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 13px; color: #3c4450; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
table { border-collapse: collapse; font-size: 13.5px; margin: 6px 0 10px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e6e9ed; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; font-weight: 600; }
.name, .budget, .text { text-align: left; }
tr.first td { border-top: 2px solid #c9ced6; } tr.ref td { color: #59616c; font-style: italic; }
tr.top td.name { font-weight: 700; }
figure { margin: 22px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e6e9ed; }
figcaption { font-size: 13px; color: #3c4450; max-width: 860px; margin-top: 4px; }
nav a { margin-right: 14px; font-size: 13px; } .notes li { font-size: 13px; }
"""


def render_html(
    results: Results,
    summary: pd.DataFrame,
    plots: Sequence[tuple[str, str, str, bytes]],
    comparisons: pd.DataFrame | None = None,
) -> str:
    """The report page.

    Args:
        results: the merged results (for provenance and notes).
        summary: the summarize() table.
        plots: (file name, title, caption, PNG bytes) per plot, in display order.
        comparisons: the compare() table (computed here when not given).

    Returns:
        One HTML document with no external resource: styles inline, images as ``data:image/png;base64`` URIs.
    """
    confidence = round(100 * summary.attrs.get("confidence", 0.95))
    comparisons = compare(results) if comparisons is None else comparisons
    baseline = primary_baseline(comparisons)
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>selectbench report</title>",
        f"<style>{STYLE}</style></head><body><main>",
        "<h1>selectbench report</h1>",
        '<nav><a href="#leaderboard">Leaderboard</a><a href="#comparisons">Paired comparisons</a>'
        '<a href="#plots">Plots</a></nav>',
        '<dl class="meta">',
    ]
    parts += [f"<dt>{esc(name)}</dt><dd>{esc(value)}</dd>" for name, value in provenance(results)]
    parts += [
        "</dl>",
        '<h2 id="leaderboard">Leaderboard</h2>',
        f"<p>Mean over seeds with its {confidence}% interval; selectors ranked per budget (ties share a rank), "
        "references below. Cost is selection + fine-tuning wall time in seconds, averaged over seeds. "
        f"{esc(DELTA_LEGEND.format(baseline=baseline or 'a baseline'))}</p>",
    ]
    headers = table_headers(confidence, baseline)
    for section in leaderboard_sections(summary, comparisons):
        parts.append(f"<h3>{esc(section.metric)} <small>({esc(section.direction)})</small></h3>")
        parts.append("<table><thead><tr>")
        parts += [f'<th class="{_cls(c)}">{esc(h)}</th>' for c, h in zip(TABLE_COLUMNS, headers, strict=True)]
        parts.append("</tr></thead><tbody>")
        for row in section.rows:
            classes = []
            if row["budget"]:
                classes.append("first")
            if not row["rank"]:
                classes.append("ref")
            if row["rank"] == "1":
                classes.append("top")
            parts.append(f'<tr class="{" ".join(classes)}">')
            parts += [f'<td class="{_cls(c)}">{esc(row[c])}</td>' for c in TABLE_COLUMNS]
            parts.append("</tr>")
        parts.append("</tbody></table>")
    used = [m for m in CI_METHODS if m in set(summary["ci_method"])]
    parts.append("<p>CI from: " + "; ".join(f"<b>{esc(m)}</b>: {esc(CI_METHODS[m])}" for m in used) + ".</p>")
    if results.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in results.notes) + "</ul>")
    parts += _comparison_tables(summary, comparisons)
    parts.append('<h2 id="plots">Plots</h2>')
    for name, title, caption, png in plots:
        data = base64.b64encode(png).decode("ascii")
        parts += [
            f'<figure id="{esc(name)}">',
            f"<h3>{esc(title)}</h3>",
            f'<img src="data:image/png;base64,{data}" alt="{esc(title)}">',
            f"<figcaption>{esc(caption)}</figcaption>",
            "</figure>",
        ]
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _comparison_tables(summary: pd.DataFrame, comparisons: pd.DataFrame) -> list[str]:
    """The paired comparisons (one table per metric) and the overall wins/ties/losses and mean ranks."""
    esc = html.escape
    parts = ['<h2 id="comparisons">Paired comparisons</h2>']
    if comparisons.empty:
        return [*parts, "<p>No baseline run (random, full or base) to compare with.</p>"]
    parts.append(
        "<p>Each selector against each baseline at the same budget, paired over eval items and seeds; p-values "
        f"Holm-adjusted per metric (alpha {comparisons.attrs.get('alpha', 0.05)}). <i>detectable</i>: the smallest "
        "true difference found with 80% power.</p>"
    )
    headers = ["budget", "selector", "vs", "Δ (interval)", "p", "p (Holm)", "verdict", "items", "seeds", "detectable"]
    for metric, part in comparisons.groupby("metric", sort=False):
        decimals = metric_decimals(summary[summary["metric"] == metric])
        parts.append(f"<h3>{esc(metric)}</h3><table><thead><tr>")
        parts += [f"<th>{esc(h)}</th>" for h in headers]
        parts.append("</tr></thead><tbody>")
        for row in part.to_dict("records"):
            c = comparison_cells(row, decimals)
            cells = [str(row["budget_k"]), row["selector"], row["baseline"], delta_cell(row, decimals)]
            cells += [c["p"], c["p_adjusted"], c["verdict"], str(row["n_items"]), c["seeds"], c["extra"]]
            parts.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
        parts.append("</tbody></table>")
    view = overall(summary, comparisons)
    parts.append(f"<h3>Overall (against {esc(str(view.attrs['baseline']))})</h3><table><thead><tr>")
    parts += [f"<th>{h}</th>" for h in ("selector", "wins", "ties", "losses", "mean rank", "95% interval")]
    parts.append("</tr></thead><tbody>")
    for row in view.to_dict("records"):
        interval = "—" if pd.isna(row["rank_low"]) else f"{row['rank_low']:.2f} – {row['rank_high']:.2f}"
        cells = [row["selector"], row["wins"], row["ties"], row["losses"], f"{row['mean_rank']:.2f}", interval]
        parts.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
    parts.append("</tbody></table>")
    return parts


def _cls(column: str) -> str:
    return {"selector": "name", "budget": "budget", "ci_from": "text"}.get(column, "")
