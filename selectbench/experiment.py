"""Experiments: the embedded demo. This build runs its selection stage; later stages join as they land."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DEMO = {
    "pool": "demo",
    "budgets": [0.1, 0.25],
    "selectors": [
        {"name": "random", "params": {}, "seeds": [0, 1, 2]},
        {"name": "longest", "params": {"unit": "words"}, "seeds": [0]},
    ],
}


def cell_dir(out: Path, selector: str, budget: float | int, seed: int) -> Path:
    """The folder of one grid cell's selection."""
    return out / "select" / selector / f"budget-{budget}" / f"seed-{seed}"


def run_demo(out: Path) -> list[dict[str, Any]]:
    """Run the demo grid's selection stage (finished cells are kept), print intrinsic metrics, return the rows."""
    from selectbench.data import load_pool
    from selectbench.data.labels import intrinsic_metrics
    from selectbench.selectors import make_selector
    from selectbench.selectors.artifacts import DONE_FILE, META_FILE, write_selection

    print("selectbench demo: this build runs the selection stage only (fine-tuning and evaluation are not built yet).")
    pool = load_pool(DEMO["pool"])
    rows: list[dict[str, Any]] = [
        {"selector": "full pool", "budget": len(pool), "seed": "-", **intrinsic_metrics(pool)}
    ]
    for spec in DEMO["selectors"]:
        selector = make_selector(spec["name"], **spec["params"])
        for budget in DEMO["budgets"]:
            for seed in spec["seeds"]:
                folder = cell_dir(out, spec["name"], budget, seed)
                if (folder / DONE_FILE).exists():
                    indices = json.loads((folder / META_FILE).read_text())["ids"]
                    position = {record_id: i for i, record_id in enumerate(pool.ids)}
                    picked = [position[record_id] for record_id in indices]
                else:
                    selection = selector.select(pool, budget, seed=seed)
                    write_selection(folder, pool, selection)
                    picked = selection.indices
                rows.append(
                    {
                        "selector": spec["name"],
                        "budget": budget,
                        "seed": seed,
                        **intrinsic_metrics(pool.records(picked)),
                    }
                )
    _print_table(rows)
    print(f"\nselections written under {out / 'select'}", file=sys.stderr)
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = [
        "selector",
        "budget",
        "seed",
        "n",
        "share_good",
        "dominant_style",
        "style_share",
        "len_median",
        "len_iqr",
    ]
    table = [header]
    for row in rows:
        table.append(
            [
                str(row["selector"]),
                str(row["budget"]),
                str(row["seed"]),
                str(row["n"]),
                _fmt(row["share_good"]),
                str(row["dominant_style"]),
                _fmt(row["dominant_style_share"]),
                _fmt(row["length_median"], 0),
                _fmt(row["length_iqr"], 0),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for n, line in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
