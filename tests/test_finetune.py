"""The fine-tuning recipe: config and recipe hash, loss masking, matching modes, outputs, reruns and bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, write_jsonl

from selectbench.data import load_pool, pool_from_records
from selectbench.errors import SelectbenchError
from selectbench.finetune import FinetuneConfig, finetune, measure_subset
from selectbench.finetune.config import field_names
from selectbench.finetune.order import training_order
from selectbench.finetune.recipe import prepare_training
from selectbench.finetune.subset import token_lengths

# Two cores shared with other test processes: one thread per process avoids OpenMP spinning against the others
# (20 tiny steps: 1.6 s with one thread, 40 s with two on a loaded machine). The code under test is unchanged.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
FAST = {"batch_size": 4, "epochs": 1}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows(n: int, *, offset: int = 0, words: int = 1) -> list[dict]:
    """Alpaca rows with distinct ids and response lengths that vary with the index."""
    return [
        {
            "id": f"r{offset + i}",
            "instruction": f"Explain topic number {offset + i}.",
            "input": "" if i % 2 else f"Context {i}",
            "output": " ".join(["word"] * ((i % 7 + 1) * words)) + f" end{i}.",
        }
        for i in range(n)
    ]


def tokenizer_and_rows(model: Path, pool) -> tuple:
    """The chat tokenizer and TRL rows for a pool, as the recipe builds them."""
    from selectbench.finetune.subset import conversation_rows, load_chat_tokenizer

    return load_chat_tokenizer(str(model))[0], conversation_rows(pool)


def meta_of(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def cli_finetune(subset: Path, model: Path, out: Path, *sets: str, extra: tuple[str, ...] = ()):
    args = ["finetune", "--subset", str(subset), "--model", str(model), "--out", str(out), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    return run_cli(*args, *extra, env=ONE_THREAD)


# --- config and recipe hash (no model) ---------------------------------------------------------------------------


def test_unknown_config_key_is_an_error_listing_valid_keys() -> None:
    with pytest.raises(SelectbenchError) as err:
        FinetuneConfig.from_overrides({"lr": 1e-4})
    message = str(err.value)
    assert "unknown fine-tuning config key 'lr'" in message
    for key in field_names():
        assert key in message
    with pytest.raises(SelectbenchError, match="'learning_rat' \\(did you mean 'learning_rate'\\?\\)"):
        FinetuneConfig.from_overrides({"learning_rat": 1e-4})


def test_config_problems_are_reported_together_with_what_was_expected() -> None:
    with pytest.raises(SelectbenchError) as err:
        FinetuneConfig.from_overrides({"batch_size": 2.5, "method": "qlora", "warmup_ratio": 1.5, "epochs": "x"})
    message = str(err.value)
    assert "batch_size: expected int, got 2.5" in message
    assert "method: expected one of lora, full, got 'qlora'" in message
    assert "warmup_ratio: must be in [0, 1), got 1.5" in message
    assert "epochs: expected float, got 'x'" in message


def test_matching_modes_need_their_target_and_reject_keys_they_ignore() -> None:
    with pytest.raises(SelectbenchError, match="matching=tokens needs match_tokens"):
        FinetuneConfig.from_overrides({"matching": "tokens"})
    with pytest.raises(SelectbenchError, match="epochs is only used with matching=epochs"):
        FinetuneConfig.from_overrides({"matching": "steps", "match_steps": 10, "epochs": 2})
    with pytest.raises(SelectbenchError, match="lora_r is only used with method=lora"):
        FinetuneConfig.from_overrides({"method": "full", "lora_r": 8})
    assert FinetuneConfig.from_overrides({"learning_rate": "2e-4"}).learning_rate == 2e-4  # YAML reads 2e-4 as text


def test_recipe_hash_is_stable_and_changes_with_a_hyperparameter() -> None:
    base = FinetuneConfig.from_overrides({"epochs": 3})
    # The same in a fresh interpreter (no dict-order or process-dependent state in the hash).
    code = "from selectbench.finetune import FinetuneConfig as C; print(C.from_overrides({'epochs': 3}).recipe_hash())"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert fresh == base.recipe_hash()
    assert base.recipe_hash().startswith("sha256:") and len(base.recipe_hash()) == 7 + 16
    # The seed is not part of the recipe: runs that differ only in it are training-noise replicates of one recipe.
    same = [{"epochs": 3.0}, {"report_to": "tensorboard", "logging_steps": 5, "micro_batch_size": 2}, {"seed": 1}]
    for overrides in same:
        assert FinetuneConfig.from_overrides({"epochs": 3, **overrides}).recipe_hash() == base.recipe_hash()
    # The resolved learning rate is hashed: spelling out the default changes nothing.
    assert FinetuneConfig.from_overrides({"learning_rate": 2e-4}).recipe_hash() == FinetuneConfig().recipe_hash()
    different = [{"learning_rate": 1e-4}, {"lora_r": 8}, {"max_length": 512}, {"batching": "random"}]
    hashes = {FinetuneConfig.from_overrides(o).recipe_hash() for o in different}
    assert len(hashes) == len(different) and base.recipe_hash() not in hashes
    tokens = [FinetuneConfig.from_overrides({"matching": "tokens", "match_tokens": n}).recipe_hash() for n in (10, 11)]
    assert tokens[0] != tokens[1]


# --- training order (no model) -----------------------------------------------------------------------------------


def test_training_order_matches_epochs_steps_and_tokens() -> None:
    import random

    lengths = [random.Random(i).randint(10, 300) for i in range(37)]
    order, target = training_order(lengths, FinetuneConfig.from_overrides({"epochs": 2, "batch_size": 4}))
    assert sorted(order) == sorted(list(range(37)) * 2) and target == {"epochs": 2}

    config = FinetuneConfig.from_overrides({"matching": "steps", "match_steps": 30, "batch_size": 4})
    order, target = training_order(lengths, config)
    assert len(order) == 120 and target == {"steps": 30}  # more than three passes over 37 examples

    config = FinetuneConfig.from_overrides({"matching": "tokens", "match_tokens": 5000, "batch_size": 4})
    order, _ = training_order(lengths, config)
    total = sum(lengths[i] for i in order)
    assert 5000 <= total < 5000 + max(lengths)

    # Length grouping reorders which examples share a step, never which examples are trained; it cuts padding.
    grouped, _ = training_order(lengths, FinetuneConfig.from_overrides({"epochs": 2, "batch_size": 4}))
    plain, _ = training_order(
        lengths, FinetuneConfig.from_overrides({"epochs": 2, "batch_size": 4, "batching": "random"})
    )
    assert sorted(grouped) == sorted(plain)

    def padded(order: list[int]) -> int:
        return sum(max(lengths[i] for i in order[k : k + 4]) * len(order[k : k + 4]) for k in range(0, len(order), 4))

    assert padded(grouped) < 0.8 * padded(plain)


# --- the recipe on a tiny model ----------------------------------------------------------------------------------


def test_loss_is_computed_on_the_response_tokens_only(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    pool = pool_from_records(rows(3))
    run = prepare_training(pool, str(tiny_llama_dir), FinetuneConfig.from_overrides(FAST), tmp_path, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    for i, record in enumerate(pool):
        row = run.data[i]
        ids, labels = row["input_ids"], row["labels"]
        trained = [t for t, label in zip(ids, labels, strict=True) if label != -100]
        assert trained == [label for label in labels if label != -100]
        masked = [t for t, label in zip(ids, labels, strict=True) if label == -100]
        # ChatML: the prompt (user turn + assistant header) is masked; the response and its end-of-turn are trained.
        assert tokenizer.decode(trained) == record["response"] + "<|im_end|>\n"
        assert tokenizer.decode(masked) == (
            f"<|im_start|>user\n{record['instruction']}\n\n{record['input']}<|im_end|>\n<|im_start|>assistant\n"
            if record["input"]
            else f"<|im_start|>user\n{record['instruction']}<|im_end|>\n<|im_start|>assistant\n"
        )
        assert labels[: len(masked)] == [-100] * len(masked)  # the mask is the prefix, not scattered tokens
    # measure_subset counts exactly what TRL tokenised.
    from selectbench.finetune.subset import conversation_rows, load_chat_tokenizer

    assert token_lengths(load_chat_tokenizer(str(tiny_llama_dir))[0], conversation_rows(pool)) == run.lengths
    assert measure_subset(pool, str(tiny_llama_dir), FinetuneConfig())["tokens"] == sum(run.lengths)


@pytest.mark.parametrize(
    ("overrides", "logits_to_keep"),
    [
        ({"micro_batch_size": 4}, True),  # padded rows, no one of which holds every trained position
        ({"micro_batch_size": 4}, False),  # a model without logits_to_keep: positions cut from the full logits
        ({"micro_batch_size": 1}, True),
        ({"batching": "packing", "micro_batch_size": 1, "max_length": 256}, True),  # several examples in one row
    ],
)
def test_the_cpu_loss_matches_trls_fused_head_in_loss_gradients_and_metrics(
    tiny_llama_dir: Path, tmp_path: Path, overrides: dict, logits_to_keep: bool
) -> None:
    import torch
    from trl import SFTTrainer

    # Long prompts with short responses beside short prompts with long ones: in a padded batch the trained
    # positions of each row start and end where no other row's do.
    pool = pool_from_records(
        [
            {"id": f"r{i}", "instruction": "Explain " + "the topic " * (1 + 12 * (i % 2)), "input": "",
             "output": "word " * (1 + 12 * (1 - i % 2)) + f"end{i}."}
            for i in range(4)
        ]
    )  # fmt: skip
    config = FinetuneConfig.from_overrides({"batch_size": 4, "epochs": 1, "lora_dropout": 0.0, **overrides})
    run = prepare_training(pool, str(tiny_llama_dir), config, tmp_path, progress=False)
    trainer, model = run.trainer, run.trainer.model
    trainer.logits_to_keep = logits_to_keep
    batch = next(iter(trainer.get_train_dataloader()))
    trained = int((batch["labels"][:, 1:] != -100).sum())
    if config.micro_batch_size == 4:
        rows_trained = (batch["labels"][:, 1:] != -100).tolist()
        union = [any(column) for column in zip(*rows_trained, strict=True)]
        assert all(row != union for row in rows_trained)
    if config.batching == "packing":
        assert batch["input_ids"].shape[0] == 1 and int((batch["position_ids"] == 0).sum()) >= 2
    model.train()

    def step(compute_loss, num_items_in_batch) -> tuple[float, list, dict]:
        trainer._metrics["train"].clear()
        loss = compute_loss(trainer, model, dict(batch), num_items_in_batch=num_items_in_batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad(set_to_none=True)
        metrics = {key: trainer._metrics["train"][key][-1] for key in ("entropy", "mean_token_accuracy")}
        return loss.item(), grads, metrics

    # With gradient accumulation the Trainer divides by the response tokens of all the accumulated batches.
    for num_items_in_batch in (None, torch.tensor(3 * trained)):
        ours = step(type(trainer).compute_loss, num_items_in_batch)
        trls = step(SFTTrainer.compute_loss, num_items_in_batch)
        assert ours[0] == pytest.approx(trls[0], rel=1e-5)
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(ours[1], trls[1], strict=True))
        assert ours[2] == pytest.approx(trls[2], rel=1e-5)
    assert ours[0] == pytest.approx(step(type(trainer).compute_loss, None)[0] / 3, rel=1e-5)
    assert trainer.logits_to_keep is logits_to_keep


def test_lora_run_lowers_loss_and_writes_an_adapter_peft_loads(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    subset = write_jsonl(tmp_path / "subset.jsonl", rows(12))
    out = tmp_path / "ft"
    result = cli_finetune(subset, tiny_llama_dir, out, "epochs=4", "batch_size=4", "learning_rate=1e-3")
    assert result.returncode == 0, result.stderr
    files = {p.name for p in out.iterdir()}
    assert {"DONE", "meta.json", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert "training_args.bin" not in files
    assert not list(tmp_path.glob(".ft.*"))  # the temporary folder was renamed into place
    meta = meta_of(out)
    assert meta["trained"]["steps"] == 12 and meta["trained"]["examples"] == 48  # 4 epochs x 12 / batch 4
    assert meta["trained"]["tokens"] == 4 * measure_subset(subset, str(tiny_llama_dir), FinetuneConfig())["tokens"]
    losses = [entry["loss"] for entry in meta["losses"]]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses
    assert (
        meta["recipe_hash"]
        == FinetuneConfig.from_overrides({"epochs": 4, "batch_size": 4, "learning_rate": 1e-3}).recipe_hash()
    )
    assert meta["subset"]["fingerprint"] == load_pool(str(subset)).fingerprint
    assert meta["versions"]["trl"] and meta["timings"]["train_s"] > 0

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), out)
    lora_b = [p for name, p in tuned.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # trained (LoRA B starts at zero)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, tuned(ids).logits)


def test_a_one_step_run_trains_despite_the_default_warmup(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    # 4 examples, batch 4, one epoch: one optimizer step. Rounded up, warmup_ratio=0.03 would make it a warmup step
    # at learning rate 0 and leave the adapter exactly as initialised.
    run = finetune(
        pool_from_records(rows(4)), str(tiny_llama_dir), FinetuneConfig.from_overrides(FAST), tmp_path / "ft",
        progress=False,
    )  # fmt: skip
    assert run["trained"]["steps"] == 1
    weights = load_file(tmp_path / "ft" / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b)  # LoRA B starts at zero


def test_two_runs_with_one_recipe_give_the_same_loss_curve(tiny_llama_dir: Path, tmp_path: Path) -> None:
    config = FinetuneConfig.from_overrides({"epochs": 2, "batch_size": 4})
    first = finetune(pool_from_records(rows(8)), str(tiny_llama_dir), config, tmp_path / "a", progress=False)
    second = finetune(pool_from_records(rows(8)), str(tiny_llama_dir), config, tmp_path / "b", progress=False)
    other = finetune(
        pool_from_records(rows(5, offset=50)), str(tiny_llama_dir), config, tmp_path / "c", progress=False
    )
    assert [e["loss"] for e in first["losses"]] == [e["loss"] for e in second["losses"]]
    assert first["recipe_hash"] == second["recipe_hash"] == other["recipe_hash"]
    assert first["subset"]["fingerprint"] != other["subset"]["fingerprint"]


def test_steps_mode_gives_subsets_of_different_size_the_same_steps(tiny_llama_dir: Path, tmp_path: Path) -> None:
    config = FinetuneConfig.from_overrides({"matching": "steps", "match_steps": 5, "batch_size": 2})
    small = finetune(pool_from_records(rows(3)), str(tiny_llama_dir), config, tmp_path / "small", progress=False)
    large = finetune(pool_from_records(rows(20)), str(tiny_llama_dir), config, tmp_path / "large", progress=False)
    for meta in (small, large):
        assert meta["trained"]["steps"] == 5 and meta["trained"]["examples"] == 10
        assert len(meta["losses"]) == 5
    assert small["trained"]["epochs"] == pytest.approx(10 / 3) and large["trained"]["epochs"] == 0.5
    assert small["recipe_hash"] == large["recipe_hash"]


def test_tokens_mode_gives_subsets_of_different_size_the_same_tokens(tiny_llama_dir: Path, tmp_path: Path) -> None:
    config = FinetuneConfig.from_overrides({"matching": "tokens", "match_tokens": 1500, "batch_size": 4})
    small, large = pool_from_records(rows(4)), pool_from_records(rows(30, offset=100, words=3))
    longest = max(
        max(token_lengths(*tokenizer_and_rows(tiny_llama_dir, pool))) for pool in (small, large)
    )  # one example: the budget is crossed by at most the example that crosses it
    metas = [
        finetune(pool, str(tiny_llama_dir), config, tmp_path / name, progress=False)
        for pool, name in ((small, "small"), (large, "large"))
    ]
    for meta in metas:
        assert 1500 <= meta["trained"]["tokens"] < 1500 + longest
    assert abs(metas[0]["trained"]["tokens"] - metas[1]["trained"]["tokens"]) < longest
    assert metas[0]["trained"]["examples"] > metas[1]["trained"]["examples"]  # short examples: more of them


def test_full_fine_tuning_writes_a_checkpoint_transformers_loads(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    config = FinetuneConfig.from_overrides({"method": "full", "learning_rate": 1e-3, **FAST})
    meta = finetune(pool_from_records(rows(8)), str(tiny_llama_dir), config, tmp_path / "full", progress=False)
    assert meta["output"] == "checkpoint" and "lora_r" not in meta["hashed"]
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert not torch.equal(tuned.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    assert (tmp_path / "full" / "tokenizer.json").exists()


# --- outputs: skip, force, atomicity -----------------------------------------------------------------------------


def test_finished_run_is_skipped_and_a_different_recipe_needs_force(
    tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    subset = write_jsonl(tmp_path / "subset.jsonl", rows(4))
    out = tmp_path / "ft"
    one_epoch = FinetuneConfig.from_overrides({"epochs": 1})
    first = finetune(subset, str(tiny_llama_dir), one_epoch, out, progress=False)
    stamp = (out / "DONE").stat().st_mtime_ns
    capsys.readouterr()
    assert finetune(subset, str(tiny_llama_dir), one_epoch, out, progress=False) == first
    err = capsys.readouterr().err
    assert "already fine-tuned" in err and "skipping" in err
    assert (out / "DONE").stat().st_mtime_ns == stamp

    changed = cli_finetune(subset, tiny_llama_dir, out, "epochs=2")
    assert changed.returncode == 2
    assert "different recipe_hash" in changed.stderr and "--force" in changed.stderr
    assert "Traceback" not in changed.stderr and (out / "DONE").stat().st_mtime_ns == stamp
    two_epochs = FinetuneConfig.from_overrides({"epochs": 2})
    forced = finetune(subset, str(tiny_llama_dir), two_epochs, out, progress=False, force=True)
    assert meta_of(out) == json.loads(json.dumps(forced))
    assert forced["recipe"]["epochs"] == 2 and forced["trained"]["steps"] == 1 and not (tmp_path / ".ft.old").exists()


def test_a_killed_run_leaves_no_output_folder(tiny_llama_dir: Path, tmp_path: Path) -> None:
    subset = write_jsonl(tmp_path / "subset.jsonl", rows(8))
    out, partial = tmp_path / "ft", tmp_path / ".ft.partial"
    args = [sys.executable, "-m", "selectbench", "finetune", "--subset", str(subset), "--model", str(tiny_llama_dir)]
    args += ["--out", str(out), "--set", "epochs=200", "--set", "batch_size=2", "--no-progress"]
    proc = subprocess.Popen(args, env={**os.environ, **ONE_THREAD}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not partial.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert partial.exists(), proc.communicate()[1]
        time.sleep(3)  # into loading and training
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    # The next run clears the leftover and finishes.
    finetune(subset, str(tiny_llama_dir), FinetuneConfig.from_overrides(FAST), out, progress=False)
    assert (out / "DONE").exists() and not partial.exists()


# --- bad input ---------------------------------------------------------------------------------------------------


def test_an_empty_subset_is_an_error(tiny_llama_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = cli_finetune(empty, tiny_llama_dir, tmp_path / "ft")
    assert result.returncode == 2
    assert "is empty: there is nothing to fine-tune on" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "ft").exists()


def test_a_subset_longer_than_max_length_everywhere_is_an_error_with_a_suggestion_when_dropping(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    subset = write_jsonl(tmp_path / "subset.jsonl", rows(6))
    result = cli_finetune(subset, tiny_llama_dir, tmp_path / "ft", "max_length=8", "overlong=drop")
    assert result.returncode == 2, result.stderr
    assert "all 6 examples are longer than max_length=8 tokens" in result.stderr
    assert "overlong=drop leaves nothing to train on" in result.stderr
    lengths = token_lengths(*tokenizer_and_rows(tiny_llama_dir, pool_from_records(rows(6))))
    assert f"--set max_length={64 * -(-max(lengths) // 64)}" in result.stderr  # covers them all here
    assert not (tmp_path / "ft").exists() and not list(tmp_path.glob(".ft*"))


def test_a_subset_longer_than_max_length_everywhere_is_truncated_with_a_warning_by_default(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    subset = write_jsonl(tmp_path / "subset.jsonl", rows(6))
    tokenizer, chats = tokenizer_and_rows(tiny_llama_dir, pool_from_records(rows(6)))
    lengths, prompts = token_lengths(tokenizer, chats), token_lengths(tokenizer, chats, prompts=True)
    limit = max(prompts) + 1  # every example is over, yet each keeps a response token
    assert limit < min(lengths)
    result = cli_finetune(subset, tiny_llama_dir, tmp_path / "ft", f"max_length={limit}", "batch_size=3", "epochs=1")
    assert result.returncode == 0, result.stderr
    assert f"warning: all 6 examples are longer than max_length={limit} tokens" in result.stderr
    assert f"--set max_length={64 * -(-max(lengths) // 64)}" in result.stderr
    meta = json.loads((tmp_path / "ft" / "meta.json").read_text())
    assert meta["data"]["over_max_length"] == 6 and meta["trained"]["tokens"] == 6 * limit


def test_some_examples_over_max_length_are_truncated_or_dropped(tiny_llama_dir: Path, tmp_path: Path) -> None:
    pool = pool_from_records(rows(6, words=4))
    lengths = token_lengths(*tokenizer_and_rows(tiny_llama_dir, pool))
    limit = sorted(lengths)[3]  # two or so are longer
    over = sum(n > limit for n in lengths)
    truncated = prepare_training(
        pool, str(tiny_llama_dir), FinetuneConfig.from_overrides({"max_length": limit, **FAST}), tmp_path / "a",
        progress=False,
    )  # fmt: skip
    assert truncated.data_info["over_max_length"] == over and max(truncated.lengths) == limit
    assert sum(truncated.lengths) == sum(min(n, limit) for n in lengths)
    dropped = prepare_training(
        pool, str(tiny_llama_dir), FinetuneConfig.from_overrides({"max_length": limit, "overlong": "drop", **FAST}),
        tmp_path / "b", progress=False,
    )  # fmt: skip
    assert dropped.data_info["dropped"] == over and len(dropped.lengths) == len(lengths) - over


def test_an_unknown_set_key_is_an_error_listing_valid_keys(tiny_llama_dir: Path, tmp_path: Path) -> None:
    subset = write_jsonl(tmp_path / "subset.jsonl", rows(4))
    result = cli_finetune(subset, tiny_llama_dir, tmp_path / "ft", "epoch=2")
    assert result.returncode == 2
    assert "unknown fine-tuning config key 'epoch' (did you mean 'epochs'?)" in result.stderr
    assert "valid keys: method, lora_r" in result.stderr and "Traceback" not in result.stderr


def test_a_model_without_chat_template_falls_back_to_the_plain_template(
    tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from transformers import AutoTokenizer

    model = tmp_path / "no-template"
    shutil.copytree(tiny_llama_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config_file = model / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config.pop("chat_template", None)
    config_file.write_text(json.dumps(tokenizer_config))
    assert not AutoTokenizer.from_pretrained(model).chat_template

    meta = finetune(pool_from_records(rows(4)), str(model), FinetuneConfig.from_overrides(FAST), tmp_path / "ft")
    assert "has no chat template; using selectbench's plain template" in capsys.readouterr().err
    assert meta["chat_template"] == "plain (fallback)" and (tmp_path / "ft" / "DONE").exists()
    # The loss still falls on the response only, under the plain template.
    run = prepare_training(
        pool_from_records(rows(1)), str(model), FinetuneConfig.from_overrides(FAST), tmp_path / "w", progress=False
    )
    tokenizer = AutoTokenizer.from_pretrained(model)
    trained = [t for t, label in zip(run.data[0]["input_ids"], run.data[0]["labels"], strict=True) if label != -100]
    assert tokenizer.decode(trained) == rows(1)[0]["output"] + tokenizer.eos_token + "\n\n"


def test_report_to_an_integration_that_is_not_installed_is_an_error(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import importlib.util

    missing = next((n for n in ("tensorboard", "wandb", "mlflow") if importlib.util.find_spec(n) is None), None)
    if missing is None:
        pytest.skip("tensorboard, wandb and mlflow are all installed")
    config = FinetuneConfig.from_overrides({"report_to": missing, **FAST})
    with pytest.raises(SelectbenchError, match=f"report_to={missing} needs the package .*: pip install"):
        finetune(pool_from_records(rows(4)), str(tiny_llama_dir), config, tmp_path / "ft", progress=False)
    assert not (tmp_path / "ft").exists() and not list(tmp_path.glob(".ft*"))  # the failed run left nothing


def test_report_to_tensorboard_writes_event_files(tiny_llama_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    config = FinetuneConfig.from_overrides({"report_to": "tensorboard", **FAST})
    finetune(pool_from_records(rows(4)), str(tiny_llama_dir), config, tmp_path / "ft", progress=False)
    assert list((tmp_path / "ft").rglob("events.out.tfevents.*"))


# --- slow: several processes, the real SmolLM2, vLLM -------------------------------------------------------------


@pytest.mark.slow
def test_two_process_data_parallel_run_matches_the_single_process_recipe(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """The `accelerate launch` / torchrun path, on CPU (gloo): one job over two processes, rank 0 writes."""
    subset = write_jsonl(tmp_path / "subset.jsonl", rows(8))
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "selectbench"]
    args = ["finetune", "--subset", str(subset), "--model", str(tiny_llama_dir), "--out", str(out), "--no-progress"]
    args += ["--set", "epochs=1", "--set", "batch_size=4", "--set", "lora_dropout=0.0"]
    result = subprocess.run(
        torchrun + args, env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("fine-tuned ") == 1  # only rank 0 reports and writes
    meta = meta_of(out)
    assert meta["devices"]["world_size"] == 2
    assert meta["devices"]["micro_batch_size"] * meta["devices"]["gradient_accumulation"] * 2 == 4
    single = finetune(
        subset, str(tiny_llama_dir), FinetuneConfig.from_overrides({"lora_dropout": 0.0, **FAST}), tmp_path / "one",
        progress=False,
    )  # fmt: skip
    assert meta["recipe_hash"] == single["recipe_hash"]
    assert meta["trained"]["steps"] == single["trained"]["steps"] == 2
    assert meta["trained"]["tokens"] == single["trained"]["tokens"]
    # Same examples in each step: the first step's loss agrees (later ones differ by float rounding).
    assert meta["losses"][0]["loss"] == pytest.approx(single["losses"][0]["loss"], rel=1e-4)


@pytest.mark.slow
def test_smollm2_lora_on_demo_examples_lowers_the_loss(smollm2_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    demo = load_pool("demo").records(range(4))
    subset = pool_from_records(
        [{"id": r["id"], "instruction": r["instruction"], "input": r["input"], "output": r["response"]} for r in demo]
    )
    # One batch holds the whole subset, so every step's loss is over the same examples and the curve must fall.
    config = FinetuneConfig.from_overrides({"epochs": 3, "batch_size": 4, "max_length": 128, "learning_rate": 1e-3})
    meta = finetune(subset, str(smollm2_dir), config, tmp_path / "ft", progress=False)
    losses = [e["loss"] for e in meta["losses"]]
    assert meta["trained"]["steps"] == 3 and len(losses) == 3
    assert losses[-1] < losses[0] - 0.05, losses
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_dir), tmp_path / "ft")
    assert tuned.peft_config["default"].r == 16
    with torch.no_grad():
        assert torch.isfinite(tuned(torch.tensor([[1, 2, 3]])).logits).all()


@pytest.mark.vllm
def test_vllm_serves_the_adapter_through_lora_request(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from selectbench.models.chat import render_prompt

    # Teach the random model one answer, so the adapter's effect is unmistakable.
    taught = [{"id": f"t{i}", "instruction": f"Say the words {i}.", "output": "alpha beta gamma"} for i in range(8)]
    config = FinetuneConfig.from_overrides(
        {"epochs": 30, "batch_size": 4, "learning_rate": 5e-3, "lora_dropout": 0.0, "warmup_ratio": 0.0}
    )
    finetune(pool_from_records(taught), str(tiny_llama_dir), config, tmp_path / "ft", progress=False)

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Say the words 3."}])
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "ft")
    hf_ids = tuned.generate(**inputs, max_new_tokens=8, do_sample=False)[0][inputs["input_ids"].shape[1] :]
    hf_text = tokenizer.decode(hf_ids, skip_special_tokens=True)
    assert hf_text.startswith("alpha b"), hf_text

    llm = LLM(
        model=str(tiny_llama_dir), dtype="float32", max_model_len=256, enforce_eager=True, enable_lora=True,
        max_lora_rank=16, gpu_memory_utilization=0.3, seed=0,
    )  # fmt: skip
    params = SamplingParams(max_tokens=8, temperature=0.0)
    with_adapter = llm.generate([prompt], params, lora_request=LoRARequest("ft", 1, str(tmp_path / "ft")))
    without = llm.generate([prompt], params)
    assert with_adapter[0].outputs[0].text == hf_text
    assert not without[0].outputs[0].text.startswith("alpha")
