"""Run (or resume) an experiment: plan it, check the folder holds the same config, run the grid on the chosen
executor, then write ``results.csv`` and the report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from selectbench.artifacts import ExperimentLayout
from selectbench.errors import SelectbenchError
from selectbench.experiment.aggregate import aggregate
from selectbench.experiment.config import ExperimentConfig
from selectbench.experiment.local import run_local
from selectbench.experiment.plan import estimate, load_experiment_pool, plan, print_plan
from selectbench.io import dumps, versions, write_json


def run_experiment(config: ExperimentConfig, *, dry_run: bool = False, progress: bool = True) -> Path:
    """Run (or resume) the whole experiment; returns the run folder. ``dry_run`` prints the plan and cost only."""
    out = config.out_dir()
    layout = ExperimentLayout(out)
    pool = load_experiment_pool(config)
    runs = plan(config, len(pool))
    cost = estimate(config, pool, runs)
    print_plan(config, runs, cost)
    if dry_run:
        return out
    _check_same_config(layout, config)
    out.mkdir(parents=True, exist_ok=True)
    write_json(layout.config_file, {"config": config.to_dict(), "versions": versions()})
    started = time.perf_counter()
    if config.executor == "ray":
        from selectbench.experiment.ray import run_on_ray  # only then: it needs numpy and, to run, Ray

        run_on_ray(config, pool, runs, out, progress=progress)
    else:
        run_local(config, pool, runs, out, progress=progress)
    rows = aggregate(config, pool, runs, out)
    _report(layout, rows)
    print(f"\nfinished in {time.perf_counter() - started:.0f} s; report: {layout.report / 'index.html'}")
    return out


def _check_same_config(layout: ExperimentLayout, config: ExperimentConfig) -> None:
    existing = layout.config_file
    if not existing.exists():
        return
    previous = json.loads(existing.read_text())["config"]
    current = json.loads(dumps(config.to_dict()))
    if previous != current:
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        raise SelectbenchError(
            f"{layout.out} holds a run of a different config (changed: {', '.join(changed)}); "
            "use another `out` folder, or delete that one to start over"
        )


def _report(layout: ExperimentLayout, rows: list[dict[str, Any]]) -> None:
    from selectbench.reports import render_leaderboard_text, write_reports

    write_reports([layout.out], layout.report)
    print()
    print(render_leaderboard_text(layout.out))
