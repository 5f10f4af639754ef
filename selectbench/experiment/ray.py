"""The Ray executor (``executor: ray``): each grid cell runs as a Ray task with its CPUs and GPUs declared, and
score-based selectors score large pools in shards. Workers run the local executor's stage functions and write
into the same run folder, so the results merge into the same ``results.csv``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from selectbench.artifacts import RunLayout
from selectbench.errors import SelectbenchError
from selectbench.experiment.stages import evaluate_stage, finetune_stage, select_stage, selection_done
from selectbench.io import dumps

if TYPE_CHECKING:
    import pyarrow as pa

    from selectbench.data import Pool
    from selectbench.experiment.config import ExperimentConfig
    from selectbench.experiment.plan import Run
    from selectbench.selectors.base import ScoreSelector

RAY_INSTALL = "pip install 'selectbench[ray]' (or pip install 'ray>=2.40')"


def run_on_ray(config: ExperimentConfig, pool: Pool, runs: list[Run], out: Path, *, progress: bool = True) -> None:
    """Run every stage of the grid as Ray tasks; the same artifacts as :func:`selectbench.experiment.local.run_local`.

    Per run: a select task, then a fine-tune task, then one evaluate task for all benchmarks (each with its own
    generation engine), chained through Ray's dependencies so runs proceed independently. Each fine-tune and
    evaluate task declares ``ray.num_cpus_per_cell`` CPUs and ``ray.num_gpus_per_cell`` GPUs. A score-based
    selector with ``ray.score_shards > 1`` scores the pool once per selector in that many contiguous shards (one
    task each); every budget and seed then selects from the concatenated scores, exactly as the local path does.

    Connects to ``ray.address`` when set (``auto``, ``ray://host:10001``, ...), else starts a local Ray instance
    over this machine's CPUs and shuts it down at the end. A task that fails with a user error raises that
    :class:`SelectbenchError` here, with its own message.

    Args:
        config: the experiment.
        pool: the experiment's pool (shipped to the workers through Ray's object store).
        runs: the grid, from :func:`selectbench.experiment.plan.plan`.
        out: the run folder; on a cluster it must be on storage every node sees at the same path.
        progress: kept for the runner's signature; workers never draw progress bars (their output is
            interleaved in the driver's log), the driver prints one line per finished task.
    """
    ray = import_ray()
    connected = connect(ray, config.ray.address)
    try:
        _check_resources(ray, config, started_here=connected == "started")
        tasks = _submit(ray, config, pool, runs, Path(out).resolve())
        _wait(ray, tasks)
    finally:
        if connected:
            ray.shutdown()


def import_ray() -> Any:
    """The ``ray`` module, or a SelectbenchError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise SelectbenchError(f"executor: ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def connect(ray: Any, address: str | None) -> str | None:
    """Join the Ray cluster at ``address``, or start a local instance when ``address`` is None.

    Returns:
        ``"started"`` (a local instance this call started), ``"connected"`` (joined a running cluster), or None
        (Ray was already initialised in this process: it is used as is and left running).
    """
    if ray.is_initialized():
        return None
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SelectbenchError(
                f"ray.address: cannot connect to a Ray cluster at {address!r} ({exc}); start one with "
                "`ray start --head` on the head node, or leave ray.address unset for a local instance"
            ) from None
        return "connected"
    # "local" always starts a new instance, never a cluster that `ray start` left running on this machine.
    ray.init(address="local", num_cpus=available_cpus(), include_dashboard=False, **quiet)
    return "started"


def available_cpus() -> int:
    """CPUs this process may use (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_resources(ray: Any, config: ExperimentConfig, *, started_here: bool) -> None:
    """A task asking for more than the cluster has would wait forever: say so instead."""
    have = ray.cluster_resources()
    problems = []
    for key, need in (("GPU", config.ray.num_gpus_per_cell), ("CPU", config.ray.num_cpus_per_cell)):
        if need > have.get(key, 0.0):
            name = f"ray.num_{key.lower()}s_per_cell"
            problems.append(f"{name} is {need:g}, but the Ray cluster has {have.get(key, 0.0):g} {key}s")
    if not problems:
        return
    if started_here:
        hint = "lower it, or run on a Ray cluster that has them (ray.address)"
        raise SelectbenchError("; ".join(problems) + f": {hint}")
    # A cluster with an autoscaler may add nodes once tasks ask for them, so this is only a warning.
    print("warning: " + "; ".join(problems) + " (waiting for the cluster to provide them)", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- the task graph


@dataclass
class _Task:
    """A submitted task and the line that reports it."""

    ref: Any
    what: str


def _submit(ray: Any, config: ExperimentConfig, pool: Pool, runs: list[Run], out: Path) -> list[_Task]:
    """Submit every task of the grid at once; Ray runs each when its inputs exist and its resources are free."""
    from selectbench.selectors import make_selector
    from selectbench.selectors.base import ScoreSelector

    cell = {"num_cpus": config.ray.num_cpus_per_cell, "num_gpus": config.ray.num_gpus_per_cell}
    # Selection may load a scoring model too (ifd, scar), so it asks for the same resources as a cell.
    score_task = ray.remote(_score_shard_task).options(**cell)
    select_task = ray.remote(_select_task).options(**cell)
    finetune_task = ray.remote(_finetune_task).options(**cell)
    evaluate_task = ray.remote(_evaluate_task).options(**cell)
    threads = max(1, int(config.ray.num_cpus_per_cell))
    payload = ray.put(_PoolPayload.of(pool))
    tasks: list[_Task] = []

    # Score-based selectors with shards: score once per selector (shared by its budgets and seeds), and only
    # when some selection of that selector is still missing.
    shard_refs: dict[str, list[Any]] = {}
    shards = min(config.ray.score_shards, len(pool))
    if shards > 1:
        for run in runs:
            key = dumps([run.selector, run.params])
            if run.kind != "selector" or key in shard_refs or selection_done(RunLayout(out, run.run_id), pool):
                continue
            selector = make_selector(run.selector or "", **run.params)
            if not isinstance(selector, ScoreSelector):
                continue
            shard_refs[key] = []
            for lo, hi in shard_bounds(len(pool), shards):
                ref = score_task.remote(selector, payload, lo, hi, threads)
                shard_refs[key].append(ref)
                tasks.append(_Task(ref, f"score {run.label} records {lo}-{hi - 1}"))

    for run in runs:
        after = None
        if run.kind != "base":
            parts = shard_refs.get(dumps([run.selector, run.params]), [])
            after = select_task.remote(config, payload, run, str(out), threads, *parts)
            tasks.append(_Task(after, f"select {run.run_id}"))
            after = finetune_task.remote(config, run, str(out), threads, after)
            tasks.append(_Task(after, f"fine-tune {run.run_id}"))
        ref = evaluate_task.remote(config, run, str(out), threads, after)
        tasks.append(_Task(ref, f"evaluate {', '.join(config.evaluate.benchmarks)} {run.run_id}"))
    return tasks


def _wait(ray: Any, tasks: list[_Task]) -> None:
    """Print `[i/n] what` as tasks finish; raise the first failure's error.

    Nothing is cancelled here: ``ray.cancel`` racing a task that is just finishing can abort the driver (Ray
    issue 54846), and disconnecting (``ray.shutdown``) ends this job, which stops its remaining tasks anyway.
    """
    pending = {task.ref: task.what for task in tasks}
    total, done, start = len(tasks), 0, time.perf_counter()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            what = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                print(f"failed: {what} ({done} of {total} tasks had finished)", file=sys.stderr, flush=True)
                cause = getattr(exc, "cause", None)
                if isinstance(cause, SelectbenchError):
                    raise SelectbenchError(str(cause)) from None
                raise
            seconds = result[1] if isinstance(result, tuple) else result  # a shard: (score columns, seconds)
            done += 1
            elapsed = time.perf_counter() - start
            eta = f", ETA {elapsed / done * (total - done):.0f} s" if done < total else ""
            print(
                f"[{done}/{total}] {what} ({seconds:.0f} s; elapsed {elapsed:.0f} s{eta})", file=sys.stderr, flush=True
            )


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``[lo, hi)`` ranges covering ``0..n`` in order, sizes differing by at most one."""
    shards = max(1, min(shards, n))
    return [(n * i // shards, n * (i + 1) // shards) for i in range(shards)]


def score_in_shards(
    selector: ScoreSelector, pool: Pool, shards: int, *, num_cpus: float = 1.0, num_gpus: float = 0.0
) -> tuple[dict[str, np.ndarray], float]:
    """Score ``pool`` with ``selector`` as ``shards`` Ray tasks (Ray must be initialised).

    Returns:
        The score columns in pool order (``score``, and those the selector's ``selection_info`` reads):
        ``selector.select_from_scores`` makes from them the selection ``select`` would, ``info`` included; and the
        seconds the shards spent scoring, summed.
    """
    import ray

    task = ray.remote(_score_shard_task).options(num_cpus=num_cpus, num_gpus=num_gpus)
    payload = ray.put(_PoolPayload.of(pool))
    threads = max(1, int(num_cpus))
    refs = [task.remote(selector, payload, lo, hi, threads) for lo, hi in shard_bounds(len(pool), shards)]
    try:
        parts = ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(getattr(exc, "cause", None), SelectbenchError):
            raise SelectbenchError(str(exc.cause)) from None
        raise
    return _concat(parts)


def _concat(parts: list[tuple[dict[str, np.ndarray], float]]) -> tuple[dict[str, np.ndarray], float]:
    """The shards' score columns joined in pool order, and their seconds summed."""
    names = parts[0][0].keys()
    fields = {name: np.concatenate([columns[name] for columns, _ in parts]) for name in names}
    return fields, float(sum(seconds for _, seconds in parts))


# ----------------------------------------------------------------------------------------------- pools in workers


@dataclass
class _PoolPayload:
    """A pool as it travels to the workers: its Arrow table (through Ray's object store) and its info."""

    path: str
    info: dict[str, Any]
    table: pa.Table

    @classmethod
    def of(cls, pool: Pool) -> _PoolPayload:
        return cls(str(pool.path), dict(pool.info), pool.table)

    def pool(self) -> Pool:
        """The pool in this worker: the driver's cached file when this node sees it, else a copy of the table."""
        from selectbench.data import Pool

        if Path(self.path).exists():  # the same node, or a shared cache (the path is keyed by the source)
            return Pool(Path(self.path), self.info)
        return self.shard(0, self.table.num_rows, keep_identity=True)

    def shard(self, lo: int, hi: int, *, keep_identity: bool = False) -> Pool:
        """Records ``lo..hi-1`` as a pool of their own, written once into this node's pool cache.

        A shard's fingerprint is derived from the pool's and the range, so caches keyed by fingerprint (IFD
        scores) tell shards apart and reuse them on a re-run.
        """
        from selectbench.data import Pool
        from selectbench.io import cache_dir

        info = dict(self.info)
        if not keep_identity:
            digest = hashlib.sha256(f"{self.info['fingerprint']}[{lo}:{hi}]".encode()).hexdigest()
            info["fingerprint"] = "sha256:" + digest[:16]
            info["source"] = f"{self.info['source']}[{lo}:{hi}]"
            info["n"] = hi - lo
            info["report"] = {"rows_read": hi - lo, "rows_kept": hi - lo, "skipped": {}}
        key = hashlib.sha256(dumps(["ray-pool", info["fingerprint"], lo, hi]).encode()).hexdigest()[:24]
        path = cache_dir("pools", key) / "pool.arrow"
        if not path.exists():
            _write_arrow(self.table.slice(lo, hi - lo), path)
        return Pool(path, info)


def _write_arrow(table: pa.Table, path: Path) -> None:
    import pyarrow as pa

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# ----------------------------------------------------------------------------------------------- task bodies


@contextlib.contextmanager
def _in_worker(threads: int) -> Iterator[None]:
    """Pin torch to the task's CPUs (no oversubscription beside other tasks), and send user errors back as plain
    SelectbenchErrors: their message is all the driver shows, and some subclasses do not unpickle."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # torch reads these on import
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    try:
        yield
    except SelectbenchError as exc:
        raise SelectbenchError(str(exc)) from None


def _score_shard_task(selector: ScoreSelector, payload: _PoolPayload, lo: int, hi: int, threads: int) -> Any:
    """One shard's score columns (``score`` and what the selector's ``selection_info`` reads) and its seconds."""
    with _in_worker(threads):
        pool = payload.shard(lo, hi)
        start = time.perf_counter()
        if selector.info_fields:
            columns = selector.score_fields(pool)
            fields = {name: np.asarray(columns[name]) for name in ("score", *selector.info_fields)}
        else:  # the scores alone: score() may be cheaper than score_fields()
            fields = {"score": np.asarray(selector.score(pool), dtype=np.float64)}
        for name, column in fields.items():
            if column.shape != (hi - lo,):
                raise ValueError(f"{selector.name}: {name} has shape {column.shape}, expected ({hi - lo},)")
        return fields, time.perf_counter() - start


def _select_task(
    config: ExperimentConfig, payload: _PoolPayload, run: Run, out: str, threads: int, *parts: Any
) -> float:
    start = time.perf_counter()
    with _in_worker(threads):
        pool = payload.pool()
        layout = RunLayout(Path(out), run.run_id)
        if not parts or selection_done(layout, pool):
            select_stage(config, pool, run, Path(out))
        else:
            from selectbench.selectors import make_selector
            from selectbench.selectors.artifacts import write_selection

            fields, seconds = _concat(list(parts))
            selector = make_selector(run.selector or "", **run.params)
            selection = selector.select_from_scores(
                pool,
                fields,
                run.budget_k,  # the same count k for every selector, as the local path
                seed=run.seed,
                timings={"score": seconds},
            )
            bounds = shard_bounds(len(pool), len(parts))
            write_selection(
                layout.select.path, pool, selection, run_id=run.run_id, scoring={"executor": "ray", "shards": bounds}
            )
    return time.perf_counter() - start


def _finetune_task(config: ExperimentConfig, run: Run, out: str, threads: int, _selected: float) -> float:
    start = time.perf_counter()
    with _in_worker(threads):
        finetune_stage(config, run, Path(out), progress=False)
    return time.perf_counter() - start


def _evaluate_task(config: ExperimentConfig, run: Run, out: str, threads: int, _trained: float | None) -> float:
    start = time.perf_counter()
    with _in_worker(threads):
        from selectbench.models.engines.factory import EnginePool

        engines = EnginePool()  # this task's engines, shared by its benchmarks
        try:
            for bench in config.evaluate.benchmarks:
                evaluate_stage(config, run, bench, Path(out), engines, progress=False)
        finally:
            engines.close()
    return time.perf_counter() - start
