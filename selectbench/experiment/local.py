"""The local executor (the default): every stage in this process, stage by stage over the whole grid, so one engine
per kind (the base model loaded once, each run's adapter switched per request) serves every run."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from selectbench.experiment.config import ExperimentConfig
from selectbench.experiment.plan import Run
from selectbench.experiment.stages import evaluate_stage, finetune_stage, select_stage


def run_local(config: ExperimentConfig, pool: Any, runs: list[Run], out: Path, *, progress: bool = True) -> None:
    """Run every stage in this process: all selections, then all fine-tunes, then all evaluations."""
    tick = _Ticker(_count_steps(config, runs))
    for run in runs:
        if run.kind != "base":
            tick(f"select {run.run_id}")
            select_stage(config, pool, run, out)
    for run in runs:
        if run.kind != "base":
            tick(f"fine-tune {run.run_id}")
            finetune_stage(config, run, out, progress=progress)
    from selectbench.models.engines.factory import EnginePool

    engines = EnginePool()  # one base model per engine for the whole evaluation stage
    try:
        for run in runs:
            for bench in config.evaluate.benchmarks:
                tick(f"evaluate {bench} {run.run_id}")
                evaluate_stage(config, run, bench, out, engines, progress=progress)
    finally:
        engines.close()


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
