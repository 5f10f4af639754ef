"""The experiment runner: config -> grid of runs -> cached stages (select, fine-tune, evaluate) -> results and report.

Every stage writes its own folder with ``meta.json`` and ``DONE`` (atomically), so a killed run resumes and a
finished stage is never redone. Stages run stage by stage over the whole grid, so one generation engine (on vLLM:
the base model once, each adapter per request) serves every run.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectbench.config import ExperimentConfig
from selectbench.errors import SelectbenchError
from selectbench.io import dumps, write_json

DONE = "DONE"


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

    def folder(self, out: Path) -> Path:
        """The run's folder."""
        return out / "runs" / self.run_id


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
    from selectbench.finetune.config import FinetuneConfig
    from selectbench.models.loading import load_tokenizer
    from selectbench.selectors import make_selector
    from selectbench.selectors.base import ScoreSelector

    scored = sum(len(pool) for s in config.selectors if isinstance(make_selector(s.name, **s.params), ScoreSelector))
    recipe = FinetuneConfig.from_overrides(config.finetune).resolved()
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
    generative = {"humaneval": 164, "alpacaeval": 805}
    items = 0
    for bench in config.evaluate.benchmarks:
        if bench in generative:
            n = config.evaluate.limit.get(bench, generative[bench] if bench == "humaneval" else 70)
            items += n * len(runs)
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


# ----------------------------------------------------------------------------------------------- running


def run_experiment(config: ExperimentConfig, *, dry_run: bool = False, progress: bool = True) -> Path:
    """Run (or resume) the whole experiment; returns the run folder. ``dry_run`` prints the plan and cost only."""
    from selectbench.io import versions

    out = config.out_dir()
    pool = load_experiment_pool(config)
    runs = plan(config, len(pool))
    cost = estimate(config, pool, runs)
    print_plan(config, runs, cost)
    if dry_run:
        return out
    _check_same_config(out, config)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"config": config.to_dict(), "versions": versions()})
    started = time.perf_counter()
    if config.executor == "ray":
        from selectbench.executors import run_on_ray

        run_on_ray(config, pool, runs, out, progress=progress)
    else:
        run_local(config, pool, runs, out, progress=progress)
    rows = aggregate(config, pool, runs, out)
    _report(out, rows)
    print(f"\nfinished in {time.perf_counter() - started:.0f} s; report: {out / 'report' / 'index.html'}")
    return out


def _check_same_config(out: Path, config: ExperimentConfig) -> None:
    existing = out / "config.json"
    if not existing.exists():
        return
    previous = json.loads(existing.read_text())["config"]
    current = json.loads(dumps(config.to_dict()))
    if previous != current:
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        raise SelectbenchError(
            f"{out} holds a run of a different config (changed: {', '.join(changed)}); "
            "use another `out` folder, or delete that one to start over"
        )


def run_local(config: ExperimentConfig, pool: Any, runs: list[Run], out: Path, *, progress: bool = True) -> None:
    """Run every stage in this process: all selections, then all fine-tunes, then all evaluations."""
    steps = _count_steps(config, runs)
    tick = _Ticker(steps)
    for run in runs:
        if run.kind != "base":
            tick(f"select {run.run_id}")
            select_stage(config, pool, run, out)
    for run in runs:
        if run.kind != "base":
            tick(f"fine-tune {run.run_id}")
            finetune_stage(config, run, out, progress=progress)
    generator = None
    try:
        for run in runs:
            for bench in config.evaluate.benchmarks:
                tick(f"evaluate {bench} {run.run_id}")
                generator = evaluate_stage(config, run, bench, out, generator, progress=progress)
    finally:
        if generator is not None:
            generator.close()


def _count_steps(config: ExperimentConfig, runs: list[Run]) -> int:
    trained = sum(r.kind != "base" for r in runs)
    return 2 * trained + len(runs) * len(config.evaluate.benchmarks)


