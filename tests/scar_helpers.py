"""Test helpers for SCAR: a tiny random BERT encoder folder, tiny ranker checkpoints, and synthetic quadruples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORDS = (
    "the a an is are was to of and in on for with this that it you we they use write function return value list "
    "python code def print answer question sort number string text file data result error test sky blue light "
    "first second step steps here summary note example simply just lol honestly think maybe yeah works fine "
    "**summary** **steps** 1. 2. 3. ``` # : , . ! ? ( ) = + - _ * / ' \""
).split()


def make_tiny_bert(folder: Path, *, dropout: float = 0.1, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) with a word-piece tokenizer over a small vocabulary, saved as a HF folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]
    vocab += [chr(c) for c in range(ord("a"), ord("z") + 1) if chr(c) not in vocab]
    vocab += [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_ranker(folder: Path, encoder_dir: Path, *, linear_dim: int = 16, seed: int = 0) -> Path:
    """A StyleRanker checkpoint (official layout) on the tiny encoder, with seeded random heads."""
    import torch

    from selectbench.selectors.scar.model import new_ranker, save_ranker

    torch.manual_seed(seed)
    model, tokenizer = new_ranker(str(encoder_dir), linear_dim=linear_dim)
    return save_ranker(model, tokenizer, folder)


def quadruple_rows(n: int = 20, *, ratings: bool = True) -> list[dict[str, Any]]:
    """Synthetic quadruples in the scar_train.jsonl format: terse human answers, structured assistant answers."""
    rows = []
    for i in range(n):
        topic = WORDS[20 + i % 20]
        row: dict[str, Any] = {
            "id": f"q{i}",
            "instruction": f"write a function to sort the {topic} list",
            "domain": "code" if i % 2 else "open",
            "human": f"just use sorted lol {topic} works fine honestly " * (1 + i % 3),
            "referenced": f"here is the answer . use sorted on the {topic} list . it returns a new list ."
            * (1 + i % 2),
            "direct": f"**summary** sort the {topic} list . **steps** 1. use sorted 2. return the value 3. test it .",
        }
        if ratings:
            row["ratings"] = {
                "human": {"helpfulness": 6 + i % 3, "correctness": 7},
                "referenced": {"helpfulness": 7, "correctness": 8},
                "direct": {"helpfulness": 8, "correctness": 8 if i % 5 else 2},  # mean 5.0 fails the filter
            }
        rows.append(row)
    return rows


def write_rows(path: Path, rows: list[Any]) -> Path:
    """Write rows as JSON Lines."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
