"""The one fine-tuning recipe: TRL ``SFTTrainer`` on chat-formatted prompt/completion pairs, loss on the response.

Every subset goes through :func:`finetune` with the same :class:`FinetuneConfig`; the data order is built by
:mod:`selectbench.finetune.order` (seeded shuffle, optional length grouping, cut to the matched budget) so that
steps and tokens can be matched exactly, and TRL/transformers do the tokenising, masking, batching and
optimisation. This module assembles the SFTConfig and the trainer, runs it in a stage folder and writes its meta;
the subset is read by :mod:`selectbench.finetune.subset` and the trainer is :mod:`selectbench.finetune.trainer`.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectbench.artifacts import StageFolder, lookup
from selectbench.errors import SelectbenchError
from selectbench.finetune.config import FinetuneConfig
from selectbench.finetune.order import training_order
from selectbench.finetune.subset import conversation_rows, fit_length, load_chat_tokenizer, load_subset
from selectbench.finetune.trainer import progress_callback, trainer_class

if TYPE_CHECKING:
    from selectbench.data import Pool

# The trackers the README names, and the packages that provide them (transformers checks the others itself).
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
# A finished run's identity, each key with where its meta.json holds it.
IDENTITY_IN_META = {
    "recipe_hash": "recipe_hash",
    "subset_fingerprint": "subset.fingerprint",
    "model_fingerprint": "model.fingerprint",
    "seed": "recipe.seed",
}


def finetune(
    subset: str | os.PathLike[str] | Pool,
    model: str,
    config: FinetuneConfig,
    out_dir: str | os.PathLike[str],
    progress: bool = True,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``model`` on ``subset`` with the recipe ``config``; write the adapter (or checkpoint) to ``out_dir``.

    The run trains in a temporary folder beside ``out_dir`` and is renamed into place when ``meta.json`` and
    ``DONE`` are written, so a killed run leaves no half-written ``out_dir``. A finished ``out_dir`` with the same
    recipe hash, subset fingerprint and model is kept (the call says so and returns its meta); a different one is
    an error unless ``force``. Runs under ``accelerate launch`` on several devices unchanged.

    Args:
        subset: a Pool, a selection folder, or a pool file (``selection.jsonl`` or any pool format).
        model: a model spec (alias, local folder, .gguf file or Hugging Face id).
        config: the recipe.
        out_dir: where the adapter (or full checkpoint), tokenizer, ``meta.json`` and ``DONE`` go.
        progress: show a progress bar with the loss and ETA.
        force: replace an existing ``out_dir``.

    Returns:
        The meta dict written to ``meta.json``.
    """
    from selectbench.models.spec import resolve_model

    started = time.perf_counter()
    pool = load_subset(subset)
    resolved_model = resolve_model(model)
    identity = {
        "recipe_hash": config.recipe_hash(),
        "subset_fingerprint": pool.fingerprint,
        "model_fingerprint": resolved_model.fingerprint,
        "seed": config.seed,
    }
    out = Path(out_dir)
    finished = _finished_run(out, identity, force)
    if finished is not None:
        print(
            f"{out}: already fine-tuned with recipe {identity['recipe_hash']} on this subset; skipping",
            file=sys.stderr,
        )
        return finished

    state = _distributed_state()
    stage = StageFolder(out)
    partial = stage.partial()
    if state.is_main_process:
        shutil.rmtree(partial.path, ignore_errors=True)  # left by a killed run
        partial.begin()
    state.wait_for_everyone()
    try:
        meta = _train(pool, model, resolved_model, config, partial.path, progress, state, identity)
        if state.is_main_process:
            meta["timings"]["total_s"] = time.perf_counter() - started
            partial.finish(meta)
            stage.replace_with(partial)  # an old out_dir (only with --force) goes away after the rename
        state.wait_for_everyone()
    finally:
        if state.is_main_process:
            shutil.rmtree(partial.path, ignore_errors=True)
    if state.is_main_process:
        print(
            f"fine-tuned {model} on {meta['data']['examples']} examples: {meta['trained']['steps']} steps, "
            f"{meta['trained']['tokens']} tokens, loss {_fmt(meta['trained']['first_loss'])} -> "
            f"{_fmt(meta['trained']['last_loss'])} -> {out}",
            file=sys.stderr,
        )
    return meta


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _finished_run(out: Path, identity: dict[str, str], force: bool) -> dict[str, Any] | None:
    """The meta of a finished run in ``out`` with the same identity, None if ``out`` may be (re)written."""
    if force or not out.exists():
        return None
    if not out.is_dir():
        raise SelectbenchError(f"--out {str(out)!r} is a file; choose a folder")
    stage = StageFolder(out)
    if not stage.done:
        if any(out.iterdir()):
            raise SelectbenchError(
                f"--out {str(out)!r} exists and is not a finished fine-tuning run (no DONE marker); "
                "remove it, pass --force to replace it, or choose another folder"
            )
        return None
    meta = stage.finished({IDENTITY_IN_META[key]: value for key, value in identity.items()})
    if meta is not None:
        return meta
    meta = stage.meta() or {}  # unreadable: every part of the identity differs
    found = {key: lookup(meta, where) for key, where in IDENTITY_IN_META.items()}
    differ = [f"{key} {found[key]} (now {identity[key]})" for key in identity if found[key] != identity[key]]
    raise SelectbenchError(
        f"--out {str(out)!r} holds a finished fine-tuning run with a different {', '.join(differ)}; "
        "pass --force to replace it, or choose another folder"
    )


