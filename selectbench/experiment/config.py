"""The experiment config: one YAML file describes a whole comparison, loaded strictly with every problem at once."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from selectbench.config import ConfigError, ConfigRules, apply_override, build, option
from selectbench.errors import SelectbenchError
from selectbench.finetune.config import FinetuneConfig
from selectbench.io import dumps


@dataclass
class PoolSpec:
    """Where the pool comes from."""

    source: str = option("demo", "a file, a Hugging Face dataset id, or `demo`")
    columns: dict[str, str] | None = option(None, "field -> column mapping, e.g. {instruction: question}")
    on_invalid: Literal["error", "skip"] = option("error", "a bad record stops the run (error) or is dropped (skip)")
    limit: int | None = option(None, "use the first N records only (a slice for quick runs)")


@dataclass
class SelectorSpec:
    """One selector of the grid; ``- random`` is short for ``- name: random``."""

    CONFIG_RULES: ClassVar[ConfigRules] = ConfigRules(shorthand="name")

    name: str = option(help="a registered selector (`selectbench ls selectors`)")
    params: dict[str, Any] = option(help="the selector's hyperparameters", factory=dict)
    seeds: list[int] | None = option(None, "this selector's seeds (default: the experiment's `seeds`)")
    label: str | None = option(None, "name shown in reports (default: the selector name); needed to run one twice")


@dataclass
class EvaluateSpec:
    """Benchmarks, identical for every run of the grid."""

    benchmarks: list[str] = option(help="`selectbench ls benchmarks`", factory=lambda: ["heldout-nll"])
    limit: dict[str, int] = option(help="benchmark -> its first N items only", factory=dict)
    params: dict[str, dict[str, Any]] = option(help="benchmark -> its options", factory=dict)
    engine: Literal["auto", "hf", "vllm", "openai"] = option("auto", "generation engine")
    engine_options: dict[str, Any] = option(help="options of the engine (not part of the evaluation)", factory=dict)


@dataclass
class References:
    """Reference runs beside the selectors: the whole pool fine-tuned, and the base model untouched."""

    full: bool = option(True, "fine-tune on the whole pool")
    base: bool = option(True, "evaluate the base model as it is")


@dataclass
class RaySpec:
    """The Ray executor's settings."""

    address: str | None = option(None, 'null: start a local Ray instance; "auto" or ray://host:port: join a cluster')
    num_gpus_per_cell: float = option(0.0, "GPUs each fine-tune/evaluate task declares")
    num_cpus_per_cell: float = option(1.0, "CPUs each fine-tune/evaluate task declares")
    score_shards: int = option(1, "score large pools in this many shards for score-based selectors")


@dataclass
class ReportSpec:
    """How the report compares the runs (changing it re-reports; it never re-runs a stage)."""

    compare_to: list[str] = option(
        help="baselines of the paired comparisons, in order (a selector label, full or base); the first present is "
        "the leaderboard's Δ column",
        factory=lambda: ["random", "full", "base"],
    )


