"""The recipe's trainer: TRL's SFTTrainer with a CPU loss on the trained positions only, and its progress bar."""

from __future__ import annotations

import sys
from typing import Any


def trainer_class() -> type:
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


def progress_callback() -> Any:
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