class _Ticker:
    """`[i/n] stage run` lines with the elapsed time and an ETA for the whole grid."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def __call__(self, what: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = ""
        if self.done > 1:
            eta = f", ETA {elapsed / (self.done - 1) * (self.total - self.done + 1):.0f} s"
        print(f"[{self.done}/{self.total}] {what} (elapsed {elapsed:.0f} s{eta})", file=sys.stderr, flush=True)


def select_stage(config: ExperimentConfig, pool: Any, run: Run, out: Path) -> Path:
    """Write the run's selection (kept when already done for the same pool)."""
    from selectbench.selectors import make_selector
    from selectbench.selectors.artifacts import write_selection
    from selectbench.selectors.base import make_selection

    folder = run.folder(out) / "select"
    if (folder / DONE).exists():
        meta = json.loads((folder / "meta.json").read_text())
        if meta["pool"]["fingerprint"] == pool.fingerprint:
            return folder
    if run.kind == "full":
        selection = make_selection(_WholePool(), pool, len(pool), 0, list(range(len(pool))))
    else:
        selector = make_selector(run.selector or "", **run.params)
        selection = selector.select(pool, run.budget, seed=run.seed)
    write_selection(folder, pool, selection, run_id=run.run_id)
    return folder


@dataclass
class _WholePool:
    """The 'full' reference: every record of the pool."""

    name: str = "full"


def finetune_stage(config: ExperimentConfig, run: Run, out: Path, *, progress: bool = True) -> Path:
    """Fine-tune on the run's selection with the experiment's one recipe (kept when already done)."""
    from selectbench.finetune import FinetuneConfig, finetune

    folder = run.folder(out) / "finetune"
    recipe = FinetuneConfig.from_overrides(config.finetune)
    finetune(run.folder(out) / "select", config.model, recipe, folder, progress=progress)
    return folder


def evaluate_stage(
    config: ExperimentConfig, run: Run, bench: str, out: Path, generator: Any, *, progress: bool = True
) -> Any:
    """Evaluate the run on ``bench``; returns the (possibly newly built) shared generation engine."""
    from selectbench.evaluate.benchmarks import evaluate
    from selectbench.evaluate.generation import make_generator, resolve_engine

    folder = run.folder(out) / "eval" / bench
    adapter = None if run.kind == "base" else str(run.folder(out) / "finetune")
    if (folder / DONE).exists() and (folder / "summary.json").exists():
        # evaluate() also skips a finished folder; checking here avoids starting an engine for nothing.
        return generator
    engine = resolve_engine(config.evaluate.engine)
    if generator is None and bench != "heldout-nll" and engine != "openai":
        generator = make_generator(engine, config.model, **config.evaluate.engine_options)
    evaluate(
        bench,
        config.model,
        adapter=adapter,
        out_dir=folder,
        limit=config.evaluate.limit.get(bench),
        engine=config.evaluate.engine,
        generator=generator if bench != "heldout-nll" else None,
        engine_options=config.evaluate.engine_options if generator is None else None,
        progress=progress,
        **config.evaluate.params.get(bench, {}),
    )
    return generator


# ----------------------------------------------------------------------------------------------- results


LOWER_IS_BETTER = ("nll", "perplexity", "loss")


