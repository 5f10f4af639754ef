"""Experiment configs: strict loading, all problems at once, overrides, `validate`, and every shipped YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from selectbench.config import ConfigError
from selectbench.experiment.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted([*ROOT.glob("selectbench/configs/*.yaml"), *ROOT.glob("configs/*.yaml")])


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


GOOD = {
    "name": "t",
    "pool": {"source": "demo", "limit": 20},
    "selectors": ["random", {"name": "longest", "params": {"unit": "chars"}}],
    "budgets": [0.25, 5],
    "seeds": [0, 1],
    "finetune": {"epochs": 1, "max_length": 64},
    "evaluate": {"benchmarks": ["heldout-nll"], "limit": {"heldout-nll": 3}},
}


def test_every_shipped_config_is_valid():
    assert SHIPPED, "no YAML found"
    for path in SHIPPED:
        config = load_config(path)
        assert config.selectors and config.budgets, path


def test_embedded_demo_is_the_shipped_demo_yaml():
    assert load_config(None) == load_config(ROOT / "selectbench" / "configs" / "demo.yaml")


def test_a_good_config_loads_with_shorthands_and_defaults(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert [s.name for s in config.selectors] == ["random", "longest"]
    assert config.selectors[1].params == {"unit": "chars"}
    assert config.budgets == [0.25, 5] and config.model == "smollm2-135m-instruct"
    assert config.references.full and config.references.base and config.executor == "local"
    assert str(config.out_dir()) == "runs/t"


def test_every_problem_is_reported_at_once_with_its_key_path(tmp_path):
    bad = {
        **GOOD,
        "selectros": [],
        "budgets": [0, 0.5],
        "pool": {"source": "demo", "limt": 3},
        "selectors": [{"name": "randon"}, {"name": "longest", "params": {"units": "words"}}],
        "finetune": {"learing_rate": 1e-4},
        "evaluate": {"benchmarks": ["humaneval", "heldout-nl"], "limit": {"humaneval": "all"}},
        "seeds": "0",
        "executor": "slurm",
    }
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, bad))
    message = str(info.value)
    for expected in (
        "selectros: unknown key",
        "pool.limt: unknown key; valid keys: source, columns, on_invalid, limit",
        "seeds: expected a list",
        "executor: expected one of local, ray",
        "evaluate.limit.humaneval: expected int, found 'all'",
    ):
        assert expected in message, (expected, message)
    # type problems stop before the registry checks; fix them and the rest shows up, all together
    bad.pop("selectros"), bad.pop("seeds"), bad.pop("executor"), bad["pool"].pop("limt")
    bad["evaluate"]["limit"]["humaneval"] = 0
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, bad))
    message = str(info.value)
    for expected in (
        "budgets[0]:",
        "selectors[0] (randon):",
        "random",  # the did-you-mean suggestion
        "selectors[1] (longest):",
        "units",
        "finetune:",
        "learing_rate",
        "evaluate.benchmarks[1]:",
        "evaluate.limit.humaneval: expected a positive integer",
    ):
        assert expected in message, (expected, message)
    assert len(info.value.problems) >= 6


def test_set_overrides_use_dotted_paths_and_yaml_values(tmp_path):
    path = write(tmp_path, GOOD)
    config = load_config(path, ["finetune.epochs=2", "pool.limit=10", "selectors.1.params.unit=words", "out=/x/y"])
    assert config.finetune.epochs == 2 and config.pool.limit == 10
    assert config.selectors[1].params["unit"] == "words" and str(config.out_dir()) == "/x/y"
    with pytest.raises(ConfigError, match=r"expected key\.path=value"):
        load_config(path, ["finetune.epochs"])


def test_validate_cli_reports_and_exits_2(tmp_path):
    good = run_cli("validate", str(write(tmp_path, GOOD)))
    assert good.returncode == 0, good.stderr
    assert "valid; 10 runs" in good.stdout  # base + full + (random, longest) x 2 budgets x 2 seeds
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nselectors: [random]\nbudgets: [0.1]\nfinetune: {epoch: 1}\nmodle: m\n")
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "modle: unknown key" in result.stderr and "2 problems" in result.stderr
    missing = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read the config" in missing.stderr


def test_dry_run_prints_the_plan_and_cost_and_writes_nothing(tmp_path, tiny_llama_dir):
    out = tmp_path / "run"
    config = write(tmp_path, {**GOOD, "model": str(tiny_llama_dir)})
    result = run_cli("run", str(config), "--dry-run", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "random-b0.25-s1" in result.stdout and "longest-b5-s0" in result.stdout
    assert "examples to score" in result.stdout and "tokens to train" in result.stdout
    assert not out.exists()
