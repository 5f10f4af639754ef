"""The experiment runner end to end on a tiny model: grid, stages, results.csv, report, kill and resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

pytestmark = pytest.mark.slow


def tiny_config(tmp_path: Path, model: Path) -> Path:
    config = {
        "name": "tiny",
        "pool": {"source": "demo", "limit": 16},
        "selectors": [{"name": "random", "seeds": [0, 1]}, "longest"],
        "budgets": [0.25],
        "model": str(model),
        "finetune": {"epochs": 1, "max_length": 512, "batch_size": 4},
        "evaluate": {
            "benchmarks": ["heldout-nll", "humaneval"],
            "limit": {"heldout-nll": 3, "humaneval": 2},
            "params": {"heldout-nll": {"max_length": 512}, "humaneval": {"max_new_tokens": 8}},
            "engine": "hf",
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def done_files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.glob("runs/*/**/DONE")}


def test_a_killed_run_resumes_and_finished_stages_are_never_redone(tmp_path: Path, tiny_llama_dir: Path) -> None:
    config = tiny_config(tmp_path, tiny_llama_dir)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "selectbench", "run", str(config), "--out", str(out)]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and first.poll() is None:
        if list(out.glob("runs/*/finetune/DONE")):
            break
        time.sleep(0.2)
    assert first.poll() is None, "the run ended before it could be killed mid-way"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = done_files(out)
    assert any("finetune" in str(p) for p in before) and not (out / "results.csv").exists()

    second = run_cli("run", str(config), "--out", str(out))
    assert second.returncode == 0, second.stderr
    after = done_files(out)
    assert all(after[p] == t for p, t in before.items()), "a finished stage was redone after the kill"

    runs = {"base", "full", "random-b0.25-s0", "random-b0.25-s1", "longest-b0.25-s0"}
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["run_id"] for r in rows} == runs
    metrics = {(r["run_id"], r["metric"]) for r in rows}
    for run in runs:
        assert (run, "heldout-nll/nll_per_token") in metrics and (run, "humaneval/pass@1") in metrics
        if run != "base":
            assert (run, "intrinsic/share_good") in metrics and (run, "intrinsic/style_consistency") in metrics
    hashes = {r["recipe_hash"] for r in rows if r["kind"] != "base"}
    assert len(hashes) == 1 and hashes != {""}
    nll = {r["run_id"]: float(r["value"]) for r in rows if r["metric"] == "heldout-nll/nll_per_token"}
    assert len(set(nll.values())) > 1, "every run scored the same: the adapters were not applied"
    assert (out / "report" / "index.html").exists() and (out / "report" / "leaderboard.md").exists()
    assert "heldout-nll/nll_per_token" in second.stdout and "report/index.html" in second.stdout

    third = run_cli("run", str(config), "--out", str(out))
    assert third.returncode == 0, third.stderr
    assert done_files(out) == after, "a re-run of a finished experiment redid work"

    # The report compares every selector with random, paired, and the terminal ends with the verdicts.
    assert (out / "report" / "comparisons.csv").exists()
    assert "paired comparisons with random" in second.stdout
    # Once the base model's evaluation is on disk, the plan states the difference the grid can detect.
    dry = run_cli("run", str(config), "--out", str(out), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "heldout-nll/nll_per_token: at most" in dry.stdout

    changed = run_cli("run", str(config), "--out", str(out), "--set", "finetune.epochs=2")
    assert changed.returncode == 2 and "different config" in changed.stderr and "finetune" in changed.stderr


def test_seeds_of_a_deterministic_selector_are_training_replicates(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """Seed s is the fine-tuning seed of every run: two seeds of `longest` select the same records, train with
    seeds 0 and 1 under one recipe hash, and give different adapters; a `finetune.seed` in the config is refused."""
    import json

    from safetensors.torch import load_file

    config = {
        "name": "seeds",
        "pool": {"source": "demo", "limit": 12},
        "selectors": [{"name": "longest", "seeds": [0, 1]}],
        "budgets": [4],
        "model": str(tiny_llama_dir),
        "finetune": {"epochs": 1, "max_length": 256, "batch_size": 2},
        "evaluate": {"benchmarks": ["heldout-nll"], "limit": {"heldout-nll": 3}, "engine": "hf"},
        "references": {"full": False, "base": False},
    }
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    done = run_cli("run", str(path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    runs = [out / "runs" / f"longest-b4-s{seed}" for seed in (0, 1)]
    selections = [(run / "select" / "selection.jsonl").read_text() for run in runs]
    assert selections[0] == selections[1]
    metas = [json.loads((run / "finetune" / "meta.json").read_text()) for run in runs]
    assert [m["recipe"]["seed"] for m in metas] == [0, 1]
    assert metas[0]["recipe_hash"] == metas[1]["recipe_hash"]
    weights = [load_file(str(run / "finetune" / "adapter_model.safetensors")) for run in runs]
    assert weights[0].keys() == weights[1].keys()
    assert any(not (weights[0][k] == weights[1][k]).all() for k in weights[0]), "both seeds trained the same adapter"

    config["finetune"]["seed"] = 3
    path.write_text(yaml.safe_dump(config))
    refused = run_cli("validate", str(path))
    assert refused.returncode == 2 and "finetune.seed" in refused.stderr
