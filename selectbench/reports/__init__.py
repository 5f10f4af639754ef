"""Reports: leaderboard, plots and a self-contained HTML page, all pure functions of the runs' results.csv."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from selectbench.reports.results import Results

# Public names and the modules they live in; imported on first use, because the CLI imports this package to build
# its parser and pandas/matplotlib should load only when a report is made.
_EXPORTS = {
    "COLUMNS": "selectbench.reports.columns",
    "RESULTS_FILE": "selectbench.reports.results",
    "Results": "selectbench.reports.results",
    "items_path": "selectbench.reports.results",
    "load_results": "selectbench.reports.results",
    "read_results": "selectbench.reports.results",
    "results_file": "selectbench.reports.results",
    "write_items": "selectbench.reports.results",
    "write_results": "selectbench.reports.results",
    "summarize": "selectbench.reports.summary",
    "render_leaderboard_text": "selectbench.reports.leaderboard",
    "COMPARISON_COLUMNS": "selectbench.reports.compare",
}
__all__ = [*_EXPORTS, "write_report_files", "write_reports"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PLOTS_DIR = "plots"


def write_reports(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    compare_to: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Merge the runs' results.csv and write the report folder.

    Args:
        run_dirs: run folders (each holding results.csv, items/ and the selections it points to), or results.csv
            paths.
        out_dir: the report folder: ``leaderboard.md``, ``index.html``, ``summary.csv``, ``comparisons.csv``,
            ``plots/*.png``, ``meta.json`` and ``DONE`` (written last).
        confidence: coverage of the intervals.
        n_boot: bootstrap replicates.
        compare_to: the baselines of the paired comparisons, in order (default ``random``, ``full``, ``base``);
            the first one present is the leaderboard's Δ column.

    Returns:
        {file name relative to out_dir: path written}.

    Raises:
        SelectbenchError: a results file is invalid, or the runs differ in recipe, evaluation config, model or pool.
    """
    from selectbench.reports.compare import DEFAULT_BASELINES, compare
    from selectbench.reports.results import load_results
    from selectbench.reports.summary import summarize

    results = load_results(run_dirs)
    summary = summarize(results, confidence=confidence, n_boot=n_boot)
    comparisons = compare(results, baselines=tuple(compare_to or DEFAULT_BASELINES), confidence=confidence)
    return write_report_files(results, summary, out_dir, comparisons)


def write_report_files(
    results: Results,
    summary: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    comparisons: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write the report of already loaded results, their summarize() table and their compare() table (computed
    here when not given; see write_reports)."""
    from selectbench.artifacts import META_FILE, StageFolder
    from selectbench.io import versions
    from selectbench.reports.compare import COMPARISON_COLUMNS, compare
    from selectbench.reports.html import render_html
    from selectbench.reports.leaderboard import leaderboard_markdown
    from selectbench.reports.plots import DPI, make_plots
    from selectbench.reports.results import results_file

    start = time.perf_counter()
    comparisons = compare(results) if comparisons is None else comparisons
    stage = StageFolder(out_dir)
    out = stage.begin()
    plots_dir = out / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    rendered = []
    for plot in make_plots(results, summary, comparisons):
        buffer = io.BytesIO()
        plot.figure.savefig(buffer, format="png", dpi=DPI)
        png = buffer.getvalue()
        with stage.open(f"{PLOTS_DIR}/{plot.name}", "wb") as handle:
            handle.write(png)
        written[f"{PLOTS_DIR}/{plot.name}"] = plots_dir / plot.name
        rendered.append((plot.name, plot.title, plot.caption, png))
    # Plots of an earlier report that this one no longer makes would mislead a reader of the folder.
    for stale in plots_dir.glob("*.png"):
        if f"{PLOTS_DIR}/{stale.name}" not in written:
            stale.unlink()
    files = {
        "leaderboard.md": leaderboard_markdown(results, summary, list(written), comparisons),
        "index.html": render_html(results, summary, rendered, comparisons),
        "summary.csv": summary.to_csv(index=False, lineterminator="\n"),
        "comparisons.csv": comparisons[list(COMPARISON_COLUMNS)].to_csv(index=False, lineterminator="\n"),
    }
    for name, text in files.items():
        with stage.open(name) as handle:
            handle.write(text)
        written[name] = out / name
    meta = {
        "stage": "report",
        "runs": [
            {
                "dir": str(run_dir),
                "results_sha256": hashlib.sha256(results_file(run_dir).read_bytes()).hexdigest(),
            }
            for run_dir in results.run_dirs
        ],
        "rows": len(results.frame),
        "confidence": summary.attrs.get("confidence"),
        "n_boot": summary.attrs.get("n_boot"),
        "notes": results.notes,
        "files": sorted(written),
        "seconds": time.perf_counter() - start,
        "versions": versions("pandas", "matplotlib", "scipy"),
    }
    stage.finish(meta)
    written[META_FILE] = stage / META_FILE
    return written
