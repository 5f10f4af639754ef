"""The shipped demo stays cheap and able to conclude: a bounded grid, measured to finish within 10 minutes on the
2-core development machine (benchmarks/RESULTS.md), and only benchmarks whose per-item results the paired
comparisons can use."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from selectbench.evaluate.benchmarks import get_benchmark
from selectbench.experiment.config import load_config
from selectbench.experiment.plan import estimate, load_experiment_pool, plan

# The demo as measured (see benchmarks/RESULTS.md, "The embedded demo"): a grid that costs more than this no longer
# fits its 10 minutes. Raise a bound only together with a new measurement.
MAX_RUNS = 8
MAX_TOKENS_TO_TRAIN = 30_000
MAX_SCORED_ITEMS = 8 * 70  # held-out answers scored, over all runs


def test_the_demo_grid_stays_within_its_measured_cost(smollm2_dir: Path) -> None:
    config = load_config(None)
    pool = load_experiment_pool(config)
    runs = plan(config, len(pool))
    cost = estimate(dataclasses.replace(config, model=str(smollm2_dir)), pool, runs)
    assert cost["runs"] == len(runs) <= MAX_RUNS
    assert cost["tokens_to_train"] is not None and cost["tokens_to_train"] <= MAX_TOKENS_TO_TRAIN
    assert cost["items_to_generate"] == 0  # generation (HumanEval) lives in demo-code.yaml
    limit = config.evaluate.limit.get("heldout-nll")
    assert len(runs) * (limit or 70) <= MAX_SCORED_ITEMS


def test_every_demo_benchmark_gives_per_item_results_for_the_paired_comparisons() -> None:
    config = load_config(None)
    for bench in config.evaluate.benchmarks:
        assert get_benchmark(bench).item_values is not None, f"{bench} has no per-item values: no paired test"
    # Deterministic selectors have training-noise replicates beside random's seeds, so both arms vary.
    seeds = {spec.name: spec.seeds or config.seeds for spec in config.selectors}
    assert len(seeds["random"]) >= 3 and len(seeds["scar"]) >= 2
