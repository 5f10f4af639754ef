"""The three stages of a run (select, fine-tune, evaluate), each cached in its stage folder of the run layout.

Both executors call these; a stage that is already done for the same inputs is kept, so a killed run resumes and
a finished stage is never redone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectbench.artifacts import RunLayout
from selectbench.experiment.config import ExperimentConfig
from selectbench.experiment.plan import Run

if TYPE_CHECKING:
    from selectbench.models.engines.factory import EnginePool


def selection_done(layout: RunLayout, pool: Any) -> bool:
    """Whether the run's selection is finished for this very pool (its fingerprint)."""
    return layout.select.finished({"pool.fingerprint": pool.fingerprint}) is not None


def select_stage(config: ExperimentConfig, pool: Any, run: Run, out: Path) -> Path:
    """Write the run's selection (kept when already done for the same pool); returns its stage folder."""
    from selectbench.selectors import make_selector
    from selectbench.selectors.artifacts import write_selection
    from selectbench.selectors.base import make_selection

    layout = RunLayout(out, run.run_id)
    if selection_done(layout, pool):
        return layout.select.path
    if run.kind == "full":
        selection = make_selection(_WholePool(), pool, len(pool), 0, list(range(len(pool))))
    else:
        selector = make_selector(run.selector or "", **run.params)
        # Every selector gets the same count k (the budget resolved against the pool), so selectors compare at
        # equal budgets; a selector whose filter passes fewer than k keeps what it has and the report marks it.
        selection = selector.select(pool, run.budget_k, seed=run.seed)
    return write_selection(layout.select.path, pool, selection, run_id=run.run_id)


@dataclass
class _WholePool:
    """The 'full' reference: every record of the pool."""

    name: str = "full"


def finetune_stage(config: ExperimentConfig, run: Run, out: Path, *, progress: bool = True) -> Path:
    """Fine-tune on the run's selection with the experiment's one recipe and the run's seed (kept when done).

    Seed ``s`` of a run is its fine-tuning seed too, so a deterministic selector run with several seeds gives
    training-noise replicates of one recipe (the recipe hash leaves the seed out).
    """
    from selectbench.finetune import finetune

    layout = RunLayout(out, run.run_id)
    recipe = dataclasses.replace(config.finetune, seed=run.seed)
    finetune(layout.select.path, config.model, recipe, layout.finetune.path, progress=progress)
    return layout.finetune.path


def evaluate_stage(
    config: ExperimentConfig, run: Run, bench: str, out: Path, engines: EnginePool, *, progress: bool = True
) -> None:
    """Evaluate the run on ``bench`` with engines from ``engines`` (an :class:`EnginePool` the executor holds for
    the whole stage: one base model per engine, each run's adapter switched per request)."""
    from selectbench.evaluate.benchmarks import SUMMARY_FILE, evaluate

    layout = RunLayout(out, run.run_id)
    stage = layout.eval(bench)
    if stage.done and (stage / SUMMARY_FILE).exists():
        return  # evaluate() also skips a finished folder; checking here loads nothing for it
    evaluate(
        bench,
        config.model,
        adapter=None if run.kind == "base" else str(layout.finetune.path),
        out_dir=stage.path,
        limit=config.evaluate.limit.get(bench),
        engine=config.evaluate.engine,
        engines=engines,
        engine_options=config.evaluate.engine_options,
        progress=progress,
        **config.evaluate.params.get(bench, {}),
    )