def _distributed_state() -> Any:
    """This process's place in a (possibly multi-process) launch, set up as the Trainer will set it up."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.accelerator.is_available())


def _check_report_to(report_to: str) -> None:
    """Fail early, with the fix, when ``report_to`` names an unknown integration or one that is not installed."""
    import importlib.util

    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in (name.strip() for name in report_to.split(",")):
        if name in ("none", "all", ""):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise SelectbenchError(
                f"report_to={name!r} is not a tracking integration; use none, all, or a comma-separated list of: "
                f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}"
            )
        packages = TRACKER_PACKAGES.get(name, ())
        if packages and not any(importlib.util.find_spec(package) for package in packages):
            raise SelectbenchError(f"report_to={name} needs the package {packages[0]}: pip install {packages[0]}")


def _precision(config: FinetuneConfig) -> str:
    import torch

    if config.precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if config.precision == "fp16" and not torch.cuda.is_available():
        raise SelectbenchError("precision=fp16 needs a CUDA GPU; on CPU use precision=fp32 (or auto)")
    return config.precision


@dataclass
class Prepared:
    """A run ready to train: the TRL trainer with its training order in place, and what went into it."""

    trainer: Any
    data: Any  # TRL's tokenised dataset after max_length (and packing): one row per training sequence
    lengths: list[int]  # tokens per row
    loss_tokens: list[int]  # response tokens per row (labels that are not -100)
    order: list[int]  # rows in training order (trainer.train_dataset is data.select(order))
    target: dict[str, Any]
    data_info: dict[str, Any]
    fell_back: bool
    precision: str
    micro_batch_size: int
    accumulation: int
    world_size: int


def prepare_training(
    pool: Pool, model: str, config: FinetuneConfig, workdir: Path, *, progress: bool = True, state: Any = None
) -> Prepared:
    """Build the SFTTrainer for ``pool`` and put the training order in place (no training yet).

    Raises:
        SelectbenchError: nothing trainable within max_length, or batch sizes that do not divide.
    """
    import datasets
    import torch
    from transformers import PrinterCallback, set_seed
    from trl import SFTConfig

    from selectbench.models.loading import load_causal_lm

    _check_report_to(config.report_to)
    state = state or _distributed_state()
    recipe = config.resolved()
    world = state.num_processes
    # On CPU one sequence per forward pass is fastest: no padding, the unmasked attention path, and batching buys
    # a CPU nothing (benchmarks/finetune_throughput.py). Gradient accumulation keeps the step the same.
    micro = config.micro_batch_size or (config.batch_size // world if torch.accelerator.is_available() else 1)
    if micro < 1 or config.batch_size % (micro * world):
        raise SelectbenchError(
            f"batch_size {config.batch_size} is not a multiple of micro_batch_size ({micro}) x devices ({world}); "
            "set batch_size or micro_batch_size so that it is"
        )
    accumulation = config.batch_size // (micro * world)
    precision = _precision(config)
    if not progress:
        datasets.disable_progress_bars()

    tokenizer, fell_back = load_chat_tokenizer(model, say=state.is_main_process)
    rows = conversation_rows(pool)
    # Adapter init and dropout draw from the global RNG: seed it before the model and adapter exist.
    set_seed(config.seed)
    # LoRA leaves the base frozen, so its weights can sit in the compute dtype; full fine-tuning keeps fp32
    # master weights and autocasts.
    weights_dtype = "bfloat16" if precision == "bf16" and config.method == "lora" else "float32"
    # On CPU; the Trainer moves it to this process's device (so `accelerate launch` places each copy right).
    base = load_causal_lm(model, dtype=weights_dtype, device="cpu")
    peft_config = None
    if config.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            task_type="CAUSAL_LM",
        )
    args = SFTConfig(
        output_dir=str(workdir),
        # TRL tokenises untruncated; truncation, dropping and packing happen below, where they are counted.
        max_length=None,
        completion_only_loss=True,
        padding_free=config.batching == "packing",
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=1,  # one pass over the training order built below, which already holds every epoch
        train_sampling_strategy="sequential",
        learning_rate=recipe["learning_rate"],
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=0,  # set below from warmup_ratio, once the number of optimizer steps is known
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=config.gradient_checkpointing,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        report_to=config.report_to,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_drop_last=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without an accelerator, say CPU explicitly: only then does a multi-process launch (torchrun,
        # `accelerate launch`) train as one data-parallel job over gloo rather than as independent copies.
        use_cpu=not torch.accelerator.is_available(),
        ddp_find_unused_parameters=False,  # every trainable weight takes part in each step
    )
    trainer = trainer_class()(
        model=base, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=peft_config,
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # it prints every log line; the progress bar shows the loss instead
    if progress and state.is_main_process:
        trainer.add_callback(progress_callback())

    data, data_info = fit_length(trainer.train_dataset, config, say=state.is_main_process)
    if config.batching == "packing":
        from trl.data_utils import pack_dataset

        data = pack_dataset(data.select_columns(["input_ids", "labels"]), config.max_length, "bfd", {})
    lengths = [len(ids) for ids in data["input_ids"]]
    loss_tokens = [sum(label != -100 for label in labels) for labels in data["labels"]]
    order, target = training_order(lengths, config)
    trainer.train_dataset = data.select(order)
    # Rounded down: transformers rounds a warmup ratio up, so a run of a few steps would spend its first (or only)
    # step at learning rate 0 and, with one step, end exactly where it started.
    steps = math.ceil(math.ceil(len(order) / (micro * world)) / accumulation)
    trainer.args.warmup_steps = math.floor(config.warmup_ratio * steps)
    return Prepared(
        trainer, data, lengths, loss_tokens, order, target, data_info, fell_back, precision, micro, accumulation, world
    )


def _train(
    pool: Pool,
    model: str,
    resolved_model: Any,
    config: FinetuneConfig,
    workdir: Path,
    progress: bool,
    state: Any,
    identity: dict[str, str],
) -> dict[str, Any]:
    import torch

    from selectbench.io import versions

    run = prepare_training(pool, model, config, workdir, progress=progress, state=state)
    trainer, order, lengths, micro = run.trainer, run.order, run.lengths, run.micro_batch_size
    train_start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - train_start
    trainer.save_model(str(workdir))
    if state.is_main_process:
        (workdir / "training_args.bin").unlink(missing_ok=True)  # a pickle; meta.json holds the recipe

    tokens = sum(lengths[i] for i in order)
    losses = [
        {"step": entry["step"], "loss": entry["loss"], "learning_rate": entry.get("learning_rate")}
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    packed = config.batching == "packing"
    # Tokens the batches hold with padding, for one device taking consecutive micro-batches (padding waste).
    padded = sum(
        max(lengths[i] for i in order[k : k + micro]) * len(order[k : k + micro]) for k in range(0, len(order), micro)
    )
    return {
        "stage": "finetune",
        "recipe_hash": identity["recipe_hash"],
        "recipe": config.resolved(),
        "hashed": config.hashed_fields(),
        "model": {"spec": model, "path": resolved_model.path, "fingerprint": identity["model_fingerprint"]},
        "subset": {"source": pool.source, "fingerprint": identity["subset_fingerprint"], "n": len(pool)},
        "output": "adapter" if config.method == "lora" else "checkpoint",
        "chat_template": "plain (fallback)" if run.fell_back else "model",
        "data": {**run.data_info, "sequences": len(lengths)},
        "matching": {"mode": config.matching, "target": run.target},
        "trained": {
            "steps": trainer.state.global_step,
            "examples": None if packed else len(order),
            "sequences": len(order),
            "epochs": len(order) / len(lengths),
            "tokens": tokens,
            "loss_tokens": sum(run.loss_tokens[i] for i in order),
            "padded_tokens": None if packed else padded,
            "first_loss": losses[0]["loss"] if losses else None,
            "last_loss": losses[-1]["loss"] if losses else None,
        },
        "losses": losses,
        "devices": {
            "world_size": run.world_size,
            "device": str(trainer.args.device),
            "precision": run.precision,
            "micro_batch_size": micro,
            "gradient_accumulation": run.accumulation,
            "torch_threads": torch.get_num_threads(),
        },
        "timings": {"train_s": train_s, "tokens_per_s": tokens / train_s if train_s else None},
        "versions": versions("torch", "transformers", "trl", "peft", "accelerate"),
    }
