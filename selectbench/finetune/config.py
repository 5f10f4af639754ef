"""``FinetuneConfig``: every knob of the one fine-tuning recipe, strict overrides, and the recipe hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from selectbench.config import ConfigError, ConfigRules, build, mismatches, option

# Bump when the recipe code changes what a given config trains (data order, loss masking, truncation ...), so that
# runs made before and after the change never share a recipe hash.
RECIPE_VERSION = 3  # 2: warmup steps are warmup_ratio x steps rounded down, not up; 3: the seed is not hashed

MATCHING = ("epochs", "steps", "tokens")

# Fields that change how a run is logged, how fast it runs or how much memory it takes, never the trained weights
# (up to float rounding): left out of the recipe hash so that runs differing only in them stay comparable.
# Not part of the recipe: logging and memory knobs, and the seed (runs that differ only in their seed are training-
# noise replicates of one recipe, compared with each other; the seed is part of a run's identity instead).
NOT_HASHED = frozenset({"report_to", "logging_steps", "micro_batch_size", "gradient_checkpointing", "seed"})
LORA_FIELDS = frozenset({"lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"})
DEFAULT_LEARNING_RATE = {"lora": 2e-4, "full": 2e-5}


def _unused_for_mode(overrides: Mapping[str, Any]) -> list[str]:
    """Keys set explicitly that the chosen mode would silently ignore: errors, so nobody believes they took effect."""
    problems = []
    matching = overrides.get("matching", "epochs")
    method = overrides.get("method", "lora")
    if matching in MATCHING:
        for key, mode in (("epochs", "epochs"), ("match_steps", "steps"), ("match_tokens", "tokens")):
            if key in overrides and overrides[key] is not None and matching != mode:
                problems.append(f"{key} is only used with matching={mode} (matching is {matching!r})")
    if method == "full":
        for key in sorted(LORA_FIELDS & set(overrides)):
            problems.append(f"{key} is only used with method=lora (method is 'full')")
    return problems


RULES = ConfigRules(
    unknown="{prefix}unknown fine-tuning config key {key!r}{hint}; valid keys: {valid} "
    "(`selectbench finetune --help` describes each)",
    mismatch="{path}: expected {expected}, got {value!r}",
    check_given=_unused_for_mode,
)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """The fine-tuning recipe: one instance trains every subset of an experiment identically.

    Build it from a flat mapping with :meth:`from_overrides` (strict: unknown keys and wrong types are errors).
    :meth:`resolved` fills the defaults that depend on other fields; :meth:`recipe_hash` identifies the recipe.
    """

    CONFIG_RULES: ClassVar[ConfigRules] = RULES

    method: Literal["lora", "full"] = option("lora", "'lora' (PEFT LoRA adapter, default) or 'full' (all weights)")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA scaling alpha (the update is scaled by alpha / r)")
    lora_dropout: float = option(0.05, "dropout on the LoRA input")
    lora_target_modules: str | list[str] = option(
        "all-linear", "modules that get adapters: 'all-linear' (every linear layer but the output head) or names"
    )
    learning_rate: float | None = option(None, "peak learning rate; null: 2e-4 for lora, 2e-5 for full")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = option(
        "cosine", "learning-rate schedule after warmup"
    )
    warmup_ratio: float = option(
        0.03, "share of the optimizer steps spent warming up, [0, 1); rounded down (a short run has none)"
    )
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    epochs: float = option(3, "passes over the subset (matching=epochs only)")
    batch_size: int = option(8, "examples per optimizer step, over all devices (the effective batch size)")
    micro_batch_size: int | None = option(
        None,
        "examples per device per forward pass; gradient accumulation makes up the rest of batch_size. "
        "null: batch_size / number of devices on GPUs, 1 on CPU (fastest there). Changes speed and memory, "
        "not the recipe",
    )
    max_length: int = option(1024, "longest training sequence in tokens (prompt + response)")
    overlong: Literal["truncate", "drop"] = option(
        "truncate", "examples longer than max_length: 'truncate' (keep the start) or 'drop' them"
    )
    batching: Literal["length", "random", "packing"] = option(
        "length",
        "how examples form batches: 'length' (shuffled, then grouped by length within windows of 64 steps: "
        "little padding), 'random' (shuffled order as is), or 'packing' (examples concatenated without padding "
        "into sequences of max_length, attention kept within each example)",
    )
    matching: Literal["epochs", "steps", "tokens"] = option(
        "epochs",
        "how subsets of different size are trained comparably: 'epochs' (same passes, the papers' default), "
        "'steps' (every subset gets match_steps optimizer steps), 'tokens' (every subset trains on "
        "match_tokens tokens, within one example)",
    )
    match_steps: int | None = option(None, "optimizer steps for every subset (required with matching=steps)")
    match_tokens: int | None = option(
        None, "training tokens (prompt + response, no padding) for every subset (required with matching=tokens)"
    )
    seed: int = option(0, "seed for adapter init, dropout and data order")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", "'auto': bf16 on a GPU that supports it, else fp32 (always fp32 on CPU); or fp32/bf16/fp16"
    )
    gradient_checkpointing: bool = option(False, "recompute activations to save GPU memory (slow on CPU; not hashed)")
    report_to: str = option(
        "none", "experiment tracking passed to TRL: none, tensorboard, wandb, mlflow, all (not hashed)"
    )
    logging_steps: int = option(1, "record the loss every N optimizer steps (not hashed)")

    def __post_init__(self) -> None:
        type_problems = mismatches(self)
        problems = [*type_problems.values(), *_check_values(self, set(type_problems))]
        if problems:
            raise ConfigError("fine-tuning config", problems)

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any] | None = None) -> FinetuneConfig:
        """The default recipe with ``overrides`` applied (e.g. parsed ``--set key=value`` pairs).

        Raises:
            ConfigError: unknown keys (the message lists the valid ones), wrong types, bad values and keys the
                chosen mode ignores, all reported in one message.
        """
        problems: list[str] = []
        config = build(cls, dict(overrides or {}), problems)
        if problems or config is None:
            raise ConfigError("fine-tuning config", problems)
        return config

    def to_dict(self) -> dict[str, Any]:
        """Every field as given."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def resolved(self) -> dict[str, Any]:
        """Every field with derived defaults filled in (the learning rate from the method)."""
        values = self.to_dict()
        if values["learning_rate"] is None:
            values["learning_rate"] = DEFAULT_LEARNING_RATE[self.method]
        return values

    def hashed_fields(self) -> dict[str, Any]:
        """The resolved fields that decide the trained result: no logging or memory knobs, and no fields the
        chosen method or matching mode ignores (LoRA fields for full fine-tuning, ``epochs`` unless matching by
        epochs, ``match_*`` of other modes)."""
        values = {k: v for k, v in self.resolved().items() if k not in NOT_HASHED}
        if self.method != "lora":
            values = {k: v for k, v in values.items() if k not in LORA_FIELDS}
        if self.matching != "epochs":
            values.pop("epochs")
        if self.matching != "steps":
            values.pop("match_steps")
        if self.matching != "tokens":
            values.pop("match_tokens")
        if isinstance(values.get("lora_target_modules"), list):
            values["lora_target_modules"] = sorted(values["lora_target_modules"])
        # 3 and 3.0 epochs are one recipe: float fields hash as floats.
        floats = _float_fields()
        for key, value in values.items():
            if key in floats and isinstance(value, int) and not isinstance(value, bool):
                values[key] = float(value)
        return values

    def recipe_hash(self) -> str:
        """``sha256:`` + 16 hex digits over the canonical JSON of :meth:`hashed_fields` and the recipe version."""
        canonical = json.dumps(
            {"recipe_version": RECIPE_VERSION, **self.hashed_fields()}, sort_keys=True, separators=(",", ":")
        )
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def field_names() -> list[str]:
    """The config keys, in declaration order."""
    return [f.name for f in dataclasses.fields(FinetuneConfig)]


