"""The experiment's results: ``results.csv`` (one row per run x metric) and the per-item files the report's
intervals use, read from the finished stage folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selectbench.artifacts import ExperimentLayout, RunLayout, StageFolder
from selectbench.errors import SelectbenchError
from selectbench.experiment.config import ExperimentConfig
from selectbench.experiment.plan import Run
from selectbench.io import dumps, nonblank_lines


def aggregate(config: ExperimentConfig, pool: Any, runs: list[Run], out: Path) -> list[dict[str, Any]]:
    """Write ``results.csv`` (one row per run x metric) and the per-item files the report's intervals use."""
    from selectbench.data import load_pool
    from selectbench.data.labels import intrinsic_metrics
    from selectbench.evaluate.benchmarks import SUMMARY_FILE, get_benchmark
    from selectbench.reports.results import write_results

    recipe_hash = config.finetune.recipe_hash()
    eval_hash = config.eval_config_hash()
    labelled = config.intrinsic
    if labelled is None:
        first = pool[0]["meta"] if len(pool) else {}
        labelled = "quality" in first and "style" in first
    experiment = ExperimentLayout(out)
    rows: list[dict[str, Any]] = []
    for run in runs:
        layout = experiment.run(run.run_id)
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
            "selection_path": "" if run.kind == "base" else layout.selection_relpath,
        }
        if run.kind != "base":
            select_meta = _meta(layout.select)
            train_meta = _meta(layout.finetune)
            base["select_seconds"] = round(sum(select_meta.get("timings", {}).values()), 3)
            base["train_seconds"] = train_meta["timings"]["train_s"]
            base["tokens_trained"] = train_meta["trained"]["tokens"]
            base["n_selected"] = select_meta["budget"]["selected"]
        eval_seconds = 0.0
        metric_rows: list[dict[str, Any]] = []
        for bench in config.evaluate.benchmarks:
            benchmark = get_benchmark(bench)
            stage = layout.eval(bench)
            summary = json.loads((stage / SUMMARY_FILE).read_text())
            meta = _meta(stage)
            eval_seconds += float(meta.get("timings", {}).get("total_s") or 0.0)
            for name, m in summary.items():
                if m.get("value") is None:
                    continue
                metric_rows.append(
                    {
                        "metric": f"{bench}/{name}",
                        "value": m["value"],
                        "stderr": m.get("stderr"),
                        "n": m.get("n"),
                        "higher_is_better": benchmark.higher_is_better(name),
                        "value_min": benchmark.value_range[0],
                        "value_max": benchmark.value_range[1],
                    }
                )
            write_item_values(out, layout, bench)
        if labelled and run.kind != "base":
            records = load_pool(str(layout.selection_file))
            metrics = intrinsic_metrics(records.records(list(range(len(records)))))
            for name, value in (
                ("share_good", metrics["share_good"]),
                ("style_consistency", metrics["dominant_style_share"]),
            ):
                if value is not None:
                    metric_rows.append(
                        {"metric": f"intrinsic/{name}", "value": value, "n": metrics["n"], "higher_is_better": True}
                        | {"value_min": 0.0, "value_max": 1.0}  # shares of the selected records
                    )
        for m in metric_rows:
            rows.append({**base, **m, "eval_seconds": round(eval_seconds, 3)})
    write_results(rows, experiment.results_file)
    return rows


def _meta(stage: StageFolder) -> dict[str, Any]:
    meta = stage.meta()
    if meta is None:
        raise SelectbenchError(f"{stage.path}: the stage is not finished; run the experiment again to finish it")
    return meta


def write_item_values(out: Path, layout: RunLayout, bench: str) -> None:
    """The run's per-item values on ``bench`` (those whose weighted mean is a summary value), for the bootstrap
    intervals; the benchmark says how to read them from its ``results.jsonl``."""
    from selectbench.evaluate.benchmarks import RESULTS_FILE, get_benchmark
    from selectbench.reports.results import write_items

    path = layout.eval(bench) / RESULTS_FILE
    if not path.exists():
        return
    rows = [json.loads(line) for _, line in nonblank_lines(path)]
    lines = [{**line, "metric": f"{bench}/{line['metric']}"} for line in get_benchmark(bench).read_item_values(rows)]
    if lines:
        write_items(out, layout.run_id, bench, lines)
