"""Experiment configs: one YAML file describes a whole comparison; loaded strictly, every problem reported at once."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from selectbench.errors import SelectbenchError
from selectbench.io import dumps


class ConfigError(SelectbenchError):
    """A config with problems; the message lists all of them, each with its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem{'s' * (len(problems) != 1)} in the config:\n{lines}")


@dataclass
class PoolSpec:
    """Where the pool comes from."""

    source: str = "demo"  # a file, a Hugging Face dataset id, or `demo`
    columns: dict[str, str] | None = None  # field -> column mapping, e.g. {instruction: question}
    on_invalid: Literal["error", "skip"] = "error"
    limit: int | None = None  # use the first N records only (a slice for quick runs)


@dataclass
class SelectorSpec:
    """One selector of the grid."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | None = None  # default: the experiment's `seeds` for random selectors, else [0]
    label: str | None = None  # name shown in reports (default: the selector name); needed to run one twice


@dataclass
class EvaluateSpec:
    """Benchmarks, identical for every run of the grid."""

    benchmarks: list[str] = field(default_factory=lambda: ["heldout-nll"])
    limit: dict[str, int] = field(default_factory=dict)  # benchmark -> first N items
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # benchmark -> its options
    engine: Literal["auto", "hf", "vllm", "openai"] = "auto"
    engine_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class References:
    """Reference runs beside the selectors: the whole pool fine-tuned, and the base model untouched."""

    full: bool = True
    base: bool = True


@dataclass
class RaySpec:
    """The Ray executor's settings."""

    address: str | None = None  # None: start a local Ray instance; "auto" or ray://host:port: join a cluster
    num_gpus_per_cell: float = 0.0  # GPUs each fine-tune/evaluate task declares
    num_cpus_per_cell: float = 1.0
    score_shards: int = 1  # score large pools in this many shards for score-based selectors


@dataclass
class ExperimentConfig:
    """A whole experiment: the grid is selectors x budgets x seeds, plus the references."""

    name: str = "experiment"
    pool: PoolSpec = field(default_factory=PoolSpec)
    selectors: list[SelectorSpec] = field(default_factory=list)
    budgets: list[int | float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    model: str = "smollm2-135m-instruct"
    finetune: dict[str, Any] = field(default_factory=dict)  # FinetuneConfig fields (`selectbench finetune --help`)
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)
    references: References = field(default_factory=References)
    intrinsic: bool | None = None  # label columns (share good, style); None: when the pool has labels
    executor: Literal["local", "ray"] = "local"
    ray: RaySpec = field(default_factory=RaySpec)
    out: str | None = None  # default: runs/<name>

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what `config.yaml` of a run holds)."""
        return dataclasses.asdict(self)

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
        _apply_override(data, item, problems)
    config = _build(ExperimentConfig, data, "", problems)
    if config is not None:
        if problems:
            # Check what can be checked despite the shape problems, so one pass reports (nearly) everything;
            # a check that trips over a value already reported as malformed is skipped.
            with contextlib.suppress(Exception):
                _check(config, problems)
        else:
            _check(config, problems)
    if problems:
        raise ConfigError(source, problems)
    return config


def _apply_override(data: dict[str, Any], item: str, problems: list[str]) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        problems.append(f"--set {item!r}: expected key.path=value")
        return
    parts = key.strip().split(".")
    node: Any = data
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            problems.append(f"--set {key}: {part!r} is not a mapping")
            return
        node = node.setdefault(part, {})
    value = yaml.safe_load(raw) if raw.strip() else None
    last = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        problems.append(f"--set {key}: cannot set a key inside a {type(node).__name__}")


def _build(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``data``; record problems with their key path instead of stopping."""
    label = where or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{label}: expected a mapping, found {type(data).__name__}")
        return cls() if _constructible(cls) else None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    for key in unknown:
        problems.append(f"{_join(where, key)}: unknown key; valid keys: {', '.join(fields)}")
    values: dict[str, Any] = {}
    for name in fields:
        if name in data:
            values[name] = _convert(hints[name], data[name], _join(where, name), problems)
        elif fields[name].default is dataclasses.MISSING and fields[name].default_factory is dataclasses.MISSING:
            problems.append(f"{_join(where, name)}: required")
    try:
        return cls(**values)
    except TypeError:
        return None


def _constructible(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _convert(hint: Any, value: Any, where: str, problems: list[str]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(hint, type) and hint is SelectorSpec and isinstance(value, str):
            value = {"name": value}  # `- random` is short for `- name: random`
        return _build(hint, value, where, problems)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value, where, problems)
        if all(_is_scalar_type(a) for a in options):  # e.g. int | float, bool | None
            if any(_scalar_ok(a, value) for a in options):
                return value
            problems.append(f"{where}: expected {' or '.join(a.__name__ for a in options)}, found {value!r}")
            return value
        return value
    if origin is Literal:
        if value not in args:
            problems.append(f"{where}: expected one of {', '.join(map(str, args))}, found {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, found {type(value).__name__}")
            return []
        return [_convert(args[0], v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, found {type(value).__name__}")
            return {}
        return {k: _convert(args[1], v, _join(where, str(k)), problems) for k, v in value.items()}
    if hint is Any:
        return value
    if _is_scalar_type(hint) and not _scalar_ok(hint, value):
        problems.append(f"{where}: expected {hint.__name__}, found {value!r}")
    return value


def _is_scalar_type(hint: Any) -> bool:
    return hint in (int, float, str, bool)


def _scalar_ok(hint: type, value: Any) -> bool:
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _check(config: ExperimentConfig, problems: list[str]) -> None:
    """Cross-field checks against the registries: selectors, benchmarks, the recipe, budgets."""
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
    try:
        from selectbench.finetune.config import FinetuneConfig

        FinetuneConfig.from_overrides(config.finetune)
    except SelectbenchError as exc:
        problems.append(f"finetune: {exc}")
    try:
        from selectbench.evaluate.benchmarks import get_benchmark, parse_params
    except ImportError:  # pragma: no cover - evaluation always ships with the package
        return
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
