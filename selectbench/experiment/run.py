"""Run (or resume) an experiment: plan it, check the folder holds the same config, run the grid on the chosen
executor, then write ``results.csv`` and the report."""

from __future__ import annotations

import json
import time
from pathlib import Path

from selectbench.artifacts import ExperimentLayout
from selectbench.errors import SelectbenchError
from selectbench.experiment.aggregate import aggregate
from selectbench.experiment.config import ExperimentConfig
from selectbench.experiment.local import run_local
from selectbench.experiment.plan import estimate, load_experiment_pool, plan, power_lines, print_plan
from selectbench.io import dumps, versions, write_json


def run_experiment(config: ExperimentConfig, *, dry_run: bool = False, progress: bool = True) -> Path:
    """Run (or resume) the whole experiment; returns the run folder. ``dry_run`` prints the plan and cost only."""
    out = config.out_dir()
    layout = ExperimentLayout(out)
    pool = load_experiment_pool(config)
    runs = plan(config, len(pool))
    cost = estimate(config, pool, runs)
    print_plan(config, runs, cost)
    print("smallest detectable difference (80% power, alpha 0.05):")
    print("\n".join(power_lines(config, out)))
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
    aggregate(config, pool, runs, out)
    _report(layout, config)
    print(f"\nfinished in {time.perf_counter() - started:.0f} s; report: {layout.report / 'index.html'}")
    return out


def _check_same_config(layout: ExperimentLayout, config: ExperimentConfig) -> None:
    existing = layout.config_file
    if not existing.exists():
        return
    # Report options change only the report, never a stage: a run may be resumed with other ones.
    previous = {k: v for k, v in json.loads(existing.read_text())["config"].items() if k != "report"}
    current = {k: v for k, v in json.loads(dumps(config.to_dict())).items() if k != "report"}
    if previous != current:
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        raise SelectbenchError(
            f"{layout.out} holds a run of a different config (changed: {', '.join(changed)}); "
            "use another `out` folder, or delete that one to start over"
        )


def _report(layout: ExperimentLayout, config: ExperimentConfig) -> None:
    from selectbench.reports import load_results, render_leaderboard_text, summarize, write_report_files
    from selectbench.reports.compare import compare

    results = load_results([layout.out])
    summary = summarize(results)
    comparisons = compare(results, baselines=config.report.compare_to)
    write_report_files(results, summary, layout.report, comparisons)
    print()
    print(render_leaderboard_text(results, summary, comparisons))