def _float_fields() -> set[str]:
    """The fields that take a float (perhaps besides None)."""
    hints = typing.get_type_hints(FinetuneConfig)
    return {
        f.name
        for f in dataclasses.fields(FinetuneConfig)
        if float in (typing.get_args(hints[f.name]) or (hints[f.name],))
    }


def _check_values(config: FinetuneConfig, skip: set[str]) -> list[str]:
    """Range and consistency problems, for the fields whose types are right (``skip`` holds the others)."""
    problems = []

    def need(name: str, ok: Callable[[Any], bool], rule: str) -> None:
        value = getattr(config, name)
        if name not in skip and value is not None and not ok(value):
            problems.append(f"{name}: must be {rule}, got {value!r}")

    for name in ("lora_r", "lora_alpha", "batch_size", "max_length", "logging_steps"):
        need(name, lambda v: v >= 1, "at least 1")
    for name in ("micro_batch_size", "match_steps", "match_tokens"):
        need(name, lambda v: v >= 1, "at least 1 (or null)")
    need("lora_dropout", lambda v: 0.0 <= v < 1.0, "in [0, 1)")
    need("warmup_ratio", lambda v: 0.0 <= v < 1.0, "in [0, 1)")
    need("weight_decay", lambda v: v >= 0.0, ">= 0")
    need("max_grad_norm", lambda v: v > 0.0, "> 0")
    need("epochs", lambda v: math.isfinite(v) and v > 0, "a positive number")
    need("learning_rate", lambda v: math.isfinite(v) and v > 0, "positive (or null)")
    need("lora_target_modules", lambda v: v != [], "'all-linear', a module name or a non-empty list of names")
    if not skip & {"batch_size", "micro_batch_size"} and not problems:
        need(
            "micro_batch_size", lambda v: config.batch_size % v == 0, f"a divisor of batch_size ({config.batch_size})"
        )
    if config.matching == "steps" and config.match_steps is None:
        problems.append(
            "matching=steps needs match_steps (the optimizer steps every subset trains), e.g. match_steps=100"
        )
    if config.matching == "tokens" and config.match_tokens is None:
        problems.append(
            "matching=tokens needs match_tokens (the tokens every subset trains on), e.g. match_tokens=200000; "
            "`selectbench.finetune.measure_subset` counts a reference subset's tokens"
        )
    return problems
