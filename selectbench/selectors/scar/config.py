"""``ScarTrainConfig``: the SCAR ranker's training hyperparameters, built strictly from ``--set`` values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from selectbench.config import ConfigError, ConfigRules, build, describe_fields, mismatches, option
from selectbench.errors import SelectbenchError

ASPECTS = ("helpfulness", "correctness")
SCORE_TYPES = {"help_correct": ASPECTS, "help": ("helpfulness",), "correct": ("correctness",)}
CONSTRAINT_MODES = ("abs", "abs_pos", "diff", "abs_diff", "none")


@dataclass(kw_only=True)
class ScarTrainConfig:
    """Ranker training hyperparameters. Defaults are the reference's (``train.py``), per ALGORITHMS.md."""

    CONFIG_RULES: ClassVar[ConfigRules] = ConfigRules(
        unknown="unknown key {key!r}{hint}", mismatch="{path} must be {expected}, got {value!r}"
    )

    encoder: str = option("minilm-l6", "encoder model spec (alias, folder or HF id); its width is hidden_dim")
    linear_dim: int = option(512, "L: hidden width of the relation network and of the output MLP")
    max_length: int = option(512, "tokens per text (instruction and answer are truncated separately)")
    epochs: int = option(10, "training epochs (the reference's train.py default; its released gte-base used 20)")
    batch_size: int = option(4, "training quadruples per step")
    eval_batch_size: int = option(16, "pairs per forward pass when scoring validation and test rows")
    lr: float = option(2e-5, "AdamW learning rate, on all parameters (encoder included)")
    weight_decay: float = option(0.01, "AdamW weight decay (torch's default)")
    warmup_ratio: float = option(0.1, "linear warmup over this fraction of all steps, then linear decay to 0")
    max_grad_norm: float = option(1.0, "gradient clipping (global norm)")
    margin: float = option(0.5, "margin of the ranking loss (MarginRankingLoss)")
    triplet_margin: float = option(1.0, "margin of the triplet representation losses (Euclidean)")
    disentangle_weight: float = option(0.1, "lambda in loss + lambda * (L_c + L_p) / 2; 0 turns the term off")
    score_type: str = option("help_correct", "quality used by the pair filter: help_correct (mean), help, correct")
    constraint_mode: str = option("abs", "pair filter: abs (both in (min, max)), abs_pos, diff, abs_diff, none")
    constraint_min: float = option(5.0, "pair filter lower bound (strict)")
    constraint_max: float = option(10.0, "pair filter upper bound (strict; 10 is no bound on the 0-9 scale)")
    holdout_fraction: float = option(0.2, "share held out of training, split half test, half validation")
    split_seed: int = option(42, "seed of the train/validation/test split")
    seed: int = option(42, "seed of head initialisation, shuffling and dropout")
    device: str = option("auto", "auto (CUDA if available), cpu, cuda, ...")
    trust_remote_code: bool = option(False, "allow the encoder's own modelling code from the hub (gte needs it)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScarTrainConfig:
        """Build a config from a dict; every unknown key and bad value is reported in one error."""
        problems: list[str] = []
        config = build(cls, values, problems)
        if problems or config is None:
            valid = ", ".join(name for name, _, _ in describe_fields(cls))
            raise SelectbenchError("scar train config: " + "; ".join(problems) + f". Valid keys: {valid}")
        return config

    def __post_init__(self) -> None:
        problems = list(mismatches(self).values())
        if problems:
            raise ConfigError("scar train config", problems)
        if self.score_type not in SCORE_TYPES:
            problems.append(f"score_type must be one of {', '.join(SCORE_TYPES)}, got {self.score_type!r}")
        if self.constraint_mode not in CONSTRAINT_MODES:
            problems.append(f"constraint_mode must be one of {', '.join(CONSTRAINT_MODES)}")
        for name in ("epochs", "batch_size", "eval_batch_size", "linear_dim", "max_length"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.holdout_fraction < 1.0:
            problems.append(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if problems:
            raise ConfigError("scar train config", problems)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)