@dataclass
class ExperimentConfig:
    """A whole experiment: the grid is selectors x budgets x seeds, plus the references."""

    name: str = option("experiment", "the experiment's name (default output folder: runs/<name>)")
    pool: PoolSpec = option(help="where the pool comes from", factory=PoolSpec)
    selectors: list[SelectorSpec] = option(help="the selectors of the grid", factory=list)
    budgets: list[int | float] = option(help="subset sizes: counts, or fractions of the pool in (0, 1]", factory=list)
    seeds: list[int] = option(
        help="seeds of every selector (a selector's own `seeds` overrides them): seed s sets the selection seed of "
        "stochastic selectors and the fine-tuning seed of every run",
        factory=lambda: [0],
    )
    model: str = option("smollm2-135m-instruct", "the base model spec")
    finetune: FinetuneConfig = option(help="the recipe (`selectbench finetune --help`)", factory=FinetuneConfig)
    evaluate: EvaluateSpec = option(help="benchmarks, the same for every run", factory=EvaluateSpec)
    references: References = option(help="reference runs beside the selectors", factory=References)
    intrinsic: bool | None = option(None, "label columns (share good, style); null: when the pool has labels")
    executor: Literal["local", "ray"] = option("local", "run the stages here (local) or as Ray tasks (ray)")
    ray: RaySpec = option(help="the Ray executor's settings", factory=RaySpec)
    report: ReportSpec = option(help="how the report compares the runs", factory=ReportSpec)
    out: str | None = option(None, "the run folder (default: runs/<name>)")
    # The `finetune` mapping as written (after --set overrides): `to_dict` gives it back, so that `config.json`
    # says what the YAML said and a resumed run compares like with like.
    finetune_given: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what ``config.json`` of a run holds); ``finetune`` holds the recipe
        keys as written (a config built in code: the fields that differ from the defaults)."""
        data = dataclasses.asdict(self)
        data.pop("finetune_given")
        data["finetune"] = self._finetune_keys()
        return data

    def _finetune_keys(self) -> dict[str, Any]:
        with contextlib.suppress(SelectbenchError):
            if FinetuneConfig.from_overrides(self.finetune_given) == self.finetune:
                return copy.deepcopy(self.finetune_given)
        defaults = FinetuneConfig().to_dict()
        return {k: v for k, v in self.finetune.to_dict().items() if v != defaults[k]}

    def out_dir(self) -> Path:
        """The run folder."""
        return Path(self.out or os.path.join("runs", self.name))

    def eval_config_hash(self) -> str:
        """Identifies the evaluation: runs compare only when it is the same."""
        part = {k: v for k, v in dataclasses.asdict(self.evaluate).items() if k != "engine_options"}
        return hashlib.sha256(dumps([part, self.model]).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (or the embedded demo when ``path`` is None), apply ``key.path=value`` overrides and
    check it all: unknown keys, wrong types, unknown selectors, benchmarks and recipe fields, bad budgets.

    Raises:
        ConfigError: listing every problem found, each with its key path.
    """
    from selectbench.experiment.presets import DEMO_CONFIG

    if path is None:
        source, data = "embedded demo config", yaml.safe_load(DEMO_CONFIG)
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SelectbenchError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SelectbenchError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise SelectbenchError(
                f"{path}: expected a mapping of config keys at the top, found {type(data).__name__}"
            )
    problems: list[str] = []
    for item in overrides or []:
        apply_override(data, item, problems)
    config = build(ExperimentConfig, data, problems)
    if config is not None:
        if isinstance(data.get("finetune"), dict):
            config.finetune_given = copy.deepcopy(data["finetune"])
        if problems:
            # Check what can be checked despite the shape problems, so one pass reports (nearly) everything;
            # a check that trips over a value already reported as malformed is skipped.
            with contextlib.suppress(Exception):
                _check(config, problems)
        else:
            _check(config, problems)
    if problems:
        raise ConfigError(source, problems)
    assert config is not None  # every failure to build records a problem
    return config


def _check(config: ExperimentConfig, problems: list[str]) -> None:
    """Cross-field checks against the registries: selectors, benchmarks, budgets (the recipe checks itself)."""
    from selectbench.selectors import make_selector
    from selectbench.selectors.base import BudgetError, resolve_budget

    if not config.selectors:
        problems.append("selectors: at least one selector is needed")
    if not config.budgets:
        problems.append("budgets: at least one budget (a count, or a fraction in (0, 1]) is needed")
    for i, budget in enumerate(config.budgets):
        try:
            resolve_budget(budget, config.pool.limit or 10**12)
        except BudgetError as exc:
            problems.append(f"budgets[{i}]: {exc}")
    labels: dict[str, int] = {}
    for i, spec in enumerate(config.selectors):
        try:
            make_selector(spec.name, **spec.params)
        except (SelectbenchError, TypeError, ValueError) as exc:
            problems.append(f"selectors[{i}] ({spec.name}): {exc}")
        label = spec.label or spec.name
        if label in labels:
            problems.append(f"selectors[{i}]: label {label!r} is used twice; give one of them another `label`")
        if label in ("full", "base"):
            problems.append(f"selectors[{i}]: {label!r} is reserved for the reference runs; set `label`")
        labels[label] = i
    if not config.report.compare_to:
        problems.append("report.compare_to: name at least one baseline (e.g. random)")
    if "seed" in config.finetune_given:
        problems.append(
            "finetune.seed: in an experiment each run's fine-tuning seed is its seed (`seeds`, or a selector's own "
            "`seeds`); remove finetune.seed"
        )
    from selectbench.evaluate.benchmarks import get_benchmark, parse_params

    for i, name in enumerate(config.evaluate.benchmarks):
        try:
            bench = get_benchmark(name)
            parse_params(bench, dict(config.evaluate.params.get(name, {})))
        except SelectbenchError as exc:
            problems.append(f"evaluate.benchmarks[{i}]: {exc}")
    for name in (*config.evaluate.limit, *config.evaluate.params):
        if name not in config.evaluate.benchmarks:
            problems.append(f"evaluate: options given for {name!r}, which is not in evaluate.benchmarks")
    for name, limit in config.evaluate.limit.items():
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            problems.append(f"evaluate.limit.{name}: expected a positive integer, found {limit!r}")
