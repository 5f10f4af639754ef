"""The Ray executor: a tiny grid on a local Ray instance writes the local executor's results.csv, sharded scoring
selects what the local path selects, and a failing task reports its own error (exit status 2)."""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli

from selectbench.errors import SelectbenchError
from selectbench.experiment.config import ExperimentConfig, PoolSpec
from selectbench.experiment.plan import load_experiment_pool
from selectbench.experiment.ray import score_in_shards, shard_bounds
from selectbench.selectors import make_selector
from selectbench.testing import tiny_pool

TIMINGS = ("select_seconds", "train_seconds", "eval_seconds")


def grid_config(tmp_path: Path, model: Path, **changes: object) -> Path:
    """base + full + random (2 seeds) + longest at one budget, heldout-nll on 3 items, on 16 demo records."""
    config = {
        "name": "ray-grid",
        "pool": {"source": "demo", "limit": 16},
        "selectors": [{"name": "random", "seeds": [0, 1]}, "longest"],
        "budgets": [0.25],
        "model": str(model),
        # The 4 longest of these 16 records are 743-1230 tokens under the tiny byte-level tokenizer, and the recipe
        # refuses a subset whose every example is longer than max_length.
        "finetune": {"epochs": 1, "max_length": 1280},
        "evaluate": {"benchmarks": ["heldout-nll"], "limit": {"heldout-nll": 3}, "engine": "hf"},
        **changes,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def results(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(out / "results.csv", newline="") as handle:
        return {(row["run_id"], row["metric"]): row for row in csv.DictReader(handle)}


def done_files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.glob("runs/*/**/DONE")}


@pytest.fixture
def local_ray(isolated_cache: Path) -> Iterator[object]:
    """A local Ray instance in this process, started after the per-test cache is set so workers inherit it."""
    ray = pytest.importorskip("ray")
    from selectbench.experiment.ray import connect

    assert connect(ray, None) == "started"
    try:
        yield ray
    finally:
        ray.shutdown()


def test_shards_are_contiguous_cover_the_pool_and_differ_by_at_most_one() -> None:
    for n, shards in [(16, 3), (16, 7), (5, 5), (3, 8), (1000, 4)]:
        bounds = shard_bounds(n, shards)
        assert len(bounds) == min(n, shards)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(hi == lo for (_, hi), (lo, _) in itertools.pairwise(bounds))
        sizes = [hi - lo for lo, hi in bounds]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_select_from_scores_is_what_select_does_after_scoring() -> None:
    pool = tiny_pool(12)
    selector = make_selector("longest")
    for budget in (1, 5, 0.5, 1.0):
        direct = selector.select(pool, budget, seed=3)
        given = selector.select_from_scores(pool, selector.score(pool), budget, seed=3, timings={"score": 1.5})
        assert (given.ids, given.indices, given.scores, given.k) == (
            direct.ids,
            direct.indices,
            direct.scores,
            direct.k,
        )
        assert given.seed == 3 and given.timings["score"] == 1.5 and "select" in given.timings
    with pytest.raises(ValueError, match="expected"):
        selector.select_from_scores(pool, np.zeros(5), 2)


@pytest.mark.slow
def test_ray_grid_writes_the_results_of_the_local_executor(tmp_path: Path, tiny_llama_dir: Path) -> None:
    pytest.importorskip("ray")
    config = grid_config(tmp_path, tiny_llama_dir)
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    # Ray tasks declare 1 CPU and run torch on one thread; torch on 2 threads sums in another order and differs in
    # the last bits (measured: 9e-10 relative on the full-pool run). One thread here too makes equality exact.
    local = run_cli("run", str(config), "--out", str(local_out), env={"OMP_NUM_THREADS": "1"})
    assert local.returncode == 0, local.stderr
    ray_args = ["--set", "executor=ray", "--set", "ray.score_shards=3", "--set", "ray.num_cpus_per_cell=1"]
    on_ray = run_cli("run", str(config), "--out", str(ray_out), *ray_args)
    assert on_ray.returncode == 0, on_ray.stderr

    want, got = results(local_out), results(ray_out)
    runs = {"base", "full", "random-b0.25-s0", "random-b0.25-s1", "longest-b0.25-s0"}
    assert {run for run, _ in got} == runs and got.keys() == want.keys()
    assert ("longest-b0.25-s0", "intrinsic/share_good") in got and ("base", "heldout-nll/nll_per_token") in got
    for key, row in want.items():
        for column, value in row.items():
            if column not in TIMINGS:  # timings differ run to run; everything else is equal, floats bit for bit
                assert got[key][column] == value, (key, column, value, got[key][column])
    nll = {run: float(row["value"]) for (run, metric), row in got.items() if metric == "heldout-nll/nll_per_token"}
    assert len(set(nll.values())) > 1, "every run scored the same: the adapters were not applied"
    for run in runs - {"base"}:
        selection = f"runs/{run}/select/selection.jsonl"
        assert (ray_out / selection).read_text() == (local_out / selection).read_text()
    longest = json.loads((ray_out / "runs/longest-b0.25-s0/select/meta.json").read_text())
    assert longest["scoring"] == {"executor": "ray", "shards": [[0, 5], [5, 10], [10, 16]]}
    assert (ray_out / "report" / "index.html").exists() and (ray_out / "report" / "leaderboard.md").exists()

    # One line per finished task: 3 score shards (longest), 4 selections, 4 fine-tunes, 5 evaluations.
    lines = re.findall(r"^\[(\d+)/(\d+)\] (\S+ .*?) \(", on_ray.stderr, flags=re.M)
    assert [int(i) for i, _, _ in lines] == list(range(1, 17)) and {n for _, n, _ in lines} == {"16"}
    whats = {what for _, _, what in lines}
    assert {"select full", "fine-tune longest-b0.25-s0", "evaluate heldout-nll base"} <= whats
    assert sum(what.startswith("score longest records") for what in whats) == 3

    # A finished grid re-run on Ray redoes nothing (and does not score again).
    before = done_files(ray_out)
    again = run_cli("run", str(config), "--out", str(ray_out), *ray_args)
    assert again.returncode == 0, again.stderr
    assert done_files(ray_out) == before
    assert "[13/13]" in again.stderr and "score longest" not in again.stderr


@pytest.mark.slow
def test_sharded_scores_select_exactly_what_the_local_path_selects(
    local_ray: object, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    pool = load_experiment_pool(ExperimentConfig(pool=PoolSpec(source="demo", limit=16)))
    selectors = {
        "longest": make_selector("longest"),
        "ifd": make_selector("ifd", model=str(tiny_llama_dir), engine="hf", max_length=256),
    }
    for name, selector in selectors.items():
        whole = np.asarray(selector.score(pool), dtype=np.float64)
        for shards in (3, 7):
            fields, seconds = score_in_shards(selector, pool, shards)
            scores = fields["score"]
            assert scores.shape == (len(pool),) and seconds > 0
            # Model scores of differently padded batches may differ in the last bits (7 shards: ~1e-9 measured).
            np.testing.assert_allclose(scores, whole, rtol=1e-7, atol=0, equal_nan=True, err_msg=f"{name} {shards}")
            if name == "longest":
                assert np.array_equal(scores, whole)
            for budget in (3, 0.5):
                local = selector.select(pool, budget, seed=1)
                sharded = selector.select_from_scores(pool, fields, budget, seed=1)
                assert sharded.ids == local.ids and sharded.indices == local.indices and sharded.k == local.k
                np.testing.assert_allclose(sharded.scores, local.scores, rtol=1e-7)
                assert local.info == sharded.info  # the score columns carry what info needs (IFD's skip reasons)
        if name == "ifd":
            assert np.isnan(whole).any() and local.info["n_filtered_out"] > 0  # the filter and NaNs were exercised

    missing = make_selector("ifd", model=str(tmp_path / "no-such-model"), engine="hf")
    with pytest.raises(SelectbenchError) as here:
        missing.score(pool)
    with pytest.raises(SelectbenchError) as there:
        score_in_shards(missing, pool, 2)
    assert type(there.value) is SelectbenchError and str(there.value) == str(here.value)


@pytest.mark.slow
def test_a_failing_ray_task_exits_2_with_the_stage_error(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    config = grid_config(tmp_path, tmp_path / "no-such-model")
    local = run_cli("run", str(config), "--out", str(tmp_path / "local"))
    on_ray = run_cli("run", str(config), "--out", str(tmp_path / "ray"), "--set", "executor=ray")
    assert local.returncode == 2 and on_ray.returncode == 2, on_ray.stderr
    message = local.stderr.strip().splitlines()[-1]
    assert message.startswith("selectbench: error: model") and "no-such-model" in message
    assert on_ray.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in on_ray.stderr and "RayTaskError" not in on_ray.stderr
    assert re.search(r"^failed: \S+ .* \(\d+ of 13 tasks had finished\)$", on_ray.stderr, flags=re.M)
