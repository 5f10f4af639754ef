"""The plan of an experiment: its pool, its grid of runs in a fixed order, and what the grid costs."""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectbench.errors import SelectbenchError
from selectbench.experiment.config import ExperimentConfig


@dataclass
class Run:
    """One run of the grid: a selection (or a reference) to fine-tune and evaluate."""

    run_id: str
    kind: str  # selector | full | base
    label: str  # the name shown in reports
    selector: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    budget: int | float | None = None
    budget_k: int | None = None
    seed: int = 0


def plan(config: ExperimentConfig, pool_size: int) -> list[Run]:
    """The grid in a fixed order: base, full, then selector x budget x seed."""
    from selectbench.selectors.base import resolve_budget

    runs: list[Run] = []
    if config.references.base:
        runs.append(Run("base", "base", "base"))
    if config.references.full:
        runs.append(Run("full", "full", "full", budget_k=pool_size))
    for spec in config.selectors:
        label = spec.label or spec.name
        for budget in config.budgets:
            for seed in spec.seeds if spec.seeds is not None else config.seeds:
                run_id = _safe(f"{label}-b{budget}-s{seed}")
                k = resolve_budget(budget, pool_size)
                runs.append(Run(run_id, "selector", label, spec.name, dict(spec.params), budget, k, seed))
    return runs


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@=+,-]", "_", text)


def load_experiment_pool(config: ExperimentConfig) -> Any:
    """The experiment's pool (the first ``pool.limit`` records when a limit is set)."""
    from selectbench.data import load_pool, pool_from_records

    pool = load_pool(config.pool.source, columns=config.pool.columns, on_invalid=config.pool.on_invalid)
    if config.pool.limit is not None and config.pool.limit < len(pool):
        rows = [
            {"id": r["id"], "instruction": r["instruction"], "input": r["input"], "output": r["response"], **r["meta"]}
            for r in pool.records(list(range(config.pool.limit)))
        ]
        pool = pool_from_records(rows, name=f"{config.pool.source}[:{config.pool.limit}]")
    return pool


def estimate(config: ExperimentConfig, pool: Any, runs: list[Run]) -> dict[str, Any]:
    """What the grid costs: examples to score, tokens to train, items to generate (before running anything)."""
    from selectbench.evaluate.benchmarks import get_benchmark, parse_params
    from selectbench.models.loading import load_tokenizer
    from selectbench.selectors import make_selector
    from selectbench.selectors.base import ScoreSelector

    scored = sum(len(pool) for s in config.selectors if isinstance(make_selector(s.name, **s.params), ScoreSelector))
    recipe = config.finetune.resolved()
    sample = pool.records(list(range(min(len(pool), 500))))
    try:
        tokenizer = load_tokenizer(config.model)
        per_example = sum(
            len(tokenizer(r["instruction"] + "\n" + r["input"] + "\n" + r["response"])["input_ids"]) for r in sample
        ) / max(1, len(sample))
        per_example = min(per_example + 20, recipe["max_length"])  # + chat template tokens
    except SelectbenchError:
        per_example = float("nan")
    tokens = 0.0
    for run in runs:
        if run.kind == "base":
            continue
        if recipe["matching"] == "tokens" and recipe.get("match_tokens"):
            tokens += recipe["match_tokens"]
        elif recipe["matching"] == "steps" and recipe.get("match_steps"):
            tokens += recipe["match_steps"] * recipe["batch_size"] * per_example
        else:
            tokens += (run.budget_k or 0) * per_example * recipe["epochs"]
    items = 0
    for bench in config.evaluate.benchmarks:
        benchmark = get_benchmark(bench)
        options = parse_params(benchmark, dict(config.evaluate.params.get(bench, {})))
        items += benchmark.count_items(options, config.evaluate.limit.get(bench)) * len(runs)
    return {
        "runs": len(runs),
        "examples_to_score": scored,
        "tokens_to_train": int(tokens) if not math.isnan(tokens) else None,
        "items_to_generate": items,
    }


def print_plan(config: ExperimentConfig, runs: list[Run], cost: dict[str, Any], file: Any = None) -> None:
    """The plan as a table plus the cost estimate."""
    file = file or sys.stdout
    print(f"experiment {config.name!r} -> {config.out_dir()}", file=file)
    print(f"model {config.model}; benchmarks {', '.join(config.evaluate.benchmarks)}", file=file)
    print(f"{'run':<32} {'kind':<8} {'selector':<16} {'budget':>7} {'k':>6} {'seed':>4}", file=file)
    for run in runs:
        budget = "" if run.budget is None else str(run.budget)
        k = "" if run.budget_k is None else str(run.budget_k)
        print(f"{run.run_id:<32} {run.kind:<8} {run.label:<16} {budget:>7} {k:>6} {run.seed:>4}", file=file)
    tokens = cost["tokens_to_train"]
    print(
        f"\ncost: {cost['runs']} runs; {cost['examples_to_score']} examples to score; "
        f"~{tokens if tokens is not None else '?'} tokens to train; {cost['items_to_generate']} items to generate",
        file=file,
    )


def power_lines(config: ExperimentConfig, out: Path) -> list[str]:
    """Per metric, the smallest difference between two runs the grid can detect at 80% power (alpha 0.05).

    Before any run, only the base model's evaluation can say anything, and only when a finished one is already in
    ``out``: from its per-item spread, ``sqrt(2) x (z_0.975 + z_0.8) x se`` bounds the difference two independent
    runs would need. Pairing over the same items detects much smaller ones; the report states the paired figure,
    from the observed paired variance, beside every ``n.s.`` verdict.
    """
    import numpy as np

    from selectbench.artifacts import ExperimentLayout
    from selectbench.evaluate.benchmarks import RESULTS_FILE, get_benchmark
    from selectbench.io import nonblank_lines
    from selectbench.reports.compare import minimum_detectable

    base = ExperimentLayout(out).run("base")
    lines = []
    for bench in config.evaluate.benchmarks:
        stage = base.eval(bench)
        if not stage.done or not (stage / RESULTS_FILE).exists():
            lines.append(f"  {bench}: unknown before a run (no finished base-model evaluation in {out})")
            continue
        rows = [json.loads(line) for _, line in nonblank_lines(stage / RESULTS_FILE)]
        by_metric: dict[str, list[tuple[float, float]]] = {}
        for item in get_benchmark(bench).read_item_values(rows):
            by_metric.setdefault(item["metric"], []).append((item["value"], item.get("weight", 1.0)))
        if not by_metric:
            lines.append(f"  {bench}: unknown (its results have no per-item values)")
        for metric, pairs in by_metric.items():
            values, weights = np.array(pairs, dtype=np.float64).T
            bound = math.sqrt(2) * minimum_detectable(values, weights)
            lines.append(
                f"  {bench}/{metric}: at most {bound:.3g} between two runs (unpaired bound from the base model's "
                f"{len(values)} items; the paired comparison detects less)"
            )
    return lines