def aggregate(config: ExperimentConfig, pool: Any, runs: list[Run], out: Path) -> list[dict[str, Any]]:
    """Write ``results.csv`` (one row per run x metric) and the per-item files the report's intervals use."""
    from selectbench.data import load_pool
    from selectbench.data.labels import intrinsic_metrics
    from selectbench.finetune import FinetuneConfig
    from selectbench.reports.results import write_items, write_results

    recipe_hash = FinetuneConfig.from_overrides(config.finetune).recipe_hash()
    eval_hash = config.eval_config_hash()
    labelled = config.intrinsic
    if labelled is None:
        first = pool[0]["meta"] if len(pool) else {}
        labelled = "quality" in first and "style" in first
    rows: list[dict[str, Any]] = []
    for run in runs:
        folder = run.folder(out)
        base = {
            "run_id": run.run_id,
            "selector": run.label,
            "budget": "" if run.budget is None else str(run.budget),
            "budget_k": run.budget_k,
            "seed": run.seed,
            "kind": run.kind,
            "recipe_hash": "" if run.kind == "base" else recipe_hash,
            "eval_config_hash": eval_hash,
            "model": config.model,
            "pool_fingerprint": pool.fingerprint,
            "params": dumps(run.params) if run.kind == "selector" else "",
            "selection_path": "" if run.kind == "base" else f"runs/{run.run_id}/select/selection.jsonl",
        }
        if run.kind != "base":
            select_meta = json.loads((folder / "select" / "meta.json").read_text())
            train_meta = json.loads((folder / "finetune" / "meta.json").read_text())
            base["select_seconds"] = round(sum(select_meta.get("timings", {}).values()), 3)
            base["train_seconds"] = train_meta["timings"]["train_s"]
            base["tokens_trained"] = train_meta["trained"]["tokens"]
        eval_seconds = 0.0
        metric_rows: list[dict[str, Any]] = []
        for bench in config.evaluate.benchmarks:
            bench_dir = folder / "eval" / bench
            summary = json.loads((bench_dir / "summary.json").read_text())
            meta = json.loads((bench_dir / "meta.json").read_text())
            eval_seconds += float(meta.get("timings", {}).get("total_s") or 0.0)
            for name, m in summary.items():
                if m.get("value") is None:
                    continue
                metric = f"{bench}/{name}"
                metric_rows.append(
                    {
                        "metric": metric,
                        "value": m["value"],
                        "stderr": m.get("stderr"),
                        "n": m.get("n"),
                        "higher_is_better": not any(w in name for w in LOWER_IS_BETTER),
                    }
                )
            _write_bench_items(out, run.run_id, bench, bench_dir, write_items)
        if labelled and run.kind != "base":
            records = load_pool(str(folder / "select" / "selection.jsonl"))
            metrics = intrinsic_metrics(records.records(list(range(len(records)))))
            for name, value in (
                ("share_good", metrics["share_good"]),
                ("style_consistency", metrics["dominant_style_share"]),
            ):
                if value is not None:
                    metric_rows.append(
                        {"metric": f"intrinsic/{name}", "value": value, "n": metrics["n"], "higher_is_better": True}
                    )
        for m in metric_rows:
            rows.append({**base, **m, "eval_seconds": round(eval_seconds, 3)})
    write_results(rows, out / "results.csv")
    return rows


def _write_bench_items(out: Path, run_id: str, bench: str, bench_dir: Path, write_items: Any) -> None:
    """Per-item values whose weighted mean is the summary value, for the bootstrap intervals."""
    path = bench_dir / "results.jsonl"
    if not path.exists():
        return
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines: list[dict[str, Any]] = []
    if bench == "heldout-nll":
        for item in items:
            if item.get("n_tokens"):
                value = item["nll_per_token"]
                lines.append(
                    {
                        "item": item["id"],
                        "metric": f"{bench}/nll_per_token",
                        "value": value,
                        "weight": item["n_tokens"],
                    }
                )
    elif bench == "humaneval":
        per_task: dict[str, list[bool]] = {}
        for item in items:
            per_task.setdefault(item["task_id"], []).append(bool(item["passed"]))
        for task, passed in per_task.items():
            lines.append({"item": task, "metric": f"{bench}/pass@1", "value": sum(passed) / len(passed)})
    if lines:
        write_items(out, run_id, bench, lines)


def _report(out: Path, rows: list[dict[str, Any]]) -> None:
    from selectbench.reports import render_leaderboard_text, write_reports

    write_reports([out], out / "report")
    print()
    print(render_leaderboard_text(out))
