"""``selectbench report RUN_DIR [RUN_DIR ...]``: merge runs into one leaderboard and write the report folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from selectbench.errors import SelectbenchError


def add_parser(subparsers: Any) -> None:
    """Add the ``report`` subcommand."""
    parser = subparsers.add_parser(
        "report",
        help="merge run folders into one leaderboard, plots and a self-contained index.html",
        description=(
            "Read each RUN_DIR's results.csv (and the per-item results and selections it points to), refuse runs "
            "whose fine-tuning recipe, evaluation config, model or pool differ, print the leaderboard and write "
            "leaderboard.md, index.html, summary.csv, comparisons.csv (each selector's paired difference from each "
            "baseline, with a verdict) and plots/ to --out."
        ),
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="a run folder holding results.csv (or the file)"
    )
    parser.add_argument("--out", help="report folder (default: RUN_DIR/report with one run; required with several)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval coverage (default 0.95)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (default 2000)")
    parser.add_argument(
        "--compare-to",
        default="random,full,base",
        metavar="LABELS",
        help="baselines of the paired comparisons, comma-separated, in order (default random,full,base); the first "
        "present is the leaderboard's Δ column",
    )
    parser.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Run ``selectbench report``."""
    from selectbench.reports import load_results, render_leaderboard_text, results_file, summarize, write_report_files
    from selectbench.reports.compare import compare

    if not 0 < args.confidence < 1:
        raise SelectbenchError(f"--confidence must be in (0, 1), e.g. 0.95; got {args.confidence}")
    if args.bootstrap < 100:
        raise SelectbenchError(f"--bootstrap must be at least 100 replicates; got {args.bootstrap}")
    if args.out:
        out = Path(args.out)
    elif len(args.run_dirs) == 1:
        out = results_file(args.run_dirs[0]).parent / "report"
    else:
        raise SelectbenchError(
            f"{len(args.run_dirs)} run folders given: say where the merged report goes with --out DIR"
        )
    results = load_results(args.run_dirs)
    summary = summarize(results, confidence=args.confidence, n_boot=args.bootstrap)
    baselines = [label.strip() for label in args.compare_to.split(",") if label.strip()]
    if not baselines:
        raise SelectbenchError("--compare-to: name at least one baseline, e.g. random")
    comparisons = compare(results, baselines=baselines, confidence=args.confidence)
    written = write_report_files(results, summary, out, comparisons)
    print(render_leaderboard_text(results, summary, comparisons), end="")
    plots = sum(1 for name in written if name.startswith("plots/"))
    print(f"\nreport: {written['index.html']} ({plots} plots), {written['leaderboard.md']}", file=sys.stderr)
    return 0
