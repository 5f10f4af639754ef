"""The one fine-tuning recipe: TRL ``SFTTrainer`` on chat-formatted prompt/completion pairs, loss on the response.

Every subset goes through :func:`finetune` with the same :class:`FinetuneConfig`; the data order is built here
(seeded shuffle, optional length grouping, cut to the matched budget) so that steps and tokens can be matched
exactly, and TRL/transformers do the tokenising, masking, batching and optimisation.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectbench.errors import SelectbenchError
from selectbench.finetune.config import FinetuneConfig

if TYPE_CHECKING:
    from selectbench.data import Pool

META_FILE = "meta.json"
DONE_FILE = "DONE"
# The trackers the README names, and the packages that provide them (transformers checks the others itself).
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
GROUP_WINDOW_STEPS = 64  # length grouping sorts within windows of this many optimizer steps, then shuffles steps


def load_subset(subset: str | os.PathLike[str] | Pool) -> Pool:
    """The examples to fine-tune on: a Pool, a selection folder (``selection.jsonl`` + ``DONE``), or a pool file.

    Raises:
        SelectbenchError: the subset is missing, unfinished or empty.
    """
    from selectbench.data import Pool, load_pool

    if isinstance(subset, Pool):
        pool = subset
    else:
        path = Path(subset)
        if path.is_dir():
            if not (path / "selection.jsonl").exists():
                raise SelectbenchError(
                    f"subset {str(subset)!r}: folder has no selection.jsonl; pass a folder written by "
                    "`selectbench select` or a pool file (.jsonl, .json, .parquet, .csv)"
                )
            if not (path / DONE_FILE).exists():
                raise SelectbenchError(
                    f"subset {str(subset)!r}: the selection is unfinished (no DONE marker); "
                    "re-run `selectbench select`"
                )
            path = path / "selection.jsonl"
        if path.is_file() and not path.read_bytes().strip():
            raise SelectbenchError(f"subset {str(path)!r} is empty: there is nothing to fine-tune on")
        pool = load_pool(str(path) if path.exists() else str(subset))
    if len(pool) == 0:
        raise SelectbenchError(f"subset {pool.source!r} is empty: there is nothing to fine-tune on")
    return pool


def conversation_rows(pool: Pool) -> list[dict[str, Any]]:
    """TRL's conversational prompt/completion rows: every turn but the last is the prompt, the last (the response
    being selected) is the completion, so loss falls on that response only. Formatting goes through
    :mod:`selectbench.models.chat`, exactly as evaluation does."""
    from selectbench.models.chat import record_messages

    rows = []
    for record in pool:
        messages = record_messages(record)
        if messages[-1].get("role") != "assistant" or len(messages) < 2:
            raise SelectbenchError(
                f"subset {pool.source!r}, record {record['id']!r}: a conversation must end with an assistant turn "
                f"(the response to train on) after at least one user turn; it ends with {messages[-1].get('role')!r}"
            )
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return rows


def load_chat_tokenizer(model: str, *, say: bool = True) -> tuple[Any, bool]:
    """The model's tokenizer, given the plain template if it has none (said on stderr unless ``say`` is False);
    returns (tokenizer, fell_back)."""
    from selectbench.models.chat import ensure_chat_template
    from selectbench.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model)
    fell_back = ensure_chat_template(tokenizer)
    if fell_back and say:
        print(
            f"note: {model} has no chat template; using selectbench's plain template "
            "('### User:' / '### Assistant:' turns, see README), the same one evaluation uses",
            file=sys.stderr,
        )
    return tokenizer, fell_back


def token_lengths(tokenizer: Any, rows: Sequence[dict[str, Any]], *, prompts: bool = False) -> list[int]:
    """Untruncated length in tokens of each row (prompt + completion), tokenised as TRL tokenises it; with
    ``prompts=True``, the length of the prompt alone (with the assistant header that opens the response)."""
    lengths = []
    for row in rows:
        if prompts:
            ids = tokenizer.apply_chat_template(
                row["prompt"], tokenize=True, return_dict=True, add_generation_prompt=True
            )
        else:
            ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=True)
        lengths.append(len(ids["input_ids"]))
    return lengths


def measure_subset(subset: str | os.PathLike[str] | Pool, model: str, config: FinetuneConfig) -> dict[str, int]:
    """What one pass over a subset trains on under ``config``'s max_length and overlong rule, without a model.

    The runner uses it to set ``match_tokens`` from a reference subset (e.g. ``epochs * tokens``).

    Returns:
        ``{"examples", "tokens", "over_max_length"}``: examples kept, their tokens (prompt + response,
        truncated, no padding), and how many were longer than max_length.
    """
    pool = load_subset(subset)
    tokenizer, _ = load_chat_tokenizer(model)
    rows = conversation_rows(pool)
    lengths, prompt_lengths = token_lengths(tokenizer, rows), token_lengths(tokenizer, rows, prompts=True)
    limit = config.max_length
    over = sum(n > limit for n in lengths)
    if config.overlong == "truncate":  # kept if a response token survives truncation
        kept = [min(n, limit) for n, p in zip(lengths, prompt_lengths, strict=True) if p < limit]
    else:
        kept = [n for n in lengths if n <= limit]
    return {"examples": len(kept), "tokens": sum(kept), "over_max_length": over}


def suggest_max_length(lengths: Sequence[int]) -> int:
    """A max_length that keeps about 95% of examples whole: that percentile, rounded up to a multiple of 64."""
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return 64 * math.ceil(p95 / 64)


def training_order(lengths: Sequence[int], config: FinetuneConfig) -> tuple[list[int], dict[str, Any]]:
    """The sequence of example indices the run trains on, in order, and how it was matched.

    A seeded shuffle per epoch, repeated as often as needed; cut to ``epochs`` passes, ``match_steps`` optimizer
    steps, or the first ``match_tokens`` tokens (the example that crosses the budget is kept); then, with
    ``batching=length``, sorted by length within windows of optimizer steps whose order is shuffled again. The
    cut comes before grouping, so grouping changes which examples share a step, never which are trained.
    """
    n = len(lengths)
    rng = random.Random(config.seed)
    order: list[int] = []

    def extend() -> None:
        epoch = list(range(n))
        rng.shuffle(epoch)
        order.extend(epoch)

    if config.matching == "epochs":
        total = max(1, round(config.epochs * n))
        while len(order) < total:
            extend()
        order = order[:total]
        target: dict[str, Any] = {"epochs": config.epochs}
    elif config.matching == "steps":
        total = config.match_steps * config.batch_size
        while len(order) < total:
            extend()
        order = order[:total]
        target = {"steps": config.match_steps}
    else:
        budget, seen, cut = config.match_tokens, 0, 0
        while seen < budget:
            if cut == len(order):
                extend()
            seen += lengths[order[cut]]
            cut += 1
        order = order[:cut]
        target = {"tokens": budget}
    if config.batching == "length":
        window = GROUP_WINDOW_STEPS * config.batch_size
        grouped: list[int] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
            steps = [chunk[i : i + config.batch_size] for i in range(0, len(chunk), config.batch_size)]
            # The last step of the run may be partial; keep it last so every other step is full.
            head, tail = (steps[:-1], steps[-1:]) if start + window >= len(order) else (steps, [])
            rng.shuffle(head)
            grouped.extend(i for step in head + tail for i in step)
        order = grouped
    return order, target


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
    partial = out.parent / f".{out.name}.partial"
    if state.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a killed run
        partial.mkdir(parents=True)
    state.wait_for_everyone()
    try:
        meta = _train(pool, model, resolved_model, config, partial, progress, state, identity)
        if state.is_main_process:
            meta["timings"]["total_s"] = time.perf_counter() - started
            from selectbench.io import write_json

            write_json(partial / META_FILE, meta)
            (partial / DONE_FILE).write_text("")
            _replace(partial, out)
        state.wait_for_everyone()
    finally:
        if state.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
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
    if not (out / DONE_FILE).exists():
        if any(out.iterdir()):
            raise SelectbenchError(
                f"--out {str(out)!r} exists and is not a finished fine-tuning run (no DONE marker); "
                "remove it, pass --force to replace it, or choose another folder"
            )
        return None
    try:
        meta = json.loads((out / META_FILE).read_text())
    except (OSError, ValueError):
        meta = {}
    found = {
        "recipe_hash": meta.get("recipe_hash"),
        "subset_fingerprint": meta.get("subset", {}).get("fingerprint"),
        "model_fingerprint": meta.get("model", {}).get("fingerprint"),
    }
    if found == identity:
        return meta
    differ = [f"{key} {found[key]} (now {identity[key]})" for key in identity if found[key] != identity[key]]
    raise SelectbenchError(
        f"--out {str(out)!r} holds a finished fine-tuning run with a different {', '.join(differ)}; "
        "pass --force to replace it, or choose another folder"
    )


def _replace(partial: Path, out: Path) -> None:
    """Move the finished run into place; an old ``out`` (only with --force) goes away after the rename."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.rename(out, old)
    os.rename(partial, out)
    shutil.rmtree(old, ignore_errors=True)


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
    trainer = _trainer_class()(
        model=base, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=peft_config,
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # it prints every log line; the progress bar shows the loss instead
    if progress and state.is_main_process:
        trainer.add_callback(_progress_callback())

    data, data_info = _fit_length(trainer.train_dataset, config, say=state.is_main_process)
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


def _fit_length(dataset: Any, config: FinetuneConfig, *, say: bool = True) -> tuple[Any, dict[str, Any]]:
    """Apply max_length (truncate or drop) to TRL's tokenised dataset; error when nothing trainable is left."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    n, limit = len(lengths), config.max_length
    over = [i for i, length in enumerate(lengths) if length > limit]
    everything = (
        f"all {n} examples are longer than max_length={limit} tokens (shortest {min(lengths)}, median "
        f"{sorted(lengths)[n // 2]}, longest {max(lengths)})"
    )
    advice = f"--set max_length={suggest_max_length(lengths)} keeps about 95% of them whole"
    if len(over) == n and config.overlong == "drop":
        raise SelectbenchError(f"{everything}, so overlong=drop leaves nothing to train on; {advice}")
    info: dict[str, Any] = {"examples": n, "over_max_length": len(over), "overlong": config.overlong, "dropped": 0}
    if not over:
        return dataset, info
    if config.overlong == "drop":
        keep = [i for i, length in enumerate(lengths) if length <= limit]
        info["dropped"] = n - len(keep)
        note = f"dropped (overlong=drop; {len(keep)} left)"
        dataset = dataset.select(keep)
    else:
        dataset = dataset.map(
            lambda row: {"input_ids": row["input_ids"][:limit], "labels": row["labels"][:limit]},
            desc="truncating to max_length",
        )
        # A prompt that fills max_length leaves no response token to learn from.
        empty = [i for i, labels in enumerate(dataset["labels"]) if all(label == -100 for label in labels)]
        if len(empty) == n:
            raise SelectbenchError(
                f"every example's prompt fills max_length={limit} tokens, so no response token is left to train "
                f"on; raise it, e.g. --set max_length={suggest_max_length(lengths)}"
            )
        if empty:
            dataset = dataset.select(sorted(set(range(n)) - set(empty)))
        info["dropped"] = len(empty)
        note = "truncated (overlong=truncate)" + (
            f"; {len(empty)} had no response left within max_length and were dropped" if empty else ""
        )
    if say and len(over) == n:
        # Truncation still trains on every example (the start of each); a longest-response subset under a short
        # shared max_length legitimately lands here, so it is a warning, not an error.
        print(f"warning: {everything}: every one is {note}; {advice}", file=sys.stderr)
    elif say:
        print(f"note: {len(over)} of {n} examples are longer than max_length={limit} tokens: {note}", file=sys.stderr)
    info["examples"] = n - info["dropped"]
    return dataset, info


def _trainer_class() -> type:
    """TRL's SFTTrainer with the recipe's CPU loss (a function: TRL is imported only when training).

    TRL takes the loss through a fused LM head. Off Triton devices that head projects every position, prompt and
    padding included, and works out per-token entropy and top-1 inside its own autograd function: on a CPU a fifth
    of each step (benchmarks/finetune_throughput.py). On CPU the model is asked for the logits of the trained
    positions only (``logits_to_keep``) and the loss is the same number: the summed negative log-likelihood of the
    response tokens over their count (``num_items_in_batch`` under gradient accumulation). TRL's metrics (entropy,
    mean_token_accuracy, num_tokens) are worked out from those logits, so logs read the same on every device. On an
    accelerator TRL's head stays: it scores the trained positions in tiles and never holds the full logits.
    """
    import inspect

    import torch
    import torch.nn.functional as F
    from trl import SFTTrainer

    class RecipeTrainer(SFTTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            # transformers' causal LMs take it; for any other, the trained positions are cut from the full logits
            self.logits_to_keep = "logits_to_keep" in inspect.signature(type(model).forward).parameters

        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            if self.args.device.type != "cpu" or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            labels = inputs["labels"][:, 1:]  # position t predicts token t + 1
            positions = (labels != -100).any(dim=0).nonzero().squeeze(1)  # trained in some row of the batch
            forward = {key: value for key, value in inputs.items() if key != "labels"} | {"use_cache": False}
            if self.logits_to_keep:
                logits = model(**forward, logits_to_keep=positions).logits
            else:
                logits = model(**forward).logits[:, positions]
            targets = labels[:, positions]
            trained = targets != -100
            logits, targets = logits[trained].float(), targets[trained]
            count = trained.sum() if num_items_in_batch is None else num_items_in_batch
            loss = F.cross_entropy(logits, targets, reduction="sum") / torch.as_tensor(count).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count spans every rank

            # Into TRL's own metric store, which SFTTrainer.log averages and empties at each logging step.
            with torch.no_grad():
                gather = self.accelerator.gather_for_metrics
                n = gather(trained.sum()).sum()
                log_p = logits.log_softmax(dim=-1)
                entropy = gather(-(log_p.exp() * log_p).sum()).sum()
                correct = gather((logits.argmax(dim=-1) == targets).sum()).sum()
                self._metrics[mode]["entropy"].append((entropy / n).item() if n > 0 else 0.0)
                self._metrics[mode]["mean_token_accuracy"].append((correct / n).item() if n > 0 else 0.0)
                if mode == "train":
                    mask = inputs.get("attention_mask")
                    seen = mask.sum() if mask is not None else torch.tensor(inputs["position_ids"].size(1))
                    self._total_train_tokens += gather(seen).sum().item()
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return RecipeTrainer


def _progress_callback() -> Any:
    """A trainer callback drawing the progress bar (a function: transformers is imported only when training)."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class ProgressBar(TrainerCallback):
        """A tqdm bar over optimizer steps with the latest loss; tqdm adds the rate and ETA."""

        def __init__(self) -> None:
            self.bar: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar = tqdm(
                total=state.max_steps, desc="fine-tuning", unit="step", file=sys.stderr, dynamic_ncols=True
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar.update(state.global_step - self.bar.n)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ) -> None:
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar.close()

    return ProgressBar()
